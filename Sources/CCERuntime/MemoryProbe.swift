// Memory measured from the process: the peak resident set, reset around an operation.
//
// Linux keeps the peak resident set size (VmHWM in /proc/self/status) and resets it to the
// current size when "5" is written to /proc/self/clear_refs. Peak extra memory of an
// operation = VmHWM after it − VmRSS before it (both in pages the kernel counts, so
// allocations the operation never touches do not count, which is what "memory used" means
// here). Where clear_refs is not writable, the probe reports `isResettable == false` and
// peaks include earlier history.
//
// Freed memory that malloc keeps for reuse would hide an operation's allocations (they
// reuse pages already resident), so the probe first fixes glibc's mmap threshold at
// 64 KiB (every larger block is its own mapping, returned to the system on free) and trims
// the heap before each measurement.

import CNUMA

public enum MemoryProbe {
    /// Resident set size now, in bytes.
    public static func residentBytes() -> Int { field("VmRSS:") }
    /// Peak resident set size since the last reset, in bytes.
    public static func peakBytes() -> Int { field("VmHWM:") }

    /// Resets the peak to the current resident size. Returns false if it could not.
    @discardableResult
    public static func resetPeak() -> Bool {
        System.write("5", to: "/proc/self/clear_refs")
    }

    public static let isResettable: Bool = resetPeak()

    /// Makes large allocations visible to the probe (see above). Called by `measure`.
    public static let prepared: Bool = {
        cce_malloc_fix_mmap_threshold(64 << 10)
        return true
    }()

    /// Runs `body` and returns its result with the peak resident growth it caused, in bytes.
    public static func measure<T>(_ body: () throws -> T) rethrows -> (T, Int) {
        _ = prepared
        cce_malloc_trim()
        resetPeak()
        let before = residentBytes()
        let r = try body()
        return (r, max(0, peakBytes() - before))
    }

    static func field(_ name: String) -> Int {
        guard let s = System.readText("/proc/self/status") else { return 0 }
        for line in s.split(separator: "\n") where line.hasPrefix(name) {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        return 0
    }
}
