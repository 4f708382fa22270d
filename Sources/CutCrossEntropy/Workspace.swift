// What a worker holds while it sweeps tiles: its token block of E, a vocabulary block of C,
// the logit tile and the row tables the kernels read through. All of it is O(NB·D + VB·D +
// NB·VB) per worker, allocated once per call on the worker's NUMA node; nothing grows with
// N x V.

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

    func eRow(_ r: Int) -> UnsafeRawPointer { e + r * d * eType.size }
    func cRow(_ v: Int) -> UnsafeRawPointer { c + v * d * cType.size }
}

final class Workspace<S: KernelScalar> {
    let eBlock: Scratch<S>         // NB x D: the token block, converted (row-major)
    let ePanels: Scratch<S>        // the token block packed into 6-row panels
    let cPanel: Scratch<S>         // 16 x KC: one packed C panel (L1)
    let cBlock: Scratch<S>         // VB x D: C rows for the gradient updates, converted when needed
    let tile: Scratch<S>           // NB x VB logits, then gradients
    let eRows: Scratch<UnsafePointer<S>>
    let cRaw: Scratch<UnsafeRawPointer>
    let cRows: Scratch<UnsafePointer<S>>
    let outRows: Scratch<UnsafeMutablePointer<S>>
    let activeRows: Scratch<UnsafePointer<S>>
    let states: Scratch<RunningLSE<S>>   // forward: running LSE per row
    let sums: Scratch<S>, comps: Scratch<S>  // forward: Σ_v z per row (label smoothing), Kahan
    let keep: Scratch<Int>               // backward: kept row -> row
    let need: Scratch<Bool>              // backward: rows to recompute
    let panelNeeded: Scratch<Bool>       // backward: 6-row panels to recompute
    let d: Int
    let vb: Int

    init(plan: TilePlan, d: Int, backend: TileBackend = .swiftSIMD) {
        let nb = plan.tokenBlock, vb = plan.vocabBlock, fvb = plan.forwardVocabBlock
        let wide = max(vb, fvb)
        self.d = d; self.vb = vb
        eBlock = Scratch(count: nb * d)
        ePanels = Scratch(count: (nb + 5) / 6 * 6 * d)
        cPanel = Scratch(count: TileShape.nr * TileShape.kc)
        // OpenBLAS needs whole contiguous blocks; the Swift kernels pack 16 rows at a time.
        cBlock = Scratch(count: (backend == .openBLAS ? wide : vb) * d)
        tile = Scratch(count: nb * wide)
        eRows = Scratch(count: nb)
        cRaw = Scratch(count: wide)
        cRows = Scratch(count: wide)
        outRows = Scratch(count: max(nb, vb))
        activeRows = Scratch(count: nb)
        states = Scratch(count: nb); sums = Scratch(count: nb); comps = Scratch(count: nb)
        keep = Scratch(count: nb); need = Scratch(count: nb); panelNeeded = Scratch(count: (nb + 5) / 6)
    }

    /// Converts the E rows of active tokens first ..< first + count into the block (row-major,
    /// for the gradient updates and OpenBLAS) and packs them into panels (for the tile product).
    func loadTokens(_ inp: SweepInputs<S>, first: Int, count: Int, rows: UnsafeBufferPointer<Int32>) {
        for i in 0..<count {
            let dst = eBlock.base + i * d
            convertRow(inp.eRow(Int(rows[first + i])), type: inp.eType, count: d, into: dst)
            eRows.base[i] = UnsafePointer(dst)
        }
        if inp.backend == .swiftSIMD || S.self != Float.self {
            packRowPanels(eRows.base, m: count, k: d, into: ePanels.base)
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
                        f(eBlock.base), Int32(d), f(cBlock.base), Int32(d), 0, f(tile.base), Int32(ldo))
            return
        }
        for q in 0..<vc { cRaw.base[q] = inp.cRow(ids(q)) }
        tileProduct(ePanels: ePanels.base, m: count, cRows: cRaw.base, cType: inp.cType, n: vc, d: d,
                    out: tile.base, ldo: ldo, panel: cPanel.base, panelMask: panelMask)
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
