// The attention kernels of attention_avx512.c compiled a second time with VDPBF16PS products (AVX512-BF16): every
// product's operands rounded to bf16, fp32 sums (hg_attention_*_avx512bf16; see the top of attention_avx512.c).
#define HG_ATTENTION_BF16 1
#include "attention_avx512.c"
