// Fingerprints of inputs that ranks of one run must share (Docs/SCALING.md): the MPI schemes
// and the C ABI's vocabulary-parallel agreement compare them instead of the values, so that a
// rank with other embeddings, targets or class weights stops the run with an error naming
// them, at the cost of one pass over the bytes and a few numbers exchanged.

/// Fingerprints: `Fingerprint.of(bytes)`, `Tensor.fingerprint`, `Targets.fingerprint`.
public enum Fingerprint {
    /// FNV-1a over 64-bit words (then the tail bytes one by one): equal bytes give equal
    /// fingerprints, and a change in any byte almost surely changes it. One pass at about memory
    /// speed (a multiply and an xor per 8 bytes). Not a cryptographic hash: it catches
    /// mistakes, not adversaries.
    public static func of(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        let words = bytes.count / 8
        for i in 0..<words { h = (h ^ bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) &* 0x100_0000_01b3 }
        for i in (words * 8)..<bytes.count { h = (h ^ UInt64(bytes[i])) &* 0x100_0000_01b3 }
        return h
    }

    /// The fingerprint of an array's bytes.
    public static func of<T: BitwiseCopyable>(_ values: [T]) -> UInt64 { values.withUnsafeBytes { of($0) } }
}

extension Tensor {
    /// The fingerprint of the stored bytes (so a bf16 tensor and its Float32 widening differ).
    public var fingerprint: UInt64 {
        withRawPointer { Fingerprint.of(UnsafeRawBufferPointer(start: $0, count: count * elementType.size)) }
    }
}

extension Targets {
    /// The fingerprint of the class ids (Int32 each).
    public var fingerprint: UInt64 { Fingerprint.of(values) }
}
