// cce demo: an LM-like workload, the materialized baseline and CCE side by side.

import ArgumentParser
import CCEBenchmarks
import CCEData
import CCERuntime
import CutCrossEntropy
import Foundation

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the materialized baseline and CCE on LM-like data; print loss, time, peak memory and error against Float64.")

    enum Defaults: ProblemDefaults {
        static let tokens = 1024, dim = 512, vocab = 32768
        /// bf16: what CPU training stores (and torch.autocast casts to); f32 is the dense case.
        static let dtype = ElementType.bfloat16
    }

    @OptionGroup var problem: ProblemOptions<Defaults>
    @OptionGroup var engine: EngineOptions<StandardEngine>
    @OptionGroup var filter: FilterOptions<StandardEngine>

    /// Sizes (positive: the option groups check), N x V for the baseline, and memory: all
    /// before anything is allocated or printed.
    func validate() throws {
        let (n, d, v, type) = (problem.tokens, problem.dim, problem.vocab, problem.dtype)
        let (nv, overflow) = n.multipliedReportingOverflow(by: v)
        guard !overflow, nv <= 1 << 30 else {
            throw ValidationError("N x V = \(n) x \(v) is more than 2^30, too large for the materialized baseline in a demo")
        }
        // Held at once: the data, the exact run's Float64 gradients and their copies, the
        // baseline's and CCE's gradients, and the Float64 copies the errors are taken from.
        let results = Footprint.engine(tokens: n, dim: d, vocab: v, type: type, mode: .exact)
            + Footprint.materialized(tokens: n, dim: d, vocab: v)
            + Footprint.engine(tokens: n, dim: d, vocab: v, type: type, mode: .default)
            + 3 * Footprint.float64Gradients(tokens: n, dim: d, vocab: v)
        try requireMemory(max(Footprint.lmLikeData(tokens: n, dim: d, vocab: v, type: type),
                              Footprint.lmLikeDataKept(tokens: n, dim: d, vocab: v, type: type) + results),
                          for: problem.what)
    }

    func run() throws {
        let (tokens, dim, vocab, dtype) = (problem.tokens, problem.dim, problem.vocab, problem.dtype)
        let nThreads = engine.resolvedThreads
        print("Cut Cross-Entropy demo: LM-like data (S=4, alpha=1.5), N=\(tokens) D=\(dim) V=\(vocab) \(dtype.rawValue), \(nThreads) threads")
        print("The N x V logit matrix would take \(String(format: "%.1f", Double(tokens * vocab * 4) / 1e6)) MB in Float32.\n")
        let data = LMLikeData.make(tokens: tokens, dim: dim, vocab: vocab, type: dtype, seed: problem.seed)
        var opts = Options(); opts.threads = nThreads
        var exactOpts = opts; exactOpts.mode = .exact
        opts.filterEpsilon = filter.filterEps

        func timed<T>(_ body: () throws -> T) rethrows -> (T, Double, Int) {
            let start = Date()
            let (r, peak) = try MemoryProbe.measure(body)
            return (r, Date().timeIntervalSince(start), peak)
        }
        // Float64 truth: the tiled engine's exact mode (Float64 accumulation, no filtering),
        // which the test suite checks against the materialized Float64 oracle.
        let (truth, tTruth, _) = try timed {
            try CutCrossEntropy(options: exactOpts).lossAndGradients(
                embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        }
        let dE64 = truth.1.dE.doubles, dC64 = truth.1.dC.doubles
        let gradBytes = (tokens * dim + vocab * dim) * 4

        let (mat, tMat, pMat) = try timed {
            try Materialized.compute(embeddings: data.embeddings, classifier: data.classifier,
                                     targets: data.targets, options: opts)
        }
        let (cce, tCCE, pCCE) = try timed {
            try CutCrossEntropy(options: opts).lossAndGradients(
                embeddings: data.embeddings, classifier: data.classifier, targets: data.targets)
        }
        func maxErr(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) } }
        let matE = mat.dE!.map { Double($0) }, matC = mat.dC!.map { Double($0) }
        let cceE = cce.1.dE.doubles, cceC = cce.1.dC.doubles
        func row(_ cells: [String]) -> String {
            zip(cells, [14, 12, 9, 10, 11, 11, 11]).map { c, w in
                c.count >= w ? " " + c : String(repeating: " ", count: w - c.count) + c
            }.joined(separator: " ")
        }
        print(row(["method", "loss", "time s", "peak MB", "|Δloss|", "dE rel err", "dC rel err"]))
        func line(_ name: String, _ loss: Double, _ t: Double, _ peak: Int, _ e: [Double], _ c: [Double]) {
            print(row([name, String(format: "%.6f", loss), String(format: "%.3f", t),
                       String(format: "%.1f", Double(max(0, peak - gradBytes)) / 1e6),
                       String(format: "%.2e", abs(loss - truth.0.loss)), String(format: "%.2e", relativeError(e, dE64)),
                       String(format: "%.2e", relativeError(c, dC64))]))
        }
        line("materialized", mat.loss, tMat, pMat, matE, matC)
        line("cce", cce.0.loss, tCCE, pCCE, cceE, cceC)
        print(row(["float64 (exact)", String(format: "%.6f", truth.0.loss), String(format: "%.3f", tTruth), "-", "0", "0", "0"]))
        let fs = cce.1.filter
        print(String(format: "\nPeak MB is the process's peak memory growth beyond the inputs and the returned gradients (%.1f MB).",
                     Double(gradBytes) / 1e6))
        print(String(format: "Max |dE| error: materialized %.2e, cce %.2e.  CCE kept %.2f%% of backward row segments and skipped %d of %d tiles.",
                     maxErr(matE, dE64), maxErr(cceE, dE64),
                     100 * Double(fs.keptRowSegments) / Double(max(1, fs.rowSegments)), fs.skippedTiles, fs.tiles))
        print(String(format: "CCE: %.2fx the materialized time, %.2f%% of its memory.", tCCE / tMat,
                     100 * Double(max(0, pCCE - gradBytes)) / Double(max(1, pMat - gradBytes))))
        if let eps = filter.filterEps.resolve(dtype, dtype), fs.keptRowSegments < fs.rowSegments {
            let k = log2(eps), text = k == k.rounded() ? "2^\(Int(k))" : String(format: "%.2e", eps)
            print("CCE's gradient errors are mostly its filter's: row segments whose every probability is below "
                  + "ε = \(text) were skipped (--filter-eps none keeps them all).")
        }
        if dtype == .float32, fs.keptRowSegments * 2 > fs.rowSegments {
            print("With Float32 storage the filter (ε = 2^-28) keeps nearly every row segment, so CCE's backward is as "
                  + "dense as the baseline's and runs tile by tile; --dtype bf16 is the training case.")
        }
    }
}
