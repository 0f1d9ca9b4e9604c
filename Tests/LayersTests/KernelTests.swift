// Kernel pairs of `Layers` against naive references written here in Double loops.
//
// Forward: kernel (Float) vs a direct Double implementation of the PyTorch definition.
// Backward: kernel vs central finite differences of L = Σ out · R (R random) taken on the Double reference
// (step 1e-5, so the differences are exact to ~1e-9 and the tolerance is the kernel's Float rounding alone).
// Every backward is run twice into one zeroed buffer, which must then hold exactly twice the gradient (accumulation).
// Tolerances, unless a test says otherwise: forward rtol 1e-5 / atol 1e-5, gradients rtol 1e-4 / atol 1e-5
// (inputs O(1), so these are a few hundred Float ulps at most). PyTorch parity itself is checked by fixtures elsewhere.
import Foundation
import XCTest
@testable import Layers
import Tensors
import TestSupport

// MARK: - Helpers

/// A Float buffer owned by a test, with the pointer kernels take.
private final class Buf {
    let p: UnsafeMutablePointer<Float>
    let count: Int
    init(_ values: [Float]) {
        count = values.count
        p = .allocate(capacity: max(1, count))
        p.initialize(repeating: 0, count: max(1, count))
        for i in 0..<count { p[i] = values[i] }
    }
    convenience init(zeros n: Int) { self.init([Float](repeating: 0, count: n)) }
    convenience init(_ values: [Double]) { self.init(values.map { Float($0) }) }
    deinit { p.deallocate() }
    var c: UnsafePointer<Float> { UnsafePointer(p) }
    var array: [Float] { Array(UnsafeBufferPointer(start: p, count: count)) }
    var doubles: [Double] { array.map(Double.init) }
}

/// Deterministic uniform numbers in [lo, hi) (SplitMix64).
private struct TestRNG {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(1 << 53)
    }
    /// n values in [lo, hi), already rounded to Float so kernel and reference see the same inputs.
    mutating func values(_ n: Int, _ lo: Double = -1, _ hi: Double = 1) -> [Double] {
        (0..<n).map { _ in Double(Float(lo + (hi - lo) * next())) }
    }
}

private func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }

/// ∂/∂x Σ f(x) · r by central differences.
private func numericalGradient(_ x: [Double], _ r: [Double], eps: Double = 1e-5,
                               _ f: ([Double]) -> [Double]) -> [Double] {
    var x = x
    return (0..<x.count).map { i in
        let x0 = x[i]
        x[i] = x0 + eps; let plus = dot(f(x), r)
        x[i] = x0 - eps; let minus = dot(f(x), r)
        x[i] = x0
        return (plus - minus) / (2 * eps)
    }
}

/// Runs `backward` twice into one zeroed gradient buffer of `count` floats: after the first call it must match
/// `expected`, after the second `2 · expected` (backward accumulates).
private func checkGradient(_ label: String, expected: [Double], rtol: Double = 1e-4, atol: Double = 1e-5,
                           file: StaticString = #filePath, line: UInt = #line,
                           _ backward: (UnsafeMutablePointer<Float>) -> Void) {
    let grad = Buf(zeros: expected.count)
    backward(grad.p)
    assertClose(grad.doubles, expected, rtol: rtol, atol: atol, label: label, file: file, line: line)
    backward(grad.p)
    assertClose(grad.doubles, expected.map { 2 * $0 }, rtol: rtol, atol: 2 * atol, label: label + " (accumulated twice)",
                file: file, line: line)
}

// MARK: - Naive references (Double)

private func conv2dReference(_ x: [Double], _ w: [Double], _ bias: [Double]?, B: Int, Cin: Int, H: Int, W: Int,
                             Cout: Int, K: Int, s: Int, p: Int) -> [Double] {
    let Ho = (H + 2 * p - K) / s + 1, Wo = (W + 2 * p - K) / s + 1
    var out = [Double](repeating: 0, count: B * Cout * Ho * Wo)
    for b in 0..<B { for o in 0..<Cout { for oh in 0..<Ho { for ow in 0..<Wo {
        var acc = bias?[o] ?? 0
        for c in 0..<Cin { for kh in 0..<K { for kw in 0..<K {
            let ih = oh * s - p + kh, iw = ow * s - p + kw
            if ih >= 0 && ih < H && iw >= 0 && iw < W {
                acc += w[((o * Cin + c) * K + kh) * K + kw] * x[((b * Cin + c) * H + ih) * W + iw]
            }
        } } }
        out[((b * Cout + o) * Ho + oh) * Wo + ow] = acc
    } } } }
    return out
}

/// The adjoint of `conv2dReference` in x (for shapes too large for finite differences).
private func conv2dTransposeReference(_ dout: [Double], _ w: [Double], B: Int, Cin: Int, H: Int, W: Int,
                                      Cout: Int, K: Int, s: Int, p: Int) -> [Double] {
    let Ho = (H + 2 * p - K) / s + 1, Wo = (W + 2 * p - K) / s + 1
    var dx = [Double](repeating: 0, count: B * Cin * H * W)
    for b in 0..<B { for o in 0..<Cout { for oh in 0..<Ho { for ow in 0..<Wo {
        let g = dout[((b * Cout + o) * Ho + oh) * Wo + ow]
        for c in 0..<Cin { for kh in 0..<K { for kw in 0..<K {
            let ih = oh * s - p + kh, iw = ow * s - p + kw
            if ih >= 0 && ih < H && iw >= 0 && iw < W {
                dx[((b * Cin + c) * H + ih) * W + iw] += w[((o * Cin + c) * K + kh) * K + kw] * g
            }
        } } }
    } } } }
    return dx
}

/// GroupNorm over (B, C, HW); returns (out, mean (B, G), rstd (B, G)).
private func groupNormReference(_ x: [Double], _ w: [Double], _ bias: [Double], B: Int, C: Int, HW: Int, G: Int,
                                eps: Double) -> (out: [Double], mean: [Double], rstd: [Double]) {
    let Cg = C / G, n = Cg * HW
    var out = [Double](repeating: 0, count: x.count), means: [Double] = [], rstds: [Double] = []
    for b in 0..<B { for g in 0..<G {
        let base = (b * C + g * Cg) * HW
        let mean = (0..<n).reduce(0.0) { $0 + x[base + $1] } / Double(n)
        let variance = (0..<n).reduce(0.0) { $0 + (x[base + $1] - mean) * (x[base + $1] - mean) } / Double(n)
        let rstd = 1 / (variance + eps).squareRoot()
        means.append(mean); rstds.append(rstd)
        for i in 0..<n {
            let c = g * Cg + i / HW
            out[base + i] = (x[base + i] - mean) * rstd * w[c] + bias[c]
        }
    } }
    return (out, means, rstds)
}

private func siluReference(_ x: Double) -> Double { x / (1 + exp(-x)) }
private func geluReference(_ x: Double) -> Double { 0.5 * x * (1 + erf(x / 2.0.squareRoot())) }

/// out (N, O) = x (N, I) · wᵀ + bias.
private func linearReference(_ x: [Double], _ w: [Double], _ bias: [Double]?, N: Int, I: Int, O: Int) -> [Double] {
    var out = [Double](repeating: 0, count: N * O)
    for n in 0..<N { for o in 0..<O {
        var acc = bias?[o] ?? 0
        for i in 0..<I { acc += x[n * I + i] * w[o * I + i] }
        out[n * O + o] = acc
    } }
    return out
}

/// out[b, t, c] = x[b, c, t].
private func transposeReference(_ x: [Double], B: Int, rows: Int, cols: Int) -> [Double] {
    var out = x
    for b in 0..<B { for r in 0..<rows { for c in 0..<cols {
        out[(b * cols + c) * rows + r] = x[(b * rows + r) * cols + c]
    } } }
    return out
}

// MARK: - Tests

final class KernelTests: XCTestCase {

    // MARK: Conv2D

    /// (B, Cin, H, W, Cout, K, stride, padding), covering H ≠ W, odd sizes, stride 2 with odd input, no padding,
    /// the 1x1 GEMM-only path, a strided 1x1 (im2col path), K = 5, both backward GEMM orientations, and small
    /// images of several samples convolved in one GEMM.
    private let convCases: [(Int, Int, Int, Int, Int, Int, Int, Int)] = [
        (2, 3, 7, 5, 4, 3, 1, 1),
        (1, 5, 9, 6, 3, 3, 2, 1),
        (2, 3, 7, 7, 2, 3, 2, 1),
        (1, 2, 5, 6, 3, 3, 1, 0),
        (2, 6, 4, 5, 7, 1, 1, 0),
        (1, 4, 5, 7, 3, 1, 2, 0),
        (1, 2, 6, 5, 2, 5, 1, 2),
        (1, 17, 3, 2, 19, 3, 1, 1),
        (1, 2, 17, 19, 3, 3, 1, 1),   // > 256 output pixels: row-major backward GEMM (smaller ones use dcolᵀ)
        (1, 1, 40, 27, 2, 3, 2, 1),
        (3, 4, 6, 5, 3, 3, 2, 1),     // B > 1 and small images: the batched path (several images per GEMM)
        (2, 2, 17, 19, 3, 3, 1, 1),   // B > 1 and > 256 output pixels: one image per GEMM
    ]

    func testConv2DForwardAndBackward() {
        var rng = TestRNG(1)
        for (B, Cin, H, W, Cout, K, s, p) in convCases {
            let label = "conv B\(B) Cin\(Cin) \(H)x\(W) Cout\(Cout) K\(K) s\(s) p\(p)"
            let Ho = conv2dOutputSize(H, kernel: K, stride: s, padding: p)
            let Wo = conv2dOutputSize(W, kernel: K, stride: s, padding: p)
            let x = rng.values(B * Cin * H * W), w = rng.values(Cout * Cin * K * K), bias = rng.values(Cout)
            let r = rng.values(B * Cout * Ho * Wo)
            let ws = Buf(zeros: conv2dWorkspaceSize(Cin: Cin, H: H, W: W, kernel: K, stride: s, padding: p))
            let xb = Buf(x), wb = Buf(w), bb = Buf(bias), rb = Buf(r)
            for withBias in [true, false] {
                let out = Buf(Array(repeating: Float.nan, count: B * Cout * Ho * Wo))  // forward must overwrite
                conv2dForward(out: out.p, inp: xb.c, weight: wb.c, bias: withBias ? bb.c : nil, B: B, Cin: Cin, H: H,
                              W: W, Cout: Cout, kernel: K, stride: s, padding: Conv2DPadding(p), workspace: ws.p)
                let expected = conv2dReference(x, w, withBias ? bias : nil, B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                                               K: K, s: s, p: p)
                assertClose(out.doubles, expected, rtol: 1e-5, atol: 1e-5, label: label + " forward bias \(withBias)")
            }
            let fd = numericalGradient(x, r) {
                conv2dReference($0, w, bias, B: B, Cin: Cin, H: H, W: W, Cout: Cout, K: K, s: s, p: p)
            }
            checkGradient(label + " dinp", expected: fd) {
                conv2dBackwardInput(dinp: $0, dout: rb.c, weight: wb.c, B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                                    kernel: K, stride: s, padding: Conv2DPadding(p), workspace: ws.p)
            }
        }
    }

    /// Enough input channels that the im2col buffer is split into several tiles of output rows (the last one
    /// partial); too large for finite differences, so the backward is checked against the exact adjoint.
    func testConv2DTiledColumns() {
        var rng = TestRNG(2)
        for (B, Cin, H, W, Cout, s) in [(2, 460, 24, 23, 3, 1), (1, 470, 47, 45, 2, 2)] {
            let K = 3, p = 1
            let label = "tiled conv Cin\(Cin) \(H)x\(W) s\(s)"
            let Ho = conv2dOutputSize(H, kernel: K, stride: s, padding: p)
            let Wo = conv2dOutputSize(W, kernel: K, stride: s, padding: p)
            let tileFloats = conv2dWorkspaceSize(Cin: Cin, H: H, W: W, kernel: K, stride: s, padding: p)
            XCTAssertLessThan(tileFloats, Cin * K * K * Ho * Wo, "\(label): expected more than one tile")
            let x = rng.values(B * Cin * H * W), w = rng.values(Cout * Cin * K * K), bias = rng.values(Cout)
            let r = rng.values(B * Cout * Ho * Wo)
            let ws = Buf(zeros: tileFloats), out = Buf(zeros: B * Cout * Ho * Wo)
            let xb = Buf(x), wb = Buf(w), bb = Buf(bias), rb = Buf(r)
            conv2dForward(out: out.p, inp: xb.c, weight: wb.c, bias: bb.c, B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                          kernel: K, stride: s, padding: Conv2DPadding(p), workspace: ws.p)
            let expected = conv2dReference(x, w, bias, B: B, Cin: Cin, H: H, W: W, Cout: Cout, K: K, s: s, p: p)
            assertClose(out.doubles, expected, rtol: 1e-4, atol: 1e-4, label: label + " forward")
            let adjoint = conv2dTransposeReference(r, w, B: B, Cin: Cin, H: H, W: W, Cout: Cout, K: K, s: s, p: p)
            checkGradient(label + " dinp", expected: adjoint) {
                conv2dBackwardInput(dinp: $0, dout: rb.c, weight: wb.c, B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                                    kernel: K, stride: s, padding: Conv2DPadding(p), workspace: ws.p)
            }
        }
    }

    /// The implicit-GEMM path (CKernels/conv_avx512.c: stride 1, output width a multiple of 16 or 4 and 8 with whole
    /// vectors per image, AVX-512F): output channels not a multiple of 8, K = Cin·k·k above one 192-row block,
    /// several 48-pixel panels and a partial one, panels across images, 1x1, 5x5, no padding, per-side padding; forward against the Double reference, the input gradient against
    /// the exact adjoint. On CPUs without AVX-512F the im2col path runs the same checks.
    func testConv2DImplicitGEMM() {
        var rng = TestRNG(4)
        let cases: [(B: Int, Cin: Int, H: Int, W: Int, Cout: Int, K: Int, pad: Conv2DPadding)] = [
            (2, 30, 8, 16, 11, 3, Conv2DPadding(1)),
            (1, 21, 4, 48, 17, 3, Conv2DPadding(1)),
            (2, 40, 3, 32, 9, 1, Conv2DPadding(0)),
            (1, 3, 6, 16, 2, 5, Conv2DPadding(2)),
            (1, 2, 5, 18, 3, 3, Conv2DPadding(0)),                                  // forward only: dinp is 18 wide
            (1, 2, 5, 14, 2, 3, Conv2DPadding(top: 2, bottom: 0, left: 1, right: 3)),      // forward only
            (1, 2, 5, 16, 2, 3, Conv2DPadding(top: 0, bottom: 2, left: 2, right: 0)),
            (3, 8, 2, 16, 1, 3, Conv2DPadding(1)),
            (5, 20, 4, 4, 10, 3, Conv2DPadding(1)),     // 4x4 images: a vector is 4 rows, panels span images
            (3, 23, 8, 8, 9, 3, Conv2DPadding(1)),      // 8x8: 2 rows per vector, 192 pixels, K = 207 (two blocks)
            (2, 6, 2, 8, 5, 1, Conv2DPadding(0)),
            (1, 2, 32, 32, 1100, 1, Conv2DPadding(0)),  // 1100 channels: several pixel blocks of ~1 MB per item
        ]
        for (B, Cin, H, W, Cout, K, pad) in cases {
            let label = "implicit conv B\(B) Cin\(Cin) \(H)x\(W) Cout\(Cout) K\(K) pad \(pad)"
            let Hp = H + pad.top + pad.bottom, Wp = W + pad.left + pad.right
            let (Ho, Wo) = pad.outputSize(H: H, W: W, kernel: K, stride: 1)
            if conv2dImplicitAvailable {
                XCTAssertTrue(conv2dImplicitGEMM(stride: 1, kernel: K, Ho: Ho, Wo: Wo), label)
            }
            func padded(_ x: [Double], C: Int) -> [Double] {
                var out = [Double](repeating: 0, count: B * C * Hp * Wp)
                for bc in 0..<(B * C) { for h in 0..<H { for w in 0..<W {
                    out[(bc * Hp + h + pad.top) * Wp + w + pad.left] = x[(bc * H + h) * W + w]
                } } }
                return out
            }
            let x = rng.values(B * Cin * H * W), w = rng.values(Cout * Cin * K * K), bias = rng.values(Cout)
            let r = rng.values(B * Cout * Ho * Wo)
            let ws = Buf(zeros: conv2dWorkspaceSize(Cin: Cin, H: H, W: W, kernel: K, stride: 1, padding: pad))
            let xb = Buf(x), wb = Buf(w), bb = Buf(bias), rb = Buf(r)
            let out = Buf(Array(repeating: Float.nan, count: B * Cout * Ho * Wo))
            conv2dForward(out: out.p, inp: xb.c, weight: .f32(wb.c), bias: bb.c, B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                          kernel: K, stride: 1, padding: pad, workspace: ws.p)
            let expected = conv2dReference(padded(x, C: Cin), w, bias, B: B, Cin: Cin, H: Hp, W: Wp, Cout: Cout, K: K,
                                           s: 1, p: 0)
            assertClose(out.doubles, expected, rtol: 1e-5, atol: 1e-5, label: label + " forward")
            // The adjoint of "pad, then convolve": the transpose of the unpadded convolution, cropped.
            let full = conv2dTransposeReference(r, w, B: B, Cin: Cin, H: Hp, W: Wp, Cout: Cout, K: K, s: 1, p: 0)
            var adjoint = [Double](repeating: 0, count: B * Cin * H * W)
            for bc in 0..<(B * Cin) { for h in 0..<H { for ww in 0..<W {
                adjoint[(bc * H + h) * W + ww] = full[(bc * Hp + h + pad.top) * Wp + ww + pad.left]
            } } }
            checkGradient(label + " dinp", expected: adjoint) {
                conv2dBackwardInput(dinp: $0, dout: rb.c, weight: .f32(wb.c), B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                                    kernel: K, stride: 1, padding: pad, workspace: ws.p)
            }
        }
    }

    /// Per-side padding against F.pad (done explicitly here) followed by an unpadded convolution: diffusers' VAE
    /// Downsample2D (pad right and bottom by 1, 3x3 stride 2) on even and odd sizes, and an uneven padding at stride 1.
    func testConv2DPerSidePadding() {
        var rng = TestRNG(3)
        let cases: [(B: Int, Cin: Int, H: Int, W: Int, Cout: Int, K: Int, s: Int, pad: Conv2DPadding)] = [
            (2, 3, 8, 6, 4, 3, 2, Conv2DPadding(top: 0, bottom: 1, left: 0, right: 1)),
            (1, 2, 7, 5, 3, 3, 2, Conv2DPadding(top: 0, bottom: 1, left: 0, right: 1)),
            (1, 2, 5, 4, 2, 3, 1, Conv2DPadding(top: 2, bottom: 0, left: 1, right: 3)),
        ]
        for (B, Cin, H, W, Cout, K, s, pad) in cases {
            let label = "conv \(H)x\(W) s\(s) pad \(pad)"
            let Hp = H + pad.top + pad.bottom, Wp = W + pad.left + pad.right
            func padded(_ x: [Double]) -> [Double] {
                var out = [Double](repeating: 0, count: B * Cin * Hp * Wp)
                for bc in 0..<(B * Cin) { for h in 0..<H { for w in 0..<W {
                    out[(bc * Hp + h + pad.top) * Wp + w + pad.left] = x[(bc * H + h) * W + w]
                } } }
                return out
            }
            func reference(_ x: [Double], _ w: [Double], _ bias: [Double]) -> [Double] {
                conv2dReference(padded(x), w, bias, B: B, Cin: Cin, H: Hp, W: Wp, Cout: Cout, K: K, s: s, p: 0)
            }
            let (Ho, Wo) = pad.outputSize(H: H, W: W, kernel: K, stride: s)
            XCTAssertEqual(Ho, (Hp - K) / s + 1)
            XCTAssertEqual(Wo, (Wp - K) / s + 1)
            let x = rng.values(B * Cin * H * W), w = rng.values(Cout * Cin * K * K), bias = rng.values(Cout)
            let r = rng.values(B * Cout * Ho * Wo)
            let ws = Buf(zeros: conv2dWorkspaceSize(Cin: Cin, H: H, W: W, kernel: K, stride: s, padding: pad))
            let xb = Buf(x), wb = Buf(w), bb = Buf(bias), rb = Buf(r)
            let out = Buf(Array(repeating: Float.nan, count: B * Cout * Ho * Wo))
            conv2dForward(out: out.p, inp: xb.c, weight: wb.c, bias: bb.c, B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                          kernel: K, stride: s, padding: pad, workspace: ws.p)
            assertClose(out.doubles, reference(x, w, bias), rtol: 1e-5, atol: 1e-5, label: label + " forward")
            let fd = numericalGradient(x, r) { reference($0, w, bias) }
            checkGradient(label + " dinp", expected: fd) {
                conv2dBackwardInput(dinp: $0, dout: rb.c, weight: wb.c, B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                                    kernel: K, stride: s, padding: pad, workspace: ws.p)
            }
        }
    }

    func testConv2DOutputSizeMatchesTorch() {
        XCTAssertEqual(conv2dOutputSize(64, kernel: 3, stride: 2, padding: 1), 32)
        XCTAssertEqual(conv2dOutputSize(7, kernel: 3, stride: 2, padding: 1), 4)   // floor((7 + 2 − 3) / 2) + 1
        XCTAssertEqual(conv2dOutputSize(6, kernel: 3, stride: 2, padding: 0), 2)
        XCTAssertEqual(conv2dWorkspaceSize(Cin: 320, H: 64, W: 64, kernel: 1, stride: 1, padding: 0), 0)
    }

    // MARK: GroupNorm

    /// (B, C, HW, G): odd sizes, one group, one channel per group, and groups longer than a reduction block.
    private let groupNormCases: [(Int, Int, Int, Int)] = [(2, 6, 7, 3), (1, 5, 9, 1), (2, 5, 3, 5), (1, 3, 100, 1)]

    func testGroupNormForwardAndBackward() {
        var rng = TestRNG(3)
        for (B, C, HW, G) in groupNormCases {
            let label = "groupNorm B\(B) C\(C) HW\(HW) G\(G)"
            // An offset mean (+2) checks the variance is computed centred.
            let x = rng.values(B * C * HW, 1, 3), w = rng.values(C, 0.5, 1.5), bias = rng.values(C)
            let r = rng.values(B * C * HW)
            let xb = Buf(x), wb = Buf(w), bb = Buf(bias), rb = Buf(r)
            let out = Buf(zeros: B * C * HW), mean = Buf(zeros: B * G), rstd = Buf(zeros: B * G)
            groupNormForward(out: out.p, mean: mean.p, rstd: rstd.p, inp: xb.c, weight: wb.c, bias: bb.c,
                             B: B, C: C, HW: HW, groups: G, eps: 1e-5)
            let ref = groupNormReference(x, w, bias, B: B, C: C, HW: HW, G: G, eps: 1e-5)
            assertClose(out.doubles, ref.out, rtol: 1e-5, atol: 1e-5, label: label + " out")
            assertClose(mean.doubles, ref.mean, rtol: 1e-6, atol: 1e-7, label: label + " mean")
            assertClose(rstd.doubles, ref.rstd, rtol: 1e-5, atol: 1e-6, label: label + " rstd")
            let fd = numericalGradient(x, r) { groupNormReference($0, w, bias, B: B, C: C, HW: HW, G: G, eps: 1e-5).out }
            checkGradient(label + " dinp", expected: fd) {
                groupNormBackward(dinp: $0, dout: rb.c, inp: xb.c, mean: mean.c, rstd: rstd.c, weight: wb.c,
                                  B: B, C: C, HW: HW, groups: G)
            }
        }
    }

    func testGroupNormSiLUForwardAndBackward() {
        var rng = TestRNG(4)
        for (B, C, HW, G) in groupNormCases {
            let label = "groupNormSiLU B\(B) C\(C) HW\(HW) G\(G)"
            let x = rng.values(B * C * HW, -2, 1), w = rng.values(C, 0.5, 2), bias = rng.values(C)
            let r = rng.values(B * C * HW)
            let xb = Buf(x), wb = Buf(w), bb = Buf(bias), rb = Buf(r)
            let out = Buf(zeros: B * C * HW), mean = Buf(zeros: B * G), rstd = Buf(zeros: B * G)
            groupNormSiLUForward(out: out.p, mean: mean.p, rstd: rstd.p, inp: xb.c, weight: wb.c, bias: bb.c,
                                 B: B, C: C, HW: HW, groups: G, eps: 1e-6)
            let reference: ([Double]) -> [Double] = {
                groupNormReference($0, w, bias, B: B, C: C, HW: HW, G: G, eps: 1e-6).out.map(siluReference)
            }
            let ref = groupNormReference(x, w, bias, B: B, C: C, HW: HW, G: G, eps: 1e-6)
            assertClose(out.doubles, reference(x), rtol: 1e-5, atol: 1e-5, label: label + " out")
            assertClose(mean.doubles, ref.mean, rtol: 1e-6, atol: 1e-7, label: label + " mean")
            assertClose(rstd.doubles, ref.rstd, rtol: 1e-5, atol: 1e-6, label: label + " rstd")
            checkGradient(label + " dinp", expected: numericalGradient(x, r, reference)) {
                groupNormSiLUBackward(dinp: $0, dout: rb.c, inp: xb.c, mean: mean.c, rstd: rstd.c, weight: wb.c,
                                      bias: bb.c, B: B, C: C, HW: HW, groups: G)
            }
        }
    }

    /// The fused kernel equals GroupNorm then SiLU, forward and backward, at U-Net-like sizes.
    func testGroupNormSiLUMatchesUnfused() {
        var rng = TestRNG(5)
        let B = 2, C = 64, HW = 33, G = 32
        let xb = Buf(rng.values(B * C * HW, -1, 2)), wb = Buf(rng.values(C)), bb = Buf(rng.values(C))
        let rb = Buf(rng.values(B * C * HW))
        let fused = Buf(zeros: B * C * HW), norm = Buf(zeros: B * C * HW), act = Buf(zeros: B * C * HW)
        let mean = Buf(zeros: B * G), rstd = Buf(zeros: B * G)
        groupNormSiLUForward(out: fused.p, mean: mean.p, rstd: rstd.p, inp: xb.c, weight: wb.c, bias: bb.c,
                             B: B, C: C, HW: HW, groups: G, eps: 1e-5)
        groupNormForward(out: norm.p, mean: mean.p, rstd: rstd.p, inp: xb.c, weight: wb.c, bias: bb.c,
                         B: B, C: C, HW: HW, groups: G, eps: 1e-5)
        siluForward(out: act.p, inp: norm.c, n: B * C * HW)
        assertClose(fused.array, act.array, rtol: 1e-6, atol: 1e-7, label: "fused vs unfused forward")
        let dNorm = Buf(zeros: B * C * HW), dUnfused = Buf(zeros: B * C * HW), dFused = Buf(zeros: B * C * HW)
        siluBackward(dinp: dNorm.p, dout: rb.c, inp: norm.c, n: B * C * HW)
        groupNormBackward(dinp: dUnfused.p, dout: dNorm.c, inp: xb.c, mean: mean.c, rstd: rstd.c, weight: wb.c,
                          B: B, C: C, HW: HW, groups: G)
        groupNormSiLUBackward(dinp: dFused.p, dout: rb.c, inp: xb.c, mean: mean.c, rstd: rstd.c, weight: wb.c,
                              bias: bb.c, B: B, C: C, HW: HW, groups: G)
        assertClose(dFused.array, dUnfused.array, rtol: 1e-4, atol: 1e-5, label: "fused vs unfused backward")
    }

    // MARK: LayerNorm

    func testLayerNormForwardAndBackward() {
        var rng = TestRNG(6)
        for (N, C) in [(1, 17), (3, 33), (2, 300)] {
            let label = "layerNorm N\(N) C\(C)"
            let x = rng.values(N * C, -3, -1), w = rng.values(C, 0.5, 1.5), bias = rng.values(C)
            let r = rng.values(N * C)
            let xb = Buf(x), wb = Buf(w), bb = Buf(bias), rb = Buf(r)
            let out = Buf(zeros: N * C), mean = Buf(zeros: N), rstd = Buf(zeros: N)
            layerNormForward(out: out.p, mean: mean.p, rstd: rstd.p, inp: xb.c, weight: wb.c, bias: bb.c,
                             N: N, C: C, eps: 1e-5)
            // LayerNorm over rows = GroupNorm with one group of one "channel" per row... with per-element affine.
            let reference: ([Double]) -> (out: [Double], mean: [Double], rstd: [Double]) = { x in
                var out = [Double](repeating: 0, count: N * C), means: [Double] = [], rstds: [Double] = []
                for n in 0..<N {
                    let row = Array(x[(n * C)..<((n + 1) * C)])
                    let m = row.reduce(0, +) / Double(C)
                    let v = row.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(C)
                    let rs = 1 / (v + 1e-5).squareRoot()
                    means.append(m); rstds.append(rs)
                    for i in 0..<C { out[n * C + i] = (row[i] - m) * rs * w[i] + bias[i] }
                }
                return (out, means, rstds)
            }
            let ref = reference(x)
            assertClose(out.doubles, ref.out, rtol: 1e-5, atol: 1e-5, label: label + " out")
            assertClose(mean.doubles, ref.mean, rtol: 1e-6, atol: 1e-7, label: label + " mean")
            assertClose(rstd.doubles, ref.rstd, rtol: 1e-5, atol: 1e-6, label: label + " rstd")
            checkGradient(label + " dinp", expected: numericalGradient(x, r) { reference($0).out }) {
                layerNormBackward(dinp: $0, dout: rb.c, inp: xb.c, mean: mean.c, rstd: rstd.c, weight: wb.c, N: N, C: C)
            }
        }
    }

    // MARK: Element-wise

    func testSiLUAndGELU() {
        var rng = TestRNG(7)
        let n = 37
        let x = rng.values(n, -6, 6), r = rng.values(n)
        let xb = Buf(x), rb = Buf(r), out = Buf(zeros: n)
        siluForward(out: out.p, inp: xb.c, n: n)
        assertClose(out.doubles, x.map(siluReference), rtol: 1e-6, atol: 1e-7, label: "silu forward")
        checkGradient("silu dinp", expected: numericalGradient(x, r) { $0.map(siluReference) }) {
            siluBackward(dinp: $0, dout: rb.c, inp: xb.c, n: n)
        }
        geluForward(out: out.p, inp: xb.c, n: n)
        assertClose(out.doubles, x.map(geluReference), rtol: 1e-6, atol: 1e-7, label: "gelu forward")
        checkGradient("gelu dinp", expected: numericalGradient(x, r) { $0.map(geluReference) }) {
            geluBackward(dinp: $0, dout: rb.c, inp: xb.c, n: n)
        }
        // A large flat loop exercises the parallel ranges; in-place forward (out aliases inp) is allowed.
        let big = 100_003
        let xs = Buf(rng.values(big, -5, 5)), copy = xs.doubles
        siluForward(out: xs.p, inp: xs.c, n: big)
        assertClose(xs.doubles, copy.map(siluReference), rtol: 1e-6, atol: 1e-7, label: "silu in place, large")
    }

    /// The vectorisable exp / Φ approximations against Double on a dense grid (see Elementwise.swift for the
    /// error analysis): forward rtol 1e-6, derivatives rtol 2e-6, with absolute floors where values cross 0
    /// (a derivative that is a sum of O(1) terms of opposite sign keeps their ~1e-7 rounding).
    func testActivationAccuracyOnDenseGrid() {
        let n = 40_001
        let x = (0..<n).map { Double(Float(-10 + 20 * Double($0) / Double(n - 1))) }
        let ones = Buf([Float](repeating: 1, count: n)), xb = Buf(x), out = Buf(zeros: n)
        let sigmoid = { (x: Double) in 1 / (1 + exp(-x)) }
        let cdf = { (x: Double) in 0.5 * erfc(-x / 2.0.squareRoot()) }
        siluForward(out: out.p, inp: xb.c, n: n)
        assertClose(out.doubles, x.map(siluReference), rtol: 1e-6, atol: 1e-12, label: "silu grid")
        out.p.update(repeating: 0, count: n)
        siluBackward(dinp: out.p, dout: ones.c, inp: xb.c, n: n)
        assertClose(out.doubles, x.map { sigmoid($0) * (1 + $0 * (1 - sigmoid($0))) }, rtol: 2e-6, atol: 1e-7,
                    label: "silu' grid")
        geluForward(out: out.p, inp: xb.c, n: n)
        assertClose(out.doubles, x.map { $0 * cdf($0) }, rtol: 1e-6, atol: 1e-8, label: "gelu grid")
        out.p.update(repeating: 0, count: n)
        geluBackward(dinp: out.p, dout: ones.c, inp: xb.c, n: n)
        assertClose(out.doubles, x.map { cdf($0) + $0 * exp(-0.5 * $0 * $0) / (2 * Double.pi).squareRoot() },
                    rtol: 2e-6, atol: 2e-7, label: "gelu' grid")  // Φ + x·φ cancels near x ≈ −0.75
        // QuickGELU x·σ(1.702·x) (CLIP), in place; 1.702·x rounds to float first, as in torch.
        out.p.update(from: xb.c, count: n)
        quickGeluForward(out: out.p, inp: out.p, n: n)
        assertClose(out.doubles, x.map { $0 * sigmoid(Double(Float(1.702) * Float($0))) }, rtol: 1e-6, atol: 1e-12,
                    label: "quick_gelu grid")
    }

    func testGEGLU() {
        var rng = TestRNG(8)
        for (N, D) in [(1, 5), (3, 7)] {
            let x = rng.values(N * 2 * D, -3, 3), r = rng.values(N * D)
            let xb = Buf(x), rb = Buf(r), out = Buf(zeros: N * D)
            let reference: ([Double]) -> [Double] = { x in
                (0..<(N * D)).map { i in
                    let n = i / D, d = i % D
                    return x[n * 2 * D + d] * geluReference(x[n * 2 * D + D + d])  // value · gelu(gate)
                }
            }
            gegluForward(out: out.p, inp: xb.c, N: N, D: D)
            assertClose(out.doubles, reference(x), rtol: 1e-5, atol: 1e-6, label: "geglu N\(N) D\(D) forward")
            let expected = numericalGradient(x, r, reference)
            checkGradient("geglu N\(N) D\(D) dinp", expected: expected) {
                gegluBackward(dinp: $0, dout: rb.c, inp: xb.c, N: N, D: D)
            }
            // Stored, not accumulated: whatever the buffer held (NaN here) is overwritten.
            let stored = Buf(Array(repeating: Float.nan, count: N * 2 * D))
            gegluBackward(dinp: stored.p, dout: rb.c, inp: xb.c, N: N, D: D, accumulate: false)
            assertClose(stored.doubles, expected, rtol: 1e-4, atol: 1e-5, label: "geglu N\(N) D\(D) dinp, stored")
        }
    }

    func testAddsAndPerChannel() {
        var rng = TestRNG(9)
        let n = 41
        let a = rng.values(n), b = rng.values(n)
        let ab = Buf(a), bb = Buf(b), out = Buf(zeros: n)
        add(out: out.p, a: ab.c, b: bb.c, n: n)
        assertClose(out.doubles, zip(a, b).map { $0 + $1 }, rtol: 1e-6, atol: 1e-7, label: "add")
        addInto(out.p, ab.c, n: n)
        assertClose(out.doubles, zip(a, b).map { 2 * $0 + $1 }, rtol: 1e-6, atol: 1e-7, label: "addInto")
        addInto(out.p, bb.c, scaledBy: -0.5, n: n)
        assertClose(out.doubles, zip(a, b).map { 2 * $0 + 0.5 * $1 }, rtol: 1e-6, atol: 1e-7, label: "addInto scaled")

        let B = 2, C = 3, HW = 5
        let x = rng.values(B * C * HW), v = rng.values(B * C), r = rng.values(B * C * HW)
        let xb = Buf(x), vb = Buf(v), rb = Buf(r)
        addPerChannel(xb.p, vb.c, B: B, C: C, HW: HW)
        assertClose(xb.doubles, (0..<(B * C * HW)).map { x[$0] + v[$0 / HW] }, rtol: 1e-6, atol: 1e-7,
                    label: "addPerChannel")
        let fd = numericalGradient(v, r) { v in (0..<(B * C * HW)).map { x[$0] + v[$0 / HW] } }
        checkGradient("addPerChannel dv", expected: fd) { addPerChannelBackward(dv: $0, dout: rb.c, B: B, C: C, HW: HW) }
    }

    func testUpsampleNearest2x() {
        var rng = TestRNG(10)
        for (B, C, H, W) in [(2, 3, 3, 5), (1, 1, 1, 1)] {
            let x = rng.values(B * C * H * W), r = rng.values(B * C * 4 * H * W)
            let xb = Buf(x), rb = Buf(r), out = Buf(zeros: B * C * 4 * H * W)
            let reference: ([Double]) -> [Double] = { x in
                (0..<(B * C * 4 * H * W)).map { i in
                    let bc = i / (4 * H * W), oh = (i / (2 * W)) % (2 * H), ow = i % (2 * W)
                    return x[(bc * H + oh / 2) * W + ow / 2]   // torch nearest: src = floor(dst · 0.5)
                }
            }
            upsampleNearest2xForward(out: out.p, inp: xb.c, B: B, C: C, H: H, W: W)
            assertClose(out.doubles, reference(x), rtol: 0, atol: 0, label: "upsample \(H)x\(W) forward")
            checkGradient("upsample \(H)x\(W) dinp", expected: numericalGradient(x, r, reference)) {
                upsampleNearest2xBackward(dinp: $0, dout: rb.c, B: B, C: C, H: H, W: W)
            }
        }
    }

    // MARK: Linear and LoRA

    func testLinear() {
        var rng = TestRNG(11)
        for (N, I, O) in [(3, 7, 5), (1, 4, 9)] {
            let x = rng.values(N * I), w = rng.values(O * I), bias = rng.values(O), r = rng.values(N * O)
            let xb = Buf(x), wb = Buf(w), bb = Buf(bias), rb = Buf(r)
            for withBias in [true, false] {
                let out = Buf(Array(repeating: Float.nan, count: N * O))
                linearForward(out: out.p, inp: xb.c, weight: wb.c, bias: withBias ? bb.c : nil, N: N, I: I, O: O)
                assertClose(out.doubles, linearReference(x, w, withBias ? bias : nil, N: N, I: I, O: O),
                            rtol: 1e-5, atol: 1e-6, label: "linear N\(N) bias \(withBias)")
            }
            let fd = numericalGradient(x, r) { linearReference($0, w, bias, N: N, I: I, O: O) }
            checkGradient("linear N\(N) dinp", expected: fd) {
                linearBackwardInput(dinp: $0, dout: rb.c, weight: wb.c, N: N, I: I, O: O)
            }
            let stored = Buf(Array(repeating: Float.nan, count: N * I))  // accumulate false: stored over anything
            linearBackwardInput(dinp: stored.p, dout: rb.c, weight: .f32(wb.c), N: N, I: I, O: O, accumulate: false)
            assertClose(stored.doubles, fd, rtol: 1e-4, atol: 1e-5, label: "linear N\(N) dinp, stored")
        }
    }

    func testLoRA() {
        var rng = TestRNG(12)
        for (N, I, O, rank) in [(4, 6, 5, 2), (1, 3, 7, 1)] {
            let s: Float = 0.75  // e.g. lora_alpha 3 / r 4
            let label = "lora N\(N) I\(I) O\(O) r\(rank)"
            let x = rng.values(N * I), a = rng.values(rank * I), b = rng.values(O * rank)
            let base = rng.values(N * O), r = rng.values(N * O)
            let xb = Buf(x), ab = Buf(a), bb = Buf(b), rb = Buf(r)
            // y = base + s · (x · Aᵀ) · Bᵀ
            let reference: ([Double], [Double], [Double]) -> [Double] = { x, a, b in
                let xa = linearReference(x, a, nil, N: N, I: I, O: rank)
                return zip(base, linearReference(xa, b, nil, N: N, I: rank, O: O)).map { $0 + Double(s) * $1 }
            }
            let out = Buf(base), xa = Buf(zeros: N * rank)
            loraForward(out: out.p, xa: xa.p, inp: xb.c, a: ab.c, b: bb.c, N: N, I: I, O: O, rank: rank, scale: s)
            assertClose(out.doubles, reference(x, a, b), rtol: 1e-5, atol: 1e-6, label: label + " forward (+=)")
            assertClose(xa.doubles, linearReference(x, a, nil, N: N, I: I, O: rank), rtol: 1e-5, atol: 1e-6,
                        label: label + " xa")

            let ws = Buf(zeros: loraWorkspaceSize(N: N, rank: rank))
            let fdX = numericalGradient(x, r) { reference($0, a, b) }
            let fdA = numericalGradient(a, r) { reference(x, $0, b) }
            let fdB = numericalGradient(b, r) { reference(x, a, $0) }
            // One backward fills all three; run it twice into zeroed buffers and check each accumulated.
            let dx = Buf(zeros: N * I), da = Buf(zeros: rank * I), db = Buf(zeros: O * rank)
            for k in 1...2 {
                loraBackward(dinp: dx.p, da: da.p, db: db.p, dout: rb.c, inp: xb.c, xa: xa.c, a: ab.c, b: bb.c,
                             N: N, I: I, O: O, rank: rank, scale: s, workspace: ws.p)
                let m = Double(k)
                assertClose(dx.doubles, fdX.map { m * $0 }, rtol: 1e-4, atol: 1e-5, label: label + " dinp ×\(k)")
                assertClose(da.doubles, fdA.map { m * $0 }, rtol: 1e-4, atol: 1e-5, label: label + " dA ×\(k)")
                assertClose(db.doubles, fdB.map { m * $0 }, rtol: 1e-4, atol: 1e-5, label: label + " dB ×\(k)")
            }
            // Without an input gradient, dA and dB are unchanged.
            let da2 = Buf(zeros: rank * I), db2 = Buf(zeros: O * rank)
            loraBackward(dinp: nil, da: da2.p, db: db2.p, dout: rb.c, inp: xb.c, xa: xa.c, a: ab.c, b: bb.c,
                         N: N, I: I, O: O, rank: rank, scale: s, workspace: ws.p)
            assertClose(da2.doubles, fdA, rtol: 1e-4, atol: 1e-5, label: label + " dA (no dinp)")
            assertClose(db2.doubles, fdB, rtol: 1e-4, atol: 1e-5, label: label + " dB (no dinp)")
        }
    }

    // MARK: Layout

    func testChannelsTokensTransposes() {
        var rng = TestRNG(13)
        for (B, C, HW) in [(2, 37, 45), (1, 1, 5), (1, 64, 33), (2, 5, 34), (2, 3, 1024), (1, 1024, 3)] {
            let label = "transpose B\(B) C\(C) HW\(HW)"
            let x = rng.values(B * C * HW), r = rng.values(B * C * HW)
            let xb = Buf(x), rb = Buf(r), out = Buf(zeros: B * C * HW)
            channelsToTokens(out: out.p, inp: xb.c, B: B, C: C, HW: HW)
            assertClose(out.doubles, transposeReference(x, B: B, rows: C, cols: HW), rtol: 0, atol: 0,
                        label: label + " channelsToTokens")
            // A permutation's adjoint is its inverse; finite differences confirm that on the small shapes.
            let c2tGrad = transposeReference(r, B: B, rows: HW, cols: C)
            if x.count <= 400 {
                assertClose(numericalGradient(x, r) { transposeReference($0, B: B, rows: C, cols: HW) }, c2tGrad,
                            rtol: 1e-8, atol: 1e-8, label: label + " channelsToTokens adjoint")
            }
            checkGradient(label + " channelsToTokens dinp", expected: c2tGrad) {
                channelsToTokensBackward(dinp: $0, dout: rb.c, B: B, C: C, HW: HW)
            }
            tokensToChannels(out: out.p, inp: xb.c, B: B, C: C, HW: HW)   // x read as (B, HW, C)
            assertClose(out.doubles, transposeReference(x, B: B, rows: HW, cols: C), rtol: 0, atol: 0,
                        label: label + " tokensToChannels")
            let t2cGrad = transposeReference(r, B: B, rows: C, cols: HW)
            if x.count <= 400 {
                assertClose(numericalGradient(x, r) { transposeReference($0, B: B, rows: HW, cols: C) }, t2cGrad,
                            rtol: 1e-8, atol: 1e-8, label: label + " tokensToChannels adjoint")
            }
            checkGradient(label + " tokensToChannels dinp", expected: t2cGrad) {
                tokensToChannelsBackward(dinp: $0, dout: rb.c, B: B, C: C, HW: HW)
            }
            // Round trip is the identity.
            let back = Buf(zeros: B * C * HW)
            channelsToTokens(out: out.p, inp: xb.c, B: B, C: C, HW: HW)
            tokensToChannels(out: back.p, inp: out.c, B: B, C: C, HW: HW)
            XCTAssertEqual(back.array, xb.array, label + " round trip")
        }
    }

    func testConcatChannels() {
        var rng = TestRNG(14)
        let B = 2, C1 = 3, C2 = 5, HW = 7
        let a = rng.values(B * C1 * HW), b = rng.values(B * C2 * HW), r = rng.values(B * (C1 + C2) * HW)
        let ab = Buf(a), bb = Buf(b), rb = Buf(r), out = Buf(zeros: B * (C1 + C2) * HW)
        let reference: ([Double], [Double]) -> [Double] = { a, b in
            var out: [Double] = []
            for n in 0..<B {
                out += a[(n * C1 * HW)..<((n + 1) * C1 * HW)]
                out += b[(n * C2 * HW)..<((n + 1) * C2 * HW)]
            }
            return out
        }
        concatChannels(out: out.p, a: ab.c, b: bb.c, B: B, C1: C1, C2: C2, HW: HW)
        assertClose(out.doubles, reference(a, b), rtol: 0, atol: 0, label: "concat")
        let fdA = numericalGradient(a, r) { reference($0, b) }, fdB = numericalGradient(b, r) { reference(a, $0) }
        let da = Buf(zeros: a.count), db = Buf(zeros: b.count)
        for k in 1...2 {
            splitChannelsBackward(da: da.p, db: db.p, dout: rb.c, B: B, C1: C1, C2: C2, HW: HW)
            assertClose(da.doubles, fdA.map { Double(k) * $0 }, rtol: 1e-6, atol: 1e-6, label: "concat da ×\(k)")
            assertClose(db.doubles, fdB.map { Double(k) * $0 }, rtol: 1e-6, atol: 1e-6, label: "concat db ×\(k)")
        }
    }

    // MARK: Timestep embedding

    func testTimestepEmbedding() {
        let timesteps: [Float] = [0, 1, 999, 500.5, 37]
        for (dim, flip, shift) in [(320, true, Float(0)), (7, false, Float(1)), (8, true, Float(1)), (1, true, Float(0))] {
            let label = "timestepEmbedding dim\(dim) flip \(flip) shift \(shift)"
            let B = timesteps.count, half = dim / 2
            let out = Buf(Array(repeating: Float.nan, count: B * dim))
            timestepEmbedding(out: out.p, timesteps: timesteps, dim: dim, flipSinToCos: flip, freqShift: shift)
            // (1) The float32 rounding sequence of diffusers' get_timestep_embedding, step by step.
            let logPeriod = Float(-log(10000.0))
            let freqs = (0..<half).map { k in Float(exp(Double((logPeriod * Float(k)) / (Float(half) - shift)))) }
            var emulated: [Double] = [], ideal: [Double] = []
            for t in timesteps {
                let args = freqs.map { t * $0 }
                let sines = args.map { sin(Double($0)) }, cosines = args.map { cos(Double($0)) }
                emulated += flip ? cosines + sines : sines + cosines
                // (2) The same formula in exact arithmetic.
                let exact = (0..<half).map { Double(t) * exp(-log(10000.0) * Double($0) / (Double(half) - Double(shift))) }
                ideal += flip ? exact.map(cos) + exact.map(sin) : exact.map(sin) + exact.map(cos)
                if dim % 2 == 1 { emulated.append(0); ideal.append(0) }
            }
            assertClose(out.doubles, emulated, rtol: 0, atol: 1e-7, label: label + " (float32 steps)")
            // Float32 rounding of t · f (ulp(999) ≈ 6e-5) bounds the distance to exact arithmetic.
            assertClose(out.doubles, ideal, rtol: 0, atol: 2e-4, label: label + " (exact)")
        }
        // t = 0 with flip: [cos 0 …, sin 0 …] = [1 …, 0 …].
        let out = Buf(zeros: 8)
        timestepEmbedding(out: out.p, timesteps: [0], dim: 8, flipSinToCos: true, freqShift: 0)
        XCTAssertEqual(out.array, [1, 1, 1, 1, 0, 0, 0, 0])
    }

    // MARK: Parallel helper

    func testParallelForCoversEveryIndexOnce() {
        let n = 1000
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: n)
        hits.initialize(repeating: 0, count: n)
        defer { hits.deallocate() }
        parallelFor(n, work: .max) { hits[$0] += 1 }
        XCTAssertEqual(Array(UnsafeBufferPointer(start: hits, count: n)), Array(repeating: 1, count: n))
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: n)
        counts.initialize(repeating: 0, count: n)
        defer { counts.deallocate() }
        parallelRanges(n, grain: 10) { r in for i in r { counts[i] += 1 } }
        XCTAssertEqual(Array(UnsafeBufferPointer(start: counts, count: n)), Array(repeating: 1, count: n))
    }
}
