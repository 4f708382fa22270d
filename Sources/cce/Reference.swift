// cce reference / cce compare: the numerical reference for GPU ports, over .npy files
// (Sources/CCEReference; Docs/REFERENCE.md).

import ArgumentParser
import CCEReference
import CutCrossEntropy
import Foundation

struct ReferenceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reference",
        abstract: "Loss, LSE and gradients of tensors in .npy files, written as .npy files into a folder.",
        discussion: """
            E.npy (N, D) or (B, T, D), C.npy (V, D) and bias as <f4, <f2, <f8 (rounded to f32) or \
            bfloat16 (ml_dtypes); targets <i8 or <i4 of shape (N) or (B, T). Writes loss.npy, lse.npy, \
            dE.npy, dC.npy, dBias.npy (with --bias) and meta.json into DIR: <f8 in exact mode, <f4 \
            otherwise; gradients of the reduced loss (for none, of its sum). Nothing is left in DIR on error.
            """)

    @Option(help: "E: (N, D) or (B, T, D).") var embeddings: String
    @Option(help: "C: (V, D).") var classifier: String
    @Option(help: "Targets: (N) or (B, T), integers.") var targets: String
    @Option(help: "Bias: (V).") var bias: String?
    @Option(help: "Class weights: (V) .npy of finite values ≥ 0 (PyTorch's `weight` of F.cross_entropy: the mean divides by the targets' total weight).")
    var weight: String?
    @Option(parsing: .unconditional, help: "Targets equal to this are ignored.") var ignoreIndex = -100
    @Option(help: "mean, sum or none.") var reduction: Reduction = .mean
    @Option(parsing: .unconditional, help: "Soft cap s: logits become s·tanh(logits/s).") var softcap: Double?
    @Option(parsing: .unconditional, help: "Pair row j of each sequence with target j + K.") var shift = 0
    @Option(parsing: .unconditional, help: "Label smoothing α in [0, 1].") var labelSmoothing = 0.0
    @Option(parsing: .unconditional, help: "z-loss coefficient.") var zLoss = 0.0
    @Option(help: "default, kahan, kahan-full-e, kahan-full-c or exact.") var mode: Mode = .default
    @OptionGroup var filter: FilterOptions<StandardEngine>
    @Flag(help: "Leave out the estimate of the filtered dE mass.") var noFilterCorrection = false
    @Flag(help: "Do not sort the vocabulary before the backward.") var noSort = false
    @OptionGroup var engine: EngineOptions<StandardEngine>
    @Option(help: "cpu, or cuda (the CUDA library, loaded at run time).") var backend = Backend.cpu
    @Option(help: "Path of libcce_cuda.so (default: $CCE_CUDA_LIBRARY, then beside cce, then the loader's path).")
    var cudaLibrary: String?
    @Option(help: "Output folder (created, with its parents, if missing; files of other names in it are kept).") var out: String
    @Option(help: "vocab or tokens: split the work over the ranks of mpirun (rank 0 writes; Docs/SCALING.md).")
    var parallel: ParallelScheme?
    @Option(help: "Path of libcce_mpi.so (with --parallel under mpirun; default: $CCE_MPI_LIBRARY, then beside cce).")
    var mpiLibrary: String?

    func options() throws -> Options {
        var o = Options()
        o.ignoreIndex = ignoreIndex; o.reduction = reduction; o.softcap = softcap; o.shift = shift
        o.labelSmoothing = labelSmoothing; o.zLoss = zLoss; o.mode = mode; o.threads = engine.threads
        o.filterEpsilon = filter.filterEps
        o.filterCorrection = !noFilterCorrection; o.sortVocabulary = !noSort
        if let weight {
            let w = try NPYArray.read(weight)
            guard w.shape.count == 1 else { throw CLIError("--weight \(weight): shape \(w.shape), expected (V)") }
            o.classWeights = w.doubles().map { Float($0) }
        }
        do { try o.validate() } catch { throw CLIError("\(error)") }
        return o
    }

    func run() throws {
        if let parallel { return try runParallel(parallel) }
        let o = try options()
        // The output folder before the work: never an empty path, never a folder that would
        // mix two runs or lose a file of the user's (Reference.checkOutput).
        guard !out.isEmpty else { throw CLIError("--out is empty: name the output folder") }
        try Reference.checkOutput(out, writing: Reference.outputNames(bias: bias != nil))
        let inputs = try ReferenceInputs.load(embeddings: embeddings, classifier: classifier, targets: targets,
                                           bias: bias, ignoreIndex: ignoreIndex)
        for n in inputs.notes { FileHandle.standardError.write(Data("cce: note: \(n)\n".utf8)) }
        let result: ReferenceOutputs
        if backend == .cuda {
            let lib = try CUDALibrary.load(cudaLibrary)
            result = try Reference.computeCUDA(inputs, options: o, library: lib)
        } else {
            do { result = try Reference.computeCPU(inputs, options: o) } catch CCEError.overflow(let p, let m) {
                throw CLIError("overflow: the Float32 arithmetic of the \(m.rawValue) mode overflows on these finite inputs "
                               + "(targets\(indexText(p, inputs.targets.shape)): its LSE or loss is not finite); "
                               + "run with --mode exact, which computes in Float64, or scale E and C down")
            } catch { throw CLIError("\(error)") }
        }
        try Reference.write(result, to: out, options: recordedOptions())
        let loss = result.arrays.first { $0.name == "loss.npy" }!.array
        let shown = loss.shape.isEmpty ? String(format: "%.9g", loss.doubles()[0]) : "per position, shape \(shapeText(loss.shape))"
        print("loss \(shown); wrote \(result.arrays.map(\.name).joined(separator: ", ")), meta.json into \(out) "
              + "(\(result.meta["backend"] ?? "cpu"), \(mode.rawValue) mode, \(result.meta["seconds"] ?? "?") s)")
    }
}

extension ReferenceCommand {
    /// The command's inputs and options as meta.json records them.
    func recordedOptions() -> [String: String] {
        var recorded: [String: String] = [
            "embeddings": embeddings, "classifier": classifier, "targets": targets,
            "reduction": reduction.rawValue, "ignore_index": "\(ignoreIndex)", "shift": "\(shift)",
            "label_smoothing": "\(labelSmoothing)", "z_loss": "\(zLoss)",
            "filter_eps": filter.filterEps.defaultValueDescription,
            "filter_correction": "\(!noFilterCorrection)", "sort_vocabulary": "\(!noSort)",
            "threads": "\(engine.threads.map(String.init) ?? "all")",
        ]
        if let bias { recorded["bias"] = bias }
        if let weight { recorded["weight"] = weight }
        if let softcap { recorded["softcap"] = "\(softcap)" }
        return recorded
    }
}

struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Compare a candidate's .npy outputs with a reference run's; exit 1 when a budget is exceeded or a tensor is missing or non-finite.",
        discussion: """
            For each .npy file in both folders: max |cand − ref|, ‖cand − ref‖ / ‖ref‖ and the worst \
            element. Budgets: --budget 1e-3 (relative norm error, every tensor) or --budget dE=5e-3, \
            and --max-abs X or --max-abs lse=1e-5; repeat them as needed. Exit 1 also when a \
            reference tensor is missing from the candidate or the candidate holds NaN or infinity \
            where the reference has no NaN, unless --allow-missing or --allow-non-finite.
            """)

    @Option(help: "Folder written by cce reference.") var reference: String
    @Option(help: "Folder of the same files from the implementation under test.") var candidate: String
    @Option(parsing: .unconditionalSingleValue, help: "Relative norm error budget: X or NAME=X (repeatable).") var budget: [String] = []
    @Option(parsing: .unconditionalSingleValue, help: "Max absolute error budget: X or NAME=X (repeatable).") var maxAbs: [String] = []
    @Flag(help: "Pass when reference tensors are missing from the candidate (default: fail).") var allowMissing = false
    @Flag(help: "Pass NaN or infinite candidate values where the reference has none, within budgets (default: fail).")
    var allowNonFinite = false

    func run() throws {
        var b = Budgets()
        try Budgets.parse(budget, into: &b.relative, option: "--budget")
        try Budgets.parse(maxAbs, into: &b.absolute, option: "--max-abs")
        let (rows, missing) = try Compare.run(reference: reference, candidate: candidate, budgets: b)
        var policy = ComparePolicy()
        policy.allowMissing = allowMissing; policy.allowNonFinite = allowNonFinite
        print(pad("tensor", 8) + pad("shape", 16) + lpad("max |Δ|", 11) + lpad("rel err", 11) + "  "
              + pad("worst element (reference → candidate)", 46) + pad("budget", 22) + "status")
        func sci(_ x: Double?) -> String { x.map { String(format: "%.3e", $0) } ?? "-" }
        for r in rows {
            let worst = r.worst.map { "\(indexText($0, r.shape)) \(String(format: "%.6g", r.referenceValue!)) → \(String(format: "%.6g", r.candidateValue!))" }
                ?? (r.problem ?? "-")
            var budgets: [String] = []
            if let x = r.relativeBudget { budgets.append("rel ≤ \(x)") }
            if let x = r.absoluteBudget { budgets.append("abs ≤ \(x)") }
            let failed = !Compare.failures([r], missing: [], policy: policy).isEmpty
            let status = failed ? "FAIL" : (budgets.isEmpty ? (r.nonFinite > 0 ? "non-finite" : "-") : "ok")
            print(pad(r.name, 8) + pad(shapeText(r.shape), 16) + lpad(sci(r.maxAbs), 11) + lpad(sci(r.relative), 11)
                  + "  " + pad(worst, 46) + pad(budgets.isEmpty ? "-" : budgets.joined(separator: ", "), 22) + status)
        }
        if !missing.isEmpty { print("not in the candidate: \(missing.joined(separator: ", "))") }
        let failures = Compare.failures(rows, missing: missing, policy: policy)
        if !failures.isEmpty {
            var hint: [String] = []
            if !allowNonFinite && rows.contains(where: { $0.nonFinite > 0 }) { hint.append("--allow-non-finite") }
            if !allowMissing && !missing.isEmpty { hint.append("--allow-missing") }
            throw CLIError("compare failed: " + failures.joined(separator: "; ")
                           + (hint.isEmpty ? "" : " (\(hint.joined(separator: ", ")) to let these through)"))
        }
    }
}
