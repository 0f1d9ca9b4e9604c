// The collectives train, encode and validation use, each under the watchdog (Watchdog.swift): a call that takes
// longer than the timeout ends the process naming rank, host and the operation, so a lost rank or a cut network
// ends the job instead of hanging it. Every call names what it moves (the name goes into that message).
// With one rank nothing can hang and no watchdog thread is started.
#if canImport(Glibc)
import Glibc
#endif
public final class GuardedCommunicator: @unchecked Sendable {
    public let comm: Communicator
    private let watchdog: Watchdog?

    /// `timeout` seconds per collective (0: unbounded).
    public init(_ comm: Communicator, timeout: Double) {
        self.comm = comm
        watchdog = comm.size > 1 && timeout > 0 ? Watchdog(timeout: timeout, rank: comm.rank, host: comm.host) : nil
    }

    public var rank: Int { comm.rank }
    public var size: Int { comm.size }
    public var host: String { comm.host }
    public var isRoot: Bool { comm.isRoot }

    private func guarded<T>(_ operation: String, _ body: () throws -> T) rethrows -> T {
        guard let watchdog else { return try body() }
        return try watchdog.guarded(operation, body)
    }

    // MARK: - Collectives

    public func allreduce(_ what: String, _ buffer: UnsafeMutableBufferPointer<Double>, op: Communicator.ReduceOp = .sum) throws {
        try guarded("MPI_Allreduce of \(what)") { try comm.allreduce(buffer, op: op) }
    }

    public func allreduce(_ what: String, _ values: inout [Double], op: Communicator.ReduceOp = .sum) throws {
        try guarded("MPI_Allreduce of \(what)") { try comm.allreduce(&values, op: op) }
    }

    public func allreduce(_ what: String, _ values: inout [Float], op: Communicator.ReduceOp = .sum) throws {
        try guarded("MPI_Allreduce of \(what)") { try comm.allreduce(&values, op: op) }
    }

    public func broadcast(_ what: String, _ buffer: UnsafeMutableBufferPointer<Float>, root: Int = 0) throws {
        try guarded("MPI_Bcast of \(what)") { try comm.broadcast(buffer, root: root) }
    }

    public func broadcast(_ what: String, _ bytes: [UInt8], root: Int = 0) throws -> [UInt8] {
        try guarded("MPI_Bcast of \(what)") { try comm.broadcast(bytes, root: root) }
    }

    public func barrier(_ what: String) throws {
        try guarded("MPI_Barrier \(what)") { try comm.barrier() }
    }

    /// Polls `done` (a non-blocking collective's MPI_Test, or the bucketed sum's progress) until it returns true,
    /// under the same bound as a blocking collective: a rank that never sends its part ends the job.
    public func wait(_ what: String, until done: () throws -> Bool) throws {
        try guarded("the all-reduce of \(what) (non-blocking)") {
            while try !done() { usleep(20) }
        }
    }

    /// Every rank's bytes on `root` (rank order), nil on the other ranks.
    public func gather(_ what: String, _ bytes: [UInt8], root: Int = 0) throws -> [[UInt8]]? {
        try guarded("MPI_Gatherv of \(what)") { try comm.gather(bytes, root: root) }
    }
}
