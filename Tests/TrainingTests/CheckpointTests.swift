import Foundation
import XCTest
import TestSupport
@testable import Training

/// Damaged checkpoints: `--resume auto` verifies and falls back to the newest intact one; `--resume DIR` never does.
extension TrainerTests {
    func stepDir(_ run: String, _ step: Int) -> String { "\(run)/\(Checkpoint.name(step: step))" }

    func cutInHalf(_ path: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
    }

    func loggedSteps(_ run: String) throws -> [Int] {
        try String(contentsOfFile: "\(run)/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { line in
            (try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any])["step"] as! Int
        }
    }

    func testDamagedLatestCheckpointFallsBackOnlyUnderResumeAuto() throws {
        let dir = try temporaryDirectory(self)
        let opts = ["--checkpoint-every": "1", "--keep-checkpoints": "5"]
        let full = try train(ranks: 1, output: "\(dir)/full", options: opts.merging(["--max-steps": "4"]) { $1 })
        XCTAssertEqual(full.status, 0, full.stderr)
        let part = "\(dir)/part"
        XCTAssertEqual(try train(ranks: 1, output: part, options: opts).status, 0)
        let lora3 = "\(stepDir(part, 3))/\(Checkpoint.loraFile)"
        try cutInHalf(lora3)

        // --resume DIR: the error, naming the file, and no fallback.
        let explicit = try train(ranks: 1, output: part, options: opts.merging(["--max-steps": "4", "--resume": stepDir(part, 3)]) { $1 })
        XCTAssertEqual(explicit.status, 2, explicit.stderr)
        XCTAssertTrue(explicit.stderr.contains("\(lora3): has") && explicit.stderr.contains("(truncated or replaced)"), explicit.stderr)
        XCTAssertFalse(explicit.stdout.contains("resumed from"), explicit.stdout)

        // --resume auto: says what is wrong, falls back to step 2, and ends exactly where the uninterrupted run ends.
        let auto = try train(ranks: 1, output: part, options: opts.merging(["--max-steps": "4", "--resume": "auto"]) { $1 })
        XCTAssertEqual(auto.status, 0, auto.stderr)
        XCTAssertTrue(auto.stdout.contains("checkpoint \(stepDir(part, 3)) is damaged: \(lora3): has"), auto.stdout)
        XCTAssertTrue(auto.stdout.contains("resuming from \(stepDir(part, 2)), the newest intact checkpoint, instead"), auto.stdout)
        XCTAssertTrue(auto.stdout.contains("resumed from \(stepDir(part, 2)) at step 2"), auto.stdout)
        XCTAssertEqual(try lora(part, step: 4), try lora("\(dir)/full", step: 4), "bit-identical to the uninterrupted run")
        for step in 1...4 { XCTAssertNoThrow(try Checkpoint.verify(stepDir(part, step)), "step \(step) rewritten and intact") }
        XCTAssertEqual(try loggedSteps(part), [1, 2, 3, 4], "metrics.jsonl: every step once")

        // Every checkpoint damaged: an error, not a silent restart from step 0.
        for step in 1...4 { try cutInHalf("\(stepDir(part, step))/\(Checkpoint.optimizerFile)") }
        let none = try train(ranks: 1, output: part, options: opts.merging(["--max-steps": "5", "--resume": "auto"]) { $1 })
        XCTAssertEqual(none.status, 2)
        XCTAssertTrue(none.stderr.contains("\(part): no intact checkpoint to resume from"), none.stderr)
    }

    /// What `verify` catches, each error naming the file.
    func testVerifyNamesWhatIsWrong() throws {
        let dir = try temporaryDirectory(self)
        XCTAssertEqual(try train(ranks: 1, output: "\(dir)/run", options: ["--max-steps": "2", "--checkpoint-every": "1"]).status, 0)
        let good = stepDir("\(dir)/run", 2)
        XCTAssertNoThrow(try Checkpoint.verify(good))
        func damaged(_ name: String, _ damage: (String) throws -> Void, expect: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let copy = "\(dir)/\(name)/\(Checkpoint.name(step: 2))"
            try FileManager.default.createDirectory(atPath: "\(dir)/\(name)", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: good, toPath: copy)
            try damage(copy)
            XCTAssertThrowsError(try Checkpoint.verify(copy), file: file, line: line) { error in
                XCTAssertTrue("\(error)".contains(expect), "\(error)", file: file, line: line)
            }
        }
        try damaged("flip", { d in
            let p = "\(d)/\(Checkpoint.optimizerFile)"
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
            bytes[bytes.count - 3] ^= 0x10
            try Data(bytes).write(to: URL(fileURLWithPath: p))
        }, expect: "\(Checkpoint.optimizerFile): CRC-32")
        try damaged("nostate", { try FileManager.default.removeItem(atPath: "\($0)/\(Checkpoint.stateFile)") }, expect: "no trainer_state.json")
        try damaged("nolora", { try FileManager.default.removeItem(atPath: "\($0)/\(Checkpoint.loraFile)") },
                    expect: "\(Checkpoint.loraFile): missing")
        try damaged("badjson", { try "{\"step\": 2".write(toFile: "\($0)/\(Checkpoint.stateFile)", atomically: true, encoding: .utf8) },
                    expect: "\(Checkpoint.stateFile): not a trainer state")
        // A checkpoint of the format before digests (no "files"): a cut tensor file is still caught by parsing it.
        try damaged("olddigestless", { d in
            let p = "\(d)/\(Checkpoint.stateFile)"
            var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as! [String: Any]
            json["files"] = nil
            try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: p))
            try self.cutInHalf("\(d)/\(Checkpoint.loraFile)")
        }, expect: Checkpoint.loraFile)
        try damaged("wrongstep", { d in
            let p = "\(d)/\(Checkpoint.stateFile)"
            var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as! [String: Any]
            json["step"] = 7
            try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: p))
        }, expect: "holds step 7, but the folder is step-000002")
    }

    func testMetricsAreTrimmedToTheResumedStep() throws {
        let dir = try temporaryDirectory(self)
        let path = "\(dir)/metrics.jsonl"
        try "{\"step\":1,\"loss\":0.5}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4,\"lo".write(toFile: path, atomically: true, encoding: .utf8)
        try Checkpoint.trimMetrics(path, throughStep: 2)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "{\"step\":1,\"loss\":0.5}\n{\"step\":2}\n")
        try Checkpoint.trimMetrics(path, throughStep: 0)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "")
    }
}
