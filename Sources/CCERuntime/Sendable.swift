// Pointers handed to worker threads. The engine's workers write disjoint parts of shared
// buffers (their own dE rows, their own slots) or add into shared rows in the hand-off's
// order (HandOff.swift); Swift cannot see that discipline, so the pointers cross into the
// threads through these wrappers, which claim Sendable on the caller's word.

/// Any value handed to worker threads as is.
public struct UncheckedSendable<T>: @unchecked Sendable {
    public let value: T
    @inlinable public init(_ value: T) { self.value = value }
}

/// A mutable pointer handed to worker threads; each worker writes disjoint elements.
public struct SendablePointer<T>: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<T>
    @inlinable public init(_ pointer: UnsafeMutablePointer<T>) { self.pointer = pointer }
}

/// A read-only buffer handed to worker threads.
public struct SendableBuffer<T>: @unchecked Sendable {
    public let buffer: UnsafeBufferPointer<T>
    @inlinable public init(_ buffer: UnsafeBufferPointer<T>) { self.buffer = buffer }
}

/// One slot per worker; worker w writes only slot w, the caller reads them after the join.
public final class PerWorker<T>: @unchecked Sendable {
    private let items: UnsafeMutableBufferPointer<T>

    /// `count` slots, each `initial`.
    public init(_ count: Int, initial: T) {
        items = .allocate(capacity: max(count, 1))
        items.initialize(repeating: initial)
    }

    deinit {
        _ = items.deinitialize()
        items.deallocate()
    }

    public subscript(w: Int) -> T {
        get { items[w] }
        set { items[w] = newValue }
    }

    /// The slots, in worker order.
    public var values: [T] { Array(items) }
}
