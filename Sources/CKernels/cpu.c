#include "ckernels.h"
int hg_cpu_has_avx512bf16(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx512bf16"); }
