// The tile plan: how big a tile is, chosen from the cache sizes (hwloc) and D.
//
// The CPU plays the GPU's role: a GPU thread block keeps a (BLOCK_B x BLOCK_D) slice of E
// and a (BLOCK_V x BLOCK_D) slice of C in shared memory; here a worker keeps a token block
// of E (NB rows x D) and a vocabulary block of C (VB rows x D) in its L2 cache, and the
// (NB x VB) logit tile in L1/L2. The kernels read whole rows of length D, so there is no D
// chunk: D only sets how many rows fit.
//
//   NB: the E block takes about half of L2:      NB ≈ L2 / 2 / (D · size), 6 ≤ NB ≤ 252,
//       a multiple of 6 (the rank-update's register block);
//   VB: the C block takes about a quarter of L2: VB ≈ L2 / 4 / (D · size), 16 ≤ VB ≤ 256,
//       a multiple of 4 (the tile product's register block).
//
// Results depend on VB (it fixes where tiles start on each row) but not on NB or on the
// thread count: see Backward.swift. When there are fewer token blocks than threads, NB
// shrinks so that every thread has a block.

import CCERuntime

/// Tile sizes for one call.
public struct TilePlan: Sendable, CustomStringConvertible {
    /// Tokens per block (rows of E a worker holds).
    public var tokenBlock: Int
    /// Vocabulary entries per block (rows of C per tile).
    public var vocabBlock: Int
    /// Worker threads.
    public var threads: Int
    /// Where the cache sizes came from.
    public var topology: Topology

    public init(tokens: Int, dim: Int, vocab: Int, threads: Int, scalarBytes: Int = 4,
                topology: Topology = .current) {
        let row = max(1, dim * scalarBytes)
        var nb = topology.l2Bytes / 2 / row
        nb = min(252, max(6, nb / 6 * 6))
        var vb = topology.l2Bytes / 4 / row
        vb = min(256, max(16, vb / 4 * 4))
        let perThread = (tokens + threads - 1) / threads
        if perThread < nb { nb = max(6, (perThread + 5) / 6 * 6) }
        tokenBlock = nb
        vocabBlock = min(vb, max(4, (vocab + 3) / 4 * 4))
        self.threads = threads
        self.topology = topology
    }

    public var description: String {
        "token block NB = \(tokenBlock), vocabulary block VB = \(vocabBlock), threads = \(threads); "
            + "machine: \(topology)"
    }
}
