// The AVX512-BF16 path: fp32<->bf16 buffer conversions and a GEMM with VDPBF16PS micro-kernels, fp32
// accumulators, Goto-style packing and blocking, pthreads over M or N. Compiled with per-function target attributes
// only; callers use it only when CPUID reports avx512bf16 (+f/bw/vl). avx512_bf16_emu.c compiles this same file
// a second time against emu512.h (portable C) so that tests can run it on any CPU.
//
// VDPBF16PS acc, a, b: for each fp32 lane l, acc[l] += a.bf16[2l]·b.bf16[2l] + a.bf16[2l+1]·b.bf16[2l+1].
// So both packed operands hold (k, k+1) pairs in 32-bit words, k even:
//   packed A (row panel of MR = 8 rows):   Ap[p*8 + r]  = op(A)[i0+r][2p] | op(A)[i0+r][2p+1] << 16
//   packed B (column panel of 16·nv cols): Bp[p*w + c]  = op(B)[2p][j0+c] | op(B)[2p+1][j0+c] << 16
// The micro-kernel broadcasts one A word per row and multiplies it with nv (<= 3) B vectors of 16 columns:
// an 8 × 48 block of C lives in 24 zmm accumulators. Missing rows / columns / the odd last k are packed as zeros.
// An fp32 operand is rounded to bf16 (RNE, NaN -> 0xFFFF, as hg_f32_to_bf16) while it is packed.
#include "internal.h"
#include <stdlib.h>

#ifdef HG_EMULATE_AVX512
#include "emu512.h"
#define HG_AVX512
#define HG_NAME(x) x##_emu
#else
#include <immintrin.h>
#define HG_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define HG_NAME(x) x
#define HG_AS_BH(x) ((__m512bh)(x))
#endif
#ifdef HG_EMULATE_AVX512
#define HG_PREFETCH(p) ((void)(p))
#else
#define HG_PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#endif
#define HG_BF16_ROUND_TARGET HG_AVX512
#include "bf16_round.h"

enum {
    MR = 8,           // rows of a micro-tile (broadcast side)
    NV = 3,           // zmm vectors per row of a micro-tile
    NR = 16 * NV,     // columns of a micro-tile (vector side)
    KC = 512,         // max k per block (even): a B micro-panel (KC × NR bf16 = 48 KiB) streams from L2
    MC = 192,         // rows of an A block (MC × KC bf16 = 192 KiB, in L2)
    NC = 64 * NR,     // columns of a B block (3072: KC × NC bf16 = 3 MiB, L3)
};

// MARK: - Packing

// The first n lanes (none for n <= 0, all for n >= the width).
HG_AVX512 HG_INLINE __mmask16 mask16(int n) {
    return n <= 0 ? (__mmask16)0 : n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}
HG_AVX512 HG_INLINE __mmask32 mask32(int n) {
    return n <= 0 ? (__mmask32)0 : n >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << n) - 1);
}

// Where 16 packed words for lanes [l, l+16) at pair p go. Panels are W lanes wide (W = 8, or a multiple of 16);
// the last panel, for lanes up to nlanes, is only as wide as it needs (rounded up to 16) when W > 8.
typedef struct {
    uint32_t *dst;
    int W, kp, nlanes;
} hg_pack_out;

HG_AVX512 HG_INLINE void store16(const hg_pack_out *o, int l, int p, __m512i v) {
    if (o->W == 8) {  // two A panels
        int q = l / 8;
        _mm256_storeu_si256((__m256i *)(o->dst + (size_t)q * o->kp * 8 + (size_t)p * 8), _mm512_castsi512_si256(v));
        if (l + 8 < o->nlanes)
            _mm256_storeu_si256((__m256i *)(o->dst + (size_t)(q + 1) * o->kp * 8 + (size_t)p * 8),
                                _mm512_extracti64x4_epi64(v, 1));
    } else {
        int q = l / o->W, off = l % o->W;
        int rest = o->nlanes - q * o->W;
        int w = rest >= o->W ? o->W : (rest + 15) / 16 * 16;
        _mm512_storeu_si512(o->dst + (size_t)q * o->kp * o->W + (size_t)p * w + off, v);
    }
}

// 16×16 transpose of 32-bit words, in place.
HG_AVX512 HG_INLINE void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        __m512i a = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);
        __m512i b = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
        __m512i d = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
        __m512i e = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_i32x4(a, d, 0x88);
        t[8 + c] = _mm512_shuffle_i32x4(a, d, 0xdd);
        t[4 + c] = _mm512_shuffle_i32x4(b, e, 0x88);
        t[12 + c] = _mm512_shuffle_i32x4(b, e, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

// Operand laid out with k contiguous: element (lane l, k) at src[(l0 + l)·ld + k0 + k] (A not transposed, or B
// transposed). Each lane's (k, k+1) pair is adjacent in memory; packing is a 16×16 transpose of pair words.
HG_AVX512 static void pack_k_contiguous(const void *src, int bf16, int ld, int l0, int nlanes, int k0, int kc,
                                        const hg_pack_out *o) {
    const int kp = (kc + 1) / 2;
    const size_t es = bf16 ? 2 : 4;  // bytes per element
    for (int l = 0; l < nlanes; l += 16) {
        const int rows = nlanes - l < 16 ? nlanes - l : 16;
        for (int p0 = 0; p0 < kp; p0 += 16) {
            const int kk = kc - 2 * p0;  // k values left from this chunk on (> 0)
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                if (i >= rows) {
                    r[i] = _mm512_setzero_si512();
                    continue;
                }
                size_t off = (size_t)(l0 + l + i) * ld + k0 + 2 * p0;
                if (l + 16 + i < nlanes) {  // the next 16 lanes' same chunk: a row group ahead
                    const char *q = (const char *)src + (off + (size_t)16 * ld) * es;
                    HG_PREFETCH(q);
                    if (!bf16) HG_PREFETCH(q + 64);
                }
                if (bf16) {
                    r[i] = _mm512_maskz_loadu_epi16(mask32(kk), (const uint16_t *)src + off);
                } else {
                    const float *s = (const float *)src + off;
                    r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(hg_bf16x16(_mm512_maskz_loadu_ps(mask16(kk), s))),
                                              hg_bf16x16(_mm512_maskz_loadu_ps(mask16(kk - 16), s + 16)), 1);
                }
            }
            transpose16(r);
            const int np = kp - p0 < 16 ? kp - p0 : 16;
            for (int p = 0; p < np; p++) store16(o, l, p0 + p, r[p]);
        }
    }
}

// Operand laid out with lanes contiguous: element (lane l, k) at src[(k0 + k)·ld + l0 + l] (A transposed, or B
// not transposed). A pair word joins rows k and k+1 lane by lane.
HG_AVX512 static void pack_lane_contiguous(const void *src, int bf16, int ld, int l0, int nlanes, int k0, int kc,
                                           const hg_pack_out *o) {
    const int kp = (kc + 1) / 2;
    const size_t es = bf16 ? 2 : 4;  // bytes per element
    for (int p = 0; p < kp; p++) {
        const int has1 = 2 * p + 1 < kc;
        const size_t row0 = (size_t)(k0 + 2 * p) * ld + l0, row1 = row0 + ld;
        const int ahead = 2 * p + 5 < kc;  // rows k + 4 and k + 5: two pairs ahead
        for (int l = 0; l < nlanes; l += 16) {
            const __mmask16 m = mask16(nlanes - l);
            __m512i v;
            if (ahead && (l * es) % 64 == 0) {  // once per 64-byte line of each row
                const char *q = (const char *)src + (row0 + (size_t)4 * ld + l) * es;
                HG_PREFETCH(q);
                HG_PREFETCH(q + (size_t)ld * es);
            }
            if (bf16) {
                const uint16_t *s = src;
                __m512i a = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + row0 + l));
                __m512i b = has1 ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + row1 + l)), 16)
                                 : _mm512_setzero_si512();
                v = _mm512_or_si512(a, b);
            } else {
                const float *s = src;
                v = hg_bf16_pairs16(_mm512_maskz_loadu_ps(m, s + row0 + l),
                                    has1 ? _mm512_maskz_loadu_ps(m, s + row1 + l) : _mm512_setzero_ps());
            }
            store16(o, l, p, v);
        }
    }
}

// Packs op(X)[lanes l0..l0+nlanes, k0..k0+kc] where lanes are rows of op(A) (isA) or columns of op(B).
HG_AVX512 static void pack(const void *src, int bf16, int ld, int trans, int isA, int l0, int nlanes, int k0,
                           int kc, uint32_t *dst) {
    hg_pack_out o = {dst, isA ? MR : NR, (kc + 1) / 2, nlanes};
    // op(A) row-major M×K: A not transposed has k contiguous; op(B) K×N: B transposed has k contiguous.
    if (isA ? !trans : trans) pack_k_contiguous(src, bf16, ld, l0, nlanes, k0, kc, &o);
    else pack_lane_contiguous(src, bf16, ld, l0, nlanes, k0, kc, &o);
}

// MARK: - Micro-kernel

enum { C_STORE = 0, C_ADD = 1, C_AXPBY = 2 };  // C = alpha·acc | C += alpha·acc | C = alpha·acc + beta·C

HG_AVX512 HG_INLINE void ukernel(const int mr, const int nv, int kp, const uint32_t *restrict ap,
                                 const uint32_t *restrict bp, float *restrict c, size_t ldc, int ncols, float alpha,
                                 float beta, int mode) {
    __m512 acc[MR][NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    const int w = 16 * nv;
#ifdef __clang__
#pragma unroll 2
#endif
    for (int p = 0; p < kp; p++) {
        __m512i b[NV];
        for (int v = 0; v < nv; v++) b[v] = _mm512_loadu_si512(bp + (size_t)p * w + 16 * v);
        for (int r = 0; r < mr; r++) {
            __m512i a = _mm512_set1_epi32((int)ap[(size_t)p * MR + r]);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], HG_AS_BH(a), HG_AS_BH(b[v]));
        }
    }
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < mr; r++) {
        float *cr = c + (size_t)r * ldc;
        for (int v = 0; v < nv; v++) {
            const __mmask16 m = v < nv - 1 ? (__mmask16)0xffff : mask16(ncols - 16 * v);
            __m512 x = _mm512_mul_ps(acc[r][v], va);
            if (mode == C_ADD) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, cr + 16 * v));
            else if (mode == C_AXPBY) x = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, cr + 16 * v), x);
            _mm512_mask_storeu_ps(cr + 16 * v, m, x);
        }
    }
}

typedef void (*hg_ukernel_fn)(int, const uint32_t *, const uint32_t *, float *, size_t, int, float, float, int);

#define HG_UK(R, V)                                                                                                 \
    HG_AVX512 static void uk_##R##_##V(int kp, const uint32_t *ap, const uint32_t *bp, float *c, size_t ldc,        \
                                       int ncols, float alpha, float beta, int mode) {                               \
        ukernel(R, V, kp, ap, bp, c, ldc, ncols, alpha, beta, mode);                                                 \
    }
#define HG_UK_ROW(R) HG_UK(R, 1) HG_UK(R, 2) HG_UK(R, 3)
HG_UK_ROW(1) HG_UK_ROW(2) HG_UK_ROW(3) HG_UK_ROW(4) HG_UK_ROW(5) HG_UK_ROW(6) HG_UK_ROW(7) HG_UK_ROW(8)
#define HG_UK_PTRS(R) {uk_##R##_1, uk_##R##_2, uk_##R##_3}
static const hg_ukernel_fn ukernels[MR][NV] = {HG_UK_PTRS(1), HG_UK_PTRS(2), HG_UK_PTRS(3), HG_UK_PTRS(4),
                                               HG_UK_PTRS(5), HG_UK_PTRS(6), HG_UK_PTRS(7), HG_UK_PTRS(8)};

// MARK: - Driver

typedef struct {
    const hg_gemm_args *g;
    int splitM;   // 1: threads split rows, 0: columns
    int units;    // panels along the split dimension
    int threads;
} hg_plan;

// C[m0:m1, n0:n1] on one thread.
HG_AVX512 static void gemm_block(const hg_gemm_args *g, int m0, int m1, int n0, int n1) {
    const int K = g->K;
    const int nkb = (K + KC - 1) / KC;
    const int kcb = ((K + nkb - 1) / nkb + 1) & ~1;  // balanced, even
    uint32_t *Ap = hg_scratch_acquire((size_t)MC * (KC / 2) * 4);
    uint32_t *Bp = hg_scratch_acquire((size_t)NC * (KC / 2) * 4);
    for (int jc = n0; jc < n1; jc += NC) {
        const int nc = n1 - jc < NC ? n1 - jc : NC;
        for (int pc = 0; pc < K; pc += kcb) {
            const int kc = K - pc < kcb ? K - pc : kcb, kp = (kc + 1) / 2;
            const int mode = pc > 0 ? C_ADD : g->beta == 0 ? C_STORE : g->beta == 1 ? C_ADD : C_AXPBY;
            pack(g->B, g->bBF16, g->ldb, g->transB, 0, jc, nc, pc, kc, Bp);
            for (int ic = m0; ic < m1; ic += MC) {
                const int mc = m1 - ic < MC ? m1 - ic : MC;
                pack(g->A, g->aBF16, g->lda, g->transA, 1, ic, mc, pc, kc, Ap);
                for (int jr = 0; jr < nc; jr += NR) {
                    const int ncols = nc - jr < NR ? nc - jr : NR, nv = (ncols + 15) / 16;
                    const uint32_t *bp = Bp + (size_t)(jr / NR) * kp * NR;
                    for (int ir = 0; ir < mc; ir += MR) {
                        const int mr = mc - ir < MR ? mc - ir : MR;
                        float *c = g->C + (size_t)(ic + ir) * g->ldc + jc + jr;
                        ukernels[mr - 1][nv - 1](kp, Ap + (size_t)(ir / MR) * kp * MR, bp, c, (size_t)g->ldc, ncols,
                                                 g->alpha, g->beta, mode);
                    }
                }
            }
        }
    }
    hg_scratch_release(Ap);
    hg_scratch_release(Bp);
}

static void gemm_thread(void *ctx, int t) {
    const hg_plan *pl = ctx;
    const hg_gemm_args *g = pl->g;
    const int u0 = (int)((long)pl->units * t / pl->threads), u1 = (int)((long)pl->units * (t + 1) / pl->threads);
    if (u0 >= u1) return;
    if (pl->splitM) {
        int m0 = u0 * MR, m1 = u1 * MR < g->M ? u1 * MR : g->M;
        gemm_block(g, m0, m1, 0, g->N);
    } else {
        int n0 = u0 * NR, n1 = u1 * NR < g->N ? u1 * NR : g->N;
        gemm_block(g, 0, g->M, n0, n1);
    }
}

void HG_NAME(hg_gemm_avx512bf16)(const hg_gemm_args *g) {
    const int mp = (g->M + MR - 1) / MR, np = (g->N + NR - 1) / NR;
    hg_plan pl = {g, mp >= np, mp >= np ? mp : np, g->threads};
    const double flops = 2.0 * g->M * g->N * g->K;
    if (flops < 4e6) pl.threads = 1;  // thread start-up (~20 µs) would cost more than it saves
    if (pl.threads > pl.units) pl.threads = pl.units;
    if (pl.threads < 1) pl.threads = 1;
    if (pl.threads == 1) gemm_thread(&pl, 0);
    else hg_parallel(pl.threads, gemm_thread, &pl);
}

// MARK: - Conversions (AVX-512F/BW/VL only)

void HG_NAME(hg_avx512_f32_to_bf16)(const float *s, uint16_t *d, size_t n);
void HG_NAME(hg_avx512_bf16_to_f32)(const uint16_t *s, float *d, size_t n);
void HG_NAME(hg_avx512_f32_round_bf16)(const float *s, float *d, size_t n);

HG_AVX512 HG_INLINE __mmask16 tail16(size_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

HG_AVX512 void HG_NAME(hg_avx512_f32_to_bf16)(const float *s, uint16_t *d, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        _mm256_mask_storeu_epi16(d + i, m, hg_bf16x16(_mm512_maskz_loadu_ps(m, s + i)));
    }
}
HG_AVX512 void HG_NAME(hg_avx512_bf16_to_f32)(const uint16_t *s, float *d, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        __m512i v = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + i)), 16);
        _mm512_mask_storeu_epi32(d + i, m, v);
    }
}
HG_AVX512 void HG_NAME(hg_avx512_f32_round_bf16)(const float *s, float *d, size_t n) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        _mm512_mask_storeu_epi32(d + i, m, _mm512_and_si512(hg_rne_hi(_mm512_maskz_loadu_ps(m, s + i)), hi));
    }
}
