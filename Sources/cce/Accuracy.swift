// cce accuracy: the error of every mode and element type against the Float64 truth, with
// time and memory (Benchmarks/CCEBenchmarks/Accuracy.swift; the table in Docs/NUMERICS.md).

import ArgumentParser
import CCEBenchmarks
import CCEReference
import CCERuntime
import CutCrossEntropy
import Foundation

struct AccuracyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accuracy",
        abstract: "Relative error of loss, dE and dC for every mode and element type on LM-like data, with time and memory.")

    enum Defaults: ShapeDefaults {
        static let tokens = 1024, dim = 512, vocab = 32768
    }

    @OptionGroup var shape: ShapeOptions<Defaults>
    @Option(help: "Comma-separated element types.") var dtypes = "f32,f16,bf16"
    @Option(parsing: .unconditional, help: "Comma-separated data settings S:alpha (Docs/LMLIKE.md).") var data = "4:1.5,2:1"
    @OptionGroup var engine: EngineOptions<StandardEngine>
    @Option(parsing: .unconditional, help: "Random seed.") var seed: UInt64 = 0
    @Option(parsing: .unconditional, help: "Label smoothing alpha for every row, in [0, 1].") var labelSmoothing = 0.0
    @Flag(help: "Add a bias (normal, sigma 0.1, from the seed) and report dBias's error.") var bias = false
    @Option(help: "Also write the rows as JSON to this file.") var json: String?

    /// --dtypes as element types.
    func types() throws -> [ElementType] {
        let types = try dtypes.split(separator: ",").map { s -> ElementType in
            guard let t = ElementType(rawValue: String(s)) else { throw ValidationError("--dtypes: unknown element type \(s) (f32, f16, bf16)") }
            return t
        }
        guard !types.isEmpty else { throw ValidationError("--dtypes names no element type (f32, f16, bf16)") }
        return types
    }

    /// --data as (S, alpha) pairs.
    func settings() throws -> [(Double, Double)] {
        let settings = try data.split(separator: ",").map { s -> (Double, Double) in
            let p = s.split(separator: ":", omittingEmptySubsequences: false).map { Double($0) }
            guard p.count == 2, let scale = p[0], let alpha = p[1], scale > 0, scale.isFinite, alpha >= 0, alpha.isFinite else {
                throw ValidationError("--data wants S:alpha pairs with S > 0 and alpha >= 0 (got \(s))")
            }
            return (scale, alpha)
        }
        guard !settings.isEmpty else { throw ValidationError("--data names no S:alpha pair") }
        return settings
    }

    /// Every argument, the --json file, and the memory the run needs, before anything runs or prints.
    func validate() throws {
        if let json { try checkOutputFile(json, option: "--json") }
        let (types, _) = (try types(), try settings())
        guard shape.dim > 1 else { throw ValidationError("--dim must be >= 2 (got \(shape.dim))") }
        guard labelSmoothing >= 0 && labelSmoothing <= 1 else {
            throw ValidationError("--label-smoothing must be in [0, 1] (got \(labelSmoothing))")
        }
        try requireMemory(Accuracy.estimatedBytes(tokens: shape.tokens, dim: shape.dim, vocab: shape.vocab, types: types),
                          for: "N = \(shape.tokens), D = \(shape.dim), V = \(shape.vocab)")
    }

    func run() throws {
        let (types, settings) = (try types(), try settings())
        let (tokens, dim, vocab) = (shape.tokens, shape.dim, shape.vocab)
        let nThreads = engine.resolvedThreads
        print("LM-like N=\(tokens) D=\(dim) V=\(vocab), \(nThreads) threads, seed \(seed)"
              + (labelSmoothing > 0 ? ", label smoothing \(labelSmoothing)" : "") + (bias ? ", bias" : "")
              + "; truth: exact mode (Float64, no filter)")
        print("machine: \(Bench.machineDescription())")
        print("(the rounding depends on the tile kernel and on VB, which follows the L2 size: Docs/NUMERICS.md)\n")
        let rows = try Accuracy.run(tokens: tokens, dim: dim, vocab: vocab, types: types, settings: settings,
                                    threads: nThreads, seed: seed, labelSmoothing: labelSmoothing, bias: bias) { FileHandle.standardError.write(Data(("  " + $0 + "\n").utf8)) }
        print(Accuracy.markdown(rows))
        if let json {
            let enc = JSONEncoder(); enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            do { try enc.encode(rows).write(to: URL(fileURLWithPath: json)) } catch {
                throw CLIError("cannot write --json \(json): \(systemErrorText(error))")
            }
        }
    }
}
