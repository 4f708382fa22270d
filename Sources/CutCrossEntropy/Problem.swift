// Validation and token pairing: from the caller's tensors to the list of tokens that have
// a loss. Everything here is O(N); nothing is written until every check has passed.

import CCEKernels

/// A validated problem: shapes, element types, and the active tokens.
///
/// A token is active when its E row is paired with a target (row j of a sequence with
/// target j + shift, j < T − shift) and that target is not the ignore index. The engine
/// works on active tokens only; `rows[i]` is the E row of active token i, `targets[i]` its
/// class, `positions[i]` the flat index of its target in the targets tensor.
struct Problem: Sendable {
    let eShape: [Int]
    let targetShape: [Int]
    let n: Int          // rows of E (B·T)
    let d: Int
    let v: Int
    let eType: ElementType
    let cType: ElementType
    let biasType: ElementType?
    let rows: [Int32]
    let targets: [Int32]
    let positions: [Int32]
    /// With `Options.classWeights`: w_{t_i} per active token (else empty).
    let tokenWeights: [Float]
    /// What `.mean` divides by: Σ_i w_{t_i} over the active tokens with class weights, else
    /// their count.
    let meanDivisor: Double

    var active: Int { rows.count }

    /// With `shard`, `c` (and the bias) hold that shard's rows of a V-class classifier: the
    /// targets and the class weights are checked against the whole V, and the problem is the
    /// whole one (`restricted(to:)` gives the shard's).
    init(embeddings e: Tensor, classifier c: Tensor, targets t: Targets, bias: Tensor?,
         options: Options, shard: VocabularyShard? = nil) throws {
        try options.validate()
        guard e.shape.count == 2 || e.shape.count == 3 else {
            throw CCEError.invalidShape("embeddings must be (N, D) or (B, T, D), got \(e.shape)")
        }
        guard c.shape.count == 2 else {
            throw CCEError.invalidShape("classifier must be (V, D), got \(c.shape)")
        }
        let d = e.shape.last!
        let rowsHeld = c.shape[0]
        let v = shard?.vocabulary ?? rowsHeld
        if let shard, shard.count != rowsHeld {
            throw CCEError.invalidShape("classifier shard \(c.shape) has \(rowsHeld) rows but the shard \(shard) holds \(shard.count)")
        }
        guard c.shape[1] == d else {
            throw CCEError.invalidShape("embeddings have D = \(d) but the classifier \(c.shape) has D = \(c.shape[1])")
        }
        let lead = Array(e.shape.dropLast())
        guard t.shape == lead else {
            throw CCEError.invalidShape("targets have shape \(t.shape) but embeddings \(e.shape) need \(lead)")
        }
        let n = lead.reduce(1, *)
        guard n > 0 else { throw CCEError.empty("embeddings \(e.shape) have no tokens") }
        guard d > 0 else { throw CCEError.empty("embedding dimension D is 0") }
        guard v > 0 else { throw CCEError.empty("classifier \(c.shape) has no classes (V = 0)") }
        if let b = bias {
            guard b.shape == [rowsHeld] else {
                throw CCEError.invalidShape(shard == nil ? "bias must be (V) = [\(v)], got \(b.shape)"
                                            : "bias shard must have the classifier shard's \(rowsHeld) entries, got \(b.shape)")
            }
        }
        let (rows, targets, positions) = try Problem.pair(t, options: options, vocabulary: v)
        if let w = options.classWeights, w.count != v {
            throw CCEError.invalidShape("classWeights must have V = \(v) entries, got \(w.count)")
        }
        if options.checkFinite {
            try Problem.checkFinite(e, "embeddings")
            try Problem.checkFinite(c, "classifier")
            if let b = bias { try Problem.checkFinite(b, "bias") }
        }
        self.eShape = e.shape; self.targetShape = t.shape
        self.n = n; self.d = d; self.v = v
        self.eType = e.elementType; self.cType = c.elementType; self.biasType = bias?.elementType
        self.rows = rows; self.targets = targets; self.positions = positions
        if let w = options.classWeights {
            tokenWeights = targets.map { w[Int($0)] }
            meanDivisor = tokenWeights.reduce(0.0) { $0 + Double($1) }
        } else {
            tokenWeights = []
            meanDivisor = Double(rows.count)
        }
    }

    /// The active tokens of targets `t` (shape (N) or (B, T)): row j of each sequence paired
    /// with target j + shift, ignored targets dropped. Throws `CCEError.targetOutOfRange` for
    /// a target outside [0, vocabulary) that is not the ignore index.
    static func pair(_ t: Targets, options: Options, vocabulary v: Int) throws
        -> (rows: [Int32], targets: [Int32], positions: [Int32])
    {
        let n = t.count
        let seqLen = t.shape.count == 2 ? t.shape[1] : n
        let batch = seqLen > 0 ? n / seqLen : 0
        var rows: [Int32] = [], targets: [Int32] = [], positions: [Int32] = []
        rows.reserveCapacity(n); targets.reserveCapacity(n); positions.reserveCapacity(n)
        let ignore = options.ignoreIndex
        for b in 0..<batch {
            var j = 0
            while j + options.shift < seqLen {
                let pos = b * seqLen + j + options.shift
                let tv = Int(t.values[pos])
                if tv != ignore {
                    guard tv >= 0 && tv < v else {
                        throw CCEError.targetOutOfRange(position: pos, value: tv, vocabulary: v)
                    }
                    rows.append(Int32(b * seqLen + j)); targets.append(Int32(tv)); positions.append(Int32(pos))
                }
                j += 1
            }
        }
        return (rows, targets, positions)
    }

    /// This problem restricted to the classifier rows of `shard` (vocabulary-parallel,
    /// Parallel.swift): `v` becomes the shard's row count and each target a shard-local
    /// class id, or `v` itself when another shard holds it (VocabularyOrder gives that id no
    /// position in this shard's sweep, so no tile holds it). The tokens, their class weights
    /// and the mean divisor stay the whole problem's.
    func restricted(to shard: VocabularyShard) -> Problem {
        let local = targets.map { shard.contains(Int($0)) ? $0 - Int32(shard.offset) : Int32(shard.count) }
        return Problem(self, v: shard.count, targets: local)
    }

    /// A copy with another vocabulary size and targets (for `restricted(to:)`).
    private init(_ p: Problem, v: Int, targets: [Int32]) {
        eShape = p.eShape; targetShape = p.targetShape; n = p.n; d = p.d; self.v = v
        eType = p.eType; cType = p.cType; biasType = p.biasType
        rows = p.rows; self.targets = targets; positions = p.positions
        tokenWeights = p.tokenWeights; meanDivisor = p.meanDivisor
    }

    /// The reduced loss from the sum of the per-token losses: total / meanDivisor for
    /// `.mean` (NaN when no token is active or, with class weights, when their weights sum
    /// to 0, as in PyTorch), total for `.sum` and `.none`.
    func reduce(total: Double, _ reduction: Reduction) -> Double {
        reduction == .mean ? (active > 0 && meanDivisor > 0 ? total / meanDivisor : .nan) : total
    }

    static func checkFinite(_ x: Tensor, _ name: String) throws {
        let bad: Int? = x.withRawPointer { p in
            for i in 0..<x.count where !storedElement(p, type: x.elementType, i).isFinite { return i }
            return nil
        }
        if let i = bad { throw CCEError.nonFinite(tensor: name, index: i) }
    }

    /// g_i per active token for the upstream gradient `u` of the loss reduced by `reduction`:
    /// g/M for `.mean` over M active tokens (g/Σ_i w_{t_i} with class weights; 0 when that
    /// is 0), g for `.sum`, the value at the token's target position for `.none`.
    func upstreamPerToken(_ u: Upstream, reduction: Reduction) throws -> [Double] {
        func perPosition<G: BinaryFloatingPoint>(_ gs: [G]) throws -> [Double] {
            let positionCount = targetShape.reduce(1, *)
            guard gs.count == positionCount else {
                throw CCEError.invalidUpstream("\(gs.count) values for \(positionCount) target positions")
            }
            return positions.map { Double(gs[Int($0)]) }
        }
        switch (reduction, u) {
        case (.mean, .scalar(let g)):
            return [Double](repeating: active > 0 && meanDivisor > 0 ? g / meanDivisor : 0, count: active)
        case (.sum, .scalar(let g)):
            return [Double](repeating: g, count: active)
        case (.none, .perToken(let gs)):
            return try perPosition(gs)
        case (.none, .perTokenDouble(let gs)):
            return try perPosition(gs)
        case (.none, .scalar):
            throw CCEError.invalidUpstream("reduction .none needs one upstream value per target position")
        case (_, .perToken), (_, .perTokenDouble):
            throw CCEError.invalidUpstream("reduction .\(reduction) needs a scalar upstream gradient")
        }
    }
}
