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

import CCEData
import COpenBLAS
import CutCrossEntropy
import Foundation

public struct FilterMap: Sendable {
    public let n: Int, d: Int, v: Int
    public let eps: Double
    /// Engine's vocabulary block VB and token block NB for this shape.
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

    /// LM-like data (S = 4, α = 1.5) in `type`, ε = `eps` (default: the element type's).
    public init(tokens n: Int = 256, dim d: Int = 256, vocab v: Int = 8192, type: ElementType = .bfloat16,
                eps: Double? = nil, seed: UInt64 = 0, threads: Int? = nil) throws {
        guard n >= 1, d >= 2, v >= 2, n * v <= 1 << 26 else {
            throw TrainingError.invalidOption("filter map needs N >= 1, D >= 2, V >= 2, N x V <= 2^26")
        }
        let epsilon = eps ?? FilterEpsilon.auto.resolve(type, type)!
        guard epsilon >= 0, epsilon.isFinite else { throw TrainingError.invalidOption("eps must be finite and >= 0") }
        self.n = n; self.d = d; self.v = v; self.eps = epsilon
        var opts = Options()
        opts.filterEpsilon = .value(epsilon)
        opts.threads = threads
        let plan = CutCrossEntropy(options: opts).plan(tokens: n, dim: d, vocab: v)
        vocabBlock = plan.vocabBlock; tokenBlock = plan.tokenBlock
        let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: type, seed: seed)
        let e = data.embeddings.floats(), c = data.classifier.floats()
        let targets = data.targets.values.map(Int.init)

        // Probabilities p (N x V), row by row from Float32 logits.
        var z = [Float](repeating: 0, count: n * v)
        gemm(e, c, transB: true, into: &z, m: n, n: v, k: d)
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
            let vb = plan.vocabBlock, nb = plan.tokenBlock, blocks = (v + vb - 1) / vb
            var kept = [Bool](repeating: false, count: n * blocks)
            var rank = [Int](repeating: 0, count: v)
            for (k, q) in order.enumerated() { rank[q] = k }
            for i in 0..<n {
                for j in 0..<blocks {
                    var big = false
                    for k in (j * vb)..<min(v, (j + 1) * vb) where Foundation.exp(Double(z[i * v + order[k]]) - lse[i]) >= epsilon {
                        big = true; break
                    }
                    kept[i * blocks + j] = big || rank[targets[i]] / vb == j
                }
            }
            var skippedTiles = 0, tiles = 0
            for b0 in stride(from: 0, to: n, by: nb) {
                for j in 0..<blocks {
                    tiles += 1
                    if !(b0..<min(n, b0 + nb)).contains(where: { kept[$0 * blocks + j] }) { skippedTiles += 1 }
                }
            }
            var o = opts
            o.sortVocabulary = sorted
            let g = try CutCrossEntropy(options: o).lossAndGradients(
                embeddings: data.embeddings, classifier: data.classifier, targets: data.targets).1
            return Panel(sorted: sorted, kept: kept, keptSegments: kept.filter { $0 }.count,
                         skippedEngineTiles: skippedTiles, engineTiles: tiles, engine: g.filter)
        }
        let u = try panel(Array(0..<v), sorted: false), so = try panel(sortedOrder, sorted: true)
        unsorted = u; sorted = so
    }

    public var blocks: Int { (v + vocabBlock - 1) / vocabBlock }

    /// One line per panel: kept fractions here and in the engine.
    public func summary(_ p: Panel) -> String {
        let segs = n * blocks
        let tiles = pictureTiles(p)
        return String(format: "%@: kept %d of %d row segments (%.1f%%); engine FilterStatistics: kept %d of %d (%.1f%%). "
                      + "Picture tiles (%d x %d) kept: %d of %d (%.1f%%). Engine tiles (%d x %d) skipped: here %d, engine %d, of %d.",
                      p.sorted ? "sorted vocabulary" : "vocabulary in id order",
                      p.keptSegments, segs, 100 * Double(p.keptSegments) / Double(segs),
                      p.engine.keptRowSegments, p.engine.rowSegments,
                      100 * Double(p.engine.keptRowSegments) / Double(max(1, p.engine.rowSegments)),
                      pictureRows, vocabBlock, tiles.kept, tiles.total, 100 * Double(tiles.kept) / Double(tiles.total),
                      tokenBlock, vocabBlock, p.skippedEngineTiles, p.engine.skippedTiles, p.engineTiles)
    }

    /// Per picture tile, the fraction of its row segments kept.
    func tileFractions(_ p: Panel) -> [[Double]] {
        stride(from: 0, to: n, by: pictureRows).map { r0 in
            (0..<blocks).map { j in
                let rows = r0..<min(n, r0 + pictureRows)
                return Double(rows.filter { p.kept[$0 * blocks + j] }.count) / Double(rows.count)
            }
        }
    }

    func pictureTiles(_ p: Panel) -> (kept: Int, total: Int) {
        let f = tileFractions(p).flatMap { $0 }
        return (f.filter { $0 > 0 }.count, f.count)
    }

    /// Two panels side by side, unsorted and sorted, at the engine's granularity: one cell
    /// per row segment (token x VB block), filled when kept, white when skipped. Runs of
    /// kept cells in a row are drawn as one rectangle of a single path (a small file).
    public func svg() -> String {
        let cw = 5, ch = 1, gap = 70.0, left = 50.0, top = 78.0
        let pw = Double(blocks * cw), ph = Double(n * ch)
        let w = left + 2 * pw + gap + 30, h = top + ph + 64
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(f(w / 2))" y="20" text-anchor="middle" font-size="14">Backward row segments kept by gradient filtering, eps = 2^\(Int(Foundation.log2(eps))), LM-like N = \(n), D = \(d), V = \(v)</text>

        """
        for (k, p) in [unsorted, sorted].enumerated() {
            let x0 = left + Double(k) * (pw + gap)
            let segFrac = 100 * Double(p.keptSegments) / Double(n * blocks)
            let t = pictureTiles(p)
            s += "<text x=\"\(f(x0 + pw / 2))\" y=\"44\" text-anchor=\"middle\">\(p.sorted ? "after sorting by average logit" : "vocabulary in id order")</text>\n"
            s += "<text x=\"\(f(x0 + pw / 2))\" y=\"62\" text-anchor=\"middle\">kept \(String(format: "%.1f", segFrac))% of row segments, \(String(format: "%.1f", 100 * Double(t.kept) / Double(t.total)))% of \(pictureRows)-token tiles</text>\n"
            s += "<rect x=\"\(f(x0))\" y=\"\(f(top))\" width=\"\(f(pw))\" height=\"\(f(ph))\" fill=\"white\" stroke=\"#333\"/>\n"
            var path = ""
            for i in 0..<n {
                var j = 0
                while j < blocks {
                    guard p.kept[i * blocks + j] else { j += 1; continue }
                    var e = j
                    while e < blocks && p.kept[i * blocks + e] { e += 1 }
                    path += "M\(Int(x0) + j * cw) \(Int(top) + i * ch)h\((e - j) * cw)v\(ch)h-\((e - j) * cw)z"
                    j = e
                }
            }
            s += "<path fill=\"#1f4e9c\" d=\"\(path)\"/>\n"
            s += "<text x=\"\(f(x0 + pw / 2))\" y=\"\(f(top + ph + 18))\" text-anchor=\"middle\">\(blocks) vocabulary blocks of \(vocabBlock) \(p.sorted ? "(sorted order)" : "(id order)")</text>\n"
            s += "<text x=\"\(f(x0 - 8))\" y=\"\(f(top + ph / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 \(f(x0 - 8)) \(f(top + ph / 2)))\">\(n) tokens</text>\n"
        }
        s += "<text x=\"\(f(left))\" y=\"\(f(h - 14))\">blue: row segment (token x \(vocabBlock) entries) kept and recomputed in the backward; white: skipped</text>\n"
        return s + "</svg>\n"
    }
}
