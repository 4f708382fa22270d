import ArgumentParser
import CutCrossEntropy

extension ElementType: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument) }
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

/// --filter-eps: auto, none, or a number >= 0.
func parseFilter(_ s: String) throws -> FilterEpsilon {
    switch s {
    case "auto": return .auto
    case "none": return .none
    default:
        guard let x = Double(s), x >= 0, x.isFinite else {
            throw CLIError("--filter-eps must be auto, none or a number >= 0 (got \(s))")
        }
        return .value(x)
    }
}
