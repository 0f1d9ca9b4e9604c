// `hgdpo bench step`: times one full HG-DPO training step with random weights, as ../shared/bench/torch_dpo_step.py
// does in PyTorch (same configs, same JSON), so the two can be compared on one machine with the same threads.
// A step: winner and loser share noise and timestep; policy (LoRA on) and reference (LoRA off) forwards over both;
// the HG-DPO loss; backward of the policy forward; AdamW update of the LoRA.
import Foundation
import IO
import Schedulers
import Tensors
import Training
import UNet

extension Commands {
    /// The U-Net shapes of ../shared/bench/unet_configs.py.
    static func benchConfig(_ name: String) throws -> UNet2DConditionConfig {
        var sd15 = UNet2DConditionConfig()
        sd15.crossAttentionDim = .int(768)
        sd15.sampleSize = 64
        switch name {
        case "sd15": return sd15
        case "tiny":
            var c = sd15
            c.blockOutChannels = [32, 64, 64, 64]; c.crossAttentionDim = .int(32); c.normNumGroups = 8; c.layersPerBlock = .int(1)
            return c
        case "small":
            var c = sd15
            c.blockOutChannels = [64, 128, 256, 256]; c.crossAttentionDim = .int(256); c.layersPerBlock = .int(1)
            return c
        default:
            return try ModelFolder(path: name).unet().config(UNet2DConditionConfig.self)
        }
    }

    static let benchStep = CommandSpec(
        ["bench", "step"],
        summary: "Time one HG-DPO training step on a random-weight U-Net and print JSON (compare: bench/compare.sh)",
        details: "Example: hgdpo bench step --config small --latent 32 --pairs 1 --steps 3 --threads 2",
        options: [
            .value("--config", "NAME|DIR", "tiny, small, sd15 (../shared/bench/unet_configs.py) or a U-Net folder's config", default: "sd15"),
            .value("--latent", "N", "Latent height and width", default: "32"),
            .value("--pairs", "P", "Preference pairs per step", default: "1"),
            .value("--steps", "K", "Timed steps (after one warm-up step)", default: "3"),
            .value("--rank", "R", "LoRA rank (alpha = rank)", default: "8"),
            .value("--context-length", "S", "Text tokens", default: "77"),
            .value("--mixed-precision", "MODE", "no = fp32; bf16 = conv / linear weights in bf16, fp32 sums (see `hgdpo train`)",
                   default: "no", choices: ["no", "bf16"]),
            .value("--threads", "N", "Compute threads (default: HGDPO_THREADS or all cores)"),
            .flag("--gradient-checkpointing", "Recompute block activations in backward (less memory, more compute)"),
        ]
    ) { args in
        try applyThreads(args)
        let name = try args.requiredString("--config")
        let spec = try UNetSpec(try benchConfig(name))
        let l = try args.int("--latent", in: 8...512)!, b = try args.int("--pairs", in: 1...256)!
        let steps = try args.int("--steps", in: 1...1000)!, rank = try args.int("--rank", in: 1...1024)!
        let s = try args.int("--context-length", in: 1...1024)!
        try spec.checkLatentSize(height: l, width: l)
        let precision = MixedPrecision(rawValue: args.string("--mixed-precision")!)!
        let model = UNetModel(spec: spec, lora: (rank, Float(rank)), precision: precision)
        model.gradientCheckpointing = args.flag("--gradient-checkpointing")
        model.randomizeWeights(seed: 0)
        model.lora!.initialize(seed: 0)
        var sched = SchedulerConfig()
        sched.betaStart = 0.00085; sched.betaEnd = 0.012; sched.betaSchedule = "scaled_linear"
        let schedule = try NoiseSchedule(sched)
        let objective = Objective()
        let opt = AdamW(count: model.lora!.count)
        let c = spec.inChannels, n = c * l * l, d = spec.crossAttentionDim
        let rng = CounterRNG(seed: 1)
        let winners = Buffer(rng.substream(1).normals(b * n)), losers = Buffer(rng.substream(2).normals(b * n))
        let context = Buffer(rng.substream(3).normals(b * s * d))

        func step(_ k: Int) throws {
            let noise = Buffer(rng.substream(4, UInt64(k)).normals(b * n))
            let t = (0..<b).map { rng.substream(5, UInt64(k)).integer(UInt64($0), below: schedule.trainTimesteps) }
            let batch = PairBatch(pairs: b, winner: winners.ptr, loser: losers.ptr, noise: noise.ptr, timesteps: t, context: context.ptr,
                                  channels: c, height: l, width: l, contextLength: s, contextDim: d)
            model.lora!.zeroGrad()
            _ = try accumulatePairGradients(model: model, objective: objective, schedule: schedule, batch: batch, normalizer: b)
            opt.update(params: model.lora!.params.ptr, grads: model.lora!.grads.ptr, count: model.lora!.count, lr: 1e-5)
        }
        try step(0)
        var times: [Double] = []
        for k in 1...steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try step(k)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        times.sort()
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        print(JSONValue.object([
            ("impl", .string("hgdpo-\(version)")), ("config", .string(name)), ("latent", .int(l)), ("pairs", .int(b)),
            ("threads", .int(Parallel.threads)), ("bf16", .bool(precision == .bf16)),
            ("bf16_gemm", .string(precision == .bf16 ? (BF16.isAccelerated ? "avx512bf16" : "widened to fp32 + sgemm") : "none")), ("gradient_checkpointing", .bool(model.gradientCheckpointing)),
            ("median_step_s", .double(times[times.count / 2])),
            ("min_step_s", .double(times[0])), ("peak_rss_mb", .double(Double(usage.ru_maxrss) / 1024)),
            ("params", .int(model.weights.table.count)), ("param_bytes", .int(model.weights.byteCount)),
            ("lora_params", .int(model.lora!.count)),
        ]).serialized())
    }
}
