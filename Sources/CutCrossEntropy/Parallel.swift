// The pieces of a run split over processes, without any communication: the module
// CutCrossEntropyMPI moves the bytes (Docs/SCALING.md). Everything here also runs in one
// process, which is how the tests check the algebra without MPI.
//
// Vocabulary-parallel: P ranks hold contiguous shards of C's rows (and of the bias); E and
// the targets are the same on every rank. For active token i and shard r:
//     L_ir = log Σ_{v in shard r} e^(z_iv)                  (the shard's log-sum-exp)
//     T_ir = z_{i,t_i} if shard r holds t_i, else 0         (the target logit)
//     S_ir = Σ_{v in shard r} z_iv   (or Σ w_v·z_iv)        (label smoothing only)
// Every rank gathers every rank's (L, T, S) and combines them in rank order:
//     M_i   = max_r L_ir,
//     lse_i = M_i + log Σ_r e^(L_ir − M_i)                  (the single-process LSE merge),
//     z_{i,t_i} = Σ_r T_ir,   Σ_v z_iv = Σ_r S_ir,
// and then the loss formula of Forward.swift, with V and W of the whole vocabulary. The
// backward is the ordinary one on the shard's rows with that global lse: each rank gets its
// shard's rows of dC and dBias, and a partial dE_i = Σ_{v in shard r} dy_iv·C_v that the
// ranks sum. Nothing here or in the exchange grows with N x V: O(N) values per rank.
//
// Token-parallel: each rank holds some tokens and the whole C; each runs the ordinary call
// (`.sum` reduction, upstream g/M with M the global mean divisor) and the ranks sum dC,
// dBias and the loss. `TokenSlice` is what they tell each other first: how many tokens
// each holds (for M) and the sum of its active embeddings, so that every rank sorts the
// vocabulary by the global mean embedding, exactly as one process would.

import CCEKernels
#if canImport(Glibc)
import Glibc
#endif

/// One rank's contiguous share of the vocabulary: classes offset ..< offset + count of V.
public struct VocabularyShard: Sendable, Equatable, CustomStringConvertible {
    /// The first class this shard holds.
    public let offset: Int
    /// How many classes (rows of C) it holds; 0 is allowed (more ranks than classes).
    public let count: Int
    /// V: the classes of the whole vocabulary.
    public let vocabulary: Int

    /// Throws `CCEError.invalidShape` unless 0 ≤ offset, 0 ≤ count, offset + count ≤ V, V > 0.
    public init(offset: Int, count: Int, vocabulary: Int) throws {
        guard vocabulary > 0, offset >= 0, count >= 0, offset + count <= vocabulary else {
            throw CCEError.invalidShape("vocabulary shard [\(offset), \(offset + count)) does not fit in V = \(vocabulary)")
        }
        self.offset = offset; self.count = count; self.vocabulary = vocabulary
    }

    /// V classes split into `parts` contiguous shards in order, the first V mod parts of them
    /// one class larger: shard r starts at r·⌊V/P⌋ + min(r, V mod P). Some are empty when
    /// parts > V.
    public static func split(vocabulary: Int, parts: Int) -> [VocabularyShard] {
        precondition(vocabulary > 0 && parts > 0, "split: V and parts must be positive")
        let base = vocabulary / parts, extra = vocabulary % parts
        return (0..<parts).map { r in
            try! VocabularyShard(offset: r * base + min(r, extra), count: base + (r < extra ? 1 : 0),
                                 vocabulary: vocabulary)
        }
    }

    /// The classes this shard holds.
    public var range: Range<Int> { offset..<(offset + count) }
    func contains(_ v: Int) -> Bool { v >= offset && v < offset + count }

    public var description: String { "classes [\(offset), \(offset + count)) of \(vocabulary)" }
}

/// What one vocabulary shard contributes to the combined forward, per active token, in the
/// engine's scalar type (Float32, Float64 in the exact mode): the values the ranks exchange.
public struct ShardPartials: Sendable {
    /// L_i: log Σ over the shard's classes of e^(z_iv); −∞ for a shard with no classes.
    public let lse: Values
    /// z_{i,t_i} where the shard holds t_i, else 0 (so that the sum over shards is exact).
    public let targetLogit: Values
    /// Σ over the shard's classes of z_iv (with class weights, of w_v·z_iv); empty without
    /// label smoothing.
    public let logitSum: Values

    /// Active tokens covered.
    public var activeTokens: Int { lse.count }

    /// lse, targetLogit and logitSum end to end: one array to send.
    public var packed: Values {
        switch (lse, targetLogit, logitSum) {
        case (.float32(let a), .float32(let b), .float32(let c)): .float32(a + b + c)
        default: .float64(lse.doubles + targetLogit.doubles + logitSum.doubles)
        }
    }

    /// Unpacks `packed` (of another rank) for `activeTokens` tokens. Throws
    /// `CCEError.stateMismatch` when its length fits neither 2 nor 3 values per token.
    public init(packed: Values, activeTokens m: Int) throws {
        let count = packed.count
        guard count == 2 * m || (count == 3 * m && m > 0) else {
            throw CCEError.stateMismatch("\(count) shard values for \(m) active tokens (2 or 3 per token expected)")
        }
        func slice(_ k: Int) -> Values {
            switch packed {
            case .float32(let v): .float32(Array(v[(k * m)..<min(count, (k + 1) * m)]))
            case .float64(let v): .float64(Array(v[(k * m)..<min(count, (k + 1) * m)]))
            }
        }
        lse = slice(0); targetLogit = slice(1)
        logitSum = count == 3 * m ? slice(2) : (packed.float64 ? .float64([]) : .float32([]))
    }

    init(lse: Values, targetLogit: Values, logitSum: Values) {
        self.lse = lse; self.targetLogit = targetLogit; self.logitSum = logitSum
    }
}

/// One vocabulary shard's forward (`CutCrossEntropy.forward(…, shard:)`): its partials, to be
/// exchanged, and what `combine` needs to turn every rank's partials into the forward output.
public struct ShardForward: Sendable {
    public let shard: VocabularyShard
    /// This rank's contribution.
    public let partials: ShardPartials
    /// Active tokens (the same on every rank: E and the targets are).
    public var activeTokens: Int { problem.active }

    let problem: Problem          // the whole problem (targets in [0, V))
    let options: Options          // the caller's (class weights over the whole V)
    let shardProblem: Problem     // restricted to the shard
    let shardOptions: Options     // class weights of the shard's classes only
    let embeddings: Tensor, classifier: Tensor, bias: Tensor?   // for the overflow check's scan

    /// The forward output from every shard's partials, in rank order (this rank's among
    /// them): the global lse and loss, the same on every rank. Its `state` is this shard's,
    /// with the global lse, so `backward(output, embeddings:, classifier: shard rows, bias:
    /// shard entries)` gives this shard's rows of dC and dBias and its partial dE (which the
    /// ranks sum). The partials are combined in the order given, so every rank that passes
    /// them in rank order gets the same bits. Throws `CCEError.stateMismatch` when a
    /// partial's size or type does not fit, `CCEError.overflow` as `forward` does.
    public func combine(_ all: [ShardPartials]) throws -> ForwardOutput {
        let (lse, loss) = try combine(all, tokens: 0..<problem.active)
        return try output(lse: lse, loss: loss)
    }

    /// The global lse and loss of active tokens `tokens` from every shard's partials of them.
    func combine(_ all: [ShardPartials], tokens: Range<Int>) throws -> (lse: Values, loss: Values) {
        guard !all.isEmpty else { throw CCEError.stateMismatch("no shard partials to combine") }
        let exact = options.mode == .exact, smoothing = options.labelSmoothing > 0
        let m = tokens.count
        for (r, p) in all.enumerated() {
            let float64 = p.lse.float64
            guard p.activeTokens == m, p.targetLogit.count == m, p.logitSum.count == (smoothing ? m : 0), float64 == exact else {
                throw CCEError.stateMismatch("shard partials \(r) cover \(p.activeTokens) tokens "
                                             + "(\(float64 ? "Float64" : "Float32")), this forward has \(m) "
                                             + "(\(exact ? "Float64" : "Float32"))")
            }
        }
        return exact ? combined(Double.self, all, tokens: tokens) : combined(Float.self, all, tokens: tokens)
    }

    /// The forward output from every active token's global lse and loss; its state is this
    /// shard's with the global lse. Throws `CCEError.overflow` as `forward` does.
    func output(lse: Values, loss: Values) throws -> ForwardOutput {
        let result = EngineResult(lse: lse, loss: loss, dE: .float32([]), dC: .float32([]), dBias: nil,
                                  stats: FilterStatistics())
        let cce = CutCrossEntropy(options: options)
        try cce.checkFinite(problem, result, embeddings: embeddings, classifier: classifier, bias: bias)
        let whole = cce.forwardOutput(problem, options: options, result)
        let context = ShardContext(vocabulary: problem.v, weightTotal: options.classWeights.map(weightSum))
        return ForwardOutput(loss: whole.loss, tokenLosses: whole.tokenLosses, lse: whole.lse,
                             activeTokens: whole.activeTokens,
                             state: SavedState(problem: shardProblem, options: shardOptions, lse: lse, shard: context))
    }

    /// The combination of the file's header for active tokens `tokens`, in S (the loss
    /// formula exactly as Forward.block applies it); the log-sum-exp merge in Float64.
    func combined<S: KernelScalar>(_: S.Type, _ all: [ShardPartials], tokens: Range<Int>) -> (lse: Values, loss: Values) {
        let weights = options.classWeights.map { ClassWeights<S>($0, problem: problem, order: nil, forwardBlock: max(problem.v, 1)) }
        let definition = LossDefinition<S>(options, vocabulary: problem.v, weights: weights)
        let lses = all.map { $0.lse.doubles }, targets = all.map { $0.targetLogit.doubles }
        let sums = all.map { $0.logitSum.doubles }
        var lse = [S](repeating: 0, count: tokens.count), loss = [S](repeating: 0, count: tokens.count)
        for (k, i) in tokens.enumerated() {
            let top = lses.reduce(-Double.infinity) { max($0, $1[k]) }
            var total = 0.0
            for l in lses where l[k] != -.infinity { total += exp(l[k] - top) }   // an empty shard adds nothing; NaN stays NaN
            let l = S(top + log(total))
            var zt: S = 0, sum = 0.0
            for r in 0..<all.count {
                zt += S(targets[r][k])
                if definition.smoothing { sum += sums[r][k] }
            }
            lse[k] = l
            loss[k] = definition.tokenLoss(lse: l, targetLogit: zt, logitSum: S(sum), token: i)
        }
        return (values(lse), values(loss))
    }
}

/// What a token-parallel rank tells the others before a step (`CutCrossEntropy.tokenSlice`).
public struct TokenSlice: Sendable {
    /// Tokens of this rank that have a loss.
    public let activeTokens: Int
    /// What `.mean` divides by, summed over the ranks: the active tokens, or with class
    /// weights Σ_i w_{t_i} over them.
    public let meanDivisor: Double
    /// Σ_i e_i over the active tokens' embeddings (D values, Float64): summed over the
    /// ranks and divided by the total of `activeTokens`, the mean embedding every rank
    /// sorts the vocabulary by (`CutCrossEntropy.sortingMean`, `TokenSlice.mean`).
    public let embeddingSum: [Double]

    public init(activeTokens: Int, meanDivisor: Double, embeddingSum: [Double]) {
        self.activeTokens = activeTokens; self.meanDivisor = meanDivisor; self.embeddingSum = embeddingSum
    }

    /// The mean embedding over slices whose sums were added, as the vocabulary sort rounds
    /// it: Float32((Σ sum) · (1/Σ activeTokens)).
    public static func mean(sum: [Double], activeTokens: Int) -> [Float] {
        VocabularyOrder.mean(sum: sum, count: activeTokens)
    }
}

extension CutCrossEntropy {
    /// The forward of one vocabulary shard: `classifier` holds C's rows `shard.range` (and
    /// `bias` the same entries of the bias), `targets` are classes of the whole vocabulary
    /// and `options.classWeights`, if any, has V entries. Returns this shard's partials and
    /// what `ShardForward.combine` needs; no loss yet. Throws `CCEError` on bad input, as
    /// `forward` does (a shard may hold no classes).
    public func forward(embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor? = nil,
                        shard: VocabularyShard) throws -> ShardForward {
        let problem = try Problem(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                                  options: options, shard: shard)
        try checkSortingMean(problem)
        let shardProblem = problem.restricted(to: shard)
        var shardOptions = options
        shardOptions.classWeights = options.classWeights.map { Array($0[shard.range]) }
        let partials: ShardPartials
        let exact = options.mode == .exact, smoothing = options.labelSmoothing > 0
        if shard.count == 0 {
            partials = emptyShardPartials(problem)
        } else {
            var engineCall = call(.forward, shardProblem, options: shardOptions, upstream: [], savedLSE: nil)
            engineCall.shard = ShardContext(vocabulary: shard.vocabulary, weightTotal: options.classWeights.map(weightSum))
            let result = Engine.run(engineCall, embeddings: embeddings, classifier: classifier, bias: bias)
            let parts = result.shardParts!
            partials = ShardPartials(lse: result.lse, targetLogit: parts.targetLogit,
                                     logitSum: smoothing ? parts.logitSum : (exact ? .float64([]) : .float32([])))
        }
        return ShardForward(shard: shard, partials: partials, problem: problem, options: options,
                            shardProblem: shardProblem, shardOptions: shardOptions,
                            embeddings: embeddings, classifier: classifier, bias: bias)
    }

    /// Checks the inputs of one vocabulary shard's call as `forward(…, shard:)` would, and
    /// computes nothing: a run across processes agrees on the outcome before the exchange.
    public func validate(embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor? = nil,
                         shard: VocabularyShard) throws {
        let problem = try Problem(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                                  options: options, shard: shard)
        try checkSortingMean(problem)
    }

    /// Loss and gradients of one vocabulary shard in one call, the fused path, chunk by chunk
    /// of `resolvedExchangeChunk` active tokens: the shard's forward of the chunk, then `exchange` (which must
    /// return every rank's partials of the chunk in rank order, this rank's among them:
    /// CutCrossEntropyMPI gathers them), their combination (`ShardForward.combine`), then the
    /// chunk's backward with the global LSE, skipping the rows the forward's per-block maxima
    /// rule out (as `lossAndGradients` does; the chunk's maxima are kept meanwhile: 2·chunk·V/256
    /// values). Every rank calls `exchange` for the same token ranges, in the same order (a
    /// rank that holds no classes too). Returns the whole forward output, this shard's rows of
    /// dC and dBias and its partial dE, which the ranks sum. An error thrown by `exchange` or
    /// the combination is rethrown after the engine has stopped (no further chunk).
    ///
    /// With `destination` the gradients go into caller memory (Float32: dE of E's size, dC and
    /// dBias of the shard's; the exact mode rounds into it) and the returned ones are empty,
    /// as with `lossAndGradients(…, writingTo:)`.
    ///
    /// With `seeds` (which, like `exchange`, must return every rank's values in rank order),
    /// each chunk's `exchange` is preceded by one of `seeds`: every rank's LSE of each token over
    /// the first forward block of its sorted shard (−∞ from a rank that keeps no logits), which
    /// combined bound the global LSE from below, so that a rank keeps only the logits that can
    /// matter against the whole vocabulary (Engine.sweepExchanging): fewer than half as many on
    /// LM-like data at 4 ranks. Results stay within the same budgets (the kept logits move dE by
    /// entries below ε/16). Every rank passes `seeds` or none does; with one rank it bounds
    /// nothing new, so pass none.
    public func lossAndGradients(embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor? = nil,
                                 upstream: Upstream = .scalar(1), shard: VocabularyShard,
                                 writingTo destination: GradientDestination? = nil,
                                 seeds: (([Float]) throws -> [[Float]])? = nil,
                                 exchange: (ShardPartials) throws -> [ShardPartials]) throws -> (ForwardOutput, Gradients) {
        if let c = exchangeChunk, c < 1 { throw CCEError.invalidOption("exchangeChunk must be >= 1 (got \(c))") }
        let problem = try Problem(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                                  options: options, shard: shard)
        try checkSortingMean(problem)
        if let destination {
            let expected: [(String, Int, Int)] = [
                ("dE", problem.n * problem.d, destination.dE.count), ("dC", shard.count * problem.d, destination.dC.count),
                ("dBias", bias == nil ? 0 : shard.count, destination.dBias?.count ?? 0),
            ]
            for (name, want, have) in expected where want != have {
                throw CCEError.invalidShape("gradient buffer \(name) holds \(have) values, the shard's inputs need \(want)")
            }
        }
        let g = try problem.upstreamPerToken(upstream, reduction: options.reduction)
        let shardProblem = problem.restricted(to: shard)
        var shardOptions = options
        shardOptions.classWeights = options.classWeights.map { Array($0[shard.range]) }
        let context = ShardContext(vocabulary: shard.vocabulary, weightTotal: options.classWeights.map(weightSum))
        func part(_ partials: ShardPartials) -> ShardForward {
            ShardForward(shard: shard, partials: partials, problem: problem, options: options, shardProblem: shardProblem,
                         shardOptions: shardOptions, embeddings: embeddings, classifier: classifier, bias: bias)
        }
        let whole = part(emptyShardPartials(problem))
        let exact = options.mode == .exact
        var lse: [Double] = [], loss: [Double] = []
        lse.reserveCapacity(problem.active); loss.reserveCapacity(problem.active)
        /// One chunk's exchange and combination; its global LSE.
        func combineChunk(_ tokens: Range<Int>, _ partials: ShardPartials) throws -> Values {
            let (l, t) = try whole.combine(try exchange(partials), tokens: tokens)
            lse += l.doubles; loss += t.doubles
            return l
        }
        func assembled() throws -> ForwardOutput {
            try whole.output(lse: exact ? .float64(lse) : .float32(lse.map { Float($0) }),
                             loss: exact ? .float64(loss) : .float32(loss.map { Float($0) }))
        }
        /// One chunk's lower bounds of the global LSE from every rank's (Float32, rounded down).
        func combineSeeds(_ mine: [Float]) throws -> [Float] {
            guard let seeds else { return mine }
            let all = try seeds(mine)
            guard !all.isEmpty, all.allSatisfy({ $0.count == mine.count }) else {
                throw CCEError.stateMismatch("seed exchange: ranks sent \(all.map(\.count)) values, this rank \(mine.count)")
            }
            return (0..<mine.count).map { k in
                let top = all.reduce(-Float.infinity) { max($0, $1[k]) }
                guard top.isFinite else { return top }
                var total = 0.0
                for r in all where r[k] != -.infinity { total += exp(Double(r[k] - top)) }
                let bound = Double(top) + log(total), rounded = Float(bound)
                return Double(rounded) > bound ? rounded.nextDown : rounded
            }
        }
        if shard.count == 0 {
            destination?.dE.update(repeating: 0)
            // The same chunks and exchanges as the ranks that run the engine.
            let chunk = resolvedExchangeChunk
            for start in stride(from: 0, to: max(problem.active, 1), by: chunk) {
                let tokens = start..<min(problem.active, start + chunk)
                if seeds != nil { _ = try combineSeeds([Float](repeating: -.infinity, count: tokens.count)) }
                _ = try combineChunk(tokens, emptyShardPartials(problem, tokens: tokens.count))
            }
            return (try assembled(), emptyShardGradients(problem, bias: bias != nil, exact: exact))
        }
        var failure: Error? = nil
        // The engine calls `exchange` once per chunk, before it returns; nothing keeps it after.
        let result = withoutActuallyEscaping(combineChunk) { combineChunk in
            var engineCall = call(.fused, shardProblem, options: shardOptions, upstream: g, savedLSE: nil)
            engineCall.shard = context
            engineCall.destination = destination
            engineCall.exchange = { tokens, partials in
                do { return try combineChunk(tokens, partials) } catch {
                    failure = error
                    return nil
                }
            }
            if seeds != nil {
                engineCall.exchangeSeeds = { _, mine in
                    do { return try combineSeeds(mine) } catch {
                        failure = error
                        return nil
                    }
                }
            }
            return Engine.run(engineCall, embeddings: embeddings, classifier: classifier, bias: bias)
        }
        if let failure { throw failure }
        return (try assembled(), gradients(result))
    }

    /// The partials of a shard that holds no classes (for `tokens` active tokens, default
    /// all): L = −∞, T = 0, S = 0.
    func emptyShardPartials(_ problem: Problem, tokens: Int? = nil) -> ShardPartials {
        let exact = options.mode == .exact, m = tokens ?? problem.active
        func filled(_ x: Double) -> Values {
            exact ? .float64([Double](repeating: x, count: m)) : .float32([Float](repeating: Float(x), count: m))
        }
        return ShardPartials(lse: filled(-.infinity), targetLogit: filled(0),
                             logitSum: options.labelSmoothing > 0 ? filled(0) : (exact ? .float64([]) : .float32([])))
    }

    /// What this rank's tokens contribute before a token-parallel step (`TokenSlice`).
    /// Validates the inputs as `forward` does.
    public func tokenSlice(embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor? = nil) throws
        -> TokenSlice
    {
        let problem = try Problem(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                                  options: options)
        let sum = embeddings.withRawPointer { VocabularyOrder.embeddingSum(problem: problem, e: $0, threads: threadCount) }
        return TokenSlice(activeTokens: problem.active, meanDivisor: problem.meanDivisor, embeddingSum: sum)
    }

    /// Throws `CCEError.invalidOption` when `sortingMean` is set and does not have D values.
    func checkSortingMean(_ problem: Problem) throws {
        if let mean = sortingMean, mean.count != problem.d {
            throw CCEError.invalidOption("sortingMean has \(mean.count) values, the embeddings have D = \(problem.d)")
        }
    }

    /// Zero gradients of a shard that holds no classes: dE (n x D) zero, dC (0 x D), dBias (0).
    func emptyShardGradients(_ problem: Problem, bias: Bool, exact: Bool) -> Gradients {
        let dE: Values = exact ? .float64([Double](repeating: 0, count: problem.n * problem.d))
            : .float32([Float](repeating: 0, count: problem.n * problem.d))
        let empty: Values = exact ? .float64([]) : .float32([])
        return Gradients(dE: dE, dC: empty, dBias: bias ? empty : nil, filter: FilterStatistics())
    }
}

extension Values {
    var float64: Bool { if case .float64 = self { true } else { false } }
}

/// W = Σ_v w_v in Float64 (the sum ClassWeights takes of a whole vocabulary's weights).
func weightSum(_ w: [Float]) -> Double { w.reduce(0.0) { $0 + Double($1) } }

extension Tensor {
    /// The same values under another shape of as many elements (row-major: no copy of the
    /// layout, e.g. (B, T, D) as (B·T, D)). Throws `CCEError.invalidShape` when the counts differ.
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        try Tensor.check(count: count, shape: newShape)
        return Tensor(shape: newShape, elementType: elementType, storage: storage)
    }

    fileprivate init(shape: [Int], elementType: ElementType, storage: Storage) {
        self.shape = shape; self.elementType = elementType; self.storage = storage
    }

    /// A copy of rows `range` of the outermost dimension, in the same element type: a
    /// vocabulary shard of C or of the bias, or a token slice of E. Throws
    /// `CCEError.invalidShape` for a 0-d tensor or a range outside the first dimension.
    public func rows(_ range: Range<Int>) throws -> Tensor {
        guard let first = shape.first, range.lowerBound >= 0, range.upperBound <= first else {
            throw CCEError.invalidShape("rows \(range) of a tensor of shape \(shape)")
        }
        let inner = shape.dropFirst().reduce(1, *)
        let span = (range.lowerBound * inner)..<(range.upperBound * inner)
        let newShape = [range.count] + shape.dropFirst()
        switch storage {
        case .float32(let v): return try Tensor(Array(v[span]), shape: newShape)
        case .float16(let v): return try Tensor(Array(v[span]), shape: newShape)
        case .bfloat16(let v): return try Tensor(v[span].map { BFloat16(bitPattern: $0) }, shape: newShape)
        case .borrowed(let m):
            let p = m.base + span.lowerBound * elementType.size
            switch elementType {
            case .float32:
                return try Tensor(Array(UnsafeBufferPointer(start: p.assumingMemoryBound(to: Float.self), count: span.count)),
                                  shape: newShape)
            case .float16:
                return try Tensor(Array(UnsafeBufferPointer(start: p.assumingMemoryBound(to: Float16.self), count: span.count)),
                                  shape: newShape)
            case .bfloat16:
                return try Tensor(UnsafeBufferPointer(start: p.assumingMemoryBound(to: UInt16.self), count: span.count)
                                    .map { BFloat16(bitPattern: $0) }, shape: newShape)
            }
        }
    }
}

extension FilterStatistics {
    /// Nothing filtered, nothing swept (a rank that held no tokens).
    public static var none: FilterStatistics { FilterStatistics() }
}
