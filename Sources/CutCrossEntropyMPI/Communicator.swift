// The ranks of a run and the few collectives CCE needs across them, over MPI.
//
// MPI is loaded at run time: libcce_mpi.so (Sources/CCEMPIShim, the only binary that links
// libmpi) is opened with dlopen when this process was started by mpirun, and not at all
// otherwise. So the `cce` tool, which is also built statically and copied to machines
// without MPI (cuda/make_swift_bundle.sh), starts everywhere, and a run without mpirun is
// one rank that needs no MPI library. The library is looked for at $CCE_MPI_LIBRARY, beside
// the running executable, then on the loader's path.
//
// Determinism: no MPI reduction is used. Sums across ranks are gathered and added in rank
// order by this file's own code (`orderedSum`), so the result has the same bits on every
// rank and in every run with the same number of ranks, whichever algorithm the MPI library
// picks for its collectives.
//
// Errors: MPI calls return codes (MPI_ERRORS_RETURN), thrown as `ParallelError.mpi`. Work
// that may fail on some ranks only runs inside `agree`, after which every rank knows
// whether any failed and throws the same error, so no rank waits in a collective for a
// rank that has given up.
//
// Traffic: each collective adds to `traffic` the payload this rank's data had to deliver to
// other ranks and the payload it received from them (for an all-gather of b bytes per rank:
// (P − 1)·b each way). That is what the algorithm moves; the MPI library's own algorithms
// (rings, trees, shared-memory copies) may move more on the wire.

import CCEMPIABI
import CutCrossEntropy
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Failures of a run across processes.
public enum ParallelError: Error, Equatable, CustomStringConvertible {
    /// MPI is needed (the process was started by mpirun) and cannot be loaded or started.
    case unavailable(String)
    /// An MPI call failed.
    case mpi(String)
    /// The ranks disagree on the configuration (shapes, element types, options); every rank
    /// throws the same error.
    case mismatch(String)
    /// Rank `rank` failed with `message` (the first failing rank in rank order); every rank
    /// throws the same error.
    case failed(rank: Int, message: String)

    public var description: String {
        switch self {
        case .unavailable(let s): return "MPI unavailable: \(s)"
        case .mpi(let s): return "MPI error: \(s)"
        case .mismatch(let s): return "the ranks disagree: \(s)"
        case .failed(let rank, let message): return "rank \(rank): \(message)"
        }
    }

    /// Whether every rank throws this error together (so each can leave cleanly): true for
    /// `mismatch` and `failed`.
    public var isAgreed: Bool {
        switch self { case .mismatch, .failed: true; default: false }
    }
}

/// Bytes moved by this rank's collectives (payload, see the file's header) and time spent in them.
public struct Traffic: Sendable, Equatable {
    public var bytesSent = 0, bytesReceived = 0
    /// Collective calls, and seconds spent inside them (waiting for other ranks included).
    public var calls = 0
    public var seconds = 0.0
    public init() {}
}

/// The ranks of this run: MPI_COMM_WORLD, or one rank without MPI.
public final class Communicator: @unchecked Sendable {
    /// This process's rank, 0 ..< size.
    public let rank: Int
    public let size: Int
    /// What this rank's collectives moved so far.
    public private(set) var traffic = Traffic()
    /// The MPI library's version text (nil without MPI).
    public let mpiVersion: String?
    let library: MPILibrary?

    private init(rank: Int, size: Int, library: MPILibrary?, version: String?) {
        self.rank = rank; self.size = size; self.library = library; self.mpiVersion = version
    }

    /// One rank, no MPI: every collective returns this rank's own data.
    public static func single() -> Communicator { Communicator(rank: 0, size: 1, library: nil, version: nil) }

    /// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun with PMI):
    /// Open MPI's OMPI_COMM_WORLD_SIZE, PMIx's PMIX_RANK or PMI's PMI_SIZE is set.
    public static var launchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"].contains { env[$0] != nil }
    }

    nonisolated(unsafe) private static var worldInstance: Communicator?
    private static let worldLock = NSLock()

    /// The world: MPI_COMM_WORLD when the process was started by mpirun (libcce_mpi.so loaded
    /// from `library`, else $CCE_MPI_LIBRARY, beside the executable, then the loader's path;
    /// MPI initialized once), otherwise one rank without MPI. Throws
    /// `ParallelError.unavailable` when MPI is needed and cannot be loaded or started.
    public static func world(library path: String? = nil) throws -> Communicator {
        worldLock.lock(); defer { worldLock.unlock() }
        if let w = worldInstance { return w }
        guard launchedByMPI else {
            let w = single()
            worldInstance = w
            return w
        }
        let lib = try MPILibrary.load(path)
        var rank: Int32 = 0, size: Int32 = 0
        let rc = lib.initialize(&rank, &size)
        guard rc == 0 else { throw ParallelError.unavailable("MPI_Init failed: \(lib.errorText(rc))") }
        var text = [CChar](repeating: 0, count: 512)
        lib.version(&text, Int32(text.count))
        let w = Communicator(rank: Int(rank), size: Int(size), library: lib,
                             version: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        worldInstance = w
        return w
    }

    /// MPI_Finalize (collective: call it on every rank, after the last collective). Nothing
    /// without MPI.
    public func finalize() {
        _ = library?.finalize()
    }

    /// Ends every rank at once (MPI_Abort); for errors that the ranks have not agreed on.
    /// Without MPI, exits this process.
    public func abort(_ code: Int32 = 1) -> Never {
        if let library { _ = library.abort(code) }
        exit(code)
    }

    // MARK: - Collectives

    public func barrier() throws {
        try timed(sent: 0, received: 0) { try check(library?.barrier(), "MPI_Barrier") }
    }

    /// Every rank's `values`, in rank order (the lengths may differ).
    public func allGather<T: BitwiseCopyable>(_ values: [T]) throws -> [[T]] {
        try gathered(values, root: nil)
    }

    /// Every rank's `values` on `root`, in rank order; [] on the other ranks.
    public func gather<T: BitwiseCopyable>(_ values: [T], root: Int = 0) throws -> [[T]] {
        try gathered(values, root: root)
    }

    /// allGather (root nil) or gather: the counts first, then the values in rounds of at most
    /// `roundBytes` per rank; each round lands in a staging buffer (MPI displacements are
    /// ints) and is copied to its place.
    func gathered<T: BitwiseCopyable>(_ values: [T], root: Int?) throws -> [[T]] {
        guard let library else { return [values] }
        let counts = try allGatherCounts(values.count)
        let stride = MemoryLayout<T>.stride
        let receives = root == nil || root == rank
        let starts = counts.indices.map { counts[..<$0].reduce(0, +) }   // rank r's first element in `flat`
        let total = receives ? counts.reduce(0, +) : 0
        var flat = [T](unsafeUninitializedCapacity: total) { _, n in n = total }
        let sent = values.count * stride * (root == nil ? size - 1 : (rank == root ? 0 : 1))
        try timed(sent: sent, received: receives ? (counts.reduce(0, +) - values.count) * stride : 0) {
            try values.withUnsafeBytes { send in
                try flat.withUnsafeMutableBytes { recv in
                    try rounds(counts: counts.map { $0 * stride }) { offsets, lengths in
                        let displs = lengths.indices.map { lengths[..<$0].reduce(0, +) }
                        var staging = [UInt8](repeating: 0, count: receives ? Int(lengths.reduce(0, +)) : 0)
                        let mine = send.baseAddress.map { $0 + offsets[rank] }
                        try staging.withUnsafeMutableBytes { st in
                            if let root {
                                try check(library.gatherv(mine, lengths[rank], st.baseAddress, lengths, displs, Int32(root)),
                                          "MPI_Gatherv")
                            } else {
                                try check(library.allgatherv(mine, lengths[rank], st.baseAddress, lengths, displs),
                                          "MPI_Allgatherv")
                            }
                            guard receives else { return }
                            for r in 0..<size where lengths[r] > 0 {
                                (recv.baseAddress! + starts[r] * stride + offsets[r])
                                    .copyMemory(from: st.baseAddress! + Int(displs[r]), byteCount: Int(lengths[r]))
                            }
                        }
                    }
                }
            }
        }
        guard receives else { return [] }
        return counts.indices.map { Array(flat[starts[$0]..<(starts[$0] + counts[$0])]) }
    }

    /// Root's `values` on every rank.
    public func broadcast<T: BitwiseCopyable>(_ values: [T], root: Int = 0) throws -> [T] {
        guard let library else { return values }
        var count = [Int64(values.count)]
        try timed(sent: rank == root ? 8 * (size - 1) : 0, received: rank == root ? 0 : 8) {
            try count.withUnsafeMutableBytes { try check(library.bcast($0.baseAddress, 8, Int32(root)), "MPI_Bcast") }
        }
        var out = rank == root ? values : [T](unsafeUninitializedCapacity: Int(count[0])) { _, n in n = Int(count[0]) }
        let bytes = out.count * MemoryLayout<T>.stride
        try timed(sent: rank == root ? bytes * (size - 1) : 0, received: rank == root ? 0 : bytes) {
            try out.withUnsafeMutableBytes { buf in
                var done = 0
                while done < bytes {
                    let n = min(bytes - done, roundBytes)
                    try check(library.bcast(buf.baseAddress! + done, Int64(n), Int32(root)), "MPI_Bcast")
                    done += n
                }
            }
        }
        return out
    }

    /// Σ over the ranks of `values` (the same length on every rank), added in rank order in
    /// Float64 and rounded once: x = Float((((0 + x_0) + x_1) + …) + x_{P−1}) per element, the
    /// same bits on every rank. Each rank adds the P copies of one 1/P of the elements
    /// (MPI_Alltoallv), then every rank gets every part (MPI_Allgatherv): (P − 1)/P of the
    /// array sent and received twice, as a ring all-reduce would, in rounds of bounded size.
    public func orderedSum(_ values: inout [Float]) throws {
        try values.withUnsafeMutableBufferPointer { try orderedSum($0) }
    }

    /// The same over caller memory (Float32 values, summed in place).
    public func orderedSum(_ values: UnsafeMutableBufferPointer<Float>) throws {
        try orderedSum(values, widen: { Double($0) }, narrow: { Float($0) })
    }

    /// The same for Float64 values (added in Float64).
    public func orderedSum(_ values: inout [Double]) throws {
        try values.withUnsafeMutableBufferPointer { try orderedSum($0, widen: { $0 }, narrow: { $0 }) }
    }

    /// The same for engine values (Float32 or Float64).
    public func orderedSum(_ values: Values) throws -> Values {
        switch values {
        case .float32(var v): try orderedSum(&v); return .float32(v)
        case .float64(var v): try orderedSum(&v); return .float64(v)
        }
    }

    /// Runs `body` on every rank, then agrees: if it threw on any rank, every rank throws
    /// `ParallelError.failed` naming the first failing rank and its message (a rank's own
    /// agreed error passes through unchanged). Otherwise returns body's result.
    public func agree<R>(_ body: () throws -> R) throws -> R {
        let outcome: Result<R, Error>
        do { outcome = .success(try body()) } catch { outcome = .failure(error) }
        guard library != nil else { return try outcome.get() }
        var message: [UInt8] = []
        if case .failure(let e) = outcome {
            message = Array("\(e)".utf8)
            if message.isEmpty { message = Array("failed".utf8) }
        }
        let all = try allGather(message)
        guard let r = all.firstIndex(where: { !$0.isEmpty }) else { return try outcome.get() }
        // An error every rank raised together (a mismatch that checkSame found inside body)
        // passes through as it is.
        if case .failure(let e as ParallelError) = outcome, e.isAgreed, all.allSatisfy({ !$0.isEmpty }) { throw e }
        throw ParallelError.failed(rank: r, message: String(decoding: all[r], as: UTF8.self))
    }

    /// Checks that every rank passes the same `fields` (name, value), in the same order;
    /// throws `ParallelError.mismatch` on every rank otherwise, naming the first field that
    /// differs from rank 0's and the ranks' values.
    public func checkSame(_ fields: [(String, String)]) throws {
        guard library != nil else { return }
        let text = fields.map { "\($0.0)\u{1F}\($0.1)" }.joined(separator: "\u{1E}")
        let all = try allGather(Array(text.utf8)).map { String(decoding: $0, as: UTF8.self) }
        guard let r = all.firstIndex(where: { $0 != all[0] }) else { return }
        func parse(_ s: String) -> [(String, String)] {
            s.split(separator: "\u{1E}", omittingEmptySubsequences: false).map {
                let p = $0.split(separator: "\u{1F}", maxSplits: 1, omittingEmptySubsequences: false)
                return (String(p.first ?? ""), p.count > 1 ? String(p[1]) : "")
            }
        }
        let a = parse(all[0]), b = parse(all[r])
        for k in 0..<max(a.count, b.count) {
            let x = k < a.count ? a[k] : ("?", "(none)"), y = k < b.count ? b[k] : ("?", "(none)")
            if x.0 != y.0 || x.1 != y.1 {
                throw ParallelError.mismatch("\(x.0 == y.0 ? x.0 : "\(x.0)/\(y.0)"): rank 0 has \(x.1), rank \(r) has \(y.1)")
            }
        }
        throw ParallelError.mismatch("rank \(r) differs from rank 0")
    }

    // MARK: - Internals

    /// Bytes per rank per round: MPI counts and displacements are ints, so a round's whole
    /// receive buffer stays below 2^31 bytes.
    var roundBytes: Int { max(64, (Int(Int32.max) / max(size, 1)) & ~63) }

    /// Every rank's count.
    func allGatherCounts(_ count: Int) throws -> [Int] {
        guard let library else { return [count] }
        var mine = [Int64(count)]
        var all = [Int64](repeating: 0, count: size)
        let counts = [Int64](repeating: 8, count: size), displs = (0..<size).map { Int64($0 * 8) }
        try timed(sent: 8 * (size - 1), received: 8 * (size - 1)) {
            try mine.withUnsafeMutableBytes { m in
                try all.withUnsafeMutableBytes { a in
                    try check(library.allgatherv(m.baseAddress, 8, a.baseAddress, counts, displs), "MPI_Allgatherv")
                }
            }
        }
        return all.map { Int($0) }
    }

    /// Calls `body(offsets, lengths)` once per round, so that every rank's bytes (`counts`)
    /// go in pieces of at most `roundBytes`; every rank runs the same number of rounds.
    func rounds(counts: [Int], _ body: (_ offsets: [Int], _ lengths: [Int64]) throws -> Void) throws {
        let per = roundBytes
        let n = max(1, (counts.max()! + per - 1) / per)
        for k in 0..<n {
            let offsets = counts.map { min($0, k * per) }
            let lengths = counts.map { Int64(min($0, (k + 1) * per) - min($0, k * per)) }
            try body(offsets, lengths)
        }
    }

    func orderedSum<T: BitwiseCopyable>(_ values: UnsafeMutableBufferPointer<T>, widen: (T) -> Double,
                                         narrow: (Double) -> T) throws {
        guard let library else { return }
        let n = values.count
        let counts = try allGatherCounts(n)
        if let r = counts.firstIndex(where: { $0 != n }) {
            throw ParallelError.mismatch("a sum across ranks of \(counts[0]) values on rank 0 and \(counts[r]) on rank \(r)")
        }
        guard n > 0 else { return }   // every rank has n values (checked above): all return here
        let p = size, stride = MemoryLayout<T>.stride
        // Elements per round: at most 2^16 (the P pieces a rank receives and its sums then
        // take 320 KiB or less in Float32: the sum's extra memory does not grow with the
        // array). The bits do not depend on it: each element is added over the ranks in rank
        // order whatever round it is in. 2^20 took 5 MiB, as much as a vocabulary shard's
        // whole 1% budget at N = 4096, D = 1024, V = 128256 over 4 ranks; 2^18, 1.25 MiB.
        let perRound = max(p, min(1 << 16, roundBytes / stride / 2))
        var start = 0
        repeat {
            let len = min(n - start, perRound)
            let bounds = (0...p).map { start + $0 * len / p }   // rank r owns bounds[r] ..< bounds[r + 1]
            let mineCount = bounds[rank + 1] - bounds[rank]
            var pieces = [T](unsafeUninitializedCapacity: p * mineCount) { _, k in k = p * mineCount }
            let sendCounts = (0..<p).map { Int64((bounds[$0 + 1] - bounds[$0]) * stride) }
            let sendDispls = (0..<p).map { Int64((bounds[$0] - start) * stride) }
            let recvCounts = [Int64](repeating: Int64(mineCount * stride), count: p)
            let recvDispls = (0..<p).map { Int64($0 * mineCount * stride) }
            let others = Int(sendCounts.reduce(0, +)) - mineCount * stride
            try timed(sent: others, received: (p - 1) * mineCount * stride) {
                try pieces.withUnsafeMutableBytes { recv in
                    try check(library.alltoallv(UnsafeRawPointer(values.baseAddress!) + start * stride, sendCounts,
                                                sendDispls, recv.baseAddress, recvCounts, recvDispls), "MPI_Alltoallv")
                }
            }
            // The owner adds the P copies of its elements in rank order.
            var part = [T](unsafeUninitializedCapacity: mineCount) { _, k in k = mineCount }
            for j in 0..<mineCount {
                var acc = 0.0
                for r in 0..<p { acc += widen(pieces[r * mineCount + j]) }
                part[j] = narrow(acc)
            }
            let gatherCounts = sendCounts, gatherDispls = sendDispls
            try timed(sent: mineCount * stride * (p - 1), received: others) {
                try part.withUnsafeBytes { send in
                    try check(library.allgatherv(send.baseAddress, Int64(mineCount * stride),
                                                 UnsafeMutableRawPointer(values.baseAddress!) + start * stride,
                                                 gatherCounts, gatherDispls), "MPI_Allgatherv")
                }
            }
            start += len
        } while start < n
    }

    func timed(sent: Int, received: Int, _ body: () throws -> Void) throws {
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer {
            traffic.calls += 1
            traffic.seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        }
        try body()
        traffic.bytesSent += sent; traffic.bytesReceived += received
    }

    func check(_ rc: Int32?, _ what: String) throws {
        guard let rc, rc != 0, let library else { return }
        throw ParallelError.mpi("\(what) on rank \(rank): \(library.errorText(rc))")
    }
}

/// libcce_mpi.so, opened with dlopen; its functions typed as cce_mpi.h declares them.
final class MPILibrary: @unchecked Sendable {
    let path: String
    let initialize: cce_mpi_init_fn
    let finalize: cce_mpi_finalize_fn
    let abort: cce_mpi_abort_fn
    let barrier: cce_mpi_barrier_fn
    let bcast: cce_mpi_bcast_fn
    let allgatherv: cce_mpi_allgatherv_fn
    let gatherv: cce_mpi_gatherv_fn
    let alltoallv: cce_mpi_alltoallv_fn
    let errorString: cce_mpi_error_string_fn
    let version: cce_mpi_library_version_fn

    private init(path: String, handle h: UnsafeMutableRawPointer) throws {
        func sym<T>(_ name: String, _: T.Type) throws -> T {
            guard let s = dlsym(h, name) else {
                throw ParallelError.unavailable("\(path) has no symbol \(name) (an older build?)")
            }
            return unsafeBitCast(s, to: T.self)
        }
        self.path = path
        let abi = try sym("cce_mpi_abi_version", cce_mpi_abi_version_fn.self)()
        guard abi == CCE_MPI_ABI_VERSION else {
            throw ParallelError.unavailable("\(path) implements ABI \(abi), this program needs \(CCE_MPI_ABI_VERSION)")
        }
        initialize = try sym("cce_mpi_init", cce_mpi_init_fn.self)
        finalize = try sym("cce_mpi_finalize", cce_mpi_finalize_fn.self)
        abort = try sym("cce_mpi_abort", cce_mpi_abort_fn.self)
        barrier = try sym("cce_mpi_barrier", cce_mpi_barrier_fn.self)
        bcast = try sym("cce_mpi_bcast", cce_mpi_bcast_fn.self)
        allgatherv = try sym("cce_mpi_allgatherv", cce_mpi_allgatherv_fn.self)
        gatherv = try sym("cce_mpi_gatherv", cce_mpi_gatherv_fn.self)
        alltoallv = try sym("cce_mpi_alltoallv", cce_mpi_alltoallv_fn.self)
        errorString = try sym("cce_mpi_error_string", cce_mpi_error_string_fn.self)
        version = try sym("cce_mpi_library_version", cce_mpi_library_version_fn.self)
    }

    func errorText(_ code: Int32) -> String {
        var text = [CChar](repeating: 0, count: 512)
        errorString(code, &text, Int32(text.count))
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The library from `path`, else $CCE_MPI_LIBRARY, else libcce_mpi.so beside the running
    /// executable, else the loader's search path. RTLD_GLOBAL: Open MPI's plugins, which it
    /// opens itself, resolve symbols of libmpi through the global scope.
    static func load(_ path: String?) throws -> MPILibrary {
        var candidates: [String] = []
        if let path { candidates = [path] } else {
            if let env = ProcessInfo.processInfo.environment["CCE_MPI_LIBRARY"], !env.isEmpty { candidates.append(env) }
            if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
                candidates.append(URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("libcce_mpi.so").path)
            }
            candidates.append("libcce_mpi.so")
        }
        var reasons: [String] = []
        for c in candidates {
            if c.contains("/") && !FileManager.default.fileExists(atPath: c) { reasons.append("\(c): no such file"); continue }
            guard let h = dlopen(c, RTLD_NOW | RTLD_GLOBAL) else {
                reasons.append(String(cString: dlerror()))
                continue
            }
            return try MPILibrary(path: c, handle: h)
        }
        throw ParallelError.unavailable("cannot load libcce_mpi.so (build it with `swift build -c release --product cce_mpi` "
                                        + "after scripts/setup.sh, or set CCE_MPI_LIBRARY): " + reasons.joined(separator: "; "))
    }
}
