"""lasp from PyTorch: the library's linear-attention op as an autograd function, LASP over a
torch.distributed group, and the trainer's checkpoints as a torch.nn.Module.

    import lasp
    o = lasp.linear_attention(q, k, v, slopes)            # q, k [B, T, H, d], v [B, T, H, e], slopes [H]
    o = lasp.sp_linear_attention(q, k, v, slopes)         # this rank's piece, under torchrun (gloo)
    model = lasp.load("runs/x")                           # a checkpoint of `lasp train`
"""
from ._lib import LaspError, LIB_PATH
from .ops import linear_attention
from .sp import sp_linear_attention
from .model import LaspModel, load, read_safetensors

__all__ = ["linear_attention", "sp_linear_attention", "load", "LaspModel", "read_safetensors", "LaspError",
           "LIB_PATH"]
