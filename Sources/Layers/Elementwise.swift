// Element-wise kernels: SiLU, exact GELU, QuickGELU (CLIP), GEGLU, residual adds, per-channel broadcast adds,
// nearest ×2 upsampling.
// Flat loops are split into a few contiguous ranges (`parallelRanges`); per-channel ones go over batch × channels.
import Foundation
import Tensors

// MARK: - Scalar activations (shared with the fused GroupNorm+SiLU)
//
// Branch-free float code with no libm calls, so the loops that use it auto-vectorise (glibc's expf/erff are
// scalar calls, 3–4× slower here). Accuracy (KernelTests checks against Double on dense grids): exp ≤ 1.2 ulp,
// Φ ≤ 5 ulp for x ≥ −1 and ~1e-6 relative below. PyTorch's own vectorised CPU GELU evaluates erf with
// Abramowitz–Stegun 7.1.26 (absolute error up to 1.5e-7) and forms 1 + erf, so on the left tail this is closer
// to the exact function than torch is; expect ~1e-7 absolute differences from torch, not bit equality.

private let log2e: Float = 1.44269504088896341
private let ln2Hi: Float = 0.693359375            // 9 significant bits: n · ln2Hi is exact for |n| < 2^15
private let ln2Lo: Float = -2.12194440e-4         // ln 2 − ln2Hi
private let roundingMagic: Float = 12582912       // 1.5 · 2^23: adding it rounds to an integer in the low bits

/// e^x for x in [−87, 88] (clamped outside: no infinities, no denormals). Cody–Waite reduction
/// x = n·ln2 + r, |r| ≤ ln2/2, then the degree-7 Taylor polynomial of e^r (truncation < 6e-9 relative);
/// within 1.2 ulp of the exact value over the whole range (checked on a 2M-point grid).
@inline(__always)
func expFloat(_ x: Float) -> Float {
    let xc = Swift.min(Swift.max(x, -87), 88)
    let shifted = xc * log2e + roundingMagic
    let n = shifted - roundingMagic
    let r = (xc - n * ln2Hi) - n * ln2Lo
    var p: Float = 1.0 / 5040
    p = p * r + 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    // 2^n from the integer sitting in the low mantissa bits of `shifted` (n + 127 in 1...254).
    let scale = Float(bitPattern: (shifted.bitPattern &+ 127) &<< 23)
    return p * scale
}

/// Φ(x) and φ(x) = e^(−x²/2) / √(2π) for GELU, from one erfc evaluation: with z = x/√2, a = |z|,
/// erfc(a) = e^(−a²) · t · R(t), t = 1 / (1 + a/2), R a degree-8 least-squares fit of erfcx(a)/t on [0, 9.2]
/// (relative error 5e-8); then Φ = ½·erfc(a) for x < 0 and 1 − ½·erfc(a) otherwise, so neither tail cancels.
/// Float evaluation: Φ within 5 ulp for x ≥ −1; below, the rounding of z² inside e^(−z²) dominates (as in torch).
@inline(__always)
func normalCDFAndPDF(_ x: Float) -> (cdf: Float, pdf: Float) {
    let z = x * sqrtHalf
    let a = Swift.min(Swift.abs(z), 9.2)   // e^(−9.2²) ≈ 2e-37: beyond, Φ is 0 or 1 in float
    let t = 1 / (1 + 0.5 * a)
    var r: Float = -5.980010687e-02
    r = r * t + 2.879689963e-01
    r = r * t - 4.938350194e-01
    r = r * t + 2.851679545e-01
    r = r * t - 3.115103012e-02
    r = r * t + 2.044350336e-01
    r = r * t + 2.427065491e-01
    r = r * t + 2.824235395e-01
    r = r * t + 2.820840348e-01
    let e = expFloat(-(a * a))
    let halfErfc = 0.5 * (e * (t * r))
    return (z < 0 ? halfErfc : 1 - halfErfc, e * invSqrt2Pi)
}

/// σ(x) = 1 / (1 + e^(−x)).
@inline(__always)
func sigmoidFloat(_ x: Float) -> Float { 1 / (1 + expFloat(-x)) }

/// x · σ(x). Ref: torch.nn.functional.silu.
@inline(__always)
func siluScalar(_ x: Float) -> Float { x * sigmoidFloat(x) }

/// d/dx [x · σ(x)] = σ(x) · (1 + x · (1 − σ(x))), as torch's silu_backward.
@inline(__always)
func siluDerivativeScalar(_ x: Float) -> Float {
    let s = sigmoidFloat(x)
    return s * (1 + x * (1 - s))
}

private let sqrtHalf: Float = 0.70710678118654752440        // M_SQRT1_2
private let invSqrt2Pi: Float = 0.39894228040143267794      // M_2_SQRTPI · M_SQRT1_2 · 0.5 = 1/sqrt(2π)

/// x · Φ(x) (exact-erf GELU). Ref: torch.nn.functional.gelu(approximate="none").
@inline(__always)
func geluScalar(_ x: Float) -> Float { x * normalCDFAndPDF(x).cdf }

/// Φ(x) + x · φ(x), as torch's gelu_backward (approximate="none").
@inline(__always)
func geluDerivativeScalar(_ x: Float) -> Float {
    let (cdf, pdf) = normalCDFAndPDF(x)
    return cdf + x * pdf
}

// In-place calls (out == inp) go through one pointer: LLVM's vectoriser guards two-pointer loops with an overlap
// check, and exact aliasing fails it into the scalar loop (in-place SiLU ran ~4× slower per element than the
// vectorised backward). The loops are spelled out in each kernel: a shared helper taking the activation as a
// closure is not specialised through `parallelRanges`, and the activation then costs a call per element.

// MARK: - SiLU

/// out = silu(inp). Overwrites out (may alias inp). Ref: torch.nn.SiLU (diffusers resnet nonlinearity, time embedding).
public func siluForward(out: UnsafeMutablePointer<Float>,   // (n)
                        inp: UnsafePointer<Float>,          // (n)
                        n: Int) {
    if UnsafePointer(out) == inp {
        parallelRanges(n) { r in for i in r { out[i] = siluScalar(out[i]) } }
    } else {
        parallelRanges(n) { r in for i in r { out[i] = siluScalar(inp[i]) } }
    }
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
    if UnsafePointer(out) == inp {
        parallelRanges(n) { r in for i in r { out[i] = geluScalar(out[i]) } }
    } else {
        parallelRanges(n) { r in for i in r { out[i] = geluScalar(inp[i]) } }
    }
}

/// dinp += dout · gelu'(inp). Accumulates.
public func geluBackward(dinp: UnsafeMutablePointer<Float>,  // (n)
                         dout: UnsafePointer<Float>,         // (n)
                         inp: UnsafePointer<Float>,          // (n)
                         n: Int) {
    parallelRanges(n) { r in for i in r { dinp[i] += dout[i] * geluDerivativeScalar(inp[i]) } }
}

// MARK: - QuickGELU (forward only)

/// out = x · σ(1.702 · x). Overwrites out (may alias inp). Ref: transformers activations.QuickGELUActivation
/// (`input * torch.sigmoid(1.702 * input)`), CLIP's `hidden_act: "quick_gelu"`.
public func quickGeluForward(out: UnsafeMutablePointer<Float>,   // (n)
                             inp: UnsafePointer<Float>,          // (n)
                             n: Int) {
    if UnsafePointer(out) == inp {
        parallelRanges(n) { r in for i in r { let x = out[i]; out[i] = x * sigmoidFloat(1.702 * x) } }
    } else {
        parallelRanges(n) { r in for i in r { let x = inp[i]; out[i] = x * sigmoidFloat(1.702 * x) } }
    }
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

/// dinp[:, :D] += dout · gelu(gate); dinp[:, D:] += dout · value · gelu'(gate). Accumulates (`accumulate` false:
/// stores, so dinp need not be initialised).
public func gegluBackward(dinp: UnsafeMutablePointer<Float>,  // (N, 2D)
                          dout: UnsafePointer<Float>,         // (N, D)
                          inp: UnsafePointer<Float>,          // (N, 2D)
                          N: Int, D: Int, accumulate: Bool = true) {
    parallelFor(N, work: N * D * 4) { row in
        let value = inp + row * 2 * D, gate = value + D
        let dValue = dinp + row * 2 * D, dGate = dValue + D, dy = dout + row * D
        if accumulate {
            for d in 0..<D {
                dValue[d] += dy[d] * geluScalar(gate[d])
                dGate[d] += dy[d] * value[d] * geluDerivativeScalar(gate[d])
            }
        } else {
            for d in 0..<D {
                dValue[d] = dy[d] * geluScalar(gate[d])
                dGate[d] = dy[d] * value[d] * geluDerivativeScalar(gate[d])
            }
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

/// Nearest-neighbour resize to (outH, outW), as F.interpolate(size=(outH, outW), mode="nearest"): output row i reads
/// input row min(⌊i·(H/outH)⌋, H−1) with the scale in float32 (PyTorch's nearest_idx; ×2 and ×1 exact). Overwrites out.
/// Ref: diffusers Upsample2D with output_size (UNet2DConditionModel's forward_upsample_size for latents that do not
/// halve exactly), aten/src/ATen/native/UpSample.h nearest_idx.
public func upsampleNearestForward(out: UnsafeMutablePointer<Float>,  // (B, C, outH, outW)
                                   inp: UnsafePointer<Float>,         // (B, C, H, W)
                                   B: Int, C: Int, H: Int, W: Int, outH: Int, outW: Int) {
    func index(_ i: Int, _ n: Int, _ outN: Int) -> Int {
        if outN == n { return i }
        if outN == 2 * n { return i >> 1 }
        let scale = Float(n) / Float(outN)
        return min(Int((Float(i) * scale).rounded(.down)), n - 1)
    }
    let rows = (0..<outH).map { index($0, H, outH) }, cols = (0..<outW).map { index($0, W, outW) }
    parallelFor(B * C, work: B * C * outH * outW) { bc in
        let src = inp + bc * H * W, dst = out + bc * outH * outW
        for i in 0..<outH {
            let s = src + rows[i] * W, d = dst + i * outW
            for j in 0..<outW { d[j] = s[cols[j]] }
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
