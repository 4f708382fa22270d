// The scalar types the kernels compute in: Float (the default and Kahan modes) and
// Double (the exact mode). Storage types (Float32, Float16, BFloat16) are converted into
// one of these while a tile is filled; see Conversion.swift.

/// A floating-point type the tile kernels accumulate in.
///
/// Kernels work on `SIMD8<Self>`: 256 bits for Float (one AVX2 register, half an AVX-512
/// one), 512 bits for Double. `exp` is the only transcendental on the hot path: Float uses
/// a vectorized polynomial (`Exp.swift`, at most 2 ulp), Double the C library's `exp` per
/// lane (correctly rounded or nearly so, and slow: it serves the exact mode).
public protocol KernelScalar: BinaryFloatingPoint, SIMDScalar, Sendable
where Self.SIMD8Storage: Sendable {
    /// e^x, lane by lane.
    static func exp(_ x: SIMD8<Self>) -> SIMD8<Self>
    /// e^x for one value, with the same accuracy as the vector version.
    static func exp(_ x: Self) -> Self
    /// Natural logarithm of one value.
    static func log(_ x: Self) -> Self
    /// Hyperbolic tangent of one value.
    static func tanh(_ x: Self) -> Self
    /// Converts one storage element.
    init(storage value: Float)
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension Float: KernelScalar {
    @inlinable @inline(__always)
    public static func exp(_ x: SIMD8<Float>) -> SIMD8<Float> { Exp.exp(x) }
    @inlinable @inline(__always)
    public static func exp(_ x: Float) -> Float { Exp.exp(SIMD8<Float>(repeating: x))[0] }
    @inlinable @inline(__always)
    public static func log(_ x: Float) -> Float { logf(x) }
    @inlinable @inline(__always)
    public static func tanh(_ x: Float) -> Float { tanhf(x) }
    @inlinable @inline(__always)
    public init(storage value: Float) { self = value }
}

extension Double: KernelScalar {
    @inlinable @inline(__always)
    public static func exp(_ x: SIMD8<Double>) -> SIMD8<Double> {
        var r = SIMD8<Double>()
        for i in 0..<8 { r[i] = Glibc.exp(x[i]) }
        return r
    }
    @inlinable @inline(__always)
    public static func exp(_ x: Double) -> Double { Glibc.exp(x) }
    @inlinable @inline(__always)
    public static func log(_ x: Double) -> Double { Glibc.log(x) }
    @inlinable @inline(__always)
    public static func tanh(_ x: Double) -> Double { Glibc.tanh(x) }
    @inlinable @inline(__always)
    public init(storage value: Float) { self = Double(value) }
}

/// Sum of the eight lanes in a fixed order, ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), so that
/// every kernel that reduces a lane vector gets the bit-identical result.
@inlinable @inline(__always)
public func laneSum<S: KernelScalar>(_ v: SIMD8<S>) -> S {
    let h = v.lowHalf + v.highHalf
    let q = h.lowHalf + h.highHalf
    return q[0] + q[1]
}
