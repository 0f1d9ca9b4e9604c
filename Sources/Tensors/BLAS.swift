// Thin access to OpenBLAS: thread control, what the library detected, and row-major GEMM.
// The OPENBLAS_CORETYPE environment variable (launch/env.sh) must be set before the library loads, so it is the
// launch scripts' job, not this file's.
import CBLAS
import CKernels
#if canImport(Glibc)
import Glibc
#endif

public enum BLAS {
    /// Sets the GEMM threads (the caller decides: threads per rank, see launch/env.sh): `Parallel.threads`, the one
    /// pool's width. OpenBLAS itself always runs single-threaded: `sgemm` splits the rows of C over the pool.
    public static func setThreads(_ n: Int) { Parallel.threads = max(1, n) }
    public static var threads: Int { Parallel.threads }

    /// OpenBLAS's own threads are not used (they would be a second pool handing work back and forth with ours).
    private static let singleThreaded: Void = openblas_set_num_threads(1)
    /// The kernel family OpenBLAS chose, e.g. "SkylakeX" or "Zen".
    public static var coreName: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }

    /// C (M×N) = alpha · op(A) (M×K) · op(B) (K×N) + beta · C, all row-major. Blocks of rows of C on the pool's
    /// threads (hg_sgemm; bit-identical to one OpenBLAS call).
    @inline(__always)
    public static func sgemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                             alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        _ = singleThreaded
        hg_sgemm(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb),
                 beta, c, Int32(ldc), Int32(clamping: Parallel.threads))
    }
}
