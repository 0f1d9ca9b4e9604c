// bf16 GEMM entry points: argument handling, run-time choice of path, threads, scratch memory, and the fallback
// for CPUs without AVX512-BF16 (widen to fp32 block by block, then OpenBLAS's cblas_sgemm).
#include "internal.h"
#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

// MARK: - Settings

// Both are set by the caller (Swift's RuntimeOptions.install, from the environment read once at start-up); the
// kernels themselves read no environment.
static int g_threads = 0;     // 0: not set, the online CPUs
static int g_path = HG_PATH_AUTO;  // resolved on first use

void hg_kernels_set_threads(int n) { g_threads = n < 1 ? 1 : n; }

int hg_kernels_get_threads(void) {
    if (g_threads <= 0) {
        int n = (int)sysconf(_SC_NPROCESSORS_ONLN);
        g_threads = n < 1 ? 1 : n;
    }
    return g_threads;
}

static int path_supported(int path) {
    __builtin_cpu_init();
    switch (path) {
    case HG_PATH_GENERIC:
    case HG_PATH_EMULATED: return 1;
    case HG_PATH_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case HG_PATH_AVX512:
        return hg_cpu_has_avx512bf16() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    default: return 0;
    }
}

static int default_path(void) {
    if (path_supported(HG_PATH_AVX512)) return HG_PATH_AVX512;
    if (path_supported(HG_PATH_AVX2)) return HG_PATH_AVX2;
    return HG_PATH_GENERIC;
}

int hg_kernels_path(void) {
    int p = __atomic_load_n(&g_path, __ATOMIC_RELAXED);
    if (p == HG_PATH_AUTO) {
        p = default_path();
        __atomic_store_n(&g_path, p, __ATOMIC_RELAXED);
    }
    return p;
}

int hg_kernels_set_path(int path) {
    if (path == HG_PATH_AUTO) __atomic_store_n(&g_path, default_path(), __ATOMIC_RELAXED);
    else if (path_supported(path)) __atomic_store_n(&g_path, path, __ATOMIC_RELAXED);
    return hg_kernels_path();
}

int hg_bf16_gemm_accelerated(void) { return hg_kernels_path() == HG_PATH_AVX512; }

// MARK: - Threads and scratch

// Free list of scratch blocks. A block's size is stored in the 64 bytes before the pointer handed out.
enum { SCRATCH_KEEP = 16 };
static pthread_mutex_t g_scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_scratch[SCRATCH_KEEP];
static int g_nscratch = 0;

void *hg_scratch_acquire(size_t bytes) {
    pthread_mutex_lock(&g_scratch_lock);
    int best = -1;
    for (int i = 0; i < g_nscratch; i++)
        if (*(size_t *)((char *)g_scratch[i] - 64) >= bytes) { best = i; break; }
    void *p = NULL;
    if (best >= 0) {
        p = g_scratch[best];
        g_scratch[best] = g_scratch[--g_nscratch];
    }
    pthread_mutex_unlock(&g_scratch_lock);
    if (p) return p;
    size_t cap = (bytes + 63) & ~(size_t)63;
    char *raw = aligned_alloc(64, cap + 64);
    if (!raw) abort();
    *(size_t *)raw = cap;
    return raw + 64;
}

void hg_scratch_release(void *p) {
    if (!p) return;
    pthread_mutex_lock(&g_scratch_lock);
    if (g_nscratch < SCRATCH_KEEP) {
        g_scratch[g_nscratch++] = p;
        p = NULL;
    } else {  // full: drop the smallest kept block if this one is larger
        int small = 0;
        for (int i = 1; i < g_nscratch; i++)
            if (*(size_t *)((char *)g_scratch[i] - 64) < *(size_t *)((char *)g_scratch[small] - 64)) small = i;
        if (*(size_t *)((char *)g_scratch[small] - 64) < *(size_t *)((char *)p - 64)) {
            void *q = g_scratch[small];
            g_scratch[small] = p;
            p = q;
        }
    }
    pthread_mutex_unlock(&g_scratch_lock);
    if (p) free((char *)p - 64);
}

// MARK: - Fallback: bf16 operands widened to fp32 K-block by K-block, hg_sgemm on each block (rows split over the
// pool of parallel.c). An fp32 operand is passed to sgemm as it is (not rounded to bf16: faster and more accurate here).

// rows × cols block (element (r, c) at src[r*ld + c0 + c], bf16) -> dst (rows × cols, dense) as fp32.
static void widen_block(const uint16_t *src, int ld, int rows, int cols, int c0, float *dst) {
    if (cols == ld && c0 == 0) {
        hg_bf16_to_f32(src, dst, (size_t)rows * cols);
        return;
    }
    for (int r = 0; r < rows; r++) hg_bf16_to_f32(src + (size_t)r * ld + c0, dst + (size_t)r * cols, cols);
}

// The K-block [k0, k0+kk) of one operand, as sgemm wants it: kc-contiguous ("k-major") when the operand stores k
// along rows (A not transposed, B transposed), else rows k0..k0+kk. fp32 operands are only offset.
static const float *operand_block(const void *X, int bf16, int ld, int kAlongRows, int lanes, int k0, int kk,
                                  float *tmp, int *ldOut) {
    if (kAlongRows) {  // element (lane, k) at X[lane*ld + k]
        if (!bf16) { *ldOut = ld; return (const float *)X + k0; }
        widen_block(X, ld, lanes, kk, k0, tmp);
        *ldOut = kk;
    } else {  // element (lane, k) at X[k*ld + lane]
        if (!bf16) { *ldOut = ld; return (const float *)X + (size_t)k0 * ld; }
        widen_block((const uint16_t *)X + (size_t)k0 * ld, ld, kk, lanes, 0, tmp);
        *ldOut = lanes;
    }
    return tmp;
}

static void gemm_fallback(const hg_gemm_args *g) {
    const int M = g->M, N = g->N, K = g->K;
    // K-blocking of the fp32 copies: whole K when they are small; else either cache-sized blocks (C is then read
    // and written once per block) or blocks of up to 16 MiB (the copies then go through memory), whichever moves
    // fewer bytes. E.g. a 1280×11520 bf16 weight times 64 columns: 1 MiB blocks; a 2560×320 one times 4096 rows:
    // one block.
    const size_t small = (size_t)256 << 10, large = (size_t)4 << 20;  // floats
    const size_t lanes = (size_t)(g->aBF16 ? M : 0) + (g->bBF16 ? N : 0);
    size_t kc = (size_t)K;
    if (lanes * K > small) {
        size_t k1 = small / lanes < 128 ? 128 : small / lanes;
        size_t blocks1 = ((size_t)K + k1 - 1) / k1;
        kc = blocks1 * (size_t)M * N < lanes * (size_t)K ? k1 : large / lanes < 256 ? 256 : large / lanes;
        if (kc > (size_t)K) kc = (size_t)K;
    }
    float *ta = g->aBF16 ? hg_scratch_acquire((size_t)M * kc * sizeof(float)) : NULL;
    float *tb = g->bBF16 ? hg_scratch_acquire((size_t)N * kc * sizeof(float)) : NULL;
    for (int k0 = 0; k0 < K; k0 += (int)kc) {
        const int kk = K - k0 < (int)kc ? K - k0 : (int)kc;
        int lda, ldb;
        const float *a = operand_block(g->A, g->aBF16, g->lda, !g->transA, M, k0, kk, ta, &lda);
        const float *b = operand_block(g->B, g->bBF16, g->ldb, g->transB, N, k0, kk, tb, &ldb);
        hg_sgemm(g->transA, g->transB, M, N, kk, g->alpha, a, lda, b, ldb, k0 == 0 ? g->beta : 1.0f, g->C, g->ldc,
                 g->threads);
    }
    hg_scratch_release(ta);
    hg_scratch_release(tb);
}

// MARK: - Entry points

static void scale_c(float *C, int M, int N, int ldc, float beta) {
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0) memset(c, 0, (size_t)N * sizeof(float));
        else if (beta != 1)
            for (int j = 0; j < N; j++) c[j] *= beta;
    }
}

static void gemm(int transA, int transB, int M, int N, int K, float alpha, const void *A, int aBF16, int lda,
                 const void *B, int bBF16, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0) {
        scale_c(C, M, N, ldc, beta);
        return;
    }
    hg_gemm_args g = {transA != 0, transB != 0, M, N, K, alpha, beta, A, lda, aBF16, B, ldb, bBF16, C, ldc,
                      hg_kernels_get_threads()};
    switch (hg_kernels_path()) {
    case HG_PATH_AVX512: hg_gemm_avx512bf16(&g); break;
    case HG_PATH_EMULATED: hg_gemm_avx512bf16_emu(&g); break;
    default: gemm_fallback(&g);
    }
}

void hg_sbgemm(int transA, int transB, int M, int N, int K, float alpha, const uint16_t *A, int lda,
               const uint16_t *B, int ldb, float beta, float *C, int ldc) {
    gemm(transA, transB, M, N, K, alpha, A, 1, lda, B, 1, ldb, beta, C, ldc);
}

void hg_gemm_f32_bf16w(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                       const uint16_t *B, int ldb, float beta, float *C, int ldc) {
    gemm(transA, transB, M, N, K, alpha, A, 0, lda, B, 1, ldb, beta, C, ldc);
}

void hg_gemm_bf16w_f32(int transA, int transB, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc) {
    gemm(transA, transB, M, N, K, alpha, A, 1, lda, B, 0, ldb, beta, C, ldc);
}
