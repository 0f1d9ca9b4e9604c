// exp on 16 floats with AVX-512F, shared by the softmax rows (softmax_rows.c) and the attention kernels
// (attention_avx512.c). Same arithmetic as Layers/Attention.swift's `fastExp`: Cody–Waite reduction with ln 2 split in
// two, Cephes' expf polynomial, 2^n built in the exponent bits, 0 below −87.3, NaN kept.
#ifndef HGDPO_AVX512_EXP_H
#define HGDPO_AVX512_EXP_H
#include <immintrin.h>
#include "internal.h"

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

#endif
