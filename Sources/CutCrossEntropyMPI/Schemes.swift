// Vocabulary-parallel and token-parallel CCE over a Communicator (Docs/SCALING.md).
//
// Vocabulary-parallel (`VocabularyParallel`): rank r holds C's rows of shard r of
// `VocabularyShard.split(V, P)` (and those bias entries); E and the targets are the same on
// every rank. A step moves, per rank:
//   forward   every rank's per-token partials (L, T, and S with label smoothing): an
//             all-gather of 2 or 3 values per active token (CutCrossEntropy/Parallel.swift
//             gives the combination); in the Float32 modes' fused step, before it, the seed
//             exchange: an all-gather of 1 value per active token (each rank's LSE over its
//             first forward block: a lower bound of the global LSE for the saved logits);
//   backward  the ordered sum of the N x D partial dE (Communicator.orderedSum).
// dC and dBias stay where they are: each rank has its shard's rows.
//
// Token-parallel (`TokenParallel`): rank r holds some tokens (rows of E with their targets)
// and the whole C. A step moves the TokenSlice of each rank first (its token count, mean
// divisor and the D-value sum of its active embeddings: so `mean` divides by the global
// count and every rank sorts the vocabulary by the global mean), one value per rank for the
// loss, and the ordered sum of the V x D dC (and of dBias).
//
// Every sum across ranks is added in rank order, so results are bitwise the same from run
// to run for a fixed number of ranks (and any thread counts: the engine's own results do not
// depend on them). Each step first checks that the ranks agree on the configuration (sizes,
// element types, options; the targets' and, for vocabulary-parallel, E's contents by a
// checksum), and every local computation that can fail runs inside `agree`: a bad
// configuration, or a rank whose inputs are wrong, gives the same error on every rank.

import CutCrossEntropy
import Foundation

/// A step's forward across the ranks.
public struct ParallelForward: Sendable {
    /// The loss of the whole step (every token, the whole vocabulary), reduced as the
    /// options say (`.none`: the sum); the same bits on every rank.
    public let loss: Double
    /// Vocabulary-parallel: the whole step's output (every token's loss and global LSE, the
    /// same on every rank); its state backs `VocabularyParallel.backward`. Token-parallel:
    /// this rank's tokens' output (losses and LSE at its target positions; its `loss` is their
    /// sum), nil on a rank that holds no tokens.
    public let output: ForwardOutput?
    /// Active tokens over every rank.
    public let activeTokens: Int
    /// Token-parallel: what `.mean` divides by over every rank, and the mean embedding.
    let meanDivisor: Double
    let sortingMean: [Float]?
}

/// CCE with the vocabulary split over the ranks.
public struct VocabularyParallel: Sendable {
    public let communicator: Communicator
    /// V of the whole vocabulary.
    public let vocabulary: Int
    /// Whether each step checks, by a checksum, that E and the targets are the same on every
    /// rank (one pass over E; on by default).
    public var checksInputs = true

    public init(_ communicator: Communicator, vocabulary: Int) {
        self.communicator = communicator; self.vocabulary = vocabulary
    }

    /// This rank's classes: shard `rank` of `VocabularyShard.split(V, P)`.
    public var shard: VocabularyShard {
        VocabularyShard.split(vocabulary: vocabulary, parts: communicator.size)[communicator.rank]
    }

    /// The forward: `classifier` holds this rank's rows of C (`shard.range`), `bias` the same
    /// entries; E, the targets and the options (class weights over the whole V) as for one
    /// process and the same on every rank. Every rank gets the whole step's output.
    public func forward(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets,
                        bias: Tensor? = nil) throws -> ParallelForward {
        try checkConfiguration(cce, embeddings: embeddings, classifier: classifier, targets: targets, bias: bias)
        let shard = shard
        let part = try communicator.agree {
            try cce.forward(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias, shard: shard)
        }
        let all = try gatherPartials(part.partials)
        // Every rank combines the same values in the same order: the same output, or the
        // same overflow error, everywhere.
        let output = try communicator.agree { try part.combine(all) }
        return ParallelForward(vocabulary: output)
    }

    /// Every rank's partials, in rank order.
    func gatherPartials(_ mine: ShardPartials) throws -> [ShardPartials] {
        switch mine.packed {
        case .float32(let v): try communicator.allGather(v).map { try ShardPartials(packed: .float32($0), activeTokens: mine.activeTokens) }
        case .float64(let v): try communicator.allGather(v).map { try ShardPartials(packed: .float64($0), activeTokens: mine.activeTokens) }
        }
    }

    /// The backward of `forward`: this rank's rows of dC and dBias, and the whole dE (the
    /// ranks' partial dE summed in rank order; the same on every rank).
    public func backward(_ cce: CutCrossEntropy, _ forward: ParallelForward, embeddings: Tensor, classifier: Tensor,
                         bias: Tensor? = nil, upstream: Upstream = .scalar(1)) throws -> Gradients {
        let g = try communicator.agree {
            guard let output = forward.output else { throw CCEError.stateMismatch("not a vocabulary-parallel forward") }
            return try cce.backward(output, embeddings: embeddings, classifier: classifier, bias: bias, upstream: upstream)
        }
        return Gradients(dE: try communicator.orderedSum(g.dE), dC: g.dC, dBias: g.dBias, filter: g.filter)
    }

    /// Forward and backward in one call: the engine's fused path on each shard (the rows the
    /// forward's block maxima rule out are not recomputed), with the partials exchanged
    /// between its forward and its backward. The same results as `forward` then `backward`,
    /// up to what the skipped rows' estimate changes (nothing without filtering).
    public func lossAndGradients(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets,
                                 bias: Tensor? = nil, upstream: Upstream = .scalar(1)) throws
        -> (ParallelForward, Gradients)
    {
        try checkStep(cce, embeddings: embeddings, classifier: classifier, targets: targets, bias: bias, destination: nil)
        if cce.options.mode == .exact {
            return try exactStep(cce, embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                                 upstream: upstream)
        }
        // Float32: into buffers this function owns, so that dE is summed in place.
        var buffers = GradientBuffers(embeddings: embeddings.count, classifier: shard.count * (classifier.shape.last ?? 0),
                                      bias: bias == nil ? nil : shard.count)
        let (forward, filter) = try buffers.with { destination in
            try float32Step(cce, embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                            upstream: upstream, into: destination)
        }
        return (forward, buffers.gradients(filter: filter))
    }

    /// The same step with the gradients written into caller memory, as a training loop keeps
    /// them from step to step (Float32; the exact mode sums in Float64 and rounds into it):
    /// `destination.dE`, of E's size, receives the whole dE (the ranks' partials summed in
    /// rank order, in place), `dC` and `dBias` this rank's rows. Returns the step's output and
    /// the filter's statistics. A buffer of the wrong size on any rank throws
    /// `CCEError.invalidShape` on every rank, before anything is computed. Without it, every
    /// step allocates and first touches a rank's dE and dC anew (148 MB a rank at N = 4096,
    /// D = 1024 and a quarter of V = 128256).
    public func lossAndGradients(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets,
                                 bias: Tensor? = nil, upstream: Upstream = .scalar(1),
                                 writingTo destination: GradientDestination) throws
        -> (ParallelForward, FilterStatistics)
    {
        try checkStep(cce, embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                      destination: destination)
        guard cce.options.mode == .exact else {
            return try float32Step(cce, embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                                   upstream: upstream, into: destination)
        }
        let (forward, g) = try exactStep(cce, embeddings: embeddings, classifier: classifier, targets: targets,
                                         bias: bias, upstream: upstream)
        for (source, target) in [(g.dE, destination.dE), (g.dC, destination.dC)] {
            for (i, x) in source.doubles.enumerated() { target[i] = Float(x) }
        }
        if let b = g.dBias, let target = destination.dBias { for (i, x) in b.doubles.enumerated() { target[i] = Float(x) } }
        return (forward, g.filter)
    }

    /// A fused step's checks, agreed by every rank before the engine runs: the configuration,
    /// the inputs and, with `destination`, its buffers' sizes. After them every rank reaches
    /// the exchange (the engine itself does not fail), and the combination gives every rank
    /// the same output or the same error; a rank that threw in the engine before the exchange
    /// would leave the others waiting in it.
    func checkStep(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor?,
                   destination: GradientDestination?) throws {
        try checkConfiguration(cce, embeddings: embeddings, classifier: classifier, targets: targets, bias: bias)
        let shard = shard
        try communicator.agree {
            try cce.validate(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias, shard: shard)
            guard let destination else { return }
            let sizes = [("dE", embeddings.count, destination.dE.count),
                         ("dC", shard.count * (classifier.shape.last ?? 0), destination.dC.count),
                         ("dBias", bias == nil ? 0 : shard.count, destination.dBias?.count ?? 0)]
            for (name, want, have) in sizes where want != have {
                throw CCEError.invalidShape("gradient buffer \(name) holds \(have) values, the shard's inputs need \(want)")
            }
        }
    }

    /// The exact mode's checked step: Float64 gradients, dE summed over the ranks in Float64.
    func exactStep(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor?,
                   upstream: Upstream) throws -> (ParallelForward, Gradients) {
        let shard = shard, cce = try agreedChunk(cce)
        let (output, g) = try communicator.agree {
            try cce.lossAndGradients(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                                     upstream: upstream, shard: shard, exchange: gatherPartials)
        }
        return (ParallelForward(vocabulary: output),
                Gradients(dE: try communicator.orderedSum(g.dE), dC: g.dC, dBias: g.dBias, filter: g.filter))
    }

    /// The Float32 modes' checked step into `destination`, dE summed over the ranks in place;
    /// with more than one rank each chunk's partials are preceded by the seed exchange (a lower
    /// bound of the global LSE, one Float32 a token) that tightens what a rank's forward keeps.
    func float32Step(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor?,
                     upstream: Upstream, into destination: GradientDestination) throws -> (ParallelForward, FilterStatistics) {
        let shard = shard, cce = try agreedChunk(cce)
        let (output, g) = try communicator.agree {
            try cce.lossAndGradients(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                                     upstream: upstream, shard: shard, writingTo: destination,
                                     seeds: communicator.size > 1 ? { try self.communicator.allGather($0) } : nil,
                                     exchange: gatherPartials)
        }
        try communicator.orderedSum(destination.dE)
        return (ParallelForward(vocabulary: output), g.filter)
    }

    /// `cce` with rank 0's exchange chunk (its `resolvedExchangeChunk`, which follows its own
    /// thread count): every rank must exchange the same token ranges, and ranks may run
    /// different thread counts.
    func agreedChunk(_ cce: CutCrossEntropy) throws -> CutCrossEntropy {
        var agreed = cce
        agreed.exchangeChunk = try communicator.broadcast([cce.resolvedExchangeChunk])[0]
        return agreed
    }

    func checkConfiguration(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets,
                            bias: Tensor?) throws {
        var fields: [(String, String)] = [
            ("scheme", "vocabulary-parallel"), ("V", "\(vocabulary)"),
            ("E", "\(embeddings.shape) \(embeddings.elementType)"),
            ("C", "D = \(classifier.shape.last ?? 0), \(classifier.elementType)"),
            ("bias", bias.map { "\($0.elementType)" } ?? "none"),
            ("targets", "\(targets.shape), checksum \(checksum(targets.values))"),
        ] + describe(cce)
        if checksInputs { fields.append(("E's values", "checksum \(checksum(embeddings))")) }
        try communicator.checkSame(fields)
    }
}

/// CCE with the tokens split over the ranks.
public struct TokenParallel: Sendable {
    public let communicator: Communicator
    /// Whether each step checks, by a checksum, that C (and the bias) are the same on every
    /// rank (one pass over C; on by default).
    public var checksInputs = true

    public init(_ communicator: Communicator) { self.communicator = communicator }

    /// The forward: `embeddings` and `targets` are this rank's tokens (whole sequences when
    /// `options.shift` > 0; a rank may hold none: E of shape (0, D)), `classifier`, `bias`
    /// and the options the whole ones, the same on every rank.
    public func forward(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets,
                        bias: Tensor? = nil) throws -> ParallelForward {
        let (local, step) = try prepare(cce, embeddings: embeddings, classifier: classifier, targets: targets, bias: bias)
        let output = try communicator.agree { () -> ForwardOutput? in
            guard hasTokens(embeddings) else { return nil }
            return try local.forward(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias)
        }
        return try finish(step, output)
    }

    /// The backward of `forward`: this rank's rows of dE, and the whole dC and dBias (the
    /// ranks' partial ones summed in rank order; the same on every rank). `upstream`: a
    /// scalar for `.mean` and `.sum`; for `.none`, one value per target position of this
    /// rank's targets.
    public func backward(_ cce: CutCrossEntropy, _ forward: ParallelForward, embeddings: Tensor, classifier: Tensor,
                         bias: Tensor? = nil, upstream: Upstream = .scalar(1)) throws -> Gradients {
        let local = try localEngine(cce, sortingMean: forward.sortingMean)
        let g = try communicator.agree { () -> Gradients in
            guard let output = forward.output else { return try noTokens(classifier: classifier, bias: bias, mode: cce.options.mode) }
            return try local.backward(output, embeddings: embeddings, classifier: classifier, bias: bias,
                                      upstream: localUpstream(cce, upstream, divisor: forward.meanDivisor))
        }
        return try summed(g)
    }

    /// Forward and backward in one call (the engine's fused path on each rank).
    public func lossAndGradients(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets,
                                 bias: Tensor? = nil, upstream: Upstream = .scalar(1)) throws
        -> (ParallelForward, Gradients)
    {
        let (local, step) = try prepare(cce, embeddings: embeddings, classifier: classifier, targets: targets, bias: bias)
        let localUp = localUpstream(cce, upstream, divisor: step.meanDivisor)
        if cce.options.mode == .exact {
            let (output, g) = try communicator.agree { () -> (ForwardOutput?, Gradients) in
                guard hasTokens(embeddings) else {
                    return (nil, try noTokens(classifier: classifier, bias: bias, mode: cce.options.mode))
                }
                return try local.lossAndGradients(embeddings: embeddings, classifier: classifier, targets: targets,
                                                  bias: bias, upstream: localUp)
            }
            return (try finish(step, output), try summed(g))
        }
        // Float32: into buffers this function owns (zero where the rank holds no tokens), so
        // that dC and dBias are summed in place.
        var buffers = GradientBuffers(embeddings: embeddings.count, classifier: classifier.count, bias: bias?.count)
        let (output, filter) = try communicator.agree { () -> (ForwardOutput?, FilterStatistics) in
            guard hasTokens(embeddings) else { return (nil, .none) }
            return try buffers.with { destination in
                try local.lossAndGradients(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias,
                                           upstream: localUp, writingTo: destination)
            }
        }
        try communicator.orderedSum(&buffers.dC)
        if buffers.dBias != nil { try communicator.orderedSum(&buffers.dBias!) }
        return (try finish(step, output), buffers.gradients(filter: filter))
    }

    // MARK: - The steps

    /// What every rank knows before its own work: the global token count, mean divisor and
    /// mean embedding.
    struct Step { let activeTokens: Int; let meanDivisor: Double; let mean: [Float]; let reduction: Reduction }

    /// Checks the configuration, exchanges the ranks' TokenSlices, and returns the engine
    /// each rank runs (`.sum` for `.mean` and `.sum`, sorting by the global mean).
    func prepare(_ cce: CutCrossEntropy, embeddings: Tensor, classifier: Tensor, targets: Targets, bias: Tensor?) throws
        -> (CutCrossEntropy, Step)
    {
        let d = classifier.shape.last ?? 0
        var fields: [(String, String)] = [
            ("scheme", "token-parallel"), ("C", "\(classifier.shape) \(classifier.elementType)"),
            ("E", "rank \(embeddings.shape.count), D = \(embeddings.shape.last ?? 0), \(embeddings.elementType)"),
            ("bias", bias.map { "\($0.shape) \($0.elementType)" } ?? "none"),
        ] + describe(cce)
        if checksInputs {
            fields.append(("C's values", "checksum \(checksum(classifier))"))
            if let bias { fields.append(("bias values", "checksum \(checksum(bias))")) }
        }
        try communicator.checkSame(fields)
        let slice = try communicator.agree { () -> TokenSlice in
            guard hasTokens(embeddings) else {
                guard embeddings.shape.last == d else {
                    throw CCEError.invalidShape("embeddings \(embeddings.shape) have no tokens and not D = \(d)")
                }
                return TokenSlice(activeTokens: 0, meanDivisor: 0, embeddingSum: [Double](repeating: 0, count: d))
            }
            return try cce.tokenSlice(embeddings: embeddings, classifier: classifier, targets: targets, bias: bias)
        }
        let all = try communicator.allGather([Double(slice.activeTokens), slice.meanDivisor] + slice.embeddingSum)
        var active = 0, divisor = 0.0
        var sum = [Double](repeating: 0, count: d)
        for part in all {
            active += Int(part[0]); divisor += part[1]
            for k in 0..<d { sum[k] += part[2 + k] }
        }
        let step = Step(activeTokens: active, meanDivisor: divisor, mean: TokenSlice.mean(sum: sum, activeTokens: active),
                        reduction: cce.options.reduction)
        return (try localEngine(cce, sortingMean: step.mean), step)
    }

    /// The engine a rank runs: `.sum` in place of `.mean` (the division is by the global
    /// divisor, in `localUpstream` and `finish`), sorting by the global mean embedding.
    func localEngine(_ cce: CutCrossEntropy, sortingMean: [Float]?) throws -> CutCrossEntropy {
        var local = cce
        if local.options.reduction == .mean { local.options.reduction = .sum }
        local.sortingMean = sortingMean
        return local
    }

    /// The upstream gradient of a rank's `.sum` for the whole step's: g/M for `.mean` (0
    /// when M is 0, as one process has it).
    func localUpstream(_ cce: CutCrossEntropy, _ upstream: Upstream, divisor: Double) -> Upstream {
        guard cce.options.reduction == .mean, case .scalar(let g) = upstream else { return upstream }
        return .scalar(divisor > 0 ? g / divisor : 0)
    }

    /// The step's loss from every rank's sum, in rank order.
    func finish(_ step: Step, _ output: ForwardOutput?) throws -> ParallelForward {
        let totals = try communicator.allGather([output?.loss ?? 0])
        let total = totals.reduce(0.0) { $0 + $1[0] }
        let loss = step.reduction == .mean ? (step.activeTokens > 0 && step.meanDivisor > 0 ? total / step.meanDivisor : .nan)
            : total
        return ParallelForward(loss: loss, output: output, activeTokens: step.activeTokens, meanDivisor: step.meanDivisor,
                               sortingMean: step.mean)
    }

    /// dC and dBias summed over the ranks in rank order; dE stays this rank's.
    func summed(_ g: Gradients) throws -> Gradients {
        Gradients(dE: g.dE, dC: try communicator.orderedSum(g.dC), dBias: try g.dBias.map { try communicator.orderedSum($0) },
                  filter: g.filter)
    }

    /// A rank without tokens: zero gradients of C and the bias (it still takes part in the sums).
    func noTokens(classifier: Tensor, bias: Tensor?, mode: Mode) throws -> Gradients {
        func zeros(_ n: Int) -> Values { mode == .exact ? .float64(.init(repeating: 0, count: n)) : .float32(.init(repeating: 0, count: n)) }
        return Gradients(dE: zeros(0), dC: zeros(classifier.count), dBias: bias.map { zeros($0.count) }, filter: .none)
    }

    func hasTokens(_ embeddings: Tensor) -> Bool { embeddings.shape.dropLast().reduce(1, *) > 0 }
}

extension ParallelForward {
    /// A vocabulary-parallel step's: the whole output, on every rank.
    init(vocabulary output: ForwardOutput) {
        self.init(loss: output.loss, output: output, activeTokens: output.activeTokens, meanDivisor: 0, sortingMean: nil)
    }
}

/// Float32 gradients in arrays a scheme owns: the engine writes into them (`with`), and the
/// ordered sums then work on them in place, with no second copy of dE or dC.
struct GradientBuffers {
    var dE: [Float], dC: [Float], dBias: [Float]?

    /// Zeroed arrays of these sizes (dBias nil without a bias).
    init(embeddings: Int, classifier: Int, bias: Int?) {
        dE = [Float](repeating: 0, count: embeddings)
        dC = [Float](repeating: 0, count: classifier)
        dBias = bias.map { [Float](repeating: 0, count: $0) }
    }

    /// Runs `body` with the arrays as the engine's destination.
    mutating func with<R>(_ body: (GradientDestination) throws -> R) rethrows -> R {
        var bias = dBias ?? []
        let hasBias = dBias != nil
        dBias = nil   // `bias` holds the only reference while the engine writes
        defer { dBias = hasBias ? bias : nil }
        return try dE.withUnsafeMutableBufferPointer { dE in
            try dC.withUnsafeMutableBufferPointer { dC in
                try bias.withUnsafeMutableBufferPointer { b in
                    try body(GradientDestination(dE: dE, dC: dC, dBias: hasBias ? b : nil))
                }
            }
        }
    }

    func gradients(filter: FilterStatistics) -> Gradients {
        Gradients(dE: .float32(dE), dC: .float32(dC), dBias: dBias.map { .float32($0) }, filter: filter)
    }
}

// MARK: - Fingerprints

/// Every option that changes a result, as (name, value) fields for `Communicator.checkSame`.
func describe(_ cce: CutCrossEntropy) -> [(String, String)] {
    let o = cce.options
    return [
        ("ignoreIndex", "\(o.ignoreIndex)"), ("reduction", o.reduction.rawValue), ("softcap", "\(o.softcap.map { "\($0)" } ?? "off")"),
        ("shift", "\(o.shift)"), ("labelSmoothing", "\(o.labelSmoothing)"), ("zLoss", "\(o.zLoss)"),
        ("classWeights", o.classWeights.map { "\($0.count) values, checksum \(checksum($0))" } ?? "none"),
        ("filterEpsilon", "\(o.filterEpsilon)"), ("sortVocabulary", "\(o.sortVocabulary)"), ("mode", o.mode.rawValue),
        ("filterCorrection", "\(o.filterCorrection)"), ("checkFinite", "\(o.checkFinite)"),
        ("tileBackend", cce.tileBackend.rawValue),
    ]
}

/// A fingerprint in hex (`Fingerprint`, shared with the C ABI's agreement).
func checksum<T: BitwiseCopyable>(_ values: [T]) -> String { String(Fingerprint.of(values), radix: 16) }

func checksum(_ t: Tensor) -> String { String(t.fingerprint, radix: 16) }
