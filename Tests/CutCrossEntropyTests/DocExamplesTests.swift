// The examples of Docs/API.md and of the DocC article GettingStarted, as tests: each test
// runs the documented code verbatim (API.md's toy problem, its setup block, from
// `toyProblem()`) and then checks its results.
// scripts/docs.sh checks that every block marked "tested" in those pages still appears
// here line for line, so an example that stops compiling or stops being true fails here.

import CCERuntime
import CutCrossEntropy
import Foundation
import XCTest

final class DocExamplesTests: XCTestCase {
    /// API.md's toy problem (N = 8 tokens, D = 16, V = 100 classes): its setup block verbatim,
    /// which the examples that share it start from.
    func toyProblem() throws -> (n: Int, d: Int, v: Int, e: [Float], c: [Float], targetIDs: [Int],
                                 embeddings: Tensor, classifier: Tensor, targets: Targets) {
        let n = 8, d = 16, v = 100
        let e = (0..<n * d).map { Float(sin(Double($0))) }
        let c = (0..<v * d).map { Float(cos(0.7 * Double($0))) / 4 }
        let targetIDs = (0..<n).map { ($0 * 37) % v }

        let embeddings = try Tensor(e, shape: [n, d])
        let classifier = try Tensor(c, shape: [v, d])
        let targets = try Targets(targetIDs)
        return (n, d, v, e, c, targetIDs, embeddings, classifier, targets)
    }

    /// API.md "Loss and gradients in one call": agrees with the Float64 oracle.
    func testLossAndGradients() throws {
        let (n, d, v, _, _, _, embeddings, classifier, targets) = try toyProblem()

        let cce = CutCrossEntropy()                      // mean over tokens, like F.cross_entropy
        let (forward, grads) = try cce.lossAndGradients(embeddings: embeddings,
                                                        classifier: classifier,
                                                        targets: targets)
        let loss = forward.loss                          // a Double
        let dE = grads.dE.floats                         // N x D, row-major
        let dC = grads.dC.floats                         // V x D

        let truth = try Oracle.compute(embeddings: embeddings, classifier: classifier, targets: targets)
        XCTAssertGreaterThan(loss, 0)
        XCTAssertEqual(loss, truth.loss, accuracy: 1e-5 * abs(truth.loss))
        XCTAssertEqual(dE.count, n * d)
        XCTAssertEqual(dC.count, v * d)
        XCTAssertEqual(forward.activeTokens, n)
        assertClose(dE.map { Double($0) }, truth.dE, atol: 1e-6, rtol: 1e-4, "dE")
        assertClose(dC.map { Double($0) }, truth.dC, atol: 1e-6, rtol: 1e-4, "dC")
    }

    /// API.md "A training loop: gradient buffers kept across steps": the buffers get the
    /// returning call's bits, every step.
    func testGradientBuffersAcrossSteps() throws {
        let (_, _, _, _, _, _, embeddings, classifier, targets) = try toyProblem()
        let cce = CutCrossEntropy()

        var dEBuffer: [Float] = [], dCBuffer: [Float] = [], dBiasBuffer: [Float] = []
        for _ in 0..<3 {
            let (step, filter) = try cce.lossAndGradients(embeddings: embeddings, classifier: classifier,
                                                          targets: targets, dE: &dEBuffer, dC: &dCBuffer,
                                                          dBias: &dBiasBuffer)
            _ = (step.loss, filter.keptRowSegments)      // ... then the optimizer reads the buffers
        }

        let (forward, grads) = try cce.lossAndGradients(embeddings: embeddings, classifier: classifier,
                                                        targets: targets)
        XCTAssertEqual(dEBuffer.map(\.bitPattern), grads.dE.floats.map(\.bitPattern))
        XCTAssertEqual(dCBuffer.map(\.bitPattern), grads.dC.floats.map(\.bitPattern))
        XCTAssertTrue(dBiasBuffer.isEmpty)
        // A buffer holding last step's values (not zeros) is overwritten, not added to.
        dCBuffer = dCBuffer.map { $0 + 1 }
        let (again, _) = try cce.lossAndGradients(embeddings: embeddings, classifier: classifier,
                                                  targets: targets, dE: &dEBuffer, dC: &dCBuffer, dBias: &dBiasBuffer)
        XCTAssertEqual(again.loss, forward.loss)
        XCTAssertEqual(dCBuffer.map(\.bitPattern), grads.dC.floats.map(\.bitPattern))
    }

    /// API.md "Forward now, backward later": bitwise equal to the fused call.
    func testForwardThenBackward() throws {
        let (n, d, _, e, c, targetIDs, embeddings, classifier, targets) = try toyProblem()

        let cce = CutCrossEntropy()
        let forward = try cce.forward(embeddings: embeddings, classifier: classifier, targets: targets)
        let lse = forward.lse.floats                     // one log-sum-exp per target position
        // ... later, e.g. after the rest of the model's backward has run ...
        let grads = try cce.backward(forward, embeddings: embeddings, classifier: classifier,
                                     upstream: .scalar(1))

        let (fused, fusedGrads) = try cce.lossAndGradients(embeddings: embeddings, classifier: classifier,
                                                           targets: targets)
        XCTAssertEqual(forward.loss.bitPattern, fused.loss.bitPattern)
        XCTAssertEqual(grads.dE.floats.map(\.bitPattern), fusedGrads.dE.floats.map(\.bitPattern))
        XCTAssertEqual(grads.dC.floats.map(\.bitPattern), fusedGrads.dC.floats.map(\.bitPattern))
        let truth = try Oracle.compute(embeddings: embeddings, classifier: classifier, targets: targets)
        XCTAssertEqual(lse.count, n)
        assertClose(lse.map { Double($0) }, truth.lse, atol: 1e-5, rtol: 1e-5, "lse")
        // The mean loss is the mean of lse − target logit (target logits from E and C here).
        let targetLogits = (0..<n).map { i in (0..<d).reduce(0.0) { $0 + Double(e[i * d + $1]) * Double(c[targetIDs[i] * d + $1]) } }
        XCTAssertEqual(forward.loss, zip(lse, targetLogits).map { Double($0) - $1 }.reduce(0, +) / Double(n),
                       accuracy: 1e-5)
    }

    /// API.md "A causal language model batch": shift, ignore index, BFloat16, soft cap.
    func testCausalLanguageModelBatch() throws {
        let batch = 2, seqLen = 5, dim = 16, vocab = 100
        let hidden = (0..<batch * seqLen * dim).map { Float(sin(0.3 * Double($0))) }
        let weights = (0..<vocab * dim).map { Float(cos(0.7 * Double($0))) / 4 }
        var tokens = (0..<batch * seqLen).map { ($0 * 13) % vocab }
        tokens[seqLen - 1] = -100                        // padding at the end of sequence 0

        var options = Options()
        options.shift = 1                                // row j predicts token j + 1
        options.softcap = 30                             // z = 30·tanh(y / 30)
        let cce = CutCrossEntropy(options: options)

        let E = try Tensor(hidden, shape: [batch, seqLen, dim])
        let C = try Tensor(converting: weights, to: .bfloat16, shape: [vocab, dim])
        let T = try Targets(tokens, shape: [batch, seqLen])
        let (out, g) = try cce.lossAndGradients(embeddings: E, classifier: C, targets: T)
        // out.activeTokens == 7: 2 sequences x 4 predicted positions, minus the padded one
        // out.tokenLosses has 10 entries (B x T), 0 at position 0 of each sequence and at the padding
        // g.dE has E's shape (10 x 16); rows without a target get zeros: the last row of
        // each sequence, and row 3, whose target is the padding

        XCTAssertEqual(out.activeTokens, 7)
        XCTAssertEqual(out.tokenLosses.count, batch * seqLen)
        for p in [0, seqLen - 1, seqLen] { XCTAssertEqual(out.tokenLosses[p], 0, "position \(p)") }
        XCTAssertEqual(g.dE.count, batch * seqLen * dim)
        for row in [seqLen - 2, seqLen - 1, 2 * seqLen - 1] {   // row 3's target is the padding
            XCTAssertTrue((0..<dim).allSatisfy { g.dE[row * dim + $0] == 0 }, "row \(row)")
        }
        let truth = try Oracle.compute(embeddings: E, classifier: C, targets: T, options: options)
        XCTAssertEqual(out.loss, truth.loss, accuracy: 1e-5 * abs(truth.loss))
        assertClose(out.tokenLosses.doubles, truth.tokenLosses, atol: 1e-5, rtol: 1e-5, "token losses")
        assertClose(g.dE.doubles, truth.dE, atol: 1e-6, rtol: 1e-4, "dE")
        assertClose(g.dC.doubles, truth.dC, atol: 1e-6, rtol: 1e-4, "dC")
    }

    /// API.md "Per-token losses, label smoothing, z-loss": per-position upstream weights.
    func testPerTokenLossesWithSmoothingAndZLoss() throws {
        let (n, _, _, _, _, _, embeddings, classifier, targets) = try toyProblem()

        var options = Options()
        options.reduction = .none
        options.labelSmoothing = 0.1
        options.zLoss = 1e-4
        let cce = CutCrossEntropy(options: options)

        let forward = try cce.forward(embeddings: embeddings, classifier: classifier, targets: targets)
        let perToken = forward.tokenLosses.floats        // N losses
        let weights = perToken.indices.map { Float($0 < 4 ? 1 : 0.5) }
        let grads = try cce.backward(forward, embeddings: embeddings, classifier: classifier,
                                     upstream: .perToken(weights))

        let truth = try Oracle.compute(embeddings: embeddings, classifier: classifier, targets: targets,
                                       options: options, upstream: .perToken(weights))
        XCTAssertEqual(perToken.count, n)
        assertClose(perToken.map { Double($0) }, truth.tokenLosses, atol: 1e-5, rtol: 1e-5, "token losses")
        XCTAssertEqual(forward.loss, perToken.map { Double($0) }.reduce(0, +), accuracy: 1e-5)  // .none: the sum
        assertClose(grads.dE.doubles, truth.dE, atol: 1e-6, rtol: 1e-4, "dE")
        assertClose(grads.dC.doubles, truth.dC, atol: 1e-6, rtol: 1e-4, "dC")
    }

    /// API.md "Bias": dBias agrees with the oracle and sums to 0 (softmax rows sum to 1).
    func testBias() throws {
        let (_, _, v, _, _, _, embeddings, classifier, targets) = try toyProblem()

        let bias = try Tensor((0..<v).map { Float($0 % 5) * 0.1 }, shape: [v])
        let (forward, grads) = try CutCrossEntropy().lossAndGradients(
            embeddings: embeddings, classifier: classifier, targets: targets, bias: bias)
        let dBias = grads.dBias!.floats                  // V values: Σ over tokens of ∂loss/∂logit

        let truth = try Oracle.compute(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias)
        XCTAssertEqual(forward.loss, truth.loss, accuracy: 1e-5 * abs(truth.loss))
        XCTAssertEqual(dBias.count, v)
        assertClose(dBias.map { Double($0) }, truth.dBias!, atol: 1e-6, rtol: 1e-4, "dBias")
        XCTAssertEqual(dBias.map { Double($0) }.reduce(0, +), 0, accuracy: 1e-5)
    }

    /// API.md "Accuracy": filter statistics, and the exact mode against the oracle.
    func testFilteringAndExactMode() throws {
        let (_, _, _, _, _, _, embeddings, classifier, targets) = try toyProblem()

        var options = Options()
        options.filterEpsilon = .value(0x1p-18)          // or .auto (default) or .none
        let (_, grads) = try CutCrossEntropy(options: options).lossAndGradients(
            embeddings: embeddings, classifier: classifier, targets: targets)
        let stats = grads.filter                         // FilterStatistics
        let keptFraction = Double(stats.keptRowSegments) / Double(stats.rowSegments)

        var exact = Options()
        exact.mode = .exact                              // Float64 tiles and sums, no filtering
        let (reference, referenceGrads) = try CutCrossEntropy(options: exact).lossAndGradients(
            embeddings: embeddings, classifier: classifier, targets: targets)
        let dE64 = referenceGrads.dE.doubles             // .float64 values in this mode

        XCTAssertGreaterThan(stats.rowSegments, 0)
        XCTAssertTrue(keptFraction > 0 && keptFraction <= 1, "\(keptFraction)")
        guard case .float64 = referenceGrads.dE else { return XCTFail("exact mode returns Float64") }
        let truth = try Oracle.compute(embeddings: embeddings, classifier: classifier, targets: targets)
        XCTAssertEqual(reference.loss, truth.loss, accuracy: 1e-12 * abs(truth.loss))
        assertClose(dE64, truth.dE, atol: 0, rtol: 1e-11, "exact dE")
    }

    /// API.md "Checking against the references": engine, oracle and baseline agree.
    func testOracleAndMaterializedBaseline() throws {
        let (_, _, _, _, _, _, embeddings, classifier, targets) = try toyProblem()

        let truth = try Oracle.compute(embeddings: embeddings, classifier: classifier, targets: targets)
        let baseline = try Materialized.compute(embeddings: embeddings, classifier: classifier,
                                                targets: targets)
        let (forward, grads) = try CutCrossEntropy().lossAndGradients(
            embeddings: embeddings, classifier: classifier, targets: targets)
        let lossError = abs(forward.loss - truth.loss)
        let worstDE = zip(grads.dE.doubles, truth.dE).map { abs($0 - $1) }.max()!
        let baselineDE = baseline.dE!                    // [Float], N x D

        let scale = truth.dE.map { abs($0) }.max()!
        XCTAssertLessThan(lossError, 1e-5 * abs(truth.loss))
        XCTAssertLessThan(worstDE, 1e-6 + 1e-4 * scale)
        XCTAssertEqual(baseline.loss, truth.loss, accuracy: 1e-5 * abs(truth.loss))
        assertClose(baselineDE.map { Double($0) }, truth.dE, atol: 1e-6, rtol: 1e-4, "baseline dE")
    }

    /// API.md "Errors": the message names the bad target.
    func testErrors() throws {
        let (_, _, v, _, _, _, embeddings, classifier, targets) = try toyProblem()

        let bad = try Targets([0, 1, 2, 100, 4, 5, 6, 7])  // 100 is outside [0, V)
        var message = ""
        do {
            _ = try CutCrossEntropy().forward(embeddings: embeddings, classifier: classifier, targets: bad)
        } catch let error as CCEError {
            message = error.description
        }
        // message == "target out of range: targets[3] = 100 is outside [0, 100) and is not the ignore index"

        XCTAssertEqual(message, "target out of range: targets[3] = 100 is outside [0, 100) and is not the ignore index")
        XCTAssertThrowsError(try CutCrossEntropy().forward(embeddings: embeddings, classifier: classifier,
                                                           targets: bad)) { error in
            XCTAssertEqual(error as? CCEError, .targetOutOfRange(position: 3, value: 100, vocabulary: v))
        }
        XCTAssertNoThrow(try CutCrossEntropy().forward(embeddings: embeddings, classifier: classifier, targets: targets))
    }

    /// API.md "Threads and the tile plan": the plan is derived from this machine's L2 by
    /// the rules of TilePlan.swift (checked here on any machine), and the comment's values
    /// are those of a 512 KiB L2 (the benchmark machine's; see Docs/CPU_AS_GPU.md).
    func testThreadsAndTilePlan() throws {
        var options = Options()
        options.threads = 2
        let cce = CutCrossEntropy(options: options)
        let plan = cce.plan(tokens: 1024, dim: 1024, vocab: 128256)
        // On a machine with a 512 KiB L2 and the portable kernel:
        // token block NB = 174 (groups of 6), vocabulary block VB = 64 (forward 256), vocabulary segments = 4
        // (VB = 32 where the filter can skip tiles, as with bf16 storage: `plan(..., storage: .bfloat16)`)

        XCTAssertEqual(plan.threads, 2)
        XCTAssertEqual(plan.topology.l2Bytes, Topology.current.l2Bytes, "planned from this machine's L2")
        /// The rules, for 1024 tokens, D = 1024 Float32 values (4 KiB a row) and 2 threads.
        func check(_ plan: TilePlan, _ what: String, dense: Bool = true) {
            let l2 = plan.topology.l2Bytes, row = 1024 * 4
            // VB: the largest power of two in 16 ... 256 whose C rows take at most a quarter
            // of L2 (16 if none does); where nearly every segment is kept (Float32 at its
            // default ε, as here) at most half of L2 and at most 128 entries.
            var vb = dense ? 128 : 256
            while vb > 16 && vb * row > l2 / (dense ? 2 : 4) { vb /= 2 }
            XCTAssertEqual(plan.vocabBlock, vb, "VB, \(what)")
            // NB: the E panels take at most two L2s and at most 288 rows, a multiple of the
            // kernel's row group g; then the number of token blocks is rounded up to a
            // multiple of the thread count and NB is the smallest multiple of g that covers
            // the tokens in that many blocks.
            let g = plan.rowGroup
            let budget = max(g, min(288, 2 * l2 / row) / g * g)
            let blocks = ((1024 + budget - 1) / budget + 1) / 2 * 2
            XCTAssertEqual(plan.tokenBlock, ((1024 + blocks - 1) / blocks + g - 1) / g * g, "NB, \(what)")
            XCTAssertLessThanOrEqual(plan.tokenBlock, budget, "NB within the L2 budget, \(what)")
            XCTAssertEqual(plan.tokenBlock % g, 0, "\(what)")
            XCTAssertEqual((1024 + plan.tokenBlock - 1) / plan.tokenBlock % 2, 0,
                           "token blocks are a multiple of the thread count, \(what)")
            XCTAssertEqual(plan.forwardVocabBlock, 256, "\(what)")
            XCTAssertEqual(plan.forwardVocabBlock % plan.vocabBlock, 0, "a backward block lies in one forward block, \(what)")
        }
        XCTAssertEqual(plan.rowGroup, cce.tileKernel(embeddings: .float32, classifier: .float32).rowGroup,
                       "groups of the kernel a Float32 call runs")
        check(plan, "this machine's L2 (\(plan.topology.l2Bytes >> 10) KiB)")
        // The comment's values, on any machine: the same call planned for a 512 KiB L2.
        var l2At512 = plan.topology
        l2At512.l2Bytes = 512 << 10
        let documented = TilePlan(tokens: 1024, dim: 1024, vocab: 128256, threads: 2, denseBackward: true,
                                  topology: l2At512)
        check(documented, "512 KiB L2")
        XCTAssertEqual(documented.tokenBlock, 174)
        XCTAssertEqual(documented.vocabBlock, 64)
        XCTAssertEqual(documented.forwardVocabBlock, 256)
        // The same shape where the filter can skip tiles (bf16 at its default ε): a quarter of L2.
        let filtered = TilePlan(tokens: 1024, dim: 1024, vocab: 128256, threads: 2, topology: l2At512)
        check(filtered, "512 KiB L2, filtered", dense: false)
        XCTAssertEqual(filtered.vocabBlock, 32)
        // The row group: 4096 tokens on 16 threads with a 2 MiB L2 make 16 blocks, of 258
        // rows in groups of 6, of 256 in AMX's groups of 32 (258 would add a ninth group).
        var l2At2M = plan.topology
        l2At2M.l2Bytes = 2 << 20
        for (g, nb) in [(6, 258), (12, 264), (32, 256)] {
            let p = TilePlan(tokens: 4096, dim: 1024, vocab: 128256, threads: 16, rowGroup: g, topology: l2At2M)
            XCTAssertEqual(p.tokenBlock, nb, "rows in groups of \(g)")
        }
        // The dot-product kernel holds the token block as bf16 pairs (TileKernel.tokenBytes):
        // at D = 4096 on a 1 MiB L2, 2·L2 / (D·2) = 256 rows before rounding, not 128: 180
        // rows (6 blocks for 2 threads) instead of 108 (10 blocks). VB keeps the Float32 sizing.
        XCTAssertEqual(TileKernel.avx512BF16.tokenBytes, 2)
        XCTAssertNil(TileKernel.amxBF16.tokenBytes)
        var l2At1M = plan.topology
        l2At1M.l2Bytes = 1 << 20
        let f32Sized = TilePlan(tokens: 1024, dim: 4096, vocab: 128256, threads: 2, rowGroup: 12, topology: l2At1M)
        let bf16Sized = TilePlan(tokens: 1024, dim: 4096, vocab: 128256, threads: 2, tokenBytes: 2, rowGroup: 12,
                                 topology: l2At1M)
        XCTAssertEqual(f32Sized.tokenBlock, 108)
        XCTAssertEqual(bf16Sized.tokenBlock, 180)
        XCTAssertEqual(bf16Sized.vocabBlock, f32Sized.vocabBlock)
    }

    /// API.md "Half-precision values": rounding, storage types, and a Float16 classifier.
    func testHalfPrecisionValues() throws {
        let (_, d, v, _, c, _, embeddings, classifier, targets) = try toyProblem()

        let x = BFloat16(1.00390625)                     // 1 + 2^-8 is not a BFloat16: rounds to even
        let h = try Tensor(c.map { Float16($0) }, shape: [v, d])
        let b = try Tensor(converting: c, to: .bfloat16, shape: [v, d])
        let (lossF16, _) = try CutCrossEntropy().lossAndGradients(
            embeddings: embeddings, classifier: h, targets: targets)

        XCTAssertEqual(x.floatValue, 1)
        XCTAssertEqual(BFloat16(1.01171875).floatValue, 1.015625)   // 1 + 3·2^-8: ties to even, upwards
        XCTAssertEqual(h.elementType, .float16)
        XCTAssertEqual(b.elementType, .bfloat16)
        XCTAssertEqual(b.floats(), c.map { BFloat16($0).floatValue })
        XCTAssertEqual(classifier.elementType, .float32)
        // The engine reads the stored Float16 values exactly: it agrees with the oracle on them.
        let truth = try Oracle.compute(embeddings: embeddings, classifier: h, targets: targets)
        XCTAssertEqual(lossF16.loss, truth.loss, accuracy: 1e-5 * abs(truth.loss))
    }

    /// Every code block of Docs/API.md and of the catalog's GettingStarted.md marked
    /// "<!-- tested: … -->" appears line for line in this file (lines trimmed, blank lines and
    /// imports left out), so that an example edited on the page and not here, or here and not
    /// on the page, fails the suite (scripts/docs.sh builds the DocC archive).
    func testDocumentedExamplesAreTheTestedOnes() throws {
        let here = URL(fileURLWithPath: #filePath)
        let root = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        func lines(_ text: Substring) -> [Substring] {
            text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces)[...] }
                .filter { !$0.isEmpty && !$0.hasPrefix("import ") }
        }
        let tested = lines(try String(contentsOf: here, encoding: .utf8)[...])
        func contains(_ block: [Substring]) -> Bool {
            guard !block.isEmpty, block.count <= tested.count else { return block.isEmpty }
            return (0...(tested.count - block.count)).contains { i in tested[i..<(i + block.count)].elementsEqual(block) }
        }
        var blocks = 0
        for page in ["Docs/API.md", "Sources/CutCrossEntropy/CutCrossEntropy.docc/GettingStarted.md"] {
            var rest = try String(contentsOf: root.appendingPathComponent(page), encoding: .utf8)[...]
            while let mark = rest.range(of: "<!-- tested: ") {
                let after = rest[mark.upperBound...]
                guard let open = after.range(of: " -->\n```swift\n"),
                      let close = after[open.upperBound...].range(of: "```") else {
                    XCTFail("\(page): a tested block that is not a swift code block"); break
                }
                blocks += 1
                XCTAssertTrue(contains(lines(after[open.upperBound..<close.lowerBound])),
                              "\(page): the block tested by '\(after[..<open.lowerBound])' is not in \(here.lastPathComponent)")
                rest = after[close.upperBound...]
            }
        }
        XCTAssertGreaterThanOrEqual(blocks, 10, "tested blocks found")
    }
}

