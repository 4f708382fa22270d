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
// target held by another shard with the id V (Problem.restricted), whose position is
// Int32.max, one no tile reaches.

import CCEKernels
import CCERuntime

enum VocabularyOrder {
    /// (order, targetPositions): order[k] is the vocabulary id at sorted position k, and
    /// targetPositions[t] the sorted position of active token t's target (Int32.max for the
    /// "held elsewhere" id V of a vocabulary shard): N values kept for the sweep where the
    /// inverse permutation would be V. The mean
    /// embedding, the V averages and the sort are shared among `threads` workers; each value
    /// is computed by one fixed sequence of operations, so the order does not depend on the
    /// thread count. `mean`: the mean embedding to sort by (nil: the mean of the problem's
    /// active rows). The mean and the averages are marked in `trace` (CCE_TRACE) as phases of
    /// their own, the sort is what follows them.
    static func make(problem: Problem, e: UnsafeRawPointer, c: UnsafeRawPointer,
                     bias: [Float]?, sorted: Bool, threads: Int = 1,
                     mean given: [Float]? = nil, trace: inout PhaseTrace)
        -> (order: [Int32], targetPositions: [Int32]) {
        let v = problem.v
        guard sorted, problem.active > 0 || given != nil else {
            return ((0..<v).map { Int32($0) }, problem.targets.map { $0 == v ? Int32.max : Int32($0) })
        }
        let workers = max(1, min(threads, v / 4096 + 1))
        let meanF = given ?? mean(sum: embeddingSum(problem: problem, e: e, threads: workers), count: problem.active)
        trace.mark("mean embedding")
        // avg_v = C_v · ē + b_v, workers taking vocabulary ranges, each written as the radix
        // sort's word (descendingWord). Without a bias avg_v is a Float32 value, whose 32-bit
        // word orders as the 64-bit one: the same permutation from half the sort's memory.
        func ordered<W: FixedWidthInteger & UnsignedInteger>(_ word: @escaping @Sendable (Int, Float) -> W) -> [Int32] {
            var words = [W](repeating: 0, count: v)
            averages(problem: problem, c: c, mean: meanF, workers: workers, into: &words, word: word)
            trace.mark("average logits")
            return descendingOrder(words: consume words)
        }
        let order = if let bias {
            ordered { id, dot in descendingWord(Double(dot) + Double(bias[id])) }
        } else {
            ordered { _, dot in descendingWord(dot) }
        }
        var rank = [Int32](repeating: Int32.max, count: v + 1)
        for (k, id) in order.enumerated() { rank[Int(id)] = Int32(k) }
        return (order, problem.targets.map { rank[Int($0)] })
    }

    /// out[id] = word(id, C_id · ē) for every vocabulary id, `workers` workers taking ranges;
    /// each dot is fastDot over the row converted to Float32 (one fixed sequence of
    /// operations, so the words do not depend on the thread count).
    static func averages<W>(problem: Problem, c: UnsafeRawPointer, mean: [Float], workers: Int, into out: inout [W],
                            word: @escaping @Sendable (Int, Float) -> W) {
        let v = problem.v, d = problem.d
        mean.withUnsafeBufferPointer { mp in
            out.withUnsafeMutableBufferPointer { op in
                let out = UncheckedSendable(op.baseAddress!), meanP = UncheckedSendable(mp.baseAddress!)
                let cRows = UncheckedSendable(c), cType = problem.cType
                let chunk = (v + workers - 1) / workers
                Workers.run(workers) { w in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: d) { row in
                        for id in w * chunk ..< min(v, (w + 1) * chunk) {
                            convertRow(cRows.value + id * d * cType.size, type: cType, count: d, into: row.baseAddress!)
                            out.value[id] = word(id, fastDot(UnsafePointer(row.baseAddress!), meanP.value, d))
                        }
                    }
                }
            }
        }
    }

    /// Σ_i e_i over the active rows, in Float64, every column summed over the rows in order;
    /// `threads` workers take column ranges. Each row's stretch is widened 16 elements at a
    /// time (`widened16`) and added to sums that stay in the worker's L1 (the same additions
    /// in the same order as one element at a time, which took 2.7 to 3.6 ms at N = 4096,
    /// D = 1024 on two Zen 3 threads).
    static func embeddingSum(problem: Problem, e: UnsafeRawPointer, threads: Int = 1) -> [Double] {
        let d = problem.d
        var sum = [Double](repeating: 0, count: d)
        let rows = problem.rows, eType = problem.eType
        sum.withUnsafeMutableBufferPointer { m in
            let sums = UncheckedSendable(m.baseAddress!), eRows = UncheckedSendable(e)
            let chunk = ((d + threads - 1) / threads + 15) / 16 * 16
            Workers.run(max(1, min(threads, (d + chunk - 1) / chunk))) { w in
                let k0 = w * chunk, k1 = min(d, k0 + chunk)
                guard k0 < k1 else { return }
                let out = UnsafeMutableRawPointer(sums.value + k0), whole = (k1 - k0) / 16 * 16
                for r in rows {
                    let src = eRows.value + (Int(r) * d + k0) * eType.size
                    for j in stride(from: 0, to: whole, by: 16) {
                        let x = widened16(src, type: eType, at: j)
                        let a = out.loadUnaligned(fromByteOffset: 8 * j, as: SIMD16<Double>.self) + SIMD16<Double>(x)
                        out.storeBytes(of: a, toByteOffset: 8 * j, as: SIMD16<Double>.self)
                    }
                    for k in whole..<(k1 - k0) { sums.value[k0 + k] += Double(storedElement(src, type: eType, k)) }
                }
            }
        }
        return sum
    }

    /// The mean from a sum over `count` rows, rounded as the sort uses it: Float32(sum·(1/count)).
    static func mean(sum: [Double], count: Int) -> [Float] {
        let inv = 1 / Double(max(count, 1))
        return sum.map { Float($0 * inv) }
    }
}
