// The default corpus: a seeded first-order Markov chain over V tokens whose entropy rate is
// computed exactly, so the loss a model can reach has a known floor.
//
// Transition probabilities (a rank-r bilinear form plus a Zipf-like prior, softmaxed):
//     z(s → v) = β · (U_s · W_v) / √r  −  α · ln rank[v]
//     P(v | s) = exp(z(s → v)) / Σ_u exp(z(s → u))
// with U, W (V x r) standard normal and rank a random permutation of 1 … V (as in the
// LM-like benchmark data, Docs/LMLIKE.md). Every entry of P is positive, so the chain is
// irreducible and aperiodic and has one stationary distribution π = π P, found by power
// iteration.
//
// Entropy floor. For a stationary first-order chain, the best any predictor of X_t from the
// past can do is the entropy rate
//     H = H(X_t | X_{t−1}) = Σ_s π_s · H(P(· | s)),   H(P(· | s)) = lse_s − Σ_v P(v|s) z(s → v),
// in nats per token; a model that sees the k previous tokens cannot do better, since
// H(X_t | X_{t−k} … X_{t−1}) = H(X_t | X_{t−1}). The expected cross-entropy of any model on
// fresh samples is H plus a KL divergence ≥ 0. A model with D ≥ r can represent P exactly
// (its output layer is a rank-D bilinear form plus a bias), so H is reachable in principle.
// Two reference levels: ln V (uniform guess) and H(π) (the best context-free, unigram guess).
//
// Sampling: each row of P is kept as a cumulative table in Float32 (V² values: 64 MB for
// V = 4096), summed in Float64; a draw is a binary search.

import CCEData
import Foundation

/// A seeded Markov source with a known entropy rate.
public struct MarkovSource: Sendable {
    public let vocab: Int
    public let rank: Int
    public let sharpness: Double
    public let zipf: Double
    /// The stationary distribution π.
    public let stationary: [Double]
    /// Entropy rate H(X_t | X_{t−1}) in nats: the loss floor.
    public let entropyRate: Double
    /// H(π) in nats: the best loss without context.
    public let unigramEntropy: Double
    /// Row s: cumulative P(· | s), the last entry exactly 1.
    let cumulative: [Float]
    let stationaryCumulative: [Double]

    /// Builds the chain. Throws for sizes outside [2, 16384] or a non-positive rank.
    public init(vocab v: Int, rank r: Int = 16, sharpness beta: Double = 3, zipf alpha: Double = 1,
                seed: UInt64) throws {
        guard v >= 2, v <= 16384 else {
            throw TrainingError.invalidOption("the synthetic corpus needs 2 <= vocab <= 16384 (got \(v))")
        }
        guard r >= 1 else { throw TrainingError.invalidOption("rank must be >= 1 (got \(r))") }
        guard beta >= 0, beta.isFinite, alpha >= 0, alpha.isFinite else {
            throw TrainingError.invalidOption("sharpness and zipf must be finite and >= 0")
        }
        vocab = v; rank = r; sharpness = beta; zipf = alpha
        var rng = SeededRandom(seed: seed ^ 0x4D41_524B_4F56)   // "MARKOV": independent of the model's stream
        let u = (0..<(v * r)).map { _ in Float(rng.normal()) }
        let w = (0..<(v * r)).map { _ in Float(rng.normal()) }
        var ranks = Array(1...v)
        ranks.shuffle(using: &rng)
        let prior = ranks.map { -alpha * Foundation.log(Double($0)) }

        // Logits z (V x V) = β/√r · U Wᵀ + prior, then each row becomes P(· | s) in place.
        var p = [Float](repeating: 0, count: v * v)
        gemm(u, w, transB: true, into: &p, m: v, n: v, k: r, alpha: Float(beta / Double(r).squareRoot()))
        var rowEntropy = [Double](repeating: 0, count: v)
        for s in 0..<v {
            var m = -Double.infinity
            for q in 0..<v { m = max(m, Double(p[s * v + q]) + prior[q]) }
            var sum = 0.0, sumZ = 0.0
            for q in 0..<v {
                let z = Double(p[s * v + q]) + prior[q]
                let e = Foundation.exp(z - m)
                sum += e; sumZ += e * z
            }
            let lse = m + Foundation.log(sum)
            rowEntropy[s] = lse - sumZ / sum
            for q in 0..<v { p[s * v + q] = Float(Foundation.exp(Double(p[s * v + q]) + prior[q] - lse)) }
        }
        // π = π P by power iteration (P > 0: geometric convergence).
        var pi = [Double](repeating: 1 / Double(v), count: v)
        var next = [Double](repeating: 0, count: v)
        for _ in 0..<1000 {
            for q in 0..<v { next[q] = 0 }
            for s in 0..<v where pi[s] != 0 {
                let ps = pi[s]
                for q in 0..<v { next[q] += ps * Double(p[s * v + q]) }
            }
            let total = next.reduce(0, +)
            var change = 0.0
            for q in 0..<v { next[q] /= total; change += abs(next[q] - pi[q]) }
            swap(&pi, &next)
            if change < 1e-13 { break }
        }
        stationary = pi
        entropyRate = zip(pi, rowEntropy).reduce(0) { $0 + $1.0 * $1.1 }
        unigramEntropy = pi.reduce(0) { $1 > 0 ? $0 - $1 * Foundation.log($1) : $0 }
        // Cumulative tables for sampling.
        for s in 0..<v {
            var acc = 0.0
            for q in 0..<v { acc += Double(p[s * v + q]); p[s * v + q] = Float(acc) }
            for q in 0..<v { p[s * v + q] /= Float(acc) }
            p[s * v + v - 1] = 1
        }
        cumulative = p
        var acc = 0.0
        stationaryCumulative = pi.map { acc += $0; return acc }
    }

    /// ln V: the loss of a uniform guess.
    public var uniformLoss: Double { Foundation.log(Double(vocab)) }

    /// A draw from π.
    public func sampleStationary(_ rng: inout SeededRandom) -> Int {
        let u = rng.uniform() * stationaryCumulative[vocab - 1]
        var lo = 0, hi = vocab - 1
        while lo < hi {
            let mid = (lo + hi) / 2
            if stationaryCumulative[mid] < u { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// A draw from P(· | state).
    public func sampleNext(after state: Int, _ rng: inout SeededRandom) -> Int {
        let u = Float(rng.uniform())
        return cumulative.withUnsafeBufferPointer { c in
            let row = c.baseAddress! + state * vocab
            var lo = 0, hi = vocab - 1
            while lo < hi {
                let mid = (lo + hi) / 2
                if row[mid] < u { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }
    }

    /// P(v | s) (from the cumulative table: exact to Float32 rounding).
    public func probability(_ v: Int, after s: Int) -> Double {
        let row = s * vocab
        return Double(cumulative[row + v]) - (v == 0 ? 0 : Double(cumulative[row + v - 1]))
    }
}
