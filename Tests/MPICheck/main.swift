// CCEMPICheck: the program Tests/CutCrossEntropyTests/MPITests.swift runs under mpirun.
//
//   CCEMPICheck cases [NAME ...]   every case (or those named), both schemes: each rank also
//                                  computes the one-process result, rank 0 compares the
//                                  assembled parallel outputs with it and prints one line per
//                                  case and scheme; every rank checks that its copies of the
//                                  global outputs have rank 0's bits, and a second run in the
//                                  same process the first run's bits. Exit 1 if any fails.
//   CCEMPICheck mismatch WHAT      the ranks disagree on WHAT (vocab, options, dtype, targets,
//                                  tokens-c): every rank must throw the same agreed error;
//                                  each prints "agreed error: ..." and exits 3.
//   CCEMPICheck fail RANK          rank RANK's inputs are invalid (a target outside [0, V)):
//                                  every rank must get the same error, naming that rank.
//
// Lines that start with "case " are the results; "digest " lines give a hash of every
// output, for run-to-run comparison across launches.

import CCEData
import CutCrossEntropy
import CutCrossEntropyMPI
import Foundation

/// One test problem and its options.
struct Case {
    let name: String
    var n = 64, d = 24, v = 103, batch = 4
    var type: ElementType = .float32
    var bias = true
    var options = Options()
    var seed: UInt64 = 1
    /// The spread of the logits: C ~ Normal(0, (scale/√D)²).
    var scale = 2.0
    /// Relative budget against the one-process result, per tensor.
    var budget = 1e-6
    /// With the bf16 filter (ε = 2^-12), the gradients drop different row segments when the
    /// vocabulary is cut into other tiles (vocabulary-parallel; with V = 103 one process has a
    /// single tile per row, which holds the target and is never dropped, while a shard
    /// without the target is): each gradient is then checked against the Float64 truth (the
    /// exact mode, one process) instead, within twice the one-process result's own error
    /// plus 1e-4 (what the filter drops on these data: measured up to 5.2e-5).
    var filtered = false
}

func cases() -> [Case] {
    var list: [Case] = []
    list.append(Case(name: "f32-mean-bias"))
    var c = Case(name: "bf16-nofilter"); c.type = .bfloat16; c.options.filterEpsilon = .none; list.append(c)
    // The bf16 filter (ε = 2^-12) drops different row segments when the vocabulary is cut
    // into other tiles (vocabulary-parallel): its gradients then differ from one process by
    // about what the filter drops (Docs/SCALING.md gives the measured numbers).
    c = Case(name: "bf16-default"); c.type = .bfloat16; c.scale = 8; c.filtered = true; list.append(c)
    c = Case(name: "f32-default-peaked"); c.scale = 8; c.v = 1031; c.seed = 11; list.append(c)
    c = Case(name: "f32-options-sum"); c.options.softcap = 4; c.options.shift = 1; c.options.labelSmoothing = 0.1
    c.options.zLoss = 1e-3; c.options.reduction = .sum; c.options.ignoreIndex = 7; c.seed = 2; list.append(c)
    c = Case(name: "f32-weights-smoothing"); c.options.labelSmoothing = 0.2; c.seed = 3
    c.options.classWeights = (0..<103).map { Float(0.5 + Double(($0 * 37) % 11) / 10) }; list.append(c)
    c = Case(name: "f32-none"); c.options.reduction = .none; c.options.shift = 2; c.seed = 4; list.append(c)
    c = Case(name: "exact-all"); c.options.mode = .exact; c.options.softcap = 3; c.options.labelSmoothing = 0.1
    c.options.zLoss = 1e-2; c.options.shift = 1; c.seed = 5; c.budget = 1e-12
    c.options.classWeights = (0..<103).map { Float(1 + Double($0 % 5) / 4) }; list.append(c)
    c = Case(name: "kahan-bf16"); c.options.mode = .kahan; c.type = .bfloat16; c.options.filterEpsilon = .none; c.seed = 6
    list.append(c)
    c = Case(name: "f16-nosort"); c.type = .float16; c.options.sortVocabulary = false; c.options.filterEpsilon = .none
    c.seed = 7; list.append(c)
    // More than one chunk of 1024 active tokens (set above; the fused vocabulary-parallel exchange goes
    // chunk by chunk, and dC's hand-off runs on across chunks).
    c = Case(name: "chunks-f32"); c.n = 2600; c.batch = 4; c.d = 16; c.v = 301; c.scale = 8; c.seed = 12; list.append(c)
    c = Case(name: "chunks-bf16-options"); c.n = 2600; c.batch = 4; c.d = 16; c.v = 301; c.scale = 8; c.seed = 13
    c.type = .bfloat16; c.options.labelSmoothing = 0.05; c.options.zLoss = 1e-3; c.filtered = true; list.append(c)
    // Shards of over 4096 classes that keep logits (bf16, default filter): the forward in
    // pieces with the seed exchange between them, in vocabulary segments, the backward in parts.
    c = Case(name: "bf16-seeds-segments"); c.n = 100; c.batch = 2; c.d = 16; c.v = 16400; c.scale = 8; c.seed = 14
    c.type = .bfloat16; c.filtered = true; list.append(c)
    c = Case(name: "tiny-vocab"); c.v = 3; c.d = 8; c.n = 12; c.batch = 2; c.seed = 8; list.append(c)
    c = Case(name: "tiny-vocab-exact"); c.v = 3; c.d = 8; c.n = 12; c.batch = 2; c.seed = 9; c.options.mode = .exact
    c.options.labelSmoothing = 0.3; c.budget = 1e-12; list.append(c)
    return list
}

struct Inputs {
    let e: Tensor, c: Tensor, t: Targets, bias: Tensor?
    let eValues: [Float], cValues: [Float], targets: [Int], biasValues: [Float]?
}

func inputs(_ k: Case) -> Inputs {
    var rng = SeededRandom(seed: k.seed)
    func round(_ x: [Float]) -> [Float] { (try! Tensor(converting: x, to: k.type, shape: [x.count])).floats() }
    let e = round((0..<(k.n * k.d)).map { _ in Float(rng.normal()) })
    let c = round((0..<(k.v * k.d)).map { _ in Float(rng.normal() * k.scale / Double(k.d).squareRoot()) })
    let t = (0..<k.n).map { _ in rng.uniform() < 0.1 ? k.options.ignoreIndex : Int(rng.next() % UInt64(k.v)) }
    let b = k.bias ? round((0..<k.v).map { _ in Float(rng.normal()) }) : nil
    let seq = k.n / k.batch
    return Inputs(e: try! Tensor(converting: e, to: k.type, shape: [k.batch, seq, k.d]),
                  c: try! Tensor(converting: c, to: k.type, shape: [k.v, k.d]),
                  t: try! Targets(t, shape: [k.batch, seq]),
                  bias: b.map { try! Tensor(converting: $0, to: k.type, shape: [k.v]) },
                  eValues: e, cValues: c, targets: t, biasValues: b)
}

/// The outputs compared: loss, per-position token losses and LSE, and the whole gradients.
struct Outputs {
    var loss: Double
    var tokenLosses: [Double], lse: [Double], dE: [Double], dC: [Double], dBias: [Double]?

    var digest: String {
        var h = Hasher()
        for x in [loss] + tokenLosses + lse + dE + dC + (dBias ?? []) { h.combine(x.bitPattern) }
        return String(UInt64(bitPattern: Int64(h.finalize())), radix: 16)
    }

    /// A stable FNV-1a digest (Hasher is seeded per process).
    var stableDigest: String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for x in [loss] + tokenLosses + lse + dE + dC + (dBias ?? []) { h = (h ^ x.bitPattern) &* 0x100_0000_01b3 }
        return String(h, radix: 16)
    }
}

func upstream(_ k: Case, positions: Int, offset: Int = 0) -> Upstream {
    k.options.reduction == .none ? .perToken((0..<positions).map { Float(1 + Double(($0 + offset) % 3) / 2) }) : .scalar(1)
}

func oneProcess(_ k: Case, _ x: Inputs) throws -> Outputs {
    let cce = CutCrossEntropy(options: k.options)
    let (f, g) = try cce.lossAndGradients(embeddings: x.e, classifier: x.c, targets: x.t, bias: x.bias,
                                          upstream: upstream(k, positions: x.t.count))
    return Outputs(loss: f.loss, tokenLosses: f.tokenLosses.doubles, lse: f.lse.doubles, dE: g.dE.doubles,
                   dC: g.dC.doubles, dBias: g.dBias?.doubles)
}

/// Vocabulary-parallel, fused (lossAndGradients); the whole outputs on rank 0 (dC and dBias
/// gathered), nil elsewhere.
func vocabularyParallel(_ k: Case, _ x: Inputs, _ comm: Communicator) throws -> Outputs? {
    try vocabularyParallel(k, x, comm, fused: true)
}

/// Vocabulary-parallel as two calls, forward then backward.
func vocabularyParallelTwoCalls(_ k: Case, _ x: Inputs, _ comm: Communicator) throws -> Outputs? {
    try vocabularyParallel(k, x, comm, fused: false)
}

func vocabularyParallel(_ k: Case, _ x: Inputs, _ comm: Communicator, fused: Bool) throws -> Outputs? {
    let scheme = VocabularyParallel(comm, vocabulary: k.v)
    let shard = scheme.shard
    let c = try x.c.rows(shard.range), b = try x.bias.map { try $0.rows(shard.range) }
    var cce = CutCrossEntropy(options: k.options)
    // The "chunks" cases give each rank another exchange chunk: the step takes rank 0's (700
    // tokens: four chunks of 2600), so the ranks still exchange the same token ranges.
    if k.name.hasPrefix("chunks") { cce.exchangeChunk = 700 + 300 * comm.rank }
    let up = upstream(k, positions: x.t.count)
    let (f, g) = fused
        ? try scheme.lossAndGradients(cce, embeddings: x.e, classifier: c, targets: x.t, bias: b, upstream: up)
        : try { () -> (ParallelForward, Gradients) in
            let f = try scheme.forward(cce, embeddings: x.e, classifier: c, targets: x.t, bias: b)
            return (f, try scheme.backward(cce, f, embeddings: x.e, classifier: c, bias: b, upstream: up))
        }()
    if fused {
        // The same step into caller memory (as a training loop keeps its gradients): the same
        // loss, and the gradients' bits as Float32 (the exact mode's rounded once).
        var dE = [Float](repeating: .nan, count: x.e.count), dC = [Float](repeating: .nan, count: c.count)
        var dBias = [Float](repeating: .nan, count: b == nil ? 0 : shard.count)
        let (f2, _) = try withDestination(&dE, &dC, &dBias, bias: b != nil) { destination in
            try scheme.lossAndGradients(cce, embeddings: x.e, classifier: c, targets: x.t, bias: b, upstream: up,
                                        writingTo: destination)
        }
        let bits = { (v: [Double]) in v.map { Float($0).bitPattern } }
        let same = f2.loss.bitPattern == f.loss.bitPattern && dE.map(\.bitPattern) == bits(g.dE.doubles)
            && dC.map(\.bitPattern) == bits(g.dC.doubles) && dBias.map(\.bitPattern) == bits(g.dBias?.doubles ?? [])
        try comm.agree {   // every rank fails together, or none does
            if !same { throw ParallelError.mismatch("the step into caller memory differs from the returned gradients") }
        }
    }
    let dC = try comm.gather(g.dC.doubles), dBias = try g.dBias.map { try comm.gather($0.doubles) }
    // Every rank holds the global forward and dE: they must have rank 0's bits.
    let global = Outputs(loss: f.loss, tokenLosses: f.output!.tokenLosses.doubles, lse: f.output!.lse.doubles,
                         dE: g.dE.doubles, dC: [], dBias: nil)
    try sameOnEveryRank(global.stableDigest, comm, "vocabulary-parallel forward and dE")
    guard comm.rank == 0 else { return nil }
    return Outputs(loss: f.loss, tokenLosses: global.tokenLosses, lse: global.lse, dE: global.dE,
                   dC: dC.flatMap { $0 }, dBias: dBias.map { $0.flatMap { $0 } })
}

/// Token-parallel over whole sequences: rank r holds sequences [r·B/P, (r+1)·B/P).
func tokenParallel(_ k: Case, _ x: Inputs, _ comm: Communicator) throws -> Outputs? {
    let seq = k.n / k.batch
    let b0 = comm.rank * k.batch / comm.size, b1 = (comm.rank + 1) * k.batch / comm.size
    let e = try x.e.rows(b0..<b1)
    let t = try Targets(Array(x.t.values[(b0 * seq)..<(b1 * seq)]), shape: [b1 - b0, seq])
    let cce = CutCrossEntropy(options: k.options)
    let scheme = TokenParallel(comm)
    let (f, g) = try scheme.lossAndGradients(cce, embeddings: e, classifier: x.c, targets: t, bias: x.bias,
                                             upstream: upstream(k, positions: t.count, offset: b0 * seq))
    let positions = t.count
    let tokenLosses = try comm.gather(f.output?.tokenLosses.doubles ?? [Double](repeating: 0, count: positions))
    let lse = try comm.gather(f.output?.lse.doubles ?? [Double](repeating: .nan, count: positions))
    let dE = try comm.gather(g.dE.doubles)
    let global = Outputs(loss: f.loss, tokenLosses: [], lse: [], dE: [], dC: g.dC.doubles, dBias: g.dBias?.doubles)
    try sameOnEveryRank(global.stableDigest, comm, "token-parallel loss, dC and dBias")
    guard comm.rank == 0 else { return nil }
    return Outputs(loss: f.loss, tokenLosses: tokenLosses.flatMap { $0 }, lse: lse.flatMap { $0 }, dE: dE.flatMap { $0 },
                   dC: global.dC, dBias: global.dBias)
}

struct CheckFailure: Error, CustomStringConvertible { let description: String }

func sameOnEveryRank(_ digest: String, _ comm: Communicator, _ what: String) throws {
    let all = try comm.allGather(Array(digest.utf8))
    if let r = all.firstIndex(where: { $0 != all[0] }) {
        throw CheckFailure(description: "\(what): rank \(r)'s bits differ from rank 0's")
    }
}

/// The largest relative error over the compared tensors, with their names.
func compare(_ a: Outputs, _ ref: Outputs) -> [(String, Double)] {
    var out: [(String, Double)] = [("loss", relativeError([a.loss], [ref.loss])),
                                   ("tokenLosses", relativeError(a.tokenLosses, ref.tokenLosses)),
                                   ("lse", relativeError(a.lse, ref.lse)), ("dE", relativeError(a.dE, ref.dE)),
                                   ("dC", relativeError(a.dC, ref.dC))]
    if let b = a.dBias, let r = ref.dBias { out.append(("dBias", relativeError(b, r))) }
    if a.tokenLosses.count != ref.tokenLosses.count || a.dE.count != ref.dE.count || a.dC.count != ref.dC.count {
        out.append(("sizes", .infinity))
    }
    return out
}

func runCases(_ names: [String], _ comm: Communicator) -> Int32 {
    var failed = false
    let chosen = cases().filter { names.isEmpty || names.contains($0.name) }
    if comm.rank == 0 { say("expect \(3 * chosen.count) case lines") }
    for k in chosen {
        let x = inputs(k)
        for (scheme, run) in [("vocab", vocabularyParallel), ("vocab-2calls", vocabularyParallelTwoCalls),
                              ("tokens", tokenParallel)] {
            do {
                let first = try run(k, x, comm)
                let second = try run(k, x, comm)
                guard comm.rank == 0, let first, let second else { continue }
                let reference = try oneProcess(k, x)
                let errors = compare(first, reference)
                var bad: [String] = []
                var exact = k
                exact.options.mode = .exact
                let truth = k.filtered ? try oneProcess(exact, x) : reference
                let againstTruth = Dictionary(uniqueKeysWithValues: compare(first, truth))
                let oneAgainstTruth = Dictionary(uniqueKeysWithValues: compare(reference, truth))
                var notes: [String] = []
                for (name, e) in errors {
                    if k.filtered && ["dE", "dC", "dBias"].contains(name) {
                        let mine = againstTruth[name]!, one = oneAgainstTruth[name]!
                        notes.append("\(name) vs Float64 \(String(format: "%.1e", mine)) (one process \(String(format: "%.1e", one)))")
                        if !(mine <= 2 * one + 1e-4) { bad.append("\(name) against Float64 \(mine) > 2 x \(one) + 1e-4") }
                    } else if !(e <= k.budget) {
                        bad.append("\(name) \(String(format: "%.2e", e)) > \(k.budget)")
                    }
                }
                if first.stableDigest != second.stableDigest { bad.append("a second run in this process differs in its bits") }
                let shown = (errors.map { "\($0.0) \(String(format: "%.1e", $0.1))" } + notes).joined(separator: ", ")
                say("case \(k.name) \(scheme) P=\(comm.size): \(bad.isEmpty ? "ok" : "FAIL (\(bad.joined(separator: "; ")))"): \(shown)")
                say("digest \(k.name) \(scheme) P=\(comm.size) \(first.stableDigest)")
                if !bad.isEmpty { failed = true }
            } catch {
                say("case \(k.name) \(scheme) P=\(comm.size): FAIL (rank \(comm.rank): \(error))")
                failed = true
            }
        }
    }
    return failed ? 1 : 0
}

/// Ranks that disagree: rank 1 (or the last) differs in `what`.
func runMismatch(_ what: String, _ comm: Communicator) -> Int32 {
    var k = Case(name: "mismatch")
    let odd = comm.rank == comm.size - 1 && comm.size > 1
    var v = k.v
    switch what {
    case "vocab": if odd { v += 1 }
    case "options": if odd { k.options.labelSmoothing = 0.1 }
    case "dtype": if odd { k.type = .bfloat16 }
    case "targets": break
    case "tokens-c": if odd { k.seed = 99 }
    default: say("unknown mismatch \(what)"); return 2
    }
    k.v = v
    var x = inputs(k)
    if what == "targets" && odd {
        var t = x.targets; t[0] = (t[0] + 1) % k.v
        x = Inputs(e: x.e, c: x.c, t: try! Targets(t, shape: x.t.shape), bias: x.bias, eValues: x.eValues,
                   cValues: x.cValues, targets: t, biasValues: x.biasValues)
    }
    return outcome(comm) {
        if what == "tokens-c" {
            _ = try TokenParallel(comm).lossAndGradients(CutCrossEntropy(options: k.options), embeddings: x.e,
                                                         classifier: x.c, targets: x.t, bias: x.bias)
        } else {
            let scheme = VocabularyParallel(comm, vocabulary: v)
            _ = try scheme.lossAndGradients(CutCrossEntropy(options: k.options), embeddings: x.e,
                                            classifier: try x.c.rows(scheme.shard.range), targets: x.t,
                                            bias: try x.bias.map { try $0.rows(scheme.shard.range) })
        }
    }
}

/// Rank `bad` passes a target outside [0, V): every rank must report that rank's error.
/// The arrays as a step's gradient destination (dBias only `bias`).
func withDestination<R>(_ dE: inout [Float], _ dC: inout [Float], _ dBias: inout [Float], bias: Bool,
                        _ body: (GradientDestination) throws -> R) throws -> R {
    try dE.withUnsafeMutableBufferPointer { e in
        try dC.withUnsafeMutableBufferPointer { c in
            try dBias.withUnsafeMutableBufferPointer { b in try body(GradientDestination(dE: e, dC: c, dBias: bias ? b : nil)) }
        }
    }
}

/// Rank `bad` hands the vocabulary-parallel step a dE buffer one value short.
func runFailBuffer(_ bad: Int, _ comm: Communicator) -> Int32 {
    let k = Case(name: "fail")
    let x = inputs(k)
    let scheme = VocabularyParallel(comm, vocabulary: k.v)
    return outcome(comm) {
        let c = try x.c.rows(scheme.shard.range), b = try x.bias.map { try $0.rows(scheme.shard.range) }
        var dE = [Float](repeating: 0, count: x.e.count - (comm.rank == bad ? 1 : 0))
        var dC = [Float](repeating: 0, count: c.count), dBias = [Float](repeating: 0, count: b?.count ?? 0)
        _ = try withDestination(&dE, &dC, &dBias, bias: b != nil) { destination in
            try scheme.lossAndGradients(CutCrossEntropy(options: k.options), embeddings: x.e, classifier: c,
                                        targets: x.t, bias: b, writingTo: destination)
        }
    }
}

func runFail(_ bad: Int, _ comm: Communicator) -> Int32 {
    let k = Case(name: "fail")
    let x = inputs(k)
    var t = x.targets
    if comm.rank == bad { t[1] = k.v + 5 }
    return outcome(comm) {
        _ = try TokenParallel(comm).lossAndGradients(CutCrossEntropy(options: k.options), embeddings: x.e,
                                                     classifier: x.c, targets: try Targets(t, shape: x.t.shape),
                                                     bias: x.bias)
    }
}

/// What a rank reports of a call that should fail on every rank: exit code 0 and "no error",
/// 3 and the error every rank agreed on, or 4 and any other error.
func outcome(_ comm: Communicator, _ body: () throws -> Void) -> Int32 {
    do {
        try body()
        say("rank \(comm.rank): no error")
        return 0
    } catch let e as ParallelError where e.isAgreed {
        say("rank \(comm.rank): agreed error: \(e)")
        return 3
    } catch {
        say("rank \(comm.rank): other error: \(error)")
        return 4
    }
}

// The exchange chunk at 1024 tokens (CutCrossEntropy.exchangeChunk's override), set
// before the engine first reads it and the same on every rank: the "chunks" cases' 2600
// tokens then cross three chunks while staying small enough for the token-parallel sums'
// 1e-6 budget (at 9000 tokens dBias's relative difference reached 2e-6).
setenv("CCE_EXCHANGE_CHUNK", "1024", 1)
// Lines go out at once (unbuffered), so that ranks' lines interleave whole.
let args = Array(CommandLine.arguments.dropFirst())
let comm: Communicator
do { comm = try Communicator.world() } catch {
    say("cannot start: \(error)")
    exit(2)
}
let status: Int32
switch args.first {
case "cases": status = runCases(Array(args.dropFirst()), comm)
case "mismatch": status = runMismatch(args.count > 1 ? args[1] : "", comm)
case "fail": status = runFail(args.count > 1 ? Int(args[1]) ?? 1 : 1, comm)
case "fail-buffer": status = runFailBuffer(args.count > 1 ? Int(args[1]) ?? 1 : 1, comm)
default:
    say("usage: CCEMPICheck cases [NAME ...] | mismatch WHAT | fail RANK")
    status = 2
}
comm.finalize()
exit(status)

func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
