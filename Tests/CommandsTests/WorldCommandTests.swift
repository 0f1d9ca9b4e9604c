// `hgdpo world …` as a user runs it, and the toy-human entry of the scorer table.
import Foundation
import IO
import TestSupport
import XCTest
@testable import Commands

final class WorldCommandTests: XCTestCase {
    func testRenderWritesNamedImagesWithTheirPromptAndDefect() throws {
        let dir = try temporaryDirectory(self)
        let prompts = dir + "/p.txt"
        var r = try hgdpo(["world", "prompts", "--count", "3", "--split", "heldout", "--seed", "2", "--out", prompts])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = try String(contentsOfFile: prompts, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        r = try hgdpo(["world", "render", "--prompts", prompts, "--images-per-prompt", "2", "--seed", "10", "--defect", "wrong-color",
                       "--out", dir + "/out"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/out").sorted()
        XCTAssertEqual(files, (0..<6).map { String(format: "%06d-seed%d.png", $0, 10 + $0) } + ["grid.png"])
        let (image, text) = try PNG.readBytesWithText(dir + "/out/000003-seed13.png")
        XCTAssertEqual([image.width, image.height, image.channels], [32, 32, 3])
        XCTAssertEqual(text["prompt"], String(lines[1]))
        XCTAssertEqual(text["seed"], "13")
        XCTAssertEqual(text["defect"], "wrong-color")
        // The same command again into another folder gives the same pixels.
        XCTAssertEqual(try hgdpo(["world", "render", "--prompts", prompts, "--images-per-prompt", "2", "--seed", "10", "--defect",
                                  "wrong-color", "--out", dir + "/again"]).status, 0)
        XCTAssertEqual(try PNG.readBytes(dir + "/again/000003-seed13.png"), image)
    }

    func testDatasetIsATripletFolderWithTheDefectRate() throws {
        let out = try temporaryDirectory(self) + "/data"
        var r = try hgdpo(["world", "dataset", "--count", "200", "--defect-rate", "0.3", "--seed", "4", "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try hgdpo(["data", "check", out, "--check-images"])
        XCTAssertEqual(r.status, 0, r.stderr + r.stdout)
        let lines = try String(contentsOfFile: out + "/triplets.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 200)
        let records = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let defective = records.filter { $0["winner_defect"] as? String != "none" }.count
        XCTAssertGreaterThan(defective, 40)
        XCTAssertLessThan(defective, 80)
        XCTAssertTrue(records.allSatisfy { ($0["loser_defect"] as? String).map { $0 != "none" } ?? false })
        let (_, text) = try PNG.readBytesWithText(out + "/images/000007w.png")
        XCTAssertEqual(text["prompt"], records[7]["prompt"] as? String)
        XCTAssertEqual(text["defect"], records[7]["winner_defect"] as? String)
    }

    func testBadInputsAreUsageErrors() throws {
        let dir = try temporaryDirectory(self)
        try "a person in a red shirt waving at night\n\na person in a teal shirt waving at night\n"
            .write(toFile: dir + "/p.txt", atomically: true, encoding: .utf8)
        var r = try hgdpo(["world", "render", "--prompts", dir + "/p.txt", "--out", dir + "/o1"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("p.txt:3"), r.stderr)
        XCTAssertTrue(r.stderr.contains("a teal shirt waving at night"), r.stderr)
        r = try hgdpo(["world", "render", "--prompt", "a person in a red shirt waving at night", "--defect", "bent-knee", "--out", dir + "/o2"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("--defect"), r.stderr)
        r = try hgdpo(["world", "render", "--prompt", "a person in a red shirt waving at night", "--defect-rate", "0.5", "--out", dir + "/o3"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("--defect-rate needs --defect"), r.stderr)
        r = try hgdpo(["world", "dataset", "--count", "2", "--size", "20", "--out", dir + "/o4"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("--size"), r.stderr)
        try "x".write(toFile: dir + "/o5", atomically: true, encoding: .utf8)
        r = try hgdpo(["world", "dataset", "--count", "2", "--out", dir + "/o5"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("o5: already exists"), r.stderr)
        r = try hgdpo(["world", "make-model", "--out", dir + "/m", "--channels", "16,x"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("--channels"), r.stderr)
    }

    /// `world read` (the toy-human scorer) gives the same bits in every process: Swift seeds its dictionaries' hashing
    /// per process, and the scorer once summed a dictionary's Float values (4 runs on pool images gave 4 different
    /// outputs). Rendered people with speckle noise over them, so there are many foreground regions.
    func testReadIsTheSameInEveryProcess() throws {
        let dir = try temporaryDirectory(self)
        let prompt = "three people in red shirts waving on a beach"
        XCTAssertEqual(try hgdpo(["world", "render", "--prompt", prompt, "--images-per-prompt", "6", "--seed", "3", "--defect", "random",
                                  "--defect-rate", "0.5", "--out", dir + "/r"]).status, 0)
        var state: UInt64 = 12345
        var args = ["world", "read", "--prompt", prompt]
        for k in 0..<6 {
            var image = try PNG.readBytes(dir + String(format: "/r/%06d-seed%d.png", k, 3 + k))
            for i in 0..<image.pixels.count where i % 3 == 0 {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                if state >> 61 == 0 { for c in 0..<3 { image.pixels[i + c] = UInt8(truncatingIfNeeded: state >> (8 * UInt64(c + 2))) } }
            }
            try PNG.writeBytes(image, to: dir + "/n\(k).png")
            args += ["--image", dir + "/n\(k).png"]
        }
        let outputs = try (0..<4).map { _ in try hgdpo(args) }
        XCTAssertEqual(outputs[0].status, 0, outputs[0].stderr)
        XCTAssertEqual(outputs[0].stdout.split(separator: "\n").count, 6)
        XCTAssertTrue(outputs[0].stdout.contains("\"clutter\""), outputs[0].stdout)
        for o in outputs.dropFirst() { XCTAssertEqual(o.stdout, outputs[0].stdout) }
    }

    func testToyHumanIsAScorerKind() throws {
        let scorer = try Commands.makeScorer("toy=toy-human")
        XCTAssertEqual(scorer.descriptor.kind, "toy-human")
        XCTAssertEqual(scorer.name, "toy")
        XCTAssertThrowsError(try Commands.makeScorer("toy=toy-humans")) { XCTAssertTrue("\($0)".contains("toy-human"), "\($0)") }
    }
}
