"""Prints ncu's --csv metrics (one row per kernel launch and metric) as one line per launch.

usage: ncu_table.py FILE.csv [COPY_GB_S]

With the 11 launches of `lasp bench attn --repeat 1 --warmup 0` (a forward, then a forward and a backward)
each row is named by its pass, and the forward and the backward get totals: their DRAM bytes, and the time
those bytes take at the copy bandwidth COPY_GB_S (the floor of a pass that moves them)."""
import csv
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
copy_bw = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
if not rows:
    print(open(sys.argv[1]).read()[-2000:])
    sys.exit(0)
head = rows[0]
ki, ni, mi, vi = head.index("ID"), head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value")
launches = {}
for r in rows[1:]:
    name = r[ni].split("(")[0].split("<")[0].split()[-1].split("::")[-1]
    if "<" in r[ni]:
        name += "<" + r[ni].split("<", 1)[1].split(">")[0][:16] + ">"
    d = launches.setdefault(int(r[ki]), {"name": name})
    d[r[mi]] = r[vi].replace(",", "")

PASSES = ["fwd: states", "fwd: scan", "fwd: outputs", "f+b fwd: states", "f+b fwd: scan", "f+b fwd: outputs",
          "bwd: dq outputs", "bwd: dv states", "bwd: dv scan", "bwd: dv outputs", "bwd: dk outputs"]
ids = sorted(launches)
named = len(ids) == len(PASSES)


def val(d, prefix):
    for k, v in d.items():
        if k.startswith(prefix):
            return float(v)
    return float("nan")


print(f"{'pass':<17} {'kernel':<26} {'us':>7} {'MB rd':>7} {'MB wr':>7} {'L2 MB':>7} {'dram%':>6} {'L2%':>5} "
      f"{'SM%':>5}")
for n, k in enumerate(ids):
    d = launches[k]
    print(f"{PASSES[n] if named else k:<17} {d['name'][:26]:<26} {val(d, 'gpu__time_duration') / 1e3:7.1f} "
          f"{val(d, 'dram__bytes_read') / 1e6:7.1f} {val(d, 'dram__bytes_write') / 1e6:7.1f} "
          f"{val(d, 'lts__t_bytes') / 1e6:7.1f} {val(d, 'dram__throughput'):6.1f} {val(d, 'lts__throughput'):5.1f} "
          f"{val(d, 'sm__throughput'):5.1f}")
if named:
    for label, sel in (("forward", ids[0:3]), ("backward", ids[6:11]), ("fwd+bwd", ids[3:11])):
        us = sum(val(launches[k], "gpu__time_duration") for k in sel) / 1e3
        mb = sum(val(launches[k], "dram__bytes_read") + val(launches[k], "dram__bytes_write") for k in sel) / 1e6
        l2 = sum(val(launches[k], "lts__t_bytes") for k in sel) / 1e6
        fl = mb / copy_bw * 1e3 if copy_bw > 0 else 0.0  # MB / (GB/s) is ms
        floor = f"{fl:7.1f} us at the copy bandwidth (the kernels take {us / fl:.2f}x)" if fl > 0 else ""
        print(f"# {label:<9} {us:7.1f} us of kernels, {mb:7.1f} MB DRAM, {l2:7.1f} MB L2; bytes' floor {floor}")
