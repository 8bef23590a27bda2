"""lasp.linear_attention: the library's decayed causal linear attention as a torch.autograd.Function.

Layouts (the op's): q, k [B, T, H, d], v [B, T, H, e], slopes [H] (decay rates ≥ 0: λ_h = exp(−slopes[h])),
states [B, H, d, e]. CPU tensors run the library's CPU op in f32 (float64 inputs are computed in f32 and
returned as float64, so that torch.autograd.gradcheck can drive it); CUDA tensors are not served yet."""
import torch

from . import _lib


def _check(q, k, v, slopes, state):
    """Shapes, dtypes and devices, with the tensor named in the error."""
    for name, t in (("q", q), ("k", k), ("v", v), ("slopes", slopes)):
        if not isinstance(t, torch.Tensor):
            raise TypeError("lasp.linear_attention: %s must be a torch.Tensor, not %s" % (name, type(t).__name__))
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("lasp.linear_attention: q, k, v must be [B, T, H, d] / [B, T, H, e]; got q %s, k %s, v %s"
                         % (tuple(q.shape), tuple(k.shape), tuple(v.shape)))
    B, T, H, d = q.shape
    e = v.shape[3]
    if tuple(k.shape) != (B, T, H, d):
        raise ValueError("lasp.linear_attention: k is %s, q is %s: they must match" % (tuple(k.shape), tuple(q.shape)))
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError("lasp.linear_attention: v is %s; its B, T, H must be q's %s" % (tuple(v.shape), (B, T, H)))
    if tuple(slopes.shape) != (H,):
        raise ValueError("lasp.linear_attention: slopes is %s, want [%d] (one per head)" % (tuple(slopes.shape), H))
    if state is not None and tuple(state.shape) != (B, H, d, e):
        raise ValueError("lasp.linear_attention: initial_state is %s, want [B, H, d, e] = %s"
                         % (tuple(state.shape), (B, H, d, e)))
    for name, t in (("k", k), ("v", v), ("slopes", slopes), ("initial_state", state)):
        if t is not None and t.device != q.device:
            raise ValueError("lasp.linear_attention: %s is on %s, q on %s: every tensor on one device"
                             % (name, t.device, q.device))
    if q.device.type != "cpu":
        raise NotImplementedError("lasp.linear_attention: tensors on %s are not served by this version of the "
                                  "Python package yet (hint: .cpu(), or the lasp CLI on GPUs)" % q.device)
    for name, t in (("q", q), ("k", k), ("v", v), ("slopes", slopes), ("initial_state", state)):
        if t is not None and t.dtype not in (torch.float32, torch.float64):
            raise TypeError("lasp.linear_attention: %s is %s; on the CPU the op computes in float32 (hint: "
                            ".float())" % (name, t.dtype))
    if bool((slopes < 0).any()) or not bool(torch.isfinite(slopes).all()):
        raise ValueError("lasp.linear_attention: slopes must be finite and ≥ 0 (decay rates), got %s"
                         % slopes.tolist())


def _f32(t):
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _desc(q, v):
    B, T, H, d = q.shape
    return _lib.AttnDesc(B, T, H, d, v.shape[3], 0, _lib.F32)


def attn_fwd(q, k, v, slopes, state):
    """o, kv_out of the op (f32 CPU tensors, contiguous)."""
    B, T, H, d = q.shape
    e = v.shape[3]
    o = torch.empty((B, T, H, e), dtype=torch.float32)
    kv_out = torch.empty((B, H, d, e), dtype=torch.float32)
    a = _desc(q, v)
    _lib.check(_lib.lib.lasp_attn_fwd(_lib.ctx(), a, _lib.ptr(q), _lib.ptr(k), _lib.ptr(v), _lib.ptr(slopes),
                                      _lib.ptr(state), _lib.ptr(o), _lib.ptr(kv_out)), "lasp.linear_attention forward")
    return o, kv_out


def attn_bwd(q, k, v, slopes, state, do, dkv_out):
    """dq, dk, dv, dkv_in of the op."""
    B, T, H, d = q.shape
    e = v.shape[3]
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dv = torch.empty_like(v)
    dkv_in = torch.empty((B, H, d, e), dtype=torch.float32)
    a = _desc(q, v)
    _lib.check(_lib.lib.lasp_attn_bwd(_lib.ctx(), a, _lib.ptr(q), _lib.ptr(k), _lib.ptr(v), _lib.ptr(slopes),
                                      _lib.ptr(state), _lib.ptr(do), _lib.ptr(dkv_out), _lib.ptr(dq), _lib.ptr(dk),
                                      _lib.ptr(dv), _lib.ptr(dkv_in)), "lasp.linear_attention backward")
    return dq, dk, dv, dkv_in


class LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slopes, state):
        qf, kf, vf, sf, st = _f32(q), _f32(k), _f32(v), _f32(slopes), _f32(state)
        o, kv_out = attn_fwd(qf, kf, vf, sf, st)
        ctx.save_for_backward(qf, kf, vf, sf, st if st is not None else torch.empty(0))
        ctx.has_state, ctx.dtype = state is not None, q.dtype
        return o.to(q.dtype), kv_out.to(q.dtype)

    @staticmethod
    def backward(ctx, do, dkv_out):
        qf, kf, vf, sf, st = ctx.saved_tensors
        st = st if ctx.has_state else None
        do = torch.zeros_like(vf) if do is None else _f32(do)
        dq, dk, dv, dkv_in = attn_bwd(qf, kf, vf, sf, st, do, _f32(dkv_out))
        t = ctx.dtype
        return dq.to(t), dk.to(t), dv.to(t), None, dkv_in.to(t) if ctx.has_state else None


def linear_attention(q, k, v, slopes, initial_state=None, output_final_state=False):
    """Decayed causal linear attention: S_t = λ S_{t−1} + k_tᵀ v_t, o_t = q_t S_t per head, λ = exp(−slope).

    q, k [B, T, H, d]; v [B, T, H, e]; slopes [H] ≥ 0; initial_state [B, H, d, e] or None (zero). Returns o
    [B, T, H, e], or (o, final_state) with output_final_state: the state after the last token, decayed to the
    next position, so that two calls chained through initial_state equal one call. Differentiable in q, k, v
    and initial_state. Non-contiguous inputs are made contiguous."""
    _check(q, k, v, slopes, initial_state)
    o, kv_out = LinearAttention.apply(q, k, v, slopes, initial_state)
    return (o, kv_out) if output_final_state else o
