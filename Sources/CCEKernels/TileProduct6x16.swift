// The tile product: one tile of logits, out[i][j] = Σ_k e_i[k] · c_j[k], on packed panels.
//
// Layout (BLIS-style): the token block of E is packed once per block into panels of
// MR = 6 rows, k-major (panel[k·6 + r] = e_{6p+r}[k]); for each group of NR = 16
// vocabulary rows and each chunk of KC = 256 columns, the C rows are converted and packed
// k-major (panel[k·16 + j] = c_j[k0 + k]) into a 16 KiB panel that stays in L1 while every
// E panel of the block streams past it. The 6 x 16 microkernel keeps the output block in
// twelve SIMD8 registers: per k, two loads of C, six broadcasts of E, twelve FMAs.
//
// Summation order: every logit is one sequential fused multiply-add chain over
// k = 0 … D−1, starting from 0 (chunks continue the chain from the stored partial), so a
// logit's bits do not depend on where its row or column falls in a tile, and
// `sequentialDot` reproduces it exactly (the forward's indexed target dot uses it).
// Rows beyond m and columns beyond n are zero-padded in the panels and never stored.
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

/// Packs rows[0 ..< m] (each of length k, stored as `type`) into ⌈m/6⌉ panels of 6 x k,
/// k-major, converting to S and zero-padding.
@inlinable
public func packRowPanels<S: KernelScalar>(_ rows: UnsafePointer<UnsafeRawPointer>, type: StorageType, m: Int, k: Int,
                                           into dst: UnsafeMutablePointer<S>) {
    let mr = TileShape.mr
    var p = 0
    while p * mr < m {
        let panel = dst + p * mr * k
        for r in 0..<mr {
            let i = p * mr + r
            if i < m {
                let src = rows[i]
                switch type {
                case .float32:
                    let f = src.assumingMemoryBound(to: Float.self)
                    for q in 0..<k { panel[q * mr + r] = S(storage: f[q]) }
                case .float16:
                    let f = src.assumingMemoryBound(to: Float16.self)
                    for q in 0..<k { panel[q * mr + r] = S(storage: Float(f[q])) }
                case .bfloat16:
                    let f = src.assumingMemoryBound(to: UInt16.self)
                    for q in 0..<k { panel[q * mr + r] = S(storage: floatFromBFloat16Bits(f[q])) }
                }
            } else {
                for q in 0..<k { panel[q * mr + r] = 0 }
            }
        }
        p += 1
    }
}

/// Packs columns k0 ..< k0 + kc of up to 16 rows (stored as `type`) k-major into `dst`
/// (kc x 16), converting to S and zero-padding rows beyond `n`.
@inlinable
public func packColumnPanel<S: KernelScalar>(_ rows: UnsafePointer<UnsafeRawPointer>, n: Int, type: StorageType,
                                             k0: Int, kc: Int, into dst: UnsafeMutablePointer<S>) {
    let nr = TileShape.nr
    if n == nr, S.self == Float.self, type != .float16 {
        packFullPanel(rows, type: type, k0: k0, kc: kc,
                      into: UnsafeMutableRawPointer(dst).assumingMemoryBound(to: Float.self))
        return
    }
    for j in 0..<nr {
        if j < n {
            let src = rows[j]
            for q in 0..<kc { dst[q * nr + j] = S(storage: storedElement(src, type: type, k0 + q)) }
        } else {
            for q in 0..<kc { dst[q * nr + j] = 0 }
        }
    }
}

/// The fast path of `packColumnPanel` for 16 Float32 or BFloat16 rows into Float: 8 x 8
/// blocks are loaded as eight row vectors and stored as eight column vectors (LLVM turns
/// the lane shuffles into vector permutes): about 3x faster than element-wise packing.
@inlinable
func packFullPanel(_ rows: UnsafePointer<UnsafeRawPointer>, type: StorageType, k0: Int, kc: Int,
                   into dst: UnsafeMutablePointer<Float>) {
    let nr = TileShape.nr
    @inline(__always) func row8(_ j: Int, _ q: Int) -> SIMD8<Float> {
        if type == .bfloat16 {
            let h = (rows[j] + 2 * (k0 + q)).loadUnaligned(as: SIMD8<UInt16>.self)
            return unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16, to: SIMD8<Float>.self)
        }
        return (rows[j] + 4 * (k0 + q)).loadUnaligned(as: SIMD8<Float>.self)
    }
    let kv = kc & ~7
    var q0 = 0
    while q0 < kv {
        for j0 in stride(from: 0, to: nr, by: 8) {
            let v0 = row8(j0, q0), v1 = row8(j0 + 1, q0), v2 = row8(j0 + 2, q0), v3 = row8(j0 + 3, q0)
            let v4 = row8(j0 + 4, q0), v5 = row8(j0 + 5, q0), v6 = row8(j0 + 6, q0), v7 = row8(j0 + 7, q0)
            for c in 0..<8 {
                let col = SIMD8<Float>(v0[c], v1[c], v2[c], v3[c], v4[c], v5[c], v6[c], v7[c])
                UnsafeMutableRawPointer(dst + (q0 + c) * nr + j0).storeBytes(of: col, as: SIMD8<Float>.self)
            }
        }
        q0 += 8
    }
    while q0 < kc {
        for j in 0..<nr { dst[q0 * nr + j] = storedElement(rows[j], type: type, k0 + q0) }
        q0 += 1
    }
}

/// out[i·ldo + j] = Σ_k e_i[k]·c_j[k] for i < m, j < n.
/// - ePanels: the E rows packed by `packRowPanels` (k = d).
/// - cRows: raw pointers to the n C rows, stored as `cType`.
/// - panel: scratch of 16 · KC elements.
/// - panelMask: when given, 6-row panels p with panelMask[p] == false are not computed
///   (their out rows are left as they were).
@inlinable
public func tileProduct<S: KernelScalar>(
    ePanels: UnsafePointer<S>, m: Int, cRows: UnsafePointer<UnsafeRawPointer>, cType: StorageType, n: Int,
    d: Int, out: UnsafeMutablePointer<S>, ldo: Int, panel: UnsafeMutablePointer<S>,
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
                let a = ePanels + (i0 / mr) * mr * d + k0 * mr
                let c = out + i0 * ldo + j0
                let mc = min(mr, m - i0)
                if mc == mr && nc == nr {
                    kernel6x16(kc, a, UnsafePointer(panel), c, ldo, k0 > 0)
                } else {
                    withUnsafeTemporaryAllocation(of: S.self, capacity: mr * nr) { t in
                        let tb = t.baseAddress!
                        for r in 0..<mr { for q in 0..<nr { tb[r * nr + q] = (r < mc && q < nc && k0 > 0) ? c[r * ldo + q] : 0 } }
                        kernel6x16(kc, a, UnsafePointer(panel), tb, nr, true)
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

/// c[r·ldc + 0 ..< 16] (+)= Σ_{q<kc} a[q·6 + r] · b[q·16 + 0 ..< 16] for r < 6.
@inlinable @inline(__always)
func kernel6x16<S: KernelScalar>(_ kc: Int, _ a: UnsafePointer<S>, _ b: UnsafePointer<S>,
                                 _ c: UnsafeMutablePointer<S>, _ ldc: Int, _ accumulate: Bool) {
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
    var ap = a, bp = b
    for _ in 0..<kc {
        let bl = load8(bp), bh = load8(bp + 8)
        var x = SIMD8<S>(repeating: ap[0])
        c0l = c0l.addingProduct(x, bl); c0h = c0h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: ap[1])
        c1l = c1l.addingProduct(x, bl); c1h = c1h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: ap[2])
        c2l = c2l.addingProduct(x, bl); c2h = c2h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: ap[3])
        c3l = c3l.addingProduct(x, bl); c3h = c3h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: ap[4])
        c4l = c4l.addingProduct(x, bl); c4h = c4h.addingProduct(x, bh)
        x = SIMD8<S>(repeating: ap[5])
        c5l = c5l.addingProduct(x, bl); c5h = c5h.addingProduct(x, bh)
        ap += 6; bp += 16
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
