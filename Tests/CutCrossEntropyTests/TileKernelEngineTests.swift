// Every tile kernel this CPU runs, through the whole engine: the Float32 oracle budget of
// OracleAgreementTests on every option, bf16 storage and shapes that are no multiple of
// any register block (12 x 32, 6 x 16); the 512-bit FMA kernel bit for bit the portable
// one; the bf16 dot-product kernel (another summation order) bitwise reproducible across
// thread counts and between the fused and the two-call path. A kernel the CPU lacks is
// skipped with a message saying so.

import CCEData
import CCEKernels
import CutCrossEntropy
import XCTest

final class TileKernelEngineTests: XCTestCase {
    /// The kernels this CPU runs on bf16 E and C, and a note of those it skips.
    func runnableKernels() -> [TileKernel] {
        let all = TileKernel.allCases
        let runs = all.filter { $0.runs(.bfloat16) }
        for k in all where !runs.contains(k) { print("TileKernelEngineTests: skipping \(k.name): this CPU cannot run it") }
        return runs
    }

    func engine(_ kernel: TileKernel, _ o: Options) -> CutCrossEntropy {
        var cce = CutCrossEntropy(options: o)
        cce.tileKernel = kernel
        XCTAssertEqual(cce.tileKernel(embeddings: .bfloat16, classifier: .bfloat16), kernel, "kernel \(kernel.name) chosen")
        return cce
    }

    func testEveryKernelAgreesWithTheOracleOnEveryOption() throws {
        let (e, c, t, b) = randomProblem(n: 43, d: 37, v: 331, type: .bfloat16, seed: 9, withBias: true)
        for kernel in runnableKernels() {
            for softcap in [nil, 4.0] {
                for (smoothing, zloss) in [(0.0, 0.0), (0.1, 1e-3)] {
                    for r in [Reduction.mean, .none] {
                        var o = Options()
                        o.softcap = softcap; o.labelSmoothing = smoothing; o.zLoss = zloss; o.reduction = r
                        o.filterEpsilon = .value(0x1p-28)   // the Float32 budget's filter
                        let up: Upstream = r == .none ? .perToken((0..<43).map { Float(0.5 + Double($0 % 3) * 0.25) })
                                                      : .scalar(0.7)
                        let (f, g) = try engine(kernel, o).lossAndGradients(embeddings: e, classifier: c, targets: t,
                                                                            bias: b, upstream: up)
                        let x = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: o, upstream: up)
                        let name = "\(kernel.name) cap=\(softcap ?? 0) α=\(smoothing) z=\(zloss) \(r)"
                        assertClose([f.loss], [x.loss], atol: 1e-5, rtol: 1e-5, "\(name) loss")
                        assertClose(f.lse.doubles, x.lse, atol: 1e-5, rtol: 1e-5, "\(name) lse")
                        assertClose(g.dE.doubles, x.dE, atol: 1e-6, rtol: 1e-4, "\(name) dE")
                        assertClose(g.dC.doubles, x.dC, atol: 1e-6, rtol: 1e-4, "\(name) dC")
                        assertClose(g.dBias!.doubles, x.dBias!, atol: 1e-6, rtol: 1e-4, "\(name) dBias")
                    }
                }
            }
        }
    }

    func testFMA512IsBitwiseThePortableKernel() throws {
        guard TileKernel.avx512FMA.runs(.bfloat16) else {
            throw XCTSkip("this CPU has no AVX-512: the 512-bit FMA kernel cannot run here")
        }
        for type in [ElementType.float32, .float16, .bfloat16] {
            let (e, c, t, b) = randomProblem(n: 61, d: 45, v: 777, type: type, seed: 2, withBias: true)
            var o = Options(); o.softcap = 10; o.threads = 2
            let (fp, gp) = try engine(.portable, o).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
            let (fa, ga) = try engine(.avx512FMA, o).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
            XCTAssertEqual(fp.loss.bitPattern, fa.loss.bitPattern, "\(type) loss")
            XCTAssertTrue(bitwiseEqual(gp.dE, ga.dE) && bitwiseEqual(gp.dC, ga.dC) && bitwiseEqual(gp.dBias!, ga.dBias!),
                          "\(type): the 512-bit FMA kernel gives the portable kernel's gradients bit for bit")
        }
    }

    func testDotProductKernelIsReproducible() throws {
        guard TileKernel.avx512BF16.runs(.bfloat16) else {
            throw XCTSkip("this CPU has no AVX512_BF16: the dot-product kernel cannot run here")
        }
        try assertReproducible(.avx512BF16)
    }

    /// The AMX kernel (its tile products, and its rank update for dE) likewise.
    func testAMXKernelIsReproducible() throws {
        guard TileKernel.amxBF16.runs(.bfloat16) else {
            throw XCTSkip("this CPU has no AMX-BF16: the AMX kernel cannot run here")
        }
        try assertReproducible(.amxBF16)
    }

    /// Bitwise the same results at 1, 2 and 3 threads, and from the two-call path as fused.
    func assertReproducible(_ kernel: TileKernel) throws {
        let data = try LMLikeCase.make()
        var o = Options(); o.threads = 1
        let reference = try engine(kernel, o).lossAndGradients(embeddings: data.0, classifier: data.1, targets: data.2)
        for threads in [2, 3] {
            o.threads = threads
            let (f, g) = try engine(kernel, o).lossAndGradients(embeddings: data.0, classifier: data.1, targets: data.2)
            XCTAssertEqual(f.loss.bitPattern, reference.0.loss.bitPattern, "\(kernel.name), \(threads) threads: loss")
            XCTAssertTrue(bitwiseEqual(g.dE, reference.1.dE) && bitwiseEqual(g.dC, reference.1.dC),
                          "\(kernel.name), \(threads) threads: the same gradient bits")
        }
        // Two calls, with the estimate's forward-block path not taken: the same bits as fused.
        var split = o; split.filterCorrection = false; split.savedLogitsPerRow = 0
        let cce = engine(kernel, split)
        let fused = try cce.lossAndGradients(embeddings: data.0, classifier: data.1, targets: data.2)
        let f = try cce.forward(embeddings: data.0, classifier: data.1, targets: data.2)
        let g = try cce.backward(f, embeddings: data.0, classifier: data.1)
        XCTAssertEqual(f.loss.bitPattern, fused.0.loss.bitPattern, "split vs fused loss")
        XCTAssertTrue(bitwiseEqual(g.dE, fused.1.dE) && bitwiseEqual(g.dC, fused.1.dC), "split vs fused gradients")
    }
}

/// A small LM-like bf16 problem (peaked rows, so filtering and the skip bound both act).
enum LMLikeCase {
    static func make() throws -> (Tensor, Tensor, Targets) {
        let d = LMLikeData.make(tokens: 150, dim: 48, vocab: 2051, type: .bfloat16, seed: 7)
        return (d.embeddings, d.classifier, d.targets)
    }
}

/// The 512-bit rank update against the portable one: the same bits, on shapes that are no
/// multiple of its 12 x 32 block, both strides (dE reads A by rows, dC by columns), blocked or not.
final class RankUpdateAVX512Tests: XCTestCase {
    func testBitwiseThePortableRankUpdate() throws {
        guard hasAVX512 else { throw XCTSkip("this CPU has no AVX-512: the 512-bit rank update cannot run here") }
        var rng = SeededRandom(seed: 11)
        for (m, k, w) in [(1, 1, 1), (13, 37, 19), (12, 32, 32), (25, 7, 100), (50, 129, 1023)] {
            for (transposed, blocked) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = (0..<(m * k)).map { _ in Float(rng.normal()) }
                let b = (0..<(k * w)).map { _ in Float(rng.normal()) }
                let start = (0..<(m * w)).map { _ in Float(rng.normal()) }
                var portable = start, fast = start
                let (ars, aks) = transposed ? (1, m) : (k, 1)
                a.withUnsafeBufferPointer { ap in
                    b.withUnsafeBufferPointer { bp in
                        let bRows = (0..<k).map { UnsafePointer(bp.baseAddress! + $0 * w) }
                        portable.withUnsafeMutableBufferPointer { o in
                            let rows = (0..<m).map { o.baseAddress! + $0 * w }
                            var scratch = [Float](repeating: 0, count: (m + 5) / 6 * 6 * k)
                            var spare = [Float](repeating: 0, count: w)
                            var slice = [Float](repeating: 0, count: k * 16)
                            rankUpdate(out: rows, m: m, a: ap.baseAddress!, ars: ars, aks: aks, b: bRows, k: k, width: w,
                                       scratch: &scratch, spare: &spare, blocked: blocked, bSlice: &slice)
                        }
                        fast.withUnsafeMutableBufferPointer { o in
                            let rows = (0..<m).map { o.baseAddress! + $0 * w }
                            rankUpdateAVX512(out: rows, m: m, a: ap.baseAddress!, ars: ars, aks: aks, b: bRows, k: k,
                                             width: w, blocked: blocked)
                        }
                    }
                }
                XCTAssertEqual(fast.map(\.bitPattern), portable.map(\.bitPattern),
                               "m=\(m) k=\(k) w=\(w) transposed=\(transposed) blocked=\(blocked)")
            }
        }
    }
}

/// dC's sparse update against the dense 512-bit rank update (not blocked) on the same A with
/// most entries zero: each out row given only its nonzero terms, in order, must come out with
/// the dense chain's bits, for bf16, Float16 and Float32 b rows (each its own loop: bf16 in
/// pairs of columns) and widths that are no multiple of 64.
final class SparseUpdateAVX512Tests: XCTestCase {
    func testBitwiseTheDenseRankUpdate() throws {
        guard hasAVX512 else { throw XCTSkip("this CPU has no AVX-512: the sparse update cannot run here") }
        var rng = SeededRandom(seed: 13)
        for (m, k, w) in [(1, 1, 1), (7, 40, 65), (20, 62, 1024), (3, 258, 130)] {
            for bType in [ElementType.bfloat16, .float16, .float32] {
                // About one entry in eight nonzero, and one row with none (it must stay as it was).
                let a = (0..<(m * k)).map { i -> Float in i / k == m / 2 || rng.uniform() > 0.125 ? 0 : Float(rng.normal()) }
                let b32 = (0..<(k * w)).map { _ in Float(rng.normal()) }
                let b16 = bType == .float16 ? b32.map { Float16($0).bitPattern } : b32.map(bfloat16Bits)
                let start = (0..<(m * w)).map { _ in Float(rng.normal()) }
                var dense = start, sparse = start
                let (ars, aks) = (1, m)   // dC's layout: A read by columns
                b32.withUnsafeBufferPointer { p32 in
                    b16.withUnsafeBufferPointer { p16 in
                        let bRows: [UnsafeRawPointer] = (0..<k).map {
                            bType == .float32 ? UnsafeRawPointer(p32.baseAddress! + $0 * w) : UnsafeRawPointer(p16.baseAddress! + $0 * w)
                        }
                        a.withUnsafeBufferPointer { ap in
                            dense.withUnsafeMutableBufferPointer { o in
                                let rows = (0..<m).map { o.baseAddress! + $0 * w }
                                rankUpdateAVX512(out: rows, m: m, a: ap.baseAddress!, ars: ars, aks: aks, b: bRows,
                                                 bType: bType, k: k, width: w)
                            }
                        }
                        sparse.withUnsafeMutableBufferPointer { o in
                            for r in 0..<m {
                                let terms = (0..<k).filter { a[r * ars + $0 * aks] != 0 }
                                let values = terms.map { a[r * ars + $0 * aks] }, rows = terms.map { bRows[$0] }
                                sparseUpdateAVX512(out: o.baseAddress! + r * w, nnz: terms.count, values: values,
                                                   b: rows, bType: bType, width: w)
                            }
                        }
                    }
                }
                XCTAssertEqual(sparse.map(\.bitPattern), dense.map(\.bitPattern), "m=\(m) k=\(k) w=\(w) \(bType)")
            }
        }
    }
}

/// The AMX rank update (dE's product with bf16 C): bit for bit its model `amxRankEmulated`
/// (A split into bf16 hi + lo, tdpbf16ps per 32-element chunk), and within 2^-15 relative of
/// the Float64 sum (the split keeps A to 2^-17; the chain rounds in Float32), on shapes that
/// are no multiple of its 32 x 32 block, both strides, blocked or not.
final class RankUpdateAMXTests: XCTestCase {
    func testBitwiseItsModelAndCloseToFloat64() throws {
        guard hasAMX else { throw XCTSkip("this CPU has no AMX-BF16: the AMX rank update cannot run here") }
        var rng = SeededRandom(seed: 12)
        var scratch = [UInt32](repeating: 0, count: AMXTileShape.rankScratchWords)
        for (m, k, w) in [(1, 1, 1), (13, 37, 19), (32, 32, 32), (33, 129, 100), (50, 256, 1023), (17, 200, 48)] {
            for (transposed, blocked) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = (0..<(m * k)).map { _ in Float(rng.normal()) * 1e-3 }
                let b = (0..<(k * w)).map { _ in bfloat16Bits(Float(rng.normal())) }
                let start = (0..<(m * w)).map { _ in Float(rng.normal()) }
                var fast = start
                let (ars, aks) = transposed ? (1, m) : (k, 1)
                a.withUnsafeBufferPointer { ap in
                    b.withUnsafeBufferPointer { bp in
                        let bRows = (0..<k).map { UnsafeRawPointer(bp.baseAddress! + $0 * w) }
                        fast.withUnsafeMutableBufferPointer { o in
                            let rows = (0..<m).map { o.baseAddress! + $0 * w }
                            rankUpdateAMX(out: rows, m: m, a: ap.baseAddress!, ars: ars, aks: aks, b: bRows, k: k,
                                          width: w, blocked: blocked, scratch: &scratch)
                        }
                    }
                }
                var worst = 0.0
                for r in 0..<m {
                    let row = (0..<k).map { a[r * ars + $0 * aks] }
                    for j in 0..<w {
                        let column = (0..<k).map { b[$0 * w + j] }
                        let s = start[r * w + j]
                        let model = blocked ? amxRankEmulated(start: 0, a: row, b: column) + s
                                            : amxRankEmulated(start: s, a: row, b: column)
                        XCTAssertEqual(fast[r * w + j].bitPattern, model.bitPattern,
                                       "m=\(m) k=\(k) w=\(w) transposed=\(transposed) blocked=\(blocked) (\(r), \(j))")
                        var exact = Double(s), scale = abs(Double(s))
                        for q in 0..<k {
                            let p = Double(row[q]) * Double(floatFromBFloat16Bits(column[q]))
                            exact += p; scale += abs(p)
                        }
                        worst = max(worst, abs(Double(fast[r * w + j]) - exact) / scale)
                    }
                }
                XCTAssertLessThan(worst, 0x1p-15, "m=\(m) k=\(k) w=\(w): error against Float64, relative to Σ|terms|")
            }
        }
    }
}

/// The 512-bit LSE merge against the Swift one: the same bits of the running state and of
/// the row summary, on row lengths that are no multiple of 8 or 16, rows whose maximum
/// repeats (ties, ±0), −∞ entries and whole −∞ rows, and across successive tiles (rescaling).
final class MergeAVX512Tests: XCTestCase {
    func testBitwiseTheSwiftMerge() throws {
        guard hasAVX512 else { throw XCTSkip("this CPU has no AVX-512: the 512-bit merge cannot run here") }
        var rng = SeededRandom(seed: 13)
        for x: Float in [-100, -87.4, -87.3, -10, -1e-3, 0, -0.0, 1e-3, 0.5, 10, 88.3, 88.4, 100, .infinity, -.infinity] {
            XCTAssertEqual(expAVX512(x).bitPattern, Float.exp(x).bitPattern, "exp(\(x))")
        }
        for count in [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 255, 256] {
            for kind in 0..<5 {
                var a = RunningLSE<Float>(), b = RunningLSE<Float>()
                for tile in 0..<4 {
                    var z = (0..<count).map { _ in Float(rng.normal()) * Float(1 + 3 * tile) - Float(kind == 1 ? 30 : 0) }
                    if kind == 2 { for q in stride(from: 0, to: count, by: 3) { z[q] = 5 } }           // ties
                    if kind == 3 { for q in 0..<count { z[q] = q % 2 == 0 ? 0 : -0.0 } }               // ±0
                    if kind == 4 { for q in stride(from: 0, to: count, by: 2) { z[q] = -.infinity } }
                    if kind == 4 && tile == 1 { z = [Float](repeating: -.infinity, count: count) }
                    let sa = z.withUnsafeBufferPointer { mergeTileRow($0.baseAddress!, count: count, into: &a) }
                    let sb = z.withUnsafeBufferPointer { mergeTileRowAVX512($0.baseAddress!, count: count, into: &b) }
                    let name = "count \(count) kind \(kind) tile \(tile)"
                    XCTAssertEqual([a.max, a.sum, a.comp].map(\.bitPattern), [b.max, b.sum, b.comp].map(\.bitPattern), name)
                    XCTAssertEqual([sa.max, sa.logSum].map(\.bitPattern), [sb.max, sb.logSum].map(\.bitPattern), name)
                }
            }
        }
    }
}

/// The estimate's block sums on AVX-512 (cce_sum_rows) against the portable sum (each row
/// converted, then added with axpy from +0): the same bits for bf16, Float16 and Float32 rows,
/// widths that are no multiple of 16 or 256, one row and a block of 128, with −0 and
/// subnormal-producing cancellations among the entries.
final class SumRowsAVX512Tests: XCTestCase {
    func testBitwiseThePortableSum() throws {
        guard hasAVX512 else { throw XCTSkip("this CPU has no AVX-512: the 512-bit row sum cannot run here") }
        var rng = SeededRandom(seed: 14)
        for (count, width) in [(1, 1), (3, 17), (128, 256), (97, 300), (128, 1024), (5, 513)] {
            for type in [ElementType.bfloat16, .float16, .float32] {
                let values = (0..<(count * width)).map { i -> Float in
                    i % 11 == 0 ? -0.0 : i % 13 == 0 ? 1e-39 : Float(rng.normal()) * (i % 7 == 0 ? 1e4 : 1)
                }
                let stored: [UInt8] = values.withUnsafeBufferPointer { v in
                    switch type {
                    case .float32: return Array(UnsafeRawBufferPointer(v))
                    case .bfloat16: return values.map(bfloat16Bits).withUnsafeBytes { Array($0) }
                    case .float16: return values.map { Float16($0).bitPattern }.withUnsafeBytes { Array($0) }
                    }
                }
                var fast = [Float](repeating: .nan, count: width), portable = [Float](repeating: 0, count: width)
                var row = [Float](repeating: 0, count: width)
                stored.withUnsafeBytes { s in
                    let rows = (0..<count).map { s.baseAddress! + $0 * width * type.size }
                    sumRowsAVX512(rows, count: count, type: type, width: width, into: &fast)
                    for r in rows {
                        convertRow(r, type: type, count: width, into: &row)
                        axpy(&portable, 1, row, count: width)
                    }
                }
                XCTAssertEqual(fast.map(\.bitPattern), portable.map(\.bitPattern), "count \(count) width \(width) \(type)")
            }
        }
    }
}

final class ThresholdCopyTests: XCTestCase {
    /// dC's entry filter: the generic entry point (`thresholdCopy`, its Float dispatch) and the
    /// eight-lane kernel (`thresholdCopy8`) against the rule written out element by element,
    /// bit for bit, with entries at ±t exactly, signed zeros, NaN and infinities, lengths that
    /// leave a tail, and thresholds ≤ 0 (every entry copied).
    func testVectorPathsFollowTheRule() {
        for portable in [true, false] {
            check(portable: portable)
        }
    }

    private func check(portable: Bool) {
        var rng = SeededRandom(seed: 21)
        for count in [1, 15, 16, 17, 64, 100] {
            for t: Float in [0.5, 0, -1, 1e-30] {
                var x = (0..<count).map { _ in Float(rng.normal()) }
                let specials: [Float] = [t, -t, 0, -0.0, .nan, .infinity, -.infinity, t.nextDown, -t.nextUp]
                for (i, s) in specials.enumerated() where i < count { x[(i * 7) % count] = s }
                var out = [Float](repeating: 42, count: count)
                let n = x.withUnsafeBufferPointer { xp in
                    out.withUnsafeMutableBufferPointer {
                        portable ? thresholdCopy8(xp.baseAddress!, count: count, below: t, into: $0.baseAddress!)
                            : thresholdCopy(xp.baseAddress!, count: count, below: t, into: $0.baseAddress!)
                    }
                }
                let expected = x.map { abs($0) < t ? Float(0) : $0 }
                let path = portable ? "eight lanes" : "entry point"
                XCTAssertEqual(out.map(\.bitPattern), expected.map(\.bitPattern), "\(path): count \(count) t \(t)")
                XCTAssertEqual(n, expected.filter { $0 != 0 }.count, "\(path): count \(count) t \(t)")
            }
        }
    }
}
