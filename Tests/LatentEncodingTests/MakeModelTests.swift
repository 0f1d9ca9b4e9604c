// `hgdpo make-model` writes a pipeline our loaders read (the diffusers/transformers side is Tests/parity/check_make_model.py):
// every component loads (fp32 and the fp16 variant), the byte-level tokenizer gives the expected ids, the weights
// have the reference init's scales, and text encoder → U-Net and VAE run to finite outputs.
import Foundation
import IO
import Tensors
import TestSupport
import TextEncoder
import UNet
import VAE
import XCTest

final class MakeModelTests: XCTestCase {
    func std(_ x: [Float]) -> Float {
        let m = x.reduce(0, +) / Float(x.count)
        return (x.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Float(x.count)).squareRoot()
    }

    func testTinyPipelineLoadsInOurLoaders() throws {
        let model = try temporaryDirectory(self) + "/tiny"
        let r = try hgdpo(["make-model", "--shape", "tiny", "--out", model, "--variant", "fp16"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let folder = try ModelFolder(path: model)
        XCTAssertEqual(Set(folder.components.keys), ["unet", "scheduler", "text_encoder", "tokenizer", "vae"])

        // Tokenizer: one token per byte, the last of a word with </w>; BOS 512, EOS 513, padding with EOS.
        let prompts = try PromptEncoder.load(folder)
        let ids = prompts.tokenizer.encode("Hi, é!")
        // Byte symbol ids: "!"…"~" are 0…93, "¡"…"¬" 94…105, "®"…"ÿ" 106…187; +256 with </w>.
        // "hi" → h (104 − 33), i</w>; "," → ,</w>; "é" = C3 A9 → 106 + (0xC3 − 0xAE), 94 + (0xA9 − 0xA1) + 256; "!</w>".
        XCTAssertEqual(ids, [512, 71, 72 + 256, 11 + 256, 106 + 0x15, 94 + 8 + 256, 256] + [Int](repeating: 513, count: 70))
        XCTAssertEqual(prompts.tokenizer.tokens([ids[1], ids[2]]), ["h", "i</w>"])

        // Text encoder: transformers' init scales; the fp16 variant loads to the same values rounded.
        let q = prompts.model.weights.namedParameters.first { $0.key == "encoder.layers.0.self_attn.q_proj.weight" }!
        XCTAssertEqual(std(Array(q.values)), 1 / (32 as Float).squareRoot() / (4 as Float).squareRoot(), accuracy: 0.01)
        let half = try PromptEncoder.load(folder, variant: "fp16")
        let q16 = half.model.weights.namedParameters.first { $0.key == q.key }!
        assertClose(Array(q16.values), Array(q.values), rtol: 1e-3, atol: 1e-6, label: "fp16 variant")
        let context = try prompts.encode(prompts: ["a photo of a person, (bust shot:1.2)"])
        let c = Array(UnsafeBufferPointer(start: context.hiddenStates.ptr, count: 77 * 32))
        XCTAssertTrue(c.allSatisfy(\.isFinite))
        XCTAssertEqual(std(c), 1, accuracy: 0.3, "final layer norm output")

        // VAE: PyTorch's default init (conv weights U(±1/√fan_in)); an encode is finite and small.
        let vae = try AutoencoderKL.load(modelFolder: model)
        let conv = vae.weights.namedParameters.first { $0.key == "encoder.conv_in.weight" }!
        XCTAssertEqual(conv.values.map { abs($0) }.max()!, 1 / (27 as Float).squareRoot(), accuracy: 0.01)
        XCTAssertEqual(vae.weights.namedParameters.first { $0.key == "encoder.conv_norm_out.weight" }!.values.allSatisfy { $0 == 1 }, true)
        let image = FeatureMap(batch: 1, channels: 3, height: 64, width: 64)
        CounterRNG(seed: 1).fillUniform(UnsafeMutableBufferPointer(start: image.ptr, count: image.count))
        let z = try vae.encode(image, mode: .mean)
        let zs = Array(UnsafeBufferPointer(start: z.ptr, count: z.count))
        XCTAssertEqual(z.shape, [1, 4, 8, 8])
        XCTAssertTrue(zs.allSatisfy { $0.isFinite && abs($0) < 10 })
        let decoded = try vae.decode(z)
        XCTAssertTrue(Array(UnsafeBufferPointer(start: decoded.ptr, count: decoded.count)).allSatisfy(\.isFinite))

        // U-Net on those latents and that context.
        let unet = try UNetModel.load(folder: folder.unet())
        let sample = Buffer(uninitialized: zs.count)
        zs.withUnsafeBufferPointer { sample.ptr.update(from: $0.baseAddress!, count: zs.count) }
        let eps = try unet.forward(sample: sample, timesteps: [500], context: context.hiddenStates,
                                   batch: 1, height: 8, width: 8, contextLength: 77, loraScale: nil)
        XCTAssertTrue(Array(UnsafeBufferPointer(start: eps.ptr, count: eps.count)).allSatisfy(\.isFinite))
    }

    func testPartsUnetWritesTheOldLayout() throws {
        let model = try temporaryDirectory(self) + "/unet-only"
        let r = try hgdpo(["make-model", "--shape", "tiny", "--out", model, "--parts", "unet"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(Set(try ModelFolder(path: model).components.keys), ["unet", "scheduler"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: model + "/vae"))
        let bad = try hgdpo(["make-model", "--shape", "tiny", "--out", model + "2", "--parts", "vae"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("--parts"), bad.stderr)
    }
}
