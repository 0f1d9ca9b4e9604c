// Benchmark of the bf16 GEMMs against OpenBLAS sgemm on SD1.5 U-Net shapes: the linear layers of the sd15@32 step
// (batch 2: 2048, 512 and 128 tokens at the three attention levels; forward and input gradient) and two im2col
// convolutions. Not part of the library:
// everything below is compiled only with -DHG_BENCH_MAIN. Build and run from the repository root:
//   clang -O3 -DHG_BENCH_MAIN -ISources/CKernels/include Sources/CKernels/*.c -lopenblas -lpthread -lm -o /tmp/bf16bench
//   /tmp/bf16bench [reps]          (HGDPO_BF16_PATH=avx512|avx2|generic chooses the path; threads: HGDPO_THREADS,
//                                   OPENBLAS_NUM_THREADS; OPENBLAS_CORETYPE=SkylakeX only on CPUs with AVX-512)
#ifdef HG_BENCH_MAIN
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "ckernels.h"

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
    const int reps = argc > 1 ? atoi(argv[1]) : 15;
    const char *names[] = {"?", "generic", "avx2", "avx512", "emulated"};
    printf("bf16 path %s, bf16 threads %d | OpenBLAS %s, %d threads | best (median) GFLOP/s over %d runs\n",
           names[hg_kernels_path()], hg_kernels_get_threads(), openblas_get_corename(), openblas_get_num_threads(), reps);
    // linear: out[M,N] = x[M,K] · W[N,K]ᵀ (x fp32, W bf16); input gradient: dx[M,N] = dy[M,K] · W[K,N] (W as
    // stored: out × in); conv: C[M,N] = W[M,K] · col[K,N] (W bf16, col fp32)
    enum { LINEAR, INPUT_GRAD, CONV };
    struct { const char *name; int kind, M, N, K; } shapes[] = {
        {"32x32 q/k/v/out 2048x320 <- 320", LINEAR, 2048, 320, 320},
        {"32x32 q/k/v/out dx 2048x320 <- 320", INPUT_GRAD, 2048, 320, 320},
        {"32x32 GEGLU in 2048x2560 <- 320", LINEAR, 2048, 2560, 320},
        {"32x32 GEGLU out 2048x320 <- 1280", LINEAR, 2048, 320, 1280},
        {"32x32 GEGLU in dx 2048x320 <- 2560", INPUT_GRAD, 2048, 320, 2560},
        {"16x16 q/k/v/out 512x640 <- 640", LINEAR, 512, 640, 640},
        {"16x16 GEGLU in 512x5120 <- 640", LINEAR, 512, 5120, 640},
        {"16x16 GEGLU out 512x640 <- 2560", LINEAR, 512, 640, 2560},
        {"8x8 q/k/v/out 128x1280 <- 1280", LINEAR, 128, 1280, 1280},
        {"8x8 GEGLU in 128x10240 <- 1280", LINEAR, 128, 10240, 1280},
        {"8x8 GEGLU out 128x1280 <- 5120", LINEAR, 128, 1280, 5120},
        {"conv Cout320 HW4096 K2880", CONV, 320, 4096, 2880},
        {"conv Cout1280 HW64 K11520", CONV, 1280, 64, 11520},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int M = shapes[s].M, N = shapes[s].N, K = shapes[s].K, conv = shapes[s].kind == CONV;
        // x · W: W (N, K) read transposed, or (the input gradient) W (K, N) as it stands.
        const int wt = shapes[s].kind == LINEAR, ldw = wt ? K : N;
        const size_t wn = conv ? (size_t)M * K : (size_t)N * K, xn = conv ? (size_t)K * N : (size_t)M * K;
        float *w = malloc(wn * 4), *x = malloc(xn * 4), *c = malloc((size_t)M * N * 4), *ref = malloc((size_t)M * N * 4);
        uint16_t *wb = malloc(wn * 2), *xb = malloc(xn * 2);
        srand(1);
        for (size_t i = 0; i < wn; i++) w[i] = rand() / (float)RAND_MAX - 0.5f;
        for (size_t i = 0; i < xn; i++) x[i] = rand() / (float)RAND_MAX - 0.5f;
        hg_f32_to_bf16(w, wb, wn);
        hg_f32_to_bf16(x, xb, xn);
        hg_f32_round_bf16(w, w, wn);  // sgemm on the same (bf16-valued) weights
        double *t[3];
        for (int v = 0; v < 3; v++) t[v] = malloc(sizeof(double) * reps);
        double maxdiff = 0, refsq = 0;
        for (int r = -1; r < reps; r++) {  // r == -1: warm-up
            for (int v = 0; v < 3; v++) {
                double t0 = now();
                if (v == 0) {
                    if (conv) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, w, K, x, N, 0, ref, N);
                    else cblas_sgemm(CblasRowMajor, CblasNoTrans, wt ? CblasTrans : CblasNoTrans, M, N, K, 1, x, K, w, ldw,
                                     0, ref, N);
                } else if (v == 1) {
                    if (conv) hg_gemm_bf16w_f32(0, 0, M, N, K, 1, wb, K, x, N, 0, c, N);
                    else hg_gemm_f32_bf16w(0, wt, M, N, K, 1, x, K, wb, ldw, 0, c, N);
                } else {
                    if (conv) hg_sbgemm(0, 0, M, N, K, 1, wb, K, xb, N, 0, c, N);
                    else hg_sbgemm(0, wt, M, N, K, 1, xb, K, wb, ldw, 0, c, N);
                }
                double dt = now() - t0;
                if (r >= 0) t[v][r] = dt;
                if (v == 1 && r == -1)
                    for (size_t i = 0; i < (size_t)M * N; i++) {
                        if (fabs(c[i] - ref[i]) > maxdiff) maxdiff = fabs(c[i] - ref[i]);
                        refsq += (double)ref[i] * ref[i];
                    }
            }
        }
        const double gf = 2.0 * M * N * K / 1e9;
        for (int v = 0; v < 3; v++) qsort(t[v], reps, sizeof(double), cmp);
        printf("%-36s sgemm %6.1f (%6.1f) | mixed %6.1f (%6.1f) = %.2fx | sbgemm %6.1f (%6.1f) = %.2fx | max|mixed-sgemm|/rms %.1e\n",
               shapes[s].name, gf / t[0][0], gf / t[0][reps / 2], gf / t[1][0], gf / t[1][reps / 2], t[0][0] / t[1][0],
               gf / t[2][0], gf / t[2][reps / 2], t[0][0] / t[2][0], maxdiff / sqrt(refsq / ((double)M * N)));
        for (int v = 0; v < 3; v++) free(t[v]);
        free(w); free(x); free(c); free(ref); free(wb); free(xb);
    }
    return 0;
}
#endif
