// Fully connected layers and their LoRA adapters, row-major, through sgemm.
// `linearBackwardInput` gives the input gradient; `loraBackward` accumulates LoRA's dA and dB as well, and
// `linearBackwardWeight` the base weight's and bias's gradients when every parameter is trained (`--train unet`). The frozen weight may be bf16 (mixed precision, `WeightMatrix`):
// its GEMMs then go through BF16.gemm with fp32 sums; LoRA's A and B and all activations stay fp32.
import Tensors

// MARK: - Linear

/// out = inp · weightᵀ + bias. Overwrites out.
/// Ref: torch.nn.Linear (diffusers to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2, time_embedding.linear_1/2,
/// time_emb_proj, proj_in/proj_out with use_linear_projection).
public func linearForward(out: UnsafeMutablePointer<Float>,   // (N, O)
                          inp: UnsafePointer<Float>,          // (N, I)
                          weight: WeightMatrix,               // (O, I)
                          bias: UnsafePointer<Float>?,        // (O)
                          N: Int, I: Int, O: Int) {
    if let bias {
        // Start from the bias and accumulate (beta = 1): saves OpenBLAS's separate beta = 0 pass over out.
        parallelFor(N, work: N * O) { row in (out + row * O).update(from: bias, count: O) }
        BLAS.gemm(transB: true, m: N, n: O, k: I, a: inp, lda: I, b: weight, ldb: I, beta: 1, c: out, ldc: O)
    } else {
        BLAS.gemm(transB: true, m: N, n: O, k: I, a: inp, lda: I, b: weight, ldb: I, beta: 0, c: out, ldc: O)
    }
}

/// `linearForward` with an fp32 weight (O, I).
public func linearForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                          bias: UnsafePointer<Float>?, N: Int, I: Int, O: Int) {
    linearForward(out: out, inp: inp, weight: .f32(weight), bias: bias, N: N, I: I, O: O)
}

/// dinp += dout · weight. Accumulates (`accumulate` false: dinp = dout · weight, dinp need not be initialised).
/// (Weight and bias gradients: `linearBackwardWeight`.)
public func linearBackwardInput(dinp: UnsafeMutablePointer<Float>,   // (N, I)
                                dout: UnsafePointer<Float>,          // (N, O)
                                weight: WeightMatrix,                // (O, I)
                                N: Int, I: Int, O: Int, accumulate: Bool = true) {
    BLAS.gemm(m: N, n: I, k: O, a: dout, lda: O, b: weight, ldb: I, beta: accumulate ? 1 : 0, c: dinp, ldc: I)
}

/// `linearBackwardInput` with an fp32 weight (O, I).
public func linearBackwardInput(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                N: Int, I: Int, O: Int) {
    linearBackwardInput(dinp: dinp, dout: dout, weight: .f32(weight), N: N, I: I, O: O)
}

// MARK: - LoRA

/// out += s · (inp · Aᵀ) · Bᵀ, caching xa = inp · Aᵀ (unscaled) for the backward pass.
/// `scale` is the full multiplier s = lora_alpha / r (times any user scale), as peft's `scaling[adapter]`.
/// Ref: peft LoraLayer Linear.forward (`result + lora_B(lora_A(dropout(x))) * scaling`, dropout 0);
/// A = lora_A.weight ("down", (r, I)), B = lora_B.weight ("up", (O, r)).
public func loraForward(out: UnsafeMutablePointer<Float>,   // (N, O) accumulated into
                        xa: UnsafeMutablePointer<Float>,    // (N, r) overwritten: inp · Aᵀ
                        inp: UnsafePointer<Float>,          // (N, I)
                        a: UnsafePointer<Float>,            // (r, I)
                        b: UnsafePointer<Float>,            // (O, r)
                        N: Int, I: Int, O: Int, rank r: Int, scale s: Float) {
    BLAS.sgemm(transB: true, m: N, n: r, k: I, a: inp, lda: I, b: a, ldb: I, beta: 0, c: xa, ldc: r)
    BLAS.sgemm(transB: true, m: N, n: O, k: r, alpha: s, a: xa, lda: r, b: b, ldb: r, beta: 1, c: out, ldc: O)
}

/// Floats of workspace `loraBackward` needs: d(xa), (N, r).
public func loraWorkspaceSize(N: Int, rank r: Int) -> Int { N * r }

/// Backward of `loraForward`; accumulates into dinp, da and db (the caller zeroes them):
/// dB += s · doutᵀ · xa; d(xa) = s · dout · B; dA += d(xa)ᵀ · inp; dinp += d(xa) · A.
/// `dinp` may be nil when the input needs no gradient (e.g. encoder_hidden_states into to_k / to_v).
/// - Parameter workspace: at least `loraWorkspaceSize(N:rank:)` floats.
public func loraBackward(dinp: UnsafeMutablePointer<Float>?,  // (N, I)
                         da: UnsafeMutablePointer<Float>,     // (r, I)
                         db: UnsafeMutablePointer<Float>,     // (O, r)
                         dout: UnsafePointer<Float>,          // (N, O)
                         inp: UnsafePointer<Float>,           // (N, I)
                         xa: UnsafePointer<Float>,            // (N, r)
                         a: UnsafePointer<Float>,             // (r, I)
                         b: UnsafePointer<Float>,             // (O, r)
                         N: Int, I: Int, O: Int, rank r: Int, scale s: Float,
                         workspace: UnsafeMutablePointer<Float>) {
    let dxa = workspace  // (N, r)
    // dB (O, r) += s · doutᵀ (O, N) · xa (N, r)
    BLAS.sgemm(transA: true, m: O, n: r, k: N, alpha: s, a: dout, lda: O, b: xa, ldb: r, beta: 1, c: db, ldc: r)
    // d(xa) (N, r) = s · dout (N, O) · B (O, r)
    BLAS.sgemm(m: N, n: r, k: O, alpha: s, a: dout, lda: O, b: b, ldb: r, beta: 0, c: dxa, ldc: r)
    // dA (r, I) += d(xa)ᵀ (r, N) · inp (N, I)
    BLAS.sgemm(transA: true, m: r, n: I, k: N, a: dxa, lda: r, b: inp, ldb: I, beta: 1, c: da, ldc: I)
    // dinp (N, I) += d(xa) (N, r) · A (r, I)
    if let dinp {
        BLAS.sgemm(m: N, n: I, k: r, a: dxa, lda: r, b: a, ldb: I, beta: 1, c: dinp, ldc: I)
    }
}

// MARK: - Weight gradients (full-parameter training)

/// dweight += doutᵀ · inp and dbias += Σ_rows dout: the parameter gradients of `linearForward`. Accumulates; the
/// caller zeroes them. Used when the base weights are trained (`hgdpo train --train unet`), fp32 only.
public func linearBackwardWeight(dweight: UnsafeMutablePointer<Float>,  // (O, I)
                                 dbias: UnsafeMutablePointer<Float>?,   // (O)
                                 dout: UnsafePointer<Float>,            // (N, O)
                                 inp: UnsafePointer<Float>,             // (N, I)
                                 N: Int, I: Int, O: Int) {
    // dW (O, I) += doutᵀ (O, N) · inp (N, I)
    BLAS.sgemm(transA: true, m: O, n: I, k: N, a: dout, lda: O, b: inp, ldb: I, beta: 1, c: dweight, ldc: I)
    guard let dbias else { return }
    // Column sums, a block of columns per task, rows in order (the same bits for any thread count).
    let block = 64
    parallelFor((O + block - 1) / block, work: N * O) { j in
        let o0 = j * block, o1 = min(O, o0 + block)
        for n in 0..<N {
            let row = dout + n * O
            for o in o0..<o1 { dbias[o] += row[o] }
        }
    }
}
