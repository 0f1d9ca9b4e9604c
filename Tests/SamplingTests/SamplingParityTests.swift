// The text-to-image pipeline against diffusers' StableDiffusionPipeline on the random-weight fixture pipeline of
// Tests/parity/make_sampling_fixtures.py (2 prompts, one with a negative prompt, 64x48 images, 8x6 latents, 10 steps,
// the same initial latents as diffusers' `latents=`):
//   cfg          DPM-Solver++ 2M, guidance 5
//   lora         the same with a peft LoRA at scale 0.5
//   lan          the LoRA at 0.5 with LAN (HG-DPO Eq. 7), reference written out in Python from the paper
//   euler_nocfg  Euler (init_noise_sigma ≈ 14.6, scaled model inputs), guidance 1 (no CFG)
//   odd_size     as cfg at 72x56 (latents 9x7: the U-Net's upsampler is resized to its 9x7 skip, as diffusers)
// Measured: the max abs error of the images in [0, 1] (≤ 1e-3) and of the final latents relative to their largest
// magnitude (≤ 1e-4: the random U-Net drives latents to |x| ≈ 50, so an absolute bound on them says little).
import Foundation
import XCTest
import IO
import Schedulers
import Tensors
import TestSupport
import UNet
@testable import Sampling

let samplingFixtures = repoRoot + "/Tests/SamplingTests/Fixtures"

struct FixtureRun: Decodable {
    let prompts: [String]
    let negative_prompts: [String]
    let steps: Int, height: Int, width: Int
    let guidance: Float
    let scheduler: String
    let lora_scale: Float?
    let lan: Bool
}

final class SamplingParityTests: XCTestCase {
    static let runsFile = try! SafeTensorsFile(path: samplingFixtures + "/runs.safetensors")
    static let runs: [String: FixtureRun] = try! JSONDecoder().decode([String: FixtureRun].self,
                                                                       from: runsFile.metadata["runs"]!.data(using: .utf8)!)
    static let lora = try! LoRAFile.read(samplingFixtures + "/lora.safetensors")
    /// One pipeline with the LoRA loaded (runs without it use loraScale nil: adapters off).
    static let pipeline = try! TextToImagePipeline.load(modelFolder: samplingFixtures + "/pipeline", lora: lora,
                                                        loraSource: "lora.safetensors")

    func pipeline(scheduler: String) throws -> TextToImagePipeline {
        let p = Self.pipeline
        if scheduler == p.scheduler.kind.rawValue { return p }
        let recipe = SchedulerRecipe(kind: SchedulerKind(rawValue: scheduler)!, configJSON: p.scheduler.configJSON,
                                     source: p.scheduler.source)
        return try TextToImagePipeline(unet: p.unet, latentSpace: p.latentSpace, scheduler: recipe, promptEncoder: p.promptEncoder)
    }

    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let run = Self.runs[name]!
        let io = Self.runsFile
        let p = try pipeline(scheduler: run.scheduler)
        let params = SamplingParameters(steps: run.steps, guidanceScale: run.guidance, height: run.height, width: run.width,
                                        loraScale: run.lora_scale, lan: run.lan)
        let cond = try p.encode(prompts: run.prompts, negativePrompts: run.negative_prompts)
        let n = run.prompts.count
        var calls = 0
        let latents = try p.denoise(initialNoise: Buffer(try io.floats("\(name).latents_in")), conditioning: cond,
                                    seeds: Array(repeating: 0, count: n), parameters: params) { k, total in
            calls += 1
            XCTAssertEqual(total, run.steps)
            XCTAssertEqual(k, calls)
        }
        XCTAssertEqual(calls, run.steps, file: file, line: line)
        let expectedLatents = try io.floats("\(name).latents_out")
        let scale = expectedLatents.reduce(Float(0)) { max($0, abs($1)) }
        let latentErr = zip(latents.array, expectedLatents).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        assertClose(latents.array, expectedLatents, rtol: 0, atol: 1e-4 * scale, label: "\(name) latents", file: file, line: line)
        let images = try p.decode(latents: latents, count: n, height: run.height / 8, width: run.width / 8)
        let expectedImages = try io.floats("\(name).images")
        XCTAssertEqual(images.shape, io.info("\(name).images")!.shape, file: file, line: line)
        let imageErr = zip(images.buffer.array, expectedImages).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        assertClose(images.buffer.array, expectedImages, rtol: 0, atol: 1e-3, label: "\(name) images", file: file, line: line)
        print("sampling parity \(name): images max abs error \(imageErr); final latents max abs error \(latentErr) "
              + "(|latents| max \(scale), relative \(latentErr / scale))")
    }

    func testCFGRunMatchesDiffusers() throws { try check("cfg") }
    func testLoRAAtHalfScaleMatchesDiffusers() throws { try check("lora") }
    func testLANMatchesPaperEquationReference() throws { try check("lan") }
    func testEulerWithoutGuidanceMatchesDiffusers() throws { try check("euler_nocfg") }
    /// 72x56: latents 9x7 do not halve exactly; the upsampler resizes to the skip's size as diffusers does.
    func testSizeThatDoesNotHalveMatchesDiffusers() throws { try check("odd_size") }

    /// LAN moves the LoRA trajectory: it must not equal the plain LoRA run (else the test above could pass vacuously).
    func testLANChangesTheResult() throws {
        let io = Self.runsFile
        let a = try io.floats("lora.latents_out"), b = try io.floats("lan.latents_out")
        XCTAssertGreaterThan(zip(a, b).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }, 0.1)
    }
}

final class SamplingUnitTests: XCTestCase {
    /// Eq. 7 on one plane: afterwards x has the reference's mean and (population) std, and keeps its own shape.
    func testLatentAdaptiveNormalizationMatchesStatistics() {
        let x: [Float] = [1, 2, 3, 4, 10, 10, 10, 10]        // plane 0 varies, plane 1 is constant (σ = 0: shifted only)
        let ref: [Float] = [0, 2, 4, 6, -1, 1, -1, 1]
        var out = x
        out.withUnsafeMutableBufferPointer { o in
            ref.withUnsafeBufferPointer { latentAdaptiveNormalization(o.baseAddress!, reference: $0.baseAddress!, batch: 1, channels: 2, pixels: 4) }
        }
        // plane 0: x = 1..4 (μ 2.5, σ √1.25), ref μ 3, σ √5 → 3 + (x − 2.5)·2
        assertClose(Array(out[0..<4]), [0, 2, 4, 6], rtol: 0, atol: 1e-6, label: "plane 0")
        // plane 1: σ_x = 0 → only the mean moves to ref's (0)
        assertClose(Array(out[4..<8]), [0, 0, 0, 0], rtol: 0, atol: 1e-6, label: "plane 1")
    }

    /// Per-image seeds: an image's initial latent depends only on its seed, not on its place in the batch.
    func testInitialNoiseDependsOnlyOnTheSeed() throws {
        let p = SamplingParityTests.pipeline
        let ab = p.initialNoise(seeds: [7, 9], height: 4, width: 2).array
        let b = p.initialNoise(seeds: [9], height: 4, width: 2).array
        XCTAssertEqual(Array(ab[32...]), b)
        XCTAssertNotEqual(Array(ab[..<32]), b)
    }

    func testBadSizesAndOptionsAreClearErrors() throws {
        let p = SamplingParityTests.pipeline
        XCTAssertThrowsError(try p.latentSize(height: 60, width: 48)) { XCTAssertTrue("\($0)".contains("multiples of 8"), "\($0)") }
        let cond = try p.encode(prompts: ["a"])
        let noise = p.initialNoise(seeds: [1], height: 8, width: 6)
        XCTAssertThrowsError(try p.denoise(initialNoise: noise, conditioning: cond, seeds: [1],
                                           parameters: SamplingParameters(steps: 2, height: 64, width: 48, lan: true))) {
            XCTAssertTrue("\($0)".contains("needs a LoRA"), "\($0)")
        }
        XCTAssertThrowsError(try p.denoise(initialNoise: noise, conditioning: cond, seeds: [1],
                                           parameters: SamplingParameters(steps: 2, height: 64, width: 64))) {
            XCTAssertTrue("\($0)".contains("initial latents"), "\($0)")
        }
    }

    func testGridPlacesImagesRowByRow() throws {
        let ims = try (0..<3).map { k in try ByteImage(width: 2, height: 1, channels: 3, pixels: [UInt8](repeating: UInt8(k + 1), count: 6)) }
        let g = try imageGrid(ims)
        XCTAssertEqual([g.width, g.height], [4, 2])
        XCTAssertEqual(g.pixels[0], 1); XCTAssertEqual(g.pixels[2 * 3], 2); XCTAssertEqual(g.pixels[4 * 3], 3)
        XCTAssertEqual(g.pixels[6 * 3], 0)   // the missing 4th image is black
    }
}
