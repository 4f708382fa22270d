// The tiled engine against the Float64 oracle, over a grid of shapes and options.
//
// Error budget (default mode, Float32 storage): Float32 tiles over D terms and Float32
// gradient chains over up to V (dE) or N (dC) terms, with filtering at ε = 2^-28:
//   loss, LSE:   |engine − oracle| ≤ 1e-5 + 1e-5·max|oracle|
//   dE, dC, dB:  |engine − oracle| ≤ 1e-6 + 1e-4·max|oracle|
// Exact mode (Float64 accumulation, no filtering): 1e-12 relative.

import CCEData
import CutCrossEntropy
import XCTest

final class OracleAgreementTests: XCTestCase {
    struct Case: CustomStringConvertible {
        var n: Int, d: Int, v: Int
        var batch: Int? = nil
        var options = Options()
        var bias = false
        var description: String {
            "N=\(n) D=\(d) V=\(v) B=\(batch.map(String.init) ?? "-") bias=\(bias) reduction=\(options.reduction) "
                + "softcap=\(options.softcap.map { "\($0)" } ?? "-") shift=\(options.shift) "
                + "smoothing=\(options.labelSmoothing) zloss=\(options.zLoss) mode=\(options.mode) "
                + "sort=\(options.sortVocabulary) threads=\(options.threads ?? 0)"
        }
    }

    func check(_ c: Case, file: StaticString = #filePath, line: UInt = #line) throws {
        let (e, cl, t, b) = randomProblem(n: c.n, d: c.d, v: c.v, seed: UInt64(c.n * 31 + c.v),
                                          batch: c.batch, withBias: c.bias)
        let upstream: Upstream = c.options.reduction == .none
            ? .perToken((0..<t.count).map { Float(0.5 + Double($0 % 3) * 0.25) }) : .scalar(0.7)
        let cce = CutCrossEntropy(options: c.options)
        let (f, g) = try cce.lossAndGradients(embeddings: e, classifier: cl, targets: t, bias: b, upstream: upstream)
        let o = try Oracle.compute(embeddings: e, classifier: cl, targets: t, bias: b, options: c.options,
                                   upstream: upstream)
        let exact = c.options.mode == .exact
        let (la, lr, ga, gr) = exact ? (1e-12, 1e-12, 1e-12, 1e-11) : (1e-5, 1e-5, 1e-6, 1e-4)
        let name = c.description
        assertClose([f.loss], [o.loss], atol: la, rtol: lr, "\(name) loss", file: file, line: line)
        assertClose(f.tokenLosses.doubles, o.tokenLosses, atol: la, rtol: lr, "\(name) token losses", file: file, line: line)
        assertClose(f.lse.doubles, o.lse, atol: la, rtol: lr, "\(name) lse", file: file, line: line)
        assertClose(g.dE.doubles, o.dE, atol: ga, rtol: gr, "\(name) dE", file: file, line: line)
        assertClose(g.dC.doubles, o.dC, atol: ga, rtol: gr, "\(name) dC", file: file, line: line)
        if let db = g.dBias, let odb = o.dBias {
            assertClose(db.doubles, odb, atol: ga, rtol: gr, "\(name) dBias", file: file, line: line)
        } else {
            XCTAssertEqual(g.dBias == nil, o.dBias == nil, "\(name): dBias presence", file: file, line: line)
        }
    }

    func testOddShapesEveryReduction() throws {
        for r in Reduction.allCases {
            var o = Options(); o.reduction = r
            try check(Case(n: 37, d: 19, v: 301, options: o))
            try check(Case(n: 37, d: 19, v: 301, options: o, bias: true))
        }
    }

    func testEveryOptionAndCombinations() throws {
        for softcap in [nil, 3.0] {
            for smoothing in [0.0, 0.1] {
                for zloss in [0.0, 1e-3] {
                    for r in [Reduction.mean, .none] {
                        var o = Options()
                        o.softcap = softcap; o.labelSmoothing = smoothing; o.zLoss = zloss; o.reduction = r
                        try check(Case(n: 37, d: 19, v: 301, options: o, bias: true))
                    }
                }
            }
        }
    }

    func testShiftOverSequences() throws {
        for shift in [0, 1, 3] {
            var o = Options(); o.shift = shift
            try check(Case(n: 36, d: 19, v: 301, batch: 4, options: o))
            o.reduction = .none
            try check(Case(n: 36, d: 19, v: 301, batch: 4, options: o, bias: true))
        }
    }

    func testDegenerateShapes() throws {
        try check(Case(n: 37, d: 19, v: 1))
        try check(Case(n: 1, d: 1, v: 301))
        try check(Case(n: 1, d: 1, v: 1))
        try check(Case(n: 5, d: 33, v: 17, bias: true))
    }

    func testExactMode() throws {
        var o = Options(); o.mode = .exact
        try check(Case(n: 37, d: 19, v: 301, options: o, bias: true))
        o.softcap = 2; o.labelSmoothing = 0.2; o.zLoss = 1e-2; o.reduction = .none
        try check(Case(n: 36, d: 19, v: 301, batch: 3, options: o, bias: true))
    }

    func testUnsortedAndUnfiltered() throws {
        var o = Options(); o.sortVocabulary = false
        try check(Case(n: 37, d: 19, v: 301, options: o))
        o.filterEpsilon = .none
        try check(Case(n: 37, d: 19, v: 301, options: o, bias: true))
    }

    /// The OpenBLAS tile backend (a comparison option of `cce bench`) gives the same
    /// results within the Float32 budget, fused and split, with and without a bias.
    func testOpenBLASTileBackend() throws {
        for type in [ElementType.float32, .bfloat16] {
            let (e, c, t, b) = randomProblem(n: 37, d: 19, v: 301, type: type, withBias: true)
            var o = Options(); o.softcap = 5; o.labelSmoothing = 0.1
            var cce = CutCrossEntropy(options: o)
            cce.tileBackend = .openBLAS
            let (f, g) = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
            let f2 = try cce.forward(embeddings: e, classifier: c, targets: t, bias: b)
            let g2 = try cce.backward(f2, embeddings: e, classifier: c, bias: b)
            let r = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: o)
            for (name, loss, grads) in [("fused", f.loss, g), ("split", f2.loss, g2)] {
                assertClose([loss], [r.loss], atol: 1e-5, rtol: 1e-5, "openblas \(type) \(name) loss")
                assertClose(grads.dE.doubles, r.dE, atol: 1e-6, rtol: 1e-4, "openblas \(type) \(name) dE")
                assertClose(grads.dC.doubles, r.dC, atol: 1e-6, rtol: 1e-4, "openblas \(type) \(name) dC")
                assertClose(grads.dBias!.doubles, r.dBias!, atol: 1e-6, rtol: 1e-4, "openblas \(type) \(name) dBias")
            }
        }
    }

    func testAllTargetsIgnored() throws {
        let (e, c, _, _) = randomProblem(n: 8, d: 5, v: 11)
        let t = try Targets([Int](repeating: -100, count: 8))
        for r in Reduction.allCases {
            var o = Options(); o.reduction = r
            let up: Upstream = r == .none ? .perToken([Float](repeating: 1, count: 8)) : .scalar(1)
            let (f, g) = try CutCrossEntropy(options: o).lossAndGradients(embeddings: e, classifier: c, targets: t, upstream: up)
            if r == .mean { XCTAssertTrue(f.loss.isNaN, "mean over no tokens is NaN, as in PyTorch") }
            else { XCTAssertEqual(f.loss, 0) }
            XCTAssertTrue(g.dE.doubles.allSatisfy { $0 == 0 })
            XCTAssertTrue(g.dC.doubles.allSatisfy { $0 == 0 })
            XCTAssertTrue(f.lse.doubles.allSatisfy { $0.isNaN })
            XCTAssertEqual(f.activeTokens, 0)
        }
    }
}

/// Where nearly every entry is kept (no filter, or ε below 2^-20: Float32's default, the exact
/// mode), the engine sweeps the vocabulary in its own order: sorting could not let it skip a
/// tile. Elsewhere it sorts as `Options.sortVocabulary` asks.
final class DenseOrderTests: XCTestCase {
    func testPolicySortsOnlyWhereTilesCanBeSkipped() {
        var o = Options()
        XCTAssertFalse(BackwardPolicy(o, embeddings: .float32, classifier: .float32).sortVocabulary)
        XCTAssertTrue(BackwardPolicy(o, embeddings: .bfloat16, classifier: .bfloat16).sortVocabulary)
        XCTAssertTrue(BackwardPolicy(o, embeddings: .float16, classifier: .float16).sortVocabulary)
        o.filterEpsilon = .value(0x1p-20)
        XCTAssertTrue(BackwardPolicy(o, embeddings: .float32, classifier: .float32).sortVocabulary)
        o.filterEpsilon = .value(0x1p-21)
        XCTAssertFalse(BackwardPolicy(o, embeddings: .bfloat16, classifier: .bfloat16).sortVocabulary)
        o.filterEpsilon = .none
        XCTAssertFalse(BackwardPolicy(o, embeddings: .bfloat16, classifier: .bfloat16).sortVocabulary)
        o = Options(); o.mode = .exact
        XCTAssertFalse(BackwardPolicy(o, embeddings: .bfloat16, classifier: .bfloat16).sortVocabulary)
        o = Options(); o.sortVocabulary = false
        XCTAssertFalse(BackwardPolicy(o, embeddings: .bfloat16, classifier: .bfloat16).sortVocabulary)
    }

    /// Float32 at the default ε: the same bits whether the option asks for the sort or not, and
    /// `vocabularyOrder` reports the identity; bf16 at its default is sorted (the order differs
    /// from the identity on LM-like data) and stays within its budget of the Float64 truth.
    func testFloat32DefaultSweepsInVocabularyOrder() throws {
        let data = LMLikeData.make(tokens: 90, dim: 40, vocab: 3001, type: .float32, seed: 4)
        var sorted = Options(); sorted.threads = 2
        var unsorted = sorted; unsorted.sortVocabulary = false
        let (fa, ga) = try CutCrossEntropy(options: sorted).lossAndGradients(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        let (fb, gb) = try CutCrossEntropy(options: unsorted).lossAndGradients(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        XCTAssertEqual(fa.lse.floats.map(\.bitPattern), fb.lse.floats.map(\.bitPattern))
        XCTAssertEqual(ga.dE.floats.map(\.bitPattern), gb.dE.floats.map(\.bitPattern))
        XCTAssertEqual(ga.dC.floats.map(\.bitPattern), gb.dC.floats.map(\.bitPattern))
        let order = try CutCrossEntropy(options: sorted).vocabularyOrder(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        XCTAssertEqual(order, Array(0..<3001))

        let b16 = LMLikeData.make(tokens: 90, dim: 40, vocab: 3001, type: .bfloat16, seed: 4)
        let order16 = try CutCrossEntropy(options: sorted).vocabularyOrder(
            embeddings: b16.embeddings, classifier: b16.classifier, targets: b16.targets)
        XCTAssertNotEqual(order16, Array(0..<3001))
    }

    /// The vocabulary order sorts by C_v · ē, ē the mean of the active rows: for bf16 and f16
    /// inputs whose D is not a multiple of 16 (the mean's widened stretches and their tail), on
    /// 1 and 3 threads, consecutive classes are in descending order of the averages computed
    /// here in Float64, up to Float32 rounding. A mean that lost or doubled columns would
    /// break that order.
    func testVocabularyOrderFollowsTheAverageLogits() throws {
        let (n, d, v) = (70, 201, 1500)
        for type in [ElementType.bfloat16, .float16] {
            let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: type, seed: 9)
            let e = data.embeddings.floats(), c = data.classifier.floats()
            var mean = [Double](repeating: 0, count: d)
            for i in 0..<n { for k in 0..<d { mean[k] += Double(e[i * d + k]) / Double(n) } }
            let average = (0..<v).map { j in (0..<d).reduce(0.0) { $0 + Double(c[j * d + $1]) * mean[$1] } }
            let spread = (average.max() ?? 0) - (average.min() ?? 0)
            for threads in [1, 3] {
                var o = Options(); o.threads = threads
                let order = try CutCrossEntropy(options: o).vocabularyOrder(
                    embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
                XCTAssertEqual(Set(order).count, v, "a permutation")
                let inversions = zip(order, order.dropFirst()).filter { average[$0] < average[$1] - 1e-5 * spread }
                XCTAssertTrue(inversions.isEmpty, "\(type), \(threads) threads: \(inversions.count) out of order")
            }
        }
    }
}
