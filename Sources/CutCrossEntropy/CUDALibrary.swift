// The optional CUDA engine (cuda/, built separately with nvcc), loaded at run time with
// dlopen, so this package builds and runs without CUDA. The C ABI is cuda/include/cce_cuda.h,
// imported as the module CCECUDAABI (its structs, enums and function types; nothing linked);
// this file uses its host-memory entry point `cce_host_run_weighted`, which copies the inputs to the
// GPU, runs the forward and the backward there, and copies loss, LSE and the gradients back as
// Float32. The CPU engine stays the numerical reference for it (`cce reference --backend
// cuda` + `cce compare`, Docs/CUDA.md).

import CCECUDAABI
import CCERuntime
#if canImport(Glibc)
import Glibc
#endif

/// A loaded libcce_cuda.so.
public final class CUDALibrary: @unchecked Sendable {
    /// Where it was loaded from.
    public let path: String
    private let handle: UnsafeMutableRawPointer
    // The symbols used, typed as cce_cuda.h declares them.
    private let hostRun: cce_host_run_weighted_fn
    private let defaultOptions: cce_default_options_fn
    private let lastError: cce_last_error_fn

    private init(path: String, handle: UnsafeMutableRawPointer, hostRun: cce_host_run_weighted_fn,
                 defaultOptions: cce_default_options_fn, lastError: cce_last_error_fn) {
        self.path = path; self.handle = handle; self.hostRun = hostRun
        self.defaultOptions = defaultOptions; self.lastError = lastError
    }

    /// Loads the library: from `path` when given, else $CCE_CUDA_LIBRARY, else
    /// libcce_cuda.so beside the running executable, else the dynamic loader's search path.
    public static func load(_ path: String? = nil) throws -> CUDALibrary {
        var candidates: [String] = []
        if let path { candidates = [path] } else {
            if let env = Environment.value("CCE_CUDA_LIBRARY"), !env.isEmpty { candidates.append(env) }
            if let exe = realpath("/proc/self/exe", nil) {   // beside the running executable
                let path = String(cString: exe)
                free(exe)
                candidates.append(path[..<(path.lastIndex(of: "/") ?? path.startIndex)] + "/libcce_cuda.so")
            }
            candidates.append("libcce_cuda.so")
        }
        var reasons: [String] = []
        for c in candidates {
            if c.contains("/") && !System.exists(c) { reasons.append("\(c): no such file"); continue }
            guard let h = dlopen(c, RTLD_NOW | RTLD_LOCAL) else {
                reasons.append(String(cString: dlerror()))
                continue
            }
            func sym<T>(_ name: String, _: T.Type) throws -> T {
                guard let s = dlsym(h, name) else {
                    throw CCEError.backendUnavailable("\(c) has no symbol \(name) (an older build of cuda/?)")
                }
                return unsafeBitCast(s, to: T.self)
            }
            return CUDALibrary(path: c, handle: h, hostRun: try sym("cce_host_run_weighted", cce_host_run_weighted_fn.self),
                               defaultOptions: try sym("cce_default_options", cce_default_options_fn.self),
                               lastError: try sym("cce_last_error", cce_last_error_fn.self))
        }
        throw CCEError.backendUnavailable("cannot load the CUDA library (build it with cuda/build.sh; pass --cuda-library or set CCE_CUDA_LIBRARY): "
                                          + reasons.joined(separator: "; "))
    }

    /// The results of one GPU run, indexed as the CPU engine indexes them, and its timings.
    public struct Result: Sendable {
        /// One value for mean and sum; one per target position for none (0 where no row is paired).
        public var loss: [Float]
        /// Per target position: the LSE of the paired row, NaN where no row is paired.
        public var lse: [Float]
        public var dE: [Float], dC: [Float], dBias: [Float]?
        public var forwardMilliseconds = 0.0, backwardMilliseconds = 0.0, lossAndGradientMilliseconds = 0.0
        /// Device memory beyond the inputs (outputs and workspaces), MiB.
        public var peakDeviceMiB = 0.0
        /// Fraction of backward tiles not skipped (−1 if unknown).
        public var tilesKept = -1.0
        public var device = ""
    }

    /// Loss, LSE and gradients on the GPU (gradients of the reduced loss; for none, of the sum).
    /// `repeats` > 0 also times the calls (medians, CUDA events). The GPU engine has one
    /// accumulation mode (Float32, with its own first-order estimate for skipped tiles):
    /// only `Mode.default` is accepted. E, C and the bias must share one element type.
    public func run(embeddings e: Tensor, classifier c: Tensor, targets: Targets, bias: Tensor?,
                    options o: Options, repeats: Int = 0) throws -> Result {
        try o.validate()
        guard o.mode == .default else {
            throw CCEError.invalidOption("the CUDA engine accumulates in Float32 only: mode \(o.mode.rawValue) is not available there (use the CPU engine)")
        }
        guard c.elementType == e.elementType, bias.map({ $0.elementType == e.elementType }) ?? true else {
            throw CCEError.invalidOption("the CUDA engine needs E, C and the bias in one element type (got \(e.elementType), \(c.elementType)\(bias.map { ", \($0.elementType)" } ?? ""))")
        }
        // Shapes and targets are checked by the CPU engine's validation.
        let p = try Problem(embeddings: e, classifier: c, targets: targets, bias: bias, options: o)
        let n = p.n, d = p.d, v = p.v
        let dtype: cce_dtype = switch e.elementType {
        case .float32: CCE_F32
        case .float16: CCE_F16
        case .bfloat16: CCE_BF16
        }
        let reduction: cce_reduction = switch o.reduction {
        case .none: CCE_REDUCE_NONE
        case .sum: CCE_REDUCE_SUM
        case .mean: CCE_REDUCE_MEAN
        }
        // The library's defaults first (lean memory layout, automatic chunks), then ours.
        var opt = cce_options()
        defaultOptions(&opt)
        opt.ignore_index = Int64(o.ignoreIndex)
        opt.reduction = Int32(reduction.rawValue)
        opt.shift = Int32(o.shift)
        opt.batch = Int64(e.shape.count == 3 ? e.shape[0] : 1)
        opt.softcap = Float(o.softcap ?? 0)
        opt.label_smoothing = Float(o.labelSmoothing)
        opt.z_loss = Float(o.zLoss)
        // The library takes the threshold resolved (cce_cuda.h), from the same policy as the
        // CPU engine: by type for .auto, 0 (no filtering) for none.
        let policy = BackwardPolicy(o, embeddings: p.eType, classifier: p.cType)
        opt.filter_eps = Float(policy.epsilon ?? 0)
        opt.sort_vocab = o.sortVocabulary ? 1 : 0   // the option itself: the library sorts by its own rule
        var report = cce_host_report()  // zeroed
        var r = Result(loss: [Float](repeating: .nan, count: o.reduction == .none ? n : 1),
                       lse: [Float](repeating: .nan, count: n), dE: [Float](repeating: .nan, count: n * d),
                       dC: [Float](repeating: .nan, count: v * d),
                       dBias: bias == nil ? nil : [Float](repeating: .nan, count: v))
        let t64 = targets.values.map { Int64($0) }
        var dBias = [Float](repeating: .nan, count: bias == nil ? 0 : v)
        let status = e.withRawPointer { ep in c.withRawPointer { cp in withOptionalRaw(bias) { bp in
            r.loss.withUnsafeMutableBufferPointer { lossP in r.lse.withUnsafeMutableBufferPointer { lseP in
            r.dE.withUnsafeMutableBufferPointer { dEP in r.dC.withUnsafeMutableBufferPointer { dCP in
            dBias.withUnsafeMutableBufferPointer { dbP in
                hostRun(ep, cp, bp, t64, Int64(n), Int64(d), Int64(v), Int32(dtype.rawValue),
                        o.classWeights, &opt,   // class weights, checked by Problem above (V values, finite, ≥ 0), or nil
                        lossP.baseAddress, lseP.baseAddress, dEP.baseAddress, dCP.baseAddress,
                        bias == nil ? nil : dbP.baseAddress, Int32(repeats), &report)
            }}}}}
        }}}
        guard status == 0 else {
            let msg = lastError().map { String(cString: $0) } ?? "status \(status)"
            throw CCEError.backendFailed("CUDA engine (\(path)): \(msg)")
        }
        if bias != nil { r.dBias = dBias }
        // The GPU reports loss (for none) and lse per row of E; the CPU engine per target
        // position. The pairing (shift, ignored targets) is the one Problem computed.
        let rowLoss = r.loss, rowLSE = r.lse
        r.lse = [Float](repeating: .nan, count: targets.count)
        if o.reduction == .none { r.loss = [Float](repeating: 0, count: targets.count) }
        for i in 0..<p.active {
            let row = Int(p.rows[i]), pos = Int(p.positions[i])
            r.lse[pos] = rowLSE[row]
            if o.reduction == .none { r.loss[pos] = rowLoss[row] }
        }
        r.forwardMilliseconds = report.forward_ms
        r.backwardMilliseconds = report.backward_ms
        r.lossAndGradientMilliseconds = report.loss_backward_ms
        r.peakDeviceMiB = report.peak_device_mib
        r.tilesKept = report.tiles_kept
        // char device_name[128], NUL-terminated
        r.device = withUnsafeBytes(of: report.device_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return r
    }
}

private func withOptionalRaw<R>(_ t: Tensor?, _ body: (UnsafeRawPointer?) -> R) -> R {
    guard let t else { return body(nil) }
    return t.withRawPointer { body($0) }
}
