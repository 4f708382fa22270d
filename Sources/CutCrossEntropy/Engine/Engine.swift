// The engine room's one door. `Engine.run` takes a validated Problem and a resolved
// BackwardPolicy (with the loss's options, the thread count and the tile backend), sets
// up what the sweep needs, runs the workers, and hands back raw per-token results and
// gradients; the facade (CutCrossEntropy.swift) turns them into the public types.
//
//   .forward   per token block: Forward.segment for each vocabulary segment, then
//              Forward.finish                                      (lse, loss)
//   .backward  per part of a token block's rows: Backward.block    (dE, dC, dBias from saved lse)
//   .fused     per token block: Forward.segment for each vocabulary segment, Forward.finish,
//              then Backward.block for each part of its rows with the forward's per-block
//              maxima, so negligible rows are not recomputed
//   .fused with an exchange (a vocabulary shard, Parallel.swift): per chunk of
//              `exchangeChunk` tokens, Forward.block over the chunk's token blocks, keeping
//              their per-block maxima; `exchange` turns the chunk's shard LSE into the global
//              one (the ranks combine their partials); Backward.block over the chunk's token
//              blocks with those maxima (sweepExchanging). With more ranks and saved logits
//              the forward runs in two pieces, with a lower bound of the global LSE
//              exchanged between them (`exchangeSeeds`)
//
// Set-up, in order: the output buffers (zeroed, every page written now; a fused call's
// caller-given dC is zeroed during its forward instead, SweepChores, as is the table of the
// dropped-mass estimate), for the kahan accumulation the compensation rows, the classifier's
// pages interleaved over NUMA nodes (it is read by every worker; not a classifier that
// borrows the C ABI caller's memory), and the vocabulary order (VocabularyOrder.swift).
// Workers take work items in a fixed order as they finish the previous one (Counter in CCERuntime/Workers.swift: faster workers take
// more): in the forward and fused passes an item is one vocabulary segment of one token
// block (a quarter of V at V = 128256), so a fast worker takes part of a slow one's block
// instead of waiting for it, and in the fused and backward passes a block's backward is a
// few items of its rows (TilePlan.backwardParts); each worker allocates its Workspace once
// per call, and each token block in flight uses a BlockSlot.

import CCEKernels
import CCERuntime
import Synchronization

enum Pass { case forward, backward, fused }

/// One engine call: which pass, on what, and how.
struct EngineCall {
    let pass: Pass
    let problem: Problem
    /// The loss's options (soft cap, label smoothing, z-loss).
    let options: Options
    let policy: BackwardPolicy
    let threads: Int
    let backend: TileBackend
    /// A tile kernel to use instead of the automatic choice (nil: automatic).
    let kernel: TileKernel?
    /// g_i per active token (backward and fused); empty for the forward.
    let upstream: [Double]
    /// The forward's LSE per active token (backward only).
    let savedLSE: Values?
    /// Caller memory for the gradients (nil: the engine allocates them).
    var destination: GradientDestination? = nil
    /// The whole vocabulary when `problem` is one shard of it (Parallel.swift), else nil.
    var shard: ShardContext? = nil
    /// The mean embedding to sort the vocabulary by, when it is not this call's own
    /// (a token-parallel rank's: the mean over every rank's tokens), else nil.
    var sortingMean: [Float]? = nil
    /// A fused call on a vocabulary shard: between the forward and the backward of each chunk
    /// of active tokens (`exchangeChunk`), the shard's partials of those tokens go out
    /// and their global LSE comes back (nil: stop, no backward).
    var exchange: ((Range<Int>, ShardPartials) -> Values?)? = nil
    /// With more than one rank, before each chunk's `exchange`: the shard's LSE of each token
    /// over its first forward block (−∞ from a shard that keeps no logits) goes out, and a
    /// lower bound of its global LSE comes back (nil: stop) (sweepExchanging).
    var exchangeSeeds: ((Range<Int>, [Float]) -> [Float]?)? = nil
    /// Active tokens per exchange (CutCrossEntropy.resolvedExchangeChunk, which holds the default).
    var exchangeChunk: Int
}

/// What a vocabulary shard's engine call needs to know of the whole vocabulary: V (for the
/// label smoothing term α/V) and, with class weights, W = Σ_v w_v over every shard.
struct ShardContext: Sendable {
    let vocabulary: Int
    let weightTotal: Double?
}

/// Where a shard's forward writes its per-token target logit and smoothing sum.
struct ShardPartPointers<S: KernelScalar>: @unchecked Sendable {
    let targetLogit: UnsafeMutablePointer<S>
    let logitSum: UnsafeMutablePointer<S>
}

/// What an engine call computed. Per-token values are per active token, in the engine's
/// scalar type (Float32, or Float64 in the exact mode); what a pass does not compute is
/// empty, and so are the gradients when they went to the call's destination.
struct EngineResult {
    var lse: Values
    var loss: Values
    var dE: Values
    var dC: Values
    var dBias: Values?
    var stats: FilterStatistics
    /// A shard's forward (call.shard set): per active token, the target logit (0 where
    /// another shard holds the target) and the smoothing sum; else nil.
    var shardParts: (targetLogit: Values, logitSum: Values)? = nil
}

enum Engine {
    /// Runs `call` on the caller's tensors (shapes and types as `call.problem` validated).
    static func run(_ call: EngineCall, embeddings: Tensor, classifier: Tensor, bias: Tensor?) -> EngineResult {
        call.policy.accumulation == .float64
            ? run(Double.self, call, embeddings, classifier, bias)
            : run(Float.self, call, embeddings, classifier, bias)
    }

    static func run<S: KernelScalar>(_: S.Type, _ call: EngineCall, _ embeddings: Tensor, _ classifier: Tensor,
                                     _ bias: Tensor?) -> EngineResult {
        let p = call.problem
        var trace = PhaseTrace()
        let wantsLoss = call.pass != .backward, wantsGradients = call.pass != .forward
        // The bias as Float32 (V values), and in S: the same array where S is Float (no copy).
        let biasValues = bias?.floats()
        let biasS: [S]? = S.self == Float.self ? unsafeBitCast(biasValues, to: [S]?.self)
            : biasValues.map { $0.map { S(storage: $0) } }
        var lse = call.savedLSE.map { $0.doubles.map { S($0) } } ?? zeroed(S.self, p.active)
        var loss = zeroed(S.self, wantsLoss ? p.active : 0)
        let wantsShardParts = wantsLoss && call.shard != nil
        var targetLogit = zeroed(S.self, wantsShardParts ? p.active : 0)
        var logitSum = zeroed(S.self, wantsShardParts ? p.active : 0)
        let upstream: [S] = call.upstream.map { S($0) }
        // Gradients: straight into the caller's Float32 memory when given (zeroed here),
        // else into arrays allocated now (the exact mode computes in Float64 and rounds
        // into the destination at the end).
        let direct = wantsGradients && S.self == Float.self ? call.destination : nil
        let internalGradients = wantsGradients && direct == nil
        let threads = call.threads
        var dE = zeroed(S.self, internalGradients ? p.n * p.d : 0, threads: threads)
        var dC = zeroed(S.self, internalGradients ? p.v * p.d : 0, threads: threads)
        var dBias: [S]? = bias == nil || !internalGradients ? nil : zeroed(S.self, p.v)
        // The fused call (not a vocabulary shard's exchanging one) zeroes the caller's dC during
        // its forward (SweepChores), which is compute-bound, instead of here.
        let exchanging = call.pass == .fused && call.exchange != nil && wantsShardParts
        let deferredC = call.pass == .fused && !exchanging && SweepChores<S>.enabled
            && direct.map { !$0.dCIsZero && $0.dC.count > 0 } == true
        if let direct {
            for b in [direct.dE, direct.dCIsZero || deferredC ? nil : direct.dC, direct.dBias].compactMap({ $0 })
            where b.count > 0 {
                Workers.zero(b.baseAddress!, count: b.count, threads: threads)
            }
            if deferredC {
                Placement.adviseHugePages(UnsafeMutableRawPointer(direct.dC.baseAddress!), bytes: direct.dC.count * 4)
            }
        }
        func rebound(_ b: UnsafeMutableBufferPointer<Float>?) -> UnsafeMutablePointer<S>? {
            b.map { UnsafeMutableRawPointer($0.baseAddress!).assumingMemoryBound(to: S.self) }
        }
        let compensated = wantsGradients && call.policy.accumulation == .kahan
        var compE = zeroed(S.self, compensated ? p.n * p.d : 0, threads: threads)
        var compC = zeroed(S.self, compensated ? p.v * p.d : 0, threads: threads)
        trace.mark("outputs zeroed")
        let kernel = chooseTileKernel(S.self, eType: p.eType, cType: p.cType, backend: call.backend,
                                      requested: call.kernel)
        let plan = TilePlan(tokens: p.active, dim: p.d, vocab: p.v, threads: call.threads,
                            scalarBytes: MemoryLayout<S>.size,
                            tokenBytes: kernel.tokenBytes,
                            rowGroup: TilePlan.rowGroup(kernel: kernel, compensated: call.policy.accumulation == .kahan),
                            denseBackward: call.policy.densePrediction)
        var stats = FilterStatistics()
        embeddings.withRawPointer { e in
        classifier.withRawPointer { c in
            // Not a borrowed classifier's: those pages are the caller's (the C ABI's inputs), and
            // mbind would change their memory policy, and that of any neighbour sharing a page.
            if !classifier.isBorrowed {
                Placement.interleave(UnsafeRawBufferPointer(start: c, count: p.v * p.d * p.cType.size))
            }
            let (order, targetPositions) = VocabularyOrder.make(problem: p, e: e, c: c, bias: biasValues,
                                                     sorted: call.policy.sortVocabulary, threads: call.threads,
                                                     mean: call.sortingMean, trace: &trace)
            trace.mark("vocabulary order")
            order.withUnsafeBufferPointer { order in
            targetPositions.withUnsafeBufferPointer { targetPositions in
            withOptionalPointer(biasS) { biasPointer in
                let operands = Operands(e: e, eType: p.eType, c: c, cType: p.cType, bias: biasPointer, d: p.d, v: p.v,
                                        plan: plan, problem: p, order: order.baseAddress!,
                                        targetPosition: targetPositions.baseAddress!,
                                        backend: call.backend, kernel: kernel)
                lse.withUnsafeMutableBufferPointer { lse in
                loss.withUnsafeMutableBufferPointer { loss in
                upstream.withUnsafeBufferPointer { upstream in
                dE.withUnsafeMutableBufferPointer { dE in
                dC.withUnsafeMutableBufferPointer { dC in
                compE.withUnsafeMutableBufferPointer { compE in
                compC.withUnsafeMutableBufferPointer { compC in
                withOptionalMutablePointer(&dBias) { dBias in
                targetLogit.withUnsafeMutableBufferPointer { targetLogit in
                logitSum.withUnsafeMutableBufferPointer { logitSum in
                    let parts = wantsShardParts
                        ? ShardPartPointers(targetLogit: targetLogit.baseAddress!, logitSum: logitSum.baseAddress!) : nil
                    let outputs = GradientOutputs(dE: rebound(direct?.dE) ?? dE.baseAddress!,
                                                  dC: rebound(direct?.dC) ?? dC.baseAddress!,
                                                  dBias: direct == nil ? dBias : rebound(direct?.dBias),
                                                  compE: compensated ? compE.baseAddress : nil,
                                                  compC: compensated ? compC.baseAddress : nil,
                                                  touched: direct?.touchedRows)
                    let backward = wantsGradients
                        ? BackwardState(lse: UnsafePointer(lse.baseAddress!), upstream: upstream.baseAddress!,
                                        policy: call.policy, outputs: outputs,
                                        separatesSmoothing: separatesSmoothing(call.policy, call.options,
                                                                               vocabulary: call.shard?.vocabulary ?? p.v),
                                        droppedBias: call.policy.estimate && outputs.dBias != nil
                                            ? DroppedBiasMass(forwardBlocks: (p.v + plan.forwardVocabBlock - 1) / plan.forwardVocabBlock,
                                                              forwardVocabBlock: plan.forwardVocabBlock)
                                            : nil)
                        : nil
                    if exchanging, let exchange = call.exchange, let parts, let backward {
                        // The shard's partials out, the global LSE back into `lse`.
                        let smoothing = call.options.labelSmoothing > 0
                        let handOver = { (tokens: Range<Int>) -> Bool in
                            let partials = ShardPartials(lse: values(Array(lse[tokens])),
                                                         targetLogit: values(Array(targetLogit[tokens])),
                                                         logitSum: values(smoothing ? Array(logitSum[tokens]) : []))
                            guard let global = exchange(tokens, partials), global.count == tokens.count else { return false }
                            for (k, i) in tokens.enumerated() { lse[i] = S(global[k]) }
                            return true
                        }
                        stats = sweepExchanging(operands, options: call.options, shard: call.shard,
                                                exchangeChunk: call.exchangeChunk, lse: lse.baseAddress!,
                                                loss: loss.baseAddress!, shardParts: parts, backward: backward,
                                                seeds: call.exchangeSeeds, exchange: handOver, trace: &trace)
                    } else {
                        stats = sweep(call.pass, operands, options: call.options, shard: call.shard, lse: lse.baseAddress,
                                      loss: loss.baseAddress, shardParts: parts, backward: backward,
                                      zeroC: deferredC ? UnsafeMutableRawBufferPointer(direct!.dC) : nil, trace: &trace)
                    }
                    trace.mark("sweep")
                    if let backward, let dropped = backward.droppedBias, let out = backward.outputs.dBias {
                        dropped.apply(dBias: out, order: operands.order, v: p.v)
                    }
                    if let backward, backward.separatesSmoothing {
                        addUniformSmoothing(operands, backward, options: call.options,
                                            vocabulary: call.shard?.vocabulary ?? p.v, threads: threads)
                        trace.mark("smoothing term")
                    }
                }}}}}}}}}}
            }}}
        }}
        defer { trace.mark("results"); trace.report("\(call.pass), N \(p.active) D \(p.d) V \(p.v), \(threads) threads") }
        if wantsGradients, direct == nil, let destination = call.destination {
            // Float64 gradients rounded into the caller's Float32 memory.
            for (source, target) in [(dE, destination.dE), (dC, destination.dC)] {
                for i in 0..<source.count { target[i] = Float(source[i]) }
            }
            if let dBias, let target = destination.dBias { for i in 0..<dBias.count { target[i] = Float(dBias[i]) } }
            return EngineResult(lse: values(lse), loss: values(loss), dE: .float32([]), dC: .float32([]),
                                dBias: nil, stats: stats)
        }
        return EngineResult(lse: values(lse), loss: values(loss), dE: values(dE), dC: values(dC),
                            dBias: dBias.map { values($0) }, stats: stats,
                            shardParts: wantsShardParts ? (values(targetLogit), values(logitSum)) : nil)
    }

    /// Runs `pass` over all token blocks. Forward outputs go to lse/loss (per active token);
    /// backward outputs to backward.outputs (backward.lse is read, and for .fused written first).
    /// `zeroC` (fused call): dC's memory, not yet zeroed; the sweep zeroes it (SweepChores).
    static func sweep<S: KernelScalar>(
        _ pass: Pass, _ operands: Operands<S>, options: Options, shard: ShardContext? = nil, lse: UnsafeMutablePointer<S>?,
        loss: UnsafeMutablePointer<S>?, shardParts: ShardPartPointers<S>? = nil, backward: BackwardState<S>?,
        zeroC: UnsafeMutableRawBufferPointer? = nil, trace: inout PhaseTrace
    ) -> FilterStatistics {
        let m = operands.problem.active
        if m == 0 {
            if let zeroC, zeroC.count > 0 { streamZero(zeroC.baseAddress!, bytes: zeroC.count) }
            return FilterStatistics()
        }
        // Class weights in the sweep's (sorted) vocabulary order; they live until the sweep ends.
        // (A vocabulary shard's weights are its own classes'; V and W are the whole vocabulary's.)
        let weights = options.classWeights.map {
            ClassWeights<S>($0, problem: operands.problem, order: operands.order,
                            forwardBlock: operands.plan.forwardVocabBlock, total: shard?.weightTotal)
        }
        let definition = LossDefinition<S>(options, vocabulary: shard?.vocabulary ?? operands.v, weights: weights)
        // A fused call that keeps logits holds them for every row it has swept and not yet
        // finished: fewer rows in flight (TilePlan.limitingRowsInFlight).
        let keepsLogits = pass == .fused
            && savesLogits(savedPerRowOverride ?? options.savedLogitsPerRow, backward, definition)
        let operands = keepsLogits
            ? operands.with(plan: operands.plan.limitingRowsInFlight(tokens: m, copiesTokens: operands.copiesTokens))
            : operands
        let plan = operands.plan
        let nb = plan.tokenBlock
        let blocks = (m + nb - 1) / nb
        // The forward of token block b is `segments` work items (b, s): a worker that is done
        // takes part of a block another worker has begun. The worker that finishes a block's
        // last segment merges the segments' partials and, in the fused call, runs the block's
        // backward. At most `slots.count` blocks are in flight: block b uses slot b mod that,
        // once the slot's previous block is done (`slotTurns`). Items are taken window by
        // window of that many blocks, segment by segment within a window (`item`), so that
        // workers sweep the same stretch of C at the same time (on a 32 MiB L3, what one
        // worker has read from memory the others find there).
        // In the fused call the block's backward is `parts` more items of `partRows` rows each,
        // after the window's forward items, which wait for the block's merge (`readyTurns`);
        // the part that finishes last frees the slot. The backward pass alone is its parts
        // (no forward items, no slots).
        let segments = pass == .backward ? 0 : plan.vocabSegments
        let (parts, partRows) = pass != .forward && backward != nil ? plan.backwardParts(blocks: blocks) : (0, nb)
        let items = blocks * (segments + parts)
        let workers = min(plan.threads, blocks * max(segments, parts))
        let forwardBlocks = (operands.v + plan.forwardVocabBlock - 1) / plan.forwardVocabBlock
        let handOff = HandOff(count: (operands.v + plan.vocabBlock - 1) / plan.vocabBlock)
        let stats = PerWorker(workers, initial: FilterStatistics())
        let out = UncheckedSendable((lse: lse, loss: loss))
        let clock = WorkerClock(workers: workers)
        let queue = Counter()
        // The fused call's forward keeps the logits its backward needs (SavedLogits), where the
        // options allow; the estimate's table of every forward block's F_f is formed during the
        // forward (SweepChores), as is dC's zeroing.
        let (savedSetting, forwardSums) = pass == .fused
            ? savedLogitsSetting(operands, options: options, backward: backward, definition, workers: workers,
                                 formLater: SweepChores<S>.enabled)
            : (nil, nil)
        if forwardSums != nil && !SweepChores<S>.enabled { trace.mark("estimate sums") }
        let slots = pass == .backward ? [] : (0..<min(workers, blocks)).map { _ in
            BlockSlot<S>(plan: plan, d: operands.d, segments: segments, parts: parts, forwardBlocks: forwardBlocks,
                         statistics: pass == .fused, saved: savedSetting)
        }
        let slotTurns = HandOff(count: slots.count), seedTurns = HandOff(count: slots.count)
        let readyTurns = HandOff(count: slots.count)
        let window = max(1, slots.count)
        let chores = pass == .fused && SweepChores<S>.enabled && (zeroC != nil || forwardSums != nil)
            ? SweepChores<S>(dC: zeroC?.baseAddress, bytes: zeroC?.count ?? 0, table: forwardSums?.base,
                             forwardBlocks: forwardBlocks, steps: window * forwardBlocks)
            : nil
        // Item k: forward segment s of block b, or (s ≥ segments) backward part s − segments.
        let item: @Sendable (Int) -> (b: Int, s: Int) = { k in
            let g = k / (window * (segments + parts)), r = k % (window * (segments + parts))
            let width = min(window, blocks - g * window)
            if r < width * segments { return (g * window + r % width, r / width) }
            let q = r - width * segments
            return (g * window + q / parts, segments + q % parts)
        }
        let sweepStart = PhaseTrace.enabled ? monotonicSeconds() : 0
        Workers.run(workers, pin: Placement.isNUMA) { w in
            let started = PhaseTrace.enabled ? monotonicSeconds() : 0
            let workspace = Workspace<S>(plan: plan, d: operands.d, eInPlace: operands.eInPlace,
                                         backend: operands.backend, kernel: operands.kernel,
                                         partials: backward?.outputs.compE != nil,
                                         estimate: pass != .forward && backward?.policy.estimate == true,
                                         skippedEstimates: pass == .fused && backward?.policy.estimate == true,
                                         readsSavedLogits: savedSetting != nil,
                                         denseUpdates: pass != .forward && backward?.policy.densePrediction == true)
            var workerStats = FilterStatistics()
            let choreScratch = SweepChores<S>.TableScratch()
            let afterBlock: ((Int) -> Void)? = chores.map { c in { f in c.afterForwardBlock(f, operands, choreScratch) } }
            var loaded = (first: -1, count: 0)   // the E rows the workspace holds
            func load(_ first: Int, _ count: Int) {
                if loaded != (first, count) { workspace.loadTokens(operands, first: first, count: count); loaded = (first, count) }
            }
            while case let k = queue.next(), k < items {
                let (b, s) = item(k)
                let first = b * nb, count = min(nb, m - first)
                // The fused call's block in flight (none in the backward pass).
                let slot = slots.isEmpty ? nil : (index: b % slots.count, turn: b / slots.count, slot: slots[b % slots.count])
                if s >= segments, let backward {
                    // Backward part p: rows r0 ..< r0 + rows of the block, in the fused call once its
                    // forward is merged. (Only the last block can be short; its empty parts' dC
                    // turns are nobody's.)
                    let p = s - segments, r0 = p * partRows, rows = min(partRows, count - r0)
                    if let slot { workspace.handOffWait += readyTurns.wait(slot: slot.index, turn: slot.turn + 1) }
                    if let chores { workspace.handOffWait += chores.complete(operands, choreScratch) }
                    if rows > 0 {
                        load(first + r0, rows)
                        workspace.savedSegments = slot?.slot.saved
                        workspace.savedRowOffset = r0
                        Backward.block(operands, backward, workspace, handOff: handOff, b: b * parts + p,
                                       first: first + r0, count: rows, loss: definition,
                                       blockStats: slot?.slot.blockStats?.advanced(by: r0), stats: &workerStats)
                    }
                    if let slot, slot.slot.partsLeft.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
                        slot.slot.partsLeft.store(parts, ordering: .relaxed)
                        workerStats.savedLogits += slot.slot.saved?.count ?? 0
                        slotTurns.pass(slot: slot.index, turn: slot.turn)
                    }
                    continue
                }
                guard let (index, turn, slot) = slot else { continue }
                load(first, count)
                workspace.handOffWait += slotTurns.wait(slot: index, turn: turn)
                let seed = segments > 1 && savedSetting != nil
                    ? SegmentSeed(values: slot.seed.base,
                                  publish: { seedTurns.pass(slot: index, turn: turn) },
                                  wait: { workspace.handOffWait += seedTurns.wait(slot: index, turn: turn + 1) })
                    : nil
                let t0 = PhaseTrace.enabled ? monotonicSeconds() : 0, w0 = workspace.handOffWait
                Forward.segment(operands, workspace, first: first, count: count, loss: definition,
                                blocks: plan.segmentBlocks(s, forwardBlocks: forwardBlocks),
                                into: slot.partials.segment(s), seed: seed,
                                blockStats: slot.blockStats, saved: slot.saved?.parts[s], afterBlock: afterBlock)
                // (A later segment's wait for the first one's seed counts as waiting, not as forward.)
                if PhaseTrace.enabled { workspace.forwardTime += monotonicSeconds() - t0 - (workspace.handOffWait - w0) }
                // The block's last segment: what the others wrote is visible from here on.
                guard slot.remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 else { continue }
                slot.remaining.store(segments, ordering: .relaxed)
                if let lse = out.value.lse, let loss = out.value.loss {
                    Forward.finish(operands, first: first, count: count, loss: definition, partials: slot.partials,
                                   segments: segments, lse: lse, loss: loss, shardParts: shardParts)
                }
                if parts > 0 {
                    readyTurns.pass(slot: index, turn: turn)   // the parts may start
                } else {
                    slotTurns.pass(slot: index, turn: turn)
                }
            }
            stats[w] = workerStats
            if PhaseTrace.enabled {
                let now = monotonicSeconds()
                clock.record(worker: w, busy: now - started - workspace.handOffWait, waited: workspace.handOffWait,
                             forward: workspace.forwardTime, products: workspace.productTime,
                             applying: workspace.applyTime, ended: now - sweepStart)
            }
        }
        withExtendedLifetime(forwardSums) {}   // savedSetting points into it
        trace.note(clock.summary)
        var total = stats.values.reduce(into: FilterStatistics()) { $0.add($1) }
        total.tokenBlock = partRows
        return total
    }
}

/// What a token block in flight keeps from its vocabulary segments' forwards to its merge and
/// backward (Engine.sweep), reused by every slots-th block: per segment and row the forward's
/// partials, the seed the first segment hands the others, and in the fused call the block
/// statistics and the saved logits.
final class BlockSlot<S: KernelScalar>: @unchecked Sendable {
    let states: Scratch<RunningLSE<S>>
    let sums: Scratch<S>, comps: Scratch<S>
    let targetLogits: Scratch<S>
    let seed: Scratch<S>
    let blockStats: BlockStatistics?
    let saved: SavedSegments<S>?
    /// Segments of the current block not yet done.
    let remaining: Atomic<Int>
    /// Backward parts of the current block not yet done (fused call).
    let partsLeft: Atomic<Int>
    let partials: ForwardPartials<S>

    init(plan: TilePlan, d: Int, segments: Int, parts: Int, forwardBlocks: Int, statistics: Bool,
         saved setting: SavedLogits<S>.Setting?) {
        let nb = plan.tokenBlock
        states = Scratch(count: segments * nb); sums = Scratch(count: segments * nb); comps = Scratch(count: segments * nb)
        targetLogits = Scratch(count: nb); seed = Scratch(count: nb)
        blockStats = statistics ? BlockStatistics(rows: nb, blocks: forwardBlocks) : nil
        saved = setting.map { SavedSegments(plan: plan, d: d, $0) }
        remaining = Atomic(segments)
        partsLeft = Atomic(parts)
        partials = ForwardPartials(states: states.base, sums: sums.base, comps: comps.base,
                                   targetLogits: targetLogits.base, stride: nb)
    }
}

/// The fused call's memory-bound set-up, done in pieces between the forward's block steps
/// (CCERuntime/Chores.swift) instead of before the sweep: zeroing dC (V·D·4 bytes, 525 MB at
/// V = 128256, D = 1024), which only the backward writes, and the estimate's table of every
/// forward block's F_f (SavedLogits.Setting.forwardSums), which only the backward reads. After
/// each forward block step a worker zeroes the next piece of dC (non-temporal stores: no cache
/// line of the forward's is evicted for it) and forms F_f of the block it has just swept, whose
/// C rows the tile product has just read (the first worker there does it); before its first
/// backward item a worker does what is left and waits for the pieces others are still doing.
/// The zeros and the F_f are the same whoever writes them: no result changes by a bit.
final class SweepChores<S: KernelScalar>: @unchecked Sendable {
    /// False with CCE_SETUP_CHORES=0 in the environment: the set-up runs before the sweep, as
    /// it did before the chores (for measurements).
    static var enabled: Bool { Engine.setupChoresOverride != 0 }

    private let zeroBase: UnsafeMutableRawPointer?
    private let zeroBytes: Int, pieceBytes: Int
    private let zeroing: Chores
    private let table: UnsafeMutablePointer<UInt16>?
    private let forming: Chores

    /// `dC`: `bytes` to zero, or nil; `table`: the unformed table of `forwardBlocks` rows of D, or
    /// nil; `steps`: the forward block steps the first window of token blocks takes (the zeroing
    /// is cut so that about half of them finish it).
    init(dC: UnsafeMutableRawPointer?, bytes: Int, table: UnsafeMutablePointer<UInt16>?, forwardBlocks: Int, steps: Int) {
        zeroBase = dC
        zeroBytes = dC == nil ? 0 : bytes
        let pieces = max(1, steps / 2)
        pieceBytes = max(1 << 16, (zeroBytes / pieces + 4095) / 4096 * 4096)
        zeroing = Chores(count: (zeroBytes + pieceBytes - 1) / pieceBytes)
        self.table = table
        forming = Chores(count: table == nil ? 0 : forwardBlocks)
    }

    /// What a worker needs to form F_f: its own block sums and a row (made on first use).
    final class TableScratch {
        var sums: BlockSums<S>?, row: Scratch<S>?
    }

    /// After forward block `f`: F_f if nobody has formed it, and the next piece of dC.
    @inline(__always)
    func afterForwardBlock(_ f: Int, _ operands: Operands<S>, _ scratch: TableScratch) {
        if table != nil, forming.claim(f) { form(f, operands, scratch) }
        if let k = zeroing.claimNext() { zero(k) }
    }

    /// Before the backward: every piece left, then a wait for those others are doing. Returns
    /// the seconds waited (PhaseTrace).
    func complete(_ operands: Operands<S>, _ scratch: TableScratch) -> Double {
        if zeroing.allDone && forming.allDone { return 0 }
        while let k = zeroing.claimNext() { zero(k) }
        for f in 0..<forming.count where forming.claim(f) { form(f, operands, scratch) }
        return zeroing.waitForAll() + forming.waitForAll()
    }

    private func zero(_ k: Int) {
        let lo = k * pieceBytes
        streamZero(zeroBase! + lo, bytes: min(pieceBytes, zeroBytes - lo))
        zeroing.done()
    }

    private func form(_ f: Int, _ operands: Operands<S>, _ scratch: TableScratch) {
        let d = operands.d
        if scratch.sums == nil { scratch.sums = BlockSums(plan: operands.plan, d: d); scratch.row = .init(count: d) }
        scratch.sums!.forwardTable(operands, f, into: table! + f * d, row: scratch.row!.base)
        forming.done()
    }
}

extension Engine {
    /// CCE_SETUP_CHORES from the environment (0 or 1; SweepChores.enabled), for measurements.
    static let setupChoresOverride: Int? = Environment.integer("CCE_SETUP_CHORES", in: 0...1)

    /// CCE_SAVED_PER_ROW from the environment (0 to 65536), which overrides
    /// Options.savedLogitsPerRow: for experiments.
    static let savedPerRowOverride: Int? = Environment.integer("CCE_SAVED_PER_ROW", in: 0...65536)

    /// A fused call's SavedLogits setting where it saves logits (savesLogits), and the table of
    /// every forward block's F_f for the estimate, formed once here by `workers` threads (nil
    /// without the estimate), in BFloat16 (V/VBf·D·2 bytes: 1 MB at V = 128256, D = 1024); the
    /// setting points into the table, which must outlive it. With `formLater` the table is left
    /// unformed: the caller forms it (SweepChores) before the backward reads it.
    static func savedLogitsSetting<S: KernelScalar>(
        _ operands: Operands<S>, options: Options, backward: BackwardState<S>?, _ definition: LossDefinition<S>,
        workers: Int, formLater: Bool = false
    ) -> (setting: SavedLogits<S>.Setting?, sums: Scratch<UInt16>?) {
        let savedPerRow = savedPerRowOverride ?? options.savedLogitsPerRow
        guard savesLogits(savedPerRow, backward, definition), operands.plan.tokenBlock <= SavedLogits<S>.maxRows,
              let backward, let entry = backward.policy.entryEpsilon
        else { return (nil, nil) }
        let plan = operands.plan
        let forwardBlocks = (operands.v + plan.forwardVocabBlock - 1) / plan.forwardVocabBlock
        let forwardSums = backward.policy.estimate ? Scratch<UInt16>(count: forwardBlocks * operands.d) : nil
        if let forwardSums, !formLater {
            let table = UncheckedSendable(forwardSums.base)
            Workers.run(workers) { w in
                let sums = BlockSums<S>(plan: plan, d: operands.d), row = Scratch<S>(count: operands.d)
                for f in stride(from: w, to: forwardBlocks, by: workers) {
                    sums.forwardTable(operands, f, into: table.value + f * operands.d, row: row.base)
                }
            }
        }
        let setting = SavedLogits<S>.Setting(perRow: savedPerRow, logEntry: S.log(S(entry)), forwardBlocks: forwardBlocks,
                                             forwardSums: forwardSums.map { UnsafePointer($0.base) })
        return (setting, forwardSums)
    }

    /// Whether a fused call's forward keeps the logits its backward needs (SavedLogits): in
    /// Float32 with the default accumulation, filtering both gradients (so the bound applies),
    /// without soft cap, class weights or z-loss (then ∂loss/∂z_iv = p_iv − α/V off the
    /// target, and an entry below ε/16 against the running LSE stays below it), and with
    /// α/V < ε/16 (so that such an entry's |∂loss/∂z| is below ε/16 too); and with ε ≥ 2^-16
    /// (the 16-bit types' defaults): Float32's 2^-28 keeps nearly every entry, so every row
    /// would run out of room within a few blocks.
    static func savesLogits<S: KernelScalar>(_ perRow: Int, _ backward: BackwardState<S>?,
                                             _ definition: LossDefinition<S>) -> Bool {
        guard perRow > 0, S.self == Float.self, let backward, let entry = backward.policy.entryEpsilon,
              entry >= 0x1p-20,
              backward.policy.filtersBoth, backward.outputs.compE == nil,
              definition.cap == nil, definition.weights == nil, definition.zLoss == 0 else { return false }
        return Double(definition.smoothingShare) < entry
    }

    /// Whether a call's backward keeps label smoothing's uniform term out of the filtered dC
    /// and dBias updates and adds it exactly afterwards (`addUniformSmoothing`): with α > 0,
    /// no soft cap (whose derivative multiplies the term entry by entry) and a dC filter.
    /// ∂loss_i/∂z_iv holds −(α/V)·w_v for every class v. A filtered row segment, and an entry
    /// below dC's entry filter, used to drop it whole from dC_v = Σ_i dy_iv e_i and dBias_v =
    /// Σ_i dy_iv, all with one sign: on LM-like bf16 data with α = 0.1 (N 512, D 256, V 32003)
    /// dBias was 1.2e-2 from the Float64 truth against 3.0e-3 without smoothing. Now the
    /// queued entries carry dy + (α/V)·w_v·g_i (Backward.queueC), which the filters judge
    /// alone, and the term's exact sum over every token, −(α/V)·w_v·Σ_i g_i e_i (and
    /// −(α/V)·w_v·Σ_i g_i for dBias), is added to every row once the sweep is done. dE keeps
    /// the term inside dy (the dropped-mass estimate already carries its filtered part).
    /// Only where (α/V)·max_v w_v < 16ε (`vocabulary`: V of the whole classifier). Above it
    /// the filter drops only entries whose p nearly cancels the term (|p − α/V| < ε, p within
    /// 1/16 of α/V), small and of either sign, and the results stay as they were, bit for bit,
    /// with no pass over dC: Float32 (ε = 2^-28) at any real V, and tiny vocabularies, where a
    /// row that cancels exactly (V = 1: dy = 0) would otherwise get Float32 rounding residue
    /// from the term taken out and put back.
    static func separatesSmoothing(_ policy: BackwardPolicy, _ options: Options, vocabulary: Int) -> Bool {
        guard policy.filtersDC, policy.accumulation != .float64, options.labelSmoothing > 0, options.softcap == nil,
              let eps = policy.epsilon else { return false }
        let largest = Double(options.classWeights?.max() ?? 1)
        return options.labelSmoothing / Double(max(vocabulary, 1)) * largest < 16 * eps
    }

    /// After the sweep (`separatesSmoothing`): dC_v += −(α/V)·w_v·ē and dBias_v += −(α/V)·w_v·G
    /// for every class v of the call, with ē = Σ_i g_i e_i and G = Σ_i g_i over its active
    /// tokens, summed in Float64 in token order (so the bits do not depend on the threads or
    /// the blocks; each dC element gets one rounded addition). `vocabulary`: V of the whole
    /// classifier (a shard's call covers its own rows; token slices add their own tokens' share).
    static func addUniformSmoothing<S: KernelScalar>(_ operands: Operands<S>, _ state: BackwardState<S>,
                                                      options: Options, vocabulary: Int, threads: Int) {
        let p = operands.problem, d = operands.d, v = operands.v
        var mean = [Double](repeating: 0, count: d)
        var total = 0.0
        for i in 0..<p.active {
            let g = Double(state.upstream[i])
            guard g != 0 else { continue }
            total += g
            let row = operands.e + Int(p.rows[i]) * d * p.eType.size
            for k in 0..<d { mean[k] += g * Double(storedElement(row, type: p.eType, k)) }
        }
        let share = options.labelSmoothing / Double(vocabulary)
        let weights = options.classWeights
        let out = state.outputs
        if let dBias = out.dBias {
            for c in 0..<v { dBias[c] += S(-share * Double(weights?[c] ?? 1) * total) }
        }
        if let touched = out.touched { for c in 0..<v { touched[c] = true } }
        let term = UncheckedSendable(mean.map { S(-share * $0) })
        let dC = UncheckedSendable(out.dC), rowsPerWorker = (v + threads - 1) / max(threads, 1)
        let weighted = UncheckedSendable(weights)
        Workers.run(min(threads, max(v, 1))) { w in
            for c in (w * rowsPerWorker)..<min(v, (w + 1) * rowsPerWorker) {
                let row = dC.value + c * d
                if let wc = weighted.value?[c] {
                    let f = S(wc)
                    for k in 0..<d { row[k] += f * term.value[k] }
                } else {
                    for k in 0..<d { row[k] += term.value[k] }
                }
            }
        }
    }

    /// CCE_EXCHANGE_CHUNK from the environment (64 to 1048576; other values are ignored): the
    /// active tokens per exchange of a vocabulary shard's fused call when the caller sets none
    /// (CutCrossEntropy.exchangeChunk), for experiments.
    static let exchangeChunkOverride: Int? = Environment.integer("CCE_EXCHANGE_CHUNK", in: 64...(1 << 20))

    /// CCE_EXCHANGE_SEEDS=0 in the environment: a vocabulary shard's forward keeps logits
    /// against its own running LSE alone, in one piece (the seed exchange still runs, with −∞
    /// from this rank): for experiments.
    static let exchangeSeedsOverride: Int? = Environment.integer("CCE_EXCHANGE_SEEDS", in: 0...1)

    /// The fused call of a vocabulary shard, chunk by chunk of `exchangeChunk` active tokens:
    /// the forward over the chunk's token blocks, keeping their per-block maxima and
    /// log-sum-exps (2·chunk·V/VBf Float16 values: for N = 4096, 0.4% of the logits the shard
    /// would materialize); `exchange(chunk)` (which writes the chunk's global LSE into `lse`, or
    /// returns false to stop); then the backward over the chunk's token blocks with those
    /// maxima, so that rows the bound rules out are not recomputed, as in the one-process
    /// fused call. As there, a token block's forward is several work items, one per
    /// vocabulary segment (merged once the chunk's items are done), and its backward several
    /// parts of its rows (TilePlan.backwardParts), so that a worker that is done takes part of
    /// a slower one's block: a chunk's phases end together, and chunks may be small. dC's
    /// ordered hand-off numbers the parts on across chunks.
    ///
    /// A shard that keeps logits (SavedLogits) runs its forward in two pieces: its first forward
    /// block (the most probable classes of its sorted vocabulary), then the rest in segments,
    /// which keep only the entries that clear a lower bound of the token's global LSE
    /// (SegmentSeed), as a later vocabulary segment does in one process. With `seeds` (more
    /// than one rank) the bound is every rank's LSE over its first block combined: `seeds(chunk,
    /// L)` returns it, once per chunk before `exchange`, on every rank (a rank that keeps no
    /// logits sends −∞). Against the shard's own running LSE alone a rank keeps about three
    /// times its share of the entries (LM-like data, 4 shards: 470 to 570 a row against 150 to
    /// 160 above the global LSE); with the bound about 230 (Benchmarks/scripts/sparse_census.py
    /// --shards; `cce bench --parallel vocab` reports a rank's count). CCE_EXCHANGE_SEEDS=0
    /// keeps each token block's forward in one piece against the shard's own bound, as before.
    static func sweepExchanging<S: KernelScalar>(
        _ operands: Operands<S>, options: Options, shard: ShardContext?, exchangeChunk: Int,
        lse: UnsafeMutablePointer<S>, loss: UnsafeMutablePointer<S>, shardParts: ShardPartPointers<S>,
        backward: BackwardState<S>, seeds: ((Range<Int>, [Float]) -> [Float]?)?, exchange: (Range<Int>) -> Bool,
        trace: inout PhaseTrace
    ) -> FilterStatistics {
        let m = operands.problem.active
        if m == 0 {   // the exchanges are collective: every rank takes part
            if let seeds, seeds(0..<0, []) == nil { return FilterStatistics() }
            _ = exchange(0..<0); return FilterStatistics()
        }
        let plan = operands.plan
        let nb = plan.tokenBlock
        let weights = options.classWeights.map {
            ClassWeights<S>($0, problem: operands.problem, order: operands.order, forwardBlock: plan.forwardVocabBlock,
                            total: shard?.weightTotal)
        }
        let definition = LossDefinition<S>(options, vocabulary: shard?.vocabulary ?? operands.v, weights: weights)
        let forwardBlocks = (operands.v + plan.forwardVocabBlock - 1) / plan.forwardVocabBlock
        let chunk = min(m, max(1, exchangeChunk))
        let blockStats = BlockStatistics(rows: chunk, blocks: forwardBlocks, policy: .interleaved)
        let out = UncheckedSendable((lse: lse, loss: loss))
        let compensated = backward.outputs.compE != nil
        let handOff = HandOff(count: (operands.v + plan.vocabBlock - 1) / plan.vocabBlock)
        let (savedSetting, forwardSums) = savedLogitsSetting(operands, options: options, backward: backward, definition,
                                                             workers: plan.threads)
        // The forward's pieces of the vocabulary (ranges of forward blocks), each with its own
        // partials: with saved logits, the first block, then segments of the rest with a bound;
        // with saved logits but one segment and no other rank (or CCE_EXCHANGE_SEEDS=0), one
        // piece; without, the plan's segments.
        let g = plan.vocabSegments
        let split = savedSetting != nil && forwardBlocks > 1 && (seeds != nil || g > 1) && exchangeSeedsOverride != 0
        let pieces: [Range<Int>] = split
            ? [0..<1] + (0..<g).map { s in (1 + s * (forwardBlocks - 1) / g)..<(1 + (s + 1) * (forwardBlocks - 1) / g) }
            : savedSetting != nil ? [0..<forwardBlocks] : (0..<g).map { plan.segmentBlocks($0, forwardBlocks: forwardBlocks) }
        let later = split ? 1 : 0   // pieces from here on are work items after the bound
        // The logits the backward reads instead of recomputing, per token block of a chunk (the
        // whole chunk's forward runs before its backward, and a block's backward may fall to
        // another worker), one SavedLogits per piece; only the pages the entries reach become resident.
        let savedBlocks = UncheckedSendable(savedSetting.map { setting in
            (0..<(chunk + nb - 1) / nb).map { _ in
                SavedSegments<S>(plan: plan, d: operands.d, setting, firstBlocks: pieces.map(\.lowerBound))
            }
        })
        // Each row's partials, piece by piece (stride `chunk`), and its bound.
        let states = Scratch<RunningLSE<S>>(count: pieces.count * chunk)
        let sums = Scratch<S>(count: pieces.count * chunk), comps = Scratch<S>(count: pieces.count * chunk)
        let targetLogits = Scratch<S>(count: chunk), bounds = Scratch<S>(count: split ? chunk : 0)
        let rowPartials: @Sendable (Int) -> ForwardPartials<S> = { row in
            ForwardPartials(states: states.base + row, sums: sums.base + row, comps: comps.base + row,
                            targetLogits: targetLogits.base + row, stride: chunk)
        }
        if forwardSums != nil { trace.mark("estimate sums") }
        var total = FilterStatistics()
        var turns = 0   // dC hand-off turns taken by earlier chunks' backward parts
        for start in stride(from: 0, to: m, by: chunk) {
            let end = min(m, start + chunk)
            let blocks = (end - start + nb - 1) / nb
            // Token block k of the chunk: tokens start + k·NB ..< …, its statistics at row k·NB.
            let range: @Sendable (Int) -> (first: Int, count: Int) = { k in (start + k * nb, min(nb, end - start - k * nb)) }
            /// Runs `body(workspace, item, statistics)` for items 0 ..< items on up to the plan's
            /// threads, each with its own workspace (one for the backward with `backward`), and
            /// returns the statistics they added.
            func run(items: Int, backward forBackward: Bool = false,
                     _ body: @escaping @Sendable (Workspace<S>, Int, inout FilterStatistics) -> Void) -> FilterStatistics {
                let workers = min(plan.threads, items)
                let stats = PerWorker(workers, initial: FilterStatistics())
                let queue = Counter()
                Workers.run(workers, pin: Placement.isNUMA) { w in
                    let workspace = Workspace<S>(plan: plan, d: operands.d, eInPlace: operands.eInPlace,
                                                 backend: operands.backend, kernel: operands.kernel, partials: compensated,
                                                 estimate: forBackward && backward.policy.estimate,
                                                 skippedEstimates: forBackward && backward.policy.estimate,
                                                 readsSavedLogits: forBackward && savedSetting != nil,
                                                 denseUpdates: forBackward && backward.policy.densePrediction)
                    var workerStats = FilterStatistics()
                    while case let i = queue.next(), i < items { body(workspace, i, &workerStats) }
                    stats[w] = workerStats
                }
                return stats.values.reduce(into: FilterStatistics()) { $0.add($1) }
            }
            let forwardItem: @Sendable (Workspace<S>, Int, Int, SegmentSeed<S>?) -> Void = { workspace, k, piece, seed in
                let (first, count) = range(k)
                workspace.loadTokens(operands, first: first, count: count)
                Forward.segment(operands, workspace, first: first, count: count, loss: definition, blocks: pieces[piece],
                                into: rowPartials(k * nb).segment(piece), seed: seed,
                                blockStats: blockStats.advanced(by: k * nb), saved: savedBlocks.value?[k].parts[piece])
            }
            let bound: @Sendable (Int) -> SegmentSeed<S>? = { k in
                split ? SegmentSeed(values: bounds.base + k * nb, publish: {}, wait: {}) : nil
            }
            if split {
                // Every token block's first forward block; their LSE out, the bound back (a row
                // that stopped keeping logits there, +∞, keeps none after it).
                _ = run(items: blocks) { workspace, k, _ in forwardItem(workspace, k, 0, bound(k)) }
                let own = (0..<(end - start)).map { Float(states.base[$0].value) }
                guard let global = seeds.map({ $0(start..<end, own) }) ?? own else { return total }
                for i in 0..<(end - start) where bounds.base[i] != S.infinity { bounds.base[i] = S(global[i]) }
                trace.mark("bound \(start / chunk)")
            } else if let seeds, seeds(start..<end, [Float](repeating: -.infinity, count: end - start)) == nil {
                return total
            }
            // The other pieces, piece by piece, so that the workers sweep the same stretch of C.
            _ = run(items: blocks * (pieces.count - later)) { workspace, i, _ in
                forwardItem(workspace, i % blocks, later + i / blocks, bound(i % blocks))
            }
            for k in 0..<blocks {
                let (first, count) = range(k)
                Forward.finish(operands, first: first, count: count, loss: definition, partials: rowPartials(k * nb),
                               segments: pieces.count, lse: out.value.lse, loss: out.value.loss, shardParts: shardParts)
            }
            trace.mark("forward \(start / chunk)")
            guard exchange(start..<end) else { return total }
            trace.mark("exchange \(start / chunk)")
            // The backward in parts of the blocks' rows; dC's turns number the parts that have
            // rows (only the chunk's last block can be short), on from the earlier chunks'.
            let (parts, partRows) = plan.backwardParts(blocks: blocks)
            let base = turns
            var stats = run(items: blocks * parts, backward: true) { workspace, i, workerStats in
                let k = i / parts, p = i % parts
                let (first, count) = range(k)
                let r0 = p * partRows, rows = min(partRows, count - r0)
                guard rows > 0 else { return }
                workspace.loadTokens(operands, first: first + r0, count: rows)
                workspace.savedSegments = savedBlocks.value?[k]
                workspace.savedRowOffset = r0
                Backward.block(operands, backward, workspace, handOff: handOff, b: base + i, first: first + r0, count: rows,
                               loss: definition, blockStats: blockStats.advanced(by: k * nb + r0), stats: &workerStats)
                if p == 0 { workerStats.savedLogits += savedBlocks.value?[k].count ?? 0 }
            }
            turns += (blocks - 1) * parts + (range(blocks - 1).count + partRows - 1) / partRows
            stats.tokenBlock = partRows
            total.add(stats)
            trace.mark("backward \(start / chunk)")
        }
        withExtendedLifetime(forwardSums) {}   // savedSetting points into it
        return total
    }
}

/// The values of an array of the engine's scalar type, typed by S. (Not by a cast of the
/// array: an empty [Double] casts to [Float] too, which typed a chunk of no tokens in the
/// exact mode as Float32, and a vocabulary shard's exchange refused it.) Where S is Float or
/// Double the array is the same type and is passed on as it is: `as!` on a generic array
/// copies it element by element (a V·D dC twice in memory at the end of a call: 65 MB more
/// peak at V = 32003, D = 512).
func values<S: KernelScalar>(_ x: [S]) -> Values {
    if S.self == Float.self { return .float32(unsafeBitCast(x, to: [Float].self)) }
    if S.self == Double.self { return .float64(unsafeBitCast(x, to: [Double].self)) }
    return .float64(x.map { Double($0) })
}

/// A zeroed array whose pages are all written now (not left to the kernel's zero pages), so
/// that the memory a call reports and the memory the caller will touch are the same; by
/// `threads` workers (Workers.zero).
func zeroed<S: KernelScalar>(_: S.Type, _ count: Int, threads: Int = 1) -> [S] {
    [S](unsafeUninitializedCapacity: count) { buf, n in
        if count > 0 { Workers.zero(buf.baseAddress!, count: count, threads: threads) }
        n = count
    }
}

func withOptionalPointer<T, R>(_ a: [T]?, _ body: (UnsafePointer<T>?) -> R) -> R {
    guard let a else { return body(nil) }
    return a.withUnsafeBufferPointer { body($0.baseAddress) }
}

func withOptionalMutablePointer<T, R>(_ a: inout [T]?, _ body: (UnsafeMutablePointer<T>?) -> R) -> R {
    guard a != nil else { return body(nil) }
    return a!.withUnsafeMutableBufferPointer { body($0.baseAddress) }
}
