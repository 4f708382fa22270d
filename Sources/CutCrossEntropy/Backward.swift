// The backward pass: dE, dC and dBias from recomputed tiles, with gradient filtering.
//
// For active token i with upstream gradient g_i (g/count for mean, g for sum, g[pos] for
// none) and p_iv = e^(z_iv − lse_i):
//     ∂loss_i/∂z_iv = (1 + 2·zloss·lse_i)·p_iv − α/V − (1 − α)·[v = t_i]
//     dy_iv = g_i · ∂loss_i/∂z_iv · (1 − (z_iv/s)²)          (soft cap; else factor 1)
//     dE_i = Σ_v dy_iv C_v,   dC_v = Σ_i dy_iv e_i,   dBias_v = Σ_i dy_iv.
//
// Schedule (Engine.swift): workers own token blocks. For each vocabulary block of VB
// entries, in the sorted order (VocabularyOrder.swift), a worker recomputes the logit
// tile, turns each row into dy, and keeps only the rows where some
// |∂loss_i/∂z_iv|·cap' ≥ ε or the row's target falls in this block (gradient filtering;
// a tile none of whose rows is kept is skipped). Then:
//   dE rows of the kept tokens += dy · C_block      (rank-VB update; rows are the worker's own)
//   dC rows of the block       += dyᵀ · E_kept       (rank-kept update; rows shared by all)
// dC is accumulated without races and deterministically by the ordered hand-off
// (CCERuntime/HandOff.swift): token block b adds into vocabulary block j only after block
// b − 1 has. Every dE element is a sum, in sorted vocabulary order, of per-block partials
// (each a VB-term FMA chain), and every dC element one sequential FMA chain over the tokens
// in order, so the results are bitwise reproducible and independent of the thread count
// and of NB.
//
// Skipping without recomputing (the fused call): the forward kept each row's largest
// logit m_ij per forward block. With the LSE known, every entry of that block has
// p ≤ e^(m_ij − lse_i), so |∂loss/∂z| ≤ (1 + 2·zloss·lse_i)·e^(m_ij − lse_i) + α/V; when
// that bound is below ε and the target is elsewhere, the row would be filtered anyway, and
// its logits are not recomputed at all (6-row panels with no such row are skipped inside
// the tile product). The result is bitwise the same as the two-call path.

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
    /// Row segments whose logits were never recomputed (fused call only).
    public var boundSkippedRowSegments = 0

    mutating func add(_ o: FilterStatistics) {
        tiles += o.tiles; skippedTiles += o.skippedTiles
        rowSegments += o.rowSegments; keptRowSegments += o.keptRowSegments
        boundSkippedRowSegments += o.boundSkippedRowSegments
    }
}

enum Backward {
    /// The backward of active tokens first ..< first + count (token block `b`), whose E rows
    /// `ws` holds. With `blockMax` (from the fused forward), rows bounded below ε are not
    /// recomputed.
    static func block<S: KernelScalar>(
        _ inp: SweepInputs<S>, _ bw: BackwardInputs<S>, _ ws: Workspace<S>, handOff: HandOff,
        b: Int, first: Int, count: Int, rows: UnsafeBufferPointer<Int32>, targets: UnsafeBufferPointer<Int32>,
        k: LossConstants<S>, blockMax: UnsafePointer<S>?, stats st: inout FilterStatistics
    ) {
        let plan = inp.plan, d = inp.d
        let vb = plan.vocabBlock, fvb = plan.forwardVocabBlock
        let vBlocks = (inp.v + vb - 1) / vb
        let fBlocks = (inp.v + fvb - 1) / fvb
        let smooth = k.alpha / k.v
        let eps = bw.eps ?? -1
        let keep = ws.keep.base, need = ws.need.base, panelNeeded = ws.panelNeeded.base
        let panels = (count + 5) / 6
        for j in 0..<vBlocks {
            let v0 = j * vb, vc = min(vb, inp.v - v0)
            // Which rows must be recomputed (all of them without a bound).
            var needed = count
            if let bm = blockMax, bw.eps != nil {
                needed = 0
                let jf = v0 / fvb
                for p in 0..<panels { panelNeeded[p] = false }
                for i in 0..<count {
                    let l = bw.lse[first + i]
                    let tq = Int(bw.rank[Int(targets[first + i])]) - v0
                    let bound = (1 + 2 * k.zLoss * l) * S.exp(bm[i * fBlocks + jf] - l) + smooth
                    need[i] = bound >= eps || (tq >= 0 && tq < vc)
                    if need[i] { needed += 1; panelNeeded[i / 6] = true }
                }
            } else {
                for i in 0..<count { need[i] = true }
            }
            st.tiles += 1; st.rowSegments += count
            st.boundSkippedRowSegments += count - needed
            var kept = 0
            if needed > 0 {
                // Recompute: only the selected rows when they are few (their own panels),
                // else the whole tile with the panels holding no selected row masked out.
                let sel = ws.selected.base
                var n = 0
                for i in 0..<count where need[i] { sel[n] = i; n += 1 }
                let compact = n < count && n <= ws.subRows && inp.backend == .swiftSIMD
                if compact {
                    ws.selectedProduct(inp, n: n, ids: { Int(bw.order[v0 + $0]) }, vc: vc, ldo: vb)
                } else {
                    ws.product(inp, count: count, ids: { Int(bw.order[v0 + $0]) }, vc: vc, ldo: vb,
                               panelMask: needed < count ? UnsafePointer(panelNeeded) : nil)
                }
                // Epilogue: logits -> dy, row by row; kept rows move to the front.
                for r in 0..<n {
                    let i = sel[r]
                    let row = ws.tile.base + (compact ? r : i) * vb
                    if let bias = inp.bias {
                        for q in 0..<vc { row[q] += bias[Int(bw.order[v0 + q])] }
                    }
                    logitEpilogue(row, count: vc, bias: nil, cap: inp.cap)
                    let t = Int(targets[first + i])
                    let tq = Int(bw.rank[t]) - v0
                    let hasTarget = tq >= 0 && tq < vc
                    let zt = hasTarget ? row[tq] : 0
                    let l = bw.lse[first + i]
                    let big = gradientEpilogue(row, count: vc, lse: l, coef: 1 + 2 * k.zLoss * l,
                                               smooth: smooth, cap: inp.cap, eps: eps)
                    guard big || hasTarget else { continue }
                    if hasTarget { row[tq] -= (1 - k.alpha) * softcapDerivative(zt, cap: inp.cap) }
                    scaleRow(row, count: vc, by: bw.upstream[first + i])
                    let dst = ws.tile.base + kept * vb
                    if dst != row { dst.update(from: row, count: vc) }
                    ws.outRows.base[kept] = bw.dE + Int(rows[first + i]) * d
                    keep[kept] = i
                    kept += 1
                }
            }
            st.keptRowSegments += kept
            if kept == 0 { st.skippedTiles += 1 }
            if kept > 0 {
                // The block's C rows copied together (contiguous rows stream better than the
                // sorted order's scattered ones).
                ws.loadVocabulary(inp, ids: { Int(bw.order[v0 + $0]) }, count: vc, contiguous: true)
                rankUpdate(out: ws.outRows.base, m: kept, a: ws.tile.base, ars: vb, aks: 1,
                           b: ws.cRows.base, k: vc, width: d, scratch: ws.aPanels.base, spare: ws.spare.base,
                           blocked: true, bSlice: ws.bSlice.base)
            }
            // dC: queue this block's update, then apply every queued update whose turn
            // has come (in vocabulary-block order); wait only when the queue is full.
            if !ws.pending.fits(kept: kept, vc: vc) { flush(inp, bw, ws, handOff, b: b, blocking: true) }
            ws.pending.append(j: j, v0: v0, vc: vc, kept: kept, tile: ws.tile.base, ldt: vb, keep: keep)
            flush(inp, bw, ws, handOff, b: b, blocking: false)
        }
        flush(inp, bw, ws, handOff, b: b, blocking: true)
    }

    /// Applies queued dC updates of token block b in order: all of them when `blocking`,
    /// else those whose hand-off turn has already come.
    static func flush<S: KernelScalar>(_ inp: SweepInputs<S>, _ bw: BackwardInputs<S>, _ ws: Workspace<S>,
                                       _ handOff: HandOff, b: Int, blocking: Bool) {
        let pq = ws.pending, d = inp.d
        while !pq.isEmpty {
            let e = pq.entries[pq.head]
            if !blocking && !handOff.isReady(slot: e.j, turn: b) { return }
            handOff.wait(slot: e.j, turn: b)
            if e.kept > 0 {
                for q in 0..<e.vc { ws.outRows.base[q] = bw.dC + Int(bw.order[e.v0 + q]) * d }
                // Kept E rows all at once when E is read in place, else chunkRows at a time
                // (converted on demand); each dC element's FMA chain simply continues from
                // one chunk to the next.
                let dy = pq.dy.base + e.offset
                let chunk = inp.eInPlace ? e.kept : ws.chunkRows
                var r0 = 0
                while r0 < e.kept {
                    let n = min(chunk, e.kept - r0)
                    ws.tokenRows(inp, pq.rows.base + e.rowOffset + r0, n)
                    rankUpdate(out: ws.outRows.base, m: e.vc, a: dy + r0 * e.vc, ars: 1, aks: e.vc,
                               b: ws.eRows.base, k: n, width: d, scratch: ws.aPanels.base, spare: ws.spare.base,
                               bSlice: ws.bSlice.base)
                    r0 += n
                }
                if let db = bw.dBias {
                    for q in 0..<e.vc {
                        var s = db[Int(bw.order[e.v0 + q])]
                        for r in 0..<e.kept { s += dy[r * e.vc + q] }
                        db[Int(bw.order[e.v0 + q])] = s
                    }
                }
            }
            handOff.pass(slot: e.j, turn: b)
            pq.popFirst()
        }
    }
}
