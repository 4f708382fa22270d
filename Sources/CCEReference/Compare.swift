// `cce compare`: how far a candidate's outputs (a GPU kernel's dumps, say) are from a
// reference run's, tensor by tensor.
//
// For each .npy file present in both folders: the largest absolute difference, the relative
// norm error ‖cand − ref‖ / ‖ref‖, and the worst element with its index and both values,
// by the package's one rule (RelativeError.swift): positions where both are NaN (lse of
// unpaired rows) agree; any other NaN or infinity is an infinite error; a nonzero candidate
// against an all-zero reference is an infinite relative error. Budgets bound the relative
// norm error (`--budget`) and the largest absolute difference (`--max-abs`), for every
// tensor or per name.
//
// As a gate (`Compare.failures`), a comparison also fails, whatever the budgets, when a
// reference tensor is missing from the candidate or the candidate holds a NaN or an infinity
// where the reference has no NaN; `ComparePolicy` lets either through when asked.

import CutCrossEntropy
import Foundation

/// The comparison of one tensor.
public struct TensorComparison: Sendable {
    public let name: String
    public let shape: [Int]
    /// nil when the shapes differ (then `problem` says how).
    public let maxAbs: Double?
    public let relative: Double?
    public let worst: Int?
    public let referenceValue: Double?
    public let candidateValue: Double?
    public let relativeBudget: Double?
    public let absoluteBudget: Double?
    public let problem: String?
    /// Candidate elements that are NaN or infinite where the reference is not NaN, and the
    /// first of them (positions where both are NaN agree and are not counted).
    public let nonFinite: Int
    public let firstNonFinite: Int?

    /// Whether every budget that applies holds (and the shapes agree).
    public var passed: Bool {
        guard problem == nil, let r = relative, let a = maxAbs else { return false }
        return (relativeBudget.map { r <= $0 } ?? true) && (absoluteBudget.map { a <= $0 } ?? true)
    }
}

/// Budgets: a value for every tensor, and values for named tensors ("dE", "loss", ...).
public struct Budgets: Sendable {
    public var relative: [String: Double] = [:]
    public var absolute: [String: Double] = [:]
    public init() {}

    /// Parses "X" (every tensor) or "NAME=X".
    public static func parse(_ specs: [String], into table: inout [String: Double], option: String) throws {
        for s in specs {
            let parts = s.split(separator: "=", maxSplits: 1).map(String.init)
            let (name, value) = parts.count == 2 ? (parts[0], parts[1]) : ("*", parts[0])
            guard let x = Double(value), x >= 0 else {
                throw NPYError(option, "budget '\(s)' is not NAME=X or X with X a number >= 0")
            }
            table[name] = x
        }
    }

    func lookup(_ t: [String: Double], _ name: String) -> Double? { t[name] ?? t["*"] }
}

/// What a comparison lets through that it otherwise fails.
public struct ComparePolicy: Sendable {
    /// Reference tensors missing from the candidate (`--allow-missing`).
    public var allowMissing = false
    /// NaN or infinite candidate values where the reference has none (`--allow-non-finite`);
    /// they still count as infinite errors against a budget.
    public var allowNonFinite = false
    public init() {}
}

public enum Compare {
    /// Compares every .npy file the two folders share.
    public static func run(reference: String, candidate: String, budgets: Budgets) throws
        -> (compared: [TensorComparison], onlyInReference: [String])
    {
        let fm = FileManager.default
        for dir in [reference, candidate] {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: dir, isDirectory: &isDir) else { throw NPYError(dir, "no such folder") }
            guard isDir.boolValue else { throw NPYError(dir, "is a file, not a folder") }
        }
        let refFiles = try fm.contentsOfDirectory(atPath: reference).filter { $0.hasSuffix(".npy") }.sorted()
        let candFiles = Set(try fm.contentsOfDirectory(atPath: candidate).filter { $0.hasSuffix(".npy") })
        let shared = refFiles.filter { candFiles.contains($0) }
        guard !shared.isEmpty else {
            throw NPYError(candidate, "has none of the reference's arrays (\(refFiles.joined(separator: ", ")))")
        }
        for name in Array(budgets.relative.keys) + Array(budgets.absolute.keys) where name != "*" {
            guard shared.contains(name + ".npy") else {
                throw NPYError(candidate, "a budget names \(name), but \(name).npy is not in both folders")
            }
        }
        var out: [TensorComparison] = []
        for file in shared {
            let name = String(file.dropLast(4))
            let r = try NPYArray.read(reference + "/" + file), c = try NPYArray.read(candidate + "/" + file)
            let rb = budgets.lookup(budgets.relative, name), ab = budgets.lookup(budgets.absolute, name)
            for (a, dir) in [(r, reference), (c, candidate)] where !a.dtype.isFloat {
                throw NPYError(dir + "/" + file, "expected floating-point values, got \(a.dtype.rawValue)")
            }
            guard r.shape == c.shape else {
                out.append(TensorComparison(name: name, shape: r.shape, maxAbs: nil, relative: nil, worst: nil,
                                            referenceValue: nil, candidateValue: nil, relativeBudget: rb,
                                            absoluteBudget: ab,
                                            problem: "shape \(shapeText(c.shape)) in the candidate, \(shapeText(r.shape)) in the reference",
                                            nonFinite: 0, firstNonFinite: nil))
                continue
            }
            // Both arrays read in place (no Float64 copies of Gemma-sized gradients).
            let row = r.withElements { x in c.withElements { y -> TensorComparison in
                var e = RelativeError()
                var nonFinite = 0, firstNonFinite: Int? = nil
                for i in 0..<r.count {
                    let (ci, ri) = (y(i), x(i))
                    e.add(ci, ri, at: i)
                    if !ci.isFinite && !(ci.isNaN && ri.isNaN) {
                        nonFinite += 1
                        if firstNonFinite == nil { firstNonFinite = i }
                    }
                }
                return TensorComparison(name: name, shape: r.shape, maxAbs: e.maxAbs, relative: e.value, worst: e.worst,
                                        referenceValue: e.worst.map(x), candidateValue: e.worst.map(y),
                                        relativeBudget: rb, absoluteBudget: ab, problem: nil,
                                        nonFinite: nonFinite, firstNonFinite: firstNonFinite)
            }}
            out.append(row)
        }
        return (out, refFiles.filter { !candFiles.contains($0) })
    }

    /// Why `rows` and `missing` (from `run`) fail as a gate, one phrase per cause; empty when
    /// they pass: a shape that differs, a budget exceeded, non-finite candidate values and
    /// missing tensors (the last two unless `policy` lets them through).
    public static func failures(_ rows: [TensorComparison], missing: [String], policy: ComparePolicy = ComparePolicy())
        -> [String]
    {
        var out: [String] = []
        for r in rows {
            if let p = r.problem { out.append("\(r.name) (\(p))"); continue }
            var why: [String] = []
            if r.nonFinite > 0 && !policy.allowNonFinite {
                why.append("\(r.nonFinite) non-finite value\(r.nonFinite == 1 ? "" : "s"), the first at \(indexText(r.firstNonFinite!, r.shape))")
            }
            if (r.relativeBudget != nil || r.absoluteBudget != nil) && !r.passed { why.append("over budget") }
            if !why.isEmpty { out.append("\(r.name) (\(why.joined(separator: ", ")))") }
        }
        if !missing.isEmpty && !policy.allowMissing {
            out.append("missing from the candidate: \(missing.joined(separator: ", "))")
        }
        return out
    }
}
