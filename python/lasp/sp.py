"""lasp.sp_linear_attention: LASP over a torch.distributed group. Every rank of the group passes its piece of
each sequence (contiguous pieces, in rank order); only a [B, H, d, e] state crosses between ranks.

CPU tensors (a gloo group): the states travel by torch.distributed around the library's op, which takes the
incoming state and returns the outgoing one:
    chain  forward: receive KV_in from rank r−1, run the piece from it, send KV_out to r+1;
           backward: receive dKV_out from r+1, run the piece's backward, send dKV_in to r−1.
    lasp2  every rank's own state (its piece from a zero state) all-gathered, KV_in(r) = Σ_{s<r} γ^{r−1−s} m_s
           with γ = λ^{T_piece}; the backward the same with the pieces' dKV_in summed from the end.
CUDA tensors (an NCCL group): the same schedule, the op on the GPU in the tensors' dtype (states fp32) and the
states through torch.distributed's NCCL. (The library's own NCCL communicator, with its one-sided state
transfers, is not used from Python yet.)"""
import torch
import torch.distributed as dist

from . import ops


def _decay(slopes, n):
    """γ = λ^n per head, shaped to scale a [B, H, d, e] state."""
    return torch.exp(-slopes.double() * n).float().view(1, -1, 1, 1)


def _group_pos(group):
    return dist.get_rank(group), dist.get_world_size(group)


def _peer(group, r):
    """The global rank of rank r of the group (point-to-point calls take global ranks)."""
    if group is None:
        return r
    c10d = dist.distributed_c10d  # get_global_rank since PyTorch 2.0, _get_global_rank before
    return (getattr(c10d, "get_global_rank", None) or c10d._get_global_rank)(group, r)


class _SP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slopes, group, mode):
        r, W = _group_pos(group)
        t = ops._io_dtype(q)
        qf, kf, vf, sf = ops._as(q, t), ops._as(k, t), ops._as(v, t), ops._f32(slopes)
        B, T, H, d = qf.shape
        e = vf.shape[3]
        if mode == "lasp":
            kv_in = torch.zeros((B, H, d, e), device=q.device)
            if r > 0:
                dist.recv(kv_in, _peer(group, r - 1), group=group)
            o, kv_out, _ = ops.attn_fwd(qf, kf, vf, sf, kv_in)
            if r < W - 1:
                dist.send(kv_out, _peer(group, r + 1), group=group)
        else:
            _, m, _ = ops.attn_fwd(qf, kf, vf, sf, None)
            ms = [torch.empty_like(m) for _ in range(W)]
            dist.all_gather(ms, m, group=group)
            g = _decay(sf, T)
            kv_in = torch.zeros_like(m)
            for s in range(r):
                kv_in = g * kv_in + ms[s]
            o, _, _ = ops.attn_fwd(qf, kf, vf, sf, kv_in)
        ctx.save_for_backward(qf, kf, vf, sf, kv_in)
        ctx.group, ctx.mode, ctx.dtype = group, mode, q.dtype
        return o.to(q.dtype)

    @staticmethod
    def backward(ctx, do):
        qf, kf, vf, sf, kv_in = ctx.saved_tensors
        group, mode = ctx.group, ctx.mode
        r, W = _group_pos(group)
        do = ops._as(do, qf.dtype)
        T = qf.shape[1]
        if mode == "lasp":
            dkv_out = None
            if r < W - 1:
                dkv_out = torch.empty_like(kv_in)
                dist.recv(dkv_out, _peer(group, r + 1), group=group)
            dq, dk, dv, dkv_in = ops.attn_bwd(qf, kf, vf, sf, kv_in, do, dkv_out)
            if r > 0:
                dist.send(dkv_in, _peer(group, r - 1), group=group)
        else:
            _, _, _, g_own = ops.attn_bwd(qf, kf, vf, sf, kv_in, do, None)
            gs = [torch.empty_like(g_own) for _ in range(W)]
            dist.all_gather(gs, g_own, group=group)
            g = _decay(sf, T)
            dkv_out = torch.zeros_like(g_own)
            for s in range(W - 1, r, -1):
                dkv_out = g * dkv_out + gs[s]
            dq, dk, dv, _ = ops.attn_bwd(qf, kf, vf, sf, kv_in, do, dkv_out if r < W - 1 else None)
        t = ctx.dtype
        return dq.to(t), dk.to(t), dv.to(t), None, None, None


def sp_linear_attention(q, k, v, slopes, group=None, mode="lasp"):
    """This rank's piece of lasp.linear_attention over a sequence cut across the ranks of `group` (None: the
    default group), in rank order: q, k [B, T_piece, H, d], v [B, T_piece, H, e], slopes [H]. mode "lasp"
    (the chain) or "lasp2" (states all-gathered). Forward and backward equal the single-process op on the
    whole sequence. CPU tensors with a gloo group, CUDA tensors (this rank's GPU) with an NCCL group."""
    if mode not in ("lasp", "lasp2"):
        raise ValueError("lasp.sp_linear_attention: mode %r (hint: \"lasp\" or \"lasp2\")" % (mode,))
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("lasp.sp_linear_attention needs torch.distributed initialised (hint: "
                           "torch.distributed.init_process_group(\"gloo\") under torchrun)")
    ops._check(q, k, v, slopes, None)
    return _SP.apply(q, k, v, slopes, group, mode)
