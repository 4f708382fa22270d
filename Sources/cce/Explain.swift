// cce explain: the algorithm on a tiny example, step by step, and a picture of gradient
// filtering on a larger one. Sources/CCEExplain computes (Walkthrough.swift, FilterMap.swift)
// and draws the picture; this file prints. Docs/EXPLAIN.md.

import ArgumentParser
import CCEExplain
import CCEReference
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
    @Option(name: .customLong("eps"), parsing: .unconditional, help: .hidden) var eps: FilterEpsilon?
    @Option(help: "SVG picture of skipped tiles.") var svg = "explain-tiles.svg"
    @OptionGroup var problem: ProblemOptions<Defaults>
    @OptionGroup var engine: EngineOptions<Defaults>

    /// The tiny example's threshold: auto is Float32's ε (its data is Float32), none is 0
    /// (every tile kept).
    var tinyEpsilon: Double { (eps ?? filter.filterEps).resolve(.float32, .float32) ?? 0 }

    /// The picture's problem, its file and the memory it needs, before the walkthrough prints.
    func validate() throws {
        try eps?.check("--eps")
        try checkOutputFile(svg, option: "--svg")
        let (n, d, v) = (problem.tokens, problem.dim, problem.vocab)
        guard d >= 2 else { throw ValidationError("--dim must be >= 2 for the picture's problem (got \(d))") }
        guard v >= 2 else { throw ValidationError("--vocab must be >= 2 for the picture's problem (got \(v))") }
        let (nv, overflow) = n.multipliedReportingOverflow(by: v)
        guard !overflow, nv <= FilterMap.maxCells else {
            throw ValidationError("--tokens x --vocab must be at most 2^26 for the picture (it keeps every probability; got \(n) x \(v))")
        }
        try requireMemory(FilterMap.estimatedBytes(tokens: n, dim: d, vocab: v, type: problem.dtype), for: problem.what)
    }

    func run() throws {
        let (tokens, dim, vocab, dtype, seed) = (problem.tokens, problem.dim, problem.vocab, problem.dtype, problem.seed)
        let walk: TileWalkthrough
        let map: FilterMap
        do {
            walk = try TileWalkthrough(seed: seed, eps: tinyEpsilon)
            for l in Self.lines(walk) { print(l) }
            print()
            print("FILTERING ON A LARGER PROBLEM: LM-like N = \(tokens), D = \(dim), V = \(vocab), \(dtype.rawValue)")
            map = try FilterMap(tokens: tokens, dim: dim, vocab: vocab, type: dtype, seed: seed, threads: engine.threads)
        } catch let e as ExplainError { throw CLIError(e.description) } catch let e as CCEError { throw CLIError(e.description) }
        print(String(format: "eps = %g; the engine's backward tiles: %d tokens x VB = %d vocabulary entries; a row segment is one token x VB entries.",
                     map.eps, map.tokenBlock, map.vocabBlock))
        print("  " + Self.summary(map, map.unsorted))
        print("  " + Self.summary(map, map.sorted))
        do { try map.svg().write(toFile: svg, atomically: true, encoding: .utf8) } catch {
            throw CLIError("cannot write --svg \(svg): \(systemErrorText(error))")
        }
        print("picture: \(svg)")
    }
}

// MARK: - The text

extension Explain {
    /// The walk, line by line: problem, forward tiles and merges, losses, backward tiles and
    /// decisions, summary.
    static func lines(_ w: TileWalkthrough) -> [String] {
        let (n, d, v, t) = (TileWalkthrough.n, TileWalkthrough.d, TileWalkthrough.v, TileWalkthrough.tile)
        var out: [String] = []
        func say(_ s: String = "") { out.append(s) }
        func row(_ xs: [Double], _ fmt: String) -> String { xs.map { String(format: fmt, $0) }.joined() }
        func columns(_ v0: Int) -> String {
            "         " + (v0..<(v0 + t)).map { k -> String in
                let name = "v\(w.order[k])"
                return String(repeating: " ", count: max(1, 11 - name.count)) + name
            }.joined()
        }
        func tileTitle(_ b0: Int, _ v0: Int, _ what: String) -> String {
            "Tile rows \(b0)-\(b0 + t - 1) x vocabulary \(v0)-\(v0 + t - 1): \(what)"
        }
        say("Problem: LM-like data (S = 4, alpha = 1.5, seed \(w.seed)), N = \(n) tokens, D = \(d), V = \(v); tiles of \(t) tokens x \(t) vocabulary entries.")
        say("Targets: " + w.targets.enumerated().map { "t\($0.offset)=\($0.element)" }.joined(separator: " "))
        if w.sortVocabulary {
            say("Vocabulary sorted by average logit C_v . mean(E), largest first, as the engine does before its sweeps:")
            say("  order: " + w.order.map { "v\($0)" }.joined(separator: " "))
            say("  (tile columns below are positions in this order; 'vocabulary 0-3' means the first four entries)")
        }
        say()
        say("FORWARD: for each token block, sweep the vocabulary tile by tile; keep per row a running max m and a")
        say("running sum s of exp(z - m). When a tile raises m to m', the old sum is rescaled by exp(m - m').")
        for f in w.forward {
            say()
            say(tileTitle(f.firstRow, f.firstPosition, "logits z = E C^T"))
            say(columns(f.firstPosition))
            for (r, zs) in f.logits.enumerated() { say(String(format: "  row %d  ", f.firstRow + r) + row(zs, "%11.3f")) }
            say("  merge:    tile max | running max m -> m' | rescale exp(m-m') | running sum s -> s' | lse so far")
            for (r, m) in f.merge.enumerated() {
                say(String(format: "  row %d  %9.3f | %8.3f -> %8.3f | %16.4f | %8.4f -> %8.4f | %8.4f",
                           f.firstRow + r, m.tileMax, m.runningMax, m.newMax, m.rescale, m.runningSum, m.newSum, m.lse))
            }
        }
        say()
        say("LOSS: loss_i = lse_i - z_(i, t_i)")
        for l in w.tokenLosses {
            say(String(format: "  row %d  lse %8.4f  target v%-2d  z_t %8.4f  loss %8.4f", l.row, l.lse, l.target, l.targetLogit, l.loss))
        }
        say(String(format: "  mean loss %.7f; library (CutCrossEntropy.lossAndGradients, Float32) %.7f; |difference| %.1e",
                   w.loss, w.libraryLoss, abs(w.loss - w.libraryLoss)))
        say()
        say(String(format: "BACKWARD: recompute each tile, p = exp(z - lse), dloss/dz = p - [v = t]. eps = %g: a tile is", w.eps))
        say("skipped when every |p| < eps and no row's target is in it. Kept tiles add dy = (dloss/dz)/N into dE and dC.")
        for b in w.backward {
            say()
            say(tileTitle(b.firstRow, b.firstPosition, "dloss/dz"))
            say(columns(b.firstPosition))
            for (r, g) in b.gradient.enumerated() { say(String(format: "  row %d  ", b.firstRow + r) + row(g, "%11.2e")) }
            switch b.decision {
            case .keptForTargets(let rows):
                say("  KEPT: target of row " + rows.map(String.init).joined(separator: ", ") + " is in this tile")
            case .keptAboveEpsilon(let p):
                say("  " + String(format: "KEPT: max p = %.2e >= eps", p))
            case .skipped(let p):
                say("  " + String(format: "SKIPPED: max p = %.2e < eps and no target here", p))
            }
        }
        say()
        say("SUMMARY: skipped \(w.skippedTiles) of \(w.tiles) tiles at eps = \(String(format: "%g", w.eps)).")
        say(String(format: "  loss: walkthrough %.7f, library %.7f (|difference| %.1e)", w.loss, w.libraryLoss, abs(w.loss - w.libraryLoss)))
        say(String(format: "  unfiltered gradients vs the library's (eps none): max |difference| %.1e over dE and dC", w.gradientDifference))
        say(String(format: "  what filtering dropped: max |dE, dC change| %.1e (each dropped dy entry is below eps/N = %.1e)",
                   w.filteringError, w.eps / Double(n)))
        say("  the engine filters per row segment (one token x VB = \(w.engineVocabBlock) entries; "
            + "a segment holding its target is kept) and adds back each dropped segment's first-order part by default:")
        say(String(format: "    at this eps it keeps %d of %d segments; max |dE change| %.1e with the plain filter, %.1e with the estimate",
                   w.engineKeptSegments, w.engineSegments, w.enginePlainFilterError, w.engineEstimateError))
        say("  the engine's fused call (lossAndGradients) recomputes less than this walkthrough: its forward keeps each row's")
        say("  largest logit per block, so rows bounded below eps are never recomputed, and (bf16/f16) it keeps every logit")
        say("  with z >= lse so far + log(eps/16) (Options.savedLogitsPerRow a row at most), which its backward reads instead of")
        say("  recomputing the tile; the lse only grows, so an entry left out ends below eps/16 (Docs/DERIVATION.md,")
        say("  \"Reading the forward's logits instead of recomputing them\").")
        return out
    }

    /// One line per panel of the filter map: kept fractions here and in the engine.
    static func summary(_ map: FilterMap, _ p: FilterMap.Panel) -> String {
        let segs = map.n * map.blocks
        let tiles = map.pictureTiles(p)
        return String(format: "%@: kept %d of %d row segments (%.1f%%); engine FilterStatistics: kept %d of %d (%.1f%%). "
                      + "Picture tiles (%d x %d) kept: %d of %d (%.1f%%). Engine tiles (%d x %d) skipped: here %d, engine %d, of %d.",
                      p.sorted ? "sorted vocabulary" : "vocabulary in id order",
                      p.keptSegments, segs, 100 * Double(p.keptSegments) / Double(segs),
                      p.engine.keptRowSegments, p.engine.rowSegments,
                      100 * Double(p.engine.keptRowSegments) / Double(max(1, p.engine.rowSegments)),
                      map.pictureRows, map.vocabBlock, tiles.kept, tiles.total, 100 * Double(tiles.kept) / Double(tiles.total),
                      map.tokenBlock, map.vocabBlock, p.skippedEngineTiles, p.engine.skippedTiles, p.engineTiles)
    }
}
