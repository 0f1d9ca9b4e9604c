#ifndef HGDPO_CKERNELS_H
#define HGDPO_CKERNELS_H
int hg_cpu_has_avx512bf16(void);
#endif
