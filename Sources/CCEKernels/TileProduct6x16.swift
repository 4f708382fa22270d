// The tile product: one tile of logits, out[i][j] = Σ_k e_i[k] · c_j[k].
//
// Layout (BLIS-style, Packing.swift): the token block's E rows are read in place through a
// row table (already in the compute type: the engine converts each E row once per token
// block); for each group of NR = 16 vocabulary rows and each chunk of KC = 256 columns, the
// C rows are converted and packed k-major (panel[k·16 + j] = c_j[k0 + k]) into a 16 KiB
// panel that stays in L1 while every 6-row group of the token block streams past it. The
// 6 x 16 microkernel keeps the output block in twelve SIMD8 registers: per k, two loads of
// C, six broadcasts of E (one from each of the six rows), twelve FMAs.
//
// Summation order: every logit is one sequential fused multiply-add chain over
// k = 0 … D−1, starting from 0 (chunks continue the chain from the stored partial), so a
// logit's bits do not depend on where its row or column falls in a tile, and
// `sequentialDot` reproduces it exactly. Columns beyond n are zero-padded in the panel,
// rows beyond m repeat the group's first row; neither is ever stored.
//
// `tileProductReference` (TileProductReference.swift) is the portable version the tests
// compare with.

/// Register block and panel sizes.
public enum TileShape {
    public static let mr = 6
    public static let nr = 16
    public static let kc = 256
}

/// Σ_k a[k]·b[k] as one sequential FMA chain: the tile product's order.
@inlinable
public func sequentialDot<S: KernelScalar>(_ a: UnsafePointer<S>, _ b: UnsafePointer<S>, _ k: Int) -> S {
    var s: S = 0
    for p in 0..<k { s = s.addingProduct(a[p], b[p]) }
    return s
}

/// Σ_k a[k]·b[k] in four SIMD8 accumulators: fast, in an order unlike the tile's (for
/// uses where the bits do not matter, such as the vocabulary order).
@inlinable
public func fastDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ k: Int) -> Float {
    var s0 = SIMD8<Float>(), s1 = SIMD8<Float>(), s2 = SIMD8<Float>(), s3 = SIMD8<Float>()
    var p = 0
    while p + 32 <= k {
        s0 = s0.addingProduct(load8(a + p), load8(b + p)); s1 = s1.addingProduct(load8(a + p + 8), load8(b + p + 8))
        s2 = s2.addingProduct(load8(a + p + 16), load8(b + p + 16)); s3 = s3.addingProduct(load8(a + p + 24), load8(b + p + 24))
        p += 32
    }
    var s = laneSum((s0 + s1) + (s2 + s3))
    while p < k { s = s.addingProduct(a[p], b[p]); p += 1 }
    return s
}

/// out[i·ldo + j] = Σ_k e_i[k]·c_j[k] for i < m, j < n.
/// - eRows: the m E rows in the compute type (length d each).
/// - cRows: raw pointers to the n C rows, stored as `cType`.
/// - panel: scratch of 16 · KC elements.
/// - panelMask: when given, 6-row groups p (rows 6p ..< 6p + 6) with panelMask[p] == false
///   are not computed (their out rows are left as they were).
@inlinable
public func tileProduct<S: KernelScalar>(
    eRows: UnsafePointer<UnsafePointer<S>>, m: Int, cRows: UnsafePointer<UnsafeRawPointer>, cType: ElementType,
    n: Int, d: Int, out: UnsafeMutablePointer<S>, ldo: Int, panel: UnsafeMutablePointer<S>,
    panelMask: UnsafePointer<Bool>? = nil
) {
    let mr = TileShape.mr, nr = TileShape.nr, kcMax = TileShape.kc
    var j0 = 0
    while j0 < n {
        let nc = min(nr, n - j0)
        var k0 = 0
        while k0 < d {
            let kc = min(kcMax, d - k0)
            packColumnPanel(cRows + j0, n: nc, type: cType, k0: k0, kc: kc, into: panel)
            var i0 = 0
            while i0 < m {
                if let mask = panelMask, !mask[i0 / mr] { i0 += mr; continue }
                let mc = min(mr, m - i0)
                // Rows beyond m repeat row i0: computed, never stored.
                @inline(__always) func row(_ r: Int) -> UnsafePointer<S> { eRows[r < mc ? i0 + r : i0] + k0 }
                let c = out + i0 * ldo + j0
                if mc == mr && nc == nr {
                    kernel6x16(kc, row(0), row(1), row(2), row(3), row(4), row(5), UnsafePointer(panel), c, ldo, k0 > 0)
                } else {
                    withUnsafeTemporaryAllocation(of: S.self, capacity: mr * nr) { t in
                        let tb = t.baseAddress!
                        for r in 0..<mr { for q in 0..<nr { tb[r * nr + q] = (r < mc && q < nc && k0 > 0) ? c[r * ldo + q] : 0 } }
                        kernel6x16(kc, row(0), row(1), row(2), row(3), row(4), row(5), UnsafePointer(panel), tb, nr, true)
                        for r in 0..<mc { for q in 0..<nc { c[r * ldo + q] = tb[r * nr + q] } }
                    }
                }
                i0 += mr
            }
            k0 += kc
        }
        j0 += nr
    }
}

/// c[r·ldc + 0 ..< 16] (+)= Σ_{q<kc} a_r[q] · b[q·16 + 0 ..< 16] for the six rows a_0 … a_5.
@inlinable @inline(__always)
func kernel6x16<S: KernelScalar>(_ kc: Int, _ a0: UnsafePointer<S>, _ a1: UnsafePointer<S>, _ a2: UnsafePointer<S>,
                                 _ a3: UnsafePointer<S>, _ a4: UnsafePointer<S>, _ a5: UnsafePointer<S>,
                                 _ b: UnsafePointer<S>, _ c: UnsafeMutablePointer<S>, _ ldc: Int, _ accumulate: Bool) {
    var c0l = SIMD8<S>(), c0h = SIMD8<S>(), c1l = SIMD8<S>(), c1h = SIMD8<S>()
    var c2l = SIMD8<S>(), c2h = SIMD8<S>(), c3l = SIMD8<S>(), c3h = SIMD8<S>()
    var c4l = SIMD8<S>(), c4h = SIMD8<S>(), c5l = SIMD8<S>(), c5h = SIMD8<S>()
    if accumulate {
        c0l = load8(UnsafePointer(c)); c0h = load8(UnsafePointer(c + 8))
        c1l = load8(UnsafePointer(c + ldc)); c1h = load8(UnsafePointer(c + ldc + 8))
        c2l = load8(UnsafePointer(c + 2 * ldc)); c2h = load8(UnsafePointer(c + 2 * ldc + 8))
        c3l = load8(UnsafePointer(c + 3 * ldc)); c3h = load8(UnsafePointer(c + 3 * ldc + 8))
        c4l = load8(UnsafePointer(c + 4 * ldc)); c4h = load8(UnsafePointer(c + 4 * ldc + 8))
        c5l = load8(UnsafePointer(c + 5 * ldc)); c5h = load8(UnsafePointer(c + 5 * ldc + 8))
    }
    var bp = b
    for q in 0..<kc {
        let bl = load8(bp), bh = load8(bp + 8)
        var x = SIMD8<S>(repeating: a0[q])
        c0l = c0l.addingProduct(x, bl); c0h = c0h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: a1[q])
        c1l = c1l.addingProduct(x, bl); c1h = c1h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: a2[q])
        c2l = c2l.addingProduct(x, bl); c2h = c2h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: a3[q])
        c3l = c3l.addingProduct(x, bl); c3h = c3h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: a4[q])
        c4l = c4l.addingProduct(x, bl); c4h = c4h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: a5[q])
        c5l = c5l.addingProduct(x, bl); c5h = c5h.addingProduct(x, bh)
        bp += 16
    }
    store8(c0l, c); store8(c0h, c + 8)
    store8(c1l, c + ldc); store8(c1h, c + ldc + 8)
    store8(c2l, c + 2 * ldc); store8(c2h, c + 2 * ldc + 8)
    store8(c3l, c + 3 * ldc); store8(c3h, c + 3 * ldc + 8)
    store8(c4l, c + 4 * ldc); store8(c4h, c + 4 * ldc + 8)
    store8(c5l, c + 5 * ldc); store8(c5h, c + 5 * ldc + 8)
}

@inlinable @inline(__always)
func load8<S: KernelScalar>(_ p: UnsafePointer<S>) -> SIMD8<S> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<S>.self)
}

@inlinable @inline(__always)
func store8<S: KernelScalar>(_ v: SIMD8<S>, _ p: UnsafeMutablePointer<S>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<S>.self)
}
