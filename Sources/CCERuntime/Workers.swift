// Threads: a fixed number of workers that run at the same time.
//
// The engine hands token blocks to workers in increasing order as they ask for them
// (`Counter`: a worker takes the next block when it finishes one), so a worker on a slower
// or busier CPU simply computes fewer blocks. Which worker computes a block depends on
// timing; what the block computes does not (its rows, its tiles, and dC's hand-off order are
// fixed by the tile plan), so results stay bitwise reproducible. The backward's dC
// hand-off (HandOff.swift) makes a worker wait for its predecessor block, which is only
// safe when every worker really runs concurrently: `DispatchQueue.concurrentPerform` does
// not promise that (it may run iterations one after another on a busy pool), so workers
// are dedicated threads, started per call and joined before it returns. Starting P
// threads costs tens of microseconds, far below one tile's work.

import CNUMA
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Hands out 0, 1, 2, … to whoever asks, each number once, in increasing order (an atomic
/// fetch-and-add): the dynamic schedule of token blocks.
public final class Counter: @unchecked Sendable {
    private let value = Atomic<Int>(0)

    public init() {}

    /// The next number.
    @inline(__always)
    public func next() -> Int { value.add(1, ordering: .relaxed).oldValue }
}

public enum Workers {
    /// The number of CPUs this process may run on (sched_getaffinity), at least 1.
    public static var availableCPUs: Int {
        let n = Int(cce_allowed_cpu_count())
        return n > 0 ? n : System.onlineCPUs
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
        var threads: [pthread_t] = []
        for w in 1..<count {
            threads.append(startThread(stackSize: 1 << 22) {
                if pin { Placement.pinCurrentThread(toCPU: w) }
                body(w)
            })
        }
        body(0)
        for t in threads { pthread_join(t, nil) }
    }

    /// A new thread (POSIX, `stackSize` bytes of stack) running `body`; join it with pthread_join.
    static func startThread(stackSize: Int, _ body: @escaping @Sendable () -> Void) -> pthread_t {
        final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, stackSize)
        var thread = pthread_t()
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let rc = pthread_create(&thread, &attributes, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if rc != 0 { fatalError("cce: cannot start a worker thread (pthread_create: \(rc))") }
        return thread
    }

    /// Writes zeros over `count` elements at `base`, split into contiguous ranges among up to
    /// `threads` workers (at least 1 MiB each): zeroing a V x D gradient is a pass over
    /// hundreds of megabytes, which one thread would do at a fraction of the memory's rate.
    /// Huge pages are asked for first (Placement.adviseHugePages): new memory then faults in
    /// 2 MiB at a time.
    public static func zero<T>(_ base: UnsafeMutablePointer<T>, count: Int, threads: Int) {
        Placement.adviseHugePages(UnsafeMutableRawPointer(base), bytes: count * MemoryLayout<T>.stride)
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
