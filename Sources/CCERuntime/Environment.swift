// Settings read from the environment, for experiments and diagnostics (CCE_TRACE,
// CCE_TOKEN_BLOCK_MAX, CCE_FUSED_BLOCK_FLOOR, CCE_EXCHANGE_CHUNK): read once where they are
// used, through these.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum Environment {
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
