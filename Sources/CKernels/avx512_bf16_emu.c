// The AVX512-BF16 path compiled once more against emu512.h (portable C, any CPU): path HG_PATH_EMULATED, so the
// packing, micro-kernels, edge handling and threading of avx512_bf16.c are tested on CPUs without AVX-512 (CI).
#define HG_EMULATE_AVX512 1
#include "avx512_bf16.c"
