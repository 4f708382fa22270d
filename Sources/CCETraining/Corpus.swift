// Where training batches come from: the synthetic Markov source (default) or a text file.
//
// Markov source: B independent chains, each started from the stationary distribution π,
// advance one token per step; the batch is each chain's k latest tokens (the context) and
// its next token (the target). Every target is a fresh draw the model has not seen, so the
// mean loss of a step estimates the model's expected cross-entropy on the source, whose
// floor is the entropy rate (MarkovSource.swift).
//
// Text: the file is split into words (WordTokenizer.swift) with a vocabulary capped at V;
// a batch is B positions i drawn uniformly from [k, L) with context tokens[i−k ..< i] and
// target tokens[i]. The loss is a training loss; there is no known floor, and the plug-in
// unigram entropy of the tokens is shown as the context-free reference.

import CCEData
import Foundation

/// A training corpus and its reference levels.
public struct Corpus: Sendable {
    public enum Source: Sendable {
        case markov(MarkovSource)
        case text(tokens: [Int32], tokenizer: WordTokenizer)
    }
    public let source: Source
    /// Vocabulary size V (including `<unk>` for text).
    public let vocab: Int
    /// The entropy floor in nats, when known (Markov source).
    public let floor: Double?
    /// The best context-free loss: H(π) for the Markov source, the tokens' plug-in unigram
    /// entropy for text.
    public let unigramEntropy: Double
    /// One line saying what the corpus is.
    public let summary: String

    /// The synthetic source over `vocab` tokens.
    public static func markov(vocab: Int, seed: UInt64) throws -> Corpus {
        let m = try MarkovSource(vocab: vocab, seed: seed)
        return Corpus(source: .markov(m), vocab: vocab, floor: m.entropyRate, unigramEntropy: m.unigramEntropy,
                      summary: String(format: "synthetic Markov source: V = %d, rank %d, sharpness %.1f, Zipf %.1f, seed %llu",
                                      vocab, m.rank, m.sharpness, m.zipf, seed))
    }

    /// The text in `path`, word-level, vocabulary capped at `vocab` entries. Throws
    /// `TrainingError` when the file cannot be read or holds fewer than context + 1 tokens.
    public static func text(path: String, vocab: Int, context: Int) throws -> Corpus {
        guard vocab >= 2 else { throw TrainingError.invalidOption("--vocab must be >= 2 (got \(vocab))") }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            let reason = FileManager.default.fileExists(atPath: path) ? "not readable as UTF-8 text" : "no such file"
            throw TrainingError.corpusUnreadable(path: path, reason: reason)
        }
        return try Corpus.text(text, vocab: vocab, context: context, name: path)
    }

    /// `text`, tokenized as for a file.
    public static func text(_ text: String, vocab: Int, context: Int, name: String = "text") throws -> Corpus {
        let pieces = WordTokenizer.split(text)
        guard pieces.count > context else {
            throw TrainingError.emptyCorpus("\(name) has \(pieces.count) tokens; a context of \(context) needs at least \(context + 1)")
        }
        let tok = try WordTokenizer(pieces: pieces, capacity: vocab)
        let ids = tok.encode(pieces)
        var counts = [Int](repeating: 0, count: tok.count)
        for t in ids { counts[Int(t)] += 1 }
        let total = Double(ids.count)
        let h = counts.reduce(0.0) { $1 == 0 ? $0 : $0 - Double($1) / total * Foundation.log(Double($1) / total) }
        let unk = Double(counts[0]) / total
        return Corpus(source: .text(tokens: ids, tokenizer: tok), vocab: tok.count, floor: nil, unigramEntropy: h,
                      summary: String(format: "%@: %d word tokens, vocabulary %d (%.1f%% <unk>)",
                                      name, ids.count, tok.count, 100 * unk))
    }
}

/// Draws batches of (context, target) from a corpus.
struct BatchSampler {
    let corpus: Corpus
    let batch: Int, context: Int
    var rng: SeededRandom
    /// Markov chains: the k latest tokens of each, row-major (B, k).
    var history: [Int32] = []

    init(corpus: Corpus, batch: Int, context: Int, seed: UInt64) {
        self.corpus = corpus; self.batch = batch; self.context = context
        rng = SeededRandom(seed: seed)
        if case .markov(let m) = corpus.source {
            history.reserveCapacity(batch * context)
            for _ in 0..<batch {
                var t = m.sampleStationary(&rng)
                for _ in 0..<context {
                    history.append(Int32(t))
                    t = m.sampleNext(after: t, &rng)
                }
            }
        }
    }

    /// Contexts (B, k) and targets (B).
    mutating func next() -> (contexts: [Int32], targets: [Int32]) {
        let b = batch, k = context
        switch corpus.source {
        case .markov(let m):
            let contexts = history
            var targets = [Int32](repeating: 0, count: b)
            for i in 0..<b {
                let t = Int32(m.sampleNext(after: Int(history[i * k + k - 1]), &rng))
                targets[i] = t
                for j in 0..<(k - 1) { history[i * k + j] = history[i * k + j + 1] }
                history[i * k + k - 1] = t
            }
            return (contexts, targets)
        case .text(let tokens, _):
            var contexts = [Int32](repeating: 0, count: b * k)
            var targets = [Int32](repeating: 0, count: b)
            let span = UInt64(tokens.count - k)
            for i in 0..<b {
                let pos = k + Int(rng.next() % span)
                for j in 0..<k { contexts[i * k + j] = tokens[pos - k + j] }
                targets[i] = tokens[pos]
            }
            return (contexts, targets)
        }
    }
}
