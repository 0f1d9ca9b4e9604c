// `hgdpo pool` → `hgdpo score` → `hgdpo select` → `hgdpo data check` / `encode` / `train` on the tiny random pipeline
// of Tests/SamplingTests/Fixtures, as a user runs them (processes; MPI ranks through launch/local.sh): byte-identical
// pools on 1 and 2 ranks, a killed pool that resumes to the same bytes, refused setting changes.
import Foundation
import IO
import TestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

let pipelineFixture = repoRoot + "/Tests/SamplingTests/Fixtures/pipeline"
let clipFixture = repoRoot + "/Tests/ScoringTests/Fixtures/clip"

final class PoolTests: XCTestCase {
    /// The pool command with small settings; `extra` (option, value pairs) replaces or adds options.
    func poolArgs(_ prompts: String, _ out: String, _ extra: [String] = []) -> [String] {
        var options: [(String, String)] = [("--model", pipelineFixture), ("--prompts", prompts), ("--out", out),
                                           ("--images-per-prompt", "4"), ("--batch", "2"), ("--steps", "3"), ("--height", "64"),
                                           ("--width", "48"), ("--seed", "5"), ("--threads", "1")]
        for i in stride(from: 0, to: extra.count, by: 2) {
            if let j = options.firstIndex(where: { $0.0 == extra[i] }) { options[j].1 = extra[i + 1] } else { options.append((extra[i], extra[i + 1])) }
        }
        return ["pool"] + options.flatMap { [$0.0, $0.1] }
    }

    func writePrompts(_ dir: String, _ lines: [String] = ["a photo of a cat", "a red car", "", "a woman smiling"]) throws -> String {
        let path = dir + "/prompts.txt"
        try Foundation.Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    func launch(_ ranks: Int, _ args: [String]) throws -> ProcessResult {
        try runProcess("/bin/bash", [repoRoot + "/launch/local.sh", "--timeout", "200", String(ranks), "hgdpo"] + args,
                       environment: ["HGDPO_BIN": hgdpoBinary], timeout: 240)
    }

    /// Every file of a pool (images and pool.jsonl) by relative path.
    func poolFiles(_ pool: String) throws -> [String: Foundation.Data] {
        var out: [String: Foundation.Data] = [:]
        let e = FileManager.default.enumerator(atPath: pool)!
        while let rel = e.nextObject() as? String {
            guard rel.hasSuffix(".png") || rel == "pool.jsonl" else { continue }
            out[rel] = try Foundation.Data(contentsOf: URL(fileURLWithPath: pool + "/" + rel))
        }
        return out
    }

    func testPoolScoreSelectGivesATripletDatasetEncodeAndTrainAccept() throws {
        let dir = try temporaryDirectory(self)
        let prompts = try writePrompts(dir)
        var r = try hgdpo(poolArgs(prompts, dir + "/pool"))
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains(#""images":12"#) && r.stdout.contains(#""written":12"#), r.stdout)
        XCTAssertTrue(r.stderr.contains("ETA"), r.stderr)
        // pool.jsonl: prompt-major, paths relative, seeds as in the PNGs.
        let lines = try String(contentsOfFile: dir + "/pool/pool.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 12)
        let line5 = try JSONSerialization.jsonObject(with: Foundation.Data(lines[5].utf8)) as! [String: Any]
        XCTAssertEqual(line5["prompt_index"] as? Int, 1)
        XCTAssertEqual(line5["image_index"] as? Int, 1)
        XCTAssertEqual(line5["prompt"] as? String, "a red car")
        XCTAssertEqual(line5["path"] as? String, "images/00000/00000001-001.png")
        let (image, text) = try PNG.readBytesWithText(dir + "/pool/images/00000/00000001-001.png")
        XCTAssertEqual([image.width, image.height], [48, 64])
        XCTAssertEqual(text["seed"], "\(line5["seed"]!)")
        XCTAssertEqual(text["prompt_index"], "1")
        XCTAssertEqual(text["steps"], "3")
        // Images of one prompt differ (their own seeds).
        let other = try PNG.readBytes(dir + "/pool/images/00000/00000001-000.png")
        XCTAssertNotEqual(image.pixels, other.pixels)

        r = try hgdpo(["score", "--pool", dir + "/pool", "--scorer", "pick=clip:" + clipFixture,
                       "--scorer", "col=external:python3 \(repoRoot)/scripts/example_scorer.py", "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let scores = try String(contentsOfFile: dir + "/pool/scores.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(scores.count, 12)
        let s0 = try JSONSerialization.jsonObject(with: Foundation.Data(scores[0].utf8)) as! [String: Any]
        XCTAssertEqual(Set(s0.keys), ["prompt_index", "image_index", "pick", "col"])
        let scorers = try String(contentsOfFile: dir + "/pool/scorers.json", encoding: .utf8)
        XCTAssertTrue(scorers.contains(#""kind" : "clip""#) && scorers.contains(#""kind" : "external""#), scorers)
        // Rerun: nothing left to score.
        r = try hgdpo(["score", "--pool", dir + "/pool", "--scorer", "pick=clip:" + clipFixture])
        XCTAssertTrue(r.stdout.contains(#""scored":0"#), r.stdout + r.stderr)
        // The same name with other settings is refused, naming the difference.
        r = try hgdpo(["score", "--pool", dir + "/pool", "--scorer", "pick=clip:" + clipFixture + ",output=cosine"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("setting output 'logit' → 'cosine'"), r.stderr)

        r = try hgdpo(["select", "--pool", dir + "/pool", "--by", "pick", "--out", dir + "/triplets"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains(#""triplets":3"#), r.stdout)
        r = try hgdpo(["data", "check", dir + "/triplets", "--check-images"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains(#""triplets":3"#), r.stdout)

        r = try hgdpo(["encode", "--model", pipelineFixture, "--data", dir + "/triplets", "--out", dir + "/cache", "--resolution", "32",
                       "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains(#""count":3"#), r.stdout)
        r = try hgdpo(["train", "--model", pipelineFixture, "--data", dir + "/cache", "--out", dir + "/run", "--global-batch", "1",
                       "--local-batch", "1", "--max-steps", "1", "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/run/step-000001/pytorch_lora_weights.safetensors"), r.stdout + r.stderr)
    }

    /// The same pool on 1 and 2 ranks, and a pool killed midway then rerun: the same bytes.
    func testPoolBytesDoNotDependOnRanksOrInterruption() throws {
        let dir = try temporaryDirectory(self)
        let prompts = try writePrompts(dir)
        var r = try launch(1, poolArgs(prompts, dir + "/one"))
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try launch(2, poolArgs(prompts, dir + "/two"))
        XCTAssertEqual(r.status, 0, r.stderr)
        let one = try poolFiles(dir + "/one"), two = try poolFiles(dir + "/two")
        XCTAssertEqual(one.count, 13)
        XCTAssertEqual(Set(one.keys), Set(two.keys))
        for (k, v) in one { XCTAssertEqual(v, two[k], "\(k) differs between 1 and 2 ranks") }
        // Scoring shards prompts over ranks: the same scores.jsonl from 1 and 2 ranks.
        for (ranks, pool) in [(1, dir + "/one"), (2, dir + "/two")] {
            r = try launch(ranks, ["score", "--pool", pool, "--scorer", "pick=clip:" + clipFixture, "--threads", "1"])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        XCTAssertEqual(try String(contentsOfFile: dir + "/one/scores.jsonl", encoding: .utf8),
                       try String(contentsOfFile: dir + "/two/scores.jsonl", encoding: .utf8))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/two/scores.parts/pick").sorted(), ["rank0.jsonl", "rank1.jsonl"])

        // Kill a pool once its first image is written, then rerun it.
        let killed = dir + "/killed"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: hgdpoBinary)
        p.arguments = poolArgs(prompts, killed, ["--steps", "12"])
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(120)
        while p.isRunning && Date() < deadline {
            if let files = FileManager.default.enumerator(atPath: killed)?.allObjects as? [String], files.contains(where: { $0.hasSuffix(".png") }) { break }
            usleep(10_000)
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let partial = try poolFiles(killed)
        XCTAssertFalse(partial.keys.contains("pool.jsonl"), "a killed pool has no index")
        XCTAssertLessThan(partial.count, 12, "the pool finished before it was killed")
        r = try hgdpo(poolArgs(prompts, killed, ["--steps", "12"]))
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"written\":\(12 - partial.count)"), r.stdout)
        r = try hgdpo(poolArgs(prompts, dir + "/whole", ["--steps", "12"]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let resumed = try poolFiles(killed), whole = try poolFiles(dir + "/whole")
        XCTAssertEqual(Set(resumed.keys), Set(whole.keys))
        for (k, v) in whole { XCTAssertEqual(v, resumed[k], "\(k) differs after resuming") }
    }

    func testChangedSettingsAndBadPromptFilesAreRefused() throws {
        let dir = try temporaryDirectory(self)
        let prompts = try writePrompts(dir, ["one prompt"])
        XCTAssertEqual(try hgdpo(poolArgs(prompts, dir + "/pool", ["--images-per-prompt", "2"])).status, 0)
        var r = try hgdpo(poolArgs(prompts, dir + "/pool", ["--images-per-prompt", "2", "--guidance", "7"]))
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("guidance: '5.0' → '7.0'"), r.stderr)
        r = try hgdpo(poolArgs(prompts, dir + "/pool", ["--images-per-prompt", "2", "--mixed-precision", "bf16"]))
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("mixed_precision: 'no' → 'bf16'"), r.stderr)
        // A bf16 pool: the U-Net's weights in bf16, recorded in the images.
        r = try hgdpo(poolArgs(prompts, dir + "/bf16", ["--images-per-prompt", "1", "--mixed-precision", "bf16"]))
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try PNG.readBytesWithText(dir + "/bf16/images/00000/00000000-000.png").1["mixed_precision"], "bf16")
        let more = try writePrompts(dir, ["one prompt", "two"])
        r = try hgdpo(poolArgs(more, dir + "/pool", ["--images-per-prompt", "2"]))
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("prompt_count: '1' → '2'"), r.stderr)

        // One job per folder: a pool or score on a folder another job holds is refused, nothing written.
        let lock = try RunFolderLock(folder: dir + "/held", command: "test-holder")
        r = try hgdpo(poolArgs(prompts, dir + "/held"))
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("test-holder"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/held/pool.json"))
        lock.release()
        let lock2 = try RunFolderLock(folder: dir + "/pool", command: "test-holder")
        r = try hgdpo(["score", "--pool", dir + "/pool", "--scorer", "pick=clip:" + clipFixture])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("test-holder"), r.stderr)
        lock2.release()

        // PartiPrompts-style TSV: the Prompt column, rows of one category.
        let tsv = dir + "/parti.tsv"
        try Foundation.Data("Prompt\tCategory\tChallenge\tNote\na cat\tAnimals\tBasic\t\na chef\tPeople\tBasic\t\na nurse\tPeople\tBasic\t\n".utf8)
            .write(to: URL(fileURLWithPath: tsv))
        r = try hgdpo(poolArgs(tsv, dir + "/parti", ["--category", "People", "--images-per-prompt", "1"]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let index = try String(contentsOfFile: dir + "/parti/pool.jsonl", encoding: .utf8)
        XCTAssertTrue(index.contains(#""prompt":"a chef","category":"People""#) && index.contains("a nurse") && !index.contains("a cat"), index)
        r = try hgdpo(poolArgs(tsv, dir + "/x", ["--prompt-column", "Text"]))
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("no column 'Text'"), r.stderr)
        r = try hgdpo(poolArgs(prompts, dir + "/y", ["--category", "People"]))
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("--category needs a TSV"), r.stderr)
    }
}
