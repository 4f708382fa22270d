// The public entry points: forward, backward, and both in one call.
//
//     let cce = CutCrossEntropy(options: opts)
//     let fwd = try cce.forward(embeddings: E, classifier: C, targets: T)     // O(N) state
//     ...
//     let grads = try cce.backward(fwd, embeddings: E, classifier: C)         // dE, dC
//
// The forward keeps only what the backward needs (per-token LSE, the active tokens), so
// a training loop can call it now and the backward later. `lossAndGradients` does both.

import CCEKernels
import CCERuntime
import COpenBLAS

/// The result of a forward call.
public struct ForwardOutput: Sendable {
    /// The reduced loss: mean or sum by `Options.reduction`; for `.none`, the sum.
    public let loss: Double
    /// One loss per target position (the targets' shape): 0 at ignored positions and at
    /// the first `shift` positions of each sequence.
    public let tokenLosses: Values
    /// One LSE per target position: the log-sum-exp of the logits of the row paired with
    /// that target; NaN where the position has no loss (ignored, or no paired row).
    public let lse: Values
    /// Tokens that have a loss.
    public let activeTokens: Int
    /// What the backward needs; O(N).
    public let state: SavedState
}

/// What the forward keeps for the backward: O(N) values, no logits.
public struct SavedState: Sendable {
    let problem: Problem
    let options: Options
    /// Per active token, in the engine's scalar type.
    let lse: Values
}

/// Upstream gradient of the reduced loss.
public enum Upstream: Sendable {
    /// For `.mean` and `.sum`: ∂L/∂loss.
    case scalar(Double)
    /// For `.none`: one value per target position (the targets' shape).
    case perToken([Float])
}

/// Gradients of the reduced loss (for `.none`, of Σ upstream·loss).
public struct Gradients: Sendable {
    /// E's shape.
    public let dE: Values
    /// (V, D).
    public let dC: Values
    /// (V), when a bias was given.
    public let dBias: Values?
    /// What gradient filtering skipped.
    public let filter: FilterStatistics
}

/// Cut Cross-Entropy: the cross-entropy of a linear classifier and its gradients, computed
/// tile by tile without the N x V logit matrix.
public struct CutCrossEntropy: Sendable {
    public var options: Options
    /// Tile product backend: Swift SIMD (default) or OpenBLAS (Float32 modes only), for comparison.
    public var tileBackend: TileBackend = .swiftSIMD

    public init(options: Options = Options()) { self.options = options }

    /// The tile plan a call with these sizes would use.
    public func plan(tokens: Int, dim: Int, vocab: Int) -> TilePlan {
        TilePlan(tokens: tokens, dim: dim, vocab: vocab, threads: threadCount,
                 scalarBytes: options.mode == .exact ? 8 : 4)
    }

    var threadCount: Int { options.threads ?? Workers.availableCPUs }

    /// Loss and per-token LSE. Throws `CCEError` on bad input; nothing is returned then.
    public func forward(embeddings: Tensor, classifier: Tensor, targets: Targets,
                        bias: Tensor? = nil) throws -> ForwardOutput {
        let problem = try Problem(embeddings: embeddings, classifier: classifier, targets: targets,
                                  bias: bias, options: options)
        return options.mode == .exact
            ? forward(Double.self, problem, embeddings, classifier, bias)
            : forward(Float.self, problem, embeddings, classifier, bias)
    }

    /// dE, dC (and dBias) for the forward `saved`, whose inputs must be passed again.
    public func backward(_ saved: ForwardOutput, embeddings: Tensor, classifier: Tensor,
                         bias: Tensor? = nil, upstream: Upstream = .scalar(1)) throws -> Gradients {
        let st = saved.state
        let p = st.problem
        guard embeddings.shape == p.eShape, embeddings.elementType == p.eType else {
            throw CCEError.stateMismatch("embeddings are \(embeddings.shape) \(embeddings.elementType), the forward saw \(p.eShape) \(p.eType)")
        }
        guard classifier.shape == [p.v, p.d], classifier.elementType == p.cType else {
            throw CCEError.stateMismatch("classifier is \(classifier.shape) \(classifier.elementType), the forward saw \([p.v, p.d]) \(p.cType)")
        }
        guard bias?.shape == (p.biasType == nil ? nil : [p.v]), bias?.elementType == p.biasType else {
            throw CCEError.stateMismatch("bias \(bias.map { "\($0.shape)" } ?? "nil") differs from the forward's")
        }
        let g = try upstreamPerToken(upstream, st)
        return st.options.mode == .exact
            ? backward(Double.self, st, g, embeddings, classifier, bias)
            : backward(Float.self, st, g, embeddings, classifier, bias)
    }

    /// The order in which the backward sweeps the vocabulary: `order[k]` is the class at
    /// sorted position k (by average logit C_v · ē + b_v over the active tokens, largest
    /// first; the identity when `sortVocabulary` is off). VocabularyOrder.swift.
    public func vocabularyOrder(embeddings: Tensor, classifier: Tensor, targets: Targets,
                                bias: Tensor? = nil) throws -> [Int] {
        let p = try Problem(embeddings: embeddings, classifier: classifier, targets: targets,
                            bias: bias, options: options)
        let b = bias?.floats().map { Double($0) }
        return embeddings.withRawPointer { ep in
            classifier.withRawPointer { cp in
                VocabularyOrder.make(problem: p, e: ep, c: cp, bias: b, sorted: options.sortVocabulary).order.map(Int.init)
            }
        }
    }

    /// Forward and backward in one call. Same results, bit for bit, as `forward` then
    /// `backward`, but faster: the forward's per-block maxima let the backward skip rows
    /// whose gradient would be filtered without recomputing their logits.
    public func lossAndGradients(embeddings: Tensor, classifier: Tensor, targets: Targets,
                                 bias: Tensor? = nil, upstream: Upstream = .scalar(1)) throws
        -> (ForwardOutput, Gradients)
    {
        let problem = try Problem(embeddings: embeddings, classifier: classifier, targets: targets,
                                  bias: bias, options: options)
        let g = try upstreamPerToken(upstream, SavedState(problem: problem, options: options, lse: .float64([])))
        return options.mode == .exact
            ? run(Double.self, .fused, problem, g, embeddings, classifier, bias, savedLSE: nil)
            : run(Float.self, .fused, problem, g, embeddings, classifier, bias, savedLSE: nil)
    }

    // MARK: - Typed implementation

    func upstreamPerToken(_ u: Upstream, _ st: SavedState) throws -> [Double] {
        let p = st.problem
        switch (st.options.reduction, u) {
        case (.mean, .scalar(let g)):
            return [Double](repeating: p.active > 0 ? g / Double(p.active) : 0, count: p.active)
        case (.sum, .scalar(let g)):
            return [Double](repeating: g, count: p.active)
        case (.none, .perToken(let gs)):
            guard gs.count == p.targetShape.reduce(1, *) else {
                throw CCEError.invalidUpstream("\(gs.count) values for \(p.targetShape.reduce(1, *)) target positions")
            }
            return p.positions.map { Double(gs[Int($0)]) }
        case (.none, .scalar):
            throw CCEError.invalidUpstream("reduction .none needs one upstream value per target position")
        case (_, .perToken):
            throw CCEError.invalidUpstream("reduction .\(st.options.reduction) needs a scalar upstream gradient")
        }
    }

    func inputs<S: KernelScalar>(_: S.Type, _ p: Problem, _ e: UnsafeRawPointer, _ c: UnsafeRawPointer,
                                 _ bias: UnsafePointer<S>?) -> SweepInputs<S> {
        SweepInputs(e: e, eType: p.eType, c: c, cType: p.cType, bias: bias, d: p.d, v: p.v,
                    plan: plan(tokens: p.active, dim: p.d, vocab: p.v), problem: p,
                    cap: options.softcap.map { S($0) }, backend: tileBackend)
    }

    func forward<S: KernelScalar>(_: S.Type, _ p: Problem, _ e: Tensor, _ c: Tensor, _ bias: Tensor?) -> ForwardOutput {
        run(S.self, .forward, p, [], e, c, bias, savedLSE: nil).0
    }

    func backward<S: KernelScalar>(_: S.Type, _ st: SavedState, _ g: [Double], _ e: Tensor, _ c: Tensor,
                                   _ bias: Tensor?) -> Gradients {
        var engine = CutCrossEntropy(options: st.options)
        engine.tileBackend = tileBackend
        return engine.run(S.self, .backward, st.problem, g, e, c, bias, savedLSE: st.lse.doubles.map { S($0) }).1
    }

    /// One engine call in scalar type S: sets up the vocabulary order and the buffers, runs
    /// the pass, and assembles the public results (the forward part is empty for .backward,
    /// the gradients are empty for .forward).
    func run<S: KernelScalar>(_: S.Type, _ pass: Pass, _ p: Problem, _ g: [Double], _ e: Tensor, _ c: Tensor,
                              _ bias: Tensor?, savedLSE: [S]?) -> (ForwardOutput, Gradients) {
        let biasF = bias?.floats()
        let b: [S]? = biasF.map { $0.map { S(storage: $0) } }
        var lse = savedLSE ?? [S](repeating: 0, count: p.active)
        var loss = [S](repeating: 0, count: pass == .backward ? 0 : p.active)
        let wantsGrad = pass != .forward
        let up: [S] = g.map { S($0) }
        var dE = zeroed(S.self, wantsGrad ? p.n * p.d : 0)
        var dC = zeroed(S.self, wantsGrad ? p.v * p.d : 0)
        var dBias: [S]? = bias == nil || !wantsGrad ? nil : zeroed(S.self, p.v)
        let eps: Double? = options.mode == .exact ? nil : options.filterEpsilon.resolve(p.eType, p.cType)
        let mode = options.mode
        // kahan modes: compensation rows for dE and dC, zeroed.
        let compE = wantsGrad && mode.compensated ? Scratch<S>(count: p.n * p.d) : nil
        let compC = wantsGrad && mode.compensated ? Scratch<S>(count: p.v * p.d) : nil
        for x in [compE, compC] { x?.base.initialize(repeating: 0, count: x!.count) }
        let estimate = wantsGrad && eps != nil && options.filterCorrection && mode != .kahanFullE
        var stats = FilterStatistics()
        e.withRawPointer { ep in
            c.withRawPointer { cp in
                // NUMA: the classifier, read by every worker, interleaved over the nodes
                // (pages already interleaved stay; a no-op on one-node machines).
                Placement.interleave(UnsafeRawBufferPointer(start: cp, count: p.v * p.d * p.cType.size))
                let (order, rank) = VocabularyOrder.make(problem: p, e: ep, c: cp,
                                                         bias: biasF.map { $0.map { Double($0) } },
                                                         sorted: options.sortVocabulary)
                withOptionalPointer(b) { bp in
                    let inp = inputs(S.self, p, ep, cp, bp)
                    lse.withUnsafeMutableBufferPointer { lp in
                    loss.withUnsafeMutableBufferPointer { lossp in
                    up.withUnsafeBufferPointer { upp in
                    order.withUnsafeBufferPointer { op in
                    rank.withUnsafeBufferPointer { rp in
                    dE.withUnsafeMutableBufferPointer { dEp in
                    dC.withUnsafeMutableBufferPointer { dCp in
                        withOptionalMutablePointer(&dBias) { dbp in
                            var bw: BackwardInputs<S>? = nil
                            if wantsGrad {
                                bw = BackwardInputs(lse: UnsafePointer(lp.baseAddress!), upstream: upp.baseAddress!,
                                                    order: op.baseAddress!, rank: rp.baseAddress!,
                                                    eps: eps.map { S($0) }, dE: dEp.baseAddress!,
                                                    dC: dCp.baseAddress!, dBias: dbp)
                                bw!.compE = compE?.base
                                bw!.compC = compC?.base
                                bw!.fullE = mode == .kahanFullE
                                bw!.fullC = mode == .kahanFullC
                                bw!.estimate = estimate
                            }
                            stats = Engine.run(pass, inp, options: options, order: op.baseAddress!,
                                               lse: lp.baseAddress!, loss: lossp.baseAddress ?? lp.baseAddress!,
                                               backward: bw)
                        }
                    }}}}}}}
                }
            }
        }
        withExtendedLifetime((compE, compC)) {}
        let grads = Gradients(dE: values(dE), dC: values(dC), dBias: dBias.map { values($0) }, filter: stats)
        guard pass != .backward else { return (emptyForward(p), grads) }
        let positions = p.targetShape.reduce(1, *)
        var tokenLosses = [S](repeating: 0, count: positions)
        var lseOut = [S](repeating: .nan, count: positions)
        var total = 0.0
        for i in 0..<p.active {
            tokenLosses[Int(p.positions[i])] = loss[i]
            lseOut[Int(p.positions[i])] = lse[i]
            total += Double(loss[i])
        }
        let reduced: Double
        switch options.reduction {
        case .mean: reduced = p.active > 0 ? total / Double(p.active) : .nan
        case .sum, .none: reduced = total
        }
        let fwd = ForwardOutput(loss: reduced, tokenLosses: values(tokenLosses), lse: values(lseOut),
                                activeTokens: p.active,
                                state: SavedState(problem: p, options: options, lse: values(lse)))
        return (fwd, grads)
    }

    func emptyForward(_ p: Problem) -> ForwardOutput {
        ForwardOutput(loss: .nan, tokenLosses: .float32([]), lse: .float32([]), activeTokens: p.active,
                      state: SavedState(problem: p, options: options, lse: .float32([])))
    }
}

/// Which kernel computes the logit tiles.
public enum TileBackend: String, Sendable, CaseIterable {
    /// The Swift SIMD tile product (CCEKernels/TileProduct6x16.swift).
    case swiftSIMD = "swift"
    /// OpenBLAS sgemm on each tile (Float32 modes; the exact mode always uses Swift).
    case openBLAS = "openblas"
}

func values<S: KernelScalar>(_ x: [S]) -> Values {
    if let f = x as? [Float] { return .float32(f) }
    if let f = x as? [Double] { return .float64(f) }
    return .float64(x.map { Double($0) })
}

/// A zeroed array whose pages are all written now (not left to the kernel's zero pages), so
/// that the memory a call reports and the memory the caller will touch are the same.
func zeroed<S: KernelScalar>(_: S.Type, _ count: Int) -> [S] {
    [S](unsafeUninitializedCapacity: count) { buf, n in
        buf.initialize(repeating: 0)
        n = count
    }
}

func withOptionalPointer<T, R>(_ a: [T]?, _ body: (UnsafePointer<T>?) -> R) -> R {
    guard let a else { return body(nil) }
    return a.withUnsafeBufferPointer { body($0.baseAddress) }
}

func withOptionalMutablePointer<T, R>(_ a: inout [T]?, _ body: (UnsafeMutablePointer<T>?) -> R) -> R {
    guard a != nil else { return body(nil) }
    return a!.withUnsafeMutableBufferPointer { body($0.baseAddress) }
}
