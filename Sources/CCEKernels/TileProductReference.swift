// Portable reference for the tile product: plain loops in Double, the same contract
// (out[i·ldo + j] = Σ_k a_i[k]·b_j[k]); the tests bound the fast kernel's difference.

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
