// `hgdpo train --validation-prompts`: validation images of the fixture pipeline during a short run, on 1 and 2 ranks.
import Foundation
import XCTest
import IO
import TestSupport
@testable import Training

final class TrainValidationTests: XCTestCase {
    static let world: (cache: String, prompts: String) = {
        let dir = (NSTemporaryDirectory() as NSString).appendingPathComponent("hgdpo-validation-\(getpid())")
        try? FileManager.default.removeItem(atPath: dir)
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Latents of the fixture's 64x48 images (8x6), context 77x16 as its text encoder gives.
        let r = try! hgdpo(["make-cache", "--count", "8", "--latent", "4,8,6", "--context", "77,16", "--out", dir + "/cache"])
        precondition(r.status == 0, r.stderr)
        try! "a photo of a woman\n\nthree people in the forest, sunset\nportrait, (smiling:1.2)\n"
            .write(toFile: dir + "/prompts.txt", atomically: true, encoding: .utf8)
        return (dir + "/cache", dir + "/prompts.txt")
    }()

    /// `launch/local.sh RANKS hgdpo train` with the tests' defaults, `options` overriding or adding (name → value).
    func train(ranks: Int, output: String, model: String = samplingFixtures + "/pipeline", options: [String: String] = [:]) throws -> ProcessResult {
        var opts = ["--model": model, "--data": Self.world.cache, "--out": output, "--global-batch": "4", "--local-batch": "2",
                    "--max-steps": "2", "--lr": "1e-2", "--optimizer": "adamw", "--threads": "1", "--collective-timeout": "60",
                    "--validation-prompts": Self.world.prompts, "--validation-every": "2", "--validation-steps": "3"]
        for (k, v) in options { opts[k] = v }
        let args = ["--timeout", "200", String(ranks), "hgdpo", "train"] + opts.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] }
        return try runProcess("/bin/bash", [repoRoot + "/launch/local.sh"] + args, environment: ["HGDPO_BIN": hgdpoBinary],
                              timeout: 230)
    }

    func pixels(_ path: String) throws -> [UInt8] { try PNG.readBytes(path).pixels }

    func maxDiff(_ a: [UInt8], _ b: [UInt8]) -> Int { zip(a, b).map { abs(Int($0) - Int($1)) }.max() ?? 0 }

    /// Base images once, LoRA images at the validation step; the same images on 1 and 2 ranks (each rank samples its
    /// share, rank 0 writes them all).
    func testValidationImagesOnOneAndTwoRanks() throws {
        let dir = try temporaryDirectory(self)
        let one = try train(ranks: 1, output: dir + "/one")
        XCTAssertEqual(one.status, 0, one.stderr)
        let two = try train(ranks: 2, output: dir + "/two")
        XCTAssertEqual(two.status, 0, two.stderr)
        for run in ["one", "two"] {
            for sub in ["base", "step-000002"] {
                let files = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/\(run)/validation/\(sub)").sorted()
                XCTAssertEqual(files, ["000000-seed0.png", "000001-seed1.png", "000002-seed2.png", "grid.png"], "\(run)/\(sub)")
            }
        }
        let (image, text) = try PNG.readBytesWithText(dir + "/one/validation/step-000002/000001-seed1.png")
        XCTAssertEqual([image.width, image.height], [48, 64])    // the cache's 8x6 latents, times 8
        XCTAssertEqual(text["prompt"], "three people in the forest, sunset")
        XCTAssertEqual(text["steps"], "3")
        XCTAssertEqual(text["lora_scale"], "1")
        XCTAssertEqual(try PNG.readBytesWithText(dir + "/one/validation/base/000001-seed1.png").1["lora"], "none")
        for k in 0..<3 {
            let name = "00000\(k)-seed\(k).png"
            for sub in ["base", "step-000002"] {
                XCTAssertLessThanOrEqual(maxDiff(try pixels("\(dir)/one/validation/\(sub)/\(name)"),
                                                 try pixels("\(dir)/two/validation/\(sub)/\(name)")), 1, "\(sub)/\(name)")
            }
        }
        // The LoRA after 2 steps at lr 1e-2 changes the images.
        XCTAssertGreaterThan(maxDiff(try pixels(dir + "/one/validation/base/000000-seed0.png"),
                                     try pixels(dir + "/one/validation/step-000002/000000-seed0.png")), 0)
        // Resuming with other validation options is allowed (they are not part of the trajectory); the base images are
        // not made again while they match, and are made again when they do not (another seed).
        let resumed = try train(ranks: 1, output: dir + "/one", options: ["--max-steps": "3", "--resume": "auto", "--validation-every": "1"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertFalse(resumed.stdout.contains("validation base"), resumed.stdout)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/one/validation/step-000003/000000-seed0.png"))
        let reseeded = try train(ranks: 1, output: dir + "/one", options: ["--max-steps": "4", "--resume": "auto",
                                                                           "--validation-every": "1", "--validation-seed": "5"])
        XCTAssertEqual(reseeded.status, 0, reseeded.stderr)
        XCTAssertTrue(reseeded.stdout.contains("validation base"), reseeded.stdout)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/one/validation/base/000000-seed5.png"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/one/validation/step-000004/000000-seed5.png"))
    }

    func testAModelWithoutTextEncoderIsRefusedUpFront() throws {
        let dir = try temporaryDirectory(self)
        let model = dir + "/model"
        try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
        for part in ["model_index.json", "unet", "scheduler", "vae", "tokenizer"] {
            try FileManager.default.createSymbolicLink(atPath: "\(model)/\(part)", withDestinationPath: "\(samplingFixtures)/pipeline/\(part)")
        }
        let r = try train(ranks: 1, output: dir + "/run", model: model)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--validation-prompts") && r.stderr.contains("missing: text_encoder/"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run/metrics.jsonl"))
        let m = try hgdpo(["train", "--model", samplingFixtures + "/pipeline", "--data", Self.world.cache, "--out", dir + "/x",
                           "--validation-every", "3"])
        XCTAssertEqual(m.status, 2)
        XCTAssertTrue(m.stderr.contains("--validation-every needs --validation-prompts"), m.stderr)
    }

    func testValidationOptionsDoNotChangeTheTrajectoryHash() {
        var c = TrainConfig()
        c.model = "m"; c.data = "d"; c.output = "o"
        let plain = c.trajectoryHash
        c.validationPrompts = "p.txt"; c.validationEvery = 10; c.validationSteps = 7; c.validationSeed = 3
        c.validationGuidance = 2; c.validationLoraScale = 0.5; c.validationHeight = 64; c.validationWidth = 48
        XCTAssertEqual(c.trajectoryHash, plain)
        c.beta = 1
        XCTAssertNotEqual(c.trajectoryHash, plain)
    }
}
