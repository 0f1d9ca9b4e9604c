// Pixel-space pipelines (a folder without vae/, VAE/LatentSpace.swift) through `hgdpo sample` and `hgdpo encode`, on
// a tiny random toy-world pipeline from `hgdpo world make-model`: the latents are the RGB image in [-1, 1].
import Datasets
import Foundation
import IO
import Sampling
import Tensors
import TestSupport
import TextEncoder
import ToyWorld
import VAE
import XCTest

final class PixelSpaceTests: XCTestCase {
    /// A 2-level (16, 32 channels) toy pipeline for 16x16 images.
    func makeModel() throws -> String {
        let model = try temporaryDirectory(self) + "/toy"
        let r = try hgdpo(["world", "make-model", "--out", model, "--size", "16", "--channels", "16,32", "--text-width", "32",
                           "--seed", "3"])
        XCTAssertEqual(r.status, 0, r.stderr)
        return model
    }

    func testToyPipelineIsPixelSpaceWithAGrammarTokenizer() throws {
        let model = try makeModel()
        let folder = try ModelFolder(path: model)
        XCTAssertEqual(Set(folder.components.keys), ["unet", "scheduler", "text_encoder", "tokenizer"])
        XCTAssertTrue(LatentSpace.isPixelSpace(folder))
        // Pixel-space DDPM's schedule, and x̂₀ clipped to the image range at every DDPM / DDIM step (without it the toy
        // SFT model's samples keep their noise: docs/toyworld.md).
        let scheduler = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: model + "/scheduler/scheduler_config.json")))
            as! [String: Any]
        XCTAssertEqual(scheduler["beta_schedule"] as? String, "linear")
        XCTAssertEqual(scheduler["clip_sample"] as? Bool, true)
        guard case .pixels = try LatentSpace.load(folder, parts: .all) else { return XCTFail("expected pixel space") }
        // Every grammar word is one token; a prompt is BOS, one id per word, EOS, padded with EOS to 16.
        let tokenizer = try CLIPTokenizer.load(folder)
        XCTAssertEqual(tokenizer.maxLength, 16)
        for word in Description.words {
            let ids = tokenizer.encode(word)
            XCTAssertEqual(ids[2], tokenizer.eosId, "\(word) is not one token: \(tokenizer.tokens(Array(ids.prefix(4))))")
            XCTAssertEqual(tokenizer.tokens([ids[1]]), [word + "</w>"])
        }
        let prompt = "three people in yellow shirts with arms up on a city street"
        let ids = tokenizer.encode(prompt)
        XCTAssertEqual(tokenizer.tokens(Array(ids[1...12])), prompt.split(separator: " ").map { $0 + "</w>" })
        XCTAssertEqual(ids[0], tokenizer.bosId)
        XCTAssertEqual(Array(ids[13...]), [Int](repeating: tokenizer.eosId, count: 3))
        // Other text still tokenizes, byte by byte.
        XCTAssertEqual(tokenizer.tokens(Array(tokenizer.encode("zoo")[1...3])), ["z", "o", "o</w>"])
    }

    /// Sampling decodes nothing: the images are the final latents / 2 + 0.5, clamped.
    func testSampleInPixelSpace() throws {
        let model = try makeModel()
        let pipeline = try TextToImagePipeline.load(modelFolder: model)
        XCTAssertEqual(try pipeline.latentSize(height: 16, width: 16).h, 16)
        let p = SamplingParameters(steps: 3, guidanceScale: 2, height: 16, width: 16)
        let cond = try pipeline.encode(prompts: ["a person in a red shirt waving on a green field"])
        let (images, latents) = try pipeline.generate(conditioning: cond, seeds: [5], parameters: p)
        XCTAssertEqual(images.shape, [1, 3, 16, 16])
        let x = Array(UnsafeBufferPointer(start: latents.ptr, count: 3 * 16 * 16))
        let y = Array(UnsafeBufferPointer(start: images.ptr, count: 3 * 16 * 16))
        XCTAssertEqual(y, x.map { min(max($0 / 2 + 0.5, 0), 1) })
        XCTAssertGreaterThan(Set(x).count, 100)

        let out = try temporaryDirectory(self) + "/out"
        var r = try hgdpo(["sample", "--model", model, "--prompt", "two people in blue shirts sitting on a beach", "--height", "16",
                           "--width", "16", "--steps", "3", "--images-per-prompt", "2", "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        let image = try PNG.readBytes(out + "/000001-seed1.png")
        XCTAssertEqual([image.width, image.height, image.channels], [16, 16, 3])
        // Any size the U-Net takes, not only multiples of a VAE's 8: 20x12 works too; --vae-tile has nothing to tile.
        r = try hgdpo(["sample", "--model", model, "--prompt", "x", "--height", "20", "--width", "12", "--steps", "2", "--out", out + "2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try PNG.readBytes(out + "2/000000-seed0.png").width, 12)
        let tile = try hgdpo(["sample", "--model", model, "--prompt", "x", "--height", "16", "--width", "16", "--vae-tile", "auto",
                              "--out", out + "3"])
        XCTAssertEqual(tile.status, 2)
        XCTAssertTrue(tile.stderr.contains("pixel-space"), tile.stderr)
    }

    /// The cache holds each image itself in [-1, 1] (fp16) and the prompt's 16 token states.
    func testEncodeInPixelSpace() throws {
        let model = try makeModel()
        let dir = try temporaryDirectory(self)
        let data = dir + "/data", cache = dir + "/cache"
        var r = try hgdpo(["world", "dataset", "--count", "5", "--size", "16", "--out", data])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try hgdpo(["encode", "--model", model, "--data", data, "--out", cache, "--resolution", "16", "--shard-size", "4"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let opened = try LatentCache.open(cache)
        XCTAssertEqual(opened.latentShape, [3, 16, 16])
        XCTAssertEqual(opened.contextShape, [16, 32])
        let shard = try SafeTensorsFile(path: cache + "/" + LatentCacheFormat.shardFileName(1))
        let loser = try shard.floats(LatentCacheFormat.loserTensor)   // triplet 4 is row 0 of shard 1
        let png = try PNG.readBytes(data + "/images/000004l.png")
        var expected = [Float](repeating: 0, count: 3 * 256)
        for i in 0..<256 { for c in 0..<3 { expected[c * 256 + i] = Float(png.pixels[i * 3 + c]) / 127.5 - 1 } }
        assertClose(Array(loser.prefix(768)), expected, rtol: 0, atol: 1e-3, label: "pixel latents")
        // A VAE tile size makes no sense here.
        r = try hgdpo(["encode", "--model", model, "--data", data, "--out", dir + "/cache2", "--resolution", "16", "--vae-tile", "auto"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("pixel-space"), r.stderr)
    }
}
