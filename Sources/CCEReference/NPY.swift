// NumPy .npy files: the exchange format of `cce reference` and `cce compare`.
//
// Format (numpy.lib.format, versions 1.0, 2.0 and 3.0): the magic "\x93NUMPY", a major and
// a minor version byte, the header length (2 bytes little-endian in 1.0, 4 bytes after),
// then an ASCII Python dict literal such as
//     {'descr': '<f4', 'fortran_order': False, 'shape': (8, 16), }
// padded with spaces to a multiple of 64 bytes and ended by '\n', then the raw elements
// in C order. Element types read here: '<f4', '<f2', '<f8', '<i8', '<i4', and bfloat16 as
// the ml_dtypes package writes it ('<V2' or '|V2': NumPy has no bfloat16 of its own, so a
// 2-byte void is read as bfloat16; the name 'bfloat16' is accepted too). Written: '<f4' and
// '<f8'. Everything else — big-endian data, Fortran order, object arrays, a header or data
// shorter than it says — is refused with an error naming the file and the problem.

import Foundation

/// A problem with one .npy file (the message names the file).
public struct NPYError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let problem: String
    public init(_ path: String, _ problem: String) { self.path = path; self.problem = problem }
    /// "PATH: PROBLEM", or the problem alone when there is no path.
    public var description: String { path.isEmpty ? problem : "\(path): \(problem)" }
}

/// One array read from, or to be written to, a .npy file.
public struct NPYArray: Sendable {
    /// Element types this tool reads.
    public enum DType: String, Sendable {
        case float32 = "<f4", float16 = "<f2", float64 = "<f8", bfloat16 = "bfloat16"
        case int64 = "<i8", int32 = "<i4"

        public var size: Int {
            switch self {
            case .float64, .int64: 8
            case .float32, .int32: 4
            case .float16, .bfloat16: 2
            }
        }
        var isFloat: Bool { self != .int64 && self != .int32 }
    }

    public let shape: [Int]
    public let dtype: DType
    /// The elements, little-endian, C order.
    public let bytes: Data

    public var count: Int { shape.reduce(1, *) }

    public init(shape: [Int], dtype: DType, bytes: Data) {
        self.shape = shape; self.dtype = dtype; self.bytes = bytes
    }

    /// An array of Float64 values.
    public init(doubles: [Double], shape: [Int]) {
        self.init(shape: shape, dtype: .float64, bytes: doubles.withUnsafeBytes { Data($0) })
    }

    /// An array of Float32 values.
    public init(floats: [Float], shape: [Int]) {
        self.init(shape: shape, dtype: .float32, bytes: floats.withUnsafeBytes { Data($0) })
    }

    // MARK: - Reading

    /// Reads and checks a .npy file.
    public static func read(_ path: String) throws -> NPYArray {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw NPYError(path, "no such file") }
        guard !isDir.boolValue else { throw NPYError(path, "is a folder, not a .npy file") }
        guard let data = FileManager.default.contents(atPath: path) else {
            let why = access(path, R_OK) == 0 ? "a read error" : String(cString: strerror(errno))
            throw NPYError(path, "cannot be read: \(why)")
        }
        return try parse(data, path: path)
    }

    /// Parses the bytes of a .npy file (`path` is used in error messages only).
    public static func parse(_ data: Data, path: String) throws -> NPYArray {
        let b = [UInt8](data.prefix(12))
        guard b.count >= 10, b[0] == 0x93, Array(b[1...5]) == Array("NUMPY".utf8) else {
            throw NPYError(path, "not a .npy file (no \\x93NUMPY magic)")
        }
        let major = b[6]
        let headerLength: Int, start: Int
        switch major {
        case 1:
            headerLength = Int(b[8]) | Int(b[9]) << 8; start = 10
        case 2, 3:
            guard b.count >= 12 else { throw NPYError(path, "truncated header") }
            headerLength = Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24; start = 12
        default:
            throw NPYError(path, "unsupported .npy format version \(major).\(b[7])")
        }
        guard data.count >= start + headerLength else {
            throw NPYError(path, "truncated header: \(headerLength) bytes announced, \(data.count - start) present")
        }
        let headerBytes = data.subdata(in: data.startIndex + start ..< data.startIndex + start + headerLength)
        guard let header = String(data: headerBytes, encoding: major == 3 ? .utf8 : .ascii) else {
            throw NPYError(path, "header is not text")
        }
        let descr = try field(header, "descr", path: path)
        let fortran = try field(header, "fortran_order", path: path)
        let shapeText = try field(header, "shape", path: path)
        let dtype = try parseDescr(descr, path: path)
        switch fortran {
        case "False": break
        case "True": throw NPYError(path, "Fortran-ordered arrays are not supported (save with np.ascontiguousarray)")
        default: throw NPYError(path, "malformed header: fortran_order is \(fortran)")
        }
        let shape = try parseShape(shapeText, path: path)
        let (count, overflow) = shape.reduce((1, false)) { acc, d in
            let m = acc.0.multipliedReportingOverflow(by: d); return (m.partialValue, acc.1 || m.overflow)
        }
        let want = count.multipliedReportingOverflow(by: dtype.size)
        guard !overflow, !want.overflow else { throw NPYError(path, "shape \(shape) is too large") }
        let present = data.count - start - headerLength
        guard present >= want.partialValue else {
            throw NPYError(path, "truncated data: shape \(shape) of \(descr) needs \(want.partialValue) bytes, \(present) present")
        }
        guard present == want.partialValue else {
            throw NPYError(path, "corrupt: \(present - want.partialValue) bytes after the data that shape \(shape) announces")
        }
        let body = data.subdata(in: data.startIndex + start + headerLength ..< data.endIndex)
        return NPYArray(shape: shape, dtype: dtype, bytes: body)
    }

    /// The text of one value of the header dict: a quoted string, a word, or a tuple.
    static func field(_ header: String, _ key: String, path: String) throws -> String {
        guard let k = header.range(of: "'\(key)'") ?? header.range(of: "\"\(key)\"") else {
            throw NPYError(path, "malformed header: no '\(key)' (header: \(header.trimmingCharacters(in: .whitespacesAndNewlines)))")
        }
        var rest = header[k.upperBound...].drop { $0 == " " }
        guard rest.first == ":" else { throw NPYError(path, "malformed header near '\(key)'") }
        rest = rest.dropFirst().drop { $0 == " " }
        if let q = rest.first, q == "'" || q == "\"" {
            let body = rest.dropFirst()
            guard let end = body.firstIndex(of: q) else { throw NPYError(path, "malformed header: unterminated '\(key)'") }
            return String(body[..<end])
        }
        if rest.first == "(" {
            guard let end = rest.firstIndex(of: ")") else { throw NPYError(path, "malformed header: unterminated shape") }
            return String(rest[rest.startIndex ... end])
        }
        return String(rest.prefix { $0.isLetter || $0.isNumber })
    }

    static func parseDescr(_ d: String, path: String) throws -> DType {
        switch d {
        case "<f4": return .float32
        case "<f2": return .float16
        case "<f8": return .float64
        case "<i8": return .int64
        case "<i4": return .int32
        case "<V2", "|V2", "V2", "bfloat16", "<bfloat16": return .bfloat16
        case ">f4", ">f2", ">f8", ">i8", ">i4":
            throw NPYError(path, "big-endian element type '\(d)' is not supported (use arr.astype('<\(d.dropFirst())'))")
        default:
            throw NPYError(path, "unsupported element type '\(d)' (expected <f4, <f2, <f8, bfloat16 from ml_dtypes, <i8 or <i4)")
        }
    }

    static func parseShape(_ s: String, path: String) throws -> [Int] {
        guard s.hasPrefix("("), s.hasSuffix(")") else { throw NPYError(path, "malformed shape \(s)") }
        let inner = s.dropFirst().dropLast()
        var dims: [Int] = []
        for part in inner.split(separator: ",") {
            let t = part.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "L", with: "")
            if t.isEmpty { continue }
            guard let v = Int(t), v >= 0 else { throw NPYError(path, "malformed shape \(s)") }
            dims.append(v)
        }
        return dims
    }

    // MARK: - Values

    /// Calls `body` with an accessor of element i as Float64 (every type), reading the
    /// stored bytes in place: no converted copy of the whole array.
    public func withElements<R>(_ body: ((Int) -> Double) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { raw in
            switch dtype {
            case .float64: return try body { raw.loadUnaligned(fromByteOffset: 8 * $0, as: Double.self) }
            case .float32: return try body { Double(raw.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self)) }
            case .float16: return try body { Double(Float(raw.loadUnaligned(fromByteOffset: 2 * $0, as: Float16.self))) }
            case .bfloat16:
                return try body { Double(Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) << 16)) }
            case .int64: return try body { Double(raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
            case .int32: return try body { Double(raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
            }
        }
    }

    /// The elements as Float64.
    public func doubles() -> [Double] { withElements { at in (0..<count).map(at) } }

    /// The elements in their stored type, copied once from the file's bytes.
    func typed<T>(_: T.Type) -> [T] {
        [T](unsafeUninitializedCapacity: count) { buf, n in
            bytes.withUnsafeBytes { raw in
                UnsafeMutableRawBufferPointer(buf).copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[0 ..< count * MemoryLayout<T>.stride]))
            }
            n = count
        }
    }

    /// The elements as Int64 (integer types only).
    public func integers() -> [Int64] {
        bytes.withUnsafeBytes { raw -> [Int64] in
            switch dtype {
            case .int64: return (0..<count).map { raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self) }
            case .int32: return (0..<count).map { Int64(raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
            default: return []
            }
        }
    }

    // MARK: - Writing

    /// The .npy encoding (version 1.0) of this array; only '<f4' and '<f8' are written.
    public func encoded() -> Data {
        let descr = dtype == .float64 ? "<f8" : "<f4"
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(CCEReference.shapeText(shape)), }"
        let total = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - total % 64) % 64) + "\n"
        var out = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
        let h = header.utf8.count
        out.append(contentsOf: [UInt8(h & 0xFF), UInt8(h >> 8)])
        out.append(contentsOf: Array(header.utf8))
        out.append(bytes)
        return out
    }
}
