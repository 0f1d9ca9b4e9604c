import Foundation
import XCTest
import IO
import NN
import Tensors
import TestSupport
@testable import UNet

/// The whole UNet2DConditionModel against diffusers (+ peft LoRA) on two random-weight configs:
/// `unet_conv` (SD1.5-style: conv projections, int head count) and `unet_linear` (SD2-style: linear projections,
/// per-block heads, non-square 8x12 latent, two layers per block).
final class UNetParityTests: XCTestCase {
    struct Fixture {
        let folder: String
        let io: SafeTensorsFile
        let b, c, h, w, s: Int
        let timesteps: [Float]
        let sample: Buffer, context: Buffer
    }

    func fixture(_ name: String) throws -> Fixture {
        let folder = "\(unetFixtures)/unet_\(name)"
        let io = try SafeTensorsFile(path: folder + "/io.safetensors")
        let shape = io.info("sample")!.shape
        return Fixture(folder: folder, io: io, b: shape[0], c: shape[1], h: shape[2], w: shape[3],
                       s: io.info("encoder_hidden_states")!.shape[1], timesteps: try io.floats("timestep"),
                       sample: Buffer(try io.floats("sample")), context: Buffer(try io.floats("encoder_hidden_states")))
    }

    /// Max abs error ≤ tol × the expected output's scale (max |value|).
    func assertScaled(_ actual: [Float], _ expected: [Float], tol: Float, label: String, file: StaticString = #filePath, line: UInt = #line) {
        let scale = expected.reduce(0) { max($0, abs($1)) }
        assertClose(actual, expected, rtol: 0, atol: tol * scale, label: label, file: file, line: line)
    }

    func model(_ f: Fixture, lora: String? = nil) throws -> UNetModel {
        let folder = ComponentFolder(path: f.folder)
        guard let lora else { return try UNetModel.load(folder: folder) }
        let weights = try LoRAFile.read(f.folder + "/" + lora)
        let m = try UNetModel.load(folder: folder, lora: (weights.rank, weights.alpha))
        let missing = try m.lora!.assign(weights, source: lora)
        XCTAssertEqual(missing, [], "modules the LoRA file does not cover")
        return m
    }

    func forward(_ m: UNetModel, _ f: Fixture, scale: Float?) throws -> Buffer {
        try m.forward(sample: f.sample, timesteps: f.timesteps, context: f.context, batch: f.b, height: f.h, width: f.w,
                      contextLength: f.s, loraScale: scale)
    }

    func forwardTraining(_ m: UNetModel, _ f: Fixture, scale: Float?) throws -> (output: Buffer, saved: UNetActivations) {
        try m.forwardTraining(sample: f.sample, timesteps: f.timesteps, context: f.context, batch: f.b, height: f.h, width: f.w,
                              contextLength: f.s, loraScale: scale)
    }

    func checkForward(_ name: String) throws {
        let f = try fixture(name)
        let base = try model(f)
        assertScaled(try forward(base, f, scale: nil).array, try f.io.floats("output"), tol: 1e-4, label: "\(name) output")
        let m = try model(f, lora: "lora_diffusers.safetensors")
        XCTAssertEqual(m.lora!.rank, 4)
        XCTAssertEqual(m.lora!.alpha, 8)
        assertScaled(try forward(m, f, scale: 1).array, try f.io.floats("output_lora_1"), tol: 1e-4, label: "\(name) LoRA scale 1")
        assertScaled(try forward(m, f, scale: 0.5).array, try f.io.floats("output_lora_0.5"), tol: 1e-4, label: "\(name) LoRA scale 0.5")
        // Adapters off = the reference model, from the same weights.
        assertScaled(try forward(m, f, scale: nil).array, try f.io.floats("output"), tol: 1e-4, label: "\(name) adapters off")
    }

    func testForwardConvProjections() throws { try checkForward("conv") }
    func testForwardLinearProjections() throws { try checkForward("linear") }

    func checkGradients(_ name: String) throws {
        let f = try fixture(name)
        let m = try model(f, lora: "lora_diffusers.safetensors")
        let (out, saved) = try forwardTraining(m, f, scale: 1)
        XCTAssertEqual(out.count, f.b * f.c * f.h * f.w)
        m.lora!.zeroGrad()
        let dsample = m.backward(Buffer(try f.io.floats("loss_weights")), saved, wantSampleGradient: true)!
        assertScaled(dsample.array, try f.io.floats("grad_sample"), tol: 1e-4, label: "\(name) d loss / d sample")
        // Every LoRA gradient within 1e-3 relative (L2) of autograd's.
        var checked = 0
        for t in m.lora!.targets {
            for (suffix, ptr, count) in [("lora_A", m.lora!.gradA(t), m.lora!.rank * t.inFeatures),
                                         ("lora_B", m.lora!.gradB(t), t.outFeatures * m.lora!.rank)] {
                let expected = try f.io.floats("grad.\(t.module).\(suffix).weight")
                let actual = Array(UnsafeBufferPointer(start: ptr, count: count))
                var num = 0.0, den = 0.0
                for i in 0..<count { num += Double(actual[i] - expected[i]) * Double(actual[i] - expected[i]); den += Double(expected[i] * expected[i]) }
                XCTAssertLessThanOrEqual((num / max(den, 1e-30)).squareRoot(), 1e-3, "\(name) grad \(t.module).\(suffix)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, m.lora!.targets.count * 2)
        XCTAssertGreaterThan(checked, 8)
    }

    func testLoRAGradientsConvProjections() throws { try checkGradients("conv") }
    func testLoRAGradientsLinearProjections() throws { try checkGradients("linear") }

    /// Full-parameter training (`--train unet`): every parameter's gradient of sum(output · loss_weights) against
    /// autograd (weight_grads.safetensors, Tests/parity/make_weight_grad_fixtures.py): all norm weights and biases, all
    /// biases, and matrices of every kind (convs, shortcut, resamplers, time embedding, projections, attention, ff).
    func checkWeightGradients(_ name: String) throws {
        let f = try fixture(name)
        let m = try model(f)
        m.enableWeightGradients()
        let (_, saved) = try forwardTraining(m, f, scale: nil)
        m.backward(Buffer(try f.io.floats("loss_weights")), saved)
        let expected = try SafeTensorsFile(path: f.folder + "/weight_grads.safetensors")
        let grads = m.weightGrads!.ptr
        var worst = (0.0, "")
        for key in expected.tensorNames {
            let e = m.weights.table.entry(String(key.dropFirst("grad.".count)))!
            let want = try expected.floats(key), got = Array(UnsafeBufferPointer(start: grads + e.offset, count: e.count))
            var num = 0.0, den = 0.0
            for i in 0..<e.count { num += Double(got[i] - want[i]) * Double(got[i] - want[i]); den += Double(want[i] * want[i]) }
            let rel = (num / max(den, 1e-30)).squareRoot()
            XCTAssertLessThanOrEqual(rel, 1e-3, "\(name) \(key)")
            if rel > worst.0 { worst = (rel, key) }
        }
        XCTAssertGreaterThan(expected.tensorNames.count, 100)
        print(String(format: "unet_%@: %d parameter gradients, worst relative error %.2e (%@)", name, expected.tensorNames.count,
                     worst.0, worst.1))
    }

    func testWeightGradientsConvProjections() throws { try checkWeightGradients("conv") }
    func testWeightGradientsLinearProjections() throws { try checkWeightGradients("linear") }

    /// Gradient checkpointing recomputes each block's forward from its kept input: the same operations in the same
    /// order, so the LoRA gradients and d/d sample are bit-identical to a cached run, also with a reference forward
    /// (adapters off, as the trainer runs it) between the policy forward and its backward.
    func testGradientCheckpointingGivesIdenticalGradients() throws {
        for name in ["conv", "linear"] {
            let f = try fixture(name)
            var results: [(grads: [Float], dsample: [Float], out: [Float])] = []
            for checkpointing in [false, true] {
                let m = try model(f, lora: "lora_diffusers.safetensors")
                m.gradientCheckpointing = checkpointing
                let (out, saved) = try forwardTraining(m, f, scale: 1)
                if checkpointing { XCTAssertGreaterThan(saved.recomputedBlockCount, 4) } else { XCTAssertEqual(saved.recomputedBlockCount, 0) }
                _ = try forward(m, f, scale: nil)
                m.lora!.zeroGrad()
                let dsample = m.backward(Buffer(try f.io.floats("loss_weights")), saved, wantSampleGradient: true)!
                results.append((m.lora!.grads.array, dsample.array, out.array))
            }
            XCTAssertEqual(results[0].out, results[1].out, "\(name): forward output")
            XCTAssertEqual(results[0].dsample, results[1].dsample, "\(name): d loss / d sample")
            XCTAssertEqual(results[0].grads, results[1].grads, "\(name): LoRA gradients")
            XCTAssertTrue(results[1].grads.contains { $0 != 0 }, "\(name): gradients are not all zero")
        }
    }

    /// Without d(sample), the backward stops after the lowest layer with a LoRA target (down_blocks.0.attentions.0:
    /// down_blocks.0.resnets.0 and conv_in are left out). The LoRA gradients are the same bits as a backward that goes
    /// all the way down for d(sample), with and without gradient checkpointing, and the lowest target's are not zero.
    func testBackwardStopsBelowTheLowestLoRALayerWithTheSameGradients() throws {
        for name in ["conv", "linear"] {
            let f = try fixture(name)
            for checkpointing in [false, true] {
                let m = try model(f, lora: "lora_diffusers.safetensors")
                m.gradientCheckpointing = checkpointing
                let dout = Buffer(try f.io.floats("loss_weights"))
                var grads: [[Float]] = []
                for wantSample in [true, false] {
                    let saved = try forwardTraining(m, f, scale: 1).saved
                    m.lora!.zeroGrad()
                    let dsample = m.backward(dout, saved, wantSampleGradient: wantSample)
                    XCTAssertEqual(dsample == nil, !wantSample)
                    grads.append(m.lora!.grads.array)
                }
                XCTAssertEqual(grads[0], grads[1], "\(name), checkpointing \(checkpointing): LoRA gradients")
                let lowest = try XCTUnwrap(m.lora!.targets.first { $0.module.hasPrefix("down_blocks.0.attentions.0.") })
                XCTAssertTrue(grads[1][lowest.offsetB..<(lowest.offsetB + lowest.outFeatures * m.lora!.rank)].contains { $0 != 0 },
                              "\(name): \(lowest.module)'s gradients are not all zero")
            }
        }
    }

    /// Modules hold no state between calls: two training forwards (LoRA scales 1 and 0.5), then their backwards in
    /// the other order, give each forward its own gradients, bit for bit as one forward followed by its backward.
    func testInterleavedTrainingForwards() throws {
        let f = try fixture("conv")
        let m = try model(f, lora: "lora_diffusers.safetensors")
        let dout = Buffer(try f.io.floats("loss_weights"))
        func gradients(_ saved: UNetActivations) -> [Float] {
            m.lora!.zeroGrad()
            m.backward(dout, saved)
            return m.lora!.grads.array
        }
        let one = gradients(try forwardTraining(m, f, scale: 1).saved)
        let half = gradients(try forwardTraining(m, f, scale: 0.5).saved)
        XCTAssertNotEqual(one, half)
        let first = try forwardTraining(m, f, scale: 1).saved, second = try forwardTraining(m, f, scale: 0.5).saved
        XCTAssertEqual(gradients(second), half, "the later forward's backward first")
        XCTAssertEqual(gradients(first), one, "then the earlier forward's")
    }

    func testLoRAFileFormats() throws {
        let f = try fixture("conv")
        let expected = try f.io.floats("output_lora_1")
        for file in ["lora_diffusers.safetensors", "lora_peft.safetensors", "lora_kohya.safetensors"] {
            guard FileManager.default.fileExists(atPath: f.folder + "/" + file) else { XCTFail("fixture \(file) missing"); continue }
            let w = try LoRAFile.read(f.folder + "/" + file)
            XCTAssertEqual(w.rank, 4, file)
            let m = try model(f, lora: file)
            assertScaled(try forward(m, f, scale: 1).array, expected, tol: 1e-4, label: file)
        }
    }

    /// A LoRA saved by hgdpo reads back identically and has diffusers' key names.
    func testLoRASaveRoundTrip() throws {
        let f = try fixture("conv")
        let m = try model(f, lora: "lora_diffusers.safetensors")
        let dir = try temporaryDirectory(self)
        let path = dir + "/pytorch_lora_weights.safetensors"
        try LoRAFile.write(m.lora!, to: path)
        let ours = try SafeTensorsFile(path: path)
        let theirs = try SafeTensorsFile(path: f.folder + "/lora_diffusers.safetensors")
        XCTAssertEqual(Set(ours.tensorNames), Set(theirs.tensorNames))
        for name in theirs.tensorNames { XCTAssertEqual(try ours.floats(name), try theirs.floats(name), name) }
        let back = try LoRAFile.read(path)
        XCTAssertEqual(back.alpha, 8)
        XCTAssertEqual(back.rank, 4)
        XCTAssertEqual(back.format, .diffusers)
    }

    func testBadLoRAFilesAreClearErrors() throws {
        let f = try fixture("conv")
        let dir = try temporaryDirectory(self)
        // A module this U-Net does not have, and a shape mismatch.
        let bad = dir + "/bad.safetensors"
        try SafeTensors.write([
            SafeTensorsEntry(name: "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight", shape: [4, 32], floats: [Float](repeating: 0, count: 128)),
            SafeTensorsEntry(name: "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight", shape: [32, 4], floats: [Float](repeating: 0, count: 128)),
            SafeTensorsEntry(name: "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight", shape: [4, 31], floats: [Float](repeating: 0, count: 124)),
            SafeTensorsEntry(name: "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight", shape: [32, 4], floats: [Float](repeating: 0, count: 128)),
        ], to: bad)
        let w = try LoRAFile.read(bad)
        let m = try UNetModel.load(folder: ComponentFolder(path: f.folder), lora: (4, 4))
        XCTAssertThrowsError(try m.lora!.assign(w, source: bad)) { e in
            let msg = "\(e)"
            XCTAssertTrue(msg.contains("down_blocks.7") && msg.contains("not in this U-Net") && msg.contains("shape mismatches"), msg)
        }
        // Keys that are no LoRA at all.
        let junk = dir + "/junk.safetensors"
        try SafeTensors.write([SafeTensorsEntry(name: "conv_in.weight", shape: [1], floats: [0])], to: junk)
        XCTAssertThrowsError(try LoRAFile.read(junk)) { e in XCTAssertTrue("\(e)".contains("conv_in.weight"), "\(e)") }
    }

    func testUnsupportedConfigIsRefusedNamingTheKey() throws {
        var c = UNet2DConditionConfig()
        c.classEmbedType = "timestep"
        XCTAssertThrowsError(try UNetSpec(c)) { XCTAssertEqual(($0 as? UNetConfigError)?.key, "class_embed_type") }
        c = UNet2DConditionConfig()
        c.attentionHeadDim = .list([8, 8])
        XCTAssertThrowsError(try UNetSpec(c)) { XCTAssertEqual(($0 as? UNetConfigError)?.key, "attention_head_dim") }
        for only in [OneOrList<Bool>.one(true), .list([false, true, false, false])] {
            c = UNet2DConditionConfig()
            c.onlyCrossAttention = only
            XCTAssertThrowsError(try UNetSpec(c)) { XCTAssertEqual(($0 as? UNetConfigError)?.key, "only_cross_attention") }
        }
        c = UNet2DConditionConfig()
        c.onlyCrossAttention = .list([false, false, false, false])
        XCTAssertNoThrow(try UNetSpec(c))
        c = UNet2DConditionConfig()
        c.downBlockTypes[0] = "AttnDownBlock2D"
        XCTAssertThrowsError(try UNetSpec(c)) { XCTAssertEqual(($0 as? UNetConfigError)?.key, "down_block_types") }
        let sd15 = try UNetSpec(UNet2DConditionConfig())
        XCTAssertThrowsError(try sd15.checkLatentSize(height: 60, width: 64))
    }

    /// A weight file that does not fit the config names the offending tensors.
    func testMismatchedWeightsAreClearErrors() throws {
        let f = try fixture("conv")
        var cfg = try ComponentFolder(path: f.folder).config(UNet2DConditionConfig.self)
        cfg.crossAttentionDim = .one(32)
        let m = UNetModel(spec: try UNetSpec(cfg))
        XCTAssertThrowsError(try m.weights.load(files: [f.folder + "/diffusion_pytorch_model.safetensors"], model: "U-Net")) { e in
            XCTAssertTrue("\(e)".contains("attn2.to_k.weight") && "\(e)".contains("wrong shape"), "\(e)")
        }
    }
}
