// Estimated peak memory of what a command runs, from its shapes alone: the LM-like data it
// generates, the engine's call, the materialized baseline. `cce demo`, `bench`, `accuracy`
// and `explain` add these up and call `MemoryCheck.require` (CCERuntime) before they
// allocate anything.

import CutCrossEntropy

/// Estimated peak memory of the pieces a command runs, in bytes, from the shapes alone (for
/// `MemoryCheck.require` before anything is allocated). Double, so that no product of sizes
/// overflows. Estimates err on the large side: they are there to refuse shapes that cannot
/// fit, not to predict the measured peak.
public enum Footprint {
    static func sizes(_ n: Int, _ d: Int, _ v: Int) -> (nd: Double, vd: Double, nv: Double) {
        (Double(n) * Double(d), Double(v) * Double(d), Double(n) * Double(v))
    }

    /// `LMLikeData.make` at its peak: E and C in Float32 while generated, their copies in the
    /// element type and back in Float32, a chunk of logits (at most 16 MiB, or one row), ranks
    /// and targets.
    public static func lmLikeData(tokens n: Int, dim d: Int, vocab v: Int, type: ElementType) -> Double {
        let (nd, vd, nv) = sizes(n, d, v)
        let chunk = min(nv * 4, max(Double(v) * 4, Double(16 << 20)))
        return (nd + vd) * Double(8 + type.size) + chunk + Double(v) * 16 + Double(n) * 16
    }

    /// What `LMLikeData` keeps once made: E and C in the element type, the targets.
    public static func lmLikeDataKept(tokens n: Int, dim d: Int, vocab v: Int, type: ElementType) -> Double {
        let (nd, vd, _) = sizes(n, d, v)
        return (nd + vd) * Double(type.size) + Double(n) * 8
    }

    /// One `lossAndGradients` call in `mode`, its returned gradients included: dE and dC
    /// (Float64 in the exact mode), their compensation terms in the kahan modes, Float32 copies
    /// of 16-bit inputs, per-token state, the vocabulary order, and 64 MiB for the workers'
    /// tile buffers.
    public static func engine(tokens n: Int, dim d: Int, vocab v: Int, type: ElementType, mode: Mode) -> Double {
        let (nd, vd, _) = sizes(n, d, v)
        let g: Double = mode == .exact ? 8 : 4
        let compensation: Double = [.kahan, .kahanFullE, .kahanFullC].contains(mode) ? g : 0
        let conversion: Double = type == .float32 ? 0 : 4
        return (nd + vd) * (g + compensation + conversion) + Double(n) * 64 + Double(v) * 32 + Double(64 << 20)
    }

    /// `Materialized.compute`: the N x V Float32 logits, dE and dC with their working copies.
    public static func materialized(tokens n: Int, dim d: Int, vocab v: Int) -> Double {
        let (nd, vd, nv) = sizes(n, d, v)
        return nv * 4 + (nd + vd) * 12 + Double(n) * 16
    }

    /// dE and dC as Float64 (the copies the commands compute errors in).
    public static func float64Gradients(tokens n: Int, dim d: Int, vocab v: Int) -> Double {
        let (nd, vd, _) = sizes(n, d, v)
        return (nd + vd) * 8
    }
}
