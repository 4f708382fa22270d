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

    @Option(help: "Filter threshold of the tiny example.") var eps = 0x1p-7
    @Option(help: "Data seed (7: the tiny example then has tiles to skip at eps 2^-7).") var seed: UInt64 = 7
    @Option(help: "SVG picture of skipped tiles.") var svg = "explain-tiles.svg"
    @Option(help: "Tokens N of the picture's problem.") var tokens = 256
    @Option(help: "Embedding dimension D of the picture's problem.") var dim = 256
    @Option(help: "Vocabulary size V of the picture's problem.") var vocab = 8192
    @Option(help: "Element type of the picture's problem (its eps is the type's default: bf16 2^-12).")
    var dtype: ElementType = .bfloat16
    @Option(help: "Worker threads for the engine (default: all CPUs).") var threads: Int?

    func run() throws {
        let walk: TileWalkthrough
        let map: FilterMap
        do {
            walk = try TileWalkthrough(seed: seed, eps: eps)
            for l in walk.lines { print(l) }
            print()
            print("FILTERING ON A LARGER PROBLEM: LM-like N = \(tokens), D = \(dim), V = \(vocab), \(dtype.rawValue)")
            map = try FilterMap(tokens: tokens, dim: dim, vocab: vocab, type: dtype, seed: seed, threads: threads)
        } catch let e as TrainingError { throw CLIError(e.description) } catch let e as CCEError { throw CLIError(e.description) }
        print(String(format: "eps = %g; engine tile plan: NB = %d tokens, VB = %d vocabulary entries; a row segment is one token x VB entries.",
                     map.eps, map.tokenBlock, map.vocabBlock))
        print("  " + map.summary(map.unsorted))
        print("  " + map.summary(map.sorted))
        do { try map.svg().write(toFile: svg, atomically: true, encoding: .utf8) } catch { throw CLIError("cannot write \(svg)") }
        print("picture: \(svg)")
    }
}
