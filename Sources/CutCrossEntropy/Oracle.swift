// The oracle: the algorithmic reference, in Float64, with the logits materialized.
//
// This is the definition the tiled engine is tested against. It builds the full N x V
// logit matrix in Double, one row at a time for the forward and again for the backward,
// and applies the formulas of Forward.swift and Backward.swift literally. It is slow
// (O(N·V·D) scalar Double operations) and meant for small problems: tests, and the error
// reports of `cce demo`. Inputs are read exactly (every storage type converts exactly).

import CCEKernels

/// Results of the Float64 oracle.
public struct OracleResult: Sendable {
    /// Reduced loss (mean or sum; for .none the sum).
    public let loss: Double
    /// Per target position (targets' shape).
    public let tokenLosses: [Double]
    /// Per target position, NaN where there is no loss.
    public let lse: [Double]
    /// Gradient with respect to E (E's shape), for the given upstream gradient.
    public let dE: [Double]
    /// Gradient with respect to C, (V, D).
    public let dC: [Double]
    /// Gradient with respect to the bias, (V), when a bias was given.
    public let dBias: [Double]?
}

/// The Float64 reference with materialized logits: the definition every path of the engine
/// is tested against (see Docs/NUMERICS.md for the budgets).
public enum Oracle {
    /// Loss and gradients in Float64 with materialized logits. Same validation and errors
    /// as the engine.
    public static func compute(embeddings: Tensor, classifier: Tensor, targets: Targets,
                               bias: Tensor? = nil, options: Options = Options(),
                               upstream: Upstream = .scalar(1)) throws -> OracleResult {
        let p = try Problem(embeddings: embeddings, classifier: classifier, targets: targets,
                            bias: bias, options: options)
        let g = try p.upstreamPerToken(upstream, reduction: options.reduction)
        let e = embeddings.floats().map { Double($0) }
        let c = classifier.floats().map { Double($0) }
        let b = bias?.floats().map { Double($0) }
        let d = p.d, v = p.v
        let alpha = options.labelSmoothing, zl = options.zLoss
        // Class weights (PyTorch's `weight`): w_t scales the token's NLL and z-loss terms,
        // w_v each class's share of the smoothing term, and `.mean` divides by Σ_i w_{t_i}.
        let w = options.classWeights?.map { Double($0) }
        let weightSum = w?.reduce(0, +) ?? Double(v)
        let positions = p.targetShape.reduce(1, *)
        var tokenLosses = [Double](repeating: 0, count: positions)
        var lseOut = [Double](repeating: .nan, count: positions)
        var dE = [Double](repeating: 0, count: p.n * d)
        var dC = [Double](repeating: 0, count: v * d)
        var dBias: [Double]? = b == nil ? nil : [Double](repeating: 0, count: v)
        var z = [Double](repeating: 0, count: v)
        var total = 0.0
        for i in 0..<p.active {
            let r = Int(p.rows[i]), t = Int(p.targets[i])
            for cv in 0..<v {
                var y = 0.0
                for k in 0..<d { y += e[r * d + k] * c[cv * d + k] }
                if let b { y += b[cv] }
                if let s = options.softcap { y = s * Double.tanh(y / s) }
                z[cv] = y
            }
            let m = z.max()!
            var s = 0.0
            for x in z { s += Double.exp(x - m) }
            let lse = m + Double.log(s)
            let mean = z.reduce(0, +) / Double(v)
            var loss = lse - (1 - alpha) * z[t] - alpha * mean + zl * lse * lse
            if let w {
                // PyTorch: (1 − α)·w_t·nll + (α/V)·Σ_v w_v·(−log p_v); z-loss weighted by w_t.
                var smooth = 0.0
                for cv in 0..<v { smooth += w[cv] * (lse - z[cv]) }
                loss = w[t] * ((1 - alpha) * (lse - z[t]) + zl * lse * lse) + alpha / Double(v) * smooth
            }
            tokenLosses[Int(p.positions[i])] = loss
            lseOut[Int(p.positions[i])] = lse
            total += loss
            // ∂loss/∂z_v = coef·p_v − (α/V)·w_v − (1 − α)·w_t·[v = t], with
            // coef = w_t·(1 − α + 2·zloss·lse) + α·W/V (W = Σ_v w_v; 1 + 2·zloss·lse unweighted).
            let coef = w.map { $0[t] * (1 - alpha + 2 * zl * lse) + alpha * weightSum / Double(v) } ?? (1 + 2 * zl * lse)
            for cv in 0..<v {
                var dz = coef * Double.exp(z[cv] - lse) - alpha / Double(v) * (w?[cv] ?? 1)
                if cv == t { dz -= (1 - alpha) * (w?[t] ?? 1) }
                if let cap = options.softcap { dz *= 1 - (z[cv] / cap) * (z[cv] / cap) }
                let dy = g[i] * dz
                for k in 0..<d {
                    dE[r * d + k] += dy * c[cv * d + k]
                    dC[cv * d + k] += dy * e[r * d + k]
                }
                dBias?[cv] += dy
            }
        }
        return OracleResult(loss: p.reduce(total: total, options.reduction), tokenLosses: tokenLosses, lse: lseOut, dE: dE, dC: dC, dBias: dBias)
    }
}
