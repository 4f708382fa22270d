// The backward pass: dE, dC and dBias from recomputed tiles, with gradient filtering.
//
// For active token i with upstream gradient g_i (g/count for mean, g for sum, g[pos] for
// none) and p_iv = e^(z_iv − lse_i):
//     ∂loss_i/∂z_iv = (1 + 2·zloss·lse_i)·p_iv − α/V − (1 − α)·[v = t_i]
//     dy_iv = g_i · ∂loss_i/∂z_iv · (1 − (z_iv/s)²)          (soft cap; else factor 1)
//     dE_i = Σ_v dy_iv C_v,   dC_v = Σ_i dy_iv e_i,   dBias_v = Σ_i dy_iv.
//
// Schedule: workers own token blocks (round-robin), as in the forward. For each vocabulary
// block, in the sorted order (VocabularyOrder.swift), a worker recomputes the logit tile,
// turns each row into dy, and keeps only the rows where some |∂loss_i/∂z_iv|·cap' ≥ ε or
// the row's target falls in this block (gradient filtering; a tile none of whose rows is
// kept is skipped entirely). Then:
//   dE rows of the kept tokens += dy · C_block      (rank-VB update; rows are the worker's own)
//   dC rows of the block       += dyᵀ · E_kept       (rank-kept update; rows shared by all)
// dC is accumulated without races and deterministically by the ordered hand-off
// (CCERuntime/HandOff.swift): token block b adds into vocabulary block j only after block
// b − 1 has. Every dE and dC element is then one sequential fused multiply-add chain (over
// the vocabulary in sorted order for dE, over the tokens in order for dC), so the results
// are bitwise reproducible and independent of the thread count and of NB. Extra memory:
// the workspaces (O(threads·(NB + VB)·D)) and O(V) for the order and tickets.

import CCEKernels
import CCERuntime

struct BackwardInputs<S: KernelScalar>: @unchecked Sendable {
    let lse: UnsafePointer<S>          // per active token
    let upstream: UnsafePointer<S>     // g_i per active token
    let order: UnsafePointer<Int32>    // sorted position -> vocabulary id
    let rank: UnsafePointer<Int32>     // vocabulary id -> sorted position
    let eps: S?                        // nil: no filtering
    let dE: UnsafeMutablePointer<S>    // n x D, zeroed
    let dC: UnsafeMutablePointer<S>    // V x D, zeroed
    let dBias: UnsafeMutablePointer<S>? // V, zeroed
}

/// What the backward skipped, for reports and `cce explain`.
public struct FilterStatistics: Sendable {
    /// (token block x vocabulary block) tiles, and how many were skipped entirely.
    public var tiles = 0, skippedTiles = 0
    /// (token x vocabulary block) row segments, and how many were kept.
    public var rowSegments = 0, keptRowSegments = 0
}

enum Backward {
    static func sweep<S: KernelScalar>(_ inp: SweepInputs<S>, _ bw: BackwardInputs<S>, options: Options)
        -> FilterStatistics
    {
        let m = inp.problem.active
        if m == 0 { return FilterStatistics() }
        let plan = inp.plan
        let nb = plan.tokenBlock, vb = plan.vocabBlock, d = inp.d
        let blocks = (m + nb - 1) / nb
        let vBlocks = (inp.v + vb - 1) / vb
        let workers = min(plan.threads, blocks)
        let alpha = S(options.labelSmoothing)
        let smooth = alpha / S(inp.v)
        let zl = S(options.zLoss)
        let eps = bw.eps ?? -1
        let handOff = HandOff(count: vBlocks)
        let stats = StatsBox(workers)
        inp.problem.rows.withUnsafeBufferPointer { rows in
        inp.problem.targets.withUnsafeBufferPointer { targets in
            let rowsB = SendableBuffer(rows), targetsB = SendableBuffer(targets)
            Workers.run(workers) { w in
                let ws = Workspace<S>(plan: plan, d: d, backend: inp.backend)
                let keep = UnsafeMutablePointer<Int>.allocate(capacity: nb)
                defer { keep.deallocate() }
                var st = FilterStatistics()
                var b = w
                while b < blocks {
                    let first = b * nb, count = min(nb, m - first)
                    ws.loadTokens(inp, first: first, count: count, rows: rowsB.buffer)
                    for j in 0..<vBlocks {
                        let v0 = j * vb, vc = min(vb, inp.v - v0)
                        ws.product(inp, count: count, ids: { Int(bw.order[v0 + $0]) }, vc: vc, ldo: vb)
                        // Epilogue: logits -> dy, row by row; kept rows move to the front.
                        var kept = 0
                        for i in 0..<count {
                            let row = ws.tile.base + i * vb
                            if let bias = inp.bias {
                                for q in 0..<vc { row[q] += bias[Int(bw.order[v0 + q])] }
                            }
                            logitEpilogue(row, count: vc, bias: nil, cap: inp.cap)
                            let t = Int(targetsB.buffer[first + i])
                            let tq = Int(bw.rank[t]) - v0
                            let hasTarget = tq >= 0 && tq < vc
                            let zt = hasTarget ? row[tq] : 0
                            let l = bw.lse[first + i]
                            let big = gradientEpilogue(row, count: vc, lse: l, coef: 1 + 2 * zl * l,
                                                       smooth: smooth, cap: inp.cap, eps: eps)
                            guard big || hasTarget else { continue }
                            if hasTarget { row[tq] -= (1 - alpha) * softcapDerivative(zt, cap: inp.cap) }
                            scaleRow(row, count: vc, by: bw.upstream[first + i])
                            let dst = ws.tile.base + kept * vb
                            if kept != i { dst.update(from: row, count: vc) }
                            ws.outRows.base[kept] = bw.dE + Int(rowsB.buffer[first + i]) * d
                            ws.activeRows.base[kept] = ws.eRows.base[i]
                            keep[kept] = i
                            kept += 1
                        }
                        st.tiles += 1; st.rowSegments += count; st.keptRowSegments += kept
                        if kept == 0 { st.skippedTiles += 1 }
                        if kept > 0 {
                            ws.loadVocabulary(inp, ids: { Int(bw.order[v0 + $0]) }, count: vc)
                            rankUpdate(out: ws.outRows.base, m: kept, a: ws.tile.base, ars: vb, aks: 1,
                                       b: ws.cRows.base, k: vc, width: d)
                        }
                        handOff.wait(slot: j, turn: b)
                        if kept > 0 {
                            for q in 0..<vc { ws.outRows.base[q] = bw.dC + Int(bw.order[v0 + q]) * d }
                            rankUpdate(out: ws.outRows.base, m: vc, a: ws.tile.base, ars: 1, aks: vb,
                                       b: ws.activeRows.base, k: kept, width: d)
                            if let db = bw.dBias {
                                for q in 0..<vc {
                                    var s = db[Int(bw.order[v0 + q])]
                                    for r in 0..<kept { s += ws.tile.base[r * vb + q] }
                                    db[Int(bw.order[v0 + q])] = s
                                }
                            }
                        }
                        handOff.pass(slot: j, turn: b)
                    }
                    b += workers
                }
                stats.set(w, st)
            }
        }}
        return stats.total
    }
}

/// One slot per worker; each worker writes only its own.
final class StatsBox: @unchecked Sendable {
    private let items: UnsafeMutableBufferPointer<FilterStatistics>
    init(_ n: Int) { items = .allocate(capacity: n); items.initialize(repeating: FilterStatistics()) }
    deinit { items.deallocate() }
    func set(_ i: Int, _ s: FilterStatistics) { items[i] = s }
    var total: FilterStatistics {
        items.reduce(into: FilterStatistics()) {
            $0.tiles += $1.tiles; $0.skippedTiles += $1.skippedTiles
            $0.rowSegments += $1.rowSegments; $0.keptRowSegments += $1.keptRowSegments
        }
    }
}
