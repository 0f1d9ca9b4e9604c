// fp32 -> bf16 on 16 lanes, round to nearest even with NaN -> 0xFFFF (as hg_f2b and PyTorch's CPU conversion), for
// the AVX512-BF16 kernels: avx512_bf16.c, conv_avx512bf16.c (and their emulated builds) and the bf16 build of
// attention_avx512.c. The includer includes <immintrin.h> or emu512.h first and defines HG_BF16_ROUND_TARGET as its
// functions' target attribute (empty when emulated).
#ifndef HGDPO_BF16_ROUND_H
#define HGDPO_BF16_ROUND_H

/// The rounded bf16 bits in the upper 16 bits of each lane (NaN -> 0xFFFFxxxx); the lower 16 bits are garbage.
HG_BF16_ROUND_TARGET static inline __attribute__((always_inline)) __m512i hg_rne_hi(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(-1));
}

/// 16 floats as 16 bf16, in order.
HG_BF16_ROUND_TARGET static inline __attribute__((always_inline)) __m256i hg_bf16x16(__m512 x) {
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(hg_rne_hi(x), 16));
}

/// 16 words of bf16 pairs: lane l = bf16(lo[l]) | bf16(hi[l]) << 16.
HG_BF16_ROUND_TARGET static inline __attribute__((always_inline)) __m512i hg_bf16_pairs16(__m512 lo, __m512 hi) {
    return _mm512_or_si512(_mm512_srli_epi32(hg_rne_hi(lo), 16),
                           _mm512_and_si512(hg_rne_hi(hi), _mm512_set1_epi32((int)0xffff0000u)));
}
#endif
