// Fuzzing every file reader a user's file reaches, with a count. Each target gets HGDPO_FUZZ_COUNT inputs (default
// 300: CI; RELIABILITY.md records runs of 100000), 90 % mutated valid files and 10 % random files, from
// HGDPO_FUZZ_SEED (default 1). An input passes when the reader accepts it or throws an error whose message names
// the file; a crash (a trap: overflow, out-of-bounds index, force unwrap) ends the test process, which fails the run
// and names the target and input index in the last line printed. Replay one input: HGDPO_FUZZ_TARGET=NAME
// HGDPO_FUZZ_FROM=I HGDPO_FUZZ_COUNT=1 swift test --filter FuzzTests (inputs depend only on seed, target and index);
// launch/fuzz-long.sh runs every target with 10^5 inputs.
import Foundation
import XCTest
import Datasets
import IO
import Schedulers
import Tensors
import TestSupport
import TextEncoder
import Training
import UNet
import VAE

final class FuzzTests: XCTestCase {
    struct Target {
        let name: String
        /// The fuzzed file's name inside the target's folder.
        let file: String
        /// Valid files to mutate; empty: the file `prepare` wrote.
        var seeds: [[UInt8]]
        /// How inputs are made from a seed: plain bytes, text, safetensors header, PNG chunks.
        let kind: Kind
        /// Writes the other files the reader needs into the folder (once).
        var prepare: (String) throws -> Void = { _ in }
        /// Reads the file at `path` (inside `folder`) as a command would, in full.
        let read: (_ folder: String, _ path: String) throws -> Void
        enum Kind { case binary, text, safetensors, png }
    }

    struct Outcome: CustomStringConvertible {
        var inputs = 0, mutated = 0, random = 0, accepted = 0, rejected = 0
        var unnamed: [String] = []
        var seconds = 0.0
        var description: String {
            "\(inputs) inputs (\(mutated) mutated, \(random) random): \(accepted) accepted, \(rejected) rejected with an error "
                + "naming the file, \(unnamed.count) rejected without naming it, 0 crashes, \(String(format: "%.1f", seconds)) s"
        }
    }

    static var count: Int { ProcessInfo.processInfo.environment["HGDPO_FUZZ_COUNT"].flatMap(Int.init) ?? 300 }
    static var seed: UInt64 { ProcessInfo.processInfo.environment["HGDPO_FUZZ_SEED"].flatMap(UInt64.init) ?? 1 }

    func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
    func fixture(_ relative: String) throws -> [UInt8] { try bytes((repoRoot as NSString).appendingPathComponent(relative)) }

    /// Runs one target; returns its outcome and fails the test for any rejection that does not name the file.
    @discardableResult
    func fuzz(_ t: Target) throws -> Outcome {
        let env = ProcessInfo.processInfo.environment
        if let only = env["HGDPO_FUZZ_TARGET"], only != t.name { return Outcome() }
        let folder = (try temporaryDirectory(self) as NSString).appendingPathComponent(t.name)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try t.prepare(folder)
        let path = (folder as NSString).appendingPathComponent(t.file)
        var t = t
        if t.seeds.isEmpty { t.seeds = [try bytes(path)] }
        // Every seed must be accepted: else the mutations would explore an error path only.
        for s in t.seeds {
            try Data(s).write(to: URL(fileURLWithPath: path))
            XCTAssertNoThrow(try t.read(folder, path), "\(t.name): a seed file is rejected")
        }
        var out = Outcome()
        let start = Date()
        let first = env["HGDPO_FUZZ_FROM"].flatMap(Int.init) ?? 0
        let targetID = t.name.utf8.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
        for i in first..<(first + Self.count) {
            var rng = FuzzRNG(seed: Self.seed ^ targetID ^ (UInt64(i) &* 0x9E37_79B9_7F4A_7C15))
            let input: [UInt8]
            if rng.chance(0.1) {
                input = Mutator.random(maxLength: 2048, rng: &rng)
                out.random += 1
            } else {
                let s = rng.pick(t.seeds)
                switch t.kind {
                case .binary: input = Mutator.mutate(s, text: false, rng: &rng)
                case .text: input = Mutator.mutate(s, text: true, rng: &rng)
                case .safetensors: input = Mutator.mutateSafetensors(s, rng: &rng)
                case .png: input = Mutator.mutatePNG(s, rng: &rng)
                }
                out.mutated += 1
            }
            try Data(input).write(to: URL(fileURLWithPath: path))
            if i % 1000 == 0 || Self.count < 1000 && i == first { fputs("fuzz \(t.name): input \(i)\n", stderr) }
            out.inputs += 1
            do {
                try t.read(folder, path)
                out.accepted += 1
            } catch {
                // Named: the file's path, or (readers of a folder) the folder's path and the file's name.
                let message = "\(error)"
                if message.contains(path) || message.contains(folder) && message.contains(t.file) { out.rejected += 1 } else {
                    out.unnamed.append("input \(i): \(message)")
                }
            }
        }
        out.seconds = Date().timeIntervalSince(start)
        print("fuzz \(t.name): \(out)")
        if let report = env["HGDPO_FUZZ_REPORT"] {
            let line = "{\"target\":\"\(t.name)\",\"seed\":\(Self.seed),\"inputs\":\(out.inputs),\"mutated\":\(out.mutated),"
                + "\"random\":\(out.random),\"accepted\":\(out.accepted),\"rejected_naming_file\":\(out.rejected),"
                + "\"rejected_unnamed\":\(out.unnamed.count),\"crashes\":0,\"seconds\":\(Int(out.seconds))}\n"
            if let h = FileHandle(forWritingAtPath: report) { h.seekToEndOfFile(); h.write(Data(line.utf8)); try? h.close() }
            else { try Data(line.utf8).write(to: URL(fileURLWithPath: report)) }
        }
        XCTAssertTrue(out.unnamed.isEmpty, "\(t.name): errors that do not name \(path):\n" + out.unnamed.prefix(5).joined(separator: "\n"))
        return out
    }

    // MARK: - Targets

    func testSafetensorsReader() throws {
        let seeds = [try fixture("Tests/IOTests/Fixtures/python_dtypes.safetensors"),
                     try fixture("Tests/TrainingTests/Fixtures/adamw.safetensors")].map { Array($0.prefix(64 * 1024)) }
        try fuzz(Target(name: "safetensors", file: "x.safetensors", seeds: try seeds.filter { s in
            let p = NSTemporaryDirectory() + "/hgdpo-fuzz-seed-\(getpid()).safetensors"
            try Data(s).write(to: URL(fileURLWithPath: p))
            return (try? SafeTensorsFile(path: p)) != nil
        }, kind: .safetensors) { _, path in
            let f = try SafeTensorsFile(path: path)
            for name in f.tensorNames where f.info(name)!.dtype.isFloatingPoint { _ = try f.floats(name) }
            for name in f.tensorNames { _ = try f.rawBytes(name) }
        })
    }

    func testPNGReader() throws {
        let dir = try temporaryDirectory(self)
        // A small RGBA image with text chunks (tEXt and iTXt), beside the fixtures' RGB ones.
        let textPNG = dir + "/text.png"
        try PNG.writeBytes(try ByteImage(width: 5, height: 4, channels: 4, pixels: (0..<80).map { UInt8($0 * 3 % 256) }),
                           to: textPNG, text: [("prompt", "a \"photo\" <b>"), ("note", "naïve ☃")])
        let seeds = [try fixture("Tests/LatentEncodingTests/Fixtures/image_9x7.png"), try bytes(textPNG)]
        try fuzz(Target(name: "png", file: "x.png", seeds: seeds, kind: .png) { _, path in
            _ = try PNG.readBytesWithText(path)
            _ = try PNG.read(path, channels: 3)
        })
    }

    func testTripletsJSONL() throws {
        let lines = [
            #"{"id":"a1","prompt":"a photo of a woman, (bust shot:1.2)","winner":"img/w1.png","loser":"img/l1.png","score_w":0.91}"#,
            #"{"id":"a2","prompt":"ein Foto \"mit\" Anführungszeichen","winner":"img/w1.png","loser":"img/l1.png"}"#,
            #"{"id":"a3","prompt":"<script>x</script>\n","winner":"img/l1.png","loser":"img/w1.png","extra":{"k":[1,2]}}"#,
        ]
        try fuzz(Target(name: "triplets.jsonl", file: "triplets.jsonl", seeds: [Array((lines.joined(separator: "\n") + "\n").utf8)],
                        kind: .text, prepare: { folder in
            try FileManager.default.createDirectory(atPath: folder + "/img", withIntermediateDirectories: true)
            for name in ["w1", "l1"] {
                try PNG.writeBytes(try ByteImage(width: 8, height: 8, channels: 3, pixels: [UInt8](repeating: 90, count: 192)),
                                   to: folder + "/img/\(name).png")
            }
        }) { folder, _ in
            _ = try TripletDataset.open(folder: folder)
        })
    }

    func testLatentCacheIndex() throws {
        try fuzz(Target(name: "latent-cache-index", file: LatentCacheFormat.indexFile, seeds: [], kind: .text, prepare: { folder in
            let w = try LatentCacheWriter(folder: folder, latentShape: [4, 2, 2], contextShape: [3, 4], dtype: .F16, shardSize: 2)
            for i in 0..<3 {
                try w.append(id: "t\(i)", winner: [Float](repeating: Float(i), count: 16), loser: [Float](repeating: 1, count: 16),
                             context: [Float](repeating: 0.5, count: 12))
            }
            try w.finish()
        }) { folder, _ in
            let c = try LatentCache.open(folder)
            for i in 0..<c.count { _ = try c.read(i) }
        })
    }

    func testTrainConfigFiles() throws {
        var config = TrainConfig()
        config.model = "models/sd15"; config.data = "cache"; config.output = "runs/a"; config.maxSteps = 1000
        config.maxGradNorm = 1; config.validationPrompts = "prompts.txt"; config.validationSeed = 3
        // What `hgdpo train --config FILE` does with the file: strict decoding through the options table. (The checks
        // after it, e.g. a missing `out`, concern the command line and the file together and name the option.)
        func read(_ path: String) throws {
            var c = TrainConfig()
            try TrainConfig.options.apply(file: path, to: &c)
        }
        try fuzz(Target(name: "config-json", file: "run.json", seeds: [Array((config.json.pretty() + "\n").utf8)], kind: .text) { _, path in
            try read(path)
        })
        let yaml = """
            # an HG-DPO run
            ---
            model: models/sd15
            data: "cache"        # quoted
            out: 'runs/a'
            global_batch: 16
            local_batch: 4
            lr: 1e-5
            max_steps: 1000
            max_grad_norm: 1.0
            gradient_checkpointing: false
            mixed_precision: bf16
            seed: 42
            adam_beta1: .9
            validation_prompts: prompts.txt

            """
        try fuzz(Target(name: "config-yaml", file: "run.yaml", seeds: [Array(yaml.utf8)], kind: .text) { _, path in try read(path) })
    }

    func testLoRAFilesInEveryFormat() throws {
        let base = "Tests/UNetTests/Fixtures/unet_conv/"
        let diffusers = try fixture(base + "lora_diffusers.safetensors")
        var seeds = [diffusers, try fixture(base + "lora_peft.safetensors"), try fixture(base + "lora_kohya.safetensors")]
        // The old attention-processor naming, made from the diffusers file.
        let dir = try temporaryDirectory(self)
        try Data(diffusers).write(to: URL(fileURLWithPath: dir + "/d.safetensors"))
        let f = try SafeTensorsFile(path: dir + "/d.safetensors")
        let projections = ["to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"]
        let entries = try f.tensorNames.map { name -> SafeTensorsEntry in
            var key = String(name.dropFirst("unet.".count))
            for (p, q) in projections where key.contains(".\(p).lora.") {
                key = key.replacingOccurrences(of: ".\(p).lora.", with: ".processor.\(q).")
            }
            let info = f.info(name)!
            return SafeTensorsEntry(name: key, dtype: info.dtype, shape: info.shape, bytes: Array(try f.rawBytes(name)))
        }
        try SafeTensors.write(entries, to: dir + "/a.safetensors")
        XCTAssertEqual(try LoRAFile.read(dir + "/a.safetensors").format, .attnProcs)
        seeds.append(try bytes(dir + "/a.safetensors"))
        try fuzz(Target(name: "lora", file: "lora.safetensors", seeds: seeds, kind: .safetensors) { _, path in
            _ = try LoRAFile.read(path)
        })
    }

    func testTokenizerFiles() throws {
        // The fixture tokenizer cut to its 512 byte tokens, its first 150 merges and the two special tokens (a
        // complete tokenizer, ~20x faster to load, so that 10^5 inputs take minutes).
        let src = repoRoot + "/Tests/TextEncoderTests/Fixtures/pipeline/tokenizer/"
        let fullVocab = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "vocab.json"))) as! [String: Int]
        let merges = 150
        var vocab = fullVocab.filter { $0.value < 512 + merges }
        vocab["<|startoftext|>"] = 512 + merges
        vocab["<|endoftext|>"] = 513 + merges
        let mergeLines = try String(contentsOfFile: src + "merges.txt", encoding: .utf8).split(separator: "\n").prefix(1 + merges)
        let files: [String: [UInt8]] = [
            "vocab.json": Array(try JSONSerialization.data(withJSONObject: vocab, options: [.sortedKeys])),
            "merges.txt": Array((mergeLines.joined(separator: "\n") + "\n").utf8),
            "tokenizer_config.json": try bytes(src + "tokenizer_config.json"),
            "special_tokens_map.json": try bytes(src + "special_tokens_map.json"),
        ]
        for (name, seed) in files.sorted(by: { $0.key < $1.key }) {
            try fuzz(Target(name: "tokenizer-\(name)", file: name, seeds: [seed], kind: .text, prepare: { folder in
                for (other, content) in files where other != name { try Data(content).write(to: URL(fileURLWithPath: folder + "/" + other)) }
            }) { folder, _ in
                let t = try CLIPTokenizer.load(directory: folder)
                _ = t.encode("a photo of a woman, (bust shot:1.2) <|endoftext|> naïve 🙂 that thing")
            })
        }
    }

    func testModelIndexAndModelConfigs() throws {
        let pipeline = repoRoot + "/Tests/SamplingTests/Fixtures/pipeline"
        func copyConfigs(_ folder: String) throws {
            for c in ["unet", "vae", "text_encoder", "scheduler", "tokenizer"] {
                try FileManager.default.createDirectory(atPath: "\(folder)/\(c)", withIntermediateDirectories: true)
                for f in (try FileManager.default.contentsOfDirectory(atPath: "\(pipeline)/\(c)")) where !f.hasSuffix(".safetensors") {
                    try FileManager.default.copyItem(atPath: "\(pipeline)/\(c)/\(f)", toPath: "\(folder)/\(c)/\(f)")
                }
                // Weight files are only looked for, not read: empty stand-ins.
                for f in (try FileManager.default.contentsOfDirectory(atPath: "\(pipeline)/\(c)")) where f.hasSuffix(".safetensors") {
                    _ = FileManager.default.createFile(atPath: "\(folder)/\(c)/\(f)", contents: Data())
                }
            }
        }
        try fuzz(Target(name: "model_index.json", file: "model_index.json", seeds: [try bytes(pipeline + "/model_index.json")],
                        kind: .text, prepare: copyConfigs) { folder, _ in
            let m = try ModelFolder(path: folder)
            _ = try m.unet(); _ = try m.vae(); _ = try m.textEncoder(); _ = try m.scheduler(); _ = try m.tokenizerFiles()
        })
        try fuzz(Target(name: "unet-config", file: "config.json", seeds: [try bytes(pipeline + "/unet/config.json"),
                                                                           try fixture("Tests/UNetTests/Fixtures/unet_linear/config.json")],
                        kind: .text) { _, path in
            _ = try UNetSpec(try decodeConfig(UNet2DConditionConfig.self, from: path), source: path)
        })
        try fuzz(Target(name: "vae-config", file: "config.json", seeds: [try bytes(pipeline + "/vae/config.json")], kind: .text) { _, path in
            _ = try VAESpec(try decodeConfig(AutoencoderKLConfig.self, from: path), source: path)
        })
        try fuzz(Target(name: "text-encoder-config", file: "config.json", seeds: [try bytes(pipeline + "/text_encoder/config.json")],
                        kind: .text) { _, path in
            _ = try CLIPTextModel(config: try decodeConfig(CLIPTextConfig.self, from: path), source: path)
        })
        try fuzz(Target(name: "scheduler-config", file: "scheduler_config.json", seeds: [try bytes(pipeline + "/scheduler/scheduler_config.json")],
                        kind: .text) { _, path in
            _ = try NoiseSchedule(try decodeConfig(SchedulerConfig.self, from: path), source: path)
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            for kind in SchedulerKind.allCases { _ = try kind.make(configJSON: data, source: path) }
        })
    }
}
