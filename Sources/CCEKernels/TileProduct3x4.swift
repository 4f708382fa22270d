// The tile product: one tile of logits from rows of E and rows of C.
//
// Contract: out[i·ldo + j] = Σ_k a_i[k] · b_j[k] for i < m, j < n, where a_i = a[i] and
// b_j = b[j] are rows of length k (E rows and C rows, both in their natural row-major
// layout, converted to S). No packing is needed: the kernel reads eight consecutive k of
// each row per step, so both operands stream through cache lines in order.
//
// Register block 3 x 4: twelve SIMD8 accumulators (one per (i, j)), three A loads and four
// B loads per step of 8 k, twelve FMAs. On AVX2 that is 12 of the 16 ymm registers.
//
// Summation order (the same in every path, so a logit's bits never depend on where its
// row or column falls in a tile): lane l of the accumulator sums k ≡ l (mod 8) over the
// first 8·⌊k/8⌋ elements, sequentially; the lanes are reduced by `laneSum`; the remaining
// k mod 8 products are added one by one.
//
// `tileProductReference` beside it is the portable version the tests compare with.

@inlinable
public func tileProduct<S: KernelScalar>(
    a: UnsafePointer<UnsafePointer<S>>, m: Int,
    b: UnsafePointer<UnsafePointer<S>>, n: Int,
    k: Int, out: UnsafeMutablePointer<S>, ldo: Int
) {
    var j = 0
    while j < n {
        let nr = min(4, n - j)
        var i = 0
        while i < m {
            let mr = min(3, m - i)
            if mr == 3 && nr == 4 {
                dot3x4(a + i, b + j, k, out + i * ldo + j, ldo)
            } else {
                for ii in 0..<mr {
                    for jj in 0..<nr {
                        out[(i + ii) * ldo + j + jj] = dot1x1(a[i + ii], b[j + jj], k)
                    }
                }
            }
            i += 3
        }
        j += 4
    }
}

@inlinable @inline(__always)
func load8<S: KernelScalar>(_ p: UnsafePointer<S>) -> SIMD8<S> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<S>.self)
}

/// One dot product in the kernel's summation order.
@inlinable @inline(__always)
public func dot1x1<S: KernelScalar>(_ a: UnsafePointer<S>, _ b: UnsafePointer<S>, _ k: Int) -> S {
    let kv = k & ~7
    var acc = SIMD8<S>()
    var p = 0
    while p < kv {
        acc = acc.addingProduct(load8(a + p), load8(b + p))
        p += 8
    }
    var s = laneSum(acc)
    while p < k {
        s = s.addingProduct(a[p], b[p])
        p += 1
    }
    return s
}

@inlinable @inline(__always)
func dot3x4<S: KernelScalar>(
    _ a: UnsafePointer<UnsafePointer<S>>, _ b: UnsafePointer<UnsafePointer<S>>,
    _ k: Int, _ out: UnsafeMutablePointer<S>, _ ldo: Int
) {
    let a0 = a[0], a1 = a[1], a2 = a[2]
    let b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3]
    var c00 = SIMD8<S>(), c01 = SIMD8<S>(), c02 = SIMD8<S>(), c03 = SIMD8<S>()
    var c10 = SIMD8<S>(), c11 = SIMD8<S>(), c12 = SIMD8<S>(), c13 = SIMD8<S>()
    var c20 = SIMD8<S>(), c21 = SIMD8<S>(), c22 = SIMD8<S>(), c23 = SIMD8<S>()
    let kv = k & ~7
    var p = 0
    while p < kv {
        let x0 = load8(a0 + p), x1 = load8(a1 + p), x2 = load8(a2 + p)
        var y = load8(b0 + p)
        c00 = c00.addingProduct(x0, y); c10 = c10.addingProduct(x1, y); c20 = c20.addingProduct(x2, y)
        y = load8(b1 + p)
        c01 = c01.addingProduct(x0, y); c11 = c11.addingProduct(x1, y); c21 = c21.addingProduct(x2, y)
        y = load8(b2 + p)
        c02 = c02.addingProduct(x0, y); c12 = c12.addingProduct(x1, y); c22 = c22.addingProduct(x2, y)
        y = load8(b3 + p)
        c03 = c03.addingProduct(x0, y); c13 = c13.addingProduct(x1, y); c23 = c23.addingProduct(x2, y)
        p += 8
    }
    var s00 = laneSum(c00), s01 = laneSum(c01), s02 = laneSum(c02), s03 = laneSum(c03)
    var s10 = laneSum(c10), s11 = laneSum(c11), s12 = laneSum(c12), s13 = laneSum(c13)
    var s20 = laneSum(c20), s21 = laneSum(c21), s22 = laneSum(c22), s23 = laneSum(c23)
    while p < k {
        let x0 = a0[p], x1 = a1[p], x2 = a2[p]
        s00 = s00.addingProduct(x0, b0[p]); s01 = s01.addingProduct(x0, b1[p])
        s02 = s02.addingProduct(x0, b2[p]); s03 = s03.addingProduct(x0, b3[p])
        s10 = s10.addingProduct(x1, b0[p]); s11 = s11.addingProduct(x1, b1[p])
        s12 = s12.addingProduct(x1, b2[p]); s13 = s13.addingProduct(x1, b3[p])
        s20 = s20.addingProduct(x2, b0[p]); s21 = s21.addingProduct(x2, b1[p])
        s22 = s22.addingProduct(x2, b2[p]); s23 = s23.addingProduct(x2, b3[p])
        p += 1
    }
    out[0] = s00; out[1] = s01; out[2] = s02; out[3] = s03
    out[ldo] = s10; out[ldo + 1] = s11; out[ldo + 2] = s12; out[ldo + 3] = s13
    out[2 * ldo] = s20; out[2 * ldo + 1] = s21; out[2 * ldo + 2] = s22; out[2 * ldo + 3] = s23
}

/// Portable reference for `tileProduct`: plain loops, the same contract, Double sums.
/// Agrees with the fast kernel to rounding (the tests bound the difference).
public func tileProductReference<S: KernelScalar>(
    a: UnsafePointer<UnsafePointer<S>>, m: Int,
    b: UnsafePointer<UnsafePointer<S>>, n: Int,
    k: Int, out: UnsafeMutablePointer<S>, ldo: Int
) {
    for i in 0..<m {
        for j in 0..<n {
            var s = 0.0
            for p in 0..<k { s += Double(a[i][p]) * Double(b[j][p]) }
            out[i * ldo + j] = S(s)
        }
    }
}
