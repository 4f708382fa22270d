// The driver: workers, token blocks, and which passes run.
//
//   .forward   per token block: Forward.block                      (lse, loss)
//   .backward  per token block: Backward.block                     (dE, dC, dBias from saved lse)
//   .fused     per token block: Forward.block, then Backward.block with the forward's
//              per-block maxima, so negligible rows are not recomputed
//
// Workers own token blocks round-robin (worker w takes blocks w, w + P, …). Each worker
// allocates its Workspace once per call. The vocabulary order is computed before any pass.

import CCEKernels
import CCERuntime

enum Pass { case forward, backward, fused }

enum Engine {
    /// Runs `pass` over all token blocks. Forward outputs go to lse/loss (per active token);
    /// backward outputs to bw's gradients (bw.lse is read, and for .fused written first).
    static func run<S: KernelScalar>(
        _ pass: Pass, _ inp: SweepInputs<S>, options: Options, order: UnsafePointer<Int32>,
        lse: UnsafeMutablePointer<S>, loss: UnsafeMutablePointer<S>, backward bw: BackwardInputs<S>?
    ) -> FilterStatistics {
        let m = inp.problem.active
        if m == 0 { return FilterStatistics() }
        let plan = inp.plan
        let nb = plan.tokenBlock
        let blocks = (m + nb - 1) / nb
        let workers = min(plan.threads, blocks)
        let k = LossConstants<S>(options, v: inp.v)
        let handOff = HandOff(count: (inp.v + plan.vocabBlock - 1) / plan.vocabBlock)
        let stats = StatsBox(workers)
        let fBlocks = (inp.v + plan.forwardVocabBlock - 1) / plan.forwardVocabBlock
        let out = (lse: SendablePointer(lse), loss: SendablePointer(loss), order: UncheckedSendableRef(order))
        inp.problem.rows.withUnsafeBufferPointer { rows in
        inp.problem.targets.withUnsafeBufferPointer { targets in
            let rowsB = SendableBuffer(rows), targetsB = SendableBuffer(targets)
            Workers.run(workers, pin: Placement.isNUMA) { w in
                let ws = Workspace<S>(plan: plan, d: inp.d, backend: inp.backend,
                                      partials: bw?.compE != nil)
                let blockStats: Scratch<S>? = pass == .fused ? Scratch(count: 2 * nb * fBlocks) : nil
                var st = FilterStatistics()
                var b = w
                while b < blocks {
                    let first = b * nb, count = min(nb, m - first)
                    ws.loadTokens(inp, first: first, count: count, rows: rowsB.buffer)
                    if pass != .backward {
                        Forward.block(inp, ws, order: out.order.value, first: first, count: count,
                                      targets: targetsB.buffer, k: k, lse: out.lse.pointer, loss: out.loss.pointer,
                                      blockStats: blockStats?.base)
                    }
                    if pass != .forward, let bw {
                        Backward.block(inp, bw, ws, handOff: handOff, b: b, first: first, count: count,
                                       rows: rowsB.buffer, targets: targetsB.buffer, k: k,
                                       blockStats: blockStats.map { UnsafePointer($0.base) }, stats: &st)
                    }
                    b += workers
                }
                stats.set(w, st)
            }
        }}
        return stats.total
    }
}

struct UncheckedSendableRef<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}

/// One slot per worker; each worker writes only its own.
final class StatsBox: @unchecked Sendable {
    private let items: UnsafeMutableBufferPointer<FilterStatistics>
    init(_ n: Int) { items = .allocate(capacity: n); items.initialize(repeating: FilterStatistics()) }
    deinit { items.deallocate() }
    func set(_ i: Int, _ s: FilterStatistics) { items[i] = s }
    var total: FilterStatistics { items.reduce(into: FilterStatistics()) { $0.add($1) } }
}
