// The accuracy table behind Docs/NUMERICS.md (`cce accuracy`): every mode and element type
// on LM-like data, each one's relative error ‖x − truth‖ / ‖truth‖ for the loss, dE and dC
// (the gradients' by `relativeError`, RelativeError.swift), its time and peak memory, in
// one run.
//
// Truth: the engine's exact mode (Float64 tiles and accumulation, no filtering; checked
// against the materialized Float64 oracle by the tests) on the same rounded inputs.
// Variants, so that filtering and accumulation can be told apart:
//   default              Float32, filter ε by type, dropped-mass estimate for dE
//   default, plain filter the same without the estimate (apple/ml-cross-entropy's filtering)
//   default, no filter   Float32 accumulation alone
//   kahan, kahan-full-e, kahan-full-c   the compensated modes
//   materialized         Float32 logits in an N x V matrix (OpenBLAS), PyTorch's method
// Peak memory: MemoryProbe's growth beyond the inputs, minus the returned gradients.
// Options: label smoothing α (every variant and the truth), and a bias (normal, σ 0.1, from
// the seed, in the element type), whose dBias error then gets its own column.

import CCEData
import CCERuntime
import CutCrossEntropy
import Foundation

public struct AccuracyRow: Codable, Sendable {
    public var dtype: String, data: String, variant: String
    public var kept: Double?
    public var seconds: Double, peak_mb: Double
    public var loss_rel: Double, dE_rel: Double, dC_rel: Double
    /// With a bias: dBias's relative error.
    public var dBias_rel: Double? = nil
    /// The engine rows' tile kernel and backward vocabulary block VB (the rounding depends
    /// on both); nil for the materialized baseline.
    public var kernel: String? = nil, vocab_block: Int? = nil
}

public enum Accuracy {
    /// Runs every variant for each element type and data setting (S, α).
    public static func run(tokens n: Int, dim d: Int, vocab v: Int, types: [ElementType],
                           settings: [(Double, Double)], threads: Int, seed: UInt64,
                           labelSmoothing: Double = 0, bias withBias: Bool = false,
                           log: (String) -> Void) throws -> [AccuracyRow] {
        var rows: [AccuracyRow] = []
        for type in types {
            for (s, alpha) in settings {
                let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: type, scale: s, alpha: alpha, seed: seed)
                let label = "S=\(s.formatted()) α=\(alpha.formatted())"
                let gradBytes = Double((n * d + v * d + (withBias ? v : 0)) * 4)
                let bias = withBias ? LMLikeData.bias(vocab: v, type: type, seed: seed) : nil
                func opts(_ mode: Mode, _ eps: FilterEpsilon = .auto, correction: Bool = true) -> Options {
                    var o = Options(); o.mode = mode; o.threads = threads; o.filterEpsilon = eps
                    o.filterCorrection = correction; o.labelSmoothing = labelSmoothing
                    return o
                }
                log("\(type.rawValue) \(label): truth (exact mode)")
                let start = Date()
                let (truth, truthPeak) = try MemoryProbe.measure {
                    try CutCrossEntropy(options: opts(.exact)).lossAndGradients(
                        embeddings: data.embeddings, classifier: data.classifier, targets: data.targets, bias: bias)
                }
                let truthSeconds = Date().timeIntervalSince(start)
                let tE = truth.1.dE.doubles, tC = truth.1.dC.doubles, tL = truth.0.loss, tB = truth.1.dBias?.doubles
                func engine(_ o: Options) -> (kernel: String, vb: Int) {
                    let cce = CutCrossEntropy(options: o)
                    return (cce.tileKernel(embeddings: type, classifier: type).name,
                            cce.plan(tokens: n, dim: d, vocab: v, storage: type).vocabBlock)
                }
                let exact = engine(opts(.exact))
                rows.append(AccuracyRow(dtype: type.rawValue, data: label, variant: "exact (the truth)", kept: 1,
                                        seconds: truthSeconds, peak_mb: max(0, Double(truthPeak) - 2 * gradBytes) / 1e6,
                                        loss_rel: 0, dE_rel: 0, dC_rel: 0, dBias_rel: tB.map { _ in 0 },
                                        kernel: exact.kernel, vocab_block: exact.vb))
                let variants: [(String, Options)] = [
                    ("default", opts(.default)),
                    ("default, plain filter (no estimate)", opts(.default, correction: false)),
                    ("default, no filter", opts(.default, .none)),
                    ("kahan", opts(.kahan)),
                    ("kahan-full-e", opts(.kahanFullE)),
                    ("kahan-full-c", opts(.kahanFullC)),
                ]
                for (name, o) in variants {
                    log("\(type.rawValue) \(label): \(name)")
                    let t0 = Date()
                    let (r, peak) = try MemoryProbe.measure {
                        try CutCrossEntropy(options: o).lossAndGradients(
                            embeddings: data.embeddings, classifier: data.classifier, targets: data.targets, bias: bias)
                    }
                    let secs = Date().timeIntervalSince(t0)
                    let fs = r.1.filter, info = engine(o)
                    rows.append(AccuracyRow(dtype: type.rawValue, data: label, variant: name,
                                            kept: Double(fs.keptRowSegments) / Double(max(1, fs.rowSegments)),
                                            seconds: secs, peak_mb: max(0, Double(peak) - gradBytes) / 1e6,
                                            loss_rel: abs(r.0.loss - tL) / abs(tL),
                                            dE_rel: relativeError(r.1.dE.doubles, tE), dC_rel: relativeError(r.1.dC.doubles, tC),
                                            dBias_rel: tB.flatMap { t in r.1.dBias.map { relativeError($0.doubles, t) } },
                                            kernel: info.kernel, vocab_block: info.vb))
                }
                log("\(type.rawValue) \(label): materialized")
                let t0 = Date()
                let (m, peak) = try MemoryProbe.measure {
                    try Materialized.compute(embeddings: data.embeddings, classifier: data.classifier,
                                             targets: data.targets, bias: bias, options: opts(.default))
                }
                rows.append(AccuracyRow(dtype: type.rawValue, data: label, variant: "materialized (Float32, OpenBLAS)",
                                        kept: nil, seconds: Date().timeIntervalSince(t0),
                                        peak_mb: max(0, Double(peak) - gradBytes) / 1e6,
                                        loss_rel: abs(m.loss - tL) / abs(tL),
                                        dE_rel: relativeError(m.dE!.map { Double($0) }, tE),
                                        dC_rel: relativeError(m.dC!.map { Double($0) }, tC),
                                        dBias_rel: tB.flatMap { t in m.dBias.map { relativeError($0.map { Double($0) }, t) } }))
            }
        }
        return rows
    }

    /// The run's estimated peak (Footprint): for the largest element type, the data, the
    /// truth kept with its Float64 gradients, and the larger of a kahan-mode call and the
    /// materialized baseline, each with the Float64 copies its errors are computed from.
    public static func estimatedBytes(tokens n: Int, dim d: Int, vocab v: Int, types: [ElementType]) -> Double {
        types.map { type -> Double in
            let copies = 2 * Footprint.float64Gradients(tokens: n, dim: d, vocab: v)
            let variant = max(Footprint.engine(tokens: n, dim: d, vocab: v, type: type, mode: .kahan),
                              Footprint.materialized(tokens: n, dim: d, vocab: v))
            return max(Footprint.lmLikeData(tokens: n, dim: d, vocab: v, type: type),
                       Footprint.lmLikeDataKept(tokens: n, dim: d, vocab: v, type: type)
                           + Footprint.engine(tokens: n, dim: d, vocab: v, type: type, mode: .exact) + copies + variant)
        }.max() ?? 0
    }

    /// The rows as a Markdown table.
    public static func markdown(_ rows: [AccuracyRow]) -> String {
        let withBias = rows.contains { $0.dBias_rel != nil }
        var s = "| type | data | variant | kernel, VB | rows kept | time s | peak MB | loss rel err | dE rel err | dC rel err |"
            + (withBias ? " dBias rel err |\n" : "\n")
        s += "|---|---|---|---|---|---|---|---|---|---|" + (withBias ? "---|\n" : "\n")
        for r in rows {
            let kept = r.kept.map { String(format: "%.1f%%", 100 * $0) } ?? "—"
            let kernel = r.kernel.map { "\($0), \(r.vocab_block ?? 0)" } ?? "—"
            s += "| \(r.dtype) | \(r.data) | \(r.variant) | \(kernel) | \(kept) | \(String(format: "%.2f", r.seconds)) | "
                + "\(String(format: "%.1f", r.peak_mb)) | \(String(format: "%.1e", r.loss_rel)) | "
                + "\(String(format: "%.1e", r.dE_rel)) | \(String(format: "%.1e", r.dC_rel)) |"
                + (withBias ? " \(r.dBias_rel.map { String(format: "%.1e", $0) } ?? "—") |\n" : "\n")
        }
        return s
    }
}
