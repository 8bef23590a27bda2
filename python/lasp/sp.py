"""lasp.sp_linear_attention: LASP over a torch.distributed group. Every rank of the group passes its piece of
each sequence (contiguous pieces, in rank order); only a [B, H, d, e] state crosses between ranks.

CPU tensors (a gloo group): the states travel by torch.distributed around the library's op, which takes the
incoming state and returns the outgoing one:
    chain  forward: receive KV_in from rank r−1, run the piece from it, send KV_out to r+1;
           backward: receive dKV_out from r+1, run the piece's backward, send dKV_in to r−1.
    lasp2  every rank's own state (its piece from a zero state) all-gathered, KV_in(r) = Σ_{s<r} γ^{r−1−s} m_s
           with γ = λ^{T_piece}; the backward the same with the pieces' dKV_in summed from the end.
CUDA tensors: the library's own GPU schedule over its own NCCL communicator (one per group and GPU, made on
the first call: rank 0 of the group makes an NCCL id, the group broadcasts it, every rank joins), the op in
the tensors' dtype with fp32 states, the states passed by one-sided puts where the GPUs reach each other by
NVLink, else by NCCL send/receive; everything on PyTorch's current stream, no wait on the host. The
communicator lives as long as the process."""
import ctypes

import torch
import torch.distributed as dist

from . import _lib, ops


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


_MODES = {"lasp": 0, "lasp2": 1}  # lasp_sp_mode: LASP_SP_CHAIN, LASP_SP_LASP2


class _LibGroup:
    """The library's NCCL world over a torch.distributed group's ranks on this process's GPU, and its SP layout
    (lasp_sp, one per mode) with the forward caches it hands out: a cache is made by a forward, kept until its
    backward has been enqueued, then reused by later forwards (stream order on PyTorch's stream makes that
    safe; a free would wait for the GPU)."""
    _all = {}

    def __init__(self, group, device):
        r, W = _group_pos(group)
        ident = (ctypes.c_char * _lib.NCCL_ID_BYTES)()
        if r == 0:
            _lib.call_err(_lib.lib.lasp_comm_nccl_id, "lasp.sp_linear_attention: making the NCCL id", ident)
        on = device if dist.get_backend(group) == "nccl" else torch.device("cpu")
        t = torch.tensor(list(bytes(ident)), dtype=torch.uint8, device=on)
        dist.broadcast(t, _peer(group, 0), group=group)
        ident = bytes(t.cpu().tolist())
        self.comm = ctypes.c_void_p()
        with torch.cuda.device(device):
            _lib.call_err(_lib.lib.lasp_comm_nccl_join, "lasp.sp_linear_attention: joining the NCCL world (rank %d of "
                          "%d)" % (r, W), ident, r, W, device.index, ctypes.byref(self.comm))
        self.device, self.size, self.sp, self.pool = device, W, {}, []

    @classmethod
    def of(cls, group, device):
        ranks = tuple(_peer(group, i) for i in range(dist.get_world_size(group)))
        key = (ranks, device.index)
        g = cls._all.get(key)
        if g is None:
            g = cls._all[key] = cls(group, device)
        return g

    def layout(self, mode):
        sp = self.sp.get(mode)
        if sp is None:
            p = _lib.lib.lasp_sp_default_params()
            p.size, p.mode = self.size, _MODES[mode]
            sp = ctypes.c_void_p()
            with torch.cuda.device(self.device):
                _lib.call_err(_lib.lib.lasp_sp_create, "lasp.sp_linear_attention: the SP layout", self.comm,
                              ctypes.byref(p), ctypes.byref(sp))
            self.sp[mode] = sp
        return sp


class _Cache:
    """One forward's cache, back to its group's pool once the backward is enqueued (or the graph is dropped)"""

    def __init__(self, grp):
        self.grp, self.ptr = grp, ctypes.c_void_p(grp.pool.pop() if grp.pool else None)

    def release(self):
        if self.ptr is not None and self.ptr.value:
            self.grp.pool.append(self.ptr.value)
        self.ptr = None

    def __del__(self):
        self.release()


class _SPDevice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slopes, group, mode):
        grp = _LibGroup.of(group, q.device)
        sp = grp.layout(mode)
        t = q.dtype
        qf, kf, vf, sf = ops._as(q, t), ops._as(k, t), ops._as(v, t), ops._f32(slopes)
        B, T, H, d = qf.shape
        o = torch.empty((B, T, H, vf.shape[3]), dtype=t, device=q.device)
        cache = _Cache(grp)
        ops._call("lasp_sp_attn_fwd", q, sp, ops._desc(qf, vf), _lib.ptr(qf), _lib.ptr(kf), _lib.ptr(vf), _lib.ptr(sf),
                  None, _lib.ptr(o), None, ctypes.byref(cache.ptr), what="lasp.sp_linear_attention")
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(qf, kf, vf, sf)
            ctx.grp, ctx.sp, ctx.cache = grp, sp, cache
        else:
            cache.release()
        return o

    @staticmethod
    def backward(ctx, do):
        qf, kf, vf, sf = ctx.saved_tensors
        do = ops._as(do, qf.dtype)
        dq, dk, dv = torch.empty_like(qf), torch.empty_like(kf), torch.empty_like(vf)
        ops._call("lasp_sp_attn_bwd", qf, ctx.sp, ops._desc(qf, vf), _lib.ptr(qf), _lib.ptr(kf), _lib.ptr(vf),
                  _lib.ptr(sf), ctx.cache.ptr, _lib.ptr(do), None, _lib.ptr(dq), _lib.ptr(dk), _lib.ptr(dv), None,
                  what="lasp.sp_linear_attention")
        ctx.cache.release()
        return dq, dk, dv, None, None, None


def sp_linear_attention(q, k, v, slopes, group=None, mode="lasp"):
    """This rank's piece of lasp.linear_attention over a sequence cut across the ranks of `group` (None: the
    default group), in rank order: q, k [B, T_piece, H, d], v [B, T_piece, H, e], slopes [H]. mode "lasp"
    (the chain) or "lasp2" (states all-gathered). Forward and backward equal the single-process op on the
    whole sequence. CPU tensors with a gloo group (f32); CUDA tensors (this rank's GPU; bf16, f16 or f32) with
    any group, which then only passes the library's NCCL id once (an NCCL group, as under torchrun, or gloo)."""
    if mode not in ("lasp", "lasp2"):
        raise ValueError("lasp.sp_linear_attention: mode %r (hint: \"lasp\" or \"lasp2\")" % (mode,))
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("lasp.sp_linear_attention needs torch.distributed initialised (hint: "
                           "torch.distributed.init_process_group(\"gloo\") under torchrun)")
    ops._check(q, k, v, slopes, None)
    return (_SPDevice if q.is_cuda else _SP).apply(q, k, v, slopes, group, mode)
