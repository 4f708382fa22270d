// The backward policy: the options that decide how gradients are filtered and summed,
// resolved once per call from `Options` and the inputs' element types. The CPU engine
// (Backward.swift), the CUDA library (CUDALibrary.swift) and `cce explain` read this, and
// nothing else decides ε or which gradient is filtered.
//
//   mode            accumulation   filters dE   filters dC   estimate (if on)
//   default         float32        yes          yes          yes
//   kahan           kahan          yes          yes          yes
//   kahan-full-e    kahan          no           yes          no (nothing dropped from dE)
//   kahan-full-c    kahan          yes          no           yes
//   exact           float64        no           no           no (no filtering at all)
//
// ε: `FilterEpsilon.resolve` (by element type for `.auto`), nil for `.none` and in the
// exact mode. The dropped-mass estimate (Options.filterCorrection) needs ε and a filtered dE.

/// How the backward filters and accumulates, resolved for one call.
public struct BackwardPolicy: Sendable, Equatable, CustomStringConvertible {
    /// How partial sums are carried.
    public enum Accumulation: String, Sendable {
        /// Float32 tiles and sums.
        case float32
        /// Float32 tiles; each dE and dC element keeps a Kahan compensation term.
        case kahan
        /// Float64 tiles and sums (the exact mode).
        case float64
    }

    public let accumulation: Accumulation
    /// The filter threshold ε on |∂loss/∂z|; nil: nothing is filtered.
    public let epsilon: Double?
    /// Whether filtered row segments leave dE (false: every recomputed row enters dE).
    public let filtersDE: Bool
    /// Whether filtered row segments leave dC and dBias.
    public let filtersDC: Bool
    /// Whether the first-order part of what the filter drops is added back to dE.
    public let estimate: Bool
    /// Whether the CPU engine sorts the vocabulary by average logit before its sweep: as
    /// `Options.sortVocabulary` asks, except where nearly every row segment is expected to be
    /// kept (`densePrediction`: no filter, or ε below 2^-20, so Float32's default and the exact
    /// mode). There no tile would be skipped for the order, and it would only cost its pass
    /// over C and scatter dC's rows over memory (Float32 loss+grad 4 to 6% slower sorted on a
    /// Zen 5, Docs/PERFORMANCE.md). The CUDA library takes the option as it is.
    public let sortVocabulary: Bool
    /// dC's entry filter: inside a kept row segment, an entry with |∂loss/∂z| below this
    /// (ε/16) is left out of dC and dBias, so that a classifier row no kept entry needs is
    /// not read or written at all; nil when nothing is filtered.
    public var entryEpsilon: Double? { epsilon.map { $0 * Self.entryFraction } }

    /// Whether nearly every row segment is expected to enter the gradient products: no filter,
    /// or ε below 2^-20 (Float32's default 2^-28 keeps about 97% of them on LM-like data).
    public var densePrediction: Bool { Self.keepsNearlyEverything(epsilon) }
    /// The rule of `densePrediction`, for a resolved ε (nil: no filter).
    static func keepsNearlyEverything(_ epsilon: Double?) -> Bool { (epsilon ?? 0) < 0x1p-20 }
    /// entryEpsilon / ε. At 1/16 the relative error of dC on LM-like data is that of the
    /// row-segment filter alone, to two digits (Docs/NUMERICS.md).
    public static let entryFraction = 1.0 / 16

    /// The policy of `options` for E and C stored as `embeddings` and `classifier`.
    public init(_ options: Options, embeddings: ElementType, classifier: ElementType) {
        let mode = options.mode
        switch mode {
        case .default: accumulation = .float32
        case .kahan, .kahanFullE, .kahanFullC: accumulation = .kahan
        case .exact: accumulation = .float64
        }
        epsilon = mode == .exact ? nil : options.filterEpsilon.resolve(embeddings, classifier)
        filtersDE = epsilon != nil && mode != .kahanFullE
        filtersDC = epsilon != nil && mode != .kahanFullC
        estimate = options.filterCorrection && filtersDE
        sortVocabulary = options.sortVocabulary && !Self.keepsNearlyEverything(epsilon)
    }

    /// Whether both gradients drop the same rows, so that a row known negligible from the
    /// forward's block maxima need not be recomputed at all (the fused call's skip bound).
    public var filtersBoth: Bool { filtersDE && filtersDC }

    public var description: String {
        "accumulation \(accumulation.rawValue), ε \(epsilon.map { "\($0)" } ?? "none"), "
            + "filters dE \(filtersDE), dC \(filtersDC), estimate \(estimate), sorted \(sortVocabulary)"
    }
}
