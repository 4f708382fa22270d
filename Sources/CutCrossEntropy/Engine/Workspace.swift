// What a worker holds while it sweeps tiles: its token block of E (converted once to the
// compute type), the logit tile, a packed C panel, the backward's packed dy and pending dC
// updates, and the row tables the kernels read through: O((NB + VB)·D + NB·max(VB, VBf))
// per worker, allocated once per call on the worker's NUMA node. The fused call adds the
// per-block maxima, NB·V/VBf values (Engine.swift). Nothing grows with N x V.

import CCEKernels
import CCERuntime
import COpenBLAS

/// Which kernel computes the logit tiles.
public enum TileBackend: String, Sendable, CaseIterable {
    /// The Swift SIMD tile product (CCEKernels/TileProduct6x16.swift).
    case swiftSIMD = "swift"
    /// OpenBLAS sgemm on each tile (Float32 modes; the exact mode always uses Swift).
    case openBLAS = "openblas"
}

/// Which tile kernel a call in scalar type S uses for E and C stored as `eType`, `cType`:
/// in the Float32 modes the AVX-512 kernels where the CPU runs them (CCEKernels/
/// AVX512Kernels.swift: AMX tiles for bf16 E and C where the CPU has AMX-BF16, the 512-bit
/// FMA kernel, bit for bit the portable one, or the AVX512_BF16 dot product for bf16 E and C
/// where it is the faster), else the portable Swift kernel; Float64 (the exact mode) and the OpenBLAS backend always take theirs.
/// `requested` (CutCrossEntropy.tileKernel) replaces the automatic choice where it can run.
func chooseTileKernel<S: KernelScalar>(_: S.Type, eType: ElementType, cType: ElementType, backend: TileBackend,
                                 requested: TileKernel? = nil) -> TileKernel {
    guard S.self == Float.self, backend == .swiftSIMD else { return .portable }
    // The bf16 kernels (AMX, dot product) multiply stored bf16 pairs: E must be bf16 too.
    let needsBF16E: (TileKernel) -> Bool = { $0 == .amxBF16 || $0 == .avx512BF16 }
    if let requested, requested.runs(cType), !needsBF16E(requested) || eType == .bfloat16 { return requested }
    let chosen = TileKernel.forStorage(cType)
    if needsBF16E(chosen) && eType != .bfloat16 { return hasAVX512 ? .avx512FMA : .portable }
    return chosen
}

/// The caller's tensors as raw storage, the problem's sizes, and the sweep's fixed choices
/// (tile plan, vocabulary order, soft cap, backend, tile kernel): what every worker reads.
struct Operands<S: KernelScalar>: @unchecked Sendable {
    let e: UnsafeRawPointer
    let eType: ElementType
    let c: UnsafeRawPointer
    let cType: ElementType
    /// The bias converted to S (V entries), or nil.
    let bias: UnsafePointer<S>?
    let d: Int
    let v: Int
    private(set) var plan: TilePlan
    let problem: Problem
    /// order[k]: the vocabulary id at sorted position k.
    let order: UnsafePointer<Int32>
    /// targetPosition[t]: the sorted position of active token t's target (Int32.max: held by
    /// another vocabulary shard).
    let targetPosition: UnsafePointer<Int32>
    let backend: TileBackend
    let kernel: TileKernel

    /// The same operands with another tile plan.
    func with(plan: TilePlan) -> Operands {
        var copy = self
        copy.plan = plan
        return copy
    }

    /// C rows can be read in place (no conversion) when they are already S.
    var cInPlace: Bool { S.self == Float.self && cType == .float32 }
    /// E rows likewise.
    var eInPlace: Bool { S.self == Float.self && eType == .float32 }
    /// Whether a worker keeps its token block's E rows as S too (Workspace.eBlock, NB·D·S bytes):
    /// they are not S and the kernel does not read them as stored, or OpenBLAS multiplies.
    var copiesTokens: Bool { Workspace<S>.copiesTokens(eInPlace: eInPlace, backend: backend, kernel: kernel) }

    func eRow(_ r: Int) -> UnsafeRawPointer { e + r * d * eType.size }
    func cRow(_ v: Int) -> UnsafeRawPointer { c + v * d * cType.size }
    /// The C row at sorted position k.
    func sortedCRow(_ k: Int) -> UnsafeRawPointer { cRow(Int(order[k])) }
}

final class Workspace<S: KernelScalar> {
    let eBlock: Scratch<S>               // NB x D: the token block converted to S (unless read in place
                                         // or never needed: the bf16 kernels, see loadTokens)
    let eRows: Scratch<UnsafePointer<S>> // the token block's E rows as S: in place, or in eBlock
    let eRaw: Scratch<UnsafeRawPointer>  // the token block's E rows as stored
    /// Whether the products and dC's updates read E as stored (the AVX-512 kernels with bf16
    /// E and C: the bf16 panels, and rank updates converting while loading), so that no row
    /// is converted to S and eRows is not filled.
    let eStoredOnly: Bool
    let selectedRows: Scratch<UnsafePointer<S>>  // backward: the E rows of the selected rows
    let keptRows: Scratch<UnsafePointer<S>>      // backward: the E rows of a dC update's kept rows
    let keptRaw: Scratch<UnsafeRawPointer>       //   ... as stored (eStoredOnly)
    let sparseValues: Scratch<S>                 // backward: one dC row's nonzero terms ...
    let sparseRows: Scratch<UnsafeRawPointer>    //   ... and their E rows (rankUpdateTokens)
    let cPanel: Scratch<S>               // one packed C panel (L1): 16 x 256, or 32 x 256 (AVX-512)
    let bf16Panels: Scratch<UInt32>      // bf16 kernels (AMX, dot product): the token block in bf16 pairs
    let bf16Selected: Scratch<UInt32>    //   ... and the selected rows (selectedProduct)
    /// Rows per entry of a product's panel mask: the kernel's register-block height.
    let maskRows: Int
    let kernel: TileKernel
    let cBlock: Scratch<S>               // VB x D: C rows for the gradient updates, converted when needed
    let tile: Scratch<S>                 // NB x VB logits, then gradients
    let cRaw: Scratch<UnsafeRawPointer>
    let cRows: Scratch<UnsafePointer<S>>
    let outRows: Scratch<UnsafeMutablePointer<S>>
    let states: Scratch<RunningLSE<S>>   // forward: running LSE per row
    let sums: Scratch<S>, comps: Scratch<S>  // forward: Σ_v z per row (label smoothing), Kahan
    let targetLogits: Scratch<S>         // forward: z at each row's target, taken from its tile
    let keep: Scratch<Int>               // backward: kept row -> row
    let need: Scratch<Bool>              // backward: rows to recompute
    let panelNeeded: Scratch<Bool>       // backward: 6-row groups to recompute
    let selected: Scratch<Int>           // backward: rows recomputed, in order
    let inE: Scratch<Bool>, inC: Scratch<Bool>  // backward: kept row enters dE / dC
    let residual: Scratch<S>             // backward: dropped dy mass of a row over a forward block
    let residualOn: Scratch<Bool>        //   ... when the row is skipped over that block
    let excluded: Scratch<Int>           //   ... but for this recomputed backward block (or −1)
    let residualSmoothing: Scratch<S>    //   ... of which label smoothing's term (its magnitude)
    var droppedBias: Int128 = 0          // backward: dBias's dropped mass over the forward block (DroppedBiasMass)
    let partials: Scratch<S>?            // kahan modes: max(NB, VB) x D gradient partials
    let skipped: SkippedEstimates<S>?   // fused backward: the estimates of the rows the bound skipped
    let blockSums: BlockSums<S>?         // backward: the estimate's T_j, formed when needed
    /// Fused call: the logits the backward reads instead of recomputing, of the forward block it
    /// is at (from `savedSegments`).
    var saved: SavedLogits<S>?
    /// Fused call: the token block's saved logits, one SavedLogits per vocabulary segment (one
    /// per piece in a vocabulary shard's call, Engine.sweepExchanging); the backward reads each
    /// forward block's from its segment's.
    var savedSegments: SavedSegments<S>?
    /// The saved logits' row of the backward's row 0: the first row of the backward's part of
    /// its token block (Engine.sweep), 0 for a whole block.
    var savedRowOffset = 0
    /// Backward: the scratch for reading `saved` (the worker's, whichever block's logits it reads).
    let fromSaved: FromSavedScratch<S>
    /// Rows recomputed on their own (selected product) rather than as a masked full tile.
    let selectedLimit = 48
    let pending: PendingUpdates<S>
    let aPanels: Scratch<S>              // backward: dy packed for the rank updates
    let spare: Scratch<S>                // backward: a row for partial 6-row groups
    let bSlice: Scratch<S>               // backward: one k x 16 slice of the rank update's b
    /// Backward with dense dC updates on the portable kernel (BackwardPolicy.densePrediction): the
    /// token block's E rows cut into 16-column slices (cutSlices), which dC's rank updates read
    /// instead of gathering each slice from NB rows 4 KB apart for every vocabulary block.
    /// NB·D values; empty otherwise.
    let eSlices: Scratch<S>
    /// Values from one 16-column slice of eSlices to the next (NB·16).
    var eSliceStride: Int { eSlices.count / max(d, 1) * 16 }
    let d: Int
    let vb: Int
    /// Seconds this worker waited (in dC's hand-off, for a token block's slot or seed), spent in
    /// the forward (and of it in its tile products), and spent applying dC updates (measured only
    /// under CCE_TRACE).
    var handOffWait = 0.0, forwardTime = 0.0, applyTime = 0.0, productTime = 0.0

    /// The bf16 kernels read E rows as stored (packed in bf16 pairs); they run only for bf16 E
    /// and C in Float32 (chooseTileKernel).
    static func readsStoredTokens(backend: TileBackend, kernel: TileKernel) -> Bool {
        (kernel == .amxBF16 || kernel == .avx512BF16) && backend == .swiftSIMD && S.self == Float.self
    }

    /// Whether eBlock holds the token block's E rows converted to S: unless they are read in place
    /// (already S) or as stored; OpenBLAS needs the block contiguous, so it always takes the copy.
    static func copiesTokens(eInPlace: Bool, backend: TileBackend, kernel: TileKernel) -> Bool {
        !((eInPlace && backend == .swiftSIMD) || readsStoredTokens(backend: backend, kernel: kernel))
    }

    init(plan: TilePlan, d: Int, eInPlace: Bool, backend: TileBackend = .swiftSIMD, kernel: TileKernel = .portable,
         partials: Bool = false, estimate: Bool = false, skippedEstimates: Bool = false,
         readsSavedLogits: Bool = false, denseUpdates: Bool = false) {
        eStoredOnly = Workspace.readsStoredTokens(backend: backend, kernel: kernel)
        let nb = plan.tokenBlock, vb = plan.vocabBlock, forwardVB = plan.forwardVocabBlock
        let wide = max(vb, forwardVB)
        self.d = d; self.vb = vb
        eBlock = Scratch(count: Workspace.copiesTokens(eInPlace: eInPlace, backend: backend, kernel: kernel) ? nb * d : 0)
        eRows = Scratch(count: nb)
        eRaw = Scratch(count: nb)
        keptRaw = Scratch(count: nb)
        sparseValues = Scratch(count: nb); sparseRows = Scratch(count: nb)
        selectedRows = Scratch(count: selectedLimit)
        keptRows = Scratch(count: nb)
        self.kernel = kernel
        switch kernel {
        case .portable: cPanel = Scratch(count: TileShape.nr * TileShape.kc)
        case .amxBF16: cPanel = Scratch(count: max(AMXTileShape.scratchWords, AMXTileShape.rankScratchWords))
        case .avx512FMA, .avx512BF16: cPanel = Scratch(count: AVX512TileShape.columnPanelFloats)
        }
        let panelWords = { (m: Int) in
            kernel == .amxBF16 ? amxRowBlockWords(m: m, d: d) : kernel == .avx512BF16 ? bf16RowPanelWords(m: m, d: d) : 0
        }
        bf16Panels = Scratch(count: panelWords(nb))
        bf16Selected = Scratch(count: panelWords(selectedLimit))
        maskRows = kernel.rowGroup
        // OpenBLAS needs whole contiguous blocks; the Swift kernels pack 16 rows at a time.
        // OpenBLAS products and the portable dE update read C converted and contiguous; the
        // 512-bit rank update reads the stored rows.
        cBlock = Scratch(count: (backend == .openBLAS ? wide : kernel == .portable ? vb : 0) * d)
        tile = Scratch(count: nb * wide)
        cRaw = Scratch(count: wide + max(AMXTileShape.nr, BF16TileShape.nr))
        cRows = Scratch(count: wide)
        outRows = Scratch(count: max(nb, vb))
        states = Scratch(count: nb); sums = Scratch(count: nb); comps = Scratch(count: nb)
        targetLogits = Scratch(count: nb)
        keep = Scratch(count: nb); need = Scratch(count: nb)
        panelNeeded = Scratch(count: (nb + 5) / 6)
        selected = Scratch(count: nb)
        inE = Scratch(count: nb); inC = Scratch(count: nb)
        residual = Scratch(count: nb); residualOn = Scratch(count: nb); excluded = Scratch(count: nb)
        residualSmoothing = Scratch(count: nb)
        self.partials = partials ? Scratch(count: max(nb, vb) * d) : nil
        skipped = skippedEstimates ? SkippedEstimates(plan: plan, d: d) : nil
        blockSums = estimate ? BlockSums(plan: plan, d: d) : nil
        fromSaved = FromSavedScratch(plan: plan, d: d, used: readsSavedLogits)
        pending = PendingUpdates(capacity: max(32 << 10, nb * vb), vb: vb)
        let side = max(nb, vb)
        // The portable rank update packs A and slices of b; the 512-bit one reads them in place.
        let packs = kernel == .portable
        aPanels = Scratch(count: packs ? (side + 5) / 6 * 6 * side : 0)
        spare = Scratch(count: packs ? d : 0)
        bSlice = Scratch(count: packs ? side * 16 : 0)
        eSlices = Scratch(count: packs && denseUpdates ? nb * d : 0)
    }

    /// Points eRows at the E rows of active tokens first ..< first + count as S: in place
    /// when they are already S, else converted into eBlock. This is the only conversion of
    /// an E row in the sweep: the products, the target logits and the dC updates all read
    /// these rows. The bf16 kernels read them as stored instead (eStoredOnly: packed into
    /// bf16 panels for the products, eRaw for dC's updates).
    /// The forward's per-row partials in this workspace (one segment: Forward.block).
    var forwardPartials: ForwardPartials<S> {
        ForwardPartials(states: states.base, sums: sums.base, comps: comps.base, targetLogits: targetLogits.base,
                        stride: states.count)
    }

    func loadTokens(_ operands: Operands<S>, first: Int, count: Int) {
        let rows = operands.problem.rows
        for i in 0..<count { eRaw.base[i] = operands.eRow(Int(rows[first + i])) }
        if kernel == .avx512BF16 || kernel == .amxBF16 {
            // The bf16 kernels multiply the stored bf16 pairs: packed from the caller's rows
            // (each kernel's own layout, no conversion).
            packBF16(UnsafePointer(eRaw.base), m: count, into: bf16Panels.base)
        }
        if eStoredOnly { return }
        if eBlock.count == 0 {
            for i in 0..<count { eRows.base[i] = eRaw.base[i].assumingMemoryBound(to: S.self) }
        } else {
            for i in 0..<count {
                let dst = eBlock.base + i * d
                convertRow(eRaw.base[i], type: operands.eType, count: d, into: dst)
                eRows.base[i] = UnsafePointer(dst)
            }
        }
        if eSlices.count > 0 {
            cutSlices(UnsafePointer(eRows.base), m: count, width: d, into: eSlices.base, stride: eSliceStride)
        }
    }

    /// The logit tile (count x vc, row stride ldo) of the loaded tokens and the vocabulary
    /// at sorted positions v0 ..< v0 + vc; 6-row groups with panelMask false are left out.
    func product(_ operands: Operands<S>, count: Int, v0: Int, vc: Int, ldo: Int,
                 panelMask: UnsafePointer<Bool>? = nil) {
        if operands.backend == .openBLAS, S.self == Float.self {
            // OpenBLAS wants both operands contiguous.
            loadVocabulary(operands, v0: v0, count: vc, contiguous: true)
            let f = { (p: UnsafeMutablePointer<S>) in UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self) }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(count), Int32(vc), Int32(d), 1,
                        f(eBlock.base), Int32(d), f(cBlock.base), Int32(d), 0, f(tile.base), Int32(ldo))
            return
        }
        let lookahead = loadCRows(operands, v0: v0, vc: vc)
        run(kernel, rows: eRows.base, bf16Panels: bf16Panels.base, m: count, cType: operands.cType, n: vc, ldo: ldo,
            panelMask: panelMask, lookahead: lookahead)
    }

    /// Points cRaw[0 ..< vc] at the C rows at sorted positions v0 ..< v0 + vc and the entries
    /// after them at the following rows (up to one panel of the bf16 kernels), which those
    /// kernels prefetch while they finish: the next block's rows, scattered in memory by the
    /// sort. Returns how many follow.
    private func loadCRows(_ operands: Operands<S>, v0: Int, vc: Int) -> Int {
        let follow = kernel == .amxBF16 ? AMXTileShape.nr : kernel == .avx512BF16 ? BF16TileShape.nr : 0
        let lookahead = min(follow, operands.v - v0 - vc)
        for q in 0..<(vc + lookahead) { cRaw.base[q] = operands.sortedCRow(v0 + q) }
        return lookahead
    }

    /// Packs bf16 E rows in the layout of the bf16 kernel in use.
    private func packBF16(_ raw: UnsafePointer<UnsafeRawPointer>, m: Int, into dst: UnsafeMutablePointer<UInt32>) {
        if kernel == .amxBF16 { packRowsAMX(raw, m: m, d: d, into: dst) } else { packRowPanelsBF16(raw, m: m, d: d, into: dst) }
    }

    /// The tile product of `kernel` into `tile`: E rows (or their bf16 panels) against the C
    /// rows cRaw[0 ..< n].
    private func run(_ kernel: TileKernel, rows: UnsafePointer<UnsafePointer<S>>, bf16Panels: UnsafePointer<UInt32>,
                     m: Int, cType: ElementType, n: Int, ldo: Int, panelMask: UnsafePointer<Bool>?, lookahead: Int) {
        // The AVX-512 kernels exist for S == Float only (tileKernel chooses them then).
        let out = UnsafeMutableRawPointer(tile.base).assumingMemoryBound(to: Float.self)
        let panel = UnsafeMutableRawPointer(cPanel.base)
        switch kernel {
        case .portable:
            tileProduct(eRows: rows, m: m, cRows: cRaw.base, cType: cType, n: n, d: d, out: tile.base, ldo: ldo,
                        panel: cPanel.base, panelMask: panelMask)
        case .avx512FMA:
            UnsafeRawPointer(rows).withMemoryRebound(to: UnsafePointer<Float>.self, capacity: m) { floatRows in
                tileProductAVX512(eRows: floatRows, m: m, cRows: cRaw.base, cType: cType, n: n, d: d, out: out,
                                  ldo: ldo, panel: panel.assumingMemoryBound(to: Float.self), panelMask: panelMask)
            }
        case .avx512BF16:
            tileProductBF16(ePanels: bf16Panels, m: m, cRows: cRaw.base, n: n, d: d, out: out, ldo: ldo,
                            panelMask: panelMask, lookahead: lookahead)
        case .amxBF16:
            tileProductAMX(eBlocks: bf16Panels, m: m, cRows: cRaw.base, n: n, d: d, out: out, ldo: ldo,
                           scratch: panel.assumingMemoryBound(to: UInt32.self), panelMask: panelMask,
                           lookahead: lookahead)
        }
    }

    /// The logit tile of the selected rows only (rows selected[0 ..< n], n ≤ selectedLimit),
    /// row r of the tile for row selected[r]: no other row is computed.
    func selectedProduct(_ operands: Operands<S>, first: Int, n: Int, v0: Int, vc: Int, ldo: Int) {
        if !eStoredOnly { for r in 0..<n { selectedRows.base[r] = eRows.base[selected.base[r]] } }
        if kernel == .avx512BF16 || kernel == .amxBF16 {
            // The selected rows' stored E rows, gathered into keptRaw (free until the dC updates).
            for r in 0..<n { keptRaw.base[r] = eRaw.base[selected.base[r]] }
            packBF16(UnsafePointer(keptRaw.base), m: n, into: bf16Selected.base)
        }
        let lookahead = loadCRows(operands, v0: v0, vc: vc)
        run(kernel, rows: selectedRows.base, bf16Panels: bf16Selected.base, m: n, cType: operands.cType, n: vc,
            ldo: ldo, panelMask: nil, lookahead: lookahead)
    }

    /// The backward's rank update out_r += Σ_q A(r, q)·b_q (RankUpdate6x16.swift's contract)
    /// over `width` = D columns: the 512-bit kernel where the tile kernel is an AVX-512 one
    /// (the same bits), else the portable Swift kernel.
    /// `slices` (the portable kernel only): b's rows also cut into 16-column slices, read instead.
    func rankUpdate(out: UnsafePointer<UnsafeMutablePointer<S>>, m: Int, a: UnsafePointer<S>, ars: Int, aks: Int,
                    b: UnsafePointer<UnsafePointer<S>>, k: Int, blocked: Bool = false, slices: BSlices<S>? = nil) {
        if kernel != .portable && S.self == Float.self {
            UnsafeRawPointer(out).withMemoryRebound(to: UnsafeMutablePointer<Float>.self, capacity: m) { out in
                UnsafeRawPointer(b).withMemoryRebound(to: UnsafePointer<Float>.self, capacity: k) { b in
                    rankUpdateAVX512(out: out, m: m, a: UnsafeRawPointer(a).assumingMemoryBound(to: Float.self),
                                     ars: ars, aks: aks, b: b, k: k, width: d, blocked: blocked)
                }
            }
        } else {
            CCEKernels.rankUpdate(out: out, m: m, a: a, ars: ars, aks: aks, b: b, k: k, width: d,
                                  scratch: aPanels.base, spare: spare.base, blocked: blocked, bSlice: bSlice.base,
                                  slices: slices)
        }
    }

    /// dC's update: out_c += Σ_q A(c, q)·e_{rows[q]} over the token block's rows rows[0 ..< k]
    /// (tile indices), A(c, q) = a[c·ars + q·aks]: the 512-bit kernel reads the E rows as
    /// stored when the products do (eStoredOnly; the conversion is exact, so the bits are
    /// those of the converted rows), else the rows of eRows.
    ///
    /// Most of A is zero: a row segment is kept for one large entry, and dC's entry filter
    /// zeroes the rest (on LM-like bf16 data about 7% of a queued block's entries are not zero).
    /// When at most half are nonzero, each out row takes only its nonzero terms, in order
    /// (sparseUpdateAVX512): the same FMA chain without its zero terms, so the same bits
    /// whichever of the two runs (adding 0·e changes no value but −0, and dC, zeroed before the
    /// sweep, never holds −0; a caller's dC declared zero that held −0 could keep it where the
    /// dense chain would have made it +0).
    /// `nonzero`: how many of A's m·k entries are not zero (PendingUpdates counts them while
    /// it copies them).
    func rankUpdateTokens(out: UnsafePointer<UnsafeMutablePointer<S>>, m: Int, a: UnsafePointer<S>, ars: Int, aks: Int,
                          nonzero: Int, rows: UnsafePointer<Int>, k: Int, eType: ElementType) {
        guard kernel != .portable && S.self == Float.self else {
            for q in 0..<k { keptRows.base[q] = eRows.base[rows[q]] }
            rankUpdate(out: out, m: m, a: a, ars: ars, aks: aks, b: UnsafePointer(keptRows.base), k: k,
                       slices: eSlices.count == 0 ? nil
                           : BSlices(base: UnsafePointer(eSlices.base), stride: eSliceStride, index: rows))
            return
        }
        for q in 0..<k { keptRaw.base[q] = eStoredOnly ? eRaw.base[rows[q]] : UnsafeRawPointer(eRows.base[rows[q]]) }
        let bType = eStoredOnly ? eType : .float32
        let af = UnsafeRawPointer(a).assumingMemoryBound(to: Float.self)
        UnsafeRawPointer(out).withMemoryRebound(to: UnsafeMutablePointer<Float>.self, capacity: m) { out in
            guard 2 * nonzero <= m * k else {
                rankUpdateAVX512(out: out, m: m, a: af, ars: ars, aks: aks, b: UnsafePointer(keptRaw.base), bType: bType,
                                 k: k, width: d)
                return
            }
            let values = UnsafeMutableRawPointer(sparseValues.base).assumingMemoryBound(to: Float.self)
            for c in 0..<m {
                var t = 0
                for q in 0..<k where af[c * ars + q * aks] != 0 {
                    values[t] = af[c * ars + q * aks]; sparseRows.base[t] = keptRaw.base[q]; t += 1
                }
                if t > 0 {
                    // The next dC row is prefetched meanwhile: dC's rows lie scattered over
                    // V·D·4 bytes, mostly outside the caches (a quarter fewer samples in this
                    // update in a Zen 4 loss+grad profile; the same bits).
                    sparseUpdateAVX512(out: out[c], nnz: t, values: values, b: UnsafePointer(sparseRows.base),
                                       bType: bType, width: d, next: c + 1 < m ? UnsafePointer(out[c + 1]) : nil)
                }
            }
        }
    }

    /// dE's update: out_r += Σ_q dy(r, q)·C_{v0+q} over the tile's first m rows and the
    /// vocabulary at sorted positions v0 ..< v0 + vc. The 512-bit kernel reads the C rows in
    /// their stored type; the portable one reads them converted and copied together (whole
    /// rows stream better than the sorted order's scattered ones).
    func rankUpdateC(_ operands: Operands<S>, out: UnsafePointer<UnsafeMutablePointer<S>>, m: Int, v0: Int, vc: Int,
                     blocked: Bool = false) {
        if kernel != .portable && S.self == Float.self {
            for q in 0..<vc { cRaw.base[q] = operands.sortedCRow(v0 + q) }
            UnsafeRawPointer(out).withMemoryRebound(to: UnsafeMutablePointer<Float>.self, capacity: m) { out in
                let a = UnsafeRawPointer(tile.base).assumingMemoryBound(to: Float.self)
                if kernel == .amxBF16 && operands.cType == .bfloat16 && vc <= AMXTileShape.rankMaxK && partials == nil {
                    // AMX: dy split into bf16 hi + lo, C's bf16 rows as they are (the panel
                    // scratch is free: the tile product is done). Not in the kahan modes
                    // (partials): there dy's 2^-17 split error would be the largest one left,
                    // so they keep the exact Float32 products.
                    rankUpdateAMX(out: out, m: m, a: a, ars: vb, aks: 1, b: UnsafePointer(cRaw.base), k: vc, width: d,
                                  blocked: blocked, scratch: UnsafeMutableRawPointer(cPanel.base)
                                    .assumingMemoryBound(to: UInt32.self))
                    return
                }
                rankUpdateAVX512(out: out, m: m, a: a,
                                 ars: vb, aks: 1, b: UnsafePointer(cRaw.base), bType: operands.cType, k: vc, width: d,
                                 blocked: blocked)
            }
        } else {
            loadVocabulary(operands, v0: v0, count: vc, contiguous: true)
            rankUpdate(out: out, m: m, a: tile.base, ars: vb, aks: 1, b: cRows.base, k: vc, blocked: blocked)
        }
    }

    /// Points cRows at the C rows at sorted positions v0 ..< v0 + count as S (for the
    /// gradient updates), converting them into cBlock unless they can be read in place.
    func loadVocabulary(_ operands: Operands<S>, v0: Int, count: Int, contiguous: Bool = false) {
        if operands.cInPlace && !contiguous {
            for q in 0..<count {
                cRows.base[q] = operands.sortedCRow(v0 + q).assumingMemoryBound(to: S.self)
            }
        } else {
            for q in 0..<count {
                let dst = cBlock.base + q * d
                convertRow(operands.sortedCRow(v0 + q), type: operands.cType, count: d, into: dst)
                cRows.base[q] = UnsafePointer(dst)
            }
        }
    }
}

/// Σ of the C rows of backward block j (T_j, its VB rows at sorted positions), for the
/// dropped-mass estimate (Backward.swift), formed by each worker when its backward first asks
/// for it within a forward block and held until the next forward block's: (VBf/VB)·D values
/// per worker. Each sum is taken in S in the sorted order from +0 over the converted rows
/// (`cce_sum_rows` on AVX-512, the same bits), so the values depend neither on the worker nor
/// on the thread count; in Float32 it is then rounded to BFloat16 (nearest even) and back,
/// the precision the estimate is documented with, and kept in S in the exact mode. T_j only
/// ever scales an estimate r·T_j/|J| of mass the filter dropped, each entry of which is below
/// ε, and the estimate leaves out the part of that mass that varies inside the block: bf16's
/// relative 2^-9 is far below what the estimate itself misses. Cost: one more read of a
/// needed block's C rows per token block, usually from cache (the backward forms T_j right
/// after the block's recompute has read them: ahead of need where the bound skipped rows of
/// the block, on demand for a filtered recomputed row), in place of one shared pass over C
/// before the sweep whose V/VB sums (2 MB at V = 128256, D = 1024) every worker then read.
final class BlockSums<S: KernelScalar> {
    let d: Int, vb: Int, forwardVB: Int
    private let perForward: Int                    // backward blocks per forward block, VBf/VB
    private let slots: Scratch<S>                  // (VBf/VB) x D: T_j of the forward block's blocks
    private let held: Scratch<Int>                 // which j each slot holds (−1: none)
    private let rows: Scratch<UnsafeRawPointer>    // VB C row pointers
    private let row: Scratch<S>                    // one converted row (portable path)

    init(plan: TilePlan, d: Int) {
        self.d = d; vb = plan.vocabBlock; forwardVB = plan.forwardVocabBlock
        perForward = max(1, forwardVB / vb)
        slots = Scratch(count: perForward * d)
        held = Scratch(count: perForward)
        for k in 0..<perForward { held.base[k] = -1 }
        rows = Scratch(count: vb)
        row = Scratch(count: S.self == Float.self && hasAVX512 ? 0 : d)
    }

    /// T_j (D values), formed now unless this worker holds it already.
    func block(_ operands: Operands<S>, _ j: Int) -> UnsafePointer<S> {
        let slot = j % perForward
        let out = slots.base + slot * d
        if held.base[slot] == j { return UnsafePointer(out) }
        let v0 = j * vb, count = min(vb, operands.v - v0)
        if S.self == Float.self {
            let outF = UnsafeMutableRawPointer(out).assumingMemoryBound(to: Float.self)
            if hasAVX512 {
                for q in 0..<count { rows.base[q] = operands.sortedCRow(v0 + q) }
                sumRowsAVX512(UnsafePointer(rows.base), count: count, type: operands.cType, width: d, into: outF)
            } else {
                sumConverted(operands, v0: v0, count: count, into: out)
            }
            for k in 0..<d { outF[k] = floatFromBFloat16Bits(bfloat16Bits(outF[k])) }
        } else {
            sumConverted(operands, v0: v0, count: count, into: out)
        }
        held.base[slot] = j
        return UnsafePointer(out)
    }

    /// F_f = Σ of forward block f's T_j, in order from +0, written into `out` (D values); in
    /// Float32 rounded to BFloat16 values, as each T_j is, so that the fused call's table of
    /// every F_f holds them in 2 bytes (`forwardTable`) and every path reads the same F_f.
    func forward(_ operands: Operands<S>, _ f: Int, into out: UnsafeMutablePointer<S>) {
        out.update(repeating: 0, count: d)
        var j = f * forwardVB / vb
        while j * vb < min(operands.v, (f + 1) * forwardVB) {
            axpy(out, 1, block(operands, j), count: d)
            j += 1
        }
        if S.self == Float.self {
            let outF = UnsafeMutableRawPointer(out).assumingMemoryBound(to: Float.self)
            for k in 0..<d { outF[k] = floatFromBFloat16Bits(bfloat16Bits(outF[k])) }
        }
    }

    /// F_f as forward(_:_:into:) forms it, stored as BFloat16 bits (exact: F_f's values are
    /// BFloat16 values in Float32) into `out` (D values), through `row` (D values of scratch).
    func forwardTable(_ operands: Operands<S>, _ f: Int, into out: UnsafeMutablePointer<UInt16>,
                      row: UnsafeMutablePointer<S>) {
        forward(operands, f, into: row)
        for k in 0..<d { out[k] = bfloat16Bits(Float(row[k])) }
    }

    /// The portable sum: each row converted to S, then added (axpy with a = 1: exact products,
    /// so the bits of plain additions in order from +0).
    private func sumConverted(_ operands: Operands<S>, v0: Int, count: Int, into out: UnsafeMutablePointer<S>) {
        out.update(repeating: 0, count: d)
        for q in v0..<(v0 + count) {
            convertRow(operands.sortedCRow(q), type: operands.cType, count: d, into: row.base)
            axpy(out, 1, UnsafePointer(row.base), count: d)
        }
    }
}

/// A worker's estimates of the rows its bound skipped, one chunk of `chunk` forward blocks at a
/// time (Backward.estimateSkipped, addSkippedEstimates): F_f = Σ of forward block f's T_j in
/// order from +0, and the coefficients c_if of the chunk's forward blocks, which one rank update
/// adds to dE as Σ_f c_if·F_f when the chunk ends. chunk·(D + NB) values per worker, where the
/// whole call's F_f and c_if took (V/VBf)·(D + NB).
final class SkippedEstimates<S: KernelScalar> {
    /// Forward blocks per rank update: a constant, so that the bits do not depend on the tile
    /// plan's NB or the thread count.
    static var chunk: Int { 16 }
    let d: Int
    let whole: Scratch<S>                     // chunk x D: F_f of the current chunk, where formed here
    let wholeRows: Scratch<UnsafePointer<S>>  // the chunk's F_f rows for the rank update (slots or a call's table)
    let coefficients: Scratch<S>              // NB x chunk: c_if of the current chunk

    init(plan: TilePlan, d: Int) {
        self.d = d
        let chunk = Self.chunk
        whole = Scratch(count: chunk * d); wholeRows = Scratch(count: chunk)
        coefficients = Scratch(count: plan.tokenBlock * chunk)
        for f in 0..<chunk { wholeRows.base[f] = UnsafePointer(whole.base + f * d) }
    }

    /// Forward block f's slot of the chunk (D values).
    func slot(_ f: Int) -> UnsafeMutablePointer<S> { whole.base + f % Self.chunk * d }

    /// Makes `row` forward block f's F_f in the chunk's rank update, and returns it.
    func use(_ row: UnsafePointer<S>, for f: Int) -> UnsafePointer<S> {
        wholeRows.base[f % Self.chunk] = row
        return row
    }
}

/// The logits the fused call's forward keeps so that its backward need not recompute them
/// (Backward.fromSaved): of each row and forward block, every entry with
/// z ≥ lse_running + log(ε/16), lse_running being the row's LSE over the blocks swept so far
/// (this one included), and the target's. The row's final LSE is at least lse_running, so an
/// entry left out has p < ε/16 at the end, and so |∂loss/∂z| < ε/16 where α/V < ε/16
/// (Engine.savesLogits): below dC's entry filter, which zeroes it today too. Kept in sweep
/// order, forward block by forward block, row by row, column by column: ((row mod 256) << 8 |
/// column in 16 bits, z), 6 bytes each, and per forward block the first entry of a row ≥ 256
/// (rows come in order, so that one index restores the ninth bit: NB ≤ `maxRows`, VBf ≤ 256).
/// Each row has room for `perRow` entries; a row whose next block would
/// not fit keeps nothing more, and from that block on (its `frontier`) the backward
/// recomputes it as before. A row's choices depend on the row alone, so the results do not
/// depend on NB or the thread count. (LM-like data, V = 128256: about 670 entries a row;
/// Benchmarks/scripts/sparse_census.py.)
final class SavedLogits<S: KernelScalar> {
    /// What a call's workers share: the room per row, log(ε/16) (the threshold's offset from
    /// the running LSE), the forward blocks, and every forward block's F_f for the estimate as
    /// BFloat16 bits (BlockSums.forwardTable; formed once for the call; nil without the estimate).
    struct Setting: @unchecked Sendable {
        let perRow: Int
        let logEntry: S
        let forwardBlocks: Int
        let forwardSums: UnsafePointer<UInt16>?
    }

    /// The most rows a token block may have: a key's high byte and the block's `highStarts`.
    static var maxRows: Int { 512 }

    let setting: Setting
    let keys: Scratch<UInt16>
    let values: Scratch<S>
    let starts: Scratch<Int>          // per forward block: its first entry (forward blocks + 1)
    private let highStarts: Scratch<Int>   // per forward block: its first entry of a row ≥ 256
    let rowStart: Scratch<Int32>      // backward, per row of the current forward block: first entry
    let rowEnd: Scratch<Int32>        //   ... and one past its last
    private let rowCount: Scratch<Int32>     // forward: entries each row holds
    private let frontier: Scratch<Int32>     // per row: the first forward block not kept
    private let positions: Scratch<Int32>    // forward: one row's selected columns
    private(set) var count = 0

    init(plan: TilePlan, d: Int, _ setting: Setting) {
        self.setting = setting
        let nb = plan.tokenBlock
        keys = Scratch(count: nb * setting.perRow); values = Scratch(count: nb * setting.perRow)
        starts = Scratch(count: setting.forwardBlocks + 1); highStarts = Scratch(count: setting.forwardBlocks)
        rowStart = Scratch(count: nb); rowEnd = Scratch(count: nb)
        rowCount = Scratch(count: nb); frontier = Scratch(count: nb)
        positions = Scratch(count: plan.forwardVocabBlock + 1)
    }

    /// A token block of `rows` rows begins its forward.
    func reset(rows: Int) {
        count = 0
        for i in 0..<rows { rowCount.base[i] = 0; frontier.base[i] = Int32.max }
    }

    /// Forward block f begins (its entries start here).
    func begin(block f: Int) { starts.base[f] = count; highStarts.base[f] = -1 }

    /// Forward block f is done (the next one's entries start here).
    func end(block f: Int) {
        starts.base[f + 1] = count
        if highStarts.base[f] < 0 { highStarts.base[f] = count }
    }

    /// Whether row i's logits of forward block f were kept.
    @inline(__always)
    func covers(row i: Int, block f: Int) -> Bool { f < Int(frontier.base[i]) }

    /// Keeps row i's entries of forward block f (z[0 ..< width]) with z ≥ max(lse_running,
    /// floor) + log(ε/16), `running` being the row's state with this block merged and `floor`
    /// a lower bound of the row's final LSE (−∞, or a vocabulary segment's seed; +∞: keep
    /// nothing from here on), and the target's
    /// (column `target`, −1 for none), and returns the log-sum-exp of the rest,
    /// log(e^(logSum − m) − Σ_kept e^(z − m)) + m with m the block row's largest logit
    /// (−∞ when nothing is left); nil, keeping nothing, from the block where the row's room
    /// would run out or where it would keep more than 3/4 of the block's entries on.
    func keep(_ z: UnsafePointer<S>, width: Int, row i: Int, block f: Int, running: RunningLSE<S>, floor: S,
              target: Int, max m: S, logSum: S) -> S? {
        if i >= 256 && highStarts.base[f] < 0 { highStarts.base[f] = count }   // the forward calls rows in order
        guard covers(row: i, block: f) else { return nil }
        guard floor < S.infinity else { frontier.base[i] = Int32(f); return nil }   // the seed says stop
        // Only Float32 calls save (Engine.savesLogits).
        let zf = UnsafeRawPointer(z).assumingMemoryBound(to: Float.self)
        let threshold = Swift.max(running.value, floor) + setting.logEntry
        // No entry clears the threshold when the block row's largest does not (most blocks of
        // a row): no scan.
        var n = m < threshold ? 0 : selectAbove(zf, count: width, threshold: Float(threshold), into: positions.base)
        if target >= 0 && !(0..<n).contains(where: { Int(positions.base[$0]) == target }) {
            // The target's entry, in its place among the others.
            var k = n
            while k > 0 && Int(positions.base[k - 1]) > target { positions.base[k] = positions.base[k - 1]; k -= 1 }
            positions.base[k] = Int32(target)
            n += 1
        }
        // Out of room, or a block where the row keeps more than 3/4 of its entries (nearly
        // every block of a flat row: cheaper recomputed by the tile kernel than saved and
        // added one entry at a time): recomputed from here on. (At 5/8, Float16's peaked rows
        // tripped it in their first blocks and were recomputed in few-row tiles after:
        // loss+grad 17 to 23% slower, Docs/PERFORMANCE.md.)
        guard Int(rowCount.base[i]) + n <= setting.perRow, n * 4 <= width * 3 else {
            frontier.base[i] = Int32(f)
            return nil
        }
        if n == 0 { return logSum }
        var kept: S = 0
        for k in 0..<n {
            let q = Int(positions.base[k])
            keys.base[count + k] = UInt16(truncatingIfNeeded: i) << 8 | UInt16(q)
            values.base[count + k] = z[q]
            kept += S.exp(z[q] - m)
        }
        count += n
        rowCount.base[i] += Int32(n)
        let rest = S.exp(logSum - m) - kept
        return rest > 0 ? m + S.log(rest) : -S.infinity
    }

    /// Backward, at the start of forward block f: the entries of each of `rows` (rowStart ..<
    /// rowEnd; equal for a row with none). Workers running parts of one token block's backward
    /// locate disjoint rows.
    func locateRows(block f: Int, rows: Range<Int>) {
        for i in rows { rowStart.base[i] = 0; rowEnd.base[i] = 0 }
        var e = starts.base[f]
        let end = starts.base[f + 1], high = highStarts.base[f]
        func row(_ e: Int) -> Int { Int(keys.base[e] >> 8) | (e >= high ? 256 : 0) }
        while e < end {
            let i = row(e)
            let start = e
            while e < end && row(e) == i { e += 1 }
            if rows.contains(i) { rowStart.base[i] = Int32(start); rowEnd.base[i] = Int32(e) }
        }
    }
}

/// A token block's saved logits when its forward runs in vocabulary segments (Engine.sweep,
/// and a vocabulary shard's call in two pieces, Engine.sweepExchanging): one SavedLogits per
/// segment, each holding its own segment's forward blocks (with its own room per row), and
/// each forward block read back from its segment's.
final class SavedSegments<S: KernelScalar>: @unchecked Sendable {
    let parts: [SavedLogits<S>]
    /// The first forward block of each segment, and the forward block count at the end.
    private let starts: [Int]

    /// The plan's vocabulary segments.
    convenience init(plan: TilePlan, d: Int, _ setting: SavedLogits<S>.Setting) {
        self.init(plan: plan, d: d, setting,
                  firstBlocks: (0..<plan.vocabSegments).map { plan.segmentBlocks($0, forwardBlocks: setting.forwardBlocks).lowerBound })
    }

    /// Segments that begin at these forward blocks (the first at 0, ascending).
    init(plan: TilePlan, d: Int, _ setting: SavedLogits<S>.Setting, firstBlocks: [Int]) {
        parts = firstBlocks.map { _ in SavedLogits(plan: plan, d: d, setting) }
        starts = firstBlocks + [setting.forwardBlocks]
    }

    /// Logits kept over every segment.
    var count: Int { parts.reduce(0) { $0 + $1.count } }

    /// The SavedLogits of the segment that holds forward block f.
    func logits(_ f: Int) -> SavedLogits<S> {
        var s = 0
        while s + 1 < parts.count && f >= starts[s + 1] { s += 1 }
        return parts[s]
    }
}

/// A worker's scratch for the backward from saved logits (Backward.fromSaved), whichever token
/// block's SavedLogits it reads: the kept rows built from saved entries before they merge into
/// the tile (NB x VB) and which rows they are; one row's entries: columns, dy, C rows, and one
/// C row converted (portable path). Empty (count 0) in a workspace that never reads them.
struct FromSavedScratch<S: KernelScalar> {
    let tile: Scratch<S>
    let keep: Scratch<Int>
    let columns: Scratch<Int>
    let dy: Scratch<S>
    let cRows: Scratch<UnsafeRawPointer>
    let cRow: Scratch<S>

    init(plan: TilePlan, d: Int, used: Bool) {
        let nb = used ? plan.tokenBlock : 0, vb = used ? plan.vocabBlock : 0
        tile = Scratch(count: nb * vb); keep = Scratch(count: nb)
        columns = Scratch(count: vb); dy = Scratch(count: vb); cRows = Scratch(count: vb); cRow = Scratch(count: used ? d : 0)
    }
}

/// dC updates a worker has computed but whose hand-off turn has not come yet: the kept
/// rows' dy (only the columns some row has an entry in) and which rows and columns they
/// were, in vocabulary-block order.
final class PendingUpdates<S: KernelScalar> {
    /// Block j's update: `kept` dy rows of `cols` values each (dy at offset, row-major; `nonzero`
    /// of them not zero), the columns' positions in the block at colOffset, the rows' tile
    /// indices at rowOffset.
    struct Entry {
        var j: Int, v0: Int, vc: Int, kept: Int, cols: Int, nonzero: Int, offset: Int, rowOffset: Int, colOffset: Int
    }
    var entries: [Entry] = []
    var head = 0
    let dy: Scratch<S>
    let rows: Scratch<Int>
    let columns: Scratch<Int>
    var used = 0, rowsUsed = 0, columnsUsed = 0

    init(capacity: Int, vb: Int) {
        dy = Scratch(count: capacity)
        rows = Scratch(count: capacity / 16 + 64)
        columns = Scratch(count: capacity / 16 + 64 + vb)
    }

    var isEmpty: Bool { head == entries.count }

    /// Whether `kept` rows of `vc` values fit.
    func fits(kept: Int, vc: Int) -> Bool {
        used + kept * vc <= dy.count && rowsUsed + kept <= rows.count && columnsUsed + vc <= columns.count
    }

    /// Queues block j's update: copies the dy rows out of the tile (which stays as it is, for
    /// dE), keeping only the columns where some row has an entry. With `threshold` (row r's
    /// ε·|g_r|), an entry below its row's threshold is copied as zero: the entry-level filter
    /// of dC (Backward.swift).
    /// With `uniform` (a_i of the row's token, and the block's class weights or nil), every
    /// entry x goes in as x + a_i·w_q before the entry filter (the smoothing term taken back
    /// out, Backward.queueC).
    func append(j: Int, v0: Int, vc: Int, kept: Int, tile: UnsafePointer<S>, ldt: Int,
                keep: UnsafePointer<Int>, threshold: ((Int) -> S)?, uniform: ((Int) -> S)? = nil,
                weights: UnsafePointer<S>? = nil) {
        let compacted: (cols: Int, nonzero: Int)
        if let uniform, kept > 0 {
            compacted = withUnsafeTemporaryAllocation(of: S.self, capacity: kept * vc) { t in
                let adjusted = t.baseAddress!
                for r in 0..<kept {
                    let a = uniform(keep[r]), src = tile + r * ldt, dst = adjusted + r * vc
                    for q in 0..<vc { dst[q] = src[q] + a * (weights?[q] ?? 1) }
                }
                return compactColumns(UnsafePointer(adjusted), ldt: vc, rows: kept, vc: vc, keep: keep,
                                      threshold: threshold, into: dy.base + used, columns: columns.base + columnsUsed)
            }
        } else {
            compacted = compactColumns(tile, ldt: ldt, rows: kept, vc: vc, keep: keep, threshold: threshold,
                                       into: dy.base + used, columns: columns.base + columnsUsed)
        }
        let (cols, nonzero) = compacted
        for r in 0..<kept { rows.base[rowsUsed + r] = keep[r] }
        entries.append(Entry(j: j, v0: v0, vc: vc, kept: kept, cols: cols, nonzero: nonzero, offset: used,
                             rowOffset: rowsUsed, colOffset: columnsUsed))
        used += kept * cols
        rowsUsed += kept
        columnsUsed += cols
    }

    func popFirst() {
        head += 1
        if isEmpty { entries.removeAll(keepingCapacity: true); head = 0; used = 0; rowsUsed = 0; columnsUsed = 0 }
    }
}

/// The entry filter's compaction: copies tile rows 0 ..< rows (stride ldt, vc values each)
/// into `into` (row-major, one value per kept column), keeping only the columns where some
/// row has an entry, and writes those columns' positions to `columns`; returns their count
/// and how many of the copied values are not zero.
/// With `threshold` (of the row's token keep[r]), an entry below it in magnitude counts as
/// zero and is copied as zero. A left-out column's products would all have been FMAs with
/// a zero factor, so every sum they would have entered keeps its bits.
func compactColumns<S: KernelScalar>(_ tile: UnsafePointer<S>, ldt: Int, rows: Int, vc: Int, keep: UnsafePointer<Int>,
                                     threshold: ((Int) -> S)?, into dst: UnsafeMutablePointer<S>,
                                     columns: UnsafeMutablePointer<Int>) -> (cols: Int, nonzero: Int) {
    withUnsafeTemporaryAllocation(of: S.self, capacity: rows) { limit in
        withUnsafeTemporaryAllocation(of: Bool.self, capacity: vc) { used in
            for q in 0..<vc { used[q] = false }
            for r in 0..<rows { limit[r] = threshold?(keep[r]) ?? 0 }
            // Which columns have an entry (the search stops once all of them have one).
            var usedCount = 0
            for r in 0..<rows where usedCount < vc {
                let row = tile + r * ldt, t = limit[r]
                for q in 0..<vc where !used[q] && row[q] != 0 && !(abs(row[q]) < t) { used[q] = true; usedCount += 1 }
            }
            var cols = 0
            for q in 0..<vc where used[q] { columns[cols] = q; cols += 1 }
            var nonzero = 0
            for r in 0..<rows {
                let row = tile + r * ldt, out = dst + r * cols, t = limit[r]
                if cols == vc {
                    // Every column: a straight copy with the threshold, in vector lanes (thresholdCopy).
                    nonzero &+= thresholdCopy(row, count: vc, below: t, into: out)
                } else {
                    for c in 0..<cols {
                        let x = row[columns[c]], y = abs(x) < t ? 0 : x
                        out[c] = y
                        nonzero &+= y != 0 ? 1 : 0
                    }
                }
            }
            return (cols, nonzero)
        }
    }
}
