// Multi-head scaled-dot-product attention, forward and backward, without ever holding the (H, Nq, Nk) matrix.
// Ref: diffusers AttnProcessor2_0 → F.scaled_dot_product_attention(q, k, v) with scale 1/sqrt(head size),
// softmax over keys, no mask, no dropout.
//
// Layout is tokens-major, as the rows come out of to_q / to_k / to_v (and go into to_out.0):
//   q, out (B, Nq, H·d)   k, v (B, Nk, H·d)   head h owns columns [h·d, (h+1)·d).
// Per (batch, head) the query rows are processed in blocks of `rows`; a block's scores S (rows, Nk) live in the
// workspace only (llm.c style kernels, FlashAttention-style recomputation in backward, Dao et al. 2022 Alg. 2):
//   forward   S = scale·Q_blk·Kᵀ,  P = softmax(S),  lse_i = max_i + log Σ_j exp(S_ij − max_i),  O_blk = P·V
//   backward  P = exp(scale·Q_blk·Kᵀ − lse),  dP = dO·Vᵀ,  D_i = Σ dO_i·O_i,  dS = P ⊙ (dP − D),
//             dQ_blk += scale·dS·K,  dK += scale·dSᵀ·Q_blk,  dV += Pᵀ·dO_blk
// Work is split over threads with Dispatch; each worker owns one slice of the workspace and calls OpenBLAS
// single-threaded (OpenBLAS's own threads are switched off while the workers run and restored afterwards).
import Dispatch
import Foundation
import Tensors

// MARK: - Sizes

/// Query rows per block: the (rows, Nk) score block should sit in L2 (about 1 MB per core here),
/// but cross-attention (Nk = 77) wants more rows so its GEMMs are not tiny.
@inline(__always)
func attentionBlockRows(Nq: Int, Nk: Int) -> Int {
    let budget = 96 * 1024                                  // floats per score block
    let rows = min(256, max(32, budget / max(1, Nk)))
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

/// Threads the attention kernels use by default: the per-rank thread count the launch scripts give OpenBLAS.
public var attentionDefaultThreads: Int { max(1, BLAS.threads) }

/// Floats of scratch that `attentionForward` and `attentionBackward` need (one buffer serves both) for the same
/// `threads`: workers · (2·rows·ldS + rows) with workers ≤ threads, rows ≤ 256 query rows per block and
/// ldS ≈ Nk rounded up to 16, so it does not grow with Nq.
public func attentionWorkspaceSize(B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int,
                                   threads: Int = attentionDefaultThreads) -> Int {
    AttentionPlan(B: B, Nq: Nq, Nk: Nk, heads: heads, threads: threads).workspaceSize
}

/// How a call is cut up: query rows per block, score row stride, workers and each worker's workspace slice.
struct AttentionPlan {
    let rows: Int, ldS: Int, blocks: Int, workers: Int
    var perWorker: Int { 2 * rows * ldS + rows }             // P or S (rows, ldS), dS (rows, ldS), a row vector
    var workspaceSize: Int { workers * perWorker }

    /// `rows` overrides the block height (tests use it to put block edges inside Nq).
    init(B: Int, Nq: Int, Nk: Int, heads: Int, threads: Int, rows: Int? = nil) {
        self.rows = max(1, min(Nq, rows ?? attentionBlockRows(Nq: Nq, Nk: Nk)))
        ldS = attentionScoreStride(Nk: Nk)
        blocks = (Nq + self.rows - 1) / self.rows
        // Forward splits (batch, head, query block) items, backward (batch, head) items; size for the larger.
        workers = max(1, min(threads, B * heads * blocks))
    }
}

// MARK: - Forward

/// out (B, Nq, H·d) = softmax(q·kᵀ/sqrt(d))·v per head; lse (B, H, Nq) = log Σ_j exp(q_i·k_j/sqrt(d)), kept for backward.
/// q (B, Nq, H·d), k and v (B, Nk, H·d); workspace ≥ attentionWorkspaceSize(…, threads) floats.
public func attentionForward(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                             q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                             B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int,
                             workspace: UnsafeMutablePointer<Float>, threads: Int = attentionDefaultThreads) {
    attentionForward(out: out, lse: lse, q: q, k: k, v: v, B: B, Nq: Nq, Nk: Nk, heads: heads, headDim: headDim,
                     workspace: workspace, plan: AttentionPlan(B: B, Nq: Nq, Nk: Nk, heads: heads, threads: threads))
}

func attentionForward(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                      q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                      B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int,
                      workspace: UnsafeMutablePointer<Float>, plan: AttentionPlan) {
    let H = heads, d = headDim, C = H * d
    let scale = 1 / Float(d).squareRoot()
    let rows = plan.rows, ldS = plan.ldS, blocks = plan.blocks, perWorker = plan.perWorker

    attentionParallel(items: B * H * blocks, workers: plan.workers) { item, worker in
        let bh = item / blocks, b = bh / H, h = bh % H
        let i0 = (item % blocks) * rows, m = min(rows, Nq - i0)
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
        // S ← exp(S − rowmax) in place; the 1/Σ is applied to the d outputs instead of the Nk probabilities.
        for i in 0..<m {
            let row = S + i * ldS
            let mx = rowMax(row, Nk)
            let sum = expShiftedInPlace(row, Nk, shift: mx)
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
                              workspace: UnsafeMutablePointer<Float>, threads: Int = attentionDefaultThreads) {
    attentionBackward(dq: dq, dk: dk, dv: dv, dout: dout, q: q, k: k, v: v, out: out, lse: lse,
                      B: B, Nq: Nq, Nk: Nk, heads: heads, headDim: headDim, workspace: workspace,
                      plan: AttentionPlan(B: B, Nq: Nq, Nk: Nk, heads: heads, threads: threads))
}

func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                       dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                       q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                       out: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                       B: Int, Nq: Int, Nk: Int, heads: Int, headDim: Int,
                       workspace: UnsafeMutablePointer<Float>, plan: AttentionPlan) {
    let H = heads, d = headDim, C = H * d
    let scale = 1 / Float(d).squareRoot()
    let rows = plan.rows, ldS = plan.ldS, perWorker = plan.perWorker
    let workers = min(plan.workers, B * H)

    // One item per (batch, head): dK and dV of a head are summed over all its query blocks by one worker,
    // so no two workers write the same gradient element and the sum order does not depend on the thread count.
    attentionParallel(items: B * H, workers: workers) { bh, worker in
        let b = bh / H, h = bh % H
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
            for i in 0..<m { _ = expShiftedInPlace(P + i * ldS, Nk, shift: lseBlk[i]) }
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
/// With more than one worker OpenBLAS runs single-threaded inside (restored afterwards); with one, OpenBLAS
/// keeps its threads.
@inline(__always)
private func attentionParallel(items: Int, workers: Int, _ body: (Int, Int) -> Void) {
    guard workers > 1 else {
        for item in 0..<items { body(item, 0) }
        return
    }
    let blasThreads = BLAS.threads
    if blasThreads > 1 { BLAS.setThreads(1) }
    defer { if blasThreads > 1 { BLAS.setThreads(blasThreads) } }
    let next = AttentionCounter()
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
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

// MARK: - Row kernels (SIMD16; the loads are unaligned-safe)

@inline(__always)
private func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always)
private func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
}

/// max_j x[j], n ≥ 1.
@inline(__always)
private func rowMax(_ x: UnsafeMutablePointer<Float>, _ n: Int) -> Float {
    var m = SIMD16<Float>(repeating: -.infinity)
    var j = 0
    while j + 16 <= n {
        let v = load16(x + j)
        m.replace(with: v, where: v .> m)
        j += 16
    }
    var r = -Float.infinity
    for l in 0..<16 where m[l] > r { r = m[l] }
    while j < n { if x[j] > r { r = x[j] }; j += 1 }
    return r
}

/// x[j] ← exp(x[j] − shift) for j < n; returns Σ_j of the new x[j].
@inline(__always)
private func expShiftedInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) -> Float {
    let s = SIMD16<Float>(repeating: shift)
    var acc = SIMD16<Float>()
    var j = 0
    while j + 16 <= n {
        let e = fastExp(load16(x + j) - s)
        store16(e, x + j)
        acc += e
        j += 16
    }
    var sum = acc.sum()
    if j < n {
        var t = SIMD16<Float>()
        for l in 0..<(n - j) { t[l] = x[j + l] - shift }
        let e = fastExp(t)
        for l in 0..<(n - j) { x[j + l] = e[l]; sum += e[l] }
    }
    return sum
}

/// dS[j] ← P[j]·(dP[j] − D) in place over dP, j < n.
@inline(__always)
private func softmaxGradInPlace(_ dP: UnsafeMutablePointer<Float>, _ P: UnsafePointer<Float>, _ n: Int, _ D: Float) {
    let Dv = SIMD16<Float>(repeating: D)
    var j = 0
    while j + 16 <= n {
        store16(load16(P + j) * (load16(dP + j) - Dv), dP + j)
        j += 16
    }
    while j < n { dP[j] = P[j] * (dP[j] - D); j += 1 }
}

// MARK: - exp

/// e^x for 16 lanes; max relative error ≈ 1e-7 (under 1 ulp) on [−87.3, 88.7], 0 below, clamped above.
/// Cody–Waite reduction x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two so n·ln2_hi is exact), Cephes' expf
/// polynomial for e^r, and 2^n built in the exponent bits. Rounding n uses the 1.5·2^23 trick (no SSE4.1
/// needed); comparisons use `replacing` because pointwiseMin/Max do not vectorise.
@inline(__always)
func fastExp(_ x: SIMD16<Float>) -> SIMD16<Float> {
    let lo = SIMD16<Float>(repeating: -87.33654), hi = SIMD16<Float>(repeating: 88.72283)
    var xc = x.replacing(with: lo, where: x .< lo)
    xc.replace(with: hi, where: xc .> hi)
    let magic = SIMD16<Float>(repeating: 12_582_912)              // 1.5·2^23
    let t = xc * 1.442_695_04 + magic                              // n + magic, n = round(x·log2 e)
    let n = t - magic
    var r = xc - n * 0.693_359_375                                 // ln2_hi: 9 significant bits, n·ln2_hi exact
    r = r + n * 2.121_944_40e-4                                    // ln2_lo = ln2_hi − ln 2
    let z = r * r
    var p = SIMD16<Float>(repeating: 1.987_569_150_0e-4)
    p = p * r + 1.398_199_950_7e-3
    p = p * r + 8.333_451_907_3e-3
    p = p * r + 4.166_579_589_4e-2
    p = p * r + 1.666_666_545_9e-1
    p = p * r + 5.000_000_120_1e-1
    p = p * z + r + 1
    let ni = unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000   // the integer n
    let pow2n = unsafeBitCast((ni &+ 127) &<< 23, to: SIMD16<Float>.self)
    return (p * pow2n).replacing(with: 0, where: x .< lo)
}
