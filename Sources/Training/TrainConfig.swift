// Everything that decides a training run, as one struct and one declarative table (`TrainConfig.options`): each entry
// is an option's flag, config-file key, type, default (the struct's initial value), range or choices, help, and
// whether it is part of the run's identity. `hgdpo train`'s options and --help, strict decoding of --config files
// (JSON or flat YAML), the saved RUN_DIR/config.json and the identity hash recorded in every checkpoint all come from
// the table.
import IO

public struct TrainError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A training run that cannot start with what it was given (a model, cache or checkpoint that does not fit the
/// settings): exit code 2, as for a bad flag.
public struct TrainInputError: Error, CustomStringConvertible, UserInputError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The divergence guard fired and --stop-on-divergence was given: a checkpoint was written and the run stopped.
public struct TrainDivergedError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

public struct TrainConfig: Sendable, Equatable {
    public var model = ""
    public var variant: String?
    public var data = ""
    public var output = ""
    public var objective = ObjectiveKind.hgdpo
    /// What is trained: "lora" (adapters on the attention projections) or "unet" (every U-Net parameter).
    public var train = "lora"
    /// Diffusion-DPO β as in paper Eq. 3 and diffusers' train_diffusion_dpo.py (Salesforce's DiffusionDPO applies
    /// −½·β: its β 5000 is this 2500).
    public var beta: Double = 2500
    public var statWeight: Double = 10000
    /// The statistic term's sampler step: t → t − T/N. 50 (a 50-step sampler's step, t → t−20 for T = 1000) is where
    /// the paper's λ_stat = 1e4 acts with a pull of the order of DPO's (docs/calibration.md); N = T is one DDPM step.
    public var statInferenceSteps = 50
    public var loraRank = 8
    public var loraAlpha: Double = 8
    public var lr: Double = 1e-5
    public var lrSchedule = "constant"
    public var warmupSteps = 0
    public var optimizer = "adam8bit"
    public var adamBeta1: Double = 0.9
    public var adamBeta2: Double = 0.999
    public var adamEps: Double = 1e-8
    public var weightDecay: Double = 0.01
    /// Clip the global gradient norm to this (0: no clipping); 1.0 as diffusers' and Salesforce's DPO scripts.
    public var maxGradNorm: Double = 1.0
    public var globalBatch = 16
    public var localBatch = 4
    public var maxSteps: Int?
    public var epochs = 1
    public var checkpointEvery = 500
    public var keepCheckpoints = 3
    public var resume: String?
    public var mixedPrecision = "no"
    /// Recompute block activations in backward (UNetModel.gradientCheckpointing): less memory, same result.
    public var gradientCheckpointing = false
    public var seed: UInt64 = 0
    public var threads: Int?
    public var maxSkippedSteps = 5
    public var logEvery = 1
    /// Seconds a collective may take before the watchdog aborts the job (a lost rank or a cut network).
    public var collectiveTimeout: Double = 600
    /// Size of the gradient buckets summed over the ranks during the backward, in MiB of the double-precision sum
    /// (Distributed/BucketedSum.swift); 0: one sum after the backward. Never changes the result.
    public var bucketMB: Double = 4
    /// `bucketMB` in elements of the sum (doubles); 0 for no buckets.
    public var bucketElements: Int { bucketMB > 0 ? max(1, Int(bucketMB * 1_048_576 / 8)) : 0 }
    // The divergence guard (DivergenceGuard in Trainer.swift).
    public var divergenceMSERatio: Double = 2
    public var divergenceMargin: Double = 50
    public var divergencePatience = 10
    public var stopOnDivergence = false
    // Validation images (Validation.swift): all optional, none part of the trajectory.
    /// Prompts file (one per line) sampled every `validationEvery` steps with the LoRA, and once without.
    public var validationPrompts: String?
    public var validationEvery: Int?
    public var validationSteps: Int?
    public var validationSeed: UInt64?
    public var validationGuidance: Double?
    public var validationLoraScale: Double?
    public var validationHeight: Int?
    public var validationWidth: Int?

    public init() {}

    public typealias Option = OptionEntry<TrainConfig>

    /// Every option of `hgdpo train`, in --help order. `identity: false` marks what a resume may change.
    public static let options = OptionTable<TrainConfig>([
        .value("model", \.model, "DIR", "diffusers pipeline folder (unet/ and scheduler/ are used)", identity: false),
        .value("variant", \.variant, "NAME", "Weight variant of the U-Net, e.g. fp16"),
        .value("data", \.data, "CACHE_DIR", "Latent cache (hgdpo encode) of the triplet dataset", identity: false),
        .value("out", \.output, "RUN_DIR", "Run folder: checkpoints, metrics.jsonl, config.json", identity: false),
        .choice("objective", \.objective, "NAME", "hgdpo = Diffusion-DPO + statistic matching; dpo; sft = noise MSE on the winners only"),
        // Not hashed (checkpoints of older builds keep their hash): a resume checks it by name (TrainerState.train).
        .value("train", \.train, "WHAT",
               "lora: LoRA adapters on the attention projections (the paper's); unet: every U-Net parameter (full fine-tuning, fp32 only; checkpoints hold a diffusers unet/ folder)",
               choices: ["lora", "unet"], identity: false),
        .value("beta", \.beta, "B", "Diffusion-DPO β (paper Eq. 3: inside = β·(Δref − Δθ); Salesforce's β is twice this)", range: 0...1e9),
        .value("stat_weight", \.statWeight, "L", "Statistic-matching weight λ_stat (hgdpo only)", range: 0...1e15),
        .value("stat_inference_steps", \.statInferenceSteps, "N",
               "The statistic term's step is an N-step sampler's: t to t − T/N (50: t to t−20 at T = 1000, where λ_stat 1e4 acts, docs/calibration.md; N = T: one DDPM step)",
               range: 1...100_000),
        .value("lora_rank", \.loraRank, "R", "LoRA rank", range: 1...4096),
        .value("lora_alpha", \.loraAlpha, "A", "LoRA alpha", range: 1e-6...1e6),
        .value("lr", \.lr, "LR", "Learning rate", range: 0...10),
        .value("lr_schedule", \.lrSchedule, "S", "Learning-rate schedule after warm-up", choices: ["constant", "cosine"]),
        .value("warmup_steps", \.warmupSteps, "N", "Linear warm-up steps", range: 0...100_000_000),
        .value("optimizer", \.optimizer, "NAME", "adam8bit: block-wise 8-bit AdamW as bitsandbytes (the paper's); adamw: fp32 state",
               choices: ["adam8bit", "adamw"]),
        .value("adam_beta1", \.adamBeta1, "B1", "Adam β1", range: 0...0.999999),
        .value("adam_beta2", \.adamBeta2, "B2", "Adam β2", range: 0...0.999999999),
        .value("adam_eps", \.adamEps, "EPS", "Adam ε", range: 0...1),
        .value("weight_decay", \.weightDecay, "W", "AdamW decoupled weight decay", range: 0...10),
        .value("max_grad_norm", \.maxGradNorm, "N", "Clip the global gradient norm (after the all-reduce); 0: no clipping", range: 0...1e12),
        .value("global_batch", \.globalBatch, "G", "Pairs per optimizer step over all ranks", range: 1...1_000_000),
        .value("local_batch", \.localBatch, "B", "Pairs per forward on one rank (G/(ranks·B) accumulation steps)", range: 1...100_000),
        .value("max_steps", \.maxSteps, "N", "Optimizer steps (default: --epochs worth)", range: 1...1_000_000_000, identity: false),
        .value("epochs", \.epochs, "E", "Epochs over the dataset when --max-steps is not given", range: 1...1_000_000, identity: false),
        .value("checkpoint_every", \.checkpointEvery, "N", "Steps between checkpoints (one is always written at the end)",
               range: 1...1_000_000_000, identity: false),
        .value("keep_checkpoints", \.keepCheckpoints, "K", "Checkpoints kept", range: 1...1_000_000, identity: false),
        .value("resume", \.resume, "auto|DIR", "auto: continue from RUN_DIR/latest if there is one; DIR: from that checkpoint",
               identity: false),
        .value("mixed_precision", \.mixedPrecision, "MODE",
               "no = fp32; bf16 = frozen U-Net weights in bf16 (half the memory), fp32 sums, fp32 LoRA and optimizer",
               choices: ["no", "bf16"]),
        .flag("gradient_checkpointing", \.gradientCheckpointing,
              "Recompute each U-Net block's activations in backward: less memory, ~1/3 more compute, same result", identity: false),
        .value("seed", \.seed, "S", "Seed of the LoRA init, the data order and every noise and timestep draw"),
        .value("threads", \.threads, "N", "Compute threads per rank (default: HGDPO_THREADS or all cores)", range: 1...1024, identity: false),
        .value("max_skipped_steps", \.maxSkippedSteps, "N", "Consecutive non-finite steps before the run stops with an error",
               range: 1...1_000_000, identity: false),
        .value("log_every", \.logEvery, "N", "Steps between progress lines and metrics records", range: 1...1_000_000, identity: false),
        .value("collective_timeout", \.collectiveTimeout, "S",
               "Seconds a collective may take before the job is aborted (lost rank, cut network)", range: 0...1e7, identity: false),
        .value("bucket_mb", \.bucketMB, "MB",
               "Gradient buckets (MiB of the double-precision sum) all-reduced while the backward runs; 0: one all-reduce after it. Same result either way",
               range: 0...1e6, identity: false),
        .value("divergence_mse_ratio", \.divergenceMSERatio, "R",
               "Divergence guard: a step is suspect when the policy's winner MSE exceeds R × the reference's", range: 1...1e9,
               identity: false),
        .value("divergence_margin", \.divergenceMargin, "M",
               "Divergence guard: … or when the pairs' mean |reward margin| |β·(Δref − Δθ)| exceeds M", range: 0...1e12, identity: false),
        .value("divergence_patience", \.divergencePatience, "K", "Divergence guard: warn after K suspect steps in a row",
               range: 1...1_000_000, identity: false),
        .flag("stop_on_divergence", \.stopOnDivergence,
              "When the divergence guard warns, write a checkpoint and stop with exit code 3", identity: false),
        .value("validation_prompts", \.validationPrompts, "FILE",
               "Prompts (one per line) sampled into RUN_DIR/validation/ with the LoRA every --validation-every steps and once without; needs a full pipeline --model",
               identity: false),
        .value("validation_every", \.validationEvery, "N", "Steps between validation images (default: --checkpoint-every); also at the last step",
               range: 1...1_000_000_000, identity: false),
        .value("validation_steps", \.validationSteps, "N", "Sampler steps of the validation images (DPM-Solver++; default 25)",
               range: 1...1000, identity: false),
        .value("validation_seed", \.validationSeed, "S",
               "Seed of the first validation image (image k: S + k, the same at every validation; default 0)", identity: false),
        .value("validation_guidance", \.validationGuidance, "G", "Classifier-free guidance of the validation images (default 5)",
               range: 0...1000, identity: false),
        .value("validation_lora_scale", \.validationLoraScale, "S", "LoRA scale of the validation images (default 1)",
               range: -100...100, identity: false),
        .value("validation_height", \.validationHeight, "H", "Validation image height (default: the latent cache's, times the VAE's 8; times 1 in pixel space)",
               range: 8...16384, identity: false),
        .value("validation_width", \.validationWidth, "W", "Validation image width (default: the latent cache's, times the VAE's 8; times 1 in pixel space)",
               range: 8...16384, identity: false),
    ])

    /// The identity options' hash: a checkpoint records it, and resuming with other settings is refused.
    public var trajectoryHash: String { TrainConfig.options.identityHash(self) }

    /// Every option's value, as RUN_DIR/config.json holds it (a valid --config file).
    public var json: JSONValue { TrainConfig.options.json(self) }

    /// Checks what single options cannot: required options and options that need others.
    public func validate() throws {
        for (key, value) in [("model", model), ("data", data), ("out", output)] where value.isEmpty {
            throw TrainInputError("'hgdpo train' needs --\(key) (on the command line or as `\(key)` in the --config file)")
        }
        if validationPrompts == nil {
            let dependent: [(String, Bool)] = [
                ("every", validationEvery != nil), ("steps", validationSteps != nil), ("seed", validationSeed != nil),
                ("guidance", validationGuidance != nil), ("lora-scale", validationLoraScale != nil),
                ("height", validationHeight != nil), ("width", validationWidth != nil),
            ]
            if let (name, _) = dependent.first(where: \.1) {
                throw TrainInputError("--validation-\(name) needs --validation-prompts FILE")
            }
        }
    }
}


import Foundation

enum JSONEncoderSorted {
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return Array(try e.encode(value))
    }
}
