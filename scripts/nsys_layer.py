#!/usr/bin/env python3
"""scripts/nsys_layer.py — the last N GPU activities of each rank's nsys report, on one time axis:
start (µs from the earliest shown), duration, stream, name. For reading one SP layer's timeline.
   usage: scripts/nsys_layer.py N report0.nsys-rep [report1.nsys-rep ...]"""
import csv, io, subprocess, sys

n = int(sys.argv[1])
rows = []
for rank, rep in enumerate(sys.argv[2:]):
    out = subprocess.run(["nsys", "stats", "--report", "cuda_gpu_trace", "--format", "csv", "--quiet", rep],
                         capture_output=True, text=True).stdout
    text = out[out.find("Start"):] if "Start" in out else ""
    recs = list(csv.DictReader(io.StringIO(text)))
    def col(r, *names):
        for k in r:
            if any(k.startswith(x) for x in names):
                return r[k]
        return ""
    recs = [(int(col(r, "Start")), int(col(r, "Duration")), col(r, "Strm"), col(r, "Name")) for r in recs
            if col(r, "Start").isdigit()]
    recs.sort()
    rows += [(rank,) + r for r in recs[-n:]]
t0 = min(r[1] for r in rows) if rows else 0
print("rank   start_us    dur_us  stream  name")
for rank, s, d, st, name in sorted(rows, key=lambda r: r[1]):
    print(f"{rank:4d} {(s - t0) / 1e3:10.1f} {d / 1e3:9.1f}  {st:>6}  {name[:70]}")
