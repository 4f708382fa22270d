// `cce train --parallel vocab|tokens`: the training example across the ranks of mpirun
// (Docs/SCALING.md, "Training across ranks").
//
//   mpirun -np P cce train --parallel vocab ...    each rank holds a shard of the head's
//                                                  classifier rows and bias (and their Adam
//                                                  state); the body runs on the whole batch
//                                                  everywhere, with the whole dy (dE) that
//                                                  VocabularyParallel sums in rank order
//   mpirun -np P cce train --parallel tokens ...   each rank runs the body and the head on
//                                                  its rows of the batch with the whole model;
//                                                  dC and dBias (TokenParallel) and the body's
//                                                  gradients are summed in rank order
//
// Every rank samples the same batches from the same seed, so the loss curve is one
// process's up to rounding. The ranks first agree on the configuration (everything but
// the thread count, and the corpus by a digest); at the end they compare a digest of the
// parameters that must be the same everywhere (vocabulary-parallel: all but C and the
// bias; token-parallel: all) and fail together if they differ. Rank 0 alone prints and
// writes the log and the figure.

import CCETraining
import CutCrossEntropy
import CutCrossEntropyMPI
import Foundation

/// The head and the gradient sums of one scheme over a communicator.
struct MPITrainingPartition: TrainingPartition {
    let communicator: Communicator
    let scheme: ParallelScheme
    /// V of the whole vocabulary.
    let vocabulary: Int

    var classRows: Range<Int> {
        switch scheme {
        case .vocab: VocabularyShard.split(vocabulary: vocabulary, parts: communicator.size)[communicator.rank].range
        case .tokens: 0..<vocabulary
        }
    }

    func tokenRows(batch: Int) -> Range<Int> {
        switch scheme {
        case .vocab: 0..<batch
        case .tokens: (communicator.rank * batch / communicator.size)..<((communicator.rank + 1) * batch / communicator.size)
        }
    }

    func head(y: [Float], classifier: [Float], bias: [Float], targets: [Int32], dim: Int,
              threads: Int?) throws -> HeadResult {
        var options = Options()
        options.threads = threads
        let cce = CutCrossEntropy(options: options)
        let rows = targets.count, classes = bias.count
        let (e, c, b, t) = try communicator.agree {
            (try Tensor(y, shape: [rows, dim]), try Tensor(classifier, shape: [classes, dim]),
             try Tensor(bias, shape: [classes]), try Targets(targets))
        }
        let (f, g): (ParallelForward, Gradients)
        switch scheme {
        case .vocab:
            (f, g) = try VocabularyParallel(communicator, vocabulary: vocabulary)
                .lossAndGradients(cce, embeddings: e, classifier: c, targets: t, bias: b)
        case .tokens:
            (f, g) = try TokenParallel(communicator).lossAndGradients(cce, embeddings: e, classifier: c, targets: t, bias: b)
        }
        return (f.loss, g.dE.floats, g.dC.floats, g.dBias?.floats ?? [])
    }

    func sumBodyGradients(_ gradients: inout [Float]) throws {
        // Vocabulary-parallel: every rank ran the body on the same batch with the same dy.
        guard scheme == .tokens else { return }
        try communicator.orderedSum(&gradients)
    }
}

extension Train {
    /// What every rank must agree on before the first step (the thread count may differ:
    /// the engine's results do not depend on it).
    static func agreedFields(_ c: TrainingConfig, _ corpus: Corpus, scheme: ParallelScheme) -> [(String, String)] {
        var corpusDigest = ""
        switch corpus.source {
        case .markov: corpusDigest = corpus.summary
        case .text(let tokens, _): corpusDigest = "\(tokens.count) tokens, digest \(digest([tokens]))"
        }
        return [("scheme", scheme.rawValue), ("--steps", "\(c.steps)"), ("--batch", "\(c.batch)"),
                ("--lr", "\(c.learningRate)"), ("--dim", "\(c.dim)"), ("--hidden", "\(c.hidden)"),
                ("--context", "\(c.context)"), ("--vocab", "\(corpus.vocab)"), ("--tie", "\(c.tied)"),
                ("--loss", c.loss.rawValue), ("--seed", "\(c.seed)"), ("corpus", corpusDigest)]
    }

    /// FNV-1a over the bytes of the arrays, in order.
    static func digest<T: BitwiseCopyable>(_ arrays: [[T]]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for a in arrays {
            a.withUnsafeBytes { bytes in
                for byte in bytes { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
            }
        }
        return String(format: "%016llx", h)
    }

    /// The digest of the parameters every rank must hold alike: all but C and the bias
    /// (vocabulary-parallel: each rank holds its own rows of them), or all (token-parallel).
    static func sharedDigest(_ model: LanguageModel<Float>, scheme: ParallelScheme) -> String {
        let held = Parameter.allCases.filter { scheme == .tokens || ($0 != .classifier && $0 != .bias) }
        return digest(held.map { model.parameters[$0.rawValue] })
    }
}
