// Softmax row kernels for the attention (Layers/Attention.swift) on CPUs with AVX-512F: 16 lanes where the Swift code
// (compiled for AVX2) has 8. Same arithmetic as Attention.swift's `fastExp` (Cody–Waite reduction with ln 2 split in
// two, Cephes' expf polynomial, 2^n built in the exponent bits, 0 below −87.3), so the results agree to rounding.
// Callers check hg_cpu_has_avx512f() first.
#include "ckernels.h"
#include <immintrin.h>
#include <math.h>

#define HG_AVX512F __attribute__((target("avx512f")))

HG_AVX512F static inline __m512 exp16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.33654f), hi = _mm512_set1_ps(88.0f);
    const __m512 xc = _mm512_min_ps(hi, _mm512_max_ps(lo, x));   // NaN stays NaN (max/min return the 2nd operand)
    const __m512 shifter = _mm512_set1_ps(12582912.0f);
    const __m512 t = _mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504f), shifter);
    const __m512 n = _mm512_sub_ps(t, shifter);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    const __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, z, r), _mm512_set1_ps(1.0f));
    const __m512i ni = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B400000));
    const __m512 pow2n = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23));
    const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~under, p, pow2n);
}

HG_AVX512F float hg_row_max_avx512(const float *x, int n) {
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
    int j = 0;
    for (; j + 32 <= n; j += 32) {
        m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
        m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + j + 16));
    }
    for (; j + 16 <= n; j += 16) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
    if (j < n) m1 = _mm512_max_ps(m1, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), (__mmask16)((1u << (n - j)) - 1), x + j));
    return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

HG_AVX512F float hg_row_exp_sum_avx512(float *x, int n, float shift) {
    const __m512 s = _mm512_set1_ps(shift);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int j = 0;
    for (; j + 32 <= n; j += 32) {
        const __m512 e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), s));
        const __m512 e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), s));
        _mm512_storeu_ps(x + j, e0);
        _mm512_storeu_ps(x + j + 16, e1);
        a0 = _mm512_add_ps(a0, e0);
        a1 = _mm512_add_ps(a1, e1);
    }
    for (; j < n; j += 16) {
        const __mmask16 k = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), s));
        _mm512_mask_storeu_ps(x + j, k, e);
        a0 = _mm512_add_ps(a0, _mm512_maskz_mov_ps(k, e));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
