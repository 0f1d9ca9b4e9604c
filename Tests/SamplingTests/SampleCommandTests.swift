// `hgdpo sample` as a user runs it, on the fixture pipeline (64x48 images, few steps, so each run takes ~1 s).
import Foundation
import XCTest
import IO
import TestSupport

final class SampleCommandTests: XCTestCase {
    let model = samplingFixtures + "/pipeline"
    let lora = samplingFixtures + "/lora.safetensors"
    var small: [String] { ["--model", model, "--height", "64", "--width", "48", "--steps", "4"] }

    func sample(_ args: [String]) throws -> ProcessResult { try hgdpo(["sample"] + small + args) }

    func testWritesImagesWithParametersAndAGrid() throws {
        let out = try temporaryDirectory(self) + "/out"
        let r = try sample(["--prompt", "a photo of a (woman:1.2)", "--negative-prompt", "blurry", "--out", out,
                            "--images-per-prompt", "3", "--batch", "2", "--seed", "41", "--lora", lora, "--lora-scale", "0.5", "--lan"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains(#""written":3"#), r.stdout)
        let files = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
        XCTAssertEqual(files, ["000000-seed41.png", "000001-seed42.png", "000002-seed43.png", "grid.png"])
        let (image, text) = try PNG.readBytesWithText(out + "/000001-seed42.png")
        XCTAssertEqual([image.width, image.height, image.channels], [48, 64, 3])
        XCTAssertEqual(text["prompt"], "a photo of a (woman:1.2)")
        XCTAssertEqual(text["negative_prompt"], "blurry")
        XCTAssertEqual(text["seed"], "42")
        XCTAssertEqual(text["steps"], "4")
        XCTAssertEqual(text["guidance"], "5")
        XCTAssertEqual(text["scheduler"], "dpmsolver++")
        XCTAssertEqual(text["lora"], lora)
        XCTAssertEqual(text["lora_scale"], "0.5")
        XCTAssertEqual(text["lan"], "true")
        XCTAssertEqual(text["model"], model)
        XCTAssertTrue(text["parameters"]?.contains("Seed: 42") == true)
        // Not a flat image: the decoder of random weights still gives varied pixels.
        XCTAssertGreaterThan(Set(image.pixels).count, 20)
        let grid = try PNG.readBytes(out + "/grid.png")
        XCTAssertEqual([grid.width, grid.height], [96, 128])      // 2 columns × 2 rows of 48x64
        // Grid cell 1 is image 1.
        XCTAssertEqual(grid.pixels[48 * 3..<(48 * 3 + 48 * 3)], image.pixels[0..<(48 * 3)])
    }

    /// An image depends on its seed only: the same seed in another batch position, batch size or run gives the same
    /// image (within one 8-bit level: batched GEMMs may round differently).
    /// A prompt with markup, quotes, a line break and non-Latin-1 text is stored in the PNG as the characters it holds.
    func testHostilePromptIsStoredAsText() throws {
        let out = try temporaryDirectory(self) + "/out"
        let prompt = "<script>alert(\"x\")</script> 'a' & \"b\"\nsecond line\tnaïve 🙂"
        let r = try sample(["--prompt", prompt, "--negative-prompt", "</textarea>", "--out", out, "--seed", "3"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let (_, text) = try PNG.readBytesWithText(out + "/000000-seed3.png")
        XCTAssertEqual(text["prompt"], prompt)
        XCTAssertEqual(text["negative_prompt"], "</textarea>")
        XCTAssertTrue(text["parameters"]?.hasPrefix(prompt + "\nNegative prompt: </textarea>\n") == true, text["parameters"] ?? "")
    }

    func testImagesDoNotDependOnBatching() throws {
        let dir = try temporaryDirectory(self)
        XCTAssertEqual(try sample(["--prompt", "two people", "--out", dir + "/a", "--images-per-prompt", "2", "--batch", "2", "--seed", "7"]).status, 0)
        XCTAssertEqual(try sample(["--prompt", "two people", "--out", dir + "/b", "--seed", "8"]).status, 0)
        let a = try PNG.readBytes(dir + "/a/000001-seed8.png"), b = try PNG.readBytes(dir + "/b/000000-seed8.png")
        let diff = zip(a.pixels, b.pixels).map { abs(Int($0) - Int($1)) }.max()!
        XCTAssertLessThanOrEqual(diff, 1)
        let c = try PNG.readBytes(dir + "/a/000000-seed7.png")
        XCTAssertGreaterThan(zip(a.pixels, c.pixels).map { abs(Int($0) - Int($1)) }.max()!, 10)
    }

    func testExistingImagesAreSkippedOrRefusedNeverOverwritten() throws {
        let out = try temporaryDirectory(self) + "/out"
        XCTAssertEqual(try sample(["--prompt", "a cat", "--out", out, "--images-per-prompt", "2"]).status, 0)
        let before = try Data(contentsOf: URL(fileURLWithPath: out + "/000000-seed0.png"))
        // Same parameters, more images: the two are kept, one is added.
        let more = try sample(["--prompt", "a cat", "--out", out, "--images-per-prompt", "3"])
        XCTAssertEqual(more.status, 0, more.stderr)
        XCTAssertTrue(more.stderr.contains("2 of 3 images already there"), more.stderr)
        XCTAssertTrue(more.stdout.contains(#""written":1"#), more.stdout)
        // Other parameters: refused before sampling, the old image untouched.
        let other = try sample(["--prompt", "a cat", "--out", out, "--guidance", "7"])
        XCTAssertEqual(other.status, 2)
        XCTAssertTrue(other.stderr.contains("000000-seed0.png exists and was made with another guidance"), other.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/000000-seed0.png")), before)
        // A grid.png that is not ours is not overwritten.
        let foreign = try temporaryDirectory(self)
        try PNG.writeBytes(try ByteImage(width: 1, height: 1, channels: 3, pixels: [1, 2, 3]), to: foreign + "/grid.png")
        let g = try sample(["--prompt", "a cat", "--out", foreign])
        XCTAssertEqual(g.status, 2)
        XCTAssertTrue(g.stderr.contains("grid.png exists and was not written by hgdpo"), g.stderr)
    }

    /// Schedulers that draw noise at each step (DDPM, SDE DPM-Solver++) take it from the image's seed: a rerun gives
    /// the same image. bf16 weights give nearly the fp32 image.
    func testNoisySchedulersAreSeededAndBF16IsClose() throws {
        let dir = try temporaryDirectory(self)
        for scheduler in ["ddpm", "sde-dpmsolver++"] {
            for run in ["a", "b"] {
                let r = try sample(["--prompt", "a dog", "--out", "\(dir)/\(scheduler)-\(run)", "--scheduler", scheduler, "--seed", "3"])
                XCTAssertEqual(r.status, 0, r.stderr)
            }
            XCTAssertEqual(try PNG.readBytes("\(dir)/\(scheduler)-a/000000-seed3.png"),
                           try PNG.readBytes("\(dir)/\(scheduler)-b/000000-seed3.png"), scheduler)
        }
        XCTAssertEqual(try sample(["--prompt", "a dog", "--out", dir + "/fp32", "--seed", "3"]).status, 0)
        let bf16 = try sample(["--prompt", "a dog", "--out", dir + "/bf16", "--seed", "3", "--mixed-precision", "bf16"])
        XCTAssertEqual(bf16.status, 0, bf16.stderr)
        let a = try PNG.readBytes(dir + "/fp32/000000-seed3.png").pixels, b = try PNG.readBytes(dir + "/bf16/000000-seed3.png").pixels
        let mean = Double(zip(a, b).map { abs(Int($0) - Int($1)) }.reduce(0, +)) / Double(a.count)
        XCTAssertLessThan(mean, 2, "bf16 vs fp32: mean pixel difference \(mean)")
        print("sample bf16 vs fp32: mean abs pixel difference \(mean) (of 255)")
    }

    func testPromptsFileAndBadInputs() throws {
        let dir = try temporaryDirectory(self)
        try "first prompt\n\nsecond, (weighted:1.3)\n".write(toFile: dir + "/p.txt", atomically: true, encoding: .utf8)
        let r = try sample(["--prompts", dir + "/p.txt", "--out", dir + "/o", "--guidance", "1", "--scheduler", "euler"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try PNG.readBytesWithText(dir + "/o/000001-seed1.png").1["prompt"], "second, (weighted:1.3)")

        func refuses(_ args: [String], _ message: String, line: UInt = #line) throws {
            let r = try hgdpo(["sample"] + args)
            XCTAssertEqual(r.status, 2, line: line)
            XCTAssertTrue(r.stderr.contains(message), "\(r.stderr)", line: line)
        }
        try refuses(small + ["--out", dir + "/x"], "needs --prompt TEXT or --prompts FILE")
        try refuses(small + ["--prompt", "a", "--prompts", dir + "/p.txt", "--out", dir + "/x"], "either --prompt or --prompts")
        try refuses(small + ["--prompt", "a", "--out", dir + "/x", "--lan"], "it needs --lora")
        try refuses(small + ["--prompt", "a", "--out", dir + "/x", "--lora-scale", "0.5"], "--lora-scale needs --lora")
        try refuses(["--model", model, "--prompt", "a", "--out", dir + "/x", "--height", "60"], "512x60: width and height must be positive multiples of 8")
        try refuses(small + ["--prompt", "a", "--out", dir + "/x", "--scheduler", "pndm"], "expected one of")
        try refuses(small + ["--prompts", dir + "/missing.txt", "--out", dir + "/x"], "missing.txt")
        // A U-Net-only folder (what the trainer can use) cannot sample.
        try refuses(["--model", model + "/unet", "--prompt", "a", "--out", dir + "/x"], "needs a diffusers pipeline folder")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x"))
    }
}
