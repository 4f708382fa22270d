"""Markdown tables from `python -m cce_swift.conformance ... --json` files (Docs/CONFORMANCE.md).

    python python/benchmarks/conformance_table.py DIR     # DIR holds conf_<impl>_<dtype>.json

One table per dtype: a row per case, a column per implementation; a cell is the worst error over
the case's tensors as a percentage of its budget ("pass"), "**FAIL n.nx**" (the worst tensor's
error over its budget), "error", "unsup." (the implementation refused an option) or "-" (not run).
Then every failure and error with its numbers and message.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

IMPLS = [("cce_cuda", "this project's CUDA library"), ("apple_cce", "apple cce"),
         ("apple_cce_exact", "apple cce_exact"), ("liger", "Liger"), ("torch_compile", "torch.compile"),
         ("baseline", "eager materialized")]
DTYPES = ["f32", "f16", "bf16"]


def load(d: Path):
    out = {}
    for impl, _ in IMPLS:
        for dt in DTYPES:
            p = d / f"conf_{impl}_{dt}.json"
            if p.exists():
                for r in json.loads(p.read_text())["results"]:
                    out[(impl, dt, r["case"])] = r
    return out


def worst(r):
    ts = r.get("tensors", {})
    ratios = {k: (x["relative"] / x["budget"] if x["budget"] else 0.0) for k, x in ts.items()}
    k = max(ratios, key=ratios.get) if ratios else None
    return k, (ratios[k] if k else 0.0)


def cell(r):
    if r is None:
        return "-"
    s = r["status"]
    if s == "unsupported":
        return "unsup."
    if s == "error":
        return "error"
    k, x = worst(r)
    if s == "pass":
        return f"{100 * x:.1f}%"
    return f"**FAIL {x:.1f}x** ({k})"


def main(d):
    res = load(Path(d))
    cases = []
    for (impl, dt, case) in res:
        if case not in cases:
            cases.append(case)
    impls = [(i, n) for i, n in IMPLS if any(k[0] == i for k in res)]
    for dt in DTYPES:  # one table per dtype
        print(f"**{dt}**\n")
        print("| case | " + " | ".join(n for i, n in impls) + " |")
        print("|---" * (1 + len(impls)) + "|")
        for case in cases:
            print(f"| {case} | " + " | ".join(cell(res.get((i, dt, case))) for i, _ in impls) + " |")
        print()
    for i, n in impls:
        counts = {}
        for dt in DTYPES:
            for case in cases:
                r = res.get((i, dt, case))
                if r:
                    counts[r["status"]] = counts.get(r["status"], 0) + 1
        print(f"- {n}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print()
    for (i, dt, case), r in res.items():
        if r["status"] in ("FAIL", "error"):
            if r["status"] == "FAIL":
                bad = {k: f"{x['relative']:.2e} (budget {x['budget']:.0e})" for k, x in r["tensors"].items()
                       if not x["passed"]}
                ok = {k: f"{x['relative']:.1e}" for k, x in r["tensors"].items() if x["passed"]}
                print(f"- {i} {dt} {case}: FAIL {bad}; within budget {ok}")
            else:
                print(f"- {i} {dt} {case}: error {r['message'][:300]}")
    for (i, dt, case), r in res.items():
        if r["status"] == "unsupported" and dt == "f32":
            print(f"- unsupported {i} {case}: {r['message'][:160]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
