// Inputs: tensors in the caller's layout (row-major), stored as Float32, Float16 or BFloat16.

@_exported import enum CCEKernels.ElementType
@_exported import enum CCEKernels.TileKernel
import CCEKernels

/// A BFloat16 value: the top 16 bits of a Float32 (8 exponent bits, 7 fraction bits).
public struct BFloat16: Sendable, Hashable, CustomStringConvertible {
    /// The stored bits: sign, 8 exponent bits, 7 fraction bits.
    public var bitPattern: UInt16
    /// The value with these bits.
    public init(bitPattern: UInt16) { self.bitPattern = bitPattern }
    /// Rounds `value` to the nearest BFloat16 (ties to even).
    public init(_ value: Float) { bitPattern = bfloat16Bits(value) }
    /// The value as a Float32 (exact: every BFloat16 is a Float32).
    public var floatValue: Float { floatFromBFloat16Bits(bitPattern) }
    public var description: String { floatValue.description }
}

/// A dense, row-major tensor of Float32, Float16 or BFloat16 values.
///
/// Shapes: embeddings E are (N, D) or (B, T, D); the classifier C is (V, D); the bias is (V).
/// The tensor owns its storage (a Swift array), so it can be kept across a forward and a
/// backward call. (Inside the package a tensor may instead borrow caller memory for the
/// length of one call: `init(borrowing:type:shape:)`, used by the C ABI.)
public struct Tensor: Sendable {
    /// The dimensions, outermost first, e.g. [N, D], [B, T, D], [V, D] or [V].
    public let shape: [Int]
    /// How the values are stored: Float32, Float16 or BFloat16.
    public let elementType: ElementType
    @usableFromInline let storage: Storage

    @usableFromInline enum Storage: Sendable {
        case float32([Float])
        case float16([Float16])
        case bfloat16([UInt16])
        /// Caller memory holding `count` elements of `elementType` (see `init(borrowing:type:shape:)`).
        case borrowed(BorrowedMemory)
    }

    /// The address of memory a tensor borrows. Sendable by contract: the memory is only read,
    /// and only while the call that made the tensor runs.
    @usableFromInline struct BorrowedMemory: @unchecked Sendable {
        @usableFromInline let base: UnsafeRawPointer
    }

    /// A Float32 tensor. Throws if the shape does not match the number of values.
    public init(_ values: [Float], shape: [Int]) throws {
        try Tensor.check(count: values.count, shape: shape)
        self.shape = shape; elementType = .float32; storage = .float32(values)
    }

    /// A Float16 tensor.
    public init(_ values: [Float16], shape: [Int]) throws {
        try Tensor.check(count: values.count, shape: shape)
        self.shape = shape; elementType = .float16; storage = .float16(values)
    }

    /// A BFloat16 tensor.
    public init(_ values: [BFloat16], shape: [Int]) throws {
        try Tensor.check(count: values.count, shape: shape)
        self.shape = shape; elementType = .bfloat16; storage = .bfloat16(values.map(\.bitPattern))
    }

    /// A tensor of `type` made by rounding Float32 values (nearest, ties to even).
    public init(converting values: [Float], to type: ElementType, shape: [Int]) throws {
        switch type {
        case .float32: try self.init(values, shape: shape)
        case .float16: try self.init(values.map { Float16($0) }, shape: shape)
        case .bfloat16: try self.init(values.map { BFloat16($0) }, shape: shape)
        }
    }

    /// A tensor that reads `shape`'s element count of `type` at `pointer` in place, without a
    /// copy: how the C ABI (Sources/CCECABI) hands its callers' arrays to the engine.
    ///
    /// Lifetime contract: the memory must stay valid and unchanged for as long as the tensor or
    /// any copy of it exists. That is why this initializer is `package`, not public: the only
    /// users build the tensor inside one C call, pass it to the engine (which keeps no tensor
    /// beyond the call: a `ForwardOutput` holds none) and drop it before returning. `pointer`
    /// must be aligned to the element type's size. The engine reads borrowed memory exactly as it
    /// reads an owned array (same results, bit for bit) with one difference: it does not
    /// interleave a borrowed classifier's pages over NUMA nodes (`Placement.interleave` would
    /// change the memory policy of the caller's pages, and of neighbouring ones that share them).
    package init(borrowing pointer: UnsafeRawPointer, type: ElementType, shape: [Int]) throws {
        guard shape.allSatisfy({ $0 >= 0 }) else {
            throw CCEError.invalidShape("shape \(shape) has a negative dimension")
        }
        var count = 1
        for x in shape {
            let (p, overflow) = count.multipliedReportingOverflow(by: x)
            guard !overflow, !p.multipliedReportingOverflow(by: type.size).overflow else {
                throw CCEError.invalidShape("shape \(shape) has too many elements")
            }
            count = p
        }
        self.shape = shape; elementType = type; storage = .borrowed(BorrowedMemory(base: pointer))
    }

    /// Whether the tensor reads caller memory in place (`init(borrowing:type:shape:)`).
    package var isBorrowed: Bool {
        if case .borrowed = storage { true } else { false }
    }

    static func check(count: Int, shape: [Int]) throws {
        guard shape.allSatisfy({ $0 >= 0 }) else {
            throw CCEError.invalidShape("shape \(shape) has a negative dimension")
        }
        let n = shape.reduce(1, *)
        guard n == count else {
            throw CCEError.invalidShape("shape \(shape) holds \(n) elements but \(count) values were given")
        }
    }

    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }

    /// The values as Float32 (exact for every element type).
    public func floats() -> [Float] {
        switch storage {
        case .float32(let v): return v
        case .float16(let v): return v.map { Float($0) }
        case .bfloat16(let v): return v.map { floatFromBFloat16Bits($0) }
        case .borrowed(let m):
            let n = count
            switch elementType {
            case .float32: return Array(UnsafeBufferPointer(start: m.base.assumingMemoryBound(to: Float.self), count: n))
            case .float16:
                return UnsafeBufferPointer(start: m.base.assumingMemoryBound(to: Float16.self), count: n).map { Float($0) }
            case .bfloat16:
                return UnsafeBufferPointer(start: m.base.assumingMemoryBound(to: UInt16.self), count: n)
                    .map { floatFromBFloat16Bits($0) }
            }
        }
    }

    /// Calls `body` with the raw bytes of the storage.
    @inlinable
    public func withRawPointer<R>(_ body: (UnsafeRawPointer) throws -> R) rethrows -> R {
        switch storage {
        case .float32(let v): return try v.withUnsafeBytes { try body($0.baseAddress!) }
        case .float16(let v): return try v.withUnsafeBytes { try body($0.baseAddress!) }
        case .bfloat16(let v): return try v.withUnsafeBytes { try body($0.baseAddress!) }
        case .borrowed(let m): return try body(m.base)
        }
    }
}

/// Class indices, shape (N) or (B, T). Entries equal to the ignore index are skipped.
public struct Targets: Sendable {
    /// E's shape without its last dimension: [N] or [B, T].
    public let shape: [Int]
    /// Class ids in [0, V), or the ignore index, row-major.
    public let values: [Int32]

    /// Targets of the given shape (default: one dimension). Throws `CCEError.invalidShape`
    /// if the count does not match the shape, `.targetOutOfRange` if a value does not fit
    /// in Int32. The range [0, V) is checked by each call, which knows V.
    public init(_ values: [Int], shape: [Int]? = nil) throws {
        let shape = shape ?? [values.count]
        try Tensor.check(count: values.count, shape: shape)
        if let p = values.firstIndex(where: { $0 < Int(Int32.min) || $0 > Int(Int32.max) }) {
            throw CCEError.targetOutOfRange(position: p, value: values[p], vocabulary: Int(Int32.max))
        }
        self.shape = shape
        self.values = values.map { Int32($0) }
    }

    /// Targets of the given shape (default: one dimension), from Int32 class ids.
    public init(_ values: [Int32], shape: [Int]? = nil) throws {
        let shape = shape ?? [values.count]
        try Tensor.check(count: values.count, shape: shape)
        self.shape = shape
        self.values = values
    }

    /// Number of target positions.
    public var count: Int { values.count }
}

/// Values returned by the engine: Float32, or Float64 in the exact mode.
public enum Values: Sendable {
    /// Float32 values (the default mode).
    case float32([Float])
    /// Float64 values (the exact mode).
    case float64([Double])

    /// Number of values.
    public var count: Int {
        switch self { case .float32(let v): v.count; case .float64(let v): v.count }
    }
    /// Bytes the values occupy.
    public var byteCount: Int {
        switch self { case .float32(let v): v.count * 4; case .float64(let v): v.count * 8 }
    }
    /// Value i, as a Double (exact for both cases).
    public subscript(i: Int) -> Double {
        switch self { case .float32(let v): Double(v[i]); case .float64(let v): v[i] }
    }
    /// All values as Doubles (exact).
    public var doubles: [Double] {
        switch self { case .float32(let v): v.map { Double($0) }; case .float64(let v): v }
    }
    /// All values as Floats (rounded to nearest in the exact mode).
    public var floats: [Float] {
        switch self { case .float32(let v): v; case .float64(let v): v.map(Float.init) }
    }
}
