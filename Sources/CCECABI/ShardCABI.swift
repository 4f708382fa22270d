// The vocabulary-parallel entry points of the C ABI (cce_cpu.h: cce_cpu_shard_forward,
// cce_cpu_shard_loss_and_gradients): one rank's call of a run whose ranks each hold a shard of
// C's rows, over an all-gather the caller supplies (an MPI communicator, a torch.distributed
// process group: the Python binding's `vocab_parallel_options`). The mathematics and the
// engine's side are CutCrossEntropy's (Parallel.swift: `forward(…, shard:)`,
// `ShardForward.combine`, `lossAndGradients(…, shard:, exchange:)`); this file only turns the
// caller's gather into the exchanges those take, and makes every rank agree before any of
// them computes, so that a rank whose inputs fail their checks cannot leave the others
// waiting in a collective, and a rank whose E, targets or class weights differ from rank 0's
// (compared by `Fingerprint`) cannot make them return a wrong answer.

import CCECPU
import CCERuntime
import CutCrossEntropy

/// cce_cpu.h's `gather` callback.
public typealias CCECPUGather = @convention(c) (UnsafeRawPointer?, Int64, Int32, UnsafeMutableRawPointer?,
                                                UnsafeMutableRawPointer?) -> Int32

/// The caller's all-gather (cce_cpu.h: `gather`) over `ranks` ranks.
struct CallerGather {
    let function: CCECPUGather
    let user: UnsafeMutableRawPointer?
    let ranks: Int

    /// Every rank's `mine`, in rank order. Throws `CCEError.backendFailed` when the callback
    /// returns nonzero.
    func callAsFunction<T: BinaryFloatingPoint>(_ mine: [T], _ code: cce_cpu_dtype) throws -> [[T]] {
        let m = mine.count
        var all = [T](repeating: 0, count: m * ranks)
        let rc = mine.withUnsafeBytes { source in
            all.withUnsafeMutableBytes { target in
                function(source.baseAddress, Int64(m), Int32(code.rawValue), target.baseAddress, user)
            }
        }
        guard rc == 0 else { throw CCEError.backendFailed("the gather callback returned \(rc)") }
        return (0..<ranks).map { Array(all[($0 * m)..<(($0 + 1) * m)]) }
    }

    /// Every rank's partials of a chunk, in rank order (Float32, or Float64 in the exact mode).
    func partials(_ mine: ShardPartials) throws -> [ShardPartials] {
        switch mine.packed {
        case .float32(let v):
            try self(v, CCE_CPU_F32).map { try ShardPartials(packed: .float32($0), activeTokens: mine.activeTokens) }
        case .float64(let v):
            try self(v, CCE_CPU_F64).map { try ShardPartials(packed: .float64($0), activeTokens: mine.activeTokens) }
        }
    }

    /// The seed exchange's lower bounds (one Float32 a token).
    func seeds(_ mine: [Float]) throws -> [[Float]] { try self(mine, CCE_CPU_F32) }
}

/// One rank's call: what its checks found, agreed with every other rank before anything runs.
struct ShardAgreement {
    /// The fields every rank must share (after the checks' outcome; then `fingerprinted`'s
    /// halves, this rank's shard and its exchange chunk).
    static let names = ["N", "D", "V", "E type", "C type", "bias", "bias type", "weight", "reduction", "mode",
                        "shift", "batch", "ignore_index", "softcap", "label_smoothing", "z_loss", "filter_eps_mode",
                        "filter_eps", "sort_vocab", "filter_correction"]
    /// The inputs every rank must hold the same values of, compared by `Fingerprint` (two
    /// doubles each: the high and low 32 bits), after the fields above.
    static let fingerprinted = ["E's values", "the targets", "the weight's values"]

    /// The fingerprints of a rank's E, targets and class weights (0 where it has none).
    static func fingerprints(_ x: ShardInputs) -> [UInt64] {
        [x.E.fingerprint, x.T.fingerprint, x.options.classWeights.map { Fingerprint.of($0) } ?? 0]
    }

    /// Runs `check`, which returns the fingerprints of the rank's inputs (`fingerprints`), then
    /// gathers every rank's outcome and fields (Float64: each is an integer, a double option or
    /// half a fingerprint, exact). Throws on every rank when any rank's check failed (this
    /// rank's own error, or `CCEError.stateMismatch` naming the first rank that failed), when
    /// the ranks disagree on a shared field or input, or when their shards do not tile [0, V)
    /// in rank order. Returns rank 0's `chunk`.
    static func agree(_ gather: CallerGather, n: Int64, d: Int64, v: Int64, offset: Int64, count: Int64,
                      codes: (Int32, Int32, Int32), hasBias: Bool, hasWeight: Bool,
                      opt: UnsafePointer<cce_cpu_options>?, chunk: Int64, check: () throws -> [UInt64]) throws -> Int {
        var c = cce_cpu_options()
        cce_cpu_default_options(&c)
        if let opt { c = opt.pointee }
        let shared: [Double] = [
            Double(n), Double(d), Double(v), Double(codes.0), Double(codes.1), hasBias ? 1 : 0,
            hasBias ? Double(codes.2) : -1, hasWeight ? 1 : 0, Double(c.reduction), Double(c.mode), Double(c.shift),
            Double(c.batch <= 0 ? 1 : c.batch), Double(c.ignore_index), c.softcap, c.label_smoothing, c.z_loss,
            Double(c.filter_eps_mode), c.filter_eps, Double(c.sort_vocab != 0 ? 1 : 0),
            Double(c.filter_correction != 0 ? 1 : 0),
        ]
        var failure: Error? = nil
        var prints = [UInt64](repeating: 0, count: fingerprinted.count)
        do { prints = try check() } catch { failure = error }
        let halves = prints.flatMap { [Double($0 >> 32), Double($0 & 0xffff_ffff)] }
        let mine = [failure == nil ? 0 : 1] + shared + halves + [Double(offset), Double(count), Double(chunk)]
        let all = try gather(mine, CCE_CPU_F64)
        if let failure { throw failure }
        if let r = all.firstIndex(where: { $0[0] != 0 }) {
            throw CCEError.stateMismatch("rank \(r) of \(gather.ranks) failed its checks (its own error says why)")
        }
        for (r, fields) in all.enumerated() {
            for (k, name) in names.enumerated() where !(fields[1 + k] == all[0][1 + k] || fields[1 + k].isNaN && all[0][1 + k].isNaN) {
                throw CCEError.stateMismatch("ranks disagree on \(name): rank 0 has \(all[0][1 + k]), rank \(r) \(fields[1 + k])")
            }
            let first = 1 + names.count
            for (k, name) in fingerprinted.enumerated()
            where fields[(first + 2 * k)...(first + 2 * k + 1)] != all[0][(first + 2 * k)...(first + 2 * k + 1)] {
                throw CCEError.stateMismatch("ranks disagree on \(name): rank \(r)'s differ from rank 0's (by fingerprint; "
                                             + "every rank must pass the same)")
            }
        }
        let tail = 1 + names.count + 2 * fingerprinted.count
        var next = 0.0
        for (r, fields) in all.enumerated() {
            let (o, k) = (fields[tail], fields[tail + 1])
            guard o == next else {
                throw CCEError.stateMismatch("rank \(r)'s shard starts at class \(Int(o)), where the shards of ranks "
                                             + "0 to \(r - 1) end at \(Int(next)) (the shards must tile [0, V) in rank order)")
            }
            next += k
        }
        guard next == Double(v) else {
            throw CCEError.stateMismatch("the \(gather.ranks) shards hold \(Int(next)) classes, V = \(v)")
        }
        return Int(all[0][tail + 2])
    }
}

/// A rank's inputs as Swift values: the whole problem's shapes, this shard, the shard's rows
/// of C and the bias.
struct ShardInputs {
    let shapes: Shapes, shard: VocabularyShard
    let eType: ElementType, cType: ElementType, biasType: ElementType?
    let options: Options
    let E: Tensor, C: Tensor, B: Tensor?, T: Targets

    init(_ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?, _ targetIDs: UnsafePointer<Int64>?,
         _ n: Int64, _ d: Int64, _ v: Int64, _ offset: Int64, _ count: Int64, _ codes: (Int32, Int32, Int32),
         _ weight: UnsafePointer<Float>?, _ opt: UnsafePointer<cce_cpu_options>?) throws {
        shapes = try Shapes(n: n, d: d, v: v, batch: opt?.pointee.batch ?? 1)
        shard = try VocabularyShard(offset: Int(offset), count: Int(count), vocabulary: shapes.v)
        options = try CCECABI.options(opt, weight: weight, v: shapes.v)
        let eType = try inputType(codes.0, "E"), cType = try inputType(codes.1, "C")
        let biasType = bias == nil ? nil : try inputType(codes.2, "bias")
        let rows = shard.count, shapes = shapes
        self.eType = eType; self.cType = cType; self.biasType = biasType
        E = try tensor(e, eType, shapes.e, "E")
        C = try tensor(c, cType, [rows, shapes.d], "C")
        B = try biasType.map { try tensor(bias, $0, [rows], "bias") }
        T = try targets(targetIDs, shapes)
    }

    /// The shapes the backward's state reads C and the bias with: the shard's rows.
    var shardShapes: Shapes { get throws { try Shapes(n: Int64(shapes.n), d: Int64(shapes.d), v: Int64(shard.count), batch: Int64(shapes.batch)) } }
}

@_cdecl("cce_cpu_shard_forward")
public func cceCPUShardForward(
    _ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?, _ targetIDs: UnsafePointer<Int64>?,
    _ n: Int64, _ d: Int64, _ v: Int64, _ offset: Int64, _ count: Int64, _ ranks: Int64,
    _ eCode: Int32, _ cCode: Int32, _ biasCode: Int32, _ weight: UnsafePointer<Float>?,
    _ opt: UnsafePointer<cce_cpu_options>?, _ loss: UnsafeMutablePointer<Double>?, _ lse: UnsafeMutablePointer<Double>?,
    _ state: UnsafeMutablePointer<OpaquePointer?>?, _ gather: CCECPUGather?, _ user: UnsafeMutableRawPointer?
) -> Int32 {
    guarded {
        guard let gather, ranks >= 1 else { throw ArgumentError(gather == nil ? "gather is NULL" : "ranks must be >= 1 (got \(ranks))") }
        let all = CallerGather(function: gather, user: user, ranks: Int(ranks))
        var checked: (ShardInputs, CutCrossEntropy)? = nil
        _ = try ShardAgreement.agree(all, n: n, d: d, v: v, offset: offset, count: count, codes: (eCode, cCode, biasCode),
                                     hasBias: bias != nil, hasWeight: weight != nil, opt: opt, chunk: 0) {
            let x = try ShardInputs(e, c, bias, targetIDs, n, d, v, offset, count, (eCode, cCode, biasCode), weight, opt)
            let engine = CutCrossEntropy(options: x.options)
            try engine.validate(embeddings: x.E, classifier: x.C, targets: x.T, bias: x.B, shard: x.shard)
            checked = (x, engine)
            return ShardAgreement.fingerprints(x)
        }
        let (x, engine) = checked!
        let part = try engine.forward(embeddings: x.E, classifier: x.C, targets: x.T, bias: x.B, shard: x.shard)
        let f = try part.combine(try all.partials(part.partials))
        writeForward(f, reduction: x.options.reduction, loss: loss, lse: lse)
        if let state {
            let saved = SavedForward(f, engine, try x.shardShapes, x.eType, x.cType, x.biasType)
            state.pointee = OpaquePointer(Unmanaged.passRetained(saved).toOpaque())
        }
    }
}

@_cdecl("cce_cpu_shard_loss_and_gradients")
public func cceCPUShardLossAndGradients(
    _ e: UnsafeRawPointer?, _ c: UnsafeRawPointer?, _ bias: UnsafeRawPointer?, _ targetIDs: UnsafePointer<Int64>?,
    _ n: Int64, _ d: Int64, _ v: Int64, _ offset: Int64, _ count: Int64, _ ranks: Int64,
    _ eCode: Int32, _ cCode: Int32, _ biasCode: Int32, _ weight: UnsafePointer<Float>?,
    _ opt: UnsafePointer<cce_cpu_options>?, _ exchangeChunk: Int64, _ gradLoss: UnsafePointer<Double>?,
    _ loss: UnsafeMutablePointer<Double>?, _ lse: UnsafeMutablePointer<Double>?,
    _ dE: UnsafeMutableRawPointer?, _ dC: UnsafeMutableRawPointer?, _ dBias: UnsafeMutableRawPointer?,
    _ dECode: Int32, _ dCCode: Int32, _ dBiasCode: Int32, _ stats: UnsafeMutablePointer<Int64>?,
    _ gather: CCECPUGather?, _ user: UnsafeMutableRawPointer?
) -> Int32 {
    guarded {
        guard let gather, ranks >= 1 else { throw ArgumentError(gather == nil ? "gather is NULL" : "ranks must be >= 1 (got \(ranks))") }
        let all = CallerGather(function: gather, user: user, ranks: Int(ranks))
        // This rank's exchange chunk: the caller's, else the library's default for its threads.
        var threadsOnly = Options()
        if let t = opt?.pointee.threads, t > 0 { threadsOnly.threads = Int(t) }
        let ownChunk = exchangeChunk > 0 ? Int(exchangeChunk) : CutCrossEntropy(options: threadsOnly).resolvedExchangeChunk
        var checked: (ShardInputs, GradientTargets, CutCrossEntropy)? = nil
        let chunk = try ShardAgreement.agree(all, n: n, d: d, v: v, offset: offset, count: count,
                                             codes: (eCode, cCode, biasCode), hasBias: bias != nil,
                                             hasWeight: weight != nil, opt: opt, chunk: Int64(ownChunk)) {
            let x = try ShardInputs(e, c, bias, targetIDs, n, d, v, offset, count, (eCode, cCode, biasCode), weight, opt)
            let out = try GradientTargets(dE: dE, dC: dC, dBias: dBias, types: (dECode, dCCode, dBiasCode),
                                          hasBias: bias != nil, stats: stats)
            let engine = CutCrossEntropy(options: x.options)
            try engine.validate(embeddings: x.E, classifier: x.C, targets: x.T, bias: x.B, shard: x.shard)
            checked = (x, out, engine)
            return ShardAgreement.fingerprints(x)
        }
        let (x, out, checkedEngine) = checked!
        var engine = checkedEngine
        engine.exchangeChunk = chunk   // rank 0's: every rank must exchange the same token ranges
        let up = upstream(gradLoss, reduction: x.options.reduction, positions: x.shapes.n)
        let seeds: (([Float]) throws -> [[Float]])? = ranks > 1 ? { try all.seeds($0) } : nil
        let threads = x.options.threads ?? Workers.availableCPUs
        if x.options.mode != .exact {
            let f = try fusedIntoBuffers(x.shapes, rows: x.shard.count, hasBias: x.B != nil, out, threads: threads) { destination in
                let (f, g) = try engine.lossAndGradients(embeddings: x.E, classifier: x.C, targets: x.T, bias: x.B,
                                                         upstream: up, shard: x.shard, writingTo: destination,
                                                         seeds: seeds, exchange: all.partials)
                return (f, g.filter)
            }
            writeForward(f, reduction: x.options.reduction, loss: loss, lse: lse)
            return
        }
        // The exact mode computes its gradients in Float64: arrays, converted as asked.
        let (f, g) = try engine.lossAndGradients(embeddings: x.E, classifier: x.C, targets: x.T, bias: x.B, upstream: up,
                                                 shard: x.shard, exchange: all.partials)
        writeForward(f, reduction: x.options.reduction, loss: loss, lse: lse)
        out.write(g, threads: threads)
    }
}
