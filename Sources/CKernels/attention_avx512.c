// Scaled-dot-product attention of one (batch, head) on AVX-512F, for the small head sizes where OpenBLAS is slow
// (d = 8…64: every GEMM of the attention then has a tiny K or N, and OpenBLAS spends its time packing and zeroing).
// Layers/Attention.swift calls these per (batch, head[, query block]) from its worker threads; the maths is the
// same as its OpenBLAS path (FlashAttention-style recomputation, Dao et al. 2022 Alg. 2):
//   forward   S = scale·Q·Kᵀ,  P = exp(S − rowmax),  lse = rowmax + log Σ P,  O = (P·V) / Σ P
//   backward  P = exp(scale·Q·Kᵀ − lse),  dS = P ⊙ (dO·Vᵀ − D),  D_i = Σ_c dO_ic·O_ic,
//             dV += Pᵀ·dO,  dQ += scale·dS·K,  dK += scale·dSᵀ·Q
// K and V are packed transposed, Kt and Vt (d, ldN) with the keys along a row (ldN = Nk rounded up to 16, zero
// padded), so every kernel below runs 16 keys to a vector:
//   scores   S[i][j] = Σ_c A[i][c]·Bt[c][j]            8 query rows × 48 keys of accumulators, broadcast A
//   rowdot   O[i][c] = Σ_j P[i][j]·Bt[c][j]            3 rows × 8 channels of accumulators, summed across lanes
//            (short key rows, see attn_bcast: O[i][c] = Σ_j P[i][j]·V[j][c], up to 12 rows × 64 channels,
//            broadcast P, V read in place)
//   outer    Ct[c][j] += Σ_i A[i][c]·P[i][j]           4 channels × 64 keys of accumulators over the tile's rows
// Query rows go in tiles of ATTN_ROWS whose score rows (ATTN_ROWS, ldN) stay in L2. Each output element is summed
// in a fixed order that depends only on the shapes, so results do not depend on threads or blocking.
// Padded key columns: S = −∞ there (so P = 0), causal masks the same way (key j > query i); masked P is exactly 0.
//
// The bf16 twin (attention_avx512bf16.c compiles this file again with HG_ATTENTION_BF16; AVX512-BF16 only; used where
// a model's attention projections are bf16, on a CPU with VDPBF16PS): the same kernels, tiles and order, with VDPBF16PS in place
// of the FMA, so every product's two operands are rounded to bf16 (round to nearest even, as hg_f2b) and every sum
// stays fp32, as PyTorch's bf16 autocast attention rounds them (it also keeps S and P in bf16; here S, P, dS, the
// softmax and lse stay fp32 and only the products' operands are rounded). A 32-bit word holds a pair along each
// product's reduction:
//   scores   Q, dO as row words (i, c pair), K and V as Kt2, Vt2 (c pair, ld) words
//   rowdot   P, dS as row words (i, key pair), V and K as (c, key pair) words ("keys paired")
//   outer    dO, Q as (c, query pair) words, P and dS as (query pair, ld) words ("rows paired")
// Short key rows (attn_bcast) keep the fp32 rowdot_bcast for P·V and dS·K. The reference in scalar C:
// hg_attention_bf16_ref (below, in the fp32 build).
#include "internal.h"
#include "avx512_exp.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef HG_ATTENTION_BF16
#define HG_ATTN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
typedef uint32_t attn_t;                         // a pair of bf16 along the reduction
typedef __m512i attn_vec;
#define ATTN_LOAD(p) _mm512_loadu_si512(p)
#define ATTN_SET1(x) _mm512_set1_epi32((int)(x))
#define ATTN_MADD(acc, a, b) _mm512_dpbf16_ps((acc), (__m512bh)(a), (__m512bh)(b))
#define HG_BF16_ROUND_TARGET HG_ATTN
#include "bf16_round.h"
#else
#define HG_ATTN HG_AVX512F
typedef float attn_t;
typedef __m512 attn_vec;
#define ATTN_LOAD(p) _mm512_loadu_ps(p)
#define ATTN_SET1(x) _mm512_set1_ps(x)
#define ATTN_MADD(acc, a, b) _mm512_fmadd_ps((a), (b), (acc))
#endif
#define HG_ATTN_INLINE HG_ATTN HG_INLINE

enum { ATTN_ROWS = 32 };                         // query rows per tile

/// Key stride of the packed rows: Nk rounded up to 16, and not a multiple of 256 floats (1 KB-aligned rows of
/// Kt would all fall into the same L1 sets when the kernels walk down a column).
static int attn_ld(int Nk) {
    int ld = (Nk + 15) & ~15;
    if (ld % 256 == 0) ld += 16;
    return ld;
}

static float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/// The first n lanes (all for n ≥ 16).
static inline __mmask16 attn_lanes(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

#ifndef HG_ATTENTION_BF16
size_t hg_attention_avx512_workspace(int Nk, int d) {
    const size_t ld = (size_t)attn_ld(Nk);
    // backward: Kt, Vt, dKt, dVt (d, ld); P, dS (ATTN_ROWS, ld); D (ATTN_ROWS); +16 to align to 64 bytes.
    // forward uses Kt, Vt, S, and a row vector: less.
    return 4 * (size_t)d * ld + 2 * (size_t)ATTN_ROWS * ld + ATTN_ROWS + 16;
}

/// dst (d, ld) = srcᵀ for src (n, d) with row stride lds; columns n..<ld zero.
static void pack_transposed(float *dst, int ld, const float *src, int lds, int n, int d) {
    for (int j = 0; j < n; j++) {
        const float *s = src + (size_t)j * lds;
        for (int c = 0; c < d; c++) dst[(size_t)c * ld + j] = s[c];
    }
    for (int c = 0; c < d; c++) memset(dst + (size_t)c * ld + n, 0, (size_t)(ld - n) * sizeof(float));
}
#endif

/// dst (n, d) row stride ldd += srcᵀ for src (d, ld): 16 channels of a row gathered at a time.
HG_ATTN static void add_transposed(float *dst, int ldd, const float *src, int ld, int n, int d) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i stride = _mm512_mullo_epi32(lane, _mm512_set1_epi32(ld));
    for (int c0 = 0; c0 < d; c0 += 16) {
        const __mmask16 k = attn_lanes(d - c0);
        const float *col = src + (size_t)c0 * ld;
        for (int j = 0; j < n; j++) {
            float *o = dst + (size_t)j * ldd + c0;
            const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, stride, col + j, 4);
            _mm512_mask_storeu_ps(o, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, o), g));
        }
    }
}

/// Σ_c a[c]·b[c], c < d.
HG_ATTN static float dot_row(const float *a, const float *b, int d) {
    __m512 acc = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 16) {
        const __mmask16 k = attn_lanes(d - c);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + c), _mm512_maskz_loadu_ps(k, b + c), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

// MARK: - scores: SR rows × NV vectors of 16 keys

enum { SR = 8, SNV = 3 };        // query rows × key vectors of a scores tile (24 accumulators)
enum { SCORES_KEYS = 960 };      // keys per block (20 tiles): Bt's block, d × 960 floats, stays in L2 across rows

/// acc[r][u] = Σ_c a[r][c]·bt[c·ld + 16u] for r < SR, u < NV, c < kd (channels; channel pairs in the bf16 build).
HG_ATTN_INLINE void scores_tile(const attn_t *const a[SR], const attn_t *bt, int ld, int kd, const int NV,
                                __m512 acc[SR][SNV]) {
    for (int r = 0; r < SR; r++)
        for (int u = 0; u < NV; u++) acc[r][u] = _mm512_setzero_ps();
    for (int c = 0; c < kd; c++) {
        attn_vec b[SNV];
        for (int u = 0; u < NV; u++) b[u] = ATTN_LOAD(bt + (size_t)c * ld + 16 * u);
        for (int r = 0; r < SR; r++) {
            const attn_vec x = ATTN_SET1(a[r][c]);
            for (int u = 0; u < NV; u++) acc[r][u] = ATTN_MADD(acc[r][u], x, b[u]);
        }
    }
}

enum { SCORES_S = 0, SCORES_PROBS = 1, SCORES_DS = 2 };

/// Stores one tile (rows r < rows ≤ SR, NV vectors from key j0) for the modes of `scores`; loops have constant
/// bounds so the accumulators stay in registers.
HG_ATTN_INLINE void scores_store(const int mode, __m512 acc[SR][SNV], const int NV, int rows, int j0, int ld,
                                 const int lim[SR], int masked, __m512 vscale, const float *shift, const float *p,
                                 float *out) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int r = 0; r < SR; r++) {
        if (r >= rows) break;
        const __m512 sh = mode == SCORES_S ? _mm512_setzero_ps() : _mm512_set1_ps(shift[r]);
        for (int u = 0; u < NV; u++) {
            const int j = j0 + 16 * u;
            const __mmask16 keep = masked
                ? _mm512_cmplt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(j)), _mm512_set1_epi32(lim[r]))
                : (__mmask16)0xffff;
            float *o = out + (size_t)r * ld + j;
            if (mode == SCORES_S) {
                _mm512_storeu_ps(o, _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), keep, acc[r][u], vscale));
            } else if (mode == SCORES_PROBS) {
                const __m512 e = exp16(_mm512_fmsub_ps(acc[r][u], vscale, sh));
                _mm512_storeu_ps(o, _mm512_maskz_mov_ps(keep, e));
            } else {
                const __m512 pv = _mm512_loadu_ps(p + (size_t)r * ld + j);
                _mm512_storeu_ps(o, _mm512_maskz_mul_ps(keep, pv, _mm512_sub_ps(acc[r][u], sh)));
            }
        }
    }
}

/// Keys [j0, j1) of query rows r < rows (≤ SR; a[r] row r of A, query index row0 + r); see `scores`.
HG_ATTN_INLINE void scores_rows(const int mode, const attn_t *const a[SR], int rows, const attn_t *bt, int ld, int kd,
                                int Nk, int causal, int row0, float scale, const float *shift, const float *p,
                                float *out, int j0, int j1) {
    int lim[SR];
    for (int r = 0; r < SR; r++) lim[r] = causal && row0 + r + 1 < Nk ? row0 + r + 1 : Nk;
    const int limMin = lim[0];                              // the first row sees the fewest keys
    const __m512 vscale = _mm512_set1_ps(scale);
    for (; j0 + 16 * SNV <= j1; j0 += 16 * SNV) {
        __m512 acc[SR][SNV];
        scores_tile(a, bt + j0, ld, kd, SNV, acc);
        scores_store(mode, acc, SNV, rows, j0, ld, lim, j0 + 16 * SNV > limMin, vscale, shift, p, out);
    }
    for (; j0 < j1; j0 += 16) {
        __m512 acc[SR][SNV];
        scores_tile(a, bt + j0, ld, kd, 1, acc);
        scores_store(mode, acc, 1, rows, j0, ld, lim, j0 + 16 > limMin, vscale, shift, p, out);
    }
}

/// For `rows` query rows of A (row stride lda; query index row0 + i), all ld columns, out and p rows at stride ld:
///   SCORES_S      out = scale·A·Bt (−∞ where masked)
///   SCORES_PROBS  out = exp(scale·A·Bt − shift[i]) (0 where masked)
///   SCORES_DS     out = P ⊙ (A·Bt − shift[i]), P = `p`
/// Key j of row i is masked when j ≥ Nk or (causal) j > row0 + i. Keys go in blocks of SCORES_KEYS, rows inside.
/// A (rows, kd) and Bt (kd, ld) are floats, or in the bf16 build channel-pair words (kd = channel pairs).
HG_ATTN static void scores(const int mode, const attn_t *A, int lda, int rows, const attn_t *bt, int ld, int kd, int Nk,
                              int causal, int row0, float scale, const float *shift, const float *p, float *out) {
    for (int jb = 0; jb < ld; jb += SCORES_KEYS) {
        const int je = ld - jb < SCORES_KEYS ? ld : jb + SCORES_KEYS;
        for (int i = 0; i < rows; i += SR) {
            const int n = rows - i < SR ? rows - i : SR;
            const attn_t *a[SR];
            for (int r = 0; r < SR; r++) a[r] = A + (size_t)(i + (r < n ? r : n - 1)) * lda;   // spare rows repeat the last
            const size_t o = (size_t)i * ld;
            if (mode == SCORES_S)
                scores_rows(SCORES_S, a, n, bt, ld, kd, Nk, causal, row0 + i, scale, 0, 0, out + o, jb, je);
            else if (mode == SCORES_PROBS)
                scores_rows(SCORES_PROBS, a, n, bt, ld, kd, Nk, causal, row0 + i, scale, shift + i, 0, out + o, jb, je);
            else
                scores_rows(SCORES_DS, a, n, bt, ld, kd, Nk, causal, row0 + i, 1, shift + i, p + o, out + o, jb, je);
        }
    }
}

// MARK: - rowdot: 3 rows × 8 channels

/// Σ over the 16 lanes of each of a[0..7], as 8 floats.
HG_ATTN_INLINE __m256 sum_lanes8(const __m512 a[8]) {
    __m256 s[8];
    for (int i = 0; i < 8; i++)
        s[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i]),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[i]), 1)));
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/// out[r][c] (= or +=) alpha[r]·Σ_j p[r][j]·bt[c·ld + j] for r < rows (≤ 3), c < nc (≤ 8), j < ld (keys; key
/// pairs in the bf16 build).
HG_ATTN_INLINE void rowdot_tile(const attn_t *const p[3], int rows, const attn_t *bt, int ld, int nc,
                                float *const out[3], const float *alpha, int accumulate) {
    __m512 acc[3][8];
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 8; c++) acc[r][c] = _mm512_setzero_ps();
    for (int j = 0; j < ld; j += 16) {
        const attn_vec x0 = ATTN_LOAD(p[0] + j), x1 = ATTN_LOAD(p[1] + j), x2 = ATTN_LOAD(p[2] + j);
        for (int c = 0; c < 8; c++) {
            if (c >= nc) break;
            const attn_vec b = ATTN_LOAD(bt + (size_t)c * ld + j);
            acc[0][c] = ATTN_MADD(acc[0][c], x0, b);
            acc[1][c] = ATTN_MADD(acc[1][c], x1, b);
            acc[2][c] = ATTN_MADD(acc[2][c], x2, b);
        }
    }
    for (int r = 0; r < 3; r++) {
        if (r >= rows) break;
        float s[8];
        _mm256_storeu_ps(s, sum_lanes8(acc[r]));
        for (int c = 0; c < nc; c++) out[r][c] = accumulate ? out[r][c] + alpha[r] * s[c] : alpha[r] * s[c];
    }
}

/// out (rows, d) row stride ldo (= or +=) diag(alpha)·P·Btᵀ, P (rows, ld) row stride ld, Bt (d, ld).
HG_ATTN static void rowdot(const attn_t *P, int rows, const attn_t *bt, int ld, int d, float *out, int ldo,
                           const float *alpha, int accumulate) {
    for (int i = 0; i < rows; i += 3) {
        const int n = rows - i < 3 ? rows - i : 3;
        const attn_t *p[3];
        float *o[3];
        for (int r = 0; r < 3; r++) {
            const int ri = i + (r < n ? r : n - 1);
            p[r] = P + (size_t)ri * ld;
            o[r] = out + (size_t)ri * ldo;
        }
        for (int c0 = 0; c0 < d; c0 += 8) {
            float *oc[3] = {o[0] + c0, o[1] + c0, o[2] + c0};
            const int nc = d - c0 < 8 ? d - c0 : 8;
            if (nc == 8) rowdot_tile(p, n, bt + (size_t)c0 * ld, ld, 8, oc, alpha + i, accumulate);
            else rowdot_tile(p, n, bt + (size_t)c0 * ld, ld, nc, oc, alpha + i, accumulate);
        }
    }
}

// MARK: - rowdot for wider heads: channels along the vector, P broadcast

/// out[r][c] (= or +=) alpha[r]·Σ_{j<n} P[r·ld + j]·b[j·ldb + c] for r < rows (≤ R ≤ 12), c < 16·NVC (NVC ≤ 4,
/// the last vector masked by `last`): no lane sums, so short key rows cost nothing extra. b is V or K in place.
HG_ATTN_INLINE void pvb_tile(const float *P, int ld, int rows, const int R, const float *b, int ldb, int n,
                             const int NVC, __mmask16 last, float *out, int ldo, const float *alpha, int accumulate) {
    __m512 acc[12][4];
    const float *p[12];
    for (int r = 0; r < R; r++) {
        p[r] = P + (size_t)(r < rows ? r : rows - 1) * ld;
        for (int u = 0; u < NVC; u++) acc[r][u] = _mm512_setzero_ps();
    }
    for (int j = 0; j < n; j++) {
        __m512 bv[4];
        const float *bj = b + (size_t)j * ldb;
        for (int u = 0; u < NVC; u++) bv[u] = _mm512_maskz_loadu_ps(u == NVC - 1 ? last : (__mmask16)0xffff, bj + 16 * u);
        for (int r = 0; r < R; r++) {
            const __m512 x = _mm512_set1_ps(p[r][j]);
            for (int u = 0; u < NVC; u++) acc[r][u] = _mm512_fmadd_ps(x, bv[u], acc[r][u]);
        }
    }
    for (int r = 0; r < R; r++) {
        if (r >= rows) break;
        const __m512 a = _mm512_set1_ps(alpha[r]);
        for (int u = 0; u < NVC; u++) {
            const __mmask16 k = u == NVC - 1 ? last : (__mmask16)0xffff;
            float *o = out + (size_t)r * ldo + 16 * u;
            __m512 y = _mm512_mul_ps(a, acc[r][u]);
            if (accumulate) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(k, o));
            _mm512_mask_storeu_ps(o, k, y);
        }
    }
}

/// Rows of one channel chunk (NVC vectors) in tiles of R rows, R·NVC ≤ 24 accumulators, over keys [j0, j1).
#define PVB_ROWS(NVC, R)                                                                                         \
    for (int i = 0; i < rows; i += R) {                                                                          \
        const int n_ = rows - i < R ? rows - i : R;                                                              \
        pvb_tile(P + (size_t)i * ld + j0, ld, n_, R, b + (size_t)j0 * ldb, ldb, j1 - j0, NVC, last,               \
                 out + (size_t)i * ldo, ldo, alpha + i, acc);                                                     \
    }

enum { PVB_KEYS = 512 };         // keys per block: the block of V (or K) is reused from L2 by every row tile

/// out (rows, d) (= or +=) diag(alpha)·P·B for P (rows, ld) over its first n columns, B (n, d) row stride ldb.
/// Keys go in blocks of PVB_KEYS (each block's partial sum is added into out), channels in chunks of 64.
HG_ATTN static void rowdot_bcast(const float *P, int rows, int ld, int n, const float *b, int ldb, int d,
                                    float *out, int ldo, const float *alpha, int accumulate) {
    for (int c0 = 0; c0 < d; c0 += 64) {                     // chunks of at most 4 vectors
        const int nc = d - c0 < 64 ? d - c0 : 64, nv = (nc + 15) / 16;
        const __mmask16 last = (__mmask16)(nc % 16 ? (1u << (nc % 16)) - 1 : 0xffff);
        for (int j0 = 0; j0 < n; j0 += PVB_KEYS) {
            const int j1 = n - j0 < PVB_KEYS ? n : j0 + PVB_KEYS, acc = accumulate || j0 > 0;
            switch (nv) {
            case 1: PVB_ROWS(1, 12) break;
            case 2: PVB_ROWS(2, 12) break;
            case 3: PVB_ROWS(3, 8) break;
            default: PVB_ROWS(4, 6) break;
            }
        }
        b += 64; out += 64;
    }
}

// MARK: - outer: 4 channels × NV vectors of 16 keys

/// ct[c·ld + 16u] += alpha·Σ_{i<m} a[i·si + c·sc]·p[i·ld + 16u] for c < NC, u < NV (i: rows; row pairs in the bf16
/// build).
HG_ATTN_INLINE void outer_tile(const attn_t *a, size_t si, size_t sc, const attn_t *p, int ld, int m, const int NC,
                               const int NV, float *ct, float alpha) {
    __m512 acc[4][4];
    for (int c = 0; c < NC; c++)
        for (int u = 0; u < NV; u++) acc[c][u] = _mm512_setzero_ps();
    for (int i = 0; i < m; i++) {
        attn_vec x[4];
        for (int u = 0; u < NV; u++) x[u] = ATTN_LOAD(p + (size_t)i * ld + 16 * u);
        for (int c = 0; c < NC; c++) {
            const attn_vec b = ATTN_SET1(a[(size_t)i * si + (size_t)c * sc]);
            for (int u = 0; u < NV; u++) acc[c][u] = ATTN_MADD(acc[c][u], b, x[u]);
        }
    }
    const __m512 va = _mm512_set1_ps(alpha);
    for (int c = 0; c < NC; c++)
        for (int u = 0; u < NV; u++) {
            float *o = ct + (size_t)c * ld + 16 * u;
            _mm512_storeu_ps(o, _mm512_fmadd_ps(va, acc[c][u], _mm512_loadu_ps(o)));
        }
}

HG_ATTN_INLINE void outer_cols(const attn_t *a, size_t si, size_t sc, const attn_t *p, int ld, int m, const int NC,
                                float *ct, float alpha) {
    int j = 0;
    for (; j + 64 <= ld; j += 64) outer_tile(a, si, sc, p + j, ld, m, NC, 4, ct + j, alpha);
    for (; j < ld; j += 16) outer_tile(a, si, sc, p + j, ld, m, NC, 1, ct + j, alpha);
}

/// Ct (d, ld) += alpha·Aᵀ·P for A (m, d) (element (i, c) at i·si + c·sc), P (m, ld).
HG_ATTN static void outer(const attn_t *A, size_t si, size_t sc, const attn_t *P, int ld, int m, int d, float *ct,
                          float alpha) {
    int c = 0;
    for (; c + 4 <= d; c += 4) outer_cols(A + c * sc, si, sc, P, ld, m, 4, ct + (size_t)c * ld, alpha);
    switch (d - c) {
    case 3: outer_cols(A + c * sc, si, sc, P, ld, m, 3, ct + (size_t)c * ld, alpha); break;
    case 2: outer_cols(A + c * sc, si, sc, P, ld, m, 2, ct + (size_t)c * ld, alpha); break;
    case 1: outer_cols(A + c * sc, si, sc, P, ld, m, 1, ct + (size_t)c * ld, alpha); break;
    default: break;
    }
}

// MARK: - Entry points

/// The forward's softmax of a tile: S (rows, ld) ← exp(S − rowmax) in place, lse[r] = rowmax + log Σ, inv[r] = 1/Σ.
/// Masked and padded columns hold −∞: exp gives 0 there, so the whole padded row can be summed.
HG_ATTN static void softmax_tile(float *S, int rows, int ld, float *lse, float *inv) {
    for (int r = 0; r < rows; r++) {
        const float mx = hg_row_max_avx512(S + (size_t)r * ld, ld);
        const float sum = hg_row_exp_sum_avx512(S + (size_t)r * ld, ld, mx);
        lse[r] = mx + logf(sum);
        inv[r] = 1 / sum;
    }
}

/// P·V and dS·K with channels along the vectors (rowdot_bcast) for short key rows: heads of 16 over fewer than 128
/// keys (cross-attention's 77), heads of 32 and more over fewer than 1024. Otherwise the lanes run along the keys
/// (rowdot): on small heads half-empty or single vectors are load-bound, and on long key rows full vectors win
/// (4096 keys, d 40: forward 258 against 293 ms, one thread). Measured on 2 cores (bench/attention-compare.sh).
static int attn_bcast(int d, int Nk) { return Nk < 1024 && (d >= 32 || (d >= 16 && Nk < 128)); }

#ifndef HG_ATTENTION_BF16
HG_AVX512F void hg_attention_forward_avx512(const float *q, const float *k, const float *v, int ldx, float *out,
                                            float *lse, int m, int Nk, int d, float scale, int causal, int row0,
                                            float *workspace) {
    const int ld = attn_ld(Nk);
    float *Kt = align64(workspace), *Vt = Kt + (size_t)d * ld, *S = Vt + (size_t)d * ld;
    float *inv = S + (size_t)ATTN_ROWS * ld;
    const int bcast = attn_bcast(d, Nk);
    pack_transposed(Kt, ld, k, ldx, Nk, d);
    if (!bcast) pack_transposed(Vt, ld, v, ldx, Nk, d);                 // rowdot_bcast reads V in place
    for (int i0 = 0; i0 < m; i0 += ATTN_ROWS) {
        const int rows = m - i0 < ATTN_ROWS ? m - i0 : ATTN_ROWS;
        scores(SCORES_S, q + (size_t)i0 * ldx, ldx, rows, Kt, ld, d, Nk, causal, row0 + i0, scale, 0, 0, S);
        softmax_tile(S, rows, ld, lse + i0, inv);
        if (bcast) rowdot_bcast(S, rows, ld, Nk, v, ldx, d, out + (size_t)i0 * ldx, ldx, inv, 0);
        else rowdot(S, rows, Vt, ld, d, out + (size_t)i0 * ldx, ldx, inv, 0);
    }
}

HG_AVX512F void hg_attention_backward_avx512(const float *q, const float *k, const float *v, const float *out,
                                             const float *dout, int ldx, const float *lse, float *dq, float *dk,
                                             float *dv, int Nq, int Nk, int d, float scale, int causal,
                                             float *workspace) {
    const int ld = attn_ld(Nk);
    float *Kt = align64(workspace), *Vt = Kt + (size_t)d * ld, *dKt = Vt + (size_t)d * ld, *dVt = dKt + (size_t)d * ld;
    float *P = dVt + (size_t)d * ld, *dS = P + (size_t)ATTN_ROWS * ld, *D = dS + (size_t)ATTN_ROWS * ld;
    pack_transposed(Kt, ld, k, ldx, Nk, d);
    pack_transposed(Vt, ld, v, ldx, Nk, d);
    memset(dKt, 0, 2 * (size_t)d * ld * sizeof(float));
    float alpha[ATTN_ROWS];
    for (int r = 0; r < ATTN_ROWS; r++) alpha[r] = scale;
    for (int i0 = 0; i0 < Nq; i0 += ATTN_ROWS) {
        const int rows = Nq - i0 < ATTN_ROWS ? Nq - i0 : ATTN_ROWS;
        const float *qb = q + (size_t)i0 * ldx, *ob = out + (size_t)i0 * ldx, *gb = dout + (size_t)i0 * ldx;
        for (int r = 0; r < rows; r++) D[r] = dot_row(ob + (size_t)r * ldx, gb + (size_t)r * ldx, d);
        scores(SCORES_PROBS, qb, ldx, rows, Kt, ld, d, Nk, causal, i0, scale, lse + i0, 0, P);
        scores(SCORES_DS, gb, ldx, rows, Vt, ld, d, Nk, causal, i0, 1, D, P, dS);
        outer(gb, (size_t)ldx, 1, P, ld, rows, d, dVt, 1);
        outer(qb, (size_t)ldx, 1, dS, ld, rows, d, dKt, scale);
        if (attn_bcast(d, Nk)) rowdot_bcast(dS, rows, ld, Nk, k, ldx, d, dq + (size_t)i0 * ldx, ldx, alpha, 1);
        else rowdot(dS, rows, Kt, ld, d, dq + (size_t)i0 * ldx, ldx, alpha, 1);
    }
    add_transposed(dk, ldx, dKt, ld, Nk, d);
    add_transposed(dv, ldx, dVt, ld, Nk, d);
}
#endif

#ifdef HG_ATTENTION_BF16
// MARK: - The bf16 build's operands and entry points

enum { ATTN_PAIRS = ATTN_ROWS / 2 };             // query-row pairs of a tile

/// Words per row of a keys-paired operand: ld keys (a multiple of 16) in pairs, rounded up to 16 words.
static int attn_pair_ld(int ld) { return (ld / 2 + 15) & ~15; }

/// Channels [c, c + 32) of x (d floats) as 16 channel-pair words: w[p] = (x[c + 2p], x[c + 2p + 1]), zero past d.
HG_ATTN_INLINE void words16(uint32_t w[16], const float *x, int c, int d) {
    const __mmask16 k0 = attn_lanes(d - c), k1 = d - c > 16 ? attn_lanes(d - c - 16) : 0;
    _mm256_storeu_si256((__m256i *)w, hg_bf16x16(_mm512_maskz_loadu_ps(k0, x + c)));
    _mm256_storeu_si256((__m256i *)(w + 8), hg_bf16x16(_mm512_maskz_loadu_ps(k1, x + c + 16)));
}

/// Channel pairs of rows r < n of src: dst[r·sr + p·sp] = (src[r][2p], src[r][2p + 1]) for p < (d + 1) / 2 (the
/// missing channel of an odd d is 0). The scores' operands: Q and dO as rows of words (sr = pc, sp = 1), K and V with
/// the keys along a row (sr = 1, sp = ld; keys n..<ld are then zeroed by the caller).
HG_ATTN static void pack_channel_pairs(uint32_t *dst, size_t sr, size_t sp, const float *src, int lds, int n, int d) {
    const int pc = (d + 1) / 2;
    uint32_t w[16];
    for (int r = 0; r < n; r++)
        for (int c = 0; c < d; c += 32) {
            words16(w, src + (size_t)r * lds, c, d);
            const int np = pc - c / 2 < 16 ? pc - c / 2 : 16;
            for (int p = 0; p < np; p++) dst[(size_t)r * sr + (size_t)(c / 2 + p) * sp] = w[p];
        }
}

/// K or V as the scores' B operand: (pc, ld) words, keys along a row, zero past n.
HG_ATTN static void pack_keys_channel_pairs(uint32_t *dst, int ld, const float *src, int lds, int n, int d) {
    pack_channel_pairs(dst, 1, (size_t)ld, src, lds, n, d);
    for (int p = 0; p < (d + 1) / 2; p++) memset(dst + (size_t)p * ld + n, 0, (size_t)(ld - n) * sizeof(uint32_t));
}

/// Row pairs, channels along the rows: dst[c·lr + jj] = (src[2jj][c], src[2jj + 1][c]) for jj < lr, rows ≥ n are 0.
/// rowdot's B operand (V, K: lr = keys paired) and outer's A operand (dO, Q: lr = ATTN_PAIRS, n = the tile's rows).
HG_ATTN static void pack_key_pairs(uint32_t *dst, int lr, const float *src, int lds, int n, int d) {
    uint32_t w[16];
    for (int jj = 0; jj < lr; jj++) {
        const int j = 2 * jj;
        for (int c = 0; c < d; c += 16) {
            const __mmask16 k = attn_lanes(d - c), k0 = j < n ? k : 0, k1 = j + 1 < n ? k : 0;
            _mm512_storeu_si512(w, hg_bf16_pairs16(_mm512_maskz_loadu_ps(k0, src + (size_t)j * lds + c),
                                                _mm512_maskz_loadu_ps(k1, src + (size_t)(j + 1) * lds + c)));
            const int nc = d - c < 16 ? d - c : 16;
            for (int l = 0; l < nc; l++) dst[(size_t)(c + l) * lr + jj] = w[l];
        }
    }
}

/// A tile's rows (ld floats each) as key pairs, lr words a row (zero past ld): rowdot's A operand (P, dS).
HG_ATTN static void keys_paired(uint32_t *dst, int lr, const float *src, int ld, int rows) {
    for (int r = 0; r < rows; r++) {
        uint16_t *o = (uint16_t *)(dst + (size_t)r * lr);
        const float *x = src + (size_t)r * ld;
        for (int j = 0; j < ld; j += 16) _mm256_storeu_si256((__m256i *)(o + j), hg_bf16x16(_mm512_loadu_ps(x + j)));
        memset(o + ld, 0, (size_t)(2 * lr - ld) * sizeof(uint16_t));
    }
}

/// A tile's rows (ld floats each) in pairs of rows: dst[ip·ld + j] = (src[2ip][j], src[2ip + 1][j]) (row `rows` is 0
/// for odd rows): outer's B operand (P, dS).
HG_ATTN static void rows_paired(uint32_t *dst, const float *src, int ld, int rows) {
    for (int ip = 0; 2 * ip < rows; ip++) {
        const float *x0 = src + (size_t)(2 * ip) * ld, *x1 = x0 + ld;
        const __mmask16 k1 = 2 * ip + 1 < rows ? (__mmask16)0xffff : 0;
        for (int j = 0; j < ld; j += 16)
            _mm512_storeu_si512(dst + (size_t)ip * ld + j,
                                hg_bf16_pairs16(_mm512_loadu_ps(x0 + j), _mm512_maskz_loadu_ps(k1, x1 + j)));
    }
}

/// Carves the workspace: n 32-bit elements, 64-byte aligned.
static void *attn_take(float **cur, size_t n) {
    float *p = align64(*cur);
    *cur = p + n;
    return p;
}

size_t hg_attention_avx512bf16_workspace(int Nk, int d) {
    const size_t ld = (size_t)attn_ld(Nk), lr = (size_t)attn_pair_ld((int)ld), pc = (size_t)(d + 1) / 2;
    // backward (the forward needs less): Kt2, Vt2 (pc, ld); Kr (d, lr); dKt, dVt (d, ld); P, dS (ATTN_ROWS, ld);
    // P2, dS2 (ATTN_PAIRS, ld); dSr (ATTN_ROWS, lr); Qw, dOw (ATTN_ROWS, pc); Qt2, dOt2 (d, ATTN_PAIRS); D; up to
    // 15 floats to align each of these 15 buffers.
    return 2 * pc * ld + (size_t)d * lr + 2 * (size_t)d * ld + 2 * (size_t)ATTN_ROWS * ld + 2 * (size_t)ATTN_PAIRS * ld
        + (size_t)ATTN_ROWS * lr + 2 * (size_t)ATTN_ROWS * pc + 2 * (size_t)d * ATTN_PAIRS + ATTN_ROWS + 16 * 16;
}

HG_ATTN void hg_attention_forward_avx512bf16(const float *q, const float *k, const float *v, int ldx, float *out,
                                             float *lse, int m, int Nk, int d, float scale, int causal, int row0,
                                             float *workspace) {
    const int ld = attn_ld(Nk), lr = attn_pair_ld(ld), pc = (d + 1) / 2, bcast = attn_bcast(d, Nk);
    float *cur = workspace;
    uint32_t *Kt2 = attn_take(&cur, (size_t)pc * ld), *Vr = attn_take(&cur, (size_t)d * lr);
    uint32_t *Qw = attn_take(&cur, (size_t)ATTN_ROWS * pc), *Pr = attn_take(&cur, (size_t)ATTN_ROWS * lr);
    float *S = attn_take(&cur, (size_t)ATTN_ROWS * ld), *inv = attn_take(&cur, ATTN_ROWS);
    pack_keys_channel_pairs(Kt2, ld, k, ldx, Nk, d);
    if (!bcast) pack_key_pairs(Vr, lr, v, ldx, Nk, d);                  // rowdot_bcast reads V in place (fp32)
    for (int i0 = 0; i0 < m; i0 += ATTN_ROWS) {
        const int rows = m - i0 < ATTN_ROWS ? m - i0 : ATTN_ROWS;
        pack_channel_pairs(Qw, (size_t)pc, 1, q + (size_t)i0 * ldx, ldx, rows, d);
        scores(SCORES_S, Qw, pc, rows, Kt2, ld, pc, Nk, causal, row0 + i0, scale, 0, 0, S);
        softmax_tile(S, rows, ld, lse + i0, inv);
        if (bcast) {
            rowdot_bcast(S, rows, ld, Nk, v, ldx, d, out + (size_t)i0 * ldx, ldx, inv, 0);
        } else {
            keys_paired(Pr, lr, S, ld, rows);
            rowdot(Pr, rows, Vr, lr, d, out + (size_t)i0 * ldx, ldx, inv, 0);
        }
    }
}

HG_ATTN void hg_attention_backward_avx512bf16(const float *q, const float *k, const float *v, const float *out,
                                              const float *dout, int ldx, const float *lse, float *dq, float *dk,
                                              float *dv, int Nq, int Nk, int d, float scale, int causal,
                                              float *workspace) {
    const int ld = attn_ld(Nk), lr = attn_pair_ld(ld), pc = (d + 1) / 2, bcast = attn_bcast(d, Nk);
    float *cur = workspace;
    uint32_t *Kt2 = attn_take(&cur, (size_t)pc * ld), *Vt2 = attn_take(&cur, (size_t)pc * ld);
    uint32_t *Kr = attn_take(&cur, (size_t)d * lr);
    float *dKt = attn_take(&cur, (size_t)d * ld), *dVt = attn_take(&cur, (size_t)d * ld);
    float *P = attn_take(&cur, (size_t)ATTN_ROWS * ld), *dS = attn_take(&cur, (size_t)ATTN_ROWS * ld);
    uint32_t *P2 = attn_take(&cur, (size_t)ATTN_PAIRS * ld), *dS2 = attn_take(&cur, (size_t)ATTN_PAIRS * ld);
    uint32_t *dSr = attn_take(&cur, (size_t)ATTN_ROWS * lr);
    uint32_t *Qw = attn_take(&cur, (size_t)ATTN_ROWS * pc), *dOw = attn_take(&cur, (size_t)ATTN_ROWS * pc);
    uint32_t *Qt2 = attn_take(&cur, (size_t)d * ATTN_PAIRS), *dOt2 = attn_take(&cur, (size_t)d * ATTN_PAIRS);
    float *D = attn_take(&cur, ATTN_ROWS);
    pack_keys_channel_pairs(Kt2, ld, k, ldx, Nk, d);
    pack_keys_channel_pairs(Vt2, ld, v, ldx, Nk, d);
    if (!bcast) pack_key_pairs(Kr, lr, k, ldx, Nk, d);
    memset(dKt, 0, (size_t)d * ld * sizeof(float));
    memset(dVt, 0, (size_t)d * ld * sizeof(float));
    float alpha[ATTN_ROWS];
    for (int r = 0; r < ATTN_ROWS; r++) alpha[r] = scale;
    for (int i0 = 0; i0 < Nq; i0 += ATTN_ROWS) {
        const int rows = Nq - i0 < ATTN_ROWS ? Nq - i0 : ATTN_ROWS, pairs = (rows + 1) / 2;
        const float *qb = q + (size_t)i0 * ldx, *ob = out + (size_t)i0 * ldx, *gb = dout + (size_t)i0 * ldx;
        for (int r = 0; r < rows; r++) D[r] = dot_row(ob + (size_t)r * ldx, gb + (size_t)r * ldx, d);
        pack_channel_pairs(Qw, (size_t)pc, 1, qb, ldx, rows, d);
        pack_channel_pairs(dOw, (size_t)pc, 1, gb, ldx, rows, d);
        scores(SCORES_PROBS, Qw, pc, rows, Kt2, ld, pc, Nk, causal, i0, scale, lse + i0, 0, P);
        scores(SCORES_DS, dOw, pc, rows, Vt2, ld, pc, Nk, causal, i0, 1, D, P, dS);
        rows_paired(P2, P, ld, rows);
        rows_paired(dS2, dS, ld, rows);
        pack_key_pairs(dOt2, ATTN_PAIRS, gb, ldx, rows, d);
        pack_key_pairs(Qt2, ATTN_PAIRS, qb, ldx, rows, d);
        outer(dOt2, 1, ATTN_PAIRS, P2, ld, pairs, d, dVt, 1);
        outer(Qt2, 1, ATTN_PAIRS, dS2, ld, pairs, d, dKt, scale);
        if (bcast) {
            rowdot_bcast(dS, rows, ld, Nk, k, ldx, d, dq + (size_t)i0 * ldx, ldx, alpha, 1);
        } else {
            keys_paired(dSr, lr, dS, ld, rows);
            rowdot(dSr, rows, Kr, lr, d, dq + (size_t)i0 * ldx, ldx, alpha, 1);
        }
    }
    add_transposed(dk, ldx, dKt, ld, Nk, d);
    add_transposed(dv, ldx, dVt, ld, Nk, d);
}
#endif

#ifndef HG_ATTENTION_BF16
// MARK: - The reference of the bf16 build (portable C)

static float ref_bf(float x) { return hg_b2f(hg_f2b(x)); }

void hg_attention_bf16_ref(const float *q, const float *k, const float *v, const float *dout, int ldx, int Nq, int Nk,
                           int d, float scale, int causal, float *out, float *lse, float *dq, float *dk, float *dv) {
    // P·V and dS·K keep fp32 operands where the kernel reads V and K in place (attn_bcast).
    const int bcast = attn_bcast(d, Nk);
    float *e = malloc((size_t)Nk * sizeof(float)), *dS = malloc((size_t)Nk * sizeof(float));
    for (int i = 0; i < Nq; i++) {
        const float *qi = q + (size_t)i * ldx;
        const int seen = causal && i + 1 < Nk ? i + 1 : Nk;
        float mx = -INFINITY;
        for (int j = 0; j < seen; j++) {
            double acc = 0;
            for (int c = 0; c < d; c++) acc += (double)ref_bf(qi[c]) * ref_bf(k[(size_t)j * ldx + c]);
            e[j] = scale * (float)acc;
            if (e[j] > mx) mx = e[j];
        }
        if (!dout) {
            double sum = 0;
            for (int j = 0; j < seen; j++) { e[j] = expf(e[j] - mx); sum += e[j]; }
            lse[i] = mx + logf((float)sum);
            for (int c = 0; c < d; c++) {
                double acc = 0;
                for (int j = 0; j < seen; j++)
                    acc += bcast ? (double)e[j] * v[(size_t)j * ldx + c] : (double)ref_bf(e[j]) * ref_bf(v[(size_t)j * ldx + c]);
                out[(size_t)i * ldx + c] = (float)(acc / sum);
            }
            continue;
        }
        const float *gi = dout + (size_t)i * ldx;
        double D = 0;
        for (int c = 0; c < d; c++) D += (double)out[(size_t)i * ldx + c] * gi[c];
        for (int j = 0; j < seen; j++) {
            e[j] = expf(e[j] - lse[i]);
            double dp = 0;
            for (int c = 0; c < d; c++) dp += (double)ref_bf(gi[c]) * ref_bf(v[(size_t)j * ldx + c]);
            dS[j] = e[j] * (float)(dp - D);
            for (int c = 0; c < d; c++) {
                dv[(size_t)j * ldx + c] += ref_bf(e[j]) * ref_bf(gi[c]);
                dk[(size_t)j * ldx + c] += scale * ref_bf(dS[j]) * ref_bf(qi[c]);
            }
        }
        for (int c = 0; c < d; c++) {
            double acc = 0;
            for (int j = 0; j < seen; j++)
                acc += bcast ? (double)dS[j] * k[(size_t)j * ldx + c] : (double)ref_bf(dS[j]) * ref_bf(k[(size_t)j * ldx + c]);
            dq[(size_t)i * ldx + c] += scale * (float)acc;
        }
    }
    free(e);
    free(dS);
}
#endif
