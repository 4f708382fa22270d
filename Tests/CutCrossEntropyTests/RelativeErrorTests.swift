// The package's one relative error (RelativeError.swift): its formula and its NaN, zero and
// infinity rules, which `cce compare`, `cce accuracy`, `cce demo` and the test budgets share.

import CutCrossEntropy
import XCTest

final class RelativeErrorTests: XCTestCase {
    func testFormula() {
        // ‖(0.5, 0)‖ / ‖(3, 4)‖ = 0.5 / 5.
        XCTAssertEqual(relativeError([3.5, 4], [3, 4]), 0.1, accuracy: 1e-15)
        XCTAssertEqual(relativeError([1, -2, 3], [1, -2, 3]), 0)
        XCTAssertEqual(relativeError([], []), 0)
    }

    func testZeroReference() {
        XCTAssertEqual(relativeError([0, 0], [0, 0]), 0, "both all zero")
        XCTAssertEqual(relativeError([0, 1e-30], [0, 0]), .infinity, "reference all zero, candidate not")
    }

    /// A NaN or infinity in the candidate is never within a budget, except a NaN where the
    /// reference has one (masked positions); the result is never NaN.
    func testNaNAndInfinity() {
        XCTAssertEqual(relativeError([.nan, 2], [.nan, 2]), 0, "NaN on both sides agrees")
        XCTAssertEqual(relativeError([.nan, 3], [.nan, 2]), 0.5, "and is left out of both norms")
        XCTAssertEqual(relativeError([.nan, 2], [1, 2]), .infinity, "NaN in the candidate only")
        XCTAssertEqual(relativeError([1, 2], [.nan, 2]), .infinity, "NaN in the reference only")
        XCTAssertEqual(relativeError([.infinity, 2], [1, 2]), .infinity, "infinite candidate")
        XCTAssertEqual(relativeError([.infinity, 2], [.infinity, 2]), .infinity, "the same infinity on both sides")
        XCTAssertEqual(relativeError([1, 2], [-.infinity, 2]), .infinity, "infinite reference")
        XCTAssertEqual(relativeError([1e200, 0], [-1e200, 0]), .infinity, "sums beyond Double's range: +inf, not NaN")
    }

    /// The accumulator records the largest element error and its first index.
    func testWorstElement() {
        var e = RelativeError()
        for (i, (c, r)) in zip([1.0, 5, .nan, 2], [1.0, 4, .nan, 3]).enumerated() { e.add(c, r, at: i) }
        XCTAssertEqual(e.maxAbs, 1)
        XCTAssertEqual(e.worst, 1)
        XCTAssertEqual(e.value, (2.0 / 26).squareRoot(), accuracy: 1e-15)
        XCTAssertNil(RelativeError().worst)
        XCTAssertNil(RelativeError.elementError(.nan, .nan))
    }
}
