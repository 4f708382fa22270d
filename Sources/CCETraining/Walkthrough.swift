// `cce explain`, part 1: the Cut Cross-Entropy algorithm on a tiny problem, step by step,
// in Float64, checked against the library.
//
// Problem: LM-like data (shared/LMLIKE.md) with N = 8 tokens, D = 4, V = 16, cut into
// 4 x 4 tiles (2 token blocks x 4 vocabulary blocks). As in the engine, the vocabulary is
// first sorted by average logit C_v · ē (ē the mean embedding), largest first, so that
// the large probabilities gather in the first tiles and the last ones can be skipped.
//
// Forward, per token block, vocabulary block after vocabulary block: the tile
// z = E_blk · C_blkᵀ (4 x 4), then for each row the online log-sum-exp merge
//     m' = max(m, max_v z_v),   s' = s·e^(m − m') + Σ_v e^(z_v − m'),   lse = m' + ln s'
// (the running sum is rescaled whenever the running maximum grows). At the end
//     loss_i = lse_i − z_{i,t_i},   loss = (1/N) Σ_i loss_i.
// Backward, per tile, recomputing z from E and C and using the saved lse:
//     ∂loss_i/∂z_iv = p_iv − [v = t_i],   p_iv = e^(z_iv − lse_i)
// A tile is skipped (filtered) when every |p_iv| < ε and no row's target lies in it;
// otherwise dy = (1/N)·∂loss/∂z enters dE_blk += dy · C_blk and dC_blk += dyᵀ · E_blk.

import CCEData
import CutCrossEntropy
import Foundation

/// The tiny worked example.
public struct TileWalkthrough: Sendable {
    public static let n = 8, d = 4, v = 16, tile = 4

    /// The printed walk, line by line.
    public let lines: [String]
    /// The walkthrough's loss (Float64) and the library's (`lossAndGradients`, Float32).
    public let loss: Double, libraryLoss: Double
    /// Max |dE|, |dC| differences between the walkthrough's filtered gradients and the
    /// library's unfiltered ones, and the walkthrough's own filtering error (filtered vs
    /// unfiltered, both Float64).
    public let gradientDifference: Double, filteringError: Double
    /// Tiles skipped, of 8.
    public let skippedTiles: Int

    /// Walks the example for data seed `seed` and filter threshold `eps`.
    public init(seed: UInt64 = 0, eps: Double = 0x1p-7, sortVocabulary: Bool = true) throws {
        guard eps >= 0, eps.isFinite else { throw TrainingError.invalidOption("--eps must be finite and >= 0 (got \(eps))") }
        let (n, d, v, t) = (Self.n, Self.d, Self.v, Self.tile)
        let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: .float32, seed: seed)
        let e: [Double] = data.embeddings.floats().map { Double($0) }
        let c: [Double] = data.classifier.floats().map { Double($0) }
        let targets = data.targets.values.map(Int.init)
        var out: [String] = []
        func say(_ s: String = "") { out.append(s) }
        func row(_ xs: [Double], _ fmt: String = "%8.3f") -> String { xs.map { String(format: fmt, $0) }.joined() }
        func z(_ i: Int, _ q: Int) -> Double {
            var s = 0.0
            for k in 0..<d { s += e[i * d + k] * c[q * d + k] }
            return s
        }

        // The engine's vocabulary order: average logit C_v · ē, largest first (VocabularyOrder.swift).
        var orderOptions = Options(); orderOptions.sortVocabulary = sortVocabulary
        let order = try CutCrossEntropy(options: orderOptions).vocabularyOrder(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        func columns(_ v0: Int) -> String {
            "         " + (v0..<(v0 + t)).map { k -> String in
                let name = "v\(order[k])"
                return String(repeating: " ", count: max(1, 11 - name.count)) + name
            }.joined()
        }
        say("Problem: LM-like data (S = 4, alpha = 1.5, seed \(seed)), N = \(n) tokens, D = \(d), V = \(v); tiles of \(t) tokens x \(t) vocabulary entries.")
        say("Targets: " + targets.enumerated().map { "t\($0.offset)=\($0.element)" }.joined(separator: " "))
        if sortVocabulary {
            say("Vocabulary sorted by average logit C_v . mean(E), largest first, as the engine does before its sweeps:")
            say("  order: " + order.map { "v\($0)" }.joined(separator: " "))
            say("  (tile columns below are positions in this order; 'vocabulary 0-3' means the first four entries)")
        }
        say()
        say("FORWARD: for each token block, sweep the vocabulary tile by tile; keep per row a running max m and a")
        say("running sum s of exp(z - m). When a tile raises m to m', the old sum is rescaled by exp(m - m').")
        var lse = [Double](repeating: 0, count: n)
        for b0 in stride(from: 0, to: n, by: t) {
            var m = [Double](repeating: -.infinity, count: t), s = [Double](repeating: 0, count: t)
            for v0 in stride(from: 0, to: v, by: t) {
                say()
                say("Tile rows \(b0)-\(b0 + t - 1) x vocabulary \(v0)-\(v0 + t - 1): logits z = E C^T")
                say(columns(v0))
                for r in 0..<t {
                    let zs = (v0..<(v0 + t)).map { z(b0 + r, order[$0]) }
                    say(String(format: "  row %d  ", b0 + r) + row(zs, "%11.3f"))
                }
                say("  merge:    tile max | running max m -> m' | rescale exp(m-m') | running sum s -> s' | lse so far")
                for r in 0..<t {
                    let zs = (v0..<(v0 + t)).map { z(b0 + r, order[$0]) }
                    let tm = zs.max()!
                    let m2 = max(m[r], tm)
                    let scale = m[r] == -.infinity ? 0 : Foundation.exp(m[r] - m2)
                    let s2 = s[r] * scale + zs.reduce(0) { $0 + Foundation.exp($1 - m2) }
                    say(String(format: "  row %d  %9.3f | %8.3f -> %8.3f | %16.4f | %8.4f -> %8.4f | %8.4f",
                               b0 + r, tm, m[r], m2, scale, s[r], s2, m2 + Foundation.log(s2)))
                    m[r] = m2; s[r] = s2
                }
            }
            for r in 0..<t { lse[b0 + r] = m[r] + Foundation.log(s[r]) }
        }
        say()
        say("LOSS: loss_i = lse_i - z_(i, t_i)")
        var total = 0.0
        for i in 0..<n {
            let zt = z(i, targets[i])
            total += lse[i] - zt
            say(String(format: "  row %d  lse %8.4f  target v%-2d  z_t %8.4f  loss %8.4f", i, lse[i], targets[i], zt, lse[i] - zt))
        }
        let loss = total / Double(n)

        var opts = Options()
        opts.filterEpsilon = .none
        let (fwd, g) = try CutCrossEntropy(options: opts).lossAndGradients(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        say(String(format: "  mean loss %.7f; library (CutCrossEntropy.lossAndGradients, Float32) %.7f; |difference| %.1e",
                   loss, fwd.loss, abs(loss - fwd.loss)))

        say()
        say(String(format: "BACKWARD: recompute each tile, p = exp(z - lse), dloss/dz = p - [v = t]. eps = %g: a tile is", eps))
        say("skipped when every |p| < eps and no row's target is in it. Kept tiles add dy = (dloss/dz)/N into dE and dC.")
        var dE = [Double](repeating: 0, count: n * d), dC = [Double](repeating: 0, count: v * d)
        var dEAll = dE, dCAll = dC
        var skipped = 0
        for b0 in stride(from: 0, to: n, by: t) {
            for v0 in stride(from: 0, to: v, by: t) {
                var tileG = [[Double]](), maxP = 0.0
                var targetRows: [Int] = []
                for r in 0..<t {
                    let i = b0 + r
                    tileG.append((v0..<(v0 + t)).map { k in
                        let q = order[k]
                        let p = Foundation.exp(z(i, q) - lse[i])
                        maxP = max(maxP, p)
                        return p - (q == targets[i] ? 1 : 0)
                    })
                    if (v0..<(v0 + t)).contains(where: { order[$0] == targets[i] }) { targetRows.append(i) }
                }
                let keep = maxP >= eps || !targetRows.isEmpty
                say()
                say("Tile rows \(b0)-\(b0 + t - 1) x vocabulary \(v0)-\(v0 + t - 1): dloss/dz")
                say(columns(v0))
                for r in 0..<t { say(String(format: "  row %d  ", b0 + r) + row(tileG[r], "%11.2e")) }
                let why: String
                if !targetRows.isEmpty {
                    why = "KEPT: target of row " + targetRows.map(String.init).joined(separator: ", ") + " is in this tile"
                } else if keep {
                    why = String(format: "KEPT: max p = %.2e >= eps", maxP)
                } else {
                    why = String(format: "SKIPPED: max p = %.2e < eps and no target here", maxP)
                    skipped += 1
                }
                say("  " + why)
                for r in 0..<t {
                    let i = b0 + r
                    for (j, k) in (v0..<(v0 + t)).enumerated() {
                        let q = order[k]
                        let dy = tileG[r][j] / Double(n)
                        for k in 0..<d {
                            dEAll[i * d + k] += dy * c[q * d + k]; dCAll[q * d + k] += dy * e[i * d + k]
                            if keep { dE[i * d + k] += dy * c[q * d + k]; dC[q * d + k] += dy * e[i * d + k] }
                        }
                    }
                }
            }
        }
        func maxDiff(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) } }
        let libE = g.dE.doubles, libC = g.dC.doubles
        let gradDiff = max(maxDiff(dEAll, libE), maxDiff(dCAll, libC))
        let filtErr = max(maxDiff(dE, dEAll), maxDiff(dC, dCAll))
        say()
        say("SUMMARY: skipped \(skipped) of \(n / t * v / t) tiles at eps = \(String(format: "%g", eps)).")
        say(String(format: "  loss: walkthrough %.7f, library %.7f (|difference| %.1e)", loss, fwd.loss, abs(loss - fwd.loss)))
        say(String(format: "  unfiltered gradients vs the library's (eps none): max |difference| %.1e over dE and dC", gradDiff))
        say(String(format: "  what filtering dropped: max |dE, dC change| %.1e (each dropped dy entry is below eps/N = %.1e)",
                   filtErr, eps / Double(n)))
        // The engine at the same eps filters per row segment (one token x VB entries) and, by
        // default, adds back each dropped segment's first-order part (Docs/DERIVATION.md).
        var plainErr = 0.0, estimateErr = 0.0, kept = 0, segments = 0
        for estimate in [false, true] {
            var o = Options(); o.filterEpsilon = .value(eps); o.filterCorrection = estimate
            let gf = try CutCrossEntropy(options: o).lossAndGradients(
                embeddings: data.embeddings, classifier: data.classifier, targets: data.targets).1
            let err = maxDiff(gf.dE.doubles, dEAll)
            if estimate { estimateErr = err } else { plainErr = err }
            kept = gf.filter.keptRowSegments; segments = gf.filter.rowSegments
        }
        say("  the engine filters per row segment (one token x VB = \(CutCrossEntropy().plan(tokens: n, dim: d, vocab: v).vocabBlock) entries; "
            + "a segment holding its target is kept) and adds back each dropped segment's first-order part by default:")
        say(String(format: "    at this eps it keeps %d of %d segments; max |dE change| %.1e with the plain filter, %.1e with the estimate",
                   kept, segments, plainErr, estimateErr))
        lines = out
        self.loss = loss
        libraryLoss = fwd.loss
        gradientDifference = gradDiff
        filteringError = filtErr
        skippedTiles = skipped
    }
}
