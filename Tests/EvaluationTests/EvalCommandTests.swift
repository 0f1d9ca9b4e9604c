// `hgdpo eval` and `hgdpo report` as a user runs them: 1 and 2 MPI ranks give the same images and results, bad
// inputs are refused with exit code 2 naming what is wrong, and the training report's page.
import Foundation
import IO
import Scoring
import TestSupport
import XCTest
@testable import Evaluation

final class EvalCommandTests: XCTestCase {
    let model = samplingFixtures + "/pipeline"
    let lora = samplingFixtures + "/lora.safetensors"

    func promptsFile(_ dir: String) throws -> String {
        let path = dir + "/prompts.tsv"
        try "Prompt\tCategory\na photo of a woman\tPeople\na red car\tVehicles\nthree people, <b>sunset</b>\tPeople\nan old man\tpeople\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func evalArgs(prompts: String, out: String) -> [String] {
        ["eval", "--model", model, "--lora", lora, "--lan", "--prompts", prompts, "--category", "People", "--images-per-prompt", "2",
         "--steps", "3", "--height", "64", "--width", "48", "--seed", "3", "--out", out, "--threads", "1", "--collective-timeout", "60"]
    }

    func launch(ranks: Int, _ args: [String]) throws -> ProcessResult {
        try runProcess("/bin/bash", [repoRoot + "/launch/local.sh", "--timeout", "200", String(ranks), "hgdpo"] + args,
                       environment: ["HGDPO_BIN": hgdpoBinary], timeout: 230)
    }

    /// The same images (bit for bit) and results.json on 1 and 2 ranks; then scoring the 2-rank folder in process
    /// samples nothing and gives the 1-rank folder's win rates.
    func testOneAndTwoRanksGiveTheSameEvaluation() throws {
        let dir = try temporaryDirectory(self)
        let prompts = try promptsFile(dir)
        let one = try launch(ranks: 1, evalArgs(prompts: prompts, out: dir + "/one"))
        XCTAssertEqual(one.status, 0, one.stderr)
        let two = try launch(ranks: 2, evalArgs(prompts: prompts, out: dir + "/two"))
        XCTAssertEqual(two.status, 0, two.stderr)
        XCTAssertTrue(one.stdout.contains(#""report":"#), one.stdout)
        XCTAssertTrue(two.stdout.contains("\"pairs\":6"), two.stdout)    // 3 People prompts × 2
        for side in ["a", "baseline"] {
            let names = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/one/\(side)").sorted()
            XCTAssertEqual(names.count, 6)
            XCTAssertEqual(names, try FileManager.default.contentsOfDirectory(atPath: "\(dir)/two/\(side)").sorted())
            for n in names {
                XCTAssertTrue(try PNG.readBytes("\(dir)/one/\(side)/\(n)") == PNG.readBytes("\(dir)/two/\(side)/\(n)"), "\(side)/\(n) differs")
                XCTAssertEqual(try PNG.readBytesWithText("\(dir)/one/\(side)/\(n)").1["latent_mean"],
                               try PNG.readBytesWithText("\(dir)/two/\(side)/\(n)").1["latent_mean"], n)
            }
        }
        func normalized(_ run: String) throws -> String {
            try String(contentsOfFile: "\(dir)/\(run)/results.json", encoding: .utf8).replacingOccurrences(of: "\(dir)/\(run)", with: "OUT")
        }
        XCTAssertEqual(try normalized("one"), try normalized("two"))
        let r = try EvalResults.read(dir + "/one")
        XCTAssertEqual(r.perPrompt.map(\.prompt), ["a photo of a woman", "three people, <b>sunset</b>", "an old man"])
        XCTAssertEqual(r.prompts, prompts + ", category People")
        XCTAssertTrue(r.a.lan)
        XCTAssertEqual(r.a.loraScale, 0.5)         // the paper's default
        XCTAssertNil(r.baseline.lora)
        XCTAssertGreaterThan(r.latentStats.meanDistanceAvg!, 0)

        // Scoring in process: the folders are complete, so nothing is sampled; both give the same numbers.
        func scored(_ run: String) throws -> (EvalResults, Int) {
            var c = EvalConfig(a: EvalSide(model: model, lora: lora, loraScale: 0.5, lan: true), baseline: EvalSide(model: model),
                               prompts: r.perPrompt.map(\.prompt), promptSource: r.prompts, out: "\(dir)/\(run)")
            c.imagesPerPrompt = 2; c.steps = 3; c.height = 64; c.width = 48; c.seed = 3; c.bootstrapResamples = 1000
            let e = try Evaluator(config: c, scorers: [ChannelMeanScorer(name: "green", channel: 1)], log: { _ in })
            return (try XCTUnwrap(try e.run()), e.sampled)
        }
        let (s1, n1) = try scored("one"), (s2, n2) = try scored("two")
        XCTAssertEqual([n1, n2], [0, 0])
        XCTAssertEqual(s1.scorers[0].winRate, s2.scorers[0].winRate)
        XCTAssertEqual(s1.scorers[0].ciLow, s2.scorers[0].ciLow)
        XCTAssertEqual(s1.scorers[0].pairs, 6)
    }

    /// One job per output folder: an eval on a folder another job holds stops at once with exit code 2, naming it.
    func testFolderInUseIsRefused() throws {
        let dir = try temporaryDirectory(self)
        let out = dir + "/eval"
        let held = try RunFolderLock(folder: out, command: "eval")
        defer { held.release() }
        let r = try hgdpo(evalArgs(prompts: try promptsFile(dir), out: out))
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(out) is in use by another job: hgdpo eval, pid \(getpid())"), r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out), [RunFolderLock.fileName], "nothing written")
    }

    func testBadInputsExitWithCode2() throws {
        let dir = try temporaryDirectory(self)
        let prompts = try promptsFile(dir)
        func refused(_ args: [String], _ message: String, line: UInt = #line) throws {
            let r = try hgdpo(args)
            XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)", line: line)
            XCTAssertTrue(r.stderr.contains(message), "\(r.stderr) does not contain \(message)", line: line)
        }
        let base = ["eval", "--model", model, "--out", dir + "/out", "--steps", "2", "--height", "64", "--width", "48"]
        try refused(base + ["--prompts", dir + "/missing.txt", "--lora", lora], dir + "/missing.txt: cannot read")
        try refused(base + ["--prompts", prompts, "--lora", lora, "--category", "Animals"], "no prompts in category 'Animals'")
        try refused(base + ["--prompts", prompts], "side A and the baseline are the same")
        try refused(base + ["--prompts", prompts, "--lan"], "--lan needs --lora")
        try refused(base + ["--prompts", prompts, "--lora", lora, "--scorer", "p=nosuchkind"], "unknown kind 'nosuchkind'")
        try refused(base + ["--prompts", prompts, "--lora", lora, "--scorer", "bad spec"], "invalid scorer spec 'bad spec'")
        try refused(base + ["--prompts", prompts, "--lora", lora, "--baseline-model", dir], "\(dir)")
        try refused(["eval", "--model", model, "--out", dir + "/out", "--prompts", prompts, "--lora", lora, "--height", "60"],
                    "expected a multiple of 8")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out/a"))
        try refused(["report", dir + "/nope"], "no such run folder")
        try refused(["report", dir, "--eval", dir + "/nope"], "results.json")
    }

    /// A run folder as train leaves it (metrics with a resumed step, an unknown key, booleans and an unfinished last
    /// line; validation grids; config.json) plus an evaluation: one page with every curve, the grids, the config
    /// (escaped) and the evaluation's charts.
    func testRunReport() throws {
        let dir = try temporaryDirectory(self)
        let run = dir + "/run"
        try FileManager.default.createDirectory(atPath: run + "/validation/base", withIntermediateDirectories: true)
        var lines: [String] = []
        for step in 1...30 {
            let loss = 0.69 - 0.01 * Double(step)
            lines.append(#"{"step":\#(step),"epoch":0,"loss":\#(loss),"dpo":\#(loss),"implicit_acc":0.5,"mse_theta_w":0.1,"mse_theta_l":0.2,"#
                         + #""mse_ref_w":0.1,"mse_ref_l":0.2,"lr":1e-5,"grad_norm":\#(step % 7 == 0 ? "null" : "1.5"),"clipped":\#(step % 2 == 0),"#
                         + #""skipped":false,"my_metric":\#(step),"note":"text"}"#)
        }
        lines.insert(#"{"step":5,"loss":9.0}"#, at: 4)    // logged before a resume, replaced by the later step-5 record
        try (lines.joined(separator: "\n") + "\n{\"step\":31,\"lo").write(toFile: run + "/metrics.jsonl", atomically: true, encoding: .utf8)
        try #"{"model": "<script>alert(1)</script>", "lr": 1e-05}"#.write(toFile: run + "/config.json", atomically: true, encoding: .utf8)
        let tile = try ByteImage(width: 16, height: 16, channels: 3, pixels: (0..<768).map { UInt8($0 % 251) })
        try PNG.writeBytes(tile, to: run + "/validation/base/grid.png")
        for step in [2, 4, 6] {
            try FileManager.default.createDirectory(atPath: run + "/validation/step-00000\(step)", withIntermediateDirectories: true)
            try PNG.writeBytes(tile, to: run + "/validation/step-00000\(step)/grid.png")
        }
        // An evaluation (in process, a LoRA against itself, one prompt).
        var c = EvalConfig(a: EvalSide(model: model, lora: lora), baseline: EvalSide(model: model, lora: lora), prompts: ["a cat"],
                           promptSource: "test", out: dir + "/eval")
        c.steps = 2; c.height = 64; c.width = 48; c.bootstrapResamples = 100
        try Evaluator(config: c, scorers: [ChannelMeanScorer(name: "blue", channel: 2)], log: { _ in }).run()

        let r = try hgdpo(["report", run, "--eval", dir + "/eval"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains(run + "/report.html"), r.stdout)
        let html = try String(contentsOfFile: run + "/report.html", encoding: .utf8)
        let titles = html.components(separatedBy: "<svg class=\"chart\"").dropFirst().map { chart -> String in
            let t = chart.components(separatedBy: "<title>")[1]
            return String(t[..<t.range(of: "</title>")!.lowerBound])
        }
        XCTAssertEqual(titles, ["loss", "DPO loss", "implicit accuracy", "MSE (θ, ref; winner w, loser l)", "learning rate",
                                "gradient norm (before clipping)", "gradient clipped (1 = yes)", "step skipped (1 = yes)", "epoch",
                                "my_metric",
                                "Win rate of A (95% bootstrap interval)", "HSV shift of A relative to the baseline (%)"])
        XCTAssertTrue(html.contains("30 logged steps, 1 to 30"), "the re-logged step counted once")
        XCTAssertTrue(html.contains("line 32 is unfinished"))
        XCTAssertFalse(html.contains("<script"))
        XCTAssertTrue(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"))
        XCTAssertEqual(html.components(separatedBy: "src=\"data:image/png;base64,").count - 1, 4)   // base + 3 steps
        XCTAssertTrue(html.contains("<figcaption>step 6</figcaption>"))
        for external in ["<link", "<script", "src=\"http", "src=\"//", "url("] {
            XCTAssertFalse(html.contains(external), "the page loads something: \(external)")
        }
        // The MSE chart draws four series; the loss line goes down (first point lower on the page than the last).
        let mse = html.components(separatedBy: "<title>MSE (")[1].components(separatedBy: "</svg>")[0]
        XCTAssertEqual(mse.components(separatedBy: "<path d=").count - 1, 4)

        // A malformed line (not the last) is an error naming it.
        try "{\"step\":1,\"loss\":1}\nnot json\n{\"step\":2,\"loss\":1}\n".write(toFile: run + "/metrics.jsonl", atomically: true, encoding: .utf8)
        let bad = try hgdpo(["report", run])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("metrics.jsonl: line 2 is not a JSON object"), bad.stderr)
    }
}
