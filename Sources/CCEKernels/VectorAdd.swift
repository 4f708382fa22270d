// Row updates y += a·x, plain and Kahan-compensated: the dropped-mass estimate adds
// (row sum of the skipped dy) × (the block's C-row sum) to a dE row, and the `kahan` modes
// fold each per-block gradient partial into dE and dC through a compensation row.

/// y[0 ..< count] += a · x[0 ..< count] (one fused multiply-add per element).
@inlinable
public func axpy<S: KernelScalar>(_ y: UnsafeMutablePointer<S>, _ a: S, _ x: UnsafePointer<S>, count: Int) {
    let av = SIMD8<S>(repeating: a)
    let c8 = count & ~7
    var q = 0
    while q < c8 { store8(load8(UnsafePointer(y + q)).addingProduct(av, load8(x + q)), y + q); q += 8 }
    while q < count { y[q] = y[q].addingProduct(a, x[q]); q += 1 }
}

/// y += a · x with Kahan compensation c (same length): for each element,
///     u = a·x − c,  t = y + u,  c = (t − y) − u,  y = t,
/// so c carries the low-order bits that the addition to y lost.
@inlinable
public func kahanAxpy<S: KernelScalar>(_ y: UnsafeMutablePointer<S>, _ c: UnsafeMutablePointer<S>, _ a: S,
                                        _ x: UnsafePointer<S>, count: Int) {
    let av = SIMD8<S>(repeating: a)
    let c8 = count & ~7
    var q = 0
    while q < c8 {
        let s = load8(UnsafePointer(y + q))
        let u = av * load8(x + q) - load8(UnsafePointer(c + q))
        let t = s + u
        store8((t - s) - u, c + q)
        store8(t, y + q)
        q += 8
    }
    while q < count {
        let s = y[q], u = a * x[q] - c[q], t = s + u
        c[q] = (t - s) - u
        y[q] = t
        q += 1
    }
}
