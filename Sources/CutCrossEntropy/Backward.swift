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
// the tile product). Without the dropped-mass estimate the result is bitwise the same as
// the two-call path.
//
// Dropped-mass estimate (Options.filterCorrection): a filtered row segment (i, J) still has
// Σ_{v∈J} dy_iv C_v = r_iJ·C̄_J + Σ_{v∈J} (dy_iv − r_iJ/|J|)(C_v − C̄_J), with r_iJ = Σ_{v∈J} dy_iv
// and C̄_J the mean of the block's C rows. The first term is added to dE_i; only the
// second, the part that varies inside the block, is lost. For a recomputed row r_iJ is
// summed from its dy; for a row the fused call never recomputes, r over the whole forward
// block F is g_i·[(1 + 2·zloss·lse_i)·e^(L_iF − lse_i) − α·|F|/V] from the forward's block
// log-sum-exp L_iF (minus the part of a sub-block recomputed for its target, whose C rows
// then leave the mean too). Under a soft cap the fused call recomputes every row (the cap's
// derivative is not in L_iF). dC and dBias get no estimate.
//
// Modes (Options.swift): `kahan` adds each dE partial (per vocabulary block) and each dC
// partial (per token block) through a Kahan compensation row; `kahan-full-e` keeps every
// recomputed row for dE and filters only dC, `kahan-full-c` the reverse (both recompute
// every row).

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
    var compE: UnsafeMutablePointer<S>? = nil   // kahan modes: n x D compensation, zeroed
    var compC: UnsafeMutablePointer<S>? = nil   // kahan modes: V x D compensation, zeroed
    var fullE = false                  // dE unfiltered
    var fullC = false                  // dC unfiltered
    /// Add the dropped-mass estimate to dE (Options.filterCorrection).
    var estimate = false
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
    /// `ws` holds. With `blockStats` (from the fused forward), rows bounded below ε are not
    /// recomputed.
    static func block<S: KernelScalar>(
        _ inp: SweepInputs<S>, _ bw: BackwardInputs<S>, _ ws: Workspace<S>, handOff: HandOff,
        b: Int, first: Int, count: Int, rows: UnsafeBufferPointer<Int32>, targets: UnsafeBufferPointer<Int32>,
        k: LossConstants<S>, blockStats: UnsafePointer<S>?, stats st: inout FilterStatistics
    ) {
        let plan = inp.plan, d = inp.d
        let vb = plan.vocabBlock, fvb = plan.forwardVocabBlock
        let vBlocks = (inp.v + vb - 1) / vb
        let fBlocks = (inp.v + fvb - 1) / fvb
        let smooth = k.alpha / k.v
        let eps = bw.eps ?? -1
        let correcting = bw.estimate && bw.eps != nil && !bw.fullE
        // The bound needs filtering on both sides, and the estimate needs no soft cap.
        let bound = bw.eps != nil && !bw.fullE && !bw.fullC && !(correcting && inp.cap != nil) ? blockStats : nil
        let keep = ws.keep.base, need = ws.need.base, panelNeeded = ws.panelNeeded.base
        let inE = ws.inE.base, inC = ws.inC.base
        let residual = ws.residual.base, residualOn = ws.residualOn.base, excluded = ws.excluded.base
        let panels = (count + 5) / 6
        if bound != nil { for i in 0..<count { residualOn[i] = false } }
        for j in 0..<vBlocks {
            let v0 = j * vb, vc = min(vb, inp.v - v0)
            let jf = v0 / fvb, nf = min(fvb, inp.v - jf * fvb)
            let startsForward = v0 % fvb == 0, endsForward = v0 + vc == min(inp.v, (jf + 1) * fvb)
            if startsForward && correcting { ws.blockSums.reset(forwardBlock: jf) }
            // Which rows must be recomputed (all of them without a bound).
            var needed = count
            if let bs = bound {
                needed = 0
                for p in 0..<panels { panelNeeded[p] = false }
                for i in 0..<count {
                    let l = bw.lse[first + i], coef = 1 + 2 * k.zLoss * l
                    let tq = Int(bw.rank[Int(targets[first + i])]) - v0
                    let stat = bs + 2 * (i * fBlocks + jf)
                    let skippable = abs(coef) * S.exp(stat[0] - l) + smooth < eps
                    if correcting && startsForward {
                        residualOn[i] = skippable
                        excluded[i] = -1
                        if skippable {
                            residual[i] = bw.upstream[first + i] * (coef * S.exp(stat[1] - l) - smooth * S(nf))
                        }
                    }
                    need[i] = !skippable || (tq >= 0 && tq < vc)
                    if need[i] { needed += 1; panelNeeded[i / 6] = true }
                }
            } else {
                for i in 0..<count { need[i] = true }
            }
            st.tiles += 1; st.rowSegments += count
            st.boundSkippedRowSegments += count - needed
            var kept = 0, keptE = 0, keptC = 0
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
                    let g = bw.upstream[first + i]
                    let big = gradientEpilogue(row, count: vc, lse: l, coef: 1 + 2 * k.zLoss * l,
                                               smooth: smooth, cap: inp.cap, eps: eps)
                    let keepE = big || hasTarget || bw.fullE, keepC = big || hasTarget || bw.fullC
                    if correcting {
                        if bound != nil && residualOn[i] {
                            // Recomputed for its target inside a block the estimate covers:
                            // this sub-block is exact, so it leaves the estimate.
                            residual[i] -= g * tileRowSum(row, count: vc)
                            excluded[i] = j
                        } else if !keepE {
                            addEstimate(bw, row: Int(rows[first + i]), d: d,
                                        scale: g * tileRowSum(row, count: vc) / S(vc),
                                        sum: ws.blockSums.backward(j, inp, bw.order))
                        }
                    }
                    guard keepE || keepC else { continue }
                    if hasTarget { row[tq] -= (1 - k.alpha) * softcapDerivative(zt, cap: inp.cap) }
                    scaleRow(row, count: vc, by: g)
                    let dst = ws.tile.base + kept * vb
                    if dst != row { dst.update(from: row, count: vc) }
                    keep[kept] = i; inE[kept] = keepE; inC[kept] = keepC
                    kept += 1
                    if keepE { keptE += 1 }
                    if keepC { keptC += 1 }
                }
            }
            st.keptRowSegments += kept
            if kept == 0 { st.skippedTiles += 1 }
            // dE from the rows kept for it, dC (queued, applied in hand-off order) from the
            // rows kept for it. One set contains the other; the larger goes first, then
            // the tile is compacted to the smaller.
            if keptC == kept {
                if keptC > 0 && !ws.pending.fits(kept: keptC, vc: vc) { flush(inp, bw, ws, handOff, b: b, blocking: true) }
                ws.pending.append(j: j, v0: v0, vc: vc, kept: keptC, tile: ws.tile.base, ldt: vb, keep: keep)
                if keptE < kept { compactTile(ws, count: kept, where: inE) }
                updateE(inp, bw, ws, first: first, rows: rows, m: keptE, v0: v0, vc: vc)
            } else {
                updateE(inp, bw, ws, first: first, rows: rows, m: keptE, v0: v0, vc: vc)
                compactTile(ws, count: kept, where: inC)
                if !ws.pending.fits(kept: keptC, vc: vc) { flush(inp, bw, ws, handOff, b: b, blocking: true) }
                ws.pending.append(j: j, v0: v0, vc: vc, kept: keptC, tile: ws.tile.base, ldt: vb, keep: keep)
            }
            flush(inp, bw, ws, handOff, b: b, blocking: false)
            // The estimate of the rows skipped over the whole forward block.
            if correcting && bound != nil && endsForward {
                for i in 0..<count where residualOn[i] {
                    let row = Int(rows[first + i])
                    let x = excluded[i]
                    let csf = ws.blockSums.forward(inp, bw.order)
                    if x < 0 {
                        addEstimate(bw, row: row, d: d, scale: residual[i] / S(nf), sum: csf)
                    } else {
                        let nx = min(vb, inp.v - x * vb)
                        guard nf > nx else { continue }
                        let s = residual[i] / S(nf - nx)
                        addEstimate(bw, row: row, d: d, scale: s, sum: csf)
                        addEstimate(bw, row: row, d: d, scale: -s, sum: ws.blockSums.backward(x, inp, bw.order))
                    }
                }
            }
        }
        flush(inp, bw, ws, handOff, b: b, blocking: true)
    }

    /// dE_row += scale · sum (compensated in the kahan modes).
    @inline(__always)
    static func addEstimate<S: KernelScalar>(_ bw: BackwardInputs<S>, row: Int, d: Int, scale: S,
                                             sum: UnsafePointer<S>) {
        if let c = bw.compE {
            kahanAxpy(bw.dE + row * d, c + row * d, scale, sum, count: d)
        } else {
            axpy(bw.dE + row * d, scale, sum, count: d)
        }
    }

    /// Moves the tile rows r < count with flag[r] (and their keep entries) to the front, in order.
    static func compactTile<S: KernelScalar>(_ ws: Workspace<S>, count: Int, where flag: UnsafePointer<Bool>) {
        var m = 0
        for r in 0..<count where flag[r] {
            if m != r {
                (ws.tile.base + m * ws.vb).update(from: ws.tile.base + r * ws.vb, count: ws.vb)
                ws.keep.base[m] = ws.keep.base[r]
            }
            m += 1
        }
    }

    /// dE rows of keep[0 ..< m] += their dy (tile rows 0 ..< m) · C_block, as one blocked
    /// rank-vc update; in the kahan modes the partial goes through the compensation rows.
    static func updateE<S: KernelScalar>(
        _ inp: SweepInputs<S>, _ bw: BackwardInputs<S>, _ ws: Workspace<S>, first: Int,
        rows: UnsafeBufferPointer<Int32>, m: Int, v0: Int, vc: Int
    ) {
        guard m > 0 else { return }
        let d = inp.d
        // The block's C rows copied together (contiguous rows stream better than the sorted
        // order's scattered ones).
        ws.loadVocabulary(inp, ids: { Int(bw.order[v0 + $0]) }, count: vc, contiguous: true)
        let offset = { (r: Int) in Int(rows[first + ws.keep.base[r]]) * d }   // of kept row r in dE
        if let comp = bw.compE, let part = ws.partials?.base {
            for r in 0..<m {
                (part + r * d).update(repeating: 0, count: d)
                ws.outRows.base[r] = part + r * d
            }
            rankUpdate(out: ws.outRows.base, m: m, a: ws.tile.base, ars: ws.vb, aks: 1,
                       b: ws.cRows.base, k: vc, width: d, scratch: ws.aPanels.base, spare: ws.spare.base,
                       bSlice: ws.bSlice.base)
            for r in 0..<m { kahanAxpy(bw.dE + offset(r), comp + offset(r), 1, part + r * d, count: d) }
        } else {
            for r in 0..<m { ws.outRows.base[r] = bw.dE + offset(r) }
            rankUpdate(out: ws.outRows.base, m: m, a: ws.tile.base, ars: ws.vb, aks: 1,
                       b: ws.cRows.base, k: vc, width: d, scratch: ws.aPanels.base, spare: ws.spare.base,
                       blocked: true, bSlice: ws.bSlice.base)
        }
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
                // kahan modes: this token block's partial first (zeroed rows), then folded
                // into dC through the compensation rows.
                let part = bw.compC != nil ? ws.partials?.base : nil
                for q in 0..<e.vc {
                    if let part {
                        (part + q * d).update(repeating: 0, count: d)
                        ws.outRows.base[q] = part + q * d
                    } else {
                        ws.outRows.base[q] = bw.dC + Int(bw.order[e.v0 + q]) * d
                    }
                }
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
                if let part, let comp = bw.compC {
                    for q in 0..<e.vc {
                        let o = Int(bw.order[e.v0 + q]) * d
                        kahanAxpy(bw.dC + o, comp + o, 1, part + q * d, count: d)
                    }
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
