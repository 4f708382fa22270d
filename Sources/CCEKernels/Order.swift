// Sorting for the vocabulary order (CutCrossEntropy/Engine/VocabularyOrder.swift).

/// The ids 0 ..< keys.count by key, largest first, ties in id order: a strict total order, so any
/// correct sort gives this permutation. A least-significant-digit radix sort (stable, so
/// ties stay in id order) over the keys mapped to unsigned integers
/// that order as the doubles do, reversed (−0 counts as +0, as `==` says); passes whose
/// digit is the same for every key are skipped. A comparison sort of 128K keys took
/// about 20 ms on one thread, most of the order's time at 16 threads; this takes about 3.
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
/// `descendingOrder`'s permutation): the radix sort above in 8-bit digits (four passes for
/// 32-bit words, eight for 64-bit), every digit's counts taken in one first pass over the
/// words, the passes through unsafe buffers; it holds the words, a second word array and two
/// id arrays (16 bytes an entry for 32-bit words, 24 for 64-bit). (The same passes over Swift
/// arrays, counting each digit in a pass of its own, took 5 to 9 ms for 128K Float words on a
/// 2-vCPU AMD EPYC, against 2.3 to 2.9 ms; 11-bit digits, three passes, were no faster there.)
@inlinable
public func descendingOrder<W: FixedWidthInteger & UnsignedInteger>(words: consuming [W]) -> [Int32] {
    let v = words.count
    let bitsPerDigit = 8, radix = 1 << 8, mask = radix - 1
    let passes = (W.bitWidth + bitsPerDigit - 1) / bitsPerDigit
    var bits = words
    var bitsOut = [W](repeating: 0, count: v)
    var ids = (0..<v).map { Int32(truncatingIfNeeded: $0) }, idsOut = [Int32](repeating: 0, count: v)
    var counts = [Int](repeating: 0, count: passes * radix)
    counts.withUnsafeMutableBufferPointer { c in
        bits.withUnsafeBufferPointer { w in
            for x in w {
                for p in 0..<passes { c[p * radix + Int(truncatingIfNeeded: x >> (p * bitsPerDigit)) & mask] += 1 }
            }
        }
        for p in 0..<passes {
            let count = c.baseAddress! + p * radix
            // One digit for all: the pass would not move anything.
            if (0..<radix).contains(where: { count[$0] == v }) { continue }
            var sum = 0
            for k in 0..<radix { let n = count[k]; count[k] = sum; sum += n }   // each digit's first slot
            let shift = p * bitsPerDigit
            bits.withUnsafeBufferPointer { src in
            bitsOut.withUnsafeMutableBufferPointer { dst in
            ids.withUnsafeBufferPointer { idSrc in
            idsOut.withUnsafeMutableBufferPointer { idDst in
                for i in 0..<v {
                    let x = src[i]
                    let digit = Int(truncatingIfNeeded: x >> shift) & mask
                    let to = count[digit]
                    count[digit] = to + 1
                    dst[to] = x
                    idDst[to] = idSrc[i]
                }
            }}}}
            swap(&bits, &bitsOut)
            swap(&ids, &idsOut)
        }
    }
    return ids
}
