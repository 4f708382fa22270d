// Issue 11: every command fails fast, clearly and safely. Each test is one item of the
// issue, run against the built `cce` (CLI in Support.swift) and, where the library is at
// stake, in process: negative option values, the memory check, compare's gate, overflow,
// the --out folder, outputs checked before the work, help / --version / bare `cce`, train's
// labelled losses and ETA, the worked example's tool lookup and the LM-like page; and a
// seeded fuzz test of the .npy reader.

import CCEBenchmarks
import CCEData
import CCEExplain
import CCEReference
import CCERuntime
import CutCrossEntropy
import Foundation
import XCTest

final class FailFastTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("cce-failfast-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        // Folders a test made read-only are made writable again, so that they can go.
        if let e = FileManager.default.enumerator(atPath: dir.path) {
            for case let p as String in e { chmod(dir.appendingPathComponent(p).path, 0o777) }
        }
        try? FileManager.default.removeItem(at: dir)
    }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// Tiny reference inputs E (6, 4), C (9, 4), T (6) in `folder` (scaled by `scale`), and
    /// the `cce reference` arguments that read them.
    @discardableResult
    func tinyInputs(_ folder: String = "in", scale: Float = 1) throws -> [String] {
        let (n, d, v) = (6, 4, 9)
        let f = path(folder)
        try FileManager.default.createDirectory(atPath: f, withIntermediateDirectories: true)
        var rng = SeededRandom(seed: 11)
        let e = (0..<(n * d)).map { _ in Float(rng.normal()) * scale }
        let c = (0..<(v * d)).map { _ in Float(rng.normal()) * scale }
        let t: [Int64] = [0, 3, 8, -100, 5, 2]
        try NPYArray(floats: e, shape: [n, d]).encoded().write(to: URL(fileURLWithPath: f + "/E.npy"))
        try NPYArray(floats: c, shape: [v, d]).encoded().write(to: URL(fileURLWithPath: f + "/C.npy"))
        try (Self.header("<i8", "(\(n),)") + t.withUnsafeBytes { Data($0) }).write(to: URL(fileURLWithPath: f + "/T.npy"))
        return ["reference", "--embeddings", f + "/E.npy", "--classifier", f + "/C.npy", "--targets", f + "/T.npy"]
    }

    /// The header of a .npy file (version `major`) for `descr` and `shape`, written by hand.
    static func header(_ descr: String, _ shape: String, major: UInt8 = 1) -> Data {
        var h = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shape), }"
        let pre = major == 1 ? 10 : 12
        h += String(repeating: " ", count: (64 - (pre + h.utf8.count + 1) % 64) % 64) + "\n"
        var d = Data([0x93] + Array("NUMPY".utf8) + [major, 0])
        let n = h.utf8.count
        d.append(contentsOf: major == 1 ? [UInt8(n & 0xFF), UInt8(n >> 8)]
                                        : [UInt8(n & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 24)])
        d.append(contentsOf: Array(h.utf8))
        return d
    }

    // MARK: - 1. Negative option values after a space

    /// Every option that takes a number, of every command (read from the tool's own
    /// description of its options, so a new option is covered too), accepts "-1" after a
    /// space instead of stopping at "Missing value".
    func testNegativeValuesAfterASpace() throws {
        let notNumeric: Set<String> = ["embeddings", "classifier", "targets", "bias", "out", "reduction", "mode",
                                       "backend", "cuda-library", "dtype", "dtypes", "methods", "kinds", "svg", "json",
                                       "log", "corpus", "loss", "reference", "candidate", "parallel", "mpi-library", "weight"]
        let required = ["reference": ["--embeddings", "x", "--classifier", "x", "--targets", "x", "--out", "x"],
                        "compare": ["--reference", "x", "--candidate", "x"]]
        var checked: [String] = []
        for sub in ["demo", "bench", "reference", "compare", "accuracy", "train", "explain"] {
            let dump = try CLI.run([sub, "--experimental-dump-help"])
            let json = try JSONSerialization.jsonObject(with: Data(dump.stdout.utf8)) as? [String: Any]
            let args = (json?["command"] as? [String: Any])?["arguments"] as? [[String: Any]] ?? []
            XCTAssertFalse(args.isEmpty, "\(sub): no option list: \(dump.summary)")
            for a in args where a["kind"] as? String == "option" {
                guard let name = (a["preferredName"] as? [String: Any])?["name"] as? String, !notNumeric.contains(name)
                else { continue }
                // The value reached the option: the parser went on to the unknown option, or the
                // option's own check refused -1 and said so.
                let r = try CLI.run([sub] + (required[sub] ?? []) + ["--\(name)", "-1", "--not-an-option"])
                XCTAssertTrue(!r.stderr.contains("Missing value")
                              && (r.stderr.contains("Unknown option '--not-an-option'") || r.stderr.contains("-1")),
                              "cce \(sub) --\(name) -1: \(r.summary)")
                checked.append("\(sub) --\(name)")
            }
        }
        XCTAssertGreaterThanOrEqual(checked.count, 40, "numeric options found: \(checked)")
    }

    /// A negative value then meets the option's range check, which names the option; and
    /// PyTorch's default ignore index works as PyTorch users write it.
    func testNegativeValuesGetTheRangeCheck() throws {
        let ref = try tinyInputs()
        let ok = try CLI.run(ref + ["--ignore-index", "-100", "--out", path("out")])
        XCTAssertEqual(ok.status, 0, ok.summary)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("out/loss.npy")), ok.summary)
        let cases: [([String], [String])] = [
            (["bench", "--vocab", "-5"], ["--vocab", "-5"]),
            (["demo", "--tokens", "-1"], ["--tokens", "-1"]),
            (["demo", "--threads", "-2"], ["--threads", "-2"]),
            (["demo", "--filter-eps", "-1"], ["--filter-eps", ">= 0"]),
            (["explain", "--eps", "-1"], [">= 0"]),
            (["explain", "--dim", "-3"], ["--dim", "-3"]),
            (["accuracy", "--vocab", "-7"], ["--vocab", "-7"]),
            (["accuracy", "--data", "-1:2"], ["--data"]),
            (["accuracy", "--label-smoothing", "1.5"], ["--label-smoothing", "[0, 1]"]),
            (["train", "--steps", "-1"], ["--steps", "-1"]),
            (["bench", "--repeats", "-1"], ["repeats"]),
            (["bench", "--rounds", "0"], ["--rounds must be >= 1"]),
            (["bench", "--label-smoothing", "-0.1", "--methods", "cce"], ["--label-smoothing", "[0, 1]"]),
            (["bench", "--label-smoothing", "0.1", "--backend", "cuda"], ["--label-smoothing applies to the CPU rows"]),
            (["bench", "--bias", "--parallel", "vocab"], ["--bias applies to the CPU rows"]),
            (ref + ["--softcap", "-3", "--out", path("x")], ["softcap", "-3"]),
            (ref + ["--shift", "-1", "--out", path("x")], ["shift must be >= 0"]),
            (ref + ["--filter-eps", "-1", "--out", path("x")], [">= 0"]),
            (ref + ["--z-loss", "-1", "--out", path("x")], ["zLoss"]),
            (["compare", "--reference", path("out"), "--candidate", path("out"), "--budget", "-1"], ["budget '-1'"]),
        ]
        for (args, texts) in cases {
            CLI.assertRefused(try CLI.run(args, timeout: 60), texts, args.joined(separator: " "))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("x")))
    }

    // MARK: - 2. The memory check

    /// Shapes far beyond this machine's memory are refused in well under a second, with one
    /// line, before anything is allocated (the subprocess runs under an 8 GiB address-space
    /// limit, so a command that tried would fail there, not fill the machine).
    func testShapesBeyondMemoryAreRefusedAtOnce() throws {
        let cases: [[String]] = [
            ["demo", "--dim", "100000000"],
            ["explain", "--dim", "100000000"],
            ["accuracy", "--dim", "100000000"],
            ["accuracy", "--tokens", "100000000", "--vocab", "10000000"],
            ["bench", "--dim", "100000000"],
            ["bench", "--tokens", "100000000", "--vocab", "10000000", "--methods", "cce"],
        ]
        for args in cases {
            let r = try CLI.run(args, timeout: 60, memoryLimitKB: 8 << 20)
            CLI.assertRefused(r, ["memory"], args.joined(separator: " "))
            XCTAssertLessThan(r.seconds, 2, "\(args.joined(separator: " ")): \(r.summary)")
        }
    }

    /// The shared check's arithmetic: 3/4 of the machine, no overflow for absurd sizes, and
    /// the documented shapes pass on an 8 GiB machine.
    func testMemoryCheckArithmetic() throws {
        XCTAssertNoThrow(try MemoryCheck.require(750, for: "x", machineBytes: 1000))
        XCTAssertThrowsError(try MemoryCheck.require(751, for: "x", machineBytes: 1000)) { err in
            XCTAssertEqual("\(err)".split(separator: "\n").count, 1)
            XCTAssertTrue("\(err)".hasPrefix("x needs about"), "\(err)")
        }
        XCTAssertThrowsError(try MemoryCheck.require(.nan, for: "x", machineBytes: 1000))
        // The message's sizes and the machine's memory, through the C library (no Foundation).
        XCTAssertEqual(MemoryCheck.text(1.5 * Double(1 << 30)), "1.5 GiB")
        XCTAssertEqual(MemoryCheck.text(512 * Double(1 << 20)), "512 MiB")
        XCTAssertLessThanOrEqual(MemoryCheck.machineBytes, System.physicalMemory)
        XCTAssertTrue(System.readText("/proc/self/status")?.contains("VmRSS:") ?? false)
        XCTAssertNil(System.readText("/nonexistent/cce"))
        XCTAssertGreaterThan(MemoryProbe.residentBytes(), 0)
        var huge = BenchConfig(); huge.tokens = .max; huge.dim = .max; huge.vocab = .max
        XCTAssertThrowsError(try Bench.validate(huge))
        XCTAssertGreaterThan(MemoryCheck.machineBytes, 0)
        let gib8 = 8 << 30
        XCTAssertNoThrow(try MemoryCheck.require(Accuracy.estimatedBytes(tokens: 1024, dim: 512, vocab: 32768,
                                                                        types: [.float32, .float16, .bfloat16]),
                                                 for: "accuracy", machineBytes: gib8))
        var table1 = BenchConfig(); table1.tokens = 1024; table1.dim = 1024; table1.vocab = 128256
        XCTAssertNoThrow(try MemoryCheck.require(Bench.estimatedBytes(table1), for: "bench", machineBytes: gib8))
        XCTAssertNoThrow(try MemoryCheck.require(FilterMap.estimatedBytes(tokens: 256, dim: 256, vocab: 8192, type: .bfloat16),
                                                 for: "explain", machineBytes: gib8))
    }

    // MARK: - 3. compare as a gate

    func testCompareFailsOnMissingTensorsAndNonFiniteValues() throws {
        let fm = FileManager.default
        func folder(_ name: String, dE: [Float]?, lse: [Float]?, loss: Float = 2.5) throws -> String {
            let p = path(name)
            try fm.createDirectory(atPath: p, withIntermediateDirectories: true)
            try NPYArray(floats: [loss], shape: []).encoded().write(to: URL(fileURLWithPath: p + "/loss.npy"))
            if let dE { try NPYArray(floats: dE, shape: [2, 3]).encoded().write(to: URL(fileURLWithPath: p + "/dE.npy")) }
            if let lse { try NPYArray(floats: lse, shape: [2]).encoded().write(to: URL(fileURLWithPath: p + "/lse.npy")) }
            return p
        }
        let x: [Float] = [1, 2, 3, 4, 5, 6]
        let ref = try folder("ref", dE: x, lse: [.nan, 1])
        let same = try CLI.run(["compare", "--reference", ref, "--candidate", try folder("same", dE: x, lse: [.nan, 1])])
        XCTAssertEqual(same.status, 0, "NaN where the reference has NaN agrees: \(same.summary)")

        var bad = x; bad[1] = .nan; bad[4] = .infinity
        let nonFinite = try folder("nonfinite", dE: bad, lse: [.nan, 1])
        CLI.assertRefused(try CLI.run(["compare", "--reference", ref, "--candidate", nonFinite]), ["dE", "non-finite"],
                          "NaN and inf in the candidate, no budget", stdoutEmpty: false)
        CLI.assertRefused(try CLI.run(["compare", "--reference", ref, "--candidate", try folder("lsenan", dE: x, lse: [.nan, .nan])]),
                          ["lse", "non-finite"], "NaN where the reference is finite", stdoutEmpty: false)
        let allowed = try CLI.run(["compare", "--reference", ref, "--candidate", nonFinite, "--allow-non-finite"])
        XCTAssertEqual(allowed.status, 0, allowed.summary)
        let overBudget = try CLI.run(["compare", "--reference", ref, "--candidate", nonFinite, "--allow-non-finite",
                                      "--budget", "1e-3"])
        XCTAssertEqual(overBudget.status, 1, "an infinite error is still over budget: \(overBudget.summary)")

        let lossOnly = try folder("lossonly", dE: nil, lse: nil)
        CLI.assertRefused(try CLI.run(["compare", "--reference", ref, "--candidate", lossOnly, "--budget", "1e-3"]),
                          ["missing", "dE.npy", "lse.npy"], "a candidate with loss.npy only", stdoutEmpty: false)
        let missingAllowed = try CLI.run(["compare", "--reference", ref, "--candidate", lossOnly, "--budget", "1e-3",
                                          "--allow-missing"])
        XCTAssertEqual(missingAllowed.status, 0, missingAllowed.summary)

        // The same verdicts from the library.
        let (rows, missing) = try Compare.run(reference: ref, candidate: nonFinite, budgets: Budgets())
        let dE = rows.first { $0.name == "dE" }!
        XCTAssertEqual(dE.nonFinite, 2); XCTAssertEqual(dE.firstNonFinite, 1)
        XCTAssertEqual(rows.first { $0.name == "lse" }!.nonFinite, 0, "NaN on both sides is not counted")
        XCTAssertEqual(Compare.failures(rows, missing: missing), ["dE (2 non-finite values, the first at [0, 1])"])
        var lenient = ComparePolicy(); lenient.allowNonFinite = true; lenient.allowMissing = true
        XCTAssertEqual(Compare.failures(rows, missing: missing, policy: lenient), [])
        let (rows2, missing2) = try Compare.run(reference: ref, candidate: lossOnly, budgets: Budgets())
        XCTAssertEqual(missing2, ["dE.npy", "lse.npy"])
        XCTAssertEqual(Compare.failures(rows2, missing: missing2), ["missing from the candidate: dE.npy, lse.npy"])
        XCTAssertEqual(Compare.failures(rows2, missing: missing2, policy: lenient), [])
        // A candidate that is a file, not a folder, is called one.
        XCTAssertThrowsError(try Compare.run(reference: ref, candidate: ref + "/loss.npy", budgets: Budgets())) { err in
            XCTAssertTrue("\(err)".contains("is a file, not a folder"), "\(err)")
        }
    }

    // MARK: - 4. Overflow

    /// Finite inputs whose Float32 logits overflow: a typed error naming the overflow and the
    /// exact mode, in every Float32 mode and pass; the exact mode computes them.
    func testOverflowIsAnErrorNotNaN() throws {
        let (e0, c0, t, _) = randomProblem(n: 12, d: 8, v: 40, ignoreFraction: 0.2)
        let e = try Tensor(e0.floats().map { $0 * 1e20 }, shape: e0.shape)
        let c = try Tensor(c0.floats().map { $0 * 1e20 }, shape: c0.shape)
        for mode in [Mode.default, .kahan, .kahanFullE, .kahanFullC] {
            var o = Options(); o.mode = mode
            let cce = CutCrossEntropy(options: o)
            func check(_ what: String, _ body: () throws -> Void) {
                XCTAssertThrowsError(try body(), "\(mode) \(what): no error") { err in
                    XCTAssertTrue("\(err)".contains("overflow") && "\(err)".contains("exact"), "\(mode) \(what): \(err)")
                    guard case CCEError.overflow(let position, let m)? = err as? CCEError else {
                        return XCTFail("\(mode) \(what): not CCEError.overflow: \(err)")
                    }
                    XCTAssertEqual(m, mode)
                    XCTAssertNotEqual(t.values[position], -100, "the position of an active token")
                }
            }
            check("lossAndGradients") { _ = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t) }
            check("forward") { _ = try cce.forward(embeddings: e, classifier: c, targets: t) }
            var dE: [Float] = [], dC: [Float] = [], dBias: [Float] = []
            check("into buffers") {
                _ = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, dE: &dE, dC: &dC, dBias: &dBias)
            }
        }
        var exact = Options(); exact.mode = .exact
        let (f, g) = try CutCrossEntropy(options: exact).lossAndGradients(embeddings: e, classifier: c, targets: t)
        XCTAssertTrue(f.loss.isFinite, "exact: \(f.loss)")
        XCTAssertTrue(g.dE.doubles.allSatisfy(\.isFinite) && g.dC.doubles.allSatisfy(\.isFinite), "exact gradients finite")
        // NaN in an unchecked input is named as such, not as an overflow.
        var withNaN = e0.floats(); withNaN[5] = .nan
        XCTAssertThrowsError(try CutCrossEntropy().lossAndGradients(
            embeddings: try Tensor(withNaN, shape: e0.shape), classifier: c0, targets: t)) { err in
            XCTAssertTrue("\(err)".contains("embeddings[5]"), "\(err)")
        }

        // The tool: one line, exit 1, nothing written; --mode exact works.
        let ref = try tinyInputs("big", scale: 1e20)
        let r = try CLI.run(ref + ["--out", path("out")])
        CLI.assertRefused(r, ["overflow", "--mode exact"], "reference on overflowing inputs")
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("out")))
        let ok = try CLI.run(ref + ["--out", path("out"), "--mode", "exact"])
        XCTAssertEqual(ok.status, 0, ok.summary)
    }

    // MARK: - 5. The --out folder

    func testOutFolderKeepsTheUsersFiles() throws {
        let fm = FileManager.default
        let ref = try tinyInputs()
        // An empty path is an error, and nothing lands in the current folder.
        let cwd = path("cwd")
        try fm.createDirectory(atPath: cwd, withIntermediateDirectories: true)
        CLI.assertRefused(try CLI.run(ref + ["--out", ""], in: URL(fileURLWithPath: cwd)), ["--out"], "--out \"\"")
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: cwd), [])

        // A file of the user's in DIR that this run would not write is neither deleted nor mixed
        // with this run's outputs: the run is refused before it starts, and says why.
        let out = path("out")
        try fm.createDirectory(atPath: out, withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: out + "/dBias.npy"))
        try Data("notes".utf8).write(to: URL(fileURLWithPath: out + "/notes.txt"))
        CLI.assertRefused(try CLI.run(ref + ["--out", out]), ["dBias.npy"], "stale dBias.npy in DIR")
        XCTAssertEqual(try String(contentsOfFile: out + "/dBias.npy", encoding: .utf8), "mine")
        try fm.removeItem(atPath: out + "/dBias.npy")
        let ok = try CLI.run(ref + ["--out", out])
        XCTAssertEqual(ok.status, 0, ok.summary)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: out).sorted(),
                       ["dC.npy", "dE.npy", "loss.npy", "lse.npy", "meta.json", "notes.txt"])
        XCTAssertEqual(try String(contentsOfFile: out + "/notes.txt", encoding: .utf8), "notes")

        // A writable DIR under a read-only parent: the run writes into DIR (its temporary
        // folder is inside DIR), and says exactly why when DIR itself cannot be made.
        let parent = path("locked"), inner = parent + "/out"
        try fm.createDirectory(atPath: inner, withIntermediateDirectories: true)
        chmod(inner, 0o777); chmod(parent, 0o555)
        // As root, permissions do not bind: run the tool as nobody.
        let uid: Int? = getuid() == 0 ? 65534 : nil
        if uid != nil, !fm.isExecutableFile(atPath: "/usr/bin/setpriv") {
            throw XCTSkip("running as root without setpriv: cannot drop to an unprivileged user")
        }
        for p in [dir.path, path("in")] { chmod(p, 0o755) }
        let locked = try CLI.run(ref + ["--out", inner], asUser: uid)
        XCTAssertEqual(locked.status, 0, "writable DIR under a read-only parent: \(locked.summary)")
        XCTAssertTrue(fm.fileExists(atPath: inner + "/dE.npy"), locked.summary)
        XCTAssertFalse(try fm.contentsOfDirectory(atPath: inner).contains { $0.hasPrefix(".") }, "no temporary folder left")
        let cannot = try CLI.run(ref + ["--out", parent + "/new"], asUser: uid)
        CLI.assertRefused(cannot, [parent + "/new", "ermission denied"], "DIR under a read-only parent")
    }

    // MARK: - 6. Outputs and arguments checked before the work

    func testOutputsAndArgumentsAreCheckedBeforeTheWork() throws {
        let fm = FileManager.default
        let missing = path("no-such-folder") + "/x"
        try fm.createDirectory(atPath: path("a-folder.svg"), withIntermediateDirectories: true)
        let small = ["--tokens", "64", "--dim", "16", "--vocab", "256"]
        let cases: [([String], [String])] = [
            (["accuracy"] + small + ["--dtypes", "f32", "--data", "4:1.5", "--json", missing + ".json"],
             [missing + ".json", "no-such-folder"]),
            (["accuracy"] + small + ["--dtypes", "f32", "--data", "4:1.5", "--json", path("a-folder.svg")], ["folder"]),
            (["explain", "--tokens", "0"], ["--tokens"]),
            (["explain", "--vocab", "1"], ["--vocab"]),
            (["explain", "--svg", missing + ".svg"], [missing + ".svg"]),
            (["explain", "--svg", path("a-folder.svg")], ["folder"]),
            (["explain", "--svg", ""], ["--svg"]),
            (["train", "--log", missing + ".csv"], [missing + ".csv"]),
            (["accuracy", "--dtypes", "f64"], ["f64"]),
            (["accuracy", "--dtypes", ""], ["--dtypes"]),
            (["bench", "--methods", "nope"], ["nope"]),
        ]
        for (args, texts) in cases {
            let r = try CLI.run(args, in: dir, timeout: 60)
            CLI.assertRefused(r, texts, args.joined(separator: " "))
            XCTAssertLessThan(r.seconds, 5, "\(args.joined(separator: " ")): \(r.summary)")
        }
        XCTAssertFalse(fm.fileExists(atPath: path("explain-tiles.svg")))
    }

    // MARK: - 7. help, --version, bare cce, and the remaining one-line refusals

    /// `cce help nonexistent` is an error naming it and listing the commands; `--version`
    /// prints the version; bare `cce` prints the help and the README's two commands, at once,
    /// instead of starting a full-size demo; a folder given as an input, a file given as
    /// compare's candidate, and `bench --methods ""` are one-line refusals.
    func testHelpVersionBareAndRemainingRefusals() throws {
        let commands = ["demo", "bench", "reference", "compare", "accuracy", "train", "explain"]
        let unknown = try CLI.run(["help", "nonexistent"], timeout: 20)
        CLI.assertRefused(unknown, ["nonexistent"] + commands, "cce help nonexistent")
        let extra = try CLI.run(["help", "demo", "nope"], timeout: 20)
        CLI.assertRefused(extra, ["nope"], "cce help demo nope")
        let known = try CLI.run(["help", "train"], timeout: 20)
        XCTAssertEqual(known.status, 0, known.summary)
        XCTAssertTrue(known.stdout.contains("--steps"), known.summary)

        let version = try CLI.run(["--version"], timeout: 20)
        XCTAssertEqual(version.status, 0, version.summary)
        XCTAssertNotNil(version.stdout.range(of: #"^\d+\.\d+\.\d+"#, options: .regularExpression), version.summary)
        XCTAssertEqual(version.stdout.split(separator: "\n").count, 1, version.summary)

        let bare = try CLI.run([], timeout: 20)
        XCTAssertEqual(bare.status, 0, bare.summary)
        XCTAssertLessThan(bare.seconds, 5, "bare cce ran something: \(bare.summary)")
        XCTAssertTrue(bare.stdout.contains("SUBCOMMANDS") || bare.stdout.contains("USAGE"), bare.summary)
        for c in commands { XCTAssertTrue(bare.stdout.contains(c), "bare cce: \(c) not listed: \(bare.summary)") }
        // The README's two commands (its indented lines that start with scripts/setup.sh), verbatim.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        let two = readme.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { $0.hasPrefix("scripts/setup.sh &&") }
        XCTAssertEqual(two.count, 2, "README: \(two)")
        for line in two { XCTAssertTrue(bare.stdout.contains(line), "bare cce should show `\(line)`: \(bare.summary)") }
        XCTAssertFalse(bare.stdout.contains("Cut Cross-Entropy demo:"), "bare cce started a demo: \(bare.summary)")

        // The refusals done earlier, through the tool.
        let ref = try tinyInputs()
        try FileManager.default.createDirectory(atPath: path("E-folder.npy"), withIntermediateDirectories: true)
        var folderInput = ref
        folderInput[2] = path("E-folder.npy")
        CLI.assertRefused(try CLI.run(folderInput + ["--out", path("out1")], timeout: 30),
                          [path("E-folder.npy"), "is a folder"], "an input that is a folder")
        XCTAssertTrue(try CLI.run(ref + ["--out", path("out2")], timeout: 30).status == 0)
        CLI.assertRefused(try CLI.run(["compare", "--reference", path("out2"), "--candidate", path("out2") + "/loss.npy"],
                                      timeout: 30),
                          ["is a file, not a folder"], "compare with a file as the candidate")
        CLI.assertRefused(try CLI.run(["bench", "--methods", ""], timeout: 30), ["--methods"], "bench --methods \"\"")
    }

    // MARK: - 8. cce train's losses, labelled

    /// The progress lines and the summary name the loss they show (the mean of the last k
    /// steps' batch losses), and agree with each other and with the CSV's `loss` column (each
    /// step's batch loss); the progress shows the elapsed time and an ETA.
    func testTrainLabelsItsLossesAndShowsAnETA() throws {
        let log = path("t.csv")
        let r = try CLI.run(["train", "--steps", "40", "--batch", "32", "--vocab", "64", "--dim", "16", "--hidden", "32",
                             "--threads", "1", "--log", log], in: dir, timeout: 60)
        XCTAssertEqual(r.status, 0, r.summary)
        let csv = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.count, 41, "header and 40 rows")
        let losses = csv.dropFirst().map { Double($0.split(separator: ",")[1])! }
        let k = 2   // 40 steps / 20
        let mean = losses.suffix(k).reduce(0, +) / Double(k)

        func number(after label: String, in text: Substring) -> Double? {
            guard let at = text.range(of: label) else { return nil }
            return Double(text[at.upperBound...].split(separator: " ").first.map { $0.trimmingCharacters(in: CharacterSet(charactersIn: ";,")) } ?? "")
        }
        let progress = r.stderrLines.filter { $0.contains("/40") }
        XCTAssertFalse(progress.isEmpty, r.summary)
        for line in progress {
            XCTAssertTrue(line.contains("loss (mean of the last "), "unlabelled loss: \(line)")
            XCTAssertTrue(line.contains("elapsed ") && line.contains("ETA "), "no elapsed time or ETA: \(line)")
        }
        let lastLine = try XCTUnwrap(progress.last)
        XCTAssertTrue(lastLine.contains("40/40") && lastLine.contains("loss (mean of the last \(k) steps)"), String(lastLine))
        let shown = try XCTUnwrap(number(after: "loss (mean of the last \(k) steps) ", in: lastLine), String(lastLine))
        XCTAssertEqual(shown, mean, accuracy: 6e-5, "the progress's last loss is the mean of the CSV's last \(k) rows")

        let out = Substring(r.stdout)
        let final = try XCTUnwrap(number(after: "final loss (mean of the last \(k) steps' batch losses) ", in: out), r.summary)
        XCTAssertEqual(final, mean, accuracy: 6e-5, "the summary's final loss")
        let lastStep = try XCTUnwrap(number(after: "batch loss of the last step ", in: out), r.summary)
        XCTAssertEqual(lastStep, losses.last!, accuracy: 6e-5, "the last step's batch loss is the CSV's last row")
    }

    // MARK: - 9. The worked example finds cce; the LM-like definition is in Docs

    /// check_against_reference.py, run from another folder: --help says how it finds cce,
    /// and --print-cce finds it by $CCE, by --cce, and (neither given, no cce on PATH) as the
    /// repository's .build/release/cce from the script's own location. Quick: neither numpy
    /// nor torch is imported for these.
    func testWorkedExampleFindsTheToolFromAnyFolder() throws {
        guard let python = ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
            .first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("python3 is not installed: the worked example's tool lookup is not checked")
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let script = root.appendingPathComponent("Docs/examples/check_against_reference.py").path
        func py(_ args: [String], env extra: [String: String] = [:]) throws -> (Int32, String, String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: python)
            p.arguments = [script] + args
            p.currentDirectoryURL = dir
            var env = ProcessInfo.processInfo.environment
            env["CCE"] = nil
            env["PATH"] = "/usr/bin:/bin"
            for (k, v) in extra { env[k] = v }
            p.environment = env
            let out = Pipe(), err = Pipe()
            p.standardOutput = out; p.standardError = err
            try p.run()
            let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
        }
        let help = try py(["--help"])
        XCTAssertEqual(help.0, 0, "--help from another folder: \(help.2.prefix(600))")
        for t in ["--cce PATH", "$CCE", "PATH", ".build/release/cce", "--print-cce"] {
            XCTAssertTrue(help.1.contains(t), "--help should mention \(t): \(help.1.prefix(2000))")
        }
        let exe = try CLI.tool().path
        let byEnv = try py(["--print-cce"], env: ["CCE": exe])
        XCTAssertEqual(byEnv.0, 0, byEnv.2); XCTAssertEqual(byEnv.1.trimmingCharacters(in: .whitespacesAndNewlines), exe)
        let byOption = try py(["--cce", exe, "--print-cce"], env: ["CCE": "/no/such/cce"])
        XCTAssertEqual(byOption.0, 0, byOption.2)
        XCTAssertEqual(byOption.1.trimmingCharacters(in: .whitespacesAndNewlines), exe, "--cce comes before $CCE")
        let bad = try py(["--cce", path("missing-cce"), "--print-cce"])
        XCTAssertEqual(bad.0, 1); XCTAssertTrue(bad.2.contains("missing-cce"), bad.2)
        let built = root.appendingPathComponent(".build/release/cce").resolvingSymlinksInPath().path
        let found = try py(["--print-cce"])
        if FileManager.default.isExecutableFile(atPath: built) {
            XCTAssertEqual(found.0, 0, found.2)
            XCTAssertEqual(URL(fileURLWithPath: found.1.trimmingCharacters(in: .whitespacesAndNewlines))
                            .resolvingSymlinksInPath().path, built, "the repository's tool, found from the script")
        } else {
            XCTAssertEqual(found.0, 1, found.1)
            XCTAssertTrue(found.2.contains(".build/release/cce") && found.2.contains("--cce"), found.2)
        }
    }

    /// The LM-like data is defined in Docs/LMLIKE.md, and nothing cites the old path outside
    /// the repository; `cce help accuracy` points at the new page.
    func testLMLikeDefinitionIsInDocs() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let page = try String(contentsOf: root.appendingPathComponent("Docs/LMLIKE.md"), encoding: .utf8)
        for t in ["softmax", "α", "seed", "D−1", "rank"] { XCTAssertTrue(page.contains(t), "Docs/LMLIKE.md: \(t)") }
        let old = "shared/" + "LMLIKE"
        var citing: [String] = []
        let fm = FileManager.default
        for top in ["Sources", "Docs", "Benchmarks", "Tests", "python", "cuda", "scripts", "README.md", "Package.swift"] {
            let base = root.appendingPathComponent(top)
            var files = [base.path]
            if let e = fm.enumerator(atPath: base.path) { files = e.compactMap { $0 as? String }.map { base.path + "/" + $0 } }
            for f in files where [".swift", ".md", ".py", ".sh", ".c", ".h", ".cu", ".txt"].contains(where: f.hasSuffix) {
                if let text = try? String(contentsOfFile: f, encoding: .utf8), text.contains(old) { citing.append(f) }
            }
        }
        XCTAssertEqual(citing, [], "files that cite \(old)")
        let help = try CLI.run(["help", "accuracy"], timeout: 20)
        XCTAssertEqual(help.status, 0, help.summary)
        XCTAssertTrue(help.stdout.contains("Docs/LMLIKE.md"), help.summary)
    }

    // MARK: - The .npy reader, fuzzed

    /// A few hundred mutated .npy files (headers and bodies, seeded): the reader never
    /// crashes, either refuses with an error naming the file or returns an array whose bytes
    /// match its shape; and a reference run on them, in process and through the tool, writes
    /// nothing when it fails.
    func testNPYReaderFuzz() throws {
        var rng = SeededRandom(seed: 2024)
        func header(_ d: String, _ s: String, major: UInt8 = 1) -> Data { Self.header(d, s, major: major) }
        func body(_ bytes: Int) -> Data { Data((0..<bytes).map { _ in UInt8(truncatingIfNeeded: rng.next()) }) }
        let seeds: [Data] = [
            header("<f4", "(2, 3)") + body(24), header("<f8", "(4,)") + body(32), header("<i8", "(3,)") + body(24),
            header("<i4", "(2, 2)") + body(16), header("<V2", "(2, 2)") + body(8), header("<f2", "(5,)") + body(10),
            header("<f4", "()") + body(4), header("<f4", "(3, 0)"), header("<f4", "(2, 2)", major: 2) + body(16),
            header("|V2", "(1, 3)", major: 3) + body(6),
        ]
        let tokens = ["'<f4'", "'>f4'", "'<f8'", "'|O'", "'<i2'", "'<V2'", "(99999999999999, 99999999999999)", "(-1,)",
                      "(3,", "()", "(0,)", "(2, 3, 4, 5)", "True", "False", "'shape'", "'descr'", "{", "}", ":", "\u{0}",
                      "(1,)", "(2L, 3L)", "(4294967296,)", "'fortran_order': True", "é"]
        func mutate(_ d: Data) -> Data {
            var b = [UInt8](d)
            for _ in 0...(Int(rng.next() % 3)) {
                switch rng.next() % 8 {
                case 0 where !b.isEmpty: b[Int(rng.next() % UInt64(b.count))] ^= UInt8(1 << (rng.next() % 8))
                case 1 where !b.isEmpty: b[Int(rng.next() % UInt64(b.count))] = UInt8(truncatingIfNeeded: rng.next())
                case 2: b = Array(b.prefix(Int(rng.next() % UInt64(b.count + 1))))
                case 3: b += [UInt8](body(Int(rng.next() % 40)))
                case 4 where b.count > 12:   // the header length field
                    b[8 + Int(rng.next() % 4)] = UInt8(truncatingIfNeeded: rng.next())
                case 5 where b.count > 7: b[6] = UInt8(rng.next() % 5)   // the version
                default:   // a header token replaced by another
                    var s = String(decoding: b, as: UTF8.self)
                    let from = tokens[Int(rng.next() % UInt64(tokens.count))], to = tokens[Int(rng.next() % UInt64(tokens.count))]
                    if let r = s.range(of: from) { s.replaceSubrange(r, with: to); b = Array(s.utf8) } else {
                        let at = Int(rng.next() % UInt64(b.count + 1)); b.insert(contentsOf: Array(to.utf8), at: at)
                    }
                }
            }
            return Data(b)
        }
        let start = Date()
        var refused = 0, read = 0
        for i in 0..<400 {
            let data = mutate(seeds[i % seeds.count])
            do {
                let a = try NPYArray.parse(data, path: "case\(i).npy")
                XCTAssertEqual(a.bytes.count, a.count * a.dtype.size, "case \(i): bytes and shape disagree")
                XCTAssertTrue(a.shape.allSatisfy { $0 >= 0 }, "case \(i): shape \(a.shape)")
                _ = a.dtype == .int64 || a.dtype == .int32 ? a.integers().map(Double.init) : a.doubles()
                read += 1
            } catch let e as NPYError {
                XCTAssertEqual(e.path, "case\(i).npy")
                refused += 1
            } catch { XCTFail("case \(i): not an NPYError: \(error)") }
        }
        XCTAssertGreaterThan(refused, 200); XCTAssertGreaterThan(read, 10)

        // Through a whole reference run: a mutated E, C or T; on error nothing is written.
        _ = try tinyInputs()
        let originals = try ["E", "C", "T"].map { try Data(contentsOf: URL(fileURLWithPath: path("in/\($0).npy"))) }
        var failed = 0, passed = 0
        for i in 0..<300 {
            let k = i % 3, name = ["E", "C", "T"][k]
            try mutate(originals[k]).write(to: URL(fileURLWithPath: path("in/\(name).npy")))
            let out = path("out\(i)")
            do {
                let inputs = try ReferenceInputs.load(embeddings: path("in/E.npy"), classifier: path("in/C.npy"),
                                                      targets: path("in/T.npy"), bias: nil, ignoreIndex: -100)
                try Reference.write(try Reference.computeCPU(inputs, options: Options()), to: out, options: [:])
                passed += 1
            } catch {
                XCTAssertFalse(FileManager.default.fileExists(atPath: out), "case \(i): \(error), but \(out) exists")
                failed += 1
            }
            try originals[k].write(to: URL(fileURLWithPath: path("in/\(name).npy")))
        }
        XCTAssertGreaterThan(failed, 100)

        // And through the tool: exit 0, or exit 1 with one line and no output folder; never a crash.
        var toolRefused = 0
        for i in 0..<30 {
            let k = i % 3, name = ["E", "C", "T"][k]
            try mutate(originals[k]).write(to: URL(fileURLWithPath: path("in/\(name).npy")))
            let out = path("tool\(i)")
            let r = try CLI.run(["reference", "--embeddings", path("in/E.npy"), "--classifier", path("in/C.npy"),
                                 "--targets", path("in/T.npy"), "--out", out], timeout: 60)
            if r.status != 0 {
                CLI.assertRefused(r, [], "tool case \(i)")
                XCTAssertFalse(FileManager.default.fileExists(atPath: out), "tool case \(i): \(r.summary)")
                toolRefused += 1
            }
            try originals[k].write(to: URL(fileURLWithPath: path("in/\(name).npy")))
        }
        let seconds = Date().timeIntervalSince(start)
        print("npy fuzz: 400 parsed (\(read) read, \(refused) refused); 300 reference runs (\(passed) ran, \(failed) refused, nothing written); 30 through cce (\(toolRefused) refused); \(String(format: "%.2f", seconds)) s")
        XCTAssertLessThan(seconds, 30)
    }

    /// `cce bench` names an OpenBLAS kernel that leaves the CPU's vectors unused, so that no
    /// ratio against the sgemm and materialized rows flatters the engine unnoticed: a pre-AVX
    /// kernel on an AVX2 CPU, and (Debian 12's OpenBLAS on AMD Zen 5) an AVX2 kernel on an
    /// AVX-512 CPU; not a kernel that fits.
    func testBenchNamesAnOpenBLASKernelBelowTheCPU() {
        let zen5: Set<String> = ["avx2", "fma", "avx512f", "avx512_bf16"], zen3: Set<String> = ["avx2", "fma"]
        XCTAssertTrue(Bench.blasNote(core: "Haswell", flags: zen5)?.contains("OPENBLAS_CORETYPE=SkylakeX") == true)
        XCTAssertTrue(Bench.blasNote(core: "Zen", flags: zen5)?.contains("without AVX-512") == true)
        XCTAssertTrue(Bench.blasNote(core: "Prescott", flags: zen5)?.contains("pre-AVX") == true)
        XCTAssertTrue(Bench.blasNote(core: "Prescott", flags: zen3)?.contains("OPENBLAS_CORETYPE=Haswell") == true)
        XCTAssertNil(Bench.blasNote(core: "SkylakeX", flags: zen5))
        XCTAssertNil(Bench.blasNote(core: "Cooperlake", flags: zen5))
        XCTAssertNil(Bench.blasNote(core: "Haswell", flags: zen3))
        XCTAssertNil(Bench.blasNote(core: "Zen", flags: zen3))
    }

    /// `cce bench --rounds`: the rows alternate round by round; a row reports the median of
    /// its rounds' medians, a ratio of times the median of its per-round values (each round's
    /// in `ratio_rounds`), a ratio of peaks the first call's; one round reports as before.
    func testBenchRoundsAlternateAndReportMedians() throws {
        var c = BenchConfig()
        c.tokens = 64; c.dim = 32; c.vocab = 512; c.threads = 2; c.repeats = 1; c.rounds = 3
        c.methods = ["cce"]; c.kinds = ["loss", "loss+grad"]
        var lines: [String] = []
        let report = try Bench.run(c) { lines.append($0) }
        let timed = lines.filter { $0.hasPrefix("  cce loss") }.map { $0.hasPrefix("  cce loss+grad") ? "lg" : "loss" }
        XCTAssertEqual(timed, ["loss", "lg", "loss", "lg", "loss", "lg"])
        XCTAssertEqual(report.rounds, 3)
        XCTAssertEqual(report.rows.map { "\($0.method) \($0.kind)" }, ["cce loss", "cce loss+grad"])
        let perRound = try XCTUnwrap(report.row_rounds)
        let loss = try XCTUnwrap(perRound["cce loss"]), lg = try XCTUnwrap(perRound["cce loss+grad"])
        XCTAssertEqual(loss.count, 3); XCTAssertEqual(lg.count, 3)
        XCTAssertEqual(report.rows[0].median_seconds, loss.sorted()[1])
        XCTAssertEqual(report.rows[1].median_seconds, lg.sorted()[1])
        XCTAssertNotNil(report.rows[1].later_peak_bytes, "later rounds' calls are later calls")
        let ratios = try XCTUnwrap(report.ratio_rounds?["cce_lossgrad_over_cce_loss"])
        XCTAssertEqual(ratios, zip(lg, loss).map { $0 / $1 })
        XCTAssertEqual(report.ratios["cce_lossgrad_over_cce_loss"], ratios.sorted()[1])
        XCTAssertNil(report.ratio_rounds?["cce_lossgrad_peak_over_logits"])
        XCTAssertEqual(report.ratios["cce_lossgrad_peak_over_logits"],
                       Double(report.rows[1].peak_bytes) / Double(64 * 512 * 4))
        c.rounds = 1
        let one = try Bench.run(c)
        XCTAssertNil(one.ratio_rounds); XCTAssertNil(one.row_rounds)
        XCTAssertEqual(one.ratios["cce_lossgrad_over_cce_loss"], one.rows[1].median_seconds / one.rows[0].median_seconds)
        c.rounds = 0
        XCTAssertThrowsError(try Bench.validate(c))
    }
}
