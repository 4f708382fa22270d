// The vocabulary-parallel entry points of the C ABI (cce_cpu_shard_forward,
// cce_cpu_shard_loss_and_gradients), called as a C program calls them, with two or three "ranks"
// on threads of this process and a gather callback that meets them at a barrier. Checks the
// results against one process and the agreement round: ranks that disagree, shards that do not
// tile the vocabulary, or one rank whose inputs fail give an error on every rank, and no rank
// is left waiting.

import CCECPU
import CCEData
import CutCrossEntropy
import Foundation
import XCTest

/// The ranks' meeting point: each gather puts its bytes in its slot, waits for all, copies every
/// slot in rank order, and waits again before the slots can be reused.
final class ThreadGather: @unchecked Sendable {
    let ranks: Int
    private var slots: [[UInt8]]
    private let condition = NSCondition()
    private var arrived = 0, generation = 0

    init(ranks: Int) { self.ranks = ranks; slots = Array(repeating: [], count: ranks) }

    private func barrier() {
        condition.lock()
        let mine = generation
        arrived += 1
        if arrived == ranks {
            arrived = 0; generation += 1; condition.broadcast()
        } else {
            while generation == mine { condition.wait() }
        }
        condition.unlock()
    }

    func gather(rank: Int, _ mine: UnsafeRawPointer?, _ bytes: Int, _ all: UnsafeMutableRawPointer?) {
        slots[rank] = bytes == 0 ? [] : Array(UnsafeRawBufferPointer(start: mine, count: bytes))
        barrier()
        for r in 0..<ranks where bytes > 0 {
            slots[r].withUnsafeBytes { (all! + r * bytes).copyMemory(from: $0.baseAddress!, byteCount: bytes) }
        }
        barrier()
    }

    /// What a rank passes as `user`.
    final class Seat { let gather: ThreadGather; let rank: Int; var calls = 0; init(_ g: ThreadGather, _ r: Int) { gather = g; rank = r } }
}

let threadGather: CCECPUGatherFunction = { mine, count, dtype, all, user in
    let seat = Unmanaged<ThreadGather.Seat>.fromOpaque(user!).takeUnretainedValue()
    seat.calls += 1
    seat.gather.gather(rank: seat.rank, mine, Int(count) * (dtype == Int32(CCE_CPU_F64.rawValue) ? 8 : 4), all)
    return 0
}

typealias CCECPUGatherFunction = @convention(c) (UnsafeRawPointer?, Int64, Int32, UnsafeMutableRawPointer?,
                                                 UnsafeMutableRawPointer?) -> Int32

final class ShardCABITests: XCTestCase {
    struct RankResult { var status: Int32 = -1; var message = ""; var loss = [Double](repeating: .nan, count: 1)
                        var dE: [Float] = [], dC: [Float] = [], calls = 0 }

    /// What `run`'s `tweak` may change on one rank before its call.
    struct RankInputs { var options: cce_cpu_options; var targets: [Int64]; var e: [Float]; var weight: [Float]? }

    /// Runs one fused shard call per rank on its own thread. `shards`: each rank's (offset,
    /// count); `tweak` may change a rank's options, targets, E or class weights.
    func run(_ x: (e: [Float], c: [Float], t: [Int64]), n: Int, d: Int, v: Int, shards: [(Int, Int)],
             tweak: @escaping @Sendable (Int, inout RankInputs) -> Void = { _, _ in }) -> [RankResult] {
        let g = ThreadGather(ranks: shards.count)
        final class Results: @unchecked Sendable {
            var values: [RankResult]; let lock = NSLock(); let done = DispatchGroup()
            init(_ n: Int) { values = Array(repeating: RankResult(), count: n) }
        }
        let results = Results(shards.count)
        @Sendable func rank(_ r: Int) {
            var o = cce_cpu_options()
            cce_cpu_default_options(&o)
            o.threads = 1
            var mine = RankInputs(options: o, targets: x.t, e: x.e, weight: nil)
            tweak(r, &mine)
            o = mine.options
            let t = mine.targets
            let (offset, count) = shards[r]
            var out = RankResult()
            out.dE = [Float](repeating: .nan, count: n * d)
            out.dC = [Float](repeating: .nan, count: max(count, 0) * d)
            let seat = ThreadGather.Seat(g, r)
            let user = Unmanaged.passRetained(seat).toOpaque()
            let cRows = Array(x.c[(offset * d)..<min(x.c.count, (offset + max(count, 0)) * d)])
            let weight = mine.weight ?? []
            out.status = Int32(mine.e.withUnsafeBytes { e in cRows.withUnsafeBytes { c in t.withUnsafeBufferPointer { tp in
                weight.withUnsafeBufferPointer { w in
                out.loss.withUnsafeMutableBufferPointer { l in out.dE.withUnsafeMutableBytes { de in out.dC.withUnsafeMutableBytes { dc in
                    cce_cpu_shard_loss_and_gradients(
                        e.baseAddress, c.baseAddress, nil, tp.baseAddress, Int64(n), Int64(d), Int64(v), Int64(offset),
                        Int64(count), Int64(shards.count), Int32(CCE_CPU_F32.rawValue), Int32(CCE_CPU_F32.rawValue), 0,
                        mine.weight == nil ? nil : w.baseAddress,
                        &o, 0, nil, l.baseAddress, nil, de.baseAddress, dc.baseAddress, nil,
                        Int32(CCE_CPU_F32.rawValue), Int32(CCE_CPU_F32.rawValue), 0, nil, threadGather, user)
                }}}}
            }}})
            out.message = String(cString: cce_cpu_last_error())
            out.calls = seat.calls
            Unmanaged<ThreadGather.Seat>.fromOpaque(user).release()
            results.lock.lock(); results.values[r] = out; results.lock.unlock()
        }
        // One thread a rank (not a thread pool: every rank must reach each barrier).
        for r in 0..<shards.count {
            results.done.enter()
            Thread { defer { results.done.leave() }; rank(r) }.start()
        }
        results.done.wait()
        return results.values
    }

    func problem(n: Int, d: Int, v: Int) -> (e: [Float], c: [Float], t: [Int64]) {
        let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: .float32, seed: 5)
        return (data.embeddings.floats(), data.classifier.floats(), data.targets.values.map { Int64($0) })
    }

    func testRanksOnThreadsAgreeWithOneProcess() throws {
        let (n, d, v) = (150, 12, 701)
        let x = problem(n: n, d: d, v: v)
        let split = VocabularyShard.split(vocabulary: v, parts: 3).map { ($0.offset, $0.count) }
        let ranks = run(x, n: n, d: d, v: v, shards: split)
        var o = Options(); o.threads = 1
        let (f, g) = try CutCrossEntropy(options: o).lossAndGradients(
            embeddings: try Tensor(x.e, shape: [n, d]), classifier: try Tensor(x.c, shape: [v, d]),
            targets: try Targets(x.t.map { Int($0) }, shape: [n]))
        var dE = [Double](repeating: 0, count: n * d), dC: [Double] = []
        for (r, got) in ranks.enumerated() {
            XCTAssertEqual(got.status, 0, "rank \(r): \(got.message)")
            XCTAssertEqual(got.loss[0], ranks[0].loss[0], "every rank the same loss")
            XCTAssertEqual(got.calls, 1 + 2, "the agreement, then one chunk's bound and partials")
            for i in 0..<(n * d) { dE[i] += Double(got.dE[i]) }
            dC += got.dC.map { Double($0) }
        }
        XCTAssertEqual(ranks[0].loss[0], f.loss, accuracy: 1e-6 * abs(f.loss))
        XCTAssertLessThan(relativeError(dE, g.dE.doubles), 1e-5)
        XCTAssertLessThan(relativeError(dC, g.dC.doubles), 1e-5)
    }

    func testDisagreementsFailOnEveryRank() {
        let (n, d, v) = (40, 6, 101)
        let x = problem(n: n, d: d, v: v)
        let split = VocabularyShard.split(vocabulary: v, parts: 2).map { ($0.offset, $0.count) }
        // An option that differs.
        var ranks = run(x, n: n, d: d, v: v, shards: split) { r, a in if r == 1 { a.options.label_smoothing = 0.1 } }
        for got in ranks {
            XCTAssertEqual(got.status, Int32(CCE_CPU_ERR_STATE.rawValue))
            XCTAssertTrue(got.message.contains("ranks disagree on label_smoothing"), got.message)
            XCTAssertEqual(got.calls, 1, "no exchange after the agreement")
            XCTAssertTrue(got.loss[0].isNaN, "no output written")
        }
        // Shards that overlap (rank 1 starts a class early).
        ranks = run(x, n: n, d: d, v: v, shards: [(0, 51), (50, 51)])
        for got in ranks {
            XCTAssertEqual(got.status, Int32(CCE_CPU_ERR_STATE.rawValue))
            XCTAssertTrue(got.message.contains("rank 1's shard starts at class 50"), got.message)
        }
        // Shards that leave the last class out.
        ranks = run(x, n: n, d: d, v: v, shards: [(0, 50), (50, 50)])
        for got in ranks { XCTAssertTrue(got.message.contains("the 2 shards hold 100 classes, V = 101"), got.message) }
        // One rank's target out of range: that rank its own error, the other names it.
        ranks = run(x, n: n, d: d, v: v, shards: split) { r, a in if r == 0 { a.targets[3] = 500 } }
        XCTAssertEqual(ranks[0].status, Int32(CCE_CPU_ERR_TARGET.rawValue), ranks[0].message)
        XCTAssertEqual(ranks[1].status, Int32(CCE_CPU_ERR_STATE.rawValue))
        XCTAssertTrue(ranks[1].message.contains("rank 0 of 2 failed its checks"), ranks[1].message)
    }

    /// Inputs every rank must hold the same of (E, the targets, the class weights) are compared
    /// by fingerprint: one value changed on one rank fails every rank, naming the input.
    func testDifferentInputValuesFailOnEveryRank() {
        let (n, d, v) = (40, 6, 101)
        let x = problem(n: n, d: d, v: v)
        let split = VocabularyShard.split(vocabulary: v, parts: 2).map { ($0.offset, $0.count) }
        let weights = (0..<v).map { 0.5 + Float($0 % 7) / 7 }
        let cases: [(String, @Sendable (Int, inout RankInputs) -> Void)] = [
            ("E's values", { r, a in if r == 1 { a.e[17] = a.e[17].nextUp } }),
            ("the targets", { r, a in if r == 0 { a.targets[5] = (a.targets[5] + 1) % Int64(v) } }),
            ("the weight's values", { r, a in a.weight = weights; if r == 1 { a.weight![100] = 2 } }),
        ]
        for (name, tweak) in cases {
            let ranks = run(x, n: n, d: d, v: v, shards: split, tweak: tweak)
            for got in ranks {
                XCTAssertEqual(got.status, Int32(CCE_CPU_ERR_STATE.rawValue), "\(name): \(got.message)")
                XCTAssertTrue(got.message.contains("ranks disagree on \(name)"), got.message)
                XCTAssertEqual(got.calls, 1, "no exchange after the agreement")
                XCTAssertTrue(got.loss[0].isNaN, "no output written")
            }
        }
        // The same weights on every rank pass.
        let ranks = run(x, n: n, d: d, v: v, shards: split) { _, a in a.weight = weights }
        for got in ranks { XCTAssertEqual(got.status, 0, got.message) }
    }
}
