// `cce explain`, part 2: which backward tiles gradient filtering skips on an LM-like
// problem, before and after sorting the vocabulary, cross-checked against the engine.
//
// For each token i and vocabulary block j (VB consecutive entries in the chosen order, VB
// the engine's backward tile width for this shape) the row segment (i, j) is kept when
//     max_{v in block j} p_iv ≥ ε   or   t_i is in block j,
// which is the engine's rule without soft cap, label smoothing or z-loss (Backward.swift:
// |∂loss/∂z| = p for v ≠ t). A tile of the picture (8 tokens x VB entries) is drawn when any
// of its row segments is kept, shaded by the fraction kept. Sorted order: by average logit
// C_v · ē + b_v, largest first (VocabularyOrder.swift), which gathers each row's large
// probabilities into the first blocks.
//
// Granularity. The engine decides per row segment (token x VB block), as here, so the
// kept-segment counts are directly comparable with `FilterStatistics.keptRowSegments`;
// the engine's "tiles" are token blocks of NB rows (its tile plan, e.g. 132 tokens with 2
// threads) by VB entries, and it skips a tile only when all NB row segments are dropped,
// a coarser unit than the picture's 8-token tiles. Small differences can come from p
// computed here in Float64 from the Float32 logits (the engine: Float32) for entries
// within rounding of ε, and from near-ties in the average logit (the engine sums in
// Float32).
//
// The logits are formed here in full (N x V, 8 MB for the default size): this is a
// picture of what the engine avoids computing, not a path the engine takes.
//
// This file computes; FilterMapPicture.swift draws the SVG, and `cce explain`
// (Sources/cce/Explain.swift) prints the counts.

import CCEData
import COpenBLAS
import CutCrossEntropy
import Foundation

public struct FilterMap: Sendable {
    public let n: Int, d: Int, v: Int
    public let eps: Double
    /// Engine's vocabulary block VB and the token block NB its fused call ran for this shape.
    public let vocabBlock: Int, tokenBlock: Int
    /// Tokens per picture tile.
    public let pictureRows = 8

    public struct Panel: Sendable {
        public let sorted: Bool
        /// kept[i * blocks + j]: row segment (token i, block j) kept.
        public let kept: [Bool]
        public let keptSegments: Int
        /// Engine tiles (NB x VB) with no kept row segment, of `engineTiles`.
        public let skippedEngineTiles: Int, engineTiles: Int
        /// What the engine reported for the same problem and order.
        public let engine: FilterStatistics
    }
    public let unsorted: Panel, sorted: Panel

    /// The most probabilities N x V the map computes (it keeps them all).
    public static let maxCells = 1 << 26

    /// The estimated peak memory of a map of this size, in bytes (for MemoryCheck): the data,
    /// the N x V logits, Float32 copies of E and C, and one engine call at a time.
    public static func estimatedBytes(tokens n: Int, dim d: Int, vocab v: Int, type: ElementType) -> Double {
        let held = Footprint.lmLikeDataKept(tokens: n, dim: d, vocab: v, type: type)
            + Double(n) * Double(v) * 4 + (Double(n) + Double(v)) * Double(d) * 4 + Double(n) * 16 + Double(v) * 16
        return max(Footprint.lmLikeData(tokens: n, dim: d, vocab: v, type: type),
                   held + Footprint.engine(tokens: n, dim: d, vocab: v, type: type, mode: .default))
    }

    /// LM-like data (S = 4, α = 1.5) in `type`, ε = `eps` (default: the element type's).
    public init(tokens n: Int = 256, dim d: Int = 256, vocab v: Int = 8192, type: ElementType = .bfloat16,
                eps: Double? = nil, seed: UInt64 = 0, threads: Int? = nil) throws {
        guard n >= 1, d >= 2, v >= 2, !n.multipliedReportingOverflow(by: v).overflow, n * v <= Self.maxCells else {
            throw ExplainError.invalidOption("filter map needs N >= 1, D >= 2, V >= 2, N x V <= 2^26")
        }
        let epsilon = eps ?? BackwardPolicy(Options(), embeddings: type, classifier: type).epsilon!
        guard epsilon >= 0, epsilon.isFinite else { throw ExplainError.invalidOption("eps must be finite and >= 0") }
        self.n = n; self.d = d; self.v = v; self.eps = epsilon
        var opts = Options()
        opts.filterEpsilon = .value(epsilon)
        opts.threads = threads
        let plan = CutCrossEntropy(options: opts).plan(tokens: n, dim: d, vocab: v, storage: type)
        vocabBlock = plan.vocabBlock
        let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: type, seed: seed)
        let e = data.embeddings.floats(), c = data.classifier.floats()
        let targets = data.targets.values.map(Int.init)

        // Probabilities p (N x V), row by row from Float32 logits.
        var z = [Float](repeating: 0, count: n * v)
        z.withUnsafeMutableBufferPointer { zp in
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(v), Int32(d),
                        1, e, Int32(d), c, Int32(d), 0, zp.baseAddress, Int32(v))
        }
        var lse = [Double](repeating: 0, count: n)
        for i in 0..<n {
            var m = -Double.infinity
            for q in 0..<v { m = max(m, Double(z[i * v + q])) }
            var s = 0.0
            for q in 0..<v { s += Foundation.exp(Double(z[i * v + q]) - m) }
            lse[i] = m + Foundation.log(s)
        }
        // Sorted order: the engine's (average logit C_v · ē, largest first).
        let sortedOrder = try CutCrossEntropy(options: opts).vocabularyOrder(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)

        func panel(_ order: [Int], sorted: Bool) throws -> Panel {
            var o = opts
            o.sortVocabulary = sorted
            let g = try CutCrossEntropy(options: o).lossAndGradients(
                embeddings: data.embeddings, classifier: data.classifier, targets: data.targets).1
            // The token blocks the engine's call ran (a fused call may run smaller ones than the plan's).
            let vb = plan.vocabBlock, nb = g.filter.tokenBlock > 0 ? g.filter.tokenBlock : plan.tokenBlock
            let blocks = (v + vb - 1) / vb
            var kept = [Bool](repeating: false, count: n * blocks)
            var rank = [Int](repeating: 0, count: v)
            for (k, q) in order.enumerated() { rank[q] = k }
            for i in 0..<n {
                for j in 0..<blocks {
                    var significant = false
                    for k in (j * vb)..<min(v, (j + 1) * vb) where Foundation.exp(Double(z[i * v + order[k]]) - lse[i]) >= epsilon {
                        significant = true; break
                    }
                    kept[i * blocks + j] = significant || rank[targets[i]] / vb == j
                }
            }
            var skippedTiles = 0, tiles = 0
            for b0 in stride(from: 0, to: n, by: nb) {
                for j in 0..<blocks {
                    tiles += 1
                    if !(b0..<min(n, b0 + nb)).contains(where: { kept[$0 * blocks + j] }) { skippedTiles += 1 }
                }
            }
            return Panel(sorted: sorted, kept: kept, keptSegments: kept.filter { $0 }.count,
                         skippedEngineTiles: skippedTiles, engineTiles: tiles, engine: g.filter)
        }
        let u = try panel(Array(0..<v), sorted: false), so = try panel(sortedOrder, sorted: true)
        unsorted = u; sorted = so
        tokenBlock = so.engine.tokenBlock
    }

    public var blocks: Int { (v + vocabBlock - 1) / vocabBlock }

    /// Per picture tile, the fraction of its row segments kept.
    public func tileFractions(_ p: Panel) -> [[Double]] {
        stride(from: 0, to: n, by: pictureRows).map { r0 in
            (0..<blocks).map { j in
                let rows = r0..<min(n, r0 + pictureRows)
                return Double(rows.filter { p.kept[$0 * blocks + j] }.count) / Double(rows.count)
            }
        }
    }

    /// Picture tiles with at least one kept row segment, of all.
    public func pictureTiles(_ p: Panel) -> (kept: Int, total: Int) {
        let f = tileFractions(p).flatMap { $0 }
        return (f.filter { $0 > 0 }.count, f.count)
    }
}
