#ifndef HGDPO_CKERNELS_H
#define HGDPO_CKERNELS_H
// hgdpo's own CPU kernels: bf16 storage / bf16 GEMM with fp32 accumulation.
//
// Every entry point works on every x86-64 CPU. The fast path (VDPBF16PS, AVX512-BF16) is chosen at run time by
// CPUID; it is compiled with per-function target attributes, never with global -m flags. Without AVX512-BF16
// the GEMMs widen the bf16 operand to fp32 block by block and call OpenBLAS's cblas_sgemm (same results up to
// the order of the fp32 additions, speed of sgemm).
//
// bf16 values are raw IEEE bfloat16 bits in uint16_t (the upper half of an fp32).
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// 1 if the CPU (and OS) support AVX512-BF16 (avx512bf16 with avx512f/bw/vl).
int hg_cpu_has_avx512bf16(void);
/// 1 when the CPU runs the haswell-level code the Swift modules are compiled to (AVX2, FMA, BMI2).
int hg_cpu_has_avx2_fma(void);
/// 1 if the CPU has AVX-512F (the softmax row kernels below need it).
int hg_cpu_has_avx512f(void);
/// max_j x[j], j < n (n ≥ 1). AVX-512F only.
float hg_row_max_avx512(const float *x, int n);
/// x[j] ← exp(x[j] − shift) for j < n (0 below −87.3, as Attention.swift's fastExp); returns Σ_j x[j]. AVX-512F only.
float hg_row_exp_sum_avx512(float *x, int n, float shift);
/// Attention of one (batch, head) for small head sizes, AVX-512F only (CKernels/attention_avx512.c; the maths of
/// Layers/Attention.swift). q, k, v, out, dout and the gradients are rows of `ldx` floats (the tokens-major layout,
/// pointers at the head's first channel); scale = 1/sqrt(d). `workspace`: hg_attention_avx512_workspace(Nk, d) floats.
/// Forward: m query rows (query index row0 + i, for the causal mask: key j > query i is not seen) → out, lse (m).
/// Backward: all Nq query rows of the head; dq, dk and dv are accumulated (+=).
size_t hg_attention_avx512_workspace(int Nk, int d);
void hg_attention_forward_avx512(const float *q, const float *k, const float *v, int ldx, float *out, float *lse,
                                 int m, int Nk, int d, float scale, int causal, int row0, float *workspace);
void hg_attention_backward_avx512(const float *q, const float *k, const float *v, const float *out,
                                  const float *dout, int ldx, const float *lse, float *dq, float *dk, float *dv,
                                  int Nq, int Nk, int d, float scale, int causal, float *workspace);
/// The same with VDPBF16PS products, AVX512-BF16 only (CKernels/attention_avx512bf16.c): every product's operands
/// (Q, K, V, dO, P, dS) rounded to bf16, fp32 sums, softmax and lse; where the kernels read V and K in place (short
/// key rows, see attn_bcast) P·V and dS·K stay fp32. `workspace`: hg_attention_avx512bf16_workspace(Nk, d) floats.
size_t hg_attention_avx512bf16_workspace(int Nk, int d);
void hg_attention_forward_avx512bf16(const float *q, const float *k, const float *v, int ldx, float *out, float *lse,
                                     int m, int Nk, int d, float scale, int causal, int row0, float *workspace);
void hg_attention_backward_avx512bf16(const float *q, const float *k, const float *v, const float *out,
                                      const float *dout, int ldx, const float *lse, float *dq, float *dk, float *dv,
                                      int Nq, int Nk, int d, float scale, int causal, float *workspace);
/// Their reference in scalar C (any CPU; the same roundings, float64 sums): one (batch, head), all Nq query rows.
/// dout == NULL: the forward (out, lse); else the backward, given out and lse: dq, dk, dv accumulated (+=).
void hg_attention_bf16_ref(const float *q, const float *k, const float *v, const float *dout, int ldx, int Nq, int Nk,
                           int d, float scale, int causal, float *out, float *lse, float *dq, float *dk, float *dv);
/// Stride-1 convolution as an implicit GEMM, AVX-512F only (CKernels/conv_avx512.c), for kernels up to 7×7,
/// Wo % 16 == 0 or Wo | 16 with Ho·Wo % 16 == 0, and n0 % 16 == 0: out (B, M, Ho, Wo) += correlation of inp (B, C, H, W) with A over the
/// batch's output pixels [n0, n1) (b·Ho·Wo + y·Wo + x) and output channels [m0, m1), zero outside the image,
/// padding pt (top) and pl (left). gradInput == 0: A = w as (M, C, k, k) (forward);
/// 1: A(c, (o, t)) = w[o][c][k·k − 1 − t] for w (C, M, k, k) (input gradient of a stride-1 conv with padding
/// k − 1 − pt, k − 1 − pl). scratch: hg_conv_avx512_scratch(C·k·k) floats.
size_t hg_conv_avx512_scratch(int K);
void hg_conv_s1_avx512(const float *w, int gradInput, const float *inp, float *out, int C, int H, int W, int M,
                       int kernel, int pt, int pl, int Ho, int Wo, int n0, int n1, int m0, int m1, float *scratch);
/// The same convolution with bf16 weights on AVX512-BF16 (CKernels/conv_avx512bf16.c; the same shape conditions
/// and the same meaning of w and gradInput), activations rounded to bf16, fp32 sums; pairs of weights are read as
/// they are stored (nothing packed). Forward: C·k·k ≥ 2; input gradient: k ≥ 2. Weights finite. Only where
/// hg_kernels_path() == HG_PATH_AVX512. scratch: hg_conv_avx512bf16_scratch(hg_conv_bf16_pairs(...)) floats.
int hg_conv_bf16_pairs(int gradInput, int C, int kernel);
size_t hg_conv_avx512bf16_scratch(int pairs);
void hg_conv_s1_avx512bf16(const uint16_t *w, int gradInput, const float *inp, float *out, int C, int H, int W,
                           int M, int kernel, int pt, int pl, int Ho, int Wo, int n0, int n1, int m0, int m1,
                           float *scratch);
/// The same code compiled as portable C (any CPU, slow): for tests of the kernel on CPUs without AVX512-BF16.
void hg_conv_s1_avx512bf16_emu(const uint16_t *w, int gradInput, const float *inp, float *out, int C, int H, int W,
                               int M, int kernel, int pt, int pl, int Ho, int Wo, int n0, int n1, int m0, int m1,
                               float *scratch);
/// The reference of hg_conv_s1_avx512bf16 in scalar C (any stride-1 shape; no scratch).
void hg_conv_s1_bf16_ref(const uint16_t *w, int gradInput, const float *inp, float *out, int C, int H, int W, int M,
                         int kernel, int pt, int pl, int Ho, int Wo, int n0, int n1, int m0, int m1);
/// glibc malloc: keep freed memory for reuse (Tensors/Memory.swift).
void hg_keep_freed_memory(void);

/// Which code the bf16 kernels run (one global setting for conversions and GEMMs).
///   HG_PATH_AVX512    AVX-512 conversions, AVX512-BF16 GEMM (VDPBF16PS). Default where the CPU has avx512bf16.
///   HG_PATH_AVX2      AVX2 conversions; GEMM = widen to fp32 + cblas_sgemm. Default on other AVX2 CPUs.
///   HG_PATH_GENERIC   scalar conversions; GEMM as for AVX2.
///   HG_PATH_EMULATED  the AVX-512 source compiled for portable C: runs anywhere, very slow. For tests of the
///                     AVX512-BF16 code on CPUs without it (CI).
/// The default can be overridden with HGDPO_BF16_PATH=avx512|avx2|generic|emulated in the environment.
enum { HG_PATH_AUTO = 0, HG_PATH_GENERIC = 1, HG_PATH_AVX2 = 2, HG_PATH_AVX512 = 3, HG_PATH_EMULATED = 4 };
/// Sets the path (HG_PATH_AUTO: the default). A path the CPU cannot run is refused (the setting is unchanged).
/// Returns the path in force afterwards. Not thread-safe against kernels running at the same time.
int hg_kernels_set_path(int path);
/// The path in force (never HG_PATH_AUTO).
int hg_kernels_path(void);
/// 1 if the GEMMs run on AVX512-BF16 (path HG_PATH_AVX512).
int hg_bf16_gemm_accelerated(void);

/// Threads the bf16 GEMMs use (the AVX512-BF16 path splits M or N, the fallback splits the rows of each fp32 block
/// over the pool of hg_parallel). Default: $HGDPO_THREADS, else
/// $OMP_NUM_THREADS, else the number of online CPUs. n < 1 means 1.
void hg_kernels_set_threads(int n);
int hg_kernels_get_threads(void);

/// fp32 -> bf16, round to nearest, ties to even; NaN -> 0xFFFF (what PyTorch's CPU `.to(torch.bfloat16)` gives),
/// ±inf stay ±inf, values above bf16's max round to inf as in PyTorch, subnormals are rounded, not flushed.
void hg_f32_to_bf16(const float *src, uint16_t *dst, size_t n);
/// bf16 -> fp32 (exact).
void hg_bf16_to_f32(const uint16_t *src, float *dst, size_t n);
/// fp32 -> fp32 rounded to bf16 precision (hg_bf16_to_f32(hg_f32_to_bf16(x))), in place allowed (dst == src).
void hg_f32_round_bf16(const float *src, float *dst, size_t n);

// ---------------------------------------------------------------------------------------------------------------
// GEMMs. All row-major, like cblas_sgemm(CblasRowMajor, ...):
//   C (M×N, fp32) = alpha · op(A) (M×K) · op(B) (K×N) + beta · C
//   op(X) = X if transX == 0, Xᵀ if transX != 0. lda/ldb/ldc are the row strides (in elements) of the arrays as
//   stored: A is M×K (lda >= K) when !transA, K×M (lda >= M) when transA; likewise B is K×N or N×K.
//   beta == 0: C is not read (NaN/garbage in C is overwritten). K == 0 or alpha == 0: C = beta·C.
// Products of bf16 values are exact in fp32; all sums are in fp32. The fp32 operand of the mixed variants is
// rounded to bf16 (as hg_f32_to_bf16) on the AVX512-BF16 path (VDPBF16PS needs bf16 on both sides); the
// fallback paths (AVX2, generic) pass it to sgemm unrounded (faster there, and more accurate).

/// Both operands bf16 (semantics of cblas_sbgemm).
void hg_sbgemm(int transA, int transB, int M, int N, int K, float alpha,
               const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc);

/// A fp32 (activations; rounded to bf16 while packing on the AVX512-BF16 path), B bf16 (weights).
///   linear forward   out[N,O]  = x[N,I] · W[O,I]ᵀ : transA=0, transB=1, M=N, N=O, K=I, A=x, B=W (ldb = I)
///   linear backward  dx[N,I]   = dy[N,O] · W[O,I] : transA=0, transB=0, M=N, N=I, K=O, A=dy, B=W (ldb = I)
void hg_gemm_f32_bf16w(int transA, int transB, int M, int N, int K, float alpha,
                       const float *A, int lda, const uint16_t *B, int ldb, float beta, float *C, int ldc);

/// A bf16 (weights), B fp32 (activations; rounded to bf16 while packing on the AVX512-BF16 path).
///   conv forward (im2col / 1x1)  C[Cout,HW] = W[Cout,CKK] · col[CKK,HW] : transA=0, transB=0, A=W (lda = CKK)
///   conv backward (data)         dcol[CKK,HW] = W[Cout,CKK]ᵀ · dy[Cout,HW] : transA=1, transB=0, A=W (lda = CKK)
void hg_gemm_bf16w_f32(int transA, int transB, int M, int N, int K, float alpha,
                       const uint16_t *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
/// The thread pool (CKernels/parallel.c): runs fn(ctx, t) for t in 0..<n, on the calling thread and up to n − 1
/// persistent workers, and returns when all have ended. Tasks must be independent. A call made from inside a task,
/// or while another thread's call runs, runs its tasks one after the other on the calling thread.
void hg_parallel(int n, void (*fn)(void *ctx, int t), void *ctx);
/// The reference: fn(ctx, t) for t = 0, 1, …, n − 1 on the calling thread.
void hg_parallel_serial(int n, void (*fn)(void *ctx, int t), void *ctx);
/// Row-major C (M×N) = alpha · op(A) · op(B) + beta · C as cblas_sgemm, with OpenBLAS single-threaded on blocks of
/// 16·k rows of C spread over up to `threads` tasks of hg_parallel (fewer, down to one, so that every block keeps
/// over 2·10⁶ multiply-adds).
/// Bit-identical to one cblas_sgemm call on OpenBLAS's own threads for the U-Net's shapes (TensorsTests).
void hg_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
              int ldb, float beta, float *C, int ldc, int threads);

#ifdef __cplusplus
}
#endif
#endif
