// CLIPTextModel and PromptEncoder against transformers' CLIPTextModel (float64 reference from the stored weights)
// on two random-weight configs, plus the probe command.
import Foundation
import XCTest
import IO
import Tensors
import TestSupport
@testable import TextEncoder

final class TextModelTests: XCTestCase {
    /// Max abs error ≤ tol × the expected tensor's scale (max |value|); measured ≈ 3e-7 (1.2e-6 absolute on a scale of ≈ 4).
    func assertScaled(_ actual: [Float], _ expected: [Float], tol: Float = 1e-5, label: String,
                      file: StaticString = #filePath, line: UInt = #line) {
        let scale = expected.reduce(0) { max($0, abs($1)) }
        assertClose(actual, expected, rtol: 0, atol: tol * scale, label: label, file: file, line: line)
    }

    func io(_ pipeline: String) throws -> (file: SafeTensorsFile, prompts: [String], ids: [Int]) {
        let file = try SafeTensorsFile(path: "\(textEncoderFixtures)/\(pipeline)/io.safetensors")
        let prompts = try JSONDecoder().decode([String].self, from: Data(file.metadata["prompts"]!.utf8))
        return (file, prompts, try file.int64s("input_ids").map { Int($0) })
    }

    /// quick_gelu, hidden 32, 2 layers; weights saved by transformers 5 (no `text_model.` prefix).
    func testQuickGeluModelMatchesTransformers() throws {
        let (file, prompts, ids) = try io("pipeline")
        let model = try CLIPTextModel.load(folder: ModelFolder(path: textEncoderFixtures + "/pipeline").textEncoder())
        XCTAssertEqual(model.activation, .quickGelu)
        let out = try model.forward(inputIds: ids, batch: prompts.count, length: 77)
        assertScaled(out.array, try file.floats("last_hidden_state"), label: "quick_gelu last_hidden_state")
        // The same from the prompt strings, through the tokenizer (these prompts carry no weighting syntax).
        let encoder = try PromptEncoder.load(ModelFolder(path: textEncoderFixtures + "/pipeline"))
        let enc = try encoder.encode(prompts: prompts)
        XCTAssertEqual(enc.inputIds, ids)
        XCTAssertEqual(enc.weights, [Float](repeating: 1, count: ids.count))
        assertScaled(enc.hiddenStates.array, try file.floats("last_hidden_state"), label: "PromptEncoder")
    }

    /// gelu, hidden 48, 3 layers, eps 1e-6; fp16 weights with `text_model.` keys and position_ids; clip skip 1.
    func testGeluFP16ModelMatchesTransformers() throws {
        let (file, prompts, ids) = try io("pipeline_gelu")
        let folder = try ModelFolder(path: textEncoderFixtures + "/pipeline_gelu").textEncoder()
        for variant in ["fp16", nil] as [String?] {   // the only variant present is also taken when none is asked for
            let model = try CLIPTextModel.load(folder: folder, variant: variant)
            XCTAssertEqual(model.activation, .gelu)
            XCTAssertEqual(model.config.layerNormEps, 1e-6)
            let out = try model.forward(inputIds: ids, batch: prompts.count, length: 77)
            assertScaled(out.array, try file.floats("last_hidden_state"), label: "gelu last_hidden_state")
            let skipped = try model.forward(inputIds: ids, batch: prompts.count, length: 77, skipLastLayers: 1)
            assertScaled(skipped.array, try file.floats("clip_skip_1"), label: "gelu clip_skip 1")
        }
        let encoder = try PromptEncoder.load(ModelFolder(path: textEncoderFixtures + "/pipeline_gelu"), variant: "fp16")
        let enc = try encoder.encode(prompts: prompts, weighting: false, clipSkip: 1)
        XCTAssertEqual(enc.inputIds, ids)
        assertScaled(enc.hiddenStates.array, try file.floats("clip_skip_1"), label: "PromptEncoder clip skip")
    }

    /// The web UI's emphasis on the encoder output, against the fixture.
    func testWeightedEncodingMatchesReference() throws {
        let file = try SafeTensorsFile(path: textEncoderFixtures + "/pipeline/io.safetensors")
        let prompts = [
            "(bust shot:1.2), a photo of a young woman, [blurry], ((smiling))",
            "a photo of a young woman, bust shot, smiling",
            "(" + longPrompt + ":0.9)",
        ]
        let encoder = try PromptEncoder.load(ModelFolder(path: textEncoderFixtures + "/pipeline"))
        let enc = try encoder.encode(prompts: prompts)
        XCTAssertEqual(enc.inputIds, try file.int64s("weighted_input_ids").map { Int($0) })
        XCTAssertEqual(enc.weights, try file.floats("token_weights"))
        assertScaled(enc.hiddenStates.array, try file.floats("weighted_last_hidden_state"), label: "weighted")
        // Weighting does change the output of a weighted prompt (the reference is not the plain output).
        let plain = try encoder.encode(prompts: [prompts[0]], weighting: false)
        XCTAssertNotEqual(Array(plain.hiddenStates.array[0..<(77 * 32)]), Array(enc.hiddenStates.array[0..<(77 * 32)]))
    }

    /// Causal mask: a token's hidden state never depends on later tokens (random weights, two batch rows).
    func testLaterTokensDoNotChangeEarlierStates() throws {
        var config = CLIPTextConfig()
        config.vocabSize = 50; config.hiddenSize = 16; config.intermediateSize = 32; config.numHiddenLayers = 2
        config.numAttentionHeads = 2; config.maxPositionEmbeddings = 12
        let model = try CLIPTextModel(config: config)
        model.randomizeWeights(seed: 7)
        let a = [1, 5, 9, 3, 7, 2, 8, 4, 6, 11], b = [1, 5, 9, 3, 7, 40, 41, 42, 43, 44]
        let out = try model.forward(inputIds: a + b, batch: 2, length: 10).array
        let D = 16
        // Equal up to rounding (OpenBLAS may sum the two batch rows' dot products in different orders).
        assertClose(Array(out[(10 * D)..<(15 * D)]), Array(out[0..<(5 * D)]), rtol: 1e-5, atol: 1e-6, label: "first five tokens")
        XCTAssertNotEqual(Array(out[(5 * D)..<(6 * D)]), Array(out[(15 * D)..<(16 * D)]), "sixth token differs")
        let alone = try model.forward(inputIds: Array(a[0..<5]), batch: 1, length: 5).array
        assertClose(alone, Array(out[0..<(5 * D)]), rtol: 1e-6, atol: 1e-6, label: "prefix alone")
    }

    func testBadConfigsWeightsAndInputsAreErrors() throws {
        let dir = try temporaryDirectory(self)
        let src = textEncoderFixtures + "/pipeline/text_encoder"
        var config = try String(contentsOfFile: src + "/config.json", encoding: .utf8)
        config = config.replacingOccurrences(of: "\"quick_gelu\"", with: "\"gelu_new\"")
        try config.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: src + "/model.safetensors", toPath: dir + "/model.safetensors")
        XCTAssertThrowsError(try CLIPTextModel.load(folder: ComponentFolder(path: dir))) { error in
            XCTAssertTrue("\(error)".contains("hidden_act") && "\(error)".contains(dir + "/config.json"), "\(error)")
        }
        // A config with one layer more than the weights have: the missing tensors are named.
        config = config.replacingOccurrences(of: "\"gelu_new\"", with: "\"quick_gelu\"")
            .replacingOccurrences(of: "\"num_hidden_layers\": 2", with: "\"num_hidden_layers\": 3")
        try config.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CLIPTextModel.load(folder: ComponentFolder(path: dir))) { error in
            XCTAssertTrue("\(error)".contains("encoder.layers.2.") && "\(error)".contains(dir + "/model.safetensors"), "\(error)")
        }
        let model = try CLIPTextModel.load(folder: ModelFolder(path: textEncoderFixtures + "/pipeline").textEncoder())
        XCTAssertThrowsError(try model.forward(inputIds: [0, 1, 5000], batch: 1, length: 3)) { error in
            XCTAssertTrue("\(error)".contains("5000"), "\(error)")
        }
        XCTAssertThrowsError(try model.forward(inputIds: [Int](repeating: 1, count: 78), batch: 1, length: 78))
        XCTAssertThrowsError(try model.forward(inputIds: [1, 2], batch: 1, length: 2, skipLastLayers: 2))
    }

    // MARK: - Command

    func testProbeCommandWritesIdsAndHiddenStates() throws {
        let (file, prompts, ids) = try io("pipeline")
        let dir = try temporaryDirectory(self)
        try (prompts.joined(separator: "\n") + "\n").write(toFile: dir + "/prompts.txt", atomically: true, encoding: .utf8)
        let r = try hgdpo(["probe", "text-encoder", "--model", textEncoderFixtures + "/pipeline", "--prompts", dir + "/prompts.txt",
                           "--out", dir + "/out.safetensors"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try SafeTensorsFile(path: dir + "/out.safetensors")
        XCTAssertEqual(out.info("input_ids")?.dtype, .I64)
        XCTAssertEqual(out.info("input_ids")?.shape, [prompts.count, 77])
        XCTAssertEqual(out.info("last_hidden_state")?.shape, [prompts.count, 77, 32])
        XCTAssertEqual(try out.int64s("input_ids").map { Int($0) }, ids)
        assertScaled(try out.floats("last_hidden_state"), try file.floats("last_hidden_state"), label: "probe")

        // The fp16 gelu pipeline with clip skip, weighting off.
        let gelu = try io("pipeline_gelu")
        try (gelu.prompts.joined(separator: "\r\n")).write(toFile: dir + "/p2.txt", atomically: true, encoding: .utf8)
        let r2 = try hgdpo(["probe", "text-encoder", "--model", textEncoderFixtures + "/pipeline_gelu", "--prompts", dir + "/p2.txt",
                            "--out", dir + "/out2.safetensors", "--variant", "fp16", "--clip-skip", "1", "--no-weighting"])
        XCTAssertEqual(r2.status, 0, r2.stderr)
        let out2 = try SafeTensorsFile(path: dir + "/out2.safetensors")
        assertScaled(try out2.floats("last_hidden_state"), try gelu.file.floats("clip_skip_1"), label: "probe clip skip")

        // User errors exit 2 and name what is wrong.
        try "(a:1.2.3)\n".write(toFile: dir + "/bad.txt", atomically: true, encoding: .utf8)
        let bad = try hgdpo(["probe", "text-encoder", "--model", textEncoderFixtures + "/pipeline", "--prompts", dir + "/bad.txt",
                             "--out", dir + "/x.safetensors"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("bad.txt") && bad.stderr.contains("1.2.3"), bad.stderr)
        let skip = try hgdpo(["probe", "text-encoder", "--model", textEncoderFixtures + "/pipeline", "--prompts", dir + "/prompts.txt",
                              "--out", dir + "/x.safetensors", "--clip-skip", "2"])
        XCTAssertEqual(skip.status, 2)
        XCTAssertTrue(skip.stderr.contains("--clip-skip"), skip.stderr)
        try "".write(toFile: dir + "/empty.txt", atomically: true, encoding: .utf8)
        let empty = try hgdpo(["probe", "text-encoder", "--model", textEncoderFixtures + "/pipeline", "--prompts", dir + "/empty.txt",
                               "--out", dir + "/x.safetensors"])
        XCTAssertEqual(empty.status, 2)
        XCTAssertTrue(empty.stderr.contains("no prompts"), empty.stderr)
    }
}

let longPrompt = "a highly detailed professional photograph of a smiling young woman with long wavy brown hair and green eyes, "
    + "wearing a white linen shirt and a golden necklace, standing in a sunlit wheat field at golden hour, soft rim "
    + "light, shallow depth of field, 85mm lens, f/1.8, natural skin texture, freckles, film grain, kodak portra 400, "
    + "award winning, trending, masterpiece, best quality, ultra realistic, 8k, sharp focus, bokeh background"
