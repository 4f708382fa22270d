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

/// Per-worker compute and hand-off wait times of one sweep (filled only when tracing).
public final class WorkerClock: @unchecked Sendable {
    public private(set) var busy: [Double]
    public private(set) var waited: [Double]

    public init(workers: Int) {
        busy = [Double](repeating: 0, count: workers)
        waited = [Double](repeating: 0, count: workers)
    }

    /// Records worker w's totals (each worker writes only its own entries).
    public func record(worker w: Int, busy b: Double, waited wt: Double) {
        busy[w] = b
        waited[w] = wt
    }

    /// "workers busy min–max ms, hand-off waits min–max ms".
    public var summary: String {
        func range(_ x: [Double]) -> String {
            guard let lo = x.min(), let hi = x.max() else { return "-" }
            return "\((lo * 1e4).rounded() / 10)–\((hi * 1e4).rounded() / 10) ms"
        }
        return "\(busy.count) workers busy \(range(busy)), waiting in dC's hand-off \(range(waited))"
    }
}
