// The C ABI of the CPU engine (libcce_cpu, header Sources/CCECPU/include/cce_cpu.h): the
// entry points that run the engine, exported with @_cdecl. Each one checks what C cannot
// (null pointers, sizes, codes), builds the Swift API's values (Tensor, Targets, Options),
// calls CutCrossEntropy, and writes the results into the caller's buffers, converting to
// the element type asked for. The Swift API validates exactly as it does for Swift callers;
// every CCEError becomes a status code (cce_cpu_status) and this thread's last-error message.
// Nothing is written to an output unless the whole call succeeded, except the fused call's
// F32 gradients, which the engine writes in place: an error found after the sweep (a NaN in
// unchecked inputs, an overflow) leaves partial values there (cce_cpu.h says so).
//
// Inputs are not copied: E, C and the bias become Tensors that borrow the caller's memory
// (`Tensor(borrowing:type:shape:)`) for the length of the call, and no Tensor outlives it
// (the backward's state keeps only shapes, types and the forward's O(N) output, and reads E,
// C and the bias again from the backward call's own pointers). A borrowed classifier's pages
// are not interleaved over NUMA nodes (the caller's memory policy is left as it is).
// Gradients of the fused call are written by the engine straight into the caller's Float32
// buffers; other output types go through a Float32 scratch that is kept for the next call
// (`GradientScratch`) and converted once. Docs/PYTHON.md ("What the binding costs") measures
// what this saves at the Gemma 2 shape.

import CCECPU
import CCEKernels
import CCERuntime
import CutCrossEntropy
import Dispatch
import Synchronization

// MARK: - Errors and status codes

/// A problem the C layer finds before the Swift API sees the call.
struct ArgumentError: Error {
    let message: String
    let status: cce_cpu_status
    init(_ message: String, _ status: cce_cpu_status = CCE_CPU_ERR_ARGUMENT) { self.message = message; self.status = status }
}

/// The status code of a CCEError case.
func statusCode(_ error: CCEError) -> cce_cpu_status {
    switch error {
    case .invalidShape: CCE_CPU_ERR_SHAPE
    case .empty: CCE_CPU_ERR_EMPTY
    case .targetOutOfRange: CCE_CPU_ERR_TARGET
    case .nonFinite: CCE_CPU_ERR_NON_FINITE
    case .invalidOption: CCE_CPU_ERR_OPTION
    case .invalidUpstream: CCE_CPU_ERR_UPSTREAM
    case .stateMismatch: CCE_CPU_ERR_STATE
    case .backendUnavailable, .backendFailed: CCE_CPU_ERR_BACKEND
    case .overflow: CCE_CPU_ERR_OVERFLOW
    }
}

/// Runs `body`, turning any error into a status code and this thread's last-error message.
func guarded(_ body: () throws -> Void) -> Int32 {
    let status: cce_cpu_status
    let message: String
    do {
        try body()
        status = CCE_CPU_OK; message = ""
    } catch let e as CCEError {
        status = statusCode(e); message = e.description
    } catch let e as ArgumentError {
        status = e.status; message = e.message
    } catch {
        status = CCE_CPU_ERR_INTERNAL; message = "internal error: \(error)"
    }
    cce_cpu_set_last_error_(message)
    return Int32(bitPattern: status.rawValue)
}

// MARK: - Inputs

/// Sizes and how E and the targets are shaped: (B, T, D) and (B, T) when batch > 1, else (N, D) and (N).
struct Shapes {
    let n: Int, d: Int, v: Int, batch: Int
    var e: [Int] { batch > 1 ? [batch, n / batch, d] : [n, d] }
    var targets: [Int] { batch > 1 ? [batch, n / batch] : [n] }

    init(n: Int64, d: Int64, v: Int64, batch: Int64) throws {
        guard n >= 0, d >= 0, v >= 0 else { throw ArgumentError("sizes must be >= 0 (N = \(n), D = \(d), V = \(v))") }
        guard !n.multipliedReportingOverflow(by: max(d, 1)).overflow, !v.multipliedReportingOverflow(by: max(d, 1)).overflow,
              n * max(d, 1) < Int64(Int.max / 8), v * max(d, 1) < Int64(Int.max / 8)
        else { throw ArgumentError("sizes overflow (N = \(n), D = \(d), V = \(v))") }
        let b = batch <= 0 ? 1 : batch
        guard b == 1 || n % b == 0 else {
            throw ArgumentError("N = \(n) rows are not batch = \(b) sequences of equal length")
        }
        self.n = Int(n); self.d = Int(d); self.v = Int(v); self.batch = Int(b)
    }
}

func inputType(_ code: Int32, _ name: String) throws -> ElementType {
    switch code {
    case Int32(CCE_CPU_F32.rawValue): return .float32
    case Int32(CCE_CPU_F16.rawValue): return .float16
    case Int32(CCE_CPU_BF16.rawValue): return .bfloat16
    default: throw ArgumentError("\(name) element type \(code) is not CCE_CPU_F32 (0), CCE_CPU_F16 (1) or CCE_CPU_BF16 (2)")
    }
}

/// A Tensor of `count(shape)` elements of `type` at `p`, borrowing the caller's memory (valid
/// for this C call only: the Tensor must not outlive it). A pointer not aligned to the element
/// size (which a C caller may pass) is copied into an owned Tensor instead.
func tensor(_ p: UnsafeRawPointer?, _ type: ElementType, _ shape: [Int], _ name: String) throws -> Tensor {
    let count = shape.reduce(1, *)
    guard let p else {
        guard count == 0 else { throw ArgumentError("\(name) is NULL") }
        return try Tensor([Float](), shape: shape)
    }
    if Int(bitPattern: p) % type.size == 0 { return try Tensor(borrowing: p, type: type, shape: shape) }
    let bytes = UnsafeRawBufferPointer(start: p, count: count * type.size)
    func copy<T>(_: T.Type) -> [T] {
        [T](unsafeUninitializedCapacity: count) { b, n in UnsafeMutableRawBufferPointer(b).copyMemory(from: bytes); n = count }
    }
    switch type {
    case .float32: return try Tensor(copy(Float.self), shape: shape)
    case .float16: return try Tensor(copy(Float16.self), shape: shape)
    case .bfloat16: return try Tensor(copy(BFloat16.self), shape: shape)
    }
}

func targets(_ p: UnsafePointer<Int64>?, _ shapes: Shapes) throws -> Targets {
    guard let p else {
        guard shapes.n == 0 else { throw ArgumentError("targets is NULL") }
        return try Targets([Int](), shape: shapes.targets)
    }
    return try Targets(UnsafeBufferPointer(start: p, count: shapes.n).map { Int($0) }, shape: shapes.targets)
}

/// The Swift API's options from the C struct (defaults when NULL) and the class weights.
func options(_ p: UnsafePointer<cce_cpu_options>?, weight: UnsafePointer<Float>?, v: Int) throws -> Options {
    var c = cce_cpu_options()
    cce_cpu_default_options(&c)
    if let p { c = p.pointee }
    var o = Options()
    o.ignoreIndex = Int(c.ignore_index)
    switch c.reduction {
    case Int32(CCE_CPU_REDUCE_NONE.rawValue): o.reduction = .none
    case Int32(CCE_CPU_REDUCE_SUM.rawValue): o.reduction = .sum
    case Int32(CCE_CPU_REDUCE_MEAN.rawValue): o.reduction = .mean
    default: throw CCEError.invalidOption("reduction \(c.reduction) is not NONE (0), SUM (1) or MEAN (2)")
    }
    o.shift = Int(c.shift)
    o.softcap = c.softcap == 0 ? nil : c.softcap
    o.labelSmoothing = c.label_smoothing
    o.zLoss = c.z_loss
    switch c.filter_eps_mode {
    case Int32(CCE_CPU_EPS_AUTO.rawValue): o.filterEpsilon = .auto
    case Int32(CCE_CPU_EPS_NONE.rawValue): o.filterEpsilon = .none
    case Int32(CCE_CPU_EPS_VALUE.rawValue): o.filterEpsilon = .value(c.filter_eps)
    default: throw CCEError.invalidOption("filter_eps_mode \(c.filter_eps_mode) is not AUTO (0), NONE (1) or VALUE (2)")
    }
    o.sortVocabulary = c.sort_vocab != 0
    o.filterCorrection = c.filter_correction != 0
    let modes: [Mode] = [.default, .kahan, .kahanFullE, .kahanFullC, .exact]
    guard c.mode >= 0 && Int(c.mode) < modes.count else {
        throw CCEError.invalidOption("mode \(c.mode) is not DEFAULT (0), KAHAN (1), KAHAN_FULL_E (2), KAHAN_FULL_C (3) or EXACT (4)")
    }
    o.mode = modes[Int(c.mode)]
    o.threads = c.threads == 0 ? nil : Int(c.threads)
    o.checkFinite = c.check_finite != 0
    o.savedLogitsPerRow = Int(c.saved_logits_per_row)
    if let weight { o.classWeights = Array(UnsafeBufferPointer(start: weight, count: v)) }
    return o
}

/// The upstream gradient: one value (SUM, MEAN) or one per target position (NONE); NULL: ones.
/// Float (cce_cpu_backward) or Double (the _f64 entry points) values, widened exactly.
func upstream<G: BinaryFloatingPoint>(_ p: UnsafePointer<G>?, reduction: Reduction, positions: Int) -> Upstream {
    if reduction == .none {
        return .perTokenDouble(p.map { UnsafeBufferPointer(start: $0, count: positions).map { Double($0) } }
                               ?? [Double](repeating: 1, count: positions))
    }
    return .scalar(Double(p?.pointee ?? 1))
}

// MARK: - Outputs

/// An output element type (cce_cpu_dtype, F64 included).
enum OutputType {
    case float32, float16, bfloat16, float64

    /// Bytes per element.
    var size: Int { switch self { case .float16, .bfloat16: 2; case .float32: 4; case .float64: 8 } }

    init(_ code: Int32, _ name: String) throws {
        switch code {
        case Int32(CCE_CPU_F32.rawValue): self = .float32
        case Int32(CCE_CPU_F16.rawValue): self = .float16
        case Int32(CCE_CPU_BF16.rawValue): self = .bfloat16
        case Int32(CCE_CPU_F64.rawValue): self = .float64
        default: throw ArgumentError("\(name) type \(code) is not CCE_CPU_F32 (0), CCE_CPU_F16 (1), CCE_CPU_BF16 (2) or CCE_CPU_F64 (3)")
        }
    }
}

/// The gradient buffers a call writes, with their types, checked before the engine runs.
struct GradientTargets {
    let dE: UnsafeMutableRawPointer?, dC: UnsafeMutableRawPointer?, dBias: UnsafeMutableRawPointer?
    let eType: OutputType, cType: OutputType, biasType: OutputType
    let stats: UnsafeMutablePointer<Int64>?

    init(dE: UnsafeMutableRawPointer?, dC: UnsafeMutableRawPointer?, dBias: UnsafeMutableRawPointer?,
         types: (Int32, Int32, Int32), hasBias: Bool, stats: UnsafeMutablePointer<Int64>?) throws {
        self.dE = dE; self.dC = dC; self.dBias = dBias; self.stats = stats
        eType = dE == nil ? .float32 : try OutputType(types.0, "dE")
        cType = dC == nil ? .float32 : try OutputType(types.1, "dC")
        biasType = dBias == nil ? .float32 : try OutputType(types.2, "dbias")
        if dBias != nil && !hasBias { throw ArgumentError("dbias asked for without a bias (pass a bias of zeros)") }
    }

    func write(_ g: Gradients, threads: Int) {
        if let dE { store(g.dE, dE, eType, threads: threads) }
        if let dC { store(g.dC, dC, cType, threads: threads) }
        if let dBias, let b = g.dBias { store(b, dBias, biasType, threads: threads) }
        write(g.filter)
    }

    func write(_ f: FilterStatistics) {
        if let stats {
            for (k, x) in [f.tiles, f.skippedTiles, f.rowSegments, f.keptRowSegments, f.boundSkippedRowSegments].enumerated() {
                stats[k] = Int64(x)
            }
        }
    }
}

/// Float32 memory for the gradients the engine cannot write into the caller's buffers (those
/// asked for in F16, BF16 or F64, and those not asked for), kept from one call to the next: at
/// V = 128256, D = 1024 dC alone is 525 MB (128 K pages of 4 KiB), which a new buffer would
/// page-fault in on every call. A new buffer is a mapping of zeros (`Placement.mapZeros`) whose
/// pages take memory only once written, and a call writes only the dC rows of the classes some
/// token keeps (28% of them at N = 1024 on LM-like data): the buffer holds the rows the calls
/// have written so far, not V x D. (Giving back after each call the rows it did not write
/// cost 7% a call with new batches each call, in page faults: Docs/PYTHON.md.) One buffer is
/// kept (the largest given back); a call takes it when it is large enough, else maps its own,
/// so concurrent calls never share one. `cce_cpu_release_scratch` unmaps the kept buffer:
/// called between a caller's steps, it holds no memory between them, and each call pays the
/// page faults of the rows it writes.
final class GradientScratch: @unchecked Sendable {
    let base: UnsafeMutablePointer<Float>
    let capacity: Int
    /// Whether every value is zero (a new buffer, or after a call that succeeded). Only the
    /// call holding the buffer (between take and give) reads or changes it.
    var clean = true

    /// Whether `base` is a `Placement.mapZeros` mapping (else allocated and zeroed).
    private let mapped: Bool

    init(capacity: Int) {
        self.capacity = max(capacity, 1)
        let bytes = self.capacity * MemoryLayout<Float>.size
        if let p = Placement.mapZeros(bytes: bytes) {
            base = p.bindMemory(to: Float.self, capacity: self.capacity)
            mapped = true
        } else {
            base = .allocate(capacity: self.capacity)
            base.initialize(repeating: 0, count: self.capacity)
            mapped = false
        }
    }

    deinit {
        if mapped { Placement.unmap(base, bytes: capacity * MemoryLayout<Float>.size) } else { base.deallocate() }
    }

    /// All zeros again after a call that failed (a mapping's pages given back).
    func drop() {
        if mapped {
            Placement.dropPages(base, bytes: capacity * MemoryLayout<Float>.size)
        } else {
            base.update(repeating: 0, count: capacity)
        }
        clean = true
    }

    static let kept = Mutex<GradientScratch?>(nil)

    /// The kept buffer when it holds `count` floats, else a new one.
    static func take(_ count: Int) -> GradientScratch {
        let cached: GradientScratch? = kept.withLock { k in
            guard let s = k, s.capacity >= count else { return nil }
            k = nil
            return s
        }
        return cached ?? GradientScratch(capacity: count)
    }

    /// Keeps `s` for the next call unless the kept buffer is at least as large.
    static func give(_ s: GradientScratch) {
        let dropped: GradientScratch? = kept.withLock { k in
            if let current = k, current.capacity >= s.capacity { return s }
            let previous = k
            k = s
            return previous
        }
        _ = dropped   // freed here, outside the lock
    }

    /// Frees the kept buffer; returns its size in bytes (0 when none was kept).
    static func release() -> Int {
        let dropped: GradientScratch? = kept.withLock { k in
            let previous = k
            k = nil
            return previous
        }
        return (dropped?.capacity ?? 0) * MemoryLayout<Float>.size
    }
}

/// The fused call (not the exact mode) with the gradients written by the engine: into the
/// caller's buffers where they are Float32, else into the kept Float32 scratch, converted into
/// the caller's buffers (in their types) only once the call has succeeded.
///
/// The kept scratch is left all zeros after a successful call (`GradientScratch.clean`), so
/// the next call's dC needs no zeroing pass: the engine flags the dC rows it writes
/// (GradientDestination.touchedRows), and only those rows are converted and zeroed again;
/// the caller's other dC rows get zeros without the scratch being read. At N = 1024 and
/// V = 128256 (LM-like data) 28% of dC's rows were written.
func fusedIntoBuffers(_ engine: CutCrossEntropy, _ E: Tensor, _ C: Tensor, _ B: Tensor?, _ T: Targets,
                      _ up: Upstream, _ shapes: Shapes, _ out: GradientTargets, threads: Int) throws -> ForwardOutput {
    try fusedIntoBuffers(shapes, rows: shapes.v, hasBias: B != nil, out, threads: threads) { destination in
        try engine.lossAndGradients(embeddings: E, classifier: C, targets: T, bias: B, upstream: up,
                                    writingTo: destination)
    }
}

/// The same for any fused call `run` that writes into a GradientDestination: dE of N x D, dC
/// of `rows` x D and dBias of `rows` (a vocabulary shard's rows: ShardCABI.swift).
func fusedIntoBuffers(_ shapes: Shapes, rows: Int, hasBias: Bool, _ out: GradientTargets, threads: Int,
                      _ run: (GradientDestination) throws -> (ForwardOutput, FilterStatistics)) throws -> ForwardOutput {
    let sizes = [shapes.n * shapes.d, rows * shapes.d, hasBias ? rows : 0]
    let callers = [out.dE, out.dC, out.dBias]
    let types = [out.eType, out.cType, out.biasType]
    let direct = (0..<3).map { callers[$0] != nil && types[$0] == .float32 }
    var offsets = [0, 0, 0], total = 0
    for k in 0..<3 where !direct[k] { offsets[k] = total; total += sizes[k] }
    let scratch = GradientScratch.take(total)
    defer { GradientScratch.give(scratch) }
    func buffer(_ k: Int) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: direct[k] ? callers[k]!.assumingMemoryBound(to: Float.self) : scratch.base + offsets[k],
                                   count: sizes[k])
    }
    var destination = GradientDestination(dE: buffer(0), dC: buffer(1), dBias: hasBias ? buffer(2) : nil)
    if !scratch.clean { scratch.drop() }   // a call failed with it
    scratch.clean = false   // until it has been zeroed again below
    // dC in the scratch (all zeros now): only the rows the engine writes need touching.
    let touched: UnsafeMutablePointer<Bool>? = direct[1] ? nil : .allocate(capacity: max(rows, 1))
    touched?.initialize(repeating: false, count: rows)
    defer { touched?.deallocate() }
    destination.dCIsZero = touched != nil
    destination.touchedRows = touched
    let (f, stats) = try run(destination)
    for k in 0..<3 where !direct[k] && sizes[k] > 0 {
        let src = scratch.base + offsets[k]
        if let dst = callers[k] { Placement.adviseHugePages(dst, bytes: sizes[k] * types[k].size) }   // often new
        if k == 1, let touched {
            // Row by row: written rows converted and zeroed, the others written as zeros.
            let d = shapes.d
            parallel(count: rows, threads: threads, grain: 1 << 8) { lo, hi in
                for row in lo..<hi {
                    if touched[row] {
                        if let dst = callers[k] { convert(src + row * d, dst, at: row * d, count: d, types[k]) }
                        (src + row * d).update(repeating: 0, count: d)
                    } else if let dst = callers[k] {
                        (dst + row * d * types[k].size).initializeMemory(as: UInt8.self, repeating: 0,
                                                                         count: d * types[k].size)
                    }
                }
            }
        } else {
            parallel(count: sizes[k], threads: threads) { lo, hi in
                if let dst = callers[k] { convert(src + lo, dst, at: lo, count: hi - lo, types[k]) }
                (src + lo).update(repeating: 0, count: hi - lo)
            }
        }
    }
    scratch.clean = true
    out.write(stats)
    return f
}

/// Writes `values` to `out` as `type`, split over `threads` threads (these are V x D arrays:
/// 131M elements at the Gemma 2 shape), eight elements at a time.
func store(_ values: Values, _ out: UnsafeMutableRawPointer, _ type: OutputType, threads: Int) {
    Placement.adviseHugePages(out, bytes: values.count * type.size)   // the caller's tensor is often new
    switch values {
    case .float32(let x):
        x.withUnsafeBufferPointer { src in
            parallel(count: src.count, threads: threads) { lo, hi in
                convert(src.baseAddress! + lo, out, at: lo, count: hi - lo, type)
            }
        }
    case .float64(let x):
        x.withUnsafeBufferPointer { src in
            parallel(count: src.count, threads: threads) { lo, hi in
                convert(src.baseAddress! + lo, out, at: lo, count: hi - lo, type)
            }
        }
    }
}

/// body(lo, hi) over contiguous ranges covering 0 ..< count, one per thread (one range when small).
/// `grain`: the count below which one range is used.
func parallel(count: Int, threads: Int, grain: Int = 1 << 18, _ body: (Int, Int) -> Void) {
    let parts = count < grain ? 1 : max(1, threads)
    guard parts > 1 else { if count > 0 { body(0, count) }; return }
    let per = (count + parts - 1) / parts
    withoutActuallyEscaping(body) { body in
        nonisolated(unsafe) let body = body
        DispatchQueue.concurrentPerform(iterations: parts) { w in
            let lo = min(count, w * per), hi = min(count, lo + per)
            if hi > lo { body(lo, hi) }
        }
    }
}

/// out[at ..< at + count] (as `type`) = src[0 ..< count].
@inline(__always)
func convert(_ src: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer, at: Int, count: Int, _ type: OutputType) {
    let c8 = count & ~7
    switch type {
    case .float32:
        (out.assumingMemoryBound(to: Float.self) + at).update(from: src, count: count)
    case .float64:
        let o = out.assumingMemoryBound(to: Double.self) + at
        for i in 0..<count { o[i] = Double(src[i]) }
    case .float16:
        let o = out.assumingMemoryBound(to: Float16.self) + at
        var i = 0
        while i < c8 {
            let v = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(o + i).storeBytes(of: SIMD8<Float16>(v), as: SIMD8<Float16>.self)
            i += 8
        }
        while i < count { o[i] = Float16(src[i]); i += 1 }
    case .bfloat16:
        let o = out.assumingMemoryBound(to: UInt16.self) + at
        var i = 0
        while i < c8 {
            let v = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(o + i).storeBytes(of: bfloat16x8(v), as: SIMD8<UInt16>.self)
            i += 8
        }
        while i < count { o[i] = bfloat16Bits(src[i]); i += 1 }
    }
}

@inline(__always)
func convert(_ src: UnsafePointer<Double>, _ out: UnsafeMutableRawPointer, at: Int, count: Int, _ type: OutputType) {
    switch type {
    case .float64: (out.assumingMemoryBound(to: Double.self) + at).update(from: src, count: count)
    case .float32: let o = out.assumingMemoryBound(to: Float.self) + at; for i in 0..<count { o[i] = Float(src[i]) }
    case .float16: let o = out.assumingMemoryBound(to: Float16.self) + at; for i in 0..<count { o[i] = Float16(src[i]) }
    case .bfloat16:
        let o = out.assumingMemoryBound(to: UInt16.self) + at
        for i in 0..<count { o[i] = bfloat16Bits(Float(src[i])) }
    }
}

/// bfloat16Bits of eight values: round to nearest even, NaN to the quiet NaN 0x7FC0.
@inline(__always)
func bfloat16x8(_ x: SIMD8<Float>) -> SIMD8<UInt16> {
    let u = unsafeBitCast(x, to: SIMD8<UInt32>.self)
    var rounded = u &+ 0x7FFF &+ ((u &>> 16) & 1)
    rounded.replace(with: 0x7FC0_0000, where: x .!= x)
    return SIMD8<UInt16>(truncatingIfNeeded: rounded &>> 16)
}

/// Loss (1 value, or one per target position for NONE) and LSE per target position.
func writeForward(_ f: ForwardOutput, reduction: Reduction, loss: UnsafeMutablePointer<Double>?,
                  lse: UnsafeMutablePointer<Double>?) {
    if let loss {
        if reduction == .none { for i in 0..<f.tokenLosses.count { loss[i] = f.tokenLosses[i] } }
        else { loss.pointee = f.loss }
    }
    if let lse { for i in 0..<f.lse.count { lse[i] = f.lse[i] } }
}

// MARK: - The forward's state

/// What cce_cpu_backward needs: the forward's output (O(N)), the engine value, and the
/// inputs' shapes and types (to read E, C and the bias again).
final class SavedForward {
    let forward: ForwardOutput
    let engine: CutCrossEntropy
    let shapes: Shapes
    let eType: ElementType, cType: ElementType, biasType: ElementType?
    let reduction: Reduction
    let threads: Int

    init(_ forward: ForwardOutput, _ engine: CutCrossEntropy, _ shapes: Shapes, _ eType: ElementType,
         _ cType: ElementType, _ biasType: ElementType?) {
        self.forward = forward; self.engine = engine; self.shapes = shapes
        self.eType = eType; self.cType = cType; self.biasType = biasType
        reduction = engine.options.reduction
        threads = engine.options.threads ?? Workers.availableCPUs
    }
}

// MARK: - Entry points

@_cdecl("cce_cpu_forward")
public func cceCPUForward(
    _ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?, _ targetIDs: UnsafePointer<Int64>?,
    _ n: Int64, _ d: Int64, _ v: Int64, _ eCode: Int32, _ cCode: Int32, _ biasCode: Int32,
    _ weight: UnsafePointer<Float>?, _ opt: UnsafePointer<cce_cpu_options>?,
    _ loss: UnsafeMutablePointer<Double>?, _ lse: UnsafeMutablePointer<Double>?,
    _ state: UnsafeMutablePointer<OpaquePointer?>?
) -> Int32 {
    guarded {
        let shapes = try Shapes(n: n, d: d, v: v, batch: opt?.pointee.batch ?? 1)
        let o = try options(opt, weight: weight, v: shapes.v)
        let eType = try inputType(eCode, "E"), cType = try inputType(cCode, "C")
        let biasType = bias == nil ? nil : try inputType(biasCode, "bias")
        let E = try tensor(e, eType, shapes.e, "E"), C = try tensor(c, cType, [shapes.v, shapes.d], "C")
        let B = try biasType.map { try tensor(bias, $0, [shapes.v], "bias") }
        let T = try targets(targetIDs, shapes)
        let engine = CutCrossEntropy(options: o)
        let f = try engine.forward(embeddings: E, classifier: C, targets: T, bias: B)
        writeForward(f, reduction: o.reduction, loss: loss, lse: lse)
        if let state {
            let saved = SavedForward(f, engine, shapes, eType, cType, biasType)
            state.pointee = OpaquePointer(Unmanaged.passRetained(saved).toOpaque())
        }
    }
}

func backwardCall<G: BinaryFloatingPoint>(
    _ state: OpaquePointer?, _ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?,
    _ gradLoss: UnsafePointer<G>?, _ dE: UnsafeMutableRawPointer?, _ dC: UnsafeMutableRawPointer?,
    _ dBias: UnsafeMutableRawPointer?, _ dECode: Int32, _ dCCode: Int32, _ dBiasCode: Int32,
    _ stats: UnsafeMutablePointer<Int64>?
) -> Int32 {
    guarded {
        guard let state else { throw ArgumentError("state is NULL (pass the state cce_cpu_forward returned)") }
        let saved = Unmanaged<SavedForward>.fromOpaque(UnsafeRawPointer(state)).takeUnretainedValue()
        guard (bias == nil) == (saved.biasType == nil) else {
            throw CCEError.stateMismatch(bias == nil ? "the forward had a bias, this call has none" : "the forward had no bias, this call has one")
        }
        let out = try GradientTargets(dE: dE, dC: dC, dBias: dBias, types: (dECode, dCCode, dBiasCode),
                                      hasBias: bias != nil, stats: stats)
        let s = saved.shapes
        let E = try tensor(e, saved.eType, s.e, "E"), C = try tensor(c, saved.cType, [s.v, s.d], "C")
        let B = try saved.biasType.map { try tensor(bias, $0, [s.v], "bias") }
        let g = try saved.engine.backward(saved.forward, embeddings: E, classifier: C, bias: B,
                                          upstream: upstream(gradLoss, reduction: saved.reduction, positions: s.n))
        out.write(g, threads: saved.threads)
    }
}

@_cdecl("cce_cpu_backward")
public func cceCPUBackward(
    _ state: OpaquePointer?, _ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?,
    _ gradLoss: UnsafePointer<Float>?, _ dE: UnsafeMutableRawPointer?, _ dC: UnsafeMutableRawPointer?,
    _ dBias: UnsafeMutableRawPointer?, _ dECode: Int32, _ dCCode: Int32, _ dBiasCode: Int32,
    _ stats: UnsafeMutablePointer<Int64>?
) -> Int32 {
    backwardCall(state, e, c, bias, gradLoss, dE, dC, dBias, dECode, dCCode, dBiasCode, stats)
}

@_cdecl("cce_cpu_backward_f64")
public func cceCPUBackwardF64(
    _ state: OpaquePointer?, _ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?,
    _ gradLoss: UnsafePointer<Double>?, _ dE: UnsafeMutableRawPointer?, _ dC: UnsafeMutableRawPointer?,
    _ dBias: UnsafeMutableRawPointer?, _ dECode: Int32, _ dCCode: Int32, _ dBiasCode: Int32,
    _ stats: UnsafeMutablePointer<Int64>?
) -> Int32 {
    backwardCall(state, e, c, bias, gradLoss, dE, dC, dBias, dECode, dCCode, dBiasCode, stats)
}

@_cdecl("cce_cpu_state_free")
public func cceCPUStateFree(_ state: OpaquePointer?) {
    guard let state else { return }
    Unmanaged<SavedForward>.fromOpaque(UnsafeRawPointer(state)).release()
}

func lossAndGradientsCall<G: BinaryFloatingPoint>(
    _ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?, _ targetIDs: UnsafePointer<Int64>?,
    _ n: Int64, _ d: Int64, _ v: Int64, _ eCode: Int32, _ cCode: Int32, _ biasCode: Int32,
    _ weight: UnsafePointer<Float>?, _ opt: UnsafePointer<cce_cpu_options>?, _ gradLoss: UnsafePointer<G>?,
    _ loss: UnsafeMutablePointer<Double>?, _ lse: UnsafeMutablePointer<Double>?,
    _ dE: UnsafeMutableRawPointer?, _ dC: UnsafeMutableRawPointer?, _ dBias: UnsafeMutableRawPointer?,
    _ dECode: Int32, _ dCCode: Int32, _ dBiasCode: Int32, _ stats: UnsafeMutablePointer<Int64>?
) -> Int32 {
    guarded {
        let shapes = try Shapes(n: n, d: d, v: v, batch: opt?.pointee.batch ?? 1)
        let o = try options(opt, weight: weight, v: shapes.v)
        let eType = try inputType(eCode, "E"), cType = try inputType(cCode, "C")
        let biasType = bias == nil ? nil : try inputType(biasCode, "bias")
        let out = try GradientTargets(dE: dE, dC: dC, dBias: dBias, types: (dECode, dCCode, dBiasCode),
                                      hasBias: bias != nil, stats: stats)
        let E = try tensor(e, eType, shapes.e, "E"), C = try tensor(c, cType, [shapes.v, shapes.d], "C")
        let B = try biasType.map { try tensor(bias, $0, [shapes.v], "bias") }
        let T = try targets(targetIDs, shapes)
        let engine = CutCrossEntropy(options: o)
        let up = upstream(gradLoss, reduction: o.reduction, positions: shapes.n)
        if o.mode != .exact {
            let f = try fusedIntoBuffers(engine, E, C, B, T, up, shapes, out, threads: o.threads ?? Workers.availableCPUs)
            writeForward(f, reduction: o.reduction, loss: loss, lse: lse)
            return
        }
        // The exact mode computes its gradients in Float64: arrays, converted as asked.
        let (f, g) = try engine.lossAndGradients(embeddings: E, classifier: C, targets: T, bias: B, upstream: up)
        writeForward(f, reduction: o.reduction, loss: loss, lse: lse)
        out.write(g, threads: o.threads ?? Workers.availableCPUs)
    }
}

@_cdecl("cce_cpu_loss_and_gradients")
public func cceCPULossAndGradients(
    _ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?, _ targetIDs: UnsafePointer<Int64>?,
    _ n: Int64, _ d: Int64, _ v: Int64, _ eCode: Int32, _ cCode: Int32, _ biasCode: Int32,
    _ weight: UnsafePointer<Float>?, _ opt: UnsafePointer<cce_cpu_options>?, _ gradLoss: UnsafePointer<Float>?,
    _ loss: UnsafeMutablePointer<Double>?, _ lse: UnsafeMutablePointer<Double>?,
    _ dE: UnsafeMutableRawPointer?, _ dC: UnsafeMutableRawPointer?, _ dBias: UnsafeMutableRawPointer?,
    _ dECode: Int32, _ dCCode: Int32, _ dBiasCode: Int32, _ stats: UnsafeMutablePointer<Int64>?
) -> Int32 {
    lossAndGradientsCall(e, c, bias, targetIDs, n, d, v, eCode, cCode, biasCode, weight, opt, gradLoss, loss, lse,
                         dE, dC, dBias, dECode, dCCode, dBiasCode, stats)
}

@_cdecl("cce_cpu_loss_and_gradients_f64")
public func cceCPULossAndGradientsF64(
    _ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?, _ targetIDs: UnsafePointer<Int64>?,
    _ n: Int64, _ d: Int64, _ v: Int64, _ eCode: Int32, _ cCode: Int32, _ biasCode: Int32,
    _ weight: UnsafePointer<Float>?, _ opt: UnsafePointer<cce_cpu_options>?, _ gradLoss: UnsafePointer<Double>?,
    _ loss: UnsafeMutablePointer<Double>?, _ lse: UnsafeMutablePointer<Double>?,
    _ dE: UnsafeMutableRawPointer?, _ dC: UnsafeMutableRawPointer?, _ dBias: UnsafeMutableRawPointer?,
    _ dECode: Int32, _ dCCode: Int32, _ dBiasCode: Int32, _ stats: UnsafeMutablePointer<Int64>?
) -> Int32 {
    lossAndGradientsCall(e, c, bias, targetIDs, n, d, v, eCode, cCode, biasCode, weight, opt, gradLoss, loss, lse,
                         dE, dC, dBias, dECode, dCCode, dBiasCode, stats)
}

@_cdecl("cce_cpu_release_scratch")
public func cceCPUReleaseScratch() -> Int64 {
    Int64(GradientScratch.release())
}
