// What a worker holds while it sweeps tiles: its token block of E (packed), a vocabulary
// block of C, the logit tile, the backward's packed dy and pending dC updates, and the row
// tables the kernels read through: O((NB + VB)·D + NB·max(NB, VB, VBf)) per worker,
// allocated once per call on the worker's NUMA node. The fused call adds the per-block
// maxima, NB·V/VBf values (Engine.swift). Nothing grows with N x V.

import CCEKernels
import CCERuntime
import COpenBLAS

/// The caller's tensors as raw storage, and the problem's sizes, for the sweeps.
struct SweepInputs<S: KernelScalar>: @unchecked Sendable {
    let e: UnsafeRawPointer
    let eType: ElementType
    let c: UnsafeRawPointer
    let cType: ElementType
    /// The bias converted to S (V entries), or nil.
    let bias: UnsafePointer<S>?
    let d: Int
    let v: Int
    let plan: TilePlan
    let problem: Problem
    let cap: S?
    let backend: TileBackend

    /// C rows can be read in place (no conversion) when they are already S.
    var cInPlace: Bool { S.self == Float.self && cType == .float32 }
    /// E rows likewise.
    var eInPlace: Bool { S.self == Float.self && eType == .float32 }

    func eRow(_ r: Int) -> UnsafeRawPointer { e + r * d * eType.size }
    func cRow(_ v: Int) -> UnsafeRawPointer { c + v * d * cType.size }
}

final class Workspace<S: KernelScalar> {
    let eBlock: Scratch<S>?        // NB x D: the token block, converted (OpenBLAS backend only)
    let eRaw: Scratch<UnsafeRawPointer>  // the token block's E rows in the caller's storage
    let eChunk: Scratch<S>         // chunkRows x D: E rows converted on demand (target dots, dC updates)
    /// Kept E rows per dC update when they must be converted (in place: all at once).
    let chunkRows = 32
    let ePanels: Scratch<S>        // the token block packed into 6-row panels
    let cPanel: Scratch<S>         // 16 x KC: one packed C panel (L1)
    let cBlock: Scratch<S>         // VB x D: C rows for the gradient updates, converted when needed
    let tile: Scratch<S>           // NB x VB logits, then gradients
    let eRows: Scratch<UnsafePointer<S>>  // rows as S: in place, or in eChunk
    let cRaw: Scratch<UnsafeRawPointer>
    let cRows: Scratch<UnsafePointer<S>>
    let outRows: Scratch<UnsafeMutablePointer<S>>
    let states: Scratch<RunningLSE<S>>   // forward: running LSE per row
    let sums: Scratch<S>, comps: Scratch<S>  // forward: Σ_v z per row (label smoothing), Kahan
    let keep: Scratch<Int>               // backward: kept row -> row
    let need: Scratch<Bool>              // backward: rows to recompute
    let panelNeeded: Scratch<Bool>       // backward: 6-row panels to recompute
    let selected: Scratch<Int>           // backward: rows recomputed, in order
    let inE: Scratch<Bool>, inC: Scratch<Bool>  // backward: kept row enters dE / dC
    let residual: Scratch<S>             // backward: dropped dy mass of a row over a forward block
    let residualOn: Scratch<Bool>        //   ... when the row is skipped over that block
    let excluded: Scratch<Int>           //   ... but for this recomputed backward block (or −1)
    let partials: Scratch<S>?            // kahan modes: max(NB, VB) x D gradient partials
    let blockSums: BlockSums<S>          // backward: C-row sums of the current forward block's sub-blocks
    let subPanels: Scratch<S>            // backward: up to `subRows` selected rows, packed
    let subRows = 48
    let pending: PendingUpdates<S>
    let aPanels: Scratch<S>              // backward: dy packed for the rank updates
    let spare: Scratch<S>                // backward: a row for partial 6-row groups
    let bSlice: Scratch<S>               // backward: one k x 16 slice of the rank update's b
    var subPacked: [Int] = []            // which rows subPanels holds now
    let d: Int
    let vb: Int

    init(plan: TilePlan, d: Int, backend: TileBackend = .swiftSIMD, partials: Bool = false) {
        let nb = plan.tokenBlock, vb = plan.vocabBlock, fvb = plan.forwardVocabBlock
        let wide = max(vb, fvb)
        self.d = d; self.vb = vb
        eBlock = backend == .openBLAS ? Scratch(count: nb * d) : nil
        eRaw = Scratch(count: nb)
        eChunk = Scratch(count: chunkRows * d)
        ePanels = Scratch(count: (nb + 5) / 6 * 6 * d)
        cPanel = Scratch(count: TileShape.nr * TileShape.kc)
        // OpenBLAS needs whole contiguous blocks; the Swift kernels pack 16 rows at a time.
        cBlock = Scratch(count: (backend == .openBLAS ? wide : vb) * d)  // backward dE: always copied, contiguous
        tile = Scratch(count: nb * wide)
        eRows = Scratch(count: max(nb, chunkRows))
        cRaw = Scratch(count: wide)
        cRows = Scratch(count: wide)
        outRows = Scratch(count: max(nb, vb))
        states = Scratch(count: nb); sums = Scratch(count: nb); comps = Scratch(count: nb)
        keep = Scratch(count: nb); need = Scratch(count: nb); panelNeeded = Scratch(count: (nb + 5) / 6)
        selected = Scratch(count: nb)
        inE = Scratch(count: nb); inC = Scratch(count: nb)
        residual = Scratch(count: nb); residualOn = Scratch(count: nb); excluded = Scratch(count: nb)
        self.partials = partials ? Scratch(count: max(nb, vb) * d) : nil
        blockSums = BlockSums(plan: plan, d: d)
        subPanels = Scratch(count: subRows * d)
        pending = PendingUpdates(capacity: max(32 << 10, nb * vb))
        let side = max(nb, vb, chunkRows)
        aPanels = Scratch(count: (side + 5) / 6 * 6 * side)
        spare = Scratch(count: d)
        bSlice = Scratch(count: side * 16)
    }

    /// Packs the E rows of active tokens first ..< first + count into panels (converting
    /// from their storage type); E rows as S are reached through `tokenRows`.
    func loadTokens(_ inp: SweepInputs<S>, first: Int, count: Int, rows: UnsafeBufferPointer<Int32>) {
        subPacked = []
        for i in 0..<count { eRaw.base[i] = inp.eRow(Int(rows[first + i])) }
        if let eBlock {
            for i in 0..<count { convertRow(eRaw.base[i], type: inp.eType, count: d, into: eBlock.base + i * d) }
        }
        if inp.backend == .swiftSIMD || S.self != Float.self {
            packRowPanels(eRaw.base, type: inp.eType, m: count, k: d, into: ePanels.base)
        }
    }

    /// Points eRows[0 ..< n] at the loaded tokens' rows which[0 ..< n] as S: in place when E
    /// is already S (any n ≤ NB), else converted into eChunk (n ≤ chunkRows).
    func tokenRows(_ inp: SweepInputs<S>, _ which: UnsafePointer<Int>, _ n: Int) {
        if inp.eInPlace {
            for r in 0..<n { eRows.base[r] = eRaw.base[which[r]].assumingMemoryBound(to: S.self) }
        } else {
            for r in 0..<n {
                let dst = eChunk.base + r * d
                convertRow(eRaw.base[which[r]], type: inp.eType, count: d, into: dst)
                eRows.base[r] = UnsafePointer(dst)
            }
        }
    }

    /// The logit tile (count x vc, row stride ldo) of the loaded tokens and vocabulary ids
    /// ids(0) ..< ids(vc).
    func product(_ inp: SweepInputs<S>, count: Int, ids: (Int) -> Int, vc: Int, ldo: Int,
                 panelMask: UnsafePointer<Bool>? = nil) {
        if inp.backend == .openBLAS, S.self == Float.self {
            // OpenBLAS wants both operands contiguous.
            loadVocabulary(inp, ids: ids, count: vc, contiguous: true)
            let f = { (p: UnsafeMutablePointer<S>) in UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self) }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(count), Int32(vc), Int32(d), 1,
                        f(eBlock!.base), Int32(d), f(cBlock.base), Int32(d), 0, f(tile.base), Int32(ldo))
            return
        }
        for q in 0..<vc { cRaw.base[q] = inp.cRow(ids(q)) }
        tileProduct(ePanels: ePanels.base, m: count, cRows: cRaw.base, cType: inp.cType, n: vc, d: d,
                    out: tile.base, ldo: ldo, panel: cPanel.base, panelMask: panelMask)
    }

    /// The logit tile of the selected rows only (rows selected[0 ..< n], n ≤ subRows), row r
    /// of the tile for row selected[r]: the rows are packed into their own panels (reused
    /// while the selection stays the same), so no other row is computed.
    func selectedProduct(_ inp: SweepInputs<S>, n: Int, ids: (Int) -> Int, vc: Int, ldo: Int) {
        let sel = UnsafeBufferPointer(start: selected.base, count: n)
        if !subPacked.elementsEqual(sel) {
            withUnsafeTemporaryAllocation(of: UnsafeRawPointer.self, capacity: n) { raw in
                for r in 0..<n { raw[r] = eRaw.base[sel[r]] }
                packRowPanels(UnsafePointer(raw.baseAddress!), type: inp.eType, m: n, k: d, into: subPanels.base)
            }
            subPacked = Array(sel)
        }
        for q in 0..<vc { cRaw.base[q] = inp.cRow(ids(q)) }
        tileProduct(ePanels: subPanels.base, m: n, cRows: cRaw.base, cType: inp.cType, n: vc, d: d,
                    out: tile.base, ldo: ldo, panel: cPanel.base)
    }

    /// Points cRows at the C rows ids(0) ..< ids(count) as S (for the gradient updates),
    /// converting them into cBlock unless they can be read in place.
    func loadVocabulary(_ inp: SweepInputs<S>, ids: (Int) -> Int, count: Int, contiguous: Bool = false) {
        if inp.cInPlace && !contiguous {
            for q in 0..<count {
                cRows.base[q] = inp.cRow(ids(q)).assumingMemoryBound(to: S.self)
            }
        } else {
            for q in 0..<count {
                let dst = cBlock.base + q * d
                convertRow(inp.cRow(ids(q)), type: inp.cType, count: d, into: dst)
                cRows.base[q] = UnsafePointer(dst)
            }
        }
    }
}

/// Σ of the C rows of backward blocks and of their forward block, for the dropped-mass
/// estimate (Backward.swift): computed when first asked for, once per token block and
/// forward block, from the caller's C (converted), so no V-sized buffer is kept. The cost is
/// one pass over a forward block's C rows per token block, about 1/NB of its tile product.
final class BlockSums<S: KernelScalar> {
    let d: Int, vb: Int, fvb: Int
    let sub: Scratch<S>          // (VBf / VB) x D: one sum per backward block of the forward block
    let whole: Scratch<S>        // D: the forward block's sum
    let row: Scratch<S>          // D: one converted C row
    var ready: [Bool]
    var wholeReady = false
    var jf = 0

    init(plan: TilePlan, d: Int) {
        self.d = d; vb = plan.vocabBlock; fvb = plan.forwardVocabBlock
        let n = max(1, fvb / vb)
        sub = Scratch(count: n * d); whole = Scratch(count: d); row = Scratch(count: d)
        ready = [Bool](repeating: false, count: n)
    }

    /// Forgets the sums: the sweep has entered forward block jf.
    func reset(forwardBlock jf: Int) {
        self.jf = jf
        for k in ready.indices { ready[k] = false }
        wholeReady = false
    }

    /// Σ of the C rows of backward block j (which lies in the current forward block).
    func backward(_ j: Int, _ inp: SweepInputs<S>, _ order: UnsafePointer<Int32>) -> UnsafePointer<S> {
        let k = (j * vb - jf * fvb) / vb
        let out = sub.base + k * d
        if !ready[k] {
            out.update(repeating: 0, count: d)
            for q in j * vb ..< min(inp.v, (j + 1) * vb) {
                convertRow(inp.cRow(Int(order[q])), type: inp.cType, count: d, into: row.base)
                axpy(out, 1, UnsafePointer(row.base), count: d)
            }
            ready[k] = true
        }
        return UnsafePointer(out)
    }

    /// Σ of the C rows of the current forward block (the sum of its backward blocks' sums).
    func forward(_ inp: SweepInputs<S>, _ order: UnsafePointer<Int32>) -> UnsafePointer<S> {
        if !wholeReady {
            whole.base.update(repeating: 0, count: d)
            var j = jf * fvb / vb
            while j * vb < min(inp.v, (jf + 1) * fvb) {
                axpy(whole.base, 1, backward(j, inp, order), count: d)
                j += 1
            }
            wholeReady = true
        }
        return UnsafePointer(whole.base)
    }
}

/// dC updates a worker has computed but whose hand-off turn has not come yet: the kept
/// rows' dy (compacted, row stride vc) and which rows they were, in vocabulary-block order.
final class PendingUpdates<S: KernelScalar> {
    struct Entry { var j: Int, v0: Int, vc: Int, kept: Int, offset: Int, rowOffset: Int }
    var entries: [Entry] = []
    var head = 0
    let dy: Scratch<S>
    let rows: Scratch<Int>
    var used = 0, rowsUsed = 0

    init(capacity: Int) {
        dy = Scratch(count: capacity)
        rows = Scratch(count: capacity / 16 + 64)
    }

    var isEmpty: Bool { head == entries.count }

    /// Whether `kept` rows of `vc` values fit.
    func fits(kept: Int, vc: Int) -> Bool { used + kept * vc <= dy.count && rowsUsed + kept <= rows.count }

    /// Queues block j's update (copies the dy rows out of the tile).
    func append(j: Int, v0: Int, vc: Int, kept: Int, tile: UnsafePointer<S>, ldt: Int, keep: UnsafePointer<Int>) {
        let off = used, roff = rowsUsed
        for r in 0..<kept {
            (dy.base + off + r * vc).update(from: tile + r * ldt, count: vc)
            rows.base[roff + r] = keep[r]
        }
        used += kept * vc
        rowsUsed += kept
        entries.append(Entry(j: j, v0: v0, vc: vc, kept: kept, offset: off, rowOffset: roff))
    }

    func popFirst() {
        head += 1
        if isEmpty { entries.removeAll(keepingCapacity: true); head = 0; used = 0; rowsUsed = 0 }
    }
}
