// Sorting for the vocabulary order (CutCrossEntropy/Engine/VocabularyOrder.swift).

/// The ids 0 ..< keys.count by key, largest first, ties in id order: a strict total order, so any
/// correct sort gives this permutation. A least-significant-digit radix sort (8-bit
/// digits, stable, so ties stay in id order) over the keys mapped to unsigned integers
/// that order as the doubles do, reversed (−0 counts as +0, as `==` says); passes whose
/// digit is the same for every key are skipped. A comparison sort of 128K keys took
/// about 20 ms on one thread, most of the order's time at 16 threads; this takes a few.
public func descendingOrder(_ keys: [Double]) -> [Int32] {
    descendingOrder(words: keys.map(descendingWord))
}

/// The word that orders as x does, reversed (the largest x gives the smallest word), with −0
/// as +0: the sign bit set on non-negative values, all bits flipped on negative ones, then
/// all flipped again.
@inlinable @inline(__always)
public func descendingWord(_ x: Double) -> UInt64 {
    let b = (x == 0 ? 0.0 : x).bitPattern
    return ~(b >> 63 == 1 ? ~b : b | (1 << 63))
}

/// The same for Float: for every Float x, descendingWord(x) orders as descendingWord(Double(x))
/// (the conversion is exact and keeps the order, ties and NaNs' places), in half the bytes.
@inlinable @inline(__always)
public func descendingWord(_ x: Float) -> UInt32 {
    let b = (x == 0 ? 0.0 : x).bitPattern
    return ~(b >> 31 == 1 ? ~b : b | (1 << 31))
}

/// The ids 0 ..< words.count by word, smallest first, ties in id order (`descendingWord`s give
/// `descendingOrder`'s permutation): the radix sort above, holding the words, a second word
/// array and two id arrays (16 bytes an entry for 32-bit words, 24 for 64-bit).
@inlinable
public func descendingOrder<W: FixedWidthInteger & UnsignedInteger>(words: consuming [W]) -> [Int32] {
    var bits = words
    let v = bits.count
    var ids = (0..<v).map { Int32($0) }
    var bitsOut = [W](repeating: 0, count: v), idsOut = [Int32](repeating: 0, count: v)
    var count = [Int](repeating: 0, count: 257)
    for shift in stride(from: 0, to: W.bitWidth, by: 8) {
        for k in 0..<257 { count[k] = 0 }
        for b in bits { count[Int(truncatingIfNeeded: b >> shift) & 255 + 1] += 1 }
        if count.contains(v) { continue }   // one digit for all: the pass would not move anything
        for k in 1..<257 { count[k] += count[k - 1] }
        for i in 0..<v {
            let digit = Int(truncatingIfNeeded: bits[i] >> shift) & 255
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
