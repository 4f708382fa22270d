// Memory: a problem whose logit matrix would take 4.3 GB (N = 8192, V = 131072, Float32)
// runs forward and backward with peak resident growth under 64 MB, measured from the
// process (VmHWM reset through /proc/self/clear_refs). The growth includes the returned
// gradients (dC is 4 MB here).

import CCERuntime
import CutCrossEntropy
import XCTest

final class MemoryTests: XCTestCase {
    func testNoAllocationGrowsWithNTimesV() throws {
        guard MemoryProbe.isResettable else { throw XCTSkip("/proc/self/clear_refs is not writable here") }
        let n = 8192, v = 131_072, d = 8
        XCTAssertGreaterThanOrEqual(n * v * 4, 4_000_000_000)
        let (e, c, t, _) = randomProblem(n: n, d: d, v: v, seed: 9)
        let cce = CutCrossEntropy()
        let ((f, g), growth) = try MemoryProbe.measure {
            try cce.lossAndGradients(embeddings: e, classifier: c, targets: t)
        }
        XCTAssertTrue(f.loss.isFinite)
        XCTAssertEqual(g.dC.count, v * d)
        XCTAssertLessThan(growth, 64 << 20, "peak growth \(growth >> 20) MiB for a \(n * v * 4 >> 20) MiB logit matrix")
        print("memory: peak growth \(Double(growth) / 1e6) MB for a \(Double(n * v * 4) / 1e9) GB logit matrix")
    }
}
