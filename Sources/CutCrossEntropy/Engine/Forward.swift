// The forward pass: per-token LSE and loss, tile by tile, without the N x V logits.
//
// For active token i (E row e_i, target t_i) and vocabulary entry v:
//     y_iv = C_v · e_i + b_v,    z_iv = s·tanh(y_iv / s)  (soft capping)  or  y_iv,
//     lse_i = log Σ_v e^(z_iv),
//     loss_i = lse_i − (1 − α)·z_{i,t_i} − (α/V)·Σ_v z_iv + zloss·lse_i².
// (With α = 0 and zloss = 0 this is the plain cross-entropy −log softmax(z_i)[t_i].)
// With class weights w (Options.classWeights, PyTorch's `weight`), W = Σ_v w_v:
//     loss_i = w_{t_i}·[(1 − α)·(lse_i − z_{i,t_i}) + zloss·lse_i²] + (α/V)·(W·lse_i − Σ_v w_v z_iv),
// which is the line above when every w_v = 1; the smoothing sum is then weighted per class.
//
// Schedule (Engine.swift): a token block's forward is G work items, one per vocabulary
// segment (G = TilePlan.vocabSegments, up to 4, from V alone). For its item a worker converts
// the block's E rows to the compute type (unless they already are), then sweeps the segment's
// stretch of the vocabulary, in the sorted order (VocabularyOrder.swift), in blocks of VBf:
// tile product (NB x VBf logits), epilogue (bias, soft cap), and the LSE merge into each
// row's running (max, sum) with a Kahan-compensated sum; Σ_v z_iv is kept too when label
// smoothing needs it. The target logit z_{i,t_i} is read from the tile that holds it (after
// the epilogue), so it has exactly the bits the backward recomputes. The worker that finishes
// a block's last segment merges the G partial states of each row in segment order (`finish`):
//     M = max_s m_s,  S = Σ_s S_s·e^(m_s − M) (Kahan),  lse = M + log S.
// A row's result depends on G (where the merges fall) but not on the block it falls in, the
// worker that ran a segment, or the thread count.
//
// In the fused call the forward also keeps, per row and vocabulary block, the block's
// largest logit m_ij and its own log-sum-exp L_ij = log Σ_{v in block j} e^(z_iv)
// (2 x NB x V/VBf values per token block in flight): once the row's LSE is known, e^(m_ij − lse_i) bounds
// every softmax entry of the block, so the backward can skip the block's row without
// recomputing it, and e^(L_ij − lse_i) is the probability mass it skips (Backward.swift).

import CCEKernels
import CCERuntime

/// Class weights as a sweep reads them, in S: per active token (w_{t_i}) and per vocabulary
/// position of the sweep's order (the sorted order in the engine, the natural one in the
/// materialized baseline), with their sum, their largest value and, for the dropped-mass
/// estimate of rows the fused call never recomputes, their sum over each forward block.
final class ClassWeights<S: KernelScalar>: @unchecked Sendable {
    let token: UnsafeMutablePointer<S>
    let byPosition: UnsafeMutablePointer<S>
    let forwardBlockSums: UnsafeMutablePointer<S>
    let total: S, largest: S
    private let blocks: Int

    /// `order[k]`: the class at position k (nil: the identity); `forwardBlock`: the forward's
    /// vocabulary block (for `forwardBlockSums`); `total`: W when `w` is one vocabulary
    /// shard's weights (nil: the sum of `w`).
    init(_ w: [Float], problem: Problem, order: UnsafePointer<Int32>?, forwardBlock: Int, total: Double? = nil) {
        let v = w.count
        blocks = (v + forwardBlock - 1) / forwardBlock
        token = .allocate(capacity: max(problem.active, 1))
        byPosition = .allocate(capacity: v)
        forwardBlockSums = .allocate(capacity: max(blocks, 1))
        for i in 0..<problem.active { token[i] = S(problem.tokenWeights[i]) }
        for k in 0..<v { byPosition[k] = S(w[order.map { Int($0[k]) } ?? k]) }
        for b in 0..<blocks {
            var sum: S = 0
            for k in (b * forwardBlock)..<min(v, (b + 1) * forwardBlock) { sum += byPosition[k] }
            forwardBlockSums[b] = sum
        }
        self.total = S(total ?? w.reduce(0.0) { $0 + Double($1) })
        largest = S(w.max() ?? 0)
    }

    deinit { token.deallocate(); byPosition.deallocate(); forwardBlockSums.deallocate() }
}

/// The loss's definition in the kernel scalar type: soft cap, label smoothing, z-loss, class
/// weights, and the per-token formula (the engine and the materialized baseline both use it).
/// `token` arguments are active-token indices (for the class weights).
struct LossDefinition<S: KernelScalar>: Sendable {
    /// Label smoothing α.
    let alpha: S
    let zLoss: S
    let smoothing: Bool
    /// V as S.
    let vocabulary: S
    /// Soft cap s, or nil.
    let cap: S?
    /// Class weights, or nil (every weight 1).
    let weights: ClassWeights<S>?

    init(_ o: Options, vocabulary: Int, weights: ClassWeights<S>? = nil) {
        alpha = S(o.labelSmoothing); zLoss = S(o.zLoss); smoothing = o.labelSmoothing > 0
        self.vocabulary = S(vocabulary)
        cap = o.softcap.map { S($0) }
        self.weights = weights
    }

    /// Whether the smoothing term differs per class (class weights and α > 0): then the
    /// forward sums w_v·z_v (`weightedRowSum`) and the backward subtracts (α/V)·w_v per
    /// class (`weightedGradientEpilogue`).
    var perClassSmoothing: Bool { smoothing && weights != nil }

    /// loss_i = lse_i − (1 − α)·z_{i,t_i} + zloss·lse_i² − (α/V)·Σ_v z_iv (the last term only
    /// with label smoothing). With class weights, `logitSum` is Σ_v w_v z_iv and
    /// loss_i = w_t·[(1 − α)·(lse_i − z_{i,t_i}) + zloss·lse_i²] + (α/V)·(W·lse_i − logitSum).
    @inline(__always)
    func tokenLoss(lse l: S, targetLogit zt: S, logitSum: S, token i: Int) -> S {
        if let w = weights {
            var loss = w.token[i] * ((1 - alpha) * (l - zt) + zLoss * l * l)
            if smoothing { loss += alpha / vocabulary * (w.total * l - logitSum) }
            return loss
        }
        var loss = l - (1 - alpha) * zt + zLoss * l * l
        if smoothing { loss -= alpha * logitSum / vocabulary }
        return loss
    }

    /// coef_i = 1 + 2·zloss·lse_i: the factor of p_iv in ∂loss_i/∂z_iv; with class weights
    /// w_t·(1 − α + 2·zloss·lse_i) + α·W/V.
    @inline(__always)
    func softmaxCoefficient(lse l: S, token i: Int) -> S {
        if let w = weights { return w.token[i] * (1 - alpha + 2 * zLoss * l) + alpha * w.total / vocabulary }
        return 1 + 2 * zLoss * l
    }

    /// (1 − α)·w_t: what the target entry of ∂loss_i/∂z_i loses (w_t = 1 unweighted).
    @inline(__always)
    func targetShare(token i: Int) -> S { (1 - alpha) * (weights?.token[i] ?? 1) }

    /// α/V: the smoothing term of every ∂loss_i/∂z_iv (per unit of class weight: the term
    /// is (α/V)·w_v with class weights).
    var smoothingShare: S { alpha / vocabulary }

    /// The largest smoothing term over the classes: α/V, or (α/V)·max_v w_v. The fused
    /// call's skip bound adds it, so the bound holds with class weights too.
    var smoothingBound: S { alpha / vocabulary * (weights?.largest ?? 1) }

    /// Σ over forward block `block` (of `count` classes) of the smoothing terms: (α/V)·count,
    /// or (α/V)·Σ_{v in the block} w_v.
    func smoothingMass(forwardBlock block: Int, count: Int) -> S {
        guard let w = weights else { return smoothingShare * S(count) }
        return smoothingShare * w.forwardBlockSums[block]
    }
}

/// Σ_q w[q]·z[q] for q < count (the forward's weighted logit sum of a tile row).
@inline(__always)
func weightedRowSum<S: KernelScalar>(_ z: UnsafePointer<S>, _ w: UnsafePointer<S>, count: Int) -> S {
    let cv = count & ~7
    var acc = SIMD8<S>()
    var q = 0
    while q < cv {
        acc += UnsafeRawPointer(z + q).loadUnaligned(as: SIMD8<S>.self)
            * UnsafeRawPointer(w + q).loadUnaligned(as: SIMD8<S>.self)
        q += 8
    }
    var t = laneSum(acc)
    while q < count { t += z[q] * w[q]; q += 1 }
    return t
}

/// `mergeTileRow`, by the 512-bit version where the CPU has AVX-512 (the same bits).
@inline(__always)
func mergeRow<S: KernelScalar>(_ z: UnsafeMutablePointer<S>, count: Int, into state: inout RunningLSE<S>)
    -> TileRowSummary<S> {
    if S.self == Float.self && hasAVX512 {
        return UnsafeMutableRawPointer(z).withMemoryRebound(to: Float.self, capacity: count) { zf in
            withUnsafeMutablePointer(to: &state) { sp in
                UnsafeMutableRawPointer(sp).withMemoryRebound(to: RunningLSE<Float>.self, capacity: 1) { fs in
                    let r = mergeTileRowAVX512(zf, count: count, into: &fs.pointee)
                    return unsafeBitCast(r, to: TileRowSummary<S>.self)   // S is Float here
                }
            }
        }
    }
    return mergeTileRow(z, count: count, into: &state)
}

/// Per-row partial results of a token block's forward over some of its vocabulary: the
/// running LSE state and the smoothing sum Σ_v z_iv (Kahan-compensated) of each row, one set
/// per vocabulary segment (segment s at offset s·stride), and each row's target logit, written
/// by the segment whose vocabulary holds the target.
struct ForwardPartials<S: KernelScalar>: @unchecked Sendable {
    let states: UnsafeMutablePointer<RunningLSE<S>>
    let sums: UnsafeMutablePointer<S>
    let comps: UnsafeMutablePointer<S>
    let targetLogits: UnsafeMutablePointer<S>
    let stride: Int

    /// Segment s's set (the target logits are shared).
    func segment(_ s: Int) -> ForwardPartials {
        ForwardPartials(states: states + s * stride, sums: sums + s * stride, comps: comps + s * stride,
                        targetLogits: targetLogits, stride: stride)
    }
}

/// A lower bound of each row's LSE that the first vocabulary segment of a token block hands
/// the later ones, so that a later segment keeps (SavedLogits) only the logits that could
/// matter against the whole row, not against its own smaller log-sum-exp: the LSE over the
/// row's first `Forward.seedBlocks` forward blocks (the sorted vocabulary's most probable
/// entries), published when those blocks are done; +∞ for a row that stopped keeping logits
/// within them (a flat row that keeps more than 3/4 of a block), which then keeps none in the
/// later segments either, as in one piece it would keep none in the later blocks.
struct SegmentSeed<S: KernelScalar> {
    let values: UnsafeMutablePointer<S>
    let publish: () -> Void
    let wait: () -> Void
}

enum Forward {
    /// The forward blocks a token block's first segment merges before it publishes its seed
    /// (SegmentSeed): 16, 4096 entries of the sorted vocabulary. At V = 128256 on LM-like
    /// data the later segments then keep 2% more entries than one piece would, against 14%
    /// with a seed from the first block alone; a later segment that starts before the seed is
    /// out waits for it (a segment's first 16 of some 125 blocks).
    static let seedBlocks = 16
    /// The forward of active tokens first ..< first + count, whose E rows `workspace`
    /// holds, over the whole vocabulary. Writes lse and loss for them; when `blockStats` is
    /// given, stores each block row's largest logit and log-sum-exp there (BlockStatistics).
    /// With `shardParts` (a vocabulary shard, Parallel.swift) also writes each token's target
    /// logit (0 where another shard holds the target) and its smoothing sum Σ_v z_iv or
    /// Σ_v w_v·z_iv (0 without label smoothing): with the shard's lse, what the ranks combine.
    static func block<S: KernelScalar>(
        _ operands: Operands<S>, _ workspace: Workspace<S>, first: Int, count: Int, loss definition: LossDefinition<S>,
        lse: UnsafeMutablePointer<S>, loss: UnsafeMutablePointer<S>, blockStats: BlockStatistics?,
        saved: SavedLogits<S>? = nil, shardParts: ShardPartPointers<S>? = nil
    ) {
        let vBlocks = (operands.v + operands.plan.forwardVocabBlock - 1) / operands.plan.forwardVocabBlock
        segment(operands, workspace, first: first, count: count, loss: definition, blocks: 0..<vBlocks,
                into: workspace.forwardPartials, blockStats: blockStats, saved: saved)
        finish(operands, first: first, count: count, loss: definition, partials: workspace.forwardPartials, segments: 1,
               lse: lse, loss: loss, shardParts: shardParts)
    }

    /// The forward of those tokens over forward blocks `blocks` of the vocabulary (a segment,
    /// Engine.swift): each row's running LSE state and smoothing sum into `partials`, its
    /// target logit where the target lies in these blocks, block statistics and saved logits
    /// as in `block`. With `seed`, the segment that starts at block 0 publishes each row's LSE
    /// over its first `seedBlocks` blocks, and a later one (keeping logits) waits for it and
    /// keeps only entries that clear it too. `afterBlock(j)` runs after each forward block j (the
    /// fused call's set-up chores, Engine.swift: SweepChores).
    static func segment<S: KernelScalar>(
        _ operands: Operands<S>, _ workspace: Workspace<S>, first: Int, count: Int, loss definition: LossDefinition<S>,
        blocks: Range<Int>, into partials: ForwardPartials<S>, seed: SegmentSeed<S>? = nil,
        blockStats: BlockStatistics?, saved: SavedLogits<S>?, afterBlock: ((Int) -> Void)? = nil
    ) {
        let vb = operands.plan.forwardVocabBlock
        let states = partials.states, sums = partials.sums, comps = partials.comps
        let targetLogits = partials.targetLogits
        for i in 0..<count { states[i] = RunningLSE(); sums[i] = 0; comps[i] = 0 }
        saved?.reset(rows: count)
        var floor: UnsafePointer<S>? = nil
        if let seed, saved != nil, blocks.lowerBound > 0 { seed.wait(); floor = UnsafePointer(seed.values) }
        for j in blocks {
            let v0 = j * vb, vc = min(vb, operands.v - v0)
            saved?.begin(block: j)
            let t0 = PhaseTrace.enabled ? monotonicSeconds() : 0
            workspace.product(operands, count: count, v0: v0, vc: vc, ldo: vb)
            if PhaseTrace.enabled { workspace.productTime += monotonicSeconds() - t0 }
            for i in 0..<count {
                let row = workspace.tile.base + i * vb
                if let bias = operands.bias {
                    for q in 0..<vc { row[q] += bias[Int(operands.order[v0 + q])] }
                }
                logitEpilogue(row, count: vc, bias: nil, cap: definition.cap)
                let targetPosition = Int(operands.targetPosition[first + i]) - v0
                if targetPosition >= 0 && targetPosition < vc { targetLogits[i] = row[targetPosition] }
                let seen = mergeRow(row, count: vc, into: &states[i])
                // Kept logits leave the block's log-sum-exp: the backward adds them exactly.
                let rest = saved?.keep(row, width: vc, row: i, block: j, running: states[i],
                                       floor: floor?[i] ?? -S.infinity,
                                       target: targetPosition >= 0 && targetPosition < vc ? targetPosition : -1,
                                       max: seen.max, logSum: seen.logSum)
                blockStats?.store(row: i, block: j, max: seen.max, logSum: rest ?? seen.logSum)
                if let w = definition.weights, definition.smoothing {
                    kahanAdd(&sums[i], &comps[i], weightedRowSum(row, w.byPosition + v0, count: vc))
                } else if definition.smoothing {
                    kahanAdd(&sums[i], &comps[i], tileRowSum(row, count: vc))
                }
            }
            saved?.end(block: j)
            afterBlock?(j)
            if j == min(blocks.upperBound, seedBlocks) - 1, blocks.lowerBound == 0, let seed {
                for i in 0..<count { seed.values[i] = saved?.covers(row: i, block: j) == false ? S.infinity : states[i].value }
                seed.publish()
            }
        }
    }

    /// Merges the `segments` partial sets of those tokens (`partials`, segment order) and
    /// writes their lse and loss (and, with `shardParts`, their target logit and smoothing
    /// sum). One segment is the row's single state, as it is.
    static func finish<S: KernelScalar>(
        _ operands: Operands<S>, first: Int, count: Int, loss definition: LossDefinition<S>,
        partials: ForwardPartials<S>, segments: Int,
        lse: UnsafeMutablePointer<S>, loss: UnsafeMutablePointer<S>, shardParts: ShardPartPointers<S>? = nil
    ) {
        let targets = operands.problem.targets
        for i in 0..<count {
            var state = partials.states[i]
            var sum = partials.sums[i], comp = partials.comps[i]
            for s in 1..<max(1, segments) {
                let k = s * partials.stride + i
                state.merge(partials.states[k])
                kahanAdd(&sum, &comp, partials.sums[k] - partials.comps[k])
            }
            let l = state.value
            lse[first + i] = l
            loss[first + i] = definition.tokenLoss(lse: l, targetLogit: partials.targetLogits[i], logitSum: sum,
                                                   token: first + i)
            if let shardParts {
                let here = Int(targets[first + i]) < operands.v
                shardParts.targetLogit[first + i] = here ? partials.targetLogits[i] : 0
                shardParts.logitSum[first + i] = sum
            }
        }
    }
}

/// What the fused call's forward keeps of each (token row, forward block) for its backward
/// (Backward.swift), in Float16, two per pair, half the bytes of two Float32 values (NB·V/VBf
/// pairs per worker: the fused call's largest buffer):
/// - m̂, the block row's largest logit m rounded up to Float16, so that the skip bound
///   e^(m̂ − lse) ≥ e^(m − lse) stays a bound (a row the exact m would skip may be recomputed,
///   never the reverse);
/// - δ = L − m̂, its log-sum-exp L as an offset from m̂, rounded to nearest: −ulp(m̂) ≤ δ ≤
///   log VBf, so L̂ = m̂ + δ is within 2^-9 of L and e^L̂ within 0.2% of e^L. L enters only the
///   dropped-mass estimate of the rows the bound skips (itself an approximation of mass
///   each entry of which is below ε).
struct BlockStatistics: @unchecked Sendable {
    private let storage: Scratch<Float16>
    private let base: UnsafeMutablePointer<Float16>
    /// Forward blocks per row.
    let blocks: Int

    /// Room for `rows` rows of `blocks` forward blocks.
    init(rows: Int, blocks: Int, policy: Placement.Policy = .local) {
        storage = Scratch(count: 2 * rows * blocks, policy: policy)
        base = storage.base
        self.blocks = blocks
    }

    private init(storage: Scratch<Float16>, base: UnsafeMutablePointer<Float16>, blocks: Int) {
        self.storage = storage; self.base = base; self.blocks = blocks
    }

    /// The statistics from row `rows` on (the same storage).
    func advanced(by rows: Int) -> BlockStatistics {
        BlockStatistics(storage: storage, base: base + 2 * rows * blocks, blocks: blocks)
    }

    @inline(__always)
    func store<S: KernelScalar>(row i: Int, block f: Int, max m: S, logSum l: S) {
        var top = Float16(m)
        if S(top) < m { top = top.nextUp }
        base[2 * (i * blocks + f)] = top
        base[2 * (i * blocks + f) + 1] = top.isFinite ? Float16(l - S(top)) : 0
    }

    /// m̂ of row i over forward block f.
    @inline(__always)
    func bound<S: KernelScalar>(row i: Int, block f: Int) -> S { S(base[2 * (i * blocks + f)]) }

    /// L̂ = m̂ + δ of row i over forward block f.
    @inline(__always)
    func logSum<S: KernelScalar>(row i: Int, block f: Int) -> S {
        S(base[2 * (i * blocks + f)]) + S(base[2 * (i * blocks + f) + 1])
    }
}
