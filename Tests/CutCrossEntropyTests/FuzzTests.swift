// SelfCheck's drawn cases (Sources/CCEReference/SelfCheck.swift: what each case checks, with
// its budgets), in the suite: 24 cases from seed 1, 12 in vocabulary shards and 12 in token
// slices in every run, the same ones each time. CCE_FUZZ_CASES and CCE_FUZZ_SEED draw more, or others: a longer campaign on
// this machine's kernels (`cce selfcheck` does the same from the command line).

import CCEReference
import Foundation
import XCTest

final class FuzzTests: XCTestCase {
    var cases: Int { ProcessInfo.processInfo.environment["CCE_FUZZ_CASES"].flatMap(Int.init) ?? 24 }
    var firstSeed: UInt64 { ProcessInfo.processInfo.environment["CCE_FUZZ_SEED"].flatMap(UInt64.init) ?? 1 }

    /// Runs `check` on `count` seeds from the first; each failing line is a test failure
    /// (the first five failing cases are reported).
    func drawn(_ count: Int, _ check: (UInt64) throws -> [String]) rethrows {
        var failed = 0
        for seed in firstSeed ..< firstSeed + UInt64(count) where failed < 5 {
            let lines = try check(seed)
            for line in lines { XCTFail(line) }
            failed += lines.isEmpty ? 0 : 1
        }
    }

    /// Against the Float64 oracle, 1 against 3 threads, split against fused calls, and into
    /// kept arrays: no failure in any case.
    func testRandomCasesAgainstTheOracleAndThemselves() throws {
        try drawn(cases) { try SelfCheck.check(SelfCheck.draw(seed: $0)) }
    }

    /// Vocabulary shards (1 to 5) of half as many drawn cases, split and fused exchanging calls,
    /// against one process.
    func testRandomVocabularyShardsAgainstOneProcess() throws {
        try drawn(max(1, cases / 2)) { try SelfCheck.checkShards(SelfCheck.draw(seed: $0), parts: 1 + Int($0 % 5)) }
    }

    /// Token slices (1 to 5, some empty) of half as many drawn cases, as the ranks of a
    /// token-parallel run hold them, against one process.
    func testRandomTokenSlicesAgainstOneProcess() throws {
        try drawn(max(1, cases / 2)) { try SelfCheck.checkTokenSlices(SelfCheck.draw(seed: $0), parts: 1 + Int($0 % 5)) }
    }

    /// Found by the drawn cases (seed 1833; 1633 and 1719 likewise): vocabulary shards in the
    /// exact mode with no active token (4 sequences of 1 token, shift 1). The engine typed the
    /// empty chunk's partials by a cast of the array, which an empty [Double] passes as [Float],
    /// so the fused exchanging call refused its own partials ("shard partials 0 cover 0 tokens
    /// (Float32), this forward has 0 (Float64)"). Now typed by the scalar type.
    func testExactShardsWithNoActiveToken() throws {
        let c = SelfCheck.draw(seed: 1833)
        XCTAssertEqual(c.options.mode, .exact)
        XCTAssertEqual(c.batch, c.n, "one token a sequence, shifted out")
        for parts in 1...3 {
            let lines = try SelfCheck.checkShards(c, parts: parts)
            XCTAssertTrue(lines.isEmpty, lines.joined(separator: "\n"))
        }
    }
}
