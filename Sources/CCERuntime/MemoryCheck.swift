// One check, made before a command allocates anything, of what its run will allocate
// against this machine's memory: `cce demo`, `cce bench`, `cce accuracy` and `cce explain`
// estimate their peak from their shapes (CCEData's `Footprint`) and call `require`,
// which refuses a run that needs more than 3/4 of the memory this process may use. The
// estimate is arithmetic on the shapes only, so the refusal takes microseconds; it is in
// Double, so no product of sizes can overflow.

/// A run that would need more memory than this machine has to give.
public struct MemoryCheckError: Error, CustomStringConvertible, Equatable {
    /// What was checked, e.g. "N = 1024, D = 100000000, V = 32768 (f32)".
    public let what: String
    /// The estimated peak, and the machine's memory, in bytes.
    public let bytes: Double
    public let machineBytes: Int

    public var description: String {
        "\(what) needs about \(MemoryCheck.text(bytes)) of memory, more than 3/4 of this machine's "
            + "\(MemoryCheck.text(Double(machineBytes))); choose smaller sizes"
    }
}

public enum MemoryCheck {
    /// The memory this process may use: the physical memory (sysconf),
    /// or the control group's limit when that is lower (a container).
    public static let machineBytes: Int = {
        let physical = System.physicalMemory
        let limits = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"].compactMap { path -> Int? in
            guard let s = System.readText(path) else { return nil }
            return Int(s.filter { !$0.isWhitespace })   // "max": no limit
        }
        return ([physical] + limits.filter { $0 > 0 }).min()!
    }()

    /// The share of `machineBytes` a run may plan to use.
    public static let usableFraction = 0.75

    /// Throws `MemoryCheckError` when `bytes` (an estimated peak) is more than
    /// `usableFraction` of `machineBytes`; `what` names the run in the message.
    public static func require(_ bytes: Double, for what: String, machineBytes: Int = MemoryCheck.machineBytes) throws {
        if !(bytes <= Double(machineBytes) * usableFraction) {
            throw MemoryCheckError(what: what, bytes: bytes, machineBytes: machineBytes)
        }
    }

    /// "512 MiB", "23.4 GiB".
    public static func text(_ bytes: Double) -> String {
        bytes >= Double(1 << 30) ? System.format("%.1f GiB", bytes / Double(1 << 30))
                                 : System.format("%.0f MiB", bytes / Double(1 << 20))
    }
}
