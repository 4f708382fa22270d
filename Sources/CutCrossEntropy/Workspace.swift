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
    let eBlock: Scratch<S>         // NB x D: the token block, converted
    let cBlock: Scratch<S>         // VB x D: the vocabulary block, converted when needed
    let tile: Scratch<S>           // NB x VB logits, then gradients
    let eRows: Scratch<UnsafePointer<S>>
    let cRows: Scratch<UnsafePointer<S>>
    let outRows: Scratch<UnsafeMutablePointer<S>>
    let activeRows: Scratch<UnsafePointer<S>>
    let d: Int
    let vb: Int

    init(plan: TilePlan, d: Int) {
        let nb = plan.tokenBlock, vb = plan.vocabBlock
        self.d = d; self.vb = vb
        eBlock = Scratch(count: nb * d)
        cBlock = Scratch(count: vb * d)
        tile = Scratch(count: nb * vb)
        eRows = Scratch(count: nb)
        cRows = Scratch(count: vb)
        outRows = Scratch(count: max(nb, vb))
        activeRows = Scratch(count: nb)
    }

    /// Converts the E rows of active tokens first ..< first + count into the block.
    func loadTokens<T>(_ inp: SweepInputs<S>, first: Int, count: Int, rows: UnsafeBufferPointer<Int32>, _: T.Type = T.self) {
        for i in 0..<count {
            let dst = eBlock.base + i * d
            convertRow(inp.eRow(Int(rows[first + i])), type: inp.eType, count: d, into: dst)
            eRows.base[i] = UnsafePointer(dst)
        }
    }

    /// The logit tile (count x vc, row stride VB) of the loaded token and vocabulary rows.
    func product(_ inp: SweepInputs<S>, count: Int, vc: Int) {
        if inp.backend == .openBLAS, S.self == Float.self {
            // OpenBLAS wants both operands contiguous: E rows are (loadTokens converts
            // them into eBlock); copy C rows that are read in place.
            if inp.cInPlace {
                for q in 0..<vc { (cBlock.base + q * d).update(from: cRows.base[q], count: d) }
            }
            let f = { (p: UnsafeMutablePointer<S>) in UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self) }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(count), Int32(vc), Int32(d), 1,
                        f(eBlock.base), Int32(d), f(cBlock.base), Int32(d), 0, f(tile.base), Int32(vb))
            return
        }
        tileProduct(a: eRows.base, m: count, b: cRows.base, n: vc, k: d, out: tile.base, ldo: vb)
    }

    /// Points cRows at the C rows ids[0 ..< count], converting them into the block unless
    /// they can be read in place.
    func loadVocabulary(_ inp: SweepInputs<S>, ids: (Int) -> Int, count: Int) {
        if inp.cInPlace {
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
