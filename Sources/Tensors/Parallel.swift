// Data parallelism for the non-GEMM kernels (norms, activations, im2col, transposes): a `parallelFor` over
// independent items, typically batch × channels or a range of rows. Every loop, and every GEMM (`BLAS.sgemm` splits
// the rows of C), runs on the one thread pool of CKernels/parallel.c; a loop started inside another loop's body runs
// serially on its thread.
import CKernels
import Foundation

public enum Parallel {
    /// Worker threads for `parallelFor`: `RuntimeOptions.threads`, set once at start-up (e.g. to the threads per MPI
    /// rank); 1 makes every loop serial.
    nonisolated(unsafe) public static var threads: Int = RuntimeOptions.defaults.threads

    /// Loops whose total work (in elements touched) is below this run serially: waking workers costs a few µs.
    public static let minimumParallelWork = 1 << 15

    /// Runs `body(t)` for every `t` in `0..<tasks` on the pool (the calling thread takes some) and returns when all
    /// have ended. Tasks must be independent.
    @inline(__always)
    public static func run(tasks: Int, _ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { body in
            withUnsafePointer(to: body) { p in
                hg_parallel(Int32(clamping: tasks), { ctx, t in
                    ctx!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(Int(t))
                }, UnsafeMutableRawPointer(mutating: p))
            }
        }
    }
}

/// Calls `body(i)` for every `i` in `0..<n`, split into `Parallel.threads` contiguous chunks run concurrently.
/// Iterations must be independent (each writes its own part of the output). Runs serially when `n < 2`, when
/// `Parallel.threads == 1`, or when `work` (an estimate of the elements touched by the whole loop) is below
/// `Parallel.minimumParallelWork`.
@inline(__always)
public func parallelFor(_ n: Int, work: Int = .max, _ body: (Int) -> Void) {
    let threads = min(Parallel.threads, n)
    if threads <= 1 || work < Parallel.minimumParallelWork {
        for i in 0..<n { body(i) }
        return
    }
    Parallel.run(tasks: threads) { t in
        // Chunk t covers [t·n/threads, (t+1)·n/threads): sizes differ by at most one.
        let start = t * n / threads, end = (t + 1) * n / threads
        for i in start..<end { body(i) }
    }
}

/// Splits `0..<count` into at most `Parallel.threads` contiguous ranges (each at least `grain` long) and calls
/// `body(range)` on each concurrently: for flat element-wise loops, where a per-element closure call would cost
/// more than the work.
@inline(__always)
public func parallelRanges(_ count: Int, grain: Int = Parallel.minimumParallelWork, _ body: (Range<Int>) -> Void) {
    guard count > 0 else { return }
    let chunks = max(1, min(Parallel.threads, count / max(1, grain)))
    if chunks == 1 { body(0..<count); return }
    Parallel.run(tasks: chunks) { t in body((t * count / chunks)..<((t + 1) * count / chunks)) }
}
