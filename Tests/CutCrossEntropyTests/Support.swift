// Shared test helpers: random problems, comparisons with a written error budget, and a
// trace of the parameters so a failure says which case broke.

import CCEData
import CutCrossEntropy
import XCTest

/// A random problem with Gaussian E and C (scaled so logits spread over a few units).
func randomProblem(n: Int, d: Int, v: Int, type: ElementType = .float32, seed: UInt64 = 1,
                   batch: Int? = nil, ignoreFraction: Double = 0.1, ignoreIndex: Int = -100,
                   withBias: Bool = false) -> (Tensor, Tensor, Targets, Tensor?) {
    var rng = SeededRandom(seed: seed)
    let e = (0..<(n * d)).map { _ in Float(rng.normal()) }
    let c = (0..<(v * d)).map { _ in Float(rng.normal() * 2 / Double(d).squareRoot()) }
    let t = (0..<n).map { _ in rng.uniform() < ignoreFraction ? ignoreIndex : Int(rng.next() % UInt64(v)) }
    let eShape = batch.map { [$0, n / $0, d] } ?? [n, d]
    let tShape = batch.map { [$0, n / $0] } ?? [n]
    let b: Tensor? = withBias
        ? try! Tensor(converting: (0..<v).map { _ in Float(rng.normal()) }, to: type, shape: [v]) : nil
    return (try! Tensor(converting: e, to: type, shape: eShape),
            try! Tensor(converting: c, to: type, shape: [v, d]),
            try! Targets(t, shape: tShape), b)
}

/// max |a − b| / (atol + rtol·max|b|) ≤ 1, with a message naming the case and the worst element.
func assertClose(_ a: [Double], _ b: [Double], atol: Double, rtol: Double, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "\(what): count", file: file, line: line)
    guard a.count == b.count else { return }
    let scale = b.reduce(0) { max($0, $1.isNaN ? 0 : abs($1)) }
    var worst = 0.0, at = -1
    for i in 0..<a.count {
        if a[i].isNaN && b[i].isNaN { continue }
        let err = abs(a[i] - b[i])
        if !(err <= worst) || err.isNaN { worst = err.isNaN ? .infinity : err; at = i }
    }
    let budget = atol + rtol * scale
    XCTAssertLessThanOrEqual(worst, budget,
        "\(what): max error \(worst) at [\(at)] (\(at >= 0 ? a[at] : 0) vs \(at >= 0 ? b[at] : 0)), budget \(budget)",
        file: file, line: line)
}

/// Whether two results have the same bits everywhere (NaNs included); prints no arrays.
func bitwiseEqual(_ a: Values, _ b: Values) -> Bool {
    switch (a, b) {
    case (.float32(let x), .float32(let y)): return x.map(\.bitPattern) == y.map(\.bitPattern)
    case (.float64(let x), .float64(let y)): return x.map(\.bitPattern) == y.map(\.bitPattern)
    default: return false
    }
}

/// The `cce` executable, run as a subprocess: for tests of what the command line does (exit
/// status, standard error, files written). Found, in order, at $CCE_EXECUTABLE, beside the test
/// bundle (`swift test` builds every product into the same folder), or in this package's
/// .build/{release,debug}.
enum CLI {
    struct Result {
        let status: Int32
        /// Whether the process ended by a signal (a crash), not by exit().
        let signalled: Bool
        let stdout: String, stderr: String
        let seconds: Double
        var stderrLines: [Substring] { stderr.split(separator: "\n") }
        var summary: String { "status \(status)\(signalled ? " (signal)" : ""), \(String(format: "%.2f", seconds)) s, stderr: \(stderr.prefix(600)), stdout: \(stdout.prefix(300))" }
    }

    static let executable: URL? = {
        let fm = FileManager.default
        var candidates: [URL] = []
        if let e = ProcessInfo.processInfo.environment["CCE_EXECUTABLE"], !e.isEmpty {
            candidates.append(URL(fileURLWithPath: e))
        }
        let bundle = Bundle(for: BundleMarker.self).bundleURL
        candidates += [bundle, bundle.deletingLastPathComponent()].map { $0.appendingPathComponent("cce") }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates += ["release", "debug"].map { root.appendingPathComponent(".build/\($0)/cce") }
        return candidates.first { fm.isExecutableFile(atPath: $0.path) }
    }()

    /// The executable, or a failure that says where it was looked for.
    static func tool(file: StaticString = #filePath, line: UInt = #line) throws -> URL {
        guard let exe = executable else {
            XCTFail("the cce executable was not found ($CCE_EXECUTABLE, beside the test bundle, .build/{release,debug})",
                    file: file, line: line)
            throw XCTSkip("no cce executable")
        }
        return exe
    }

    /// Runs `cce args` in `directory` (default: a fresh temporary folder) and waits at most
    /// `timeout` seconds (then kills it). Output goes through files, so a chatty command
    /// cannot block on a full pipe. `memoryLimitKB` bounds its address space (ulimit -v), so
    /// that a command that would allocate without bound fails fast instead of filling memory
    /// (not for a ThreadSanitizer build, which cannot start under such a limit).
    /// `asUser` runs it as another user (through setpriv; root only).
    static func run(_ args: [String], in directory: URL? = nil, timeout: Double = 120, memoryLimitKB: Int? = nil,
                    asUser uid: Int? = nil) throws -> Result {
        let exe = try tool()
        let fm = FileManager.default
        let scratch = fm.temporaryDirectory.appendingPathComponent("cce-cli-\(UUID().uuidString)")
        try fm.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? fm.removeItem(at: scratch) }
        let outURL = scratch.appendingPathComponent("stdout"), errURL = scratch.appendingPathComponent("stderr")
        fm.createFile(atPath: outURL.path, contents: nil); fm.createFile(atPath: errURL.path, contents: nil)
        let p = Process()
        var command = [exe.path] + args
        if let uid { command = ["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups"] + command }
        if let memoryLimitKB {
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "ulimit -v \(memoryLimitKB) && exec \"$@\"", "sh"] + command
        } else {
            p.executableURL = URL(fileURLWithPath: command[0]); p.arguments = Array(command.dropFirst())
        }
        p.currentDirectoryURL = directory ?? scratch
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
        p.standardOutput = out; p.standardError = err
        let start = Date()
        try p.run()
        while p.isRunning && Date().timeIntervalSince(start) < timeout { usleep(10_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        let seconds = Date().timeIntervalSince(start)
        try out.close(); try err.close()
        let result = Result(status: p.terminationStatus, signalled: p.terminationReason == .uncaughtSignal,
                            stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                            stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "", seconds: seconds)
        // A ThreadSanitizer build cannot start under an address-space limit: run it without.
        if memoryLimitKB != nil, result.stderr.contains("ThreadSanitizer setrlimit() failed") {
            return try run(args, in: directory, timeout: timeout, memoryLimitKB: nil, asUser: uid)
        }
        return result
    }

    /// Asserts a clean refusal: exit status 1 (no crash), one line on standard error that
    /// contains each of `texts`, nothing on standard output.
    static func assertRefused(_ r: Result, _ texts: [String], _ what: String, stdoutEmpty: Bool = true,
                              file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, "\(what): \(r.summary)", file: file, line: line)
        XCTAssertFalse(r.signalled, "\(what): crashed: \(r.summary)", file: file, line: line)
        XCTAssertEqual(r.stderrLines.count, 1, "\(what): one line on stderr: \(r.summary)", file: file, line: line)
        for t in texts {
            XCTAssertTrue(r.stderr.contains(t), "\(what): stderr should contain '\(t)': \(r.summary)", file: file, line: line)
        }
        XCTAssertFalse(r.stderr.contains("NSCocoaErrorDomain") || r.stderr.contains("Error Domain="),
                       "\(what): a raw system error: \(r.summary)", file: file, line: line)
        if stdoutEmpty { XCTAssertEqual(r.stdout, "", "\(what): printed before failing: \(r.summary)", file: file, line: line) }
    }
}

private final class BundleMarker {}
