import Foundation
import XCTest
import IO
import Layers
import NN
import Tensors
import TestSupport
@testable import UNet

let unetFixtures = repoRoot + "/Tests/UNetTests/Fixtures"

/// Each diffusers module against PyTorch on committed fixtures (Tests/parity/make_unet_fixtures.py): forward output,
/// and the input gradient of sum(output · grad_output) from autograd.
final class LayerParityTests: XCTestCase {
    struct Case<M> {
        let module: M
        let weights: Weights
        let file: SafeTensorsFile
        let pass: Pass
        func tensor(_ key: String) throws -> Buffer { Buffer(try file.floats(key)) }
        func expected(_ key: String) throws -> [Float] { try file.floats(key) }
        func shape(_ key: String) -> [Int] { file.info(key)!.shape }
    }

    func load<M>(_ name: String, _ make: (ParameterTable) -> M) throws -> Case<M> {
        let file = try SafeTensorsFile(path: "\(unetFixtures)/layers/\(name).safetensors")
        let table = ParameterTable()
        let module = make(table)
        let weights = Weights(table: table)
        try weights.loadSubset(from: file, prefix: "")
        let pass = Pass(weights: weights, training: true, workspace: Workspace())
        return Case(module: module, weights: weights, file: file, pass: pass)
    }

    func testGroupNorm() throws {
        let c = try load("groupnorm") { GroupNorm($0, "module", channels: 16, groups: 4, eps: 1e-5) }
        let x = try c.tensor("input")
        let (out, st) = c.module.forward(c.pass, x, 2, 35)
        assertClose(out.array, try c.expected("output"), rtol: 1e-5, atol: 1e-5, label: "groupnorm forward")
        let dx = Buffer(zeros: x.count)
        c.module.backward(c.pass, try c.tensor("grad_output"), x, st, 2, 35, into: dx)
        assertClose(dx.array, try c.expected("grad_input"), rtol: 1e-4, atol: 1e-5, label: "groupnorm backward")
    }

    func checkConv(_ name: String, cin: Int, cout: Int, kernel: Int, stride: Int, padding: Int) throws {
        let c = try load(name) {
            Conv2d($0, "module", cin: cin, cout: cout, kernel: kernel, stride: stride, padding: Conv2DPadding(padding))
        }
        let s = c.shape("input")
        let x = try c.tensor("input")
        let out = c.module.forward(c.pass, x, s[0], s[2], s[3])
        assertClose(out.array, try c.expected("output"), rtol: 1e-5, atol: 1e-5, label: "\(name) forward")
        let dx = c.module.backward(c.pass, try c.tensor("grad_output"), s[0], s[2], s[3], x: nil)
        assertClose(dx.array, try c.expected("grad_input"), rtol: 1e-4, atol: 1e-5, label: "\(name) backward")
    }

    func testConvolutions() throws {
        try checkConv("conv3x3", cin: 6, cout: 8, kernel: 3, stride: 1, padding: 1)
        try checkConv("conv3x3_stride2", cin: 8, cout: 8, kernel: 3, stride: 2, padding: 1)
        try checkConv("conv1x1", cin: 8, cout: 12, kernel: 1, stride: 1, padding: 0)
    }

    func testLinearAndLayerNorm() throws {
        let l = try load("linear") { Linear($0, "module", inFeatures: 12, outFeatures: 10) }
        let x = try l.tensor("input")
        assertClose(l.module.forward(l.pass, x, 10).out.array, try l.expected("output"), rtol: 1e-5, atol: 1e-6, label: "linear forward")
        let dx = Buffer(zeros: x.count)
        l.module.backward(l.pass, try l.tensor("grad_output"), x, nil, 10, into: dx)
        assertClose(dx.array, try l.expected("grad_input"), rtol: 1e-5, atol: 1e-6, label: "linear backward")

        let n = try load("layernorm") { LayerNorm($0, "module", channels: 12) }
        let y = try n.tensor("input")
        let (out, st) = n.module.forward(n.pass, y, 10)
        assertClose(out.array, try n.expected("output"), rtol: 1e-5, atol: 1e-5, label: "layernorm forward")
        let dy = Buffer(zeros: y.count)
        n.module.backward(n.pass, try n.tensor("grad_output"), y, st, 10, into: dy)
        assertClose(dy.array, try n.expected("grad_input"), rtol: 1e-4, atol: 1e-5, label: "layernorm backward")
    }

    func testFeedForwardGEGLU() throws {
        let c = try load("geglu_ff") { FeedForward($0, "module", dim: 16) }
        let x = try c.tensor("input")
        let (out, saved) = c.module.forward(c.pass, x, 10)
        assertClose(out.array, try c.expected("output"), rtol: 1e-5, atol: 1e-5, label: "ff forward")
        let dx = Buffer(zeros: x.count)
        c.module.backward(c.pass, try c.tensor("grad_output"), saved!, 10, x: nil, into: dx)
        assertClose(dx.array, try c.expected("grad_input"), rtol: 1e-4, atol: 1e-5, label: "ff backward")
    }

    func testAttention() throws {
        let s = try load("attention_self") { Attention($0, "module", queryDim: 16, heads: 2) }
        let x = try s.tensor("input")
        let (y, sv) = s.module.forward(s.pass, x, nil, 2, 9, 0)
        assertClose(y.array, try s.expected("output"), rtol: 1e-5, atol: 1e-5, label: "self-attention forward")
        let dx = Buffer(zeros: x.count)
        s.module.backward(s.pass, try s.tensor("grad_output"), x, nil, sv!, 2, 9, 0, into: dx)
        assertClose(dx.array, try s.expected("grad_input"), rtol: 1e-4, atol: 1e-5, label: "self-attention backward")

        let c = try load("attention_cross") { Attention($0, "module", queryDim: 16, contextDim: 12, heads: 2) }
        let q = try c.tensor("input"), ctx = try c.tensor("encoder_hidden_states")
        let (z, cv) = c.module.forward(c.pass, q, ctx, 2, 9, 7)
        assertClose(z.array, try c.expected("output"), rtol: 1e-5, atol: 1e-5, label: "cross-attention forward")
        let dq = Buffer(zeros: q.count)
        c.module.backward(c.pass, try c.tensor("grad_output"), q, ctx, cv!, 2, 9, 7, into: dq)
        assertClose(dq.array, try c.expected("grad_input"), rtol: 1e-4, atol: 1e-5, label: "cross-attention backward")
    }

    func testBasicTransformerBlock() throws {
        let c = try load("basic_transformer_block") { TransformerBlock($0, "module", dim: 16, heads: 2, contextDim: 12, lora: nil) }
        let x = try c.tensor("input"), ctx = try c.tensor("encoder_hidden_states")
        let (y, saved) = c.module.forward(c.pass, x, ctx, 2, 9, 7)
        assertClose(y.array, try c.expected("output"), rtol: 1e-5, atol: 1e-5, label: "block forward")
        let dx = c.module.backward(c.pass, try c.tensor("grad_output"), ctx, saved!, 2, 9, 7)
        assertClose(dx.array, try c.expected("grad_input"), rtol: 1e-4, atol: 1e-5, label: "block backward")
    }

    func checkTransformer2D(_ name: String, linear: Bool) throws {
        let c = try load(name) {
            Transformer2D($0, "module", channels: 16, heads: 2, contextDim: 12, layers: 1, groups: 4, linearProjection: linear, lora: nil)
        }
        let x = try c.tensor("input"), ctx = try c.tensor("encoder_hidden_states")
        let (y, saved) = c.module.forward(c.pass, x, ctx, 2, 3, 4, 7)
        assertClose(y.array, try c.expected("output"), rtol: 1e-5, atol: 1e-5, label: "\(name) forward")
        let dx = c.module.backward(c.pass, try c.tensor("grad_output"), ctx, saved!, 2, 3, 4, 7)
        assertClose(dx.array, try c.expected("grad_input"), rtol: 1e-4, atol: 1e-5, label: "\(name) backward")
    }

    func testTransformer2D() throws {
        try checkTransformer2D("transformer2d_conv", linear: false)
        try checkTransformer2D("transformer2d_linear", linear: true)
    }

    func checkResnet(_ name: String, cout: Int) throws {
        let c = try load(name) { ResnetBlock2D($0, "module", cin: 16, cout: cout, tembDim: 20, groups: 4, eps: 1e-5) }
        let x = try c.tensor("input")
        let temb = try c.tensor("temb")
        siluForward(out: temb.ptr, inp: temb.ptr, n: temb.count)      // the U-Net hands resnets SiLU(temb)
        let (y, saved) = c.module.forward(c.pass, x, temb: temb, 2, 5, 6)
        assertClose(y.array, try c.expected("output"), rtol: 1e-5, atol: 1e-5, label: "\(name) forward")
        let dx = c.module.backward(c.pass, try c.tensor("grad_output"), saved!, 2, 5, 6)
        assertClose(dx.array, try c.expected("grad_input"), rtol: 1e-4, atol: 1e-5, label: "\(name) backward")
    }

    func testResnets() throws {
        try checkResnet("resnet", cout: 16)
        try checkResnet("resnet_shortcut", cout: 24)
    }

    func testResampling() throws {
        let d = try load("downsample") { Downsample2D($0, "module", channels: 16) }
        let x = try d.tensor("input")
        assertClose(d.module.conv.forward(d.pass, x, 2, 6, 5).array, try d.expected("output"), rtol: 1e-5, atol: 1e-5, label: "downsample forward")
        assertClose(d.module.conv.backward(d.pass, try d.tensor("grad_output"), 2, 6, 5, x: nil).array, try d.expected("grad_input"),
                    rtol: 1e-4, atol: 1e-5, label: "downsample backward")
        let u = try load("upsample") { Upsample2D($0, "module", channels: 16) }
        let y = try u.tensor("input")
        assertClose(u.module.forward(u.pass, y, 2, 3, 4).array, try u.expected("output"), rtol: 1e-5, atol: 1e-5, label: "upsample forward")
        assertClose(u.module.backward(u.pass, try u.tensor("grad_output"), 2, 3, 4, x: nil).array, try u.expected("grad_input"),
                    rtol: 1e-4, atol: 1e-5, label: "upsample backward")
    }

    func testTimestepEmbedding() throws {
        let file = try SafeTensorsFile(path: "\(unetFixtures)/layers/timestep_embedding.safetensors")
        let t = try file.floats("input")
        let out = Buffer(uninitialized: 4 * 32)
        t.withUnsafeBufferPointer { timestepEmbedding(out: out.ptr, timesteps: $0.baseAddress!, B: 4, dim: 32, flipSinToCos: true, freqShift: 0) }
        assertClose(out.array, try file.floats("output"), rtol: 1e-5, atol: 2e-6, label: "timestep embedding")
        t.withUnsafeBufferPointer { timestepEmbedding(out: out.ptr, timesteps: $0.baseAddress!, B: 4, dim: 32, flipSinToCos: false, freqShift: 1) }
        assertClose(out.array, try file.floats("output_flip0_shift1"), rtol: 1e-5, atol: 2e-6, label: "timestep embedding, no flip, shift 1")
    }
}
