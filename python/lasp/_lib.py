"""The C library behind the package: found, loaded with ctypes, and its calls wrapped so that a failing call
raises LaspError with the library's own message (a library error never crashes the interpreter)."""
import ctypes
import os
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
# beside the package (pip install), or the build of the checkout this package sits in
_CANDIDATES = [os.path.join(_HERE, "liblasp.so"), os.path.join(_HERE, "..", "..", "build", "liblasp.so")]


class LaspError(RuntimeError):
    """A lasp call failed; the message is the library's (it names the bad value and gives a hint)."""


def _find():
    for path in _CANDIDATES:
        if os.path.exists(path):
            return os.path.abspath(path)
    raise LaspError("liblasp.so was not found (looked in: %s); hint: run `make` in the lasp checkout, or "
                    "`pip install ./python` after it" % ", ".join(os.path.abspath(p) for p in _CANDIDATES))


LIB_PATH = _find()
lib = ctypes.CDLL(LIB_PATH)

F32, BF16, F16 = 0, 2, 3  # lasp_dtype


class AttnDesc(ctypes.Structure):
    """lasp_attn_desc: B, T, H, d, e, block, dtype."""
    _fields_ = [("B", ctypes.c_int64), ("T", ctypes.c_int64), ("H", ctypes.c_int64), ("d", ctypes.c_int64),
                ("e", ctypes.c_int64), ("block", ctypes.c_int), ("dtype", ctypes.c_int)]


class Err(ctypes.Structure):
    """lasp_err: a status and its message."""
    _fields_ = [("status", ctypes.c_int), ("msg", ctypes.c_char * 1024)]


_p = ctypes.c_void_p
lib.lasp_ctx_create.argtypes = [_p, ctypes.POINTER(_p)]
lib.lasp_ctx_create.restype = ctypes.c_int
lib.lasp_ctx_error.argtypes = [_p]
lib.lasp_ctx_error.restype = ctypes.c_char_p
lib.lasp_ctx_free.argtypes = [_p]
lib.lasp_ctx_set_cuda_stream.argtypes = [_p, _p]
lib.lasp_ctx_set_cuda_stream.restype = ctypes.c_int
lib.lasp_attn_fwd.argtypes = [_p, ctypes.POINTER(AttnDesc), _p, _p, _p, _p, _p, _p, _p]
lib.lasp_attn_fwd.restype = ctypes.c_int
lib.lasp_attn_bwd.argtypes = [_p, ctypes.POINTER(AttnDesc), _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p]
lib.lasp_attn_bwd.restype = ctypes.c_int
lib.lasp_attn_saved_bytes.argtypes = [_p, ctypes.POINTER(AttnDesc), ctypes.POINTER(ctypes.c_size_t)]
lib.lasp_attn_saved_bytes.restype = ctypes.c_int
lib.lasp_attn_fwd_saving.argtypes = [_p, ctypes.POINTER(AttnDesc), _p, _p, _p, _p, _p, _p, _p, _p]
lib.lasp_attn_fwd_saving.restype = ctypes.c_int
lib.lasp_attn_bwd_saved.argtypes = [_p, ctypes.POINTER(AttnDesc), _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p]
lib.lasp_attn_bwd_saved.restype = ctypes.c_int
NCCL_ID_BYTES = 128  # LASP_NCCL_ID_BYTES


class SpParams(ctypes.Structure):
    """lasp_sp_params: size, mode, transfer, comm_sms, timeout_s, trace."""
    _fields_ = [("size", ctypes.c_int), ("mode", ctypes.c_int), ("transfer", ctypes.c_int), ("comm_sms", ctypes.c_int),
                ("timeout_s", ctypes.c_double), ("trace", ctypes.c_int)]


lib.lasp_comm_nccl_id.argtypes = [ctypes.c_char_p, ctypes.POINTER(Err)]
lib.lasp_comm_nccl_id.restype = ctypes.c_int
lib.lasp_comm_nccl_join.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_p),
                                    ctypes.POINTER(Err)]
lib.lasp_comm_nccl_join.restype = ctypes.c_int
lib.lasp_sp_default_params.argtypes = []
lib.lasp_sp_default_params.restype = SpParams
lib.lasp_sp_create.argtypes = [_p, ctypes.POINTER(SpParams), ctypes.POINTER(_p), ctypes.POINTER(Err)]
lib.lasp_sp_create.restype = ctypes.c_int
lib.lasp_sp_attn_fwd.argtypes = [_p, _p, ctypes.POINTER(AttnDesc), _p, _p, _p, _p, _p, _p, _p, ctypes.POINTER(_p)]
lib.lasp_sp_attn_fwd.restype = ctypes.c_int
lib.lasp_sp_attn_bwd.argtypes = [_p, _p, ctypes.POINTER(AttnDesc), _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p]
lib.lasp_sp_attn_bwd.restype = ctypes.c_int
lib.lasp_sp_cache_free.argtypes = [_p]
lib.lasp_sp_cache_free.restype = None
lib.lasp_export_safetensors.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Err)]
lib.lasp_export_safetensors.restype = ctypes.c_int

_local = threading.local()


def ctx():
    """The library context of this thread (made on first use, reused by every later call)."""
    c = getattr(_local, "ctx", None)
    if c is None:
        c = _p()
        if lib.lasp_ctx_create(None, ctypes.byref(c)) != 0:
            raise LaspError("lasp could not create a context (out of memory?)")
        _local.ctx = c
    return c


def check(status, what):
    """Raise LaspError for a non-zero status, with the context's message."""
    if status != 0:
        msg = lib.lasp_ctx_error(ctx()).decode("utf-8", "replace")
        raise LaspError("%s: %s" % (what, msg or "status %d" % status))


def ptr(t):
    """The data pointer of a tensor (None for None)."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def call_err(fn, what, *args):
    """fn(*args, &err) for calls that take no context: LaspError with err's message on failure"""
    err = Err()
    if fn(*args, ctypes.byref(err)) != 0:
        raise LaspError("%s: %s" % (what, err.msg.decode("utf-8", "replace")))


def export_safetensors(ckpt_dir, out_dir):
    err = Err()
    if lib.lasp_export_safetensors(os.fsencode(ckpt_dir), os.fsencode(out_dir), ctypes.byref(err)) != 0:
        raise LaspError(err.msg.decode("utf-8", "replace"))
