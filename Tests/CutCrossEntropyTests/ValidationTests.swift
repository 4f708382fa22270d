// Bad input: a typed error whose message names the problem (the offending option,
// value or shapes), and nothing returned.

import CutCrossEntropy
import XCTest

final class ValidationTests: XCTestCase {
    /// The body throws a `CCEError` that `expected` accepts, and its message names the
    /// problem: it contains every one of `names` (the offending option, value or shapes).
    func expect(_ expected: (CCEError) -> Bool, _ what: String, names: [String], _ body: () throws -> Void,
                file: StaticString = #filePath, line: UInt = #line) {
        do {
            try body()
            XCTFail("\(what): no error thrown", file: file, line: line)
        } catch let e as CCEError {
            XCTAssertTrue(expected(e), "\(what): got \(e)", file: file, line: line)
            for name in names {
                XCTAssertTrue(e.description.contains(name), "\(what): \"\(e)\" does not name \(name)",
                              file: file, line: line)
            }
        } catch {
            XCTFail("\(what): untyped error \(error)", file: file, line: line)
        }
    }

    func testShapesAndRanges() throws {
        let (e, c, t, _) = randomProblem(n: 6, d: 4, v: 9, ignoreFraction: 0)
        let cce = CutCrossEntropy()
        expect({ if case .invalidShape = $0 { true } else { false } }, "D mismatch",
               names: ["D = 4", "[9, 3]", "D = 3"]) {
            _ = try cce.forward(embeddings: e, classifier: try Tensor([Float](repeating: 0, count: 27), shape: [9, 3]), targets: t)
        }
        expect({ if case .invalidShape = $0 { true } else { false } }, "target shape",
               names: ["[3]", "[6, 4]", "need [6]"]) {
            _ = try cce.forward(embeddings: e, classifier: c, targets: try Targets([1, 2, 3]))
        }
        expect({ if case .invalidShape = $0 { true } else { false } }, "bias shape",
               names: ["bias", "[9]", "[8]"]) {
            _ = try cce.forward(embeddings: e, classifier: c, targets: t, bias: try Tensor([Float](repeating: 0, count: 8), shape: [8]))
        }
        expect({ if case .targetOutOfRange(let p, let v, let vocab) = $0 { p == 2 && v == 9 && vocab == 9 } else { false } }, "target = V",
               names: ["targets[2] = 9", "[0, 9)"]) {
            _ = try cce.forward(embeddings: e, classifier: c, targets: try Targets([0, 1, 9, 2, 3, 4]))
        }
        expect({ if case .targetOutOfRange(let p, let v, let vocab) = $0 { p == 2 && v == -1 && vocab == 9 } else { false } },
               "negative target", names: ["targets[2] = -1", "[0, 9)"]) {
            _ = try cce.forward(embeddings: e, classifier: c, targets: try Targets([0, 1, -1, 2, 3, 4]))
        }
        expect({ if case .empty = $0 { true } else { false } }, "N = 0",
               names: ["[0, 4]", "no tokens"]) {
            _ = try cce.forward(embeddings: try Tensor([Float](), shape: [0, 4]), classifier: c, targets: try Targets([Int]()))
        }
        expect({ if case .empty = $0 { true } else { false } }, "V = 0",
               names: ["[0, 4]", "V = 0"]) {
            _ = try cce.forward(embeddings: e, classifier: try Tensor([Float](), shape: [0, 4]), targets: t)
        }
        expect({ if case .invalidShape = $0 { true } else { false } }, "values vs shape",
               names: ["[2, 3]", "6 elements", "5 values"]) {
            _ = try Tensor([Float](repeating: 0, count: 5), shape: [2, 3])
        }
    }

    func testNonFiniteWhenChecking() throws {
        let (e, c, t, _) = randomProblem(n: 6, d: 4, v: 9, ignoreFraction: 0)
        var v = c.floats(); v[13] = .nan
        let bad = try Tensor(v, shape: c.shape)
        var o = Options(); o.checkFinite = true
        expect({ if case .nonFinite(let name, let i) = $0 { name == "classifier" && i == 13 } else { false } }, "NaN in C",
               names: ["classifier[13]"]) {
            _ = try CutCrossEntropy(options: o).forward(embeddings: e, classifier: bad, targets: t)
        }
    }

    func testOptionsAndUpstream() throws {
        let (e, c, t, _) = randomProblem(n: 6, d: 4, v: 9, ignoreFraction: 0)
        // (option, the value given as the message prints it, how to set it)
        for (name, value, mutate) in [("softcap", "0.0", { (o: inout Options) in o.softcap = 0 }),
                                      ("shift", "-1", { $0.shift = -1 }),
                                      ("labelSmoothing", "1.5", { $0.labelSmoothing = 1.5 }),
                                      ("zLoss", "-1.0", { $0.zLoss = -1 }),
                                      ("filter epsilon", "-1.0", { $0.filterEpsilon = .value(-1) }),
                                      ("threads", "0", { $0.threads = 0 })] as [(String, String, (inout Options) -> Void)] {
            var o = Options(); mutate(&o)
            expect({ if case .invalidOption = $0 { true } else { false } }, name, names: [name, "(got \(value))"]) {
                _ = try CutCrossEntropy(options: o).forward(embeddings: e, classifier: c, targets: t)
            }
        }
        let cce = CutCrossEntropy()
        let f = try cce.forward(embeddings: e, classifier: c, targets: t)
        expect({ if case .invalidUpstream = $0 { true } else { false } }, "per-token upstream for mean",
               names: [".mean", "scalar"]) {
            _ = try cce.backward(f, embeddings: e, classifier: c, upstream: .perToken([1, 2, 3, 4, 5, 6]))
        }
        var o = Options(); o.reduction = .none
        let fn = try CutCrossEntropy(options: o).forward(embeddings: e, classifier: c, targets: t)
        expect({ if case .invalidUpstream = $0 { true } else { false } }, "wrong count",
               names: ["2 values", "6 target positions"]) {
            _ = try CutCrossEntropy(options: o).backward(fn, embeddings: e, classifier: c, upstream: .perToken([1, 2]))
        }
        let other = try Tensor(converting: c.floats(), to: .bfloat16, shape: c.shape)
        expect({ if case .stateMismatch = $0 { true } else { false } }, "different classifier",
               names: ["classifier", "bfloat16", "float32"]) {
            _ = try cce.backward(f, embeddings: e, classifier: other)
        }
    }
}
