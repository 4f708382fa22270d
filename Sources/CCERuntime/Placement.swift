// Placement: where memory lives and where threads run, through libnuma.
//
// On a machine with several NUMA nodes the classifier (read by every thread) is
// interleaved page by page over the nodes, each worker's scratch is allocated on the node
// it runs on, and workers are pinned to CPUs. On a one-node machine (or where libnuma
// reports NUMA unavailable) every call quietly becomes plain allocation and no pinning
// is changed: results are identical either way, only speed can differ.

import CNUMA
#if canImport(Glibc)
import Glibc
#endif

public enum Placement {
    /// True when libnuma works and the machine has more than one node.
    public static let isNUMA: Bool = numa_available() >= 0 && numa_max_node() > 0

    public enum Policy: Sendable { case interleaved, local }

    /// Allocates `bytes` bytes (64-byte aligned) with `policy` on NUMA machines, plainly
    /// otherwise. Free with `free(_:bytes:)`.
    public static func allocate(bytes: Int, policy: Policy) -> UnsafeMutableRawPointer {
        let n = max(bytes, 64)
        if isNUMA {
            let p: UnsafeMutableRawPointer? = policy == .interleaved
                ? numa_alloc_interleaved(n) : numa_alloc_local(n)
            if let p { return p }
        }
        return UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
    }

    /// Frees memory from `allocate`.
    public static func free(_ p: UnsafeMutableRawPointer, bytes: Int) {
        if isNUMA { numa_free(p, max(bytes, 64)) } else { p.deallocate() }
    }

    /// Spreads the pages of `buffer` over all nodes (moving pages already placed), so that
    /// every worker reads the classifier at the same average distance. No-op on one-node
    /// machines. Returns whether pages were (re)placed.
    @discardableResult
    public static func interleave(_ buffer: UnsafeRawBufferPointer) -> Bool {
        guard isNUMA, let base = buffer.baseAddress, buffer.count > 0 else { return false }
        return cce_interleave_pages(UnsafeMutableRawPointer(mutating: base), UInt(buffer.count)) == 0
    }

    /// Asks the kernel for transparent huge pages (2 MiB) over the whole 2 MiB pages inside
    /// `bytes` bytes at `p` (madvise MADV_HUGEPAGE; nothing for less than two of them). For a
    /// large output about to be written for the first time: a new V x D gradient is tens of
    /// thousands of 4 KiB page faults, each taken and zeroed by the thread that first writes
    /// the page; with huge pages they are a few hundred. It changes no value and no memory
    /// outside the range; where THP is off (or `never`) the kernel ignores it or refuses it,
    /// which is ignored too. Measured on Docs/PYTHON.md's machine: a new 262 MB bf16 tensor
    /// allocated and filled by 2 threads in 34 ms with the advice, 80 ms without.
    public static func adviseHugePages(_ p: UnsafeMutableRawPointer, bytes: Int) {
        let page = 1 << 21
        let start = (Int(bitPattern: p) + page - 1) & ~(page - 1)
        let end = (Int(bitPattern: p) + bytes) & ~(page - 1)
        guard end - start >= 2 * page, let aligned = UnsafeMutableRawPointer(bitPattern: start) else { return }
        _ = madvise(aligned, end - start, MADV_HUGEPAGE)
    }

    /// `bytes` bytes of fresh zeros that take no memory until written: an anonymous private
    /// mapping with 4 KiB pages (huge pages refused: a page of it costs memory only once one
    /// of its values is written, and a huge page would make that 2 MiB). Nil where there is no
    /// such mapping (not Linux) or the system refuses it. Free with `unmap(_:bytes:)`.
    public static func mapZeros(bytes: Int) -> UnsafeMutableRawPointer? {
        #if os(Linux)
        let n = max(bytes, 1)
        if let p = mmap(nil, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED {
            _ = madvise(p, n, MADV_NOHUGEPAGE)
            return p
        }
        #endif
        return nil
    }

    /// Frees memory from `mapZeros`.
    public static func unmap(_ p: UnsafeMutableRawPointer, bytes: Int) {
        #if os(Linux)
        _ = munmap(p, max(bytes, 1))
        #endif
    }

    /// Makes a whole `mapZeros` mapping (`p`, `bytes` as mapped) zeros again by giving its pages
    /// back to the system (MADV_DONTNEED: the next write of a page takes a fresh zero page), or,
    /// where the system refuses, by writing the zeros. Only for such a mapping: on other memory
    /// the advice would take whole pages, beyond the buffer's ends too.
    public static func dropPages(_ p: UnsafeMutableRawPointer, bytes: Int) {
        #if os(Linux)
        if madvise(p, max(bytes, 1), MADV_DONTNEED) == 0 { return }
        #endif
        p.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 1))
    }

    /// Pins the calling thread to one CPU of its allowed set (no-op on one-node machines,
    /// where the scheduler already does well and pinning could fight other processes).
    public static func pinCurrentThread(toCPU index: Int) {
        guard isNUMA else { return }
        _ = cce_pin_current_thread(Int32(index))
    }
}

/// A typed scratch buffer placed by `Placement`, freed on deinit.
public final class Scratch<T>: @unchecked Sendable {
    public let base: UnsafeMutablePointer<T>
    public let count: Int
    private let bytes: Int

    public init(count: Int, policy: Placement.Policy = .local) {
        self.count = count
        bytes = max(count, 1) * MemoryLayout<T>.stride
        base = Placement.allocate(bytes: bytes, policy: policy).bindMemory(to: T.self, capacity: max(count, 1))
    }

    deinit { Placement.free(UnsafeMutableRawPointer(base), bytes: bytes) }
}
