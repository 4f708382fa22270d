// The AVX-512 tile products (AVX512Kernels.swift, C target CCEAVX512). The bf16 dot-product
// kernel against the Float64 reference and against its own portable emulation, on shapes
// that are not tile multiples; the panel mask, position independence of the bits, zero
// padding, and no read past a row's last element. The 512-bit FMA kernel bit for bit against
// the portable kernel for every storage type. On a CPU without AVX512_BF16 (or AVX-512)
// those tests skip, saying so; the portable path (the Swift kernel on bf16 storage, and the
// emulation) is tested everywhere.
//
// Error budget. Every product of two bf16 values is exact in Float32 (8 + 8 significant
// bits ≤ 24), so the only error is the Float32 summation: each output is a chain of d
// additions (two per k-pair; an odd d's padding adds an exact zero), and the standard bound
// for recursive summation gives |ŝ − s| ≤ γ_d · Σ_k |a_k b_k| with γ_d = d·u / (1 − d·u),
// u = 2^-24. The reference (Double sums, compared in Double) adds about d·2^-53·Σ|ab|; the
// instruction's flush of subnormal sums to zero adds at most 2^-126 per step. Budget:
//     |out − ref| ≤ 2 · d · 2^-24 · Σ_k |a_k b_k| + 2·d·2^-126,
// the factor 2 covering 1/(1 − d·u) and the reference's own error with room to spare. The
// largest measured ratio |out − ref| / (d · 2^-24 · Σ|ab|) is printed by the test.

import CCEKernels
import XCTest

/// bf16 rows of d elements, each row ending where the next begins; an optional guard page
/// right after the last row (reads past it fault).
private final class BF16Rows {
    let count: Int, d: Int
    let bits: UnsafeMutablePointer<UInt16>
    private let base: UnsafeMutableRawPointer
    private let mapped: Int

    /// Values: uniform in [−1, 1] (`wide` false) or with exponents spread over 2^-20 … 2^20.
    init(count: Int, d: Int, seed: UInt64, wide: Bool = false, guardPage: Bool = false) {
        self.count = count; self.d = d
        let bytes = max(1, count * d) * 2
        if guardPage {
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            let dataPages = (bytes + page - 1) / page
            mapped = (dataPages + 1) * page
            base = mmap(nil, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
            mprotect(base + dataPages * page, page, PROT_NONE)
            bits = (base + dataPages * page - bytes).assumingMemoryBound(to: UInt16.self)
        } else {
            mapped = 0
            base = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            bits = base.assumingMemoryBound(to: UInt16.self)
        }
        var rng = SplitMix(seed: seed)
        for i in 0..<(count * d) {
            var x = Float(Double(rng.next() >> 11) * 0x1p-53 * 2 - 1)
            if wide { x *= Float(sign: .plus, exponent: Int(rng.next() % 41) - 20, significand: 1) }
            bits[i] = bfloat16Bits(x)
        }
    }
    deinit { if mapped > 0 { munmap(base, mapped) } else { base.deallocate() } }

    func row(_ i: Int) -> UnsafePointer<UInt16> { UnsafePointer(bits + i * d) }
    var raw: [UnsafeRawPointer] { (0..<count).map { UnsafeRawPointer(row($0)) } }
    func doubles() -> [[Double]] { (0..<count).map { i in (0..<d).map { Double(floatFromBFloat16Bits(bits[i * d + $0])) } } }
}

private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The bf16 kernel's tile out (m x n, row stride ldo, rows ≥ m and columns ≥ n pre-filled
/// with a NaN sentinel) for e's rows eFirst ..< eFirst + m and c's rows cFirst ..< cFirst + n;
/// the `lookahead` rows of c after those are passed as the next call's (prefetched only).
private func bf16Tile(_ e: BF16Rows, eFirst: Int = 0, m: Int, _ c: BF16Rows, cFirst: Int = 0, n: Int, ldo: Int,
                      extraRows: Int = 1, mask: [Bool]? = nil, lookahead: Int = 0) -> [Float] {
    let d = e.d
    let eRaw = Array(e.raw[eFirst ..< eFirst + m]), cRaw = Array(c.raw[cFirst ..< cFirst + n + lookahead])
    var panels = [UInt32](repeating: 0xDEAD_BEEF, count: bf16RowPanelWords(m: m, d: d))
    var out = [Float](repeating: .nan, count: (m + extraRows) * ldo)
    packRowPanelsBF16(eRaw, m: m, d: d, into: &panels)
    if let mask {
        tileProductBF16(ePanels: panels, m: m, cRows: cRaw, n: n, d: d, out: &out, ldo: ldo,
                        panelMask: mask, lookahead: lookahead)
    } else {
        tileProductBF16(ePanels: panels, m: m, cRows: cRaw, n: n, d: d, out: &out, ldo: ldo,
                        lookahead: lookahead)
    }
    return out
}

/// The panel-mask contract of a tile kernel with `mr`-row panels, through `tile(e, m, c, n,
/// ldo, mask)` (out pre-filled with NaN): the rows of masked-in panels are bitwise the full
/// tile's, rows of skipped panels and columns ≥ n are never written, and an all-false mask
/// writes nothing.
private func assertPanelMask(mr: Int, file: StaticString = #filePath, line: UInt = #line,
                             _ tile: (BF16Rows, Int, BF16Rows, Int, Int, [Bool]?) -> [Float]) {
    let m = 3 * mr + 5, n = 37, d = 257, ldo = 40
    let e = BF16Rows(count: m, d: d, seed: 7), c = BF16Rows(count: n, d: d, seed: 8)
    let full = tile(e, m, c, n, ldo, nil)
    let mask = [true, false, false, true]
    let part = tile(e, m, c, n, ldo, mask)
    for i in 0..<m {
        for j in 0..<ldo {
            if mask[i / mr] && j < n {
                XCTAssertEqual(part[i * ldo + j].bitPattern, full[i * ldo + j].bitPattern, "(\(i),\(j))",
                               file: file, line: line)
            } else {
                XCTAssertTrue(part[i * ldo + j].isNaN, "row \(i) of a skipped panel (or column \(j) ≥ n) written",
                              file: file, line: line)
            }
        }
    }
    let none = tile(e, m, c, n, ldo, [false, false, false, false])
    XCTAssertTrue(none.allSatisfy(\.isNaN), "an all-false mask writes nothing", file: file, line: line)
}

private let skipMessage = "this CPU (or its OS) lacks AVX512_BF16 with ZMM state: the bf16 dot-product kernel "
    + "is not tested here; the portable path is (testPortable*)"
private let skipFMAMessage = "this CPU (or its OS) lacks AVX-512 (F, BW, VL) with ZMM state: the 512-bit FMA kernel "
    + "is not tested here; the portable path is (testPortable*)"

final class BF16KernelTests: XCTestCase {
    static let depths = [1, 2, 3, 17, 255, 256, 257, 1023]

    /// The shapes: every m in 1...13 (n cycling through 1...40), every n in 1...40 (m = 7),
    /// and m = 150 against n = 256, at every depth.
    static func shapes(_ d: Int) -> [(Int, Int)] {
        var s: [(Int, Int)] = (1...13).map { m in (m, 1 + (m * 11 + d) % 40) }
        s += (1...40).map { n in (7, n) }
        s.append((150, 256))
        return s
    }

    func testBF16TileMatchesReferenceAndEmulation() throws {
        try XCTSkipUnless(hasBF16DotProduct, skipMessage)
        var worst = 0.0
        for d in Self.depths {
            for (idx, (m, n)) in Self.shapes(d).enumerated() {
                let e = BF16Rows(count: m, d: d, seed: UInt64(1000 * d + 2 * idx), wide: idx % 3 == 1)
                let c = BF16Rows(count: n, d: d, seed: UInt64(1000 * d + 2 * idx + 1))
                let ldo = n + 3
                let out = bf16Tile(e, m: m, c, n: n, ldo: ldo)
                let ed = e.doubles(), cd = c.doubles()
                var ref = [Double](repeating: 0, count: m * n)
                ed.withRowPointers { ap in
                    cd.withRowPointers { bp in
                        tileProductReference(a: ap, m: m, b: bp, n: n, k: d, out: &ref, ldo: n)
                    }
                }
                var mismatches = 0
                for i in 0..<m {
                    for j in 0..<n {
                        let got = out[i * ldo + j]
                        var absSum = 0.0
                        for k in 0..<d { absSum += abs(ed[i][k] * cd[j][k]) }
                        let err = abs(Double(got) - ref[i * n + j])
                        let budget = 2 * Double(d) * 0x1p-24 * absSum + 2 * Double(d) * 0x1p-126
                        XCTAssertLessThanOrEqual(err, budget, "m=\(m) n=\(n) d=\(d) (\(i),\(j))")
                        if absSum > 0 { worst = max(worst, err / (Double(d) * 0x1p-24 * absSum)) }
                        let emu = bf16DotEmulated(e.row(i), c.row(j), d)
                        if emu.bitPattern != got.bitPattern { mismatches += 1 }
                    }
                    for j in n..<ldo { XCTAssertTrue(out[i * ldo + j].isNaN, "column \(j) ≥ n written") }
                }
                for j in 0..<ldo { XCTAssertTrue(out[m * ldo + j].isNaN, "row m written") }
                XCTAssertEqual(mismatches, 0, "kernel vs bf16DotEmulated, bitwise, m=\(m) n=\(n) d=\(d)")
            }
        }
        print("bf16 kernel: max |out − ref| / (d·2^-24·Σ|ab|) = \(worst) (budget 2)")
    }

    func testPanelMaskSkipsPanelsAndLeavesRows() throws {
        try XCTSkipUnless(hasBF16DotProduct, skipMessage)
        assertPanelMask(mr: BF16TileShape.mr) { bf16Tile($0, m: $1, $2, n: $3, ldo: $4, mask: $5) }
    }

    /// An element's bits do not depend on its row or column position in the tile, on m, n,
    /// the kernel's KC chunks (d = 1023 spans two), or the rows that follow the tile's (the
    /// next call's, which the kernel prefetches), and single dot products match them.
    func testBitsIndependentOfPositionAndShape() throws {
        try XCTSkipUnless(hasBF16DotProduct, skipMessage)
        for d in [17, 1023] {
            let m = 150, n = 256
            let e = BF16Rows(count: m, d: d, seed: 21, wide: true), c = BF16Rows(count: n, d: d, seed: 22)
            let full = bf16Tile(e, m: m, c, n: n, ldo: n)
            for (i0, mm, j0, nn) in [(5, 17, 3, 29), (0, 1, 255, 1), (149, 1, 0, 256), (13, 13, 40, 33), (100, 50, 200, 56)] {
                let sub = bf16Tile(e, eFirst: i0, m: mm, c, cFirst: j0, n: nn, ldo: nn,
                                   lookahead: min(BF16TileShape.nr, n - j0 - nn))
                for i in 0..<mm {
                    for j in 0..<nn {
                        XCTAssertEqual(sub[i * nn + j].bitPattern, full[(i0 + i) * n + j0 + j].bitPattern,
                                       "d=\(d): element (\(i0 + i),\(j0 + j)) at (\(i),\(j)) of a \(mm)x\(nn) tile")
                    }
                }
            }
            // dotsBF16: row i against column (7i + 3) mod n.
            let a = e.raw, b = (0..<m).map { c.raw[(7 * $0 + 3) % n] }
            var dots = [Float](repeating: .nan, count: m + 1)
            dotsBF16(a, b, count: m, d: d, out: &dots)
            for i in 0..<m {
                XCTAssertEqual(dots[i].bitPattern, full[i * n + (7 * i + 3) % n].bitPattern, "dotsBF16 d=\(d) row \(i)")
            }
            XCTAssertTrue(dots[m].isNaN, "dotsBF16 wrote past count")
        }
    }

    /// The packed E panels hold the documented layout, with zeros for rows beyond m and for
    /// an odd d's last high half; no operand is read past its last element (rows end at a
    /// guard page).
    func testZeroPaddingAndLayout() throws {
        try XCTSkipUnless(hasBF16DotProduct, skipMessage)
        let mr = BF16TileShape.mr
        for d in [1, 3, 17, 255, 256, 1023] {
            let m = mr + 5
            let e = BF16Rows(count: m, d: d, seed: UInt64(d), guardPage: true)
            let panels = [UInt32](unsafeUninitializedCapacity: bf16RowPanelWords(m: m, d: d)) { buf, count in
                for w in 0..<buf.count { buf[w] = 0xDEAD_BEEF }
                packRowPanelsBF16(e.raw, m: m, d: d, into: buf.baseAddress!)
                count = buf.count
            }
            let pairs = (d + 1) / 2
            XCTAssertEqual(panels.count, 2 * mr * pairs)
            for p in 0..<2 {
                for q in 0..<pairs {
                    for r in 0..<mr {
                        let i = p * mr + r
                        let lo: UInt16 = i < m ? e.bits[i * d + 2 * q] : 0
                        let hi: UInt16 = i < m && 2 * q + 1 < d ? e.bits[i * d + 2 * q + 1] : 0
                        XCTAssertEqual(panels[p * mr * pairs + q * mr + r], UInt32(lo) | UInt32(hi) << 16,
                                       "d=\(d) panel \(p) pair \(q) row \(r)")
                    }
                }
            }
            // The last C row and the last E row end right before the guard page.
            let c = BF16Rows(count: 33, d: d, seed: UInt64(d + 1), guardPage: true)
            let out = bf16Tile(e, m: m, c, n: 33, ldo: 33)
            for i in [0, m - 1] {
                for j in [0, 32] {
                    XCTAssertEqual(out[i * 33 + j].bitPattern, bf16DotEmulated(e.row(i), c.row(j), d).bitPattern)
                }
            }
            var dot: Float = .nan
            dotsBF16([e.raw[m - 1]], [c.raw[32]], count: 1, d: d, out: &dot)
            XCTAssertEqual(dot.bitPattern, out[(m - 1) * 33 + 32].bitPattern)
        }
    }

    /// The emulation reproduces the instruction bit for bit, also with subnormal bf16 inputs,
    /// partial sums that underflow and huge dynamic range.
    func testEmulationMatchesInstructionBitwise() throws {
        try XCTSkipUnless(hasBF16DotProduct, skipMessage)
        var rng = SplitMix(seed: 99)
        let count = 4000, d = 9
        let a = BF16Rows(count: count, d: d, seed: 1), b = BF16Rows(count: count, d: d, seed: 2)
        for i in 0..<(count * d) {
            // Exponents 0 ... 40 and 100 ... 140 (bf16 subnormals at 0), random signs.
            for p in [a.bits, b.bits] {
                let r = rng.next()
                let exp = UInt16(r % 41) + (r & 64 == 0 ? 0 : 100)
                p[i] = UInt16(truncatingIfNeeded: r >> 20) & 0x807F | exp << 7
            }
        }
        var got = [Float](repeating: 0, count: count)
        dotsBF16(a.raw, b.raw, count: count, d: d, out: &got)
        var mismatches = 0
        for i in 0..<count where bf16DotEmulated(a.row(i), b.row(i), d).bitPattern != got[i].bitPattern {
            mismatches += 1
        }
        XCTAssertEqual(mismatches, 0, "bf16DotEmulated vs vdpbf16ps")
    }

    // MARK: - The portable path, on every CPU

    func testPortableKernelOnBF16StorageMatchesReference() {
        for d in Self.depths {
            for (m, n) in [(1, 1), (13, 40), (7, 17), (150, 256)] {
                let e = BF16Rows(count: m, d: d, seed: UInt64(d * 3)), c = BF16Rows(count: n, d: d, seed: UInt64(d * 3 + 1))
                var panel = [Float](repeating: 0, count: TileShape.nr * TileShape.kc)
                var out = [Float](repeating: .nan, count: m * n)
                let rows = e.raw.map { r in (0..<d).map { storedElement(r, type: .bfloat16, $0) } }
                withRows(rows) { rowTable in
                    tileProduct(eRows: rowTable, m: m, cRows: c.raw, cType: .bfloat16, n: n, d: d, out: &out, ldo: n,
                                panel: &panel)
                }
                let ed = e.doubles(), cd = c.doubles()
                var ref = [Double](repeating: 0, count: m * n)
                ed.withRowPointers { ap in
                    cd.withRowPointers { bp in
                        tileProductReference(a: ap, m: m, b: bp, n: n, k: d, out: &ref, ldo: n)
                    }
                }
                for i in 0..<m {
                    for j in 0..<n {
                        var absSum = 0.0
                        for k in 0..<d { absSum += abs(ed[i][k] * cd[j][k]) }
                        let budget = 2 * Double(d) * 0x1p-24 * absSum
                        XCTAssertLessThanOrEqual(abs(Double(out[i * n + j]) - ref[i * n + j]), budget,
                                                 "portable m=\(m) n=\(n) d=\(d) (\(i),\(j))")
                        if i == j || i + j == 1 {
                            // The emulation of the bf16 order stays within the same budget.
                            let emu = Double(bf16DotEmulated(e.row(i), c.row(j), d))
                            XCTAssertLessThanOrEqual(abs(emu - ref[i * n + j]), budget, "emulation d=\(d)")
                        }
                    }
                }
            }
        }
    }

    func testKernelSelection() {
        for type in ElementType.allCases {
            let chosen = TileKernel.forStorage(type)
            XCTAssertTrue(chosen.runs(type), "\(chosen.name) chosen for \(type) but cannot run here")
            if !hasAVX512 { XCTAssertEqual(chosen, .portable) }
            if hasAVX512, getenv("CCE_KERNEL") == nil { XCTAssertNotEqual(chosen, .portable) }
            if let v = getenv("CCE_KERNEL"), String(cString: v) == "portable" { XCTAssertEqual(chosen, .portable) }
        }
        XCTAssertEqual(TileKernel.forBFloat16, TileKernel.forStorage(.bfloat16))
        XCTAssertFalse(TileKernel.avx512BF16.runs(.float32))
        print("AVX-512: \(hasAVX512), AVX512_BF16: \(hasBF16DotProduct); kernels: "
              + ElementType.allCases.map { "\($0.rawValue) \(TileKernel.forStorage($0).name)" }.joined(separator: ", "))
    }

    // MARK: - The 512-bit FMA kernel: the portable kernel's bits

    func testAVX512KernelMatchesPortableBitwise() throws {
        try XCTSkipUnless(hasAVX512, skipFMAMessage)
        for type in ElementType.allCases {
            for d in Self.depths {
                for (idx, (m, n)) in Self.shapes(d).enumerated() where idx % 4 == 0 || m * n > 1000 {
                    let e = TypedRows(type, count: m, d: d, seed: UInt64(7 * d + idx))
                    let c = TypedRows(type, count: n, d: d, seed: UInt64(7 * d + idx + 5000))
                    let ldo = n + 2
                    let fast = avx512Tile(e, m: m, c, n: n, ldo: ldo)
                    let portable = portableTile(e, m: m, c, n: n, ldo: ldo)
                    var mismatches = 0
                    for i in 0..<m {
                        for j in 0..<n where fast[i * ldo + j].bitPattern != portable[i * ldo + j].bitPattern {
                            mismatches += 1
                        }
                        for j in n..<ldo { XCTAssertTrue(fast[i * ldo + j].isNaN, "column \(j) ≥ n written") }
                    }
                    for j in 0..<ldo { XCTAssertTrue(fast[m * ldo + j].isNaN, "row m written") }
                    XCTAssertEqual(mismatches, 0, "avx512 vs portable kernel, \(type) m=\(m) n=\(n) d=\(d)")
                }
            }
        }
    }

    func testAVX512PanelMaskAndPositionIndependence() throws {
        try XCTSkipUnless(hasAVX512, skipFMAMessage)
        let mr = AVX512TileShape.mr
        let m = 3 * mr + 5, n = 37, d = 600, ldo = 40
        let e = TypedRows(.bfloat16, count: m, d: d, seed: 31), c = TypedRows(.bfloat16, count: n, d: d, seed: 32)
        let full = avx512Tile(e, m: m, c, n: n, ldo: ldo)
        let mask = [false, true, false, true]
        let part = avx512Tile(e, m: m, c, n: n, ldo: ldo, mask: mask)
        for i in 0..<m {
            for j in 0..<ldo {
                if mask[i / mr] && j < n {
                    XCTAssertEqual(part[i * ldo + j].bitPattern, full[i * ldo + j].bitPattern, "(\(i),\(j))")
                } else {
                    XCTAssertTrue(part[i * ldo + j].isNaN, "row \(i) of a skipped panel (or column \(j) ≥ n) written")
                }
            }
        }
        let sub = avx512Tile(e, eFirst: 13, m: 3, c, cFirst: 5, n: 30, ldo: 30)
        for i in 0..<3 {
            for j in 0..<30 {
                XCTAssertEqual(sub[i * 30 + j].bitPattern, full[(13 + i) * ldo + 5 + j].bitPattern)
            }
        }
    }
}

/// Rows of d elements stored as `type` (uniform in [−1, 1]), one after another.
private final class TypedRows {
    let type: ElementType, count: Int, d: Int
    let bytes: UnsafeMutableRawPointer

    init(_ type: ElementType, count: Int, d: Int, seed: UInt64) {
        self.type = type; self.count = count; self.d = d
        bytes = .allocate(byteCount: max(1, count * d) * type.size, alignment: 64)
        var rng = SplitMix(seed: seed)
        for i in 0..<(count * d) {
            let x = Float(Double(rng.next() >> 11) * 0x1p-53 * 2 - 1)
            switch type {
            case .float32: bytes.storeBytes(of: x, toByteOffset: 4 * i, as: Float.self)
            case .float16: bytes.storeBytes(of: Float16(x), toByteOffset: 2 * i, as: Float16.self)
            case .bfloat16: bytes.storeBytes(of: bfloat16Bits(x), toByteOffset: 2 * i, as: UInt16.self)
            }
        }
    }
    deinit { bytes.deallocate() }
    var raw: [UnsafeRawPointer] { (0..<count).map { UnsafeRawPointer(bytes + $0 * d * type.size) } }
}

/// E rows converted to Float32 (as the engine's token block holds them).
private func floatRows(_ e: TypedRows, first: Int, count: Int) -> [[Float]] {
    (first ..< first + count).map { i in
        (0..<e.d).map { k in storedElement(e.raw[i], type: e.type, k) }
    }
}

/// Calls body with a table of pointers to the rows (valid only inside body).
private func withRows<R>(_ rows: [[Float]], _ body: (UnsafePointer<UnsafePointer<Float>>) -> R) -> R {
    let copies = rows.map { r -> UnsafeMutablePointer<Float> in
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, r.count))
        p.initialize(from: r, count: r.count)
        return p
    }
    defer { copies.forEach { $0.deallocate() } }
    return copies.map { UnsafePointer($0) }.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// The 512-bit FMA kernel's tile, pre-filled with NaN beyond m rows and n columns.
private func avx512Tile(_ e: TypedRows, eFirst: Int = 0, m: Int, _ c: TypedRows, cFirst: Int = 0, n: Int, ldo: Int,
                        mask: [Bool]? = nil) -> [Float] {
    let d = e.d
    let cRaw = Array(c.raw[cFirst ..< cFirst + n])
    var panel = [Float](repeating: 0, count: AVX512TileShape.columnPanelFloats)
    var out = [Float](repeating: .nan, count: (m + 1) * ldo)
    withRows(floatRows(e, first: eFirst, count: m)) { rows in
        if let mask {
            tileProductAVX512(eRows: rows, m: m, cRows: cRaw, cType: c.type, n: n, d: d, out: &out, ldo: ldo,
                              panel: &panel, panelMask: mask)
        } else {
            tileProductAVX512(eRows: rows, m: m, cRows: cRaw, cType: c.type, n: n, d: d, out: &out, ldo: ldo,
                              panel: &panel)
        }
    }
    return out
}

/// The portable kernel's tile, pre-filled with NaN beyond m rows and n columns.
private func portableTile(_ e: TypedRows, m: Int, _ c: TypedRows, n: Int, ldo: Int) -> [Float] {
    let d = e.d
    var panel = [Float](repeating: 0, count: TileShape.nr * TileShape.kc)
    var out = [Float](repeating: .nan, count: (m + 1) * ldo)
    withRows(floatRows(e, first: 0, count: m)) { rows in
        tileProduct(eRows: rows, m: m, cRows: c.raw, cType: c.type, n: n, d: d, out: &out, ldo: ldo, panel: &panel)
    }
    return out
}

extension Array where Element == [Double] {
    /// Calls body with pointers to every row (valid only inside body).
    fileprivate func withRowPointers<R>(_ body: (UnsafePointer<UnsafePointer<Double>>) -> R) -> R {
        let rows = UnsafeMutablePointer<UnsafeMutablePointer<Double>>.allocate(capacity: Swift.max(1, count))
        defer {
            for i in 0..<count { rows[i].deallocate() }
            rows.deallocate()
        }
        for i in 0..<count {
            rows[i] = .allocate(capacity: Swift.max(1, self[i].count))
            for k in 0..<self[i].count { rows[i][k] = self[i][k] }
        }
        return rows.withMemoryRebound(to: UnsafePointer<Double>.self, capacity: Swift.max(1, count)) { body($0) }
    }
}

// MARK: - The AMX kernel

private let skipAMXMessage = "this CPU (or its OS) lacks AMX-BF16 with the tile state: the AMX kernel is not "
    + "tested here (Benchmarks/amx/amx_harness.c checks the same properties on a machine with AMX); its "
    + "emulation is (testAMXEmulation*)"

/// The AMX kernel's tile out (m x n, row stride ldo, rows ≥ m and columns ≥ n pre-filled with
/// a NaN sentinel) for e's rows eFirst ..< eFirst + m and c's rows cFirst ..< cFirst + n.
private func amxTile(_ e: BF16Rows, eFirst: Int = 0, m: Int, _ c: BF16Rows, cFirst: Int = 0, n: Int, ldo: Int,
                     extraRows: Int = 1, mask: [Bool]? = nil) -> [Float] {
    let d = e.d
    let eRaw = Array(e.raw[eFirst ..< eFirst + m]), cRaw = Array(c.raw[cFirst ..< cFirst + n])
    var blocks = [UInt32](repeating: 0xDEAD_BEEF, count: amxRowBlockWords(m: m, d: d))
    var scratch = [UInt32](repeating: 0x7FC0_0001, count: AMXTileShape.scratchWords)  // NaN garbage
    var out = [Float](repeating: .nan, count: (m + extraRows) * ldo)
    packRowsAMX(eRaw, m: m, d: d, into: &blocks)
    if let mask {
        tileProductAMX(eBlocks: blocks, m: m, cRows: cRaw, n: n, d: d, out: &out, ldo: ldo, scratch: &scratch,
                       panelMask: mask)
    } else {
        tileProductAMX(eBlocks: blocks, m: m, cRows: cRaw, n: n, d: d, out: &out, ldo: ldo, scratch: &scratch)
    }
    return out
}

/// The AMX kernel (AVX512Kernels.swift, C target CCEAVX512) against the Float64 reference
/// (the budget above: any order of Float32 additions stays within it) and bit for bit against
/// `amxDotEmulated`, on shapes around its 16- and 32-row/column tiles; the 32-row panel mask,
/// position independence of the bits, the layout and zero padding, no read past a row's last
/// element. Skipped without AMX; the emulation's tests run everywhere.
final class AMXKernelTests: XCTestCase {
    static let depths = [1, 2, 3, 17, 31, 32, 33, 255, 256, 257, 1023, 2048]

    /// Shapes: m and n on both sides of 16, 32 and 48, and larger tiles.
    static func shapes(_ d: Int) -> [(Int, Int)] {
        let ms = [1, 2, 5, 13, 15, 16, 17, 31, 32, 33, 47, 49, 65, 150, 258]
        let ns = [1, 3, 9, 16, 17, 31, 32, 33, 40, 47, 64, 65, 100, 37, 5]
        return ms.enumerated().map { idx, m in
            let n = ns[(idx + d) % ns.count]
            return (m, m * n * d > 20_000_000 ? 37 : n)
        } + [(150, 256)]
    }

    func testAMXTileMatchesReferenceAndEmulation() throws {
        try XCTSkipUnless(hasAMX, skipAMXMessage)
        var worst = 0.0
        for d in Self.depths {
            for (idx, (m, n)) in Self.shapes(d).enumerated() {
                let e = BF16Rows(count: m, d: d, seed: UInt64(5000 * d + 2 * idx), wide: idx % 3 == 1)
                let c = BF16Rows(count: n, d: d, seed: UInt64(5000 * d + 2 * idx + 1))
                let ldo = n + 3
                let out = amxTile(e, m: m, c, n: n, ldo: ldo)
                let ed = e.doubles(), cd = c.doubles()
                var ref = [Double](repeating: 0, count: m * n)
                ed.withRowPointers { ap in
                    cd.withRowPointers { bp in
                        tileProductReference(a: ap, m: m, b: bp, n: n, k: d, out: &ref, ldo: n)
                    }
                }
                var mismatches = 0
                for i in 0..<m {
                    for j in 0..<n {
                        let got = out[i * ldo + j]
                        var absSum = 0.0
                        for k in 0..<d { absSum += abs(ed[i][k] * cd[j][k]) }
                        let err = abs(Double(got) - ref[i * n + j])
                        let budget = 2 * Double(d) * 0x1p-24 * absSum + 2 * Double(d) * 0x1p-126
                        XCTAssertLessThanOrEqual(err, budget, "m=\(m) n=\(n) d=\(d) (\(i),\(j))")
                        if absSum > 0 { worst = max(worst, err / (Double(d) * 0x1p-24 * absSum)) }
                        if amxDotEmulated(e.row(i), c.row(j), d).bitPattern != got.bitPattern { mismatches += 1 }
                    }
                    for j in n..<ldo { XCTAssertTrue(out[i * ldo + j].isNaN, "column \(j) ≥ n written") }
                }
                for j in 0..<ldo { XCTAssertTrue(out[m * ldo + j].isNaN, "row m written") }
                XCTAssertEqual(mismatches, 0, "kernel vs amxDotEmulated, bitwise, m=\(m) n=\(n) d=\(d)")
            }
        }
        print("AMX kernel: max |out − ref| / (d·2^-24·Σ|ab|) = \(worst) (budget 2)")
    }

    func testAMXPanelMaskSkipsPanelsAndLeavesRows() throws {
        try XCTSkipUnless(hasAMX, skipAMXMessage)
        let mr = AMXTileShape.mr
        let m = 3 * mr + 5, n = 37, ldo = 40
        let mask = [true, false, false, true]
        assertPanelMask(mr: mr) { amxTile($0, m: $1, $2, n: $3, ldo: $4, mask: $5) }
        // d = 0: empty sums, zeros where the mask allows.
        let e0 = BF16Rows(count: m, d: 0, seed: 1), c0 = BF16Rows(count: n, d: 0, seed: 2)
        let zeros = amxTile(e0, m: m, c0, n: n, ldo: ldo, mask: mask)
        for i in 0..<m {
            for j in 0..<ldo {
                if mask[i / mr] && j < n { XCTAssertEqual(zeros[i * ldo + j].bitPattern, 0) } else {
                    XCTAssertTrue(zeros[i * ldo + j].isNaN)
                }
            }
        }
    }

    /// An element's bits do not depend on its row or column position in the tile (whole or
    /// edge block, first or second 16-row tile), on m, n or the kernel's KC chunks (d = 2048
    /// spans one, d = 2100 two), and the emulation gives them.
    func testAMXBitsIndependentOfPositionAndShape() throws {
        try XCTSkipUnless(hasAMX, skipAMXMessage)
        for d in [17, 1023, 2100] {
            let m = 150, n = 256
            let e = BF16Rows(count: m, d: d, seed: 21, wide: true), c = BF16Rows(count: n, d: d, seed: 22)
            let full = amxTile(e, m: m, c, n: n, ldo: n)
            for (i0, mm, j0, nn) in [(5, 17, 3, 29), (0, 1, 255, 1), (149, 1, 0, 256), (13, 13, 40, 33),
                                     (100, 50, 200, 56), (31, 40, 31, 40), (1, 32, 1, 32), (16, 16, 16, 16)] {
                let sub = amxTile(e, eFirst: i0, m: mm, c, cFirst: j0, n: nn, ldo: nn)
                for i in 0..<mm {
                    for j in 0..<nn {
                        XCTAssertEqual(sub[i * nn + j].bitPattern, full[(i0 + i) * n + j0 + j].bitPattern,
                                       "d=\(d): element (\(i0 + i),\(j0 + j)) at (\(i),\(j)) of a \(mm)x\(nn) tile")
                    }
                }
            }
            for i in stride(from: 0, to: m, by: 7) {
                let j = (11 * i + 5) % n
                XCTAssertEqual(amxDotEmulated(e.row(i), c.row(j), d).bitPattern, full[i * n + j].bitPattern,
                               "amxDotEmulated d=\(d) (\(i),\(j))")
            }
        }
    }

    /// The packed E blocks hold the documented layout, with zeros for rows beyond m and
    /// elements beyond d; no operand is read past its last element (rows end at a guard page).
    func testAMXZeroPaddingAndLayout() throws {
        try XCTSkipUnless(hasAMX, skipAMXMessage)
        for d in [1, 3, 17, 31, 32, 33, 255, 256, 1023] {
            let m = 32 + 5, chunks = (d + 31) / 32
            let e = BF16Rows(count: m, d: d, seed: UInt64(d), guardPage: true)
            let blocks = [UInt32](unsafeUninitializedCapacity: amxRowBlockWords(m: m, d: d)) { buf, count in
                for w in 0..<buf.count { buf[w] = 0xDEAD_BEEF }
                packRowsAMX(e.raw, m: m, d: d, into: buf.baseAddress!)
                count = buf.count
            }
            XCTAssertEqual(blocks.count, 64 * chunks * 16)
            for g in 0..<4 {
                for cc in 0..<chunks {
                    for r in 0..<16 {
                        for t in 0..<16 {
                            let i = 16 * g + r, q = 16 * cc + t
                            let lo: UInt16 = i < m && 2 * q < d ? e.bits[i * d + 2 * q] : 0
                            let hi: UInt16 = i < m && 2 * q + 1 < d ? e.bits[i * d + 2 * q + 1] : 0
                            XCTAssertEqual(blocks[(g * chunks + cc) * 256 + r * 16 + t], UInt32(lo) | UInt32(hi) << 16,
                                           "d=\(d) group \(g) chunk \(cc) row \(r) pair \(t)")
                        }
                    }
                }
            }
            // The last C row and the last E row end right before the guard page.
            let c = BF16Rows(count: 33, d: d, seed: UInt64(d + 1), guardPage: true)
            let out = amxTile(e, m: m, c, n: 33, ldo: 33)
            for i in [0, m - 1] {
                for j in [0, 32] {
                    XCTAssertEqual(out[i * 33 + j].bitPattern, amxDotEmulated(e.row(i), c.row(j), d).bitPattern)
                }
            }
        }
    }

    // MARK: - The emulation, on every CPU

    /// `amxDotEmulated` gives what tdpbf16ps gave on a Xeon 6 (model 207) for inputs that
    /// tell summation orders and flushes apart (Benchmarks/amx/amx_harness.c's special cases,
    /// each as a dot product: a first 32-element chunk sets the running sum where needed).
    func testAMXEmulationReproducesMeasuredCases() {
        func p2(_ e: Int, _ negative: Bool = false) -> UInt16 { (negative ? 0x8000 : 0) | UInt16(e + 127) << 7 }
        let one: UInt16 = 0x3F80
        // (what, a, b, the measured result); element k of the second chunk is index 32 + k.
        typealias Case = (String, [Int: (UInt16, UInt16)], Float)
        let cases: [Case] = [
            ("2^30 + 1 − 2^30: even chain 2^30 − 2^30, odd chain 1",
             [0: (p2(15), p2(15)), 1: (one, one), 2: (p2(15, true), p2(15))], 1),
            ("1 + 2^30 − 2^30: even chain 1 − 2^30 rounds to −2^30",
             [0: (one, one), 1: (p2(15), p2(15)), 2: (p2(15, true), p2(15))], 0),
            ("running 2^30, then 1 and −2^30 in one pair: (1 − 2^30) rounded before the add",
             [0: (p2(15), p2(15)), 32: (one, one), 33: (p2(15, true), p2(15))], 0),
            ("running 1, then four products 2^-25: summed before the add",
             [0: (one, one), 32: (p2(-12), p2(-13)), 33: (p2(-12), p2(-13)), 34: (p2(-12), p2(-13)),
              35: (p2(-12), p2(-13))], 1 + 0x1p-23),
            ("running 1, + 2^-24: a tie, to even", [0: (one, one), 32: (p2(-12), p2(-12))], 1),
            ("running 1 + 2^-23, + 2^-24: a tie, to even",
             [0: (one, one), 1: (p2(-12), p2(-11)), 32: (p2(-12), p2(-12))], 1 + 0x1p-22),
            ("running 1, + 2^-24·(1 + 2^-7): above the tie",
             [0: (one, one), 32: (0x3F81 - (12 << 7), p2(-12))], 1 + 0x1p-23),
            ("bf16 subnormal 0x0001 x 2^100: read as zero", [0: (0x0001, p2(100))], 0),
            ("2^-70 x 2^-70 = 2^-140: flushed", [0: (p2(-70), p2(-70))], 0),
            ("running 2^-120, + 2^-140: the chunk's sum is flushed",
             [0: (p2(-60), p2(-60)), 32: (p2(-70), p2(-70))], 0x1p-120),
            ("running 2^-125, − 1.5·2^-126: the subnormal result flushed",
             [0: (p2(-62), p2(-63)), 32: (0xA040, p2(-63))], 0),
            ("2^127 x 2: overflow", [0: (p2(127), p2(1))], .infinity),
        ]
        for (what, elements, expected) in cases {
            let d = (elements.keys.max() ?? 0) < 32 ? 32 : 64
            var a = [UInt16](repeating: 0, count: d), b = [UInt16](repeating: 0, count: d)
            for (k, (x, y)) in elements { a[k] = x; b[k] = y }
            let got = amxDotEmulated(a, b, d)
            XCTAssertEqual(got.bitPattern, expected.bitPattern, "\(what): \(got) (measured \(expected))")
        }
    }

    func testAMXEmulationWithinReferenceBudget() {
        for d in [1, 3, 32, 33, 257, 1023] {
            let e = BF16Rows(count: 9, d: d, seed: UInt64(d), wide: true), c = BF16Rows(count: 9, d: d, seed: UInt64(d + 9))
            let ed = e.doubles(), cd = c.doubles()
            for i in 0..<9 {
                var ref = 0.0, absSum = 0.0
                for k in 0..<d { ref += ed[i][k] * cd[i][k]; absSum += abs(ed[i][k] * cd[i][k]) }
                let got = Double(amxDotEmulated(e.row(i), c.row(i), d))
                XCTAssertLessThanOrEqual(abs(got - ref), 2 * Double(d) * 0x1p-24 * absSum, "d=\(d) row \(i)")
            }
        }
    }

    func testAMXKernelSelection() {
        XCTAssertFalse(TileKernel.amxBF16.runs(.float32))
        XCTAssertFalse(TileKernel.amxBF16.runs(.float16))
        XCTAssertEqual(TileKernel.amxBF16.runs(.bfloat16), hasAMX)
        if hasAMX && getenv("CCE_KERNEL") == nil {
            XCTAssertEqual(TileKernel.forStorage(.bfloat16), .amxBF16, "AMX is the default for bf16 where it runs")
        }
        if !hasAMX { XCTAssertNotEqual(TileKernel.forStorage(.bfloat16), .amxBF16) }
        print("AMX: \(hasAMX); bf16 kernel: \(TileKernel.forStorage(.bfloat16).name)")
    }
}
