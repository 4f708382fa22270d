// The ordered hand-off: deterministic accumulation into rows shared by all token blocks.
//
// Threads own token blocks, so dE rows are private, but every token block adds into every
// row of dC. HandOff keeps one ticket per vocabulary block: token block b may add into
// vocabulary block j only when ticket[j] == b, and sets ticket[j] = b + 1 when done. The
// additions into each dC row therefore happen in token-block order, whatever the number of
// threads and whatever the timing: results are bitwise reproducible, and with the tile
// plan fixed they do not even depend on the thread count. Token blocks advance as a skewed
// wavefront; a worker whose turn has not come queues its update and goes on (see
// Backward.swift), and waits only when its queue is full or its block is done. The wait is
// a spin on an atomic load that yields the CPU after a while, since on an oversubscribed
// machine the thread it waits for may need the core.

import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public final class HandOff: @unchecked Sendable {
    private let tickets: UnsafeMutablePointer<Atomic<Int>>
    public let count: Int

    /// `count` tickets, all at 0.
    public init(count: Int) {
        self.count = count
        tickets = .allocate(capacity: max(count, 1))
        for i in 0..<count { (tickets + i).initialize(to: Atomic(0)) }
    }

    deinit {
        tickets.deinitialize(count: count)
        tickets.deallocate()
    }

    /// Waits until slot `slot` is at `turn` (acquire: what the previous owner wrote is visible).
    /// Returns the seconds it waited when PhaseTrace is enabled and the turn had not come
    /// yet, else 0.
    @inline(__always) @discardableResult
    public func wait(slot: Int, turn: Int) -> Double {
        spinUntil { tickets[slot].load(ordering: .acquiring) == turn }
    }

    /// Whether slot `slot` is at `turn` now (acquire), without waiting.
    @inline(__always)
    public func isReady(slot: Int, turn: Int) -> Bool {
        tickets[slot].load(ordering: .acquiring) == turn
    }

    /// Passes slot `slot` on to `turn + 1` (release).
    @inline(__always)
    public func pass(slot: Int, turn: Int) {
        tickets[slot].store(turn + 1, ordering: .releasing)
    }
}

/// Spins until `ready()` holds, yielding the CPU after a while (on an oversubscribed machine
/// the thread awaited may need the core): the wait of HandOff and Chores. Returns the seconds
/// it waited when PhaseTrace is enabled and `ready()` did not hold at once, else 0.
@inline(__always)
func spinUntil(_ ready: () -> Bool) -> Double {
    if ready() { return 0 }
    let start = PhaseTrace.enabled ? monotonicSeconds() : 0
    var spins = 0
    while !ready() {
        spins += 1
        if spins > 64 { sched_yield() }
    }
    return PhaseTrace.enabled ? monotonicSeconds() - start : 0
}
