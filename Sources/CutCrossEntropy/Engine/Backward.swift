// The backward pass: dE, dC and dBias from recomputed tiles, with gradient filtering.
//
// For active token i with upstream gradient g_i (g/count for mean, g for sum, g[pos] for
// none) and p_iv = e^(z_iv − lse_i):
//     ∂loss_i/∂z_iv = (1 + 2·zloss·lse_i)·p_iv − α/V − (1 − α)·[v = t_i]
//     dy_iv = g_i · ∂loss_i/∂z_iv · (1 − (z_iv/s)²)          (soft cap; else factor 1)
//     dE_i = Σ_v dy_iv C_v,   dC_v = Σ_i dy_iv e_i,   dBias_v = Σ_i dy_iv.
// With class weights (Forward.swift gives the loss) the same with
//     ∂loss_i/∂z_iv = coef_i·p_iv − (α/V)·w_v − (1 − α)·w_{t_i}·[v = t_i],
//     coef_i = w_{t_i}·(1 − α + 2·zloss·lse_i) + α·W/V   (LossDefinition),
// so for α = 0 every entry is w_{t_i} times the unweighted one, and for α > 0 the smoothing
// term is per class (weightedGradientEpilogue). ε is compared with this weighted ∂loss/∂z.
//
// Schedule (Engine.swift): workers own token blocks (in the fused call, parts of one:
// consecutive rows of it, `count` of them from `first`). For each vocabulary block of VB
// entries, in the sorted order (VocabularyOrder.swift), a worker recomputes the logit
// tile, turns each row into dy, and keeps only the rows where some
// |∂loss_i/∂z_iv|·cap' ≥ ε or the row's target falls in this block (gradient filtering;
// a tile none of whose rows is kept is skipped). Then:
//   dE rows of the kept tokens += dy · C_block      (rank-VB update; rows are the worker's own)
//   dC rows of the block       += dyᵀ · E_kept       (rank-kept update; rows shared by all)
// dC's entry filter (BackwardPolicy.entryEpsilon): inside a kept row segment, an entry with
// |∂loss_i/∂z_iv|·cap' < ε/16 enters dC and dBias as zero, and a column none of whose kept
// entries passes is not queued: the C row's dC is neither read nor written. A segment is
// kept because one entry is large (often only its target), so without this every dC update
// would read and write all VB rows of the block (V·D·4 bytes per token block, the
// backward's largest memory traffic) for a few entries. Dropped entries are each below
// ε/16; on LM-like data dC's error is that of the row-segment filter alone (NUMERICS.md).
// Leaving out a column whose every term is zero changes no bit of any sum.
// dC is accumulated without races and deterministically by the ordered hand-off
// (CCERuntime/HandOff.swift): token block b adds into vocabulary block j only after block
// b − 1 has. Every dE element is a sum, in sorted vocabulary order, of per-block partials
// (each a VB-term FMA chain), and every dC element one sequential FMA chain over the tokens
// in order, so the results are bitwise reproducible and independent of the thread count,
// of NB and of which rows share a tile (the fused call's backward parts).
//
// Skipping without recomputing (the fused call): the forward kept each row's largest
// logit m_ij per forward block. With the LSE known, every entry of that block has
// p ≤ e^(m_ij − lse_i), so |∂loss/∂z| ≤ |coef_i|·e^(m_ij − lse_i) + (α/V)·max_v w_v; when
// that bound is below ε and the target is elsewhere, the row would be filtered anyway, and
// its logits are not recomputed at all (6-row panels with no such row are skipped inside
// the tile product). Without the dropped-mass estimate the result is bitwise the same as
// the two-call path.
//
// Reading the forward's logits instead (the fused call, Options.savedLogitsPerRow): the
// forward keeps, per row and forward block, every logit with z ≥ lse_running + log(ε/16)
// and the target's (SavedLogits in Workspace.swift); lse only grows, so every entry left out
// has p < ε/16 at the end, and with α/V < ε/16 an |∂loss/∂z| below dC's entry filter, which
// zeroes it anyway. Such a row is not recomputed (fromSaved): dy at its kept entries, 0
// elsewhere, kept by the same rule; its dE from those entries alone (only their C rows are
// read), its dC through the same queue as a recomputed row's. So dC and the loss are bitwise
// the same as when recomputing (dBias too without its estimate); dE loses, from the rows the
// filter keeps, the entries below ε/16, which the estimates below then carry (the forward's block statistics hold the
// log-sum-exp of the entries not kept, U_iF, for such a row). A row keeps at most
// `perRow` entries; from the forward block where it would run out, or would keep more than
// 3/4 of the block (a flat row, cheaper recomputed than added entry by entry), it is
// recomputed as before (its choices depend on the row alone, not on NB or the thread count).
//
// Dropped-mass estimate (Options.filterCorrection): a filtered row segment (i, J) still has
// Σ_{v∈J} dy_iv C_v = r_iJ·C̄_J + Σ_{v∈J} (dy_iv − r_iJ/|J|)(C_v − C̄_J), with r_iJ = Σ_{v∈J} dy_iv
// and C̄_J the mean of the block's C rows. The first term is added to dE_i; only the
// second, the part that varies inside the block, is lost. For a recomputed row r_iJ is
// summed from its dy; for a row the fused call never recomputes, r over the whole forward
// block F is g_i·[(1 + 2·zloss·lse_i)·e^(L_iF − lse_i) − α·|F|/V] from the forward's block
// log-sum-exp L_iF (minus the part of a sub-block recomputed for its target, whose C rows
// then leave the mean too). Under a soft cap the fused call recomputes every row (the cap's
// derivative is not in L_iF). dBias gets the dropped totals too, per forward block, spread
// over the block's classes after the sweep (DroppedBiasMass, at the end of this file); dC
// gets no estimate, but label smoothing's uniform
// term −(α/V)·w_v·g_i, which every entry holds and every filtered one used to drop with one
// sign, is taken out of their updates (queueC) and added for every token and class once the
// sweep is done (Engine.separatesSmoothing, addUniformSmoothing); dE keeps it in dy.
//
// Policy (Policy.swift): `kahan` accumulation adds each dE partial (per vocabulary block)
// and each dC partial (per chunk of 96 tokens, TilePlan.compensatedChunk: the token blocks
// are multiples of it, so dC too is independent of NB) through a Kahan compensation row; a policy that
// does not filter dE (kahan-full-e) keeps every recomputed row for dE and filters only dC,
// one that does not filter dC (kahan-full-c) the reverse (both recompute every row).
//
// Stages of one (token block, vocabulary block) step, each a function below:
//   1. rowsToRecompute   which rows the forward's bound cannot rule out (fused call);
//   2. recompute         their logit tile;
//   3. toGradients       logits -> dy, the filter, the estimate of filtered segments;
//   4. updateE           dE of the kept rows (the worker's own rows, at once);
//   2-4. fromSaved       the same for the rows whose logits the forward kept;
//   5. queueC / flush    dC and dBias of the kept rows, in the hand-off's order;
//   6. estimateSkipped   at the end of a forward block, the estimate of the rows the bound
//                        skipped without recomputing them (their coefficients; one rank
//                        update adds them all at the end of the token block:
//                        addSkippedEstimates).

import CCEKernels
import CCERuntime
import Synchronization

/// Where the backward adds its results: zeroed gradient buffers, and the compensation rows
/// of the kahan accumulation.
struct GradientOutputs<S: KernelScalar>: @unchecked Sendable {
    let dE: UnsafeMutablePointer<S>     // n x D
    let dC: UnsafeMutablePointer<S>     // V x D
    let dBias: UnsafeMutablePointer<S>? // V
    let compE: UnsafeMutablePointer<S>? // kahan: n x D compensation
    let compC: UnsafeMutablePointer<S>? // kahan: V x D compensation
    /// V flags: set for every dC row written (GradientDestination.touchedRows), or nil.
    var touched: UnsafeMutablePointer<Bool>? = nil
}

/// What the backward reads besides the operands: the forward's LSE, the upstream gradient,
/// the resolved policy, and where the gradients go.
struct BackwardState<S: KernelScalar>: @unchecked Sendable {
    let lse: UnsafePointer<S>          // per active token
    let upstream: UnsafePointer<S>     // g_i per active token
    let policy: BackwardPolicy
    let outputs: GradientOutputs<S>
    /// Label smoothing's uniform term −(α/V)·w_v·g_i is left out of the dC and dBias updates
    /// and added once for every (token, class) after the sweep (`separatesSmoothing`).
    let separatesSmoothing: Bool
    /// dBias's dropped-mass estimate (with the policy's estimate and a dBias), else nil.
    var droppedBias: DroppedBiasMass? = nil

    /// ε in S; −1 (every |dy| passes) when nothing is filtered.
    var epsilon: S { policy.epsilon.map { S($0) } ?? -1 }

    /// The entry filter's threshold on |dy| of token first + i: policy.entryEpsilon·|g|.
    func entryThreshold(first: Int) -> ((Int) -> S)? {
        guard let e = policy.entryEpsilon else { return nil }
        let eps = S(e), upstream = self.upstream
        return { i in eps * abs(upstream[first + i]) }
    }
}

/// What the backward skipped, for reports and `cce explain`.
public struct FilterStatistics: Sendable {
    /// (token block x vocabulary block) tiles, and how many were skipped entirely.
    public var tiles = 0, skippedTiles = 0
    /// (token x vocabulary block) row segments, and how many were kept.
    public var rowSegments = 0, keptRowSegments = 0
    /// Row segments whose logits were never recomputed (fused call only).
    public var boundSkippedRowSegments = 0
    /// The rows of the backward's tiles: the token block NB the call's sweep ran (a fused call
    /// that keeps logits may run smaller blocks than `CutCrossEntropy.plan` reports:
    /// TilePlan.limitingRowsInFlight), or in the fused call the part of it one backward item
    /// took (TilePlan.backwardParts); the largest of the sweeps added, 0 for none.
    public var tokenBlock = 0
    /// Logits the fused call's forward kept for its backward (Options.savedLogitsPerRow), over
    /// every token block: 6 bytes each while their block is in flight.
    public var savedLogits = 0

    mutating func add(_ o: FilterStatistics) {
        tiles += o.tiles; skippedTiles += o.skippedTiles
        rowSegments += o.rowSegments; keptRowSegments += o.keptRowSegments
        boundSkippedRowSegments += o.boundSkippedRowSegments
        savedLogits += o.savedLogits
        tokenBlock = max(tokenBlock, o.tokenBlock)
    }
}

/// One backward step's rows: which were recomputed, and which were kept for dE and dC.
struct KeptRows {
    /// Rows recomputed (selected[0 ..< recomputed] in the workspace).
    var recomputed = 0
    /// Whether the tile holds only the recomputed rows (row r for selected[r]).
    var compact = false
    /// Kept rows (keep[0 ..< kept]), and how many of them enter dE and dC.
    var kept = 0, forE = 0, forC = 0
}

enum Backward {
    /// The backward of active tokens first ..< first + count, whose E rows `workspace` holds;
    /// `b` is their turn in dC's hand-off (the token block's number, or in the fused call its
    /// part's, numbered on in token order). With `blockStats` (from the fused forward), rows bounded below ε
    /// are not recomputed.
    static func block<S: KernelScalar>(
        _ operands: Operands<S>, _ state: BackwardState<S>, _ workspace: Workspace<S>, handOff: HandOff,
        b: Int, first: Int, count: Int, loss definition: LossDefinition<S>, blockStats: BlockStatistics?,
        stats: inout FilterStatistics
    ) {
        let plan = operands.plan
        let vb = plan.vocabBlock, forwardVB = plan.forwardVocabBlock
        let vBlocks = (operands.v + vb - 1) / vb
        let policy = state.policy
        // The bound needs filtering on both sides, and the estimate needs no soft cap.
        let bound = policy.filtersBoth && !(policy.estimate && definition.cap != nil) ? blockStats : nil
        if bound != nil { for i in 0..<count { workspace.residualOn.base[i] = false } }
        for j in 0..<vBlocks {
            let v0 = j * vb, vc = min(vb, operands.v - v0)
            let forwardBlock = v0 / forwardVB
            let startsForward = v0 % forwardVB == 0
            let endsForward = v0 + vc == min(operands.v, (forwardBlock + 1) * forwardVB)
            var rows = KeptRows()
            stats.tiles += 1; stats.rowSegments += count
            // Rows whose logits of this forward block the forward kept are not recomputed.
            if startsForward, let segments = workspace.savedSegments { workspace.saved = segments.logits(forwardBlock) }
            let saved = bound != nil ? workspace.saved : nil
            if let saved, startsForward {
                saved.locateRows(block: forwardBlock, rows: workspace.savedRowOffset..<workspace.savedRowOffset + count)
            }
            rows.recomputed = rowsToRecompute(operands, state, workspace, bound: bound, saved: saved,
                                              first: first, count: count,
                                              v0: v0, vc: vc, startsForward: startsForward, loss: definition)
            stats.boundSkippedRowSegments += count - rows.recomputed
            if rows.recomputed > 0 {
                recompute(operands, workspace, &rows, first: first, count: count, v0: v0, vc: vc)
                // Rows the bound skipped get their estimate at the end of the forward block,
                // which needs this block's T_j: formed now, while the block's C rows are still
                // in cache. (A filtered recomputed row asks for it in toGradients, just as hot;
                // where neither happens, as in Float32 where nearly every row is kept, T_j is
                // never formed.)
                if policy.estimate && rows.recomputed < count && workspace.saved?.setting.forwardSums == nil {
                    _ = workspace.blockSums?.block(operands, j)
                }
                toGradients(operands, state, workspace, &rows, bounded: bound != nil, first: first, j: j,
                            v0: v0, vc: vc, loss: definition)
            }
            // dE from the rows kept for it, dC (queued, applied in hand-off order) from the
            // rows kept for it. One set contains the other; the larger goes first, then
            // the tile is compacted to the smaller.
            if let saved, let bound {
                // Both filters on (Engine.savesLogits): every kept row is kept for dE and dC.
                // The recomputed rows' dE by the tile kernel, the saved rows' from their entries;
                // then all of them, in token order, to dC.
                updateE(operands, state, workspace, first: first, m: rows.forE, v0: v0, vc: vc)
                fromSaved(operands, state, workspace, saved, bound: bound, &rows, first: first, count: count,
                          v0: v0, vc: vc, startsForward: startsForward, loss: definition)
                queueC(operands, state, workspace, handOff, b: b, j: j, v0: v0, vc: vc, first: first, kept: rows.kept,
                       loss: definition)
            } else if rows.forC == rows.kept {
                queueC(operands, state, workspace, handOff, b: b, j: j, v0: v0, vc: vc, first: first, kept: rows.forC,
                       loss: definition)
                if rows.forE < rows.kept { compactTile(workspace, count: rows.kept, where: workspace.inE.base) }
                updateE(operands, state, workspace, first: first, m: rows.forE, v0: v0, vc: vc)
            } else {
                updateE(operands, state, workspace, first: first, m: rows.forE, v0: v0, vc: vc)
                compactTile(workspace, count: rows.kept, where: workspace.inC.base)
                queueC(operands, state, workspace, handOff, b: b, j: j, v0: v0, vc: vc, first: first, kept: rows.forC,
                       loss: definition)
            }
            stats.keptRowSegments += rows.kept
            if rows.kept == 0 { stats.skippedTiles += 1 }
            flush(operands, state, workspace, handOff, b: b, blocking: false)
            if policy.estimate, bound != nil, endsForward {
                estimateSkipped(operands, state, workspace, forwardBlock: forwardBlock, first: first, count: count)
            }
            if endsForward, let dropped = state.droppedBias, workspace.droppedBias != 0 {
                dropped.add(workspace.droppedBias, forwardBlock: forwardBlock)
                workspace.droppedBias = 0
            }
        }
        flush(operands, state, workspace, handOff, b: b, blocking: true)
    }

    /// Stage 1: marks in `need` the rows whose logits must be recomputed for vocabulary
    /// block v0 ..< v0 + vc (all of them without a bound) and returns how many. With the
    /// bound, a row is skipped when (1 + 2·zloss·lse)·e^(m − lse) + α/V < ε over its forward
    /// block and its target lies elsewhere; at the start of a forward block, the estimate's
    /// residual r_iF of such rows is set from the block's log-sum-exp.
    static func rowsToRecompute<S: KernelScalar>(
        _ operands: Operands<S>, _ state: BackwardState<S>, _ workspace: Workspace<S>, bound: BlockStatistics?,
        saved: SavedLogits<S>? = nil,
        first: Int, count: Int, v0: Int, vc: Int, startsForward: Bool, loss definition: LossDefinition<S>
    ) -> Int {
        let need = workspace.need.base
        guard let bound else {
            for i in 0..<count { need[i] = true }
            return count
        }
        let forwardVB = operands.plan.forwardVocabBlock
        let forwardBlock = v0 / forwardVB
        let forwardCount = min(forwardVB, operands.v - forwardBlock * forwardVB)
        let smoothBound = definition.smoothingBound, eps = state.epsilon
        let smoothMass = definition.smoothingMass(forwardBlock: forwardBlock, count: forwardCount)
        let correcting = startsForward && state.policy.estimate
        let panelNeeded = workspace.panelNeeded.base
        var needed = 0
        let maskRows = workspace.maskRows
        for p in 0..<(count + maskRows - 1) / maskRows { panelNeeded[p] = false }
        for i in 0..<count {
            // A row whose logits the forward kept is fromSaved's.
            if let saved, saved.covers(row: workspace.savedRowOffset + i, block: forwardBlock) { need[i] = false; continue }
            let l = state.lse[first + i], coef = definition.softmaxCoefficient(lse: l, token: first + i)
            let targetPosition = Int(operands.targetPosition[first + i]) - v0
            let blockMax: S = bound.bound(row: i, block: forwardBlock)
            let skippable = abs(coef) * S.exp(blockMax - l) + smoothBound < eps
            if correcting {
                workspace.residualOn.base[i] = skippable
                workspace.excluded.base[i] = -1
                if skippable {
                    let blockLogSum: S = bound.logSum(row: i, block: forwardBlock)
                    workspace.residual.base[i] = state.upstream[first + i]
                        * (coef * S.exp(blockLogSum - l) - smoothMass)
                    workspace.residualSmoothing.base[i] = state.upstream[first + i] * smoothMass
                }
            }
            need[i] = !skippable || (targetPosition >= 0 && targetPosition < vc)
            if need[i] { needed += 1; panelNeeded[i / maskRows] = true }
        }
        return needed
    }

    /// Stages 2 to 4 for the rows whose logits of this forward block the forward kept
    /// (SavedLogits), which are not recomputed: such a row gets dy at its kept entries and 0
    /// elsewhere (each entry left out has |∂loss/∂z| < ε/16, which dC's entry filter zeroes
    /// anyway), and is kept by the same rule as a recomputed row. Its dE update runs over its
    /// kept entries alone (one FMA chain per element over them, in column order: only their C
    /// rows are read); then the kept rows join the recomputed ones (tile rows 0 ..< rows.kept)
    /// in token order, for dC. At the start of the forward block each such row gets the
    /// estimate's residual of what was not kept, r_iF = g_i·[coef_i·e^(U_iF − lse_i) −
    /// (α/V)·(|F| − n_iF)], U_iF being the log-sum-exp of the entries not kept (the forward's
    /// block statistics) and n_iF how many were; the kept entries of a row that is not kept
    /// add their dy to it. At the end of the forward block the estimate adds r_iF times the
    /// block's mean C row (estimateSkipped).
    static func fromSaved<S: KernelScalar>(
        _ operands: Operands<S>, _ state: BackwardState<S>, _ workspace: Workspace<S>, _ saved: SavedLogits<S>,
        bound: BlockStatistics, _ rows: inout KeptRows, first: Int, count: Int, v0: Int, vc: Int,
        startsForward: Bool, loss definition: LossDefinition<S>
    ) {
        let forwardVB = operands.plan.forwardVocabBlock, vb = workspace.vb, d = operands.d
        let f = v0 / forwardVB
        let smooth = definition.smoothingShare, eps = state.epsilon
        let estimate = state.policy.estimate
        let o = workspace.savedRowOffset   // saved row o + i is this part's row i
        if startsForward && estimate {
            let width = S(min(forwardVB, operands.v - f * forwardVB))
            for i in 0..<count where saved.covers(row: o + i, block: f) {
                let l = state.lse[first + i], coef = definition.softmaxCoefficient(lse: l, token: first + i)
                let n = S(Int(saved.rowEnd.base[o + i] - saved.rowStart.base[o + i]))
                let rest: S = bound.logSum(row: i, block: f)
                workspace.residualOn.base[i] = true
                workspace.excluded.base[i] = -1
                workspace.residual.base[i] = state.upstream[first + i] * (coef * S.exp(rest - l) - smooth * (width - n))
                workspace.residualSmoothing.base[i] = state.upstream[first + i] * smooth * (width - n)
            }
        }
        let q0 = v0 - f * forwardVB, q1 = q0 + vc
        let scratch = workspace.fromSaved
        let tile = scratch.tile.base, cRows = scratch.cRows.base, columns = scratch.columns.base
        var kept = 0
        for i in 0..<count where saved.covers(row: o + i, block: f) {
            var e = Int(saved.rowStart.base[o + i])
            let end = Int(saved.rowEnd.base[o + i])
            while e < end && Int(saved.keys.base[e] & 0xFF) < q0 { e += 1 }
            guard e < end && Int(saved.keys.base[e] & 0xFF) < q1 else { continue }
            let l = state.lse[first + i], g = state.upstream[first + i]
            let coef = definition.softmaxCoefficient(lse: l, token: first + i)
            let row = tile + kept * vb
            // An entry the forward did not keep (p < ε/16) is 0 here; where dC's updates take
            // the smoothing term back out (queueC) it goes in as (α/V)·g, which dC's entry
            // filter zeroes: logits are saved only with α/V < ε/16 (Engine.savesLogits).
            row.update(repeating: 0, count: vc)
            var significant = false, sum: S = 0, n = 0
            while e < end, case let q = Int(saved.keys.base[e] & 0xFF), q < q1 {
                let gq = coef * S.exp(saved.values.base[e] - l) - smooth
                significant = significant || abs(gq) >= eps
                row[q - q0] = gq
                sum += gq
                columns[n] = q - q0
                cRows[n] = operands.sortedCRow(v0 + q - q0)
                n += 1; e += 1
            }
            let targetPosition = Int(operands.targetPosition[first + i]) - v0
            let hasTarget = targetPosition >= 0 && targetPosition < vc
            guard significant || hasTarget else {
                if estimate {
                    workspace.residual.base[i] += g * sum
                    workspace.residualSmoothing.base[i] += g * smooth * S(n)
                }
                continue
            }
            if hasTarget { row[targetPosition] -= definition.targetShare(token: first + i) }
            scaleRow(row, count: vc, by: g)
            // dE_i += Σ over the kept entries of dy·C_v, in column order.
            for t in 0..<n { scratch.dy.base[t] = row[columns[t]] }
            addEntries(operands, dE: state.outputs.dE + Int(operands.problem.rows[first + i]) * d,
                       values: scratch.dy.base, rows: cRows, count: n, scratch: scratch.cRow.base)
            scratch.keep.base[kept] = i
            kept += 1
        }
        guard kept > 0 else { return }
        // Merge into the tile's recomputed kept rows (both in token order), from the back.
        var a = rows.kept - 1, bIndex = kept - 1, out = rows.kept + kept - 1
        while bIndex >= 0 {
            if a >= 0 && workspace.keep.base[a] > scratch.keep.base[bIndex] {
                (workspace.tile.base + out * vb).update(from: workspace.tile.base + a * vb, count: vc)
                workspace.keep.base[out] = workspace.keep.base[a]
                a -= 1
            } else {
                (workspace.tile.base + out * vb).update(from: tile + bIndex * vb, count: vc)
                workspace.keep.base[out] = scratch.keep.base[bIndex]
                bIndex -= 1
            }
            out -= 1
        }
        rows.kept += kept; rows.forC += kept
    }

    /// dE_row += Σ_t values[t]·C_t over `count` C rows (stored type), one FMA chain per element
    /// in t order: the 512-bit kernel, or (portable) each row converted, then added by axpy.
    static func addEntries<S: KernelScalar>(_ operands: Operands<S>, dE: UnsafeMutablePointer<S>, values: UnsafePointer<S>,
                                            rows: UnsafePointer<UnsafeRawPointer>, count: Int,
                                            scratch: UnsafeMutablePointer<S>) {
        let d = operands.d
        if S.self == Float.self && hasAVX512 {
            UnsafeMutableRawPointer(dE).withMemoryRebound(to: Float.self, capacity: d) { out in
                UnsafeRawPointer(values).withMemoryRebound(to: Float.self, capacity: count) { v in
                    sparseUpdateAVX512(out: out, nnz: count, values: v, b: rows, bType: operands.cType, width: d)
                }
            }
            return
        }
        for t in 0..<count {
            convertRow(rows[t], type: operands.cType, count: d, into: scratch)
            axpy(dE, values[t], UnsafePointer(scratch), count: d)
        }
    }

    /// Stage 2: the logit tile of the rows marked in `need`: only those rows when they are
    /// few (rows.compact: tile row r for selected[r]), else the whole tile with the row
    /// groups (the kernel's register-block height) holding no needed row left out.
    static func recompute<S: KernelScalar>(_ operands: Operands<S>, _ workspace: Workspace<S>, _ rows: inout KeptRows,
                                           first: Int, count: Int, v0: Int, vc: Int) {
        let selected = workspace.selected.base
        var n = 0
        for i in 0..<count where workspace.need.base[i] { selected[n] = i; n += 1 }
        rows.compact = n < count && n <= workspace.selectedLimit && operands.backend == .swiftSIMD
        if rows.compact {
            workspace.selectedProduct(operands, first: first, n: n, v0: v0, vc: vc, ldo: workspace.vb)
        } else {
            workspace.product(operands, count: count, v0: v0, vc: vc, ldo: workspace.vb,
                              panelMask: n < count ? UnsafePointer(workspace.panelNeeded.base) : nil)
        }
    }

    /// Stage 3: each recomputed row's logits become dy = g·∂loss/∂z (target term included);
    /// a row is kept for dE / dC when some |∂loss/∂z|·cap' ≥ ε, its target is in the block,
    /// or the policy does not filter that gradient. Kept rows move to the front of the tile
    /// (keep, inE, inC say which rows they were and where they go). A row filtered out of
    /// dE adds the block-mean estimate of what it dropped (when the policy asks for it).
    static func toGradients<S: KernelScalar>(
        _ operands: Operands<S>, _ state: BackwardState<S>, _ workspace: Workspace<S>, _ rows: inout KeptRows,
        bounded: Bool, first: Int, j: Int, v0: Int, vc: Int, loss definition: LossDefinition<S>
    ) {
        let policy = state.policy, vb = workspace.vb
        let smooth = definition.smoothingShare, eps = state.epsilon
        for r in 0..<rows.recomputed {
            let i = workspace.selected.base[r]
            let row = workspace.tile.base + (rows.compact ? r : i) * vb
            if let bias = operands.bias {
                for q in 0..<vc { row[q] += bias[Int(operands.order[v0 + q])] }
            }
            logitEpilogue(row, count: vc, bias: nil, cap: definition.cap)
            let targetPosition = Int(operands.targetPosition[first + i]) - v0
            let hasTarget = targetPosition >= 0 && targetPosition < vc
            let targetLogit = hasTarget ? row[targetPosition] : 0
            let l = state.lse[first + i]
            let g = state.upstream[first + i]
            let coef = definition.softmaxCoefficient(lse: l, token: first + i)
            let significant = if let w = definition.weights, definition.perClassSmoothing {
                weightedGradientEpilogue(row, count: vc, lse: l, coef: coef, share: smooth,
                                         weights: w.byPosition + v0, cap: definition.cap, eps: eps)
            } else {
                gradientEpilogue(row, count: vc, lse: l, coef: coef, smooth: smooth, cap: definition.cap, eps: eps)
            }
            let keepE = significant || hasTarget || !policy.filtersDE
            let keepC = significant || hasTarget || !policy.filtersDC
            if policy.estimate {
                if bounded && workspace.residualOn.base[i] {
                    // Recomputed for its target inside a block the estimate covers: this
                    // sub-block is exact, so it leaves the estimate.
                    workspace.residual.base[i] -= g * tileRowSum(row, count: vc)
                    workspace.residualSmoothing.base[i] -= g * smoothingSum(definition, v0: v0, vc: vc)
                    workspace.excluded.base[i] = j
                } else if !keepE || !keepC {
                    let sum = g * tileRowSum(row, count: vc)
                    if !keepE {
                        addEstimate(state, row: Int(operands.problem.rows[first + i]), d: operands.d,
                                    scale: sum / S(vc), sum: workspace.blockSums!.block(operands, j))
                    }
                    if !keepC, state.droppedBias != nil {
                        // The segment's dy leaves dBias too (its smoothing term not, where the
                        // call adds that term apart).
                        let back = state.separatesSmoothing ? g * smoothingSum(definition, v0: v0, vc: vc) : 0
                        workspace.droppedBias &+= DroppedBiasMass.fixed(sum + back)
                    }
                }
            }
            guard keepE || keepC else { continue }
            if hasTarget {
                row[targetPosition] -= definition.targetShare(token: first + i) * softcapDerivative(targetLogit, cap: definition.cap)
            }
            scaleRow(row, count: vc, by: g)
            let dst = workspace.tile.base + rows.kept * vb
            if dst != row { dst.update(from: row, count: vc) }
            workspace.keep.base[rows.kept] = i
            workspace.inE.base[rows.kept] = keepE; workspace.inC.base[rows.kept] = keepC
            rows.kept += 1
            if keepE { rows.forE += 1 }
            if keepC { rows.forC += 1 }
        }
    }

    /// Stage 6: at the end of forward block f, each row the bound skipped over f gets its
    /// estimate r_if · (mean C row of f), minus the sub-block it was recomputed in for its
    /// target (whose C rows then leave the mean too): the coefficient c_if = r_if / |f| (or
    /// r_if / (|f| − |sub-block|)) goes into the row's slot of the chunk (SkippedEstimates), 0 for
    /// rows not skipped, and `addSkippedEstimates` adds the chunk's when it ends; the excluded
    /// sub-block's part is added now. In the kahan accumulation every part is added now,
    /// through the compensation rows.
    static func estimateSkipped<S: KernelScalar>(_ operands: Operands<S>, _ state: BackwardState<S>,
                                                 _ workspace: Workspace<S>, forwardBlock f: Int, first: Int, count: Int) {
        let vb = operands.plan.vocabBlock, forwardVB = operands.plan.forwardVocabBlock
        let forwardBlocks = (operands.v + forwardVB - 1) / forwardVB
        let forwardCount = min(forwardVB, operands.v - f * forwardVB)
        let sums = workspace.blockSums!, skipped = workspace.skipped!, now = state.outputs.compE != nil
        let chunk = SkippedEstimates<S>.chunk
        var total: UnsafePointer<S>? = nil   // F_f, formed when a row first needs it
        let dropsBias = state.droppedBias != nil
        for i in 0..<count {
            let slot = skipped.coefficients.base + i * chunk + f % chunk
            slot.pointee = 0
            guard workspace.residualOn.base[i] else { continue }
            let row = Int(operands.problem.rows[first + i])
            let excludedBlock = workspace.excluded.base[i]
            let residual = workspace.residual.base[i]
            if dropsBias {   // what this row of f gave no dBias update (without the smoothing term, where apart)
                let back = state.separatesSmoothing ? workspace.residualSmoothing.base[i] : 0
                workspace.droppedBias &+= DroppedBiasMass.fixed(residual + back)
            }
            var s = residual / S(forwardCount)
            if excludedBlock >= 0 {
                let excludedCount = min(vb, operands.v - excludedBlock * vb)
                guard forwardCount > excludedCount else { continue }
                s = residual / S(forwardCount - excludedCount)
                addEstimate(state, row: row, d: operands.d, scale: -s, sum: sums.block(operands, excludedBlock))
            }
            let sum = total ?? {
                // The call's table of every F_f when it formed one (its BFloat16 bits, converted
                // exactly into this chunk's slot), else formed now.
                if let table = workspace.saved?.setting.forwardSums {
                    convertRow(table + f * operands.d, type: .bfloat16, count: operands.d, into: skipped.slot(f))
                    return skipped.use(UnsafePointer(skipped.slot(f)), for: f)
                }
                sums.forward(operands, f, into: skipped.slot(f))
                return skipped.use(UnsafePointer(skipped.slot(f)), for: f)
            }()
            total = sum
            if now { addEstimate(state, row: row, d: operands.d, scale: s, sum: sum) } else { slot.pointee = s }
        }
        guard !now else { return }
        // No row needs F_f: its coefficients are all 0, and a zero row adds the same bits.
        if total == nil {
            skipped.slot(f).update(repeating: 0, count: operands.d)
            _ = skipped.use(UnsafePointer(skipped.slot(f)), for: f)
        }
        if f % chunk == chunk - 1 || f == forwardBlocks - 1 {
            addSkippedEstimates(operands, state, workspace, blocks: f % chunk + 1, first: first, count: count)
        }
    }

    /// The skipped rows' estimates over the chunk's first `blocks` forward blocks at once:
    /// dE_i += Σ_f c_if · F_f over the coefficients estimateSkipped left, as one rank update whose sum is formed from
    /// +0 and then added to dE (the chunks are fixed, so the bits do not depend on NB or the
    /// thread count). One pass over the block's dE rows per chunk instead of one per row and
    /// forward block.
    static func addSkippedEstimates<S: KernelScalar>(_ operands: Operands<S>, _ state: BackwardState<S>,
                                                     _ workspace: Workspace<S>, blocks: Int, first: Int, count: Int) {
        let skipped = workspace.skipped!, d = operands.d, chunk = SkippedEstimates<S>.chunk
        let coefficients = skipped.coefficients.base
        // Only the rows with a skipped segment in the chunk (none, when the filter keeps nearly
        // everything): the others' coefficients are all 0. Rows are independent, so this
        // changes no bit.
        var m = 0
        for i in 0..<count where (0..<blocks).contains(where: { coefficients[i * chunk + $0] != 0 }) {
            workspace.outRows.base[m] = state.outputs.dE + Int(operands.problem.rows[first + i]) * d
            (workspace.tile.base + m * chunk).update(from: coefficients + i * chunk, count: blocks)
            m += 1
        }
        guard m > 0 else { return }
        workspace.rankUpdate(out: workspace.outRows.base, m: m, a: workspace.tile.base, ars: chunk, aks: 1,
                             b: UnsafePointer(skipped.wholeRows.base), k: blocks, blocked: true)
    }

    /// dE_row += scale · sum (compensated in the kahan accumulation).
    @inline(__always)
    static func addEstimate<S: KernelScalar>(_ state: BackwardState<S>, row: Int, d: Int, scale: S,
                                             sum: UnsafePointer<S>) {
        let out = state.outputs
        if let c = out.compE {
            kahanAxpy(out.dE + row * d, c + row * d, scale, sum, count: d)
        } else {
            axpy(out.dE + row * d, scale, sum, count: d)
        }
    }

    /// Moves the tile rows r < count with flag[r] (and their keep entries) to the front, in order.
    static func compactTile<S: KernelScalar>(_ workspace: Workspace<S>, count: Int, where flag: UnsafePointer<Bool>) {
        var m = 0
        for r in 0..<count where flag[r] {
            if m != r {
                (workspace.tile.base + m * workspace.vb).update(from: workspace.tile.base + r * workspace.vb,
                                                                count: workspace.vb)
                workspace.keep.base[m] = workspace.keep.base[r]
            }
            m += 1
        }
    }

    /// Stage 4: dE rows of keep[0 ..< m] += their dy (tile rows 0 ..< m) · C_block, as one
    /// blocked rank-vc update; in the kahan accumulation the partial goes through the
    /// compensation rows.
    static func updateE<S: KernelScalar>(
        _ operands: Operands<S>, _ state: BackwardState<S>, _ workspace: Workspace<S>, first: Int,
        m: Int, v0: Int, vc: Int
    ) {
        guard m > 0 else { return }
        let d = operands.d, out = state.outputs
        let offset = { (r: Int) in Int(operands.problem.rows[first + workspace.keep.base[r]]) * d }  // of kept row r in dE
        if let comp = out.compE, let part = workspace.partials?.base {
            for r in 0..<m {
                (part + r * d).update(repeating: 0, count: d)
                workspace.outRows.base[r] = part + r * d
            }
            workspace.rankUpdateC(operands, out: workspace.outRows.base, m: m, v0: v0, vc: vc)
            for r in 0..<m { kahanAxpy(out.dE + offset(r), comp + offset(r), 1, part + r * d, count: d) }
        } else {
            for r in 0..<m { workspace.outRows.base[r] = out.dE + offset(r) }
            workspace.rankUpdateC(operands, out: workspace.outRows.base, m: m, v0: v0, vc: vc, blocked: true)
        }
    }

    /// Stage 5a: queues block j's dC update of the `kept` front rows of the tile (flushing
    /// first, waiting if need be, when the queue is full). When the policy filters dC, an
    /// entry with |dy_iv| < (ε/16)·|g_i| goes in as zero, and columns without an entry left
    /// are not queued at all (dC's entry filter).
    static func queueC<S: KernelScalar>(_ operands: Operands<S>, _ state: BackwardState<S>, _ workspace: Workspace<S>,
                                        _ handOff: HandOff, b: Int, j: Int, v0: Int, vc: Int, first: Int, kept: Int,
                                        loss definition: LossDefinition<S>) {
        if kept > 0 && !workspace.pending.fits(kept: kept, vc: vc) {
            flush(operands, state, workspace, handOff, b: b, blocking: true)
        }
        let threshold = state.policy.filtersDC ? state.entryThreshold(first: first) : nil
        var uniform: ((Int) -> S)? = nil, weights: UnsafePointer<S>? = nil
        if state.separatesSmoothing {
            // dy − u: the smoothing term comes back out of every entry (Engine.addUniformSmoothing
            // adds it for every token and class); the entry filter then judges the rest.
            let share = definition.smoothingShare, upstream = state.upstream
            uniform = { i in share * upstream[first + i] }
            if definition.perClassSmoothing, let w = definition.weights { weights = UnsafePointer(w.byPosition + v0) }
        }
        workspace.pending.append(j: j, v0: v0, vc: vc, kept: kept, tile: workspace.tile.base, ldt: workspace.vb,
                                 keep: workspace.keep.base, threshold: threshold, uniform: uniform, weights: weights)
    }

    /// Stage 5b: applies queued dC updates of token block b in order: all of them when
    /// `blocking`, else those whose hand-off turn has already come.
    static func flush<S: KernelScalar>(_ operands: Operands<S>, _ state: BackwardState<S>, _ workspace: Workspace<S>,
                                       _ handOff: HandOff, b: Int, blocking: Bool) {
        let pending = workspace.pending, d = operands.d, out = state.outputs
        while !pending.isEmpty {
            let e = pending.entries[pending.head]
            if !blocking && !handOff.isReady(slot: e.j, turn: b) { return }
            workspace.handOffWait += handOff.wait(slot: e.j, turn: b)
            let applying = PhaseTrace.enabled ? monotonicSeconds() : 0
            defer { if PhaseTrace.enabled { workspace.applyTime += monotonicSeconds() - applying } }
            if e.kept > 0 && e.cols > 0 {
                let columns = pending.columns.base + e.colOffset
                let vocabRow = { (c: Int) in Int(operands.order[e.v0 + columns[c]]) }
                // Only this token block writes these rows now (the hand-off's turn), so the
                // flags need no atomics.
                if let touched = out.touched { for c in 0..<e.cols { touched[vocabRow(c)] = true } }
                let dy = pending.dy.base + e.offset, rows = pending.rows.base + e.rowOffset
                if let comp = out.compC, let part = workspace.partials?.base {
                    compensatedUpdate(operands, workspace, dC: out.dC, comp: comp, part: part, dy: dy, rows: rows,
                                      kept: e.kept, cols: e.cols, vocabRow: vocabRow)
                } else {
                    // dC_v += Σ_r dy_rv · e_r over the kept rows, one sequential FMA chain per element.
                    for c in 0..<e.cols { workspace.outRows.base[c] = out.dC + vocabRow(c) * d }
                    workspace.rankUpdateTokens(out: workspace.outRows.base, m: e.cols, a: dy, ars: 1, aks: e.cols,
                                               nonzero: e.nonzero, rows: rows, k: e.kept, eType: operands.eType)
                }
                if let dBias = out.dBias {
                    for c in 0..<e.cols {
                        var s = dBias[vocabRow(c)]
                        for r in 0..<e.kept { s += dy[r * e.cols + c] }
                        dBias[vocabRow(c)] = s
                    }
                }
            }
            handOff.pass(slot: e.j, turn: b)
            pending.popFirst()
        }
    }

    /// The kahan accumulation's dC update (stage 5b): the kept rows (tile indices rows[0 ..<
    /// kept], in token order; dy row r at dy[r·cols]) split by chunks of
    /// `TilePlan.compensatedChunk` rows of the token block; each chunk's partial, an FMA
    /// chain from +0 over its rows, is added to dC through the compensation rows, column by
    /// column, where the chunk has a nonzero entry in that column. Token blocks are
    /// multiples of the chunk (TilePlan) and follow one another from the call's first token
    /// (a vocabulary shard's: from its exchange chunk's), so the chunks, the partials and the
    /// adds, and dC's bits, do not depend on NB or the thread count.
    /// (Adding a zero partial is not a no-op: it folds the compensation in.)
    static func compensatedUpdate<S: KernelScalar>(
        _ operands: Operands<S>, _ workspace: Workspace<S>, dC: UnsafeMutablePointer<S>, comp: UnsafeMutablePointer<S>,
        part: UnsafeMutablePointer<S>, dy: UnsafePointer<S>, rows: UnsafePointer<Int>, kept: Int, cols: Int,
        vocabRow: (Int) -> Int
    ) {
        let d = operands.d, k = TilePlan.compensatedChunk
        var s = 0
        while s < kept {
            let chunk = rows[s] / k
            var t = s + 1
            while t < kept && rows[t] / k == chunk { t += 1 }
            var nonzero = 0
            for q in s * cols..<t * cols where dy[q] != 0 { nonzero += 1 }
            for c in 0..<cols {
                (part + c * d).update(repeating: 0, count: d)
                workspace.outRows.base[c] = part + c * d
            }
            workspace.rankUpdateTokens(out: workspace.outRows.base, m: cols, a: dy + s * cols, ars: 1, aks: cols,
                                       nonzero: nonzero, rows: rows + s, k: t - s, eType: operands.eType)
            for c in 0..<cols where (s..<t).contains(where: { dy[$0 * cols + c] != 0 }) {
                let o = vocabRow(c) * d
                kahanAxpy(dC + o, comp + o, 1, part + c * d, count: d)
            }
            s = t
        }
    }
}

/// `gradientEpilogue` with a smoothing term per class: dz_q = coef·e^(z_q − lse) − share·w[q]
/// (times the soft cap's derivative), in place; reports whether any |dz| ≥ eps. Used only
/// with class weights and label smoothing (LossDefinition.perClassSmoothing).
func weightedGradientEpilogue<S: KernelScalar>(
    _ z: UnsafeMutablePointer<S>, count: Int, lse: S, coef: S, share: S, weights w: UnsafePointer<S>, cap: S?, eps: S
) -> Bool {
    let l = SIMD8<S>(repeating: lse), cv = SIMD8<S>(repeating: coef), sv = SIMD8<S>(repeating: share)
    let inv2: S = cap.map { 1 / ($0 * $0) } ?? 0
    var largest = SIMD8<S>()
    let c8 = count & ~7
    var q = 0
    while q < c8 {
        let zv = UnsafeRawPointer(z + q).loadUnaligned(as: SIMD8<S>.self)
        var g = cv * S.exp(zv - l) - sv * UnsafeRawPointer(w + q).loadUnaligned(as: SIMD8<S>.self)
        if cap != nil { g = g * (1 - zv * zv * inv2) }
        largest = S.maxMagnitude(largest, g)
        UnsafeMutableRawPointer(z + q).storeBytes(of: g, as: SIMD8<S>.self)
        q += 8
    }
    var any = S.horizontalMax(largest) >= eps
    while q < count {
        let zq = z[q]
        var g = coef * S.exp(zq - lse) - share * w[q]
        if cap != nil { g *= 1 - zq * zq * inv2 }
        any = any || abs(g) >= eps
        z[q] = g
        q += 1
    }
    return any
}

/// Label smoothing's share of sorted positions v0 ..< v0 + vc: Σ (α/V)·w_v (w = 1 without
/// class weights), the smoothing part of a row segment's ∂loss/∂z.
func smoothingSum<S: KernelScalar>(_ definition: LossDefinition<S>, v0: Int, vc: Int) -> S {
    let share = definition.smoothingShare
    guard share != 0 else { return 0 }
    guard definition.perClassSmoothing, let w = definition.weights else { return share * S(vc) }
    var s: S = 0
    for q in 0..<vc { s += w.byPosition[v0 + q] }
    return share * s
}

/// dBias's dropped-mass estimate (with the dE estimate, Options.filterCorrection). Every
/// entry the filters leave out of the dBias updates drops its dy from dBias_v = Σ_i dy_iv,
/// and those entries share a sign (p > 0): on LM-like bf16 data dBias was the least accurate
/// gradient (Docs/NUMERICS.md). The backward knows each left-out row segment's total, r_if
/// over forward block f (a row the bound skipped, or the entries the forward did not keep:
/// from the block's log-sum-exp, as the dE estimate), or its recomputed dy's row sum (a
/// segment the filter dropped), but not how it splits over the block's classes. So per
/// forward block of the sorted vocabulary it sums W_f = Σ_i r_if (without label smoothing's
/// term where the call adds that term apart) and after the sweep gives every class of f the
/// share W_f / |f| (`apply`): the sorted order puts classes of like average logit in a block.
/// The sums are fixed-point integers (units of 2^-64; |r| < 2^40), so they are exact, and
/// the same whichever worker or part adds what: dBias's bits do not depend on the thread
/// count or the blocks.
final class DroppedBiasMass: @unchecked Sendable {
    private let sums: Mutex<[Int128]>
    let forwardVocabBlock: Int

    init(forwardBlocks: Int, forwardVocabBlock: Int) {
        sums = Mutex([Int128](repeating: 0, count: forwardBlocks))
        self.forwardVocabBlock = forwardVocabBlock
    }

    /// x in units of 2^-64, truncated; 0 for a value that is not finite or not below 2^40.
    @inline(__always)
    static func fixed<S: KernelScalar>(_ x: S) -> Int128 {
        let d = Double(x)
        guard d.isFinite, abs(d) < 0x1p40 else { return 0 }
        return Int128(d * 0x1p64)
    }

    /// Adds a part's sum over forward block f.
    func add(_ x: Int128, forwardBlock f: Int) {
        sums.withLock { $0[f] &+= x }
    }

    /// dBias at every class of each forward block f += W_f / |f| (one rounding each), in the
    /// sorted order `order` of the call's `v` classes.
    func apply<S: KernelScalar>(dBias: UnsafeMutablePointer<S>, order: UnsafePointer<Int32>, v: Int) {
        sums.withLock { w in
            for f in 0..<w.count where w[f] != 0 {
                let lo = f * forwardVocabBlock, hi = min(v, lo + forwardVocabBlock)
                guard hi > lo else { continue }
                let share = S(Double(w[f]) * 0x1p-64 / Double(hi - lo))
                for q in lo..<hi { dBias[Int(order[q])] += share }
            }
        }
    }
}
