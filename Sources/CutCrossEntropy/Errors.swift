// Errors: every way an input can be wrong, each with a message that names the problem.

/// Thrown for bad input. Nothing is written to any output when one is thrown.
public enum CCEError: Error, Equatable, CustomStringConvertible {
    /// A tensor's shape is malformed, or shapes do not agree with each other.
    case invalidShape(String)
    /// An input has no elements (N, D or V is 0).
    case empty(String)
    /// A target is outside [0, V) and is not the ignore index.
    case targetOutOfRange(position: Int, value: Int, vocabulary: Int)
    /// A non-finite value (NaN or ±∞) where the caller asked for checking.
    case nonFinite(tensor: String, index: Int)
    /// An option has a value outside its domain.
    case invalidOption(String)
    /// The upstream gradient does not match the reduction.
    case invalidUpstream(String)
    /// Saved forward state does not belong to these inputs.
    case stateMismatch(String)
    /// An optional engine (the CUDA library) could not be loaded.
    case backendUnavailable(String)
    /// An optional engine reported a failure.
    case backendFailed(String)
    /// Finite inputs whose arithmetic in `mode` overflowed: the LSE or the loss of the row
    /// paired with `targets[position]` (flat index) is not finite. Float32 logits overflow
    /// beyond about 3.4e38; the exact mode computes in Float64 and does not. Thrown after the
    /// engine and before anything is returned (gradients written into caller buffers by
    /// `lossAndGradients(…, writingTo:)` are then unspecified).
    case overflow(position: Int, mode: Mode)

    /// A one-line message that names the problem, e.g. "target out of range: targets[3] =
    /// 100 is outside [0, 100) and is not the ignore index".
    public var description: String {
        switch self {
        case .invalidShape(let s): return "invalid shape: \(s)"
        case .empty(let s): return "empty input: \(s)"
        case .targetOutOfRange(let p, let v, let vocab):
            return "target out of range: targets[\(p)] = \(v) is outside [0, \(vocab)) and is not the ignore index"
        case .nonFinite(let t, let i): return "non-finite value: \(t)[\(i)] is NaN or infinite"
        case .invalidOption(let s): return "invalid option: \(s)"
        case .invalidUpstream(let s): return "invalid upstream gradient: \(s)"
        case .stateMismatch(let s): return "saved state does not match the inputs: \(s)"
        case .backendUnavailable(let s), .backendFailed(let s): return s
        case .overflow(let p, let mode):
            return "overflow: the Float32 arithmetic of the \(mode.rawValue) mode overflows on these finite inputs "
                + "(targets[\(p)]: its LSE or loss is not finite); use the exact mode (Options.mode = .exact, "
                + "`--mode exact` in cce), which computes in Float64, or scale the inputs down"
        }
    }
}
