// The options several commands share, declared once: the values they parse (element type,
// filter ε, backend, mode, reduction) and the option groups (the LM-like problem, the
// engine's threads, the filter threshold). A command includes a group with
// `@OptionGroup var problem: ProblemOptions<Defaults>`, where its `Defaults` gives the
// default values and, where a command says something else, the help text.
//
// Every option that takes a number is declared with `parsing: .unconditional` (arrays:
// `.unconditionalSingleValue`): the parser then takes the next argument as the value even
// when it starts with a dash, so `--ignore-index -100` works as `--ignore-index=-100` does
// (without it, `-100` reads as an option and the user sees "Missing value"). The value then
// meets its range check, which names the option. FailFastTests checks this for every numeric
// option of every command, from the tool's own list of its options.

import ArgumentParser
import CCERuntime
import CutCrossEntropy
import Foundation

// MARK: - Values

extension ElementType: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument) }
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}

/// --filter-eps: `auto` (ε by element type), `none`, or a finite number >= 0. Any number
/// parses, so that a negative one meets the range check (`FilterOptions.validate`), which
/// says what is wrong, instead of the parser's "invalid value".
extension FilterEpsilon: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument {
        case "auto": self = .auto
        case "none": self = .none
        default:
            guard let x = Double(argument) else { return nil }
            self = .value(x)
        }
    }

    /// Throws unless auto, none, or a finite number >= 0; `option` names the option.
    func check(_ option: String) throws {
        if case .value(let x) = self, !(x >= 0 && x.isFinite) {
            throw ValidationError("\(option) must be auto, none or a finite number >= 0 (got \(defaultValueDescription))")
        }
    }

    /// The value as --filter-eps spells it: auto, none, or the number.
    public var defaultValueDescription: String {
        switch self {
        case .auto: return "auto"
        case .none: return "none"
        case .value(let x): return "\(x)"
        }
    }
}

extension Mode: ExpressibleByArgument {}
extension Reduction: ExpressibleByArgument {}

/// --backend: this engine, or the CUDA library loaded at run time (CUDALibrary.swift).
/// Not CaseIterable, so that the help lists no values beyond each command's own text.
enum Backend: String, ExpressibleByArgument {
    case cpu, cuda
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

/// Writes `cce: error: ` and the first line of `message` to standard error: the one line every
/// failing command (and every rank of a failing parallel command) prints before exiting 1.
func printError(_ message: String) {
    let line = message.split(separator: "\n").first.map(String.init) ?? message
    FileHandle.standardError.write(Data("cce: error: \(line)\n".utf8))
}

/// Checks, before the work, that the file `path` given to `option` can be written, and
/// touches nothing: the path is not empty and not a folder; its folder exists and is
/// writable (files are written whole, some through a temporary file beside them); an
/// existing file is writable. The message names the option, the path and the reason.
func checkOutputFile(_ path: String, option: String) throws {
    guard !path.isEmpty else { throw ValidationError("\(option) is empty: name the file to write") }
    let fm = FileManager.default
    var isDir: ObjCBool = false
    let exists = fm.fileExists(atPath: path, isDirectory: &isDir)
    if exists && isDir.boolValue { throw ValidationError("cannot write \(option) \(path): it is a folder, not a file") }
    let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
    guard fm.fileExists(atPath: folder, isDirectory: &isDir) else {
        throw ValidationError("cannot write \(option) \(path): the folder \(folder) does not exist")
    }
    guard isDir.boolValue else { throw ValidationError("cannot write \(option) \(path): \(folder) is a file, not a folder") }
    guard access(folder, W_OK | X_OK) == 0 else {
        throw ValidationError("cannot write \(option) \(path): \(String(cString: strerror(errno))) (the folder \(folder))")
    }
    if exists, access(path, W_OK) != 0 {
        throw ValidationError("cannot write \(option) \(path): \(String(cString: strerror(errno)))")
    }
}

/// The one memory check (CCERuntime/MemoryCheck.swift) as a command's validation error:
/// `bytes` is the run's estimated peak (CCEBenchmarks' Footprint), `what` names its shape.
func requireMemory(_ bytes: Double, for what: String) throws {
    do { try MemoryCheck.require(bytes, for: what) } catch let e as MemoryCheckError { throw ValidationError(e.description) }
}

// MARK: - Defaults per command

/// A command's default problem shape, and its help where it differs from the usual text
/// (the extensions).
protocol ShapeDefaults {
    static var tokens: Int { get }
    static var dim: Int { get }
    static var vocab: Int { get }
    static var tokensHelp: String { get }
    static var dimHelp: String { get }
    static var vocabHelp: String { get }
}

extension ShapeDefaults {
    static var tokensHelp: String { "Tokens N." }
    static var dimHelp: String { "Embedding dimension D." }
    static var vocabHelp: String { "Vocabulary size V." }
}

/// The shape, and the element type and data seed.
protocol ProblemDefaults: ShapeDefaults {
    static var dtype: ElementType { get }
    static var seed: UInt64 { get }
    static var dtypeHelp: String { get }
    static var seedHelp: String { get }
}

extension ProblemDefaults {
    static var seed: UInt64 { 0 }
    static var dtypeHelp: String { "Element type of E and C: f32, bf16 or f16." }
    static var seedHelp: String { "Random seed." }
}

/// A command's default filter threshold, and its help where it differs from the usual text.
protocol EngineDefaults {
    static var filterEps: FilterEpsilon { get }
    static var threadsHelp: String { get }
    static var filterEpsHelp: String { get }
}

extension EngineDefaults {
    static var filterEps: FilterEpsilon { .auto }
    static var threadsHelp: String { "Worker threads (default: all CPUs)." }
    static var filterEpsHelp: String { "Gradient filter threshold: auto (by element type), none, or a number." }
}

/// The usual engine defaults: threads by CPU count, ε by element type.
enum StandardEngine: EngineDefaults {}

// MARK: - Option groups

/// --tokens, --dim, --vocab: the shape N x D, V x D of an LM-like problem.
struct ShapeOptions<D: ShapeDefaults>: ParsableArguments {
    @Option(parsing: .unconditional, help: ArgumentHelp(D.tokensHelp)) var tokens = D.tokens
    @Option(parsing: .unconditional, help: ArgumentHelp(D.dimHelp)) var dim = D.dim
    @Option(parsing: .unconditional, help: ArgumentHelp(D.vocabHelp)) var vocab = D.vocab

    mutating func validate() throws {
        for (name, value) in [("--tokens", tokens), ("--dim", dim), ("--vocab", vocab)] where value < 1 {
            throw ValidationError("\(name) must be >= 1 (got \(value))")
        }
    }
}

/// --tokens, --dim, --vocab, --dtype, --seed: an LM-like problem (LMLikeData).
struct ProblemOptions<D: ProblemDefaults>: ParsableArguments {
    @OptionGroup var shape: ShapeOptions<D>
    @Option(help: ArgumentHelp(D.dtypeHelp)) var dtype = D.dtype
    @Option(parsing: .unconditional, help: ArgumentHelp(D.seedHelp)) var seed = D.seed

    var tokens: Int { shape.tokens }
    var dim: Int { shape.dim }
    var vocab: Int { shape.vocab }
    /// "N = 1024, D = 512, V = 32768 (f32)", for messages.
    var what: String { "N = \(tokens), D = \(dim), V = \(vocab) (\(dtype.rawValue))" }
}

/// --threads: the engine's worker threads.
struct EngineOptions<D: EngineDefaults>: ParsableArguments {
    @Option(parsing: .unconditional, help: ArgumentHelp(D.threadsHelp)) var threads: Int?

    /// --threads, or every CPU this process may use.
    var resolvedThreads: Int { threads ?? Workers.availableCPUs }

    mutating func validate() throws {
        if let t = threads, t < 1 { throw ValidationError("--threads must be >= 1 (got \(t))") }
    }
}

/// --filter-eps: the gradient filter threshold.
struct FilterOptions<D: EngineDefaults>: ParsableArguments {
    @Option(parsing: .unconditional, help: ArgumentHelp(D.filterEpsHelp)) var filterEps = D.filterEps

    mutating func validate() throws { try filterEps.check("--filter-eps") }
}
