// The LSE merge: folding one tile row of logits into a row's running log-sum-exp.
//
// Maths: for a row with logits z_1 … z_V, LSE = m + log Σ_v e^(z_v − m) for any m; with
// m = max_v z_v every term is ≤ 1 and nothing overflows. Tiles arrive one at a time, so the
// row keeps (m, s) with s = Σ_{seen v} e^(z_v − m). A tile with maximum m' > m first
// rescales s by e^(m − m'). The tile's own sum Σ e^(z_v − m) is formed in eight SIMD lanes
// (vectorized exp) and then added to s with Kahan compensation: c carries the low-order
// bits the addition lost, so after V/VB tiles the sum's rounding error stays near one ulp
// instead of growing with the number of tiles.

/// Running log-sum-exp state of one row.
public struct RunningLSE<S: KernelScalar>: Sendable {
    /// Largest logit seen so far (−∞ before the first tile).
    public var max: S
    /// Σ e^(z − max) over the logits seen so far.
    public var sum: S
    /// Kahan compensation of `sum`.
    public var comp: S

    @inlinable public init() { max = -.infinity; sum = 0; comp = 0 }

    /// The log-sum-exp of everything merged so far.
    @inlinable public var value: S { max + S.log(sum) }

    /// Merges `other`, the running state of another stretch of the same row's logits, as
    /// one more term: with M = max(m_a, m_b), sum_a·e^(m_a − M) + (sum_b − comp_b)·e^(m_b − M),
    /// the second term added with Kahan's compensation. (A row's vocabulary segments,
    /// merged in segment order: Engine.swift.)
    @inlinable public mutating func merge(_ other: RunningLSE<S>) {
        guard other.max > -.infinity else { return }
        if other.max > max {
            let scale = max == -.infinity ? 0 : S.exp(max - other.max)
            sum *= scale
            comp *= scale
            max = other.max
        }
        kahanAdd(&sum, &comp, (other.sum - other.comp) * S.exp(other.max - max))
    }
}

/// Kahan-compensated `sum += x`.
@inlinable @inline(__always)
public func kahanAdd<S: KernelScalar>(_ sum: inout S, _ comp: inout S, _ x: S) {
    let y = x - comp
    let t = sum + y
    comp = (t - sum) - y
    sum = t
}

/// What `mergeTileRow` saw in one tile row.
public struct TileRowSummary<S: KernelScalar>: Sendable {
    /// The tile row's largest logit.
    public var max: S
    /// log Σ_{v in the tile} e^(z_v): the tile row's own log-sum-exp.
    public var logSum: S

    @inlinable public init(max: S, logSum: S) { self.max = max; self.logSum = logSum }
}

/// Merges z[0 ..< count] into `state` and returns the tile row's largest logit and its own
/// log-sum-exp; `state.value` is the LSE so far.
@inlinable @discardableResult
public func mergeTileRow<S: KernelScalar>(_ z: UnsafePointer<S>, count: Int,
                                          into state: inout RunningLSE<S>) -> TileRowSummary<S> {
    let cv = count & ~7
    var mv = SIMD8<S>(repeating: -.infinity)
    var p = 0
    while p < cv { mv = S.maximum(mv, load8(z + p)); p += 8 }
    var tileMax = S.horizontalMax(mv)
    while p < count { tileMax = Swift.max(tileMax, z[p]); p += 1 }
    if tileMax == -.infinity { return TileRowSummary(max: tileMax, logSum: -.infinity) }
    if tileMax > state.max {
        let scale = state.max == -.infinity ? 0 : S.exp(state.max - tileMax)
        state.sum *= scale
        state.comp *= scale
        state.max = tileMax
    }
    let m = SIMD8<S>(repeating: state.max)
    var acc = SIMD8<S>()
    p = 0
    while p < cv { acc += S.exp(load8(z + p) - m); p += 8 }
    var t = laneSum(acc)
    while p < count { t += S.exp(z[p] - state.max); p += 1 }
    kahanAdd(&state.sum, &state.comp, t)
    return TileRowSummary(max: tileMax, logSum: state.max + S.log(t))
}

/// Σ z[0 ..< count] in eight lanes, reduced in the fixed `laneSum` order.
@inlinable
public func tileRowSum<S: KernelScalar>(_ z: UnsafePointer<S>, count: Int) -> S {
    let cv = count & ~7
    var acc = SIMD8<S>()
    var p = 0
    while p < cv { acc += load8(z + p); p += 8 }
    var t = laneSum(acc)
    while p < count { t += z[p]; p += 1 }
    return t
}

/// Portable reference: the LSE of z[0 ..< count] in Double, two passes.
public func lseReference(_ z: UnsafeBufferPointer<Double>) -> Double {
    guard let m = z.max(), m > -.infinity else { return -.infinity }
    var s = 0.0
    for x in z { s += Double.exp(x - m) }
    return m + Double.log(s)
}
