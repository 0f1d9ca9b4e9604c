// Stride-1 convolution with bf16 weights as an implicit GEMM on AVX512-BF16 (VDPBF16PS), fp32 sums: the mixed-precision
// twin of conv_avx512.c, for the same shapes (output widths a multiple of 16, or dividing 16 with Ho·Wo % 16 == 0).
// Layers/Conv2D.swift uses it for bf16 weights in place of im2col + the bf16 GEMM, whose separate im2col pass and
// packing of the 9×-sized column buffer made `--mixed-precision bf16` slower than fp32.
//
// One call computes output pixels [n0, n1) of the batch (flattened (b·Ho + y)·Wo + x), output channels [m0, m1):
//   out[m][y][x] += Σ_{c, t} A(m, (c, t)) · bf16(inp[c][y + kh − pt][x + kw − pl])    t = kh·k + kw, zero outside
//   forward          A(o, (c, t)) = w[o][c][t]                   (w: (M, C, k, k))
//   input gradient   A(c, (o, t)) = w[o][c][kk − 1 − t]          (w: (C, M, k, k), the forward's weight; the
//                    correlation of dout with the flipped, transposed kernel, padding k − 1 − p)
// VDPBF16PS multiplies pairs of bf16 and adds both products to one fp32 lane, so the reduction runs over pairs, and
// every pair's A values are one 32-bit word of the weights as stored (nothing is packed on the weight side):
//   forward          pair p = flat rows (2p, 2p + 1) of (c, t): the word at w[o]·(C·kk) + 2p; for odd C·kk the
//                    last pair is the word of rows K − 2, K − 1 whose low half meets a zero row. C·kk ≥ 2.
//   input gradient   per channel o, ceil(kk / 2) pairs along the taps of w[o][c][·]: pair j < kk / 2 is the word
//                    at tap kk − 2 − 2j (its low half is flipped tap 1 + 2j, its high half flipped tap 2j); for odd
//                    kk the last pair is the word at tap 0 (low half: flipped tap kk − 1; its high half, tap 1,
//                    meets a zero row of the panel). kk ≥ 2 (a 1×1 input gradient is a plain GEMM).
// The activations are rounded to bf16 (round to nearest even, NaN kept) while the 48-pixel panel is packed: per pair
// and 16-pixel vector one zmm of 16 words (pixel l: the row of the low half | the row of the high half << 16). Then
// every 8 output channels run an 8 × 48 register tile: 24 fp32 accumulators, one broadcast pair word per channel.
// Each output element is summed in a fixed order, whatever the split of pixels and channels over calls. The weights
// must be finite (in an odd last pair, a zero row of the panel meets a weight of a neighbouring pair).
//
// The reference beside it: hg_conv_s1_bf16_ref, the same sums in portable scalar C (the same rounding of the
// activations; fp32 sums). conv_avx512bf16_emu.c compiles this file once more against emu512.h so that the vector
// code itself is tested on CPUs without AVX512-BF16.
#include "internal.h"
#include <stdint.h>
#include <string.h>

#ifdef HG_EMULATE_AVX512
#include "emu512.h"
#define HG_BF16K
#define HG_NAME(x) x##_emu
#else
#include <immintrin.h>
#define HG_BF16K __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define HG_NAME(x) x
#define HG_AS_BH(x) ((__m512bh)(x))
#endif
#define HG_BF16_ROUND_TARGET HG_BF16K
#include "bf16_round.h"

enum { BMR = 8, BNV = 3, BNR = 48, BKP = 128, BMAX_TAPS = 49 };  // 128 pairs (256 rows of K) per block

#ifndef HG_EMULATE_AVX512
/// Pairs of the reduction (see the top of the file).
int hg_conv_bf16_pairs(int gradInput, int C, int kernel) {
    const int kk = kernel * kernel;
    return gradInput ? C * ((kk + 1) / 2) : (C * kk + 1) / 2;
}

size_t hg_conv_avx512bf16_scratch(int pairs) {
    // the packed panel (BKP pair rows × BNR words) + 16 to align, then the pairs' weight offsets (int32)
    return (size_t)BKP * BNR + 16 + (size_t)pairs;
}

// MARK: - The reference (portable C)

void hg_conv_s1_bf16_ref(const uint16_t *w, int gradInput, const float *inp, float *out, int C, int H, int W, int M,
                         int kernel, int pt, int pl, int Ho, int Wo, int n0, int n1, int m0, int m1) {
    const int kk = kernel * kernel;
    const size_t L = (size_t)Ho * Wo, HW = (size_t)H * W;
    for (int n = n0; n < n1; n++) {
        const size_t b = (size_t)n / L, pix = (size_t)n % L;
        const int y = (int)(pix / (size_t)Wo), x = (int)(pix % (size_t)Wo);
        const float *img = inp + b * (size_t)C * HW;
        for (int m = m0; m < m1; m++) {
            float acc = 0;
            for (int c = 0; c < C; c++)
                for (int t = 0; t < kk; t++) {
                    const int yy = y + t / kernel - pt, xx = x + t % kernel - pl;
                    if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                    const uint16_t a = gradInput ? w[((size_t)c * M + m) * kk + kk - 1 - t] : w[((size_t)m * C + c) * kk + t];
                    acc += hg_b2f(a) * hg_b2f(hg_f2b(img[(size_t)c * HW + (size_t)yy * W + xx]));
                }
            out[(b * (size_t)M + m) * L + pix] += acc;
        }
    }
}
#endif


/// The panel rows (c, t) of the low and high half of pair p; t = −1: none (a zero row).
static inline void conv_bf16_pair_rows(int gradInput, int kk, int K, int p, int *c0, int *t0, int *c1, int *t1) {
    if (!gradInput) {
        const int k = 2 * p;
        if (k + 1 < K) { *c0 = k / kk; *t0 = k % kk; *c1 = (k + 1) / kk; *t1 = (k + 1) % kk; }
        else { *c0 = 0; *t0 = -1; *c1 = (K - 1) / kk; *t1 = (K - 1) % kk; }  // odd K: the word of rows K − 2, K − 1
    } else {
        const int P = (kk + 1) / 2, o = p / P, j = p % P;
        *c0 = *c1 = o;
        if (2 * j + 1 < kk) { *t0 = 2 * j + 1; *t1 = 2 * j; } else { *t0 = 2 * j; *t1 = -1; }
    }
}

// MARK: - Kernel

HG_BF16K HG_INLINE uint32_t load_word(const uint16_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);  // a pair of bf16 weights: 2-byte alignment is all the layout promises
    return v;
}

/// c_u[r·ldc + l] += Σ_p dot(word(a_r + off[p]), bp[p][16u + l]) for r < mr (≤ BMR), u < nv, lanes 16u + l < nr,
/// kp pairs. nv (≤ BNV) vectors: a panel's last 16 or 32 pixels (4×4 and 8×8 levels) cost only their own vectors.
HG_BF16K HG_INLINE void bf16_tile(const int nv, int kp, const uint16_t *const a[BMR], const int32_t *off,
                                  const uint32_t *bp, float *const c[BNV], size_t ldc, int mr, int nr) {
    __m512 acc[BMR][BNV];
    for (int r = 0; r < BMR; r++)
        for (int u = 0; u < nv; u++) acc[r][u] = _mm512_setzero_ps();
    for (int p = 0; p < kp; p++) {
        __m512i b[BNV];
        for (int u = 0; u < nv; u++) b[u] = _mm512_loadu_si512(bp + (size_t)p * BNR + 16 * u);
        const int32_t o = off[p];
        for (int r = 0; r < BMR; r++) {
            const __m512i x = _mm512_set1_epi32((int)load_word(a[r] + o));
            for (int u = 0; u < nv; u++) acc[r][u] = _mm512_dpbf16_ps(acc[r][u], HG_AS_BH(x), HG_AS_BH(b[u]));
        }
    }
    for (int r = 0; r < BMR; r++) {
        if (r >= mr) break;
        for (int u = 0; u < nv; u++) {
            const int w = nr - 16 * u;   // > 0: u < nv = ceil(nr / 16)
            const __mmask16 m = w >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << w) - 1);
            float *o = c[u] + (size_t)r * ldc;
            _mm512_mask_storeu_ps(o, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, o), acc[r][u]));
        }
    }
}

typedef void (*bf16_tile_fn)(int, const uint16_t *const[BMR], const int32_t *, const uint32_t *, float *const[BNV],
                             size_t, int, int);
#define HG_TILE(V)                                                                                                  \
    HG_BF16K static void bf16_tile_##V(int kp, const uint16_t *const a[BMR], const int32_t *off, const uint32_t *bp, \
                                       float *const c[BNV], size_t ldc, int mr, int nr) {                            \
        bf16_tile(V, kp, a, off, bp, c, ldc, mr, nr);                                                                \
    }
HG_TILE(1) HG_TILE(2) HG_TILE(3)
static const bf16_tile_fn bf16_tiles[BNV] = {bf16_tile_1, bf16_tile_2, bf16_tile_3};

HG_BF16K void HG_NAME(hg_conv_s1_avx512bf16)(const uint16_t *w, int gradInput, const float *inp, float *out, int C,
                                             int H, int W, int M, int kernel, int pt, int pl, int Ho, int Wo, int n0,
                                             int n1, int m0, int m1, float *scratch) {
    const int kk = kernel * kernel, K = C * kk, KP = hg_conv_bf16_pairs(gradInput, C, kernel);
    uint32_t *bp = (uint32_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    int32_t *off = (int32_t *)(scratch + (size_t)BKP * BNR + 16);
    // off[p]: where pair p's word sits relative to its row's start (elements); rowStride: from one row to the next.
    size_t rowStride;
    if (!gradInput) {
        for (int p = 0; p < KP; p++) off[p] = 2 * p + 1 < K ? 2 * p : K - 2;
        rowStride = (size_t)K;
    } else {
        const int P = (kk + 1) / 2;
        for (int o = 0; o < C; o++)
            for (int j = 0; j < P; j++) off[o * P + j] = o * M * kk + (2 * j + 1 < kk ? kk - 2 - 2 * j : 0);
        rowStride = (size_t)kk;
    }
    const size_t HW = (size_t)H * W, L = (size_t)Ho * Wo;
    // A vector of 16 pixels is one stretch of an output row (Wo % 16 == 0) or 16 / Wo whole rows (Wo | 16), always
    // of one image (L % 16 == 0): segments of `seg` lanes, each one output row.
    const int seg = Wo < 16 ? Wo : 16, nseg = 16 / seg;
    // Pixels in blocks whose output (m1 − m0 channels) is about 1 MB; inside, blocks of pairs outside and panels
    // inside: the block of A (channels × BKP words) stays in L2 while the panels stream past it.
    const int rowsM = m1 - m0 > 0 ? m1 - m0 : 1;
    int nb = ((1 << 18) / rowsM) / BNR * BNR;
    if (nb < BNR) nb = BNR;
    for (int b0 = n0; b0 < n1; b0 += nb) {
        const int b1 = n1 - b0 < nb ? n1 : b0 + nb;
        for (int p0 = 0; p0 < KP; p0 += BKP) {
            const int kp = KP - p0 < BKP ? KP - p0 : BKP;
            for (int j0 = b0; j0 < b1; j0 += BNR) {
                const int nr = b1 - j0 < BNR ? b1 - j0 : BNR, nv = (nr + 15) / 16;
                float *cu[BNV] = {NULL, NULL, NULL};
                // Pack the panel's pairs p0..<p0+kp (two im2col rows (c, t) each). Per vector, the tap t fixes, for
                // each output row the vector covers (segment), where its lanes read (relative to the channel's
                // plane) and which lanes are inside the image; the rows then only add c·H·W.
                for (int u = 0; u < nv; u++) {
                    const int lanes = nr - 16 * u;
                    const size_t g = (size_t)j0 + 16 * (size_t)u;
                    const size_t b = g / L, q0 = g % L;
                    const int y0 = (int)(q0 / (size_t)Wo), x0 = (int)(q0 % (size_t)Wo);
                    cu[u] = out + b * (size_t)M * L + q0;
                    const float *img = inp + b * (size_t)C * HW;
                    ptrdiff_t segOff[BMAX_TAPS][16];
                    __mmask16 segMask[BMAX_TAPS][16];
                    hg_conv_segments(y0, x0, lanes, seg, kernel, kk, pt, pl, H, W, segOff, segMask);
                    for (int p = 0; p < kp; p++) {
                        int rc[2], rt[2];
                        conv_bf16_pair_rows(gradInput, kk, K, p0 + p, &rc[0], &rt[0], &rc[1], &rt[1]);
                        __m512 v[2];
                        for (int h = 0; h < 2; h++) {
                            if (rt[h] < 0) { v[h] = _mm512_setzero_ps(); continue; }
                            const float *plane = img + (size_t)rc[h] * HW;
                            const int t = rt[h];
                            v[h] = _mm512_maskz_loadu_ps(segMask[t][0], plane + segOff[t][0]);
                            for (int q = 1; q < nseg; q++) v[h] = _mm512_mask_loadu_ps(v[h], segMask[t][q], plane + segOff[t][q]);
                        }
                        _mm512_storeu_si512(bp + (size_t)p * BNR + 16 * u, hg_bf16_pairs16(v[0], v[1]));
                    }
                }
                for (int i0 = m0; i0 < m1; i0 += BMR) {
                    const int mr = m1 - i0 < BMR ? m1 - i0 : BMR;
                    const uint16_t *ar[BMR];
                    for (int r = 0; r < BMR; r++) ar[r] = w + (size_t)(i0 + (r < mr ? r : mr - 1)) * rowStride;
                    float *ci[BNV];
                    for (int u = 0; u < nv; u++) ci[u] = cu[u] + (size_t)i0 * L;
                    bf16_tiles[nv - 1](kp, ar, off + p0, bp, ci, L, mr, nr);
                }
            }
        }
    }
}
