// Packing: the operands of the two microkernels copied into the layouts they stream.
//
// As BLIS keeps packm apart from its microkernel, this file holds every packer and the
// kernels (TileProduct6x16.swift, RankUpdate6x16.swift) only read what it wrote.
//
//   column panel (tile product, operand C):  up to NR = 16 rows stored as any element type,
//       columns k0 ..< k0 + kc, converted to the compute type and laid out k-major:
//       panel[k·16 + j] = c_j[k0 + k], rows j ≥ n zero. kc ≤ KC = 256, so a panel is 16 KiB
//       of Float and stays in L1 while the token block streams past it.
//   row panels (rank update, operand A):  m rows of a strided matrix already in the compute
//       type, A(r, q) = a[r·ars + q·aks], in ⌈m/6⌉ panels of 6 x k, k-major:
//       panel_p[q·6 + r] = A(6p + r, q), rows ≥ m zero. The six broadcasts of one step of
//       the 6 x 16 microkernel are then consecutive.
//
// Packing only moves and converts values (every stored type converts exactly), so it has
// no effect on any result's bits.

/// Packs A(r, q) = a[r·ars + q·aks], r < m, q < k, into ⌈m/6⌉ panels of 6 x k, k-major,
/// zero-padding rows beyond m. `dst` holds ⌈m/6⌉·6·k values.
@inlinable
public func packRowPanels<S: KernelScalar>(_ a: UnsafePointer<S>, rowStride ars: Int, columnStride aks: Int,
                                           m: Int, k: Int, into dst: UnsafeMutablePointer<S>) {
    let mr = TileShape.mr
    var p = 0
    while p * mr < m {
        let panel = dst + p * mr * k
        for r in 0..<mr {
            let i = p * mr + r
            if i < m {
                let ar = a + i * ars
                for q in 0..<k { panel[q &* mr &+ r] = ar[q &* aks] }
            } else {
                for q in 0..<k { panel[q &* mr &+ r] = 0 }
            }
        }
        p += 1
    }
}

/// Packs columns k0 ..< k0 + kc of up to 16 rows (stored as `type`) k-major into `dst`
/// (kc x 16), converting to S and zero-padding rows beyond `n`.
@inlinable
public func packColumnPanel<S: KernelScalar>(_ rows: UnsafePointer<UnsafeRawPointer>, n: Int, type: ElementType,
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
func packFullPanel(_ rows: UnsafePointer<UnsafeRawPointer>, type: ElementType, k0: Int, kc: Int,
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

