// `hgdpo train`: the main job. Options or a config file (--config: JSON, or flat YAML by extension; keys are the option names with "_" for "-");
// options on the command line override the file. The resolved config is saved as RUN_DIR/config.json.
import Distributed
import Foundation
import IO
import Tensors
import Training
import UNet

extension Commands {
    static let trainOptions: [OptionSpec] = [
        .value("--config", "FILE", "JSON or flat YAML (.yaml/.yml) file with any of these options (keys like global_batch); command-line options override it"),
        .value("--model", "DIR", "diffusers pipeline folder (unet/ and scheduler/ are used)", required: false),
        .value("--variant", "NAME", "Weight variant of the U-Net, e.g. fp16"),
        .value("--data", "CACHE_DIR", "Latent cache (hgdpo encode) of the triplet dataset"),
        .value("--output", "RUN_DIR", "Run folder: checkpoints, metrics.jsonl, config.json"),
        .value("--objective", "NAME", "hgdpo = DPO + statistic matching; dpo; sft = MSE on winners", default: "hgdpo", choices: ["hgdpo", "dpo", "sft"]),
        .value("--beta", "B", "Diffusion-DPO beta", default: "2500"),
        .value("--stat-weight", "L", "Statistic-matching weight lambda_stat (hgdpo only)", default: "10000"),
        .value("--stat-inference-steps", "N", "Sampler steps for the statistic term's step: t to t - T/N (default: one DDPM step, t to t-1)"),
        .value("--lora-rank", "R", "LoRA rank", default: "8"),
        .value("--lora-alpha", "A", "LoRA alpha", default: "8"),
        .value("--lr", "LR", "Learning rate", default: "1e-5"),
        .value("--lr-schedule", "S", "Learning-rate schedule after warm-up", default: "constant", choices: ["constant", "cosine"]),
        .value("--warmup-steps", "N", "Linear warm-up steps", default: "0"),
        .value("--optimizer", "NAME", "adam8bit: block-wise 8-bit AdamW as bitsandbytes (the paper's); adamw: fp32 state",
               default: "adam8bit", choices: ["adam8bit", "adamw"]),
        .value("--weight-decay", "W", "AdamW decoupled weight decay", default: "0.01"),
        .value("--max-grad-norm", "N", "Clip the global gradient norm (after the all-reduce)"),
        .value("--global-batch", "G", "Pairs per optimizer step over all ranks", default: "16"),
        .value("--local-batch", "B", "Pairs per forward on one rank (G/(ranks·B) accumulation steps)", default: "4"),
        .value("--max-steps", "N", "Optimizer steps (default: --epochs worth)"),
        .value("--epochs", "E", "Epochs over the dataset when --max-steps is not given", default: "1"),
        .value("--checkpoint-every", "N", "Steps between checkpoints (one is always written at the end)", default: "500"),
        .value("--keep-checkpoints", "K", "Checkpoints kept", default: "3"),
        .value("--resume", "auto|DIR", "auto: continue from RUN_DIR/latest if there is one; DIR: from that checkpoint"),
        .value("--mixed-precision", "MODE", "no = fp32; bf16 = frozen U-Net weights in bf16 (half the memory), fp32 sums, fp32 LoRA and optimizer",
               default: "no", choices: ["no", "bf16"]),
        .flag("--gradient-checkpointing", "Recompute each U-Net block's activations in backward: less memory, ~1/3 more compute, same result"),
        .value("--seed", "S", "Seed of the LoRA init, the data order and every noise and timestep draw", default: "0"),
        .value("--threads", "N", "Compute threads per rank (default: HGDPO_THREADS or all cores)"),
        .value("--max-skipped-steps", "N", "Consecutive non-finite steps before the run stops with an error", default: "5"),
        .value("--log-every", "N", "Steps between progress lines and metrics records", default: "1"),
        .value("--collective-timeout", "S", "Seconds a collective may take before the job is aborted (lost rank, cut network)", default: "600"),
        .value("--validation-prompts", "FILE", "Prompts (one per line) sampled into RUN_DIR/validation/ with the LoRA every --validation-every steps and once without; needs a full pipeline --model"),
        .value("--validation-every", "N", "Steps between validation images (default: --checkpoint-every); also at the last step"),
        .value("--validation-steps", "N", "Sampler steps of the validation images (DPM-Solver++)", default: "25"),
        .value("--validation-seed", "S", "Seed of the first validation image (image k: S + k, the same at every validation)", default: "0"),
        .value("--validation-guidance", "G", "Classifier-free guidance of the validation images", default: "5"),
        .value("--validation-lora-scale", "S", "LoRA scale of the validation images", default: "1"),
        .value("--validation-height", "H", "Validation image height (default: the latent cache's, times 8)"),
        .value("--validation-width", "W", "Validation image width (default: the latent cache's, times 8)"),
    ]

    static let train = CommandSpec(
        ["train"],
        summary: "Train a LoRA with HG-DPO (data-parallel over MPI ranks)",
        details: """
            Example: launch/local.sh 4 hgdpo train --model sd15 --data cache --output runs/a --global-batch 16 --local-batch 4
            Rank 0 prints a progress line per step and appends metrics.jsonl; checkpoints go to RUN_DIR/step-NNNNNN/
            (pytorch_lora_weights.safetensors loads in diffusers as is). SIGTERM/SIGUSR1: checkpoint and exit 0.
            """,
        options: trainOptions
    ) { args in
        let config = try trainConfig(args)
        try applyThreads(args)
        if let n = config.threads { Parallel.threads = n; BLAS.setThreads(n) }
        let comm = try Communicator.world()
        if comm.isRoot {
            try FileManager.default.createDirectory(atPath: config.output, withIntermediateDirectories: true)
            try Data(JSONEncoderPretty.encode(config)).write(to: URL(fileURLWithPath: (config.output as NSString).appendingPathComponent("config.json")), options: .atomic)
        }
        try comm.barrier()
        let trainer = try Trainer(config: config, comm: comm)
        try trainer.run()
        if comm.isRoot { print("report: hgdpo report \(config.output)") }
    }

    /// The config file (if any) with the command line's options on top; required fields checked.
    static func trainConfig(_ args: ParsedArguments) throws -> TrainConfig {
        var c = TrainConfig()
        if let path = args.string("--config") {
            c = try decodeConfig(TrainConfig.self, from: path)
        }
        func given(_ name: String) -> Bool { args.given(name) || args.string("--config") == nil }
        if args.given("--model") { c.model = args.string("--model")! }
        if args.given("--variant") { c.variant = args.string("--variant") }
        if args.given("--data") { c.data = args.string("--data")! }
        if args.given("--output") { c.output = args.string("--output")! }
        if given("--objective") { c.objective = ObjectiveKind(rawValue: args.string("--objective")!)! }
        if given("--beta") { c.beta = try args.double("--beta", in: 0...1e9)! }
        if given("--stat-weight") { c.statWeight = try args.double("--stat-weight", in: 0...1e15)! }
        if args.given("--stat-inference-steps") { c.statInferenceSteps = try args.int("--stat-inference-steps", in: 1...100_000) }
        if given("--lora-rank") { c.loraRank = try args.int("--lora-rank", in: 1...4096)! }
        if given("--lora-alpha") { c.loraAlpha = try args.double("--lora-alpha", in: 1e-6...1e6)! }
        if given("--lr") { c.lr = try args.double("--lr", in: 0...10)! }
        if given("--lr-schedule") { c.lrSchedule = args.string("--lr-schedule")! }
        if given("--warmup-steps") { c.warmupSteps = try args.int("--warmup-steps", in: 0...100_000_000)! }
        if given("--optimizer") { c.optimizer = args.string("--optimizer")! }
        if given("--weight-decay") { c.weightDecay = try args.double("--weight-decay", in: 0...10)! }
        if args.given("--max-grad-norm") { c.maxGradNorm = try args.double("--max-grad-norm", in: 1e-12...1e12) }
        if given("--global-batch") { c.globalBatch = try args.int("--global-batch", in: 1...1_000_000)! }
        if given("--local-batch") { c.localBatch = try args.int("--local-batch", in: 1...100_000)! }
        if args.given("--max-steps") { c.maxSteps = try args.int("--max-steps", in: 1...1_000_000_000) }
        if given("--epochs") && c.maxSteps == nil { c.epochs = try args.int("--epochs", in: 1...1_000_000) }
        if given("--checkpoint-every") { c.checkpointEvery = try args.int("--checkpoint-every", in: 1...1_000_000_000)! }
        if given("--keep-checkpoints") { c.keepCheckpoints = try args.int("--keep-checkpoints", in: 1...1_000_000)! }
        if args.given("--resume") { c.resume = args.string("--resume") }
        if given("--mixed-precision") { c.mixedPrecision = args.string("--mixed-precision")! }
        if args.flag("--gradient-checkpointing") { c.gradientCheckpointing = true }
        guard MixedPrecision(rawValue: c.mixedPrecision) != nil else {   // a config file's value is not checked by the parser
            throw CLIError.badValue(option: "--mixed-precision", value: c.mixedPrecision, expected: "no or bf16")
        }
        if given("--seed") {
            guard let s = UInt64(args.string("--seed")!) else {
                throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
            }
            c.seed = s
        }
        if args.given("--threads") { c.threads = try args.int("--threads", in: 1...1024) }
        if given("--max-skipped-steps") { c.maxSkippedSteps = try args.int("--max-skipped-steps", in: 1...1_000_000)! }
        if given("--log-every") { c.logEvery = try args.int("--log-every", in: 1...1_000_000)! }
        if given("--collective-timeout") { c.collectiveTimeout = try args.double("--collective-timeout", in: 0...1e7)! }
        if args.given("--validation-prompts") { c.validationPrompts = args.string("--validation-prompts") }
        if args.given("--validation-every") { c.validationEvery = try args.int("--validation-every", in: 1...1_000_000_000) }
        if args.given("--validation-steps") { c.validationSteps = try args.int("--validation-steps", in: 1...1000) }
        if args.given("--validation-seed") {
            guard let s = UInt64(args.string("--validation-seed")!) else {
                throw CLIError.badValue(option: "--validation-seed", value: args.string("--validation-seed")!, expected: "a non-negative integer")
            }
            c.validationSeed = s
        }
        if args.given("--validation-guidance") { c.validationGuidance = try args.double("--validation-guidance", in: 0...1000) }
        if args.given("--validation-lora-scale") { c.validationLoraScale = try args.double("--validation-lora-scale", in: -100...100) }
        if args.given("--validation-height") { c.validationHeight = try args.int("--validation-height", in: 8...16384) }
        if args.given("--validation-width") { c.validationWidth = try args.int("--validation-width", in: 8...16384) }
        if c.validationPrompts == nil,
           let other = ["--validation-every", "--validation-steps", "--validation-seed", "--validation-guidance", "--validation-lora-scale",
                        "--validation-height", "--validation-width"].first(where: { args.given($0) }) {
            throw CLIError.invalid("\(other) needs --validation-prompts FILE")
        }
        for (name, value) in [("--model", c.model), ("--data", c.data), ("--output", c.output)] where value.isEmpty {
            throw CLIError.missingRequired(option: name, command: "train")
        }
        return c
    }
}

enum JSONEncoderPretty {
    static func encode<T: Encodable>(_ value: T) throws -> Foundation.Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return try e.encode(value)
    }
}
