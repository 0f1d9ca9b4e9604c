// The gradient all-reduce overlapped with the backward, as PyTorch DDP's Reducer does: the flat gradient buffer is cut
// into buckets of a fixed size, from its END (the backward finishes the last-declared parameters first: the U-Net's
// up blocks before its down blocks), and each bucket's sum over the ranks starts as soon as the caller marks its
// elements final, while the backward still runs; `finish` starts what is left and waits.
//
// The buckets' bounds depend only on the buffer's length and the bucket size, every rank starts them in the same order,
// and each is an OrderedSum, whose result does not depend on how the buffer was cut: bucketed or not, on or off, the
// sum is bit-identical.
//
// Progress: MPI moves non-blocking messages only inside MPI calls, so a communication thread polls the buckets in
// flight (MPI_Testall every `pollMicroseconds`) while the main thread computes; it needs MPI_THREAD_SERIALIZED, and
// the main thread makes no MPI call between `begin` and the end of `finish`. With `bucketElements` 0 there is one
// bucket, the whole buffer, summed by the main thread in `finish` (no overlap, no thread). `finish` waits under the
// collective watchdog (GuardedCommunicator.wait), so a dead rank or a cut network ends the job as in a blocking
// collective.
#if canImport(Glibc)
import Glibc
#endif

public final class BucketedSum: @unchecked Sendable {
    let comm: GuardedCommunicator
    let buffer: UnsafeMutableBufferPointer<Double>
    /// Elements per bucket; 0: one sum of the whole buffer after the backward.
    public let bucketElements: Int
    /// Bucket k covers buffer[bounds[k]] (k = 0 is the buffer's tail).
    public let bounds: [Range<Int>]
    /// How long the communication thread sleeps between two polls of the buckets in flight.
    static let pollMicroseconds: UInt32 = 200

    // Shared between the main thread and the communication thread, under `m`.
    private var m = pthread_mutex_t()
    private var work = pthread_cond_t()       // the communication thread waits for buckets (or the end)
    private var progress = pthread_cond_t()   // `finish` waits for summed buckets
    private var readyFrom = 0        // elements [readyFrom, count) are final
    private var started = 0          // buckets started so far this round
    private var finished = 0         // buckets summed so far this round
    private var error: Error?
    private var stopping = false
    /// Buckets of the last round that were final before `finish` (handed out while the backward ran).
    public private(set) var overlappedBuckets = 0
    // The communication thread's own (only it touches them while a round runs).
    private var inFlight: [(index: Int, sum: OrderedSum)] = []
    private var thread: pthread_t?

    /// `buffer` must stay allocated as long as this value. `bucketElements` > 0 needs a communicator whose MPI granted
    /// MPI_THREAD_SERIALIZED (Communicator.serializedThreads).
    public init(_ comm: GuardedCommunicator, buffer: UnsafeMutableBufferPointer<Double>, bucketElements: Int) throws {
        precondition(bucketElements >= 0)
        self.comm = comm
        self.buffer = buffer
        self.bucketElements = bucketElements
        let n = buffer.count, size = bucketElements > 0 ? bucketElements : max(1, n)
        bounds = stride(from: n, to: 0, by: -size).map { max(0, $0 - size)..<$0 }
        readyFrom = n
        pthread_mutex_init(&m, nil)
        pthread_cond_init(&work, nil)
        pthread_cond_init(&progress, nil)
        guard comm.size > 1, bucketElements > 0 else { return }
        guard comm.comm.serializedThreads else {
            throw MPIError(operation: "MPI_Init_thread", code: 0, rank: comm.rank, host: comm.host,
                           mpiMessage: "this MPI does not grant MPI_THREAD_SERIALIZED, which the bucketed gradient all-reduce "
                           + "needs (its communication thread); use --bucket-mb 0")
        }
        let box = Unmanaged.passUnretained(self).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            Unmanaged<BucketedSum>.fromOpaque(arg!).takeUnretainedValue().communicate()
            return nil
        }, box)
        guard rc == 0 else {
            throw MPIError(operation: "pthread_create", code: rc, rank: comm.rank, host: comm.host,
                           mpiMessage: "cannot start the gradient all-reduce's communication thread")
        }
        thread = t
    }

    deinit {
        if let thread {
            pthread_mutex_lock(&m); stopping = true; pthread_cond_signal(&work); pthread_mutex_unlock(&m)
            pthread_join(thread, nil)
        }
        pthread_cond_destroy(&work)
        pthread_cond_destroy(&progress)
        pthread_mutex_destroy(&m)
    }

    /// Buckets go out during the backward (more than one rank and a bucket size): `markFinal` matters.
    public var overlaps: Bool { thread != nil }

    /// Starts a round: nothing of the buffer is final yet. The caller fills the buffer, calls `markFinal` as parts of
    /// it are, and `finish`.
    public func begin() {
        pthread_mutex_lock(&m)
        readyFrom = buffer.count; started = 0; finished = 0; error = nil
        pthread_mutex_unlock(&m)
    }

    /// Elements [from, count) of the buffer are final (sums of this rank's micro-batches): the buckets that lie wholly
    /// in them may go out. A no-op without buckets.
    public func markFinal(from: Int) {
        guard thread != nil else { return }
        pthread_mutex_lock(&m)
        if from < readyFrom { readyFrom = from; pthread_cond_signal(&work) }
        pthread_mutex_unlock(&m)
    }

    /// The whole buffer is final: sums what is not summed yet and waits until every bucket is (under the collective
    /// watchdog, naming `what`). Afterwards the buffer holds the sum over the ranks.
    public func finish(_ what: String) throws {
        guard comm.size > 1 else { return }
        guard thread != nil else {
            let sum = try OrderedSum(comm.comm, buffer, tag: 0)
            try comm.wait(what) { try sum.test() }
            return
        }
        pthread_mutex_lock(&m)
        overlappedBuckets = bounds.prefix { $0.lowerBound >= readyFrom }.count
        pthread_mutex_unlock(&m)
        markFinal(from: 0)
        try comm.wait("\(what) in \(bounds.count) bucket\(bounds.count == 1 ? "" : "s")") {
            pthread_mutex_lock(&m); defer { pthread_mutex_unlock(&m) }
            if let error { throw error }
            if finished == bounds.count { return true }
            // Sleep until the communication thread reports (or 1 ms, for the watchdog's sake).
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            ts.tv_nsec += 1_000_000
            if ts.tv_nsec >= 1_000_000_000 { ts.tv_sec += 1; ts.tv_nsec -= 1_000_000_000 }
            pthread_cond_timedwait(&progress, &m, &ts)
            if let error { throw error }
            return finished == bounds.count
        }
    }

    // MARK: - The communication thread

    private func communicate() {
        pthread_mutex_lock(&m)
        while !stopping {
            // Buckets that became final, in their fixed order (ranks agree on it: the bounds are the same everywhere).
            var toStart: [Int] = []
            while started < bounds.count && bounds[started].lowerBound >= readyFrom && error == nil {
                toStart.append(started); started += 1
            }
            if toStart.isEmpty && inFlight.isEmpty {
                pthread_cond_wait(&work, &m)
                continue
            }
            pthread_mutex_unlock(&m)
            var failure: Error?
            var done = 0
            do {
                for k in toStart {
                    // Two tags per bucket (contributions, sums), distinct from the other buckets of the round.
                    inFlight.append((k, try OrderedSum(comm.comm, UnsafeMutableBufferPointer(rebasing: buffer[bounds[k]]),
                                                       tag: Int32(2 * (k % 16_000) + 2))))
                }
                for (_, sum) in inFlight where try sum.test() { done += 1 }
                inFlight.removeAll { $0.sum.isDone }
            } catch { failure = error; inFlight.removeAll() }
            if !inFlight.isEmpty { usleep(BucketedSum.pollMicroseconds) }
            pthread_mutex_lock(&m)
            finished += done
            if let failure { error = failure }
            if done > 0 || failure != nil { pthread_cond_signal(&progress) }
        }
        pthread_mutex_unlock(&m)
    }
}
