// The sum over ranks that the trainer's gradients go through: in place, non-blocking, and in one fixed order per
// element. MPI_Allreduce leaves the order of the additions to the implementation, which picks its algorithm (ring,
// recursive doubling, …) and its segments by message size and rank count, so cutting a buffer into buckets could
// change the order in which an element's contributions are added, and with it the last bit of the sum. Here element i
// of the result is, on every rank,
//
//     ((x_0[i] + x_1[i]) + x_2[i]) + … + x_{W−1}[i]        (x_r: rank r's buffer)
//
// whatever the buffer's length and however a larger buffer was cut into pieces, so a bucketed sum (BucketedSum.swift)
// is bit-identical to one sum of the whole buffer.
//
// How: a reduce-scatter then an all-gather over point-to-point messages. Rank r owns segment r of the buffer
// ([r·n/W, (r+1)·n/W)); every rank sends each other rank its copy of that rank's segment, the owner adds the W copies
// in rank order and sends the sum back to everyone. Each rank sends and receives 2(W−1)/W of the buffer, what a ring
// all-reduce moves, in 2(W−1) messages each way (a ring takes 2(W−1) steps too).
// Ref: the reduce-scatter + all-gather decomposition of NCCL's and OpenMPI's ring all-reduce (Patarasuk & Yuan 2009).
import CMPI

public final class OrderedSum {
    let comm: Communicator
    let base: UnsafeMutablePointer<Double>
    public let count: Int
    let tag: Int32
    private var requests: [MPI_Request?] = []
    /// The other ranks' copies of this rank's segment, (W − 1) × segment length, rank order without this rank.
    private let scratch: UnsafeMutablePointer<Double>
    private var phase = 0   // 0: contributions in flight; 1: sums in flight; 2: done

    /// Posts the first half (the contributions to every segment); `test` does the rest. `tag` and `tag + 1` must be
    /// used by no other message in flight between these ranks (BucketedSum gives each bucket its own pair).
    public init(_ comm: Communicator, _ buffer: UnsafeMutableBufferPointer<Double>, tag: Int32) throws {
        self.comm = comm
        base = buffer.baseAddress!
        count = buffer.count
        self.tag = tag
        let own = OrderedSum.segment(comm.rank, count: count, ranks: comm.size)
        scratch = .allocate(capacity: max(1, (comm.size - 1) * own.count))
        guard comm.size > 1 else { phase = 2; return }
        for q in 0..<comm.size where q != comm.rank {
            try receive(scratch + slot(q) * own.count, own.count, from: q, tag: tag)
            let s = OrderedSum.segment(q, count: count, ranks: comm.size)
            try send(base + s.lowerBound, s.count, to: q, tag: tag)
        }
    }

    deinit { scratch.deallocate() }

    /// Segment `r` of a buffer of `count` elements over `ranks` ranks: the part rank r sums.
    static func segment(_ r: Int, count: Int, ranks: Int) -> Range<Int> { (r * count / ranks)..<((r + 1) * count / ranks) }

    /// Index of rank q's copy in `scratch`.
    private func slot(_ q: Int) -> Int { q < comm.rank ? q : q - 1 }

    public var isDone: Bool { phase == 2 }

    /// Moves the sum on without blocking (MPI makes progress inside these calls); true once the whole buffer holds
    /// the sum on this rank.
    @discardableResult
    public func test() throws -> Bool {
        guard phase < 2 else { return true }
        var flag: Int32 = 0
        try comm.check(MPI_Testall(Int32(requests.count), &requests, &flag, hg_mpi_statuses_ignore()), "MPI_Testall")
        guard flag != 0 else { return false }
        requests.removeAll(keepingCapacity: true)
        if phase == 0 {
            addInRankOrder()
            let own = OrderedSum.segment(comm.rank, count: count, ranks: comm.size)
            for q in 0..<comm.size where q != comm.rank {
                let s = OrderedSum.segment(q, count: count, ranks: comm.size)
                try receive(base + s.lowerBound, s.count, from: q, tag: tag + 1)
                try send(base + own.lowerBound, own.count, to: q, tag: tag + 1)
            }
            phase = 1
            return false
        }
        phase = 2
        return true
    }

    /// This rank's segment := x_0 + x_1 + … + x_{W−1}, left to right, element by element.
    private func addInRankOrder() {
        let own = OrderedSum.segment(comm.rank, count: count, ranks: comm.size)
        let n = own.count, mine = base + own.lowerBound
        func copy(_ q: Int) -> UnsafeMutablePointer<Double> { q == comm.rank ? mine : scratch + slot(q) * n }
        // Accumulate into rank 0's copy (this rank's own segment when it is rank 0), then store it here.
        let acc = copy(0)
        for q in 1..<comm.size {
            let x = copy(q)
            for i in 0..<n { acc[i] += x[i] }
        }
        if acc != mine { mine.update(from: acc, count: n) }
    }

    // Messages of more than 2^30 elements go in pieces (MPI counts are Int32), in the same order on both sides.
    private func send(_ p: UnsafeMutablePointer<Double>, _ n: Int, to q: Int, tag: Int32) throws {
        try post(p, n, "MPI_Isend") { MPI_Isend($0, $1, hg_mpi_double(), Int32(q), tag, comm.comm, &$2) }
    }

    private func receive(_ p: UnsafeMutablePointer<Double>, _ n: Int, from q: Int, tag: Int32) throws {
        try post(p, n, "MPI_Irecv") { MPI_Irecv($0, $1, hg_mpi_double(), Int32(q), tag, comm.comm, &$2) }
    }

    /// Posts one nonblocking operation per piece of at most Communicator.maxChunk elements; keeps their requests.
    private func post(_ p: UnsafeMutablePointer<Double>, _ n: Int, _ name: String,
                      _ start: (UnsafeMutablePointer<Double>, Int32, inout MPI_Request?) -> Int32) throws {
        var offset = 0
        while offset < n {
            let k = min(Communicator.maxChunk, n - offset)
            var r: MPI_Request? = hg_mpi_request_null()
            try comm.check(start(p + offset, Int32(k), &r), name)
            requests.append(r)
            offset += k
        }
    }
}
