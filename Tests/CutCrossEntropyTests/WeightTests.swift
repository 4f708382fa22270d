// Class weights (Options.classWeights, PyTorch's `weight` of F.cross_entropy): the engine
// against the Float64 oracle over every option, the oracle against the definition, the
// fused call's skip bound with weights, the materialized baseline, and validation.
//
// Definition (checked against torch.nn.functional.cross_entropy in python/tests): for token
// i with target t, W = Σ_v w_v,
//     loss_i = w_t·[(1 − α)·(lse_i − z_t) + zloss·lse_i²] + (α/V)·Σ_v w_v·(lse_i − z_v),
// and `.mean` divides the sum by Σ_i w_{t_i}. Budgets as in OracleAgreementTests.

import CCEData
import CutCrossEntropy
import Foundation
import XCTest

final class WeightTests: XCTestCase {
    /// V weights in [0, 2.5), a few exactly 0, deterministic.
    func weights(_ v: Int, seed: UInt64 = 5, scale: Float = 2.5) -> [Float] {
        var rng = SeededRandom(seed: seed)
        return (0..<v).map { k in k % 11 == 3 ? 0 : Float(rng.uniform()) * scale }
    }

    func check(n: Int, d: Int, v: Int, batch: Int? = nil, bias: Bool, options o: Options, type: ElementType = .float32,
               file: StaticString = #filePath, line: UInt = #line) throws {
        let (e, c, t, b) = randomProblem(n: n, d: d, v: v, type: type, seed: UInt64(n * 7 + v), batch: batch, withBias: bias)
        let upstream: Upstream = o.reduction == .none
            ? .perToken((0..<t.count).map { Float(0.5 + Double($0 % 3) * 0.25) }) : .scalar(0.7)
        let cce = CutCrossEntropy(options: o)
        let (f, g) = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b, upstream: upstream)
        let f2 = try cce.forward(embeddings: e, classifier: c, targets: t, bias: b)
        let g2 = try cce.backward(f2, embeddings: e, classifier: c, bias: b, upstream: upstream)
        let r = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: o, upstream: upstream)
        let exact = o.mode == .exact
        let (la, lr, ga, gr) = exact ? (1e-12, 1e-12, 1e-12, 1e-11) : (1e-5, 1e-5, 1e-6, 1e-4)
        let name = "N=\(n) D=\(d) V=\(v) B=\(batch ?? 0) bias=\(bias) \(o.reduction) softcap=\(o.softcap ?? 0) "
            + "shift=\(o.shift) α=\(o.labelSmoothing) z=\(o.zLoss) \(o.mode.rawValue) sort=\(o.sortVocabulary) \(type)"
        for (path, fw, gw) in [("fused", f, g), ("split", f2, g2)] {
            assertClose([fw.loss], [r.loss], atol: la, rtol: lr, "\(name) \(path) loss", file: file, line: line)
            assertClose(fw.tokenLosses.doubles, r.tokenLosses, atol: la, rtol: lr, "\(name) \(path) token losses", file: file, line: line)
            assertClose(fw.lse.doubles, r.lse, atol: la, rtol: lr, "\(name) \(path) lse", file: file, line: line)
            assertClose(gw.dE.doubles, r.dE, atol: ga, rtol: gr, "\(name) \(path) dE", file: file, line: line)
            assertClose(gw.dC.doubles, r.dC, atol: ga, rtol: gr, "\(name) \(path) dC", file: file, line: line)
            if let db = gw.dBias, let rdb = r.dBias {
                assertClose(db.doubles, rdb, atol: ga, rtol: gr, "\(name) \(path) dBias", file: file, line: line)
            } else {
                XCTAssertEqual(gw.dBias == nil, r.dBias == nil, "\(name): dBias presence", file: file, line: line)
            }
        }
    }

    /// Every combination of soft cap, label smoothing, z-loss, reduction and bias, with
    /// weights, at shapes that are not tile multiples; fused and split calls.
    func testEveryOptionCombinationWithWeights() throws {
        for softcap in [nil, 3.0] {
            for smoothing in [0.0, 0.1] {
                for zloss in [0.0, 1e-3] {
                    for r in Reduction.allCases {
                        for bias in [false, true] {
                            var o = Options()
                            o.softcap = softcap; o.labelSmoothing = smoothing; o.zLoss = zloss; o.reduction = r
                            o.classWeights = weights(301)
                            try check(n: 37, d: 19, v: 301, bias: bias, options: o)
                        }
                    }
                }
            }
        }
    }

    /// Every mode, unsorted and unfiltered sweeps, shift over sequences, several threads,
    /// and half-precision storage, with weights and smoothing.
    func testModesShiftAndStorageWithWeights() throws {
        for mode in Mode.allCases {
            var o = Options(); o.mode = mode; o.labelSmoothing = 0.2; o.zLoss = 1e-3; o.softcap = 4
            o.classWeights = weights(301, seed: 9)
            try check(n: 37, d: 19, v: 301, bias: true, options: o)
            o.reduction = .none
            try check(n: 37, d: 19, v: 301, bias: false, options: o)
        }
        for shift in [1, 3] {
            var o = Options(); o.shift = shift; o.labelSmoothing = 0.1; o.classWeights = weights(301)
            try check(n: 36, d: 19, v: 301, batch: 4, bias: true, options: o)
            o.reduction = .none
            try check(n: 36, d: 19, v: 301, batch: 4, bias: false, options: o)
        }
        var o = Options(); o.labelSmoothing = 0.1; o.classWeights = weights(301); o.sortVocabulary = false
        try check(n: 37, d: 19, v: 301, bias: true, options: o)
        o.filterEpsilon = .none; o.threads = 3
        try check(n: 37, d: 19, v: 301, bias: true, options: o)
        for type in [ElementType.float16, .bfloat16] {
            var o = Options(); o.labelSmoothing = 0.1; o.zLoss = 1e-4; o.classWeights = weights(301); o.filterEpsilon = .none
            try check(n: 37, d: 19, v: 301, bias: true, options: o, type: type)
        }
        // Degenerate shapes.
        var one = Options(); one.classWeights = [1.5]; one.labelSmoothing = 0.3
        try check(n: 5, d: 3, v: 1, bias: true, options: one)
        var small = Options(); small.classWeights = weights(17); small.labelSmoothing = 0.3
        try check(n: 1, d: 1, v: 17, bias: false, options: small)
    }

    /// The oracle is the definition: with every weight 1 it is the unweighted oracle; with
    /// α = 0 each token's loss and gradient are w_t times the unweighted ones, and the mean
    /// divides by Σ w_t; with α > 0 the token loss is the PyTorch formula written out here.
    func testOracleIsTheDefinition() throws {
        let (e, c, t, b) = randomProblem(n: 23, d: 7, v: 41, seed: 3, withBias: true)
        let w = weights(41)
        for smoothing in [0.0, 0.25] {
            for zloss in [0.0, 1e-2] {
                var plain = Options(); plain.labelSmoothing = smoothing; plain.zLoss = zloss; plain.reduction = .none
                var ones = plain; ones.classWeights = [Float](repeating: 1, count: 41)
                let u = Upstream.perToken([Float](repeating: 1, count: t.count))
                let r0 = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: plain, upstream: u)
                let r1 = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: ones, upstream: u)
                assertClose(r1.tokenLosses, r0.tokenLosses, atol: 1e-13, rtol: 1e-13, "ones: token losses")
                assertClose(r1.dE, r0.dE, atol: 1e-13, rtol: 1e-13, "ones: dE")
                assertClose(r1.dC, r0.dC, atol: 1e-13, rtol: 1e-13, "ones: dC")
                var weighted = plain; weighted.classWeights = w
                let rw = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: weighted, upstream: u)
                // The PyTorch form from the logits, in Double.
                let ev = e.floats().map { Double($0) }, cv = c.floats().map { Double($0) }, bv = b!.floats().map { Double($0) }
                var total = 0.0, weightSum = 0.0
                for i in 0..<23 where t.values[i] != -100 {
                    let ti = Int(t.values[i])
                    var z = [Double](repeating: 0, count: 41)
                    for k in 0..<41 {
                        var y = bv[k]
                        for q in 0..<7 { y += ev[i * 7 + q] * cv[k * 7 + q] }
                        z[k] = y
                    }
                    let m = z.max()!
                    var sumExp = 0.0
                    for x in z { sumExp += exp(x - m) }
                    let lse = m + log(sumExp)
                    let nll = lse - z[ti]
                    var smooth = 0.0
                    for k in 0..<41 { smooth += Double(w[k]) * (lse - z[k]) }
                    let expected = Double(w[ti]) * ((1 - smoothing) * nll + zloss * lse * lse) + smoothing / 41 * smooth
                    XCTAssertEqual(rw.tokenLosses[i], expected, accuracy: 1e-12 * max(1, abs(expected)), "token \(i)")
                    if smoothing == 0 {
                        XCTAssertEqual(rw.tokenLosses[i], Double(w[ti]) * r0.tokenLosses[i], accuracy: 1e-12, "w_t·loss \(i)")
                    }
                    total += expected; weightSum += Double(w[ti])
                }
                var mean = weighted; mean.reduction = .mean
                let rm = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: mean)
                XCTAssertEqual(rm.loss, total / weightSum, accuracy: 1e-12 * abs(total / weightSum), "weighted mean")
            }
        }
    }

    /// The fused call's skip bound stays an upper bound with weights: on LM-like BFloat16 data
    /// (ε = 2^-12) the fused call equals forward + backward bitwise without the estimate,
    /// both with weights for which the bound skips many rows and with weights large enough
    /// that the smoothing term alone, (α/V)·max w, exceeds ε (then no row may be skipped).
    /// With the estimate (its smoothing mass per forward block weighted), dE agrees to 1e-4.
    func testFusedSkipBoundWithWeights() throws {
        let v = 3000
        let data = LMLikeData.make(tokens: 150, dim: 40, vocab: v, type: .bfloat16, seed: 11)
        for (scale, expectSkips) in [(Float(2), true), (Float(60), false)] {
            for correction in [false, true] {
                var o = Options(); o.labelSmoothing = 0.1; o.zLoss = 1e-4; o.filterCorrection = correction
                o.classWeights = weights(v, seed: 4, scale: scale)
                let cce = CutCrossEntropy(options: o)
                let f = try cce.forward(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
                let g = try cce.backward(f, embeddings: data.embeddings, classifier: data.classifier)
                let (f2, g2) = try cce.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                        targets: data.targets)
                let what = "weights up to \(scale), correction \(correction)"
                if expectSkips {
                    XCTAssertGreaterThan(g2.filter.boundSkippedRowSegments, g2.filter.rowSegments / 10, "rows skipped, \(what)")
                } else {
                    XCTAssertEqual(g2.filter.boundSkippedRowSegments, 0, "no row may be skipped, \(what)")
                }
                XCTAssertEqual(f.loss.bitPattern, f2.loss.bitPattern, what)
                if correction {
                    XCTAssertLessThanOrEqual(relativeError(g2.dE.doubles, g.dE.doubles), 1e-4, "dE, \(what)")
                } else {
                    XCTAssertTrue(bitwiseEqual(g.dE, g2.dE), "dE, \(what)")
                }
                XCTAssertTrue(bitwiseEqual(g.dC, g2.dC), "dC, \(what)")
                XCTAssertEqual(g.filter.keptRowSegments, g2.filter.keptRowSegments, what)
            }
        }
    }

    /// The materialized baseline applies the same weights.
    func testMaterializedWithWeights() throws {
        let (e, c, t, b) = randomProblem(n: 37, d: 19, v: 301, seed: 2, withBias: true)
        for smoothing in [0.0, 0.1] {
            var o = Options(); o.labelSmoothing = smoothing; o.zLoss = 1e-3; o.softcap = 5; o.classWeights = weights(301)
            let m = try Materialized.compute(embeddings: e, classifier: c, targets: t, bias: b, options: o)
            let r = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: o)
            assertClose([m.loss], [r.loss], atol: 1e-5, rtol: 1e-5, "materialized loss α=\(smoothing)")
            assertClose(m.dE!.map { Double($0) }, r.dE, atol: 1e-6, rtol: 1e-4, "materialized dE α=\(smoothing)")
            assertClose(m.dC!.map { Double($0) }, r.dC, atol: 1e-6, rtol: 1e-4, "materialized dC α=\(smoothing)")
            assertClose(m.dBias!.map { Double($0) }, r.dBias!, atol: 1e-6, rtol: 1e-4, "materialized dBias α=\(smoothing)")
        }
    }

    /// Active targets whose weights are all 0: the mean is NaN (0/0, as in PyTorch) and the
    /// gradients are 0 (PyTorch's are NaN); the sum is the smoothing term alone.
    func testZeroWeightSum() throws {
        let (e, c, _, _) = randomProblem(n: 6, d: 4, v: 9)
        let t = try Targets([1, 1, 2, -100, 2, 1])
        var w = [Float](repeating: 1, count: 9); w[1] = 0; w[2] = 0
        var o = Options(); o.classWeights = w
        let (f, g) = try CutCrossEntropy(options: o).lossAndGradients(embeddings: e, classifier: c, targets: t)
        XCTAssertTrue(f.loss.isNaN)
        XCTAssertTrue(g.dE.doubles.allSatisfy { $0 == 0 })
        XCTAssertTrue(g.dC.doubles.allSatisfy { $0 == 0 })
        o.reduction = .sum
        let s = try CutCrossEntropy(options: o).forward(embeddings: e, classifier: c, targets: t)
        XCTAssertEqual(s.loss, 0)
    }

    /// Bad weights: a typed error that names the problem.
    func testValidation() throws {
        let (e, c, t, _) = randomProblem(n: 6, d: 4, v: 9, ignoreFraction: 0)
        func expect(_ w: [Float], _ matches: (CCEError) -> Bool, _ what: String) {
            var o = Options(); o.classWeights = w
            do {
                _ = try CutCrossEntropy(options: o).forward(embeddings: e, classifier: c, targets: t)
                XCTFail("\(what): no error")
            } catch let error as CCEError {
                XCTAssertTrue(matches(error), "\(what): \(error)")
                XCTAssertTrue(error.description.contains("classWeights"), "\(what): \(error)")
            } catch { XCTFail("\(what): \(error)") }
        }
        expect([Float](repeating: 1, count: 8), { if case .invalidShape = $0 { true } else { false } }, "8 weights for V = 9")
        var nan = [Float](repeating: 1, count: 9); nan[4] = .nan
        expect(nan, { if case .nonFinite(let name, let i) = $0 { name == "classWeights" && i == 4 } else { false } }, "NaN")
        var inf = [Float](repeating: 1, count: 9); inf[0] = .infinity
        expect(inf, { if case .nonFinite = $0 { true } else { false } }, "infinity")
        var negative = [Float](repeating: 1, count: 9); negative[7] = -0.5
        expect(negative, { if case .invalidOption = $0 { true } else { false } }, "negative")
    }
}
