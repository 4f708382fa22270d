// The tile plan: how big a tile is, chosen from the cache sizes (hwloc) and D.
//
// The CPU plays the GPU's role: a GPU thread block keeps a (BLOCK_B x BLOCK_D) slice of E
// and a (BLOCK_V x BLOCK_D) slice of C in shared memory; here a worker keeps a token block
// of E (NB rows, in the compute type) in its L2 cache, and packs 16 C rows x KC = 256
// columns at a time into an L1-resident panel (TileProduct6x16.swift). The logit tile is
// NB x VB.
//
//   NB: the token block's E rows take about two L2s:  NB ≈ 2·L2 / (D · size), 6 ≤ NB ≤ 258
//       (CCE_TOKEN_BLOCK_MAX in the environment moves the 258, for experiments),
//       a multiple of 6 (each 6-row group streams through L1 past the 16-row C panel, so
//       the block may live in L3; a larger NB packs each C panel for more rows); then the
//       number of token blocks is rounded up to a multiple of the thread count and NB
//       shrunk to match (and rounded up to a multiple of 6 again), so that the workers get
//       the same number of blocks, or nearly: the second rounding can leave the last
//       worker one block short (e.g. 33 blocks for 2 threads at L2 = 128 KiB, N = 4096,
//       D = 512);
//   VB (backward): the C rows of the gradient updates take a quarter of L2,
//       VB ≈ L2 / 4 / (D · size), 16 ≤ VB ≤ 256, a power of two, so that VB divides VBf and
//       every backward block lies inside one forward block (the fused call's skip bound
//       and dropped-mass estimate are per forward block);
//   VBf (forward): 256 (one LSE merge per row per 256 logits).
//
// Results depend on VB and VBf (they fix where tiles start on each row) but not on NB or
// on the thread count: see Backward.swift.

import CCERuntime

/// Tile sizes for one call.
public struct TilePlan: Sendable, CustomStringConvertible {
    /// Tokens per block (rows of E a worker holds).
    public var tokenBlock: Int
    /// Vocabulary entries per backward tile (rows of C per tile; the filter's granularity).
    public var vocabBlock: Int
    /// Vocabulary entries per forward tile (one LSE merge per row per tile). The forward
    /// converts C rows four at a time right before the tile product reads them, so its
    /// tile can be wider than the L2 budget: only the NB x VBf logits are held.
    public var forwardVocabBlock: Int
    /// Worker threads.
    public var threads: Int
    /// Where the cache sizes came from.
    public var topology: Topology

    public init(tokens: Int, dim: Int, vocab: Int, threads: Int, scalarBytes: Int = 4,
                topology: Topology = .current) {
        let row = max(1, dim * scalarBytes)
        var nb = 2 * topology.l2Bytes / row
        nb = min(TilePlan.tokenBlockLimit, max(6, nb / 6 * 6))
        let t = max(1, threads), m = max(1, tokens)
        var blocks = (m + nb - 1) / nb
        blocks = (blocks + t - 1) / t * t
        nb = max(6, ((m + blocks - 1) / blocks + 5) / 6 * 6)
        var vb = topology.l2Bytes / 4 / row
        vb = min(256, max(16, vb))
        while vb & (vb - 1) != 0 { vb &= vb - 1 }  // round down to a power of two
        tokenBlock = nb
        vocabBlock = vb
        forwardVocabBlock = min(256, max(16, (vocab + 15) / 16 * 16))
        self.threads = threads
        self.topology = topology
    }

    /// The largest NB: 258, or `CCE_TOKEN_BLOCK_MAX` from the environment (a multiple of 6
    /// from 6 to 4098; other values are ignored), for tuning experiments. Results do not
    /// depend on NB (Backward.swift), only speed and per-worker memory do.
    public static let tokenBlockLimit: Int =
        Environment.integer("CCE_TOKEN_BLOCK_MAX", in: 6...4098, where: { $0 % 6 == 0 }) ?? 258

    public var description: String {
        "token block NB = \(tokenBlock), vocabulary block VB = \(vocabBlock) (forward \(forwardVocabBlock)), "
            + "threads = \(threads); "
            + "machine: \(topology)"
    }
}
