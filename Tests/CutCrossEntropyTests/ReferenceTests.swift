// The numerical reference over .npy files: the NPY codec, input checks that name the file,
// outputs moved into place only when complete, `compare`, and the command line's exit status.

import CCEData
import CCEReference
import CutCrossEntropy
import Foundation
import XCTest

final class ReferenceTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("cce-ref-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// A .npy file with a hand-written header (to make bad ones).
    func npy(_ descr: String, _ shape: String, _ body: Data, fortran: String = "False", major: UInt8 = 1) -> Data {
        var header = "{'descr': '\(descr)', 'fortran_order': \(fortran), 'shape': \(shape), }"
        header += String(repeating: " ", count: (64 - (10 + header.utf8.count + 1) % 64) % 64) + "\n"
        var d = Data([0x93] + Array("NUMPY".utf8) + [major, 0])
        d.append(contentsOf: [UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)])
        d.append(contentsOf: Array(header.utf8)); d.append(body)
        return d
    }

    func bytes<T>(_ x: [T]) -> Data { x.withUnsafeBytes { Data($0) } }

    func testRoundTripAndDTypes() throws {
        let a = NPYArray(floats: [1, -2.5, 3, .nan, 0, 7], shape: [2, 3])
        let b = try NPYArray.parse(a.encoded(), path: "a.npy")
        XCTAssertEqual(b.shape, [2, 3]); XCTAssertEqual(b.dtype, .float32)
        XCTAssertEqual(b.doubles()[1], -2.5); XCTAssertTrue(b.doubles()[3].isNaN)
        XCTAssertEqual(a.encoded().count % 64, (6 * 4) % 64, "header padded to a multiple of 64")
        let s = try NPYArray.parse(NPYArray(doubles: [2.25], shape: []).encoded(), path: "s.npy")
        XCTAssertEqual(s.shape, []); XCTAssertEqual(s.doubles(), [2.25])
        // bfloat16 as ml_dtypes writes it ('<V2'), f16, i4, a 1-tuple shape, version 2.0.
        let bf = try NPYArray.parse(npy("<V2", "(3,)", bytes([UInt16(0x3F80), 0xC020, 0x0000])), path: "bf.npy")
        XCTAssertEqual(bf.dtype, .bfloat16); XCTAssertEqual(bf.doubles(), [1, -2.5, 0])
        let h = try NPYArray.parse(npy("<f2", "(2,)", bytes([Float16(0.5), Float16(-3)])), path: "h.npy")
        XCTAssertEqual(h.doubles(), [0.5, -3])
        var v2 = npy("<i4", "(2, 1)", bytes([Int32(7), -100]))
        v2[6] = 2; v2.insert(contentsOf: [0, 0], at: 10)  // 4-byte header length
        XCTAssertEqual(try NPYArray.parse(v2, path: "v2.npy").integers(), [7, -100])
    }

    func testMalformedFilesNameTheProblem() throws {
        let ok = npy("<f4", "(2, 2)", bytes([Float](repeating: 1, count: 4)))
        let cases: [(Data, String)] = [
            (ok.prefix(ok.count - 3), "truncated data"),
            (ok.prefix(30), "truncated header"),
            (Data("not numpy at all".utf8), "not a .npy file"),
            (npy("<f4", "(2, 2)", bytes([Float](repeating: 1, count: 4)), fortran: "True"), "Fortran"),
            (npy("<i2", "(4,)", bytes([Int16](repeating: 1, count: 4))), "unsupported element type '<i2'"),
            (npy(">f4", "(4,)", bytes([Float](repeating: 1, count: 4))), "big-endian"),
            (npy("|O", "(1,)", Data(count: 8)), "unsupported element type"),
            (ok + Data([1, 2, 3, 4]), "corrupt"),
            (npy("<f4", "(2, x)", Data()), "malformed shape"),
        ]
        for (data, want) in cases {
            XCTAssertThrowsError(try NPYArray.parse(data, path: "bad.npy"), want) { e in
                XCTAssertTrue("\(e)".hasPrefix("bad.npy: "), "\(e)")
                XCTAssertTrue("\(e)".contains(want), "\(e) should mention \(want)")
            }
        }
        XCTAssertThrowsError(try NPYArray.read(path("missing.npy"))) { XCTAssertTrue("\($0)".contains("no such file")) }
    }

    /// Writes E, C, T (and a bias) as .npy files.
    func writeInputs(e: [Float], eShape: [Int], c: [Float], v: Int, t: [Int64], tShape: [Int], bias: [Float]? = nil) throws {
        try NPYArray(floats: e, shape: eShape).encoded().write(to: URL(fileURLWithPath: path("E.npy")))
        try NPYArray(floats: c, shape: [v, eShape.last!]).encoded().write(to: URL(fileURLWithPath: path("C.npy")))
        try npy("<i8", shapeText(tShape), bytes(t)).write(to: URL(fileURLWithPath: path("T.npy")))
        if let bias { try NPYArray(floats: bias, shape: [v]).encoded().write(to: URL(fileURLWithPath: path("B.npy"))) }
    }

    func load(bias: Bool = false) throws -> ReferenceInputs {
        try ReferenceInputs.load(embeddings: path("E.npy"), classifier: path("C.npy"), targets: path("T.npy"),
                                 bias: bias ? path("B.npy") : nil, ignoreIndex: -100)
    }

    func testInputChecksNameTheFile() throws {
        let (b, t, d, v) = (2, 3, 4, 5)
        var rng = SeededRandom(seed: 4)
        let e = (0..<(b * t * d)).map { _ in Float(rng.normal()) }, c = (0..<(v * d)).map { _ in Float(rng.normal()) }
        try writeInputs(e: e, eShape: [b, t, d], c: c, v: v, t: [0, 1, 2, 3, 4, -100], tShape: [b, t])
        XCTAssertNoThrow(try load())
        func expect(_ file: String, _ text: String, bias: Bool = false) {
            XCTAssertThrowsError(try load(bias: bias)) { err in
                XCTAssertTrue("\(err)".hasPrefix(path(file)), "\(err) should name \(file)")
                XCTAssertTrue("\(err)".contains(text), "\(err) should say \(text)")
            }
        }
        try npy("<i8", "(2, 3)", bytes([Int64(0), 1, 2, 5, 4, -100])).write(to: URL(fileURLWithPath: path("T.npy")))
        expect("T.npy", "targets[1, 0] = 5 is outside [0, 5)")
        try npy("<i8", "(2, 4)", bytes([Int64](repeating: 0, count: 8))).write(to: URL(fileURLWithPath: path("T.npy")))
        expect("T.npy", "shapes do not agree")
        try NPYArray(floats: [0, 1, 2, 3, 4, 0], shape: [2, 3]).encoded().write(to: URL(fileURLWithPath: path("T.npy")))
        expect("T.npy", "must be integers")
        try npy("<i4", "(2, 3)", bytes([Int32](repeating: 1, count: 6))).write(to: URL(fileURLWithPath: path("T.npy")))
        XCTAssertNoThrow(try load(), "<i4 targets")
        var bad = e; bad[7] = .infinity
        try NPYArray(floats: bad, shape: [b, t, d]).encoded().write(to: URL(fileURLWithPath: path("E.npy")))
        expect("E.npy", "non-finite value: element [0, 1, 3]")
        try NPYArray(floats: e, shape: [b, t, d]).encoded().write(to: URL(fileURLWithPath: path("E.npy")))
        try NPYArray(floats: Array(c.prefix(v * (d - 1))), shape: [v, d - 1, 1]).encoded().write(to: URL(fileURLWithPath: path("C.npy")))
        expect("C.npy", "must be 2-D")
        try NPYArray(floats: Array(c.prefix(v * (d - 1))), shape: [v, d - 1]).encoded().write(to: URL(fileURLWithPath: path("C.npy")))
        expect("C.npy", "shapes do not agree")
        try NPYArray(floats: c, shape: [v, d]).encoded().write(to: URL(fileURLWithPath: path("C.npy")))
        try NPYArray(floats: [1, 2], shape: [2]).encoded().write(to: URL(fileURLWithPath: path("B.npy")))
        expect("B.npy", "bias (2,)", bias: true)
    }

    /// The files hold what the library returns, in the documented shapes; an existing DIR
    /// holding an output of an earlier run that this run does not produce is refused, not
    /// emptied; no temporary folder stays.
    func testOutputsMatchTheLibraryAndReplaceAtomically() throws {
        let (b, t, d, v) = (2, 5, 7, 11)
        var rng = SeededRandom(seed: 9)
        let e = (0..<(b * t * d)).map { _ in Float(rng.normal()) }, c = (0..<(v * d)).map { _ in Float(rng.normal()) }
        let bias = (0..<v).map { _ in Float(rng.normal()) }
        let tv: [Int64] = [1, 2, -100, 4, 5, 6, 7, 8, 9, 10]
        try writeInputs(e: e, eShape: [b, t, d], c: c, v: v, t: tv, tShape: [b, t], bias: bias)
        var o = Options(); o.shift = 1; o.reduction = .none; o.mode = .exact
        let out = path("out")
        try Reference.write(try Reference.computeCPU(try load(bias: true), options: o), to: out, options: [:])
        let files = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
        XCTAssertEqual(files, ["dBias.npy", "dC.npy", "dE.npy", "loss.npy", "lse.npy", "meta.json"])
        let lib = try CutCrossEntropy(options: o).lossAndGradients(
            embeddings: try Tensor(e, shape: [b, t, d]), classifier: try Tensor(c, shape: [v, d]),
            targets: try Targets(tv.map { Int($0) }, shape: [b, t]), bias: try Tensor(bias, shape: [v]),
            upstream: .perToken([Float](repeating: 1, count: b * t)))
        let loss = try NPYArray.read(out + "/loss.npy"), lse = try NPYArray.read(out + "/lse.npy")
        let dE = try NPYArray.read(out + "/dE.npy")
        XCTAssertEqual(loss.shape, [b, t]); XCTAssertEqual(loss.dtype, .float64, "exact mode writes <f8")
        XCTAssertEqual(loss.doubles(), lib.0.tokenLosses.doubles)
        XCTAssertEqual(dE.shape, [b, t, d]); XCTAssertEqual(dE.doubles(), lib.1.dE.doubles)
        XCTAssertEqual(try NPYArray.read(out + "/dC.npy").doubles(), lib.1.dC.doubles)
        let l = lse.doubles()
        XCTAssertTrue(l[0].isNaN && l[5].isNaN, "first position of each sequence has no row (shift 1)")
        XCTAssertTrue(l[2].isNaN, "ignored target")
        XCTAssertFalse(l[1].isNaN)
        // Again without a bias, default mode: refused while the earlier dBias.npy is there
        // (the folder would mix two runs, and cce deletes no file it did not write); once it
        // is removed, arrays are <f4, loss is 0-d.
        o.reduction = .mean; o.mode = .default
        XCTAssertThrowsError(try Reference.write(try Reference.computeCPU(try load(), options: o), to: out, options: [:])) {
            XCTAssertTrue("\($0)".contains("holds dBias.npy"), "\($0)")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/dBias.npy"))
        try FileManager.default.removeItem(atPath: out + "/dBias.npy")
        try Reference.write(try Reference.computeCPU(try load(), options: o), to: out, options: [:])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out).sorted(),
                       ["dC.npy", "dE.npy", "loss.npy", "lse.npy", "meta.json"])
        XCTAssertEqual(try NPYArray.read(out + "/loss.npy").shape, [])
        XCTAssertEqual(try NPYArray.read(out + "/dE.npy").dtype, .float32)
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: dir.path).contains { $0.contains("partial") })
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: out).contains { $0.contains("partial") })
        // A DIR that is a file: an error, and the file is untouched.
        try Data("keep".utf8).write(to: URL(fileURLWithPath: path("file")))
        XCTAssertThrowsError(try Reference.write(try Reference.computeCPU(try load(), options: o),
                                                 to: path("file"), options: [:]))
        XCTAssertEqual(try String(contentsOfFile: path("file"), encoding: .utf8), "keep")
        // Missing parents are created.
        try Reference.write(try Reference.computeCPU(try load(), options: o), to: path("a/b/out"), options: [:])
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("a/b/out/dE.npy")))
    }

    func testCompareReportsWorstElementAndBudgets() throws {
        let ref = path("ref"), cand = path("cand")
        for p in [ref, cand] { try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true) }
        let x: [Float] = [1, 2, 3, 4, 5, 6]
        var y = x; y[4] = 5.5
        try NPYArray(floats: x, shape: [2, 3]).encoded().write(to: URL(fileURLWithPath: ref + "/dE.npy"))
        try NPYArray(floats: y, shape: [2, 3]).encoded().write(to: URL(fileURLWithPath: cand + "/dE.npy"))
        try NPYArray(floats: [.nan, 1], shape: [2]).encoded().write(to: URL(fileURLWithPath: ref + "/lse.npy"))
        try NPYArray(floats: [.nan, 1], shape: [2]).encoded().write(to: URL(fileURLWithPath: cand + "/lse.npy"))
        try NPYArray(floats: [1], shape: []).encoded().write(to: URL(fileURLWithPath: ref + "/loss.npy"))
        var b = Budgets()
        try Budgets.parse(["dE=0.01", "1e-6"], into: &b.relative, option: "--budget")
        let (rows, missing) = try Compare.run(reference: ref, candidate: cand, budgets: b)
        XCTAssertEqual(missing, ["loss.npy"])
        let de = rows.first { $0.name == "dE" }!, lse = rows.first { $0.name == "lse" }!
        XCTAssertEqual(de.maxAbs, 0.5); XCTAssertEqual(de.worst, 4); XCTAssertEqual(indexText(4, [2, 3]), "[1, 1]")
        XCTAssertEqual(de.relative!, 0.5 / (91.0).squareRoot(), accuracy: 1e-12)
        XCTAssertFalse(de.passed, "0.052 > 0.01")
        XCTAssertTrue(lse.passed, "NaN where both are NaN agrees")
        try NPYArray(floats: [2, 1], shape: [2]).encoded().write(to: URL(fileURLWithPath: cand + "/lse.npy"))
        XCTAssertEqual(try Compare.run(reference: ref, candidate: cand, budgets: b).compared.first { $0.name == "lse" }!.maxAbs,
                       .infinity, "NaN on one side only")
        try NPYArray(floats: x, shape: [3, 2]).encoded().write(to: URL(fileURLWithPath: cand + "/dE.npy"))
        XCTAssertNotNil(try Compare.run(reference: ref, candidate: cand, budgets: b).compared.first { $0.name == "dE" }!.problem)
        var named = Budgets(); try Budgets.parse(["dBias=1"], into: &named.relative, option: "--budget")
        XCTAssertThrowsError(try Compare.run(reference: ref, candidate: cand, budgets: named))
    }

    /// The command line: exit status 1, one line on standard error naming the file, and no
    /// output folder left behind, for a truncated input; exit 1 when compare's budget fails.
    func testCommandLineErrors() throws {
        // The build folder holds both the test bundle and cce (swift test builds every product).
        let bundle = Bundle(for: ReferenceTests.self).bundleURL
        let found = [bundle, bundle.deletingLastPathComponent()].map { $0.appendingPathComponent("cce") }
            .first { FileManager.default.isExecutableFile(atPath: $0.path) }
        guard let exe = found else { throw XCTSkip("the cce executable is not beside the test bundle (\(bundle.path))") }
        func cce(_ args: [String]) throws -> (Int32, String, String) {
            let p = Process(); p.executableURL = exe; p.arguments = args
            let out = Pipe(), err = Pipe(); p.standardOutput = out; p.standardError = err
            try p.run(); p.waitUntilExit()
            return (p.terminationStatus, String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
                    String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        }
        let (n, d, v) = (6, 4, 9)
        try writeInputs(e: (0..<(n * d)).map { Float($0) / 10 }, eShape: [n, d], c: (0..<(v * d)).map { Float($0 % 5) / 7 },
                        v: v, t: [0, 1, 2, 3, 4, 8], tShape: [n])
        let args = ["reference", "--embeddings", path("E.npy"), "--classifier", path("C.npy"), "--targets", path("T.npy")]
        let good = try cce(args + ["--out", path("ok")])
        XCTAssertEqual(good.0, 0, good.2)
        // --weight: weights of 1 give the unweighted loss; others change it; a wrong length is named.
        func loss(_ folder: String) throws -> Double { try NPYArray.read(path("\(folder)/loss.npy")).doubles()[0] }
        for (name, w) in [("W1", [Float](repeating: 1, count: v)), ("W2", (0..<v).map { Float($0 % 3) }), ("W3", [1, 2])] {
            try NPYArray(floats: w, shape: [w.count]).encoded().write(to: URL(fileURLWithPath: path("\(name).npy")))
        }
        let ones = try cce(args + ["--weight", path("W1.npy"), "--out", path("w1")])
        XCTAssertEqual(ones.0, 0, ones.2)
        XCTAssertEqual(try loss("w1"), try loss("ok"))
        let weighted = try cce(args + ["--weight", path("W2.npy"), "--out", path("w2")])
        XCTAssertEqual(weighted.0, 0, weighted.2)
        XCTAssertNotEqual(try loss("w2"), try loss("ok"))
        let short = try cce(args + ["--weight", path("W3.npy"), "--out", path("w3")])
        XCTAssertEqual(short.0, 1)
        XCTAssertTrue(short.2.contains("classWeights must have V = 9 entries, got 2"), short.2)
        let full = try Data(contentsOf: URL(fileURLWithPath: path("C.npy")))
        try full.prefix(full.count - 5).write(to: URL(fileURLWithPath: path("C.npy")))
        let bad = try cce(args + ["--out", path("bad")])
        XCTAssertEqual(bad.0, 1)
        XCTAssertEqual(bad.2.split(separator: "\n").count, 1, bad.2)
        XCTAssertTrue(bad.2.contains("C.npy: truncated data"), bad.2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("bad")))
        let same = try cce(["compare", "--reference", path("ok"), "--candidate", path("ok"), "--budget", "0"])
        XCTAssertEqual(same.0, 0, same.1 + same.2)
        try FileManager.default.createDirectory(atPath: path("off"), withIntermediateDirectories: false)
        try NPYArray(floats: [1e9], shape: []).encoded().write(to: URL(fileURLWithPath: path("off/loss.npy")))
        let over = try cce(["compare", "--reference", path("ok"), "--candidate", path("off"), "--budget", "loss=1e-3"])
        XCTAssertEqual(over.0, 1, over.1)
        XCTAssertTrue(over.1.contains("FAIL"), over.1)
    }
}
