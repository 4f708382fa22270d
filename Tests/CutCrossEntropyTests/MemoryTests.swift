// Memory: a problem whose logit matrix would take 4.3 GB (N = 8192, V = 131072, Float32)
// runs forward and backward with peak resident growth under 64 MB, measured from the
// process (VmHWM reset through /proc/self/clear_refs). The growth includes the returned
// gradients (dC is 4 MB here). And nothing grows with N x V: the same N with a quarter of
// the vocabulary has 805 million logits fewer, and its growth beyond the returned arrays
// may differ only by the per-vocabulary-entry state (the vocabulary order, about 2 MB
// measured), under one byte per 64 of those logits (12.6 MB).

import CCERuntime
import CutCrossEntropy
import XCTest

final class MemoryTests: XCTestCase {
    func testNoAllocationGrowsWithNTimesV() throws {
        guard MemoryProbe.isResettable else { throw XCTSkip("/proc/self/clear_refs is not writable here") }
        let n = 8192, d = 8
        /// Peak growth of forward + backward at N x V, and the bytes of the arrays it returns.
        func run(vocab v: Int) throws -> (growth: Int, returned: Int) {
            let (e, c, t, _) = randomProblem(n: n, d: d, v: v, seed: 9)
            let cce = CutCrossEntropy()
            let ((f, g), growth) = try MemoryProbe.measure {
                try cce.lossAndGradients(embeddings: e, classifier: c, targets: t)
            }
            XCTAssertTrue(f.loss.isFinite)
            XCTAssertEqual(g.dC.count, v * d)
            let returned = g.dE.byteCount + g.dC.byteCount + f.tokenLosses.byteCount + f.lse.byteCount
            print("memory: N \(n) V \(v): peak growth \(Double(growth) / 1e6) MB (returned arrays "
                  + "\(Double(returned) / 1e6) MB) for a \(Double(n * v * 4) / 1e9) GB logit matrix")
            return (growth, returned)
        }
        let small = try run(vocab: 32768), large = try run(vocab: 131_072)
        XCTAssertLessThan(large.growth, 64 << 20,
                          "peak growth \(large.growth >> 20) MiB for a \(n * 131_072 * 4 >> 20) MiB logit matrix")
        let addedLogits = n * (131_072 - 32768)
        let added = (large.growth - large.returned) - (small.growth - small.returned)
        XCTAssertLessThan(added, addedLogits / 64,
                          "4x the vocabulary added \(added) bytes beyond the returned arrays for \(addedLogits) more logits")
    }

    /// The arrays `lossAndGradients` returns are the engine's own, not copies: where the
    /// gradients dominate (dC of V x D = 16384 x 256 Float32, 16.8 MB), the call's peak growth
    /// beyond the returned arrays stays under a quarter of them. (A generic `as! [Float]` in
    /// the engine's packaging copied every array: 1.0x more, measured.)
    func testReturnedGradientsAreNotCopied() throws {
        guard MemoryProbe.isResettable else { throw XCTSkip("/proc/self/clear_refs is not writable here") }
        let (e, c, t, _) = randomProblem(n: 512, d: 256, v: 16384, seed: 4)
        var o = Options(); o.threads = 2
        let ((f, g), growth) = try MemoryProbe.measure {
            try CutCrossEntropy(options: o).lossAndGradients(embeddings: e, classifier: c, targets: t)
        }
        let returned = g.dE.byteCount + g.dC.byteCount + f.tokenLosses.byteCount + f.lse.byteCount
        XCTAssertLessThan(growth - returned, returned / 4,
                          "peak growth \(growth) bytes beyond \(returned) bytes of returned arrays")
    }
}
