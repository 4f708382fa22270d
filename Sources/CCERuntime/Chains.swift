// Token blocks as chains of steps, so that fast workers take over slow workers' blocks.
//
// A worker that owns a whole token block finishes when its CPU lets it: on a machine whose
// CPUs run at different speeds (virtual CPUs sharing cores with other tenants), the call
// lasts as long as its slowest worker, and with one block per worker (N = 4096 on 16
// threads) there is nothing left to hand to the fast ones. Smaller blocks would balance but
// read all of C once more per block. Instead a block's sweep over the vocabulary is cut
// into steps (segments of the vocabulary: Engine.swift), and a block becomes a chain: step
// s + 1 starts, on whichever worker is free, once step s has finished. The running state a
// step leaves (each row's running LSE, dE so far) lives in the call's buffers, not in the
// worker, and every step does its part in the same order as one worker would, so the
// results are bitwise those of the unsegmented sweep, whoever runs which step.
//
// Hand-out rules (`ChainSchedule.next`):
//   - a block's steps run one at a time, in order;
//   - at most `slots` blocks are in flight (their per-block buffers: the fused call's block
//     statistics); blocks start in increasing order;
//   - from step `orderedFrom` on (the backward's steps, whose dC additions wait for the
//     previous token block's: HandOff.swift), step s of block b is handed out only after
//     step s of block b − 1 has been. A worker then waits only for steps that some worker
//     is running, and those wait only for earlier blocks' running steps, down to block 0
//     or to one whose predecessor is done: no cycle, so no deadlock however few workers;
//   - among the steps that may start, the lowest step first, then the lowest block: blocks
//     advance as a front, and a slow worker's block is continued by whoever frees up first.
// A worker with nothing it may start waits (yielding, then sleeping 20 µs at a time) until
// a step finishes or everything has been handed out.

import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public final class ChainSchedule: @unchecked Sendable {
    /// Step `step` of token block `block`; `slot` is the block's in-flight slot (0 ..< slots),
    /// the same for all its steps.
    public struct Item: Sendable, Equatable {
        public let block: Int, step: Int, slot: Int
    }

    private struct State {
        var next: [Int]          // per block: the next step to hand out
        var running: [Bool]      // per block: a step is running
        var slotOf: [Int]        // per block: its slot while in flight
        var live: [Int] = []     // blocks in flight, in increasing order
        var freeSlots: [Int]
        var started = 0          // blocks started (they start in order)
        var handedOut = 0        // items handed out
    }

    public let blocks: Int, steps: Int, orderedFrom: Int
    private let state: Mutex<State>

    /// `blocks` chains of `steps` steps; at most `slots` blocks in flight; steps from
    /// `orderedFrom` on follow the previous block's (steps when none do).
    public init(blocks: Int, steps: Int, slots: Int, orderedFrom: Int) {
        self.blocks = blocks; self.steps = steps; self.orderedFrom = orderedFrom
        let s = max(1, slots)
        state = Mutex(State(next: [Int](repeating: 0, count: blocks), running: [Bool](repeating: false, count: blocks),
                            slotOf: [Int](repeating: -1, count: blocks), freeSlots: Array((0..<s).reversed())))
    }

    /// The next step this worker may run, waiting until one may start; nil when every step
    /// has been handed out. `waited` grows by the seconds spent waiting (when tracing).
    public func next(waited: inout Double) -> Item? {
        var spins = 0
        var start = 0.0
        while true {
            let claim: Item?? = state.withLock { st in
                if st.handedOut == blocks * steps { return .some(nil) }
                var best: (step: Int, block: Int)? = nil
                func consider(_ b: Int, _ s: Int) {
                    if let c = best, (c.step, c.block) <= (s, b) { return }
                    best = (s, b)
                }
                for b in st.live where !st.running[b] && st.next[b] < steps {
                    let s = st.next[b]
                    if s >= orderedFrom && b > 0 && st.next[b - 1] <= s { continue }
                    consider(b, s)
                }
                // The next block may start in a free slot (its step 0 follows block b − 1's,
                // which started earlier).
                if st.started < blocks && !st.freeSlots.isEmpty { consider(st.started, 0) }
                guard let pick = best else { return nil }
                let b = pick.block
                if b == st.started {
                    st.slotOf[b] = st.freeSlots.removeLast()
                    st.live.append(b)
                    st.started += 1
                }
                st.running[b] = true
                st.next[b] += 1
                st.handedOut += 1
                return .some(Item(block: b, step: pick.step, slot: st.slotOf[b]))
            }
            if let claim {
                if spins > 0 && PhaseTrace.enabled { waited += monotonicSeconds() - start }
                return claim
            }
            if spins == 0 && PhaseTrace.enabled { start = monotonicSeconds() }
            spins += 1
            if spins < 64 {
                sched_yield()
            } else {
                var t = timespec(tv_sec: 0, tv_nsec: 20_000)
                nanosleep(&t, nil)
            }
        }
    }

    /// Marks `item` done: the block's next step may start; after its last step the block
    /// leaves flight and frees its slot.
    public func finish(_ item: Item) {
        state.withLock { st in
            let b = item.block
            st.running[b] = false
            if st.next[b] == steps {
                st.freeSlots.append(st.slotOf[b])
                st.live.removeAll { $0 == b }
            }
        }
    }
}
