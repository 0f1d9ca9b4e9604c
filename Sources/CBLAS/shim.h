// OpenBLAS's cblas (Debian: libopenblas-dev; also declares openblas_set_num_threads and friends).
// cblas_sbgemm is declared by the header but Debian's 0.3.21 build does not export it: Tensors looks it up at
// run time with dlsym and falls back when it is absent.
#ifndef HGDPO_CBLAS_SHIM_H
#define HGDPO_CBLAS_SHIM_H
#include <cblas.h>
#endif
