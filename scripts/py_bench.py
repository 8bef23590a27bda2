#!/usr/bin/env python3
"""scripts/py_bench.py — lasp.linear_attention called from PyTorch on CUDA tensors against the C bench
(`lasp bench attn --device cuda`) on the same shape and dtype: forward and forward+backward times (CUDA
events, median) and what the call from PyTorch adds (autograd, allocations, ctypes). Needs a GPU and a build.
    usage: python3 scripts/py_bench.py [B,H,T,D] [repeat]        (default 1,16,32768,128 and 20; bf16)"""
import math
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import lasp  # noqa: E402

shape = sys.argv[1] if len(sys.argv) > 1 else "1,16,32768,128"
repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 20
B, H, T, D = (int(x) for x in shape.split(","))
dt = torch.bfloat16

g = torch.Generator(device="cuda").manual_seed(1)
q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=g).div(math.sqrt(D)).to(dt).requires_grad_()
           for _ in range(3))
slopes = torch.tensor([2 ** (-8 * (h + 1) / H) for h in range(H)], device="cuda")
do = torch.randn(B, T, H, D, device="cuda", generator=g).to(dt)


def timed(fn):
    """ms a call: (in a stream: `repeat` calls back to back between two events, as a model makes them, the median
    of 5 such runs; host: the CPU's time to issue one of those calls; alone: each call between its own events and
    waited for, the median of `repeat`)"""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    stream, host, alone = [], [], []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        h0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        host.append((time.perf_counter() - h0) * 1e3 / repeat)
        b.record()
        b.synchronize()
        stream.append(a.elapsed_time(b) / repeat)
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        alone.append(a.elapsed_time(b))
    return statistics.median(stream), statistics.median(alone), statistics.median(host)


def fwd():
    with torch.no_grad():
        lasp.linear_attention(q, k, v, slopes)


def fwd_bwd():
    q.grad = k.grad = v.grad = None
    lasp.linear_attention(q, k, v, slopes).backward(do)


py_f, py_fb = timed(fwd), timed(fwd_bwd)
lasp_bin = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "lasp")
out = subprocess.run([lasp_bin, "bench", "attn", "--device", "cuda", "--dtype", "bf16", "--shape", shape,
                      "--repeat", str(repeat)], capture_output=True, text=True).stdout
row = [ln.split() for ln in out.splitlines() if ln.strip() and not ln.startswith("#") and ln.split()[0].isdigit()]
c_f, c_fb = (float(row[0][5]), float(row[0][9])) if row else (float("nan"), float("nan"))
print("# lasp.linear_attention from PyTorch %s (CUDA events) against `lasp bench attn` (C, median of %d)" %
      (torch.__version__, repeat))
print("# B,H,T,D = %s, bf16, %s; in a stream: %d calls back to back (median of 5 runs), as a model makes them;"
      % (shape, torch.cuda.get_device_name(), repeat))
print("# alone: one call waited for (median of %d), Python's own time in the call not hidden" % repeat)
print("# host: the CPU's ms to issue a call in the stream run (over the stream ms: the GPU waits for Python)")
print("# %-14s %12s %10s %10s %10s %10s" % ("", "stream ms", "C ms", "overhead", "alone ms", "host ms"))
for name, (py, alone, host), c in (("forward", py_f, c_f), ("fwd+bwd", py_fb, c_fb)):
    print("  %-14s %12.3f %10.3f %9.1f%% %10.3f %10.3f" % (name, py, c, 100 * (py / c - 1), alone, host))
