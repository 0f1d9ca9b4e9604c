// Resize and crop against torch's antialiased bilinear interpolate and PIL's BILINEAR resize, the 8-bit one bit for bit
// (fixtures from
// Tests/parity/make_encode_fixtures.py), and the VAE encode of a prepared image against diffusers.
import Foundation
import IO
import LatentEncoding
import NN
import Tensors
import TestSupport
import VAE
import XCTest

final class ResizeParityTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path
    static let images = ["image_37x23", "image_20x30", "image_9x7"]
    static let targets = [(16, 16), (24, 16), (8, 24), (32, 32)]

    func testResizeMatchesTorchAntialiasAndPIL() throws {
        let file = try SafeTensorsFile(path: Self.fixtures + "/resize.safetensors")
        var worstTorch: Float = 0, worstPIL: Float = 0
        for name in Self.images {
            let image = try PNG.read(Self.fixtures + "/\(name).png", channels: 3)
            assertClose(image.pixels, try file.floats("\(name).input"), rtol: 0, atol: 0, label: "\(name) decoded")
            for (W, H) in Self.targets {
                let key = "\(name).\(W)x\(H)"
                let expected = file.info(key + ".resized_torch")!.shape   // (3, h, w)
                let size = ResizeCrop.coverSize(width: image.width, height: image.height, targetWidth: W, targetHeight: H)
                XCTAssertEqual([3, size.height, size.width], expected, "\(key): cover size")
                let resized = image.resized(width: size.width, height: size.height)
                assertClose(resized.pixels, try file.floats(key + ".resized_torch"), rtol: 0, atol: 1e-5, label: key + " vs torch")
                let prepared = TrainingImage.prepare(image, width: W, height: H, cropFraction: nil)
                XCTAssertEqual([prepared.height, prepared.width], [H, W])
                assertClose(prepared.pixels, try file.floats(key + ".center_torch"), rtol: 0, atol: 1e-5, label: key + " center vs torch")
                // Pillow's 8-bit resize, exactly.
                let bytes = try PNG.readBytes(Self.fixtures + "/\(name).png", channels: 3)
                let resizedPIL = Image(normalizing: bytes.resizedLikePIL(width: size.width, height: size.height))
                assertClose(resizedPIL.pixels, try file.floats(key + ".resized_pil"), rtol: 0, atol: 0, label: key + " vs PIL")
                let preparedPIL = TrainingImage.prepare(bytes, width: W, height: H, cropFraction: nil, method: .pil)
                assertClose(preparedPIL.pixels, try file.floats(key + ".center_pil"), rtol: 0, atol: 0, label: key + " center vs PIL")
                XCTAssertEqual(TrainingImage.prepare(bytes, width: W, height: H, cropFraction: nil, method: .torch), prepared)
                // The float resize against PIL: PIL rounds to 8 bits after each pass, within a level (2/255 in [-1, 1]).
                let pil = try file.floats(key + ".center_pil")
                let dPIL = zip(prepared.pixels, pil).map { abs($0 - $1) }.max()!
                XCTAssertLessThanOrEqual(dPIL, 2.01 * 2 / 255, "\(key): vs PIL")
                worstPIL = max(worstPIL, dPIL)
                worstTorch = max(worstTorch, zip(prepared.pixels, try file.floats(key + ".center_torch")).map { abs($0 - $1) }.max()!)
            }
        }
        print("resize: float resize max abs error vs torch \(worstTorch), vs PIL \(worstPIL) (\(worstPIL * 127.5) of 255); 8-bit resize vs PIL exact")
    }

    func testRandomCropSharesTheBoxAndStaysInside() throws {
        let image = try PNG.read(Self.fixtures + "/image_37x23.png", channels: 3)
        let rng = CounterRNG(seed: 5)
        var lefts = Set<Int>()
        for row in 0..<40 {
            let f = TrainingImage.cropFraction(rng: rng, row: row)
            let a = TrainingImage.prepare(image, width: 16, height: 16, cropFraction: f)
            let b = TrainingImage.prepare(image, width: 16, height: 16, cropFraction: f)
            XCTAssertEqual(a, b)
            // Find the crop's left edge among the 10 possible ones of the 25x16 resized image.
            let resized = image.resized(width: 25, height: 16)
            let left = (0...9).first { resized.cropped(left: $0, top: 0, width: 16, height: 16) == a }
            XCTAssertNotNil(left, "row \(row): the crop is a window of the resized image")
            lefts.insert(left ?? -1)
        }
        XCTAssertGreaterThan(lefts.count, 5, "random crops cover the free range")
        XCTAssertEqual(TrainingImage.cropFraction(rng: rng, row: 3).x, TrainingImage.cropFraction(rng: CounterRNG(seed: 5), row: 3).x)
    }

    func testVAEEncodeOfPreparedImagesMatchesDiffusers() throws {
        let io = try SafeTensorsFile(path: Self.fixtures + "/vae_encode.safetensors")
        let vae = try AutoencoderKL.load(modelFolder: repoRoot + "/Tests/VAETests/Fixtures/vae_tiny", parts: .encoder)
        let images = try ["image_37x23", "image_20x30"].map {
            TrainingImage.prepare(try PNG.read(Self.fixtures + "/\($0).png", channels: 3), width: 24, height: 16, cropFraction: nil)
        }
        let batch = try FeatureMap(images: images)
        assertClose(Array(UnsafeBufferPointer(start: batch.ptr, count: batch.count)), try io.floats("sample"),
                    rtol: 0, atol: 1e-5, label: "prepared batch")
        let latents = try vae.encode(batch, mode: .mean)
        let fp32 = Array(UnsafeBufferPointer(start: latents.ptr, count: latents.count))
        assertClose(fp32, try io.floats("latent_mean"), rtol: 1e-4, atol: 1e-5, label: "latent mean")

        // --mixed-precision bf16: bf16 convolution weights. Against PyTorch with the same weights rounded (float64):
        // exact up to fp32 sums when the weights are widened, up to the activations' bf16 rounding on AVX512-BF16.
        let vaeBF16 = try AutoencoderKL.load(modelFolder: repoRoot + "/Tests/VAETests/Fixtures/vae_tiny", parts: .encoder,
                                             precision: .bf16)
        let z = try vaeBF16.encode(batch, mode: .mean)
        let bf16 = Array(UnsafeBufferPointer(start: z.ptr, count: z.count))
        let expected = try io.floats("latent_mean_bf16_weights")
        func relative(_ a: [Float], _ b: [Float]) -> Float {
            (zip(a, b).map { ($0 - $1) * ($0 - $1) }.reduce(0, +) / b.map { $0 * $0 }.reduce(0, +)).squareRoot()
        }
        let vsReference = relative(bf16, expected), vsFP32 = relative(bf16, fp32)
        print("VAE encode bf16 convolutions (\(BF16.path)): rel. error vs bf16-weight reference \(vsReference), vs fp32 \(vsFP32)")
        XCTAssertLessThanOrEqual(vsReference, 1e-2)
        XCTAssertGreaterThan(vsFP32, 1e-4, "the bf16 weights are used")
        // Where the CPU lacks AVX512-BF16 the weights are widened for sgemm: exact up to fp32 sums.
        let saved = BF16.path
        if BF16.setPath(.generic) {
            defer { _ = BF16.setPath(saved) }
            let widened = try vaeBF16.encode(batch, mode: .mean)
            assertClose(Array(UnsafeBufferPointer(start: widened.ptr, count: widened.count)), expected, rtol: 1e-4, atol: 1e-6,
                        label: "bf16 weights widened (generic path)")
        }
    }
}
