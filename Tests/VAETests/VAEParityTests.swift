// AutoencoderKL against diffusers on the random-weight `vae_tiny` fixture (Tests/parity/make_vae_fixtures.py):
// block_out_channels [16, 32, 32], layers_per_block 2, 8 groups, a 2×3×64×48 batch, references computed in float64.
// Tolerance: max abs error ≤ 1e-4 × the expected tensor's largest magnitude (outputs are O(1)).
import Foundation
import XCTest
import IO
import Tensors
import TestSupport
@testable import VAE

let vaeFixture = repoRoot + "/Tests/VAETests/Fixtures/vae_tiny"

final class VAEParityTests: XCTestCase {
    static let io = try! SafeTensorsFile(path: vaeFixture + "/io.safetensors")
    var io: SafeTensorsFile { Self.io }

    func map(_ key: String) throws -> FeatureMap {
        let s = io.info(key)!.shape
        return FeatureMap(Buffer(try io.floats(key)), batch: s[0], channels: s[1], height: s[2], width: s[3])
    }

    func assertScaled(_ actual: FeatureMap, _ key: String, tol: Float = 1e-4, file: StaticString = #filePath, line: UInt = #line) throws {
        let expected = try io.floats(key)
        XCTAssertEqual(actual.shape, io.info(key)!.shape, "\(key) shape", file: file, line: line)
        let scale = max(1, expected.reduce(0) { max($0, abs($1)) })
        assertClose(actual.buffer.array, expected, rtol: 0, atol: tol * scale, label: key, file: file, line: line)
        let err = zip(actual.buffer.array, expected).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        print("VAE parity \(key): max abs error \(err) (|expected| max \(scale))")
    }

    static let model = try! AutoencoderKL.load(modelFolder: vaeFixture)

    // MARK: - Untiled

    func testEncodeMomentsAndMeanLatents() throws {
        let m = Self.model
        XCTAssertEqual(m.downsamplingFactor, 4)
        XCTAssertEqual(m.scalingFactor, 0.3)
        let sample = try map("sample")
        try assertScaled(try m.encodeMoments(sample), "moments")
        try assertScaled(try m.encode(sample, mode: .mean), "latent_mean")
    }

    func testDecode() throws {
        try assertScaled(try Self.model.decode(try map("latent")), "decoded")
    }

    /// The sampling formula with diffusers' own noise: mean + std·ε, then × scaling_factor.
    func testPosteriorSampleGivenNoise() throws {
        let z = posteriorSample(try map("moments"), noise: try map("noise"))
        let sf = Self.model.scalingFactor
        for i in 0..<z.count { z.ptr[i] *= sf }
        try assertScaled(z, "latent_sample")
        // Moments large enough to hit both logvar clamps (−30 and 20): std = exp(10) there, so compare relatively.
        let clamped = posteriorSample(try map("posterior_moments"), noise: try map("posterior_noise"))
        assertClose(clamped.buffer.array, try io.floats("posterior_sample"), rtol: 1e-5, atol: 1e-5, label: "posterior_sample")
        XCTAssertEqual(posteriorMean(try map("posterior_moments")).buffer.array,
                       Array(try io.floats("posterior_moments")[0..<(4 * 15)]))
    }

    // MARK: - Tiled

    /// diffusers' enable_tiling with the config's sample_size (32 px tiles, 8 latent px), then 16 px tiles whose
    /// edge tiles are 4 px (1 latent px) high.
    func testTiledEncodeAndDecode() throws {
        let m = Self.model
        let auto = try m.tiling()
        XCTAssertEqual(auto, VAETiling(sampleTileSize: 32, latentTileSize: 8, overlapFactor: 0.25))
        for (tile, tiling) in [(32, auto), (16, try m.tiling(sampleTileSize: 16))] {
            let sample = try map("sample")
            try assertScaled(try m.encodeMoments(sample, tiling: tiling), "moments_tile\(tile)")
            try assertScaled(try m.encode(sample, mode: .mean, tiling: tiling), "latent_mean_tile\(tile)")
            try assertScaled(try m.decode(try map("latent"), tiling: tiling), "decoded_tile\(tile)")
        }
        // Inputs no larger than a tile are not tiled (diffusers' condition): same as untiled.
        let big = try m.tiling(sampleTileSize: 64)
        try assertScaled(try m.encodeMoments(try map("sample"), tiling: big), "moments")
        try assertScaled(try m.decode(try map("latent"), tiling: big), "decoded")
    }

    // MARK: - Sampled latents

    /// ε is N(0, 1) per image from its own stream: a batch and the same image encoded alone (at its global index)
    /// agree; the standardised draw (z/sf − mean)/std has mean ≈ 0 and variance ≈ 1; another seed differs.
    func testSampleModeDrawsPerImageNoise() throws {
        let m = Self.model
        let sample = try map("sample")
        let rng = CounterRNG(seed: 1234)
        let batch = try m.encode(sample, mode: .sample(rng: rng, firstImage: 10))
        let one = FeatureMap(Buffer(Array(sample.buffer.array[(3 * 64 * 48)...])), batch: 1, channels: 3, height: 64, width: 48)
        let alone = try m.encode(one, mode: .sample(rng: rng, firstImage: 11))
        let perImage = 4 * 16 * 12
        assertClose(Array(batch.buffer.array[perImage...]), alone.buffer.array, rtol: 1e-5, atol: 1e-6, label: "image 1 alone vs in batch")

        let moments = try io.floats("moments"), sf = m.scalingFactor
        var standardized: [Double] = []
        for b in 0..<2 { for i in 0..<perImage {
            let mean = moments[b * 2 * perImage + i], logvar = moments[b * 2 * perImage + perImage + i]
            let std = exp(0.5 * Double(logvar))
            standardized.append((Double(batch.buffer.array[b * perImage + i] / sf) - Double(mean)) / std)
        } }
        let mu = standardized.reduce(0, +) / Double(standardized.count)
        let variance = standardized.reduce(0) { $0 + ($1 - mu) * ($1 - mu) } / Double(standardized.count)
        XCTAssertLessThan(abs(mu), 0.15, "mean of ε")       // 1536 draws: sd of the mean ≈ 0.026
        XCTAssertEqual(variance, 1, accuracy: 0.15, "variance of ε")
        let other = try m.encode(sample, mode: .sample(rng: CounterRNG(seed: 1235), firstImage: 10))
        XCTAssertGreaterThan(zip(other.buffer.array, batch.buffer.array).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }, 1e-2)
    }

    // MARK: - Loading

    /// A copy of the fixture with the pre-0.14 attention names (query/key/value/proj_attn) in bf16 loads to the same
    /// parameters, rounded to bf16; a missing tensor and a duplicated one are errors that name them.
    func testOldAttentionNamesAndBF16Weights() throws {
        let dir = try temporaryDirectory(self)
        try FileManager.default.copyItem(atPath: vaeFixture + "/config.json", toPath: dir + "/config.json")
        let original = try SafeTensorsFile(path: vaeFixture + "/diffusion_pytorch_model.safetensors")
        func renamed(_ name: String) -> String {
            guard name.contains(".mid_block.attentions.") else { return name }
            return name.replacingOccurrences(of: ".to_q.", with: ".query.").replacingOccurrences(of: ".to_k.", with: ".key.")
                .replacingOccurrences(of: ".to_v.", with: ".value.").replacingOccurrences(of: ".to_out.0.", with: ".proj_attn.")
        }
        var entries: [SafeTensorsEntry] = []
        for name in original.tensorNames {
            entries.append(SafeTensorsEntry(name: renamed(name), shape: original.info(name)!.shape,
                                            floats: try original.floats(name), as: .BF16))
        }
        XCTAssertTrue(entries.contains { $0.name == "decoder.mid_block.attentions.0.proj_attn.weight" })
        let path = dir + "/diffusion_pytorch_model.safetensors"
        try SafeTensors.write(entries, to: path)
        let legacy = try AutoencoderKL.load(modelFolder: dir)
        let bf16 = try SafeTensorsFile(path: path)
        for name in original.tensorNames {
            XCTAssertEqual(legacy.parameter(name), try bf16.floats(renamed(name)), name)
        }
        XCTAssertNotEqual(legacy.parameter("decoder.conv_out.weight"), Self.model.parameter("decoder.conv_out.weight"),
                          "bf16 rounding should change some weights")

        // Missing tensor.
        try SafeTensors.write(entries.filter { $0.name != "encoder.conv_in.bias" }, to: path)
        XCTAssertThrowsError(try AutoencoderKL.load(modelFolder: dir)) {
            XCTAssertTrue("\($0)".contains("missing 1 tensor(s): encoder.conv_in.bias"), "\($0)")
        }
        // Old and new name of the same tensor.
        let q = entries.first { $0.name == "encoder.mid_block.attentions.0.query.weight" }!
        try SafeTensors.write(entries + [SafeTensorsEntry(name: "encoder.mid_block.attentions.0.to_q.weight", dtype: q.dtype,
                                                          shape: q.shape, bytes: q.bytes)], to: path)
        XCTAssertThrowsError(try AutoencoderKL.load(modelFolder: dir)) {
            XCTAssertTrue("\($0)".contains("given twice") && "\($0)".contains("attentions.0.query.weight"), "\($0)")
        }
    }

    /// Building only the encoder (as `hgdpo encode` will) loads the same encoder and skips the decoder's weights.
    func testEncoderOnly() throws {
        let m = try AutoencoderKL.load(modelFolder: vaeFixture, parts: .encoder)
        XCTAssertLessThan(m.parameterCount, Self.model.parameterCount)
        XCTAssertNil(m.parameter("decoder.conv_in.weight"))
        try assertScaled(try m.encodeMoments(try map("sample")), "moments")
        XCTAssertThrowsError(try m.decode(try map("latent"))) { XCTAssertTrue("\($0)".contains("without its decoder")) }
    }

    // MARK: - Errors

    func testUnsupportedConfigsNameTheKey() throws {
        var c = try ComponentFolder(path: vaeFixture).config(AutoencoderKLConfig.self)
        XCTAssertNoThrow(try VAESpec(c))
        func refused(_ c: AutoencoderKLConfig, _ key: String, line: UInt = #line) {
            XCTAssertThrowsError(try VAESpec(c, source: "x/config.json"), line: line) {
                guard case .unsupportedConfig(let path, let k, _) = $0 as? VAEError else { return XCTFail("\($0)", line: line) }
                XCTAssertEqual(path, "x/config.json", line: line)
                XCTAssertEqual(k, key, "\($0)", line: line)
            }
        }
        var d = c; d.downBlockTypes[1] = "AttnDownEncoderBlock2D"; refused(d, "down_block_types")
        d = c; d.upBlockTypes = ["UpDecoderBlock2D"]; refused(d, "up_block_types")
        d = c; d.normNumGroups = 5; refused(d, "norm_num_groups")
        d = c; d.actFn = "gelu"; refused(d, "act_fn")
        d = c; d.scalingFactor = 0; refused(d, "scaling_factor")
        // Per-channel latent statistics (not used by SD pipelines) are refused when loading a folder.
        let dir = try temporaryDirectory(self)
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: vaeFixture + "/config.json"))) as! [String: Any]
        json["latents_mean"] = [0.1, 0.2, 0.3, 0.4]
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: dir + "/config.json"))
        XCTAssertThrowsError(try AutoencoderKL.load(modelFolder: dir)) {
            XCTAssertTrue("\($0)".contains("config.json: unsupported AutoencoderKL config: 'latents_mean'"), "\($0)")
        }
        // Config variants that are supported: no quant convs, no mid-block attention, a shift factor.
        c.useQuantConv = false; c.usePostQuantConv = false; c.midBlockAddAttention = false; c.shiftFactor = 0.1
        let m = AutoencoderKL(spec: try VAESpec(c))
        XCTAssertNil(m.parameter("quant_conv.weight"))
        XCTAssertNil(m.parameter("encoder.mid_block.attentions.0.to_q.weight"))
        m.randomizeWeights(seed: 1)
        XCTAssertEqual(try m.decode(try map("latent")).shape, [2, 3, 64, 48])
    }

    func testBadInputsAndTilesAreErrors() throws {
        let m = Self.model
        let odd = FeatureMap(Buffer(zeros: 3 * 30 * 32), batch: 1, channels: 3, height: 30, width: 32)
        XCTAssertThrowsError(try m.encode(odd)) { XCTAssertTrue("\($0)".contains("multiples of 4"), "\($0)") }
        let gray = FeatureMap(Buffer(zeros: 32 * 32), batch: 1, channels: 1, height: 32, width: 32)
        XCTAssertThrowsError(try m.encode(gray)) { XCTAssertTrue("\($0)".contains("1 channels"), "\($0)") }
        let latents8 = FeatureMap(Buffer(zeros: 8 * 4 * 4), batch: 1, channels: 8, height: 4, width: 4)
        XCTAssertThrowsError(try m.decode(latents8)) { XCTAssertTrue("\($0)".contains("latent_channels is 4"), "\($0)") }
        XCTAssertThrowsError(try m.tiling(sampleTileSize: 20)) { XCTAssertTrue("\($0)".contains("multiple of 16"), "\($0)") }
        XCTAssertThrowsError(try m.tiling(sampleTileSize: 1))
    }

    // MARK: - Blends

    /// blend_v / blend_h on hand-made maps, against the formula written out.
    func testBlendRamps() {
        let a = FeatureMap(Buffer((0..<12).map { Float($0) }), batch: 1, channels: 1, height: 4, width: 3)
        let b = FeatureMap(Buffer([Float](repeating: 100, count: 9)), batch: 1, channels: 1, height: 3, width: 3)
        blendVertical(a, into: b, extent: 2)
        // rows 0, 1 of b = a rows 2, 3 · (1 − y/2) + 100 · y/2
        let expected: [Float] = [6, 7, 8, 54.5, 55, 55.5, 100, 100, 100]   // row 1: 0.5 · a[3] + 0.5 · 100
        XCTAssertEqual(b.buffer.array, expected)
        let c = FeatureMap(Buffer([Float](repeating: 0, count: 8)), batch: 1, channels: 1, height: 2, width: 4)
        let d = FeatureMap(Buffer([1, 1, 1, 1, 2, 2, 2, 2]), batch: 1, channels: 1, height: 2, width: 4)
        blendHorizontal(d, into: c, extent: 8)   // extent clamps to the width 4: weights 0, 1/4, 1/2, 3/4 on c
        let ramp: [Float] = [1, 0.75, 0.5, 0.25, 2, 1.5, 1, 0.5]
        XCTAssertEqual(c.buffer.array, ramp)
    }
}

final class FeatureMapImageTests: XCTestCase {
    func testImagesBatchAndBack() throws {
        let a = try Image(width: 3, height: 2, channels: 3, pixels: (0..<18).map { Float($0) / 18 })
        let b = try Image(width: 3, height: 2, channels: 3, pixels: (0..<18).map { -Float($0) / 18 })
        let batch = try FeatureMap(images: [a, b])
        XCTAssertEqual(batch.shape, [2, 3, 2, 3])
        XCTAssertEqual(try batch.image(0), a)
        XCTAssertEqual(try batch.image(1), b)
        let gray = try Image(width: 3, height: 2, channels: 1, pixels: [Float](repeating: 0, count: 6))
        XCTAssertThrowsError(try FeatureMap(images: [a, gray])) { XCTAssertTrue("\($0)".contains("image 1"), "\($0)") }
        XCTAssertThrowsError(try FeatureMap(images: []))
    }
}
