// Storage to compute type, row by row, while a tile is filled.
//
// Storage types: Float32, Float16 (IEEE binary16) and BFloat16 (the top 16 bits of a
// Float32). Every Float16 and BFloat16 value is exactly representable in Float32, so the
// conversion is exact; arithmetic then happens in the kernel scalar type (Float or Double).

/// How the caller's elements are stored.
public enum ElementType: String, Sendable, CaseIterable {
    case float32 = "f32"
    case float16 = "f16"
    case bfloat16 = "bf16"

    /// Bytes per element.
    public var size: Int { self == .float32 ? 4 : 2 }
}

/// BFloat16 bits to Float: the bits become the high half of a Float32.
@inlinable @inline(__always)
public func floatFromBFloat16Bits(_ bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
}

/// Float to BFloat16 bits, rounding to nearest even (NaN stays a quiet NaN).
@inlinable @inline(__always)
public func bfloat16Bits(_ x: Float) -> UInt16 {
    if x.isNaN { return 0x7FC0 }
    let u = x.bitPattern
    let rounded = u &+ 0x7FFF &+ ((u >> 16) & 1)
    return UInt16(truncatingIfNeeded: rounded >> 16)
}

/// Converts `count` elements of one row, stored as `type` at `src`, into `dst`.
@inlinable
public func convertRow<S: KernelScalar>(
    _ src: UnsafeRawPointer, type: ElementType, count: Int, into dst: UnsafeMutablePointer<S>
) {
    switch type {
    case .float32:
        let p = src.assumingMemoryBound(to: Float.self)
        for i in 0..<count { dst[i] = S(storage: p[i]) }
    case .float16:
        let p = src.assumingMemoryBound(to: Float16.self)
        for i in 0..<count { dst[i] = S(storage: Float(p[i])) }
    case .bfloat16:
        let p = src.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { dst[i] = S(storage: floatFromBFloat16Bits(p[i])) }
    }
}

/// Elements j ..< j + 16 of a row stored as `type`, widened to Float (exactly) in one vector:
/// bf16 by moving its bits to the high half, f16 by conversion.
@inlinable @inline(__always)
public func widened16(_ src: UnsafeRawPointer, type: ElementType, at j: Int) -> SIMD16<Float> {
    switch type {
    case .bfloat16:
        let bits = SIMD16<UInt32>(truncatingIfNeeded: src.loadUnaligned(fromByteOffset: 2 * j, as: SIMD16<UInt16>.self))
        return unsafeBitCast(bits &<< 16, to: SIMD16<Float>.self)
    case .float16: return SIMD16<Float>(src.loadUnaligned(fromByteOffset: 2 * j, as: SIMD16<Float16>.self))
    case .float32: return src.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self)
    }
}

/// Reads element `i` of a row stored as `type`, as Float.
@inlinable @inline(__always)
public func storedElement(_ src: UnsafeRawPointer, type: ElementType, _ i: Int) -> Float {
    switch type {
    case .float32: return src.assumingMemoryBound(to: Float.self)[i]
    case .float16: return Float(src.assumingMemoryBound(to: Float16.self)[i])
    case .bfloat16: return floatFromBFloat16Bits(src.assumingMemoryBound(to: UInt16.self)[i])
    }
}
