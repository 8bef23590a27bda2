"""Prints ncu's --csv metrics (one row per kernel launch and metric) as one line per launch."""
import csv
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows:
    print(open(sys.argv[1]).read()[-2000:])
    sys.exit(0)
head = rows[0]
ki, ni, mi, vi = head.index("ID"), head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value")
launches = {}
for r in rows[1:]:
    d = launches.setdefault(r[ki], {"name": r[ni].split("(")[0].split("<")[0] + "<" + r[ni].split("<", 1)[-1].split(">")[0][:40] + ">"})
    d[r[mi]] = r[vi].replace(",", "")
print(f"{'id':>3} {'kernel':<56} {'us':>8} {'MB rd':>8} {'MB wr':>8} {'dram%':>6} {'tc%':>6} {'warps%':>6}")
for k, d in sorted(launches.items(), key=lambda x: int(x[0])):
    f = lambda m: float(d.get(m, "nan"))
    print(f"{k:>3} {d['name']:<56} {f('gpu__time_duration.sum') / 1e3:8.1f} {f('dram__bytes_read.sum') / 1e6:8.1f} "
          f"{f('dram__bytes_write.sum') / 1e6:8.1f} {f('dram__throughput.avg.pct_of_peak_sustained_elapsed'):6.1f} "
          f"{f('sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active'):6.1f} "
          f"{f('sm__warps_active.avg.pct_of_peak_sustained_active'):6.1f}")
