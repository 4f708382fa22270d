// cce selfcheck: drawn cases against the Float64 oracle and against the engine itself, on the
// tile kernels this CPU runs (Sources/CCEReference/SelfCheck.swift says what each case checks,
// with its budgets). The suite runs the first 24 cases on every machine it runs on; this runs
// as many as asked, from any seed, where the suite is not at hand (the static `cce` on another
// machine, say, with other kernels).

import ArgumentParser
import CCEBenchmarks
import CCEReference
import CutCrossEntropy
import Foundation

struct SelfCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selfcheck",
        abstract: "Check drawn cases (shapes, types, options, modes) against the Float64 oracle and against themselves; exit 1 on a failure.")

    @Option(help: "Cases to draw.") var cases = 200
    @Option(help: "The first case's seed (a case is the same on every machine).") var seed: UInt64 = 1
    @Option(help: "Also check every n-th case split into 1 to 5 vocabulary shards and 1 to 5 token slices (0: none).") var shardsEvery = 2
    @Option(help: "Stop after this many failing cases.") var maxFailures = 5

    func validate() throws {
        guard cases >= 1 else { throw ValidationError("--cases must be >= 1 (got \(cases))") }
        guard shardsEvery >= 0 else { throw ValidationError("--shards-every must be >= 0 (got \(shardsEvery))") }
        guard maxFailures >= 1 else { throw ValidationError("--max-failures must be >= 1 (got \(maxFailures))") }
        guard seed <= UInt64.max - UInt64(cases) else { throw ValidationError("--seed + --cases overflows") }
    }

    func run() throws {
        let cce = CutCrossEntropy()
        print("machine: \(Bench.machineDescription())")
        print("tile kernels: f32 \(cce.tileKernel(embeddings: .float32, classifier: .float32).name), "
              + "bf16 \(cce.tileKernel(embeddings: .bfloat16, classifier: .bfloat16).name), "
              + "f16 \(cce.tileKernel(embeddings: .float16, classifier: .float16).name)")
        print("cases: seeds \(seed) to \(seed + UInt64(cases) - 1)"
              + (shardsEvery > 0 ? ", one case in \(shardsEvery) also in 1 to 5 vocabulary shards and token slices" : ""))
        let start = Date()
        var failedCases = 0, passed = 0, sharded = 0, firstFailed: UInt64? = nil
        for s in seed ..< seed + UInt64(cases) {
            let c = SelfCheck.draw(seed: s)
            var lines: [String]
            do {
                let shards = shardsEvery > 0 && (s - seed) % UInt64(shardsEvery) == 0
                sharded += shards ? 1 : 0
                lines = try SelfCheck.check(c, shards: shards ? 1 + Int(s % 5) : nil)
            } catch {
                lines = ["\(c): refused: \(error)"]
            }
            if lines.isEmpty { passed += 1; continue }
            failedCases += 1
            firstFailed = firstFailed ?? s
            for line in lines { print("FAIL \(line)") }
            if failedCases >= maxFailures { print("stopping after \(failedCases) failing cases"); break }
        }
        let seconds = Date().timeIntervalSince(start)
        print(String(format: "%d cases passed, %d failed (%d also in shards and slices), %.1f s", passed, failedCases, sharded, seconds))
        if let firstFailed {
            throw CLIError("selfcheck failed: \(failedCases) case\(failedCases == 1 ? "" : "s"), the first seed \(firstFailed) "
                           + "(replay it with --cases 1 --seed \(firstFailed))")
        }
    }
}
