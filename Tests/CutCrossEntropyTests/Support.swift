// Shared test helpers: random problems, comparisons with a written error budget, and a
// trace of the parameters so a failure says which case broke.

import CCEData
import CutCrossEntropy
import XCTest

/// A random problem with Gaussian E and C (scaled so logits spread over a few units).
func randomProblem(n: Int, d: Int, v: Int, type: ElementType = .float32, seed: UInt64 = 1,
                   batch: Int? = nil, ignoreFraction: Double = 0.1, ignoreIndex: Int = -100,
                   withBias: Bool = false) -> (Tensor, Tensor, Targets, Tensor?) {
    var rng = SeededRandom(seed: seed)
    let e = (0..<(n * d)).map { _ in Float(rng.normal()) }
    let c = (0..<(v * d)).map { _ in Float(rng.normal() * 2 / Double(d).squareRoot()) }
    let t = (0..<n).map { _ in rng.uniform() < ignoreFraction ? ignoreIndex : Int(rng.next() % UInt64(v)) }
    let eShape = batch.map { [$0, n / $0, d] } ?? [n, d]
    let tShape = batch.map { [$0, n / $0] } ?? [n]
    let b: Tensor? = withBias
        ? try! Tensor(converting: (0..<v).map { _ in Float(rng.normal()) }, to: type, shape: [v]) : nil
    return (try! Tensor(converting: e, to: type, shape: eShape),
            try! Tensor(converting: c, to: type, shape: [v, d]),
            try! Targets(t, shape: tShape), b)
}

/// max |a − b| / (atol + rtol·max|b|) ≤ 1, with a message naming the case and the worst element.
func assertClose(_ a: [Double], _ b: [Double], atol: Double, rtol: Double, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "\(what): count", file: file, line: line)
    guard a.count == b.count else { return }
    let scale = b.reduce(0) { max($0, $1.isNaN ? 0 : abs($1)) }
    var worst = 0.0, at = -1
    for i in 0..<a.count {
        if a[i].isNaN && b[i].isNaN { continue }
        let err = abs(a[i] - b[i])
        if !(err <= worst) || err.isNaN { worst = err.isNaN ? .infinity : err; at = i }
    }
    let budget = atol + rtol * scale
    XCTAssertLessThanOrEqual(worst, budget,
        "\(what): max error \(worst) at [\(at)] (\(at >= 0 ? a[at] : 0) vs \(at >= 0 ? b[at] : 0)), budget \(budget)",
        file: file, line: line)
}

/// Whether two results have the same bits everywhere (NaNs included); prints no arrays.
func bitwiseEqual(_ a: Values, _ b: Values) -> Bool {
    switch (a, b) {
    case (.float32(let x), .float32(let y)): return x.map(\.bitPattern) == y.map(\.bitPattern)
    case (.float64(let x), .float64(let y)): return x.map(\.bitPattern) == y.map(\.bitPattern)
    default: return false
    }
}
