// Phase timing of one engine call, for finding where wall time goes when threads are added.
//
// With CCE_TRACE set in the environment, each engine call prints one line to standard
// error: the wall time of each set-up phase (ordering the vocabulary, zeroing the
// gradients), of the sweep, and, per worker, how long
// it computed and how long it waited in dC's hand-off; after each phase, the process's peak
// resident memory so far above what it held when the call began (VmHWM − VmRSS: meaningful
// when the caller reset the peak just before, as `cce bench` does). A sweep whose workers finish at
// different times, or whose hand-off waits are large, scales badly however fast the
// kernels are. Without CCE_TRACE nothing is measured (one branch per phase).

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Seconds on the monotonic clock.
@inline(__always)
public func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

public struct PhaseTrace {
    /// Whether CCE_TRACE is set.
    public static let enabled: Bool = Environment.isSet("CCE_TRACE")

    private var last: Double
    private let resident: Int
    private var phases: [(name: String, seconds: Double, peak: Int)] = []
    private var notes: [String] = []

    public init() {
        last = PhaseTrace.enabled ? monotonicSeconds() : 0
        resident = PhaseTrace.enabled ? MemoryProbe.residentBytes() : 0
    }

    /// Ends the phase called `name` (it began at the previous mark or at init).
    public mutating func mark(_ name: String) {
        guard PhaseTrace.enabled else { return }
        let now = monotonicSeconds()
        phases.append((name, now - last, MemoryProbe.peakBytes() - resident))
        last = now
    }

    /// Adds a free-form note (for example the workers' busy and waiting times).
    public mutating func note(_ text: String) {
        guard PhaseTrace.enabled else { return }
        notes.append(text)
    }

    /// Prints the phases and notes as one line on standard error.
    public func report(_ title: String) {
        guard PhaseTrace.enabled else { return }
        let total = phases.reduce(0) { $0 + $1.seconds }
        var line = "cce trace \(title): total \(ms(total))"
        for p in phases { line += "; \(p.name) \(ms(p.seconds)) (peak +\(mb(p.peak)))" }
        for n in notes { line += "; \(n)" }
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }

    private func mb(_ bytes: Int) -> String { "\((Double(bytes) / 1e5).rounded() / 10) MB" }

    private func ms(_ s: Double) -> String {
        let v = (s * 1e4).rounded() / 10
        return "\(v) ms"
    }
}

/// Per-worker times of one sweep (filled only when tracing): busy (not waiting), waiting in
/// dC's hand-off, in the forward, applying dC updates, and when the worker finished. Each
/// worker writes only its own slots of one buffer allocated here (not Swift arrays, whose
/// shared storage would be copied, racily, on the first write).
public final class WorkerClock: @unchecked Sendable {
    private static let fields = 6
    private let workers: Int
    private let slots: UnsafeMutablePointer<Double>

    public init(workers: Int) {
        self.workers = workers
        slots = .allocate(capacity: max(1, workers * Self.fields))
        slots.initialize(repeating: 0, count: max(1, workers * Self.fields))
    }

    deinit { slots.deallocate() }

    /// Records worker w's totals (`products`: the part of `forward` spent in tile products).
    public func record(worker w: Int, busy: Double, waited: Double, forward: Double = 0, products: Double = 0,
                       applying: Double = 0, ended: Double = 0) {
        let s = slots + w * Self.fields
        s[0] = busy; s[1] = waited; s[2] = forward; s[3] = applying; s[4] = ended; s[5] = products
    }

    private func field(_ k: Int) -> [Double] { (0..<workers).map { slots[$0 * Self.fields + k] } }

    /// "workers busy min–max ms, waits min–max ms" (dC's hand-off, and a token block's slot
    /// or its first segment's seed: Engine.sweep), then per worker
    /// forward (of it tile products)/dC applied/waited/finished at, in ms.
    public var summary: String {
        func ms(_ x: Double) -> String { "\(Int((x * 1e3).rounded()))" }
        func range(_ x: [Double]) -> String {
            guard let lo = x.min(), let hi = x.max() else { return "-" }
            return "\((lo * 1e4).rounded() / 10)–\((hi * 1e4).rounded() / 10) ms"
        }
        let (busy, waited, forward, applying, ended) = (field(0), field(1), field(2), field(3), field(4))
        let products = field(5)
        let each = (0..<workers).map {
            "\(ms(forward[$0]))(\(ms(products[$0])))/\(ms(applying[$0]))/\(ms(waited[$0]))/\(ms(ended[$0]))"
        }
        return "\(workers) workers busy \(range(busy)), waiting (dC's hand-off, token block slots) \(range(waited))"
            + "; per worker forward(of it tile products)/dC applied/waited/finished ms: " + each.joined(separator: " ")
    }
}
