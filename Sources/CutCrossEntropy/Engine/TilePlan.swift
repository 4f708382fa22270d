// The tile plan: how big a tile is, chosen from the cache sizes (hwloc) and D.
//
// The CPU plays the GPU's role: a GPU thread block keeps a (BLOCK_B x BLOCK_D) slice of E
// and a (BLOCK_V x BLOCK_D) slice of C in shared memory; here a worker keeps a token block
// of E (NB rows, in the compute type) in its L2 cache, and packs 16 C rows x KC = 256
// columns at a time into an L1-resident panel (TileProduct6x16.swift). The logit tile is
// NB x VB.
//
//   NB: the token block's E rows take about two L2s:  NB ≈ 2·L2 / (D · size), size the bytes
//       an E element takes as the tile kernel holds it (the compute type's, or 2 for the
//       AVX512_BF16 dot-product kernel, which packs the token block as bf16 pairs: at D = 2048
//       and 4096 on a 1 MiB L2 that doubles NB and halves how often C is swept,
//       loss+grad about 10% faster on a Zen 4, for 1.5 to 2 MB more peak at 2 threads), at most 288
//       (CCE_TOKEN_BLOCK_MAX in the environment moves the 288, for experiments), a
//       multiple of the tile kernel's row group g (its register block's height: 6 for the
//       portable kernel, 12 for the AVX-512 FMA one, 32 for the bf16 dot-product kernel and
//       AMX; 288 is a multiple of each;
//       in the kahan accumulation a multiple of 96 too, the chunk of its dC partials),
//       so that no block ends in a part-filled group (each group streams through L1 past
//       the C panel, so the block may live in L3; a larger NB packs each C panel for more
//       rows); then the number of token blocks is rounded up to a multiple of the thread
//       count and NB shrunk to match (and rounded up to a multiple of g again), so that the
//       workers get the same number of blocks, or nearly: the second rounding can leave the
//       last worker one block short (e.g. 33 blocks for 2 threads at L2 = 128 KiB, N = 4096,
//       D = 512). At N = 4096 on 16 threads AMX gets blocks of 256 rows, eight groups, where
//       a multiple of 6 would give 258: a ninth group for two rows.
//   VB (backward): the C rows of the gradient updates take a quarter of L2,
//       VB ≈ L2 / 4 / (D · size), 16 ≤ VB ≤ 256, a power of two, so that VB divides VBf and
//       every backward block lies inside one forward block (the fused call's skip bound
//       and dropped-mass estimate are per forward block). Where nearly every row segment is
//       kept (BackwardPolicy.densePrediction: Float32's default ε, no filter) the filter's
//       granularity buys nothing, and the blocks take half of L2, at most 128 entries: fewer
//       passes over the token block's dE rows and fewer, larger dC updates (Float32 at
//       D = 1024 on a 1 MiB L2, VB 128 against 64: loss+grad about 8% faster; D = 2048, 64
//       against 32: 4%; D = 512 at 256 against 128: no faster, hence the cap);
//   VBf (forward): 256 (one LSE merge per row per 256 logits).
//
// Results depend on VB and VBf (they fix where tiles start on each row) but not on NB or
// on the thread count: see Backward.swift.

import CCEKernels
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
    /// The tile kernel's row group, of which NB is a multiple.
    public var rowGroup: Int
    /// Vocabulary segments per token block in the forward and fused passes: the forward of a
    /// token block is that many work items, each over its own stretch of the sorted
    /// vocabulary (`segmentBlocks`), whose per-row partials merge in segment order (Engine.swift).
    /// Set from V alone, so results do not depend on the thread count.
    public var vocabSegments: Int
    /// Worker threads.
    public var threads: Int
    /// Where the cache sizes came from.
    public var topology: Topology

    /// `rowGroup`: the tile kernel's (TileKernel.rowGroup). `tokenBytes`: the bytes of an E
    /// element as the kernel holds the token block, when not `scalarBytes` (NB only).
    /// `denseBackward`: nearly every row segment is expected to be kept (VB only).
    public init(tokens: Int, dim: Int, vocab: Int, threads: Int, scalarBytes: Int = 4, tokenBytes: Int? = nil,
                rowGroup: Int = TileShape.mr, denseBackward: Bool = false, topology: Topology = .current) {
        let g = max(1, rowGroup)
        let row = max(1, dim * scalarBytes)
        let nb = 2 * topology.l2Bytes / max(1, dim * (tokenBytes ?? scalarBytes))
        self.rowGroup = g
        var vb = denseBackward ? min(128, topology.l2Bytes / 2 / row) : topology.l2Bytes / 4 / row
        vb = min(256, max(16, vb))
        while vb & (vb - 1) != 0 { vb &= vb - 1 }  // round down to a power of two
        tokenBlock = TilePlan.balancedBlock(tokens: tokens, threads: threads, rowGroup: g,
                                            largest: min(TilePlan.tokenBlockLimit, nb))
        vocabBlock = vb
        forwardVocabBlock = min(256, max(16, (vocab + 15) / 16 * 16))
        vocabSegments = TilePlan.segments(forwardBlocks: (vocab + forwardVocabBlock - 1) / forwardVocabBlock)
        self.threads = threads
        self.topology = topology
    }

    /// NB for `tokens` tokens and `threads` workers: at most `largest` rounded down to the row
    /// group g (but at least g), then the number of blocks rounded up to a multiple of the
    /// thread count and NB shrunk to match, rounded up to a multiple of g again.
    static func balancedBlock(tokens: Int, threads: Int, rowGroup g: Int, largest: Int) -> Int {
        let nb = max(g, largest / g * g)
        let t = max(1, threads), m = max(1, tokens)
        var blocks = (m + nb - 1) / nb
        blocks = (blocks + t - 1) / t * t
        return max(g, ((m + blocks - 1) / blocks + g - 1) / g * g)
    }

    /// The plan of a fused call whose forward keeps logits for its backward (SavedLogits):
    /// each row a worker has swept and not yet finished holds its saved entries and block
    /// statistics (about 11 KB a row at V = 128256 and D = 1024 on LM-like data, with its bf16
    /// E row and its share of the tiles, against the 5 KB that 1% of its logits would be), so
    /// the workers' token blocks together hold a quarter of the tokens (each block at most
    /// N / (4 · threads) rounded up to the row group) where blocks of at least
    /// `fusedBlockFloor` rows can do that, on at most `fusedLimitThreads` threads.
    /// Below that floor every block would pack and stream all of C for too few rows, and
    /// shrinking part of the way costs those sweeps without reaching the quarter (16 threads
    /// at N = 4096: 128-row blocks were 3 to 20% slower and still held 1.4% of the logits);
    /// with many threads the extra sweeps cost more than they save (16 threads at N = 8192:
    /// 128-row blocks 17% slower for 0.7% of the logits against 1.2%), so the plan's blocks
    /// stay (Docs/PERFORMANCE.md). At N = 1024 on two threads: NB 128 instead of 256 (the
    /// dot-product and AMX kernels' groups of 32; 132 instead of 264 in groups of 12), peak
    /// extra about 0.9% of N·V·4 instead of 1.3%, loss+grad 0 to 4% slower.
    /// `copiesTokens`: the worker also keeps each row of its block as Float32 (the portable
    /// kernel on 16-bit storage, Workspace.eBlock: 4·D bytes more a row, about 15 KB in all),
    /// so where a quarter of the tokens would be less than the plan's blocks, the blocks hold a
    /// fifth, where a fifth is at least three quarters of the floor (96 rows, 16 of that
    /// kernel's 6-row groups): at N = 1024 on two threads of an AVX2-only Zen 3, blocks of 90
    /// rows instead of 132, peak extra 0.74 to 0.97% of N·V·4 instead of 0.98 to 1.10%,
    /// loss+grad / loss 1.137 against 1.123 (medians of six alternating runs). Where a quarter
    /// is no less than the plan's blocks (N = 1536 there) the plan's blocks stay: already under
    /// 1% (0.81 to 0.85%), where a fifth cost about 2% for 0.05% less (Docs/PERFORMANCE.md).
    /// Results do not depend on NB.
    public func limitingRowsInFlight(tokens: Int, copiesTokens: Bool = false) -> TilePlan {
        let quarter = tokens / (4 * max(1, threads))
        let largest = copiesTokens ? tokens / (5 * max(1, threads)) : quarter
        let floor = copiesTokens ? TilePlan.fusedBlockFloor * 3 / 4 : TilePlan.fusedBlockFloor
        guard threads <= TilePlan.fusedLimitThreads, largest >= floor, quarter < tokenBlock
        else { return self }
        var plan = self
        let g = max(1, rowGroup)
        plan.tokenBlock = TilePlan.balancedBlock(tokens: tokens, threads: threads, rowGroup: g,
                                                 largest: (largest + g - 1) / g * g)
        return plan
    }

    /// The least NB `limitingRowsInFlight` asks for: 128, or `CCE_FUSED_BLOCK_FLOOR` from the
    /// environment (6 to 65536; other values are ignored), for experiments (a floor above
    /// N / (4 · threads) leaves the plan's blocks).
    public static let fusedBlockFloor: Int = Environment.integer("CCE_FUSED_BLOCK_FLOOR", in: 6...65536) ?? 128

    /// The most threads `limitingRowsInFlight` limits: measured to cost 0 to 4% at 2 threads
    /// (a Zen 4's dot-product kernel, a Xeon's AMX kernel) and 17% at 16 (the Xeon); between
    /// them not measured, so the limit stays where it was measured cheap.
    public static let fusedLimitThreads = 4

    /// Vocabulary segments for `forwardBlocks` forward blocks: one per 8 of them, at most
    /// `segmentLimit` (4: at V = 128256, 501 forward blocks, four segments of 125 or 126).
    /// Segments let a worker that is done take part of another token block's forward instead
    /// of waiting for the slowest (16 workers on a host whose vCPUs differ two-fold in speed,
    /// one token block each), without the extra sweeps over C that smaller token blocks cost.
    static func segments(forwardBlocks: Int) -> Int { max(1, min(segmentLimit, forwardBlocks / 8)) }

    /// The most vocabulary segments: 4, or `CCE_VOCAB_SEGMENTS` from the environment (1 to
    /// 64; other values are ignored), for experiments (1: a token block's forward in one piece).
    public static let segmentLimit: Int = Environment.integer("CCE_VOCAB_SEGMENTS", in: 1...64) ?? 4

    /// Forward blocks of vocabulary segment s: s·F/G ..< (s + 1)·F/G.
    public func segmentBlocks(_ s: Int, forwardBlocks f: Int) -> Range<Int> {
        (s * f / vocabSegments)..<((s + 1) * f / vocabSegments)
    }

    /// The backward of a token block (fused call or backward call) runs in `parts` work items
    /// of `rows` rows each (the last may be shorter), which any worker may take (in the fused
    /// call once the block's forward is done; Engine.sweep): at least 4 items per worker over
    /// the call's `blocks` token blocks, `parts` dividing NB's row groups (so every block
    /// splits at the same rows) and at most `backwardPartLimit`. Each row's results do not depend on which rows share its
    /// tile (Backward.swift), so `parts` may follow the thread count. 16 workers with one
    /// 256-row block each get four parts of 64 rows; two workers with eight blocks keep whole
    /// blocks (a smaller tile reads each kept C block for fewer rows).
    public func backwardParts(blocks: Int) -> (parts: Int, rows: Int) {
        let g = max(1, rowGroup), groups = max(1, tokenBlock / g)
        let wanted = min(TilePlan.backwardPartLimit, groups, (4 * threads + blocks - 1) / max(1, blocks))
        var parts = max(1, wanted)
        while groups % parts != 0 { parts -= 1 }
        return (parts, groups / parts * g)
    }

    /// The most backward parts of a token block: 4, or `CCE_BACKWARD_PARTS` from the
    /// environment (1 to 64; other values are ignored), for experiments (1: whole blocks).
    public static let backwardPartLimit: Int = Environment.integer("CCE_BACKWARD_PARTS", in: 1...64) ?? 4

    /// Active tokens per dC partial in the kahan accumulation (Backward.compensatedUpdate).
    /// A compensated call's token blocks are multiples of it, so that its dC, like every
    /// other result, does not depend on NB or the thread count.
    public static let compensatedChunk = 96

    /// The row group a call's token blocks are multiples of: the tile kernel's, or, in the
    /// kahan accumulation, its least common multiple with `compensatedChunk` (96 for every
    /// kernel here).
    public static func rowGroup(kernel: TileKernel, compensated: Bool) -> Int {
        let g = kernel.rowGroup
        guard compensated else { return g }
        var a = g, b = compensatedChunk
        while b != 0 { (a, b) = (b, a % b) }
        return g / a * compensatedChunk
    }

    /// The largest NB before rounding down to the row group: 288, or `CCE_TOKEN_BLOCK_MAX`
    /// from the environment (6 to 4096; other values are ignored), for tuning experiments.
    /// Results do not depend on NB (Backward.swift), only speed and per-worker memory do.
    public static let tokenBlockLimit: Int = Environment.integer("CCE_TOKEN_BLOCK_MAX", in: 6...4096) ?? 288

    public var description: String {
        "token block NB = \(tokenBlock) (groups of \(rowGroup)), vocabulary block VB = \(vocabBlock) (forward \(forwardVocabBlock)), "
            + "vocabulary segments = \(vocabSegments), threads = \(threads); "
            + "machine: \(topology)"
    }
}
