// Threads: a fixed number of workers that run at the same time.
//
// The engine hands token blocks to workers round-robin (worker w takes blocks w, w+P,
// w+2P, …), so which block a worker computes never depends on timing. The backward's dC
// hand-off (HandOff.swift) makes a worker wait for its predecessor block, which is only
// safe when every worker really runs concurrently: `DispatchQueue.concurrentPerform` does
// not promise that (it may run iterations one after another on a busy pool), so workers
// are dedicated threads, started per call and joined before it returns. Starting P
// threads costs tens of microseconds, far below one tile's work.

import Foundation
import CNUMA
#if canImport(Glibc)
import Glibc
#endif

public enum Workers {
    /// The number of CPUs this process may run on (sched_getaffinity), at least 1.
    public static var availableCPUs: Int {
        let n = Int(cce_allowed_cpu_count())
        return n > 0 ? n : max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    /// Runs `body(w)` for w in 0 ..< count, each on its own thread, concurrently, and
    /// returns when all have finished. With count == 1 the body runs on the caller's thread.
    /// `pin`: when true, worker w is pinned to CPU w mod availableCPUs (Placement.pin).
    public static func run(_ count: Int, pin: Bool = false, _ body: @escaping @Sendable (Int) -> Void) {
        precondition(count >= 1)
        if count == 1 {
            body(0)
            return
        }
        let group = DispatchGroup()
        for w in 1..<count {
            group.enter()
            let thread = Thread {
                if pin { Placement.pinCurrentThread(toCPU: w) }
                body(w)
                group.leave()
            }
            thread.stackSize = 1 << 22
            thread.start()
        }
        body(0)
        group.wait()
    }

    /// Writes zeros over `count` elements at `base`, split into contiguous ranges among up to
    /// `threads` workers (at least 1 MiB each): zeroing a V x D gradient is a pass over
    /// hundreds of megabytes, which one thread would do at a fraction of the memory's rate.
    public static func zero<T>(_ base: UnsafeMutablePointer<T>, count: Int, threads: Int) {
        let perWorker = max(1, (1 << 20) / max(1, MemoryLayout<T>.stride))
        let workers = max(1, min(threads, count / perWorker))
        let chunk = (count + workers - 1) / workers
        let start = UncheckedSendable(UnsafeMutableRawPointer(base))
        run(workers) { w in
            let lo = w * chunk, hi = min(count, lo + chunk)
            if lo < hi { memset(start.value + lo * MemoryLayout<T>.stride, 0, (hi - lo) * MemoryLayout<T>.stride) }
        }
    }
}
