// A watchdog for collectives: MPI has no timeout, and a lost node or a cut network leaves every rank waiting forever
// (mpirun then ignores SIGTERM, see ../shared/cluster-notes.md). Each collective is wrapped in `guarded`; a background
// thread ends the process with a message naming the rank, host and operation when one takes longer than the bound,
// so the launcher sees a dead rank and ends the job.
#if canImport(Glibc)
import Glibc
#endif

public final class Watchdog: @unchecked Sendable {
    public let timeout: Double
    private let rank: Int, host: String
    private var m = pthread_mutex_t()
    private var operation: String?
    private var started = 0.0
    private var thread: pthread_t?

    public init(timeout: Double, rank: Int, host: String) {
        self.timeout = timeout; self.rank = rank; self.host = host
        pthread_mutex_init(&m, nil)
        guard timeout > 0 else { return }
        let box = Unmanaged.passRetained(self).toOpaque()
        var t = pthread_t()
        pthread_create(&t, nil, { arg in
            let w = Unmanaged<Watchdog>.fromOpaque(arg!).takeUnretainedValue()
            w.run()
            return nil
        }, box)
        pthread_detach(t)
        thread = t
    }

    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    private func run() {
        while true {
            sleep(1)
            pthread_mutex_lock(&m)
            let op = operation, t0 = started
            pthread_mutex_unlock(&m)
            if let op, Watchdog.now() - t0 > timeout {
                let msg = "hgdpo: rank \(rank) on \(host): \(op) did not finish within \(Int(timeout)) s "
                    + "(a rank died or the network is cut); aborting the job (raise --collective-timeout if this is a slow start)\n"
                fputs(msg, stderr)
                fflush(stderr)
                _exit(1)   // a failure while running (exit 3 is --stop-on-divergence)
            }
        }
    }

    /// Runs `body` (a collective) under the bound.
    public func guarded<T>(_ op: String, _ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&m); operation = op; started = Watchdog.now(); pthread_mutex_unlock(&m)
        defer { pthread_mutex_lock(&m); operation = nil; pthread_mutex_unlock(&m) }
        return try body()
    }
}
