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

public enum Compare {
    /// Compares every .npy file the two folders share.
    public static func run(reference: String, candidate: String, budgets: Budgets) throws
        -> (compared: [TensorComparison], onlyInReference: [String])
    {
        let fm = FileManager.default
        for dir in [reference, candidate] {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                throw NPYError(dir, "no such folder")
            }
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
                                            problem: "shape \(shapeText(c.shape)) in the candidate, \(shapeText(r.shape)) in the reference"))
                continue
            }
            // Both arrays read in place (no Float64 copies of Gemma-sized gradients).
            let row = r.withElements { x in c.withElements { y -> TensorComparison in
                var e = RelativeError()
                for i in 0..<r.count { e.add(y(i), x(i), at: i) }
                return TensorComparison(name: name, shape: r.shape, maxAbs: e.maxAbs, relative: e.value, worst: e.worst,
                                        referenceValue: e.worst.map(x), candidateValue: e.worst.map(y),
                                        relativeBudget: rb, absoluteBudget: ab, problem: nil)
            }}
            out.append(row)
        }
        return (out, refFiles.filter { !candFiles.contains($0) })
    }
}
