// The forward pass: per-token LSE and loss, tile by tile, without the N x V logits.
//
// For active token i (E row e_i, target t_i) and vocabulary entry v:
//     y_iv = C_v · e_i + b_v,    z_iv = s·tanh(y_iv / s)  (soft capping)  or  y_iv,
//     lse_i = log Σ_v e^(z_iv),
//     loss_i = lse_i − (1 − α)·z_{i,t_i} − (α/V)·Σ_v z_iv + zloss·lse_i².
// (With α = 0 and zloss = 0 this is the plain cross-entropy −log softmax(z_i)[t_i].)
//
// Schedule (Engine.swift): workers own token blocks. For its block, a worker packs the E
// rows once, then sweeps the vocabulary, in the sorted order (VocabularyOrder.swift), in
// blocks of VBf: tile product (NB x VBf logits), epilogue (bias, soft cap), and the LSE
// merge into each row's running (max, sum) with a Kahan-compensated sum; Σ_v z_iv is kept
// too when label smoothing needs it. The target logit is an indexed dot product in the
// tile kernel's summation order (one sequential FMA chain over k), so it has the bits the
// tile would give it. Rows never cross workers, and a row's result does not depend on the
// block it falls in.
//
// In the fused call the forward also keeps, per row and vocabulary block, the block's
// largest logit m_ij and its own log-sum-exp L_ij = log Σ_{v in block j} e^(z_iv)
// (2 x NB x V/VBf values per worker): once the row's LSE is known, e^(m_ij − lse_i) bounds
// every softmax entry of the block, so the backward can skip the block's row without
// recomputing it, and e^(L_ij − lse_i) is the probability mass it skips (Backward.swift).

import CCEKernels
import CCERuntime

/// Constants of the loss in the kernel scalar type.
struct LossConstants<S: KernelScalar>: Sendable {
    let alpha: S          // label smoothing α
    let zLoss: S
    let smoothing: Bool
    let v: S

    init(_ o: Options, v: Int) {
        alpha = S(o.labelSmoothing); zLoss = S(o.zLoss); smoothing = o.labelSmoothing > 0; self.v = S(v)
    }
}

enum Forward {
    /// The forward of active tokens first ..< first + count, whose E rows `ws` holds.
    /// Writes lse and loss for them; when `blockStats` is given, fills
    /// blockStats[2(i · vBlocks + j)] with the block row's largest logit and the next value
    /// with its log-sum-exp.
    static func block<S: KernelScalar>(
        _ inp: SweepInputs<S>, _ ws: Workspace<S>, order: UnsafePointer<Int32>,
        first: Int, count: Int, targets: UnsafeBufferPointer<Int32>, k: LossConstants<S>,
        lse: UnsafeMutablePointer<S>, loss: UnsafeMutablePointer<S>, blockStats: UnsafeMutablePointer<S>?
    ) {
        let vb = inp.plan.forwardVocabBlock
        let vBlocks = (inp.v + vb - 1) / vb
        let states = ws.states.base, sums = ws.sums.base, comps = ws.comps.base
        for i in 0..<count { states[i] = RunningLSE(); sums[i] = 0; comps[i] = 0 }
        for j in 0..<vBlocks {
            let v0 = j * vb, vc = min(vb, inp.v - v0)
            ws.product(inp, count: count, ids: { Int(order[v0 + $0]) }, vc: vc, ldo: vb)
            for i in 0..<count {
                let row = ws.tile.base + i * vb
                if let bias = inp.bias {
                    for q in 0..<vc { row[q] += bias[Int(order[v0 + q])] }
                }
                logitEpilogue(row, count: vc, bias: nil, cap: inp.cap)
                let seen = mergeTileRow(row, count: vc, into: &states[i])
                if let bs = blockStats {
                    bs[2 * (i * vBlocks + j)] = seen.max
                    bs[2 * (i * vBlocks + j) + 1] = seen.logSum
                }
                if k.smoothing { kahanAdd(&sums[i], &comps[i], tileRowSum(row, count: vc)) }
            }
        }
        for i in 0..<count {
            let t = Int(targets[first + i])
            var which = i
            ws.tokenRows(inp, &which, 1)
            let zt = targetLogit(inp, ws.eRows.base[0], t)
            let l = states[i].value
            lse[first + i] = l
            var li = l - (1 - k.alpha) * zt + k.zLoss * l * l
            if k.smoothing { li -= k.alpha * sums[i] / k.v }
            loss[first + i] = li
        }
    }

    /// z_{i,t}: the indexed dot product, in the tile kernel's order, then bias and soft cap.
    static func targetLogit<S: KernelScalar>(_ inp: SweepInputs<S>, _ e: UnsafePointer<S>, _ t: Int) -> S {
        withUnsafeTemporaryAllocation(of: S.self, capacity: inp.d + 1) { buf in
            let p = buf.baseAddress!
            convertRow(inp.cRow(t), type: inp.cType, count: inp.d, into: p)
            p[inp.d] = sequentialDot(e, UnsafePointer(p), inp.d)
            logitEpilogue(p + inp.d, count: 1, bias: inp.bias.map { $0 + t }, cap: inp.cap)
            return p[inp.d]
        }
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
