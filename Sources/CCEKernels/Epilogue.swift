// Tile epilogues: what happens to a row of logits between the tile product and the LSE
// merge (forward) or the gradient products (backward).
//
// Forward:  y = C_v·E_i + b_v;  z = s·tanh(y / s) when soft capping, else z = y.
// Backward: p = e^(z − lse);  dz = (1 + 2·zloss·lse)·p − α/V − (1 − α)·[v = target];
//           dy = dz · (1 − (z/s)²) when soft capping (d/dy of s·tanh(y/s)).
// The target term is added by the caller, which knows where the target falls.
//
// tanh is KernelScalar.tanh: for Float, sign(x)·(1 − 2 / (e^(2|x|) + 1)) with the vectorized exp, absolute error
// about 1e-7, which is what a logit needs.

/// z[q] = bias[q] + z[q] (when a bias is given), then soft capping (when cap != nil).
@inlinable
public func logitEpilogue<S: KernelScalar>(
    _ z: UnsafeMutablePointer<S>, count: Int, bias: UnsafePointer<S>?, cap: S?
) {
    if let bias {
        for q in 0..<count { z[q] += bias[q] }
    }
    guard let s = cap else { return }
    let inv = 1 / s
    let cv = count & ~7
    var q = 0
    while q < cv {
        let y = load8(UnsafePointer(z + q)) * inv
        store8(S.tanh(y) * s, z + q)
        q += 8
    }
    while q < count {
        var y = SIMD8<S>(repeating: 0)
        y[0] = z[q] * inv
        z[q] = S.tanh(y)[0] * s
        q += 1
    }
}

/// Turns a row of logits z into dy (the gradient of the token's loss with respect to the
/// pre-cap logit, target term excluded) in place, and reports whether any |dy| ≥ eps.
/// coef = 1 + 2·zloss·lse, smooth = α/V.
@inlinable
public func gradientEpilogue<S: KernelScalar>(
    _ z: UnsafeMutablePointer<S>, count: Int, lse: S, coef: S, smooth: S, cap: S?, eps: S
) -> Bool {
    let l = SIMD8<S>(repeating: lse)
    let cv = SIMD8<S>(repeating: coef)
    let sv = SIMD8<S>(repeating: smooth)
    var largest = SIMD8<S>()   // running max |g|
    let c8 = count & ~7
    var q = 0
    if let s = cap {
        let inv2 = 1 / (s * s)
        while q < c8 {
            let zv = load8(UnsafePointer(z + q))
            var g = cv * S.exp(zv - l) - sv
            g = g * (1 - zv * zv * inv2)
            largest = S.maxMagnitude(largest, g)
            store8(g, z + q)
            q += 8
        }
        var any = S.horizontalMax(largest) >= eps
        while q < count {
            let zq = z[q]
            var g = coef * S.exp(zq - lse) - smooth
            g *= 1 - zq * zq * inv2
            any = any || abs(g) >= eps
            z[q] = g
            q += 1
        }
        return any
    }
    while q < c8 {
        let zv = load8(UnsafePointer(z + q))
        let g = cv * S.exp(zv - l) - sv
        largest = S.maxMagnitude(largest, g)
        store8(g, z + q)
        q += 8
    }
    var any = S.horizontalMax(largest) >= eps
    while q < count {
        let g = coef * S.exp(z[q] - lse) - smooth
        any = any || abs(g) >= eps
        z[q] = g
        q += 1
    }
    return any
}

/// The derivative factor of soft capping at capped logit z: 1 − (z/s)².
@inlinable @inline(__always)
public func softcapDerivative<S: KernelScalar>(_ z: S, cap: S?) -> S {
    guard let s = cap else { return 1 }
    return 1 - (z / s) * (z / s)
}

/// x[q] *= factor for q < count.
@inlinable
public func scaleRow<S: KernelScalar>(_ x: UnsafeMutablePointer<S>, count: Int, by factor: S) {
    let f = SIMD8<S>(repeating: factor)
    let c8 = count & ~7
    var q = 0
    while q < c8 { store8(load8(UnsafePointer(x + q)) * f, x + q); q += 8 }
    while q < count { x[q] *= factor; q += 1 }
}
