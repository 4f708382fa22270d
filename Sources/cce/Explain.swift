// cce explain: the algorithm on a tiny example, step by step, and a picture of gradient
// filtering on a larger one (Sources/CCETraining/Walkthrough.swift, FilterMap.swift;
// Docs/EXPLAIN.md).

import ArgumentParser
import CCETraining
import CutCrossEntropy
import Foundation

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Walk a tiny CCE example tile by tile (N=8, D=4, V=16) and draw which backward tiles filtering skips on an LM-like problem.")

    enum Defaults: ProblemDefaults, EngineDefaults {
        static let tokens = 256, dim = 256, vocab = 8192
        static let dtype = ElementType.bfloat16
        static let seed: UInt64 = 7
        static let filterEps = FilterEpsilon.value(0x1p-7)
        static let tokensHelp = "Tokens N of the picture's problem."
        static let dimHelp = "Embedding dimension D of the picture's problem."
        static let vocabHelp = "Vocabulary size V of the picture's problem."
        static let dtypeHelp = "Element type of the picture's problem (its eps is the type's default: bf16 2^-12)."
        static let seedHelp = "Data seed (7: the tiny example then has tiles to skip at eps 2^-7)."
        static let threadsHelp = "Worker threads for the engine (default: all CPUs)."
        static let filterEpsHelp = "Filter threshold of the tiny example."
    }

    @OptionGroup var filter: FilterOptions<Defaults>
    /// The earlier spelling of --filter-eps, still accepted; when both are given, --eps wins.
    @Option(name: .customLong("eps"), help: .hidden) var eps: FilterEpsilon?
    @Option(help: "SVG picture of skipped tiles.") var svg = "explain-tiles.svg"
    @OptionGroup var problem: ProblemOptions<Defaults>
    @OptionGroup var engine: EngineOptions<Defaults>

    /// The tiny example's threshold: auto is Float32's ε (its data is Float32), none is 0
    /// (every tile kept).
    var tinyEpsilon: Double { (eps ?? filter.filterEps).resolve(.float32, .float32) ?? 0 }

    func run() throws {
        let (tokens, dim, vocab, dtype, seed) = (problem.tokens, problem.dim, problem.vocab, problem.dtype, problem.seed)
        let walk: TileWalkthrough
        let map: FilterMap
        do {
            walk = try TileWalkthrough(seed: seed, eps: tinyEpsilon)
            for l in walk.lines { print(l) }
            print()
            print("FILTERING ON A LARGER PROBLEM: LM-like N = \(tokens), D = \(dim), V = \(vocab), \(dtype.rawValue)")
            map = try FilterMap(tokens: tokens, dim: dim, vocab: vocab, type: dtype, seed: seed, threads: engine.threads)
        } catch let e as TrainingError { throw CLIError(e.description) } catch let e as CCEError { throw CLIError(e.description) }
        print(String(format: "eps = %g; engine tile plan: NB = %d tokens, VB = %d vocabulary entries; a row segment is one token x VB entries.",
                     map.eps, map.tokenBlock, map.vocabBlock))
        print("  " + map.summary(map.unsorted))
        print("  " + map.summary(map.sorted))
        do { try map.svg().write(toFile: svg, atomically: true, encoding: .utf8) } catch { throw CLIError("cannot write \(svg)") }
        print("picture: \(svg)")
    }
}
