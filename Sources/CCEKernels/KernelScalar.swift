// The scalar types the kernels compute in: Float (the default and Kahan modes) and
// Double (the exact mode). Storage types (Float32, Float16, BFloat16) are converted into
// one of these while a tile is filled; see Conversion.swift.

/// A floating-point type the tile kernels accumulate in.
///
/// Every vector operation that needs a comparison is a requirement here, implemented on
/// the concrete SIMD8<Float> and SIMD8<Double>: Swift lowers comparisons and masks of a
/// *generic* SIMD type lane by lane through memory (measured: 5x slower merges), while on
/// concrete types they become vector compares and blends.
///
/// Kernels work on `SIMD8<Self>`: 256 bits for Float (one AVX2 register, half an AVX-512
/// one), 512 bits for Double. `exp` is the only transcendental on the hot path: Float uses
/// a vectorized polynomial (`Exp.swift`, at most 3 ulp), Double the C library's `exp` per
/// lane (correctly rounded or nearly so, and slow: it serves the exact mode).
public protocol KernelScalar: BinaryFloatingPoint, SIMDScalar, Sendable
where Self.SIMD8Storage: Sendable {
    /// e^x, lane by lane.
    static func exp(_ x: SIMD8<Self>) -> SIMD8<Self>
    /// tanh x, lane by lane.
    static func tanh(_ x: SIMD8<Self>) -> SIMD8<Self>
    /// Lane-wise maximum (NaN in `b` is ignored).
    static func maximum(_ a: SIMD8<Self>, _ b: SIMD8<Self>) -> SIMD8<Self>
    /// Lane-wise max(a, |b|).
    static func maxMagnitude(_ a: SIMD8<Self>, _ b: SIMD8<Self>) -> SIMD8<Self>
    /// The largest lane.
    static func horizontalMax(_ v: SIMD8<Self>) -> Self
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
    /// tanh(x) = sign(x)·(1 − 2 / (e^(2|x|) + 1)), with the vectorized exp: absolute error about 1e-7.
    @inlinable @inline(__always)
    public static func tanh(_ x: SIMD8<Float>) -> SIMD8<Float> {
        let ax = maxMagnitude(SIMD8<Float>(), x)
        let e = Exp.exp(ax + ax)
        var t = 1 - 2 / (e + 1)
        t.replace(with: 1, where: e .== .infinity)
        return t.replacing(with: -t, where: x .< 0)
    }
    @inlinable @inline(__always)
    public static func maximum(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { a.replacing(with: b, where: b .> a) }
    @inlinable @inline(__always)
    public static func maxMagnitude(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        let ab = unsafeBitCast(unsafeBitCast(b, to: SIMD8<UInt32>.self) & 0x7FFF_FFFF, to: SIMD8<Float>.self)
        return a.replacing(with: ab, where: ab .> a)
    }
    @inlinable @inline(__always)
    public static func horizontalMax(_ v: SIMD8<Float>) -> Float {
        var m = v[0]
        for i in 1..<8 where v[i] > m { m = v[i] }
        return m
    }
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
    public static func tanh(_ x: SIMD8<Double>) -> SIMD8<Double> {
        var r = SIMD8<Double>()
        for i in 0..<8 { r[i] = Glibc.tanh(x[i]) }
        return r
    }
    @inlinable @inline(__always)
    public static func maximum(_ a: SIMD8<Double>, _ b: SIMD8<Double>) -> SIMD8<Double> { a.replacing(with: b, where: b .> a) }
    @inlinable @inline(__always)
    public static func maxMagnitude(_ a: SIMD8<Double>, _ b: SIMD8<Double>) -> SIMD8<Double> {
        let ab = unsafeBitCast(unsafeBitCast(b, to: SIMD8<UInt64>.self) & 0x7FFF_FFFF_FFFF_FFFF, to: SIMD8<Double>.self)
        return a.replacing(with: ab, where: ab .> a)
    }
    @inlinable @inline(__always)
    public static func horizontalMax(_ v: SIMD8<Double>) -> Double {
        var m = v[0]
        for i in 1..<8 where v[i] > m { m = v[i] }
        return m
    }
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
