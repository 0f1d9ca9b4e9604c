// `hgdpo eval`: side A (a LoRA on a model) against a baseline, win rates per scorer, colour shift, latent statistics,
// grids and reports (Sources/Evaluation). This file only parses the options and calls the Evaluator.
import Datasets
import Distributed
import Evaluation
import Foundation
import IO
import NN
import Sampling
import Scoring
import Tensors
import UNet

extension Commands {
    static let eval = CommandSpec(
        ["eval"],
        summary: "Compare a LoRA with a baseline: win rates per scorer, HSV colour shift, latent statistics, grids, report",
        details: """
            Side A is --model with --lora at --lora-scale (the paper's 0.5), with --lan if given. The baseline is the same
            model with the LoRA off, or --baseline-lora (at --baseline-lora-scale) and/or --baseline-model. Image j of
            prompt p has seed --seed + p·k + j (k = --images-per-prompt) on both sides. Sampling is sharded over MPI ranks
            (launch/local.sh N hgdpo eval …) and resumable: images already in OUT/a/ and OUT/baseline/ with the same
            parameters are kept. Rank 0 then scores, and writes OUT/results.json, report.md, report.html and grids/.
            Without --scorer, only the colour shift and the latent statistics are computed.
            Example: launch/local.sh 4 hgdpo eval --model sd15 --lora run/step-001000/pytorch_lora_weights.safetensors \\
                       --prompts PartiPrompts.tsv --category People --images-per-prompt 4 \\
                       --scorer pickscore=clip:models/PickScore_v1 --out eval/step-1000
            """,
        options: [
            .value("--model", "DIR", "diffusers pipeline folder of side A (and of the baseline unless --baseline-model)", required: true),
            .value("--variant", "NAME", "Weight variant, e.g. fp16"),
            .value("--lora", "FILE", "Side A's LoRA (diffusers, peft or kohya format)"),
            .value("--lora-scale", "S", "Side A's LoRA scale", default: "0.5"),
            .flag("--lan", "Latent adaptive normalization on side A (HG-DPO Eq. 7; needs --lora)"),
            .value("--baseline-lora", "FILE", "The baseline's LoRA (default: none, the LoRA off)"),
            .value("--baseline-lora-scale", "S", "The baseline LoRA's scale (default: --lora-scale)"),
            .value("--baseline-model", "DIR", "The baseline's pipeline folder (default: --model)"),
            .value("--prompts", "FILE", "Prompts: one per line, or TSV with a header (PartiPrompts.tsv)", required: true),
            .value("--prompt-column", "NAME", "TSV column of the prompts (default: 'prompt', any case)"),
            .value("--category", "NAME", "TSV rows whose Category is NAME only, e.g. People"),
            .value("--images-per-prompt", "K", "Images (pairs) per prompt", default: "1"),
            .list("--scorer", "NAME=KIND[:ARG]", "A preference scorer, e.g. pickscore=clip:models/PickScore_v1"),
            .value("--out", "DIR", "Output folder", required: true),
            .value("--negative-prompt", "TEXT", "Negative prompt for every image (default: none)"),
            .value("--steps", "N", "Sampler steps", default: "50"),
            .value("--guidance", "G", "Classifier-free guidance scale (≤ 1: off)", default: "5"),
            .value("--scheduler", "NAME", "Sampler", default: "dpmsolver++", choices: SchedulerRecipe.named.map(\.name)),
            .value("--height", "H", "Image height (multiple of 8)", default: "512"),
            .value("--width", "W", "Image width (multiple of 8)", default: "512"),
            .value("--seed", "S", "Seed of the first image", default: "0"),
            .value("--batch", "B", "Images per U-Net batch on one rank", default: "1"),
            .value("--mixed-precision", "MODE", "no = fp32; bf16 = U-Net conv / linear weights in bf16, fp32 sums",
                   default: "no", choices: ["no", "bf16"]),
            .value("--tie-tolerance", "D", "Score differences up to D are ties (counted as ½)", default: "0"),
            .value("--bootstrap-resamples", "N", "Bootstrap resamples for the 95% intervals", default: "10000"),
            .value("--report-grids", "N", "Prompts whose grids report.html shows (all are in grids/)", default: "16"),
            .value("--collective-timeout", "S", "Seconds a collective may take before the job is aborted", default: "600"),
            .value("--threads", "N", "Compute threads per rank (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        // Everything a user can get wrong is checked before MPI starts and before any model loads.
        let prompts = try PromptFile.read(try args.requiredString("--prompts"), column: args.string("--prompt-column"),
                                          category: args.string("--category"))
        let loraScale = Float(try args.double("--lora-scale", in: -100...100)!)
        let lora = args.string("--lora")
        if args.given("--lora-scale") && lora == nil { throw CLIError.invalid("--lora-scale needs --lora") }
        if args.flag("--lan") && lora == nil { throw CLIError.invalid("--lan needs --lora") }
        if args.given("--baseline-lora-scale") && !args.given("--baseline-lora") {
            throw CLIError.invalid("--baseline-lora-scale needs --baseline-lora")
        }
        let model = try args.requiredString("--model")
        let a = EvalSide(model: model, variant: args.string("--variant"), lora: lora, loraScale: loraScale, lan: args.flag("--lan"))
        let baseline = EvalSide(model: args.string("--baseline-model") ?? model, variant: args.string("--variant"),
                                lora: args.string("--baseline-lora"),
                                loraScale: args.given("--baseline-lora-scale") ? Float(try args.double("--baseline-lora-scale", in: -100...100)!) : loraScale)
        var source = args.string("--prompts")!
        if let c = args.string("--prompt-column") { source += ", column \(c)" }
        if let c = args.string("--category") { source += ", category \(c)" }
        var config = EvalConfig(a: a, baseline: baseline, prompts: prompts, promptSource: source, out: try args.requiredString("--out"))
        config.imagesPerPrompt = try args.int("--images-per-prompt", in: 1...100_000)!
        config.negativePrompt = args.string("--negative-prompt") ?? ""
        config.steps = try args.int("--steps", in: 1...1000)!
        config.guidance = Float(try args.double("--guidance", in: 0...1000)!)
        config.scheduler = args.string("--scheduler")!
        config.height = try args.int("--height", in: 8...16384)!
        config.width = try args.int("--width", in: 8...16384)!
        for (name, v) in [("--height", config.height), ("--width", config.width)] where v % 8 != 0 {
            throw CLIError.badValue(option: name, value: String(v), expected: "a multiple of 8")
        }
        guard let seed = UInt64(args.string("--seed")!) else {
            throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
        }
        config.seed = seed
        config.batch = try args.int("--batch", in: 1...4096)!
        config.precision = MixedPrecision(rawValue: args.string("--mixed-precision")!)!
        config.tieTolerance = try args.double("--tie-tolerance", in: 0...1e300)!
        config.bootstrapResamples = try args.int("--bootstrap-resamples", in: 1...10_000_000)!
        config.reportGrids = try args.int("--report-grids", in: 0...1_000_000)!
        let timeout = try args.double("--collective-timeout", in: 0...1e7)!
        let scorers = try args.strings("--scorer").map { try makeScorer($0) }

        let comm = try Communicator.world()
        // One job per output folder (RunFolderLock): rank 0 holds it; a second eval on the folder stops with exit code 2.
        let lock = comm.isRoot ? try lockRunFolder(config.out, command: "eval") : nil
        defer { lock?.release() }
        let watchdog = Watchdog(timeout: timeout, rank: comm.rank, host: comm.host)
        let ranks = RankGroup(rank: comm.rank, size: comm.size) { buffer, what in
            try watchdog.guarded("MPI_Allreduce of \(what)") { try comm.allreduce(buffer) }
        }
        let evaluator = try Evaluator(config: config, scorers: scorers, ranks: ranks) { fputs($0 + "\n", stderr) }
        guard let results = try evaluator.run() else { return }
        var fields: [(String, JSONValue)] = [("out", .string(config.out)), ("pairs", .int(results.pairs))]
        fields.append(("win_rates", .object(results.scorers.map {
            ($0.name, .object([("win_rate", .double($0.winRate)), ("ci_low", .double($0.ciLow)), ("ci_high", .double($0.ciHigh))]))
        })))
        let c = results.colorShift
        fields.append(("color_shift", .object([("h", c.h.map(JSONValue.double) ?? .null), ("h_plain", c.hPlain.map(JSONValue.double) ?? .null),
                                               ("s", c.s.map(JSONValue.double) ?? .null), ("v", c.v.map(JSONValue.double) ?? .null)])))
        fields.append(("report", .string((config.out as NSString).appendingPathComponent("report.html"))))
        print(JSONValue.object(fields).serialized())
    }
}
