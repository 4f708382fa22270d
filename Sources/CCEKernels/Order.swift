// Sorting for the vocabulary order (CutCrossEntropy/Engine/VocabularyOrder.swift).

/// The ids 0 ..< keys.count by key, largest first, ties in id order: a strict total order, so any
/// correct sort gives this permutation. A least-significant-digit radix sort (8-bit
/// digits, stable, so ties stay in id order) over the keys mapped to unsigned integers
/// that order as the doubles do, reversed (−0 counts as +0, as `==` says); passes whose
/// digit is the same for every key are skipped. A comparison sort of 128K keys took
/// about 20 ms on one thread, most of the order's time at 16 threads; this takes a few.
public func descendingOrder(_ keys: [Double]) -> [Int32] {
    let v = keys.count
    var bits = keys.map { x -> UInt64 in
        let b = (x == 0 ? 0.0 : x).bitPattern
        let ascending = b >> 63 == 1 ? ~b : b | (1 << 63)
        return ~ascending
    }
    var ids = (0..<v).map { Int32($0) }
    var bitsOut = [UInt64](repeating: 0, count: v), idsOut = [Int32](repeating: 0, count: v)
    var count = [Int](repeating: 0, count: 257)
    for shift in stride(from: UInt64(0), to: 64, by: 8) {
        for k in 0..<257 { count[k] = 0 }
        for b in bits { count[Int((b >> shift) & 255) + 1] += 1 }
        if count.contains(v) { continue }   // one digit for all: the pass would not move anything
        for k in 1..<257 { count[k] += count[k - 1] }
        for i in 0..<v {
            let digit = Int((bits[i] >> shift) & 255)
            let to = count[digit]
            count[digit] = to + 1
            bitsOut[to] = bits[i]
            idsOut[to] = ids[i]
        }
        swap(&bits, &bitsOut)
        swap(&ids, &idsOut)
    }
    return ids
}

