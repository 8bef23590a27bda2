"""lasp.linear_attention: the library's decayed causal linear attention as a torch.autograd.Function.

Layouts (the op's): q, k [B, T, H, d], v [B, T, H, e], slopes [H] (decay rates ≥ 0: λ_h = exp(−slopes[h])),
states [B, H, d, e]. CPU tensors run the library's CPU op in f32 (float64 inputs are computed in f32 and
returned as float64, so that torch.autograd.gradcheck can drive it). CUDA tensors run the library's CUDA op
in their dtype (bfloat16, float16 or float32; states always float32) on PyTorch's current stream, with the
thread's library context reused across calls. Where the installed PyTorch has torch.library.custom_op (2.4
on), the op is registered as lasp::linear_attention with its shapes and its backward, so that
torch.compile keeps it in one graph; eager calls go through the autograd.Function."""
import ctypes
import warnings
import weakref

import torch

from . import _lib

_CUDA_DTYPES = {torch.float32: _lib.F32, torch.bfloat16: _lib.BF16, torch.float16: _lib.F16}


def _compiling():
    c = getattr(torch, "compiler", None)
    return bool(c is not None and hasattr(c, "is_compiling") and c.is_compiling())


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
    if q.device.type not in ("cpu", "cuda"):
        raise NotImplementedError("lasp.linear_attention: tensors on %s are not served (hint: CPU or CUDA tensors)"
                                  % q.device)
    if q.device.type == "cuda":
        if q.dtype not in _CUDA_DTYPES:
            raise TypeError("lasp.linear_attention: q is %s; on a GPU the op takes bfloat16, float16 or float32"
                            % q.dtype)
        for name, t in (("k", k), ("v", v)):
            if t.dtype != q.dtype:
                raise TypeError("lasp.linear_attention: %s is %s, q %s: q, k, v in one dtype" % (name, t.dtype, q.dtype))
        for name, t in (("slopes", slopes), ("initial_state", state)):
            if t is not None and not t.dtype.is_floating_point:
                raise TypeError("lasp.linear_attention: %s is %s; it must be floating point" % (name, t.dtype))
    else:
        for name, t in (("q", q), ("k", k), ("v", v), ("slopes", slopes), ("initial_state", state)):
            if t is not None and t.dtype not in (torch.float32, torch.float64):
                raise TypeError("lasp.linear_attention: %s is %s; on the CPU the op computes in float32 (hint: "
                                ".float())" % (name, t.dtype))
    _check_slopes(slopes)


_checked = [None, -1]  # the slopes tensor last found valid (a weak reference) and its version then


def _check_slopes(slopes):
    """slopes finite and ≥ 0. The check reads the values back (on a GPU, a wait for the stream), so the tensor
    last found valid is not read again until it changes: slopes are a model's fixed buffer, and a wait in every
    call would leave the GPU idle while Python prepares the next one. Not while torch.compile traces."""
    if _compiling():
        return
    ref, version = _checked
    if ref is not None and ref() is slopes and version == slopes._version:
        return
    if not bool((torch.isfinite(slopes) & (slopes >= 0)).all()):
        raise ValueError("lasp.linear_attention: slopes must be finite and ≥ 0 (decay rates), got %s"
                         % slopes.tolist())
    _checked[:] = [weakref.ref(slopes), slopes._version]


def _as(t, dtype):
    """t as the op reads it: dtype, contiguous, and 16-byte aligned (the GPU kernels' vector loads; a view into
    a larger tensor may start anywhere)."""
    if t is None:
        return None
    t = t.detach().to(dtype).contiguous()
    return t.clone() if t.data_ptr() % 16 else t


def _f32(t):
    return _as(t, torch.float32)


def _io_dtype(q):
    """The op's I/O dtype: f32 on the CPU; on a GPU q's"""
    return q.dtype if q.is_cuda else torch.float32


def _call(name, q, *args, what=None):
    """The library call `name` on q's device; a GPU call goes on PyTorch's current stream there (the legacy
    default stream, handle 0, passed as cudaStreamLegacy: the library's NULL means its own stream). what: the
    caller's name in an error (default: lasp.linear_attention and the call)."""
    fn = getattr(_lib.lib, name)
    what = what or "lasp.linear_attention " + name[10:]
    if not q.is_cuda:
        return _lib.check(fn(_lib.ctx(), *args), what)
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream or 1
        _lib.check(_lib.lib.lasp_ctx_set_cuda_stream(_lib.ctx(), ctypes.c_void_p(stream)), what)
        _lib.check(fn(_lib.ctx(), *args), what)


def _desc(q, v):
    B, T, H, d = q.shape
    return _lib.AttnDesc(B, T, H, d, v.shape[3], 0, _CUDA_DTYPES[_io_dtype(q)])


_saved_sizes = {}  # (device, q's shape, e, dtype) → the size below: a call into the library per shape, not per call


def _saved_numel(q, v):
    """float32 elements of the buffer in which the GPU forward keeps its states for the backward (0 on the CPU)"""
    if not q.is_cuda:
        return 0
    key = (q.device, tuple(q.shape), v.shape[3], q.dtype)
    if not all(type(x) is int for x in key[1] + (key[2],)):  # symbolic sizes (torch.compile): not a dict key
        key = None
    n = _saved_sizes.get(key) if key else None
    if n is None:
        size = ctypes.c_size_t()
        with torch.cuda.device(q.device):
            _lib.check(_lib.lib.lasp_attn_saved_bytes(_lib.ctx(), _desc(q, v), ctypes.byref(size)),
                       "lasp.linear_attention")
        n = size.value // 4
        if key:
            _saved_sizes[key] = n
    return n


def attn_fwd(q, k, v, slopes, state, save=False):
    """o, kv_out of the op (q, k, v in the I/O dtype, slopes and state f32, all contiguous on one device), and
    the states the backward reads (save, on a GPU; else an empty tensor): without them it computes them again."""
    B, T, H, d = q.shape
    e = v.shape[3]
    o = torch.empty((B, T, H, e), dtype=q.dtype, device=q.device)
    kv_out = torch.empty((B, H, d, e), dtype=torch.float32, device=q.device)
    saved = torch.empty(_saved_numel(q, v) if save else 0, dtype=torch.float32, device=q.device)
    args = (_desc(q, v), _lib.ptr(q), _lib.ptr(k), _lib.ptr(v), _lib.ptr(slopes), _lib.ptr(state), _lib.ptr(o),
            _lib.ptr(kv_out))
    if saved.numel():
        _call("lasp_attn_fwd_saving", q, *args, _lib.ptr(saved))
    else:
        _call("lasp_attn_fwd", q, *args)
    return o, kv_out, saved


def attn_bwd(q, k, v, slopes, state, do, dkv_out, saved=None, want_dkv_in=True):
    """dq, dk, dv (the I/O dtype), dkv_in (f32; without want_dkv_in not computed, an empty tensor) of the op;
    saved: attn_fwd's, from the same inputs, or None."""
    B, T, H, d = q.shape
    e = v.shape[3]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dkv_in = torch.empty((B, H, d, e) if want_dkv_in else 0, dtype=torch.float32, device=q.device)
    args = (_desc(q, v), _lib.ptr(q), _lib.ptr(k), _lib.ptr(v), _lib.ptr(slopes), _lib.ptr(state), _lib.ptr(do),
            _lib.ptr(dkv_out), _lib.ptr(dq), _lib.ptr(dk), _lib.ptr(dv), _lib.ptr(dkv_in if want_dkv_in else None))
    if saved is not None and saved.numel():
        _call("lasp_attn_bwd_saved", q, *args, _lib.ptr(saved))
    else:
        _call("lasp_attn_bwd", q, *args)
    return dq, dk, dv, dkv_in


def _state_dtype(q):
    """The final state's dtype: q's on the CPU (float64 for gradcheck), float32 on a GPU (the op's states)"""
    return torch.float32 if q.is_cuda else q.dtype


def _forward(q, k, v, slopes, state, save=False):
    """o in q's dtype, the final state (_state_dtype) and the states kept for the backward (save: on a GPU), from
    inputs of any float dtype (state None: zero)"""
    t = _io_dtype(q)
    o, kv_out, saved = attn_fwd(_as(q, t), _as(k, t), _as(v, t), _f32(slopes), _f32(state), save)
    return o.to(q.dtype), kv_out.to(_state_dtype(q)), saved


def _backward(q, k, v, slopes, state, do, dkv_out, saved=None, want_dkv_in=True):
    """dq, dk, dv in q's, k's and v's dtypes and dkv_in (float32; an empty tensor without want_dkv_in); do None
    or dkv_out None or empty: zero"""
    t = _io_dtype(q)
    qf, kf, vf = _as(q, t), _as(k, t), _as(v, t)
    do = torch.zeros_like(vf) if do is None else _as(do, t)
    dkv_out = None if dkv_out is None or not dkv_out.numel() else _f32(dkv_out)
    dq, dk, dv, dkv_in = attn_bwd(qf, kf, vf, _f32(slopes), _f32(state), do, dkv_out, saved, want_dkv_in)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dkv_in


def _wants_grad(*ts):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


class LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slopes, state):
        o, kv_out, saved = _forward(q, k, v, slopes, state, q.is_cuda and any(ctx.needs_input_grad))
        ctx.set_materialize_grads(False)  # an output not used comes back as None, not a tensor of zeros to read
        ctx.save_for_backward(q, k, v, slopes, state if state is not None else torch.empty(0), saved)
        ctx.has_state = state is not None
        return o, kv_out

    @staticmethod
    def backward(ctx, do, dkv_out):
        q, k, v, slopes, state, saved = ctx.saved_tensors
        dq, dk, dv, dkv_in = _backward(q, k, v, slopes, state if ctx.has_state else None, do, dkv_out, saved,
                                       ctx.has_state)
        return dq, dk, dv, None, dkv_in.to(state.dtype) if ctx.has_state else None


def _custom_op():
    """lasp::linear_attention as a torch.library custom op (PyTorch ≥ 2.4), its fake (shapes only) and its
    autograd registered, so that torch.compile traces through it; None where PyTorch has no custom_op."""
    lib = getattr(torch, "library", None)
    if lib is None or not hasattr(lib, "custom_op") or not hasattr(lib, "register_fake"):
        return None

    @lib.custom_op("lasp::linear_attention", mutates_args=())
    def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor, state: torch.Tensor,
           has_state: bool, save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _forward(q, k, v, slopes, state if has_state else None, save)

    @op.register_fake
    def _(q, k, v, slopes, state, has_state, save):
        B, T, H, d = q.shape
        e = v.shape[3]
        return (q.new_empty((B, T, H, e)), q.new_empty((B, H, d, e), dtype=_state_dtype(q)),
                q.new_empty(_saved_numel(q, v) if save else 0, dtype=torch.float32))

    @lib.custom_op("lasp::linear_attention_bwd", mutates_args=())
    def op_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor, state: torch.Tensor,
               has_state: bool, do: torch.Tensor, dkv_out: torch.Tensor,
               saved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dq, dk, dv, dkv = _backward(q, k, v, slopes, state if has_state else None, do, dkv_out, saved, has_state)
        return dq, dk, dv, dkv.to(state.dtype)

    @op_bwd.register_fake
    def _(q, k, v, slopes, state, has_state, do, dkv_out, saved):
        dkv = torch.empty_like(state) if has_state else state.new_empty(0)
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dkv

    def setup(ctx, inputs, output):
        q, k, v, slopes, state, has_state, save = inputs
        ctx.save_for_backward(q, k, v, slopes, state, output[2])
        ctx.has_state = has_state
        # the final state's and the saved states' gradients, when nothing used them, come back as None rather
        # than as tensors of zeros made (and, for the final state, read) on every call
        ctx.set_materialize_grads(False)

    def backward(ctx, do, dkv_out, dsaved):
        q, k, v, slopes, state, saved = ctx.saved_tensors
        do = v.new_zeros(q.shape[:3] + (v.shape[3],)) if do is None else do
        dkv_out = state.new_empty(0) if dkv_out is None else dkv_out  # empty: zero, not read
        dq, dk, dv, dkv = op_bwd(q, k, v, slopes, state, ctx.has_state, do, dkv_out, saved)
        return dq, dk, dv, None, dkv if ctx.has_state else None, None, None

    op.register_autograd(backward, setup_context=setup)
    return op


try:
    _OP = _custom_op()
except Exception as exc:  # a PyTorch whose custom-op API differs: the autograd.Function still serves every call
    warnings.warn("lasp: lasp::linear_attention could not be registered as a custom op (%s); torch.compile will "
                  "see an autograd.Function instead" % exc)
    _OP = None


def linear_attention(q, k, v, slopes, initial_state=None, output_final_state=False):
    """Decayed causal linear attention: S_t = λ S_{t−1} + k_tᵀ v_t, o_t = q_t S_t per head, λ = exp(−slope).

    q, k [B, T, H, d]; v [B, T, H, e]; slopes [H] ≥ 0; initial_state [B, H, d, e] or None (zero). Returns o
    [B, T, H, e], or (o, final_state) with output_final_state: the state after the last token, decayed to the
    next position, so that two calls chained through initial_state equal one call; float32 on a GPU. Differentiable
    in q, k, v and initial_state. Non-contiguous inputs are made contiguous."""
    _check(q, k, v, slopes, initial_state)
    # the custom op where torch.compile traces; eagerly the autograd.Function, whose call costs the host less
    if _OP is not None and _compiling():
        B, T, H, d = q.shape
        has = initial_state is not None
        state = initial_state if has else q.new_empty((B, H, d, v.shape[3]), dtype=_state_dtype(q))  # unread
        o, kv_out, _ = _OP(q, k, v, slopes, state, has, q.is_cuda and _wants_grad(q, k, v, initial_state))
    else:
        o, kv_out = LinearAttention.apply(q, k, v, slopes, initial_state)
    return (o, kv_out) if output_final_state else o
