// vector_peak.c — the register-only peak of this machine's multiply-add instructions, on T threads: the ceiling a
// kernel's GFLOPS are measured against (BENCHMARKS.md; bench/compare.sh prints the bf16 step's share of it).
// Build and run:
//   gcc -O2 bench/vector_peak.c -o /tmp/vector_peak -lpthread && /tmp/vector_peak [THREADS [SECONDS]]
// Each thread runs independent accumulators (enough to cover any current core's latency × throughput) through
//   fma     VFMADD231PS zmm, 24 accumulators (CPUs with AVX-512F), or ymm, 14 (AVX2 + FMA only, or
//           VECTOR_PEAK_ISA=avx2 on any CPU): 2 FLOP per fp32 lane
//   bf16    VDPBF16PS zmm, 24 accumulators (CPUs with AVX512-BF16): 2 products summed into each fp32 lane, 4 FLOP
// three times for about SECONDS (default 1) each, and prints one JSON line: the instruction used and its best GFLOPS
// over all threads (bf16_gflops is null without AVX512-BF16). No memory is touched, so this is the arithmetic
// ceiling; sgemm_peak.c is what a real GEMM reaches (on Zen 4: sgemm ~91 % of the zmm FMA peak). The asm names its
// registers; `run` holds no vector values of the compiler's across it.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define R24(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11) \
                op(12) op(13) op(14) op(15) op(16) op(17) op(18) op(19) op(20) op(21) op(22) op(23)
#define ZFMA(i) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define YFMA(i) "vfmadd231ps %%ymm14, %%ymm15, %%ymm" #i "\n"
#define ZDP(i) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #i "\n"
enum { ZMM_FMA, YMM_FMA, ZMM_BF16 };

typedef struct { int kind; long iters; } job;

static void *run(void *arg) {
    const job *j = arg;
    // The operands are zeros (every thread has its own registers; zero keeps denormal assists out of it).
    if (j->kind == YMM_FMA) __asm__ volatile("vxorps %%ymm14, %%ymm14, %%ymm14\n vxorps %%ymm15, %%ymm15, %%ymm15" ::: "memory");
    else __asm__ volatile("vpxord %%zmm30, %%zmm30, %%zmm30\n vpxord %%zmm31, %%zmm31, %%zmm31" ::: "memory");
    for (long n = 0; n < j->iters; n++) {
        switch (j->kind) {
        case ZMM_FMA: __asm__ volatile(R24(ZFMA) ::: "memory"); break;
        // ymm: 14 accumulators, all the registers but the two operands (ymm14/15).
        case YMM_FMA:
            __asm__ volatile(YFMA(0) YFMA(1) YFMA(2) YFMA(3) YFMA(4) YFMA(5) YFMA(6) YFMA(7) YFMA(8) YFMA(9) YFMA(10)
                             YFMA(11) YFMA(12) YFMA(13) ::: "memory");
            break;
        default: __asm__ volatile(R24(ZDP) ::: "memory"); break;
        }
    }
    return NULL;
}

// Best GFLOPS of `kind` on `threads` threads over 3 runs of about `seconds` (iterations calibrated on one thread).
static double measure(int kind, int threads, double seconds) {
    const double flopsPerIter = kind == ZMM_FMA ? 24 * 32.0 : kind == YMM_FMA ? 14 * 16.0 : 24 * 64.0;
    job cal = {kind, 1000000};
    double t0 = now();
    run(&cal);
    double dt = now() - t0;
    job j = {kind, (long)(cal.iters * seconds / (dt > 1e-6 ? dt : 1e-6))};
    if (j.iters < 1) j.iters = 1;
    pthread_t *t = malloc(sizeof(pthread_t) * threads);
    double best = 0;
    for (int trial = 0; trial < 3; trial++) {
        t0 = now();
        for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, run, &j);
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
        dt = now() - t0;
        const double g = flopsPerIter * j.iters * threads / dt / 1e9;
        if (g > best) best = g;
    }
    free(t);
    return best;
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 1;
    const double seconds = argc > 2 ? atof(argv[2]) : 1.0;
    if (threads <= 0 || !(seconds > 0)) { fprintf(stderr, "usage: vector_peak [THREADS > 0 [SECONDS > 0]]\n"); return 2; }
    __builtin_cpu_init();
    const char *isa = getenv("VECTOR_PEAK_ISA");  // "avx2": the ymm FMA even where AVX-512 is there (to test it)
    const int avx512 = __builtin_cpu_supports("avx512f") && !(isa && strcmp(isa, "avx2") == 0);
    const int bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
    if (!avx512 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        fprintf(stderr, "vector_peak: this CPU has neither AVX-512F nor AVX2 + FMA\n");
        return 1;
    }
    const double fma = measure(avx512 ? ZMM_FMA : YMM_FMA, threads, seconds);
    printf("{\"threads\":%d,\"fma\":\"%s\",\"fma_gflops\":%.1f,\"bf16_gflops\":", threads,
           avx512 ? "vfmadd231ps zmm" : "vfmadd231ps ymm", fma);
    if (bf16) printf("%.1f}\n", measure(ZMM_BF16, threads, seconds));
    else printf("null}\n");
    return 0;
}
