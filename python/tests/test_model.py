"""lasp.load: a checkpoint written by `lasp train` as a torch model whose logits equal the C model's (the
CLI's `lasp generate --logits-out`, f32 on the CPU) within 1e-5 relative; `lasp export --safetensors` readable."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

import lasp

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
LASP = os.path.join(ROOT, "build", "lasp")


def run(*args, cwd):
    r = subprocess.run([LASP, *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, "lasp %s: %s%s" % (" ".join(args), r.stdout, r.stderr)
    return r.stdout


@pytest.mark.parametrize("conv", [4, 0])
def test_load_matches_the_c_logits(tmp_path, conv):
    run("train", "--model", "tiny", "--steps", "6", "--conv", str(conv), "--ckpt", "ck", "--out", "run", "--quiet",
        cwd=tmp_path)
    prompt = [20, 130, 33, 150, 41, 170, 57, 190, 41, 7, 250, 0]
    run("generate", "--ckpt", "ck", "--prompt-ids", ",".join(map(str, prompt)), "--tokens", "1", "--temperature",
        "0", "--ids", "--logits-out", "logits.npy", cwd=tmp_path)
    ref = torch.from_numpy(np.load(tmp_path / "logits.npy"))
    model = lasp.load(str(tmp_path / "ck"))
    assert model.config["step"] == 6 and model.config["conv"] == conv
    with torch.no_grad():
        got = model(torch.tensor([prompt]))[0]
    err = (got - ref).norm().item() / ref.norm().item()
    assert err < 1e-5, err


def test_export_safetensors(tmp_path):
    run("train", "--model", "tiny", "--steps", "2", "--ckpt", "ck", "--out", "run", "--quiet", cwd=tmp_path)
    out = run("export", "--ckpt", "ck", "--safetensors", "hf", cwd=tmp_path)
    assert "model.safetensors" in out
    cfg = json.load(open(tmp_path / "hf" / "config.json"))
    t = lasp.read_safetensors(str(tmp_path / "hf" / "model.safetensors"))
    C, L, V, F = cfg["d_model"], cfg["n_layers"], cfg["vocab"], cfg["ffn_dim"]
    assert t["embed.weight"].shape == (V, C) and t["head.weight"].shape == (C, V)
    assert t["blocks.%d.wqkvu" % (L - 1)].shape == (C, 4 * C) and t["blocks.0.w3"].shape == (F, C)
    assert len(t) == 1 + 8 * L + 2  # embedding, 8 a block, the final norm and the head


def test_load_errors(tmp_path):
    with pytest.raises(lasp.LaspError, match="model.ckpt"):
        lasp.load(str(tmp_path))
    (tmp_path / "model.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(lasp.LaspError, match="checkpoint"):
        lasp.load(str(tmp_path))
