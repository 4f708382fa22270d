// cce explain at the library level (CCEExplain): the walkthrough's loss and gradients
// against the library's, and the filter map's kept row segments against the engine's.

import CCEExplain
import CutCrossEntropy
import XCTest

final class ExplainTests: XCTestCase {
    func testExplainTinyExampleMatchesLibrary() throws {
        let w = try TileWalkthrough(seed: 7, eps: 0x1p-7)
        XCTAssertEqual(w.loss, w.libraryLoss, accuracy: 1e-5 * max(1, abs(w.loss)))
        XCTAssertLessThan(w.gradientDifference, 1e-5)
        XCTAssertGreaterThan(w.skippedTiles, 0)            // seed 7 shows filtering
        XCTAssertGreaterThan(w.filteringError, 0)          // something was dropped,
        XCTAssertLessThan(w.filteringError, 1e-2)          // and little: each dropped dy < eps/N
        XCTAssertThrowsError(try TileWalkthrough(eps: -1)) {
            XCTAssertEqual($0 as? ExplainError, .invalidOption("eps must be finite and >= 0 (got -1.0)"))
        }
    }

    /// The returned data hold together: 8 forward and 8 backward tiles; each row's last merge
    /// step gives its token's lse; the loss is the mean of the token losses; a tile is
    /// skipped only with no target in it and every p below ε, and the count agrees.
    func testWalkthroughDataAreConsistent() throws {
        let w = try TileWalkthrough(seed: 7, eps: 0x1p-7)
        let (n, v, t) = (TileWalkthrough.n, TileWalkthrough.v, TileWalkthrough.tile)
        XCTAssertEqual(w.forward.count, w.tiles)
        XCTAssertEqual(w.backward.count, w.tiles)
        XCTAssertEqual(Set(w.order), Set(0..<v))
        for f in w.forward where f.firstPosition == v - t {
            for (r, m) in f.merge.enumerated() {
                XCTAssertEqual(m.lse, w.tokenLosses[f.firstRow + r].lse, accuracy: 1e-12)
            }
        }
        XCTAssertEqual(w.tokenLosses.map(\.loss).reduce(0, +) / Double(n), w.loss, accuracy: 1e-12)
        var skipped = 0
        for b in w.backward {
            let ids = (b.firstPosition..<(b.firstPosition + t)).map { w.order[$0] }
            let targetRows = (b.firstRow..<(b.firstRow + t)).filter { ids.contains(w.targets[$0]) }
            switch b.decision {
            case .keptForTargets(let rows): XCTAssertEqual(rows, targetRows)
            case .keptAboveEpsilon(let p): XCTAssertTrue(targetRows.isEmpty); XCTAssertGreaterThanOrEqual(p, w.eps)
            case .skipped(let p):
                XCTAssertTrue(targetRows.isEmpty); XCTAssertLessThan(p, w.eps)
                XCTAssertTrue(b.gradient.joined().allSatisfy { abs($0) < w.eps })
                skipped += 1
            }
        }
        XCTAssertEqual(skipped, w.skippedTiles)
    }

    /// Kept row segments computed here agree with the engine's FilterStatistics, and
    /// sorting keeps fewer.
    func testFilterMapAgreesWithEngine() throws {
        let map = try FilterMap(tokens: 48, dim: 64, vocab: 2048, type: .bfloat16, seed: 1, threads: 2)
        for p in [map.unsorted, map.sorted] {
            XCTAssertEqual(p.engine.rowSegments, 48 * map.blocks)
            XCTAssertEqual(Double(p.keptSegments), Double(p.engine.keptRowSegments),
                           accuracy: 0.01 * Double(p.engine.rowSegments), "sorted \(p.sorted)")
        }
        XCTAssertLessThan(map.sorted.keptSegments, map.unsorted.keptSegments)
        XCTAssertTrue(map.svg().contains("<path"))
    }
}
