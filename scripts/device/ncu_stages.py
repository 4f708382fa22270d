"""Summarizes an Nsight Compute CSV (ncu --section SpeedOfLight --csv) of
cuda/harness/profile_one.py by kernel for the second forward + backward (the first is warm-up):
launches, total duration, and the duration-weighted SM, DRAM and memory throughput (percent of
the GPU's peak); then by stage (Docs/CUDA.md's table), with the TFLOP/s of the dense products a
stage stands for when the shape is given: the forward and the dz stage one product 2·N·V·D
each (the dz stage recomputes every tile), the gradient products two over the kept tiles.
Used by scripts/device/ncu_profile.sh; Docs/CUDA.md reads its output.

    python3 scripts/device/ncu_stages.py ncu_all.csv [N D V kept_fraction]
"""
import collections
import csv
import re
import sys


def kernels(path):
    """{launch id: (kernel name, {metric: value})} in launch order, numeric metrics only."""
    rows = [r for r in csv.reader(open(path)) if r]
    hdr = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    h = rows[hdr]
    ID, K, M, V = (h.index(x) for x in ("ID", "Kernel Name", "Metric Name", "Metric Value"))
    out = {}
    for r in rows[hdr + 1:]:
        value = r[V].replace(",", "") if len(r) > V else ""
        if not value.replace(".", "").isdigit():
            continue
        out.setdefault(int(r[ID]), (r[K], {}))[1][r[M]] = float(value)
    return dict(sorted(out.items()))


def short(name):
    """The library's kernels by their name in namespace cce (its radix sorts, CUB's, marked cub:);
    others (PyTorch's) marked torch:."""
    m = re.search(r"cce::(\w+)", name)
    if m:
        return m.group(1)
    m = re.search(r"(\w+Kernel|\w+_kernel)", name)
    return ("cub:" if "CUB_" in name else "torch:") + (m.group(1) if m else name[:30])


launches = [(short(name), metrics) for name, metrics in kernels(sys.argv[1]).values()]
# One forward + backward: from a forward kernel to the next. The second call unless it did not
# finish (ncu stopped by a timeout: no finish_dE_kernel in it), then the first.
starts = [j for j, (name, _) in enumerate(launches) if name in ("lse_partial_kernel", "lse_tma_kernel")]
calls = [launches[a:b] for a, b in zip(starts, starts[1:] + [len(launches)])]
done = [i for i, c in enumerate(calls) if any(name == "finish_dE_kernel" for name, _ in c)]
which = 1 if 1 in done else done[-1]
call = calls[which]
print(f"call {which + 1} of {len(calls)} (each kernel replayed on its own under ncu, caches flushed)")
agg = collections.OrderedDict()   # name: [launches, µs, µs·SM%, µs·DRAM%, µs·memory%]
for name, m in call:
    us = m["Duration"] / 1e3
    a = agg.setdefault(name, [0, 0.0, 0.0, 0.0, 0.0])
    a[0] += 1
    a[1] += us
    a[2] += us * m["Compute (SM) Throughput"]
    a[3] += us * m["DRAM Throughput"]
    a[4] += us * m["Memory Throughput"]
total = sum(a[1] for a in agg.values())
print(f"{len(call)} kernels, {total / 1e3:.2f} ms of kernel time")
for name, a in agg.items():
    print(f"{name:28s} x{a[0]:3d} {a[1] / 1e3:8.2f} ms  SM {a[2] / a[1]:5.1f}%  DRAM {a[3] / a[1]:5.1f}%  "
          f"mem {a[4] / a[1]:5.1f}%")

STAGES = [
    ("forward LSE", {"lse_tma_kernel", "lse_partial_kernel", "lse_finish_kernel", "reduce_kernel", "prep_targets_kernel"}),
    ("vocabulary order", {"avg_logit_kernel", "invert_kernel", "tpos_kernel", "iota_kernel", "mean_rows_kernel"}),
    ("dz stage", {"dz_tma_kernel", "dz_kernel", "gather_rows_kernel", "colsum_part_kernel", "colsum_finish_kernel",
                  "dbias_from_sums_kernel", "fill_kernel"}),
    ("gradient products", {"products_tma_kernel", "products_wg_kernel", "products_kernel"}),
    ("first-order estimate", {"block_mean_kernel", "row_weights_kernel", "reduce_rows_kernel", "class_weight_terms_kernel"}),
    ("dE and dbias finish", {"finish_dE_kernel", "finish_db_kernel"}),
]
shape = [float(x) for x in sys.argv[2:6]] if len(sys.argv) >= 6 else None
dense = 2 * shape[0] * shape[1] * shape[2] if shape else 0
products = {"forward LSE": 1.0, "dz stage": 1.0, "gradient products": 2 * shape[3] if shape else 0}
print("by stage:")
for stage, names in STAGES:
    rows = [(n, a) for n, a in agg.items() if n in names or (stage == "vocabulary order" and n.startswith("cub:"))]
    if not rows:
        continue
    us = sum(a[1] for _, a in rows)
    sm = sum(a[2] for _, a in rows) / us
    dram = sum(a[3] for _, a in rows) / us
    rate = f"  {products[stage] * dense / (us * 1e-6) / 1e12:6.0f} TFLOP/s" if shape and stage in products else ""
    print(f"  {stage:22s} x{sum(a[0] for _, a in rows):3d} {us / 1e3:8.2f} ms  SM {sm:5.1f}%  DRAM {dram:5.1f}%{rate}")
other = [n for n in agg if not any(n in names for _, names in STAGES) and not n.startswith("cub:")]
if other:
    print("  not in a stage:", ", ".join(other))
