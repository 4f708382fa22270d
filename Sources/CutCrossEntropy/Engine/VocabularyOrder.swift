// Vocabulary sorting: put the entries that matter next to each other, so whole tiles of
// negligible ones can be skipped in the backward.
//
// The order is by average logit over the active tokens, largest first:
//     avg_v = (1/M) Σ_i (C_v · e_i + b_v) = C_v · ē + b_v,    ē = (1/M) Σ_i e_i.
// The average of a linear function is the function of the average, so this is exactly the
// average (pre-cap) logit that apple/ml-cross-entropy gathers during its forward (up to
// rounding: only the order matters here), computed
// instead from the mean embedding in one V x D matrix-vector product (no per-tile
// reduction, no extra state between forward and backward). Soft capping is monotone, so
// ordering pre-cap averages is the natural choice there too. Ties keep vocabulary order.

import CCEKernels

enum VocabularyOrder {
    /// (order, rank): order[k] is the vocabulary id at sorted position k, rank its inverse.
    static func make(problem: Problem, e: UnsafeRawPointer, c: UnsafeRawPointer,
                     bias: [Double]?, sorted: Bool) -> (order: [Int32], rank: [Int32]) {
        let v = problem.v, d = problem.d
        guard sorted, problem.active > 0 else {
            let id = (0..<v).map { Int32($0) }
            return (id, id)
        }
        var mean = [Double](repeating: 0, count: d)
        for r in problem.rows {
            let row = e + Int(r) * d * problem.eType.size
            for k in 0..<d { mean[k] += Double(storedElement(row, type: problem.eType, k)) }
        }
        let inv = 1 / Double(problem.active)
        let meanF = mean.map { Float($0 * inv) }
        var avg = [Double](repeating: 0, count: v)
        var cRow = [Float](repeating: 0, count: d)
        meanF.withUnsafeBufferPointer { mp in
            cRow.withUnsafeMutableBufferPointer { cp in
                for id in 0..<v {
                    convertRow(c + id * d * problem.cType.size, type: problem.cType, count: d, into: cp.baseAddress!)
                    avg[id] = Double(fastDot(UnsafePointer(cp.baseAddress!), mp.baseAddress!, d)) + (bias?[id] ?? 0)
                }
            }
        }
        let order = (0..<v).sorted { avg[$0] != avg[$1] ? avg[$0] > avg[$1] : $0 < $1 }.map { Int32($0) }
        var rank = [Int32](repeating: 0, count: v)
        for (k, id) in order.enumerated() { rank[Int(id)] = Int32(k) }
        return (order, rank)
    }
}
