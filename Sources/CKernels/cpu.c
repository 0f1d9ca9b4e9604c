#include "ckernels.h"
int hg_cpu_has_avx512bf16(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx512bf16"); }
int hg_cpu_has_avx512f(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx512f"); }
// The Swift modules are compiled for x86-64 with AVX2 and FMA (Package.swift: -target-cpu haswell).
int hg_cpu_has_avx2_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
}

#include <malloc.h>
// See Tensors/Memory.swift: glibc's mmap threshold pinned at its maximum (32 MiB), the heap never trimmed.
void hg_keep_freed_memory(void) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 0x7fffffff);
    mallopt(M_TOP_PAD, 64 << 20);
}
