#!/usr/bin/env python3
"""Where one kernel's instructions go, from Nsight Compute's SASS source view:

    ncu --set full --import-source yes -k regex:KERNEL -c 1 -o REPORT PROGRAM   (a -lineinfo build)
    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > sass.csv
    python3 tools/ncu_sass_summary.py sass.csv [--blocks 14]

Prints the warp instructions executed, their mix by opcode, the warp-stall reasons sampled, and
the heaviest basic blocks (runs of consecutive instructions executed equally often) with each
block's share of the instructions, its length, its execution count and its opcode mix.
"""
import argparse
import collections
import csv


def opcode(source):
    words = source.split()
    if not words:
        return "?"
    word = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    return word.split(".")[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--blocks", type=int, default=14)
    args = ap.parse_args()
    rows = list(csv.reader(open(args.csv)))
    header = rows[1]
    executed, source = header.index("Instructions Executed"), header.index("Source")
    stalls = [i for i, name in enumerate(header)
              if name.startswith("stall_") and "Not Issued" not in name]
    lines, by_opcode, by_stall = [], collections.Counter(), collections.Counter()
    for row in rows[2:]:
        if len(row) <= executed:
            continue
        count = float(row[executed] or 0)
        lines.append((count, opcode(row[source])))
        by_opcode[opcode(row[source])] += count
        for i in stalls:
            by_stall[header[i][len("stall_"):]] += float(row[i] or 0)
    total = sum(count for count, _ in lines)
    print(f"{rows[0][1][:100]}\nwarp instructions executed: {total:.4g}")
    print("by opcode: " + " ".join(f"{k} {100 * v / total:.1f}%"
                                    for k, v in by_opcode.most_common(16)))
    sampled = sum(by_stall.values()) or 1
    print("stalls sampled: " + " ".join(f"{k} {100 * v / sampled:.0f}%"
                                        for k, v in by_stall.most_common(8)))
    blocks, start = [], 0
    for i in range(1, len(lines) + 1):
        if i == len(lines) or lines[i][0] != lines[start][0]:
            count = lines[start][0]
            if count > 0:
                blocks.append((count * (i - start), start, i - start, count))
            start = i
    print("heaviest blocks (share, first line, length, executions, opcodes):")
    for weight, first, length, count in sorted(blocks, reverse=True)[:args.blocks]:
        mix = collections.Counter(op for _, op in lines[first:first + length])
        print(f"  {100 * weight / total:5.1f}%  line {first:5d}  len {length:4d}  x{count:9.0f}  "
              + " ".join(f"{k}{v}" for k, v in mix.most_common(8)))


if __name__ == "__main__":
    main()
