// An owned, flat Float allocation: activations, gradients and parameters live in these, walked by raw pointers.

public final class Buffer: @unchecked Sendable {
    public let count: Int
    public let ptr: UnsafeMutablePointer<Float>

    /// Uninitialised storage (callers that overwrite everything skip the zeroing pass).
    public init(uninitialized count: Int) {
        self.count = count
        self.ptr = .allocate(capacity: max(count, 1))
    }

    public convenience init(zeros count: Int) {
        self.init(uninitialized: count)
        ptr.initialize(repeating: 0, count: count)
    }

    public convenience init(_ values: [Float]) {
        self.init(uninitialized: values.count)
        values.withUnsafeBufferPointer { ptr.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { ptr.deallocate() }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: ptr, count: count) }
    public var array: [Float] { Array(buffer) }
    public func zero() { ptr.update(repeating: 0, count: count) }
}
