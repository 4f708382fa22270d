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
