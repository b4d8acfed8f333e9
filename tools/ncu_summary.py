#!/usr/bin/env python3
"""Sums the GPU time of every kernel in an Nsight Compute CSV, grouped by kernel name; the metrics
named by --means are averaged over the kernel's launches and printed after the name.

    ncu --metrics gpu__time_duration.sum[,METRIC...] --csv --page raw PROGRAM > ncu.csv
    python3 tools/ncu_summary.py ncu.csv [--top 30] [--means METRIC,...]
"""
import argparse
import collections
import csv
import io


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--means", default="", help="comma-separated metrics to average per kernel")
    args = ap.parse_args()
    lines = open(args.csv).read().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header, units = rows[0], rows[1]
    name_col, time_col = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
    extra = [header.index(m) for m in args.means.split(",") if m]
    total, count = collections.defaultdict(float), collections.Counter()
    sums = collections.defaultdict(lambda: [0.0] * len(extra))
    counted = collections.defaultdict(lambda: [0] * len(extra))  # launches with a value
    for row in rows[2:]:
        if len(row) <= max([time_col] + extra):
            continue
        name = row[name_col].split("(")[0][:110]
        total[name] += float(row[time_col].replace(",", ""))
        count[name] += 1
        for j, i in enumerate(extra):
            try:
                sums[name][j] += float(row[i].replace(",", ""))
                counted[name][j] += 1
            except ValueError:  # a metric ncu could not collect ('n/a', 'No-CC')
                pass
    everything = sum(total.values())
    print(f"{len(rows) - 2} kernels, {everything / 1e6:.2f} ms of GPU time ({units[time_col]} summed)")
    if extra:
        print("means after the name: " + ", ".join(f"{header[i]} ({units[i]})" for i in extra))
    for name, t in sorted(total.items(), key=lambda kv: -kv[1])[: args.top]:
        means = " ".join(f"{v / n:.4g}" if n else "n/a" for v, n in zip(sums[name], counted[name]))
        print(f"{t / 1e3:10.1f} us {100 * t / everything:5.1f}% {count[name]:6d}x  {name}  {means}")


if __name__ == "__main__":
    main()
