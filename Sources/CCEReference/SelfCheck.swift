// `cce selfcheck` and FuzzTests: drawn cases against the Float64 oracle and against the engine
// itself, on whatever tile kernels this CPU runs.
//
// Each case is drawn from its own seed: shapes that fall on and off every tile boundary (the
// kernels' row groups of 6, 12 and 32, token blocks, backward blocks of 16 to 256 classes,
// forward blocks of 256, vocabulary segments), f32, bf16 and f16 storage, random or LM-like
// data, every reduction, shift over B x T, soft cap, label smoothing, z-loss, class weights,
// bias, ignored targets, every mode, the filter on or off, the estimate on or off, sorted or
// not, saved logits with room 0, 1 to 40 or 2048 a row. The fixed-grid tests
// (OracleAgreementTests, PropertyTests) check each feature at chosen shapes; this draws the
// combinations nobody chose, and a failure names its seed, so that it can be replayed alone.
//
// Per case (`check`):
//   1. lossAndGradients against Oracle.compute with the same options. Budgets: exact mode 1e-12
//      (gradients 1e-12 + 1e-11·max|oracle|); Float32 accumulation without a filter, and Float32
//      storage with its own (ε = 2^-28): loss, LSE, token losses 1e-5 + 1e-5·max|oracle|,
//      gradients f + 1e-4·max|oracle| with the floor f = 1e-6·max(1, N/64) (dC's chains are N
//      long: where every term should cancel, as at V = 1 without smoothing, each adds a
//      rounding of p − 1); 16-bit storage with its filter (ε = 2^-12 or 2^-15, the dropped mass
//      put back to first order): loss, LSE and token losses as before, gradients within 2e-2
//      relative (Docs/NUMERICS.md measures up to 3.3e-3 on flat LM-like data), 0.35 with the
//      plain filter (the reference's default: up to 0.21 there). A lost or doubled tile, a
//      wrong row or a wrong class is an error of order one.
//   2. The same call on 1 and on 3 threads: the same bits (loss, LSE, dE, dC, dBias).
//   3. forward alone: the fused call's loss and LSE bits; forward then backward: the fused
//      call's dC bits, its dBias bits where dBias's estimate is off (exact mode, no filter,
//      no estimate, or dC not filtered), and its dE bits where no dropped mass is put back
//      (exact mode, no filter, or no estimate and no saved logits); else the split call's dE
//      and dBias within the budget of 1 (the two estimate the dropped mass at different
//      granularities).
//   4. The fused call into the caller's arrays, filled with NaN beforehand: the returned
//      gradients' bits (every value written, none left from before).
//
// Vocabulary shards (`checkShards`): P = 1 to 5 shards of a drawn case (V not a multiple of P,
// a shard empty where V < P), two ways: the algebra (each shard's forward, the combined
// partials, each shard's backward) and the fused exchanging call every rank of a
// vocabulary-parallel run makes, its shards side by side on threads with in-process
// all-gathers, in chunks of 17 to 200 tokens, with and without the seed exchange. LSE within
// 1e-6 relative of one process's (1e-12 in the exact mode), token losses and the loss within
// 1e-6 relative or 1e-6 of the LSE's scale (checkShards says why); dE (the
// shards' partials summed in shard order), dC and dBias within 1e-12 of one process's in the
// exact mode, else within the budgets of 1 against the oracle. Not against one process's
// Float32 gradients: each shard's chains end where its classes do, so the two round
// differently, and their difference is the sum of two errors of that size (4.6e-6 relative at
// N = 3 with label smoothing, where one process is 1.8e-6 from the oracle and the shards
// 3.6e-6). With a filter, each shard filters with the global LSE but sorts, keeps and
// estimates by its own blocks, so its dropped mass is not one process's (2 to 4 times one
// process's error was seen on small shards).
//
// Token slices (`checkTokenSlices`): P = 1 to 5 slices of the case's tokens (whole sequences
// of a batch; some slices empty), as the ranks of a token-parallel run hold them, each sorting
// by the global mean embedding and reducing with the global divisor. A token's row does not
// depend on the other tokens, so LSE, token losses and dE rows must have one process's bits;
// the loss within 1e-6 relative (1e-12 exact), dC and dBias (summed in slice order) as the
// shards' are held.

import CCEData
import CutCrossEntropy
import Foundation

public enum SelfCheck {
    /// One drawn case.
    public struct Case: CustomStringConvertible, Sendable {
        public var seed: UInt64
        public var n = 1, d = 1, v = 1, batch: Int? = nil
        public var type = ElementType.float32
        public var bias = false
        public var ignoreFraction = 0.0
        public var lmLike = false
        public var options = Options()
        public var description: String {
            let o = options
            return "seed \(seed): N=\(n) D=\(d) V=\(v) batch=\(batch.map(String.init) ?? "-") \(type) bias=\(bias) "
                + "ignored≈\(ignoreFraction) lmLike=\(lmLike) reduction=\(o.reduction) shift=\(o.shift) "
                + "softcap=\(o.softcap.map { "\($0)" } ?? "-") smoothing=\(o.labelSmoothing) zloss=\(o.zLoss) "
                + "classWeights=\(o.classWeights != nil) mode=\(o.mode) filter=\(o.filterEpsilon) "
                + "correction=\(o.filterCorrection) sort=\(o.sortVocabulary) savedPerRow=\(o.savedLogitsPerRow)"
        }
    }

    /// A size in 1 ... limit, near one of `edges` half of the time.
    static func size(_ rng: inout SeededRandom, upTo limit: Int, near edges: [Int]) -> Int {
        if rng.uniform() < 0.5, let edge = edges.filter({ $0 <= limit + 1 }).randomElement(using: &rng) {
            return min(limit, max(1, edge + Int(rng.next() % 3) - 1))
        }
        return 1 + Int(rng.next() % UInt64(limit))
    }

    /// The case of `seed` (the same on every machine).
    public static func draw(seed: UInt64) -> Case {
        var rng = SeededRandom(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ 17)
        var c = Case(seed: seed)
        c.n = size(&rng, upTo: 420, near: [6, 12, 32, 64, 96, 128, 132, 174, 192, 256, 288, 384])
        c.d = size(&rng, upTo: 72, near: [8, 16, 32, 64])
        c.v = size(&rng, upTo: rng.uniform() < 0.3 ? 3000 : 700, near: [16, 32, 64, 128, 256, 512, 768, 1024, 2048])
        c.type = [ElementType.float32, .bfloat16, .float16][Int(rng.next() % 3)]
        c.bias = rng.uniform() < 0.4
        c.ignoreFraction = rng.uniform() < 0.3 ? rng.uniform() * 0.4 : 0
        c.lmLike = rng.uniform() < 0.4
        var o = Options()
        o.reduction = [Reduction.mean, .sum, .none][Int(rng.next() % 3)]
        if rng.uniform() < 0.3 {
            let b = 1 + Int(rng.next() % 4)
            c.n = max(b, c.n / b * b); c.batch = b
            o.shift = Int(rng.next() % 3)
        }
        if rng.uniform() < 0.3 { o.softcap = 1 + rng.uniform() * 29 }
        if rng.uniform() < 0.3 { o.labelSmoothing = rng.uniform() * 0.3 }
        if rng.uniform() < 0.25 { o.zLoss = 1e-4 * pow(100, rng.uniform()) }
        if rng.uniform() < 0.2 { o.classWeights = (0..<c.v).map { _ in Float(0.25 + rng.uniform() * 2) } }
        let mode = rng.uniform()
        o.mode = mode < 0.7 ? .default : mode < 0.85 ? .exact : [Mode.kahan, .kahanFullE, .kahanFullC][Int(rng.next() % 3)]
        if rng.uniform() < 0.25 { o.filterEpsilon = .none }
        if rng.uniform() < 0.15 { o.filterCorrection = false }
        if rng.uniform() < 0.15 { o.sortVocabulary = false }
        let room = rng.uniform()
        o.savedLogitsPerRow = room < 0.2 ? 0 : room < 0.4 ? 1 + Int(rng.next() % 40) : 2048
        c.options = o
        return c
    }

    /// The case's E, C, targets and bias.
    public static func problem(_ c: Case) throws -> (Tensor, Tensor, Targets, Tensor?) {
        var rng = SeededRandom(seed: c.seed ^ 0xABCD)
        let tShape = c.batch.map { [$0, c.n / $0] } ?? [c.n]
        let bias: Tensor? = c.bias
            ? try Tensor(converting: (0..<c.v).map { _ in Float(rng.normal() * 0.5) }, to: c.type, shape: [c.v]) : nil
        if c.lmLike {
            let data = LMLikeData.make(tokens: c.n, dim: c.d, vocab: c.v, type: c.type, seed: c.seed)
            let targets = data.targets.values.map { rng.uniform() < c.ignoreFraction ? c.options.ignoreIndex : Int($0) }
            let e = try c.batch.map { try Tensor(converting: data.embeddings.floats(), to: c.type, shape: [$0, c.n / $0, c.d]) }
                ?? data.embeddings
            return (e, data.classifier, try Targets(targets, shape: tShape), bias)
        }
        // Gaussian E and C, scaled so that logits spread over a few units.
        let e = (0..<(c.n * c.d)).map { _ in Float(rng.normal()) }
        let w = (0..<(c.v * c.d)).map { _ in Float(rng.normal() * 2 / Double(c.d).squareRoot()) }
        let t = (0..<c.n).map { _ in rng.uniform() < c.ignoreFraction ? c.options.ignoreIndex : Int(rng.next() % UInt64(c.v)) }
        return (try Tensor(converting: e, to: c.type, shape: c.batch.map { [$0, c.n / $0, c.d] } ?? [c.n, c.d]),
                try Tensor(converting: w, to: c.type, shape: [c.v, c.d]), try Targets(t, shape: tShape), bias)
    }

    /// The upstream gradient a case's calls take.
    static func upstream(_ c: Case, tokens: Int) -> Upstream {
        c.options.reduction == .none ? .perToken((0..<tokens).map { Float(0.5 + Double($0 % 3) * 0.25) }) : .scalar(0.7)
    }

    /// The gradients' absolute floor in Float32 accumulation (see the top of the file).
    static func gradientFloor(_ c: Case) -> Double { 1e-6 * max(1, Double(c.n) / 64) }

    /// What failed, one line each.
    struct Failures {
        let name: String
        var lines: [String] = []
        mutating func fail(_ what: String) { lines.append("\(name): \(what)") }
        mutating func expect(_ ok: Bool, _ what: @autoclosure () -> String) { if !ok { fail(what()) } }
        /// max |a − b| ≤ atol + rtol·max|b|, where both NaN agree (the LSE of a row with no
        /// target) and one NaN is an infinite error.
        mutating func close(_ a: [Double], _ b: [Double], atol: Double, rtol: Double, _ what: String) {
            guard a.count == b.count else { return fail("\(what): \(a.count) values against \(b.count)") }
            let scale = b.reduce(0) { max($0, $1.isNaN ? 0 : abs($1)) }
            var worst = 0.0, at = -1
            for i in 0..<a.count where !(a[i].isNaN && b[i].isNaN) {
                let e = abs(a[i] - b[i])
                if !(e <= worst) { worst = e.isNaN ? .infinity : e; at = i }
            }
            let budget = atol + rtol * scale
            expect(worst <= budget, "\(what): largest error \(worst) at [\(at)], budget \(budget)")
        }
        /// ‖a − b‖ / ‖b‖ ≤ budget; where b is all zero (V = 1 without smoothing: every softmax
        /// is 1), every |a| ≤ 1e-6 instead (the rounding of p − 1 at 1 ± ulp).
        mutating func relative(_ a: [Double], _ b: [Double], _ budget: Double, _ what: String) {
            if b.allSatisfy({ $0 == 0 }) {
                let worst = a.reduce(0) { max($0, abs($1)) }
                return expect(worst <= 1e-6, "\(what): largest |value| \(worst) where the reference is zero")
            }
            let r = relativeError(a, b)
            expect(r <= budget, "\(what): relative error \(r), budget \(budget)")
        }
        /// A gradient against the oracle's, with check 1's budgets for the case.
        mutating func againstOracle(_ got: [Double], _ truth: [Double], _ c: Case, _ what: String) {
            if c.options.mode == .exact {
                close(got, truth, atol: 1e-12, rtol: 1e-11, what)
            } else if c.type != .float32 && c.options.filterEpsilon != .none {
                relative(got, truth, c.options.filterCorrection ? 2e-2 : 0.35, what)
            } else {
                close(got, truth, atol: gradientFloor(c), rtol: 1e-4, what)
            }
        }
        /// A gradient summed over shards or slices: within 1e-12 of one process's in the exact
        /// mode, else within check 1's budgets against the oracle.
        mutating func againstOneProcess(_ got: [Double], mine: [Double], truth: [Double], _ c: Case, _ what: String) {
            if c.options.mode == .exact { relative(got, mine, 1e-12, what) } else { againstOracle(got, truth, c, "\(what) against the oracle") }
        }
    }

    /// The values' bits (Float32's widened), for comparisons of concatenated outputs.
    static func bits(_ v: Values) -> [UInt64] {
        switch v { case .float32(let x): x.map { UInt64($0.bitPattern) }; case .float64(let x): x.map(\.bitPattern) }
    }

    static func sameBits(_ a: Values, _ b: Values) -> Bool {
        switch (a, b) {
        case (.float32, .float32), (.float64, .float64): bits(a) == bits(b)
        default: false
        }
    }

    /// A case's inputs, and what both kinds of check compare with: the one-process fused call
    /// on one thread and the oracle, computed once.
    struct Prepared {
        let e: Tensor, cl: Tensor, t: Targets, b: Tensor?, up: Upstream
        let out: ForwardOutput, g: Gradients, oracle: OracleResult
    }

    static func prepare(_ c: Case) throws -> Prepared {
        let (e, cl, t, b) = try problem(c)
        let up = upstream(c, tokens: t.count)
        var o = c.options; o.threads = 1
        let (out, g) = try CutCrossEntropy(options: o).lossAndGradients(embeddings: e, classifier: cl, targets: t,
                                                                         bias: b, upstream: up)
        let oracle = try Oracle.compute(embeddings: e, classifier: cl, targets: t, bias: b, options: c.options, upstream: up)
        return Prepared(e: e, cl: cl, t: t, b: b, up: up, out: out, g: g, oracle: oracle)
    }

    /// Checks 1 to 4 of one case; returns what failed (nothing when all passed). Throws only
    /// where a call refused the case, which is a failure too.
    public static func check(_ c: Case) throws -> [String] { try check(c, prepare(c)) }

    /// The case's vocabulary in `parts` shards, both ways, against one process (see the top of
    /// the file); returns what failed.
    public static func checkShards(_ c: Case, parts: Int) throws -> [String] { try checkShards(c, parts: parts, prepare(c)) }

    /// The case's tokens in `parts` slices against one process (`checkTokenSlices`); returns
    /// what failed.
    public static func checkTokenSlices(_ c: Case, parts: Int) throws -> [String] {
        try checkTokenSlices(c, parts: parts, prepare(c))
    }

    /// `check`, then `checkShards` and `checkTokenSlices` when `parts` is given, from one
    /// preparation of the case.
    public static func check(_ c: Case, shards parts: Int?) throws -> [String] {
        let p = try prepare(c)
        return try check(c, p) + (parts.map { try checkShards(c, parts: $0, p) + checkTokenSlices(c, parts: $0, p) } ?? [])
    }

    static func check(_ c: Case, _ p: Prepared) throws -> [String] {
        var f = Failures(name: c.description)
        let (e, cl, t, b, up, out, g, o) = (p.e, p.cl, p.t, p.b, p.up, p.out, p.g, p.oracle)
        var o3 = c.options; o3.threads = 3
        let three = CutCrossEntropy(options: o3)

        // 1. Against the oracle.
        let exact = c.options.mode == .exact
        let (la, lr) = exact ? (1e-12, 1e-12) : (1e-5, 1e-5)
        f.close([out.loss], [o.loss], atol: la, rtol: lr, "loss")
        f.close(out.lse.doubles, o.lse, atol: la, rtol: lr, "LSE")
        f.close(out.tokenLosses.doubles, o.tokenLosses, atol: la, rtol: lr, "token losses")
        f.expect((g.dBias == nil) == (o.dBias == nil), "dBias presence")
        var gradients = [("dE", g.dE.doubles, o.dE), ("dC", g.dC.doubles, o.dC)]
        if let db = g.dBias, let odb = o.dBias { gradients.append(("dBias", db.doubles, odb)) }
        for (what, got, want) in gradients { f.againstOracle(got, want, c, what) }

        // 2. 1 and 3 threads: the same bits.
        let (out3, g3) = try three.lossAndGradients(embeddings: e, classifier: cl, targets: t, bias: b, upstream: up)
        f.expect(out.loss.bitPattern == out3.loss.bitPattern, "loss on 1 and 3 threads")
        f.expect(sameBits(out.lse, out3.lse), "LSE on 1 and 3 threads")
        f.expect(sameBits(g.dE, g3.dE), "dE on 1 and 3 threads")
        f.expect(sameBits(g.dC, g3.dC), "dC on 1 and 3 threads")
        if let db = g.dBias, let db3 = g3.dBias { f.expect(sameBits(db, db3), "dBias on 1 and 3 threads") }

        // 3. The forward alone, then the backward alone, against the fused call.
        let split = try three.forward(embeddings: e, classifier: cl, targets: t, bias: b)
        f.expect(split.loss.bitPattern == out.loss.bitPattern, "forward-only loss")
        f.expect(sameBits(split.lse, out.lse), "forward-only LSE")
        let gs = try three.backward(split, embeddings: e, classifier: cl, bias: b, upstream: up)
        f.expect(sameBits(gs.dC, g.dC), "split dC")
        if let db = g.dBias, let dbs = gs.dBias, let odb = o.dBias {
            // dBias's dropped-mass estimate (with the dE one, where dC is filtered) differs between the calls.
            let policy = BackwardPolicy(c.options, embeddings: e.elementType, classifier: cl.elementType)
            if policy.estimate && policy.filtersDC {
                f.againstOracle(dbs.doubles, odb, c, "split dBias")
            } else {
                f.expect(sameBits(db, dbs), "split dBias")
            }
        }
        if exact || c.options.filterEpsilon == .none || (!c.options.filterCorrection && c.options.savedLogitsPerRow == 0) {
            f.expect(sameBits(gs.dE, g.dE), "split dE")
        } else {
            f.againstOracle(gs.dE.doubles, o.dE, c, "split dE")
        }

        // 4. Into the caller's arrays, left full of NaN by an earlier step (the exact mode rounds
        // its Float64 gradients once into them).
        var dE = [Float](repeating: .nan, count: g.dE.count), dC = [Float](repeating: .nan, count: g.dC.count)
        var dBias = [Float](repeating: .nan, count: g.dBias?.count ?? 0)
        let (kept, _) = try three.lossAndGradients(embeddings: e, classifier: cl, targets: t, bias: b, upstream: up,
                                                   dE: &dE, dC: &dC, dBias: &dBias)
        func rounded(_ v: Values) -> Values {
            if case .float64(let x) = v { return .float32(x.map { Float($0) }) }
            return v
        }
        f.expect(kept.loss.bitPattern == out.loss.bitPattern, "loss, into kept arrays")
        f.expect(sameBits(.float32(dE), rounded(g.dE)), "dE into kept arrays")
        f.expect(sameBits(.float32(dC), rounded(g.dC)), "dC into kept arrays")
        if let db = g.dBias { f.expect(sameBits(.float32(dBias), rounded(db)), "dBias into kept arrays") }
        return f.lines
    }

    static func checkShards(_ c: Case, parts: Int, _ p: Prepared) throws -> [String] {
        var f = Failures(name: "\(c), \(parts) shards")
        let (e, cl, t, b, up, one, g1) = (p.e, p.cl, p.t, p.b, p.up, p.out, p.g)
        var o = c.options; o.threads = 1
        var cce = CutCrossEntropy(options: o)
        let shards = VocabularyShard.split(vocabulary: c.v, parts: parts)
        let exact = c.options.mode == .exact
        // The shards' LSE is merged from theirs in Float64, one process's is a running Float32
        // sum, so the two agree within the budget relative to the LSE; a token's loss, the LSE
        // less the target logit (nearly equal on a peaked row), then within that much of |LSE|
        // times ∂loss/∂lse ≤ max w·(1 + 2·zloss·|LSE|), not of the loss itself (seed 104257:
        // token losses 1.4e-6 apart relative to their norm, N = 5, V = 65, 3 shards), and the
        // reduced loss within the sum of that over the tokens (4 times it for a weighted mean).
        let lseScale = one.lse.doubles.reduce(0) { $1.isFinite ? max($0, abs($1)) : $0 }
        let maxWeight = Double(c.options.classWeights?.max() ?? 1)
        let perToken = lseScale * maxWeight * (1 + 2 * Double(c.options.zLoss) * lseScale)
        func compare(_ how: String, _ out: ForwardOutput, dE: [Double], dC: [Double], dBias: [Double]) {
            let budget = exact ? 1e-12 : 1e-6
            f.close([out.loss], [one.loss], atol: budget * perToken * Double(max(4, one.activeTokens)), rtol: budget,
                    "\(how): loss")
            f.relative(out.lse.doubles, one.lse.doubles, budget, "\(how): LSE")
            f.close(out.tokenLosses.doubles, one.tokenLosses.doubles, atol: budget * perToken, rtol: budget,
                    "\(how): token losses")
            var pairs = [("dE", dE, g1.dE.doubles, p.oracle.dE), ("dC", dC, g1.dC.doubles, p.oracle.dC)]
            if let db = g1.dBias, let odb = p.oracle.dBias { pairs.append(("dBias", dBias, db.doubles, odb)) }
            for (grad, got, mine, truth) in pairs { f.againstOneProcess(got, mine: mine, truth: truth, c, "\(how): \(grad)") }
        }
        func summed(_ gradients: [Gradients]) -> (dE: [Double], dC: [Double], dBias: [Double]) {
            var dE = [Double](repeating: 0, count: e.count), dC: [Double] = [], dBias: [Double] = []
            for g in gradients {
                for i in 0..<dE.count { dE[i] += g.dE[i] }
                dC += g.dC.doubles; dBias += g.dBias?.doubles ?? []
            }
            return (dE, dC, dBias)
        }

        // The algebra: forwards, combined partials, backwards.
        let forwards = try shards.map { s in
            try cce.forward(embeddings: e, classifier: cl.rows(s.range), targets: t, bias: b?.rows(s.range), shard: s)
        }
        let outputs = try forwards.map { try $0.combine(forwards.map(\.partials)) }
        let split = summed(try zip(shards, outputs).map { s, out in
            try cce.backward(out, embeddings: e, classifier: cl.rows(s.range), bias: b?.rows(s.range), upstream: up)
        })
        compare("split calls", outputs[0], dE: split.dE, dC: split.dC, dBias: split.dBias)

        // The fused exchanging call, one thread per shard.
        var rng = SeededRandom(seed: c.seed ^ 0x5EED)
        cce.exchangeChunk = 17 + Int(rng.next() % 184)
        let seeds = rng.uniform() < 0.5
        let partials = Rendezvous<ShardPartials>(parties: parts), bounds = Rendezvous<[Float]>(parties: parts)
        let results = Locked([Result<(ForwardOutput, Gradients), Error>?](repeating: nil, count: parts))
        let done = DispatchSemaphore(value: 0)
        let engine = cce
        for (r, shard) in shards.enumerated() {
            Thread {
                let outcome = Result {
                    try engine.lossAndGradients(
                        embeddings: e, classifier: try cl.rows(shard.range), targets: t, bias: try b?.rows(shard.range),
                        upstream: up, shard: shard,
                        seeds: seeds ? { bounds.allGather(r, $0) } : nil, exchange: { partials.allGather(r, $0) })
                }
                results.withLock { $0[r] = outcome }
                done.signal()
            }.start()
        }
        for _ in shards { done.wait() }
        let fused = try results.withLock { $0 }.map { try $0!.get() }
        let sums = summed(fused.map(\.1))
        compare("fused exchanging calls (chunk \(cce.exchangeChunk!), seeds \(seeds))", fused[0].0,
                dE: sums.dE, dC: sums.dC, dBias: sums.dBias)
        return f.lines
    }

    /// The case's tokens in `parts` slices, as the ranks of a token-parallel run hold them
    /// (TokenParallel in CutCrossEntropyMPI): contiguous stretches of drawn lengths, whole
    /// sequences where E is B x T x D (some slices empty: a rank may hold no tokens). Each
    /// slice reports its TokenSlice; the global mean embedding and mean divisor come from
    /// their sums in slice order; each slice then runs the fused call with `.sum` (`.mean`
    /// becomes an upstream of g / divisor), sorting by the global mean, on 1 to 3 threads.
    /// Each token's row depends only on its own logits and the vocabulary order, so the
    /// slices' LSE, token losses and dE rows have one process's bits; the loss (their sums
    /// over the divisor) is within 1e-6 relative of one process's (1e-12 exact), and dC and
    /// dBias (summed in slice order) within 1e-12 of one process's in the exact mode, else
    /// within the budgets of check 1 against the oracle.
    static func checkTokenSlices(_ c: Case, parts: Int, _ p: Prepared) throws -> [String] {
        var f = Failures(name: "\(c), \(parts) token slices")
        let (e, cl, t, b, up, one, g1) = (p.e, p.cl, p.t, p.b, p.up, p.out, p.g)
        var rng = SeededRandom(seed: c.seed ^ 0x70C5)
        // Slice boundaries over the first dimension: tokens, or sequences of a batch.
        let rows = c.batch ?? c.n, perRow = c.batch.map { c.n / $0 } ?? 1
        let cuts = ([0, rows] + (1..<parts).map { _ in Int(rng.next() % UInt64(rows + 1)) }).sorted()
        let slices = (0..<parts).map { cuts[$0]..<cuts[$0 + 1] }
        let inputs = try slices.filter { !$0.isEmpty }.map { r in
            let targets = Array(t.values[(r.lowerBound * perRow)..<(r.upperBound * perRow)]).map(Int.init)
            let up: Upstream = switch up {
            case .perToken(let g): .perToken(Array(g[(r.lowerBound * perRow)..<(r.upperBound * perRow)]))
            case .perTokenDouble(let g): .perTokenDouble(Array(g[(r.lowerBound * perRow)..<(r.upperBound * perRow)]))
            case .scalar: up
            }
            return (e: try e.rows(r), t: try Targets(targets, shape: c.batch.map { _ in [r.count, perRow] }), up: up)
        }
        var o = c.options; o.threads = 1 + Int(rng.next() % 3)
        let cce = CutCrossEntropy(options: o)
        let reports = try inputs.map { try cce.tokenSlice(embeddings: $0.e, classifier: cl, targets: $0.t, bias: b) }
        let active = reports.reduce(0) { $0 + $1.activeTokens }, divisor = reports.reduce(0.0) { $0 + $1.meanDivisor }
        var sum = [Double](repeating: 0, count: c.d)
        for r in reports { for k in 0..<c.d { sum[k] += r.embeddingSum[k] } }
        f.expect(active == one.activeTokens, "active tokens \(active) against one process's \(one.activeTokens)")
        var local = cce
        if o.reduction == .mean { local.options.reduction = .sum }
        local.sortingMean = TokenSlice.mean(sum: sum, activeTokens: active)

        var total = 0.0, lse: [UInt64] = [], losses: [UInt64] = [], dE: [UInt64] = []
        var dC = [Double](repeating: 0, count: cl.count), dBias = [Double](repeating: 0, count: b?.count ?? 0)
        for input in inputs {
            var up = input.up
            if o.reduction == .mean, case .scalar(let g) = up { up = .scalar(divisor > 0 ? g / divisor : 0) }
            let (out, g) = try local.lossAndGradients(embeddings: input.e, classifier: cl, targets: input.t, bias: b,
                                                      upstream: up)
            total += out.loss
            lse += bits(out.lse); losses += bits(out.tokenLosses); dE += bits(g.dE)
            for i in 0..<dC.count { dC[i] += g.dC[i] }
            if let db = g.dBias { for i in 0..<dBias.count { dBias[i] += db[i] } }
        }
        f.expect(lse == bits(one.lse), "LSE: not one process's bits (\(lse.count) values against \(one.lse.count))")
        f.expect(losses == bits(one.tokenLosses), "token losses: not one process's bits")
        f.expect(dE == bits(g1.dE), "dE: not one process's bits (\(dE.count) values against \(g1.dE.count))")

        let exact = c.options.mode == .exact
        let loss = c.options.reduction == .mean ? (active > 0 && divisor > 0 ? total / divisor : .nan) : total
        f.close([loss], [one.loss], atol: 0, rtol: exact ? 1e-12 : 1e-6, "loss")
        var pairs = [("dC", dC, g1.dC.doubles, p.oracle.dC)]
        if let db = g1.dBias, let odb = p.oracle.dBias { pairs.append(("dBias", dBias, db.doubles, odb)) }
        for (grad, got, mine, truth) in pairs { f.againstOneProcess(got, mine: mine, truth: truth, c, grad) }
        return f.lines
    }
}

/// All-gathers among `parties` threads in one process, round after round: each hands in its
/// value and gets every party's, in party order (the collectives of vocabulary shards run side
/// by side on threads, as the ranks of an MPI run would).
public final class Rendezvous<T>: @unchecked Sendable {
    private let parties: Int
    private let condition = NSCondition()
    private var round = 0, arrived = 0
    private var values: [T?], gathered: [T] = []

    public init(parties: Int) { self.parties = parties; values = Array(repeating: nil, count: parties) }

    public func allGather(_ party: Int, _ value: T) -> [T] {
        condition.lock(); defer { condition.unlock() }
        let mine = round
        values[party] = value
        arrived += 1
        if arrived == parties {
            gathered = values.map { $0! }
            values = Array(repeating: nil, count: parties)
            arrived = 0
            round += 1
            condition.broadcast()
        } else {
            while round == mine { condition.wait() }
        }
        return gathered   // not replaced before every party of this round has returned
    }
}

/// A value behind a lock.
public final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    public init(_ value: T) { self.value = value }
    public func withLock<R>(_ body: (inout T) throws -> R) rethrows -> R { lock.lock(); defer { lock.unlock() }; return try body(&value) }
}
