// A thin Swift wrapper over MPI (OpenMPI 4, via the CMPI shim): rank, size, local rank, in-place all-reduce,
// broadcast, barrier and abort. Running the binary without a launcher is an MPI singleton: a world of one.
//
// Errors: MPI_COMM_WORLD is switched to MPI_ERRORS_RETURN, so a failing collective becomes a `MPIError` naming the
// operation, the rank and host, and MPI's own message, instead of MPI's default abort without context.
import CMPI
#if canImport(Glibc)
import Glibc
#endif

public struct MPIError: Error, CustomStringConvertible {
    public let operation: String
    public let code: Int32
    public let rank: Int
    public let host: String
    public let mpiMessage: String

    public var description: String { "MPI \(operation) failed on rank \(rank) (\(host)): \(mpiMessage) (code \(code))" }
}

public final class Communicator: @unchecked Sendable {
    public enum ReduceOp: Sendable { case sum, max, min }

    /// This process's rank in the world, and the world's size.
    public let rank: Int
    public let size: Int
    /// Rank and size among the ranks on this node (MPI_COMM_TYPE_SHARED), e.g. to share cores between them.
    public let localRank: Int
    public let localSize: Int
    public let host: String
    public var isRoot: Bool { rank == 0 }

    let comm: MPI_Comm
    /// MPI granted MPI_THREAD_SERIALIZED: another thread may make the MPI calls while this one makes none (the
    /// bucketed gradient sum's communication thread, BucketedSum.swift).
    public let serializedThreads: Bool
    private static let lock = NSLockLite()
    nonisolated(unsafe) private static var shared: Communicator?
    /// Largest element count handed to one MPI call (MPI counts are Int32).
    static let maxChunk = 1 << 30

    private init(comm: MPI_Comm, rank: Int, size: Int, localRank: Int, localSize: Int, host: String, serializedThreads: Bool) {
        self.comm = comm; self.rank = rank; self.size = size; self.serializedThreads = serializedThreads
        self.localRank = localRank; self.localSize = localSize; self.host = host
    }

    /// The world communicator; MPI is initialised on first use, asking for thread level SERIALIZED (one thread at a
    /// time calls MPI: the main thread, or the gradient sum's communication thread while the main one does not).
    public static func world() throws -> Communicator {
        lock.lock(); defer { lock.unlock() }
        if let c = shared { return c }
        var initialized: Int32 = 0
        MPI_Initialized(&initialized)
        var provided: Int32 = 0
        if initialized == 0 {
            let rc = MPI_Init_thread(nil, nil, hg_mpi_thread_serialized(), &provided)
            guard rc == hg_mpi_success() else {
                throw MPIError(operation: "MPI_Init_thread", code: rc, rank: 0, host: hostName(), mpiMessage: errorString(rc))
            }
            atexit { Communicator.finalizeIfNeeded() }
        } else {
            MPI_Query_thread(&provided)
        }
        let world: MPI_Comm = hg_mpi_comm_world()
        MPI_Comm_set_errhandler(world, hg_mpi_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(world, &r); MPI_Comm_size(world, &s)
        var local: MPI_Comm? = hg_mpi_comm_null()
        var lr: Int32 = 0, ls: Int32 = 1
        if MPI_Comm_split_type(world, hg_mpi_comm_type_shared(), r, hg_mpi_info_null(), &local) == hg_mpi_success() {
            MPI_Comm_rank(local, &lr); MPI_Comm_size(local, &ls)
            MPI_Comm_free(&local)
        }
        let c = Communicator(comm: world, rank: Int(r), size: Int(s), localRank: Int(lr), localSize: Int(ls), host: hostName(),
                             serializedThreads: provided >= hg_mpi_thread_serialized())
        shared = c
        return c
    }

    /// The world communicator if some command already initialised MPI, else nil (MPI is never started just to ask).
    public static var current: Communicator? {
        lock.lock(); defer { lock.unlock() }
        return shared
    }

    static func finalizeIfNeeded() {
        var initialized: Int32 = 0, finalized: Int32 = 0
        MPI_Initialized(&initialized); MPI_Finalized(&finalized)
        if initialized != 0 && finalized == 0 { MPI_Finalize() }
    }

    // MARK: - Collectives

    /// In-place all-reduce over every rank; after it every rank holds the same result.
    public func allreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp = .sum) throws {
        try allreduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, type: hg_mpi_float(), elementSize: 4, op: op)
    }

    public func allreduce(_ buffer: UnsafeMutableBufferPointer<Double>, op: ReduceOp = .sum) throws {
        try allreduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, type: hg_mpi_double(), elementSize: 8, op: op)
    }

    public func allreduce(_ values: inout [Float], op: ReduceOp = .sum) throws {
        try values.withUnsafeMutableBufferPointer { try allreduce($0, op: op) }
    }

    public func allreduce(_ values: inout [Double], op: ReduceOp = .sum) throws {
        try values.withUnsafeMutableBufferPointer { try allreduce($0, op: op) }
    }

    public func allreduce(_ value: Double, op: ReduceOp = .sum) throws -> Double {
        var v = [value]
        try allreduce(&v, op: op)
        return v[0]
    }

    private func allreduce(_ base: UnsafeMutableRawPointer?, count: Int, type: MPI_Datatype, elementSize: Int, op: ReduceOp) throws {
        guard count > 0, let base else { return }
        let mpiOp: MPI_Op = switch op { case .sum: hg_mpi_sum(); case .max: hg_mpi_max(); case .min: hg_mpi_min() }
        var start = 0
        while start < count {
            let n = min(Communicator.maxChunk, count - start)
            try check(MPI_Allreduce(hg_mpi_in_place(), base + start * elementSize, Int32(n), type, mpiOp, comm), "MPI_Allreduce")
            start += n
        }
    }

    /// Broadcast `buffer` from `root` to every rank, in place.
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int = 0) throws {
        guard buffer.count > 0, let base = buffer.baseAddress else { return }
        var start = 0
        while start < buffer.count {
            let n = min(Communicator.maxChunk, buffer.count - start)
            try check(MPI_Bcast(base + start, Int32(n), hg_mpi_byte(), Int32(root), comm), "MPI_Bcast")
            start += n
        }
    }

    public func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int = 0) throws {
        try broadcast(UnsafeMutableRawBufferPointer(buffer), root: root)
    }

    public func broadcast(_ values: inout [Float], root: Int = 0) throws {
        try values.withUnsafeMutableBytes { try broadcast($0, root: root) }
    }

    public func broadcast(_ values: inout [Double], root: Int = 0) throws {
        try values.withUnsafeMutableBytes { try broadcast($0, root: root) }
    }

    /// Broadcast a byte string of any length (e.g. a resolved config) from `root`.
    public func broadcast(_ bytes: [UInt8], root: Int = 0) throws -> [UInt8] {
        var length = [Double(rank == root ? bytes.count : 0)]
        try broadcast(&length, root: root)
        var out = rank == root ? bytes : [UInt8](repeating: 0, count: Int(length[0]))
        try out.withUnsafeMutableBytes { try broadcast($0, root: root) }
        return out
    }

    public func barrier() throws { try check(MPI_Barrier(comm), "MPI_Barrier") }

    /// Every rank's bytes (any length, rank order) on `root`; nil on the other ranks. MPI_Gather of the lengths, then
    /// one MPI_Gatherv: only the root receives, and only what each rank has (no padding).
    public func gather(_ bytes: [UInt8], root: Int = 0) throws -> [[UInt8]]? {
        guard size > 1 else { return [bytes] }
        guard bytes.count < Int(Int32.max) else {
            throw MPIError(operation: "MPI_Gatherv", code: 0, rank: rank, host: host,
                           mpiMessage: "\(bytes.count) bytes exceed one call's 2^31 − 1")
        }
        var mine = Int32(bytes.count)
        var counts = [Int32](repeating: 0, count: rank == root ? size : 1)
        try check(MPI_Gather(&mine, 1, hg_mpi_int32(), &counts, 1, hg_mpi_int32(), Int32(root), comm), "MPI_Gather")
        var displacements = [Int32](repeating: 0, count: counts.count)
        var total = 0
        if rank == root {
            for r in 0..<size { displacements[r] = Int32(clamping: total); total += Int(counts[r]) }
            guard total < Int(Int32.max) else {
                throw MPIError(operation: "MPI_Gatherv", code: 0, rank: rank, host: host,
                               mpiMessage: "\(total) bytes in all exceed one call's 2^31 − 1")
            }
        }
        var received = [UInt8](repeating: 0, count: max(1, total))
        try bytes.withUnsafeBytes { send in
            try received.withUnsafeMutableBytes { recv in
                try check(MPI_Gatherv(send.baseAddress, mine, hg_mpi_byte(), recv.baseAddress, &counts, &displacements,
                                      hg_mpi_byte(), Int32(root), comm), "MPI_Gatherv")
            }
        }
        guard rank == root else { return nil }
        return (0..<size).map { r in
            let start = Int(displacements[r])
            return Array(received[start..<(start + Int(counts[r]))])
        }
    }

    /// Ends the whole job: prints the message with this rank's identity and calls MPI_Abort (every rank exits).
    public func abort(_ message: String, code: Int32 = 1) -> Never {
        let line = "hgdpo: rank \(rank)/\(size) on \(host): \(message)\n"
        fputs(line, stderr)
        fflush(stderr)
        if size > 1 { MPI_Abort(comm, code) }
        exit(code)
    }

    func check(_ rc: Int32, _ op: String) throws {
        guard rc != hg_mpi_success() else { return }
        throw MPIError(operation: op, code: rc, rank: rank, host: host, mpiMessage: Communicator.errorString(rc))
    }

    static func errorString(_ rc: Int32) -> String {
        var buf = [CChar](repeating: 0, count: Int(hg_mpi_max_error_string()) + 1)
        var len: Int32 = 0
        MPI_Error_string(rc, &buf, &len)
        return String(cString: buf)
    }

    static func hostName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        gethostname(&buf, 255)
        return String(cString: buf)
    }
}

/// A pthread mutex, so this module needs no Foundation.
final class NSLockLite: @unchecked Sendable {
    private var m = pthread_mutex_t()
    init() { pthread_mutex_init(&m, nil) }
    func lock() { pthread_mutex_lock(&m) }
    func unlock() { pthread_mutex_unlock(&m) }
}
