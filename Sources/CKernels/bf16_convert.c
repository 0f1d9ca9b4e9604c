// fp32 <-> bf16 buffer conversions: round to nearest, ties to even, NaN -> 0xFFFF (bit-identical to PyTorch's CPU
// `.to(torch.bfloat16)`), subnormals kept. Integer arithmetic only (not VCVTNEPS2BF16, which flushes subnormals),
// so every path gives the same bits. Scalar and AVX2 versions here, the AVX-512 one in avx512_bf16.c; the path
// (hg_kernels_path, sbgemm.c) chooses.
#include "internal.h"
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))

static void f2b_scalar(const float *s, uint16_t *d, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = hg_f2b(s[i]);
}
static void b2f_scalar(const uint16_t *s, float *d, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = hg_b2f(s[i]);
}
static void rnd_scalar(const float *s, float *d, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = hg_b2f(hg_f2b(s[i]));
}

// Rounded bits of 8 floats: bf16 in the upper half of each 32-bit lane (lower half is garbage); NaN -> all ones.
AVX2 static inline __m256i rne8(__m256 x) {
    __m256i u = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    return _mm256_or_si256(r, nan);
}

AVX2 static void f2b_avx2(const float *s, uint16_t *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = _mm256_srli_epi32(rne8(_mm256_loadu_ps(s + i)), 16);
        __m256i b = _mm256_srli_epi32(rne8(_mm256_loadu_ps(s + i + 8)), 16);
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
        _mm256_storeu_si256((__m256i *)(d + i), p);
    }
    f2b_scalar(s + i, d + i, n - i);
}
AVX2 static void b2f_avx2(const uint16_t *s, float *d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
        _mm256_storeu_si256((__m256i *)(d + i), _mm256_slli_epi32(v, 16));
    }
    b2f_scalar(s + i, d + i, n - i);
}
AVX2 static void rnd_avx2(const float *s, float *d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i r = _mm256_and_si256(rne8(_mm256_loadu_ps(s + i)), _mm256_set1_epi32((int)0xffff0000u));
        _mm256_storeu_si256((__m256i *)(d + i), r);
    }
    rnd_scalar(s + i, d + i, n - i);
}

void hg_f32_to_bf16(const float *src, uint16_t *dst, size_t n) {
    switch (hg_kernels_path()) {
    case HG_PATH_AVX512: hg_avx512_f32_to_bf16(src, dst, n); break;
    case HG_PATH_EMULATED: hg_avx512_f32_to_bf16_emu(src, dst, n); break;
    case HG_PATH_AVX2: f2b_avx2(src, dst, n); break;
    default: f2b_scalar(src, dst, n);
    }
}
void hg_bf16_to_f32(const uint16_t *src, float *dst, size_t n) {
    switch (hg_kernels_path()) {
    case HG_PATH_AVX512: hg_avx512_bf16_to_f32(src, dst, n); break;
    case HG_PATH_EMULATED: hg_avx512_bf16_to_f32_emu(src, dst, n); break;
    case HG_PATH_AVX2: b2f_avx2(src, dst, n); break;
    default: b2f_scalar(src, dst, n);
    }
}
void hg_f32_round_bf16(const float *src, float *dst, size_t n) {
    switch (hg_kernels_path()) {
    case HG_PATH_AVX512: hg_avx512_f32_round_bf16(src, dst, n); break;
    case HG_PATH_EMULATED: hg_avx512_f32_round_bf16_emu(src, dst, n); break;
    case HG_PATH_AVX2: rnd_avx2(src, dst, n); break;
    default: rnd_scalar(src, dst, n);
    }
}
