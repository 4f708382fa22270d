"""Summarizes an Nsight Compute CSV (ncu --section SpeedOfLight --csv) of
cuda/harness/profile_one.py by kernel for the second forward + backward (the first is warm-up):
launches, total duration, and the duration-weighted SM, DRAM and memory throughput (percent of
the GPU's peak). Used by scripts/device/ncu_profile.sh; Docs/CUDA.md reads its output.

    python3 scripts/device/ncu_stages.py ncu_all.csv
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
    """The library's kernels by their name in namespace cce; others (PyTorch's) marked torch:."""
    m = re.search(r"cce::(\w+)", name)
    if m:
        return m.group(1)
    m = re.search(r"(\w+Kernel|\w+_kernel)", name)
    return "torch:" + (m.group(1) if m else name[:30])


launches = [(short(name), metrics) for name, metrics in kernels(sys.argv[1]).values()]
# The second forward + backward: from the second forward kernel to the end.
starts = [j for j, (name, _) in enumerate(launches) if name in ("lse_partial_kernel", "lse_tma_kernel")]
call = launches[starts[1]:]
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
print(f"second call: {len(call)} kernels, {total / 1e3:.2f} ms of kernel time")
for name, a in agg.items():
    print(f"{name:28s} x{a[0]:3d} {a[1] / 1e3:8.2f} ms  SM {a[2] / a[1]:5.1f}%  DRAM {a[3] / a[1]:5.1f}%  "
          f"mem {a[4] / a[1]:5.1f}%")
