// Portable C stand-ins for the AVX-512 intrinsics that avx512_bf16.c uses, so that the very same source can be
// compiled a second time (avx512_bf16_emu.c) and tested on CPUs without AVX-512 (path HG_PATH_EMULATED).
// Semantics follow Intel's pseudocode, including VDPBF16PS's denormals-are-zero / flush-to-zero. Slow; tests only.
// Only included by avx512_bf16.c when HG_EMULATE_AVX512 is defined, never together with <immintrin.h>.
#ifndef HGDPO_EMU512_H
#define HGDPO_EMU512_H
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef union { float f[16]; uint32_t u[16]; uint64_t q[8]; uint16_t w[32]; } hg_v512;
typedef union { uint32_t u[8]; uint16_t w[16]; } hg_v256;
typedef hg_v512 __m512;
typedef hg_v512 __m512i;
typedef hg_v512 __m512bh;
typedef hg_v256 __m256i;
typedef uint16_t __mmask16;
typedef uint32_t __mmask32;
#define HG_EMU static inline
#define _CMP_UNORD_Q 3

HG_EMU hg_v512 hg_v512_zero(void) { hg_v512 r; memset(&r, 0, sizeof r); return r; }
HG_EMU __m512 _mm512_setzero_ps(void) { return hg_v512_zero(); }
HG_EMU __m512i _mm512_setzero_si512(void) { return hg_v512_zero(); }
HG_EMU __m512i _mm512_set1_epi32(int x) { hg_v512 r; for (int i = 0; i < 16; i++) r.u[i] = (uint32_t)x; return r; }
HG_EMU __m512 _mm512_set1_ps(float x) { hg_v512 r; for (int i = 0; i < 16; i++) r.f[i] = x; return r; }
HG_EMU __m512i _mm512_castps_si512(__m512 a) { return a; }
HG_EMU __m256i _mm512_castsi512_si256(__m512i a) { hg_v256 r; memcpy(&r, &a, 32); return r; }
HG_EMU __m512i _mm512_castsi256_si512(__m256i a) { hg_v512 r = hg_v512_zero(); memcpy(&r, &a, 32); return r; }
HG_EMU __m256i _mm512_extracti64x4_epi64(__m512i a, int i) { hg_v256 r; memcpy(&r, &a.u[8 * (i & 1)], 32); return r; }
HG_EMU __m512i _mm512_inserti64x4(__m512i a, __m256i b, int i) { memcpy(&a.u[8 * (i & 1)], &b, 32); return a; }

#define HG_EMU_MAP2(name, T, expr) \
    HG_EMU hg_v512 name(hg_v512 a, hg_v512 b) { hg_v512 r; for (int i = 0; i < 16; i++) r.T[i] = (expr); return r; }
HG_EMU_MAP2(_mm512_and_si512, u, a.u[i] & b.u[i])
HG_EMU_MAP2(_mm512_or_si512, u, a.u[i] | b.u[i])
HG_EMU_MAP2(_mm512_add_epi32, u, a.u[i] + b.u[i])
HG_EMU_MAP2(_mm512_add_ps, f, a.f[i] + b.f[i])
HG_EMU_MAP2(_mm512_mul_ps, f, a.f[i] * b.f[i])
HG_EMU __m512 _mm512_fmadd_ps(__m512 a, __m512 b, __m512 c) {
    hg_v512 r; for (int i = 0; i < 16; i++) r.f[i] = fmaf(a.f[i], b.f[i], c.f[i]); return r;
}
HG_EMU __m512i _mm512_srli_epi32(__m512i a, unsigned n) {
    hg_v512 r; for (int i = 0; i < 16; i++) r.u[i] = n > 31 ? 0 : a.u[i] >> n; return r;
}
HG_EMU __m512i _mm512_slli_epi32(__m512i a, unsigned n) {
    hg_v512 r; for (int i = 0; i < 16; i++) r.u[i] = n > 31 ? 0 : a.u[i] << n; return r;
}
HG_EMU __mmask16 _mm512_cmp_ps_mask(__m512 a, __m512 b, int pred) {  // only _CMP_UNORD_Q is used
    (void)pred; __mmask16 m = 0;
    for (int i = 0; i < 16; i++) if (isnan(a.f[i]) || isnan(b.f[i])) m |= (__mmask16)(1u << i);
    return m;
}
HG_EMU __m512i _mm512_mask_mov_epi32(__m512i src, __mmask16 k, __m512i a) {
    for (int i = 0; i < 16; i++) if (k >> i & 1) src.u[i] = a.u[i];
    return src;
}
HG_EMU __m256i _mm512_cvtepi32_epi16(__m512i a) { hg_v256 r; for (int i = 0; i < 16; i++) r.w[i] = (uint16_t)a.u[i]; return r; }
HG_EMU __m512i _mm512_cvtepu16_epi32(__m256i a) { hg_v512 r; for (int i = 0; i < 16; i++) r.u[i] = a.w[i]; return r; }

// Loads and stores (masked ones touch only the selected elements, as the hardware's fault suppression allows).
HG_EMU __m512 _mm512_loadu_ps(const void *p) { hg_v512 r; memcpy(&r, p, 64); return r; }
HG_EMU __m512i _mm512_loadu_si512(const void *p) { hg_v512 r; memcpy(&r, p, 64); return r; }
HG_EMU __m256i _mm256_loadu_si256(const void *p) { hg_v256 r; memcpy(&r, p, 32); return r; }
HG_EMU void _mm512_storeu_si512(void *p, __m512i a) { memcpy(p, &a, 64); }
HG_EMU void _mm256_storeu_si256(void *p, __m256i a) { memcpy(p, &a, 32); }
HG_EMU __m512 _mm512_maskz_loadu_ps(__mmask16 k, const void *p) {
    hg_v512 r = hg_v512_zero(); for (int i = 0; i < 16; i++) if (k >> i & 1) memcpy(&r.u[i], (const char *)p + 4 * i, 4);
    return r;
}
HG_EMU __m512 _mm512_mask_loadu_ps(__m512 src, __mmask16 k, const void *p) {
    for (int i = 0; i < 16; i++) if (k >> i & 1) memcpy(&src.u[i], (const char *)p + 4 * i, 4);
    return src;
}
HG_EMU __m512i _mm512_maskz_loadu_epi16(__mmask32 k, const void *p) {
    hg_v512 r = hg_v512_zero(); for (int i = 0; i < 32; i++) if (k >> i & 1) memcpy(&r.w[i], (const char *)p + 2 * i, 2);
    return r;
}
HG_EMU __m256i _mm256_maskz_loadu_epi16(__mmask16 k, const void *p) {
    hg_v256 r; memset(&r, 0, 32); for (int i = 0; i < 16; i++) if (k >> i & 1) memcpy(&r.w[i], (const char *)p + 2 * i, 2);
    return r;
}
HG_EMU void _mm512_mask_storeu_ps(void *p, __mmask16 k, __m512 a) {
    for (int i = 0; i < 16; i++) if (k >> i & 1) memcpy((char *)p + 4 * i, &a.u[i], 4);
}
HG_EMU void _mm512_mask_storeu_epi32(void *p, __mmask16 k, __m512i a) { _mm512_mask_storeu_ps(p, k, a); }
HG_EMU void _mm256_mask_storeu_epi16(void *p, __mmask16 k, __m256i a) {
    for (int i = 0; i < 16; i++) if (k >> i & 1) memcpy((char *)p + 2 * i, &a.w[i], 2);
}

// Shuffles (per 128-bit lane for unpack; whole 128-bit lanes for shuffle_i32x4).
HG_EMU __m512i _mm512_unpacklo_epi32(__m512i a, __m512i b) {
    hg_v512 r; for (int l = 0; l < 4; l++) { const int o = 4 * l;
        r.u[o] = a.u[o]; r.u[o + 1] = b.u[o]; r.u[o + 2] = a.u[o + 1]; r.u[o + 3] = b.u[o + 1]; }
    return r;
}
HG_EMU __m512i _mm512_unpackhi_epi32(__m512i a, __m512i b) {
    hg_v512 r; for (int l = 0; l < 4; l++) { const int o = 4 * l;
        r.u[o] = a.u[o + 2]; r.u[o + 1] = b.u[o + 2]; r.u[o + 2] = a.u[o + 3]; r.u[o + 3] = b.u[o + 3]; }
    return r;
}
HG_EMU __m512i _mm512_unpacklo_epi64(__m512i a, __m512i b) {
    hg_v512 r; for (int l = 0; l < 4; l++) { r.q[2 * l] = a.q[2 * l]; r.q[2 * l + 1] = b.q[2 * l]; }
    return r;
}
HG_EMU __m512i _mm512_unpackhi_epi64(__m512i a, __m512i b) {
    hg_v512 r; for (int l = 0; l < 4; l++) { r.q[2 * l] = a.q[2 * l + 1]; r.q[2 * l + 1] = b.q[2 * l + 1]; }
    return r;
}
HG_EMU __m512i _mm512_shuffle_i32x4(__m512i a, __m512i b, int imm) {
    hg_v512 r;
    for (int l = 0; l < 4; l++) {
        const hg_v512 *s = l < 2 ? &a : &b;
        memcpy(&r.u[4 * l], &s->u[4 * ((imm >> (2 * l)) & 3)], 16);
    }
    return r;
}

// VDPBF16PS: acc[i] += a.bf16[2i+1]·b.bf16[2i+1], then += a.bf16[2i]·b.bf16[2i]; DAZ, FTZ, round to nearest even.
HG_EMU float hg_emu_daz(float x) { return fpclassify(x) == FP_SUBNORMAL ? copysignf(0.0f, x) : x; }
HG_EMU float hg_emu_bf(uint16_t w) { uint32_t u = (uint32_t)w << 16; float f; memcpy(&f, &u, 4); return hg_emu_daz(f); }
HG_EMU __m512 _mm512_dpbf16_ps(__m512 acc, __m512bh a, __m512bh b) {
    for (int i = 0; i < 16; i++) {
        float s = hg_emu_daz(acc.f[i]);
        s = hg_emu_daz(fmaf(hg_emu_bf(a.w[2 * i + 1]), hg_emu_bf(b.w[2 * i + 1]), s));
        s = hg_emu_daz(fmaf(hg_emu_bf(a.w[2 * i]), hg_emu_bf(b.w[2 * i]), s));
        acc.f[i] = s;
    }
    return acc;
}
#define HG_AS_BH(x) (x)
#endif
