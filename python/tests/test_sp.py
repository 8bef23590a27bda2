"""lasp.sp_linear_attention over 2 and 4 gloo processes on the loopback, and over an NCCL group of the GPUs
there are (up to 2: the library's own NCCL world, joined through the group), both modes: every rank's output and gradients equal the single-process op on the whole
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


def _worker(rank, world, port, mode, q, k, v, slopes, do, out, backend):
    """One rank: its piece through sp_linear_attention and back (CUDA tensors on its GPU under NCCL)"""
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dev = "cuda" if backend == "nccl" else "cpu"
    dist.init_process_group(backend, init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=world)
    try:
        T = q.shape[1] // world
        sl = slice(rank * T, (rank + 1) * T)
        qp, kp, vp = (t[:, sl].to(dev).requires_grad_() for t in (q, k, v))
        # three times: a forward alone, then two forward-backward passes, the second on the first's communicator
        # and caches (the library's, on GPUs)
        with torch.no_grad():
            lasp.sp_linear_attention(qp, kp, vp, slopes.to(dev), mode=mode)
        for _ in range(2):
            qp.grad = kp.grad = vp.grad = None
            o = lasp.sp_linear_attention(qp, kp, vp, slopes.to(dev), mode=mode)
            (o * do[:, sl].to(dev)).sum().backward()
        out[rank] = tuple(t.detach().cpu() for t in (o, qp.grad, kp.grad, vp.grad))
    finally:
        dist.destroy_process_group()


def _rel(x, ref):
    return (x - ref).norm().item() / ref.norm().item()


def _equals_one_process(world, mode, backend, shape, slopes, tol, seed):
    """Every rank's output and gradients against the single-process op on the whole sequence"""
    g = torch.Generator().manual_seed(seed)
    B, T, H, d = shape
    q, k, v, do = (torch.randn(B, T, H, d, generator=g) for _ in range(4))
    q /= d ** 0.5
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    o = lasp.linear_attention(qr, kr, vr, slopes)
    (o * do).sum().backward()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, _free_port(), mode, q, k, v, slopes, do, out, backend), nprocs=world, join=True)
    Tp = T // world
    for r in range(world):
        sl = slice(r * Tp, (r + 1) * Tp)
        o_r, dq, dk, dv = out[r]
        for name, a, b in (("o", o_r, o[:, sl]), ("dq", dq, qr.grad[:, sl]), ("dk", dk, kr.grad[:, sl]),
                           ("dv", dv, vr.grad[:, sl])):
            assert _rel(a, b.detach()) < tol, "rank %d %s" % (r, name)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("mode", ["lasp", "lasp2"])
def test_sp_equals_one_process(world, mode):
    _equals_one_process(world, mode, "gloo", (2, 24 * world, 2, 16), torch.tensor([0.05, 0.8]), 1e-5,
                        world * 10 + len(mode))


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(), reason="no GPU or no NCCL")
@pytest.mark.parametrize("mode", ["lasp", "lasp2"])
def test_sp_nccl_equals_one_process(mode):
    """CUDA tensors over an NCCL group, one process per GPU (as many as there are, up to 2), f32"""
    world = min(2, torch.cuda.device_count())
    _equals_one_process(world, mode, "nccl", (2, 256 * world, 2, 64), torch.tensor([0.01, 0.3]), 1e-4,
                        world * 7 + len(mode))


def test_needs_an_initialised_group():
    x = torch.zeros(1, 4, 1, 16)
    with pytest.raises(RuntimeError, match="init_process_group"):
        lasp.sp_linear_attention(x, x, x, torch.tensor([0.1]))
