// The bf16 implicit-GEMM convolution (CKernels/conv_avx512bf16.c) against its portable reference
// (hg_conv_s1_bf16_ref), on AVX512-BF16 itself (skipped without it) and as emulated portable C (every CPU), then the
// layer (Conv2D.swift with bf16 weights) on the kernel against the same layer on im2col + the bf16 GEMM, and against
// the fp32 convolution in Double.
//
// Tolerances: kernel vs reference differ only in the order of the fp32 additions (and VDPBF16PS's flushing of
// subnormals), so every element must lie within 1e-5 · Σ_k |A(m, k)| · |x_k| (the same sum over absolute values,
// computed by the reference); a NaN fails. Layer vs layer: 1e-5 of the output's largest magnitude (both round the activations to
// bf16). Against fp32 in Double (weights and activations unrounded): relative L2 error ≤ 1e-2, bf16's 8-bit mantissa
// (2^-9 per rounding) over sums of random-sign products; measured 2–3e-3.
import CKernels
import Foundation
import XCTest
import TestSupport
import Tensors
@testable import Layers

final class ConvBF16Tests: XCTestCase {
    override func tearDown() {
        BF16.setPath(nil)
        RuntimeOptions.install(.defaults)
        super.tearDown()
    }

    typealias Kernel = (UnsafePointer<UInt16>?, Int32, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, Int32, Int32,
                        Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32,
                        UnsafeMutablePointer<Float>?) -> Void

    /// (B, C, H, W, M, kernel, padding): the shapes of KernelTests.testConv2DImplicitGEMM (4×4 and 8×8 images whose
    /// vectors span rows, partial panels, panels across images, 1×1, 5×5, per-side padding), odd C·k·k (the forward's
    /// last pair), more pairs than one block of 128, M not a multiple of 8.
    static let shapes: [(B: Int, C: Int, H: Int, W: Int, M: Int, k: Int, pad: Conv2DPadding)] = [
        (2, 30, 8, 16, 11, 3, Conv2DPadding(1)),
        (1, 21, 4, 48, 17, 3, Conv2DPadding(1)),     // forward K = 189: odd
        (2, 40, 3, 32, 9, 1, Conv2DPadding(0)),      // 1×1: forward only (its input gradient is a GEMM)
        (2, 3, 3, 32, 8, 1, Conv2DPadding(0)),       // 1×1, K = 3: odd
        (1, 3, 6, 16, 2, 5, Conv2DPadding(2)),       // K = 75
        (1, 2, 5, 16, 2, 3, Conv2DPadding(top: 0, bottom: 2, left: 2, right: 0)),
        (1, 2, 5, 14, 2, 3, Conv2DPadding(top: 2, bottom: 0, left: 1, right: 3)),
        (5, 20, 4, 4, 10, 3, Conv2DPadding(1)),
        (3, 33, 8, 8, 9, 3, Conv2DPadding(1)),       // K = 297: three blocks of pairs
        (2, 6, 2, 8, 5, 1, Conv2DPadding(0)),
        (1, 64, 16, 16, 24, 3, Conv2DPadding(1)),
        (2, 40, 8, 8, 48, 3, Conv2DPadding(1)),      // input gradient: 48 · 5 = 240 pairs, two blocks
    ]

    private func normals(_ n: Int, seed: UInt64) -> [Float] { CounterRNG(seed: seed).normals(n) }

    /// Runs `kernel` (the reference when nil) on out (zeroed) over every (pixel, channel) item of the given sizes.
    private func run(_ kernel: Kernel?, w: [UInt16], gradInput: Bool, x: [Float], B: Int, C: Int, H: Int, W: Int, M: Int,
                     k: Int, pt: Int, pl: Int, Ho: Int, Wo: Int, pixelChunk: Int, channelChunk: Int) -> [Float] {
        var out = [Float](repeating: 0, count: B * M * Ho * Wo)
        let N = B * Ho * Wo, g: Int32 = gradInput ? 1 : 0
        var scratch = [Float](repeating: 0, count: hg_conv_avx512bf16_scratch(hg_conv_bf16_pairs(g, Int32(C), Int32(k))))
        for n0 in stride(from: 0, to: N, by: pixelChunk) {
            for m0 in stride(from: 0, to: M, by: channelChunk) {
                let n1 = Int32(min(N, n0 + pixelChunk)), m1 = Int32(min(M, m0 + channelChunk))
                if let kernel {
                    kernel(w, g, x, &out, Int32(C), Int32(H), Int32(W), Int32(M), Int32(k), Int32(pt), Int32(pl),
                           Int32(Ho), Int32(Wo), Int32(n0), n1, Int32(m0), m1, &scratch)
                } else {
                    hg_conv_s1_bf16_ref(w, g, x, &out, Int32(C), Int32(H), Int32(W), Int32(M), Int32(k), Int32(pt),
                                        Int32(pl), Int32(Ho), Int32(Wo), Int32(n0), n1, Int32(m0), m1)
                }
            }
        }
        return out
    }

    /// Forward and input gradient of every shape, whole and split into items, against the reference.
    private func checkKernel(_ name: String, _ kernel: @escaping Kernel) {
        for (i, s) in Self.shapes.enumerated() {
            let (Ho, Wo) = s.pad.outputSize(H: s.H, W: s.W, kernel: s.k, stride: 1)
            let kk = s.k * s.k, w = BF16.bits(normals(s.M * s.C * kk, seed: UInt64(100 + i)))
            let absW = w.map { $0 & 0x7fff }
            let x = normals(s.B * s.C * s.H * s.W, seed: UInt64(200 + i)), dy = normals(s.B * s.M * Ho * Wo, seed: UInt64(300 + i))
            // Forward: out (B, M, Ho, Wo) from x (B, C, H, W). Input gradient: dx (B, C, H, W) from dy (B, M, Ho, Wo),
            // a stride-1 conv with padding k − 1 − p (k ≥ 2).
            let pass = [(false, x, s.C, s.H, s.W, s.M, s.pad.top, s.pad.left, Ho, Wo),
                        (true, dy, s.M, Ho, Wo, s.C, s.k - 1 - s.pad.top, s.k - 1 - s.pad.left, s.H, s.W)]
            for (gradInput, inp, C, H, W, M, pt, pl, ho, wo) in pass {
                // Only shapes whose output rows pack into vectors (the layer's condition).
                guard wo % 16 == 0 || (16 % wo == 0 && (ho * wo) % 16 == 0), !gradInput || s.k >= 2 else { continue }
                let label = "\(name) shape \(i) \(gradInput ? "input gradient" : "forward")"
                let ref = run(nil, w: w, gradInput: gradInput, x: inp, B: s.B, C: C, H: H, W: W, M: M, k: s.k, pt: pt,
                              pl: pl, Ho: ho, Wo: wo, pixelChunk: s.B * ho * wo, channelChunk: M)
                let bound = run(nil, w: absW, gradInput: gradInput, x: inp.map(abs), B: s.B, C: C, H: H, W: W, M: M,
                                k: s.k, pt: pt, pl: pl, Ho: ho, Wo: wo, pixelChunk: s.B * ho * wo, channelChunk: M)
                let whole = run(kernel, w: w, gradInput: gradInput, x: inp, B: s.B, C: C, H: H, W: W, M: M, k: s.k,
                                pt: pt, pl: pl, Ho: ho, Wo: wo, pixelChunk: s.B * ho * wo, channelChunk: M)
                var worst = 0.0, at = 0
                for j in 0..<ref.count {
                    let e = Double(abs(whole[j] - ref[j])) / max(1e-30, Double(bound[j]))
                    if !(e <= worst) { worst = e; at = j }
                }
                XCTAssertLessThanOrEqual(worst, 1e-5, "\(label): element \(at) is \(whole[at]), reference \(ref[at])")
                XCTAssertGreaterThan(bound.max() ?? 0, 0, label)
                // The same call cut into items of 48 pixels × 8 channels gives the same bits (fixed summation order).
                let split = run(kernel, w: w, gradInput: gradInput, x: inp, B: s.B, C: C, H: H, W: W, M: M, k: s.k,
                                pt: pt, pl: pl, Ho: ho, Wo: wo, pixelChunk: 48, channelChunk: 8)
                XCTAssertEqual(split, whole, "\(label): split into items")
            }
        }
    }

    func testAVX512BF16KernelMatchesReference() throws {
        guard hg_cpu_has_avx512bf16() != 0 else { throw XCTSkip("no AVX512-BF16 on this CPU") }
        checkKernel("avx512bf16", hg_conv_s1_avx512bf16)
    }

    func testEmulatedKernelMatchesReference() {
        checkKernel("emulated", hg_conv_s1_avx512bf16_emu)
    }

    // MARK: - The layer

    /// conv2dForward / conv2dBackwardInput with bf16 weights on the kernel against im2col + the AVX512-BF16 GEMM
    /// (HGDPO_CONV=blas through RuntimeOptions), and both against the fp32 convolution in Double.
    func testLayerOnKernelMatchesIm2colAndFP32() throws {
        guard BF16.setPath(.avx512) else { throw XCTSkip("no AVX512-BF16 on this CPU") }
        let cases: [(B: Int, C: Int, H: Int, W: Int, M: Int, k: Int, p: Int)] = [
            (2, 32, 16, 16, 48, 3, 1), (2, 64, 8, 8, 40, 3, 1), (2, 96, 4, 4, 64, 3, 1), (2, 48, 16, 16, 32, 1, 0),
            (2, 4, 32, 32, 32, 3, 1),
        ]
        for (i, s) in cases.enumerated() {
            XCTAssertTrue(conv2dImplicitBF16(stride: 1, kernel: s.k, Ho: s.H, Wo: s.W))
            let x = normals(s.B * s.C * s.H * s.W, seed: UInt64(400 + i)), w = normals(s.M * s.C * s.k * s.k, seed: UInt64(500 + i))
            let bias = normals(s.M, seed: UInt64(600 + i)), dy = normals(s.B * s.M * s.H * s.W, seed: UInt64(700 + i))
            let bits = BF16.bits(w), pad = Conv2DPadding(s.p)
            func layer(onBLAS: Bool) -> (out: [Float], dx: [Float]) {
                var o = RuntimeOptions.defaults
                o.convolutionsOnBLAS = onBLAS
                RuntimeOptions.install(o)
                defer { RuntimeOptions.install(.defaults) }
                var out = [Float](repeating: .nan, count: dy.count), dx = [Float](repeating: 0.25, count: x.count)
                var ws = [Float](repeating: 0, count: max(1, conv2dWorkspaceSize(Cin: s.C, H: s.H, W: s.W, kernel: s.k, stride: 1, padding: pad)))
                bits.withUnsafeBufferPointer { wb in
                    conv2dForward(out: &out, inp: x, weight: .bf16(wb.baseAddress!), bias: bias, B: s.B, Cin: s.C, H: s.H,
                                  W: s.W, Cout: s.M, kernel: s.k, stride: 1, padding: pad, workspace: &ws)
                    conv2dBackwardInput(dinp: &dx, dout: dy, weight: .bf16(wb.baseAddress!), B: s.B, Cin: s.C, H: s.H,
                                        W: s.W, Cout: s.M, kernel: s.k, stride: 1, padding: pad, workspace: &ws)
                }
                return (out, dx.map { $0 - 0.25 })  // backward accumulates into 0.25
            }
            let kernel = layer(onBLAS: false), im2col = layer(onBLAS: true)
            for (what, a, b) in [("forward", kernel.out, im2col.out), ("input gradient", kernel.dx, im2col.dx)] {
                let scale = b.reduce(0) { max($0, abs($1)) }
                assertClose(a, b, rtol: 0, atol: 1e-5 * scale, label: "case \(i) \(what): kernel vs im2col")
            }
            // fp32 in Double, unrounded operands.
            let ref = conv2dDouble(x.map(Double.init), w.map(Double.init), bias.map(Double.init), B: s.B, C: s.C, H: s.H,
                                   W: s.W, M: s.M, k: s.k, p: s.p)
            let dref = conv2dTransposeDouble(dy.map(Double.init), w.map(Double.init), B: s.B, C: s.C, H: s.H, W: s.W,
                                             M: s.M, k: s.k, p: s.p)
            XCTAssertLessThan(relativeL2(kernel.out, ref), 1e-2, "case \(i) forward vs fp32")
            XCTAssertLessThan(relativeL2(kernel.dx, dref), 1e-2, "case \(i) input gradient vs fp32")
        }
    }

    /// fp32 convolutions on the AVX-512F implicit GEMM against im2col + sgemm on the same inputs (both forced through
    /// RuntimeOptions.convolutionsOnBLAS): the two fp32 paths of Conv2D.swift. Only the order of the sums differs.
    func testFP32ImplicitMatchesIm2col() throws {
        guard hg_cpu_has_avx512f() != 0 else { throw XCTSkip("no AVX-512F on this CPU") }
        for (i, s) in Self.shapes.enumerated() {
            let (Ho, Wo) = s.pad.outputSize(H: s.H, W: s.W, kernel: s.k, stride: 1)
            let x = normals(s.B * s.C * s.H * s.W, seed: UInt64(800 + i)), w = normals(s.M * s.C * s.k * s.k, seed: UInt64(900 + i))
            let dy = normals(s.B * s.M * Ho * Wo, seed: UInt64(1000 + i))
            func layer(onBLAS: Bool) -> (out: [Float], dx: [Float]) {
                var o = RuntimeOptions.defaults
                o.convolutionsOnBLAS = onBLAS
                RuntimeOptions.install(o)
                defer { RuntimeOptions.install(.defaults) }
                XCTAssertEqual(conv2dImplicitAvailable, !onBLAS)
                var out = [Float](repeating: .nan, count: dy.count), dx = [Float](repeating: 0, count: x.count)
                var ws = [Float](repeating: 0, count: max(1, conv2dWorkspaceSize(Cin: s.C, H: s.H, W: s.W, kernel: s.k, stride: 1, padding: s.pad)))
                conv2dForward(out: &out, inp: x, weight: w, bias: nil, B: s.B, Cin: s.C, H: s.H, W: s.W, Cout: s.M,
                              kernel: s.k, stride: 1, padding: s.pad, workspace: &ws)
                conv2dBackwardInput(dinp: &dx, dout: dy, weight: w, B: s.B, Cin: s.C, H: s.H, W: s.W, Cout: s.M,
                                    kernel: s.k, stride: 1, padding: s.pad, workspace: &ws)
                return (out, dx)
            }
            let fast = layer(onBLAS: false), blas = layer(onBLAS: true)
            for (what, a, b) in [("forward", fast.out, blas.out), ("input gradient", fast.dx, blas.dx)] {
                let scale = b.reduce(0) { max($0, abs($1)) }
                assertClose(a, b, rtol: 0, atol: 1e-5 * scale, label: "shape \(i) \(what): implicit vs im2col")
            }
        }
    }

    // MARK: - Double references

    private func relativeL2(_ a: [Float], _ b: [Double]) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += (Double(x) - y) * (Double(x) - y); den += y * y }
        return (num / den).squareRoot()
    }

    private func conv2dDouble(_ x: [Double], _ w: [Double], _ bias: [Double], B: Int, C: Int, H: Int, W: Int, M: Int,
                              k: Int, p: Int) -> [Double] {
        var out = [Double](repeating: 0, count: B * M * H * W)
        for b in 0..<B { for o in 0..<M { for y in 0..<H { for xx in 0..<W {
            var acc = bias[o]
            for c in 0..<C { for kh in 0..<k { for kw in 0..<k {
                let iy = y - p + kh, ix = xx - p + kw
                if iy >= 0 && iy < H && ix >= 0 && ix < W { acc += w[((o * C + c) * k + kh) * k + kw] * x[((b * C + c) * H + iy) * W + ix] }
            } } }
            out[((b * M + o) * H + y) * W + xx] = acc
        } } } }
        return out
    }

    private func conv2dTransposeDouble(_ dy: [Double], _ w: [Double], B: Int, C: Int, H: Int, W: Int, M: Int, k: Int,
                                       p: Int) -> [Double] {
        var dx = [Double](repeating: 0, count: B * C * H * W)
        for b in 0..<B { for o in 0..<M { for y in 0..<H { for xx in 0..<W {
            let g = dy[((b * M + o) * H + y) * W + xx]
            for c in 0..<C { for kh in 0..<k { for kw in 0..<k {
                let iy = y - p + kh, ix = xx - p + kw
                if iy >= 0 && iy < H && ix >= 0 && ix < W { dx[((b * C + c) * H + iy) * W + ix] += w[((o * C + c) * k + kh) * k + kw] * g }
            } } }
        } } } }
        return dx
    }
}
