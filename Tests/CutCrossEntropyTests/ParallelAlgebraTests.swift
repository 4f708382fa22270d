// The algebra of CCE split over processes, in one process and without MPI: vocabulary shards
// combined by ShardForward.combine, token slices with the global mean embedding
// (Sources/CutCrossEntropy/Parallel.swift). MPITests runs the same under mpirun.

import CCEData
import CCEReference
import CutCrossEntropy
import Foundation
import XCTest

final class ParallelAlgebraTests: XCTestCase {
    /// P vocabulary shards (P = 1 ... 5, V = 61 and V = 3, where some shards hold nothing):
    /// the combined loss, LSE and token losses, the summed partial dE and the shards' dC and
    /// dBias agree with one process: 1e-6 relative (1e-12 in the exact mode).
    func testVocabularyShardsCombineToOneProcess() throws {
        var withOptions = Options()
        withOptions.softcap = 6; withOptions.shift = 1; withOptions.labelSmoothing = 0.15; withOptions.zLoss = 1e-3
        withOptions.filterEpsilon = .none
        var weighted = Options(); weighted.labelSmoothing = 0.1; weighted.reduction = .sum
        var exact = withOptions; exact.mode = .exact
        for v in [61, 3] {
            weighted.classWeights = (0..<v).map { Float(1 + $0 % 3) / 2 }
            for (name, o) in [("options", withOptions), ("weights", weighted), ("exact", exact)] {
                let (e, c, t, b) = randomProblem(n: 30, d: 12, v: v, seed: UInt64(v), batch: 3, withBias: true)
                let cce = CutCrossEntropy(options: o)
                let (f1, g1) = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
                let budget = o.mode == .exact ? 1e-12 : 1e-6
                for parts in 1...5 {
                    let shards = VocabularyShard.split(vocabulary: v, parts: parts)
                    let forwards = try shards.map { s in
                        try cce.forward(embeddings: e, classifier: c.rows(s.range), targets: t, bias: b!.rows(s.range), shard: s)
                    }
                    let outputs = try forwards.map { try $0.combine(forwards.map(\.partials)) }
                    var dE = [Double](repeating: 0, count: e.count), dC: [Double] = [], dBias: [Double] = []
                    for (s, out) in zip(shards, outputs) {
                        let g = try cce.backward(out, embeddings: e, classifier: c.rows(s.range), bias: b!.rows(s.range))
                        for i in 0..<dE.count { dE[i] += g.dE[i] }
                        dC += g.dC.doubles; dBias += g.dBias!.doubles
                        XCTAssertTrue(bitwiseEqual(out.lse, outputs[0].lse), "every shard combines to the same bits")
                    }
                    let what = "V = \(v), \(name), \(parts) shards"
                    XCTAssertLessThanOrEqual(relativeError([outputs[0].loss], [f1.loss]), budget, "\(what): loss")
                    XCTAssertLessThanOrEqual(relativeError(outputs[0].lse.doubles, f1.lse.doubles), budget, "\(what): lse")
                    XCTAssertLessThanOrEqual(relativeError(outputs[0].tokenLosses.doubles, f1.tokenLosses.doubles), budget,
                                             "\(what): token losses")
                    XCTAssertLessThanOrEqual(relativeError(dE, g1.dE.doubles), budget, "\(what): dE")
                    XCTAssertLessThanOrEqual(relativeError(dC, g1.dC.doubles), budget, "\(what): dC")
                    XCTAssertLessThanOrEqual(relativeError(dBias, g1.dBias!.doubles), budget, "\(what): dBias")
                }
            }
        }
    }

    /// The fused call of one shard holding the whole vocabulary, through the exchange (the path
    /// every rank of a vocabulary-parallel run takes: the chunk's forward, the exchange, then
    /// its backward, on other workspaces), gives the one-process call's bits: with the saved
    /// logits (one SavedLogits per token block of the chunk) and without them. On LM-like data
    /// the two settings differ in dE, so the saved logits were read on both paths.
    func testOneShardThroughTheExchangeIsTheOneProcessCall() throws {
        let data = LMLikeData.make(tokens: 150, dim: 48, vocab: 3000, type: .bfloat16, scale: 4, alpha: 1.5, seed: 9)
        var dEs: [Values] = []
        for perRow in [0, 2048] {
            var o = Options(); o.savedLogitsPerRow = perRow; o.threads = 2
            let cce = CutCrossEntropy(options: o)
            let (f1, g1) = try cce.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                    targets: data.targets)
            let shard = VocabularyShard.split(vocabulary: 3000, parts: 1)[0]
            let (f, g) = try cce.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                  targets: data.targets, shard: shard, exchange: { [$0] })
            XCTAssertEqual(f.loss.bitPattern, f1.loss.bitPattern, "loss, room \(perRow)")
            XCTAssertTrue(bitwiseEqual(f.lse, f1.lse), "lse, room \(perRow)")
            XCTAssertTrue(bitwiseEqual(g.dE, g1.dE), "dE, room \(perRow)")
            XCTAssertTrue(bitwiseEqual(g.dC, g1.dC), "dC, room \(perRow)")
            dEs.append(g.dE)
        }
        XCTAssertFalse(bitwiseEqual(dEs[0], dEs[1]), "the saved logits changed nothing: they were not read")
    }

    /// The exchange chunk moves how often a shard's fused call exchanges, not its results:
    /// chunks of 64 tokens (three exchanges for 150 tokens, each of its own token range, in
    /// order) give the bits of one chunk; a chunk below 1 is a clear error.
    func testExchangeChunkChangesNoBits() throws {
        let data = LMLikeData.make(tokens: 150, dim: 48, vocab: 3000, type: .bfloat16, scale: 4, alpha: 1.5, seed: 10)
        let shard = VocabularyShard.split(vocabulary: 3000, parts: 1)[0]
        var o = Options(); o.threads = 2
        var results: [(ForwardOutput, Gradients)] = [], ranges: [[Int]] = []
        for chunk in [4096, 64] {
            var cce = CutCrossEntropy(options: o)
            cce.exchangeChunk = chunk
            var seen: [Int] = []
            results.append(try cce.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                    targets: data.targets, shard: shard,
                                                    exchange: { seen.append($0.lse.count); return [$0] }))
            ranges.append(seen)
        }
        XCTAssertEqual(ranges[0].count, 1)
        XCTAssertEqual(ranges[1], [64, 64, 22])
        XCTAssertEqual(results[0].0.loss.bitPattern, results[1].0.loss.bitPattern)
        XCTAssertTrue(bitwiseEqual(results[0].0.lse, results[1].0.lse))
        XCTAssertTrue(bitwiseEqual(results[0].1.dE, results[1].1.dE))
        XCTAssertTrue(bitwiseEqual(results[0].1.dC, results[1].1.dC))
        XCTAssertEqual(CutCrossEntropy.defaultExchangeChunk(threads: 1), 1024)
        XCTAssertEqual(CutCrossEntropy.defaultExchangeChunk(threads: 16), 4096)
        var bad = CutCrossEntropy(options: o)
        bad.exchangeChunk = 0
        XCTAssertThrowsError(try bad.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                      targets: data.targets, shard: shard, exchange: { [$0] })) {
            XCTAssertTrue("\($0)".contains("exchangeChunk"), "\($0)")
        }
    }

    /// Token slices sorted by the global mean embedding: each slice's LSE, token losses and
    /// dE have the bits of one process (the same tiles in the same order), dC summed over the
    /// slices agrees within 1e-6; the mean divisor is the global one.
    func testTokenSlicesMatchOneProcess() throws {
        let (e, c, t, b) = randomProblem(n: 48, d: 16, v: 97, seed: 3, batch: 4, withBias: true)
        var o = Options(); o.shift = 1
        let cce = CutCrossEntropy(options: o)
        let (f1, g1) = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
        let seq = 12
        let slices = [0..<1, 1..<3, 3..<4]   // sequences per rank
        let parts = try slices.map { r in
            (try e.rows(r), try Targets(Array(t.values[(r.lowerBound * seq)..<(r.upperBound * seq)]), shape: [r.count, seq]))
        }
        let summaries = try parts.map { try cce.tokenSlice(embeddings: $0.0, classifier: c, targets: $0.1, bias: b) }
        let active = summaries.reduce(0) { $0 + $1.activeTokens }
        let divisor = summaries.reduce(0.0) { $0 + $1.meanDivisor }
        XCTAssertEqual(active, f1.activeTokens)
        var sum = [Double](repeating: 0, count: 16)
        for s in summaries { for k in 0..<16 { sum[k] += s.embeddingSum[k] } }
        var local = cce
        local.options.reduction = .sum
        local.sortingMean = TokenSlice.mean(sum: sum, activeTokens: active)
        var dC = [Double](repeating: 0, count: c.count), total = 0.0, lse: [Double] = [], dE: [Double] = []
        for (pe, pt) in parts {
            let (f, g) = try local.lossAndGradients(embeddings: pe, classifier: c, targets: pt, bias: b,
                                                    upstream: .scalar(1 / divisor))
            total += f.loss; lse += f.lse.doubles; dE += g.dE.doubles
            for i in 0..<dC.count { dC[i] += g.dC[i] }
        }
        XCTAssertEqual(lse.map(\.bitPattern), f1.lse.doubles.map(\.bitPattern), "LSE bits")
        XCTAssertEqual(dE.map(\.bitPattern), g1.dE.doubles.map(\.bitPattern), "dE bits")
        XCTAssertLessThanOrEqual(relativeError([total / divisor], [f1.loss]), 1e-12)
        XCTAssertLessThanOrEqual(relativeError(dC, g1.dC.doubles), 1e-6)
    }

    /// P shards of a bf16 vocabulary on LM-like data through the fused exchanging call, run
    /// side by side on P threads with in-process collectives (what the ranks of a
    /// vocabulary-parallel run do over MPI), in chunks of 96 tokens (three, the last short),
    /// at 4 and 2 shards (4100 and 8200 classes each: 2 and 4 vocabulary segments after the
    /// first block): the loss and LSE agree with one process (1e-6); dE (the shards' partials
    /// summed in order), dC and dBias are within twice one process's own error against the
    /// Float64 truth plus 1e-4, as under mpirun (Tests/MPICheck); 1 and 3 threads a shard give
    /// the same bits (segments and backward parts follow the thread count, results do not);
    /// the seed exchange runs once per chunk before each partials exchange, and with it the
    /// shards keep fewer logits than with only their own bound.
    func testShardsWithSeedExchangeAgreeWithOneProcess() throws {
        let data = LMLikeData.make(tokens: 200, dim: 16, vocab: 16400, type: .bfloat16, seed: 5)
        let bias = try Tensor((0..<16400).map { Float(($0 * 7919) % 13) / 50 }, shape: [16400])
        var o = Options(); o.threads = 1
        let one = CutCrossEntropy(options: o)
        let (f1, g1) = try one.lossAndGradients(embeddings: data.embeddings, classifier: data.classifier,
                                                targets: data.targets, bias: bias)
        var exact = o; exact.mode = .exact
        let (_, truth) = try CutCrossEntropy(options: exact).lossAndGradients(
            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets, bias: bias)
        func error(_ a: [Double], _ b: Values) -> Double { relativeError(a, b.doubles) }
        for parts in [4, 2] {
            let shards = VocabularyShard.split(vocabulary: 16400, parts: parts)
            var runs: [[ShardRun]] = []
            for (threads, seeds) in [(1, true), (3, true), (1, false)] {
                var cce = CutCrossEntropy(options: o)
                cce.options.threads = threads
                cce.exchangeChunk = 96
                runs.append(try runShards(cce, data, bias: bias, shards: shards, seeds: seeds))
            }
            let what = "\(parts) shards"
            let (f, _) = runs[0][0].result
            XCTAssertLessThanOrEqual(relativeError([f.loss], [f1.loss]), 1e-6, "\(what): loss")
            XCTAssertLessThanOrEqual(relativeError(f.lse.doubles, f1.lse.doubles), 1e-6, "\(what): lse")
            var dE = [Double](repeating: 0, count: data.embeddings.count), dC: [Double] = [], dBias: [Double] = []
            for run in runs[0] {
                let g = run.result.1
                for i in 0..<dE.count { dE[i] += g.dE.doubles[i] }
                dC += g.dC.doubles; dBias += g.dBias!.doubles
                XCTAssertEqual(run.seedCalls, [96, 96, 8], "\(what): one seed exchange per chunk, before its partials")
            }
            for (name, mine, oneProcess, exactValues) in [("dE", dE, g1.dE, truth.dE), ("dC", dC, g1.dC, truth.dC),
                                                           ("dBias", dBias, g1.dBias!, truth.dBias!)] {
                let own = error(oneProcess.doubles, exactValues)
                XCTAssertLessThanOrEqual(error(mine, exactValues), 2 * own + 1e-4, "\(what): \(name) against Float64")
            }
            for (a, b) in zip(runs[0], runs[1]) {
                XCTAssertTrue(bitwiseEqual(a.result.1.dE, b.result.1.dE), "\(what): dE, 1 and 3 threads")
                XCTAssertTrue(bitwiseEqual(a.result.1.dC, b.result.1.dC), "\(what): dC, 1 and 3 threads")
                XCTAssertTrue(bitwiseEqual(a.result.0.lse, b.result.0.lse), "\(what): lse, 1 and 3 threads")
            }
            let saved = runs.map { $0.reduce(0) { $0 + $1.result.1.filter.savedLogits } }
            XCTAssertGreaterThan(saved[0], 0, "\(what): the shards kept logits")
            XCTAssertLessThan(saved[0], saved[2], "\(what): the seed exchange cut the kept logits")
            XCTAssertTrue(runs[2].allSatisfy { $0.seedCalls.isEmpty })
        }
    }

    /// What one shard's call gave in `runShards`, and the token counts of its seed exchanges.
    struct ShardRun { var result: (ForwardOutput, Gradients); var seedCalls: [Int] }

    /// Each shard's fused exchanging call on its own thread, the exchanges all-gathers in shard order.
    func runShards(_ cce: CutCrossEntropy, _ data: LMLikeData, bias: Tensor, shards: [VocabularyShard], seeds: Bool) throws
        -> [ShardRun]
    {
        let partials = Rendezvous<ShardPartials>(parties: shards.count), bounds = Rendezvous<[Float]>(parties: shards.count)
        let results = Locked([Result<ShardRun, Error>?](repeating: nil, count: shards.count))
        let done = DispatchSemaphore(value: 0)
        for (r, shard) in shards.enumerated() {
            Thread {
                var calls: [Int] = []
                let outcome = Result {
                    let result = try cce.lossAndGradients(
                        embeddings: data.embeddings, classifier: try data.classifier.rows(shard.range), targets: data.targets,
                        bias: try bias.rows(shard.range), shard: shard,
                        seeds: seeds ? { calls.append($0.count); return bounds.allGather(r, $0) } : nil,
                        exchange: { partials.allGather(r, $0) })
                    return ShardRun(result: result, seedCalls: calls)
                }
                results.withLock { $0[r] = outcome }
                done.signal()
            }.start()
        }
        for _ in shards { done.wait() }
        return try results.withLock { $0 }.map { try $0!.get() }
    }

    /// Bad shards and partials are refused with CCEError, not trapped.
    func testShardErrors() throws {
        XCTAssertThrowsError(try VocabularyShard(offset: 5, count: 10, vocabulary: 12))
        let (e, c, t, _) = randomProblem(n: 10, d: 4, v: 9)
        let cce = CutCrossEntropy()
        let s = VocabularyShard.split(vocabulary: 9, parts: 2)
        XCTAssertThrowsError(try cce.forward(embeddings: e, classifier: c, targets: t, shard: s[0])) {
            XCTAssertTrue("\($0)".contains("has 9 rows but the shard"), "\($0)")
        }
        let f = try cce.forward(embeddings: e, classifier: c.rows(s[0].range), targets: t, shard: s[0])
        let other = try cce.forward(embeddings: try e.rows(0..<5), classifier: c.rows(s[1].range),
                                    targets: try Targets(Array(t.values[0..<5])), shard: s[1])
        XCTAssertThrowsError(try f.combine([f.partials, other.partials])) {
            XCTAssertTrue("\($0)".contains("shard partials 1 cover"), "\($0)")
        }
        XCTAssertThrowsError(try ShardPartials(packed: .float32([1, 2, 3]), activeTokens: 2))
    }
}
