"""lasp.sp_linear_attention over 2 and 4 gloo processes on the loopback, and over an NCCL group of the GPUs
there are (up to 2), both modes: every rank's output and gradients equal the single-process op on the whole
sequence (1e-5 relative on the CPU, 1e-4 on GPUs in f32)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lasp


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, mode, q, k, v, slopes, do, out):
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=world)
    try:
        T = q.shape[1] // world
        sl = slice(rank * T, (rank + 1) * T)
        qp, kp, vp = (t[:, sl].clone().requires_grad_() for t in (q, k, v))
        o = lasp.sp_linear_attention(qp, kp, vp, slopes, mode=mode)
        (o * do[:, sl]).sum().backward()
        out[rank] = (o.detach(), qp.grad, kp.grad, vp.grad)
    finally:
        dist.destroy_process_group()


def _rel(x, ref):
    return (x - ref).norm().item() / ref.norm().item()


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("mode", ["lasp", "lasp2"])
def test_sp_equals_one_process(world, mode):
    g = torch.Generator().manual_seed(world * 10 + len(mode))
    B, T, H, d = 2, 24 * world, 2, 16
    q, k, v, do = (torch.randn(B, T, H, d, generator=g) for _ in range(4))
    slopes = torch.tensor([0.05, 0.8])
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    o = lasp.linear_attention(qr, kr, vr, slopes)
    (o * do).sum().backward()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, _free_port(), mode, q, k, v, slopes, do, out), nprocs=world, join=True)
    Tp = T // world
    for r in range(world):
        sl = slice(r * Tp, (r + 1) * Tp)
        o_r, dq, dk, dv = out[r]
        for name, a, b in (("o", o_r, o[:, sl]), ("dq", dq, qr.grad[:, sl]), ("dk", dk, kr.grad[:, sl]),
                           ("dv", dv, vr.grad[:, sl])):
            assert _rel(a, b.detach()) < 1e-5, "rank %d %s" % (r, name)


def _worker_nccl(rank, world, port, mode, q, k, v, slopes, do, out):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=world)
    try:
        T = q.shape[1] // world
        sl = slice(rank * T, (rank + 1) * T)
        qp, kp, vp = (t[:, sl].cuda().requires_grad_() for t in (q, k, v))
        o = lasp.sp_linear_attention(qp, kp, vp, slopes.cuda(), mode=mode)
        (o * do[:, sl].cuda()).sum().backward()
        out[rank] = tuple(t.detach().cpu() for t in (o, qp.grad, kp.grad, vp.grad))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(), reason="no GPU or no NCCL")
@pytest.mark.parametrize("mode", ["lasp", "lasp2"])
def test_sp_nccl_equals_one_process(mode):
    """CUDA tensors over an NCCL group, one process per GPU (as many as there are, up to 2): every rank's output
    and gradients equal the single-process op on the whole sequence (f32, 1e-4 relative)."""
    world = min(2, torch.cuda.device_count())
    g = torch.Generator().manual_seed(world * 7 + len(mode))
    B, T, H, d = 2, 256 * world, 2, 64
    q, k, v, do = (torch.randn(B, T, H, d, generator=g) for _ in range(4))
    q /= 8
    slopes = torch.tensor([0.01, 0.3])
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    o = lasp.linear_attention(qr, kr, vr, slopes)
    (o * do).sum().backward()
    out = mp.Manager().dict()
    mp.spawn(_worker_nccl, args=(world, _free_port(), mode, q, k, v, slopes, do, out), nprocs=world, join=True)
    Tp = T // world
    for r in range(world):
        sl = slice(r * Tp, (r + 1) * Tp)
        o_r, dq, dk, dv = out[r]
        for name, a, b in (("o", o_r, o[:, sl]), ("dq", dq, qr.grad[:, sl]), ("dk", dk, kr.grad[:, sl]),
                           ("dv", dv, vr.grad[:, sl])):
            assert _rel(a, b.detach()) < 1e-4, "rank %d %s" % (r, name)


def test_needs_an_initialised_group():
    x = torch.zeros(1, 4, 1, 16)
    with pytest.raises(RuntimeError, match="init_process_group"):
        lasp.sp_linear_attention(x, x, x, torch.tensor([0.1]))
