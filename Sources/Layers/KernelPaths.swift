// Which code each kind of layer runs on this CPU with the RuntimeOptions in force, in words, for `hgdpo bench step`
// and bench/compare.sh (a benchmark figure means little without the kernels behind it). Each answer comes from the
// same rule the layer applies (AttentionKernel.choose, conv2dImplicitGEMM, the bf16 GEMM path), not from a copy.
import Tensors

public enum KernelPaths {
    /// The attention kernel for a head size (of a model with bf16 projections when `bf16`).
    public static func attention(headDim: Int, bf16: Bool = false) -> String {
        switch AttentionKernel.choose(headDim: headDim, bf16: bf16) {
        case .avx512: return "avx512 (CKernels/attention_avx512.c)"
        case .avx512bf16: return "avx512bf16 (CKernels/attention_avx512bf16.c, VDPBF16PS products)"
        case .blas: return "blas (OpenBLAS GEMMs per query block" + (AttentionKernel.avx512Available ? ", AVX-512F softmax rows)" : ")")
        }
    }

    /// The convolutions: fp32 weights run the implicit GEMM where it fits (stride 1, kernel ≤ 7, widths of 16 or
    /// small squares), else im2col + sgemm; bf16 weights the VDPBF16PS implicit GEMM where it fits and the bf16 path
    /// is AVX512-BF16, else im2col + the bf16 GEMM.
    public static func convolution(bf16Weights: Bool) -> String {
        if bf16Weights {
            if conv2dImplicitBF16Available {
                return "implicit GEMM on AVX512-BF16 (CKernels/conv_avx512bf16.c) where it fits (stride 1), im2col + the bf16 GEMM elsewhere"
            }
            return "im2col + the bf16 GEMM" + (RuntimeOptions.current.convolutionsOnBLAS ? " (HGDPO_CONV=blas)" : "")
        }
        return conv2dImplicitAvailable ? "implicit GEMM on AVX-512F where it fits (stride 1), im2col + sgemm elsewhere"
            : "im2col + sgemm" + (RuntimeOptions.current.convolutionsOnBLAS ? " (HGDPO_CONV=blas)" : " (no AVX-512F)")
    }

    /// The fp32 GEMMs.
    public static var gemm: String {
        "OpenBLAS \(BLAS.coreName) kernels, single-threaded, rows (or columns) of C split over the pool (\(Parallel.threads) threads)"
    }

    /// The GEMMs of bf16 weights (`--mixed-precision bf16`).
    public static var bf16GEMM: String {
        let path: String = switch BF16.path {
        case .avx512: "avx512"
        case .avx2: "avx2"
        case .generic: "generic"
        case .emulated: "emulated"
        }
        return BF16.isAccelerated ? "VDPBF16PS micro-kernels (\(path) path)" : "bf16 widened to fp32 + sgemm (\(path) path)"
    }
}
