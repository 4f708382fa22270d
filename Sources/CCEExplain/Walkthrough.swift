// `cce explain`, part 1: the Cut Cross-Entropy algorithm on a tiny problem, step by step,
// in Float64, checked against the library. This file computes; `cce explain`
// (Sources/cce/Explain.swift) prints what it returns.
//
// Problem: LM-like data (Docs/LMLIKE.md) with N = 8 tokens, D = 4, V = 16, cut into
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

/// The tiny worked example: every intermediate quantity of the forward and the backward,
/// tile by tile, and the comparison with the library.
public struct TileWalkthrough: Sendable {
    public static let n = 8, d = 4, v = 16, tile = 4

    /// One row's step of the online log-sum-exp merge over one forward tile:
    /// m' = max(m, tile max), s' = s·e^(m − m') + Σ e^(z − m'), lse so far = m' + ln s'.
    public struct MergeStep: Sendable {
        public let tileMax: Double
        /// m before the tile (−∞ before the first) and m' after it.
        public let runningMax: Double, newMax: Double
        /// e^(m − m'); 0 for the first tile, where there is no sum to rescale.
        public let rescale: Double
        /// s before the tile and s' after it.
        public let runningSum: Double, newSum: Double
        public let lse: Double
    }

    /// A forward tile: `tile` rows from `firstRow` by `tile` vocabulary positions (in
    /// `order`) from `firstPosition`.
    public struct ForwardTile: Sendable {
        public let firstRow: Int, firstPosition: Int
        /// logits[r][j] = z for row firstRow + r and vocabulary entry order[firstPosition + j].
        public let logits: [[Double]]
        /// One merge step per row.
        public let merge: [MergeStep]
    }

    /// One token's loss, lse_i − z_(i, t_i).
    public struct TokenLoss: Sendable {
        public let row: Int, target: Int
        public let lse: Double, targetLogit: Double, loss: Double
    }

    /// Why a backward tile was kept or skipped.
    public enum Decision: Sendable, Equatable {
        /// These rows' targets lie in the tile.
        case keptForTargets(rows: [Int])
        /// No target, and the largest probability is at least ε.
        case keptAboveEpsilon(maxProbability: Double)
        /// No target, and every probability is below ε.
        case skipped(maxProbability: Double)

        public var isKept: Bool { if case .skipped = self { false } else { true } }
    }

    /// A backward tile, in the forward tile's coordinates.
    public struct BackwardTile: Sendable {
        public let firstRow: Int, firstPosition: Int
        /// gradient[r][j] = ∂loss_i/∂z = p − [v = t_i], before the 1/N of the mean.
        public let gradient: [[Double]]
        public let decision: Decision
    }

    public let seed: UInt64
    /// The filter threshold ε.
    public let eps: Double
    /// Whether the vocabulary was sorted, as the engine does before the backward.
    public let sortVocabulary: Bool
    /// t_i per row.
    public let targets: [Int]
    /// The engine's vocabulary order: order[k] is the id at position k (the identity when
    /// not sorted).
    public let order: [Int]
    /// Forward tiles, token block by token block, vocabulary block after vocabulary block.
    public let forward: [ForwardTile]
    /// Per token, in row order.
    public let tokenLosses: [TokenLoss]
    /// Backward tiles, in the forward's order.
    public let backward: [BackwardTile]
    /// The walkthrough's loss (Float64) and the library's (`lossAndGradients`, Float32).
    public let loss: Double, libraryLoss: Double
    /// Max |dE|, |dC| differences between the walkthrough's unfiltered gradients and the
    /// library's (ε none).
    public let gradientDifference: Double
    /// The walkthrough's own filtering error: max |dE, dC change| of the filtered gradients
    /// against the unfiltered ones, both Float64.
    public let filteringError: Double
    /// Tiles skipped, of `tiles`.
    public let skippedTiles: Int
    public var tiles: Int { Self.n / Self.tile * (Self.v / Self.tile) }
    /// The engine at the same ε: its backward vocabulary block VB (its unit of filtering is
    /// the row segment, one token x VB entries), the segments it kept of all (with the
    /// dropped-mass estimate), and max |dE change| against the unfiltered gradients with the
    /// plain filter and with the estimate.
    public let engineVocabBlock: Int
    public let engineKeptSegments: Int, engineSegments: Int
    public let enginePlainFilterError: Double, engineEstimateError: Double

    /// Walks the example for data seed `seed` and filter threshold `eps`.
    public init(seed: UInt64 = 0, eps: Double = 0x1p-7, sortVocabulary: Bool = true) throws {
        guard eps >= 0, eps.isFinite else { throw ExplainError.invalidOption("eps must be finite and >= 0 (got \(eps))") }
        let (n, d, v, t) = (Self.n, Self.d, Self.v, Self.tile)
        let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: .float32, seed: seed)
        let e: [Double] = data.embeddings.floats().map { Double($0) }
        let c: [Double] = data.classifier.floats().map { Double($0) }
        let targets = data.targets.values.map(Int.init)
        func z(_ i: Int, _ q: Int) -> Double {
            var s = 0.0
            for k in 0..<d { s += e[i * d + k] * c[q * d + k] }
            return s
        }

        // The engine's vocabulary order: average logit C_v · ē, largest first (VocabularyOrder.swift).
        // At the walkthrough's ε: the engine leaves the order alone where nearly every entry
        // is kept (ε below 2^-20, BackwardPolicy.sortVocabulary).
        var orderOptions = Options(); orderOptions.sortVocabulary = sortVocabulary
        orderOptions.filterEpsilon = .value(eps)
        let sorts = BackwardPolicy(orderOptions, embeddings: .float32, classifier: .float32).sortVocabulary
        let order = try CutCrossEntropy(options: orderOptions).vocabularyOrder(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)

        // Forward: per token block, the online LSE merge over the vocabulary tiles.
        var forward: [ForwardTile] = []
        var lse = [Double](repeating: 0, count: n)
        for b0 in stride(from: 0, to: n, by: t) {
            var m = [Double](repeating: -.infinity, count: t), s = [Double](repeating: 0, count: t)
            for v0 in stride(from: 0, to: v, by: t) {
                let logits = (0..<t).map { r in (v0..<(v0 + t)).map { z(b0 + r, order[$0]) } }
                var merge: [MergeStep] = []
                for r in 0..<t {
                    let zs = logits[r]
                    let tm = zs.max()!
                    let m2 = max(m[r], tm)
                    let scale = m[r] == -.infinity ? 0 : Foundation.exp(m[r] - m2)
                    let s2 = s[r] * scale + zs.reduce(0) { $0 + Foundation.exp($1 - m2) }
                    merge.append(MergeStep(tileMax: tm, runningMax: m[r], newMax: m2, rescale: scale,
                                           runningSum: s[r], newSum: s2, lse: m2 + Foundation.log(s2)))
                    m[r] = m2; s[r] = s2
                }
                forward.append(ForwardTile(firstRow: b0, firstPosition: v0, logits: logits, merge: merge))
            }
            for r in 0..<t { lse[b0 + r] = m[r] + Foundation.log(s[r]) }
        }

        // Loss: lse_i − z_(i, t_i), and its mean against the library's.
        var tokenLosses: [TokenLoss] = []
        var total = 0.0
        for i in 0..<n {
            let zt = z(i, targets[i])
            total += lse[i] - zt
            tokenLosses.append(TokenLoss(row: i, target: targets[i], lse: lse[i], targetLogit: zt, loss: lse[i] - zt))
        }
        let loss = total / Double(n)
        var opts = Options()
        opts.filterEpsilon = .none
        let (fwd, g) = try CutCrossEntropy(options: opts).lossAndGradients(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)

        // Backward: per tile, p = e^(z − lse) and the decision; dy = (p − [v = t])/N into
        // dE and dC, for every tile (unfiltered) and for the kept ones (filtered).
        var backward: [BackwardTile] = []
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
                let decision: Decision
                if !targetRows.isEmpty {
                    decision = .keptForTargets(rows: targetRows)
                } else if maxP >= eps {
                    decision = .keptAboveEpsilon(maxProbability: maxP)
                } else {
                    decision = .skipped(maxProbability: maxP)
                    skipped += 1
                }
                let keep = decision.isKept
                backward.append(BackwardTile(firstRow: b0, firstPosition: v0, gradient: tileG, decision: decision))
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

        self.seed = seed
        self.eps = eps
        self.sortVocabulary = sorts
        self.targets = targets
        self.order = order
        self.forward = forward
        self.tokenLosses = tokenLosses
        self.backward = backward
        self.loss = loss
        libraryLoss = fwd.loss
        gradientDifference = max(maxDiff(dEAll, libE), maxDiff(dCAll, libC))
        filteringError = max(maxDiff(dE, dEAll), maxDiff(dC, dCAll))
        skippedTiles = skipped
        engineVocabBlock = CutCrossEntropy().plan(tokens: n, dim: d, vocab: v).vocabBlock
        engineKeptSegments = kept; engineSegments = segments
        enginePlainFilterError = plainErr; engineEstimateError = estimateErr
    }
}
