// sgemm_peak.c — OpenBLAS sgemm throughput on this machine: the yardstick for MFU in BENCHMARKS.md.
// Build and run (threads from OPENBLAS_NUM_THREADS; OPENBLAS_CORETYPE=SkylakeX only on CPUs with avx512f):
//   gcc -O2 bench/sgemm_peak.c -o /tmp/sgemm_peak -lopenblas && OPENBLAS_NUM_THREADS=2 /tmp/sgemm_peak [N [REPS]]
// Prints the best and median GFLOPS of C = A·B for N×N×N (default 4096) over REPS runs (default 10).
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const int n = argc > 1 ? atoi(argv[1]) : 4096, reps = argc > 2 ? atoi(argv[2]) : 10;
    if (n <= 0 || reps <= 0) { fprintf(stderr, "usage: sgemm_peak [N > 0 [REPS > 0]]\n"); return 2; }
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) { fprintf(stderr, "sgemm_peak: out of memory for N = %d\n", n); return 1; }
    for (long i = 0; i < (long)n * n; i++) { a[i] = (float)rand() / RAND_MAX - 0.5f; b[i] = (float)rand() / RAND_MAX - 0.5f; }
    double *t = malloc(sizeof(double) * reps);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);   // warm-up
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        t[r] = now() - t0;
    }
    qsort(t, reps, sizeof(double), cmp);
    const double flop = 2.0 * n * n * n;
    printf("{\"n\":%d,\"threads\":%d,\"core\":\"%s\",\"best_gflops\":%.1f,\"median_gflops\":%.1f}\n", n,
           openblas_get_num_threads(), openblas_get_corename(), flop / t[0] / 1e9, flop / t[reps / 2] / 1e9);
    return 0;
}
