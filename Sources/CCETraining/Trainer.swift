// The training loop: sample a batch, run the body, the head (the loss and its gradients
// through Cut Cross-Entropy or the materialized baseline), the body's backward, Adam.
//
// The head takes y (B, D), C (V, D), bias (V) and the targets and returns
//     L = (1/B) Σ_i [ lse_i − z_{i,t_i} ],   z_i = C · y_i + bias,
// with dy = ∂L/∂y, dC, dbias. `.cce` calls `CutCrossEntropy.lossAndGradients` (no B x V
// buffer; extra memory O(B + V) plus per-worker tiles); `.materialized` calls
// `Materialized.compute` (the B x V logits in Float32). Both see the same batches and
// the same initial parameters for the same seed, so their loss curves differ only by
// floating-point rounding (summation order, filtering at ε = 2^-28).

import CCERuntime
import COpenBLAS
import CutCrossEntropy
import Foundation

/// Which implementation computes the classifier's loss and gradients.
public enum HeadKind: String, Sendable, CaseIterable {
    case cce, materialized
}

/// Everything `cce train` can set.
public struct TrainingConfig: Sendable {
    public var steps = 2000
    public var batch = 512
    public var learningRate = 3e-3
    public var dim = 64
    public var hidden = 256
    public var context = 3
    public var vocab = 4096
    public var tied = false
    public var seed: UInt64 = 0
    public var threads: Int? = nil
    public var loss: HeadKind = .cce
    /// A text file; nil: the synthetic Markov source.
    public var corpusPath: String? = nil

    public init() {}

    /// Throws `TrainingError.invalidOption` for values outside their domain.
    public func validate() throws {
        guard vocab >= 2 else { throw TrainingError.invalidOption("--vocab must be >= 2 (got \(vocab))") }
        if corpusPath == nil, vocab > 16384 {
            throw TrainingError.invalidOption("--vocab must be <= 16384 for the synthetic corpus (got \(vocab))")
        }
        try validateModelAndLoop()
    }

    /// Everything but the corpus: sizes, steps, learning rate, threads.
    func validateModelAndLoop() throws {
        guard steps >= 1 else { throw TrainingError.invalidOption("--steps must be >= 1 (got \(steps))") }
        guard batch >= 1, batch <= 1 << 16 else {
            throw TrainingError.invalidOption("--batch must be in 1 ... 65536 (got \(batch))")
        }
        guard learningRate > 0, learningRate.isFinite else {
            throw TrainingError.invalidOption("--lr must be finite and > 0 (got \(learningRate))")
        }
        if let t = threads, t < 1 { throw TrainingError.invalidOption("--threads must be >= 1 (got \(t))") }
        try ModelConfig(vocab: vocab, dim: dim, hidden: hidden, context: context, tied: tied).validate()
    }
}

/// One step's outcome.
public struct StepReport: Sendable {
    public let step: Int
    /// Mean loss of the step's batch (before the update), in nats.
    public let loss: Double
    /// Seconds since training started, and tokens per second over that time.
    public let elapsed: Double
    public let tokensPerSecond: Double

    public init(step: Int, loss: Double, elapsed: Double, tokensPerSecond: Double) {
        self.step = step; self.loss = loss; self.elapsed = elapsed; self.tokensPerSecond = tokensPerSecond
    }
}

/// The loss head's result: the batch's mean loss, dy = ∂L/∂y for the body's rows this
/// process holds, and the gradients of the rows of C and entries of the bias it holds.
public typealias HeadResult = (loss: Double, dy: [Float], dC: [Float], dBias: [Float])

/// How each step is split over processes (`cce train --parallel`, over MPI; the training
/// library knows no MPI). Every process samples the same batches from the same seed.
///
/// - vocabulary-parallel: every process runs the body on the whole batch; the head spans
///   the processes, each holding `classRows` of C and the bias (with their Adam state) and
///   returning the whole dy, the same on every process; so the body's gradients and
///   parameters are the same everywhere without a sum.
/// - token-parallel: each process runs the body and the head on its `tokenRows` of the
///   batch, with the whole C; the head returns dy for those rows and the whole dC and
///   dBias (summed over the processes), and `sumBodyGradients` adds the body's gradients
///   over the processes, so every process applies the same update.
public protocol TrainingPartition {
    /// The classes (rows of C, entries of the bias) this process holds.
    var classRows: Range<Int> { get }
    /// The rows of a batch of `batch` that this process runs the body on.
    func tokenRows(batch: Int) -> Range<Int>
    /// The head across the processes, for this process's body outputs `y` (its token rows,
    /// (rows, D)), its rows of C (`classifier`) and bias, and the targets of its token rows.
    func head(y: [Float], classifier: [Float], bias: [Float], targets: [Int32], dim: Int,
              threads: Int?) throws -> HeadResult
    /// Sums `gradients` over the processes (in rank order; the same bits everywhere), or
    /// leaves them when every process already holds the same.
    func sumBodyGradients(_ gradients: inout [Float]) throws
}

/// A model, its optimizer and its data.
public struct Trainer {
    public let config: TrainingConfig
    public let corpus: Corpus
    public private(set) var model: LanguageModel<Float>
    var optimizer: Adam<Float>
    var sampler: BatchSampler
    /// nil: one process.
    public let partition: TrainingPartition?

    /// Validates the configuration, reads or builds the corpus, initializes the model.
    public init(config: TrainingConfig, partition: TrainingPartition? = nil) throws {
        try config.validate()
        let corpus = try config.corpusPath.map { try Corpus.text(path: $0, vocab: config.vocab, context: config.context) }
            ?? Corpus.markov(vocab: config.vocab, seed: config.seed)
        try self.init(config: config, corpus: corpus, partition: partition)
    }

    /// Trains on `corpus` (its vocabulary size replaces `config.vocab`).
    public init(config: TrainingConfig, corpus: Corpus, partition: TrainingPartition? = nil) throws {
        var config = config
        config.vocab = corpus.vocab
        try config.validateModelAndLoop()   // the corpus is built: its own size limits applied
        if let partition {
            guard config.loss == .cce else {
                throw TrainingError.invalidOption("--parallel runs the cce head, not --loss \(config.loss.rawValue)")
            }
            let rows = partition.classRows
            guard !config.tied || rows == 0..<corpus.vocab else {
                throw TrainingError.invalidOption("--tie does not combine with vocabulary-parallel training (the input table would be the whole classifier on every rank)")
            }
            guard !partition.tokenRows(batch: config.batch).isEmpty else {
                throw TrainingError.invalidOption("--batch \(config.batch) leaves a rank without tokens: give each rank at least one")
            }
        }
        self.config = config
        self.corpus = corpus
        self.partition = partition
        model = try LanguageModel(config: ModelConfig(vocab: corpus.vocab, dim: config.dim, hidden: config.hidden,
                                                      context: config.context, tied: config.tied),
                                  seed: config.seed, classRows: partition?.classRows)
        optimizer = Adam(shapes: model.parameters, learningRate: config.learningRate)
        sampler = BatchSampler(corpus: corpus, batch: config.batch, context: config.context,
                               seed: config.seed &+ 0x5EED)
    }

    /// The loss and gradients of the classifier for body outputs `y` (B, D).
    public static func head(_ kind: HeadKind, y: [Float], classifier: [Float], bias: [Float], targets: [Int32],
                            dim: Int, threads: Int?) throws -> (loss: Double, dy: [Float], dC: [Float], dBias: [Float]) {
        let b = targets.count, v = bias.count
        let e = try Tensor(y, shape: [b, dim])
        let c = try Tensor(classifier, shape: [v, dim])
        let bt = try Tensor(bias, shape: [v])
        let t = try Targets(targets)
        var options = Options()
        options.threads = threads
        switch kind {
        case .cce:
            let (fwd, g) = try CutCrossEntropy(options: options).lossAndGradients(
                embeddings: e, classifier: c, targets: t, bias: bt)
            return (fwd.loss, g.dE.floats, g.dC.floats, g.dBias!.floats)
        case .materialized:
            let r = try Materialized.compute(embeddings: e, classifier: c, targets: t, bias: bt, options: options)
            return (r.loss, r.dE!, r.dC!, r.dBias!)
        }
    }

    /// One step: returns the batch's mean loss before the update.
    public mutating func step() throws -> Double {
        if let partition { return try parallelStep(partition) }
        let (contexts, targets) = sampler.next()
        // The body's products are small (B x k·D x H): one OpenBLAS thread is faster than
        // waking several (Materialized.compute sets its own count for the head).
        openblas_set_num_threads(1)
        let act = model.body(contexts: contexts)
        let h = try Trainer.head(config.loss, y: act.y, classifier: model[.classifier], bias: model[.bias],
                                 targets: targets, dim: config.dim, threads: config.threads)
        openblas_set_num_threads(1)
        var grads = model.zeroGradients()
        grads[Parameter.classifier.rawValue] = h.dC
        grads[Parameter.bias.rawValue] = h.dBias
        model.bodyBackward(act, dy: h.dy, into: &grads)
        optimizer.update(&model.parameters, grads)
        return h.loss
    }

    /// One step across processes: this process's token rows of the batch through the body,
    /// the head across the processes, the body's gradients summed where they differ, then
    /// the same Adam update as one process (on this process's rows of C and the bias).
    mutating func parallelStep(_ partition: TrainingPartition) throws -> Double {
        let (contexts, targets) = sampler.next()
        let rows = partition.tokenRows(batch: config.batch), k = config.context
        openblas_set_num_threads(1)
        let act = model.body(contexts: Array(contexts[(rows.lowerBound * k)..<(rows.upperBound * k)]))
        let h = try partition.head(y: act.y, classifier: model[.classifier], bias: model[.bias],
                                   targets: Array(targets[rows]), dim: config.dim, threads: config.threads)
        openblas_set_num_threads(1)
        var grads = model.zeroGradients()
        model.bodyBackward(act, dy: h.dy, into: &grads)
        // The body's gradients (with a tied table, its share of C's too), summed over the
        // processes as one array: one collective per step.
        let body = Parameter.allCases.filter { $0 != .bias && ($0 != .classifier || config.tied) }.map(\.rawValue)
        var flat = body.flatMap { grads[$0] }
        try partition.sumBodyGradients(&flat)
        var at = 0
        for p in body {
            let n = grads[p].count
            grads[p] = Array(flat[at..<(at + n)])
            at += n
        }
        if config.tied {
            for i in 0..<h.dC.count { grads[Parameter.classifier.rawValue][i] += h.dC[i] }
        } else {
            grads[Parameter.classifier.rawValue] = h.dC
        }
        grads[Parameter.bias.rawValue] = h.dBias
        optimizer.update(&model.parameters, grads)
        return h.loss
    }

    /// Peak extra resident memory of one head call (loss and gradients, including the
    /// returned dy, dC, dbias) on the next batch, in bytes (MemoryProbe); the training
    /// state is not changed.
    public func measureHead() throws -> Int {
        var s = sampler
        let (contexts, targets) = s.next()
        let c = model[.classifier], b = model[.bias]
        if let partition {
            // Collective: every process measures its own part of one head call.
            let rows = partition.tokenRows(batch: config.batch), k = config.context
            let y = model.body(contexts: Array(contexts[(rows.lowerBound * k)..<(rows.upperBound * k)])).y
            let t = Array(targets[rows])
            return try MemoryProbe.measure {
                try partition.head(y: y, classifier: c, bias: b, targets: t, dim: config.dim, threads: config.threads)
            }.1
        }
        let y = model.body(contexts: contexts).y
        return try MemoryProbe.measure {
            try Trainer.head(config.loss, y: y, classifier: c, bias: b, targets: targets, dim: config.dim,
                             threads: config.threads)
        }.1
    }

    /// Runs `config.steps` steps, calling `report` after each.
    public mutating func run(_ report: (StepReport) throws -> Void = { _ in }) throws {
        let start = Date()
        for s in 1...config.steps {
            let loss = try step()
            let t = Date().timeIntervalSince(start)
            try report(StepReport(step: s, loss: loss, elapsed: t,
                                  tokensPerSecond: Double(s * config.batch) / max(t, 1e-9)))
        }
    }
}
