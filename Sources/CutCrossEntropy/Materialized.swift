// The materialized baseline: what a framework does without CCE, with OpenBLAS.
//
// logits = E·Cᵀ (cblas_sgemm, the full N x V Float32 matrix), then per row: bias, soft cap,
// LSE and loss; for the gradients the matrix is turned into dy in place and
//     dE = dy·C (sgemm),   dC = dyᵀ·E (sgemm),   dBias = column sums of dy.
// Float16/BFloat16 inputs are converted to Float32 copies first (OpenBLAS in Debian has no
// half-precision GEMM). Memory: N·V·4 bytes for the logits, plus the copies: this is the
// cost CCE removes. Same options and validation as the engine.

import CCEKernels
import CCERuntime
import COpenBLAS

/// The materialized baseline: the full N x V logit matrix in Float32 and OpenBLAS products,
/// as a framework computes the loss without Cut Cross-Entropy. For comparisons of time,
/// memory and error; same options, validation and errors as the engine.
public enum Materialized {
    /// What `compute` returns (gradients nil when not asked for).
    public struct Result: Sendable {
        /// The reduced loss: mean or sum by `Options.reduction`; for `.none`, the sum.
        public let loss: Double
        /// Gradient with respect to E, E's shape.
        public let dE: [Float]?
        /// Gradient with respect to C, (V, D).
        public let dC: [Float]?
        /// Gradient with respect to the bias, (V), when a bias was given.
        public let dBias: [Float]?
    }

    /// Loss, and gradients when `gradients` is true. `threads` sets OpenBLAS's thread count.
    public static func compute(embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor? = nil,
                               options: Options = Options(), upstream: Upstream = .scalar(1),
                               gradients: Bool = true) throws -> Result {
        let p = try Problem(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                            options: options)
        let g = try p.upstreamPerToken(upstream, reduction: options.reduction)
        openblas_set_num_threads(Int32(options.threads ?? Workers.availableCPUs))
        let n = p.n, d = p.d, v = p.v, m = p.active
        let threads = options.threads ?? Workers.availableCPUs
        let e32 = embeddings.elementType == .float32 ? nil : float32Copy(embeddings, threads: threads)
        let c32 = classifier.elementType == .float32 ? nil : float32Copy(classifier, threads: threads)
        let b = bias?.floats()
        // Class weights in the natural vocabulary order (the logits are not sorted here).
        let weights = options.classWeights.map { ClassWeights<Float>($0, problem: p, order: nil, forwardBlock: max(v, 1)) }
        let definition = LossDefinition<Float>(options, vocabulary: v, weights: weights)
        let cap = definition.cap
        // The active rows' logits: M x V, written by sgemm (beta = 0), so not zeroed first.
        var logits = uninitialized(m * v)
        var total = 0.0
        var dE: [Float]? = nil, dC: [Float]? = nil, dBias: [Float]? = nil
        func withF32(_ t: Tensor, _ copy: [Float]?, _ body: (UnsafePointer<Float>) -> Void) {
            if let copy { copy.withUnsafeBufferPointer { body($0.baseAddress!) } }
            else { t.withRawPointer { body($0.assumingMemoryBound(to: Float.self)) } }
        }
        withF32(embeddings, e32) { ep in
        withF32(classifier, c32) { cp in
            // Active rows of E, contiguous (a copy only when some rows are inactive).
            let contiguous = m == n
            var eAct = contiguous ? [] : [Float](repeating: 0, count: m * d)
            if !contiguous {
                for i in 0..<m { for k in 0..<d { eAct[i * d + k] = ep[Int(p.rows[i]) * d + k] } }
            }
            eAct.withUnsafeBufferPointer { ea in
                let a = contiguous ? ep : ea.baseAddress!
                logits.withUnsafeMutableBufferPointer { lp in
                    let l = lp.baseAddress!
                    if m > 0 {
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(v), Int32(d), 1,
                                    a, Int32(d), cp, Int32(d), 0, l, Int32(v))
                    }
                    // Row-wise softmax work with the engine's vectorized kernels, rows split
                    // over threads (the baseline should be as fast as a framework's).
                    let lossBox = SendablePointer(UnsafeMutablePointer<Double>.allocate(capacity: max(m, 1)))
                    defer { lossBox.pointer.deallocate() }
                    let lbox = SendablePointer(l)
                    let bb: [Float]? = b
                    let rowThreads = min(max(1, m), threads)
                    p.targets.withUnsafeBufferPointer { tp in
                        let tb = SendableBuffer(tp)
                        g.withUnsafeBufferPointer { gp in
                            let gb = SendableBuffer(gp)
                            Workers.run(rowThreads) { w in
                                var i = w
                                while i < m {
                                    let row = lbox.pointer + i * v
                                    bb.withOptionalBase { bp in logitEpilogue(row, count: v, bias: bp, cap: cap) }
                                    var running = RunningLSE<Float>()
                                    mergeTileRow(row, count: v, into: &running)
                                    let lse = running.value
                                    let t = Int(tb.buffer[i])
                                    let zt = row[t]
                                    let sum = !definition.smoothing ? 0
                                        : weights.map { weightedRowSum(row, $0.byPosition, count: v) } ?? tileRowSum(row, count: v)
                                    lossBox.pointer[i] = Double(definition.tokenLoss(lse: lse, targetLogit: zt, logitSum: sum,
                                                                                     token: i))
                                    if gradients {
                                        let coef = definition.softmaxCoefficient(lse: lse, token: i)
                                        if let w = weights, definition.perClassSmoothing {
                                            _ = weightedGradientEpilogue(row, count: v, lse: lse, coef: coef,
                                                                         share: definition.smoothingShare,
                                                                         weights: w.byPosition, cap: cap, eps: 0)
                                        } else {
                                            _ = gradientEpilogue(row, count: v, lse: lse, coef: coef,
                                                                 smooth: definition.smoothingShare, cap: cap, eps: 0)
                                        }
                                        row[t] -= definition.targetShare(token: i) * softcapDerivative(zt, cap: cap)
                                        scaleRow(row, count: v, by: Float(gb.buffer[i]))
                                    }
                                    i += rowThreads
                                }
                            }
                        }
                    }
                    for i in 0..<m { total += lossBox.pointer[i] }
                    guard gradients else { return }
                    var dEa = uninitialized(m * d)
                    var dCv = uninitialized(v * d)
                    if m > 0 {
                        dEa.withUnsafeMutableBufferPointer { o in
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(d), Int32(v), 1,
                                        l, Int32(v), cp, Int32(d), 0, o.baseAddress!, Int32(d))
                        }
                        dCv.withUnsafeMutableBufferPointer { o in
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(v), Int32(d), Int32(m), 1,
                                        l, Int32(v), a, Int32(d), 0, o.baseAddress!, Int32(d))
                        }
                    }
                    if contiguous { dE = dEa } else {
                        var full = [Float](repeating: 0, count: n * d)
                        for i in 0..<m { for k in 0..<d { full[Int(p.rows[i]) * d + k] = dEa[i * d + k] } }
                        dE = full
                    }
                    dC = dCv
                    if b != nil {
                        // Column sums of dy: dyᵀ·1.
                        var db = [Float](repeating: 0, count: v)
                        let ones = [Float](repeating: 1, count: max(1, m))
                        if m > 0 {
                            db.withUnsafeMutableBufferPointer { o in
                                cblas_sgemv(CblasRowMajor, CblasTrans, Int32(m), Int32(v), 1, l, Int32(v), ones, 1, 0,
                                            o.baseAddress!, 1)
                            }
                        }
                        dBias = db
                    }
                }
            }
        }}
        return Result(loss: p.reduce(total: total, options.reduction), dE: dE, dC: dC, dBias: dBias)
    }
}

/// An array of `count` Floats whose elements the caller writes before reading.
private func uninitialized(_ count: Int) -> [Float] {
    [Float](unsafeUninitializedCapacity: count) { _, n in n = count }
}

/// The tensor's values as Float32, converted by `threads` workers (as a framework's cast
/// kernel would be).
private func float32Copy(_ t: Tensor, threads: Int) -> [Float] {
    let count = t.count
    var out = uninitialized(count)
    out.withUnsafeMutableBufferPointer { o in
        t.withRawPointer { src in
            let dst = SendablePointer(o.baseAddress!), source = UncheckedSendable(src), type = t.elementType
            let chunk = (count + threads - 1) / max(1, threads)
            Workers.run(max(1, min(threads, count))) { w in
                let start = w * chunk, end = min(count, start + chunk)
                guard start < end else { return }
                convertRow(source.value + start * type.size, type: type, count: end - start, into: dst.pointer + start)
            }
        }
    }
    return out
}

extension Optional where Wrapped == [Float] {
    func withOptionalBase<R>(_ body: (UnsafePointer<Float>?) -> R) -> R {
        switch self {
        case .none: return body(nil)
        case .some(let a): return a.withUnsafeBufferPointer { body($0.baseAddress) }
        }
    }
}
