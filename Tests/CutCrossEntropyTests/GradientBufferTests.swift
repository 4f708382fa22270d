// Gradients written into caller memory (`lossAndGradients(…, writingTo:)` and the inout
// arrays a training loop keeps): bitwise the same as the returned arrays, in every mode,
// with the buffers dirty from a previous call; wrong sizes are refused before any write.

import CCEData
import CCERuntime
import CutCrossEntropy
import XCTest

final class GradientBufferTests: XCTestCase {
    func testDestinationMatchesReturnedGradientsInEveryMode() throws {
        let (e, c, t, b) = randomProblem(n: 47, d: 29, v: 603, type: .bfloat16, seed: 3, withBias: true)
        for mode in Mode.allCases {
            var o = Options(); o.mode = mode; o.softcap = 20; o.labelSmoothing = 0.05; o.threads = 2
            let cce = CutCrossEntropy(options: o)
            let (fwd, g) = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
            // Dirty buffers: the engine must overwrite every element.
            var dE = [Float](repeating: .nan, count: 47 * 29), dC = [Float](repeating: 7, count: 603 * 29)
            var dBias = [Float](repeating: -1, count: 603)
            for round in 0..<2 {
                let (fwd2, stats) = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b,
                                                             dE: &dE, dC: &dC, dBias: &dBias)
                XCTAssertEqual(fwd2.loss.bitPattern, fwd.loss.bitPattern, "\(mode) round \(round): loss")
                XCTAssertEqual(stats.keptRowSegments, g.filter.keptRowSegments, "\(mode): statistics")
                // Float32 modes: the same bits; exact: the Float64 gradients rounded once.
                XCTAssertEqual(dE.map(\.bitPattern), g.dE.floats.map(\.bitPattern), "\(mode) round \(round): dE")
                XCTAssertEqual(dC.map(\.bitPattern), g.dC.floats.map(\.bitPattern), "\(mode) round \(round): dC")
                XCTAssertEqual(dBias.map(\.bitPattern), g.dBias!.floats.map(\.bitPattern), "\(mode) round \(round): dBias")
            }
        }
    }

    /// The fused call zeroes the caller's dC and forms the estimate's table of forward-block sums
    /// during its forward, in pieces that any worker may take (Engine.swift, SweepChores), and its
    /// backward waits for them: with dirty buffers, at 1, 2 and 3 threads, the gradients must be
    /// the bits the call returns in arrays of its own, on a problem where the forward keeps
    /// logits (so the table is read) and dC spans many pieces.
    func testFusedCallsSetUpDuringItsForwardGivesTheSameBits() throws {
        let (n, d, v) = (300, 96, 9001)
        let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: .bfloat16, seed: 21)
        var first: (loss: UInt64, dE: [UInt32], dC: [UInt32])? = nil
        for threads in [1, 2, 3] {
            var o = Options(); o.threads = threads
            let cce = CutCrossEntropy(options: o)
            let (fwd, g) = try cce.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                    targets: data.targets)
            XCTAssertGreaterThan(g.filter.savedLogits, 0, "the forward keeps logits, so the backward reads the table")
            XCTAssertGreaterThan(g.filter.boundSkippedRowSegments, 0, "rows are skipped: the estimate is used")
            var dE = [Float](repeating: .nan, count: n * d), dC = [Float](repeating: .nan, count: v * d)
            var dBias: [Float] = []
            for round in 0..<2 {
                let (fwd2, _) = try cce.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                         targets: data.targets, dE: &dE, dC: &dC, dBias: &dBias)
                XCTAssertEqual(fwd2.loss.bitPattern, fwd.loss.bitPattern, "\(threads) threads, round \(round): loss")
                XCTAssertEqual(dE.map(\.bitPattern), g.dE.floats.map(\.bitPattern), "\(threads) threads, round \(round): dE")
                XCTAssertEqual(dC.map(\.bitPattern), g.dC.floats.map(\.bitPattern), "\(threads) threads, round \(round): dC")
                for k in dC.indices { dC[k] = .nan }   // dirty again for the next round
            }
            let bits = (fwd.loss.bitPattern, dE.map(\.bitPattern), dC.map(\.bitPattern))
            if let first {
                XCTAssertTrue(first.loss == bits.0 && first.dE == bits.1 && first.dC == bits.2,
                              "\(threads) threads: the bits of 1 thread")
            } else { first = bits }
        }
    }

    func testArraysAreReusedWhenTheirSizeFits() throws {
        let (e, c, t, _) = randomProblem(n: 20, d: 8, v: 50, seed: 4)
        var dE = [Float](repeating: 0, count: 20 * 8), dC = [Float](repeating: 0, count: 50 * 8), dBias: [Float] = []
        let before = dC.withUnsafeBufferPointer { $0.baseAddress }
        _ = try CutCrossEntropy().lossAndGradients(embeddings: e, classifier: c, targets: t, dE: &dE, dC: &dC, dBias: &dBias)
        XCTAssertEqual(dC.withUnsafeBufferPointer { $0.baseAddress }, before, "dC written in place, not reallocated")
        var small: [Float] = [1, 2]
        _ = try CutCrossEntropy().lossAndGradients(embeddings: e, classifier: c, targets: t, dE: &small, dC: &dC, dBias: &dBias)
        XCTAssertEqual(small.count, 20 * 8, "a dE array of another size is resized")
    }

    func testWrongSizesAndBadInputLeaveBuffersUntouched() throws {
        let (e, c, t, b) = randomProblem(n: 10, d: 4, v: 30, seed: 5, withBias: true)
        var dE = [Float](repeating: 3, count: 40), dC = [Float](repeating: 3, count: 119)
        let cce = CutCrossEntropy()
        XCTAssertThrowsError(try dE.withUnsafeMutableBufferPointer { pe in
            try dC.withUnsafeMutableBufferPointer { pc in
                _ = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b,
                                             writingTo: GradientDestination(dE: pe, dC: pc, dBias: nil))
            }
        }) { error in
            XCTAssertTrue("\(error)".contains("dC holds 119 values, the inputs need 120"), "\(error)")
        }
        XCTAssertTrue(dE.allSatisfy { $0 == 3 } && dC.allSatisfy { $0 == 3 }, "nothing written on error")
        let bad = try Targets([Int](repeating: 30, count: 10))
        var dC2 = [Float](repeating: 3, count: 120), dBias: [Float] = [3]
        XCTAssertThrowsError(try cce.lossAndGradients(embeddings: e, classifier: c, targets: bad, bias: b,
                                                      dE: &dE, dC: &dC2, dBias: &dBias))
        XCTAssertEqual(dBias, [3], "arrays keep their size and values when the input is refused")
        XCTAssertTrue(dC2.allSatisfy { $0 == 3 })
    }
}

/// The pieces the fused call's set-up is cut into (CCERuntime/Chores.swift): each done exactly
/// once, whether claimed by number (as after a forward block) or in order (as before the
/// backward), and `waitForAll` returns only when every piece is done.
final class ChoresTests: XCTestCase {
    func testEveryPieceIsDoneOnceAndWaitedFor() {
        let count = 5000
        let chores = Chores(count: count)
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
        hits.initialize(repeating: 0, count: count)
        defer { hits.deallocate() }
        let complete = UnsafeMutablePointer<Bool>.allocate(capacity: 4)
        complete.initialize(repeating: false, count: 4)
        defer { complete.deallocate() }
        let h = UncheckedSendable(hits), ok = UncheckedSendable(complete)
        Workers.run(4) { w in
            switch w {
            case 0: for i in 0..<count where chores.claim(i) { h.value[i] += 1; chores.done() }
            case 1: for i in (0..<count).reversed() where chores.claim(i) { h.value[i] += 1; chores.done() }
            default: while let i = chores.claimNext() { h.value[i] += 1; chores.done() }
            }
            chores.waitForAll()
            ok.value[w] = (0..<count).allSatisfy { h.value[$0] == 1 }
        }
        XCTAssertTrue((0..<4).allSatisfy { complete[$0] }, "every worker saw every piece done once after waiting")
        XCTAssertTrue((0..<count).allSatisfy { hits[$0] == 1 }, "each piece done exactly once")
        XCTAssertTrue(chores.allDone)
        XCTAssertFalse(chores.claim(0) || chores.claim(-1) || chores.claim(count), "nothing left to claim")
        XCTAssertNil(chores.claimNext())
        XCTAssertTrue(Chores(count: 0).allDone, "no pieces: done at once")
    }
}
