// Element-wise kernels: SiLU, exact GELU, GEGLU, residual adds, per-channel broadcast adds, nearest ×2 upsampling.
// Flat loops are split into a few contiguous ranges (`parallelRanges`); per-channel ones go over batch × channels.
import Foundation
import Tensors

// MARK: - Scalar activations (shared with the fused GroupNorm+SiLU)

/// x · σ(x). Ref: torch.nn.functional.silu.
@inline(__always)
func siluScalar(_ x: Float) -> Float { x / (1 + exp(-x)) }

/// d/dx [x · σ(x)] = σ(x) · (1 + x · (1 − σ(x))), as torch's silu_backward.
@inline(__always)
func siluDerivativeScalar(_ x: Float) -> Float {
    let s = 1 / (1 + exp(-x))
    return s * (1 + x * (1 - s))
}

private let sqrtHalf: Float = 0.70710678118654752440        // M_SQRT1_2
private let invSqrt2Pi: Float = 0.39894228040143267794      // M_2_SQRTPI · M_SQRT1_2 · 0.5 = 1/sqrt(2π)

/// x · Φ(x) = x · ½ · (1 + erf(x / √2)). Ref: torch.nn.functional.gelu(approximate="none").
@inline(__always)
func geluScalar(_ x: Float) -> Float { x * 0.5 * (1 + erf(x * sqrtHalf)) }

/// Φ(x) + x · φ(x), as torch's gelu_backward (approximate="none").
@inline(__always)
func geluDerivativeScalar(_ x: Float) -> Float {
    let cdf = 0.5 * (1 + erf(x * sqrtHalf))
    let pdf = exp(-0.5 * x * x) * invSqrt2Pi
    return cdf + x * pdf
}

// MARK: - SiLU

/// out = silu(inp). Overwrites out (may alias inp). Ref: torch.nn.SiLU (diffusers resnet nonlinearity, time embedding).
public func siluForward(out: UnsafeMutablePointer<Float>,   // (n)
                        inp: UnsafePointer<Float>,          // (n)
                        n: Int) {
    parallelRanges(n) { r in for i in r { out[i] = siluScalar(inp[i]) } }
}

/// dinp += dout · silu'(inp). Accumulates.
public func siluBackward(dinp: UnsafeMutablePointer<Float>,  // (n)
                         dout: UnsafePointer<Float>,         // (n)
                         inp: UnsafePointer<Float>,          // (n)
                         n: Int) {
    parallelRanges(n) { r in for i in r { dinp[i] += dout[i] * siluDerivativeScalar(inp[i]) } }
}

// MARK: - GELU (exact, erf)

/// out = gelu(inp) with the exact erf form. Overwrites out (may alias inp). Ref: torch.nn.functional.gelu default.
public func geluForward(out: UnsafeMutablePointer<Float>,   // (n)
                        inp: UnsafePointer<Float>,          // (n)
                        n: Int) {
    parallelRanges(n) { r in for i in r { out[i] = geluScalar(inp[i]) } }
}

/// dinp += dout · gelu'(inp). Accumulates.
public func geluBackward(dinp: UnsafeMutablePointer<Float>,  // (n)
                         dout: UnsafePointer<Float>,         // (n)
                         inp: UnsafePointer<Float>,          // (n)
                         n: Int) {
    parallelRanges(n) { r in for i in r { dinp[i] += dout[i] * geluDerivativeScalar(inp[i]) } }
}

// MARK: - GEGLU

/// out = value · gelu(gate) with value = inp[:, :D], gate = inp[:, D:]. Overwrites out.
/// Ref: diffusers GEGLU.forward (`hidden_states, gate = proj(x).chunk(2, dim=-1)`; `hidden_states * gelu(gate)`).
public func gegluForward(out: UnsafeMutablePointer<Float>,  // (N, D)
                         inp: UnsafePointer<Float>,         // (N, 2D)
                         N: Int, D: Int) {
    parallelFor(N, work: N * D * 4) { row in
        let value = inp + row * 2 * D, gate = value + D, y = out + row * D
        for d in 0..<D { y[d] = value[d] * geluScalar(gate[d]) }
    }
}

/// dinp[:, :D] += dout · gelu(gate); dinp[:, D:] += dout · value · gelu'(gate). Accumulates.
public func gegluBackward(dinp: UnsafeMutablePointer<Float>,  // (N, 2D)
                          dout: UnsafePointer<Float>,         // (N, D)
                          inp: UnsafePointer<Float>,          // (N, 2D)
                          N: Int, D: Int) {
    parallelFor(N, work: N * D * 4) { row in
        let value = inp + row * 2 * D, gate = value + D
        let dValue = dinp + row * 2 * D, dGate = dValue + D, dy = dout + row * D
        for d in 0..<D {
            dValue[d] += dy[d] * geluScalar(gate[d])
            dGate[d] += dy[d] * value[d] * geluDerivativeScalar(gate[d])
        }
    }
}

// MARK: - Residuals and broadcasts

/// out = a + b. Overwrites out (may alias a or b). Backward of a residual sum: add dout into both inputs' gradients
/// with `addInto`.
public func add(out: UnsafeMutablePointer<Float>,   // (n)
                a: UnsafePointer<Float>,            // (n)
                b: UnsafePointer<Float>,            // (n)
                n: Int) {
    parallelRanges(n) { r in for i in r { out[i] = a[i] + b[i] } }
}

/// acc += x (residual connections; gradient accumulation).
public func addInto(_ acc: UnsafeMutablePointer<Float>,  // (n)
                    _ x: UnsafePointer<Float>,           // (n)
                    n: Int) {
    parallelRanges(n) { r in for i in r { acc[i] += x[i] } }
}

/// acc += alpha · x.
public func addInto(_ acc: UnsafeMutablePointer<Float>,  // (n)
                    _ x: UnsafePointer<Float>,           // (n)
                    scaledBy alpha: Float, n: Int) {
    parallelRanges(n) { r in for i in r { acc[i] += alpha * x[i] } }
}

/// x[b, c, :] += v[b, c]: adds a per-(image, channel) vector over all pixels.
/// Ref: diffusers ResnetBlock2D (`hidden_states + time_emb_proj(silu(temb))[:, :, None, None]`).
public func addPerChannel(_ x: UnsafeMutablePointer<Float>,  // (B, C, HW)
                          _ v: UnsafePointer<Float>,         // (B, C)
                          B: Int, C: Int, HW: Int) {
    parallelFor(B * C, work: B * C * HW) { bc in
        let row = x + bc * HW, value = v[bc]
        for i in 0..<HW { row[i] += value }
    }
}

/// dv[b, c] += Σ_hw dout[b, c, hw]: backward of `addPerChannel` for the added vector (the x side is the identity).
public func addPerChannelBackward(dv: UnsafeMutablePointer<Float>,  // (B, C)
                                  dout: UnsafePointer<Float>,       // (B, C, HW)
                                  B: Int, C: Int, HW: Int) {
    parallelFor(B * C, work: B * C * HW) { bc in dv[bc] += Float(sumDouble(dout + bc * HW, HW)) }
}

// MARK: - Nearest ×2 upsampling

/// out[b, c, 2h + i, 2w + j] = inp[b, c, h, w]. Overwrites out.
/// Ref: F.interpolate(scale_factor=2.0, mode="nearest") in diffusers Upsample2D.
public func upsampleNearest2xForward(out: UnsafeMutablePointer<Float>,  // (B, C, 2H, 2W)
                                     inp: UnsafePointer<Float>,         // (B, C, H, W)
                                     B: Int, C: Int, H: Int, W: Int) {
    let W2 = 2 * W
    parallelFor(B * C, work: B * C * H * W * 4) { bc in
        let src = inp + bc * H * W, dst = out + bc * 4 * H * W
        for h in 0..<H {
            let s = src + h * W, d0 = dst + 2 * h * W2, d1 = d0 + W2
            for w in 0..<W { let v = s[w]; d0[2 * w] = v; d0[2 * w + 1] = v }
            d1.update(from: d0, count: W2)
        }
    }
}

/// dinp[b, c, h, w] += Σ of the 4 output pixels dout[b, c, 2h + i, 2w + j] it was copied to. Accumulates.
public func upsampleNearest2xBackward(dinp: UnsafeMutablePointer<Float>,  // (B, C, H, W)
                                      dout: UnsafePointer<Float>,         // (B, C, 2H, 2W)
                                      B: Int, C: Int, H: Int, W: Int) {
    let W2 = 2 * W
    parallelFor(B * C, work: B * C * H * W * 4) { bc in
        let dst = dinp + bc * H * W, src = dout + bc * 4 * H * W
        for h in 0..<H {
            let d = dst + h * W, s0 = src + 2 * h * W2, s1 = s0 + W2
            for w in 0..<W { d[w] += (s0[2 * w] + s0[2 * w + 1]) + (s1[2 * w] + s1[2 * w + 1]) }
        }
    }
}
