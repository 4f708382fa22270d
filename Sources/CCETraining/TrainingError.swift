// Errors of the training library: every way a configuration or a corpus can be wrong.

/// Thrown for a bad training configuration or corpus, before any work starts.
public enum TrainingError: Error, Equatable, CustomStringConvertible {
    /// The corpus file does not exist or cannot be read.
    case corpusUnreadable(path: String, reason: String)
    /// The corpus holds too few tokens to form one (context, target) pair.
    case emptyCorpus(String)
    /// An option has a value outside its domain.
    case invalidOption(String)

    public var description: String {
        switch self {
        case .corpusUnreadable(let p, let r): return "cannot read corpus \(p): \(r)"
        case .emptyCorpus(let s): return "empty corpus: \(s)"
        case .invalidOption(let s): return "invalid option: \(s)"
        }
    }
}
