// parallel.c — the one thread pool of hgdpo: every parallel loop (Parallel.swift's parallelFor / parallelRanges,
// the attention and convolution items, the bf16 GEMMs) and every fp32 GEMM (hg_sgemm below: OpenBLAS runs
// single-threaded inside, rows split over the pool) goes through hg_parallel.
//
// Why one pool: with OpenBLAS's threads, GCD's workers and a pthread_create per bf16 GEMM, a step of SD-small on
// 2 threads handed work to another thread ~3,400 times (2,000 GCD dispatches, 1,400 OpenBLAS exec_blas), each a
// futex wake-up, while the other pool's idle threads spun on sched_yield. Here the workers stay awake for a short
// while after each loop (HG_POOL_SPIN_NS) so back-to-back loops and GEMMs start without a system call, then sleep.
//
// Reference beside it: hg_parallel_serial runs the same tasks one after the other (what every loop does with one
// thread, and what a nested call does); results never depend on which thread ran a task.
#include "internal.h"
#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define HG_PAUSE() _mm_pause()
#else
#define HG_PAUSE() ((void)0)
#endif

enum { HG_POOL_MAX = 255 };
// Workers keep polling for new work this long after their last task before they sleep on the condition variable.
#define HG_POOL_SPIN_NS 100000L

// The published run: its descriptor is written to g_desc[generation & 1] before `word`; word = generation (high 32
// bits) | next task (low 32). A descriptor per parity: a worker that saw generation g late reads g's descriptor, never
// the next run's (with one shared descriptor, a worker preempted between seeing g and reading it could read run g + 1's
// function and task count while `word` still said g, claim task "g's count" of run g + 1 under g, and that task would
// then run twice). If the caller has moved on (g + 2 may reuse the slot), `word`'s generation has changed and the
// worker's compare-and-swap claims nothing.
typedef struct {
    void (*fn)(void *, int);
    void *ctx;
    int tasks;
} hg_run_desc;
static hg_run_desc g_desc[2];
static _Atomic uint64_t g_word;
static _Atomic int g_done;
static _Atomic int g_sleepers;
static int g_workers;  // started so far (guarded by g_run)
static pthread_mutex_t g_run = PTHREAD_MUTEX_INITIALIZER;     // one run at a time
static pthread_mutex_t g_sleep = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;
static _Thread_local int t_inside;  // this thread is running a task of the pool (nested calls run serially)

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

void hg_parallel_serial(int n, void (*fn)(void *ctx, int t), void *ctx) {
    for (int t = 0; t < n; t++) fn(ctx, t);
}

// Takes and runs tasks of generation `gen` until none is left; returns how many it ran.
static int run_tasks(uint32_t gen, void (*fn)(void *, int), void *ctx, int tasks) {
    int ran = 0;
    uint64_t w = atomic_load(&g_word);
    while ((uint32_t)(w >> 32) == gen && (int)(uint32_t)w < tasks) {
        if (atomic_compare_exchange_weak(&g_word, &w, w + 1)) {
            fn(ctx, (int)(uint32_t)w);
            ran++;
            w = atomic_load(&g_word);
        }
    }
    return ran;
}

static void *worker_main(void *unused) {
    (void)unused;
    t_inside = 1;
    uint32_t served = (uint32_t)(atomic_load(&g_word) >> 32);
    for (;;) {
        // Wait for a new generation: poll for a while, then sleep.
        uint64_t w = atomic_load(&g_word);
        if ((uint32_t)(w >> 32) == served) {
            long t0 = now_ns();
            for (int i = 1;; i++) {
                HG_PAUSE();
                w = atomic_load(&g_word);
                if ((uint32_t)(w >> 32) != served) break;
                if ((i & 255) == 0 && now_ns() - t0 > HG_POOL_SPIN_NS) {
                    pthread_mutex_lock(&g_sleep);
                    atomic_fetch_add(&g_sleepers, 1);
                    while ((uint32_t)((w = atomic_load(&g_word)) >> 32) == served) pthread_cond_wait(&g_wake, &g_sleep);
                    atomic_fetch_sub(&g_sleepers, 1);
                    pthread_mutex_unlock(&g_sleep);
                    break;
                }
            }
        }
        served = (uint32_t)(w >> 32);
        // The descriptor may already belong to generation served + 2 (the caller publishes a run only after every
        // task of the previous one has finished); run_tasks then finds the generation changed and runs nothing.
        const hg_run_desc *d = &g_desc[served & 1];
        const int ran = run_tasks(served, d->fn, d->ctx, d->tasks);
        if (ran) atomic_fetch_add(&g_done, ran);
    }
    return NULL;
}

void hg_parallel(int n, void (*fn)(void *ctx, int t), void *ctx) {
    if (n > HG_POOL_MAX + 1) n = HG_POOL_MAX + 1;
    if (n <= 1 || t_inside || pthread_mutex_trylock(&g_run) != 0) {  // nested, or another thread's run: serial
        hg_parallel_serial(n, fn, ctx);
        return;
    }
    while (g_workers < n - 1) {
        pthread_t tid;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int ok = pthread_create(&tid, &attr, worker_main, NULL) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;  // fewer workers: the caller takes their tasks
        g_workers++;
    }
    const uint32_t gen = (uint32_t)(atomic_load(&g_word) >> 32) + 1;
    g_desc[gen & 1] = (hg_run_desc){fn, ctx, n};
    atomic_store(&g_done, 0);
    atomic_store(&g_word, (uint64_t)gen << 32);
    if (atomic_load(&g_sleepers) > 0) {
        pthread_mutex_lock(&g_sleep);
        pthread_cond_broadcast(&g_wake);
        pthread_mutex_unlock(&g_sleep);
    }
    t_inside = 1;
    const int ran = run_tasks(gen, fn, ctx, n);
    t_inside = 0;
    // Wait for the tasks the workers took (they are running now: poll, yielding the core after a while).
    int spins = 0;
    while (atomic_load(&g_done) + ran < n) {
        if (++spins < 4096) HG_PAUSE();
        else sched_yield();
    }
    pthread_mutex_unlock(&g_run);
}

// MARK: - fp32 GEMM: OpenBLAS single-threaded on blocks of rows (or columns) of C

typedef struct {
    int transA, transB, M, N, K, lda, ldb, ldc, blocks, byColumns;
    float alpha, beta;
    const float *A, *B;
    float *C;
} hg_sgemm_job;

// Rows are split in multiples of 16: OpenBLAS's result for a row of C does not depend on which other rows it
// computes with (its K-blocking depends on K only), so the split is bit-identical to one call, as long as no block
// is small enough for OpenBLAS's small-matrix or "direct" kernels (M·N·K up to ~10⁶ on SkylakeX), which sum in
// another order: blocks stay above 2·10⁶ multiply-adds. Checked in Tests/TensorsTests/ParallelTests.swift.
// A C with too few rows to go round (a LoRA's dA = d(xa)ᵀ·x: rank-8 rows, thousands of tokens deep) is split by
// columns instead, also in multiples of 16 (a multiple of every kernel's N tile), by the same argument: a column of C
// is computed the same whichever columns come with it. Without this, those GEMMs ran on one thread while the other
// waited (1 % of a small@32 training step on 1 rank × 2 threads, the largest serial section after the memsets).
enum { HG_SGEMM_ROWS = 16 };
#define HG_SGEMM_MIN_BLOCK_MNK 2e6

static void sgemm_block(void *p, int t) {
    const hg_sgemm_job *j = p;
    const int extent = j->byColumns ? j->N : j->M;
    const int units = (extent + HG_SGEMM_ROWS - 1) / HG_SGEMM_ROWS;
    const int x0 = (int)((long)units * t / j->blocks) * HG_SGEMM_ROWS;
    int x1 = (int)((long)units * (t + 1) / j->blocks) * HG_SGEMM_ROWS;
    if (x1 > extent) x1 = extent;
    if (x0 >= x1) return;
    const CBLAS_TRANSPOSE ta = j->transA ? CblasTrans : CblasNoTrans, tb = j->transB ? CblasTrans : CblasNoTrans;
    if (j->byColumns) {
        // Columns x0..<x1 of C: the same columns of op(B) (rows of B when transposed).
        const float *b = j->transB ? j->B + (size_t)x0 * j->ldb : j->B + x0;
        cblas_sgemm(CblasRowMajor, ta, tb, j->M, x1 - x0, j->K, j->alpha, j->A, j->lda, b, j->ldb, j->beta, j->C + x0,
                    j->ldc);
    } else {
        const float *a = j->transA ? j->A + x0 : j->A + (size_t)x0 * j->lda;
        cblas_sgemm(CblasRowMajor, ta, tb, x1 - x0, j->N, j->K, j->alpha, a, j->lda, j->B, j->ldb, j->beta,
                    j->C + (size_t)x0 * j->ldc, j->ldc);
    }
}

// Blocks of `units` 16-wide pieces over at most `threads` tasks, each of at least HG_SGEMM_MIN_BLOCK_MNK.
static int sgemm_blocks(double mnk, int units, int threads) {
    int blocks = threads < units ? threads : units;
    while (blocks > 1 && mnk / blocks < HG_SGEMM_MIN_BLOCK_MNK) blocks--;
    return blocks < 1 ? 1 : blocks;
}

void hg_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
              int ldb, float beta, float *C, int ldc, int threads) {
    hg_sgemm_job j = {transA, transB, M, N, K, lda, ldb, ldc, 1, 0, alpha, beta, A, B, C};
    const double mnk = (double)M * N * K;
    const int rows = sgemm_blocks(mnk, (M + HG_SGEMM_ROWS - 1) / HG_SGEMM_ROWS, threads);
    const int columns = sgemm_blocks(mnk, (N + HG_SGEMM_ROWS - 1) / HG_SGEMM_ROWS, threads);
    j.byColumns = columns > rows;
    j.blocks = j.byColumns ? columns : rows;
    if (j.blocks == 1) sgemm_block(&j, 0);
    else hg_parallel(j.blocks, sgemm_block, &j);
}
