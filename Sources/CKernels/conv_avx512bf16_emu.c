// The AVX512-BF16 convolution compiled once more against emu512.h (portable C, any CPU), so that its panel packing,
// pair order, edge masks and tiles are tested on CPUs without AVX512-BF16 (hg_conv_s1_avx512bf16_emu; tests only).
#define HG_EMULATE_AVX512 1
#include "conv_avx512bf16.c"
