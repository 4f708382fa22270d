// cce bench: the benchmark program (Benchmarks/CCEBenchmarks/Bench.swift).

import ArgumentParser
import CCEBenchmarks
import CCEData
import CCERuntime
import CutCrossEntropy
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Table 1 of the paper on this CPU: methods x {loss, grad, loss+grad}, time and peak memory.")

    enum Defaults: ProblemDefaults {
        static let tokens = 1024, dim = 1024, vocab = 32768
        static let dtype = ElementType.bfloat16
    }

    @OptionGroup var problem: ProblemOptions<Defaults>
    @OptionGroup var engine: EngineOptions<StandardEngine>
    @Option(parsing: .unconditional, help: "Timed repeats per row (median reported).") var repeats = 3
    @Option(parsing: .unconditional, help: ArgumentHelp(
        "Passes over the whole set of rows, one after another (rows alternate).",
        discussion: "A row then reports the median of its rounds' medians, and each ratio of times the median of its per-round values (listed after it), so that a slow or fast spell of the machine falls on both sides of a ratio."))
    var rounds = 1
    @Option(help: "Comma-separated methods (default: all): \(Bench.allMethods.joined(separator: ","))")
    var methods: String?
    @Option(help: "Comma-separated kinds for the cce rows (default: all): loss,grad,loss+grad")
    var kinds: String?
    @Option(help: "cpu (this engine and the baselines), or cuda (the CUDA library, loaded at run time).")
    var backend = Backend.cpu
    @Option(help: "Path of libcce_cuda.so (default: $CCE_CUDA_LIBRARY, then beside cce).") var cudaLibrary: String?
    @Option(parsing: .unconditional, help: "LM-like data scale S (Docs/LMLIKE.md; 2 with --alpha 1: the flat set).") var scale = 4.0
    @Option(parsing: .unconditional, help: "LM-like data prior alpha.") var alpha = 1.5
    @Option(parsing: .unconditional, help: "Label smoothing alpha of the loss rows (cce and materialized), in [0, 1].")
    var labelSmoothing = 0.0
    @Flag(help: "Add a bias (normal, sigma 0.1, from the seed, as cce accuracy --bias) to the cce rows and the materialized baseline.")
    var bias = false
    @Option(help: "vocab or tokens: the cce step split over the ranks of mpirun (loss, loss+grad; Docs/SCALING.md).")
    var parallel: ParallelScheme?
    @Option(help: "Path of libcce_mpi.so (with --parallel under mpirun; default: $CCE_MPI_LIBRARY, then beside cce).")
    var mpiLibrary: String?
    @Flag(help: "Print the tile plan and progress.") var verbose = false
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard repeats >= 1 else { throw ValidationError("--repeats must be >= 1 (got \(repeats))") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be >= 1 (got \(rounds))") }
        guard scale > 0, scale.isFinite else { throw ValidationError("--scale must be finite and > 0 (got \(scale))") }
        guard alpha >= 0, alpha.isFinite else { throw ValidationError("--alpha must be finite and >= 0 (got \(alpha))") }
        if labelSmoothing != 0 && (backend == .cuda || parallel != nil) {
            throw ValidationError("--label-smoothing applies to the CPU rows of one process (not with --backend cuda or --parallel)")
        }
        if bias && (backend == .cuda || parallel != nil) {
            throw ValidationError("--bias applies to the CPU rows of one process (not with --backend cuda or --parallel)")
        }
    }

    func run() throws {
        if backend == .cuda { return try runCUDA() }
        if let parallel { return try runParallel(parallel) }
        let (tokens, dim, vocab, dtype) = (problem.tokens, problem.dim, problem.vocab, problem.dtype)
        var c = BenchConfig()
        c.tokens = tokens; c.dim = dim; c.vocab = vocab; c.dtype = dtype
        c.threads = engine.resolvedThreads; c.repeats = repeats; c.rounds = rounds; c.seed = problem.seed
        c.scale = scale; c.alpha = alpha; c.labelSmoothing = labelSmoothing; c.bias = bias
        c.methods = methods.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
        c.kinds = kinds.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
        c.verbose = verbose
        do { try Bench.validate(c) } catch { throw CLIError("\(error)") }
        let log: (String) -> Void = { s in
            if verbose || !json { FileHandle.standardError.write(Data((s + "\n").utf8)) }
        }
        let report = try Bench.run(c, log: log)
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(report), as: UTF8.self))
            return
        }
        print("machine: \(report.machine)")
        print("BLAS: \(report.blas)")
        print("toolchain: \(report.toolchain); SIMD: \(report.target_cpu_flags)")
        print("shape: N=\(tokens) D=\(dim) V=\(vocab) \(dtype.rawValue), LM-like S=\(scale) alpha=\(alpha), threads \(c.threads), repeats \(repeats)"
              + (rounds > 1 ? ", rounds \(rounds)" : "") + (labelSmoothing > 0 ? ", label smoothing \(labelSmoothing)" : "")
              + (bias ? ", bias" : ""))
        print("plan: \(report.plan)\n")
        print(pad("method", 14) + pad("kind", 10) + lpad("median s", 10) + lpad("min s", 10)
              + lpad("peak MB", 12) + lpad("GFLOP/s", 10))
        for r in report.rows {
            print(pad(r.method, 14) + pad(r.kind, 10) + lpad(String(format: "%.3f", r.median_seconds), 10)
                  + lpad(String(format: "%.3f", r.min_seconds), 10)
                  + lpad(String(format: "%.2f", Double(r.peak_bytes) / 1e6), 12)
                  + lpad(r.gflops.map { String(format: "%.1f", $0) } ?? "", 10))
        }
        if let perRound = report.row_rounds {
            print("\nmedian s per round:")
            for r in report.rows {
                let values = perRound["\(r.method) \(r.kind)"] ?? []
                print(pad(r.method, 14) + pad(r.kind, 10) + values.map { lpad(String(format: "%.3f", $0), 8) }.joined())
            }
        }
        if let f = report.filter { print("\ncce filtering: \(f)") }
        print(rounds > 1 ? "\nratios (of times: the median of the rounds', each round's after it):" : "\nratios:")
        for (k, v) in report.ratios.sorted(by: { $0.key < $1.key }) {
            let each = report.ratio_rounds?[k].map { "   [" + $0.map { String(format: "%.3f", $0) }.joined(separator: " ") + "]" } ?? ""
            print("  " + pad(k, 52) + String(format: " %.4f", v) + each)
        }
    }
}

extension BenchCommand {
    /// The CUDA engine on LM-like data: medians of `repeats` timed runs (CUDA events) of the
    /// forward, the backward and both, peak device memory beyond the inputs, tiles kept.
    func runCUDA() throws {
        let (tokens, dim, vocab, dtype) = (problem.tokens, problem.dim, problem.vocab, problem.dtype)
        guard repeats > 0, tokens > 0, dim > 0, vocab > 0 else { throw CLIError("sizes and --repeats must be positive") }
        let lib = try CUDALibrary.load(cudaLibrary)
        FileHandle.standardError.write(Data("generating LM-like data (S=\(scale), alpha=\(alpha))...\n".utf8))
        let data = LMLikeData.make(tokens: tokens, dim: dim, vocab: vocab, type: dtype, scale: scale, alpha: alpha, seed: problem.seed)
        var o = Options(); o.threads = engine.threads
        let r = try lib.run(embeddings: data.embeddings, classifier: data.classifier, targets: data.targets, bias: nil,
                            options: o, repeats: repeats)
        if json {
            let row: [String: Any] = [
                "backend": "cuda", "library": lib.path, "device": r.device, "tokens": tokens, "dim": dim, "vocab": vocab,
                "dtype": dtype.rawValue, "scale": scale, "alpha": alpha, "repeats": repeats, "loss": Double(r.loss[0]),
                "loss_ms": r.forwardMilliseconds, "grad_ms": r.backwardMilliseconds,
                "loss_grad_ms": r.lossAndGradientMilliseconds, "peak_device_mib": r.peakDeviceMiB, "tiles_kept": r.tilesKept,
            ]
            let data = try JSONSerialization.data(withJSONObject: row, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("device: \(r.device) (\(lib.path))")
        print("shape: N=\(tokens) D=\(dim) V=\(vocab) \(dtype.rawValue), LM-like S=\(scale) alpha=\(alpha), repeats \(repeats)\n")
        print(pad("kind", 12) + lpad("median ms", 12))
        print(pad("loss", 12) + lpad(String(format: "%.2f", r.forwardMilliseconds), 12))
        print(pad("grad", 12) + lpad(String(format: "%.2f", r.backwardMilliseconds), 12))
        print(pad("loss+grad", 12) + lpad(String(format: "%.2f", r.lossAndGradientMilliseconds), 12))
        print(String(format: "\nloss %.6f; peak device memory beyond the inputs %.1f MiB; backward tiles kept %.3f",
                     r.loss[0], r.peakDeviceMiB, r.tilesKept))
    }
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? " " + s : String(repeating: " ", count: n - s.count) + s }
