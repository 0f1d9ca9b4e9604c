// bf16 storage and GEMMs with fp32 accumulation, over the C kernels in Sources/CKernels (ckernels.h).
// bf16 values are raw bfloat16 bits (UInt16, the upper half of a Float).
//
// Paths, chosen at run time (see ckernels.h): on CPUs with AVX512-BF16 the GEMMs run VDPBF16PS micro-kernels on
// packed bf16 panels (an fp32 operand is rounded to bf16 while it is packed); elsewhere the bf16 operand is widened
// to fp32 block by block and OpenBLAS's sgemm does the work (fp32 operands are used unrounded there).
import CKernels

public enum BF16 {
    /// The code the kernels run.
    public enum Path: Int32, Sendable {
        /// Scalar conversions; GEMMs widen bf16 to fp32 and call sgemm.
        case generic = 1
        /// AVX2 conversions; GEMMs as `generic`.
        case avx2 = 2
        /// AVX-512 conversions, AVX512-BF16 GEMMs.
        case avx512 = 3
        /// The AVX-512 code compiled as portable C: runs on any CPU, slowly. For tests of that code on other CPUs.
        case emulated = 4
    }

    /// Whether the GEMMs run on AVX512-BF16 (false: they widen to fp32 and call sgemm, at sgemm's speed).
    public static var isAccelerated: Bool { hg_bf16_gemm_accelerated() != 0 }

    /// The path in force: the best the CPU has unless `setPath` (or HGDPO_BF16_PATH through RuntimeOptions) chose another.
    public static var path: Path { Path(rawValue: hg_kernels_path()) ?? .generic }

    /// Chooses the path (nil: back to the default). Returns false (and changes nothing) if the CPU cannot run it.
    /// Not to be called while kernels run on other threads.
    @discardableResult
    public static func setPath(_ path: Path?) -> Bool {
        let want = path?.rawValue ?? Int32(HG_PATH_AUTO)
        let got = hg_kernels_set_path(want)
        return path == nil || got == want
    }

    /// Threads of the bf16 GEMMs (both paths split over the pool of CKernels/parallel.c).
    /// Default: `RuntimeOptions.threads` once installed, else the online CPUs.
    public static func setThreads(_ n: Int) { hg_kernels_set_threads(Int32(max(1, min(n, Int(Int32.max))))) }
    public static var threads: Int { Int(hg_kernels_get_threads()) }

    // MARK: Conversions

    /// Float -> bf16 bits, round to nearest, ties to even; NaN -> 0xFFFF (as PyTorch's CPU `.to(torch.bfloat16)`),
    /// ±inf kept, overflow past bf16's largest finite value rounds to inf, subnormals rounded (not flushed).
    public static func convert(_ src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<UInt16>, count: Int) {
        precondition(count >= 0)
        hg_f32_to_bf16(src, dst, count)
    }

    /// bf16 bits -> Float (exact).
    public static func convert(_ src: UnsafePointer<UInt16>, to dst: UnsafeMutablePointer<Float>, count: Int) {
        precondition(count >= 0)
        hg_bf16_to_f32(src, dst, count)
    }

    /// Floats rounded to bf16 precision, kept as Float (`dst` may be `src`).
    public static func round(_ src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>, count: Int) {
        precondition(count >= 0)
        hg_f32_round_bf16(src, dst, count)
    }

    public static func bits(_ values: [Float]) -> [UInt16] {
        [UInt16](unsafeUninitializedCapacity: values.count) { buf, n in
            if let base = buf.baseAddress { convert(values, to: base, count: values.count) }
            n = values.count
        }
    }

    public static func floats(_ bits: [UInt16]) -> [Float] {
        [Float](unsafeUninitializedCapacity: bits.count) { buf, n in
            if let base = buf.baseAddress { convert(bits, to: base, count: bits.count) }
            n = bits.count
        }
    }

    // MARK: GEMMs
    // All as `BLAS.sgemm`: C (M×N, Float) = alpha · op(A) (M×K) · op(B) (K×N) + beta · C, row-major, lda/ldb/ldc
    // the row strides of the arrays as stored (A is K×M when transA). beta == 0: C is not read. Sums in fp32.

    /// Both operands bf16 (cblas_sbgemm).
    @inline(__always)
    public static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<UInt16>, lda: Int,
                            b: UnsafePointer<UInt16>, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        checkShape(transA, transB, m, n, k, lda, ldb, ldc)
        hg_sbgemm(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb),
                  beta, c, Int32(ldc))
    }

    /// A Float (activations), B bf16 (weights).
    /// Linear forward  out[N,O] = x[N,I]·W[O,I]ᵀ: `gemm(transB: true, m: N, n: O, k: I, a: x, lda: I, b: w, ldb: I, …)`.
    /// Linear backward dx[N,I] = dy[N,O]·W[O,I]:  `gemm(m: N, n: I, k: O, a: dy, lda: O, b: w, ldb: I, …)`.
    @inline(__always)
    public static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<UInt16>, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        checkShape(transA, transB, m, n, k, lda, ldb, ldc)
        hg_gemm_f32_bf16w(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b,
                          Int32(ldb), beta, c, Int32(ldc))
    }

    /// A bf16 (weights), B Float (activations).
    /// Conv forward (im2col, 1x1) C[Cout,HW] = W[Cout,CKK]·col[CKK,HW]: `gemm(m: Cout, n: HW, k: CKK, a: w, lda: CKK, b: col, ldb: HW, …)`.
    /// Conv backward, data: dcol[CKK,HW] = W[Cout,CKK]ᵀ·dy[Cout,HW]: `gemm(transA: true, m: CKK, n: HW, k: Cout, a: w, lda: CKK, b: dy, ldb: HW, …)`.
    @inline(__always)
    public static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<UInt16>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        checkShape(transA, transB, m, n, k, lda, ldb, ldc)
        hg_gemm_bf16w_f32(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b,
                          Int32(ldb), beta, c, Int32(ldc))
    }

    @inline(__always)
    static func checkShape(_ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ lda: Int, _ ldb: Int,
                           _ ldc: Int) {
        precondition(m >= 0 && n >= 0 && k >= 0 && max(m, n, k, lda, ldb, ldc) <= Int(Int32.max), "BF16.gemm: bad sizes")
        precondition(lda >= max(1, transA ? m : k) && ldb >= max(1, transB ? k : n) && ldc >= max(1, n),
                     "BF16.gemm: leading dimension too small")
    }
}

// MARK: - Storage

/// An owned, flat allocation of bf16 values (raw bits), e.g. the U-Net's base weights in mixed precision.
public final class BF16Buffer: @unchecked Sendable {
    public let count: Int
    public let ptr: UnsafeMutablePointer<UInt16>

    /// Uninitialised storage.
    public init(uninitialized count: Int) {
        self.count = count
        ptr = .allocate(capacity: max(count, 1))
    }

    deinit { ptr.deallocate() }

    public var buffer: UnsafeMutableBufferPointer<UInt16> { UnsafeMutableBufferPointer(start: ptr, count: count) }
}

// MARK: - Frozen weight matrices, fp32 or bf16

/// A frozen weight matrix (a convolution kernel or a linear layer's weight) as the layers receive it: fp32, or bf16
/// bits in mixed precision (`--mixed-precision bf16`: the U-Net's base weights stored once in bf16, fp32 sums).
public enum WeightMatrix {
    case f32(UnsafePointer<Float>)
    case bf16(UnsafePointer<UInt16>)
}

extension BLAS {
    /// C = alpha · op(A) · op(W) + beta · C with fp32 activations A on the left and weights W on the right; the
    /// arguments as `BLAS.sgemm`. fp32 weights: sgemm itself (bit-identical to calling it). bf16 weights: `BF16.gemm`
    /// (AVX512-BF16 with A rounded to bf16, or W widened to fp32 blockwise for sgemm; fp32 sums either way).
    @inline(__always)
    public static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: WeightMatrix, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        switch b {
        case .f32(let w):
            sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: w, ldb: ldb,
                  beta: beta, c: c, ldc: ldc)
        case .bf16(let w):
            BF16.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: w, ldb: ldb,
                      beta: beta, c: c, ldc: ldc)
        }
    }

    /// C = alpha · op(W) · op(B) + beta · C with weights W on the left and fp32 activations B on the right.
    @inline(__always)
    public static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: WeightMatrix, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        switch a {
        case .f32(let w):
            sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: w, lda: lda, b: b, ldb: ldb,
                  beta: beta, c: c, ldc: ldc)
        case .bf16(let w):
            BF16.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: w, lda: lda, b: b, ldb: ldb,
                      beta: beta, c: c, ldc: ldc)
        }
    }
}
