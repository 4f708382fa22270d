// The gradient updates: dE += G · C and dC += Gᵀ · E, both as one rank-k update.
//
// Contract: out_r[d] += Σ_{q<k} A(r, q) · b_q[d] for r < m, d < width, where
//   A(r, q) = a[r·ars + q·aks]   (G read row-wise for dE, column-wise for dC),
//   out_r   = out[r]             (rows of dE or dC, reached through a row table, so the
//                                  sorted vocabulary needs no scatter),
//   b_q     = b[q]               (rows of C for dE, rows of E for dC).
// Shapes: for dE, m = tokens, k = vocabulary entries, width = D;
//         for dC, m = vocabulary entries, k = tokens, width = D.
//
// With `blocked`, each call's sum Σ_q starts from 0 in registers and is then added to out:
// the dE chains become a sum of per-vocabulary-block partials (VB terms each), whose
// rounding error grows with V/VB + VB instead of V. The dC chains stay sequential over the
// tokens (their call boundaries depend on the token blocks, which may depend on the
// thread count; a sequential chain does not).
//
// Register block 6 x 16: six rows of out times two SIMD8 (twelve accumulators), loaded
// from out, then one broadcast of A (packed first into 6-row panels, k-major, in the
// caller's scratch) and two loads of b per row and step. Each out element
// is a sequential fused multiply-add chain over q starting from its stored value, so the
// result does not depend on how rows are grouped or how the q range is split into calls
// (the determinism guarantee across thread counts rests on this). `spare` is a scratch row
// of `width` values that absorbs the missing rows of a partial 6-row group.
//
// b's 16-column slices are copied contiguous, one chunk of columns at a time. For dC (b = the
// token block's E rows, k up to NB of them) that copy gathers one 64-byte line from each of k
// rows 4 KB apart, for every vocabulary block: when nearly every row segment is kept (Float32's
// ε) it cost a quarter of the update. `slices` lets the caller cut b into slice-major
// 16-column slices once (cutSlices, once per token block) and the chunks then come from
// there: gathered from one contiguous stretch, or read in place when the update's rows are
// the slices' first k rows in order. The loads change, not the FMA chains: the same bits.
//
// `rankUpdateReference` is the portable version.

@inlinable
public func rankUpdate<S: KernelScalar>(
    out: UnsafePointer<UnsafeMutablePointer<S>>, m: Int,
    a: UnsafePointer<S>, ars: Int, aks: Int,
    b: UnsafePointer<UnsafePointer<S>>, k: Int, width: Int,
    scratch: UnsafeMutablePointer<S>, spare: UnsafeMutablePointer<S>, blocked: Bool = false,
    bSlice: UnsafeMutablePointer<S>, slices: BSlices<S>? = nil
) {
    // A is packed first into 6-row panels (Packing.swift), so the microkernel's six
    // broadcasts are consecutive. Column chunks outside, row groups inside: the k x 16
    // slice of b stays in L1 while every group of six out rows passes.
    let mr = TileShape.mr
    packRowPanels(a, rowStride: ars, columnStride: aks, m: m, k: k, into: scratch)
    // With slices whose first k rows are b's rows in order, each chunk's slice is read in place.
    let inPlace = slices.map { s in (0..<k).allSatisfy { s.index[$0] == $0 } } ?? false
    var d = 0
    while d + 16 <= width {
        // This chunk's k x 16 slice of b, contiguous (rows of b are scattered), gathered from
        // the caller's slices of b where it has them.
        var slice = UnsafePointer(bSlice)
        if let slices, inPlace {
            slice = slices.base + (d / 16) &* slices.stride
        } else if let slices {
            let chunk = slices.base + (d / 16) &* slices.stride
            for q in 0..<k {
                let src = UnsafePointer(chunk + slices.index[q] &* 16)
                store8(load8(src), bSlice + (q &* 16))
                store8(load8(src + 8), bSlice + (q &* 16 &+ 8))
            }
        } else {
            for q in 0..<k {
                let src = b[q] + d
                store8(load8(src), bSlice + (q &* 16))
                store8(load8(src + 8), bSlice + (q &* 16 &+ 8))
            }
        }
        var r = 0
        while r < m {
            let panel = UnsafePointer(scratch + r * k)
            if m - r >= mr {
                update6x16(out + r, panel, slice, k, d, blocked)
            } else {
                // A partial group runs the 6-row kernel too (a single row's FMA chain is
                // latency-bound): missing rows write into `spare`, their A rows are zero.
                withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<S>.self, capacity: mr) { rows in
                    for rr in 0..<mr { rows[rr] = r + rr < m ? out[r + rr] : spare }
                    update6x16(UnsafePointer(rows.baseAddress!), panel, slice, k, d, blocked)
                }
            }
            r += mr
        }
        d += 16
    }
    while d + 8 <= width {
        for r in 0..<m { update1x8(out[r], UnsafePointer(scratch + (r / mr) * mr * k + r % mr), mr, b, k, d, blocked) }
        d += 8
    }
    while d < width {
        for r in 0..<m {
            let o = out[r]
            let ar = UnsafePointer(scratch + (r / mr) * mr * k + r % mr)
            var s: S = blocked ? 0 : o[d]
            for q in 0..<k { s = s.addingProduct(ar[q &* mr], b[q][d]) }
            o[d] = blocked ? o[d] + s : s
        }
        d += 1
    }
}

/// b's rows cut into 16-column slices, slice-major: row r's columns 16c ..< 16c + 16 at
/// base[c·stride + r·16]; row q of a rank update is row index[q] here.
public struct BSlices<S: KernelScalar> {
    public let base: UnsafePointer<S>
    public let stride: Int
    public let index: UnsafePointer<Int>
    @inlinable public init(base: UnsafePointer<S>, stride: Int, index: UnsafePointer<Int>) {
        self.base = base; self.stride = stride; self.index = index
    }
}

/// Copies rows[0 ..< m] (width values each) into slice-major 16-column slices (BSlices):
/// row r's columns 16c ..< 16c + 16 at into[c·stride + r·16], for the width / 16 whole slices.
@inlinable
public func cutSlices<S: KernelScalar>(_ rows: UnsafePointer<UnsafePointer<S>>, m: Int, width: Int,
                                       into: UnsafeMutablePointer<S>, stride: Int) {
    for r in 0..<m {
        var src = rows[r], dst = into + r * 16
        for _ in 0..<width / 16 {
            store8(load8(src), dst)
            store8(load8(src + 8), dst + 8)
            src += 16; dst += stride
        }
    }
}

@inlinable @inline(__always)
func update1x8<S: KernelScalar>(
    _ o: UnsafeMutablePointer<S>, _ a: UnsafePointer<S>, _ aks: Int,
    _ b: UnsafePointer<UnsafePointer<S>>, _ k: Int, _ d: Int, _ blocked: Bool
) {
    var acc = blocked ? SIMD8<S>() : load8(UnsafePointer(o + d))
    for q in 0..<k { acc = acc.addingProduct(SIMD8<S>(repeating: a[q &* aks]), load8(b[q] + d)) }
    if blocked { acc += load8(UnsafePointer(o + d)) }
    store8(acc, o + d)
}

/// out_r[d ..< d+16] += Σ_q panel[q·6 + r] · slice[q·16 ..< q·16+16] for r < 6.
@inlinable @inline(__always)
func update6x16<S: KernelScalar>(
    _ out: UnsafePointer<UnsafeMutablePointer<S>>, _ panel: UnsafePointer<S>,
    _ slice: UnsafePointer<S>, _ k: Int, _ d: Int, _ blocked: Bool
) {
    let o0 = out[0] + d, o1 = out[1] + d, o2 = out[2] + d
    let o3 = out[3] + d, o4 = out[4] + d, o5 = out[5] + d
    var l0 = SIMD8<S>(), h0 = SIMD8<S>(), l1 = SIMD8<S>(), h1 = SIMD8<S>()
    var l2 = SIMD8<S>(), h2 = SIMD8<S>(), l3 = SIMD8<S>(), h3 = SIMD8<S>()
    var l4 = SIMD8<S>(), h4 = SIMD8<S>(), l5 = SIMD8<S>(), h5 = SIMD8<S>()
    if !blocked {
        l0 = load8(UnsafePointer(o0)); h0 = load8(UnsafePointer(o0 + 8))
        l1 = load8(UnsafePointer(o1)); h1 = load8(UnsafePointer(o1 + 8))
        l2 = load8(UnsafePointer(o2)); h2 = load8(UnsafePointer(o2 + 8))
        l3 = load8(UnsafePointer(o3)); h3 = load8(UnsafePointer(o3 + 8))
        l4 = load8(UnsafePointer(o4)); h4 = load8(UnsafePointer(o4 + 8))
        l5 = load8(UnsafePointer(o5)); h5 = load8(UnsafePointer(o5 + 8))
    }
    var ap = panel, bq = slice
    for _ in 0..<k {
        let y0 = load8(bq), y1 = load8(bq + 8)
        bq += 16
        var x = SIMD8<S>(repeating: ap[0])
        l0 = l0.addingProduct(x, y0); h0 = h0.addingProduct(x, y1)
        x = SIMD8<S>(repeating: ap[1])
        l1 = l1.addingProduct(x, y0); h1 = h1.addingProduct(x, y1)
        x = SIMD8<S>(repeating: ap[2])
        l2 = l2.addingProduct(x, y0); h2 = h2.addingProduct(x, y1)
        x = SIMD8<S>(repeating: ap[3])
        l3 = l3.addingProduct(x, y0); h3 = h3.addingProduct(x, y1)
        x = SIMD8<S>(repeating: ap[4])
        l4 = l4.addingProduct(x, y0); h4 = h4.addingProduct(x, y1)
        x = SIMD8<S>(repeating: ap[5])
        l5 = l5.addingProduct(x, y0); h5 = h5.addingProduct(x, y1)
        ap += 6
    }
    if blocked {
        l0 += load8(UnsafePointer(o0)); h0 += load8(UnsafePointer(o0 + 8))
        l1 += load8(UnsafePointer(o1)); h1 += load8(UnsafePointer(o1 + 8))
        l2 += load8(UnsafePointer(o2)); h2 += load8(UnsafePointer(o2 + 8))
        l3 += load8(UnsafePointer(o3)); h3 += load8(UnsafePointer(o3 + 8))
        l4 += load8(UnsafePointer(o4)); h4 += load8(UnsafePointer(o4 + 8))
        l5 += load8(UnsafePointer(o5)); h5 += load8(UnsafePointer(o5 + 8))
    }
    store8(l0, o0); store8(h0, o0 + 8); store8(l1, o1); store8(h1, o1 + 8)
    store8(l2, o2); store8(h2, o2 + 8); store8(l3, o3); store8(h3, o3 + 8)
    store8(l4, o4); store8(h4, o4 + 8); store8(l5, o5); store8(h5, o5 + 8)
}

/// Portable reference for `rankUpdate`: plain loops, Double sums, the same contract.
public func rankUpdateReference<S: KernelScalar>(
    out: UnsafePointer<UnsafeMutablePointer<S>>, m: Int,
    a: UnsafePointer<S>, ars: Int, aks: Int,
    b: UnsafePointer<UnsafePointer<S>>, k: Int, width: Int
) {
    for r in 0..<m {
        for d in 0..<width {
            var s = Double(out[r][d])
            for q in 0..<k { s += Double(a[r * ars + q * aks]) * Double(b[q][d]) }
            out[r][d] = S(s)
        }
    }
}
