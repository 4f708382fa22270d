// The forward pass: per-token LSE and loss, tile by tile, without the N x V logits.
//
// For active token i (E row e_i, target t_i) and vocabulary entry v:
//     y_iv = C_v · e_i + b_v,    z_iv = s·tanh(y_iv / s)  (soft capping)  or  y_iv,
//     lse_i = log Σ_v e^(z_iv),
//     loss_i = lse_i − (1 − α)·z_{i,t_i} − (α/V)·Σ_v z_iv + zloss·lse_i².
// (With α = 0 and zloss = 0 this is the plain cross-entropy −log softmax(z_i)[t_i].)
//
// Schedule: workers own token blocks (round-robin). For its block, a worker converts the E
// rows once, then sweeps the vocabulary in blocks of VB: tile product (NB x VB logits),
// epilogue (bias, soft cap), and the LSE merge into each row's running (max, sum) with a
// Kahan-compensated sum; Σ_v z_iv is kept too when label smoothing needs it. The target
// logit is an indexed dot product, computed in the tile kernel's summation order (one
// sequential FMA chain over k) so that it has the bits the tile would give it. Rows never cross workers, so the forward needs
// no synchronization, and a row's result does not depend on the block it falls in.

import CCEKernels
import CCERuntime

/// Per-token results of the forward sweep, for active tokens in order.
struct ForwardSweep<S: KernelScalar> {
    var lse: [S]
    var loss: [S]
}

enum Forward {
    static func sweep<S: KernelScalar>(_ inp: SweepInputs<S>, options: Options) -> ForwardSweep<S> {
        let m = inp.problem.active
        var lse = [S](repeating: 0, count: m)
        var loss = [S](repeating: 0, count: m)
        if m == 0 { return ForwardSweep(lse: lse, loss: loss) }
        let plan = inp.plan
        let nb = plan.tokenBlock, vb = plan.forwardVocabBlock
        let blocks = (m + nb - 1) / nb
        let vBlocks = (inp.v + vb - 1) / vb
        let alpha = S(options.labelSmoothing)
        let zl = S(options.zLoss)
        let smoothing = options.labelSmoothing > 0
        let workers = min(plan.threads, blocks)
        lse.withUnsafeMutableBufferPointer { lseOut in
        loss.withUnsafeMutableBufferPointer { lossOut in
        inp.problem.rows.withUnsafeBufferPointer { rows in
        inp.problem.targets.withUnsafeBufferPointer { targets in
            let out = (lse: SendablePointer(lseOut.baseAddress!), loss: SendablePointer(lossOut.baseAddress!),
                       rows: SendableBuffer(rows), targets: SendableBuffer(targets))
            Workers.run(workers) { w in
                let ws = Workspace<S>(plan: plan, d: inp.d, backend: inp.backend)
                var states = [RunningLSE<S>](repeating: RunningLSE(), count: nb)
                var sums = [S](repeating: 0, count: nb), comps = [S](repeating: 0, count: nb)
                var b = w
                while b < blocks {
                    let first = b * nb, count = min(nb, m - first)
                    ws.loadTokens(inp, first: first, count: count, rows: out.rows.buffer)
                    for i in 0..<count { states[i] = RunningLSE(); sums[i] = 0; comps[i] = 0 }
                    for j in 0..<vBlocks {
                        let v0 = j * vb, vc = min(vb, inp.v - v0)
                        ws.product(inp, count: count, ids: { v0 + $0 }, vc: vc, ldo: vb)
                        for i in 0..<count {
                            let row = ws.tile.base + i * vb
                            logitEpilogue(row, count: vc, bias: inp.bias.map { $0 + v0 }, cap: inp.cap)
                            mergeTileRow(row, count: vc, into: &states[i])
                            if smoothing { kahanAdd(&sums[i], &comps[i], tileRowSum(row, count: vc)) }
                        }
                    }
                    for i in 0..<count {
                        let t = Int(out.targets.buffer[first + i])
                        let zt = targetLogit(inp, ws.eRows.base[i], t)
                        let l = states[i].value
                        out.lse.pointer[first + i] = l
                        var li = l - (1 - alpha) * zt + zl * l * l
                        if smoothing { li -= alpha * sums[i] / S(inp.v) }
                        out.loss.pointer[first + i] = li
                    }
                    b += workers
                }
            }
        }}}}
        return ForwardSweep(lse: lse, loss: loss)
    }

    /// z_{i,t}: the indexed dot product, in the tile kernel's order, then bias and soft cap.
    static func targetLogit<S: KernelScalar>(_ inp: SweepInputs<S>, _ e: UnsafePointer<S>, _ t: Int) -> S {
        var y: S = withUnsafeTemporaryAllocation(of: S.self, capacity: inp.d) { buf in
            convertRow(inp.cRow(t), type: inp.cType, count: inp.d, into: buf.baseAddress!)
            return sequentialDot(e, UnsafePointer(buf.baseAddress!), inp.d)
        }
        var z = [y]
        z.withUnsafeMutableBufferPointer { p in
            logitEpilogue(p.baseAddress!, count: 1, bias: inp.bias.map { $0 + t }, cap: inp.cap)
        }
        y = z[0]
        return y
    }
}

/// A pointer that may cross into worker threads; each worker writes disjoint elements.
struct SendablePointer<T>: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<T>
    init(_ p: UnsafeMutablePointer<T>) { pointer = p }
}

struct SendableBuffer<T>: @unchecked Sendable {
    let buffer: UnsafeBufferPointer<T>
    init(_ b: UnsafeBufferPointer<T>) { buffer = b }
}
