// One relative error for every comparison in the package: the accuracy table and the demo
// (`cce accuracy`, `cce demo`), `cce compare`, and the tests' error budgets.

/// The relative error of a candidate against a reference, accumulated element by element
/// (so that large arrays can be compared where they lie, without Float64 copies):
///
///     rel = ‖c − r‖₂ / ‖r‖₂ = sqrt(Σᵢ errᵢ² / Σᵢ rᵢ²),   errᵢ = |cᵢ − rᵢ|
///
/// Element rules, for candidate cᵢ and reference rᵢ:
/// - both NaN: the position agrees and is left out of both sums (masked positions, such as
///   the LSE of rows without a target);
/// - otherwise, a NaN or an infinity on either side (even the same infinity on both) makes
///   errᵢ = +∞, and rᵢ is left out of ‖r‖;
/// - otherwise errᵢ = |cᵢ − rᵢ| and rᵢ enters ‖r‖.
///
/// The whole:
/// - 0 when every errᵢ is 0: both all zero, equal, or nothing compared (empty, or all
///   positions NaN on both sides);
/// - +∞ when some errᵢ is +∞, or when ‖r‖ = 0 and the candidate differs;
/// - otherwise the quotient above.
///
/// So a NaN or an infinity in the candidate never gives a finite error, unless the reference
/// has a NaN at the same position; and the result is never NaN, so that `rel <= budget`
/// fails exactly when the candidate is out of budget.
public struct RelativeError: Sendable {
    /// Σ errᵢ² and Σ rᵢ² over the compared elements.
    public private(set) var squaredError = 0.0, squaredReference = 0.0
    /// The largest errᵢ, and the first index where it occurs (nil before any compared element).
    public private(set) var maxAbs = 0.0
    public private(set) var worst: Int? = nil

    public init() {}

    /// errᵢ for one element: nil when both are NaN, +∞ when either is not finite.
    public static func elementError(_ candidate: Double, _ reference: Double) -> Double? {
        if candidate.isNaN && reference.isNaN { return nil }
        guard candidate.isFinite && reference.isFinite else { return .infinity }
        return abs(candidate - reference)
    }

    /// Adds element `index`.
    public mutating func add(_ candidate: Double, _ reference: Double, at index: Int) {
        guard let err = Self.elementError(candidate, reference) else { return }
        if reference.isFinite { squaredReference += reference * reference }
        squaredError += err * err
        if worst == nil || err > maxAbs { maxAbs = err; worst = index }
    }

    /// ‖c − r‖₂ / ‖r‖₂ by the rules above.
    public var value: Double {
        if squaredError == 0 { return 0 }
        // (Sums past Double's range, |values| beyond ~1e154, also end here as +∞, not NaN.)
        if squaredReference == 0 || squaredError.isInfinite { return .infinity }
        return (squaredError / squaredReference).squareRoot()
    }
}

/// ‖candidate − reference‖₂ / ‖reference‖₂ with the rules of `RelativeError`: positions
/// where both are NaN are left out; any other NaN or infinity gives +∞; 0 when the two
/// agree everywhere (all zero included); +∞ when the reference is all zero and the candidate
/// is not. Never NaN. The arrays must have the same length.
public func relativeError(_ candidate: [Double], _ reference: [Double]) -> Double {
    precondition(candidate.count == reference.count,
                 "relativeError: \(candidate.count) candidate values, \(reference.count) reference values")
    var e = RelativeError()
    for i in 0..<candidate.count { e.add(candidate[i], reference[i], at: i) }
    return e.value
}
