// Error budgets for every mode and element type, in the manner of apple/ml-cross-entropy's
// own tests: per element,
//     |engine − truth| ≤ |plain − truth| + τ · max|truth|,
// where truth is the Float64 oracle on the same (rounded) inputs and "plain" is what a
// framework computes in the storage type over materialized logits: logits, loss, softmax
// gradient and both gradient products each rounded to the storage type (PyTorch's bf16
// matmul: Float32 accumulation, bf16 output). τ is the slack the engine may take beyond
// that; the table of τ is in Docs/NUMERICS.md. Shapes are not tile multiples.

import CCEBenchmarks
import CCEData
import CutCrossEntropy
import Foundation
import XCTest

final class ModeBudgetTests: XCTestCase {
    /// τ for (mode, type): loss (relative to |truth|), gradients (relative to max|truth|).
    static func tau(_ mode: Mode, _ type: ElementType) -> (loss: Double, grad: Double) {
        if mode == .exact { return (1e-12, 1e-12) }
        switch type {
        case .float32: return (1e-6, 2e-6)
        case .float16: return (1e-6, 6e-5)
        case .bfloat16: return (1e-6, 1e-3)
        }
    }

    /// The plain same-type computation, materialized, reduction mean.
    static func plain(_ e: Tensor, _ c: Tensor, _ t: Targets, type: ElementType) -> (loss: Double, dE: [Double], dC: [Double]) {
        func r(_ x: Double) -> Double {
            switch type {
            case .float32: return Double(Float(x))
            case .float16: return Double(Float(Float16(Float(x))))
            case .bfloat16: return Double(BFloat16(Float(x)).floatValue)
            }
        }
        let ef = e.floats().map { Double($0) }, cf = c.floats().map { Double($0) }
        let d = e.shape.last!, n = ef.count / d, v = c.shape[0]
        let active = t.values.filter { $0 != -100 }.count
        var dlog = [Double](repeating: 0, count: n * v)
        var loss = 0.0
        for i in 0..<n {
            var z = [Double](repeating: 0, count: v)
            for q in 0..<v {
                var s: Float = 0
                for k in 0..<d { s = s.addingProduct(Float(ef[i * d + k]), Float(cf[q * d + k])) }
                z[q] = r(Double(s))
            }
            let m = z.max()!
            let lse = m + Foundation.log(z.reduce(0) { $0 + Foundation.exp($1 - m) })
            let ti = Int(t.values[i])
            guard ti != -100 else { continue }
            loss += Double(Float(lse - z[ti]))
            for q in 0..<v {
                let p = Foundation.exp(z[q] - lse) - (q == ti ? 1 : 0)
                dlog[i * v + q] = r(p / Double(active))
            }
        }
        var dE = [Double](repeating: 0, count: n * d), dC = [Double](repeating: 0, count: v * d)
        for i in 0..<n {
            for k in 0..<d {
                var s: Float = 0
                for q in 0..<v { s = s.addingProduct(Float(dlog[i * v + q]), Float(cf[q * d + k])) }
                dE[i * d + k] = r(Double(s))
            }
        }
        for q in 0..<v {
            for k in 0..<d {
                var s: Float = 0
                for i in 0..<n { s = s.addingProduct(Float(dlog[i * v + q]), Float(ef[i * d + k])) }
                dC[q * d + k] = r(Double(s))
            }
        }
        return (r(loss / Double(active)), dE, dC)
    }

    /// The slack an output needed beyond the plain computation's error, over max|truth|.
    static func slack(_ x: [Double], _ p: [Double], _ truth: [Double]) -> Double {
        let scale = truth.reduce(0) { max($0, abs($1)) }
        var worst = 0.0
        for i in 0..<x.count { worst = max(worst, abs(x[i] - truth[i]) - abs(p[i] - truth[i])) }
        return worst / scale
    }

    func testEveryModeAndTypeWithinBudget() throws {
        for type in ElementType.allCases {
            for (scale, alpha) in [(4.0, 1.5), (2.0, 1.0)] {
                let data = LMLikeData.make(tokens: 75, dim: 40, vocab: 3001, type: type, scale: scale, alpha: alpha, seed: 5)
                var ignored = data.targets.values.map(Int.init); ignored[3] = -100; ignored[40] = -100
                let t = try Targets(ignored)
                let truth = try Oracle.compute(embeddings: data.embeddings, classifier: data.classifier, targets: t)
                let plain = Self.plain(data.embeddings, data.classifier, t, type: type)
                for mode in Mode.allCases {
                    var o = Options(); o.mode = mode; o.threads = 2
                    let (f, g) = try CutCrossEntropy(options: o).lossAndGradients(
                        embeddings: data.embeddings, classifier: data.classifier, targets: t)
                    let tau = Self.tau(mode, type)
                    let what = "\(mode.rawValue) \(type.rawValue) S=\(scale)"
                    XCTAssertLessThanOrEqual(abs(f.loss - truth.loss),
                                             abs(plain.loss - truth.loss) + tau.loss * abs(truth.loss), "loss \(what)")
                    let se = Self.slack(g.dE.doubles, plain.dE, truth.dE), sc = Self.slack(g.dC.doubles, plain.dC, truth.dC)
                    XCTAssertLessThanOrEqual(se, tau.grad, "dE \(what)")
                    XCTAssertLessThanOrEqual(sc, tau.grad, "dC \(what)")
                    // The full modes leave one gradient unfiltered: Float32 accumulation only.
                    if mode == .kahanFullE { XCTAssertLessThanOrEqual(relativeError(g.dE.doubles, truth.dE), 1e-5, "dE \(what)") }
                    if mode == .kahanFullC { XCTAssertLessThanOrEqual(relativeError(g.dC.doubles, truth.dC), 1e-5, "dC \(what)") }
                    if ProcessInfo.processInfo.environment["CCE_PRINT_SLACK"] != nil {
                        print(String(format: "%@: loss err %.2e (plain %.2e), slack dE %.2e dC %.2e, rel dE %.2e dC %.2e",
                                     what, abs(f.loss - truth.loss), abs(plain.loss - truth.loss), se, sc,
                                     relativeError(g.dE.doubles, truth.dE), relativeError(g.dC.doubles, truth.dC)))
                    }
                }
            }
        }
    }

    /// Reproducibility of the compensated modes: bitwise run to run and across thread
    /// counts. Their dC partials are per chunk of 96 tokens, and the token blocks, whose size
    /// follows the thread count, are multiples of the chunk.
    func testKahanReproducibility() throws {
        let data = LMLikeData.make(tokens: 301, dim: 24, vocab: 1500, type: .bfloat16, seed: 8)
        func run(_ threads: Int) throws -> Gradients {
            var o = Options(); o.mode = .kahan; o.threads = threads
            return try CutCrossEntropy(options: o).lossAndGradients(
                embeddings: data.embeddings, classifier: data.classifier, targets: data.targets).1
        }
        let a = try run(2), b = try run(2), c = try run(4)
        XCTAssertTrue(bitwiseEqual(a.dE, b.dE) && bitwiseEqual(a.dC, b.dC), "run to run")
        // Token blocks of 192 and 96 rows: dC's per-chunk partials (96 tokens) are the same.
        func plan(_ threads: Int) -> TilePlan {
            var o = Options(); o.mode = .kahan; o.threads = threads
            return CutCrossEntropy(options: o).plan(tokens: 301, dim: 24, vocab: 1500, storage: .bfloat16)
        }
        XCTAssertNotEqual(plan(2).tokenBlock, plan(4).tokenBlock, "the two thread counts split the tokens differently")
        XCTAssertEqual(plan(4).tokenBlock % TilePlan.compensatedChunk, 0)
        XCTAssertTrue(bitwiseEqual(a.dE, c.dE), "dE across thread counts")
        XCTAssertTrue(bitwiseEqual(a.dC, c.dC), "dC across thread counts")
    }

    /// `cce accuracy --label-smoothing α --bias`: every row, the truth's too, runs with the
    /// smoothing and the bias, and gets a dBias error (0 for the truth), which the Markdown
    /// table shows in its own column; without --bias there is neither. The default row's dBias
    /// error stays within the filtered budget (2e-2) with smoothing; no filter, and the
    /// materialized baseline, within 1e-4.
    func testAccuracyWithSmoothingAndBias() throws {
        let (n, d, v) = (70, 40, 700)
        let rows = try Accuracy.run(tokens: n, dim: d, vocab: v, types: [.bfloat16], settings: [(4, 1.5)],
                                    threads: 2, seed: 3, labelSmoothing: 0.1, bias: true) { _ in }
        XCTAssertEqual(rows.count, 8)
        for r in rows {
            let e = try XCTUnwrap(r.dBias_rel, r.variant)
            if r.variant.hasPrefix("exact") { XCTAssertEqual(e, 0) }
            XCTAssertLessThanOrEqual(e, r.variant.hasSuffix("no filter") || r.variant.hasPrefix("materialized") ? 1e-4 : 2e-2,
                                     r.variant)
        }
        XCTAssertTrue(Accuracy.markdown(rows).contains("dBias rel err"))
        let plain = try Accuracy.run(tokens: n, dim: d, vocab: v, types: [.bfloat16], settings: [(4, 1.5)],
                                     threads: 2, seed: 3) { _ in }
        XCTAssertTrue(plain.allSatisfy { $0.dBias_rel == nil })
        XCTAssertFalse(Accuracy.markdown(plain).contains("dBias"))
        let smoothed = rows.first { $0.variant == "default" }!, unsmoothed = plain.first { $0.variant == "default" }!
        XCTAssertNotEqual(smoothed.loss_rel, unsmoothed.loss_rel, "the smoothing reaches the rows")
    }

    /// `cce accuracy`'s rows (Docs/NUMERICS.md's table): each engine row names the tile kernel
    /// and VB its mode runs with (the rounding depends on both), the materialized row neither,
    /// and the JSON carries them.
    func testAccuracyRowsNameTheirKernel() throws {
        let (n, d, v) = (70, 40, 700)
        let rows = try Accuracy.run(tokens: n, dim: d, vocab: v, types: [.bfloat16], settings: [(4, 1.5)],
                                    threads: 2, seed: 3) { _ in }
        XCTAssertEqual(rows.count, 8, "the truth, six engine variants, the materialized baseline")
        let modes: [String: Mode] = ["exact (the truth)": .exact, "default": .default, "kahan": .kahan,
                                     "kahan-full-e": .kahanFullE, "kahan-full-c": .kahanFullC]
        for r in rows {
            if r.variant.hasPrefix("materialized") {
                XCTAssertNil(r.kernel); XCTAssertNil(r.vocab_block)
                continue
            }
            let mode = modes[r.variant] ?? .default
            var o = Options(); o.mode = mode; o.threads = 2
            if r.variant.hasSuffix("no filter") { o.filterEpsilon = .none }   // its wider blocks (TilePlan)
            let cce = CutCrossEntropy(options: o)
            XCTAssertEqual(r.kernel, cce.tileKernel(embeddings: .bfloat16, classifier: .bfloat16).name, r.variant)
            XCTAssertEqual(r.vocab_block, cce.plan(tokens: n, dim: d, vocab: v, storage: .bfloat16).vocabBlock, r.variant)
            XCTAssertTrue(r.dE_rel.isFinite && r.dC_rel.isFinite, r.variant)
        }
        let json = try XCTUnwrap(String(data: JSONEncoder().encode(rows), encoding: .utf8))
        XCTAssertTrue(json.contains("\"kernel\"") && json.contains("\"vocab_block\""))
    }
}
