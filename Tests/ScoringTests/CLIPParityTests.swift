// The CLIP scorer against transformers' CLIPModel / CLIPImageProcessor, open_clip's CLIP and the aesthetic MLP, on
// the random-weight fixtures of Tests/parity/make_scoring_fixtures.py.
import Foundation
import IO
import Scoring
import TestSupport
import XCTest

let scoringFixtures = repoRoot + "/Tests/ScoringTests/Fixtures"

final class CLIPParityTests: XCTestCase {
    let expected = try! SafeTensorsFile(path: scoringFixtures + "/expected.safetensors")
    func tensor(_ name: String) -> [Float] { try! expected.floats(name) }
    var inputIds: [Int] { try! expected.int64s("input_ids").map { Int($0) } }
    let images = ["photo", "portrait", "small"]

    /// CLIPImageProcessor (Pillow bicubic resize of the short side, centre crop, normalise) on real PNGs: within 1/255
    /// of a pixel (in normalised units: 1/255/std).
    func testPreprocessingMatchesCLIPImageProcessor() throws {
        let processor = try CLIPImageProcessor.load(folder: scoringFixtures + "/clip")
        XCTAssertEqual(processor.shortestEdge, 32)
        XCTAssertEqual(processor.filter, .bicubic)
        for name in images {
            let png = try PNG.readBytes(scoringFixtures + "/\(name).png", channels: 3)
            let pixels = try processor.pixelValues([png])
            let got = Array(UnsafeBufferPointer(start: pixels.ptr, count: 3 * 32 * 32))
            // One 8-bit level is 1/255/std ≈ 0.0146 after normalising; Pillow-exact resizing gives ~1e-6.
            assertClose(got, tensor("pixel_values.\(name)"), rtol: 0, atol: 1e-5, label: "pixel_values \(name)")
        }
    }

    func pixelBatch() -> [Float] { images.flatMap { tensor("pixel_values.\($0)") } }

    func checkModel(_ model: CLIPModel, prefix: String) throws {
        let pixels = pixelBatch()
        let image = pixels.withUnsafeBufferPointer { model.imageEmbeddings($0.baseAddress!, batch: 3) }
        let imageFeatures = Array(UnsafeBufferPointer(start: image.ptr, count: 3 * 16))
        assertClose(imageFeatures, tensor("\(prefix).image_features"), rtol: 1e-4, atol: 1e-4, label: "\(prefix) image features")
        let text = try model.textEmbeddings(inputIds: inputIds, batch: 2, length: 77)
        let textFeatures = Array(UnsafeBufferPointer(start: text.ptr, count: 2 * 16))
        assertClose(textFeatures, tensor("\(prefix).text_features"), rtol: 1e-4, atol: 1e-4, label: "\(prefix) text features")
        normalizeRows(image.ptr, rows: 3, width: 16)
        normalizeRows(text.ptr, rows: 2, width: 16)
        var logits = [Float]()
        for i in 0..<3 {
            for j in 0..<2 {
                var dot: Float = 0
                for k in 0..<16 { dot += image.ptr[i * 16 + k] * text.ptr[j * 16 + k] }
                logits.append(exp(model.logitScale) * dot)
            }
        }
        assertClose(logits, tensor("\(prefix).logits_per_image"), rtol: 1e-4, atol: 1e-4, label: "\(prefix) logits")
    }

    func testTransformersCLIPModel() throws {
        let model = try CLIPModel.load(folder: scoringFixtures + "/clip")
        XCTAssertEqual(model.layout, "transformers")
        try checkModel(model, prefix: "hf")
    }

    /// open_clip's state dict (in_proj, c_fc/c_proj, x @ proj) through the key remap.
    func testOpenCLIPStateDict() throws {
        let model = try CLIPModel.load(folder: scoringFixtures + "/openclip")
        XCTAssertEqual(model.layout, "open_clip")
        try checkModel(model, prefix: "oc")
    }

    /// The scorer end to end: PNG → preprocessing → exp(logit_scale) · cosine, as PickScore computes it; and the
    /// tokenizer gives the ids transformers gave.
    func testPickScoreStyleScores() throws {
        let scorer = try CLIPScorer(name: "pick", argument: scoringFixtures + "/clip")
        let pngs = try images.map { try PNG.readBytes(scoringFixtures + "/\($0).png", channels: 3) }
        let logits = tensor("hf.logits_per_image")
        for (j, prompt) in ["a photo of a cat", "a red car"].enumerated() {
            let scores = try scorer.score(images: pngs, prompt: prompt)
            assertClose(scores.map(Float.init), (0..<3).map { logits[$0 * 2 + j] }, rtol: 1e-4, atol: 1e-4, label: "scores '\(prompt)'")
        }
        XCTAssertEqual(scorer.descriptor.kind, "clip")
        XCTAssertEqual(scorer.descriptor.settings["output"], "logit")
        let cosine = try CLIPScorer(name: "hps", argument: scoringFixtures + "/clip,output=cosine")
        let c = try cosine.score(images: pngs, prompt: "a red car")
        assertClose(c.map(Float.init), (0..<3).map { logits[$0 * 2 + 1] / 100 }, rtol: 1e-4, atol: 1e-5, label: "cosine")
        XCTAssertNotEqual(cosine.descriptor, scorer.descriptor)
    }

    func testAestheticPredictor() throws {
        let scorer = try AestheticScorer(name: "aesthetic", argument: scoringFixtures + "/aesthetic.safetensors,clip=" + scoringFixtures + "/clip")
        let pngs = try images.map { try PNG.readBytes(scoringFixtures + "/\($0).png", channels: 3) }
        let scores = try scorer.score(images: pngs, prompt: "ignored")
        assertClose(scores.map(Float.init), tensor("aesthetic.scores"), rtol: 1e-4, atol: 1e-5, label: "aesthetic")
    }

    func testBadInputsAreNamed() throws {
        XCTAssertThrowsError(try AestheticScorer(name: "a", argument: scoringFixtures + "/aesthetic.safetensors")) {
            XCTAssertTrue("\($0)".contains("clip=DIR"), "\($0)")
        }
        XCTAssertThrowsError(try CLIPScorer(name: "p", argument: scoringFixtures + "/clip,output=softmax")) {
            XCTAssertTrue("\($0)".contains("output=softmax"), "\($0)")
        }
        XCTAssertThrowsError(try CLIPScorer(name: "p", argument: scoringFixtures + "/clip,colour=red")) {
            XCTAssertTrue("\($0)".contains("unknown option 'colour=red'"), "\($0)")
        }
        // open_clip weights into a config of other widths: the message names the tensor and both shapes.
        XCTAssertThrowsError(try CLIPModel.load(folder: scoringFixtures + "/clip", weights: scoringFixtures + "/aesthetic.safetensors")) {
            XCTAssertTrue("\($0)".contains("unexpected tensor"), "\($0)")
        }
    }
}
