#!/usr/bin/env python3
"""Markdown tables from `cce bench --json` files, for Docs/PERFORMANCE.md.

Usage: python3 Benchmarks/scripts/tables.py Docs/bench/*.json > /tmp/tables.md

For each file: a heading with the shape, machine and toolchain, one row per (method, kind)
with median and minimum seconds, peak extra MB, GFLOP/s where the row is a matmul, and the
ratios the benchmark computed in that run. Standard library only.
"""
import json
import sys


def table(path):
    with open(path) as f:
        r = json.load(f)
    s = r["shape"]
    out = [f"### N={s['tokens']}, D={s['dim']}, V={s['vocab']}, {s['dtype']}, {r['threads']} threads, "
           f"median of {r['repeats']}",
           "",
           f"Machine: {r['machine']}. Toolchain: {r['toolchain']}; SIMD: {r['target_cpu_flags']}. "
           f"Plan: {r['plan'].split('; machine')[0]}.",
           "",
           "| method | kind | median s | min s | peak extra MB | GFLOP/s |",
           "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        g = f"{row['gflops']:.1f}" if row.get("gflops") else ""
        out.append(f"| {row['method']} | {row['kind']} | {row['median_seconds']:.3f} | "
                   f"{row['min_seconds']:.3f} | {row['peak_bytes'] / 1e6:.2f} | {g} |")
    if r.get("filter"):
        out += ["", f"CCE filtering (loss+grad): {r['filter']}."]
    if r.get("ratios"):
        out += ["", "| ratio (same run) | value |", "|---|---|"]
        for k, v in sorted(r["ratios"].items()):
            out.append(f"| {k} | {v:.4f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: tables.py BENCH.json [...]", file=sys.stderr)
        sys.exit(1)
    print("\n".join(table(p) for p in sys.argv[1:]))
