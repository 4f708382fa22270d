// Options: the loss variants, with the meaning they have in apple/ml-cross-entropy's
// `linear_cross_entropy` and PyTorch's `F.cross_entropy`.

import CCEKernels

/// How per-token losses are reduced.
public enum Reduction: String, Sendable, CaseIterable {
    /// Mean over tokens whose target is not ignored (NaN when every target is ignored, as in PyTorch).
    case mean
    /// Sum over tokens whose target is not ignored.
    case sum
    /// One loss per target position, 0 at ignored positions and at the first `shift`
    /// positions of each sequence.
    case none

    /// The reduced loss from the sum of the per-token losses over `count` active tokens:
    /// total/count for `.mean` (NaN when count is 0), total for `.sum` and `.none`.
    public func reduce(total: Double, count: Int) -> Double {
        switch self {
        case .mean: count > 0 ? total / Double(count) : .nan
        case .sum, .none: total
        }
    }
}

/// Accumulation and filtering variants of the engine, mirroring apple/ml-cross-entropy's
/// `impl` choices (`cce`, `cce_kahan`, `cce_kahan_full_e`, `cce_kahan_full_c`, `cce_exact`).
/// Docs/NUMERICS.md gives each one's cost and measured error.
public enum Mode: String, Sendable, CaseIterable {
    /// Float32 tiles and accumulation, Kahan-compensated LSE, gradient filtering with ε
    /// (with the dropped-mass estimate of `Options.filterCorrection`).
    case `default`
    /// As `default`, and the gradients accumulated with Kahan compensation too: each dE
    /// and dC element keeps a compensation term (one extra N x D and V x D buffer), and
    /// every per-block partial is added through it.
    case kahan
    /// `kahan` without filtering for dE: every recomputed row enters dE (dC still filtered).
    case kahanFullE = "kahan-full-e"
    /// `kahan` without filtering for dC: every recomputed row enters dC (dE still filtered).
    case kahanFullC = "kahan-full-c"
    /// Float64 tiles and accumulation and no filtering: the tiled engine's most accurate
    /// form (slow; a reference, not a training mode).
    case exact

    /// Whether the gradients are accumulated with Kahan compensation.
    var compensated: Bool { self == .kahan || self == .kahanFullE || self == .kahanFullC }
}

/// When to skip backward tiles.
public enum FilterEpsilon: Sendable, Equatable {
    /// ε by element type, as in apple/ml-cross-entropy: Float32 2^-28, Float16 2^-15,
    /// BFloat16 2^-12 (of the lower-precision of E and C).
    case auto
    /// No filtering: every tile enters the gradient products.
    case none
    /// A fixed ε ≥ 0.
    case value(Double)

    /// The threshold for E and C stored as `e` and `c`; nil: no filtering.
    public func resolve(_ e: ElementType, _ c: ElementType) -> Double? {
        switch self {
        case .none: return nil
        case .value(let x): return x
        case .auto:
            func eps(_ t: ElementType) -> Double {
                switch t { case .float32: 0x1p-28; case .float16: 0x1p-15; case .bfloat16: 0x1p-12 }
            }
            return max(eps(e), eps(c))
        }
    }
}

/// Options of the loss. Defaults match `F.cross_entropy` and `linear_cross_entropy`.
public struct Options: Sendable {
    /// Targets equal to this are skipped (no loss, no gradient).
    public var ignoreIndex: Int = -100
    public var reduction: Reduction = .mean
    /// Soft capping s > 0: logits become s·tanh(logits / s). nil: off.
    public var softcap: Double? = nil
    /// Row j of each sequence is paired with target j + shift (0: no shift).
    public var shift: Int = 0
    /// Label smoothing α ∈ [0, 1], as PyTorch defines it:
    /// loss = (1 − α)·nll + α·(lse − mean_v z_v).
    public var labelSmoothing: Double = 0
    /// z-loss coefficient z ≥ 0: adds z·lse² to each non-ignored token's loss (with
    /// `classWeights`, w_t·z·lse²: weighted like the token's own loss).
    public var zLoss: Double = 0
    /// Per-class weights w (V values, finite, ≥ 0): PyTorch's `weight` of `F.cross_entropy`.
    /// Token i with target t_i gets
    ///     loss_i = w_{t_i}·[(1 − α)·(lse_i − z_{i,t_i}) + zLoss·lse_i²] + (α/V)·Σ_v w_v·(lse_i − z_iv),
    /// and `.mean` divides the sum over active tokens by Σ_i w_{t_i} (not by their count),
    /// as PyTorch does (NaN when that sum is 0). nil: every weight 1 (the plain loss).
    /// The count V is checked by each call.
    public var classWeights: [Float]? = nil
    /// Gradient filtering threshold.
    public var filterEpsilon: FilterEpsilon = .auto
    /// Sort the vocabulary by average logit before the backward, so that the significant
    /// entries share tiles. The CPU engine does not sort where nearly every entry is kept
    /// (no filter, or ε below 2^-20: Float32's default, the exact mode), since no tile could
    /// be skipped there (`BackwardPolicy.sortVocabulary`).
    public var sortVocabulary: Bool = true
    public var mode: Mode = .default
    /// Add the first-order part of what the filter drops to dE: for a skipped row segment
    /// (token i, vocabulary block J) the sum Σ_{v∈J} dy_iv times the mean of the block's C
    /// rows. Filtering then loses only the deviations from the block mean, which do not add
    /// up coherently (Docs/NUMERICS.md). Costs one D-vector update per skipped segment.
    /// With a bias, dBias gets the same mass: each forward block's dropped total, spread over
    /// its classes (where dC is filtered too; dC gets no estimate).
    public var filterCorrection: Bool = true
    /// The fused call (`lossAndGradients`): the most logits its forward keeps for one row of a
    /// token block, so that the backward reads them instead of recomputing the logit tiles:
    /// every entry with p ≥ ε/16 against the row's LSE so far, and the target's (about 670 a
    /// row on LM-like data at V = 128256, at most about 1640).
    /// Each kept entry costs 6 bytes per worker: the room is reserved for the whole block
    /// (3 MiB for 256 rows at 2048) but only the pages the entries fill become resident, so
    /// the memory a call takes is what its rows kept. A row that would run out of room, or
    /// keep more than 3/4 of a forward block's entries (as flat rows do from the first block:
    /// such rows are cheaper recomputed by the tile kernel than added entry by entry), is
    /// recomputed, as without it, from that forward block on (a choice of the row alone, so no
    /// result depends on the thread count). dC and the loss are bitwise the same either way; dE
    /// (and, with a bias, dBias) differs by the entries below ε/16 of the rows the filter keeps,
    /// which the dropped-mass estimates then carry (Docs/NUMERICS.md).
    /// Applies in Float32 accumulation with filtering on both gradients at ε ≥ 2^-16 (the
    /// 16-bit types' defaults, not Float32's 2^-28, which keeps nearly every entry), without
    /// soft cap, class weights or z-loss (and token blocks of at most 512 rows: the tile plan
    /// makes at most 288 unless CCE_TOKEN_BLOCK_MAX says otherwise); 0 turns it off.
    /// (CCE_SAVED_PER_ROW in the environment overrides it, for experiments.)
    /// A vocabulary shard's fused call (`lossAndGradients(…, shard:, exchange:)`) keeps them too,
    /// for a whole exchange chunk at once (CutCrossEntropy.exchangeChunk: 1024 tokens at one or
    /// two threads, 4096 with more), against a lower bound of the global LSE that the ranks
    /// exchange (a looser one than one process has: about 230 entries a row of a quarter of the
    /// vocabulary where one process keeps about 170): at 4 ranks x 4 threads, N = 4096, LM-like
    /// data, a rank's peak is 2.2 to 2.7% of the logits its shard would materialize (1.0 to
    /// 1.4% at chunks of 1024, which are slower); at 2 ranks x 1 thread about 0.55%
    /// (Docs/SCALING.md).
    public var savedLogitsPerRow: Int = 2048
    /// Check inputs for NaN and infinities (costs one pass over E, C and the bias).
    public var checkFinite: Bool = false
    /// Worker threads; nil: every CPU this process may use.
    public var threads: Int? = nil

    public init() {}

    /// Throws `CCEError.invalidOption` for a value outside its domain.
    public func validate() throws {
        if let s = softcap, !(s > 0 && s.isFinite) {
            throw CCEError.invalidOption("softcap must be finite and > 0 (got \(s))")
        }
        guard shift >= 0 else { throw CCEError.invalidOption("shift must be >= 0 (got \(shift))") }
        guard labelSmoothing >= 0 && labelSmoothing <= 1 else {
            throw CCEError.invalidOption("labelSmoothing must be in [0, 1] (got \(labelSmoothing))")
        }
        guard zLoss >= 0 && zLoss.isFinite else {
            throw CCEError.invalidOption("zLoss must be finite and >= 0 (got \(zLoss))")
        }
        if case .value(let e) = filterEpsilon, !(e >= 0 && e.isFinite) {
            throw CCEError.invalidOption("filter epsilon must be finite and >= 0 (got \(e))")
        }
        if let t = threads, t < 1 { throw CCEError.invalidOption("threads must be >= 1 (got \(t))") }
        guard (0...65536).contains(savedLogitsPerRow) else {
            throw CCEError.invalidOption("savedLogitsPerRow must be in 0...65536 (got \(savedLogitsPerRow))")
        }
        if let w = classWeights {
            if let i = w.firstIndex(where: { !$0.isFinite }) { throw CCEError.nonFinite(tensor: "classWeights", index: i) }
            if let i = w.firstIndex(where: { $0 < 0 }) {
                throw CCEError.invalidOption("classWeights must be >= 0 (classWeights[\(i)] = \(w[i]))")
            }
        }
    }
}
