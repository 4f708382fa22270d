// The public entry points: forward, backward, and both in one call.
//
//     let cce = CutCrossEntropy(options: opts)
//     let fwd = try cce.forward(embeddings: E, classifier: C, targets: T)     // O(N) state
//     ...
//     let grads = try cce.backward(fwd, embeddings: E, classifier: C)         // dE, dC
//
// The forward keeps only what the backward needs (per-token LSE, the active tokens), so
// a training loop can call it now and the backward later. `lossAndGradients` does both.
//
// The facade validates (Problem), resolves the options (BackwardPolicy), calls the engine
// (Engine/Engine.swift: one door), and packages the results; nothing else.

import CCEKernels
import CCERuntime

/// The result of a forward call.
public struct ForwardOutput: Sendable {
    /// The reduced loss: mean or sum by `Options.reduction`; for `.none`, the sum.
    public let loss: Double
    /// One loss per target position (the targets' shape): 0 at ignored positions and at
    /// the first `shift` positions of each sequence.
    public let tokenLosses: Values
    /// One LSE per target position: the log-sum-exp of the logits of the row paired with
    /// that target; NaN where the position has no loss (ignored, or no paired row).
    public let lse: Values
    /// Tokens that have a loss.
    public let activeTokens: Int
    /// What the backward needs; O(N).
    public let state: SavedState
}

/// What the forward keeps for the backward: O(N) values, no logits.
public struct SavedState: Sendable {
    let problem: Problem
    let options: Options
    /// Per active token, in the engine's scalar type.
    let lse: Values
    /// When the forward was one vocabulary shard's (Parallel.swift): the whole vocabulary's
    /// V and W, which the backward's gradient formula needs; `problem` is then the shard's
    /// and `lse` the combined, global one.
    var shard: ShardContext? = nil
}

/// Upstream gradient of the reduced loss.
public enum Upstream: Sendable {
    /// For `.mean` and `.sum`: ∂L/∂loss.
    case scalar(Double)
    /// For `.none`: one value per target position (the targets' shape).
    case perToken([Float])
    /// For `.none`, the same in Float64: the exact mode then computes with these values as
    /// they are (`.perToken`'s are Float32 values; the other modes round each to Float32).
    case perTokenDouble([Double])
}

/// Gradients of the reduced loss (for `.none`, of Σ upstream·loss).
public struct Gradients: Sendable {
    /// E's shape.
    public let dE: Values
    /// (V, D).
    public let dC: Values
    /// (V), when a bias was given.
    public let dBias: Values?
    /// What gradient filtering skipped.
    public let filter: FilterStatistics

    /// Gradients assembled by a caller (CutCrossEntropyMPI sums the ranks' partial ones).
    public init(dE: Values, dC: Values, dBias: Values?, filter: FilterStatistics) {
        self.dE = dE; self.dC = dC; self.dBias = dBias; self.filter = filter
    }
}

/// Caller memory that `lossAndGradients(…, writingTo:)` fills with Float32 gradients (E's
/// and C's shapes, row-major). A training loop keeps it across steps, so no call allocates,
/// zeroes fresh pages of, or page-faults in the N·D + V·D gradient values; the engine
/// overwrites every element (the memory need not be zeroed).
public struct GradientDestination: @unchecked Sendable {
    /// n·D values (n = rows of E).
    public var dE: UnsafeMutableBufferPointer<Float>
    /// V·D values.
    public var dC: UnsafeMutableBufferPointer<Float>
    /// V values; required exactly when a bias is given.
    public var dBias: UnsafeMutableBufferPointer<Float>?
    /// The caller promises that dC holds zeros already (a buffer it keeps zeroed between
    /// calls): the engine does not zero it again. With `touchedRows` (V flags, false on entry)
    /// the engine sets the flag of every dC row it writes; the other rows stay zero. The C ABI
    /// uses both for its kept scratch (CCECABI/CABI.swift): it converts and re-zeroes only
    /// the rows written, instead of zeroing and converting all V x D values.
    package var dCIsZero = false
    package var touchedRows: UnsafeMutablePointer<Bool>? = nil

    public init(dE: UnsafeMutableBufferPointer<Float>, dC: UnsafeMutableBufferPointer<Float>,
                dBias: UnsafeMutableBufferPointer<Float>? = nil) {
        self.dE = dE; self.dC = dC; self.dBias = dBias
    }
}

/// Cut Cross-Entropy: the cross-entropy of a linear classifier and its gradients, computed
/// tile by tile without the N x V logit matrix.
public struct CutCrossEntropy: Sendable {
    public var options: Options
    /// Tile product backend: Swift SIMD (default) or OpenBLAS (Float32 modes only), for comparison.
    public var tileBackend: TileBackend = .swiftSIMD
    /// The tile kernel (nil: the fastest this CPU runs for the inputs' element types, or
    /// the one the environment's CCE_KERNEL names). A kernel the CPU cannot run, or one for
    /// other element types, is ignored. `tileKernel(for:classifier:)` says which one runs.
    public var tileKernel: TileKernel? = nil
    /// The mean embedding ē to sort the vocabulary by (VocabularyOrder.swift), D values; nil:
    /// the mean of the call's own active rows. A token-parallel rank (CutCrossEntropyMPI)
    /// sets the mean over every rank's tokens (`TokenSlice.embeddingSum`), so that each rank
    /// sweeps the vocabulary in the order one process would. Only the order depends on it.
    public var sortingMean: [Float]? = nil
    /// Active tokens per exchange in a vocabulary shard's fused call (`lossAndGradients(…,
    /// shard:, exchange:)`, what `VocabularyParallel` runs): the shard's forward of so many
    /// tokens, the exchange of their partials, their backward. nil: CCE_EXCHANGE_CHUNK from
    /// the environment, else `defaultExchangeChunk(threads:)`. Results do not depend on it; a
    /// rank's memory does (the chunk's saved logits and block statistics: about 6 KB a token on
    /// LM-like data), and so does the number of exchanges a step. Every rank of a step must use
    /// the same value (`VocabularyParallel` takes rank 0's).
    public var exchangeChunk: Int? = nil

    public init(options: Options = Options()) { self.options = options }

    /// The exchange chunk a call uses: `exchangeChunk`, CCE_EXCHANGE_CHUNK, or the default for
    /// `options.threads` (every CPU when nil).
    public var resolvedExchangeChunk: Int {
        exchangeChunk ?? Engine.exchangeChunkOverride ?? Self.defaultExchangeChunk(threads: threadCount)
    }

    /// 1024 tokens for one or two threads, 4096 for more: enough token blocks for every worker
    /// in each chunk's forward and backward phases (about two a worker at 2 threads, four at 4),
    /// and no more, since a chunk's saved logits are held from its forward to its backward.
    /// Measured (Docs/SCALING.md), vocabulary-parallel at N = 4096, D = 1024, V = 128256, bf16:
    /// on a 2-CPU Zen 4, 2 ranks x 1 thread, 1024 against 4096: loss+grad 3.43 against
    /// 3.55-3.76 s, 6.5-7.4 MB a rank against 18.8-22.7 MB; on the 16-core host 4 ranks x 4
    /// threads, 4096 against 1024: 0.67-0.70 against 0.90-0.98 s; later, with the seed
    /// exchange and the shard's call in segments and parts, 4096 / 2048 / 1024: 0.29-0.31 /
    /// 0.33 / 0.38-0.39 s at 11-13 / 7-9 / 5-7 MB a rank (one process of 16 threads 0.27-0.29 s;
    /// in a slower launch 4096 / 2048 0.36-0.43 / 0.37-0.42 s against 0.31-0.40 s).
    public static func defaultExchangeChunk(threads: Int) -> Int { threads <= 2 ? 1024 : 4096 }

    /// The tile plan a call with these sizes, on E and C stored as `storage`, would use.
    public func plan(tokens: Int, dim: Int, vocab: Int, storage: ElementType = .float32) -> TilePlan {
        let kernel = tileKernel(embeddings: storage, classifier: storage)
        return TilePlan(tokens: tokens, dim: dim, vocab: vocab, threads: threadCount,
                        scalarBytes: options.mode == .exact ? 8 : 4, tokenBytes: kernel.tokenBytes,
                        rowGroup: TilePlan.rowGroup(kernel: kernel, compensated: options.mode.compensated),
                        denseBackward: BackwardPolicy(options, embeddings: storage, classifier: storage).densePrediction)
    }

    /// The tile plan of a fused call (lossAndGradients) that keeps logits for its backward, with
    /// these sizes and storage: fewer rows in flight than `plan` (TilePlan.limitingRowsInFlight).
    public func fusedPlan(tokens: Int, dim: Int, vocab: Int, storage: ElementType = .float32) -> TilePlan {
        let kernel = tileKernel(embeddings: storage, classifier: storage)
        let copies = options.mode == .exact
            ? Workspace<Double>.copiesTokens(eInPlace: false, backend: tileBackend, kernel: kernel)
            : Workspace<Float>.copiesTokens(eInPlace: storage == .float32, backend: tileBackend, kernel: kernel)
        return plan(tokens: tokens, dim: dim, vocab: vocab, storage: storage)
            .limitingRowsInFlight(tokens: tokens, copiesTokens: copies)
    }

    var threadCount: Int { options.threads ?? Workers.availableCPUs }

    /// The tile kernel a call on E and C stored as these types runs (for reports).
    public func tileKernel(embeddings: ElementType, classifier: ElementType) -> TileKernel {
        options.mode == .exact
            ? chooseTileKernel(Double.self, eType: embeddings, cType: classifier, backend: tileBackend)
            : chooseTileKernel(Float.self, eType: embeddings, cType: classifier, backend: tileBackend,
                               requested: tileKernel)
    }

    /// Loss and per-token LSE. Throws `CCEError` on bad input, and `CCEError.overflow` when
    /// finite inputs overflow the mode's Float32 arithmetic; nothing is returned then.
    public func forward(embeddings: Tensor, classifier: Tensor, targets: Targets,
                        bias: Tensor? = nil) throws -> ForwardOutput {
        let problem = try Problem(embeddings: embeddings, classifier: classifier, targets: targets,
                                  bias: bias, options: options)
        try checkSortingMean(problem)
        let result = Engine.run(call(.forward, problem, options: options, upstream: [], savedLSE: nil),
                                embeddings: embeddings, classifier: classifier, bias: bias)
        try checkFinite(problem, result, embeddings: embeddings, classifier: classifier, bias: bias)
        return forwardOutput(problem, options: options, result)
    }

    /// dE, dC (and dBias) for the forward `saved`, whose inputs must be passed again.
    /// The forward's options apply (this value's `tileBackend` too).
    public func backward(_ saved: ForwardOutput, embeddings: Tensor, classifier: Tensor,
                         bias: Tensor? = nil, upstream: Upstream = .scalar(1)) throws -> Gradients {
        let problem = saved.state.problem
        guard embeddings.shape == problem.eShape, embeddings.elementType == problem.eType else {
            throw CCEError.stateMismatch("embeddings are \(embeddings.shape) \(embeddings.elementType), the forward saw \(problem.eShape) \(problem.eType)")
        }
        guard classifier.shape == [problem.v, problem.d], classifier.elementType == problem.cType else {
            throw CCEError.stateMismatch("classifier is \(classifier.shape) \(classifier.elementType), the forward saw \([problem.v, problem.d]) \(problem.cType)")
        }
        guard bias?.shape == (problem.biasType == nil ? nil : [problem.v]), bias?.elementType == problem.biasType else {
            throw CCEError.stateMismatch("bias \(bias.map { "\($0.shape)" } ?? "nil") differs from the forward's")
        }
        try checkSortingMean(problem)
        let forwardOptions = saved.state.options
        let g = try problem.upstreamPerToken(upstream, reduction: forwardOptions.reduction)
        if saved.state.shard != nil && problem.v == 0 {
            return emptyShardGradients(problem, bias: bias != nil, exact: forwardOptions.mode == .exact)
        }
        var backwardCall = call(.backward, problem, options: forwardOptions, upstream: g, savedLSE: saved.state.lse)
        backwardCall.shard = saved.state.shard
        let result = Engine.run(backwardCall, embeddings: embeddings, classifier: classifier, bias: bias)
        return gradients(result)
    }

    /// The order in which the CPU engine sweeps the vocabulary: `order[k]` is the class at
    /// sorted position k (by average logit C_v · ē + b_v over the active tokens, largest
    /// first; the identity when `sortVocabulary` is off, and where the engine expects to keep
    /// nearly every entry: `BackwardPolicy.sortVocabulary`). VocabularyOrder.swift.
    public func vocabularyOrder(embeddings: Tensor, classifier: Tensor, targets: Targets,
                                bias: Tensor? = nil) throws -> [Int] {
        let p = try Problem(embeddings: embeddings, classifier: classifier, targets: targets,
                            bias: bias, options: options)
        let b = bias?.floats()
        return embeddings.withRawPointer { ep in
            classifier.withRawPointer { cp in
                var unreported = PhaseTrace()
                return VocabularyOrder.make(problem: p, e: ep, c: cp, bias: b,
                                            sorted: BackwardPolicy(options, embeddings: p.eType, classifier: p.cType).sortVocabulary,
                                            trace: &unreported)
                    .order.map(Int.init)
            }
        }
    }

    /// Forward and backward in one call, faster than `forward` then `backward`: the forward's
    /// per-block maxima let the backward skip rows whose gradient would be filtered without
    /// recomputing their logits, and it reads the logits it kept (`Options.savedLogitsPerRow`).
    /// The loss, LSE, dC and dBias are the split calls' bits; so is dE where no dropped mass is
    /// put back (exact mode, no filter, or `filterCorrection` off with no saved logits). Else
    /// the two estimate the dropped mass at different granularities (per forward block here,
    /// per backward block there) and their dE agree to within the mode's error budget.
    public func lossAndGradients(embeddings: Tensor, classifier: Tensor, targets: Targets,
                                 bias: Tensor? = nil, upstream: Upstream = .scalar(1)) throws
        -> (ForwardOutput, Gradients)
    {
        let problem = try Problem(embeddings: embeddings, classifier: classifier, targets: targets,
                                  bias: bias, options: options)
        let (forward, result) = try fused(problem, embeddings, classifier, bias, upstream, into: nil)
        return (forward, gradients(result))
    }

    /// `lossAndGradients` writing the gradients into caller memory (Float32, reused across
    /// calls) instead of returning new arrays; the exact mode computes in Float64 and rounds
    /// into it. Throws `CCEError.invalidShape` if a buffer's size does not match, before
    /// anything is written. The returned statistics are the call's filter statistics.
    public func lossAndGradients(embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor? = nil,
                                 upstream: Upstream = .scalar(1),
                                 writingTo destination: GradientDestination) throws -> (ForwardOutput, FilterStatistics) {
        let problem = try Problem(embeddings: embeddings, classifier: classifier, targets: targets,
                                  bias: bias, options: options)
        let expected: [(String, Int, Int?)] = [
            ("dE", problem.n * problem.d, destination.dE.count), ("dC", problem.v * problem.d, destination.dC.count),
            ("dBias", bias == nil ? 0 : problem.v, destination.dBias?.count ?? 0),
        ]
        for (name, want, have) in expected where want != have {
            throw CCEError.invalidShape("gradient buffer \(name) holds \(have ?? 0) values, the inputs need \(want)")
        }
        let (forward, result) = try fused(problem, embeddings, classifier, bias, upstream, into: destination)
        return (forward, result.stats)
    }

    /// `lossAndGradients` into arrays a training loop keeps across steps: each is resized
    /// to its gradient's size only when it has another size, then overwritten in place.
    public func lossAndGradients(embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor? = nil,
                                 upstream: Upstream = .scalar(1), dE: inout [Float], dC: inout [Float],
                                 dBias: inout [Float]) throws -> (ForwardOutput, FilterStatistics) {
        // Validated first, so that bad input leaves the arrays as they were.
        let p = try Problem(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias, options: options)
        if dE.count != p.n * p.d { dE = [Float](repeating: 0, count: p.n * p.d) }
        if dC.count != p.v * p.d { dC = [Float](repeating: 0, count: p.v * p.d) }
        let biasCount = bias == nil ? 0 : p.v
        if dBias.count != biasCount { dBias = [Float](repeating: 0, count: biasCount) }
        // Sized to the validated problem above, so the destination needs no second check.
        return try dE.withUnsafeMutableBufferPointer { dE in
            try dC.withUnsafeMutableBufferPointer { dC in
                try dBias.withUnsafeMutableBufferPointer { dBias in
                    let destination = GradientDestination(dE: dE, dC: dC, dBias: bias == nil ? nil : dBias)
                    let (forward, result) = try fused(p, embeddings, classifier, bias, upstream, into: destination)
                    return (forward, result.stats)
                }
            }
        }
    }

    /// The fused call on a validated problem: gradients into `destination` when given (the
    /// result's gradients are then empty), else into new arrays.
    func fused(_ problem: Problem, _ embeddings: Tensor, _ classifier: Tensor, _ bias: Tensor?, _ upstream: Upstream,
               into destination: GradientDestination?) throws -> (ForwardOutput, EngineResult) {
        try checkSortingMean(problem)
        let g = try problem.upstreamPerToken(upstream, reduction: options.reduction)
        var engineCall = call(.fused, problem, options: options, upstream: g, savedLSE: nil)
        engineCall.destination = destination
        let result = Engine.run(engineCall, embeddings: embeddings, classifier: classifier, bias: bias)
        try checkFinite(problem, result, embeddings: embeddings, classifier: classifier, bias: bias)
        return (forwardOutput(problem, options: options, result), result)
    }

    // MARK: - Resolving and packaging

    /// Throws unless every active token's LSE and loss are finite: `CCEError.nonFinite` naming
    /// the first NaN or infinity in the inputs when there is one (unchecked inputs), otherwise
    /// `CCEError.overflow` (finite inputs whose arithmetic overflowed in this mode). O(N) when
    /// all is well; the inputs are scanned only on the way to an error.
    func checkFinite(_ problem: Problem, _ result: EngineResult, embeddings: Tensor, classifier: Tensor,
                     bias: Tensor?) throws {
        guard let i = (0..<problem.active).first(where: { !result.lse[$0].isFinite || !result.loss[$0].isFinite }) else {
            return
        }
        try Problem.checkFinite(embeddings, "embeddings")
        try Problem.checkFinite(classifier, "classifier")
        if let bias { try Problem.checkFinite(bias, "bias") }
        throw CCEError.overflow(position: Int(problem.positions[i]), mode: options.mode)
    }

    /// The engine call for `pass` with `options` resolved for the problem's element types.
    func call(_ pass: Pass, _ problem: Problem, options: Options, upstream: [Double], savedLSE: Values?) -> EngineCall {
        EngineCall(pass: pass, problem: problem, options: options,
                   policy: BackwardPolicy(options, embeddings: problem.eType, classifier: problem.cType),
                   threads: options.threads ?? Workers.availableCPUs, backend: tileBackend, kernel: tileKernel,
                   upstream: upstream, savedLSE: savedLSE, sortingMean: sortingMean,
                   exchangeChunk: resolvedExchangeChunk)
    }

    /// Per-token results scattered to their target positions, and the reduced loss.
    func forwardOutput(_ problem: Problem, options: Options, _ result: EngineResult) -> ForwardOutput {
        let positions = problem.targetShape.reduce(1, *)
        var tokenLosses = [Double](repeating: 0, count: positions)
        var lse = [Double](repeating: .nan, count: positions)
        var total = 0.0
        for i in 0..<problem.active {
            let position = Int(problem.positions[i])
            tokenLosses[position] = result.loss[i]
            lse[position] = result.lse[i]
            total += result.loss[i]
        }
        let float32 = if case .float32 = result.lse { true } else { false }
        return ForwardOutput(loss: problem.reduce(total: total, options.reduction),
                             tokenLosses: float32 ? .float32(tokenLosses.map { Float($0) }) : .float64(tokenLosses),
                             lse: float32 ? .float32(lse.map { Float($0) }) : .float64(lse),
                             activeTokens: problem.active,
                             state: SavedState(problem: problem, options: options, lse: result.lse))
    }

    func gradients(_ result: EngineResult) -> Gradients {
        Gradients(dE: result.dE, dC: result.dC, dBias: result.dBias, filter: result.stats)
    }
}
