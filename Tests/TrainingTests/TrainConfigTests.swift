// The one table of train options (TrainConfig.options): config files are decoded strictly (unknown keys name the
// closest valid key, bad values name the key and what was expected), the command line overrides the file, and
// config.json round-trips through --config.
import Foundation
import IO
import TestSupport
import Training
import XCTest

final class TrainConfigTests: XCTestCase {
    func write(_ text: String, _ name: String) throws -> String {
        let path = try temporaryDirectory(self) + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func load(_ path: String) throws -> TrainConfig {
        var c = TrainConfig()
        try TrainConfig.options.apply(file: path, to: &c)
        return c
    }

    func testJSONAndYAMLFilesSetTheSameOptions() throws {
        let json = try write(#"{"model": "m", "data": "d", "out": "o", "global_batch": 32, "lr": 2e-5, "lr_schedule": "cosine", "#
                             + #""gradient_checkpointing": true, "stat_inference_steps": 25, "seed": 7, "objective": "dpo"}"#, "run.json")
        let yaml = try write("""
            # the same run
            model: m
            data: d
            out: o
            global-batch: 32      # a flag spelling is accepted too
            lr: 2e-5
            lr_schedule: cosine
            gradient_checkpointing: true
            stat_inference_steps: 25
            seed: 7
            objective: dpo
            """, "run.yaml")
        let a = try load(json), b = try load(yaml)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.globalBatch, 32)
        XCTAssertEqual(a.lr, 2e-5)
        XCTAssertEqual(a.lrSchedule, "cosine")
        XCTAssertTrue(a.gradientCheckpointing)
        XCTAssertEqual(a.statInferenceSteps, 25, "the file's value, not the default 50")
        XCTAssertEqual(a.objective, .dpo)
        XCTAssertEqual(a.seed, 7)
        XCTAssertEqual(a.localBatch, TrainConfig().localBatch, "keys not in the file keep their defaults")
    }

    func testMisspeltKeyNamesItAndTheClosestKey() throws {
        for (text, name) in [(#"{"learning_rate": 1e-4, "lr_schedul": "cosine"}"#, "a.json"), ("lr_schedul: cosine\n", "a.yaml")] {
            XCTAssertThrowsError(try load(try write(text, name))) { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains(name), message)
                XCTAssertTrue(message.contains("'lr_schedul'") || message.contains("'learning_rate'"), message)
                XCTAssertTrue(error is UserInputError, message)
            }
        }
        XCTAssertThrowsError(try load(try write("lr_schedul: cosine\n", "b.yaml"))) { error in
            XCTAssertEqual("\(error)".hasSuffix("unknown key 'lr_schedul' (did you mean 'lr_schedule'?)"), true, "\(error)")
        }
    }

    func testBadValuesAreRefusedWithTheKey() throws {
        let cases: [(String, String)] = [
            ("lr_schedule: cosin\n", "key 'lr_schedule'"),                  // outside the enumeration
            ("objective: ppo\n", "key 'objective'"),
            ("optimizer: sgd\n", "key 'optimizer'"),
            ("mixed_precision: fp16\n", "key 'mixed_precision'"),
            ("lr: 11\n", "key 'lr'"),                                        // outside the range flags get
            ("global_batch: 0\n", "key 'global_batch'"),
            ("global_batch: 2.5\n", "key 'global_batch'"),                  // not an integer
            ("beta: fast\n", "key 'beta'"),
            ("gradient_checkpointing: 1\n", "key 'gradient_checkpointing'"),
            ("seed: -1\n", "key 'seed'"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try load(try write(text, "bad.yaml")), text) { error in
                XCTAssertTrue("\(error)".contains(expected) && "\(error)".contains("bad.yaml"), "\(text): \(error)")
            }
        }
        XCTAssertThrowsError(try load(try write("[1, 2]", "list.json"))) { XCTAssertTrue("\($0)".contains("list.json"), "\($0)") }
    }

    func testCommandLineTextIsCheckedLikeTheFile() throws {
        var c = TrainConfig()
        let lr = try XCTUnwrap(TrainConfig.options.entry(flag: "--lr"))
        try lr.set(&c, text: "3e-4")
        XCTAssertEqual(c.lr, 3e-4)
        XCTAssertThrowsError(try lr.set(&c, text: "11")) { XCTAssertTrue("\($0)".contains("--lr") && "\($0)".contains("0...10"), "\($0)") }
        let schedule = try XCTUnwrap(TrainConfig.options.entry(flag: "--lr-schedule"))
        XCTAssertThrowsError(try schedule.set(&c, text: "cosin")) { XCTAssertTrue("\($0)".contains("constant, cosine"), "\($0)") }
    }

    func testSavedConfigIsAValidConfigFile() throws {
        var c = TrainConfig()
        c.model = "m"; c.data = "d"; c.output = "o"; c.beta = 5000; c.validationPrompts = "p.txt"; c.maxSteps = 9
        let path = try write(c.json.pretty(), "config.json")
        XCTAssertEqual(try load(path), c)
    }

    /// The identity hash moves with the options that change the trajectory and not with the others.
    func testIdentityHash() throws {
        var c = TrainConfig()
        let base = c.trajectoryHash
        c.output = "elsewhere"; c.threads = 3; c.checkpointEvery = 7; c.maxSteps = 99; c.stopOnDivergence = true
        XCTAssertEqual(c.trajectoryHash, base)
        c.beta = 5000
        XCTAssertNotEqual(c.trajectoryHash, base)
        XCTAssertEqual(TrainConfig.options.entries.filter(\.identity).map(\.key).sorted(), [
            "adam_beta1", "adam_beta2", "adam_eps", "beta", "global_batch", "local_batch", "lora_alpha", "lora_rank", "lr",
            "lr_schedule", "max_grad_norm", "mixed_precision", "objective", "optimizer", "seed", "stat_inference_steps",
            "stat_weight", "variant", "warmup_steps", "weight_decay",
        ])
    }

    func testDefaultsAreThePapersAndTheReferenceScripts() {
        let c = TrainConfig()
        XCTAssertEqual(c.beta, 2500)
        XCTAssertEqual(c.statWeight, 10000)
        XCTAssertEqual(c.maxGradNorm, 1.0)
        XCTAssertEqual(c.loraRank, 8)
        XCTAssertEqual(c.lr, 1e-5)
        XCTAssertEqual(c.optimizer, "adam8bit")
        // Not the paper's (it does not say) but the calibrated one: λ_stat 1e4 over a 50-step sampler's step.
        XCTAssertEqual(c.statInferenceSteps, 50)
    }

    /// An explicit --stat-inference-steps wins over the default, one DDPM step (N = T) included.
    func testStatInferenceStepsCanBeSet() throws {
        var c = TrainConfig()
        let entry = try XCTUnwrap(TrainConfig.options.entry(flag: "--stat-inference-steps"))
        try entry.set(&c, text: "1000")
        XCTAssertEqual(c.statInferenceSteps, 1000)
        XCTAssertThrowsError(try entry.set(&c, text: "0")) { XCTAssertTrue("\($0)".contains("--stat-inference-steps"), "\($0)") }
        XCTAssertEqual(try load(try write("stat_inference_steps: 1\n", "one.yaml")).statInferenceSteps, 1)
    }
}
