// Adam (Kingma & Ba, 2015) over a list of parameter arrays.
//
// For each scalar parameter θ with gradient g, at step t = 1, 2, …:
//     m ← β1·m + (1 − β1)·g,     v ← β2·v + (1 − β2)·g²
//     θ ← θ − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)
// Dense: rows of the embedding table that a batch did not touch still move while their
// moments decay (as in PyTorch's dense Adam).

import Foundation

/// Adam state for parameters shaped like the arrays it was made for.
public struct Adam<T: TrainingScalar> {
    public var learningRate: Double
    public var beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8
    var m: [[T]], v: [[T]]
    public private(set) var step = 0

    public init(shapes parameters: [[T]], learningRate: Double) {
        self.learningRate = learningRate
        m = parameters.map { [T](repeating: 0, count: $0.count) }
        v = m
    }

    /// One update of `parameters` with `gradients` (same shapes).
    public mutating func update(_ parameters: inout [[T]], _ gradients: [[T]]) {
        step += 1
        let c1 = 1 - Foundation.pow(beta1, Double(step)), c2 = 1 - Foundation.pow(beta2, Double(step))
        let b1 = T(beta1), b2 = T(beta2), lr = T(learningRate / c1), eps = T(epsilon)
        let inv2 = T(1 / c2)
        for p in 0..<parameters.count {
            parameters[p].withUnsafeMutableBufferPointer { th in
                m[p].withUnsafeMutableBufferPointer { mp in
                    v[p].withUnsafeMutableBufferPointer { vp in
                        gradients[p].withUnsafeBufferPointer { g in
                            for i in 0..<th.count {
                                let gi = g[i]
                                mp[i] = b1 * mp[i] + (1 - b1) * gi
                                vp[i] = b2 * vp[i] + (1 - b2) * gi * gi
                                th[i] -= lr * mp[i] / ((vp[i] * inv2).squareRoot() + eps)
                            }
                        }
                    }
                }
            }
        }
    }
}
