// Properties of the loss: finite differences, invariances, determinism across threads,
// forward-then-backward equals the fused call, and storage types.

import CCEData
import CutCrossEntropy
import XCTest

final class PropertyTests: XCTestCase {
    /// Central differences of the exact-mode loss (Float64 tiles) against its gradients,
    /// with every option on, for every element of E, C and the bias, at h = 1e-4 (made in
    /// Float32; the difference is divided by the step actually made). The central
    /// difference's truncation error is h²·|f'''|/6 (about 1e-9 here: measured 8.9e-8 at
    /// h = 1e-3, falling as h²) and the Float64 rounding of the loss adds about
    /// 2^-52·|L|/h ≈ 1e-10 (|L| ≈ 51). Budget: |fd − grad| ≤ 1e-8 + 1e-7·|grad|, ten times
    /// the measured worst (8.6e-10, for gradients up to 1.5).
    func testFiniteDifferences() throws {
        var o = Options()
        o.mode = .exact; o.softcap = 4; o.labelSmoothing = 0.1; o.zLoss = 1e-2; o.reduction = .sum; o.shift = 1
        let (e, c, t, b) = randomProblem(n: 12, d: 7, v: 23, seed: 5, batch: 2, withBias: true)
        let cce = CutCrossEntropy(options: o)
        let (_, g) = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
        func loss(_ e: Tensor, _ c: Tensor, _ b: Tensor?) throws -> Double {
            try cce.forward(embeddings: e, classifier: c, targets: t, bias: b).loss
        }
        let h = 1e-4
        func perturbed(_ x: Tensor, _ i: Int, _ delta: Double) -> Tensor {
            var v = x.floats(); v[i] += Float(delta)
            return try! Tensor(v, shape: x.shape)
        }
        func budget(_ grad: Double) -> Double { 1e-8 + 1e-7 * abs(grad) }
        // Float32 inputs: perturb by h in Float32 and divide by the perturbation actually made.
        for i in 0..<e.count {
            let up = perturbed(e, i, h), dn = perturbed(e, i, -h)
            let step = Double(up.floats()[i]) - Double(dn.floats()[i])
            let fd = (try loss(up, c, b) - loss(dn, c, b)) / step
            XCTAssertEqual(fd, g.dE[i], accuracy: budget(g.dE[i]), "dE[\(i)]")
        }
        for i in 0..<c.count {
            let up = perturbed(c, i, h), dn = perturbed(c, i, -h)
            let step = Double(up.floats()[i]) - Double(dn.floats()[i])
            let fd = (try loss(e, up, b) - loss(e, dn, b)) / step
            XCTAssertEqual(fd, g.dC[i], accuracy: budget(g.dC[i]), "dC[\(i)]")
        }
        for i in 0..<b!.count {
            let up = perturbed(b!, i, h), dn = perturbed(b!, i, -h)
            let step = Double(up.floats()[i]) - Double(dn.floats()[i])
            let fd = (try loss(e, c, up) - loss(e, c, dn)) / step
            XCTAssertEqual(fd, g.dBias![i], accuracy: budget(g.dBias![i]), "dBias[\(i)]")
        }
    }

    /// Adding a constant to every bias entry leaves the loss unchanged (softmax is
    /// shift-invariant); budget 1e-5 absolute in Float32.
    func testBiasShiftInvariance() throws {
        let (e, c, t, b) = randomProblem(n: 37, d: 19, v: 301, withBias: true)
        let shifted = try Tensor(b!.floats().map { $0 + 3.25 }, shape: b!.shape)
        for smoothing in [0.0, 0.2] {
            var o = Options(); o.labelSmoothing = smoothing
            let cce = CutCrossEntropy(options: o)
            let l1 = try cce.forward(embeddings: e, classifier: c, targets: t, bias: b).loss
            let l2 = try cce.forward(embeddings: e, classifier: c, targets: t, bias: shifted).loss
            XCTAssertEqual(l1, l2, accuracy: 1e-5, "smoothing \(smoothing)")
        }
    }

    /// Without smoothing, each row of dlogits sums to 0: with one token, dBias is that row.
    func testDlogitRowsSumToZero() throws {
        for cap in [nil, 5.0] {
            let (e, c, _, b) = randomProblem(n: 1, d: 19, v: 301, withBias: true)
            var o = Options(); o.softcap = cap
            let t = try Targets([17])
            let (_, g) = try CutCrossEntropy(options: o).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
            let sum = g.dBias!.doubles.reduce(0, +)
            if cap == nil { XCTAssertEqual(sum, 0, accuracy: 1e-6) }
            let o64 = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: o)
            XCTAssertEqual(sum, o64.dBias!.reduce(0, +), accuracy: 1e-6)
        }
    }

    /// Results are bitwise identical for 1, 2 and 4 threads (the tile plan does not depend
    /// on the thread count except NB, and no result depends on NB): tolerance 0.
    func testThreadCountsGiveIdenticalBits() throws {
        let (e, c, t, b) = randomProblem(n: 500, d: 40, v: 1000, withBias: true)
        var results: [(ForwardOutput, Gradients)] = []
        for threads in [1, 2, 4] {
            var o = Options(); o.threads = threads; o.softcap = 8; o.labelSmoothing = 0.05
            results.append(try CutCrossEntropy(options: o).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b))
        }
        func same(_ a: Values, _ b: Values, _ what: String) {
            let x = a.floats.map(\.bitPattern), y = b.floats.map(\.bitPattern)
            let first = zip(x, y).enumerated().first { $0.element.0 != $0.element.1 }?.offset
            XCTAssertNil(first, "\(what) differs first at [\(first ?? -1)]")
        }
        for (k, r) in results.enumerated().dropFirst() {
            XCTAssertEqual(r.0.loss.bitPattern, results[0].0.loss.bitPattern, "loss, run \(k)")
            same(r.0.lse, results[0].0.lse, "lse, run \(k)")
            same(r.1.dE, results[0].1.dE, "dE, run \(k)")
            same(r.1.dC, results[0].1.dC, "dC, run \(k)")
            same(r.1.dBias!, results[0].1.dBias!, "dBias, run \(k)")
        }
        // And run to run.
        var o = Options(); o.threads = 2; o.softcap = 8; o.labelSmoothing = 0.05
        let again = try CutCrossEntropy(options: o).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
        same(again.1.dC, results[1].1.dC, "dC, repeated")
    }

    /// Token blocks are handed out by a counter, so with more blocks than workers which
    /// worker computes which block changes from run to run (and more so with more threads
    /// than CPUs); the bits must not. 3000 tokens make 12 or more blocks here; 7 threads
    /// oversubscribe a small machine. bf16 storage takes the machine's fastest kernel.
    func testDynamicBlockScheduleGivesIdenticalBits() throws {
        let (e, c, t, b) = randomProblem(n: 3000, d: 24, v: 500, type: .bfloat16, seed: 21, withBias: true)
        func run(_ threads: Int) throws -> (ForwardOutput, Gradients) {
            var o = Options(); o.threads = threads; o.labelSmoothing = 0.05
            return try CutCrossEntropy(options: o).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
        }
        let first = try run(1)
        for threads in [2, 3, 7, 7, 3] {
            let r = try run(threads)
            XCTAssertEqual(r.0.loss.bitPattern, first.0.loss.bitPattern, "loss, \(threads) threads")
            XCTAssertEqual(r.0.lse.floats.map(\.bitPattern), first.0.lse.floats.map(\.bitPattern), "lse, \(threads) threads")
            XCTAssertEqual(r.1.dE.floats.map(\.bitPattern), first.1.dE.floats.map(\.bitPattern), "dE, \(threads) threads")
            XCTAssertEqual(r.1.dC.floats.map(\.bitPattern), first.1.dC.floats.map(\.bitPattern), "dC, \(threads) threads")
            XCTAssertEqual(r.1.dBias!.floats.map(\.bitPattern), first.1.dBias!.floats.map(\.bitPattern),
                           "dBias, \(threads) threads")
        }
    }

    /// Vocabulary segments (TilePlan.vocabSegments: one per 8 forward blocks, at most 4): a
    /// token block's forward runs as that many work items that any worker may take, so with
    /// few blocks several workers share one. Every output must be the same bits for any thread
    /// count (1 to 7, and 37 tokens: one block, all workers on its segments; the backward of a
    /// block whole with one thread at N = 300, in parts with seven), in the fused call
    /// with saved logits (LM-like bf16, ε = 2^-12: the later segments wait for the first one's
    /// seed) and with bias, label smoothing and soft cap; and within the usual budgets of the
    /// Float64 oracle (loss and LSE 1e-5, dE and dC 5e-3 relative in bf16 storage).
    func testVocabularySegmentsGiveIdenticalBits() throws {
        let cce = CutCrossEntropy()
        XCTAssertEqual(cce.plan(tokens: 300, dim: 40, vocab: 9000, storage: .bfloat16).vocabSegments, 4)
        XCTAssertEqual(cce.plan(tokens: 300, dim: 40, vocab: 4500, storage: .bfloat16).vocabSegments, 2)
        XCTAssertEqual(cce.plan(tokens: 300, dim: 40, vocab: 1000, storage: .bfloat16).vocabSegments, 1)
        for (tokens, vocab) in [(300, 9000), (37, 4500)] {
            let data = LMLikeData.make(tokens: tokens, dim: 40, vocab: vocab, type: .bfloat16, seed: 5)
            let bias = try Tensor(converting: (0..<vocab).map { Float($0 % 5) * 0.05 }, to: .bfloat16, shape: [vocab])
            for capped in [false, true] {
                var base = Options(); base.labelSmoothing = capped ? 0.05 : 0; base.softcap = capped ? 20 : nil
                func run(_ threads: Int) throws -> (ForwardOutput, Gradients) {
                    var o = base; o.threads = threads
                    return try CutCrossEntropy(options: o).lossAndGradients(
                        embeddings: data.embeddings, classifier: data.classifier, targets: data.targets,
                        bias: capped ? bias : nil)
                }
                let first = try run(1)
                let what = "N \(tokens) V \(vocab)\(capped ? " capped" : "")"
                for threads in [2, 3, 7] {
                    let r = try run(threads)
                    XCTAssertEqual(r.0.loss.bitPattern, first.0.loss.bitPattern, "loss, \(what), \(threads) threads")
                    XCTAssertTrue(bitwiseEqual(r.0.lse, first.0.lse), "lse, \(what), \(threads) threads")
                    XCTAssertTrue(bitwiseEqual(r.1.dE, first.1.dE), "dE, \(what), \(threads) threads")
                    XCTAssertTrue(bitwiseEqual(r.1.dC, first.1.dC), "dC, \(what), \(threads) threads")
                    if tokens == 300 && threads == 7 {
                        // One thread runs each block's backward whole, seven in parts (TilePlan.backwardParts).
                        XCTAssertLessThan(r.1.filter.tokenBlock, first.1.filter.tokenBlock, "backward parts, \(what)")
                    }
                }
                let truth = try Oracle.compute(embeddings: data.embeddings, classifier: data.classifier,
                                               targets: data.targets, bias: capped ? bias : nil, options: base)
                XCTAssertEqual(Double(first.0.loss), truth.loss, accuracy: 1e-5 * abs(truth.loss), "loss, \(what)")
                XCTAssertLessThanOrEqual(relativeError(first.0.lse.doubles, truth.lse), 1e-5, "lse, \(what)")
                XCTAssertLessThanOrEqual(relativeError(first.1.dE.doubles, truth.dE), 5e-3, "dE, \(what)")
                XCTAssertLessThanOrEqual(relativeError(first.1.dC.doubles, truth.dC), 5e-3, "dC, \(what)")
            }
        }
    }

    /// A forward now and a backward later give what the fused call gives: bitwise when the
    /// fused call recomputes its tiles (savedLogitsPerRow = 0); with the forward's saved
    /// logits (ε = 2^-12, as for bf16, so that they apply to these Float32 inputs), dC bitwise
    /// and dE within 1e-4 (the entries below ε/16 of kept rows move into the dropped-mass
    /// estimate). The saved logits are tried on LM-like logits: with random logits of unit
    /// scale every row keeps nearly every entry of a block, and such rows are recomputed
    /// rather than saved.
    func testSplitForwardBackwardEqualsFused() throws {
        let lm = LMLikeData.make(tokens: 37, dim: 19, vocab: 301, type: .float32, seed: 3)
        let lmBias = try Tensor(converting: (0..<301).map { Float($0 % 5) * 0.2 - 0.4 }, to: .float32, shape: [301])
        let random = randomProblem(n: 37, d: 19, v: 301, withBias: true)
        for perRow in [0, 1024] {
            let (e, c, t, b) = perRow == 0 ? random : (lm.embeddings, lm.classifier, lm.targets, lmBias)
            var o = Options(); o.savedLogitsPerRow = perRow; o.filterEpsilon = .value(0x1p-12)
            let cce = CutCrossEntropy(options: o)
            let f = try cce.forward(embeddings: e, classifier: c, targets: t, bias: b)
            let g = try cce.backward(f, embeddings: e, classifier: c, bias: b, upstream: .scalar(2))
            let (f2, g2) = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b, upstream: .scalar(2))
            XCTAssertEqual(f.loss, f2.loss)
            if perRow == 0 {
                XCTAssertTrue(bitwiseEqual(g.dE, g2.dE), "dE")
            } else {
                let difference = relativeError(g2.dE.doubles, g.dE.doubles)
                XCTAssertGreaterThan(difference, 0, "the saved logits were used")
                XCTAssertLessThanOrEqual(difference, 1e-4, "dE")
            }
            XCTAssertTrue(bitwiseEqual(g.dC, g2.dC), "dC, \(perRow) saved per row")
        }
    }

    /// The backward call alone (after a forward call) runs in parts of a token block's rows as
    /// the fused call does (TilePlan.backwardParts): at N = 300 one thread takes whole blocks and
    /// seven take parts of 12 rows; dE, dC and dBias the same bits, with label smoothing and a
    /// bias, and with a soft cap.
    func testSplitBackwardInPartsGivesIdenticalBits() throws {
        let data = LMLikeData.make(tokens: 300, dim: 40, vocab: 9000, type: .bfloat16, seed: 4)
        let bias = try Tensor(converting: (0..<9000).map { Float($0 % 7) * 0.05 }, to: .bfloat16, shape: [9000])
        for capped in [false, true] {
            func run(_ threads: Int) throws -> Gradients {
                var o = Options(); o.threads = threads; o.labelSmoothing = 0.05; o.softcap = capped ? 20 : nil
                let cce = CutCrossEntropy(options: o)
                let f = try cce.forward(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets,
                                        bias: bias)
                return try cce.backward(f, embeddings: data.embeddings, classifier: data.classifier, bias: bias)
            }
            let one = try run(1), seven = try run(7)
            XCTAssertLessThan(seven.filter.tokenBlock, one.filter.tokenBlock, "backward parts, capped \(capped)")
            XCTAssertTrue(bitwiseEqual(one.dE, seven.dE), "dE, capped \(capped)")
            XCTAssertTrue(bitwiseEqual(one.dC, seven.dC), "dC, capped \(capped)")
            XCTAssertTrue(bitwiseEqual(one.dBias!, seven.dBias!), "dBias, capped \(capped)")
        }
    }

    /// The fused call's backward from the forward's saved logits (SavedLogits) instead of
    /// recomputed tiles, on LM-like bf16 data with a bias and label smoothing: loss, LSE and dC
    /// bitwise those of the recomputing call (dBias too without its dropped-mass estimate;
    /// with it, within twice the recomputing call's error against the oracle, as dE), whether every forward block fits in
    /// the room (9000 a row, V: only the few rows that keep more than 3/4 of some block are
    /// recomputed) or the room runs out part way (48 a row: the rest is recomputed); dE bitwise
    /// the same for 1 and 3 threads, and against the
    /// Float64 oracle within twice the recomputing call's error (the entries below ε/16 of
    /// kept rows go to the dropped-mass estimate instead: 1.7 times here, at D = 40; 1.1 times
    /// in Docs/NUMERICS.md's table) and within the 5e-3 budget of testFilteringOnLMLikeData.
    func testSavedLogitsChangeOnlyDE() throws {
        let data = LMLikeData.make(tokens: 300, dim: 40, vocab: 9000, type: .bfloat16, seed: 8)
        let bias = try Tensor(converting: (0..<9000).map { Float($0 % 3) * 0.1 }, to: .bfloat16, shape: [9000])
        var base = Options(); base.labelSmoothing = 0.05
        let truth = try Oracle.compute(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets,
                                       bias: bias, options: base)
        func run(_ perRow: Int, threads: Int) throws -> (ForwardOutput, Gradients) {
            var o = base; o.savedLogitsPerRow = perRow; o.threads = threads
            return try CutCrossEntropy(options: o).lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                                    targets: data.targets, bias: bias)
        }
        let (f0, g0) = try run(0, threads: 1)
        let recomputedError = relativeError(g0.dE.doubles, truth.dE)
        for perRow in [9000, 48] {
            let (f, g) = try run(perRow, threads: 1)
            XCTAssertEqual(f.loss.bitPattern, f0.loss.bitPattern, "loss, \(perRow)")
            XCTAssertTrue(f.lse.floats.map(\.bitPattern) == f0.lse.floats.map(\.bitPattern), "lse, \(perRow)")
            XCTAssertTrue(bitwiseEqual(g.dC, g0.dC), "dC, \(perRow)")
            XCTAssertLessThanOrEqual(relativeError(g.dBias!.doubles, truth.dBias!),
                                     2 * relativeError(g0.dBias!.doubles, truth.dBias!), "dBias, \(perRow)")
            XCTAssertEqual(g.filter.keptRowSegments, g0.filter.keptRowSegments, "kept segments, \(perRow)")
            let recomputed = g.filter.rowSegments - g.filter.boundSkippedRowSegments
            let recomputing = g0.filter.rowSegments - g0.filter.boundSkippedRowSegments
            if perRow == 9000 {
                XCTAssertLessThan(recomputed * 20, recomputing, "nearly nothing recomputed")
            } else {
                XCTAssertGreaterThan(recomputed, 0, "the room ran out: some blocks recomputed")
                XCTAssertLessThan(recomputed, recomputing, "fewer than without")
            }
            let error = relativeError(g.dE.doubles, truth.dE)
            XCTAssertLessThanOrEqual(error, 2 * recomputedError, "dE error, \(perRow) (recomputing: \(recomputedError))")
            XCTAssertLessThanOrEqual(error, 5e-3, "dE budget, \(perRow)")
            let (_, g3) = try run(perRow, threads: 3)
            XCTAssertTrue(bitwiseEqual(g3.dE, g.dE) && bitwiseEqual(g3.dC, g.dC) && bitwiseEqual(g3.dBias!, g.dBias!),
                          "1 vs 3 threads, \(perRow)")
        }
        // Without the estimates dBias is the recomputing call's, bit for bit.
        var plain = base; plain.filterCorrection = false
        let bits = try [0, 9000, 48].map { perRow -> Gradients in
            var o = plain; o.savedLogitsPerRow = perRow
            return try CutCrossEntropy(options: o).lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                                    targets: data.targets, bias: bias).1
        }
        XCTAssertTrue(bitwiseEqual(bits[1].dBias!, bits[0].dBias!) && bitwiseEqual(bits[2].dBias!, bits[0].dBias!),
                      "dBias without the estimates")
    }

    /// Saved logits in token blocks of more than 256 rows: a key holds the row's low 8 bits and
    /// each forward block the index of its first entry of a row ≥ 256 (SavedLogits). At
    /// N = 1440 one thread's fused call runs five blocks of 288 rows (a quarter, or with the
    /// portable kernel on 16-bit storage a fifth, of the tokens is no less than the plan's
    /// blocks, so the fused call keeps them: TilePlan.limitingRowsInFlight), three threads
    /// smaller ones, and five threads one block of 288 rows each with its backward in parts
    /// (TilePlan.backwardParts: at least four items per worker), one of which reads saved rows
    /// on both sides of row 256: every output bitwise the same as one thread's, with dE apart
    /// from the recomputing call's (the saved logits were read). Fails if the ninth bit is
    /// dropped (checked).
    func testSavedLogitsInBlocksOfMoreThan256Rows() throws {
        let tokens = 1440
        let data = LMLikeData.make(tokens: tokens, dim: 32, vocab: 3000, type: .bfloat16, seed: 3)
        func run(threads: Int, perRow: Int = 2048) throws -> (ForwardOutput, Gradients) {
            var o = Options(); o.threads = threads; o.savedLogitsPerRow = perRow
            let cce = CutCrossEntropy(options: o)
            let fused = cce.fusedPlan(tokens: tokens, dim: 32, vocab: 3000, storage: .bfloat16)
            if threads != 3 { XCTAssertEqual(fused.tokenBlock, 288, "fused token block, \(threads) threads") }
            let r = try cce.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                             targets: data.targets)
            let part = fused.backwardParts(blocks: (tokens + fused.tokenBlock - 1) / fused.tokenBlock)
            if perRow > 0 { XCTAssertEqual(r.1.filter.tokenBlock, part.rows, "backward part, \(threads) threads") }
            if threads == 5 { XCTAssertTrue(part.parts > 1 && 256 % part.rows != 0, "a part across row 256") }
            return r
        }
        let (f1, g1) = try run(threads: 1)
        let (_, g0) = try run(threads: 1, perRow: 0)
        XCTAssertFalse(bitwiseEqual(g1.dE, g0.dE), "the saved logits were read")
        XCTAssertTrue(bitwiseEqual(g1.dC, g0.dC), "dC as the recomputing call's")
        for threads in [3, 5] {
            let (f, g) = try run(threads: threads)
            XCTAssertEqual(f1.loss.bitPattern, f.loss.bitPattern)
            XCTAssertTrue(bitwiseEqual(g1.dE, g.dE), "dE, 1 vs \(threads) threads")
            XCTAssertTrue(bitwiseEqual(g1.dC, g.dC), "dC, 1 vs \(threads) threads")
        }
    }

    /// A fused call that keeps logits holds at most a quarter of the tokens in its workers'
    /// blocks (a fifth where the worker also keeps the rows as Float32: the portable kernel on
    /// 16-bit storage) where blocks of at least 128 rows (96 for that fifth) can do that on at
    /// most 4 threads (TilePlan.limitingRowsInFlight), else keeps the plan's; and its results do
    /// not depend on it: at N = 600 one thread (a quarter: 150 rows; a fifth: 120) runs smaller
    /// blocks than the plan's, three threads (50 or 40 rows, below the floor) the plan's, and
    /// every output is bitwise the same.
    func testFusedCallLimitsRowsInFlight() throws {
        for (tokens, threads) in [(600, 1), (600, 3), (1024, 2), (1536, 2), (4096, 2), (4096, 16), (8192, 16), (100, 1),
                                  (5000, 4), (5000, 5), (480, 1), (470, 1)] {
            for group in [6, 12, 32] { for copies in [false, true] {
                let plan = TilePlan(tokens: tokens, dim: 1024, vocab: 128256, threads: threads, tokenBytes: 2,
                                    rowGroup: group)
                let fused = plan.limitingRowsInFlight(tokens: tokens, copiesTokens: copies)
                let share = tokens / ((copies ? 5 : 4) * threads), quarter = tokens / (4 * threads)
                let floor = copies ? TilePlan.fusedBlockFloor * 3 / 4 : TilePlan.fusedBlockFloor
                let what = "N \(tokens), \(threads) threads, groups of \(group), copies \(copies)"
                XCTAssertEqual(fused.tokenBlock % group, 0, what)
                XCTAssertEqual(fused.vocabBlock, plan.vocabBlock, what)
                if threads <= TilePlan.fusedLimitThreads && share >= floor && quarter < plan.tokenBlock {
                    // (rounded up to the row group, the share may come back to the plan's block)
                    XCTAssertLessThanOrEqual(fused.tokenBlock, plan.tokenBlock, what)
                    XCTAssertLessThanOrEqual(fused.tokenBlock, (share + group - 1) / group * group, what)
                } else {
                    XCTAssertEqual(fused.tokenBlock, plan.tokenBlock, what)
                }
            } }
        }
        let data = LMLikeData.make(tokens: 600, dim: 32, vocab: 3000, type: .bfloat16, seed: 5)
        func run(threads: Int, perRow: Int = 2048) throws -> (ForwardOutput, Gradients) {
            var o = Options(); o.threads = threads; o.savedLogitsPerRow = perRow
            let cce = CutCrossEntropy(options: o)
            let plan = cce.plan(tokens: 600, dim: 32, vocab: 3000, storage: .bfloat16)
            let fused = cce.fusedPlan(tokens: 600, dim: 32, vocab: 3000, storage: .bfloat16).tokenBlock
            if threads == 1 { XCTAssertLessThan(fused, plan.tokenBlock, "smaller blocks, 1 thread") }
            else { XCTAssertEqual(fused, plan.tokenBlock, "the plan's blocks, \(threads) threads") }
            let r = try cce.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
            // The statistics give the rows of a backward part (TilePlan.backwardParts), which is
            // the whole block or a divisor of its row groups: with the AVX2 kernel's groups of 6,
            // 3 threads split their 204-row blocks in two.
            let ran = perRow > 0 ? cce.fusedPlan(tokens: 600, dim: 32, vocab: 3000, storage: .bfloat16) : plan
            let blocks = (600 + ran.tokenBlock - 1) / ran.tokenBlock
            XCTAssertEqual(r.1.filter.tokenBlock, ran.backwardParts(blocks: blocks).rows, "the blocks the call ran")
            return r
        }
        let (f1, g1) = try run(threads: 1), (f3, g3) = try run(threads: 3), (_, g0) = try run(threads: 1, perRow: 0)
        XCTAssertFalse(bitwiseEqual(g1.dE, g0.dE), "the saved logits were read")
        XCTAssertEqual(f1.loss.bitPattern, f3.loss.bitPattern, "loss")
        XCTAssertTrue(f1.lse.floats.map(\.bitPattern) == f3.lse.floats.map(\.bitPattern), "lse")
        XCTAssertTrue(bitwiseEqual(g1.dE, g3.dE), "dE")
        XCTAssertTrue(bitwiseEqual(g1.dC, g3.dC), "dC")
    }

    /// A row that would keep more than 3/4 of a forward block's entries is recomputed from
    /// that block on, not saved (SavedLogits.keep). On a flat LM-like set (S = 1, α = 1)
    /// rows keep most of their first block, so with room to spare the fused call saves
    /// nothing: every output bitwise that of the recomputing call (savedLogitsPerRow = 0),
    /// against LM-like S = 4 data, where the same room changes dE.
    func testDenseRowsAreRecomputedNotSaved() throws {
        // V = 9000: four vocabulary segments, where a flat row that stopped keeping logits in
        // the first segment's first 16 blocks must keep none in the later ones (SegmentSeed).
        for (scale, alpha, saves) in [(1.0, 1.0, false), (4.0, 1.5, true)] { for vocab in [3000, 9000] {
            let data = LMLikeData.make(tokens: 96, dim: 48, vocab: vocab, type: .bfloat16, scale: scale, alpha: alpha, seed: 5)
            func run(_ perRow: Int) throws -> (ForwardOutput, Gradients) {
                var o = Options(); o.savedLogitsPerRow = perRow; o.threads = 2
                return try CutCrossEntropy(options: o).lossAndGradients(embeddings: data.embeddings,
                                                                        classifier: data.classifier, targets: data.targets)
            }
            let (f0, g0) = try run(0), (f, g) = try run(3000)
            XCTAssertEqual(f.loss.bitPattern, f0.loss.bitPattern, "loss, S = \(scale)")
            XCTAssertTrue(bitwiseEqual(g.dC, g0.dC), "dC, S = \(scale)")
            XCTAssertEqual(bitwiseEqual(g.dE, g0.dE), !saves, "dE \(saves ? "differs" : "bitwise"), S = \(scale), V = \(vocab)")
        } }
    }

    /// The same on LM-like BFloat16 data, where the fused call skips many rows without
    /// recomputing them, recomputes few rows in their own panels and queues dC updates:
    /// bitwise equal to forward + backward, for 1 and 3 threads, without the dropped-mass
    /// estimates. With them, the two calls estimate skipped mass at different granularities
    /// (the fused call per forward block, from the forward's block LSE; the split call per
    /// backward block, from recomputed rows): loss and dC stay bitwise equal, dE agrees to
    /// 1e-4 relative (the estimate's own size is ~1e-2 of dE here) and dBias to 1e-3 (its
    /// estimate is a larger share of it); each is the same at 1 and 3 threads. The bound
    /// reads each block's maximum rounded up to Float16 (BlockStatistics), so it must stay a
    /// bound where Float16's steps are coarse: the second data set's logits reach about ±100
    /// (steps of 1/16 to 1/8). V = 9000 makes 36 forward blocks, so the skipped rows'
    /// estimates go in three chunks (of 16, 16 and 4 forward blocks).
    func testFusedSkippingIsExact() throws {
        for scale in [4.0, 60.0] {
            try fusedSkippingIsExact(LMLikeData.make(tokens: 150, dim: 40, vocab: 9000, type: .bfloat16, scale: scale,
                                                     seed: 11))
        }
    }

    private func fusedSkippingIsExact(_ data: LMLikeData) throws {
        let bias = try Tensor(converting: (0..<9000).map { Float($0 % 7) * 0.1 }, to: .bfloat16, shape: [9000])
        var fusedByThreads: [Gradients] = []
        for threads in [1, 3] {
            for correction in [false, true] {
                var o = Options(); o.threads = threads; o.zLoss = 1e-4; o.filterCorrection = correction
                let cce = CutCrossEntropy(options: o)
                let f = try cce.forward(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets, bias: bias)
                let g = try cce.backward(f, embeddings: data.embeddings, classifier: data.classifier, bias: bias)
                let (f2, g2) = try cce.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                        targets: data.targets, bias: bias)
                let what = "\(threads) threads, correction \(correction)"
                XCTAssertGreaterThan(g2.filter.boundSkippedRowSegments, g2.filter.rowSegments / 10, "rows skipped unrecomputed")
                XCTAssertEqual(f.loss.bitPattern, f2.loss.bitPattern)
                if correction {
                    XCTAssertLessThanOrEqual(relativeError(g2.dE.doubles, g.dE.doubles), 1e-4, "dE, \(what)")
                } else {
                    XCTAssertTrue(bitwiseEqual(g.dE, g2.dE), "dE, \(what)")
                }
                XCTAssertTrue(bitwiseEqual(g.dC, g2.dC), "dC, \(what)")
                if correction {
                    XCTAssertLessThanOrEqual(relativeError(g2.dBias!.doubles, g.dBias!.doubles), 1e-3, "dBias, \(what)")
                } else {
                    XCTAssertTrue(bitwiseEqual(g.dBias!, g2.dBias!), "dBias, \(what)")
                }
                XCTAssertEqual(g.filter.keptRowSegments, g2.filter.keptRowSegments)
                if correction { fusedByThreads.append(g2) }
            }
        }
        // With the estimate too, the thread count changes no bit.
        XCTAssertTrue(bitwiseEqual(fusedByThreads[0].dE, fusedByThreads[1].dE), "dE, 1 vs 3 threads")
        XCTAssertTrue(bitwiseEqual(fusedByThreads[0].dC, fusedByThreads[1].dC), "dC, 1 vs 3 threads")
        XCTAssertTrue(bitwiseEqual(fusedByThreads[0].dBias!, fusedByThreads[1].dBias!), "dBias, 1 vs 3 threads")
    }

    /// Float16 and BFloat16 storage: the engine reads the stored values exactly, so it
    /// agrees with the Float64 oracle on the same (rounded) inputs as tightly as Float32 does.
    func testHalfPrecisionStorage() throws {
        for type in [ElementType.float16, .bfloat16] {
            let (e, c, t, b) = randomProblem(n: 37, d: 19, v: 301, type: type, withBias: true)
            var o = Options(); o.filterEpsilon = .value(0x1p-28)
            let (f, g) = try CutCrossEntropy(options: o).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
            let r = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: o)
            assertClose([f.loss], [r.loss], atol: 1e-5, rtol: 1e-5, "\(type) loss")
            assertClose(g.dE.doubles, r.dE, atol: 1e-6, rtol: 1e-4, "\(type) dE")
            assertClose(g.dC.doubles, r.dC, atol: 1e-6, rtol: 1e-4, "\(type) dC")
        }
    }

    /// Filtering with the bf16 ε (2^-12) on LM-like data keeps the gradient close: the
    /// dropped entries are each below ε, and the dropped-mass estimate puts back their
    /// coherent part. Budget: relative dE error ≤ 5e-3 with the estimate, and it must beat
    /// the plain filter; dC ≤ 2e-2.
    func testFilteringOnLMLikeData() throws {
        let data = LMLikeData.make(tokens: 64, dim: 32, vocab: 2000, type: .bfloat16, seed: 3)
        let r = try Oracle.compute(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        var errors: [Double] = []
        for correction in [true, false] {
            var o = Options(); o.filterCorrection = correction
            let (_, g) = try CutCrossEntropy(options: o).lossAndGradients(
                embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
            XCTAssertGreaterThan(g.filter.rowSegments, g.filter.keptRowSegments, "something was filtered")
            errors.append(relativeError(g.dE.doubles, r.dE))
            XCTAssertLessThanOrEqual(relativeError(g.dC.doubles, r.dC), 2e-2)
        }
        XCTAssertLessThanOrEqual(errors[0], 5e-3, "dE with the estimate")
        XCTAssertLessThan(errors[0], errors[1] / 5, "the estimate removes most of the filtering error")
    }

    /// Label smoothing's uniform term −(α/V)·w_v·g_i is in every entry of ∂loss/∂z, so a
    /// filtered segment used to drop it from dC and dBias with one sign. The engine now keeps
    /// it out of the filtered updates and adds its exact sum over all tokens after the sweep
    /// (Engine.addUniformSmoothing). On LM-like bf16 data with a bias and α = 0.2 (α/V between
    /// ε/16 and ε, where the most is dropped), with and without class weights and saved logits,
    /// and α = 0.01 (below ε/16: the fused call then reads saved logits), on 1 and 3 threads:
    /// dBias and dC within the errors of the same data without smoothing (times 1.5, plus
    /// 1e-4), and 1 vs 3 threads bitwise. Without the separation (`separatesSmoothing`
    /// returning false) dBias was 1.5e-2 to 1.7e-2 at α = 0.2, against about 1e-3 without
    /// smoothing, and dC 14 times its error without smoothing. The dropped-mass estimates are
    /// off (filterCorrection = false): dBias's works better with saved logits, which α = 0.2
    /// rules out, so with it the comparison would measure the estimate, not the term
    /// (testDroppedMassEstimateOfDBias covers the estimate with smoothing).
    func testSmoothingTermIsExactInFilteredDCAndDBias() throws {
        let (n, d, v) = (300, 24, 1201)
        let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: .bfloat16, seed: 21)
        let bias = try Tensor(converting: (0..<v).map { Float($0 % 5) * 0.05 - 0.1 }, to: .bfloat16, shape: [v])
        let weights = (0..<v).map { 0.5 + Float($0 % 3) * 0.25 }
        for classWeights in [nil, weights] {
            var errors: [String: [Double]] = [:]   // "dBias"/"dC" -> [without smoothing, with]
            for alpha in [0.0, 0.2, 0.01] {
                var o = Options(); o.labelSmoothing = alpha; o.classWeights = classWeights; o.filterCorrection = false
                let r = try Oracle.compute(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets,
                                           bias: bias, options: o)
                var runs: [Gradients] = []
                for threads in [1, 3] {
                    var oo = o; oo.threads = threads
                    let (_, g) = try CutCrossEntropy(options: oo).lossAndGradients(
                        embeddings: data.embeddings, classifier: data.classifier, targets: data.targets, bias: bias)
                    XCTAssertGreaterThan(g.filter.rowSegments, g.filter.keptRowSegments, "something was filtered")
                    runs.append(g)
                }
                XCTAssertEqual(runs[0].dC.doubles, runs[1].dC.doubles, "dC, 1 vs 3 threads, α \(alpha)")
                XCTAssertEqual(runs[0].dBias!.doubles, runs[1].dBias!.doubles, "dBias, 1 vs 3 threads, α \(alpha)")
                errors["dBias", default: []].append(relativeError(runs[0].dBias!.doubles, r.dBias!))
                errors["dC", default: []].append(relativeError(runs[0].dC.doubles, r.dC))
            }
            for (name, e) in errors {
                for (k, alpha) in [0.2, 0.01].enumerated() {
                    XCTAssertLessThanOrEqual(e[k + 1], 1.5 * e[0] + 1e-4,
                                             "\(name), α \(alpha) (weights \(classWeights != nil)): \(e[k + 1]) against \(e[0]) without")
                }
            }
        }
    }

    /// dBias's dropped-mass estimate (DroppedBiasMass): the mass of the row segments the filters
    /// leave out, spread over their forward blocks, brings dBias closer to the truth than the
    /// plain filter (Options.filterCorrection = false) on LM-like bf16 data, in the fused call
    /// with and without saved logits, with label smoothing (its term added apart) and class
    /// weights, and in the backward of a separate call; dBias has the same bits at 1 and 3
    /// threads, and dC is untouched by it (the same bits with and without). Without the
    /// estimate the first assertion fails (the two errors are equal).
    func testDroppedMassEstimateOfDBias() throws {
        let (n, d, v) = (300, 24, 12001)
        let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: .bfloat16, seed: 23)
        let bias = try Tensor(converting: (0..<v).map { Float($0 % 7) * 0.03 - 0.09 }, to: .bfloat16, shape: [v])
        let weights = (0..<v).map { 0.5 + Float($0 % 3) * 0.25 }
        for (name, alpha, classWeights, saved) in [("plain", 0.0, nil, nil), ("no saved logits", 0.0, nil, 0),
                                                   ("smoothing", 0.1, nil, nil), ("weights, smoothing", 0.1, weights, nil)]
            as [(String, Double, [Float]?, Int?)] {
            var o = Options(); o.labelSmoothing = alpha; o.classWeights = classWeights
            if let saved { o.savedLogitsPerRow = saved }
            let truth = try Oracle.compute(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets,
                                           bias: bias, options: o)
            var errors: [Double] = [], dC: [[Double]] = []
            for correction in [true, false] {
                var runs: [Gradients] = []
                for threads in [1, 3] {
                    var oo = o; oo.threads = threads; oo.filterCorrection = correction
                    let (_, g) = try CutCrossEntropy(options: oo).lossAndGradients(
                        embeddings: data.embeddings, classifier: data.classifier, targets: data.targets, bias: bias)
                    runs.append(g)
                }
                XCTAssertEqual(runs[0].dBias!.doubles, runs[1].dBias!.doubles, "\(name): dBias, 1 vs 3 threads")
                XCTAssertGreaterThan(runs[0].filter.rowSegments, runs[0].filter.keptRowSegments, "\(name): something was filtered")
                errors.append(relativeError(runs[0].dBias!.doubles, truth.dBias!))
                dC.append(runs[0].dC.doubles)
            }
            XCTAssertLessThan(errors[0], 0.8 * errors[1], "\(name): dBias \(errors[0]) with the estimate, \(errors[1]) without")
            XCTAssertEqual(dC[0], dC[1], "\(name): dC with and without the estimate")
        }
        // The backward of a separate call (no bound: the filtered segments' own sums).
        let truth = try Oracle.compute(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets,
                                       bias: bias, options: Options())
        var errors: [Double] = []
        for correction in [true, false] {
            var o = Options(); o.filterCorrection = correction
            let cce = CutCrossEntropy(options: o)
            let saved = try cce.forward(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets,
                                        bias: bias)
            let g = try cce.backward(saved, embeddings: data.embeddings, classifier: data.classifier, bias: bias)
            errors.append(relativeError(g.dBias!.doubles, truth.dBias!))
        }
        XCTAssertLessThan(errors[0], 0.8 * errors[1], "backward call: dBias \(errors[0]) with the estimate, \(errors[1]) without")
    }

    /// dC's entry filter: inside kept row segments, entries with |∂loss/∂z| < ε/16 are left
    /// out of dC, and a classifier row none of whose entries passes is never touched. So on
    /// LM-like bf16 data (ε = 2^-12, mean reduction), a row of C gets a nonzero dC only if
    /// some token's |p_iv − [v = t_i]| ≥ ε/16 (within Float32 rounding of p: the test allows
    /// a factor 0.9), and every row some token's entry reaches ε with gets one. The first
    /// half fails without the entry filter (rows in kept segments with tiny entries then get
    /// tiny nonzero dC); the dC error stays within the filter's budget.
    func testEntryFilterOfDC() throws {
        let data = LMLikeData.make(tokens: 48, dim: 24, vocab: 1500, type: .bfloat16, seed: 11)
        let (_, g) = try CutCrossEntropy().lossAndGradients(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        let (n, d, v) = (data.n, data.d, data.v)
        let e = data.embeddings.floats().map { Double($0) }, c = data.classifier.floats().map { Double($0) }
        let t = data.targets.values.map { Int($0) }
        let eps = 0x1p-12
        var largest = [Double](repeating: 0, count: v)   // max over tokens of |∂loss/∂z_iv|
        for i in 0..<n {
            var z = [Double](repeating: 0, count: v)
            for u in 0..<v { for k in 0..<d { z[u] += e[i * d + k] * c[u * d + k] } }
            let m = z.max()!, lse = m + log(z.reduce(0) { $0 + exp($1 - m) })
            for u in 0..<v { largest[u] = max(largest[u], abs(exp(z[u] - lse) - (u == t[i] ? 1 : 0))) }
        }
        let dC = g.dC.doubles
        var touched = 0, needed = 0
        for u in 0..<v {
            let nonzero = (0..<d).contains { dC[u * d + $0] != 0 }
            if nonzero {
                touched += 1
                XCTAssertGreaterThanOrEqual(largest[u], 0.9 * eps / 16, "row \(u) of dC is touched without an entry ≥ ε/16")
            }
            if largest[u] >= 1.1 * eps { needed += 1; XCTAssertTrue(nonzero, "row \(u) has an entry ≥ ε but no dC") }
        }
        XCTAssertGreaterThan(needed, 0); XCTAssertLessThan(touched, v, "some rows of C were left alone")
        let r = try Oracle.compute(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        XCTAssertLessThanOrEqual(relativeError(g.dC.doubles, r.dC), 2e-2)
    }
}
