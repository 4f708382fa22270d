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
//
// Two doors for runs split over processes (Parallel.swift): a token-parallel rank sorts by
// the mean embedding over every rank's tokens (`mean`), so that all ranks sweep the
// vocabulary in the order one process would; and a vocabulary shard's problem marks a
// target held by another shard with the id V (Problem.restricted), so `rank` has V + 1
// entries, the last one a position no tile reaches.

import CCEKernels

enum VocabularyOrder {
    /// (order, rank): order[k] is the vocabulary id at sorted position k, rank its inverse
    /// (with rank[V] = Int32.max, the "held elsewhere" id of a vocabulary shard). `mean`:
    /// the mean embedding to sort by (nil: the mean of the problem's active rows).
    static func make(problem: Problem, e: UnsafeRawPointer, c: UnsafeRawPointer,
                     bias: [Double]?, sorted: Bool, mean given: [Float]? = nil) -> (order: [Int32], rank: [Int32]) {
        let v = problem.v, d = problem.d
        guard sorted, problem.active > 0 || given != nil else {
            let id = (0..<v).map { Int32($0) }
            return (id, id + [Int32.max])
        }
        let meanF = given ?? meanEmbedding(problem: problem, e: e)
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
        var rank = [Int32](repeating: Int32.max, count: v + 1)
        for (k, id) in order.enumerated() { rank[Int(id)] = Int32(k) }
        return (order, rank)
    }

    /// ē = (1/M) Σ_i e_i over the active rows, summed in Float64 in row order, rounded to Float32.
    static func meanEmbedding(problem: Problem, e: UnsafeRawPointer) -> [Float] {
        let (sum, count) = embeddingSum(problem: problem, e: e)
        return mean(sum: sum, count: count)
    }

    /// Σ_i e_i over the active rows (Float64, row order) and their count M.
    static func embeddingSum(problem: Problem, e: UnsafeRawPointer) -> (sum: [Double], count: Int) {
        let d = problem.d
        var sum = [Double](repeating: 0, count: d)
        for r in problem.rows {
            let row = e + Int(r) * d * problem.eType.size
            for k in 0..<d { sum[k] += Double(storedElement(row, type: problem.eType, k)) }
        }
        return (sum, problem.active)
    }

    /// The mean from a sum over `count` rows, rounded as the sort uses it.
    static func mean(sum: [Double], count: Int) -> [Float] {
        let inv = 1 / Double(max(count, 1))
        return sum.map { Float($0 * inv) }
    }
}
