// The Evaluator on the random-weight fixture pipeline (Tests/SamplingTests/Fixtures/pipeline, 48x64 images, a few
// steps): a LoRA against itself, a model whose U-Net adds a constant to one latent channel, resuming, and the reports.
import Foundation
import IO
import Sampling
import Schedulers
import Scoring
import TestSupport
import XCTest
@testable import Evaluation

let samplingFixtures = repoRoot + "/Tests/SamplingTests/Fixtures"

/// Mean of one RGB channel (0, 1, 2) or of all three (nil), in [0, 1]: a scorer with known answers.
final class ChannelMeanScorer: Scorer {
    let channel: Int?
    let descriptor: ScorerDescriptor
    init(name: String, channel: Int?) {
        self.channel = channel
        descriptor = ScorerDescriptor(name: name, kind: "test-channel-mean", argument: channel.map(String.init), version: "1")
    }
    func score(images: [ByteImage], prompt: String) throws -> [Double] {
        images.map { im in
            var s = 0.0, n = 0
            for i in 0..<(im.width * im.height) {
                for c in 0..<3 where channel == nil || channel == c { s += Double(im.pixels[i * im.channels + c]); n += 1 }
            }
            return s / Double(n) / 255
        }
    }
}

final class EvaluatorTests: XCTestCase {
    let model = samplingFixtures + "/pipeline"
    let lora = samplingFixtures + "/lora.safetensors"
    static let prompts = ["a photo of a woman", "two people <script>alert('x')</script> & \"friends\"\nsecond line"]

    func config(a: EvalSide, baseline: EvalSide, out: String) -> EvalConfig {
        var c = EvalConfig(a: a, baseline: baseline, prompts: Self.prompts, promptSource: "test prompts", out: out)
        c.imagesPerPrompt = 2
        c.steps = 3
        c.height = 64; c.width = 48
        c.seed = 5
        c.bootstrapResamples = 2000
        return c
    }

    var scorers: [any Scorer] { [ChannelMeanScorer(name: "brightness", channel: nil), ChannelMeanScorer(name: "red", channel: 0)] }

    /// A LoRA against itself: every pair ties (win rate ½, interval [½, ½]), no colour shift, no latent gap.
    func testALoRAAgainstItself() throws {
        let out = try temporaryDirectory(self) + "/eval"
        let side = EvalSide(model: model, lora: lora, loraScale: 0.5)
        let evaluator = try Evaluator(config: config(a: side, baseline: side, out: out), scorers: scorers, log: { _ in })
        let r = try XCTUnwrap(try evaluator.run())
        XCTAssertEqual(evaluator.sampled, 8)
        XCTAssertEqual(r.pairs, 4)
        XCTAssertEqual(r.scorers.map(\.name), ["brightness", "red"])
        for s in r.scorers {
            XCTAssertEqual(s.winRate, 0.5, s.name)
            XCTAssertEqual(s.ties, 4, s.name)
            XCTAssertLessThanOrEqual(s.ciLow, 0.5); XCTAssertGreaterThanOrEqual(s.ciHigh, 0.5)
            XCTAssertEqual(s.meanA, s.meanBaseline)
        }
        let c = r.colorShift
        XCTAssertEqual([c.h, c.hPlain, c.s, c.v, c.hDegrees], [0, 0, 0, 0, 0])
        XCTAssertEqual(r.latentStats.images, 4)
        XCTAssertEqual(r.latentStats.channels, 4)
        XCTAssertEqual(r.latentStats.meanDistance, [0, 0, 0, 0])
        XCTAssertEqual(r.latentStats.stdDistance, [0, 0, 0, 0])
        XCTAssertGreaterThan(r.latentStats.stdA.min()!, 0)

        // Files: images with their parameters and latent statistics, grids, results and reports.
        let files = try FileManager.default.contentsOfDirectory(atPath: out + "/a").sorted()
        XCTAssertEqual(files, ["000000-seed5.png", "000001-seed6.png", "000002-seed7.png", "000003-seed8.png"])
        let (image, text) = try PNG.readBytesWithText(out + "/baseline/000003-seed8.png")
        XCTAssertEqual([image.width, image.height], [48, 64])
        XCTAssertEqual(text["prompt"], Self.prompts[1])
        XCTAssertEqual(text["lora_scale"], "0.5")
        XCTAssertEqual(text["seed"], "8")
        XCTAssertEqual(text["latent_mean"]?.split(separator: ",").count, 4)
        let grid = try PNG.readBytes(out + "/grids/prompt-0001.png")
        XCTAssertEqual([grid.width, grid.height], [96, 128])    // 2 columns (baseline | A) × 2 seeds
        // As a script reads results.json (docs/evaluation.md).
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/results.json"))) as? [String: Any])
        let red = try XCTUnwrap((json["scorers"] as? [String: Any])?["red"] as? [String: Any])
        XCTAssertEqual(red["win_rate"] as? Double, 0.5)
        XCTAssertEqual(red["ci_low"] as? Double, 0.5)
        XCTAssertEqual(red["ties"] as? Int, 4)
        XCTAssertEqual(red["pairs"] as? Int, 4)
        XCTAssertNotNil(red["mean_a"] as? Double)
        XCTAssertEqual(json["scorer_order"] as? [String], ["brightness", "red"])
        XCTAssertEqual((json["color_shift"] as? [String: Any])?["h_plain"] as? Double, 0)
        XCTAssertEqual(((json["latent_stats"] as? [String: Any])?["mean_distance"] as? [Double])?.count, 4)
        let decoded = try EvalResults.read(out)
        XCTAssertEqual(decoded.scorers.map(\.winRate), [0.5, 0.5])
        XCTAssertEqual(decoded.perPrompt[1].prompt, Self.prompts[1])
        XCTAssertEqual(decoded.perPrompt[1].a, ["a/000002-seed7.png", "a/000003-seed8.png"])

        // The prompt's markup is text on both pages, never markup.
        let html = try String(contentsOfFile: out + "/report.html", encoding: .utf8)
        XCTAssertFalse(html.contains("<script"), "report.html contains a script tag")
        XCTAssertTrue(html.contains("two people &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;friends&quot;"))
        XCTAssertEqual(html.components(separatedBy: "<svg class=\"chart\"").count - 1, 2)    // win rates, HSV shift
        XCTAssertEqual(html.components(separatedBy: "src=\"data:image/png;base64,").count - 1, 2)   // both grids inlined
        let md = try String(contentsOfFile: out + "/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("| brightness | 0.5 | [0.5, 0.5] | 0 | 4 | 0 | 4 |"), md)
        XCTAssertEqual(r.scorers[0].promptWinRate, 0.5)
        XCTAssertFalse(md.contains("<script"))
        XCTAssertTrue(md.contains("&lt;script&gt;"))

        // Run again: nothing is sampled, the same results.
        let again = try Evaluator(config: config(a: side, baseline: side, out: out), scorers: scorers, log: { _ in })
        let r2 = try XCTUnwrap(try again.run())
        XCTAssertEqual(again.sampled, 0)
        XCTAssertEqual(try r2.json(), try r.json())
        // Other parameters with the same folder: refused, naming the image; nothing is overwritten.
        var other = config(a: side, baseline: side, out: out)
        other.steps = 4
        XCTAssertThrowsError(try Evaluator(config: other, scorers: scorers, log: { _ in }).run()) { e in
            XCTAssertTrue("\(e)".contains("000000-seed5.png exists and was made with another steps"), "\(e)")
        }
    }

    /// A copy of the fixture pipeline whose U-Net's conv_out.bias[channel] is raised by delta: the predicted noise ε
    /// gets +delta in that channel. With one Euler step, x_0 = x_T − σ_max·ε, so the final latent's channel moves by
    /// exactly −σ_max·delta and no other channel moves.
    func shiftedModel(channel: Int, delta: Float) throws -> String {
        let dir = try temporaryDirectory(self) + "/shifted"
        try FileManager.default.copyItem(atPath: model, toPath: dir)
        let weights = dir + "/unet/diffusion_pytorch_model.safetensors"
        let file = try SafeTensorsFile(path: weights)
        var entries: [SafeTensorsEntry] = []
        for t in file.tensors {
            var bytes = [UInt8](try file.rawBytes(t.name))
            if t.name == "conv_out.bias" {
                XCTAssertEqual(t.dtype, .F32)
                var v = try file.floats(t.name)
                v[channel] += delta
                bytes = v.withUnsafeBytes { [UInt8]($0) }
            }
            entries.append(SafeTensorsEntry(name: t.name, dtype: t.dtype, shape: t.shape, bytes: bytes))
        }
        let metadata = file.metadata
        try FileManager.default.removeItem(atPath: weights)
        try SafeTensors.write(entries, metadata: metadata, to: weights)
        return dir
    }

    func testAConstantOnOneLatentChannel() throws {
        let out = try temporaryDirectory(self) + "/eval"
        let delta: Float = 20, channel = 2
        let shifted = try shiftedModel(channel: channel, delta: delta)
        var c = config(a: EvalSide(model: shifted), baseline: EvalSide(model: model), out: out)
        c.steps = 1
        c.scheduler = "euler"
        c.guidance = 1
        let r = try XCTUnwrap(try Evaluator(config: c, scorers: scorers, log: { _ in }).run())
        let scheduler = try SchedulerRecipe.load(try ModelFolder(path: model), name: "euler").make()
        try scheduler.setTimesteps(1)
        // The step's σ (diffusers' linspace spacing with one step samples at t = 0, σ ≈ 0.029; init_noise_sigma is it).
        let sigma = Double(scheduler.initNoiseSigma)
        let shift = sigma * Double(delta), tolerance = 1e-5 * shift
        XCTAssertGreaterThan(shift, 0.1)
        let l = r.latentStats
        for k in 0..<4 {
            let expected = k == channel ? shift : 0
            XCTAssertEqual(l.meanDistance[k], expected, accuracy: tolerance, "channel \(k)")
            XCTAssertEqual(l.meanA[k] - l.meanBaseline[k], -expected, accuracy: tolerance, "channel \(k)")
            XCTAssertEqual(l.stdDistance[k], 0, accuracy: tolerance, "channel \(k)")
        }
        XCTAssertEqual(l.meanDistanceAvg!, shift / 4, accuracy: tolerance)
        // The images change colour: some HSV mean moves, and the scorers see A differ from the baseline.
        let color = r.colorShift
        XCTAssertGreaterThan([color.hPlain!, color.s!, color.v!].map(abs).max()!, 1)
        XCTAssertNotEqual(r.scorers[0].winRate, 0.5)
        XCTAssertEqual(r.scorers[0].ties, 0)
    }

    func testBadConfigurationsAreRefused() throws {
        let out = try temporaryDirectory(self) + "/eval"
        func refused(_ c: EvalConfig, _ scorers: [any Scorer] = [], _ message: String, line: UInt = #line) {
            XCTAssertThrowsError(try Evaluator(config: c, scorers: scorers, log: { _ in }).run(), line: line) { e in
                XCTAssertTrue("\(e)".contains(message), "\(e)", line: line)
            }
        }
        refused(config(a: EvalSide(model: model), baseline: EvalSide(model: model), out: out), [], "are the same")
        refused(config(a: EvalSide(model: model, lora: lora, lan: true), baseline: EvalSide(model: model), out: out),
                [ChannelMeanScorer(name: "x", channel: 0), ChannelMeanScorer(name: "x", channel: 1)], "two scorers are named 'x'")
        refused(config(a: EvalSide(model: model, lora: lora), baseline: EvalSide(model: "/nonexistent/model"), out: out), [],
                "/nonexistent/model")
        refused(config(a: EvalSide(model: model, lora: "/nonexistent/lora.safetensors"), baseline: EvalSide(model: model), out: out), [],
                "/nonexistent/lora.safetensors")
        refused(config(a: EvalSide(model: model, lan: true), baseline: EvalSide(model: model, lora: lora), out: out), [],
                "LAN on the A side needs a LoRA")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/a"), "nothing sampled for a refused configuration")
    }
}
