// Stride-1 convolution as an implicit GEMM on AVX-512F, for output widths that are a multiple of 16 or divide 16
// with Ho·Wo % 16 == 0 (SD's latent levels from 4×4 to 64×64). Layers/Conv2D.swift uses it for fp32 weights in
// place of im2col + OpenBLAS sgemm, whose separate im2col pass, packing of the weights and per-call threading cost
// up to half the time at these sizes.
//
// One call computes output pixels [n0, n1) of the batch (flattened (b·Ho + y)·Wo + x), output channels [m0, m1):
//   out[o][y][x] += Σ_{c, kh, kw} A(o, (c, kh, kw)) · inp[c][y + kh − pt][x + kw − pl]   (zero outside the image)
// with A the weights seen as a (M, K = C·k·k) matrix:
//   forward          A(o, (c, t)) = w[o][c][t]                       (w: (M, C, k, k), t = kh·k + kw)
//   input gradient   A(c, (o, t)) = w[o][c][k·k − 1 − t]             (w: (C, M, k, k): the forward's weight; the
//                    correlation of dout with the flipped, transposed kernel, padding k − 1 − p)
// Blocking (Goto-style, A never packed): per block of KC rows of K and panel of 48 output pixels, the panel's
// im2col rows are packed once (masked loads: a 16-pixel vector is a stretch of one output row, or whole short rows,
// of one image), then every 8 output channels run an 8 × 48 register tile (24 accumulators, A broadcast from the
// weights).
// Each output element is summed in a fixed order, whatever the split of pixels over calls.
#include "internal.h"
#include <immintrin.h>
#include <stdint.h>
#include <string.h>


enum { CMR = 8, CNV = 3, CNR = 48, CKC = 384, CONV_MAX_TAPS = 49 };   // taps: kernels up to 7×7

size_t hg_conv_avx512_scratch(int K) {
    // packed panel (CKC, CNR) + 16 to align, then the K offsets of A's columns (as floats' worth of int32)
    return (size_t)CKC * CNR + 16 + (size_t)K;
}

/// c_u[r·ldc + l] += Σ_k a_r[off[k]]·bp[k][16u + l] for r < mr (≤ CMR), u < nv (≤ CNV), lanes 16u + l < nr, kc
/// rows of the packed panel; c_u: where vector u's first pixel sits in output row 0 (vectors may belong to different
/// images). nv < CNV for a panel's last 16 or 32 pixels (SD's 4×4 and 8×8 levels), which then cost only their own
/// vectors.
HG_AVX512F HG_INLINE void conv_tile(const int nv, int kc, const float *const a[CMR], const int32_t *off,
                                    const float *bp, float *const c[CNV], size_t ldc, int mr, int nr) {
    __m512 acc[CMR][CNV];
    for (int r = 0; r < CMR; r++)
        for (int u = 0; u < nv; u++) acc[r][u] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m512 b[CNV];
        for (int u = 0; u < nv; u++) b[u] = _mm512_load_ps(bp + (size_t)k * CNR + 16 * u);
        const int32_t o = off[k];
        for (int r = 0; r < CMR; r++) {
            const __m512 x = _mm512_set1_ps(a[r][o]);
            for (int u = 0; u < nv; u++) acc[r][u] = _mm512_fmadd_ps(x, b[u], acc[r][u]);
        }
    }
    for (int r = 0; r < CMR; r++) {
        if (r >= mr) break;
        for (int u = 0; u < nv; u++) {
            const int w = nr - 16 * u;   // > 0: u < nv = ceil(nr / 16)
            const __mmask16 m = w >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << w) - 1);
            float *o = c[u] + (size_t)r * ldc;
            _mm512_mask_storeu_ps(o, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, o), acc[r][u]));
        }
    }
}

typedef void (*conv_tile_fn)(int, const float *const[CMR], const int32_t *, const float *, float *const[CNV], size_t,
                             int, int);
#define HG_CONV_TILE(V)                                                                                             \
    HG_AVX512F static void conv_tile_##V(int kc, const float *const a[CMR], const int32_t *off, const float *bp,     \
                                         float *const c[CNV], size_t ldc, int mr, int nr) {                          \
        conv_tile(V, kc, a, off, bp, c, ldc, mr, nr);                                                                \
    }
HG_CONV_TILE(1) HG_CONV_TILE(2) HG_CONV_TILE(3)
static const conv_tile_fn conv_tiles[CNV] = {conv_tile_1, conv_tile_2, conv_tile_3};

HG_AVX512F void hg_conv_s1_avx512(const float *w, int gradInput, const float *inp, float *out, int C, int H, int W,
                                  int M, int kernel, int pt, int pl, int Ho, int Wo, int n0, int n1, int m0,
                                  int m1, float *scratch) {
    const int kk = kernel * kernel, K = C * kk;
    float *bp = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    int32_t *off = (int32_t *)(scratch + (size_t)CKC * CNR + 16);
    // off[k]: where A(·, k) sits relative to its row's start; rowStride: from one row of A to the next.
    size_t rowStride;
    if (!gradInput) {
        for (int k = 0; k < K; k++) off[k] = k;
        rowStride = (size_t)K;
    } else {
        for (int o = 0; o < C; o++)
            for (int t = 0; t < kk; t++) off[o * kk + t] = o * M * kk + (kk - 1 - t);
        rowStride = (size_t)kk;
    }
    const size_t HW = (size_t)H * W, L = (size_t)Ho * Wo;
    // A vector of 16 pixels is one stretch of an output row (Wo % 16 == 0) or 16 / Wo whole rows (Wo | 16), always
    // of one image (L % 16 == 0): segments of `seg` lanes, each one output row.
    const int seg = Wo < 16 ? Wo : 16;
    // Pixels in blocks whose output (m1 − m0 channels) is about 1 MB; inside, blocks of K outside and panels inside:
    // the block of A (channels × CKC) stays in L2 while the panels stream past it, and so does the output block
    // that every block of K adds into.
    const int rowsM = m1 - m0 > 0 ? m1 - m0 : 1;
    int nb = ((1 << 18) / rowsM) / CNR * CNR;
    if (nb < CNR) nb = CNR;
    for (int b0 = n0; b0 < n1; b0 += nb) {
        const int b1 = n1 - b0 < nb ? n1 : b0 + nb;
        for (int k0 = 0; k0 < K; k0 += CKC) {
            const int kc = K - k0 < CKC ? K - k0 : CKC;
            for (int j0 = b0; j0 < b1; j0 += CNR) {
                const int nr = b1 - j0 < CNR ? b1 - j0 : CNR, nv = (nr + 15) / 16;
                float *cu[CNV] = {NULL, NULL, NULL};
                // Pack the panel's im2col rows k0..<k0+kc: row k = (c, kh, kw). Per vector, the tap t = (kh, kw)
                // fixes, for each output row the vector covers (segment), where its lanes read (relative to the
                // channel's plane) and which lanes are inside the image; the rows then only add c·H·W.
                for (int u = 0; u < nv; u++) {
                    const int lanes = nr - 16 * u;
                    const size_t g = (size_t)j0 + 16 * (size_t)u;
                    const size_t b = g / L, p0 = g % L;
                    const int y0 = (int)(p0 / (size_t)Wo), x0 = (int)(p0 % (size_t)Wo);
                    cu[u] = out + b * (size_t)M * L + p0;
                    const float *img = inp + b * (size_t)C * HW;
                    ptrdiff_t segOff[CONV_MAX_TAPS][16];
                    __mmask16 segMask[CONV_MAX_TAPS][16];
                    hg_conv_segments(y0, x0, lanes, seg, kernel, kk, pt, pl, H, W, segOff, segMask);
                    const int nseg = 16 / seg;
                    int c = k0 / kk, t = k0 % kk;              // (c, t) of row k0, then stepped along
                    for (int k = 0; k < kc; k++) {
                        const float *plane = img + (size_t)c * HW;
                        __m512 v = _mm512_maskz_loadu_ps(segMask[t][0], plane + segOff[t][0]);
                        for (int q = 1; q < nseg; q++) v = _mm512_mask_loadu_ps(v, segMask[t][q], plane + segOff[t][q]);
                        _mm512_store_ps(bp + (size_t)k * CNR + 16 * u, v);
                        if (++t == kk) { t = 0; c++; }
                    }
                }
                for (int i0 = m0; i0 < m1; i0 += CMR) {
                    const int mr = m1 - i0 < CMR ? m1 - i0 : CMR;
                    const float *a[CMR];
                    for (int r = 0; r < CMR; r++) a[r] = w + (size_t)(i0 + (r < mr ? r : mr - 1)) * rowStride;
                    float *ci[CNV];
                    for (int u = 0; u < nv; u++) ci[u] = cu[u] + (size_t)i0 * L;
                    conv_tiles[nv - 1](kc, a, off + k0, bp, ci, L, mr, nr);
                }
            }
        }
    }
}
