// The kernels against their portable references, on shapes that are not tile multiples.
//
// Budgets: the tile product and the rank update agree with the Double reference within
// 4·k·2^-24·Σ|a·b| (the standard bound for a k-term Float32 dot product); exp is within
// 3 ulp of Double exp over its whole finite range, [−87.33654, 88.37626]. Every Float in that
// range (2.24e9 inputs) was measured once: at most 2.737 ulp, at x = −27.379168 (7460
// inputs above 2.5 ulp, none above 3), so 2 ulp does not hold; the test sweeps every 127th
// Float of the range and that worst input.

import CCEKernels
import XCTest

final class KernelTests: XCTestCase {
    /// Error in units in the last place of the exact value's binade (2^(e−23) for a value in
    /// [2^e, 2^(e+1))), against Double exp.
    func testExpWithinThreeUlp() {
        let lo: Float = -87.33654, hi: Float = 88.37626
        var worst = 0.0, worstAt: Float = 0
        func measure(_ v: SIMD8<Float>) {
            let y = Exp.exp(v)
            for l in 0..<8 {
                let truth = Foundation_exp(Double(v[l]))
                let ulp = Double(sign: .plus, exponent: truth.exponent - 23, significand: 1)
                let err = abs(Double(y[l]) - truth) / ulp
                if !(err <= worst) { worst = err; worstAt = v[l] }
            }
        }
        // Every 127th bit pattern of [lo, −0] and of [+0, hi]: 17.6 million inputs.
        for (first, last) in [(UInt32(0x8000_0000), lo.bitPattern), (UInt32(0), hi.bitPattern)] {
            var b = first
            while b <= last {
                var v = SIMD8<Float>()
                for l in 0..<8 { v[l] = Float(bitPattern: min(b + UInt32(l) * 127, last)) }
                measure(v)
                b += 8 * 127
            }
        }
        measure(SIMD8<Float>(-27.379168, lo, hi, -0.0, 0, 1, -1, 0.5))  // the measured worst, the ends
        XCTAssertLessThanOrEqual(worst, 3.0, "exp error in ulp, worst at x = \(worstAt)")
        let special = Exp.exp(SIMD8<Float>(-.infinity, .infinity, .nan, -100, 100, 0, -0.0, 1))
        XCTAssertEqual(special[0], 0); XCTAssertEqual(special[1], .infinity); XCTAssertTrue(special[2].isNaN)
        XCTAssertEqual(special[3], 0); XCTAssertEqual(special[4], .infinity); XCTAssertEqual(special[5], 1)
        XCTAssertEqual(special[6], 1); XCTAssertEqual(special[7], Float(M_E), accuracy: 1e-6)
    }

    func testTileProductMatchesReference() {
        for (m, n, d) in [(1, 1, 1), (13, 37, 19), (6, 16, 256), (7, 17, 300), (25, 50, 513)] {
            var rng = SystemRandomNumberGenerator()
            let a = (0..<(m * d)).map { _ in Float.random(in: -1...1, using: &rng) }
            let b = (0..<(n * d)).map { _ in Float.random(in: -1...1, using: &rng) }
            var fast = [Float](repeating: .nan, count: m * n)
            var ref = [Float](repeating: .nan, count: m * n)
            a.withUnsafeBufferPointer { ap in
                b.withUnsafeBufferPointer { bp in
                    let aRows = (0..<m).map { ap.baseAddress! + $0 * d }
                    let bRows = (0..<n).map { bp.baseAddress! + $0 * d }
                    let bRaw = bRows.map { UnsafeRawPointer($0) }
                    var panel = [Float](repeating: 0, count: TileShape.nr * TileShape.kc)
                    aRows.withUnsafeBufferPointer { ar in
                        bRaw.withUnsafeBufferPointer { br in
                            panel.withUnsafeMutableBufferPointer { cp in
                                fast.withUnsafeMutableBufferPointer { o in
                                    tileProduct(eRows: ar.baseAddress!, m: m, cRows: br.baseAddress!, cType: .float32,
                                                n: n, d: d, out: o.baseAddress!, ldo: n, panel: cp.baseAddress!)
                                }
                            }
                        }
                        bRows.withUnsafeBufferPointer { brr in
                            ref.withUnsafeMutableBufferPointer { o in
                                tileProductReference(a: ar.baseAddress!, m: m, b: brr.baseAddress!, n: n, k: d,
                                                     out: o.baseAddress!, ldo: n)
                            }
                        }
                    }
                    // The sequential dot reproduces the tile's bits.
                    for i in 0..<m {
                        for j in 0..<n {
                            XCTAssertEqual(sequentialDot(aRows[i], bRows[j], d), fast[i * n + j],
                                           "sequentialDot vs tile at m=\(m) n=\(n) d=\(d) (\(i),\(j))")
                        }
                    }
                }
            }
            let budget = 4 * Double(d) * 0x1p-24 * Double(d)
            for i in 0..<(m * n) {
                XCTAssertLessThanOrEqual(abs(Double(fast[i]) - Double(ref[i])), budget, "m=\(m) n=\(n) d=\(d) at \(i)")
            }
        }
    }

    /// Packing BFloat16 rows (fast 8 x 8 path and the element-wise tail) gives the same
    /// logits as packing their Float32 values.
    func testBFloat16PanelsMatchFloat32Panels() {
        for (n, d) in [(16, 300), (16, 8), (5, 19)] {
            var rng = SystemRandomNumberGenerator()
            let f = (0..<(n * d)).map { _ in floatFromBFloat16Bits(bfloat16Bits(Float.random(in: -2...2, using: &rng))) }
            let h = f.map { bfloat16Bits($0) }
            var p32 = [Float](repeating: .nan, count: 16 * d), p16 = [Float](repeating: .nan, count: 16 * d)
            f.withUnsafeBytes { fb in
                h.withUnsafeBytes { hb in
                    let r32 = (0..<n).map { UnsafeRawPointer(fb.baseAddress! + $0 * d * 4) }
                    let r16 = (0..<n).map { UnsafeRawPointer(hb.baseAddress! + $0 * d * 2) }
                    p32.withUnsafeMutableBufferPointer { packColumnPanel(r32, n: n, type: .float32, k0: 0, kc: d, into: $0.baseAddress!) }
                    p16.withUnsafeMutableBufferPointer { packColumnPanel(r16, n: n, type: .bfloat16, k0: 0, kc: d, into: $0.baseAddress!) }
                }
            }
            XCTAssertEqual(p32, p16, "n=\(n) d=\(d)")
            XCTAssertEqual(p32[3 * 16 + 1], n > 1 ? f[1 * d + 3] : 0, "panel[k=3][j=1] is row 1, column 3")
        }
    }

    func testRankUpdateMatchesReference() {
        for (m, k, w, transposed, blocked) in [(1, 1, 1, false, false), (13, 37, 19, false, true), (6, 16, 32, true, false),
                                            (17, 5, 45, true, true), (7, 9, 16, false, true)] {
            var rng = SystemRandomNumberGenerator()
            let a = (0..<(m * k)).map { _ in Float.random(in: -1...1, using: &rng) }
            let b = (0..<(k * w)).map { _ in Float.random(in: -1...1, using: &rng) }
            let start = (0..<(m * w)).map { _ in Float.random(in: -1...1, using: &rng) }
            var fast = start, ref = start
            let (ars, aks) = transposed ? (1, m) : (k, 1)
            a.withUnsafeBufferPointer { ap in
                b.withUnsafeBufferPointer { bp in
                    let bRows = (0..<k).map { UnsafePointer(bp.baseAddress! + $0 * w) }
                    fast.withUnsafeMutableBufferPointer { f in
                        let outRows = (0..<m).map { f.baseAddress! + $0 * w }
                        var scratch = [Float](repeating: .nan, count: (m + 5) / 6 * 6 * k)
                        var spare = [Float](repeating: 0, count: w)
                        rankUpdate(out: outRows, m: m, a: ap.baseAddress!, ars: ars, aks: aks, b: bRows, k: k, width: w,
                                   scratch: &scratch, spare: &spare, blocked: blocked,
                                   bSlice: UnsafeMutablePointer<Float>.allocate(capacity: k * 16))
                    }
                    ref.withUnsafeMutableBufferPointer { f in
                        let outRows = (0..<m).map { f.baseAddress! + $0 * w }
                        rankUpdateReference(out: outRows, m: m, a: ap.baseAddress!, ars: ars, aks: aks, b: bRows, k: k, width: w)
                    }
                }
            }
            let budget = 4 * Double(k + 1) * 0x1p-24 * Double(k + 1)
            for i in 0..<(m * w) {
                XCTAssertLessThanOrEqual(abs(Double(fast[i]) - Double(ref[i])), budget, "m=\(m) k=\(k) w=\(w) at \(i)")
            }
        }
    }

    /// b read from 16-column slices (cutSlices, through a row index) gives the bits b read
    /// through row pointers gives: the same FMA chains, only the loads come from elsewhere.
    /// Widths with a tail past the last whole slice; an index that skips and reorders rows
    /// (slices gathered), and one that takes the first k rows in order (slices read in place).
    func testRankUpdateFromSlicesIsBitwiseFromRows() {
        for (m, k, w, blocked, shuffled) in [(5, 7, 16, false, true), (13, 11, 45, true, true), (32, 20, 70, false, true),
                                             (1, 3, 8, true, true), (13, 11, 45, true, false), (32, 20, 70, false, false)] {
            var rng = SystemRandomNumberGenerator()
            let pool = k + 4   // rows the slices hold; the update reads k of them
            let a = (0..<(m * k)).map { _ in Float.random(in: -1...1, using: &rng) }
            let b = (0..<(pool * w)).map { _ in Float.random(in: -1...1, using: &rng) }
            let index = shuffled ? (0..<pool).shuffled(using: &rng).prefix(k).map { $0 } : Array(0..<k)
            let start = (0..<(m * w)).map { _ in Float.random(in: -1...1, using: &rng) }
            var fromRows = start, fromSlices = start
            b.withUnsafeBufferPointer { bp in
                let poolRows = (0..<pool).map { UnsafePointer(bp.baseAddress! + $0 * w) }
                let bRows = index.map { poolRows[$0] }
                var slices = [Float](repeating: .nan, count: pool * w)
                slices.withUnsafeMutableBufferPointer {
                    cutSlices(poolRows, m: pool, width: w, into: $0.baseAddress!, stride: pool * 16)
                }
                for useSlices in [false, true] {
                    var scratch = [Float](repeating: .nan, count: (m + 5) / 6 * 6 * k)
                    var spare = [Float](repeating: 0, count: w), bSlice = [Float](repeating: .nan, count: k * 16)
                    let update = { (out: [UnsafeMutablePointer<Float>], s: BSlices<Float>?) in
                        rankUpdate(out: out, m: m, a: a, ars: k, aks: 1, b: bRows, k: k, width: w, scratch: &scratch,
                                   spare: &spare, blocked: blocked, bSlice: &bSlice, slices: s)
                    }
                    if useSlices {
                        slices.withUnsafeBufferPointer { sp in
                            index.withUnsafeBufferPointer { ip in
                                fromSlices.withUnsafeMutableBufferPointer { f in
                                    update((0..<m).map { f.baseAddress! + $0 * w },
                                           BSlices(base: sp.baseAddress!, stride: pool * 16, index: ip.baseAddress!))
                                }
                            }
                        }
                    } else {
                        fromRows.withUnsafeMutableBufferPointer { f in update((0..<m).map { f.baseAddress! + $0 * w }, nil) }
                    }
                }
            }
            let differ = (0..<(m * w)).filter { fromSlices[$0].bitPattern != fromRows[$0].bitPattern }
            XCTAssertTrue(differ.isEmpty, "m=\(m) k=\(k) w=\(w) shuffled \(shuffled): \(differ.count) values differ, first at \(differ.first ?? -1)")
            XCTAssertNotEqual(fromRows, start, "the update changed nothing: the test would prove nothing")
        }
    }

    func testLSEMergeMatchesTwoPassReference() {
        var rng = SystemRandomNumberGenerator()
        let z = (0..<1000).map { _ in Float.random(in: -30...30, using: &rng) }
        var st = RunningLSE<Float>()
        z.withUnsafeBufferPointer { p in
            var i = 0
            while i < z.count { let c = min(37, z.count - i); mergeTileRow(p.baseAddress! + i, count: c, into: &st); i += c }
        }
        let truth = z.map { Double($0) }.withUnsafeBufferPointer { lseReference($0) }
        XCTAssertEqual(Double(st.value), truth, accuracy: 1e-5)
    }

    /// A row's running states over separate stretches (vocabulary segments), merged in order,
    /// against the two-pass Float64 LSE: stretches of very different scales (so the merge
    /// rescales both ways), and empty ones (−∞, nothing merged), which must change nothing.
    func testRunningStatesMergeInSegmentOrder() {
        var rng = SystemRandomNumberGenerator()
        for trial in 0..<20 {
            let shift = Float(trial % 5) * 12 - 24
            let stretches: [[Float]] = (0..<5).map { s in
                s == 2 ? [] : (0..<(37 * s + 11)).map { _ in Float.random(in: -20...20, using: &rng) + (s == 3 ? shift : 0) }
            }
            var merged = RunningLSE<Float>()
            for z in stretches {
                var part = RunningLSE<Float>()
                z.withUnsafeBufferPointer { p in if !z.isEmpty { mergeTileRow(p.baseAddress!, count: z.count, into: &part) } }
                merged.merge(part)
            }
            let truth = stretches.joined().map { Double($0) }.withUnsafeBufferPointer { lseReference($0) }
            XCTAssertEqual(Double(merged.value), truth, accuracy: 1e-5 * max(1, abs(truth)), "trial \(trial)")
        }
        var one = RunningLSE<Float>()
        [Float(1), 2, 3].withUnsafeBufferPointer { _ = mergeTileRow($0.baseAddress!, count: 3, into: &one) }
        var copy = one
        copy.merge(RunningLSE())
        XCTAssertEqual(copy.value.bitPattern, one.value.bitPattern, "merging an empty state changes nothing")
        var empty = RunningLSE<Float>()
        empty.merge(one)
        XCTAssertEqual(empty.value, one.value, accuracy: 1e-6, "an empty state takes the other's value")
    }

    func testBFloat16Rounding() {
        XCTAssertEqual(floatFromBFloat16Bits(bfloat16Bits(1.0)), 1.0)
        XCTAssertEqual(floatFromBFloat16Bits(bfloat16Bits(1.00390625)), 1.0)        // tie to even
        XCTAssertEqual(floatFromBFloat16Bits(bfloat16Bits(1.01171875)), 1.015625)   // tie to even (up)
        XCTAssertTrue(floatFromBFloat16Bits(bfloat16Bits(.nan)).isNaN)
        XCTAssertEqual(floatFromBFloat16Bits(bfloat16Bits(-.infinity)), -.infinity)
    }
}

/// The vocabulary order's radix sort against a comparison sort of the same strict order
/// (largest first, ties by id), on keys with many ties, both zeros, negatives, extremes and
/// one-digit differences.
final class OrderTests: XCTestCase {
    func testDescendingOrderMatchesComparisonSort() {
        var rng = SystemRandomNumberGenerator()
        let specials: [Double] = [0, -0.0, 1, -1, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
                                  .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .infinity, -.infinity,
                                  1.0000000000000002, 0.9999999999999999]
        for (n, pool) in [(0, 0), (1, 0), (7, 3), (1000, 10), (5000, 0), (5000, 1), (70_000, 500)] {
            var keys: [Double] = (0..<n).map { _ in
                pool > 0 ? Double(Int.random(in: 0..<pool, using: &rng)) * 0.25 - 10
                         : Double.random(in: -50...50, using: &rng)
            }
            for k in 0..<min(n, specials.count * 3) { keys[(k * 7919) % n] = specials[k % specials.count] }
            let expected = (0..<n).sorted { keys[$0] != keys[$1] ? keys[$0] > keys[$1] : $0 < $1 }.map { Int32($0) }
            XCTAssertEqual(descendingOrder(keys), expected, "n=\(n) pool=\(pool)")
        }
    }

    /// Float keys sorted through their 32-bit words give the permutation of the same keys as
    /// Doubles (the sort the vocabulary order uses without a bias): ties, ±0, infinities,
    /// subnormals and NaNs of either sign included.
    func testFloatWordsGiveTheDoublePermutation() {
        var rng = SystemRandomNumberGenerator()
        let specials: [Float] = [0, -0.0, 1, -1, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
                                 .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .infinity, -.infinity,
                                 .nan, -.nan, 1.0000001, 0.99999994]
        for (n, pool) in [(0, 0), (1, 0), (9, 3), (1000, 10), (70_000, 500), (70_000, 0)] {
            var keys: [Float] = (0..<n).map { _ in
                pool > 0 ? Float(Int.random(in: 0..<pool, using: &rng)) * 0.25 - 10 : Float.random(in: -50...50, using: &rng)
            }
            for k in 0..<min(n, specials.count * 3) { keys[(k * 7919) % n] = specials[k % specials.count] }
            XCTAssertEqual(descendingOrder(words: keys.map(descendingWord)), descendingOrder(keys.map { Double($0) }),
                           "n=\(n) pool=\(pool)")
        }
    }
}

import Foundation
func Foundation_exp(_ x: Double) -> Double { Foundation.exp(x) }
