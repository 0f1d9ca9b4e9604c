// Thin access to OpenBLAS: thread control, what the library detected, and row-major GEMM.
// The OPENBLAS_CORETYPE environment variable (launch/env.sh) must be set before the library loads, so it is the
// launch scripts' job, not this file's.
import CBLAS
#if canImport(Glibc)
import Glibc
#endif

public enum BLAS {
    /// Sets OpenBLAS's thread count (the caller decides: threads per rank, see launch/env.sh).
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }
    public static var threads: Int { Int(openblas_get_num_threads()) }
    /// The kernel family OpenBLAS chose, e.g. "SkylakeX" or "Zen".
    public static var coreName: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }
    public static var buildConfig: String { openblas_get_config().map { String(cString: $0) } ?? "unknown" }

    /// Whether the loaded OpenBLAS exports `cblas_sbgemm` (Debian 12's 0.3.21 declares it but does not export it).
    public static let hasSbgemm: Bool = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "cblas_sbgemm") != nil

    /// C (M×N) = alpha · op(A) (M×K) · op(B) (K×N) + beta · C, all row-major.
    @inline(__always)
    public static func sgemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                             alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
