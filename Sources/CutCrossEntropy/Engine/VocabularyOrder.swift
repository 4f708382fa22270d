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
import CCERuntime

enum VocabularyOrder {
    /// (order, rank): order[k] is the vocabulary id at sorted position k, rank its inverse.
    /// The mean embedding, the V averages and the sort are shared among `threads` workers;
    /// each value is computed by one fixed sequence of operations, so the order does not
    /// depend on the thread count.
    static func make(problem: Problem, e: UnsafeRawPointer, c: UnsafeRawPointer,
                     bias: [Double]?, sorted: Bool, threads: Int = 1) -> (order: [Int32], rank: [Int32]) {
        let v = problem.v, d = problem.d
        guard sorted, problem.active > 0 else {
            let id = (0..<v).map { Int32($0) }
            return (id, id)
        }
        let workers = max(1, min(threads, v / 4096 + 1))
        // ē in Double, every column summed over the active rows in order; workers take
        // column ranges.
        var mean = [Double](repeating: 0, count: d)
        let rows = problem.rows, eType = problem.eType, active = problem.active
        mean.withUnsafeMutableBufferPointer { m in
            let sums = UncheckedSendable(m.baseAddress!), eRows = UncheckedSendable(e)
            let chunk = (d + workers - 1) / workers
            Workers.run(workers) { w in
                let k0 = w * chunk, k1 = min(d, k0 + chunk)
                guard k0 < k1 else { return }
                withUnsafeTemporaryAllocation(of: Float.self, capacity: d) { row in
                    for r in rows {
                        convertRow(eRows.value + Int(r) * d * eType.size, type: eType, count: d, into: row.baseAddress!)
                        for k in k0..<k1 { sums.value[k] += Double(row[k]) }
                    }
                }
            }
        }
        let inv = 1 / Double(active)
        let meanF = mean.map { Float($0 * inv) }
        // avg_v = C_v · ē + b_v, workers taking vocabulary ranges.
        var keys = [(avg: Double, id: Int32)](repeating: (0, 0), count: v)
        meanF.withUnsafeBufferPointer { mp in
            keys.withUnsafeMutableBufferPointer { kp in
                let out = UncheckedSendable(kp.baseAddress!), meanP = UncheckedSendable(mp.baseAddress!)
                let cRows = UncheckedSendable(c), cType = problem.cType
                let chunk = (v + workers - 1) / workers
                Workers.run(workers) { w in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: d) { row in
                        for id in w * chunk ..< min(v, (w + 1) * chunk) {
                            convertRow(cRows.value + id * d * cType.size, type: cType, count: d, into: row.baseAddress!)
                            let dot = Double(fastDot(UnsafePointer(row.baseAddress!), meanP.value, d))
                            out.value[id] = (dot + (bias?[id] ?? 0), Int32(id))
                        }
                    }
                }
            }
        }
        // Largest average first, ties in vocabulary order: a strict total order, so any
        // correct sort gives the same permutation.
        keys.sort { $0.avg != $1.avg ? $0.avg > $1.avg : $0.id < $1.id }
        let order = keys.map(\.id)
        var rank = [Int32](repeating: 0, count: v)
        for (k, id) in order.enumerated() { rank[Int(id)] = Int32(k) }
        return (order, rank)
    }
}
