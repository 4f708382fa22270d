#!/usr/bin/env python3
"""PyTorch CPU baseline for the Cut Cross-Entropy (CCE) benchmark.

What it does
------------
Measures what PyTorch does on the CPU for the linear-cross-entropy layer of a
language model, loss = mean_n CE(E[n] . C^T (+ bias), target[n]), on the same
data definition and shapes as `cce bench`, so that the two can be compared.

Data: lm-like(N, D, V, S=4, alpha=1.5, seed) from Docs/LMLIKE.md (Gaussian
classifier rows plus a Zipf-like log-frequency prior column, peaked softmax,
targets drawn from the model's own softmax), generated in float32 with a seeded
torch.Generator and then cast to the dtype under test.  The bits differ from the
Swift generator's; the statistics (which are what matter) are the same.

Methods
-------
  torch-eager                 logits = E @ C.T (+ bias); F.cross_entropy(logits.float(), t)
                              (logits are up-cast to float32 before the softmax, as
                              in the CCE paper's baseline; a no-op for f32)
  torch-compile               the same function under torch.compile (inductor);
                              compilation happens in the warm-up calls and is
                              reported separately as compile_seconds
  torch-linear-cross-entropy  F.linear_cross_entropy(E, C, t, options=
                              LinearCrossEntropyOptions()): PyTorch's own chunked
                              implementation (only if the installed torch has it)

Kinds
-----
  loss       forward only, under torch.no_grad()
  loss+grad  forward and backward, producing dE and dC (the bias, if any, is a
             constant)

How to run
----------
  python3 Benchmarks/scripts/pytorch_baseline.py --tokens 512 --dim 512 \\
      --vocab 32000 --dtype f32 --threads 2 --repeats 5 [--json]
  python3 Benchmarks/scripts/pytorch_baseline.py --compare bench.json --threads 2
      (runs PyTorch at the shape recorded in bench.json unless --tokens/--dim/
      --vocab/--dtype say otherwise, then prints our/PyTorch ratios)

Keep in mind: on a CPU without AVX512_BF16 / AMX (check the flags in
/proc/cpuinfo) torch's bf16 matrix products run in slow fallback code; at
N=D=512, V=32000 a bf16 loss+grad took ~50 s instead of ~0.6 s for f32 (the
script warns).  Use --methods/--kinds/--repeats to keep such runs short.

Needs torch (and nothing else outside the standard library); exits 2 with a
one-line message if torch is missing, 1 on bad arguments.

What the numbers mean
---------------------
  median_seconds  median wall-clock time of one call over --repeats calls, after
                  --warmup calls that are not timed.
  peak_bytes      peak extra resident memory of the call: before each timed call
                  we collect garbage, return free heap memory to the OS
                  (malloc_trim), read VmRSS from /proc/self/status and reset the
                  process's high-water mark by writing "5" to
                  /proc/self/clear_refs; after the call we read VmHWM.
                  peak_bytes = max over the repeats of (VmHWM - VmRSS before).
                  It counts everything the call touched and kept resident at its
                  peak: logits, softmax buffers, the gradients it returns, and
                  workspace.  To make freed buffers really leave the process,
                  glibc's mmap threshold is pinned at 128 KiB (mallopt), so every
                  large tensor is its own mapping and is unmapped when freed.
                  Page-granular and process-wide (other threads count too), but
                  the same definition as `cce bench` uses.
  loss            the loss value of the last call (a sanity check: all methods
                  should agree to a few digits).

JSON output (--json) is one object:
  {"tool": "pytorch", "torch_version": ..., "machine": ...,
   "shape": {"tokens": N, "dim": D, "vocab": V, "dtype": ...},
   "threads": T, "rows": [{"method", "kind", "median_seconds", "peak_bytes",
   ...}, ...]}
with a few extra keys (data, repeats, min_seconds, compile_seconds, loss, and
"compare" when --compare is given).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import re
import statistics
import sys
import time

DTYPES = ("f32", "bf16", "f16")
KINDS = ("loss", "loss+grad")
METHODS = ("torch-eager", "torch-compile", "torch-linear-cross-entropy")
LM_S = 4.0
LM_ALPHA = 1.5


# --------------------------------------------------------------------------- #
# Arguments


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors on one line and exits 1."""

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(message)


def fail(message: str, code: int = 1) -> None:
    print(f"pytorch_baseline: error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(
        description="PyTorch CPU baseline for the CCE benchmark "
        "(see the top of this file for what the numbers mean).")
    p.add_argument("--tokens", "-N", type=int, help="N, rows of E (default 512)")
    p.add_argument("--dim", "-D", type=int, help="D, hidden size (default 512)")
    p.add_argument("--vocab", "-V", type=int, help="V, vocabulary size (default 32000)")
    p.add_argument("--dtype", help="f32 | bf16 | f16 (default f32)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: CPUs available)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (default 5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls first (default 1; 2 for torch-compile)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--methods", default=None,
                   help="comma list of " + ",".join(METHODS) + " (default: all available)")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="comma list of " + ",".join(KINDS) + " (default: both)")
    p.add_argument("--bias", action="store_true",
                   help="add a constant bias vector (normal, std 0.1) to the logits")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--compare", metavar="FILE.json",
                   help="`cce bench --json` output to compare against")
    a = p.parse_args(argv)

    ref = None
    if a.compare:
        try:
            with open(a.compare) as f:
                ref = json.load(f)
            if not isinstance(ref, dict) or not isinstance(ref.get("rows"), list):
                raise ValueError("no \"rows\" list")
        except (OSError, ValueError) as e:
            fail(f"cannot read --compare file {a.compare}: {e}")
    a.reference = ref
    shape = (ref or {}).get("shape") or {}
    # Explicit flags win; otherwise take the shape of the file being compared.
    a.tokens = a.tokens if a.tokens is not None else shape.get("tokens", 512)
    a.dim = a.dim if a.dim is not None else shape.get("dim", 512)
    a.vocab = a.vocab if a.vocab is not None else shape.get("vocab", 32000)
    a.dtype = a.dtype if a.dtype is not None else shape.get("dtype", "f32")
    if a.threads is None:
        a.threads = len(os.sched_getaffinity(0))

    for name in ("tokens", "dim", "vocab", "threads", "repeats"):
        v = getattr(a, name)
        if not isinstance(v, int) or v <= 0:
            fail(f"--{name} must be a positive integer, got {v!r}")
    if a.warmup is not None and a.warmup < 0:
        fail(f"--warmup must be >= 0, got {a.warmup}")
    if a.dtype not in DTYPES:
        fail(f"unknown dtype {a.dtype!r} (expected one of {', '.join(DTYPES)})")
    a.kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    for k in a.kinds:
        if k not in KINDS:
            fail(f"unknown kind {k!r} (expected {', '.join(KINDS)})")
    if a.methods is not None:
        a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
        for m in a.methods:
            if m not in METHODS:
                fail(f"unknown method {m!r} (expected {', '.join(METHODS)})")
    if not a.kinds or (a.methods is not None and not a.methods):
        fail("nothing to run")
    return a


# --------------------------------------------------------------------------- #
# Memory measurement (/proc/self)

_libc = None


def setup_malloc() -> None:
    """Pin glibc's mmap threshold so freed tensors are returned to the OS."""
    global _libc
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_MMAP_THRESHOLD = -3
        _libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        _libc = None


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


def memory_probe_works() -> bool:
    try:
        reset_peak()
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def settle() -> int:
    """Free what can be freed, reset the peak; return VmRSS in bytes."""
    gc.collect()
    if _libc is not None:
        try:
            _libc.malloc_trim(0)
        except AttributeError:
            pass
    rss = _status_kib("VmRSS") * 1024
    reset_peak()
    return rss


def peak_since(rss_before: int) -> int:
    return max(0, _status_kib("VmHWM") * 1024 - rss_before)


# --------------------------------------------------------------------------- #
# Data: lm-like(N, D, V, S, alpha, seed), Docs/LMLIKE.md


def lm_like(torch, n: int, d: int, v: int, seed: int, s: float = LM_S,
            alpha: float = LM_ALPHA, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    c = torch.empty(v, d)
    if d > 1:
        c[:, : d - 1] = torch.randn(v, d - 1, generator=g) / (d - 1) ** 0.5
    rank = torch.randperm(v, generator=g).to(torch.float32) + 1.0
    c[:, d - 1] = -alpha * torch.log(rank)
    e = lm_like_embeddings(torch, n, d, g, s)
    b = torch.randn(v, generator=g) * 0.1 if bias else None
    return e, c, b, lm_like_targets(torch, e, c, b, g)


def lm_like_embeddings(torch, n: int, d: int, g, s: float = LM_S):
    """The recipe's token embeddings: N(0, s²) entries and a last column of ones, from `g`."""
    e = torch.empty(n, d)
    if d > 1:
        e[:, : d - 1] = torch.randn(n, d - 1, generator=g) * s
    e[:, d - 1] = 1.0
    return e


def lm_like_targets(torch, e, c, b, g):
    """Targets from the model's own softmax (logits e @ c.T + b), a block of rows at a time."""
    n, v = e.shape[0], c.shape[0]
    t = torch.empty(n, dtype=torch.long)
    block = max(1, (64 << 20) // (4 * v))
    with torch.no_grad():
        for i in range(0, n, block):
            logits = e[i:i + block] @ c.T
            if b is not None:
                logits += b
            p = torch.softmax(logits, dim=1)
            t[i:i + block] = torch.multinomial(p, 1, generator=g).squeeze(1)
    return t


# --------------------------------------------------------------------------- #
# Methods


def make_methods(torch, wanted):
    F = torch.nn.functional

    def eager(e, c, b, t):
        logits = e @ c.T
        if b is not None:
            logits = logits + b
        return F.cross_entropy(logits.float(), t)

    available = {"torch-eager": eager}
    available["torch-compile"] = torch.compile(eager, dynamic=False)
    if hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):
        opts = torch.nn.LinearCrossEntropyOptions()

        def lce(e, c, b, t):
            return F.linear_cross_entropy(e, c, t, linear_bias=b, options=opts)

        available["torch-linear-cross-entropy"] = lce
    if wanted is None:
        return [(m, available[m]) for m in METHODS if m in available]
    out = []
    for m in wanted:
        if m not in available:
            print(f"pytorch_baseline: {m} is not available in torch "
                  f"{torch.__version__}; skipped", file=sys.stderr)
        else:
            out.append((m, available[m]))
    return out


def run_one(torch, fn, kind, e, c, b, t):
    """One call of the operation; returns the loss as a float."""
    if kind == "loss":
        with torch.no_grad():
            return float(fn(e, c, b, t))
    e.grad = None
    c.grad = None
    loss = fn(e, c, b, t)
    loss.backward()
    return float(loss.detach())


def measure(torch, name, fn, kind, data, repeats, warmup, have_mem):
    e0, c0, b, t = data
    e = e0.detach().requires_grad_(kind == "loss+grad")
    c = c0.detach().requires_grad_(kind == "loss+grad")
    if warmup is None:
        warmup = 2 if name == "torch-compile" else 1
    t0 = time.perf_counter()
    for _ in range(warmup):
        run_one(torch, fn, kind, e, c, b, t)
    warm_s = time.perf_counter() - t0
    times, peaks, loss = [], [], float("nan")
    for _ in range(repeats):
        e.grad = None
        c.grad = None
        rss = settle() if have_mem else 0
        start = time.perf_counter()
        loss = run_one(torch, fn, kind, e, c, b, t)
        times.append(time.perf_counter() - start)
        if have_mem:
            peaks.append(peak_since(rss))
    e.grad = None
    c.grad = None
    row = {
        "method": name,
        "kind": kind,
        "median_seconds": statistics.median(times),
        "min_seconds": min(times),
        "peak_bytes": max(peaks) if peaks else None,
        "loss": loss,
        "repeats": repeats,
    }
    if name == "torch-compile":
        row["compile_seconds"] = warm_s  # warm-up calls, dominated by compilation
    return row


# --------------------------------------------------------------------------- #
# Reporting


_NATIVE = {"bf16": "avx512_bf16 or amx_bf16", "f16": "avx512_fp16 or amx_fp16"}


def _cpu_has(dtype: str) -> bool:
    """Does the CPU have native dot products for this 16-bit type?"""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^flags\s*:(.*)$", f.read(), re.M)
    except OSError:
        return True  # unknown: do not warn
    flags = set(m.group(1).split()) if m else set()
    want = {"bf16": {"avx512_bf16", "amx_bf16"}, "f16": {"avx512_fp16", "amx_fp16"}}[dtype]
    return bool(flags & want)


def machine_description(torch) -> str:
    model = platform.processor() or platform.machine()
    try:   # name, family and model (virtual machines often show only "AMD EPYC"), and the vector extensions
        with open("/proc/cpuinfo") as f:
            info = f.read()
        m = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
        if m:
            model = m.group(1).strip()
        fam, num = re.search(r"^cpu family\s*:\s*(\S+)", info, re.M), re.search(r"^model\s*:\s*(\S+)", info, re.M)
        flags = set((re.search(r"^flags\s*:\s*(.+)$", info, re.M) or re.match("()", "")).group(1).split())
        isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
        model += f" (family {fam.group(1) if fam else '?'} model {num.group(1) if num else '?'}; {' '.join(isa) or 'no AVX2'})"
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0))
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        cap = "?"
    mem = _meminfo_gib()
    return (f"{model}, {platform.machine()}, {cpus} CPUs, {mem:.0f} GiB, "
            f"torch CPU capability {cap}")


def _meminfo_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemTotal:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) / 2**20 if m else 0.0
    except OSError:
        return 0.0


def fmt_mb(b) -> str:
    return "n/a" if b is None else f"{b / 1e6:.1f}"


def compare(ours: dict, rows: list[dict]) -> list[dict]:
    """Each of our rows against the fastest PyTorch row of the same kind."""
    out = []
    for r in ours.get("rows", []):
        kind = r.get("kind")
        same = [x for x in rows if x["kind"] == kind]
        if not same:
            continue
        best = min(same, key=lambda x: x["median_seconds"])
        mems = [x for x in same if x.get("peak_bytes")]
        leanest = min(mems, key=lambda x: x["peak_bytes"]) if mems else None
        ts, pb = r.get("median_seconds"), r.get("peak_bytes")
        out.append({
            "method": r.get("method"),
            "kind": kind,
            "median_seconds": ts,
            "peak_bytes": pb,
            "best_torch_method": best["method"],
            "time_ratio": ts / best["median_seconds"] if ts else None,
            "memory_ratio": (pb / best["peak_bytes"]
                             if pb is not None and best.get("peak_bytes") else None),
            "leanest_torch_method": leanest["method"] if leanest else None,
            "memory_ratio_vs_leanest": (pb / leanest["peak_bytes"]
                                        if pb is not None and leanest else None),
        })
    return out


def print_table(result: dict) -> None:
    sh = result["shape"]
    print(f"PyTorch {result['torch_version']} on {result['machine']}")
    print(f"shape N={sh['tokens']} D={sh['dim']} V={sh['vocab']} {sh['dtype']}, "
          f"{result['threads']} threads, lm-like data (S={LM_S:g}, alpha={LM_ALPHA:g}, "
          f"seed={result['data']['seed']})")
    hdr = f"{'method':<28} {'kind':<10} {'median s':>10} {'min s':>10} {'peak MB':>9} {'loss':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in result["rows"]:
        extra = (f"  (compile+warm-up {r['compile_seconds']:.1f} s)"
                 if "compile_seconds" in r else "")
        print(f"{r['method']:<28} {r['kind']:<10} {r['median_seconds']:>10.4f} "
              f"{r['min_seconds']:>10.4f} {fmt_mb(r['peak_bytes']):>9} "
              f"{r['loss']:>9.4f}{extra}")
    if "compare" in result:
        c = result["compare"]
        print()
        print(f"ours ({c['file']}) / fastest PyTorch row of the same kind; "
              f"ratio < 1 means ours is faster / leaner")
        if c.get("shape_mismatch"):
            print(f"WARNING: shapes differ: ours {c['their_shape']}, PyTorch {sh}")
        hdr = (f"{'our method':<24} {'kind':<10} {'s':>9} {'MB':>9} "
               f"{'vs torch':<28} {'time x':>7} {'mem x':>7} {'mem x leanest':>14}")
        print(hdr)
        print("-" * len(hdr))
        for r in c["ratios"]:
            def x(v):
                return "n/a" if v is None else f"{v:.3f}"
            ts = r["median_seconds"]
            print(f"{str(r['method']):<24} {r['kind']:<10} "
                  f"{(f'{ts:.4f}' if ts is not None else 'n/a'):>9} {fmt_mb(r['peak_bytes']):>9} "
                  f"{r['best_torch_method']:<28} {x(r['time_ratio']):>7} "
                  f"{x(r['memory_ratio']):>7} {x(r['memory_ratio_vs_leanest']):>14}")


# --------------------------------------------------------------------------- #


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("pytorch_baseline: torch is not installed (pip install torch)", file=sys.stderr)
        return 2

    setup_malloc()
    torch.set_num_threads(args.threads)
    have_mem = memory_probe_works()
    if not have_mem:
        print("pytorch_baseline: /proc/self/clear_refs not usable; peak_bytes will be null",
              file=sys.stderr)
    if args.dtype in ("bf16", "f16") and not _cpu_has(args.dtype):
        print(f"pytorch_baseline: warning: this CPU lacks {_NATIVE[args.dtype]}; torch's "
              f"{args.dtype} matrix products fall back to slow code (can be 10-100x slower "
              f"than f32)", file=sys.stderr)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]

    e, c, b, t = lm_like(torch, args.tokens, args.dim, args.vocab, args.seed, bias=args.bias)
    e, c = e.to(dtype).contiguous(), c.to(dtype).contiguous()
    if b is not None:
        b = b.to(dtype)
    data = (e, c, b, t)

    rows = []
    for name, fn in make_methods(torch, args.methods):
        for kind in args.kinds:
            try:
                rows.append(measure(torch, name, fn, kind, data, args.repeats,
                                    args.warmup, have_mem))
            except Exception as ex:  # e.g. compile needs a C++ compiler
                msg = str(ex).strip().splitlines()[0] if str(ex).strip() else ""
                print(f"pytorch_baseline: {name} {kind} failed: "
                      f"{type(ex).__name__}: {msg[:200]}", file=sys.stderr)
            gc.collect()

    result = {
        "tool": "pytorch",
        "torch_version": torch.__version__,
        "machine": machine_description(torch),
        "shape": {"tokens": args.tokens, "dim": args.dim, "vocab": args.vocab,
                  "dtype": args.dtype},
        "threads": args.threads,
        "data": {"generator": "lm-like", "S": LM_S, "alpha": LM_ALPHA,
                 "seed": args.seed, "bias": args.bias},
        "rows": rows,
    }
    if args.reference is not None:
        ref = args.reference
        their = ref.get("shape") or {}
        mismatch = any(k in their and their[k] != result["shape"][k]
                       for k in ("tokens", "dim", "vocab", "dtype"))
        result["compare"] = {"file": args.compare, "their_shape": their,
                             "shape_mismatch": mismatch, "ratios": compare(ref, rows)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
