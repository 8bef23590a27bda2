"""lasp.load: a checkpoint of `lasp train` as a plain torch.nn.Module of the model (docs/MODEL.md), whose
attention is lasp.linear_attention and whose logits equal the C model's. The weights come through the
library's own export (lasp_export_safetensors), so this file never reads lasp's flat layout."""
import json
import os
import struct
import tempfile

import torch
import torch.nn.functional as F

from . import _lib
from .ops import linear_attention

def read_safetensors(path):
    """{name: float32 tensor} of a safetensors file (the subset lasp writes: F32 tensors)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise _lib.LaspError("%s: tensor %s is %s; lasp writes F32" % (path, name, info["dtype"]))
        a, b = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(info["shape"])
    return out


def _rms(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


class LaspModel(torch.nn.Module):
    """The TransNormerLLM-style model of docs/MODEL.md; forward(tokens [B, T]) → logits [B, T, vocab].
    Weights are [in, out] as lasp keeps them: a product is x @ W."""

    def __init__(self, config, tensors):
        super().__init__()
        self.config = dict(config)
        c = self.config
        self.C, self.L, self.H, self.F, self.K = c["d_model"], c["n_layers"], c["n_heads"], c["ffn_dim"], c["conv"]
        self.params = torch.nn.ParameterDict({k.replace(".", "_"): torch.nn.Parameter(v) for k, v in tensors.items()})
        self.eps = c["rms_eps"]
        for layer in range(self.L):  # the decay rates the C model uses, written by the export
            self.register_buffer("slopes_%d" % layer, torch.tensor(c["slopes"][layer], dtype=torch.float32))

    def w(self, name):
        return self.params[name.replace(".", "_")]

    def forward(self, tokens):
        C, H, Fd, K = self.C, self.H, self.F, self.K
        B, T = tokens.shape
        x = self.w("embed.weight")[tokens]
        for layer in range(self.L):
            p = "blocks.%d." % layer
            pre = _rms(x, self.w(p + "ln1"), self.eps) @ self.w(p + "wqkvu")  # [B, T, 4C]: q | k | v | u
            qkv, u = pre[..., :3 * C], pre[..., 3 * C:]
            if K:  # y[t] = Σ_j conv[j] ⊙ qkv[t − j], zeros before the sequence
                taps = self.w(p + "conv")
                qkv = sum(taps[j] * F.pad(qkv, (0, 0, j, 0))[:, :T] for j in range(K))
            q, k, v = F.silu(qkv[..., :C]), F.silu(qkv[..., C:2 * C]), qkv[..., 2 * C:]
            D = C // H
            o = linear_attention(q.reshape(B, T, H, D), k.reshape(B, T, H, D), v.reshape(B, T, H, D),
                                 getattr(self, "slopes_%d" % layer)).reshape(B, T, C)
            y = _rms(o, self.w(p + "onorm"), self.eps) * torch.sigmoid(u)
            x = x + y @ self.w(p + "wo")
            h = _rms(x, self.w(p + "ln2"), self.eps) @ self.w(p + "w12")
            x = x + (h[..., :Fd] * h[..., Fd:]) @ self.w(p + "w3")
        return _rms(x, self.w("head.norm"), self.eps) @ self.w("head.weight")


def load(ckpt_dir):
    """The model of a `lasp train --ckpt DIR` checkpoint (its step in .config["step"])."""
    if not os.path.exists(os.path.join(ckpt_dir, "model.ckpt")):
        raise _lib.LaspError("%s holds no model.ckpt (hint: the --ckpt directory of a lasp train run)" % ckpt_dir)
    with tempfile.TemporaryDirectory() as tmp:
        _lib.export_safetensors(ckpt_dir, tmp)
        with open(os.path.join(tmp, "config.json")) as f:
            config = json.load(f)
        tensors = read_safetensors(os.path.join(tmp, "model.safetensors"))
    return LaspModel(config, tensors)
