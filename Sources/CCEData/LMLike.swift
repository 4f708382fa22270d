// LM-like benchmark data (Docs/LMLIKE.md): a peaked softmax with a Zipf-like prior
// scattered over the vocabulary, the statistics of a trained language model's output layer.
//
//   C (V x D): columns 0 ..< D−1 ~ Normal(0, 1/(D−1)); column D−1 = −α·ln(rank[v]) with
//              rank a uniformly random permutation of 1 … V.
//   E (N x D): columns 0 ..< D−1 ~ Normal(0, S²); column D−1 = 1.
//   targets:   t_n ~ softmax(E_n · Cᵀ), the model's own distribution.
// Then E and C are cast to the element type under test. Seeded: the same arguments give
// the same data.

import COpenBLAS
import CutCrossEntropy
import Foundation

/// xoshiro256** seeded through SplitMix64: small, fast, and good enough for test data.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public mutating func next() -> UInt64 {
        let r = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return r
    }

    /// Uniform in (0, 1).
    public mutating func uniform() -> Double { (Double(next() >> 11) + 0.5) * 0x1p-53 }

    /// Standard normal (Box–Muller).
    public mutating func normal() -> Double {
        let u = uniform(), v = uniform()
        return (-2 * Foundation.log(u)).squareRoot() * cos(2 * Double.pi * v)
    }
}

/// One LM-like problem.
public struct LMLikeData: Sendable {
    /// A bias for the problem of `seed` (`cce accuracy --bias`, `cce bench --bias`): V entries
    /// Normal(0, 0.1²) from their own stream of the seed, cast to `type`.
    public static func bias(vocab v: Int, type: ElementType, seed: UInt64) -> Tensor {
        var random = SeededRandom(seed: seed &+ 0xB1A5)
        return try! Tensor(converting: (0..<v).map { _ in Float(0.1 * random.normal()) }, to: type, shape: [v])
    }

    public let embeddings: Tensor
    public let classifier: Tensor
    public let targets: Targets
    public let n: Int, d: Int, v: Int

    /// Builds lm-like(N, D, V, S, α, seed) in `type`. Targets are sampled from the softmax of
    /// the Float32 logits (computed with OpenBLAS in chunks of rows: no N x V buffer).
    public static func make(tokens n: Int, dim d: Int, vocab v: Int, type: ElementType = .float32,
                            scale s: Double = 4, alpha: Double = 1.5, seed: UInt64 = 0) -> LMLikeData {
        var rng = SeededRandom(seed: seed)
        var c = [Float](repeating: 0, count: v * d)
        let sd = d > 1 ? 1 / Double(d - 1).squareRoot() : 0
        var rank = Array(1...v)
        rank.shuffle(using: &rng)
        for row in 0..<v {
            for k in 0..<(d - 1) { c[row * d + k] = Float(rng.normal() * sd) }
            c[row * d + d - 1] = Float(-alpha * Foundation.log(Double(rank[row])))
        }
        var e = [Float](repeating: 0, count: n * d)
        for row in 0..<n {
            for k in 0..<(d - 1) { e[row * d + k] = Float(rng.normal() * s) }
            e[row * d + d - 1] = 1
        }
        // Round to the element type first, so targets follow the distribution of the data
        // as the engine will see it.
        let eT = try! Tensor(converting: e, to: type, shape: [n, d])
        let cT = try! Tensor(converting: c, to: type, shape: [v, d])
        let eR = eT.floats(), cR = cT.floats()
        var targets = [Int](repeating: 0, count: n)
        let chunk = max(1, min(n, (16 << 20) / max(1, v * 4)))
        var logits = [Float](repeating: 0, count: chunk * v)
        var r0 = 0
        while r0 < n {
            let rows = min(chunk, n - r0)
            eR.withUnsafeBufferPointer { ep in
                cR.withUnsafeBufferPointer { cp in
                    logits.withUnsafeMutableBufferPointer { lp in
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(v), Int32(d), 1,
                                    ep.baseAddress! + r0 * d, Int32(d), cp.baseAddress!, Int32(d), 0,
                                    lp.baseAddress!, Int32(v))
                    }
                }
            }
            for i in 0..<rows {
                let base = i * v
                var m = -Float.infinity
                for q in 0..<v { m = max(m, logits[base + q]) }
                var total = 0.0
                for q in 0..<v { total += Foundation.exp(Double(logits[base + q] - m)) }
                var u = rng.uniform() * total
                var pick = v - 1
                for q in 0..<v {
                    u -= Foundation.exp(Double(logits[base + q] - m))
                    if u <= 0 { pick = q; break }
                }
                targets[r0 + i] = pick
            }
            r0 += rows
        }
        return LMLikeData(embeddings: eT, classifier: cT, targets: try! Targets(targets),
                          n: n, d: d, v: v)
    }
}
