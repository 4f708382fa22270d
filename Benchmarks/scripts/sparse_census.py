#!/usr/bin/env python3
"""How many logits a backward without recomputation would have to keep (a census, numpy only).

The fused call's backward recomputes every row segment the forward's block maxima cannot rule
out (Docs/PERFORMANCE.md). A backward that recomputed nothing would need the forward to keep
every logit that may still matter once the row's LSE is known. Because lse_i only grows as the
sweep goes on, an entry with z - (running LSE so far) < log(eps/16) is below eps/16 at the end
too, so the forward can decide as it goes what to keep. This script counts, per row:

  - entries with p >= eps and p >= eps/16 against the final LSE (what the filter and dC's
    entry filter keep);
  - entries a forward would keep against its running LSE (over 256-wide blocks of the
    vocabulary sorted by C_v . mean(E), as the engine sweeps it), in all, in the first block,
    and in a row's densest block (a row keeping more than 3/4 of a block is recomputed);
  - row segments of VB = 128 with some p >= eps (what the fused call keeps today).

Data: lm-like(N, D, V, S, alpha) as Docs/LMLIKE.md defines it (numpy's generator, so other
draws than the Swift tool's; the statistics are the same). eps = 2^-12 (the bf16 default).

    python3 Benchmarks/scripts/sparse_census.py 512 1024 128256 4 1.5

With `--shards P` it counts instead, per row and contiguous vocabulary shard (each sorted by
C_v . mean(E) on its own, as a rank of a vocabulary-parallel run sweeps it), the entries a
shard's forward keeps: against its own running LSE alone; with the seed exchange
(Engine.sweepExchanging: the first forward block against the running LSE, the rest against
the larger of the running LSE of the rest and the ranks' first-block LSEs combined); and its
share, against the global LSE.

    python3 Benchmarks/scripts/sparse_census.py 512 1024 128256 4 1.5 --shards 4
"""
import math
import sys

import numpy as np


def lm_like(n, d, v, s, alpha, seed=0):
    r = np.random.default_rng(seed)
    c = np.empty((v, d), np.float32)
    c[:, :d - 1] = r.standard_normal((v, d - 1), dtype=np.float32) / math.sqrt(d - 1)
    c[:, d - 1] = -alpha * np.log(r.permutation(v).astype(np.float32) + 1)
    e = np.empty((n, d), np.float32)
    e[:, :d - 1] = r.standard_normal((n, d - 1), dtype=np.float32) * s
    e[:, d - 1] = 1
    return e, c


def block_lse(z, width):
    """Each row's log-sum-exp over each block of `width` columns (rows x blocks)."""
    out = []
    for j in range(0, z.shape[1], width):
        b = z[:, j:j + width]
        m = b.max(1)
        out.append(m + np.log(np.exp(b - m[:, None]).sum(1)))
    return np.stack(out, 1)


def shard_census(e, c, shards, log_eps16, width=256):
    v = c.shape[0]
    zs = []
    for p in range(shards):
        cs = c[p * v // shards:(p + 1) * v // shards]
        zs.append(e @ cs[np.argsort(-(cs @ e.mean(0)), kind="stable")].T)
    lse = np.logaddexp.reduce(np.concatenate([block_lse(z, width) for z in zs], 1), axis=1)
    stats = [block_lse(z, width) for z in zs]
    bound = np.logaddexp.reduce(np.stack([s[:, 0] for s in stats], 1), axis=1)
    n = e.shape[0]
    for p, (z, s) in enumerate(zip(zs, stats)):
        running = np.logaddexp.accumulate(s, axis=1)
        rest = np.logaddexp.accumulate(s[:, 1:], axis=1)
        own = seeded = 0
        for j in range(s.shape[1]):
            block = z[:, j * width:(j + 1) * width]
            own += int((block >= (running[:, j] + log_eps16)[:, None]).sum())
            floor = running[:, 0] if j == 0 else np.maximum(rest[:, j - 1], bound)
            seeded += int((block >= (floor + log_eps16)[:, None]).sum())
        share = int((z >= (lse + log_eps16)[:, None]).sum())
        print(f"shard {p} of {shards} ({z.shape[1]} classes), kept per row: against its own running LSE "
              f"{own / n:.0f}, with the seed exchange {seeded / n:.0f}, its share (against the global LSE) {share / n:.0f}")


def main(argv):
    shards = 0
    if "--shards" in argv:
        k = argv.index("--shards")
        shards = int(argv[k + 1])
        argv = argv[:k] + argv[k + 2:]
    n, d, v = int(argv[1]), int(argv[2]), int(argv[3])
    s, alpha = float(argv[4]), float(argv[5])
    e, c = lm_like(n, d, v, s, alpha)
    if shards:
        shard_census(e, c, shards, math.log(2.0 ** -12 / 16))
        return
    sorted_c = c[np.argsort(-(c @ e.mean(0)), kind="stable")]
    eps = 2.0 ** -12
    log_eps, log_eps16 = math.log(eps), math.log(eps / 16)
    forward_block, vb = 256, 128
    above_eps = above_eps16 = kept_segments = 0
    kept_running, first_block, densest_block = [], [], []
    for i0 in range(0, n, 128):
        z = e[i0:i0 + 128] @ sorted_c.T
        top = z.max(1, keepdims=True)
        lse = top + np.log(np.exp(z - top).sum(1, keepdims=True))
        above_eps += int((z - lse >= log_eps).sum())
        above_eps16 += int((z - lse >= log_eps16).sum())
        running = np.full((z.shape[0], 1), -np.inf, np.float32)
        count = np.zeros(z.shape[0], np.int64)
        densest = np.zeros(z.shape[0], np.int64)
        for j in range(0, v, forward_block):
            block = z[:, j:j + forward_block]
            m = block.max(1, keepdims=True)
            running = np.logaddexp(running, m + np.log(np.exp(block - m).sum(1, keepdims=True)))
            here = (block - running >= log_eps16).sum(1)
            count += here
            densest = np.maximum(densest, here)
            if j == 0:
                first_block.append(here.copy())
        kept_running.append(count)
        densest_block.append(densest)
        whole = v // vb * vb
        kept_segments += int((z[:, :whole] - lse >= log_eps).reshape(z.shape[0], -1, vb).any(2).sum())
    k = np.concatenate(kept_running)
    first, densest = np.concatenate(first_block), np.concatenate(densest_block)
    print(f"N={n} D={d} V={v} S={s:g} alpha={alpha:g}, eps=2^-12, per row: "
          f"p >= eps {above_eps / n:.1f}, p >= eps/16 {above_eps16 / n:.1f}; "
          f"kept against the running LSE: mean {k.mean():.1f}, median {np.median(k):.0f}, "
          f"99th percentile {np.percentile(k, 99):.0f}, max {k.max()}; "
          f"in the first block mean {first.mean():.1f} of {forward_block}, "
          f"in a row's densest block max {densest.max()}; "
          f"row segments (VB = {vb}) with some p >= eps: {kept_segments / n:.1f} of {v // vb} "
          f"({100 * kept_segments / n / (v // vb):.2f}%)")


if __name__ == "__main__":
    main(sys.argv)
