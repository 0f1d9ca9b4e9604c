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
            .value("--latent-mode", "MODE", "sample: latent_dist.sample() as diffusers' training scripts; mean: the posterior mean",
                   default: "sample", choices: LatentModeName.allCases.map(\.rawValue)),
            .value("--seed", "S", "Seed of the latent noise and random crops", default: "0"),
            .flag("--skip-bad", "Skip (and count) bad lines and unreadable images instead of stopping before writing anything"),
            .value("--batch", "N", "Triplets encoded together", default: "4"),
            .value("--shard-size", "N", "Triplets per cache shard (also the unit of resuming)", default: "256"),
            .value("--dtype", "T", "Storage dtype of the cache", default: "F16", choices: ["F16", "F32"]),
            .flag("--no-weighting", "Encode prompts as plain text: no (word:1.2) weighting syntax"),
            .value("--clip-skip", "K", "Use the output of text-encoder layer L−K through final_layer_norm (diffusers' clip_skip)", default: "0"),
            .value("--variant", "NAME", "Weight variant of the VAE and text encoder, e.g. fp16"),
            .value("--tile", "N", "Encode in VAE tiles of N px (`auto`: the VAE config's sample_size), for large images"),
            .value("--threads", "N", "Compute threads per rank (default: HGDPO_THREADS or all cores)"),
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
        if let t = args.string("--tile") {
            guard t == "auto" || (Int(t).map { $0 > 0 } ?? false) else {
                throw CLIError.badValue(option: "--tile", value: t, expected: "a positive tile size in pixels or `auto`")
            }
            s.tile = t == "auto" ? 0 : Int(t)!
        }
        let comm = try Communicator.world()
        let encoder = try CacheEncoder(settings: s, comm: comm) { fputs($0 + "\n", stderr) }
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
