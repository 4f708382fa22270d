// `cce reference`: the loss and gradients of tensors read from .npy files, written as .npy
// files, for checking another implementation (a GPU kernel, a framework) against this one.
//
// Read:  E (N, D) or (B, T, D), C (V, D), targets (N) or (B, T), optional bias (V).
//        E, C, bias: '<f4', '<f2', bfloat16 (ml_dtypes) or '<f8' (rounded to Float32: the
//        engine stores f32, f16 or bf16); targets: '<i8' or '<i4'.
// Write: loss.npy (0-d for mean and sum, the targets' shape for none), lse.npy (the targets'
//        shape: the LSE of the row paired with each target, NaN where no row is paired),
//        dE.npy (E's shape), dC.npy (V, D), dBias.npy when a bias is given, meta.json.
//        The gradients are those of the reduced loss (for none, of its sum); '<f8' in exact
//        mode, '<f4' otherwise.
// Every file is written into a temporary folder inside DIR and moved into DIR only when all
// are complete, so an error leaves DIR as it was; no file this run did not write is removed.

import CutCrossEntropy
import Foundation

/// The inputs of one reference run, read and checked.
public struct ReferenceInputs: Sendable {
    public let embeddings: Tensor
    public let classifier: Tensor
    public let targets: Targets
    public let bias: Tensor?
    /// Notes for the user (for example, Float64 inputs rounded to Float32).
    public let notes: [String]

    /// Reads the .npy files and checks everything the engine would, naming the file at fault.
    public static func load(embeddings ePath: String, classifier cPath: String, targets tPath: String,
                            bias bPath: String?, ignoreIndex: Int) throws -> ReferenceInputs {
        var notes: [String] = []
        let eA = try NPYArray.read(ePath), cA = try NPYArray.read(cPath), tA = try NPYArray.read(tPath)
        let bA = try bPath.map { try NPYArray.read($0) }
        guard eA.shape.count == 2 || eA.shape.count == 3 else {
            throw NPYError(ePath, "embeddings must be 2-D (N, D) or 3-D (B, T, D), got shape \(shapeText(eA.shape))")
        }
        guard cA.shape.count == 2 else { throw NPYError(cPath, "classifier must be 2-D (V, D), got shape \(shapeText(cA.shape))") }
        guard tA.dtype == .int64 || tA.dtype == .int32 else {
            throw NPYError(tPath, "targets must be integers ('<i8' or '<i4'), got \(tA.dtype.rawValue)")
        }
        let d = eA.shape.last!, v = cA.shape[0]
        guard cA.shape[1] == d else {
            throw NPYError(cPath, "shapes do not agree: classifier \(shapeText(cA.shape)) has D = \(cA.shape[1]) but \(ePath) \(shapeText(eA.shape)) has D = \(d)")
        }
        let lead = Array(eA.shape.dropLast())
        guard tA.shape == lead else {
            throw NPYError(tPath, "shapes do not agree: targets \(shapeText(tA.shape)) but \(ePath) \(shapeText(eA.shape)) needs targets \(shapeText(lead))")
        }
        if let bA, let bPath {
            guard bA.shape == [v] else {
                throw NPYError(bPath, "shapes do not agree: bias \(shapeText(bA.shape)) but \(cPath) has V = \(v) classes")
            }
        }
        for (a, p) in [(eA, ePath), (cA, cPath)] + (bA.map { [($0, bPath!)] } ?? []) {
            guard a.count > 0 else { throw NPYError(p, "empty array of shape \(shapeText(a.shape))") }
        }
        let e = try tensor(eA, ePath, &notes), c = try tensor(cA, cPath, &notes)
        let b = try bA.map { try tensor($0, bPath!, &notes) }
        let raw = tA.integers()
        for (i, t) in raw.enumerated() where t != Int64(ignoreIndex) && !(t >= 0 && t < Int64(v)) {
            throw NPYError(tPath, "target out of range: targets\(indexText(i, tA.shape)) = \(t) is outside [0, \(v)) and is not the ignore index \(ignoreIndex)")
        }
        let targets = try Targets(raw.map { Int($0) }, shape: tA.shape)
        return ReferenceInputs(embeddings: e, classifier: c, targets: targets, bias: b, notes: notes)
    }

    static func tensor(_ a: NPYArray, _ path: String, _ notes: inout [String]) throws -> Tensor {
        guard a.dtype.isFloat else {
            throw NPYError(path, "expected floating-point values ('<f4', '<f2', '<f8' or bfloat16), got \(a.dtype.rawValue)")
        }
        try a.withElements { at in
            if let i = (0..<a.count).first(where: { !at($0).isFinite }) {
                throw NPYError(path, "non-finite value: element \(indexText(i, a.shape)) is \(at(i))")
            }
        }
        // The stored values as they are (f32, f16, bf16 are engine storage types).
        switch a.dtype {
        case .float32: return try Tensor(a.typed(Float.self), shape: a.shape)
        case .float16: return try Tensor(a.typed(Float16.self), shape: a.shape)
        case .bfloat16: return try Tensor(a.typed(UInt16.self).map { BFloat16(bitPattern: $0) }, shape: a.shape)
        default:
            notes.append("\(path): Float64 values rounded to Float32 (the engine stores f32, f16 or bf16)")
            let values = a.typed(Double.self), f = values.map { Float($0) }
            if let i = f.firstIndex(where: { !$0.isFinite }) {
                throw NPYError(path, "element \(indexText(i, a.shape)) = \(values[i]) overflows Float32")
            }
            return try Tensor(f, shape: a.shape)
        }
    }
}

/// What a reference run produced: the arrays by file name, and a summary.
public struct ReferenceOutputs: Sendable {
    public var arrays: [(name: String, array: NPYArray)]
    public var meta: [String: String]

    /// Outputs assembled elsewhere (`cce reference --parallel` on rank 0).
    public init(arrays: [(name: String, array: NPYArray)], meta: [String: String]) {
        self.arrays = arrays; self.meta = meta
    }
}

/// CPU time of this process (every thread, user and system), in seconds.
func processCPUSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

public enum Reference {
    /// Loss, LSE and gradients on the CPU engine (the gradients of the reduced loss; for
    /// reduction none, of the sum of the per-position losses).
    public static func computeCPU(_ inputs: ReferenceInputs, options: Options) throws -> ReferenceOutputs {
        let cce = CutCrossEntropy(options: options)
        let upstream: Upstream = options.reduction == .none
            ? .perToken([Float](repeating: 1, count: inputs.targets.count)) : .scalar(1)
        let start = Date(), cpuStart = processCPUSeconds()
        let (f, g) = try cce.lossAndGradients(embeddings: inputs.embeddings, classifier: inputs.classifier,
                                              targets: inputs.targets, bias: inputs.bias, upstream: upstream)
        let seconds = Date().timeIntervalSince(start), cpuSeconds = processCPUSeconds() - cpuStart
        let exact = options.mode == .exact
        func arr(_ v: Values, _ shape: [Int]) -> NPYArray {
            exact ? NPYArray(doubles: v.doubles, shape: shape) : NPYArray(floats: v.floats, shape: shape)
        }
        let loss: NPYArray = options.reduction == .none
            ? arr(f.tokenLosses, inputs.targets.shape)
            : (exact ? NPYArray(doubles: [f.loss], shape: []) : NPYArray(floats: [Float(f.loss)], shape: []))
        var arrays: [(String, NPYArray)] = [
            ("loss.npy", loss), ("lse.npy", arr(f.lse, inputs.targets.shape)),
            ("dE.npy", arr(g.dE, inputs.embeddings.shape)), ("dC.npy", arr(g.dC, inputs.classifier.shape)),
        ]
        if let db = g.dBias { arrays.append(("dBias.npy", arr(db, [inputs.classifier.shape[0]]))) }
        let fs = g.filter
        return ReferenceOutputs(arrays: arrays, meta: [
            "backend": "cpu", "mode": options.mode.rawValue, "seconds": String(format: "%.6f", seconds),
            "cpu_seconds": String(format: "%.6f", cpuSeconds),
            "active_tokens": "\(f.activeTokens)",
            "kept_row_segments": "\(fs.keptRowSegments) of \(fs.rowSegments)",
            "skipped_tiles": "\(fs.skippedTiles) of \(fs.tiles)",
        ])
    }

    /// The same on the CUDA engine (Float32 outputs). The time is the whole call, transfers
    /// included (the GPU work is not repeated for timing; `cce bench --backend cuda` times it).
    public static func computeCUDA(_ inputs: ReferenceInputs, options: Options, library: CUDALibrary) throws
        -> ReferenceOutputs
    {
        let start = Date()
        let r = try library.run(embeddings: inputs.embeddings, classifier: inputs.classifier, targets: inputs.targets,
                                bias: inputs.bias, options: options, repeats: 0)
        let seconds = Date().timeIntervalSince(start)
        let tshape = inputs.targets.shape, eshape = inputs.embeddings.shape
        let loss = NPYArray(floats: r.loss, shape: options.reduction == .none ? tshape : [])
        var arrays: [(String, NPYArray)] = [
            ("loss.npy", loss), ("lse.npy", NPYArray(floats: r.lse, shape: tshape)),
            ("dE.npy", NPYArray(floats: r.dE, shape: eshape)),
            ("dC.npy", NPYArray(floats: r.dC, shape: inputs.classifier.shape)),
        ]
        if let db = r.dBias { arrays.append(("dBias.npy", NPYArray(floats: db, shape: [inputs.classifier.shape[0]]))) }
        return ReferenceOutputs(arrays: arrays, meta: [
            "backend": "cuda", "cuda_library": library.path, "device": r.device, "mode": options.mode.rawValue,
            "seconds": String(format: "%.6f", seconds),
            "peak_device_mib": String(format: "%.1f", r.peakDeviceMiB),
            "tiles_kept": String(format: "%.4f", r.tilesKept),
        ])
    }

    /// Checks, before any work, that `dir` can take a run's outputs `names` (file names, e.g.
    /// `outputNames(bias:)`), and creates nothing: the path is not empty and not a file; if DIR
    /// exists, it is a writable folder and holds no output file of another name (a `dBias.npy`
    /// of an earlier run with a bias: this run would not replace it, and DIR would mix two
    /// runs; cce deletes no file it did not write); if not, the folder it would be made in is
    /// writable. Throws `NPYError` saying which and why.
    public static func checkOutput(_ dir: String, writing names: [String]) throws {
        guard !dir.isEmpty else { throw NPYError("", "the output folder's path is empty") }
        let fm = FileManager.default
        let url = URL(fileURLWithPath: dir).standardizedFileURL
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: url.path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw NPYError(dir, "cannot write outputs: it exists and is not a folder") }
            let stale = outputNames.filter { !names.contains($0) && fm.fileExists(atPath: url.appendingPathComponent($0).path) }
            if !stale.isEmpty {
                throw NPYError(dir, "holds \(stale.joined(separator: ", ")), which this run does not write: the folder would "
                               + "mix two runs; remove \(stale.count == 1 ? "it" : "them") or choose another folder (cce deletes no file it did not write)")
            }
            guard access(url.path, W_OK | X_OK) == 0 else {
                throw NPYError(dir, "cannot write outputs into it: \(String(cString: strerror(errno)))")
            }
            return
        }
        // The nearest folder that exists is where DIR (and any missing parents) would be made.
        var ancestor = url.deletingLastPathComponent()
        while !fm.fileExists(atPath: ancestor.path, isDirectory: &isDir), ancestor.path != "/" {
            ancestor = ancestor.deletingLastPathComponent()
        }
        guard isDir.boolValue else {
            throw NPYError(dir, "cannot create the folder: \(ancestor.path) is a file, not a folder")
        }
        guard access(ancestor.path, W_OK | X_OK) == 0 else {
            throw NPYError(dir, "cannot create the folder: \(String(cString: strerror(errno))) (\(ancestor.path) is not writable)")
        }
    }

    /// The files a run writes: loss.npy, lse.npy, dE.npy, dC.npy, dBias.npy with a bias, meta.json.
    public static func outputNames(bias: Bool) -> [String] { outputNames.filter { bias || $0 != "dBias.npy" } }

    /// Writes the outputs into `dir` (created with its parents if missing): first into a
    /// fresh temporary folder inside DIR (`.cce-partial-PID-XXXXXXXX`), then each file is
    /// renamed into DIR, replacing a file of the same name; the temporary folder goes. So a
    /// writable DIR under a read-only parent works, and no file is removed that this run did
    /// not write: the checks of `checkOutput` come first (a stale `dBias.npy` is refused, not
    /// deleted). On error the temporary folder, and the folders this call created, are removed
    /// and DIR is left as it was.
    public static func write(_ out: ReferenceOutputs, to dir: String, options: [String: String]) throws {
        let names = out.arrays.map(\.name) + ["meta.json"]
        try checkOutput(dir, writing: names)
        let fm = FileManager.default
        let url = URL(fileURLWithPath: dir).standardizedFileURL
        // The folders to make, outermost first (DIR and missing parents).
        var created: [URL] = []
        var missing = url
        while !fm.fileExists(atPath: missing.path) { created.insert(missing, at: 0); missing.deleteLastPathComponent() }
        var made: [URL] = []
        var tmp: URL? = nil
        func undo() {
            if let tmp { try? fm.removeItem(at: tmp) }
            for folder in made.reversed() { rmdir(folder.path) }   // only while empty
        }
        do {
            for folder in created {
                guard mkdir(folder.path, 0o777) == 0 || errno == EEXIST else {
                    throw NPYError(dir, "cannot create the folder \(folder.path): \(String(cString: strerror(errno)))")
                }
                made.append(folder)
            }
            let t = url.appendingPathComponent(".cce-partial-\(getpid())-\(UUID().uuidString.prefix(8))")
            guard mkdir(t.path, 0o777) == 0 else {
                throw NPYError(dir, "cannot create a temporary folder in it: \(String(cString: strerror(errno)))")
            }
            tmp = t
            for (name, a) in out.arrays {
                do { try a.encoded().write(to: t.appendingPathComponent(name)) } catch {
                    throw NPYError(dir, "cannot write \(name): \(systemErrorText(error))")
                }
            }
            var meta = out.meta.merging(options) { a, _ in a }
            meta["files"] = names.joined(separator: " ")
            let json = try JSONSerialization.data(withJSONObject: meta, options: [.prettyPrinted, .sortedKeys])
            do { try json.write(to: t.appendingPathComponent("meta.json")) } catch {
                throw NPYError(dir, "cannot write meta.json: \(systemErrorText(error))")
            }
            for name in names {
                guard rename(t.appendingPathComponent(name).path, url.appendingPathComponent(name).path) == 0 else {
                    throw NPYError(dir, "cannot move \(name) into place: \(String(cString: strerror(errno)))")
                }
            }
            rmdir(t.path)
        } catch {
            undo()
            throw error
        }
    }

    /// Every file name a run can write.
    public static let outputNames = ["loss.npy", "lse.npy", "dE.npy", "dC.npy", "dBias.npy", "meta.json"]
}

/// "(2, 3)" for [2, 3], "()" for a 0-d shape.
public func shapeText(_ s: [Int]) -> String {
    s.count == 1 ? "(\(s[0]),)" : "(" + s.map(String.init).joined(separator: ", ") + ")"
}

/// The multi-index "[i, j]" of flat element `flat` in `shape`.
public func indexText(_ flat: Int, _ shape: [Int]) -> String {
    guard !shape.isEmpty else { return "[]" }
    var idx = [Int](repeating: 0, count: shape.count), r = flat
    for k in stride(from: shape.count - 1, through: 0, by: -1) where shape[k] > 0 {
        idx[k] = r % shape[k]; r /= shape[k]
    }
    return "[" + idx.map(String.init).joined(separator: ", ") + "]"
}

/// A system error in words ("No such file or directory", "Permission denied"): the POSIX
/// error under a Foundation error when there is one, never a raw "Error Domain=…" dump.
public func systemErrorText(_ error: Error) -> String {
    let ns = error as NSError
    if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
    if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain {
        return String(cString: strerror(Int32(u.code)))
    }
    if let c = error as? CocoaError {
        switch c.code {
        case .fileNoSuchFile, .fileReadNoSuchFile: return String(cString: strerror(ENOENT))
        case .fileWriteNoPermission, .fileReadNoPermission: return String(cString: strerror(EACCES))
        case .fileWriteOutOfSpace: return String(cString: strerror(ENOSPC))
        case .fileWriteVolumeReadOnly: return String(cString: strerror(EROFS))
        case .fileWriteFileExists: return String(cString: strerror(EEXIST))
        default: break
        }
    }
    let text = ns.localizedDescription
    return text.contains("Error Domain=") ? "system error \(ns.code) (\(ns.domain))" : text
}
