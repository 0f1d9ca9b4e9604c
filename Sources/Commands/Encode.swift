// `hgdpo encode`: a triplet dataset → the latent cache `hgdpo train` reads (LatentEncoding/CacheEncoder.swift).
import Datasets
import Distributed
import Foundation
import IO
import LatentEncoding
import Tensors

extension Commands {
    static let encode = CommandSpec(
        ["encode"],
        summary: "Encode a triplet dataset (triplets.jsonl + PNGs) into the latent cache hgdpo train reads (MPI ranks share the work; resumable)",
        details: """
            Example: launch/local.sh 2 hgdpo encode --model models/sd15 --data triplets --out cache --resolution 512
            Images are resized (antialiased bilinear) to cover the training size and cropped to it, winner and loser
            alike; latents are latent_dist.sample() · scaling_factor (noise keyed by seed and triplet, so the cache does
            not depend on the rank count) or the mean. Rerun the same command to continue an interrupted encode.
            """,
        options: [
            .value("--model", "DIR", "diffusers pipeline folder (vae/, text_encoder/, tokenizer/)", required: true),
            .value("--data", "DIR", "Triplet dataset: triplets.jsonl and the images it names", required: true),
            .value("--out", "DIR", "Cache folder to create (or an interrupted encode to continue)", required: true),
            .value("--resolution", "N", "Square training size in pixels (--height/--width override it)", default: "512"),
            .value("--height", "H", "Training height in pixels (a multiple of 8)"),
            .value("--width", "W", "Training width in pixels (a multiple of 8)"),
            .value("--crop", "MODE", "center (CenterCrop) or random (RandomCrop, the same box for winner and loser)",
                   default: "center", choices: CropMode.allCases.map(\.rawValue)),
            .value("--resize", "METHOD", "pil: Pillow's 8-bit bilinear resize, exactly (diffusers' training scripts resize PIL images); "
                   + "torch: torch's float interpolate(antialias=True)", default: "pil", choices: ResizeMethod.allCases.map(\.rawValue)),
            .value("--latent-mode", "MODE", "sample: latent_dist.sample() as diffusers' training scripts; mean: the posterior mean",
                   default: "sample", choices: LatentModeName.allCases.map(\.rawValue)),
            .value("--seed", "S", "Seed of the latent noise and random crops", default: "0"),
            .flag("--skip-bad", "Skip (and count) bad lines and unreadable images instead of stopping before writing anything"),
            .value("--batch", "N", "Triplets encoded together", default: "4"),
            .value("--shard-size", "N", "Triplets per cache shard (also the unit of resuming)", default: "256"),
            .value("--dtype", "T", "Storage dtype of the cache", default: "F16", choices: ["F16", "F32"]),
            .flag("--no-weighting", "Encode prompts as plain text: no (word:1.2) weighting syntax"),
            .value("--clip-skip", "K", "Use the output of text-encoder layer L−K through final_layer_norm (diffusers' clip_skip)", default: "0"),
            .value("--mixed-precision", "MODE", "no = fp32; bf16 = the VAE's convolutions multiply bf16 weights with fp32 sums (text encoder fp32)",
                   default: "no", choices: ["no", "bf16"]),
            .value("--variant", "NAME", "Weight variant of the VAE and text encoder, e.g. fp16"),
            .value("--vae-tile", "N", "Encode in VAE tiles of N px (`auto`: the VAE config's sample_size), for large images"),
            .value("--threads", "N", "Compute threads per rank (default: HGDPO_THREADS or all cores)"),
            .value("--collective-timeout", "S", "Seconds a collective may take before the job is aborted (lost rank, cut network)", default: "600"),
        ]
    ) { args in
        try applyThreads(args)
        var s = EncodeSettings(model: try args.requiredString("--model"), data: try args.requiredString("--data"),
                               out: try args.requiredString("--out"))
        let resolution = try args.int("--resolution", in: 8...65536)!
        s.height = try args.int("--height", in: 8...65536) ?? resolution
        s.width = try args.int("--width", in: 8...65536) ?? resolution
        for (name, v) in [("--height", s.height), ("--width", s.width)] where v % 8 != 0 {
            throw CLIError.badValue(option: args.given(name) ? name : "--resolution", value: String(v), expected: "a multiple of 8")
        }
        s.crop = CropMode(rawValue: args.string("--crop")!)!
        s.resize = ResizeMethod(rawValue: args.string("--resize")!)!
        s.latentMode = LatentModeName(rawValue: args.string("--latent-mode")!)!
        guard let seed = UInt64(args.string("--seed")!) else {
            throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
        }
        s.seed = seed
        s.skipBad = args.flag("--skip-bad")
        s.batch = try args.int("--batch", in: 1...4096)!
        s.shardSize = try args.int("--shard-size", in: 1...1_000_000)!
        s.dtype = args.string("--dtype") == "F32" ? .F32 : .F16
        s.weighting = !args.flag("--no-weighting")
        s.clipSkip = try args.int("--clip-skip", in: 0...1000)!
        s.variant = args.string("--variant")
        s.bf16 = args.string("--mixed-precision") == "bf16"
        if let t = args.string("--vae-tile") {
            guard t == "auto" || (Int(t).map { $0 > 0 } ?? false) else {
                throw CLIError.badValue(option: "--vae-tile", value: t, expected: "a positive tile size in pixels or `auto`")
            }
            s.tile = t == "auto" ? 0 : Int(t)!
        }
        let comm = try Communicator.world()
        let timeout = try args.double("--collective-timeout", in: 0...1e7)!
        let lock = comm.isRoot ? try lockRunFolder(s.out, command: "encode") : nil
        defer { lock?.release() }
        let encoder = try CacheEncoder(settings: s, comm: comm, collectiveTimeout: timeout) { fputs($0 + "\n", stderr) }
        let summary = try encoder.run()
        if comm.isRoot {
            print(JSONValue.object([
                ("out", .string(s.out)), ("count", .int(summary.count)), ("skipped", .int(summary.skipped)),
                ("shards", .int(summary.shards)), ("resumed_shards", .int(summary.resumedShards)),
                ("latent_shape", .array(summary.latentShape.map { .int($0) })),
                ("context_shape", .array(summary.contextShape.map { .int($0) })),
            ]).serialized())
        }
    }
}

extension Commands {
    static let makeTriplets = CommandSpec(
        ["make-triplets"],
        summary: "Write a triplet dataset of random images and prompts (for trying encode and train before a real dataset exists)",
        details: "Example: hgdpo make-triplets --count 16 --width 80 --height 64 --out triplets",
        options: [
            .value("--out", "DIR", "Dataset folder to create (must not exist)", required: true),
            .value("--count", "N", "Triplets", default: "16"),
            .value("--width", "W", "Image width", default: "64"),
            .value("--height", "H", "Image height", default: "64"),
            .value("--seed", "S", "Seed", default: "0"),
        ]
    ) { args in
        let out = try args.requiredString("--out")
        guard !FileManager.default.fileExists(atPath: out) else { throw CLIError.invalid("\(out): already exists; choose a new folder") }
        let count = try args.int("--count", in: 1...1_000_000)!
        let width = try args.int("--width", in: 1...16384)!, height = try args.int("--height", in: 1...16384)!
        guard let seed = UInt64(args.string("--seed")!) else {
            throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
        }
        try FileManager.default.createDirectory(atPath: (out as NSString).appendingPathComponent("images"), withIntermediateDirectories: true)
        let subjects = ["a young woman smiling", "an old man with a grey beard", "a child laughing", "a businesswoman in a navy suit"]
        let styles = ["(bust shot:1.2)", "full body shot", "soft natural lighting, (detailed face)", "[blurry], studio portrait"]
        let rng = CounterRNG(seed: seed)
        var lines: [String] = []
        for i in 0..<count {
            var paths: [String] = []
            for (role, stream) in [("winner", UInt64(1)), ("loser", UInt64(2))] {
                // Random colour fields: an 8x8 grid of random colours enlarged (bilinear) plus a little pixel noise.
                let s = rng.substream(stream, UInt64(i))
                let grid = try Image(width: 8, height: 8, channels: 3, pixels: (0..<192).map { 2 * s.uniform(UInt64($0)) - 1 })
                var image = grid.resized(width: width, height: height)
                for j in image.pixels.indices { image.pixels[j] += 0.05 * s.normal(UInt64(1000 + j)) }
                let path = "images/\(i)-\(role).png"
                try PNG.write(image, to: (out as NSString).appendingPathComponent(path))
                paths.append(path)
            }
            let prompt = "a photo of \(subjects[i % subjects.count]), \(styles[(i / subjects.count) % styles.count])"
            lines.append(Triplet(id: "random-\(i)", prompt: prompt, winner: paths[0], loser: paths[1]).jsonLine())
        }
        try Foundation.Data((lines.joined(separator: "\n") + "\n").utf8)
            .write(to: URL(fileURLWithPath: (out as NSString).appendingPathComponent(TripletDataset.fileName)), options: .atomic)
        print(JSONValue.object([("out", .string(out)), ("count", .int(count))]).serialized())
    }
}
