// Gradients written into caller memory (`lossAndGradients(…, writingTo:)` and the inout
// arrays a training loop keeps): bitwise the same as the returned arrays, in every mode,
// with the buffers dirty from a previous call; wrong sizes are refused before any write.

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
