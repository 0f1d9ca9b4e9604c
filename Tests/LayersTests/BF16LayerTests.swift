// Conv2D and Linear with bf16 weights (mixed precision) against the same fp32 kernels on the rounded operands: the
// weight rounded to bf16 always, and on the AVX512-BF16 path (real or emulated) the activation operand of each GEMM
// too (forward: the input; backward: the output gradient). Only the order of the fp32 additions may differ, so the
// tolerance is fp32's: rtol 1e-5 of the result's scale.
import Foundation
import XCTest
import Layers
import Tensors
import TestSupport

final class BF16LayerTests: XCTestCase {
    override func tearDown() {
        BF16.setPath(nil)
        super.tearDown()
    }

    /// The default path, `emulated` (AVX512-BF16 code as portable C) and real AVX512-BF16 when the CPU has it.
    private var paths: [BF16.Path] {
        BF16.setPath(nil)
        var p = [BF16.path]
        for q in [BF16.Path.avx512, .emulated, .generic] where !p.contains(q) && BF16.setPath(q) { p.append(q) }
        BF16.setPath(nil)
        return p
    }

    private func normals(_ n: Int, seed: UInt64) -> [Float] { CounterRNG(seed: seed).normals(n) }

    /// `x` as the GEMM sees it on the path in force: rounded to bf16 on AVX512-BF16, as it is elsewhere.
    private func operand(_ x: [Float]) -> [Float] { BF16.isAccelerated || BF16.path == .emulated ? BF16.floats(BF16.bits(x)) : x }

    private func assertScaled(_ a: [Float], _ b: [Float], _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        let scale = b.reduce(0) { max($0, abs($1)) }
        XCTAssertGreaterThan(scale, 0, label, file: file, line: line)
        assertClose(a, b, rtol: 0, atol: 1e-5 * scale, label: label, file: file, line: line)
    }

    func testConv2DWithBF16Weights() {
        // (B, Cin, H, W, Cout, K, stride, padding): 3x3 with small tiles (transposed backward) and large ones
        // (several im2col tiles, row-major backward), stride 2, 1x1 pointwise.
        let cases = [(2, 6, 9, 7, 8, 3, 1, 1), (1, 4, 40, 36, 5, 3, 1, 1), (2, 8, 9, 9, 8, 3, 2, 1), (2, 8, 6, 5, 12, 1, 1, 0),
                     (2, 4, 8, 8, 32, 3, 1, 1), (2, 96, 8, 8, 32, 3, 1, 1), (2, 64, 4, 4, 64, 3, 1, 1), (2, 32, 8, 8, 32, 1, 1, 0)]
        for path in paths {
            XCTAssertTrue(BF16.setPath(path))
            for (i, (b, cin, h, w, cout, k, s, p)) in cases.enumerated() {
                let ho = conv2dOutputSize(h, kernel: k, stride: s, padding: p), wo = conv2dOutputSize(w, kernel: k, stride: s, padding: p)
                let x = normals(b * cin * h * w, seed: UInt64(10 + i)), wt = normals(cout * cin * k * k, seed: UInt64(20 + i))
                let bias = normals(cout, seed: UInt64(30 + i)), dy = normals(b * cout * ho * wo, seed: UInt64(40 + i))
                let bits = BF16.bits(wt), rounded = BF16.floats(bits)
                let ws = [Float](repeating: 0, count: max(1, conv2dWorkspaceSize(Cin: cin, H: h, W: w, kernel: k, stride: s, padding: p)))
                var workspace = ws
                var out = [Float](repeating: .nan, count: b * cout * ho * wo), ref = out
                var dx = [Float](repeating: 0, count: x.count), dxRef = dx
                bits.withUnsafeBufferPointer { wb in
                    workspace.withUnsafeMutableBufferPointer { wsp in
                        conv2dForward(out: &out, inp: x, weight: .bf16(wb.baseAddress!), bias: bias, B: b, Cin: cin, H: h, W: w,
                                      Cout: cout, kernel: k, stride: s, padding: Conv2DPadding(p), workspace: wsp.baseAddress!)
                        conv2dBackwardInput(dinp: &dx, dout: dy, weight: .bf16(wb.baseAddress!), B: b, Cin: cin, H: h, W: w,
                                            Cout: cout, kernel: k, stride: s, padding: Conv2DPadding(p), workspace: wsp.baseAddress!)
                        conv2dForward(out: &ref, inp: operand(x), weight: rounded, bias: bias, B: b, Cin: cin, H: h, W: w,
                                      Cout: cout, kernel: k, stride: s, padding: Conv2DPadding(p), workspace: wsp.baseAddress!)
                        conv2dBackwardInput(dinp: &dxRef, dout: operand(dy), weight: rounded, B: b, Cin: cin, H: h, W: w,
                                            Cout: cout, kernel: k, stride: s, padding: Conv2DPadding(p), workspace: wsp.baseAddress!)
                    }
                }
                assertScaled(out, ref, "\(path) conv case \(i) forward")
                assertScaled(dx, dxRef, "\(path) conv case \(i) backward")
            }
        }
    }

    func testLinearWithBF16Weights() {
        for path in paths {
            XCTAssertTrue(BF16.setPath(path))
            for (n, i, o) in [(10, 12, 10), (7, 33, 65), (64, 40, 3), (128, 32, 32), (14, 24, 32), (128, 32, 256), (128, 128, 32), (2, 128, 128), (2, 32, 128)] {
                let x = normals(n * i, seed: 1), wt = normals(o * i, seed: 2), bias = normals(o, seed: 3), dy = normals(n * o, seed: 4)
                let bits = BF16.bits(wt), rounded = BF16.floats(bits)
                var out = [Float](repeating: .nan, count: n * o), ref = out, outNoBias = out, refNoBias = out
                var dx = [Float](repeating: 0.5, count: n * i), dxRef = dx   // backward accumulates
                bits.withUnsafeBufferPointer { wb in
                    linearForward(out: &out, inp: x, weight: .bf16(wb.baseAddress!), bias: bias, N: n, I: i, O: o)
                    linearForward(out: &outNoBias, inp: x, weight: .bf16(wb.baseAddress!), bias: nil, N: n, I: i, O: o)
                    linearBackwardInput(dinp: &dx, dout: dy, weight: .bf16(wb.baseAddress!), N: n, I: i, O: o)
                }
                linearForward(out: &ref, inp: operand(x), weight: rounded, bias: bias, N: n, I: i, O: o)
                linearForward(out: &refNoBias, inp: operand(x), weight: rounded, bias: nil, N: n, I: i, O: o)
                linearBackwardInput(dinp: &dxRef, dout: operand(dy), weight: rounded, N: n, I: i, O: o)
                assertScaled(out, ref, "\(path) linear \(n)x\(i)->\(o) forward")
                assertScaled(outNoBias, refNoBias, "\(path) linear \(n)x\(i)->\(o) forward, no bias")
                assertScaled(dx, dxRef, "\(path) linear \(n)x\(i)->\(o) backward")
            }
        }
    }
}
