// The benchmark program behind `cce bench`: the shape of the paper's Table 1 on this CPU.
//
// Methods x kinds, each timed `repeats` times (median reported) on LM-like data
// (Docs/LMLIKE.md), with the peak extra memory of one run measured from the process:
//   sgemm         matmul     one OpenBLAS sgemm of the N x D by D x V product (the floor)
//   tile-swift    matmul     the same product by the Swift tile kernel, tile by tile, kept
//                            in a per-thread tile buffer (the kernel's GFLOP/s)
//   materialized  loss, loss+grad      logits in an N x V matrix (Materialized.swift)
//   cce           loss, grad, loss+grad  this engine, default mode; loss+grad writes into
//                                        gradient buffers kept across calls, as a training loop does
//   cce-alloc     loss+grad            the same with gradients returned in new arrays each call
//   cce-nofilter, cce-nosort            ablations: no gradient filtering / no vocabulary sort
//   cce-noestimate                      ablation: filtering without the dropped-mass estimate
//   cce-recompute                       ablation: the fused backward recomputes its tiles
//                                        instead of reading the forward's saved logits
//   cce-kahan                           the kahan mode (compensated gradient sums)
//   cce-openblas  loss, loss+grad      the engine with OpenBLAS tile products
//   cce-portable  loss, loss+grad      the engine with the portable Swift tile kernel
//   cce-avx512fma   loss, loss+grad    the engine with the 512-bit FMA kernels (where the CPU has AVX-512)
//   cce-avx512bf16  loss, loss+grad    the engine with the AVX512_BF16 dot-product kernel
//                                      (bf16 only, where the CPU has it)
// (cce itself runs the kernel chosen for this CPU: AMX tiles for bf16 where it has AMX-BF16.)
// Each cce row names the tile kernel it ran (`kernel`).
//   cce-exact     loss, loss+grad      Float64 accumulation, no filtering
//
// peak_bytes: VmHWM after − VmRSS before (MemoryProbe), minus the bytes of the gradients
// the call returns (dE, dC, dBias are outputs, like the loss; the issue's budget counts
// what the computation needs beyond inputs and outputs). output_bytes gives them.
// peak_bytes is the first call's (no warm-up: the code pages, thread stacks and heap arenas
// the first call touches count); later_peak_bytes is the largest of the later repeats' (the
// steady state of a training loop, and what a measurement after warm-up calls sees, as
// Benchmarks/scripts/pytorch_baseline.py's does). Both are in the JSON rows.
// Ratios are taken within one run, so machine noise affects both sides alike; with `rounds`
// the whole set is measured again and again (rows alternate), each ratio taken per round and
// its median reported, with every round's value in the JSON (`ratio_rounds`).

import CCEData
import CCEKernels
import CCERuntime
import COpenBLAS
import CutCrossEntropy
import Foundation

public struct BenchConfig: Sendable {
    public var tokens = 1024, dim = 1024, vocab = 32768
    public var dtype: ElementType = .bfloat16
    public var threads = Workers.availableCPUs
    public var repeats = 3
    /// Passes over the whole set of rows (each row `repeats` times a pass): rows report the
    /// median of their rounds' medians, ratios of times the median of their rounds' ratios.
    public var rounds = 1
    public var seed: UInt64 = 0
    /// The LM-like data's scale S and prior α (Docs/LMLIKE.md; S = 2, α = 1 is the flat set).
    public var scale = 4.0, alpha = 1.5
    /// Label smoothing α of the cce rows and the materialized baseline.
    public var labelSmoothing = 0.0
    /// A bias (LMLikeData.bias, as `cce accuracy --bias`) in the cce rows and the materialized
    /// baseline (the sgemm and tile-swift rows are the product alone).
    public var bias = false
    public var methods: [String]? = nil
    /// Kinds to run for the cce methods (default: all of loss, grad, loss+grad).
    public var kinds: [String]? = nil
    public var verbose = false
    public init() {}
}

public struct BenchRow: Codable, Sendable {
    public var method: String
    public var kind: String
    public var median_seconds: Double
    public var min_seconds: Double
    public var peak_bytes: Int
    /// The largest peak of repeats 2, 3, …, same definition (nil with one repeat).
    public var later_peak_bytes: Int?
    public var output_bytes: Int
    public var gflops: Double?
    public var loss: Double?
    public var note: String?
    /// The tile kernel of a cce row.
    public var kernel: String?
}

public struct BenchReport: Codable, Sendable {
    public var machine: String
    /// The BLAS behind the sgemm and materialized rows (OpenBLAS's kernel for this CPU).
    public var blas: String
    public var toolchain: String
    public var target_cpu_flags: String
    public var shape: Shape
    public struct Shape: Codable, Sendable {
        public var tokens, dim, vocab: Int; public var dtype: String
        /// The LM-like data's S and α (absent in reports from before they were settable).
        public var scale, alpha: Double?
        /// The label smoothing α of the loss rows (absent when 0, and in reports from before it was settable).
        public var label_smoothing: Double? = nil
        /// Whether the loss rows had a bias (absent without one).
        public var bias: Bool? = nil
    }
    public var threads: Int
    public var repeats: Int
    /// Passes over the set of rows (absent in reports from before there were rounds).
    public var rounds: Int?
    public var plan: String
    public var filter: String?
    public var rows: [BenchRow]
    /// A ratio of times is the median of the rounds' own (one round: that round's); a ratio of
    /// peaks is the rows' (the first call's peak, or the largest later one).
    public var ratios: [String: Double]
    /// With more than one round: each ratio of times per round, in round order.
    public var ratio_rounds: [String: [Double]]?
    /// With more than one round: each row's median seconds per round ("method kind").
    public var row_rounds: [String: [Double]]?
}

public enum BenchError: Error, CustomStringConvertible {
    case invalid(String)
    public var description: String { switch self { case .invalid(let s): s } }
}

public enum Bench {
    public static let allMethods = ["sgemm", "tile-swift", "materialized", "cce", "cce-alloc", "cce-nofilter",
                                    "cce-nosort", "cce-noestimate", "cce-recompute", "cce-kahan", "cce-openblas", "cce-exact", "cce-portable", "cce-avx512fma", "cce-avx512bf16"]

    /// Checks sizes before anything is allocated: positive, and small enough for memory.
    public static func validate(_ c: BenchConfig) throws {
        guard c.tokens > 0, c.dim > 0, c.vocab > 0 else {
            throw BenchError.invalid("sizes must be positive (tokens \(c.tokens), dim \(c.dim), vocab \(c.vocab))")
        }
        guard c.threads > 0, c.repeats > 0, c.rounds > 0 else {
            throw BenchError.invalid("threads, repeats and rounds must be positive")
        }
        if let k = c.kinds, let bad = k.first(where: { !["loss", "grad", "loss+grad"].contains($0) }) {
            throw BenchError.invalid("unknown kind '\(bad)'; kinds: loss, grad, loss+grad")
        }
        if let m = c.methods, let bad = m.first(where: { !allMethods.contains($0) }) {
            throw BenchError.invalid("unknown method '\(bad)'; methods: \(allMethods.joined(separator: ", "))")
        }
        if let m = c.methods, m.isEmpty { throw BenchError.invalid("--methods names no method") }
        guard c.labelSmoothing >= 0 && c.labelSmoothing <= 1 else {
            throw BenchError.invalid("--label-smoothing must be in [0, 1] (got \(c.labelSmoothing))")
        }
        if let k = c.kinds, k.isEmpty { throw BenchError.invalid("--kinds names no kind") }
        // The one memory check every command makes (MemoryCheck.swift).
        do {
            try MemoryCheck.require(estimatedBytes(c), for: "N = \(c.tokens), D = \(c.dim), V = \(c.vocab) (\(c.dtype.rawValue))")
        } catch let e as MemoryCheckError { throw BenchError.invalid(e.description) }
    }

    /// The run's estimated peak: the data, and the largest of its methods (each runs alone).
    public static func estimatedBytes(_ c: BenchConfig) -> Double {
        let (n, d, v) = (c.tokens, c.dim, c.vocab)
        let methods = c.methods ?? allMethods
        let perMethod = methods.map { m -> Double in
            switch m {
            case "sgemm", "materialized": return Footprint.materialized(tokens: n, dim: d, vocab: v)
            case "tile-swift": return Footprint.engine(tokens: n, dim: d, vocab: v, type: c.dtype, mode: .default)
            case "cce-exact": return Footprint.engine(tokens: n, dim: d, vocab: v, type: c.dtype, mode: .exact)
            case "cce-kahan": return Footprint.engine(tokens: n, dim: d, vocab: v, type: c.dtype, mode: .kahan)
            default: return Footprint.engine(tokens: n, dim: d, vocab: v, type: c.dtype, mode: .default)
            }
        }
        return max(Footprint.lmLikeData(tokens: n, dim: d, vocab: v, type: c.dtype),
                   Footprint.lmLikeDataKept(tokens: n, dim: d, vocab: v, type: c.dtype) + (perMethod.max() ?? 0))
    }

    public static func run(_ c: BenchConfig, log: (String) -> Void = { _ in }) throws -> BenchReport {
        try validate(c)
        let methods = c.methods ?? allMethods
        log("generating LM-like data N=\(c.tokens) D=\(c.dim) V=\(c.vocab) \(c.dtype.rawValue) S=\(c.scale) alpha=\(c.alpha)…")
        let data = LMLikeData.make(tokens: c.tokens, dim: c.dim, vocab: c.vocab, type: c.dtype, scale: c.scale,
                                   alpha: c.alpha, seed: c.seed)
        var opts = Options(); opts.threads = c.threads; opts.labelSmoothing = c.labelSmoothing
        let cce = CutCrossEntropy(options: opts)
        let plan = cce.plan(tokens: c.tokens, dim: c.dim, vocab: c.vocab, storage: c.dtype)
        log("tile plan: \(plan)")
        var rows: [BenchRow] = []
        var filterNote: String? = nil
        let flops = 2.0 * Double(c.tokens) * Double(c.dim) * Double(c.vocab)
        let e = data.embeddings, C = data.classifier, t = data.targets
        let B = c.bias ? LMLikeData.bias(vocab: c.vocab, type: c.dtype, seed: c.seed) : nil

        func time(_ method: String, _ kind: String, repeats: Int? = nil, note: String? = nil, kernel: String? = nil,
                  _ body: () throws -> (loss: Double?, outputBytes: Int)) rethrows {
            var times: [Double] = []
            var peak = 0, outBytes = 0, loss: Double? = nil, laterPeak: Int? = nil
            for r in 0..<(repeats ?? c.repeats) {
                // The call alone is timed, not the probe's heap trim and /proc reads around it.
                var seconds = 0.0
                let (res, grow) = try MemoryProbe.measure {
                    let start = DispatchTime.now().uptimeNanoseconds
                    defer { seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 }
                    return try body()
                }
                times.append(seconds)
                if r == 0 { peak = max(0, grow - res.outputBytes); outBytes = res.outputBytes; loss = res.loss }
                else { laterPeak = max(laterPeak ?? 0, max(0, grow - res.outputBytes)) }
            }
            let middle = median(times)
            let row = BenchRow(method: method, kind: kind, median_seconds: middle,
                               min_seconds: times.min()!, peak_bytes: peak, later_peak_bytes: laterPeak,
                               output_bytes: outBytes,
                               gflops: kind == "matmul" ? flops / middle * 1e-9 : nil,
                               loss: loss, note: note, kernel: kernel)
            log("  \(method) \(kind): " + String(format: "%.3f s, peak %.1f MB", row.median_seconds, Double(peak) / 1e6)
                + (row.gflops.map { String(format: ", %.1f GFLOP/s", $0) } ?? ""))
            rows.append(row)
        }

        func gradBytes(_ g: Gradients) -> Int { g.dE.byteCount + g.dC.byteCount + (g.dBias?.byteCount ?? 0) }

        /// One pass over the methods and kinds asked for, into `rows`. Each method's set-up
        /// (Float32 copies, sgemm's output, the kept gradient buffers) is made again every round,
        /// outside the timings, so that no method's large buffers live through another's rows.
        func measureRound() {
            if methods.contains("sgemm") {
                openblas_set_num_threads(Int32(c.threads))
                let e32 = e.floats(), c32 = C.floats()
                var out = [Float](repeating: 0, count: c.tokens * c.vocab)
                time("sgemm", "matmul", note: "OpenBLAS, Float32 (bf16/f16 inputs converted beforehand; output allocated beforehand)") {
                    out.withUnsafeMutableBufferPointer { o in
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(c.tokens), Int32(c.vocab),
                                    Int32(c.dim), 1, e32, Int32(c.dim), c32, Int32(c.dim), 0, o.baseAddress!,
                                    Int32(c.vocab))
                    }
                    return (nil, 0)
                }
            }
            if methods.contains("tile-swift") {
                let e32 = e.floats(), c32 = C.floats()
                time("tile-swift", "matmul", note: "Swift 6x16 packed tile kernel over the whole product, Float32") {
                    tileSweep(e32, c32, c, plan)
                    return (nil, 0)
                }
            }
            if methods.contains("materialized") {
                time("materialized", "loss") {
                    let r = try! Materialized.compute(embeddings: e, classifier: C, targets: t, bias: B, options: opts,
                                                      gradients: false)
                    return (r.loss, 0)
                }
                time("materialized", "loss+grad") {
                    let r = try! Materialized.compute(embeddings: e, classifier: C, targets: t, bias: B, options: opts)
                    return (r.loss, ((r.dE?.count ?? 0) + (r.dC?.count ?? 0) + (B == nil ? 0 : c.vocab)) * 4)
                }
            }
            func cceRows(_ name: String, _ o: Options, backend: TileBackend = .swiftSIMD, kernel: TileKernel? = nil,
                         kinds: [String], repeats: Int? = nil) {
                var engine = CutCrossEntropy(options: o)
                engine.tileBackend = backend
                engine.tileKernel = kernel
                let kernelName = backend == .openBLAS ? "openblas-sgemm"
                    : engine.tileKernel(embeddings: e.elementType, classifier: C.elementType).name
                func timeRow(_ method: String, _ kind: String, repeats: Int? = nil, note: String? = nil,
                             _ body: () throws -> (loss: Double?, outputBytes: Int)) rethrows {
                    try time(method, kind, repeats: repeats, note: note, kernel: kernelName, body)
                }
                let kinds = kinds.filter { c.kinds?.contains($0) ?? true }
                if backend == .openBLAS { openblas_set_num_threads(1) }
                if kinds.contains("loss") {
                    timeRow(name, "loss", repeats: repeats) {
                        (try! engine.forward(embeddings: e, classifier: C, targets: t, bias: B).loss, 0)
                    }
                }
                if kinds.contains("grad") {
                    let f = try! engine.forward(embeddings: e, classifier: C, targets: t, bias: B)
                    timeRow(name, "grad", repeats: repeats) {
                        let g = try! engine.backward(f, embeddings: e, classifier: C, bias: B)
                        return (nil, gradBytes(g))
                    }
                }
                if kinds.contains("loss+grad") && name == "cce" {
                    // Buffers a training loop keeps: allocated and faulted in before the timing.
                    var dE = [Float](repeating: 0, count: e.count), dC = [Float](repeating: 0, count: C.count)
                    var dBias = [Float](repeating: 0, count: B == nil ? 0 : c.vocab)
                    timeRow(name, "loss+grad", repeats: repeats, note: "gradients into buffers kept across calls") {
                        let (f, fs) = try! engine.lossAndGradients(embeddings: e, classifier: C, targets: t, bias: B,
                                                                   dE: &dE, dC: &dC, dBias: &dBias)
                        filterNote = String(format: "kept %.2f%% of row segments (%.2f%% not even recomputed); skipped %d of %d tiles; backward tiles of %d rows",
                                            100 * Double(fs.keptRowSegments) / Double(max(1, fs.rowSegments)),
                                            100 * Double(fs.boundSkippedRowSegments) / Double(max(1, fs.rowSegments)),
                                            fs.skippedTiles, fs.tiles, fs.tokenBlock)
                        return (f.loss, 0)
                    }
                } else if kinds.contains("loss+grad") {
                    timeRow(name, "loss+grad", repeats: repeats) {
                        let (f, g) = try! engine.lossAndGradients(embeddings: e, classifier: C, targets: t, bias: B)
                        return (f.loss, gradBytes(g))
                    }
                }
                openblas_set_num_threads(Int32(c.threads))
            }
            if methods.contains("cce") { cceRows("cce", opts, kinds: ["loss", "grad", "loss+grad"]) }
            if methods.contains("cce-alloc") { cceRows("cce-alloc", opts, kinds: ["loss+grad"]) }
            if let f = filterNote { log("  cce filter: \(f)") }
            if methods.contains("cce-nofilter") {
                var o = opts; o.filterEpsilon = .none
                cceRows("cce-nofilter", o, kinds: ["loss+grad"])
            }
            if methods.contains("cce-nosort") {
                var o = opts; o.sortVocabulary = false
                cceRows("cce-nosort", o, kinds: ["loss", "loss+grad"])
            }
            if methods.contains("cce-noestimate") {
                var o = opts; o.filterCorrection = false
                cceRows("cce-noestimate", o, kinds: ["loss+grad"])
            }
            if methods.contains("cce-recompute") {
                var o = opts; o.savedLogitsPerRow = 0
                cceRows("cce-recompute", o, kinds: ["loss+grad"])
            }
            if methods.contains("cce-kahan") {
                var o = opts; o.mode = .kahan
                cceRows("cce-kahan", o, kinds: ["loss+grad"])
            }
            if methods.contains("cce-openblas") { cceRows("cce-openblas", opts, backend: .openBLAS, kinds: ["loss", "loss+grad"]) }
            if methods.contains("cce-portable") { cceRows("cce-portable", opts, kernel: .portable, kinds: ["loss", "loss+grad"]) }
            if methods.contains("cce-avx512fma") {
                if TileKernel.avx512FMA.runs(c.dtype) {
                    cceRows("cce-avx512fma", opts, kernel: .avx512FMA, kinds: ["loss", "loss+grad"])
                } else {
                    log("  cce-avx512fma: skipped (needs AVX-512)")
                }
            }
            if methods.contains("cce-avx512bf16") {
                if TileKernel.avx512BF16.runs(c.dtype) {
                    cceRows("cce-avx512bf16", opts, kernel: .avx512BF16, kinds: ["loss", "loss+grad"])
                } else {
                    log("  cce-avx512bf16: skipped (needs AVX512_BF16 and bf16 inputs)")
                }
            }
            if methods.contains("cce-exact") {
                var o = opts; o.mode = .exact
                cceRows("cce-exact", o, kinds: ["loss", "loss+grad"], repeats: 1)
            }
        }
        // Rounds: the whole set again, so that a row and the rows it is compared with alternate
        // (loss, loss+grad, loss, loss+grad, … at one repeat a round) and a slow or fast spell
        // of the machine falls on both sides of a ratio.
        var perRound: [[BenchRow]] = []
        for r in 0..<c.rounds {
            if c.rounds > 1 { log("round \(r + 1) of \(c.rounds)") }
            rows = []
            measureRound()
            perRound.append(rows)
        }
        // A ratio of times is taken per round and its median reported; a ratio of peaks is the
        // combined rows' (the first call's peak, or the largest of every later call's).
        let combined = combine(perRound, flops: flops)
        var ratios = peakRatios(of: combined, c), ratioRounds: [String: [Double]] = [:]
        let roundRatios = perRound.map { timeRatios(of: $0, c) }
        for key in roundRatios[0].keys {
            let values = roundRatios.compactMap { $0[key] }
            ratios[key] = median(values)
            if c.rounds > 1 { ratioRounds[key] = values }
        }

        return BenchReport(
            machine: machineDescription(), blas: blasDescription(), toolchain: toolchain(), target_cpu_flags: simdFlags(),
            shape: BenchReport.Shape(tokens: c.tokens, dim: c.dim, vocab: c.vocab, dtype: c.dtype.rawValue,
                                     scale: c.scale, alpha: c.alpha,
                                     label_smoothing: c.labelSmoothing > 0 ? c.labelSmoothing : nil,
                                     bias: c.bias ? true : nil),
            threads: c.threads, repeats: c.repeats, rounds: c.rounds, plan: plan.description, filter: filterNote,
            rows: combined, ratios: ratios, ratio_rounds: c.rounds > 1 ? ratioRounds : nil,
            row_rounds: c.rounds > 1 ? rowRounds(perRound) : nil)
    }

    /// The ratios of times of one round's rows (each over medians of that round's repeats).
    static func timeRatios(of rows: [BenchRow], _ c: BenchConfig) -> [String: Double] {
        var ratios: [String: Double] = [:]
        func row(_ m: String, _ k: String) -> BenchRow? { rows.first { $0.method == m && $0.kind == k } }
        if let a = row("cce", "loss"), let b = row("sgemm", "matmul") {
            ratios["cce_loss_over_sgemm"] = a.median_seconds / b.median_seconds
        }
        if let a = row("cce", "loss+grad"), let b = row("materialized", "loss+grad") {
            ratios["cce_lossgrad_over_materialized_lossgrad"] = a.median_seconds / b.median_seconds
        }
        for other in ["cce-portable", "cce-avx512fma", "cce-avx512bf16"] {
            for kind in ["loss", "loss+grad"] {
                if let a = row("cce", kind), let b = row(other, kind) {
                    ratios["cce_\(kind == "loss" ? "loss" : "lossgrad")_over_\(other.replacingOccurrences(of: "-", with: "_"))"]
                        = a.median_seconds / b.median_seconds
                }
            }
        }
        if let a = row("cce", "loss+grad"), let b = row("cce", "loss") {
            ratios["cce_lossgrad_over_cce_loss"] = a.median_seconds / b.median_seconds
        }
        if let a = row("cce-alloc", "loss+grad"), let b = row("cce", "loss+grad") {
            ratios["cce_alloc_lossgrad_over_cce_lossgrad"] = a.median_seconds / b.median_seconds
        }
        if let a = row("cce", "loss+grad"), let b = row("cce-noestimate", "loss+grad") {
            ratios["cce_lossgrad_over_noestimate_lossgrad"] = a.median_seconds / b.median_seconds
        }
        if let a = row("cce", "loss+grad"), let b = row("cce-recompute", "loss+grad") {
            ratios["cce_lossgrad_over_recompute_lossgrad"] = a.median_seconds / b.median_seconds
        }
        if let a = row("cce-kahan", "loss+grad"), let b = row("cce", "loss+grad") {
            ratios["cce_kahan_lossgrad_over_cce_lossgrad"] = a.median_seconds / b.median_seconds
        }
        let anchorShape = c.tokens == 1024 && c.dim == 1024 && c.vocab == 128256 && c.dtype == .bfloat16 && c.threads == 2
        if let a = row("cce", "loss+grad"), anchorShape {
            ratios["cce_lossgrad_over_pytorch_best_cpu_anchor_2.477s"] = a.median_seconds / 2.477
        }
        if let a = row("tile-swift", "matmul"), let b = row("sgemm", "matmul"), let ga = a.gflops, let gb = b.gflops {
            ratios["tile_swift_gflops_over_sgemm"] = ga / gb
        }
        return ratios
    }

    /// The ratios of peaks: the cce loss+grad row's against the logits N·V·4 (and against the
    /// PyTorch anchor at its shape).
    static func peakRatios(of rows: [BenchRow], _ c: BenchConfig) -> [String: Double] {
        var ratios: [String: Double] = [:]
        guard let a = rows.first(where: { $0.method == "cce" && $0.kind == "loss+grad" }) else { return ratios }
        let logits = Double(c.tokens) * Double(c.vocab) * 4
        ratios["cce_lossgrad_peak_over_logits"] = Double(a.peak_bytes) / logits
        if let later = a.later_peak_bytes { ratios["cce_lossgrad_later_peak_over_logits"] = Double(later) / logits }
        if c.tokens == 1024, c.dim == 1024, c.vocab == 128256, c.dtype == .bfloat16, c.threads == 2 {
            let gradientBytes = (c.tokens + c.vocab) * c.dim * 4
            ratios["cce_lossgrad_peak_over_pytorch_anchor_552MB"] = Double(a.peak_bytes + gradientBytes) / 552e6
        }
        return ratios
    }

    /// Rows of every round in one: per method and kind (in the first round's order), the
    /// median of the rounds' medians, the least time of any call, the first round's first-call
    /// peak (no warm-up), and the largest peak of every later call as `later_peak_bytes`.
    static func combine(_ rounds: [[BenchRow]], flops: Double) -> [BenchRow] {
        guard var combined = rounds.first, rounds.count > 1 else { return rounds.first ?? [] }
        for (i, first) in combined.enumerated() {
            let same = rounds.compactMap { $0.first { $0.method == first.method && $0.kind == first.kind } }
            var row = first
            row.median_seconds = median(same.map(\.median_seconds))
            row.min_seconds = same.map(\.min_seconds).min() ?? first.min_seconds
            let later: [Int?] = [first.later_peak_bytes] + same.dropFirst().flatMap { [$0.peak_bytes, $0.later_peak_bytes] }
            row.later_peak_bytes = later.compactMap { $0 }.max()
            if first.gflops != nil { row.gflops = flops / row.median_seconds * 1e-9 }
            combined[i] = row
        }
        return combined
    }

    /// Per method and kind ("method kind"), each round's median seconds.
    static func rowRounds(_ rounds: [[BenchRow]]) -> [String: [Double]] {
        var out: [String: [Double]] = [:]
        for round in rounds { for row in round { out["\(row.method) \(row.kind)", default: []].append(row.median_seconds) } }
        return out
    }

    /// The median of `values` (the upper one of an even count, as the rows' medians are taken).
    static func median(_ values: [Double]) -> Double {
        let s = values.sorted()
        return s.isEmpty ? .nan : s[s.count / 2]
    }

    /// The whole N x V product by the Swift tile kernel, tile by tile, nothing stored:
    /// the engine's own packing (C panels per 16 rows) included.
    static func tileSweep(_ e: [Float], _ c: [Float], _ cfg: BenchConfig, _ plan: TilePlan) {
        let n = cfg.tokens, d = cfg.dim, v = cfg.vocab
        let nb = plan.tokenBlock, vb = plan.forwardVocabBlock
        let blocks = (n + nb - 1) / nb
        let workers = min(plan.threads, blocks)
        e.withUnsafeBufferPointer { ep in
            c.withUnsafeBufferPointer { cp in
                let eb = UncheckedSendable(ep.baseAddress!), cb = UncheckedSendable(cp.baseAddress!)
                Workers.run(workers) { w in
                    let tile = UnsafeMutablePointer<Float>.allocate(capacity: nb * vb)
                    let cPanel = UnsafeMutablePointer<Float>.allocate(capacity: TileShape.nr * TileShape.kc)
                    let aRows = UnsafeMutablePointer<UnsafePointer<Float>>.allocate(capacity: nb)
                    let bRows = UnsafeMutablePointer<UnsafeRawPointer>.allocate(capacity: vb)
                    defer { tile.deallocate(); cPanel.deallocate(); aRows.deallocate(); bRows.deallocate() }
                    var b = w
                    while b < blocks {
                        let r0 = b * nb, m = min(nb, n - r0)
                        for i in 0..<m { aRows[i] = UnsafePointer(eb.value + (r0 + i) * d) }
                        var v0 = 0
                        while v0 < v {
                            let vc = min(vb, v - v0)
                            for q in 0..<vc { bRows[q] = UnsafeRawPointer(cb.value + (v0 + q) * d) }
                            tileProduct(eRows: aRows, m: m, cRows: bRows, cType: .float32, n: vc, d: d,
                                        out: tile, ldo: vb, panel: cPanel)
                            v0 += vb
                        }
                        b += workers
                    }
                }
            }
        }
    }

    /// OpenBLAS's kernel for this CPU, e.g. "OpenBLAS SkylakeX". An OpenBLAS that does not
    /// know the CPU falls back to an older kernel: Debian 12's 0.3.21 picks Prescott (SSE3) on
    /// Xeons of the Sapphire Rapids generation and later, and Haswell (AVX2) on AMD's Zen 5
    /// (family 26), where its SkylakeX kernel ran sgemm 1.8 times as fast. The sgemm and
    /// materialized rows are then below the machine's rate, and OPENBLAS_CORETYPE fixes it.
    /// The description says so when it happens (`blasNote`), so that no ratio against those
    /// rows flatters the engine unnoticed.
    public static func blasDescription() -> String {
        let core = String(cString: openblas_get_corename())
        let flags = Set(simdFlags().split(separator: " ").map(String.init))
        return "OpenBLAS " + core + (blasNote(core: core, flags: flags).map { " (\($0))" } ?? "")
    }

    /// Why OpenBLAS's kernel `core` understates a CPU with these SIMD `flags` (as `simdFlags`
    /// names them), and the setting that fixes it; nil when the kernel uses the CPU's widest
    /// vectors (or the CPU is not one this can judge).
    public static func blasNote(core: String, flags: Set<String>) -> String? {
        let preAVX: Set<String> = ["Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Katmai",
                                   "Coppermine", "Northwood", "Banias"]
        let avx512: Set<String> = ["SkylakeX", "Cooperlake", "SapphireRapids"]
        let better = flags.contains("avx512f") ? "SkylakeX" : "Haswell"
        let fix = "the sgemm and materialized rows understate this machine; OPENBLAS_CORETYPE=\(better) gives them its vector units"
        if preAVX.contains(core), flags.contains("avx2") { return "a pre-AVX kernel on a CPU with AVX2: " + fix }
        if !avx512.contains(core), flags.contains("avx512f") { return "a kernel without AVX-512 on a CPU with it: " + fix }
        return nil
    }

    /// The CPU by name, family and model (virtual machines often show only "AMD EPYC"), the
    /// vector extensions the kernels choose by, the CPUs, memory and topology.
    public static func machineDescription() -> String {
        var model = "unknown CPU"
        var family = "?", number = "?", flags: Set<Substring> = []
        if let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) {
            func field(_ name: String) -> String? {
                s.split(separator: "\n").first(where: { $0.hasPrefix(name) })
                    .flatMap { $0.split(separator: ":", maxSplits: 1).last }
                    .map { $0.trimmingCharacters(in: .whitespaces) }
            }
            model = field("model name") ?? model
            family = field("cpu family") ?? family
            number = field("model\t") ?? field("model ") ?? number
            flags = Set((field("flags") ?? "").split(separator: " "))
        }
        let isa = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16"].filter { flags.contains(Substring($0)) }
        return "\(model) (family \(family) model \(number); \(isa.isEmpty ? "no AVX2" : isa.joined(separator: " "))), "
            + "\(Workers.availableCPUs) CPUs, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB; \(Topology.current)"
    }

    public static func toolchain() -> String {
        #if swift(>=6.3)
        return "Swift 6.3+, OpenBLAS \(openblasVersion())"
        #else
        return "Swift 6.x, OpenBLAS \(openblasVersion())"
        #endif
    }

    static func openblasVersion() -> String {
        guard let p = openblas_get_config() else { return "?" }
        return String(cString: p)
    }

    /// The vector extensions this CPU reports (what -target-cpu native compiled for).
    public static func simdFlags() -> String {
        guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return "?" }
        let want = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
        let have = Set(line.split(separator: " ").map(String.init))
        return want.filter { have.contains($0) }.joined(separator: " ")
    }
}

