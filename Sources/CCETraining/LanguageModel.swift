// The model: a fixed-window neural language model (Bengio et al., 2003) whose output layer
// is a large-vocabulary linear classifier trained through the Cut Cross-Entropy loss.
//
// For a batch of B contexts, each the k previous token ids (t_1 … t_k):
//     x = [T[t_1], …, T[t_k]]          (B, k·D)   T: the input table, (V, D)
//     a = x · W1 + b1                   (B, H)     W1: (k·D, H)
//     h = tanh(a)                       (B, H)
//     y = h · W2 + b2                   (B, D)     W2: (H, D)
//     logits = y · Cᵀ + bias            (B, V)     never formed in the cce path: the
//                                                  head (Trainer.swift) passes y, C, bias
//                                                  to the loss, which returns dy, dC, dbias
// Untied (the default): T is its own table. Tied (`--tie`): T = C, so C gets gradients
// from both ends.
//
// Backward of the body, from dy = ∂L/∂y (B, D):
//     dW2 = hᵀ · dy,  db2 = Σ_rows dy,  dh = dy · W2ᵀ,  da = dh ⊙ (1 − h²)
//     dW1 = xᵀ · da,  db1 = Σ_rows da,  dx = da · W1ᵀ,  dT[t_j] += dx[:, j·D ..< (j+1)·D]
// The matrix products are OpenBLAS gemm calls (TrainingScalar.swift).

import CCEData
import Foundation

/// Sizes of the model.
public struct ModelConfig: Sendable, Equatable {
    /// Vocabulary size V.
    public var vocab: Int
    /// Embedding and classifier width D.
    public var dim: Int
    /// Hidden width H.
    public var hidden: Int
    /// Context window k (tokens seen before the one predicted).
    public var context: Int
    /// Tied input table and classifier.
    public var tied: Bool

    public init(vocab: Int, dim: Int, hidden: Int, context: Int, tied: Bool = false) {
        self.vocab = vocab; self.dim = dim; self.hidden = hidden; self.context = context; self.tied = tied
    }

    func validate() throws {
        guard vocab >= 2 else { throw TrainingError.invalidOption("vocab must be >= 2 (got \(vocab))") }
        guard dim >= 1, dim <= 4096 else { throw TrainingError.invalidOption("dim must be in 1 ... 4096 (got \(dim))") }
        guard hidden >= 1, hidden <= 16384 else {
            throw TrainingError.invalidOption("hidden must be in 1 ... 16384 (got \(hidden))")
        }
        guard context >= 1, context <= 64 else {
            throw TrainingError.invalidOption("context must be in 1 ... 64 (got \(context))")
        }
    }
}

/// The parameter tensors, in a fixed order (the optimizer walks them by index).
public enum Parameter: Int, CaseIterable, Sendable {
    /// T (V, D); empty when tied.
    case embedding
    case w1, b1, w2, b2
    /// C (V, D).
    case classifier
    /// (V).
    case bias
}

/// What the body's forward keeps for its backward: O(B·(k·D + H)).
public struct BodyActivations<T: TrainingScalar> {
    public let batch: Int
    public let contexts: [Int32]
    public let x: [T]
    public let h: [T]
    /// The body's output, the classifier's input: (B, D).
    public let y: [T]
}

/// The model's parameters and the body's forward and backward passes.
public struct LanguageModel<T: TrainingScalar> {
    public let config: ModelConfig
    /// One array per `Parameter`, row-major.
    public var parameters: [[T]]

    /// The classes whose rows of C and entries of the bias this model holds: every class, or
    /// (vocabulary-parallel training) one rank's shard.
    public let classRows: Range<Int>

    /// Initial parameters: T, C ~ N(0, 1/D); W1 ~ N(0, 1/(k·D)); W2 ~ N(0, 1/H); biases 0.
    /// `classRows`: keep only these rows of C and entries of the bias (the values the whole
    /// model would have there, for the same seed); nil: all. Not with a tied table.
    public init(config: ModelConfig, seed: UInt64, classRows: Range<Int>? = nil) throws {
        try config.validate()
        let rows = classRows ?? 0..<config.vocab
        guard rows.lowerBound >= 0, rows.upperBound <= config.vocab else {
            throw TrainingError.invalidOption("class rows \(rows) outside the vocabulary of \(config.vocab)")
        }
        guard !config.tied || rows == 0..<config.vocab else {
            throw TrainingError.invalidOption("a tied model holds the whole classifier (it is the input table)")
        }
        self.config = config
        self.classRows = rows
        var rng = SeededRandom(seed: seed)
        let v = config.vocab, d = config.dim, h = config.hidden, kd = config.context * config.dim
        func normal(_ count: Int, _ variance: Double) -> [T] {
            let sd = variance.squareRoot()
            return (0..<count).map { _ in T(rng.normal() * sd) }
        }
        var p = [[T]](repeating: [], count: Parameter.allCases.count)
        p[Parameter.classifier.rawValue] = normal(v * d, 1 / Double(d))
        p[Parameter.embedding.rawValue] = config.tied ? [] : normal(v * d, 1 / Double(d))
        p[Parameter.w1.rawValue] = normal(kd * h, 1 / Double(kd))
        p[Parameter.b1.rawValue] = [T](repeating: 0, count: h)
        p[Parameter.w2.rawValue] = normal(h * d, 1 / Double(h))
        p[Parameter.b2.rawValue] = [T](repeating: 0, count: d)
        p[Parameter.bias.rawValue] = [T](repeating: 0, count: rows.count)
        if rows != 0..<v { p[Parameter.classifier.rawValue] = Array(p[Parameter.classifier.rawValue][(rows.lowerBound * d)..<(rows.upperBound * d)]) }
        parameters = p
    }

    public subscript(_ p: Parameter) -> [T] {
        get { parameters[p.rawValue] }
        set { parameters[p.rawValue] = newValue }
    }

    /// Number of scalar parameters.
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

    /// Zeroed arrays shaped like the parameters.
    public func zeroGradients() -> [[T]] { parameters.map { [T](repeating: 0, count: $0.count) } }

    /// The input table T (C when tied).
    var table: Parameter { config.tied ? .classifier : .embedding }

    /// The body's forward for B contexts of k token ids each (`contexts`, row-major (B, k)).
    public func body(contexts: [Int32]) -> BodyActivations<T> {
        let k = config.context, d = config.dim, hd = config.hidden
        let b = contexts.count / k
        let table = self[self.table]
        var x = [T](repeating: 0, count: b * k * d)
        for i in 0..<b {
            for j in 0..<k {
                let src = Int(contexts[i * k + j]) * d, dst = (i * k + j) * d
                for q in 0..<d { x[dst + q] = table[src + q] }
            }
        }
        var h = [T](repeating: 0, count: b * hd)
        let b1 = self[.b1]
        for i in 0..<b { for q in 0..<hd { h[i * hd + q] = b1[q] } }
        gemm(x, self[.w1], into: &h, m: b, n: hd, k: k * d, beta: 1)
        for i in 0..<h.count { h[i] = T.tanh(h[i]) }
        var y = [T](repeating: 0, count: b * d)
        let b2 = self[.b2]
        for i in 0..<b { for q in 0..<d { y[i * d + q] = b2[q] } }
        gemm(h, self[.w2], into: &y, m: b, n: d, k: hd, beta: 1)
        return BodyActivations(batch: b, contexts: contexts, x: x, h: h, y: y)
    }

    /// Adds the body's parameter gradients for upstream `dy` = ∂L/∂y (B, D) into `grads`
    /// (the table's into C's slot when tied).
    public func bodyBackward(_ act: BodyActivations<T>, dy: [T], into grads: inout [[T]]) {
        let k = config.context, d = config.dim, hd = config.hidden, b = act.batch
        // dW2 += hᵀ · dy, db2 += Σ dy
        gemm(act.h, transA: true, dy, into: &grads[Parameter.w2.rawValue], m: hd, n: d, k: b, beta: 1)
        for i in 0..<b { for q in 0..<d { grads[Parameter.b2.rawValue][q] += dy[i * d + q] } }
        // da = (dy · W2ᵀ) ⊙ (1 − h²)
        var da = [T](repeating: 0, count: b * hd)
        gemm(dy, self[.w2], transB: true, into: &da, m: b, n: hd, k: d)
        for i in 0..<da.count { da[i] *= 1 - act.h[i] * act.h[i] }
        // dW1 += xᵀ · da, db1 += Σ da
        gemm(act.x, transA: true, da, into: &grads[Parameter.w1.rawValue], m: k * d, n: hd, k: b, beta: 1)
        for i in 0..<b { for q in 0..<hd { grads[Parameter.b1.rawValue][q] += da[i * hd + q] } }
        // dx = da · W1ᵀ, scattered into the rows of the table that were gathered
        var dx = [T](repeating: 0, count: b * k * d)
        gemm(da, self[.w1], transB: true, into: &dx, m: b, n: k * d, k: hd)
        let slot = table.rawValue
        for i in 0..<b {
            for j in 0..<k {
                let dst = Int(act.contexts[i * k + j]) * d, src = (i * k + j) * d
                for q in 0..<d { grads[slot][dst + q] += dx[src + q] }
            }
        }
    }
}
