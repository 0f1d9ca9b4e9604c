// Softmax row kernels for the attention (Layers/Attention.swift) on CPUs with AVX-512F: 16 lanes where the Swift code
// (compiled for AVX2) has 8. Same arithmetic as Attention.swift's `fastExp` (Cody–Waite reduction with ln 2 split in
// two, Cephes' expf polynomial, 2^n built in the exponent bits, 0 below −87.3), so the results agree to rounding.
// Callers check hg_cpu_has_avx512f() first.
#include "ckernels.h"
#include <math.h>

#include "avx512_exp.h"

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
