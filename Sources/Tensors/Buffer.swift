// An owned, flat Float allocation: activations, gradients and parameters live in these, walked by raw pointers.

public final class Buffer: @unchecked Sendable {
    public let count: Int
    public let ptr: UnsafeMutablePointer<Float>

    /// Uninitialised storage (callers that overwrite everything skip the zeroing pass).
    public init(uninitialized count: Int) {
        self.count = count
        self.ptr = .allocate(capacity: max(count, 1))
    }

    /// Zeroed on the pool's threads when large (gradients of whole activations: a serial memset there was the
    /// largest serial section of a training step on 2 threads, with the first-touch page faults it takes).
    public convenience init(zeros count: Int) {
        self.init(uninitialized: count)
        zero()
    }

    public convenience init(_ values: [Float]) {
        self.init(uninitialized: values.count)
        values.withUnsafeBufferPointer { ptr.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { ptr.deallocate() }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: ptr, count: count) }
    public var array: [Float] { Array(buffer) }
    public func zero() {
        let p = ptr
        parallelRanges(count, grain: Buffer.parallelZeroGrain) { r in (p + r.lowerBound).update(repeating: 0, count: r.count) }
    }

    /// Elements per task of a parallel zeroing (1 MiB): smaller buffers are zeroed by the calling thread.
    static let parallelZeroGrain = 1 << 18
}
