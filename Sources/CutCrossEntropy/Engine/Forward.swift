// The forward pass: per-token LSE and loss, tile by tile, without the N x V logits.
//
// For active token i (E row e_i, target t_i) and vocabulary entry v:
//     y_iv = C_v · e_i + b_v,    z_iv = s·tanh(y_iv / s)  (soft capping)  or  y_iv,
//     lse_i = log Σ_v e^(z_iv),
//     loss_i = lse_i − (1 − α)·z_{i,t_i} − (α/V)·Σ_v z_iv + zloss·lse_i².
// (With α = 0 and zloss = 0 this is the plain cross-entropy −log softmax(z_i)[t_i].)
//
// Schedule (Engine.swift): workers own token blocks. For its block, a worker converts the E
// rows to the compute type once (unless they already are), then sweeps the vocabulary, in the sorted order (VocabularyOrder.swift), in
// blocks of VBf: tile product (NB x VBf logits), epilogue (bias, soft cap), and the LSE
// merge into each row's running (max, sum) with a Kahan-compensated sum; Σ_v z_iv is kept
// too when label smoothing needs it. The target logit z_{i,t_i} is read from the tile that
// holds it (after the epilogue), so it has exactly the bits the backward recomputes. Rows
// never cross workers, and a row's result does not depend on the block it falls in.
//
// In the fused call the forward also keeps, per row and vocabulary block, the block's
// largest logit m_ij and its own log-sum-exp L_ij = log Σ_{v in block j} e^(z_iv)
// (2 x NB x V/VBf values per worker): once the row's LSE is known, e^(m_ij − lse_i) bounds
// every softmax entry of the block, so the backward can skip the block's row without
// recomputing it, and e^(L_ij − lse_i) is the probability mass it skips (Backward.swift).

import CCEKernels
import CCERuntime

/// The loss's definition in the kernel scalar type: soft cap, label smoothing, z-loss, and
/// the per-token formula (the engine and the materialized baseline both use it).
struct LossDefinition<S: KernelScalar>: Sendable {
    /// Label smoothing α.
    let alpha: S
    let zLoss: S
    let smoothing: Bool
    /// V as S.
    let vocabulary: S
    /// Soft cap s, or nil.
    let cap: S?

    init(_ o: Options, vocabulary: Int) {
        alpha = S(o.labelSmoothing); zLoss = S(o.zLoss); smoothing = o.labelSmoothing > 0
        self.vocabulary = S(vocabulary)
        cap = o.softcap.map { S($0) }
    }

    /// loss_i = lse_i − (1 − α)·z_{i,t_i} + zloss·lse_i² − (α/V)·Σ_v z_iv (the last term only
    /// with label smoothing).
    @inline(__always)
    func tokenLoss(lse l: S, targetLogit zt: S, logitSum: S) -> S {
        var loss = l - (1 - alpha) * zt + zLoss * l * l
        if smoothing { loss -= alpha * logitSum / vocabulary }
        return loss
    }

    /// coef_i = 1 + 2·zloss·lse_i: the factor of p_iv in ∂loss_i/∂z_iv.
    @inline(__always)
    func softmaxCoefficient(lse l: S) -> S { 1 + 2 * zLoss * l }

    /// α/V: the smoothing term of every ∂loss_i/∂z_iv.
    var smoothingShare: S { alpha / vocabulary }
}

enum Forward {
    /// The forward of active tokens first ..< first + count, whose E rows `workspace`
    /// holds. Writes lse and loss for them; when `blockStats` is given, fills
    /// blockStats[2(i · vBlocks + j)] with the block row's largest logit and the next value
    /// with its log-sum-exp.
    static func block<S: KernelScalar>(
        _ operands: Operands<S>, _ workspace: Workspace<S>, first: Int, count: Int, loss definition: LossDefinition<S>,
        lse: UnsafeMutablePointer<S>, loss: UnsafeMutablePointer<S>, blockStats: UnsafeMutablePointer<S>?
    ) {
        let vb = operands.plan.forwardVocabBlock
        let vBlocks = (operands.v + vb - 1) / vb
        let targets = operands.problem.targets
        let states = workspace.states.base, sums = workspace.sums.base, comps = workspace.comps.base
        let targetLogits = workspace.targetLogits.base
        for i in 0..<count { states[i] = RunningLSE(); sums[i] = 0; comps[i] = 0 }
        for j in 0..<vBlocks {
            let v0 = j * vb, vc = min(vb, operands.v - v0)
            workspace.product(operands, count: count, v0: v0, vc: vc, ldo: vb)
            for i in 0..<count {
                let row = workspace.tile.base + i * vb
                if let bias = operands.bias {
                    for q in 0..<vc { row[q] += bias[Int(operands.order[v0 + q])] }
                }
                logitEpilogue(row, count: vc, bias: nil, cap: definition.cap)
                let targetPosition = Int(operands.rank[Int(targets[first + i])]) - v0
                if targetPosition >= 0 && targetPosition < vc { targetLogits[i] = row[targetPosition] }
                let seen = mergeTileRow(row, count: vc, into: &states[i])
                if let blockStats {
                    blockStats[2 * (i * vBlocks + j)] = seen.max
                    blockStats[2 * (i * vBlocks + j) + 1] = seen.logSum
                }
                if definition.smoothing { kahanAdd(&sums[i], &comps[i], tileRowSum(row, count: vc)) }
            }
        }
        for i in 0..<count {
            let l = states[i].value
            lse[first + i] = l
            loss[first + i] = definition.tokenLoss(lse: l, targetLogit: targetLogits[i], logitSum: sums[i])
        }
    }
}
