// Errors of the teaching surface behind `cce explain`.

/// Thrown for an option outside its domain, before any work starts.
public enum ExplainError: Error, Equatable, CustomStringConvertible {
    /// An option has a value outside its domain.
    case invalidOption(String)

    public var description: String {
        switch self {
        case .invalidOption(let s): return "invalid option: \(s)"
        }
    }
}
