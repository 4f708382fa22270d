// Settings read from the environment, for experiments and diagnostics (CCE_TRACE,
// CCE_TOKEN_BLOCK_MAX, CCE_FUSED_BLOCK_FLOOR, CCE_EXCHANGE_CHUNK): read once where they are
// used, through these.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum Environment {
    /// `name`'s value, or nil when unset.
    public static func value(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    /// Whether `name` is set (to anything).
    public static func isSet(_ name: String) -> Bool { getenv(name) != nil }

    /// `name` as an integer in `range` that `accept` allows, else nil (unset, not a number,
    /// or out of range: such values are ignored).
    public static func integer(_ name: String, in range: ClosedRange<Int>,
                               where accept: (Int) -> Bool = { _ in true }) -> Int? {
        guard let text = getenv(name), let n = Int(String(cString: text)), range.contains(n), accept(n) else { return nil }
        return n
    }
}

// The few things the runtime needs from the system, through the C library rather than
// Foundation: the library (libcce_cpu.so) then links without Foundation, and a build with the
// Swift runtime linked in (CCE_STATIC_SWIFT=1) stays small and self-contained.
public enum System {
    /// The contents of a (small) text file, or nil when it cannot be read.
    public static func readText(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Writes `text` to an existing file; false when it cannot.
    public static func write(_ text: String, to path: String) -> Bool {
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
    }

    /// Whether a file exists at `path`.
    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// The physical memory, in bytes.
    public static var physicalMemory: Int { Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE))) }

    /// The CPUs online.
    public static var onlineCPUs: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// printf-style formatting of numbers ("%.1f").
    public static func format(_ format: String, _ arguments: CVarArg...) -> String {
        withVaList(arguments) { list in
            var buffer = [CChar](repeating: 0, count: 256)
            _ = buffer.withUnsafeMutableBufferPointer { vsnprintf($0.baseAddress, $0.count, format, list) }
            return String(cString: buffer)
        }
    }
}
