// cce train: a small neural language model trained through this library's loss
// (Sources/CCETraining; Docs/TRAINING.md).

import ArgumentParser
import CCEReference
import CCERuntime
import CCETraining
import CutCrossEntropy
import CutCrossEntropyMPI
import Foundation

extension HeadKind: ExpressibleByArgument {}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a fixed-window neural LM whose large-vocabulary output layer goes through CCE (or the materialized baseline).")

    @Option(parsing: .unconditional, help: "Training steps.") var steps = TrainingConfig().steps
    @Option(parsing: .unconditional, help: "Tokens per batch B.") var batch = TrainingConfig().batch
    @Option(parsing: .unconditional, help: "Adam learning rate.") var lr = TrainingConfig().learningRate
    @Option(parsing: .unconditional, help: "Embedding and classifier width D.") var dim = TrainingConfig().dim
    @Option(parsing: .unconditional, help: "Hidden width H of the MLP.") var hidden = TrainingConfig().hidden
    @Option(parsing: .unconditional, help: "Context window k (previous tokens seen).") var context = TrainingConfig().context
    @Option(parsing: .unconditional, help: "Vocabulary size V (synthetic corpus), or its cap (--corpus; rare words become <unk>).")
    var vocab = TrainingConfig().vocab
    @Flag(help: "Tie the input embedding table to the classifier (default: untied).") var tie = false
    @Option(help: "Loss head: cce (this engine) or materialized (the N x V OpenBLAS baseline).")
    var loss: HeadKind = .cce
    @Option(help: "A UTF-8 text file to train on (word-level); default: the synthetic Markov source.")
    var corpus: String?
    @Option(parsing: .unconditional, help: "Random seed (model, corpus, batches).") var seed: UInt64 = 0
    @OptionGroup var engine: EngineOptions<StandardEngine>
    @Option(help: "CSV log (step,loss,tokens_per_s,elapsed_s,floor,loss_kind); the loss figure goes beside it (.svg). Default: train-<loss>.csv")
    var log: String?
    @Option(help: "vocab or tokens: each step split over the ranks of mpirun (Docs/SCALING.md); rank 0 writes the log.")
    var parallel: ParallelScheme?
    @Option(help: "Path of libcce_mpi.so (with --parallel under mpirun; default: $CCE_MPI_LIBRARY, then beside cce).")
    var mpiLibrary: String?

    /// The log and the figure beside it can be written: checked before the corpus is built.
    func validate() throws {
        let path = logPath
        try checkOutputFile(path, option: "--log")
        try checkOutputFile(Self.figurePath(path), option: "--log (its figure)")
    }

    var logPath: String { log ?? "train-\(loss.rawValue).csv" }
    /// The figure beside the log: FILE.csv -> FILE.svg.
    static func figurePath(_ log: String) -> String { (log.hasSuffix(".csv") ? String(log.dropLast(4)) : log) + ".svg" }

    func run() throws {
        var c = TrainingConfig()
        c.steps = steps; c.batch = batch; c.learningRate = lr; c.dim = dim; c.hidden = hidden
        c.context = context; c.vocab = vocab; c.tied = tie; c.loss = loss; c.corpusPath = corpus
        c.seed = seed; c.threads = engine.threads
        guard let parallel else {
            var trainer: Trainer
            do { trainer = try Trainer(config: c) } catch let e as TrainingError { throw CLIError(e.description) }
            try train(&trainer, root: true)
            return
        }
        try withWorld(library: mpiLibrary) { comm in
            // Whatever fails on one rank (an option, the corpus, the log) fails on every rank.
            var trainer = try comm.agree { () -> Trainer in
                try c.validate()
                let corpus = try c.corpusPath.map { try Corpus.text(path: $0, vocab: c.vocab, context: c.context) }
                    ?? Corpus.markov(vocab: c.vocab, seed: c.seed)
                let partition = MPITrainingPartition(communicator: comm, scheme: parallel, vocabulary: corpus.vocab)
                return try Trainer(config: c, corpus: corpus, partition: partition)
            }
            try comm.checkSame(Self.agreedFields(trainer.config, trainer.corpus, scheme: parallel))
            try train(&trainer, root: comm.rank == 0, comm: comm, scheme: parallel)
            // The parameters that every rank holds alike must have the same bits everywhere.
            let d = Self.sharedDigest(trainer.model, scheme: parallel)
            try comm.checkSame([("the parameters every rank holds alike (\(parallel == .vocab ? "all but C and the bias" : "all")) after \(trainer.config.steps) steps, digest", d)])
            if comm.rank == 0 {
                print("ranks: \(comm.size), \(parallel.rawValue)-parallel; every rank holds the same \(parallel == .vocab ? "body parameters" : "parameters") at the end (digest \(d))")
            }
        }
    }

    /// The training loop, its progress and its outputs; `root`: this process prints and
    /// writes (one process, or rank 0). With `comm`, every rank runs the steps and the head's
    /// memory measurement together.
    func train(_ trainer: inout Trainer, root: Bool, comm: Communicator? = nil, scheme: ParallelScheme? = nil) throws {
        let corpus = trainer.corpus
        let cfg = trainer.config
        let opened = { () throws -> FileHandle? in
            guard root else { return nil }
            guard FileManager.default.createFile(atPath: logPath, contents: nil),
                  let f = FileHandle(forWritingAtPath: logPath) else {
                throw CLIError("cannot write the log \(logPath)")
            }
            return f
        }
        let logFile = try comm.map { try $0.agree(opened) } ?? opened()
        defer { try? logFile?.close() }
        logFile?.write(Data((TrainingLog.header + "\n").utf8))
        let print: (String) -> Void = { s in if root { Swift.print(s) } }
        let progress: (String) -> Void = { s in if root { stderr(s) } }
        let parameterCount = cfg.dim * (cfg.context * cfg.hidden + 1) + cfg.hidden * (1 + cfg.dim)
            + corpus.vocab * (cfg.dim + 1) + (cfg.tied ? 0 : corpus.vocab * cfg.dim)

        let lnV = Foundation.log(Double(corpus.vocab))
        print("corpus: \(corpus.summary)")
        print(String(format: "model: context %d -> %d x %d -> tanh %d -> %d -> classifier %d x %d + bias (%@), %d parameters",
                     cfg.context, cfg.context, cfg.dim, cfg.hidden, cfg.dim, corpus.vocab, cfg.dim,
                     cfg.tied ? "tied" : "untied", parameterCount))
        if let comm, let scheme {
            print(scheme == .vocab
                  ? "parallel: vocabulary-parallel over \(comm.size) rank\(comm.size == 1 ? "" : "s") (rank 0 holds classes \(trainer.model.classRows) of C and the bias)"
                  : "parallel: token-parallel over \(comm.size) rank\(comm.size == 1 ? "" : "s") (rank 0 runs rows \(trainer.partition!.tokenRows(batch: cfg.batch)) of each batch)")
        }
        print(String(format: "training: %d steps x %d tokens, Adam lr %g, loss head %@, %d threads, seed %llu",
                     cfg.steps, cfg.batch, cfg.learningRate, loss.rawValue, cfg.threads ?? Workers.availableCPUs, seed))
        print(String(format: "reference levels: ln V = %.4f, unigram entropy %.4f, entropy floor %@",
                     lnV, corpus.unigramEntropy, corpus.floor.map { String(format: "%.4f nats/token", $0) } ?? "unknown (text corpus)"))

        fflush(nil)   // the header before the progress lines, also when piped
        // Three losses could be shown; each is labelled. The CSV's `loss` column is each
        // step's batch loss. The progress and the summary show the mean of the last
        // `window` batch losses (5% of the steps), so the bar's last value is the summary's.
        let tty = isatty(2) == 1
        let every = max(1, cfg.steps / 20)
        let window = Self.window(steps: cfg.steps)
        var points: [(step: Int, loss: Double)] = []
        var lastDraw = Date.distantPast
        var last: StepReport?
        try trainer.run { r in
            points.append((r.step, r.loss))
            guard root else { return }
            logFile?.write(Data((TrainingLog.line(r, floor: corpus.floor, kind: loss) + "\n").utf8))
            last = r
            let draw = tty ? (Date().timeIntervalSince(lastDraw) > 0.1 || r.step == cfg.steps)
                           : (r.step % every == 0 || r.step == cfg.steps)
            guard draw else { return }
            lastDraw = Date()
            let (mean, k) = Self.meanOfLast(window, points)
            let eta = r.elapsed / Double(r.step) * Double(cfg.steps - r.step)
            let status = String(format: "%d/%d  %.0f tok/s  loss (mean of the last %d steps) %.4f  elapsed %@, ETA %@",
                                r.step, cfg.steps, r.tokensPerSecond, k, mean,
                                Self.duration(r.elapsed), Self.duration(eta))
            if tty {
                let width = 30, done = width * r.step / cfg.steps
                let bar = String(repeating: "#", count: done) + String(repeating: ".", count: width - done)
                progress("\r[\(bar)] \(status) ")
                if r.step == cfg.steps { progress("\n") }
            } else {
                progress("step \(status)\n")
            }
        }
        let (finalLoss, tailCount) = Self.meanOfLast(window, points)
        let peak = MemoryProbe.peakBytes()
        print(String(format: "done: %.1f s, %.0f tokens/s", last?.elapsed ?? 0, last?.tokensPerSecond ?? 0))
        print(String(format: "final loss (mean of the last %d steps' batch losses) %.4f; batch loss of the last step %.4f (the log's last row), of the first step %.4f",
                     tailCount, finalLoss, points.last?.loss ?? .nan, points.first?.loss ?? .nan))
        if let f = corpus.floor {
            print(String(format: "gap of the final loss (mean of the last %d steps) to the entropy floor: %.4f nats/token (floor %.4f; ln V %.4f)",
                         tailCount, finalLoss - f, f, lnV))
        }
        let head = try trainer.measureHead()
        print(String(format: "peak resident memory: %.1f MB (process VmHWM%@); one %@ head call: %.2f MB extra (B x V logits would be %.2f MB)",
                     Double(peak) / 1e6, comm == nil ? "" : ", rank 0", loss.rawValue, Double(head) / 1e6,
                     Double(cfg.batch * corpus.vocab * 4) / 1e6))
        // Rank 0 writes the figure; every rank learns whether it could.
        try comm.map { try $0.agree { if root { try writeFigure(points, corpus: corpus, config: cfg, lnV: lnV) } } }
            ?? writeFigure(points, corpus: corpus, config: cfg, lnV: lnV)
    }

    /// The figure, with the other head's curve when its log is beside this one.
    func writeFigure(_ points: [(step: Int, loss: Double)], corpus: Corpus, config cfg: TrainingConfig, lnV: Double) throws {
        var curves = [LossCurve(name: loss.rawValue, points: points)]
        if let sib = TrainingLog.sibling(of: logPath, kind: loss), let pts = TrainingLog.read(sib.path), !pts.isEmpty {
            curves.append(LossCurve(name: sib.kind.rawValue, points: pts))
        }
        var refs = [ReferenceLine(name: "ln V", value: lnV, dashed: true),
                    ReferenceLine(name: "unigram H", value: corpus.unigramEntropy, dashed: true)]
        if let f = corpus.floor { refs.insert(ReferenceLine(name: "entropy floor", value: f, dashed: true), at: 0) }
        let title = String(format: "cce train: V = %d, D = %d, B = %d, %@", corpus.vocab, cfg.dim, cfg.batch,
                           cfg.corpusPath == nil ? "synthetic Markov source" : "text corpus")
        let svgPath = Self.figurePath(logPath)
        do {
            try LossFigure.svg(title: title, curves: curves, references: refs).write(toFile: svgPath, atomically: true, encoding: .utf8)
        } catch { throw CLIError("cannot write the figure \(svgPath): \(systemErrorText(error))") }
        print("log: \(logPath), figure: \(svgPath)\(curves.count > 1 ? " (with \(curves[1].name))" : "")")
    }
}

extension Train {
    /// How many steps the reported loss averages: 5% of them, at least 1.
    static func window(steps: Int) -> Int { max(1, steps / 20) }

    /// The mean of the last `window` batch losses (fewer early on), and how many it took.
    static func meanOfLast(_ window: Int, _ points: [(step: Int, loss: Double)]) -> (Double, Int) {
        let tail = points.suffix(window)
        guard !tail.isEmpty else { return (.nan, 0) }
        return (tail.reduce(0) { $0 + $1.loss } / Double(tail.count), tail.count)
    }

    /// Seconds as "4.2 s", "3m05s" or "1h02m".
    static func duration(_ s: Double) -> String {
        guard s.isFinite, s >= 0 else { return "?" }
        if s < 60 { return String(format: "%.1f s", s) }
        let t = Int(s.rounded())
        if t < 3600 { return String(format: "%dm%02ds", t / 60, t % 60) }
        return String(format: "%dh%02dm", t / 3600, t % 3600 / 60)
    }
}

func stderr(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }
