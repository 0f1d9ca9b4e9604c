// Everything that decides a training run, as one Codable struct: parsed from the command line (or a JSON config file
// given with --config, whose keys are the option names without dashes), saved resolved in RUN_DIR/config.json, and
// hashed into every checkpoint so a resume with a different run is refused.

public struct TrainError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public struct TrainConfig: Codable, Sendable, Equatable {
    public var model = ""
    public var variant: String?
    public var data = ""
    public var output = ""
    public var objective = ObjectiveKind.hgdpo
    public var beta: Double = 2500
    public var statWeight: Double = 10000
    /// The statistic term's sampler step: 1 = one DDPM step (t → t−1); `statInferenceSteps` N gives a stride of
    /// T/N (e.g. 50 → t to t−20), as a sampler with N steps would take.
    public var statInferenceSteps: Int?
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
    public var maxGradNorm: Double?
    public var globalBatch = 16
    public var localBatch = 4
    public var maxSteps: Int?
    public var epochs: Int?
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

    enum CodingKeys: String, CodingKey {
        case model, variant, data, output, objective, beta, statWeight = "stat_weight", statInferenceSteps = "stat_inference_steps"
        case loraRank = "lora_rank", loraAlpha = "lora_alpha", lr, lrSchedule = "lr_schedule", warmupSteps = "warmup_steps"
        case optimizer, adamBeta1 = "adam_beta1", adamBeta2 = "adam_beta2", adamEps = "adam_eps", weightDecay = "weight_decay"
        case maxGradNorm = "max_grad_norm", globalBatch = "global_batch", localBatch = "local_batch", maxSteps = "max_steps"
        case epochs, checkpointEvery = "checkpoint_every", keepCheckpoints = "keep_checkpoints", resume
        case mixedPrecision = "mixed_precision", seed, threads, maxSkippedSteps = "max_skipped_steps", logEvery = "log_every"
        case collectiveTimeout = "collective_timeout", gradientCheckpointing = "gradient_checkpointing"
        case validationPrompts = "validation_prompts", validationEvery = "validation_every", validationSteps = "validation_steps"
        case validationSeed = "validation_seed", validationGuidance = "validation_guidance"
        case validationLoraScale = "validation_lora_scale", validationHeight = "validation_height", validationWidth = "validation_width"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = TrainConfig()
        func v<T: Decodable>(_ k: CodingKeys, _ fallback: T) throws -> T { try c.decodeIfPresent(T.self, forKey: k) ?? fallback }
        model = try v(.model, d.model); variant = try c.decodeIfPresent(String.self, forKey: .variant)
        data = try v(.data, d.data); output = try v(.output, d.output); objective = try v(.objective, d.objective)
        beta = try v(.beta, d.beta); statWeight = try v(.statWeight, d.statWeight)
        statInferenceSteps = try c.decodeIfPresent(Int.self, forKey: .statInferenceSteps)
        loraRank = try v(.loraRank, d.loraRank); loraAlpha = try v(.loraAlpha, d.loraAlpha); lr = try v(.lr, d.lr)
        lrSchedule = try v(.lrSchedule, d.lrSchedule); warmupSteps = try v(.warmupSteps, d.warmupSteps)
        optimizer = try v(.optimizer, d.optimizer); adamBeta1 = try v(.adamBeta1, d.adamBeta1)
        adamBeta2 = try v(.adamBeta2, d.adamBeta2); adamEps = try v(.adamEps, d.adamEps)
        weightDecay = try v(.weightDecay, d.weightDecay); maxGradNorm = try c.decodeIfPresent(Double.self, forKey: .maxGradNorm)
        globalBatch = try v(.globalBatch, d.globalBatch); localBatch = try v(.localBatch, d.localBatch)
        maxSteps = try c.decodeIfPresent(Int.self, forKey: .maxSteps); epochs = try c.decodeIfPresent(Int.self, forKey: .epochs)
        checkpointEvery = try v(.checkpointEvery, d.checkpointEvery); keepCheckpoints = try v(.keepCheckpoints, d.keepCheckpoints)
        resume = try c.decodeIfPresent(String.self, forKey: .resume); mixedPrecision = try v(.mixedPrecision, d.mixedPrecision)
        seed = try v(.seed, d.seed); threads = try c.decodeIfPresent(Int.self, forKey: .threads)
        maxSkippedSteps = try v(.maxSkippedSteps, d.maxSkippedSteps); logEvery = try v(.logEvery, d.logEvery)
        collectiveTimeout = try v(.collectiveTimeout, d.collectiveTimeout)
        gradientCheckpointing = try v(.gradientCheckpointing, d.gradientCheckpointing)
        validationPrompts = try c.decodeIfPresent(String.self, forKey: .validationPrompts)
        validationEvery = try c.decodeIfPresent(Int.self, forKey: .validationEvery)
        validationSteps = try c.decodeIfPresent(Int.self, forKey: .validationSteps)
        validationSeed = try c.decodeIfPresent(UInt64.self, forKey: .validationSeed)
        validationGuidance = try c.decodeIfPresent(Double.self, forKey: .validationGuidance)
        validationLoraScale = try c.decodeIfPresent(Double.self, forKey: .validationLoraScale)
        validationHeight = try c.decodeIfPresent(Int.self, forKey: .validationHeight)
        validationWidth = try c.decodeIfPresent(Int.self, forKey: .validationWidth)
    }

    /// The fields that define the trajectory: a checkpoint records their hash, and resuming with others is refused
    /// (paths, thread counts, checkpoint cadence, gradient checkpointing and the resume option itself may change).
    public var trajectoryHash: String {
        var c = self
        c.model = ""; c.data = ""; c.output = ""; c.resume = nil; c.threads = nil; c.checkpointEvery = 0; c.keepCheckpoints = 0
        c.maxSteps = nil; c.epochs = nil; c.logEvery = 0; c.collectiveTimeout = 0; c.maxSkippedSteps = 0
        c.gradientCheckpointing = false                            // bit-identical gradients either way
        c.withoutValidation()                                     // sampling does not touch the trajectory
        let text = String(decoding: (try? JSONEncoderSorted.encode(c)) ?? [], as: UTF8.self)
        var h: UInt64 = 0xcbf2_9ce4_8422_2325                      // FNV-1a 64
        for byte in text.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return String(h, radix: 16)
    }
}

extension TrainConfig {
    /// The validation options cleared (nil fields are not encoded, so the hash is the one of a run without them).
    mutating func withoutValidation() {
        validationPrompts = nil; validationEvery = nil; validationSteps = nil; validationSeed = nil
        validationGuidance = nil; validationLoraScale = nil; validationHeight = nil; validationWidth = nil
    }
}

extension ObjectiveKind: Codable {}

import Foundation

enum JSONEncoderSorted {
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return Array(try e.encode(value))
    }
}
