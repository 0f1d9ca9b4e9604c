// Multi-head scaled-dot-product attention, forward and backward, without ever holding the (H, Nq, Nk) matrix.
// Ref: diffusers AttnProcessor2_0 → F.scaled_dot_product_attention(q, k, v) with scale 1/sqrt(head size),
// softmax over keys, no dropout; no mask, or with `causal` (self-attention, Nq = Nk) query i sees keys j ≤ i only,
// as CLIP's text encoder (transformers CLIPTextModel: causal mask, is_causal=True).
//
// Layout is tokens-major, as the rows come out of to_q / to_k / to_v (and go into to_out.0):
//   q, out (B, Nq, H·d)   k, v (B, Nk, H·d)   head h owns columns [h·d, (h+1)·d).
// Per (batch, head) the query rows are processed in blocks of `rows`; a block's scores S (rows, Nk) live in the
// workspace only (llm.c style kernels, FlashAttention-style recomputation in backward, Dao et al. 2022 Alg. 2):
//   forward   S = scale·Q_blk·Kᵀ,  P = softmax(S),  lse_i = max_i + log Σ_j exp(S_ij − max_i),  O_blk = P·V
//   backward  P = exp(scale·Q_blk·Kᵀ − lse),  dP = dO·Vᵀ,  D_i = Σ dO_i·O_i,  dS = P ⊙ (dP − D),
//             dQ_blk += scale·dS·K,  dK += scale·dSᵀ·Q_blk,  dV += Pᵀ·dO_blk
// Work is split over threads with Dispatch; each worker owns one slice of the workspace and calls OpenBLAS
// single-threaded (OpenBLAS's own threads are switched off while the workers run and restored afterwards): on
// 2 cores that is ~1.8× faster than one thread driving multi-threaded OpenBLAS, whose threads idle between the
// many small GEMMs. Results do not depend on the thread count (each output element is summed by one worker in a
// fixed order). SD1.5's largest self-attention (B 1, 4096 tokens, 8 heads, d 40) on 2 AVX2 cores: forward
// ≈ 0.35–0.40 s (≈ 55–60 GFLOPS counting 4·B·H·Nq·Nk·d), backward ≈ 0.7–0.8 s (2.5× those flops).
import CKernels
import Dispatch
import Foundation
import Tensors

// MARK: - Sizes

/// Query rows per block: about 2^20 score floats (4 MB) per block, 64…512 rows, a multiple of 16. Measured on
/// SD1.5's 4096-token self-attention (2 cores, OpenBLAS): backward is 2.5× slower at 32 rows than at ≥ 64
/// (dK/dV GEMMs with k = rows), forward gains up to 256 rows; cross-attention (Nk = 77) is flat from 128 up.
@inline(__always)
func attentionBlockRows(Nq: Int, Nk: Int) -> Int {
    let rows = min(512, max(64, ((1 << 20) / max(1, Nk)) & ~15))
    return max(1, min(Nq, rows))
}

/// Row stride of a score block: a whole number of 16-float vectors, and never a multiple of 1024 floats
/// (a power-of-two stride makes every row of a block alias the same cache sets).
@inline(__always)
func attentionScoreStride(Nk: Int) -> Int {
    var ld = (Nk + 15) & ~15
    if ld % 1024 == 0 { ld += 16 }
    return ld
}

/// Threads the attention kernels use by default: `Parallel.threads` (HGDPO_THREADS, else the core count).
public var attentionDefaultThreads: Int { max(1, Parallel.threads) }

/// Which code computes one (batch, head): OpenBLAS GEMMs around the softmax rows, or CKernels/attention_avx512.c,
/// whose register-tiled loops beat OpenBLAS where the head is small (every GEMM then has K or N = d, and OpenBLAS
/// spends its time packing and zeroing; measured in BENCHMARKS.md), or its bf16 build (attention_avx512bf16.c:
/// VDPBF16PS products of bf16-rounded operands, fp32 sums), the attention of a model whose projections are bf16
/// (`--mixed-precision bf16`) on a CPU whose bf16 GEMMs run on AVX512-BF16, as PyTorch's autocast runs attention
/// in bf16.
public enum AttentionKernel: String, Sendable {
    case blas, avx512, avx512bf16

    /// Largest head size given to the AVX-512 kernels by default (measured: faster than OpenBLAS up to here).
    public static let avx512MaxHeadDim = 64
    /// Largest head size given to the bf16 kernels by default (measured on Zen 4, 2 threads, against OpenBLAS: 1.2×
    /// faster at SD1.5's 80, no faster at its 160 over 64 tokens).
    public static let avx512bf16MaxHeadDim = 80

    /// The CPU runs the AVX-512 kernels (these and the softmax rows of the OpenBLAS path).
    public static let avx512Available = hg_cpu_has_avx512f() != 0
    /// The CPU runs the bf16 build (AVX512-BF16).
    public static let avx512bf16Available = hg_cpu_has_avx512bf16() != 0

    /// HGDPO_ATTENTION=blas|avx512|avx512bf16 (`RuntimeOptions.attentionKernel`) forces one, whatever the model's
    /// precision (benchmarks; avx512 keeps a bf16 model's attention in fp32); a kernel the CPU lacks falls back to
    /// avx512, then blas.
    static var forced: AttentionKernel? { RuntimeOptions.current.attentionKernel.flatMap(AttentionKernel.init) }

    /// `kernel` where the CPU runs it, else the next one down (avx512bf16 → avx512 → blas).
    static func available(_ kernel: AttentionKernel) -> AttentionKernel {
        if kernel == .avx512bf16 && !avx512bf16Available { return available(.avx512) }
        return kernel == .avx512 && !avx512Available ? .blas : kernel
    }

    /// The default for a head size, unless forced: for a bf16 model avx512bf16 where the bf16 GEMMs run on
    /// AVX512-BF16 (`BF16.isAccelerated`) and d ≤ avx512bf16MaxHeadDim; else avx512 where the CPU has it and
    /// d ≤ avx512MaxHeadDim; else blas.
    public static func choose(headDim: Int, bf16: Bool = false) -> AttentionKernel {
        if let f = forced { return available(f) }
        if bf16 && BF16.isAccelerated && avx512bf16Available && headDim <= avx512bf16MaxHeadDim { return .avx512bf16 }
        return avx512Available && headDim <= avx512MaxHeadDim ? .avx512 : .blas
    }
}

/// Floats of scratch that `attentionForward` and `attentionBackward` need (one buffer serves both) for the same
/// `threads`, per worker (workers ≤ threads): OpenBLAS path 2·rows·ldS + rows with rows ≤ 512 query rows per block
/// (rows·ldS ≲ 2^20) and ldS ≈ Nk rounded up to 16; AVX-512 path (4·d + 64)·ld + 48 with ld ≈ Nk rounded up to 16
/// (hg_attention_avx512_workspace). It does not grow with Nq.
public func attentionWorkspaceSize(B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int,
                                   threads: Int = attentionDefaultThreads, bf16: Bool = false) -> Int {
    AttentionPlan(B: B, Nq: Nq, Nk: Nk, heads: heads, headDim: headDim, threads: threads, bf16: bf16).workspaceSize
}

/// How a call is cut up: kernel, query rows per block, score row stride, workers and each worker's workspace slice.
struct AttentionPlan {
    let kernel: AttentionKernel
    let rows: Int, ldS: Int, blocks: Int, workers: Int, perWorker: Int
    var workspaceSize: Int { workers * perWorker }

    /// `rows` overrides the block height (tests use it to put block edges inside Nq), `kernel` the default choice
    /// (for a model whose projections are bf16 when `bf16`).
    init(B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int, threads: Int, rows: Int? = nil, kernel: AttentionKernel? = nil,
         bf16: Bool = false) {
        self.kernel = kernel.map(AttentionKernel.available) ?? AttentionKernel.choose(headDim: headDim, bf16: bf16)
        self.rows = max(1, min(Nq, rows ?? attentionBlockRows(Nq: Nq, Nk: Nk)))
        ldS = attentionScoreStride(Nk: Nk)
        blocks = (Nq + self.rows - 1) / self.rows
        // Forward splits (batch, head, query block) items, backward (batch, head) items; size for the larger.
        workers = max(1, min(threads, B * heads * blocks))
        switch self.kernel {
        case .blas: perWorker = 2 * self.rows * ldS + self.rows     // P or S (rows, ldS), dS (rows, ldS), a row vector
        case .avx512: perWorker = hg_attention_avx512_workspace(Int32(Nk), Int32(headDim))
        case .avx512bf16: perWorker = hg_attention_avx512bf16_workspace(Int32(Nk), Int32(headDim))
        }
    }
}

// MARK: - Forward

/// out (B, Nq, H·d) = softmax(q·kᵀ/sqrt(d))·v per head; lse (B, H, Nq) = log Σ_j exp(q_i·k_j/sqrt(d)), kept for backward.
/// q (B, Nq, H·d), k and v (B, Nk, H·d); workspace ≥ attentionWorkspaceSize(…, threads, bf16) floats. `bf16`: the
/// model's projections are bf16 (AttentionKernel.choose).
public func attentionForward(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                             q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                             B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int,
                             workspace: UnsafeMutablePointer<Float>, threads: Int = attentionDefaultThreads,
                             causal: Bool = false, bf16: Bool = false) {
    attentionForward(out: out, lse: lse, q: q, k: k, v: v, B: B, Nq: Nq, Nk: Nk, heads: heads, headDim: headDim,
                     workspace: workspace,
                     plan: AttentionPlan(B: B, Nq: Nq, Nk: Nk, heads: heads, headDim: headDim, threads: threads, bf16: bf16),
                     causal: causal)
}

func attentionForward(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                      q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                      B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int,
                      workspace: UnsafeMutablePointer<Float>, plan: AttentionPlan, causal: Bool = false) {
    precondition(!causal || Nq == Nk, "causal attention needs Nq == Nk")
    let H = heads, d = headDim, C = H * d
    let scale = 1 / Float(d).squareRoot()
    let rows = plan.rows, ldS = plan.ldS, blocks = plan.blocks, perWorker = plan.perWorker

    attentionParallel(items: B * H * blocks, workers: plan.workers) { item, worker in
        let bh = item / blocks, b = bh / H, h = bh % H
        let i0 = (item % blocks) * rows, m = min(rows, Nq - i0)
        if plan.kernel != .blas {
            let off = (b * Nq + i0) * C + h * d, kv = b * Nk * C + h * d
            let kernel = plan.kernel == .avx512 ? hg_attention_forward_avx512 : hg_attention_forward_avx512bf16
            kernel(q + off, k + kv, v + kv, Int32(C), out + off, lse + bh * Nq + i0, Int32(m), Int32(Nk), Int32(d), scale,
                   causal ? 1 : 0, Int32(i0), workspace + worker * perWorker)
            return
        }
        let S = workspace + worker * perWorker                     // (m, ldS)
        let invSum = S + 2 * rows * ldS                            // (m)
        let qBlk = q + (b * Nq + i0) * C + h * d                   // (m, d) stride C
        let kHead = k + b * Nk * C + h * d                         // (Nk, d) stride C
        let vHead = v + b * Nk * C + h * d
        let oBlk = out + (b * Nq + i0) * C + h * d
        let lseBlk = lse + bh * Nq + i0

        // S = scale·Q_blk·Kᵀ
        BLAS.sgemm(transB: true, m: m, n: Nk, k: d, alpha: scale, a: qBlk, lda: C, b: kHead, ldb: C,
                   beta: 0, c: S, ldc: ldS)
        if causal { maskFuture(S, ldS: ldS, rows: m, firstRow: i0, Nk: Nk) }
        // S ← exp(S − rowmax) in place; the 1/Σ is applied to the d outputs instead of the Nk probabilities.
        for i in 0..<m {
            let row = S + i * ldS
            let mx = softmaxRowMax(row, Nk)
            let sum = softmaxRowExp(row, Nk, shift: mx, sum: true)
            lseBlk[i] = mx + logf(sum)
            invSum[i] = 1 / sum
        }
        // O_blk = P·V
        BLAS.sgemm(m: m, n: d, k: Nk, a: S, lda: ldS, b: vHead, ldb: C, beta: 0, c: oBlk, ldc: C)
        for i in 0..<m {
            let o = oBlk + i * C, s = invSum[i]
            for j in 0..<d { o[j] *= s }
        }
    }
}

// MARK: - Backward

/// Accumulates dq (B, Nq, H·d), dk and dv (B, Nk, H·d) from dout (B, Nq, H·d), given the forward's inputs,
/// its output `out` and `lse` (B, H, Nq). P is recomputed block by block from q, k and lse.
public func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                              dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                              q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              out: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                              B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int,
                              workspace: UnsafeMutablePointer<Float>, threads: Int = attentionDefaultThreads,
                              causal: Bool = false, bf16: Bool = false) {
    attentionBackward(dq: dq, dk: dk, dv: dv, dout: dout, q: q, k: k, v: v, out: out, lse: lse,
                      B: B, Nq: Nq, Nk: Nk, heads: heads, headDim: headDim, workspace: workspace,
                      plan: AttentionPlan(B: B, Nq: Nq, Nk: Nk, heads: heads, headDim: headDim, threads: threads, bf16: bf16),
                      causal: causal)
}

func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                       dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                       q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                       out: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                       B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int,
                       workspace: UnsafeMutablePointer<Float>, plan: AttentionPlan, causal: Bool = false) {
    precondition(!causal || Nq == Nk, "causal attention needs Nq == Nk")
    let H = heads, d = headDim, C = H * d
    let scale = 1 / Float(d).squareRoot()
    let rows = plan.rows, ldS = plan.ldS, perWorker = plan.perWorker
    let workers = min(plan.workers, B * H)

    // One item per (batch, head): dK and dV of a head are summed over all its query blocks by one worker,
    // so no two workers write the same gradient element and the sum order does not depend on the thread count.
    attentionParallel(items: B * H, workers: workers) { bh, worker in
        let b = bh / H, h = bh % H
        if plan.kernel != .blas {
            let qo = b * Nq * C + h * d, kv = b * Nk * C + h * d
            let kernel = plan.kernel == .avx512 ? hg_attention_backward_avx512 : hg_attention_backward_avx512bf16
            kernel(q + qo, k + kv, v + kv, out + qo, dout + qo, Int32(C), lse + bh * Nq, dq + qo, dk + kv, dv + kv,
                   Int32(Nq), Int32(Nk), Int32(d), scale, causal ? 1 : 0, workspace + worker * perWorker)
            return
        }
        let P = workspace + worker * perWorker                     // (rows, ldS)
        let dS = P + rows * ldS                                    // (rows, ldS)
        let D = dS + rows * ldS                                    // (rows)
        let kHead = k + b * Nk * C + h * d, vHead = v + b * Nk * C + h * d
        let dkHead = dk + b * Nk * C + h * d, dvHead = dv + b * Nk * C + h * d
        var i0 = 0
        while i0 < Nq {
            let m = min(rows, Nq - i0)
            let off = (b * Nq + i0) * C + h * d
            let qBlk = q + off, oBlk = out + off, doBlk = dout + off, dqBlk = dq + off
            let lseBlk = lse + bh * Nq + i0

            // P = exp(scale·Q_blk·Kᵀ − lse)
            BLAS.sgemm(transB: true, m: m, n: Nk, k: d, alpha: scale, a: qBlk, lda: C, b: kHead, ldb: C,
                       beta: 0, c: P, ldc: ldS)
            if causal { maskFuture(P, ldS: ldS, rows: m, firstRow: i0, Nk: Nk) }
            for i in 0..<m { _ = softmaxRowExp(P + i * ldS, Nk, shift: lseBlk[i], sum: false) }
            // dP = dO_blk·Vᵀ
            BLAS.sgemm(transB: true, m: m, n: Nk, k: d, a: doBlk, lda: C, b: vHead, ldb: C, beta: 0, c: dS, ldc: ldS)
            // D_i = Σ_c dO_ic·O_ic (= Σ_j P_ij·dP_ij);  dS = P ⊙ (dP − D)
            for i in 0..<m {
                let o = oBlk + i * C, g = doBlk + i * C
                var acc: Float = 0
                for c in 0..<d { acc += o[c] * g[c] }
                D[i] = acc
                softmaxGradInPlace(dS + i * ldS, P + i * ldS, Nk, D[i])
            }
            // dV += Pᵀ·dO_blk;  dQ_blk += scale·dS·K;  dK += scale·dSᵀ·Q_blk
            BLAS.sgemm(transA: true, m: Nk, n: d, k: m, a: P, lda: ldS, b: doBlk, ldb: C, beta: 1, c: dvHead, ldc: C)
            BLAS.sgemm(m: m, n: d, k: Nk, alpha: scale, a: dS, lda: ldS, b: kHead, ldb: C, beta: 1, c: dqBlk, ldc: C)
            BLAS.sgemm(transA: true, m: Nk, n: d, k: m, alpha: scale, a: dS, lda: ldS, b: qBlk, ldb: C,
                       beta: 1, c: dkHead, ldc: C)
            i0 += m
        }
    }
}

// MARK: - Threads

/// Runs body(item, worker) for every item, `workers` at a time; worker ∈ 0..<workers picks its workspace slice.
/// Items are handed out in order from a shared counter, so a worker slowed by another process takes fewer.
/// With more than one worker the GEMMs inside run single-threaded (a pool task's loops and GEMMs run serially);
/// with one, they use the pool.
@inline(__always)
private func attentionParallel(items: Int, workers: Int, _ body: (Int, Int) -> Void) {
    guard workers > 1 else {
        for item in 0..<items { body(item, 0) }
        return
    }
    let next = AttentionCounter()
    Parallel.run(tasks: workers) { worker in
        while true {
            let item = next.take()
            if item >= items { break }
            body(item, worker)
        }
    }
}

/// A shared item counter (a lock is plenty: one take per query block of hundreds of microseconds).
private final class AttentionCounter: @unchecked Sendable {
    private var value = 0
    private let lock = NSLock()
    func take() -> Int {
        lock.lock(); defer { lock.unlock() }
        let v = value
        value += 1
        return v
    }
}

// MARK: - Row kernels

// The softmax rows (max, exp, sum) run on the AVX-512F kernels of CKernels/softmax_rows.c where the CPU has them
// (`AttentionKernel.avx512Available`; 16 lanes, the Swift code below is compiled for AVX2). Same arithmetic, so the
// two agree to rounding (tested).

/// max_j row[j], j < n: the AVX-512F kernel where the CPU has it, else `rowMax`.
@inline(__always)
private func softmaxRowMax(_ row: UnsafePointer<Float>, _ n: Int) -> Float {
    AttentionKernel.avx512Available ? hg_row_max_avx512(row, Int32(n)) : rowMax(row, n)
}

/// row[j] ← exp(row[j] − shift), j < n; returns Σ_j row[j] when `sum` (the AVX-512F kernel sums in the same pass
/// anyway; the Swift path adds a pass only when asked), else 0.
@inline(__always)
private func softmaxRowExp(_ row: UnsafeMutablePointer<Float>, _ n: Int, shift: Float, sum: Bool) -> Float {
    if AttentionKernel.avx512Available { return hg_row_exp_sum_avx512(row, Int32(n), shift) }
    expShiftedInPlace(row, n, shift: shift)
    return sum ? rowSum(row, n) : 0
}
// Plain scalar loops with no calls or loop-carried float dependences, which LLVM vectorises in release builds
// (checked in the assembly: 4-wide SSE, the baseline x86-64 target). Hand-written SIMD16<Float> code ran no faster
// in release and about 12× slower in debug builds, where `swift test` runs.

/// max_j x[j], n ≥ 1 (eight running maxima so the loop is not one serial chain).
@inline(__always)
func rowMax(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var m0 = -Float.infinity, m1 = m0, m2 = m0, m3 = m0, m4 = m0, m5 = m0, m6 = m0, m7 = m0
    var j = 0
    while j + 8 <= n {
        m0 = max(m0, x[j]); m1 = max(m1, x[j + 1]); m2 = max(m2, x[j + 2]); m3 = max(m3, x[j + 3])
        m4 = max(m4, x[j + 4]); m5 = max(m5, x[j + 5]); m6 = max(m6, x[j + 6]); m7 = max(m7, x[j + 7])
        j += 8
    }
    var m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    while j < n { m = max(m, x[j]); j += 1 }
    return m
}

/// Σ_j x[j] with eight partial sums.
@inline(__always)
func rowSum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0: Float = 0, a1: Float = 0, a2: Float = 0, a3: Float = 0, a4: Float = 0, a5: Float = 0, a6: Float = 0
    var a7: Float = 0
    var j = 0
    while j + 8 <= n {
        a0 += x[j]; a1 += x[j + 1]; a2 += x[j + 2]; a3 += x[j + 3]
        a4 += x[j + 4]; a5 += x[j + 5]; a6 += x[j + 6]; a7 += x[j + 7]
        j += 8
    }
    var sum = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    while j < n { sum += x[j]; j += 1 }
    return sum
}

/// x[j] ← exp(x[j] − shift) for j < n.
@inline(__always)
func expShiftedInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) {
    for j in 0..<n { x[j] = fastExp(x[j] - shift) }
}

/// Causal mask on a score block whose row i is query firstRow + i: S[i][j] ← −∞ for keys j > firstRow + i, so
/// exp gives exactly 0 there (fastExp(−∞) = 0) and the row's max and sum see only the visible keys.
@inline(__always)
private func maskFuture(_ S: UnsafeMutablePointer<Float>, ldS: Int, rows m: Int, firstRow: Int, Nk: Int) {
    for i in 0..<m where firstRow + i + 1 < Nk {
        let row = S + i * ldS
        for j in (firstRow + i + 1)..<Nk { row[j] = -.infinity }
    }
}

/// dS[j] ← P[j]·(dP[j] − D) in place over dP, j < n.
@inline(__always)
private func softmaxGradInPlace(_ dP: UnsafeMutablePointer<Float>, _ P: UnsafePointer<Float>, _ n: Int, _ D: Float) {
    for j in 0..<n { dP[j] = P[j] * (dP[j] - D) }
}

// MARK: - exp

/// e^x with max relative error ≈ 8e-8 (under 1 ulp) on [−87.3, 88]; 0 below −87.3, e^88 above (softmax only
/// needs x ≤ 0). Cody–Waite reduction x = n·ln2 + r, |r| ≤ ln2/2, with ln2 split in two so n·ln2_hi is exact;
/// Cephes' expf polynomial for e^r; 2^n built in the exponent bits. n is rounded with the 1.5·2^23 trick and the
/// clamps are selects, so a loop over it vectorises (libm's expf is a call per element: ~3× slower, measured).
@inline(__always)
func fastExp(_ x: Float) -> Float {
    let lo: Float = -87.336_54
    let xc = x < lo ? lo : (x > 88 ? 88 : x)
    let t = xc * 1.442_695_04 + 12_582_912                         // n + 1.5·2^23, n = round(x·log2 e)
    let n = t - 12_582_912
    var r = xc - n * 0.693_359_375                                 // ln2_hi: 9 significant bits, n·ln2_hi exact
    r = r + n * 2.121_944_40e-4                                    // ln2_lo = ln2_hi − ln 2
    let z = r * r
    var p: Float = 1.987_569_150_0e-4
    p = p * r + 1.398_199_950_7e-3
    p = p * r + 8.333_451_907_3e-3
    p = p * r + 4.166_579_589_4e-2
    p = p * r + 1.666_666_545_9e-1
    p = p * r + 5.000_000_120_1e-1
    p = p * z + r + 1
    let ni = Int32(bitPattern: t.bitPattern) &- 0x4B40_0000        // the integer n, from the low mantissa bits
    let pow2n = Float(bitPattern: UInt32(bitPattern: (ni &+ 127) &<< 23))
    return x < lo ? 0 : p * pow2n
}
