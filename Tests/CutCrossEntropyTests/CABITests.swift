// The C ABI (Sources/CCECPU/include/cce_cpu.h, implemented by Sources/CCECABI): called here
// through the header's declarations, as a C program calls it. Results must equal the Swift
// API's bit for bit (same engine, same inputs), in every output type; bad input must come
// back as the documented status code with a message, and leave the outputs untouched.

import CCECPU
import CCEData
import CCEKernels
import CCERuntime
import CutCrossEntropy
import Foundation
import XCTest

final class CABITests: XCTestCase {
    /// Raw inputs for the C calls and the same as Swift values.
    struct Inputs {
        var e: [UInt16] = [], c: [UInt16] = [], bias: [UInt16] = []   // bf16 bits (when bf16)
        var e32: [Float] = [], c32: [Float] = [], bias32: [Float] = []
        var targets: [Int64] = []
        var tensors: (Tensor, Tensor, Targets, Tensor?)
        let type: ElementType
        let n: Int, d: Int, v: Int
    }

    func inputs(n: Int, d: Int, v: Int, type: ElementType, batch: Int? = nil, bias: Bool = true, seed: UInt64 = 1) -> Inputs {
        let (e, c, t, b) = randomProblem(n: n, d: d, v: v, type: type, seed: seed, batch: batch, withBias: bias)
        var x = Inputs(tensors: (e, c, t, b), type: type, n: n, d: d, v: v)
        x.targets = t.values.map { Int64($0) }
        if type == .bfloat16 {
            x.e = e.floats().map { bfloat16Bits($0) }; x.c = c.floats().map { bfloat16Bits($0) }
            x.bias = b?.floats().map { bfloat16Bits($0) } ?? []
        } else {
            x.e32 = e.floats(); x.c32 = c.floats(); x.bias32 = b?.floats() ?? []
        }
        return x
    }

    /// Calls `body` with raw pointers to E, C, the bias (nil without) and the targets.
    func withPointers<R>(_ x: Inputs, _ body: (UnsafeRawPointer, UnsafeRawPointer, UnsafeRawPointer?, UnsafePointer<Int64>) -> R) -> R {
        x.targets.withUnsafeBufferPointer { t in
            if x.type == .bfloat16 {
                return x.e.withUnsafeBytes { e in x.c.withUnsafeBytes { c in x.bias.withUnsafeBytes { b in
                    body(e.baseAddress!, c.baseAddress!, x.bias.isEmpty ? nil : b.baseAddress, t.baseAddress!)
                }}}
            }
            return x.e32.withUnsafeBytes { e in x.c32.withUnsafeBytes { c in x.bias32.withUnsafeBytes { b in
                body(e.baseAddress!, c.baseAddress!, x.bias32.isEmpty ? nil : b.baseAddress, t.baseAddress!)
            }}}
        }
    }

    func dtype(_ t: ElementType) -> Int32 {
        switch t { case .float32: Int32(CCE_CPU_F32.rawValue); case .float16: Int32(CCE_CPU_F16.rawValue); case .bfloat16: Int32(CCE_CPU_BF16.rawValue) }
    }

    struct COutputs {
        var status: Int32 = -1
        var loss: [Double] = [], lse: [Double] = []
        var dE: [Float] = [], dC: [Float] = [], dBias: [Float] = []
        var stats = [Int64](repeating: -1, count: 5)
    }

    /// cce_cpu_loss_and_gradients with Float32 gradient outputs.
    func fused(_ x: Inputs, _ opt: cce_cpu_options, weight: [Float]? = nil, gradLoss: [Float]? = nil) -> COutputs {
        var out = COutputs()
        let positions = x.targets.count
        out.loss = [Double](repeating: .nan, count: opt.reduction == Int32(CCE_CPU_REDUCE_NONE.rawValue) ? positions : 1)
        out.lse = [Double](repeating: -7, count: positions)
        out.dE = [Float](repeating: .nan, count: x.n * x.d); out.dC = [Float](repeating: .nan, count: x.v * x.d)
        out.dBias = [Float](repeating: .nan, count: x.v)
        var o = opt
        let hasBias = x.tensors.3 != nil
        out.status = withPointers(x) { e, c, b, t in
            out.loss.withUnsafeMutableBufferPointer { loss in out.lse.withUnsafeMutableBufferPointer { lse in
            out.dE.withUnsafeMutableBytes { dE in out.dC.withUnsafeMutableBytes { dC in out.dBias.withUnsafeMutableBytes { dB in
            out.stats.withUnsafeMutableBufferPointer { st in
                optionalPointer(weight) { w in optionalPointer(gradLoss) { g in
                    cce_cpu_loss_and_gradients(e, c, b, t, Int64(x.n), Int64(x.d), Int64(x.v), dtype(x.type), dtype(x.type),
                                               dtype(x.type), w, &o, g, loss.baseAddress, lse.baseAddress,
                                               dE.baseAddress, dC.baseAddress, hasBias ? dB.baseAddress : nil,
                                               0, 0, 0, st.baseAddress)
                }}
            }}}}}}
        }
        return out
    }

    func options(_ mutate: (inout cce_cpu_options) -> Void = { _ in }) -> cce_cpu_options {
        var o = cce_cpu_options()
        cce_cpu_default_options(&o)
        mutate(&o)
        return o
    }

    func testDefaultsAndLayout() {
        XCTAssertEqual(cce_cpu_abi_version(), CCE_CPU_ABI_VERSION)
        XCTAssertEqual(CCE_CPU_ABI_VERSION, 4)
        XCTAssertEqual(MemoryLayout<cce_cpu_options>.size, 88)
        XCTAssertEqual(MemoryLayout<cce_cpu_options>.offset(of: \.softcap), 24)
        XCTAssertEqual(MemoryLayout<cce_cpu_options>.offset(of: \.sort_vocab), 56)
        XCTAssertEqual(MemoryLayout<cce_cpu_options>.offset(of: \.check_finite), 76)
        XCTAssertEqual(MemoryLayout<cce_cpu_options>.offset(of: \.saved_logits_per_row), 80)
        let o = options()
        XCTAssertEqual(o.ignore_index, -100)
        XCTAssertEqual(o.reduction, Int32(CCE_CPU_REDUCE_MEAN.rawValue))
        XCTAssertEqual(o.batch, 1)
        XCTAssertEqual(o.softcap, 0)
        XCTAssertEqual(o.sort_vocab, 1)
        XCTAssertEqual(o.filter_eps_mode, Int32(CCE_CPU_EPS_AUTO.rawValue))
        XCTAssertEqual(o.filter_correction, 1)
        XCTAssertEqual(o.mode, Int32(CCE_CPU_MODE_DEFAULT.rawValue))
        XCTAssertEqual(o.threads, 0)
        XCTAssertEqual(o.saved_logits_per_row, Int32(Options().savedLogitsPerRow))
    }

    /// saved_logits_per_row reaches the engine: on LM-like bf16 data (where the forward's saved
    /// logits apply) 0 gives the Swift API's savedLogitsPerRow = 0 bit for bit, and a dE that
    /// differs from the default's (which reads the saved logits instead of recomputing).
    func testSavedLogitsPerRowReachesTheEngine() throws {
        let data = LMLikeData.make(tokens: 64, dim: 32, vocab: 2000, type: .bfloat16, seed: 6)
        var x = Inputs(tensors: (data.embeddings, data.classifier, data.targets, nil), type: .bfloat16, n: 64, d: 32, v: 2000)
        x.targets = data.targets.values.map { Int64($0) }
        x.e = data.embeddings.floats().map { bfloat16Bits($0) }; x.c = data.classifier.floats().map { bfloat16Bits($0) }
        let off = fused(x, options { $0.saved_logits_per_row = 0; $0.threads = 2 })
        let on = fused(x, options { $0.threads = 2 })
        XCTAssertEqual(off.status, 0); XCTAssertEqual(on.status, 0)
        var so = Options(); so.savedLogitsPerRow = 0; so.threads = 2
        let (_, g) = try CutCrossEntropy(options: so).lossAndGradients(embeddings: data.embeddings,
                                                                       classifier: data.classifier, targets: data.targets)
        XCTAssertEqual(off.dE.map(\.bitPattern), g.dE.floats.map(\.bitPattern), "0 through C = 0 in Swift")
        XCTAssertEqual(off.dC.map(\.bitPattern), on.dC.map(\.bitPattern), "dC does not depend on it")
        XCTAssertNotEqual(off.dE.map(\.bitPattern), on.dE.map(\.bitPattern), "the default saves logits")
    }

    /// The fused call through C equals the Swift API bit for bit, for Float32 and BFloat16
    /// inputs, with every option set (weights, smoothing, soft cap, z-loss, shift over a batch,
    /// reduction none with per-position upstream values).
    func testFusedCallEqualsSwiftAPI() throws {
        for type in [ElementType.float32, .bfloat16] {
            for reduction in [CCE_CPU_REDUCE_MEAN, CCE_CPU_REDUCE_NONE] {
                let x = inputs(n: 36, d: 19, v: 301, type: type, batch: 4)
                let weight = (0..<301).map { Float(1 + $0 % 5) * 0.3 }
                let o = options {
                    $0.reduction = Int32(reduction.rawValue); $0.batch = 4; $0.shift = 1; $0.softcap = 5
                    $0.label_smoothing = 0.1; $0.z_loss = 1e-3; $0.threads = 2
                }
                let none = reduction == CCE_CPU_REDUCE_NONE
                let g = none ? (0..<36).map { Float(0.5 + Double($0 % 3) * 0.25) } : [Float(0.7)]
                let c = fused(x, o, weight: weight, gradLoss: g)
                XCTAssertEqual(c.status, 0, String(cString: cce_cpu_last_error()))
                XCTAssertEqual(String(cString: cce_cpu_last_error()), "")

                var so = Options()
                so.reduction = none ? .none : .mean; so.shift = 1; so.softcap = 5; so.labelSmoothing = 0.1; so.zLoss = 1e-3
                so.threads = 2; so.classWeights = weight
                let (e, cl, t, b) = x.tensors
                let (f, gr) = try CutCrossEntropy(options: so).lossAndGradients(
                    embeddings: e, classifier: cl, targets: t, bias: b, upstream: none ? .perToken(g) : .scalar(0.7))
                let what = "\(type) \(none ? "none" : "mean")"
                XCTAssertEqual(c.loss.map(\.bitPattern), none ? f.tokenLosses.doubles.map(\.bitPattern) : [f.loss.bitPattern], "\(what) loss")
                XCTAssertEqual(c.lse.map(\.bitPattern), f.lse.doubles.map(\.bitPattern), "\(what) lse")
                XCTAssertEqual(c.dE.map(\.bitPattern), gr.dE.floats.map(\.bitPattern), "\(what) dE")
                XCTAssertEqual(c.dC.map(\.bitPattern), gr.dC.floats.map(\.bitPattern), "\(what) dC")
                XCTAssertEqual(c.dBias.map(\.bitPattern), gr.dBias!.floats.map(\.bitPattern), "\(what) dBias")
                XCTAssertEqual(c.stats[0], Int64(gr.filter.tiles))
                XCTAssertEqual(c.stats[3], Int64(gr.filter.keptRowSegments))
                // And against the Float64 oracle, as a check that the options arrived as meant.
                let r = try Oracle.compute(embeddings: e, classifier: cl, targets: t, bias: b, options: so,
                                           upstream: none ? .perToken(g) : .scalar(0.7))
                assertClose(c.dE.map { Double($0) }, r.dE, atol: 1e-6, rtol: 1e-4, "\(what) dE vs oracle")
                assertClose(c.loss, none ? r.tokenLosses : [r.loss], atol: 1e-5, rtol: 1e-5, "\(what) loss vs oracle")
            }
        }
    }

    /// Gradients in each output type: F64 and F32 exactly the engine's values (exact mode:
    /// Float64), BF16 and F16 the Float32 values rounded to nearest.
    func testOutputTypes() throws {
        let x = inputs(n: 20, d: 8, v: 70, type: .float32)
        for mode in [CCE_CPU_MODE_DEFAULT, CCE_CPU_MODE_EXACT] {
            var o = options { $0.mode = Int32(mode.rawValue) }
            var so = Options(); so.mode = mode == CCE_CPU_MODE_EXACT ? .exact : .default
            let (e, c, t, b) = x.tensors
            let (_, g) = try CutCrossEntropy(options: so).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
            var d64 = [Double](repeating: 0, count: 20 * 8), c32 = [Float](repeating: 0, count: 70 * 8)
            var b16 = [UInt16](repeating: 0, count: 70), e16 = [Float16](repeating: 0, count: 20 * 8)
            var dEbf = [UInt16](repeating: 0, count: 20 * 8)
            for (eCode, cCode) in [(CCE_CPU_F64, CCE_CPU_F32), (CCE_CPU_F16, CCE_CPU_F32), (CCE_CPU_BF16, CCE_CPU_F32)] {
                let status = withPointers(x) { ep, cp, bp, tp in
                    d64.withUnsafeMutableBytes { d64 in c32.withUnsafeMutableBytes { c32 in b16.withUnsafeMutableBytes { b16 in
                    e16.withUnsafeMutableBytes { e16 in dEbf.withUnsafeMutableBytes { dEbf in
                        let dE = eCode == CCE_CPU_F64 ? d64.baseAddress : eCode == CCE_CPU_F16 ? e16.baseAddress : dEbf.baseAddress
                        return cce_cpu_loss_and_gradients(ep, cp, bp, tp, 20, 8, 70, 0, 0, 0, nil, &o, nil, nil, nil,
                                                          dE, c32.baseAddress, b16.baseAddress,
                                                          Int32(eCode.rawValue), Int32(cCode.rawValue), Int32(CCE_CPU_BF16.rawValue), nil)
                    }}}}}
                }
                XCTAssertEqual(status, 0, String(cString: cce_cpu_last_error()))
            }
            XCTAssertEqual(d64.map(\.bitPattern), g.dE.doubles.map(\.bitPattern), "F64 dE, \(mode)")
            XCTAssertEqual(c32.map(\.bitPattern), g.dC.floats.map(\.bitPattern), "F32 dC, \(mode)")
            XCTAssertEqual(b16, g.dBias!.floats.map { bfloat16Bits($0) }, "BF16 dbias, \(mode)")
            XCTAssertEqual(dEbf, g.dE.floats.map { bfloat16Bits($0) }, "BF16 dE, \(mode)")
            XCTAssertEqual(e16.map(\.bitPattern), g.dE.doubles.map { Float16($0).bitPattern }, "F16 dE, \(mode)")
        }
    }

    /// Outputs large enough to be converted by several threads (>= 2^18 elements) in every type.
    func testLargeOutputsSplitOverThreads() throws {
        let x = inputs(n: 5, d: 64, v: 4100, type: .float32, bias: false)
        var o = options { $0.threads = 3 }
        var so = Options(); so.threads = 3
        let (e, c, t, _) = x.tensors
        let (_, g) = try CutCrossEntropy(options: so).lossAndGradients(embeddings: e, classifier: c, targets: t)
        let count = 4100 * 64
        var bf = [UInt16](repeating: 0, count: count), h = [Float16](repeating: 0, count: count)
        var f = [Float](repeating: 0, count: count), d = [Double](repeating: 0, count: count)
        for (code, run) in [(CCE_CPU_BF16, 0), (CCE_CPU_F16, 1), (CCE_CPU_F32, 2), (CCE_CPU_F64, 3)] {
            let rc = withPointers(x) { ep, cp, _, tp in
                bf.withUnsafeMutableBytes { bf in h.withUnsafeMutableBytes { h in f.withUnsafeMutableBytes { f in d.withUnsafeMutableBytes { d in
                    let out = [bf, h, f, d][run].baseAddress
                    return cce_cpu_loss_and_gradients(ep, cp, nil, tp, 5, 64, 4100, 0, 0, 0, nil, &o, nil, nil, nil,
                                                      nil, out, nil, 0, Int32(code.rawValue), 0, nil)
                }}}}
            }
            XCTAssertEqual(rc, 0, String(cString: cce_cpu_last_error()))
        }
        let ref = g.dC.floats
        XCTAssertEqual(bf, ref.map { bfloat16Bits($0) })
        XCTAssertEqual(h.map(\.bitPattern), ref.map { Float16($0).bitPattern })
        XCTAssertEqual(f.map(\.bitPattern), ref.map(\.bitPattern))
        XCTAssertEqual(d, ref.map { Double($0) })
    }

    /// cce_cpu_forward with a state, then cce_cpu_backward, equals the Swift split path.
    func testForwardStateBackward() throws {
        let x = inputs(n: 37, d: 19, v: 301, type: .bfloat16)
        var o = options { $0.reduction = Int32(CCE_CPU_REDUCE_NONE.rawValue); $0.label_smoothing = 0.2 }
        var loss = [Double](repeating: 0, count: 37), lse = [Double](repeating: 0, count: 37)
        var state: OpaquePointer? = nil
        let fs = withPointers(x) { e, c, b, t in
            cce_cpu_forward(e, c, b, t, 37, 19, 301, 2, 2, 2, nil, &o, &loss, &lse, &state)
        }
        XCTAssertEqual(fs, 0, String(cString: cce_cpu_last_error()))
        XCTAssertNotNil(state)
        defer { cce_cpu_state_free(state) }
        let up = (0..<37).map { Float($0 % 4) * 0.5 }
        var dE = [UInt16](repeating: 0, count: 37 * 19), dC = [Float](repeating: 0, count: 301 * 19), dB = [Float](repeating: 0, count: 301)
        let bs = withPointers(x) { e, c, b, _ in
            cce_cpu_backward(state, e, c, b, up, &dE, &dC, &dB, 2, 0, 0, nil)
        }
        XCTAssertEqual(bs, 0, String(cString: cce_cpu_last_error()))
        var so = Options(); so.reduction = .none; so.labelSmoothing = 0.2
        let (e, c, t, b) = x.tensors
        let cce = CutCrossEntropy(options: so)
        let f = try cce.forward(embeddings: e, classifier: c, targets: t, bias: b)
        let g = try cce.backward(f, embeddings: e, classifier: c, bias: b, upstream: .perToken(up))
        XCTAssertEqual(loss.map(\.bitPattern), f.tokenLosses.doubles.map(\.bitPattern))
        XCTAssertEqual(lse.map(\.bitPattern), f.lse.doubles.map(\.bitPattern))
        XCTAssertEqual(dE, g.dE.floats.map { bfloat16Bits($0) })
        XCTAssertEqual(dC.map(\.bitPattern), g.dC.floats.map(\.bitPattern))
        XCTAssertEqual(dB.map(\.bitPattern), g.dBias!.floats.map(\.bitPattern))
        // The state refuses a call without the bias it was made with.
        let mismatch = withPointers(x) { e, c, _, _ in cce_cpu_backward(state, e, c, nil, up, &dE, nil, nil, 2, 0, 0, nil) }
        XCTAssertEqual(mismatch, Int32(CCE_CPU_ERR_STATE.rawValue))
    }

    /// Every kind of bad input: its status code, a message, and untouched outputs.
    /// The _f64 entry points hand the exact mode its upstream gradient in Float64: per-token
    /// values that Float32 cannot hold (0.7 + 0.01 i) give, through cce_cpu_loss_and_gradients_f64
    /// and cce_cpu_backward_f64, the gradients the Swift API gives for `.perTokenDouble` (bit for
    /// bit) and the Float64 oracle's within 1e-12; the Float32 entry point's rounded values are
    /// off by more than 1e-10 (what the _f64 ones are for). The default mode gets the same bits
    /// from both (it rounds each value to Float32 itself).
    func testFloat64UpstreamKeepsTheExactModeExact() throws {
        let x = inputs(n: 23, d: 11, v: 157, type: .float32)
        let up = (0..<23).map { 0.7 + 0.01 * Double($0) }, up32 = up.map { Float($0) }
        let (e, c, t, b) = x.tensors
        for mode in [CCE_CPU_MODE_EXACT, CCE_CPU_MODE_DEFAULT] {
            var o = options { $0.mode = Int32(mode.rawValue); $0.reduction = Int32(CCE_CPU_REDUCE_NONE.rawValue) }
            var so = Options(); so.mode = mode == CCE_CPU_MODE_EXACT ? .exact : .default; so.reduction = .none
            let (_, g) = try CutCrossEntropy(options: so).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b,
                                                                             upstream: .perTokenDouble(up))
            var fused = [Double](repeating: 0, count: 23 * 11), fused32 = fused, split = fused
            let f64 = CCE_CPU_F64.rawValue
            let s1 = withPointers(x) { ep, cp, bp, tp in
                cce_cpu_loss_and_gradients_f64(ep, cp, bp, tp, 23, 11, 157, 0, 0, 0, nil, &o, up, nil, nil, &fused, nil, nil,
                                               Int32(f64), 0, 0, nil)
            }
            let s2 = withPointers(x) { ep, cp, bp, tp in
                cce_cpu_loss_and_gradients(ep, cp, bp, tp, 23, 11, 157, 0, 0, 0, nil, &o, up32, nil, nil, &fused32, nil, nil,
                                           Int32(f64), 0, 0, nil)
            }
            var state: OpaquePointer? = nil
            let s3 = withPointers(x) { ep, cp, bp, tp in cce_cpu_forward(ep, cp, bp, tp, 23, 11, 157, 0, 0, 0, nil, &o, nil, nil, &state) }
            defer { cce_cpu_state_free(state) }
            let s4 = withPointers(x) { ep, cp, bp, _ in cce_cpu_backward_f64(state, ep, cp, bp, up, &split, nil, nil, Int32(f64), 0, 0, nil) }
            for status in [s1, s2, s3, s4] { XCTAssertEqual(status, 0, String(cString: cce_cpu_last_error())) }
            XCTAssertEqual(fused.map(\.bitPattern), g.dE.doubles.map(\.bitPattern), "fused _f64 vs Swift, \(mode)")
            if mode == CCE_CPU_MODE_EXACT {
                let oracle = try Oracle.compute(embeddings: e, classifier: c, targets: t, bias: b, options: so,
                                                upstream: .perTokenDouble(up))
                let truth = oracle.dE
                XCTAssertLessThan(relativeError(fused, truth), 1e-12, "fused _f64 vs oracle")
                XCTAssertLessThan(relativeError(split, truth), 1e-12, "split _f64 vs oracle")
                XCTAssertGreaterThan(relativeError(fused32, truth), 1e-10, "the Float32 upstream's rounding shows")
            } else {
                XCTAssertEqual(fused32.map(\.bitPattern), fused.map(\.bitPattern), "default mode: the same either way")
            }
        }
    }

    func testErrorsAreStatusCodesWithMessages() {
        let x = inputs(n: 6, d: 4, v: 9, type: .float32, bias: false)
        func expect(_ status: cce_cpu_status, _ what: String, contains: String,
                    weight: [Float]? = nil, n: Int64 = 6, eType: Int32 = 0, targets: [Int64]? = nil,
                    nullE: Bool = false, dbias: Bool = false, _ mutate: (inout cce_cpu_options) -> Void = { _ in }) {
            var o = options(mutate)
            var loss = [Double](repeating: 42, count: 6)
            var dE = [Float](repeating: 42, count: 24), dB = [Float](repeating: 42, count: 9)
            let t = targets ?? x.targets
            let rc = withPointers(x) { e, c, _, _ in
                t.withUnsafeBufferPointer { tp in dB.withUnsafeMutableBytes { db in
                    optionalPointer(weight) { w in
                        cce_cpu_loss_and_gradients(nullE ? nil : e, c, nil, tp.baseAddress, n, 4, 9, eType, 0, 0, w, &o, nil,
                                                   &loss, nil, &dE, nil, dbias ? db.baseAddress : nil, 0, 0, 0, nil)
                    }
                }}
            }
            let message = String(cString: cce_cpu_last_error())
            XCTAssertEqual(rc, Int32(status.rawValue), "\(what): \(message)")
            XCTAssertTrue(message.contains(contains), "\(what): '\(message)' lacks '\(contains)'")
            XCTAssertTrue(loss.allSatisfy { $0 == 42 } && dE.allSatisfy { $0 == 42 } && dB.allSatisfy { $0 == 42 },
                          "\(what): outputs written")
        }
        expect(CCE_CPU_ERR_ARGUMENT, "null E", contains: "E is NULL", nullE: true)
        expect(CCE_CPU_ERR_ARGUMENT, "bad dtype", contains: "element type 7", eType: 7)
        expect(CCE_CPU_ERR_ARGUMENT, "negative N", contains: "sizes must be >= 0", n: -1)
        expect(CCE_CPU_ERR_ARGUMENT, "batch", contains: "batch = 4", { $0.batch = 4 })
        expect(CCE_CPU_ERR_ARGUMENT, "dbias without bias", contains: "dbias", dbias: true)
        expect(CCE_CPU_ERR_EMPTY, "N = 0", contains: "no tokens", n: 0)
        expect(CCE_CPU_ERR_TARGET, "target = V", contains: "targets[2] = 9", targets: [0, 1, 9, 2, 3, 4])
        expect(CCE_CPU_ERR_NON_FINITE, "NaN weight", contains: "classWeights[3]", weight: [1, 1, 1, .nan, 1, 1, 1, 1, 1])
        expect(CCE_CPU_ERR_OPTION, "negative weight", contains: "classWeights", weight: [1, 1, 1, -1, 1, 1, 1, 1, 1])
        expect(CCE_CPU_ERR_OPTION, "smoothing", contains: "labelSmoothing", { $0.label_smoothing = 1.5 })
        expect(CCE_CPU_ERR_OPTION, "softcap", contains: "softcap", { $0.softcap = -2 })
        expect(CCE_CPU_ERR_OPTION, "reduction code", contains: "reduction 7", { $0.reduction = 7 })
        expect(CCE_CPU_ERR_OPTION, "mode code", contains: "mode 9", { $0.mode = 9 })
        expect(CCE_CPU_ERR_OPTION, "eps mode", contains: "filter_eps_mode 5", { $0.filter_eps_mode = 5 })
        expect(CCE_CPU_ERR_OPTION, "eps value", contains: "filter epsilon", { $0.filter_eps_mode = 2; $0.filter_eps = -1 })
        expect(CCE_CPU_ERR_OPTION, "threads", contains: "threads", { $0.threads = -3 })
        expect(CCE_CPU_ERR_OPTION, "saved logits", contains: "savedLogitsPerRow", { $0.saved_logits_per_row = 70000 })
        expect(CCE_CPU_ERR_OPTION, "shift", contains: "shift", { $0.shift = -1 })
        XCTAssertEqual(cceCPUNullStateBackward(), Int32(CCE_CPU_ERR_ARGUMENT.rawValue))
        // A non-finite input is found only when asked for.
        var bad = x; bad.e32[5] = .infinity
        var o = options { $0.check_finite = 1 }
        let rc = withPointers(bad) { e, c, _, t in
            cce_cpu_forward(e, c, nil, t, 6, 4, 9, 0, 0, 0, nil, &o, nil, nil, nil)
        }
        XCTAssertEqual(rc, Int32(CCE_CPU_ERR_NON_FINITE.rawValue))
        XCTAssertTrue(String(cString: cce_cpu_last_error()).contains("embeddings[5]"))
    }

    /// A Tensor that borrows memory (`Tensor(borrowing:type:shape:)`, what the C ABI hands the
    /// engine) gives the owned Tensor's results bit for bit: forward, backward and the fused
    /// call, every storage type, a bias, the kahan and exact modes; and reads like it
    /// (floats, rows, reshaped).
    func testBorrowedTensorEqualsOwned() throws {
        func bits(_ v: Values) -> [UInt64] { v.doubles.map(\.bitPattern) }
        for type in [ElementType.float32, .float16, .bfloat16] {
            for mode in [Mode.default, .kahan, .exact] {
                let (e, c, t, b) = randomProblem(n: 23, d: 17, v: 203, type: type, seed: 5, withBias: true)
                var o = Options(); o.mode = mode; o.labelSmoothing = 0.1; o.threads = 2
                let cce = CutCrossEntropy(options: o)
                let (f0, g0) = try cce.lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
                let s0 = try cce.forward(embeddings: e, classifier: c, targets: t, bias: b)
                let h0 = try cce.backward(s0, embeddings: e, classifier: c, bias: b)
                try e.withRawPointer { ep in try c.withRawPointer { cp in try b!.withRawPointer { bp in
                    let E = try Tensor(borrowing: ep, type: type, shape: e.shape)
                    let C = try Tensor(borrowing: cp, type: type, shape: c.shape)
                    let B = try Tensor(borrowing: bp, type: type, shape: b!.shape)
                    XCTAssertTrue(E.isBorrowed && C.isBorrowed && !e.isBorrowed)
                    XCTAssertEqual(C.floats().map(\.bitPattern), c.floats().map(\.bitPattern))
                    XCTAssertEqual(try C.rows(7..<19).floats().map(\.bitPattern), try c.rows(7..<19).floats().map(\.bitPattern))
                    XCTAssertFalse(try C.rows(0..<1).isBorrowed, "rows() copies")
                    XCTAssertEqual(try E.reshaped([17, 23]).floats().map(\.bitPattern), e.floats().map(\.bitPattern))
                    let what = "\(type) \(mode)"
                    let (f1, g1) = try cce.lossAndGradients(embeddings: E, classifier: C, targets: t, bias: B)
                    XCTAssertEqual(f1.loss.bitPattern, f0.loss.bitPattern, what)
                    XCTAssertEqual(bits(f1.lse), bits(f0.lse), what)
                    XCTAssertEqual(bits(f1.tokenLosses), bits(f0.tokenLosses), what)
                    XCTAssertEqual(bits(g1.dE), bits(g0.dE), what)
                    XCTAssertEqual(bits(g1.dC), bits(g0.dC), what)
                    XCTAssertEqual(bits(g1.dBias!), bits(g0.dBias!), what)
                    XCTAssertEqual(g1.filter.keptRowSegments, g0.filter.keptRowSegments, what)
                    let s1 = try cce.forward(embeddings: E, classifier: C, targets: t, bias: B)
                    let h1 = try cce.backward(s1, embeddings: E, classifier: C, bias: B)
                    XCTAssertEqual(bits(s1.lse), bits(s0.lse), what)
                    XCTAssertEqual(bits(h1.dE), bits(h0.dE), what)
                    XCTAssertEqual(bits(h1.dC), bits(h0.dC), what)
                    // The backward of an owned forward accepts the borrowed inputs, and the reverse.
                    XCTAssertEqual(bits(try cce.backward(s0, embeddings: E, classifier: C, bias: B).dC), bits(h0.dC), what)
                    XCTAssertEqual(bits(try cce.backward(s1, embeddings: e, classifier: c, bias: b).dE), bits(h0.dE), what)
                }}}
            }
        }
        // Shapes are validated as for owned tensors.
        let x: [Float] = [1, 2]
        try x.withUnsafeBytes { p in
            XCTAssertThrowsError(try Tensor(borrowing: p.baseAddress!, type: .float32, shape: [2, -1]))
            XCTAssertThrowsError(try Tensor(borrowing: p.baseAddress!, type: .float32, shape: [Int.max, 4]))
        }
    }

    /// Gradients asked for in BF16, F16 and F64 go through the kept Float32 scratch: the same
    /// values as converting the Swift API's arrays, on the first call and on later ones (the
    /// scratch reused), after cce_cpu_release_scratch, and with a larger call in between.
    func testConvertedOutputsThroughKeptScratch() throws {
        let x = inputs(n: 33, d: 21, v: 517, type: .bfloat16, seed: 9)
        var o = options { $0.threads = 2; $0.z_loss = 1e-3 }
        var so = Options(); so.threads = 2; so.zLoss = 1e-3
        let (e, c, t, b) = x.tensors
        let (f, g) = try CutCrossEntropy(options: so).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
        _ = cce_cpu_release_scratch()
        for round in 0..<4 {
            if round == 2 { XCTAssertGreaterThan(cce_cpu_release_scratch(), 0, "a scratch was kept") }
            if round == 3 {   // a larger call first: its scratch is kept, and serves the smaller one
                let y = inputs(n: 40, d: 21, v: 900, type: .bfloat16, seed: 3)
                var dC = [UInt16](repeating: 0, count: 900 * 21)
                let rc = withPointers(y) { ep, cp, bp, tp in
                    cce_cpu_loss_and_gradients(ep, cp, bp, tp, 40, 21, 900, 2, 2, 2, nil, &o, nil, nil, nil,
                                               nil, &dC, nil, 0, 2, 0, nil)
                }
                XCTAssertEqual(rc, 0, String(cString: cce_cpu_last_error()))
            }
            var loss = [Double](repeating: 0, count: 1)
            var dE = [UInt16](repeating: 0xFFFF, count: 33 * 21), dC = [Float16](repeating: 7, count: 517 * 21)
            var dB = [Double](repeating: 7, count: 517)
            let rc = withPointers(x) { ep, cp, bp, tp in
                cce_cpu_loss_and_gradients(ep, cp, bp, tp, 33, 21, 517, 2, 2, 2, nil, &o, nil, &loss, nil,
                                           &dE, &dC, &dB, Int32(CCE_CPU_BF16.rawValue), Int32(CCE_CPU_F16.rawValue),
                                           Int32(CCE_CPU_F64.rawValue), nil)
            }
            XCTAssertEqual(rc, 0, String(cString: cce_cpu_last_error()))
            XCTAssertEqual(loss[0].bitPattern, f.loss.bitPattern, "round \(round)")
            XCTAssertEqual(dE, g.dE.floats.map { bfloat16Bits($0) }, "round \(round)")
            XCTAssertEqual(dC.map(\.bitPattern), g.dC.floats.map { Float16($0).bitPattern }, "round \(round)")
            XCTAssertEqual(dB, g.dBias!.floats.map { Double($0) }, "round \(round)")
        }
        XCTAssertGreaterThan(cce_cpu_release_scratch(), 0)
        XCTAssertEqual(cce_cpu_release_scratch(), 0, "nothing kept after a release")
    }

    /// The kept scratch is left all zeros after each successful call and only the dC rows
    /// the engine wrote are converted and zeroed again: calls on other data, and a call after
    /// one that failed once the sweep had written the scratch, still give the Swift API's bits.
    func testKeptScratchStaysCleanAcrossDataAndFailures() throws {
        var o = options { $0.threads = 2 }
        var so = Options(); so.threads = 2
        _ = cce_cpu_release_scratch()
        func call(_ x: Inputs) -> (Int32, [UInt16], [UInt16], [UInt16]) {
            var dE = [UInt16](repeating: 0xFFFF, count: x.n * x.d), dC = [UInt16](repeating: 0xFFFF, count: x.v * x.d)
            var dB = [UInt16](repeating: 0xFFFF, count: x.v)
            let rc = withPointers(x) { ep, cp, bp, tp in
                cce_cpu_loss_and_gradients(ep, cp, bp, tp, Int64(x.n), Int64(x.d), Int64(x.v), 2, 2, 2, nil, &o, nil,
                                           nil, nil, &dE, &dC, &dB, 2, 2, 2, nil)
            }
            return (rc, dE, dC, dB)
        }
        // LM-like data, so that the filter leaves some of dC's rows unwritten.
        func lmLike(seed: UInt64) -> Inputs {
            let data = LMLikeData.make(tokens: 70, dim: 24, vocab: 2100, type: .bfloat16, seed: seed)
            let b = try! Tensor(converting: (0..<2100).map { Float($0 % 5) * 0.1 }, to: .bfloat16, shape: [2100])
            var x = Inputs(tensors: (data.embeddings, data.classifier, data.targets, b), type: .bfloat16,
                           n: 70, d: 24, v: 2100)
            x.targets = data.targets.values.map { Int64($0) }
            x.e = data.embeddings.floats().map { bfloat16Bits($0) }; x.c = data.classifier.floats().map { bfloat16Bits($0) }
            x.bias = b.floats().map { bfloat16Bits($0) }
            return x
        }
        for (round, seed) in [11, 12, 0, 13, 15].enumerated() {
            if seed == 15 {   // the kahan mode writes dC through its compensation rows
                o.mode = Int32(CCE_CPU_MODE_KAHAN.rawValue); so.mode = .kahan
            }
            if seed == 0 {   // a NaN in E, found after the sweep has written the scratch
                var x = lmLike(seed: 14)
                x.e[7] = 0x7FC0
                XCTAssertEqual(call(x).0, Int32(CCE_CPU_ERR_NON_FINITE.rawValue), "round \(round)")
                continue
            }
            let x = lmLike(seed: UInt64(seed))
            let (e, c, t, b) = x.tensors
            let (_, g) = try CutCrossEntropy(options: so).lossAndGradients(embeddings: e, classifier: c, targets: t, bias: b)
            let (rc, dE, dC, dB) = call(x)
            XCTAssertEqual(rc, 0, String(cString: cce_cpu_last_error()))
            XCTAssertEqual(dE, g.dE.floats.map { bfloat16Bits($0) }, "round \(round)")
            XCTAssertEqual(dC, g.dC.floats.map { bfloat16Bits($0) }, "round \(round)")
            XCTAssertEqual(dB, g.dBias!.floats.map { bfloat16Bits($0) }, "round \(round)")
            let zeroRows = (0..<x.v).filter { r in (0..<x.d).allSatisfy { dC[r * x.d + $0] == 0 } }.count
            XCTAssertTrue(zeroRows > 0 && zeroRows < x.v, "rows written and rows left zero: \(zeroRows) zero rows")
        }
        _ = cce_cpu_release_scratch()
    }

    /// The Float32 scratch behind bf16 gradient outputs takes memory only for the dC rows the
    /// calls write: a first call (the scratch new) grows the process by those rows and the
    /// engine's own scratch, not by the whole V x D, and after a call on other data the
    /// scratch holds the rows of both calls, not V x D (zeroing a new scratch fails both).
    func testScratchHoldsOnlyWrittenRows() throws {
        guard MemoryProbe.isResettable else { throw XCTSkip("the memory probe cannot reset the peak here") }
        let n = 64, d = 1024, v = 30011   // a dC row of the scratch is one 4 KiB page
        func problem(seed: UInt64) -> ([UInt16], [UInt16], [Int64]) {
            let data = LMLikeData.make(tokens: n, dim: d, vocab: v, type: .bfloat16, seed: seed)
            return (data.embeddings.floats().map { bfloat16Bits($0) }, data.classifier.floats().map { bfloat16Bits($0) },
                    data.targets.values.map { Int64($0) })
        }
        var o = options { $0.threads = 2 }
        var dE = [UInt16](repeating: 1, count: n * d), dC = [UInt16](repeating: 1, count: v * d)   // resident before
        func call(_ x: ([UInt16], [UInt16], [Int64])) -> Set<Int> {
            let rc = x.0.withUnsafeBytes { ep in x.1.withUnsafeBytes { cp in x.2.withUnsafeBufferPointer { tp in
                cce_cpu_loss_and_gradients(ep.baseAddress!, cp.baseAddress!, nil, tp.baseAddress!, Int64(n), Int64(d),
                                           Int64(v), 2, 2, 2, nil, &o, nil, nil, nil, &dE, &dC, nil, 2, 2, 2, nil)
            }}}
            XCTAssertEqual(rc, 0, String(cString: cce_cpu_last_error()))
            return Set((0..<v).filter { r in (0..<d).contains { dC[r * d + $0] != 0 } })
        }
        let first = problem(seed: 4), other = problem(seed: 5)
        let scratchDC = v * d * 4, slack = scratchDC / 8, slackHeld = 2 << 20
        _ = cce_cpu_release_scratch()
        let (written, firstPeak) = MemoryProbe.measure { call(first) }
        XCTAssertLessThan(written.count, v / 2, "LM-like rows: most of dC is not written")
        XCTAssertLessThan(firstPeak, written.count * d * 4 + slack,
                          "first call: \(firstPeak) bytes for \(written.count) of \(v) rows written (dC scratch \(scratchDC))")
        _ = call(first)
        let last = call(other)
        // What the scratch holds: the memory its release gives back.
        let before = MemoryProbe.residentBytes()
        XCTAssertGreaterThan(cce_cpu_release_scratch(), 0)
        let held = before - MemoryProbe.residentBytes(), both = written.union(last).count
        XCTAssertLessThan(both, v / 2, "most rows written by neither call")
        XCTAssertLessThan(held, both * d * 4 + slackHeld,
                          "after other data: \(held) bytes for \(both) rows written by the two calls")
    }

    /// Inputs at addresses not aligned to their element size are copied, with the same results.
    func testMisalignedInputsAreCopied() throws {
        let x = inputs(n: 12, d: 9, v: 77, type: .float32, bias: false)
        var o = options()
        let reference = fused(x, o)
        XCTAssertEqual(reference.status, 0)
        var raw = [UInt8](repeating: 0, count: (x.e32.count + x.c32.count) * 4 + 8)
        var dE = [Float](repeating: 0, count: 12 * 9), dC = [Float](repeating: 0, count: 77 * 9)
        var loss = [Double](repeating: 0, count: 1)
        let rc = raw.withUnsafeMutableBytes { r -> Int32 in
            let e = r.baseAddress! + 2, c = e + x.e32.count * 4
            x.e32.withUnsafeBytes { e.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            x.c32.withUnsafeBytes { c.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            return x.targets.withUnsafeBufferPointer { t in
                cce_cpu_loss_and_gradients(e, c, nil, t.baseAddress, 12, 9, 77, 0, 0, 0, nil, &o, nil, &loss, nil,
                                           &dE, &dC, nil, 0, 0, 0, nil)
            }
        }
        XCTAssertEqual(rc, 0, String(cString: cce_cpu_last_error()))
        XCTAssertEqual(loss.map(\.bitPattern), reference.loss.map(\.bitPattern))
        XCTAssertEqual(dE.map(\.bitPattern), reference.dE.map(\.bitPattern))
        XCTAssertEqual(dC.map(\.bitPattern), reference.dC.map(\.bitPattern))
    }

    /// Bad input with the inputs borrowed and the gradients converted through the scratch: an
    /// error status with a message (no crash), and the caller's outputs untouched, also when
    /// the error is found only after the sweep (a NaN in E without check_finite; F32 outputs,
    /// written in place, are the header's documented exception, so none is asked for here).
    func testErrorsWithBorrowedInputsAndConvertedOutputs() {
        var x = inputs(n: 6, d: 4, v: 9, type: .bfloat16, bias: true)
        func call(_ x: Inputs, targets: [Int64]? = nil, weight: [Float]? = nil, nullC: Bool = false,
                  _ mutate: (inout cce_cpu_options) -> Void = { _ in }) -> (Int32, String, Bool) {
            var o = options(mutate)
            var loss = [Double](repeating: 42, count: 1)
            var dE = [UInt16](repeating: 42, count: 24), dC = [Float16](repeating: 42, count: 36)
            var dB = [Double](repeating: 42, count: 9)
            let t = targets ?? x.targets
            let rc = withPointers(x) { e, c, b, _ in
                t.withUnsafeBufferPointer { tp in optionalPointer(weight) { w in
                    cce_cpu_loss_and_gradients(e, nullC ? nil : c, b, tp.baseAddress, 6, 4, 9, 2, 2, 2, w, &o, nil, &loss,
                                               nil, &dE, &dC, &dB, 2, 1, 3, nil)
                }}
            }
            let untouched = loss == [42] && dE.allSatisfy { $0 == 42 } && dC.allSatisfy { $0 == 42 } && dB.allSatisfy { $0 == 42 }
            return (rc, String(cString: cce_cpu_last_error()), untouched)
        }
        let cases: [(cce_cpu_status, String, (Int32, String, Bool))] = [
            (CCE_CPU_ERR_ARGUMENT, "C is NULL", call(x, nullC: true)),
            (CCE_CPU_ERR_TARGET, "targets[1] = 9", call(x, targets: [0, 9, 1, 2, 3, 4])),
            (CCE_CPU_ERR_TARGET, "targets[0] = -5", call(x, targets: [-5, 1, 1, 2, 3, 4])),
            (CCE_CPU_ERR_OPTION, "reduction 7", call(x, { $0.reduction = 7 })),
            (CCE_CPU_ERR_NON_FINITE, "classWeights[2]", call(x, weight: [1, 1, .infinity, 1, 1, 1, 1, 1, 1])),
        ]
        for (status, contains, (rc, message, untouched)) in cases {
            XCTAssertEqual(rc, Int32(status.rawValue), message)
            XCTAssertTrue(message.contains(contains), "'\(message)' lacks '\(contains)'")
            XCTAssertTrue(untouched, "\(message): outputs written")
        }
        x.e[5] = 0x7FC0   // a NaN in E, found after the sweep (check_finite off)
        let (rc, message, untouched) = call(x, targets: [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(rc, Int32(CCE_CPU_ERR_NON_FINITE.rawValue), message)
        XCTAssertTrue(message.contains("embeddings[5]"), message)
        XCTAssertTrue(untouched, "converted outputs are written only after success")
        let checked = call(x, targets: [0, 1, 2, 3, 4, 5], { $0.check_finite = 1 })
        XCTAssertEqual(checked.0, Int32(CCE_CPU_ERR_NON_FINITE.rawValue), checked.1)
        XCTAssertTrue(checked.2)
    }

    func cceCPUNullStateBackward() -> Int32 {
        cce_cpu_backward(nil, nil, nil, nil, nil, nil, nil, nil, 0, 0, 0, nil)
    }

    /// The last-error message belongs to the thread that made the call.
    func testLastErrorIsPerThread() {
        var o = options { $0.label_smoothing = 3 }
        let x = inputs(n: 6, d: 4, v: 9, type: .float32, bias: false)
        let rc = withPointers(x) { e, c, _, t in cce_cpu_forward(e, c, nil, t, 6, 4, 9, 0, 0, 0, nil, &o, nil, nil, nil) }
        XCTAssertEqual(rc, Int32(CCE_CPU_ERR_OPTION.rawValue))
        nonisolated(unsafe) var other = "unset"
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { other = String(cString: cce_cpu_last_error()); done.signal() }
        done.wait()
        XCTAssertEqual(other, "", "another thread sees no error")
        XCTAssertTrue(String(cString: cce_cpu_last_error()).contains("labelSmoothing"))
    }
}

/// `body` with a pointer to the array's elements, or nil.
func optionalPointer<T, R>(_ a: [T]?, _ body: (UnsafePointer<T>?) -> R) -> R {
    guard let a else { return body(nil) }
    return a.withUnsafeBufferPointer { body($0.baseAddress) }
}
