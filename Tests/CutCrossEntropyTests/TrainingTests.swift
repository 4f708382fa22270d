// cce train at the library level (CCETraining): the model's gradients against finite
// differences, the tokenizer, the corpus's entropy floor, cce vs materialized loss curves,
// a short run that learns, bad configurations, logs and figures.

import CCEData
import CCETraining
import CutCrossEntropy
import Foundation
import XCTest

final class TrainingTests: XCTestCase {
    // MARK: - Model gradients

    /// L(θ) = Σ G ⊙ y(θ) for a fixed random G, so ∂L/∂y = G: the body's backward with
    /// dy = G must match central differences of L in Float64, for every parameter.
    func testBodyGradientsMatchFiniteDifferences() throws {
        for tied in [false, true] {
            let cfg = ModelConfig(vocab: 7, dim: 3, hidden: 5, context: 2, tied: tied)
            var model = try LanguageModel<Double>(config: cfg, seed: 3)
            // Nonzero biases so that their gradients are exercised away from 0.
            model[.b1] = model[.b1].indices.map { 0.1 * Double($0) - 0.2 }
            model[.b2] = model[.b2].indices.map { 0.05 * Double($0) }
            var rng = SeededRandom(seed: 9)
            let contexts: [Int32] = [0, 3, 3, 6, 2, 2, 5, 1]   // 4 contexts of 2, repeats included
            let g = (0..<(4 * cfg.dim)).map { _ in rng.normal() }
            func objective(_ m: LanguageModel<Double>) -> Double {
                zip(m.body(contexts: contexts).y, g).reduce(0) { $0 + $1.0 * $1.1 }
            }
            var grads = model.zeroGradients()
            model.bodyBackward(model.body(contexts: contexts), dy: g, into: &grads)
            for p in Parameter.allCases where p != .bias && !(p == .classifier && !tied) {
                for i in 0..<model[p].count {
                    let h = 1e-6
                    var plus = model, minus = model
                    plus[p][i] += h; minus[p][i] -= h
                    let fd = (objective(plus) - objective(minus)) / (2 * h)
                    XCTAssertEqual(grads[p.rawValue][i], fd, accuracy: 1e-7 * max(1, abs(fd)),
                                   "tied \(tied): d\(p)[\(i)]")
                }
            }
        }
    }

    /// The head's dy, dC, dbias (through the engine) against a Float64 softmax reference.
    func testHeadMatchesFloat64Reference() throws {
        let b = 6, d = 4, v = 37
        var rng = SeededRandom(seed: 5)
        let y = (0..<(b * d)).map { _ in Float(rng.normal()) }
        let c = (0..<(v * d)).map { _ in Float(rng.normal()) }
        let bias = (0..<v).map { _ in Float(rng.normal() * 0.5) }
        let t: [Int32] = (0..<b).map { _ in Int32(rng.next() % UInt64(v)) }
        for kind in HeadKind.allCases {
            let h = try Trainer.head(kind, y: y, classifier: c, bias: bias, targets: t, dim: d, threads: 1)
            var loss = 0.0
            var dy = [Double](repeating: 0, count: b * d), dC = [Double](repeating: 0, count: v * d)
            var dB = [Double](repeating: 0, count: v)
            for i in 0..<b {
                let z = (0..<v).map { q in (0..<d).reduce(Double(bias[q])) { $0 + Double(y[i * d + $1]) * Double(c[q * d + $1]) } }
                let m = z.max()!
                let lse = m + Foundation.log(z.reduce(0) { $0 + Foundation.exp($1 - m) })
                loss += (lse - z[Int(t[i])]) / Double(b)
                for q in 0..<v {
                    let g = (Foundation.exp(z[q] - lse) - (q == Int(t[i]) ? 1 : 0)) / Double(b)
                    dB[q] += g
                    for k in 0..<d { dy[i * d + k] += g * Double(c[q * d + k]); dC[q * d + k] += g * Double(y[i * d + k]) }
                }
            }
            XCTAssertEqual(h.loss, loss, accuracy: 1e-5, "\(kind) loss")
            for (name, a, r) in [("dy", h.dy, dy), ("dC", h.dC, dC), ("dBias", h.dBias, dB)] {
                let err = zip(a, r).reduce(0) { max($0, abs(Double($1.0) - $1.1)) }
                XCTAssertLessThan(err, 1e-6, "\(kind) \(name)")
            }
        }
    }

    // MARK: - Tokenizer

    func testWordTokenizer() throws {
        XCTAssertEqual(WordTokenizer.split("Hello, world!  It's 42.\nthe end"),
                       ["hello", ",", "world", "!", "it's", "42", ".", "the", "end"])
        let pieces = WordTokenizer.split("b a b c a b d")
        let tok = try WordTokenizer(pieces: pieces, capacity: 3)
        XCTAssertEqual(tok.words, ["<unk>", "b", "a"])          // counts 3, 2; then <unk>
        XCTAssertEqual(tok.encode(pieces), [1, 2, 1, 0, 2, 1, 0])
        XCTAssertEqual(tok.decode([1, 0, 2]), "b <unk> a")
        let all = try WordTokenizer(pieces: ["y", "x", "z", "x"], capacity: 100)
        XCTAssertEqual(all.words, ["<unk>", "x", "y", "z"])      // ties broken by spelling
        XCTAssertThrowsError(try WordTokenizer(pieces: pieces, capacity: 1)) {
            XCTAssertEqual($0 as? TrainingError, .invalidOption("--vocab must be >= 2 (<unk> and one word; got 1)"))
        }
        let corpus = try Corpus.text("a b a b a c", vocab: 3, context: 2)
        XCTAssertEqual(corpus.vocab, 3)
        XCTAssertNil(corpus.floor)
        // Plug-in unigram entropy of [a, b, a, b, a, <unk>]: counts 3, 2, 1.
        let h = -[3.0, 2, 1].reduce(0) { $0 + $1 / 6 * Foundation.log($1 / 6) }
        XCTAssertEqual(corpus.unigramEntropy, h, accuracy: 1e-12)
    }

    // MARK: - Corpus entropy

    func testMarkovEntropyRate() throws {
        // Uniform transitions (no bilinear term, no prior): H = ln V exactly, π uniform.
        let flat = try MarkovSource(vocab: 10, sharpness: 0, zipf: 0, seed: 1)
        XCTAssertEqual(flat.entropyRate, Foundation.log(10), accuracy: 1e-12)
        XCTAssertEqual(flat.unigramEntropy, Foundation.log(10), accuracy: 1e-12)

        let m = try MarkovSource(vocab: 24, rank: 4, sharpness: 3, zipf: 1, seed: 2)
        let v = m.vocab
        // π is stationary: Σ_s π_s P(v|s) = π_v.
        for q in 0..<v {
            let next = (0..<v).reduce(0) { $0 + m.stationary[$1] * m.probability(q, after: $1) }
            XCTAssertEqual(next, m.stationary[q], accuracy: 1e-6)
        }
        // H = Σ_s π_s H(P(·|s)) from the sampling tables (Float32) agrees with the exact value.
        var h = 0.0
        for s in 0..<v {
            for q in 0..<v { let p = m.probability(q, after: s); if p > 0 { h -= m.stationary[s] * p * Foundation.log(p) } }
        }
        XCTAssertEqual(m.entropyRate, h, accuracy: 1e-5)
        XCTAssertLessThan(m.entropyRate, m.unigramEntropy)
        XCTAssertLessThan(m.unigramEntropy, m.uniformLoss)
        // A long sample: the mean of −ln P(x_t | x_{t−1}) estimates H (the chain's own loss).
        var rng = SeededRandom(seed: 11)
        var s = m.sampleStationary(&rng), total = 0.0
        let count = 200_000
        for _ in 0..<count {
            let n = m.sampleNext(after: s, &rng)
            total -= Foundation.log(m.probability(n, after: s))
            s = n
        }
        XCTAssertEqual(total / Double(count), m.entropyRate, accuracy: 0.02)
    }

    // MARK: - Training

    func tinyConfig(_ kind: HeadKind) -> TrainingConfig {
        var c = TrainingConfig()
        c.vocab = 512; c.dim = 16; c.hidden = 32; c.context = 2; c.batch = 32; c.steps = 15
        c.learningRate = 1e-2; c.seed = 4; c.threads = 2; c.loss = kind
        return c
    }

    /// Same seed, same batches, same initial parameters: the two heads' loss curves agree
    /// to rounding.
    func testCCEAndMaterializedCurvesAgree() throws {
        var curves: [[Double]] = []
        for kind in HeadKind.allCases {
            var t = try Trainer(config: tinyConfig(kind))
            var losses: [Double] = []
            try t.run { losses.append($0.loss) }
            curves.append(losses)
        }
        XCTAssertEqual(curves[0].count, 15)
        XCTAssertEqual(curves[0][0], curves[1][0], accuracy: 1e-5)
        let worst = zip(curves[0], curves[1]).reduce(0) { max($0, abs($1.0 - $1.1)) }
        XCTAssertLessThan(worst, 1e-3, "cce \(curves[0]) vs materialized \(curves[1])")
        XCTAssertLessThan(curves[0].last!, curves[0].first! - 0.3)   // and it learns
    }

    func testShortRunLearnsTowardTheFloor() throws {
        var c = tinyConfig(.cce)
        c.vocab = 256; c.steps = 150; c.batch = 64
        var t = try Trainer(config: c)
        var losses: [Double] = []
        try t.run { losses.append($0.loss) }
        let floor = try XCTUnwrap(t.corpus.floor)
        let start = losses.prefix(5).reduce(0, +) / 5, end = losses.suffix(20).reduce(0, +) / 20
        XCTAssertEqual(start, Foundation.log(256), accuracy: 0.3)    // near-uniform at first
        XCTAssertLessThan(end, t.corpus.unigramEntropy)              // beats any context-free guess
        XCTAssertGreaterThan(end, floor - 0.2)                       // and cannot beat the floor
    }

    func testTextCorpusTrains() throws {
        let text = String(repeating: "the cat sat on the mat . the dog sat on the log . ", count: 20)
        let corpus = try Corpus.text(text, vocab: 6, context: 2)
        var c = tinyConfig(.cce)
        c.steps = 30
        var t = try Trainer(config: c, corpus: corpus)
        XCTAssertEqual(t.config.vocab, 6)
        var losses: [Double] = []
        try t.run { losses.append($0.loss) }
        XCTAssertLessThan(losses.last!, losses.first!)
    }

    func testBadConfigurationsThrowTypedErrors() throws {
        func expect(_ what: String, _ match: (TrainingError) -> Bool, _ change: (inout TrainingConfig) -> Void) {
            var c = tinyConfig(.cce)
            change(&c)
            do { _ = try Trainer(config: c); XCTFail("\(what): no error") } catch let e as TrainingError {
                XCTAssertTrue(match(e), "\(what): \(e)")
                XCTAssertFalse(e.description.contains("\n"))
            } catch { XCTFail("\(what): untyped \(error)") }
        }
        func option(_ e: TrainingError) -> Bool { if case .invalidOption = e { true } else { false } }
        expect("steps 0", option) { $0.steps = 0 }
        expect("vocab 0", option) { $0.vocab = 0 }
        expect("batch 0", option) { $0.batch = 0 }
        expect("lr < 0", option) { $0.learningRate = -1 }
        expect("context 0", option) { $0.context = 0 }
        expect("dim 0", option) { $0.dim = 0 }
        expect("threads 0", option) { $0.threads = 0 }
        expect("synthetic vocab too large", option) { $0.vocab = 100_000 }
        expect("missing corpus", { if case .corpusUnreadable = $0 { true } else { false } }) {
            $0.corpusPath = "/nonexistent/corpus.txt"
        }
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("cce-empty-\(getpid()).txt").path
        try " \n ".write(toFile: empty, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        expect("empty corpus", { if case .emptyCorpus = $0 { true } else { false } }) { $0.corpusPath = empty }
        expect("vocab 0 with a corpus", option) { $0.corpusPath = empty; $0.vocab = 0 }
    }

    // MARK: - Logs and figures

    /// A model holding a shard of the classes (vocabulary-parallel training) has the whole
    /// model's values there and everywhere else; a tied model cannot hold a shard.
    func testModelWithAShardOfTheClasses() throws {
        let config = ModelConfig(vocab: 37, dim: 5, hidden: 7, context: 2)
        let whole = try LanguageModel<Float>(config: config, seed: 3)
        let part = try LanguageModel<Float>(config: config, seed: 3, classRows: 19..<37)
        XCTAssertEqual(part.classRows, 19..<37)
        XCTAssertEqual(part[.classifier], Array(whole[.classifier][(19 * 5)..<(37 * 5)]))
        XCTAssertEqual(part[.bias].count, 18)
        for p in Parameter.allCases where p != .classifier && p != .bias { XCTAssertEqual(part[p], whole[p], "\(p)") }
        XCTAssertThrowsError(try LanguageModel<Float>(config: config, seed: 3, classRows: 30..<38))
        var tied = config
        tied.tied = true
        XCTAssertThrowsError(try LanguageModel<Float>(config: tied, seed: 3, classRows: 0..<10)) { e in
            XCTAssertEqual(e as? TrainingError, .invalidOption("a tied model holds the whole classifier (it is the input table)"))
        }
    }

    func testLogAndFigure() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cce-log-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let cce = dir.appendingPathComponent("run-cce.csv").path
        let r = StepReport(step: 1, loss: 2.5, elapsed: 0.5, tokensPerSecond: 100)
        try (TrainingLog.header + "\n" + TrainingLog.line(r, floor: 1.25, kind: .cce) + "\n")
            .write(toFile: cce, atomically: true, encoding: .utf8)
        XCTAssertEqual(TrainingLog.read(cce)?.map(\.loss), [2.5])
        XCTAssertNil(TrainingLog.sibling(of: cce, kind: .cce))
        let mat = dir.appendingPathComponent("run-materialized.csv").path
        try FileManager.default.copyItem(atPath: cce, toPath: mat)
        XCTAssertEqual(TrainingLog.sibling(of: cce, kind: .cce)?.path, mat)
        XCTAssertEqual(TrainingLog.sibling(of: mat, kind: .materialized)?.path, cce)
        let svg = LossFigure.svg(title: "t", curves: [LossCurve(name: "cce", points: [(1, 3), (2, 2)])],
                                 references: [ReferenceLine(name: "entropy floor", value: 1.25)])
        XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("<polyline") && svg.contains("entropy floor 1.250"))
    }
}
