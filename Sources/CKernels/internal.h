// Private to CKernels: shared between the dispatcher (sbgemm.c), the conversions and the AVX512-BF16 path.
#ifndef HGDPO_CKERNELS_INTERNAL_H
#define HGDPO_CKERNELS_INTERNAL_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "ckernels.h"

/// Kernels for AVX-512F only (callers check hg_cpu_has_avx512f()), compiled with a per-function target attribute.
#define HG_AVX512F __attribute__((target("avx512f")))
/// Micro-kernel pieces that must inline, so that their constant loop bounds keep accumulators in registers.
#define HG_INLINE static inline __attribute__((always_inline))

/// One GEMM call as the paths see it (see ckernels.h for the semantics). aBF16/bBF16: 1 if that operand is bf16
/// bits (uint16_t), 0 if it is fp32 (which every path rounds to bf16 first).
typedef struct {
    int transA, transB, M, N, K;
    float alpha, beta;
    const void *A; int lda; int aBF16;
    const void *B; int ldb; int bBF16;
    float *C; int ldc;
    int threads;
} hg_gemm_args;

/// The AVX512-BF16 path (avx512_bf16.c), and the same code compiled for portable C (avx512_bf16_emu.c, *_emu).
/// The GEMMs require M, N, K >= 1 and alpha != 0.
void hg_gemm_avx512bf16(const hg_gemm_args *g);
void hg_gemm_avx512bf16_emu(const hg_gemm_args *g);
void hg_avx512_f32_to_bf16(const float *s, uint16_t *d, size_t n);
void hg_avx512_bf16_to_f32(const uint16_t *s, float *d, size_t n);
void hg_avx512_f32_round_bf16(const float *s, float *d, size_t n);
void hg_avx512_f32_to_bf16_emu(const float *s, uint16_t *d, size_t n);
void hg_avx512_bf16_to_f32_emu(const uint16_t *s, float *d, size_t n);
void hg_avx512_f32_round_bf16_emu(const float *s, float *d, size_t n);


/// The implicit-GEMM convolutions' lane map (conv_avx512.c, conv_avx512bf16.c): for a vector of 16 output pixels
/// starting at (y0, x0), `lanes` of them valid, made of segments of `seg` lanes (one output row each), and for each
/// tap t = (kh, kw) of a stride-1 `kernel`×`kernel` convolution padded by (pt, pl) on an H×W input: off[t][q], where
/// segment q's lane 0 reads relative to the channel's plane, and mask[t][q], its lanes inside the image (0: none).
static inline void hg_conv_segments(int y0, int x0, int lanes, int seg, int kernel, int kk, int pt, int pl, int H,
                                    int W, ptrdiff_t off[][16], uint16_t mask[][16]) {
    for (int t = 0; t < kk; t++) {
        const int kh = t / kernel, kw = t % kernel;
        for (int s0 = 0, q = 0; s0 < 16; s0 += seg, q++) {
            const int yy = y0 + q + kh - pt, xs = x0 + kw - pl;
            // lane s0 + l reads column xs + l: valid for 0 <= xs + l < W, l < seg, s0 + l < lanes
            int lo = -xs > 0 ? -xs : 0, hi = W - xs < seg ? W - xs : seg;
            if (hi > lanes - s0) hi = lanes - s0;
            const int inside = yy >= 0 && yy < H && hi > lo;
            mask[t][q] = inside ? (uint16_t)((((1u << hi) - 1) & ~((1u << lo) - 1)) << s0) : 0;
            off[t][q] = inside ? (ptrdiff_t)yy * W + xs - s0 : 0;
        }
    }
}

/// Per-thread scratch memory, reused across calls (a small free list guarded by a mutex). 64-byte aligned.
void *hg_scratch_acquire(size_t bytes);
void hg_scratch_release(void *p);

static inline uint16_t hg_f2b(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffff;  // NaN, as PyTorch's CPU conversion
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float hg_b2f(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#endif
