// `hgdpo pool`, `hgdpo score`, `hgdpo select`: the AI-feedback dataset builder (Sources/DatasetBuilder). A pool of N
// images per prompt from the target model, preference scores for every image, then winner and loser per prompt as a
// triplet dataset for `hgdpo encode` and `hgdpo train`. File formats: docs/dataset.md.
import Datasets
import DatasetBuilder
import Distributed
import Foundation
import IO
import NN
import Sampling
import Scoring
import Tensors
import UNet
#if canImport(Glibc)
import Glibc
#endif

extension Commands {
    static let pool = CommandSpec(
        ["pool"],
        summary: "Generate a pool of N images per prompt for AI-feedback triplets (MPI ranks share it; resumable)",
        details: """
            Image k of prompt p is OUT/images/GGGGG/PPPPPPPP-KKK.png (G = p / 1000) with a seed derived from
            (--seed, p, k) alone: 1, 2 or 4 ranks write the same bytes (with the same threads per rank). The --batch
            images of a prompt share each U-Net call, both CFG halves together. OUT/pool.json records the settings:
            a rerun with the same settings continues where it stopped (finished images are kept, PNGs are written
            atomically), with other settings it stops naming what changed. OUT/pool.jsonl lists every image when all
            exist. Prompts: one per line, or a TSV with a header (--prompt-column, default the column named
            prompt; --category keeps the rows of one category, e.g. PartiPrompts.tsv's People).
            Example: launch/local.sh 2 hgdpo pool --model models/sd15 --prompts PartiPrompts.tsv --category People \\
                       --images-per-prompt 20 --batch 4 --out pool --mixed-precision bf16
            """,
        options: [
            .value("--model", "DIR", "diffusers pipeline folder (the target model)", required: true),
            .value("--variant", "NAME", "Weight variant, e.g. fp16"),
            .value("--lora", "FILE", "LoRA weights to sample with"),
            .value("--lora-scale", "S", "LoRA scale", default: "1.0"),
            .value("--prompts", "FILE", "Prompts: one per line, or a TSV with a header row", required: true),
            .value("--prompt-column", "NAME", "TSV column holding the prompt (default: the column named prompt, any case)"),
            .value("--category", "NAME", "Keep only TSV rows whose Category is NAME (PartiPrompts: People)"),
            .value("--images-per-prompt", "N", "Pool size per prompt (the paper: 20)", default: "20"),
            .value("--negative-prompt", "TEXT", "Negative prompt for every image", default: ""),
            .value("--out", "DIR", "Pool folder (created, or an interrupted pool to continue)", required: true),
            .value("--steps", "N", "Sampler steps", default: "50"),
            .value("--guidance", "G", "Classifier-free guidance scale", default: "5"),
            .value("--scheduler", "NAME", "Sampler", default: "dpmsolver++", choices: SchedulerRecipe.named.map(\.name)),
            .value("--height", "H", "Image height (multiple of 8)", default: "512"),
            .value("--width", "W", "Image width (multiple of 8)", default: "512"),
            .value("--seed", "S", "Base seed (image k of prompt p uses a hash of S, p, k)", default: "0"),
            .value("--batch", "B", "Images of one prompt per U-Net call", default: "4"),
            .value("--clip-skip", "K", "Use the text encoder's layer L−K", default: "0"),
            .flag("--no-weighting", "Prompts as they are (brackets are plain text)"),
            .value("--mixed-precision", "MODE", "no = fp32; bf16 = U-Net conv / linear weights in bf16, fp32 sums",
                   default: "no", choices: ["no", "bf16"]),
            .value("--threads", "N", "Compute threads per rank (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        let promptsPath = try args.requiredString("--prompts")
        let prompts = try PromptFile.read(promptsPath, column: args.string("--prompt-column"), category: args.string("--category"))
        let loraPath = args.string("--lora")
        if args.given("--lora-scale") && loraPath == nil { throw CLIError.invalid("--lora-scale needs --lora") }
        var params = SamplingParameters()
        params.steps = try args.int("--steps", in: 1...1000)!
        params.guidanceScale = Float(try args.double("--guidance", in: 0...1000)!)
        params.height = try args.int("--height", in: 8...16384)!
        params.width = try args.int("--width", in: 8...16384)!
        for (name, v) in [("--height", params.height), ("--width", params.width)] where v % 8 != 0 {
            throw CLIError.badValue(option: name, value: String(v), expected: "a multiple of 8")
        }
        if loraPath != nil { params.loraScale = Float(try args.double("--lora-scale", in: -100...100)!) }
        guard let seed = UInt64(args.string("--seed")!) else {
            throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
        }
        let modelPath = try args.requiredString("--model"), out = try args.requiredString("--out")
        let precisionName = args.string("--mixed-precision")!
        let sampling = SampleRunSettings(parameters: params, scheduler: args.string("--scheduler")!, model: modelPath, lora: loraPath,
                                         batch: try args.int("--batch", in: 1...4096)!, weighting: !args.flag("--no-weighting"),
                                         clipSkip: try args.int("--clip-skip", in: 0...1000)!)
        var settings = PoolSettings(sampling: sampling)
        settings.negativePrompt = args.string("--negative-prompt")!
        settings.imagesPerPrompt = try args.int("--images-per-prompt", in: 1...100_000)!
        settings.seed = seed
        settings.mixedPrecision = precisionName
        settings.promptsFile = promptsPath
        settings.promptColumn = args.string("--prompt-column")
        settings.category = args.string("--category")

        let lora = try loraPath.map { try LoRAFile.read($0) }
        let pipeline: TextToImagePipeline
        do {
            pipeline = try TextToImagePipeline.load(modelFolder: modelPath, variant: args.string("--variant"), lora: lora,
                                                    loraSource: loraPath ?? "", precision: MixedPrecision(rawValue: precisionName)!,
                                                    schedulerName: args.string("--scheduler"))
            _ = try pipeline.latentSize(height: params.height, width: params.width)
        } catch let e as SamplingError { throw CLIError.invalid(e.message) }
        let comm = try Communicator.world()
        let run = try PoolRun(pipeline: pipeline, settings: settings, prompts: prompts, folder: out)
        // One job per pool folder (rank 0 holds the lock; it creates the folder).
        let lock = comm.isRoot ? try lockRunFolder(out, command: "pool") : nil
        defer { lock?.release() }
        if comm.isRoot { try run.prepareFolder() }
        try comm.barrier()
        let reporter = comm.isRoot ? PoolReporter(label: "pool", worldSize: comm.size) : nil
        let written = try run.sample(rank: comm.rank, worldSize: comm.size, progress: reporter)
        let total = try comm.allreduce(Double(written))
        try comm.barrier()
        if comm.isRoot {
            try run.writeIndex()
            let t = run.timings
            print(JSONValue.object([("out", .string(out)), ("prompts", .int(prompts.count)), ("images", .int(run.allImages.count)),
                                    ("written", .int(Int(total))), ("ranks", .int(comm.size)), ("encode_s", .double(t.encode)),
                                    ("denoise_s", .double(t.denoise)), ("decode_s", .double(t.decode)),
                                    ("threads", .int(Parallel.threads))]).serialized())
        }
    }

    static let score = CommandSpec(
        ["score"],
        summary: "Score every image of a pool with one or more preference scorers (MPI ranks share it; resumable)",
        details: """
            --scorer NAME=KIND[:ARGUMENT], repeatable: pickscore=clip:models/PickScore_v1,
            hps=clip:models/CLIP-ViT-H-14,weights=hps_v2.safetensors,output=cosine, aesthetic=aesthetic:sac+logos+ava1-l14-linearMSE.safetensors,clip=models/clip-vit-large-patch14,
            mine=external:"python3 scripts/example_scorer.py" (kinds: \(scorerKinds.keys.sorted().joined(separator: ", "))).
            Writes POOL/scores.jsonl (one line per image, one column per scorer) and POOL/scorers.json (each
            scorer's kind, argument, version and settings). Rerun the command to continue an interrupted scoring.
            """,
        options: [
            .value("--pool", "DIR", "Pool folder made by hgdpo pool", required: true),
            .list("--scorer", "SPEC", "Scorer NAME=KIND[:ARGUMENT]"),
            .value("--threads", "N", "Compute threads per rank (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        let pool = try args.requiredString("--pool")
        let specs = args.strings("--scorer")
        guard !specs.isEmpty else { throw CLIError.invalid("'hgdpo score' needs at least one --scorer NAME=KIND[:ARGUMENT]") }
        let comm = try Communicator.world()
        do {
            _ = try PoolIndex.read(folder: pool)      // a missing pool fails before any weights load
            let lock = comm.isRoot ? try lockRunFolder(pool, command: "score") : nil
            defer { lock?.release() }
            let scorers = try specs.map { try makeScorer($0) }
            let run = try ScoreRun(folder: pool, scorers: scorers)
            try run.checkDescriptors()
            let started = Date()
            var lastLine = Date.distantPast
            let scored = try run.score(rank: comm.rank, worldSize: comm.size) { done, total in
                // A line every 10 s at most (and the last): pools have up to 100,000 prompts.
                guard comm.isRoot, done == total || Date().timeIntervalSince(lastLine) >= 10 else { return }
                lastLine = Date()
                let elapsed = Date().timeIntervalSince(started)
                fputs("score: prompt \(done)/\(total) on rank 0, \(String(format: "%.2f", Double(done) / elapsed)) prompts/s, "
                      + "ETA \(clockText(elapsed / Double(done) * Double(total - done)))\n", stderr)
            }
            let seconds = Date().timeIntervalSince(started)
            let total = try comm.allreduce(Double(scored))
            try comm.barrier()
            if comm.isRoot {
                let columns = try run.writeScores()
                print(JSONValue.object([("pool", .string(pool)), ("images", .int(run.entries.count)), ("scored", .int(Int(total))),
                                        ("columns", .array(columns.map { .string($0) })), ("score_s", .double(seconds)),
                                        ("threads", .int(Parallel.threads))]).serialized())
            }
        } catch let e as PoolError { throw CLIError.invalid(e.message) }
    }

    static let select = CommandSpec(
        ["select"],
        summary: "Pick winner and loser per prompt from a scored pool into a triplet dataset (for encode and train)",
        details: """
            Ranks count from the best (1) or, when negative, from the worst (−1 = the worst, the default loser).
            --pool-size n ranks only the first n images of each prompt (the paper's N = 2/5/10/20 ablation from one
            pool). Prompts whose winner and loser tie, differ by less than --min-margin, or have too few images are
            skipped and counted. A pool size larger than the pool, a rank beyond the images ranked, or a winner and a
            loser rank that name the same image are errors. OUT/triplets.jsonl keeps each pair's scores, ranks and
            seeds; OUT/select.json the counts and the mean winner − loser margin; images are hard-linked from the pool
            (copied across filesystems).
            Example: hgdpo select --pool pool --by pickscore --winner-rank 1 --loser-rank -1 --out triplets
            """,
        options: [
            .value("--pool", "DIR", "Scored pool folder", required: true),
            .value("--by", "NAME", "Scorer column of scores.jsonl to rank by", required: true),
            .value("--winner-rank", "R", "Rank of the winner (1 = best)", default: "1"),
            .value("--loser-rank", "R", "Rank of the loser (−1 = worst)", default: "-1"),
            .value("--pool-size", "N", "Use only the first N images of each prompt"),
            .value("--min-margin", "M", "Skip prompts whose winner−loser score margin is below M", default: "0"),
            .value("--out", "DIR", "Triplet dataset folder to write", required: true),
        ]
    ) { args in
        var s = SelectionSettings(scorer: try args.requiredString("--by"))
        s.winnerRank = try args.int("--winner-rank", in: -100_000...100_000)!
        s.loserRank = try args.int("--loser-rank", in: -100_000...100_000)!
        s.poolSize = try args.int("--pool-size", in: 2...100_000)
        s.minMargin = try args.double("--min-margin", in: 0...1e12)!
        for (name, v) in [("--winner-rank", s.winnerRank), ("--loser-rank", s.loserRank)] where v == 0 {
            throw CLIError.badValue(option: name, value: "0", expected: "a rank from the best (1, 2, …) or the worst (−1, −2, …)")
        }
        let pool = try args.requiredString("--pool"), out = try args.requiredString("--out")
        do {
            let r = try Selection.run(pool: pool, out: out, settings: s)
            let summary = JSONValue.object([
                ("out", .string(out)), ("pool", .string(pool)), ("by", .string(s.scorer)), ("winner_rank", .int(s.winnerRank)),
                ("loser_rank", .int(s.loserRank)), ("pool_size", s.poolSize.map { .int($0) } ?? .null), ("min_margin", .double(s.minMargin)),
                ("triplets", .int(r.triplets)), ("skipped_ties", .int(r.ties)), ("skipped_below_margin", .int(r.belowMargin)),
                ("skipped_too_few_images", .int(r.tooFewImages)), ("mean_margin", .double(r.meanMargin)), ("linked", .int(r.linked)),
                ("copied", .int(r.copied)),
            ])
            try Foundation.Data((summary.pretty() + "\n").utf8).write(to: URL(fileURLWithPath: (out as NSString).appendingPathComponent("select.json")),
                                                                       options: .atomic)
            print(summary.serialized())
        } catch let e as PoolError { throw CLIError.invalid(e.message) }
    }
}

/// Rank 0's progress: a line per finished unit with the rate and an ETA for this rank's share (the ranks share the
/// work evenly, so it is the job's ETA too).
final class PoolReporter: PoolProgress {
    let label: String, worldSize: Int
    let started = Date()
    let tty = isatty(2) == 1
    var lastStep = Date.distantPast
    init(label: String, worldSize: Int) { self.label = label; self.worldSize = worldSize }

    func step(_ step: Int, of steps: Int) {
        guard tty, Date().timeIntervalSince(lastStep) > 0.5 else { return }
        lastStep = Date()
        fputs("\r\u{1B}[K\(label): step \(step)/\(steps)", stderr)
    }

    func wrote(_ images: [PoolImage], done: Int, of total: Int) {
        let elapsed = Date().timeIntervalSince(started)
        let rate = Double(done) / max(elapsed, 1e-9)
        let line = "\(label): \(done)/\(total) images on rank 0 (\(worldSize) rank\(worldSize == 1 ? "" : "s")), "
            + String(format: "%.3f images/s per rank, ", rate) + "ETA \(clockText(Double(total - done) / rate))"
        fputs((tty ? "\r\u{1B}[K" : "") + line + "\n", stderr)
    }
}

func clockText(_ s: Double) -> String {
    guard s.isFinite else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
}
