// AVX-512 tile products, chosen at run time, with `tileProduct` (TileProduct6x16.swift) kept
// as the portable path. The kernels live in the C target CCEAVX512, the one place the engine
// leaves Swift: Swift can neither spell AVX512_BF16's `vdpbf16ps` nor enable a CPU feature
// for one function (cce_avx512.c says why in full).
//
// Two kernels, same contract as `tileProduct` with Float32 outputs: out[i·ldo + j] =
// Σ_k e_i[k]·c_j[k] for i < m, j < n; rows ≥ m and columns ≥ n are never read or written;
// with a panel mask, MR-row panel p with panelMask[p] == false is skipped and its out rows
// are left as they were. The FMA kernel has MR = 12 (its mask's entry p covers the portable
// kernel's 6-row panels 2p and 2p + 1), the bf16 kernel MR = 32 (as AMX): ⌈m / MR⌉ entries.
//
// - bf16 dot product (`tileProductBF16`, CPUs with AVX512_BF16): bf16 inputs, pairs of
//   elements multiplied by vdpbf16ps. Layouts (one UInt32 word = one pair of bf16 elements,
//   k = 2q in the low half and 2q + 1 in the high half; pairs(d) = ⌈d / 2⌉, an odd d padded
//   with a zero high half):
//   E panels (`packRowPanelsBF16`, once per token block): ⌈m / 32⌉ panels of 32 rows, panel
//   p at word p·32·pairs(d), word q·32 + r = row 32p + r's pair q; rows ≥ m zero;
//   `bf16RowPanelWords(m:d:)` words. C rows are read in place, a pair (one word) at a time
//   broadcast to 16 lanes: nothing of C is packed.
//   Summation order: each output is one chain over the pairs q = 0 ..< pairs(d), from +0:
//   s ← s + e[2q+1]·c[2q+1], then s ← s + e[2q]·c[2q], one Float32 rounding each (the
//   products are exact), subnormal inputs read as zero and subnormal sums flushed to zero
//   (the instruction's fixed behaviour). This order is not the portable kernel's: the two
//   kernels' logits differ in the last bits, both within the Float32 budget.
//   `dotsBF16` gives the same bits for single dot products (the forward's target logit) and
//   `bf16DotEmulated` reproduces them in portable Swift.
//
// - Float32 FMA on 512-bit vectors (`tileProductAVX512`, CPUs with AVX512F/BW/VL): E rows
//   in Float32 read in place through a row table (as the portable kernel reads them), C
//   rows of any storage type converted to Float32 exactly while packed into a scratch of
//   `AVX512TileShape.columnPanelFloats` (32 x 256 floats = 32 KiB); 16-lane FMAs.
//   Summation order: one FMA chain over k = 0 ..< d from +0, the portable kernel's order:
//   its outputs are bit for bit those of `tileProduct` (and `sequentialDot`).
//
// In both an output's bits depend only on its two rows and d (the FMA kernel's KC chunks
// continue a chain through the stored Float32 partial): not on its place in the tile, m, n,
// the chunking, the mask or the thread.
//
// - AMX tile products (`tileProductAMX`, CPUs with AMX-TILE and AMX-BF16 that the OS lets
//   this process use): bf16 inputs, 32 x 32 output blocks of four 16 x 16 Float32 tiles,
//   tdpbf16ps over 32-element chunks of k. E rows packed once per token block
//   (`packRowsAMX`: 16-row x 32-element tiles, rows padded to a multiple of 32, k to a
//   multiple of 32, `amxRowBlockWords(m:d:)` words); C rows transposed per 32 columns into
//   the bf16 kernel's pair panel (AMX's B layout) inside a scratch of
//   `AMXTileShape.scratchWords` (128 KiB of panel + a 4 KiB edge block). Panel masks per
//   32 rows. Summation order (measured bit for bit on a Xeon 6, model 207): per 32-element
//   chunk, the 16 even-element and the 16 odd-element products are each summed in order in
//   Float32 from +0, then added (one rounding) and added to the running Float32 sum (one
//   rounding); bf16 inputs and subnormal sums are read and written as zero.
//   `amxDotEmulated` reproduces it in portable Swift.
//
// Which kernel (`TileKernel.forStorage`): AMX for bf16 storage wherever it runs (measured on
// a Xeon 6, model 207, one thread, m = 258, n = 256, d = 1024: about 1 TFLOP/s against 60
// GFLOP/s for the 512-bit FMA kernel and 85 for vdpbf16ps). Without AMX, on an Intel Xeon
// (Sapphire/Emerald Rapids class), vdpbf16ps retires one 512-bit instruction per two
// cycles, the same products per second as 256-bit FMAs and half those of 512-bit FMAs:
// there the FMA kernel is the fast one for bf16 too. AMD Zen 4 runs 512-bit FMAs at the
// 256-bit rate, so only the bf16 dot product can double it: bf16 storage uses it on AMD
// CPUs. CCE_KERNEL=portable, avx512fma, avx512bf16 or amx in the environment overrides the
// choice (when the CPU can run it).

import CCEAVX512

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Register block and panel sizes of the bf16 dot-product kernel.
public enum BF16TileShape {
    /// E rows (tokens) per register block and per panel-mask entry: two 16-lane vectors.
    public static let mr = Int(CCE_BF16_MR)
    /// C rows per register block, each read in place a pair at a time.
    public static let nr = Int(CCE_BF16_NR)
}

/// Register block and panel sizes of the 512-bit Float32 FMA kernel.
public enum AVX512TileShape {
    /// E rows per register block and per panel-mask entry.
    public static let mr = Int(CCE_FMA_MR)
    /// C rows per packed panel (two 16-lane vectors).
    public static let nr = Int(CCE_FMA_NR)
    /// Elements of k per packed C panel.
    public static let kc = Int(CCE_FMA_KC)
    /// Floats of the C-panel scratch `tileProductAVX512` needs.
    public static let columnPanelFloats = Int(cce_fma_column_panel_floats())
}

/// Block and scratch sizes of the AMX kernel.
public enum AMXTileShape {
    /// E rows per output block and per panel-mask entry (two 16-row tiles).
    public static let mr = Int(CCE_AMX_MR)
    /// C rows per packed panel (two 16-column tiles).
    public static let nr = Int(CCE_AMX_NR)
    /// Elements of k per packed C panel (1024 pairs).
    public static let kc = 2 * Int(CCE_AMX_KCP)
    /// UInt32 words of the scratch `tileProductAMX` needs: the C panel (nr x kc/2 words,
    /// 128 KiB) and a 32 x 32 Float32 block for the edges.
    public static let scratchWords = Int(cce_amx_scratch_words())
    /// The largest k of `rankUpdateAMX` (the backward's vocabulary block is at most 256).
    public static let rankMaxK = Int(CCE_AMX_RANK_KMAX)
    /// UInt32 words of the scratch `rankUpdateAMX` needs (148 KiB).
    public static let rankScratchWords = Int(cce_amx_rank_scratch_words())
}

/// Whether this CPU and OS can run the 512-bit FMA kernel: AVX512F, AVX512BW and AVX512VL by
/// cpuid, and the opmask and ZMM state enabled by the OS (xgetbv). Detected once.
public let hasAVX512: Bool = cce_avx512_supported() != 0

/// Whether this CPU and OS can run the bf16 dot-product kernel: `hasAVX512` and AVX512_BF16
/// (cpuid leaf 7 subleaf 1, EAX bit 5). Detected once.
public let hasBF16DotProduct: Bool = cce_bf16_supported() != 0

/// Whether this CPU and OS can run the AMX kernel: AMX-TILE and AMX-BF16 by cpuid (palette 1
/// of 8 tiles of 16 x 64 bytes), `hasAVX512` (the packers), the tile state enabled by the OS
/// (XCR0 bits 17 and 18) and, on Linux, granted to this process (arch_prctl
/// ARCH_REQ_XCOMP_PERM for XTILEDATA, asked once, for every thread). Detected once.
public let hasAMX: Bool = cce_amx_supported() != 0

/// The tile kernels.
public enum TileKernel: String, Sendable, CaseIterable {
    /// The Swift SIMD8 Float32-FMA kernel (`tileProduct`), on every CPU.
    case portable = "swift-simd8-fma-6x16"
    /// The 512-bit Float32 FMA kernel (`tileProductAVX512`): the portable kernel's bits.
    case avx512FMA = "avx512-fma-12x32"
    /// The AVX512_BF16 `vdpbf16ps` kernel (`tileProductBF16`), for bf16 storage only.
    case avx512BF16 = "avx512bf16-dp-32x12"
    /// The AMX-BF16 tile kernel (`tileProductAMX`), for bf16 storage only.
    case amxBF16 = "amx-bf16-32x32"

    /// The name reports print.
    public var name: String { rawValue }

    /// Token rows per register block, and per panel-mask entry: the tile plan makes the
    /// token block a multiple of it, so that no block ends in a part-filled group.
    public var rowGroup: Int {
        switch self {
        case .portable: return TileShape.mr
        case .avx512FMA: return AVX512TileShape.mr
        case .avx512BF16: return BF16TileShape.mr
        case .amxBF16: return AMXTileShape.mr
        }
    }

    /// Bytes an E element takes in the token block as the kernel holds it, where that is not
    /// the compute type's (TilePlan's NB): the dot-product kernel's bf16 pairs. (AMX holds
    /// bf16 tiles too; its NB was measured with the Float32 size and is left so.)
    public var tokenBytes: Int? { self == .avx512BF16 ? 2 : nil }

    /// Whether this machine can run the kernel on inputs stored as `type`.
    public func runs(_ type: ElementType) -> Bool {
        switch self {
        case .portable: return true
        case .avx512FMA: return hasAVX512
        case .avx512BF16: return hasBF16DotProduct && type == .bfloat16
        case .amxBF16: return hasAMX && type == .bfloat16
        }
    }

    /// The kernel for inputs stored as `type` on this machine (decided once per type): the
    /// environment's CCE_KERNEL (portable, avx512fma, avx512bf16 or amx) when this machine
    /// can run it; else for bf16 AMX where it runs, then the dot product on AMD CPUs that have
    /// it, and otherwise the 512-bit FMA kernel where AVX-512 runs, else the portable kernel.
    public static func forStorage(_ type: ElementType) -> TileKernel {
        switch type {
        case .float32: return chosen.f32
        case .float16: return chosen.f16
        case .bfloat16: return chosen.bf16
        }
    }

    /// The kernel for BFloat16 storage: `forStorage(.bfloat16)`.
    public static var forBFloat16: TileKernel { chosen.bf16 }

    /// The override CCE_KERNEL names, if any.
    static let requested: TileKernel? = {
        guard let v = getenv("CCE_KERNEL") else { return nil }
        switch String(cString: v).lowercased() {
        case "portable", "swift": return .portable
        case "avx512fma", "avx512-fma", "fma": return .avx512FMA
        case "avx512bf16", "avx512-bf16", "bf16": return .avx512BF16
        case "amx", "amx-bf16", "amxbf16": return .amxBF16
        default: return nil
        }
    }()

    static func choose(_ type: ElementType) -> TileKernel {
        if let r = requested, r.runs(type) { return r }
        if type == .bfloat16 && hasAMX { return .amxBF16 }
        if type == .bfloat16 && hasBF16DotProduct && cce_cpu_is_amd() != 0 { return .avx512BF16 }
        return hasAVX512 ? .avx512FMA : .portable
    }

    static let chosen = (f32: choose(.float32), f16: choose(.float16), bf16: choose(.bfloat16))
}

@inlinable @inline(__always)
func cStorage(_ type: ElementType) -> Int32 {
    switch type {
    case .float32: return Int32(CCE_STORAGE_F32)
    case .float16: return Int32(CCE_STORAGE_F16)
    case .bfloat16: return Int32(CCE_STORAGE_BF16)
    }
}

@inlinable @inline(__always)
func bf16Rows(_ rows: UnsafePointer<UnsafeRawPointer>) -> UnsafePointer<UnsafePointer<UInt16>?> {
    UnsafeRawPointer(rows).assumingMemoryBound(to: UnsafePointer<UInt16>?.self)
}

@inlinable @inline(__always)
func rawRows(_ rows: UnsafePointer<UnsafeRawPointer>) -> UnsafePointer<UnsafeRawPointer?> {
    UnsafeRawPointer(rows).assumingMemoryBound(to: UnsafeRawPointer?.self)
}

// MARK: - The bf16 dot-product kernel

/// UInt32 words of the bf16 kernel's E panels for m rows of d elements: ⌈m / 32⌉·32·⌈d / 2⌉.
@inlinable
public func bf16RowPanelWords(m: Int, d: Int) -> Int { Int(cce_bf16_row_panel_words(m, d)) }

/// Packs rows[0 ..< m] (BFloat16 bits, d elements each) into 32-row panels of pairs at dst
/// (`bf16RowPanelWords(m:d:)` words), zero-padding rows beyond m and an odd d.
/// Requires `hasBF16DotProduct`.
@inlinable
public func packRowPanelsBF16(_ rows: UnsafePointer<UnsafeRawPointer>, m: Int, d: Int,
                              into dst: UnsafeMutablePointer<UInt32>) {
    precondition(hasBF16DotProduct, "packRowPanelsBF16 needs AVX512_BF16")
    cce_bf16_pack_rows(bf16Rows(rows), m, d, dst)
}

/// out[i·ldo + j] = Σ_k e_i[k]·c_j[k] for i < m, j < n, from BFloat16 rows, in Float32, by
/// vdpbf16ps.
/// - ePanels: the E rows packed by `packRowPanelsBF16` (same d).
/// - cRows: raw pointers to the n C rows (BFloat16 bits, d elements each; never read past).
/// - panelMask: when given, 32-row panels p with panelMask[p] == false are not computed
///   (their out rows are left as they were).
/// - lookahead: how many rows follow cRows[n − 1] (at most `BF16TileShape.nr`: the next
///   call's first), prefetched meanwhile.
/// Requires `hasBF16DotProduct`.
@inlinable
public func tileProductBF16(ePanels: UnsafePointer<UInt32>, m: Int, cRows: UnsafePointer<UnsafeRawPointer>, n: Int,
                            d: Int, out: UnsafeMutablePointer<Float>, ldo: Int,
                            panelMask: UnsafePointer<Bool>? = nil, lookahead: Int = 0) {
    precondition(hasBF16DotProduct, "tileProductBF16 needs AVX512_BF16")
    cce_bf16_tile_product(ePanels, m, bf16Rows(cRows), n, d, out, ldo, panelMask, lookahead)
}

/// out[i] = Σ_k a_i[k]·b_i[k] for i < count (BFloat16 rows of d elements), bit for bit as
/// `tileProductBF16` computes the same pair of rows. Requires `hasBF16DotProduct`.
@inlinable
public func dotsBF16(_ a: UnsafePointer<UnsafeRawPointer>, _ b: UnsafePointer<UnsafeRawPointer>, count: Int, d: Int,
                     out: UnsafeMutablePointer<Float>) {
    precondition(hasBF16DotProduct, "dotsBF16 needs AVX512_BF16")
    cce_bf16_dots(bf16Rows(a), bf16Rows(b), count, d, out)
}

/// The bf16 kernel's dot product in portable Swift: the same chain over pairs (high element
/// first), Float32 FMAs of exact products, subnormal inputs read as zero and subnormal sums
/// flushed to zero. Bit for bit what vdpbf16ps gives (measured); slow: a test reference.
public func bf16DotEmulated(_ a: UnsafePointer<UInt16>, _ b: UnsafePointer<UInt16>, _ d: Int) -> Float {
    @inline(__always) func input(_ bits: UInt16) -> Float {
        bits & 0x7F80 == 0 ? Float(bitPattern: UInt32(bits & 0x8000) << 16) : floatFromBFloat16Bits(bits)
    }
    @inline(__always) func flush(_ x: Float) -> Float { x.isSubnormal ? Float(signOf: x, magnitudeOf: 0) : x }
    var s: Float = 0
    var k = 0
    while k + 1 < d {
        s = flush(s.addingProduct(input(a[k + 1]), input(b[k + 1])))
        s = flush(s.addingProduct(input(a[k]), input(b[k])))
        k += 2
    }
    if k < d {
        s = flush(s + 0)  // the padded high half: +0·+0
        s = flush(s.addingProduct(input(a[k]), input(b[k])))
    }
    return s
}

// MARK: - The AMX kernel

/// UInt32 words of the AMX kernel's E blocks for m rows of d elements:
/// ⌈m / 32⌉·32 · ⌈d / 32⌉·16.
@inlinable
public func amxRowBlockWords(m: Int, d: Int) -> Int { Int(cce_amx_row_block_words(m, d)) }

/// Packs rows[0 ..< m] (BFloat16 bits, d elements each, never read past element d − 1) into
/// the AMX kernel's E blocks at dst (`amxRowBlockWords(m:d:)` words): tile (g, c) of rows
/// 16g ..< 16g + 16 and elements 32c ..< 32c + 32 at word (g·⌈d/32⌉ + c)·256, word r·16 + t
/// = row 16g + r's pair 16c + t (element 2t in the low half); rows beyond m and elements
/// beyond d zero. Requires `hasAVX512` (it runs wherever `hasAMX` does).
@inlinable
public func packRowsAMX(_ rows: UnsafePointer<UnsafeRawPointer>, m: Int, d: Int,
                        into dst: UnsafeMutablePointer<UInt32>) {
    precondition(hasAVX512, "packRowsAMX needs AVX-512")
    cce_amx_pack_rows(bf16Rows(rows), m, d, dst)
}

/// out[i·ldo + j] = Σ_k e_i[k]·c_j[k] for i < m, j < n, from BFloat16 rows, in Float32, by
/// AMX tile products (tdpbf16ps); rows ≥ m and columns ≥ n of out are never read or written.
/// - eBlocks: the E rows packed by `packRowsAMX` (same m and d).
/// - cRows: raw pointers to the n C rows (BFloat16 bits, d elements each; never read past).
/// - scratch: `AMXTileShape.scratchWords` words (64-byte aligned is best), overwritten.
/// - panelMask: when given, ⌈m / 32⌉ flags: 32-row group p with panelMask[p] == false is not
///   computed (its out rows are left as they were).
/// Each call loads the tile configuration and releases the tiles before it returns.
/// Requires `hasAMX`.
@inlinable
public func tileProductAMX(eBlocks: UnsafePointer<UInt32>, m: Int, cRows: UnsafePointer<UnsafeRawPointer>, n: Int,
                           d: Int, out: UnsafeMutablePointer<Float>, ldo: Int, scratch: UnsafeMutablePointer<UInt32>,
                           panelMask: UnsafePointer<Bool>? = nil, lookahead: Int = 0) {
    precondition(hasAMX, "tileProductAMX needs AMX-BF16")
    cce_amx_tile_product(eBlocks, m, bf16Rows(cRows), n, d, out, ldo, scratch, panelMask, lookahead)
}

/// The AMX kernel's dot product in portable Swift, bit for bit what tdpbf16ps gives (measured
/// on a Xeon 6, model 207: every output of the harness's tiles, and the special cases of
/// `AMXKernelTests`): over 32-element chunks of k (zero-padded), from +0, acc ← acc + (E + O)
/// where E and O are the chunk's even-element and odd-element products each summed in order
/// in Float32 from +0; every step one rounding to nearest even; subnormal bf16 inputs read
/// as zero and subnormal results flushed to zero. Slow: a test reference.
public func amxDotEmulated(_ a: UnsafePointer<UInt16>, _ b: UnsafePointer<UInt16>, _ d: Int) -> Float {
    var acc: Float = 0
    var k0 = 0
    while k0 < d {
        acc = amxStepEmulated(acc, count: min(32, d - k0)) { a[k0 + $0] } b: { b[k0 + $0] }
        k0 += 32
    }
    return acc
}

/// One tdpbf16ps for one output, in portable Swift (`amxDotEmulated`'s step): acc + (E + O)
/// over a 32-element chunk whose first `count` elements have the bf16 bits a(k) and b(k) and
/// whose rest is zero padding (multiplied as zeros, as the kernels' padded tiles are).
@inline(__always)
func amxStepEmulated(_ acc: Float, count: Int, a: (Int) -> UInt16, b: (Int) -> UInt16) -> Float {
    @inline(__always) func input(_ bits: UInt16) -> Float {
        bits & 0x7F80 == 0 ? Float(bitPattern: UInt32(bits & 0x8000) << 16) : floatFromBFloat16Bits(bits)
    }
    @inline(__always) func element(_ f: (Int) -> UInt16, _ k: Int) -> Float { k < count ? input(f(k)) : 0 }
    @inline(__always) func flush(_ x: Float) -> Float { x.isSubnormal ? Float(signOf: x, magnitudeOf: 0) : x }
    var even: Float = 0, odd: Float = 0
    for q in 0..<16 {
        even = flush(even.addingProduct(element(a, 2 * q), element(b, 2 * q)))
        odd = flush(odd.addingProduct(element(a, 2 * q + 1), element(b, 2 * q + 1)))
    }
    return flush(flush(acc) + flush(even + odd))
}

/// The AMX rank update (the backward's dE product where C is stored as BFloat16):
/// `rankUpdateAVX512`'s contract, out_r[j] (+)= Σ_{q<k} a[r·ars + q·aks]·b_q[j] for r < m,
/// j < width, with the b rows stored as BFloat16 and k ≤ `AMXTileShape.rankMaxK`. Each A
/// value is split into bf16 hi + lo (hi + lo = a to within 2^-17·|a|) and multiplied by
/// tdpbf16ps; an element's bits depend on its A row, the b rows, k and the starting sum
/// only (`amxRankEmulated` gives them). scratch: `AMXTileShape.rankScratchWords` words.
/// Requires `hasAMX`.
@inlinable
public func rankUpdateAMX(out: UnsafePointer<UnsafeMutablePointer<Float>>, m: Int, a: UnsafePointer<Float>,
                          ars: Int, aks: Int, b: UnsafePointer<UnsafeRawPointer>, k: Int, width: Int,
                          blocked: Bool, scratch: UnsafeMutablePointer<UInt32>) {
    precondition(hasAMX && k <= AMXTileShape.rankMaxK, "rankUpdateAMX needs AMX-BF16 and k ≤ \(AMXTileShape.rankMaxK)")
    out.withMemoryRebound(to: UnsafeMutablePointer<Float>?.self, capacity: m) { o in
        cce_amx_rank_update(o, m, a, ars, aks, bf16Rows(b), k, width, blocked ? 1 : 0, scratch)
    }
}

/// One element of `rankUpdateAMX` in portable Swift, bit for bit (the model of
/// `amxDotEmulated`, per 32-element chunk of q the hi products then the lo ones): from
/// `start`, x_q = A(q) for q < k and b_q = the q-th bf16 value. A test reference.
public func amxRankEmulated(start: Float, a: [Float], b: [UInt16]) -> Float {
    precondition(a.count == b.count)
    let hi = a.map(bfloat16Bits), lo = zip(a, hi).map { bfloat16Bits($0 - floatFromBFloat16Bits($1)) }
    var acc = start
    var k0 = 0
    while k0 < a.count {
        let count = min(32, a.count - k0)
        for half in [hi, lo] { acc = amxStepEmulated(acc, count: count) { half[k0 + $0] } b: { b[k0 + $0] } }
        k0 += 32
    }
    return acc
}

// MARK: - The 512-bit LSE merge

/// `mergeTileRow` for Float32 with 512-bit exponentials: the same bits (the same operations
/// per lane and the same summation order). Requires `hasAVX512`.
@inlinable @discardableResult
public func mergeTileRowAVX512(_ z: UnsafePointer<Float>, count: Int,
                               into state: inout RunningLSE<Float>) -> TileRowSummary<Float> {
    precondition(hasAVX512, "mergeTileRowAVX512 needs AVX-512")
    var summary = TileRowSummary<Float>(max: 0, logSum: 0)
    cce_avx512_merge_row(z, count, &state.max, &state.sum, &state.comp, &summary.max, &summary.logSum)
    return summary
}

/// The positions q < count with z[q] ≥ threshold, in increasing order, into `positions`;
/// returns how many: by 16-lane compares where the CPU has AVX-512, else one by one.
@inlinable
public func selectAbove(_ z: UnsafePointer<Float>, count: Int, threshold: Float,
                        into positions: UnsafeMutablePointer<Int32>) -> Int {
    if hasAVX512 { return cce_avx512_select_above(z, count, threshold, positions) }
    var n = 0
    for q in 0..<count where z[q] >= threshold { positions[n] = Int32(q); n += 1 }
    return n
}

/// dC's entry filter over one row: out[q] = 0 where |x[q]| < t, else x[q] (NaN, and every
/// entry when t ≤ 0, copied as it is), for q < count; returns how many out[q] are not zero.
/// Float rows in vector lanes (`thresholdCopy8`), other scalars one by one.
@inlinable
public func thresholdCopy<S: KernelScalar>(_ x: UnsafePointer<S>, count: Int, below t: S,
                                           into out: UnsafeMutablePointer<S>) -> Int {
    if S.self == Float.self {
        return UnsafeRawPointer(x).withMemoryRebound(to: Float.self, capacity: count) { xf in
            UnsafeMutableRawPointer(out).withMemoryRebound(to: Float.self, capacity: count) { of in
                thresholdCopy8(xf, count: count, below: Float(t), into: of)
            }
        }
    }
    var n = 0
    for q in 0..<count {
        let v = x[q], y = abs(v) < t ? 0 : v
        out[q] = y
        n &+= y != 0 ? 1 : 0
    }
    return n
}

/// `thresholdCopy` for Float in eight lanes of the target CPU's vectors (a concrete SIMD8<Float>
/// lowers to vector compares, with AVX-512's mask registers where the CPU has them; the same
/// loop over the generic SIMD8<S> was compiled lane by lane): −t < x < t is |x| < t for every
/// x (a NaN compares false either way); a true lane of a comparison mask is −1, so subtracting
/// the masks counts the nonzero values.
public func thresholdCopy8(_ x: UnsafePointer<Float>, count: Int, below t: Float, into out: UnsafeMutablePointer<Float>) -> Int {
    let hi = SIMD8<Float>(repeating: t), lo = -hi, zero = SIMD8<Float>()
    var nonzero = SIMD8<Int32>()
    var q = 0
    while q + 8 <= count {
        let v = UnsafeRawPointer(x + q).loadUnaligned(as: SIMD8<Float>.self)
        let y = v.replacing(with: zero, where: (v .> lo) .& (v .< hi))
        UnsafeMutableRawPointer(out + q).storeBytes(of: y, as: SIMD8<Float>.self)
        nonzero &-= unsafeBitCast(y .!= zero, to: SIMD8<Int32>.self)
        q += 8
    }
    var n = Int(nonzero.wrappedSum())
    while q < count {
        let v = x[q], y = abs(v) < t ? 0 : v
        out[q] = y
        n &+= y != 0 ? 1 : 0
        q += 1
    }
    return n
}

/// `Exp.exp` of one value by the 512-bit merge's exponential (its bits). Requires `hasAVX512`.
public func expAVX512(_ x: Float) -> Float { cce_avx512_exp(x) }

// MARK: - The 512-bit Float32 FMA kernel

/// out[i·ldo + j] = Σ_k e_i[k]·c_j[k] for i < m, j < n, in Float32 by 512-bit FMAs, with
/// `tileProduct`'s bits.
/// - eRows: the m E rows in Float32 (d elements each), read in place.
/// - cRows: raw pointers to the n C rows, stored as `cType` (never read past element d − 1).
/// - panel: scratch of `AVX512TileShape.columnPanelFloats` floats (64-byte aligned is best).
/// - panelMask: when given, 12-row groups p with panelMask[p] == false are not computed.
/// Requires `hasAVX512`.
@inlinable
public func tileProductAVX512(eRows: UnsafePointer<UnsafePointer<Float>>, m: Int, cRows: UnsafePointer<UnsafeRawPointer>,
                              cType: ElementType, n: Int, d: Int, out: UnsafeMutablePointer<Float>, ldo: Int,
                              panel: UnsafeMutablePointer<Float>, panelMask: UnsafePointer<Bool>? = nil) {
    precondition(hasAVX512, "tileProductAVX512 needs AVX-512")
    eRows.withMemoryRebound(to: UnsafePointer<Float>?.self, capacity: m) { rows in
        cce_fma_tile_product_rows(rows, m, rawRows(cRows), cStorage(cType), n, d, out, ldo, panel, panelMask)
    }
}

// MARK: - The 512-bit Float32 rank update

/// `rankUpdate`'s contract and bits with 16-lane FMAs (12 rows x 32 columns a block), reading
/// A and the b rows in place: out_r[d] (+)= Σ_{q<k} a[r·ars + q·aks] · b_q[d], the b rows
/// stored as `bType` (converted exactly while loaded). Requires `hasAVX512`.
@inlinable
public func rankUpdateAVX512(out: UnsafePointer<UnsafeMutablePointer<Float>>, m: Int, a: UnsafePointer<Float>,
                             ars: Int, aks: Int, b: UnsafePointer<UnsafeRawPointer>, bType: ElementType = .float32,
                             k: Int, width: Int, blocked: Bool = false) {
    precondition(hasAVX512, "rankUpdateAVX512 needs AVX-512")
    out.withMemoryRebound(to: UnsafeMutablePointer<Float>?.self, capacity: m) { o in
        cce_fma_rank_update(o, m, a, ars, aks, rawRows(b), cStorage(bType), k, width, blocked ? 1 : 0)
    }
}

/// One out row of a sparse rank update: out[j] += Σ_{t<nnz} values[t] · b_t[j] for j < width,
/// one FMA chain per element in t order, the b rows stored as `bType`. Given the nonzero
/// terms of one row of `rankUpdateAVX512` (not blocked) in order, it gives that row's bits
/// unless the row holds −0 (cce_avx512.c). `next`: the out row of the caller's next update,
/// prefetched meanwhile (only its addresses are touched). Requires `hasAVX512`.
@inlinable
public func sparseUpdateAVX512(out: UnsafeMutablePointer<Float>, nnz: Int, values: UnsafePointer<Float>,
                               b: UnsafePointer<UnsafeRawPointer>, bType: ElementType, width: Int,
                               next: UnsafePointer<Float>? = nil) {
    precondition(hasAVX512, "sparseUpdateAVX512 needs AVX-512")
    cce_fma_sparse_update(out, nnz, values, rawRows(b), cStorage(bType), width, next)
}

/// out[j] = Σ_{r<count} rows[r][j] for j < width: one chain of additions per element, in r
/// order from +0, the rows stored as `type` (converted exactly while loaded); the bits of
/// adding the converted rows one after another to a zeroed row (`axpy` with a = 1).
/// Requires `hasAVX512`.
@inlinable
public func sumRowsAVX512(_ rows: UnsafePointer<UnsafeRawPointer>, count: Int, type: ElementType, width: Int,
                          into out: UnsafeMutablePointer<Float>) {
    precondition(hasAVX512, "sumRowsAVX512 needs AVX-512")
    cce_sum_rows(rawRows(rows), count, cStorage(type), width, out)
}

/// The same with Float32 b rows.
@inlinable
public func rankUpdateAVX512(out: UnsafePointer<UnsafeMutablePointer<Float>>, m: Int, a: UnsafePointer<Float>,
                             ars: Int, aks: Int, b: UnsafePointer<UnsafePointer<Float>>, k: Int, width: Int,
                             blocked: Bool = false) {
    UnsafeRawPointer(b).withMemoryRebound(to: UnsafeRawPointer.self, capacity: k) { raw in
        rankUpdateAVX512(out: out, m: m, a: a, ars: ars, aks: aks, b: raw, bType: .float32, k: k, width: width,
                         blocked: blocked)
    }
}
