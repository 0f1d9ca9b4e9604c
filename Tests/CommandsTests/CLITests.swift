import XCTest
import TestSupport
import IO
@testable import Commands

final class CLITests: XCTestCase {
    static let demo = CommandSpec(
        ["demo", "run"], summary: "A command for the tests",
        arguments: [ArgumentSpec("FILE", "input"), ArgumentSpec("OUT", "output", required: false)],
        options: [
            .value("--steps", "N", "Steps", default: "10"),
            .value("--lr", "LR", "Learning rate", default: "1e-5"),
            .value("--model", "DIR", "Model", required: true),
            .value("--precision", "P", "Precision", default: "no", choices: ["no", "bf16"]),
            .flag("--lan", "Use LAN"),
        ]) { _ in }

    func testParsesValuesFlagsDefaultsAndPositionals() throws {
        let p = try Self.demo.parse(["in.txt", "--model", "m", "--steps=3", "--lan", "--lr", "-2e-4"])
        XCTAssertEqual(p.positionals, ["in.txt"])
        XCTAssertEqual(p.string("--model"), "m")
        XCTAssertEqual(try p.int("--steps"), 3)
        XCTAssertEqual(try p.double("--lr"), -2e-4)
        XCTAssertTrue(p.flag("--lan"))
        XCTAssertEqual(p.string("--precision"), "no")
        XCTAssertTrue(p.given("--steps"))
        XCTAssertFalse(p.given("--precision"))
        // `--` ends options; underscores group digits.
        let q = try Self.demo.parse(["--model", "m", "--steps", "1_000", "--", "--odd-name"])
        XCTAssertEqual(q.positionals, ["--odd-name"])
        XCTAssertEqual(try q.int("--steps"), 1000)
    }

    func testErrorsNameTheOptionAndWhatWasExpected() {
        func error(_ args: [String]) -> CLIError? {
            do { _ = try Self.demo.parse(args); return nil } catch { return error as? CLIError }
        }
        XCTAssertEqual(error(["f", "--model", "m", "--stpes", "2"]),
                       .unknownOption(command: "demo run", option: "--stpes", suggestion: "--steps"))
        XCTAssertEqual(error(["f", "--model"]), .missingValue(option: "--model"))
        XCTAssertEqual(error(["f", "--model", "--lan"]), .missingValue(option: "--model"))
        XCTAssertEqual(error(["f"]), .missingRequired(option: "--model", command: "demo run"))
        XCTAssertEqual(error(["--model", "m"]), .missingArgument(command: "demo run", name: "FILE"))
        XCTAssertEqual(error(["a", "b", "c", "--model", "m"]), .unexpectedArgument(command: "demo run", argument: "c"))
        XCTAssertEqual(error(["f", "--model", "m", "--precision", "fp8"]),
                       .badValue(option: "--precision", value: "fp8", expected: "one of no, bf16"))
        XCTAssertEqual(error(["f", "--model", "m", "--model", "n"]), .repeatedOption(option: "--model"))
        XCTAssertEqual(error(["f", "--model", "m", "--lan=maybe"]),
                       .badValue(option: "--lan", value: "maybe", expected: "true or false"))
        let p = try! Self.demo.parse(["f", "--model", "m", "--steps", "ten", "--lr", "nan"])
        XCTAssertThrowsError(try p.int("--steps")) {
            XCTAssertEqual($0 as? CLIError, .badValue(option: "--steps", value: "ten", expected: "an integer"))
        }
        XCTAssertThrowsError(try p.double("--lr")) {
            XCTAssertEqual($0 as? CLIError, .badValue(option: "--lr", value: "nan", expected: "a finite number"))
        }
        let r = try! Self.demo.parse(["f", "--model", "m", "--steps", "0"])
        XCTAssertThrowsError(try r.int("--steps", in: 1...100))
    }

    func testHelpListsEveryOptionWithItsDefault() {
        let help = Self.demo.help
        for o in Self.demo.options { XCTAssertTrue(help.contains(o.name), o.name) }
        XCTAssertTrue(help.contains("(default: 1e-5)"))
        XCTAssertTrue(help.contains("(required)"))
        XCTAssertTrue(help.contains("(one of: no, bf16)"))
        XCTAssertTrue(help.hasPrefix("Usage: hgdpo demo run FILE [OUT] [options]"))
    }

    func testResolvesCommandsAndHelp() throws {
        let cli = CommandLineInterface(commands: [Self.demo], version: "9")
        guard case .help(let top) = try cli.resolve([]) else { return XCTFail("no help") }
        XCTAssertTrue(top.contains("demo run"))
        guard case .help(let sub) = try cli.resolve(["demo", "run", "--help"]) else { return XCTFail("no command help") }
        XCTAssertEqual(sub, Self.demo.help)
        guard case .help(let group) = try cli.resolve(["demo"]) else { return XCTFail("no group help") }
        XCTAssertTrue(group.contains("demo run"))
        XCTAssertThrowsError(try cli.resolve(["dmeo", "run"])) {
            XCTAssertEqual($0 as? CLIError, .unknownCommand("dmeo", suggestion: "demo"))
        }
        guard case .version(let v) = try cli.resolve(["--version"]) else { return XCTFail("no version") }
        XCTAssertEqual(v, "hgdpo 9")
    }

    // MARK: - The real binary

    func testBinaryHelpAndExitCodes() throws {
        let top = try hgdpo(["--help"])
        XCTAssertEqual(top.status, 0)
        for c in Commands.all { XCTAssertTrue(top.stdout.contains(c.name), "top-level help lacks \(c.name)") }
        for c in Commands.all {
            let r = try hgdpo(c.words + ["--help"])
            XCTAssertEqual(r.status, 0, c.name)
            for o in c.options { XCTAssertTrue(r.stdout.contains(o.name), "\(c.name) --help lacks \(o.name)") }
        }
        let unknown = try hgdpo(["frobnicate"])
        XCTAssertEqual(unknown.status, 2)
        XCTAssertTrue(unknown.stderr.contains("unknown command 'frobnicate'"), unknown.stderr)
        let badOption = try hgdpo(["probe", "mpi", "--cuont", "3"])
        XCTAssertEqual(badOption.status, 2)
        XCTAssertTrue(badOption.stderr.contains("'--cuont'") && badOption.stderr.contains("--count"), badOption.stderr)
        let badValue = try hgdpo(["probe", "mpi", "--count", "many"])
        XCTAssertEqual(badValue.status, 2)
        XCTAssertTrue(badValue.stderr.contains("invalid value 'many' for '--count'"), badValue.stderr)
    }

    func testProbeMPIAsSingleton() throws {
        // Without a launcher the binary is an MPI world of one.
        let r = try hgdpo(["probe", "mpi", "--count", "5000"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"world_size\":1"), r.stdout)
        XCTAssertTrue(r.stdout.contains("\"ok\":true"), r.stdout)
    }
}

final class InspectCommandTests: XCTestCase {
    let fixtures = repoRoot + "/Tests/IOTests/Fixtures/tiny_unet"

    /// `hgdpo inspect` on a diffusers U-Net file written by Python prints the names, dtypes and shapes Python saved.
    func testInspectMatchesPythonsView() throws {
        let r = try hgdpo(["inspect", fixtures + "/diffusion_pytorch_model.safetensors"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let tensors = out["tensors"] as! [[String: Any]]
        let expectedData = try Data(contentsOf: URL(fileURLWithPath: fixtures + "/expected_inspect.json"))
        let expectedAny = try JSONSerialization.jsonObject(with: expectedData)
        let expected = ((expectedAny as? [String: Any])?["tensors"] as? [[String: Any]]) ?? (expectedAny as! [[String: Any]])
        func norm(_ xs: [[String: Any]]) -> [String] {
            xs.map { "\($0["name"]!) \($0["dtype"]!) \(($0["shape"] as! [Int]))" }.sorted()
        }
        XCTAssertEqual(norm(tensors), norm(expected))
        XCTAssertGreaterThan(tensors.count, 20)
        XCTAssertTrue(tensors.contains { $0["name"] as? String == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight" })
        // The fp16 variant: same names and shapes, dtype F16.
        let r16 = try hgdpo(["inspect", fixtures + "/diffusion_pytorch_model.fp16.safetensors"])
        XCTAssertEqual(r16.status, 0, r16.stderr)
        let t16 = (try JSONSerialization.jsonObject(with: Data(r16.stdout.utf8)) as! [String: Any])["tensors"] as! [[String: Any]]
        XCTAssertEqual(t16.count, tensors.count)
        XCTAssertTrue(t16.allSatisfy { $0["dtype"] as? String == "F16" })
    }

    func testInspectErrorsNameTheFile() throws {
        let dir = try temporaryDirectory(self)
        let bad = dir + "/bad.safetensors"
        try Data("this is not a safetensors file".utf8).write(to: URL(fileURLWithPath: bad))
        let r = try hgdpo(["inspect", bad])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains(bad), r.stderr)
        let missing = try hgdpo(["inspect", dir + "/nope.safetensors"])
        XCTAssertEqual(missing.status, 2)
        XCTAssertTrue(missing.stderr.contains("nope.safetensors"), missing.stderr)
        let none = try hgdpo(["inspect"])
        XCTAssertEqual(none.status, 2)
        XCTAssertTrue(none.stderr.contains("FILE.safetensors"), none.stderr)
    }
}

final class ProbeCommandTests: XCTestCase {
    /// `hgdpo probe dpo-loss` on the PyTorch fixture prints the reference's loss terms and writes its gradients
    /// under the LoRA file's key names.
    func testProbeDPOLossMatchesPyTorch() throws {
        let unet = repoRoot + "/Tests/UNetTests/Fixtures/unet_conv"
        let fixture = repoRoot + "/Tests/TrainingTests/Fixtures/dpo_loss.safetensors"
        let dir = try temporaryDirectory(self)
        let r = try hgdpo(["probe", "dpo-loss", "--model", unet, "--lora", unet + "/lora_diffusers.safetensors", "--input", fixture,
                           "--out", dir + "/g.safetensors", "--beta", "2500", "--stat-weight", "10000",
                           "--stat-inference-steps", "1000"])   // one DDPM step: the fixture's "both" setting
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Double]
        let ref = try SafeTensorsFile(path: fixture)
        for (key, name) in [("loss", "both.loss"), ("dpo_loss", "both.dpo_loss"), ("stat_loss", "both.stat_loss")] {
            let expected = try ref.doubles(name)[0]
            XCTAssertEqual(out[key]!, expected, accuracy: 1e-4 * abs(expected), key)
        }
        XCTAssertEqual(out["implicit_acc"]!, try ref.doubles("both.implicit_acc")[0], accuracy: 1e-12)
        let grads = try SafeTensorsFile(path: dir + "/g.safetensors")
        let name = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora.up.weight"
        let g = try grads.floats(name)
        let e = try ref.floats("both.grad.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight")
        assertClose(g, e, rtol: 1e-3, atol: 1e-3 * (e.map(abs).max() ?? 1), label: name)
        // Without the flag, the trainer's default: a 50-step sampler's step (stride 20), the fixture's "stride20" setting.
        let byDefault = try hgdpo(["probe", "dpo-loss", "--model", unet, "--lora", unet + "/lora_diffusers.safetensors",
                                   "--input", fixture, "--out", dir + "/g20.safetensors"])
        XCTAssertEqual(byDefault.status, 0, byDefault.stderr)
        let out20 = try JSONSerialization.jsonObject(with: Data(byDefault.stdout.utf8)) as! [String: Double]
        for (key, name) in [("loss", "stride20.loss"), ("stat_loss", "stride20.stat_loss")] {
            let expected = try ref.doubles(name)[0]
            XCTAssertEqual(out20[key]!, expected, accuracy: 1e-4 * abs(expected), "default stride: \(key)")
        }
        // A batch without the required tensors is a clear error naming the file and the tensor.
        let bad = try hgdpo(["probe", "dpo-loss", "--model", unet, "--lora", unet + "/lora_diffusers.safetensors",
                             "--input", unet + "/io.safetensors", "--out", dir + "/x.safetensors"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("io.safetensors") && bad.stderr.contains("winner"), bad.stderr)
    }

    /// `hgdpo probe unet` in fp32 and with `--mixed-precision bf16` on the diffusers fixture (LoRA scale 1): fp32
    /// within 1e-5 relative (L2) of diffusers' output, bf16 within MixedPrecisionTests' output bound (measured
    /// 5.2e-3 on the widened path, 7.4e-3 with AVX512-BF16 emulated) and not equal to it.
    func testProbeUNetInFP32AndBF16() throws {
        let unet = repoRoot + "/Tests/UNetTests/Fixtures/unet_conv"
        let dir = try temporaryDirectory(self)
        let expected = try SafeTensorsFile(path: unet + "/io.safetensors").floats("output_lora_1")
        func relativeError(_ x: [Float]) -> Double {
            var num = 0.0, den = 0.0
            for (a, b) in zip(x, expected) { num += Double(a - b) * Double(a - b); den += Double(b) * Double(b) }
            return (num / den).squareRoot()
        }
        for (mode, low, high) in [("no", 0.0, 1e-5), ("bf16", 1e-5, 1.5e-2)] {
            let out = "\(dir)/\(mode).safetensors"
            let r = try hgdpo(["probe", "unet", "--model", unet, "--lora", unet + "/lora_diffusers.safetensors", "--input",
                               unet + "/io.safetensors", "--out", out, "--mixed-precision", mode])
            XCTAssertEqual(r.status, 0, r.stderr)
            let e = relativeError(try SafeTensorsFile(path: out).floats("sample"))
            XCTAssertTrue(e >= low && e < high, "\(mode): relative error \(e)")
        }
        let bad = try hgdpo(["probe", "unet", "--model", unet, "--input", unet + "/io.safetensors", "--out", dir + "/x.safetensors",
                             "--mixed-precision", "fp16"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("--mixed-precision") && bad.stderr.contains("fp16"), bad.stderr)
    }
}
