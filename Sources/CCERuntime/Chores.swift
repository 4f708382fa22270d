// Chores: set-up work done in pieces between the workers' own work, instead of in a phase of
// its own before it.
//
// Some of a call's set-up only has to be finished by the time a later stage reads it (the
// fused call zeroes V x D gradients that only its backward writes). Done first, by every
// worker at once, such memory-bound work saturates the memory bus while the cores wait; done
// a piece at a time between the forward's compute-bound tile steps, each piece runs at one
// core's speed while the other cores compute, and most of its time is hidden. Each piece is
// done exactly once, by whichever worker claims it first (in order, `claimNext`, or by its
// number, `claim`); a worker about to read the results calls `waitForAll` after claiming and
// doing whatever pieces are left. What a piece computes does not depend on who does it, so
// results stay bitwise reproducible.

import CNUMA
import Synchronization

public final class Chores: @unchecked Sendable {
    private let claimed: UnsafeMutablePointer<Atomic<Bool>>
    private let cursor = Atomic<Int>(0)
    private let finished = Atomic<Int>(0)
    /// The number of pieces.
    public let count: Int

    /// `count` pieces, none claimed.
    public init(count: Int) {
        self.count = max(0, count)
        claimed = .allocate(capacity: max(self.count, 1))
        for i in 0..<self.count { (claimed + i).initialize(to: Atomic(false)) }
    }

    deinit {
        claimed.deinitialize(count: count)
        claimed.deallocate()
    }

    /// Claims piece `i`: true exactly once over all callers (the caller then does it and calls
    /// `done`).
    @inline(__always)
    public func claim(_ i: Int) -> Bool {
        guard i >= 0, i < count, !claimed[i].load(ordering: .relaxed) else { return false }
        return claimed[i].compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
    }

    /// Claims the lowest piece not yet claimed, or returns nil when every piece is.
    @inline(__always)
    public func claimNext() -> Int? {
        var i = cursor.load(ordering: .relaxed)
        while i < count {
            if claim(i) { cursor.store(i + 1, ordering: .relaxed); return i }
            i += 1
        }
        return nil
    }

    /// Records that a claimed piece is done (release: what it wrote is visible to `waitForAll`).
    @inline(__always)
    public func done() { finished.add(1, ordering: .releasing) }

    /// Whether every piece is done (acquire).
    @inline(__always)
    public var allDone: Bool { finished.load(ordering: .acquiring) == count }

    /// Waits until every piece is done (acquire: what the pieces wrote is visible). Call it after
    /// claiming and doing the pieces left, so that it waits only for pieces other workers are
    /// doing. Returns the seconds it waited when PhaseTrace is enabled, else 0.
    @discardableResult
    public func waitForAll() -> Double { spinUntil { allDone } }
}

/// Zeroes `bytes` bytes at `base` with non-temporal stores where the CPU has them (x86-64),
/// else with memset: for a large buffer zeroed in pieces between compute-bound work (Chores),
/// whose pieces should neither evict the caches' working set nor read each line first.
@inline(__always)
public func streamZero(_ base: UnsafeMutableRawPointer, bytes: Int) {
    if bytes > 0 { cce_stream_zero(base, UInt(bytes)) }
}
