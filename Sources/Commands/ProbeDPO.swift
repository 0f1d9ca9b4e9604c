// `hgdpo probe dpo-loss`: the HG-DPO loss terms and LoRA gradients of one batch, for parity checks against a PyTorch
// reference and for users calibrating β and λ_stat (the raw statistic term is printed unweighted).
import IO
import Schedulers
import Tensors
import Training
import UNet

extension Commands {
    static let probeDPOLoss = CommandSpec(
        ["probe", "dpo-loss"],
        summary: "Compute the HG-DPO loss and its LoRA gradients for one batch",
        details: """
            BATCH holds winner, loser, noise [B,C,H,W], timesteps [B] and encoder_hidden_states [B,S,D]. Prints
            {"loss":…,"dpo_loss":…,"stat_loss":…,"implicit_acc":…} (stat_loss unweighted, loss = dpo + λ·stat, means over
            the B pairs) and writes d loss / d (every LoRA tensor) under the LoRA file's own key names.
            Example: hgdpo probe dpo-loss --model sd15 --lora lora.safetensors --input batch.safetensors --out grads.safetensors
            """,
        options: [
            .value("--model", "DIR", "Pipeline root (unet/ and scheduler/) or a U-Net folder (SD's DDPM schedule is then used)", required: true),
            .value("--lora", "FILE", "LoRA weights (the policy); the reference is the U-Net without them", required: true),
            .value("--input", "BATCH", "Batch tensors (safetensors)", required: true),
            .value("--out", "GRADS", "Gradients (safetensors, written atomically)", required: true),
            .value("--objective", "NAME", "hgdpo, dpo or sft", default: "hgdpo", choices: ["hgdpo", "dpo", "sft"]),
            .value("--beta", "B", "Diffusion-DPO beta", default: "2500"),
            .value("--stat-weight", "L", "Statistic-matching weight", default: "10000"),
            .value("--stat-inference-steps", "N", "Statistic step from t to t - T/N, as hgdpo train (N = T: one DDPM step, t to t-1)",
                   default: "50"),
            .value("--threads", "N", "Compute threads"),
        ]
    ) { args in
        try applyThreads(args)
        let modelPath = try args.requiredString("--model")
        let model0 = try ModelFolder(path: modelPath)
        let schedulerConfig: SchedulerConfig
        if model0.isPipeline { schedulerConfig = try model0.scheduler().config(SchedulerConfig.self) } else {
            var c = SchedulerConfig()
            c.betaStart = 0.00085; c.betaEnd = 0.012; c.betaSchedule = "scaled_linear"
            schedulerConfig = c
        }
        let schedule = try NoiseSchedule(schedulerConfig)
        let loraPath = try args.requiredString("--lora")
        let w = try LoRAFile.read(loraPath)
        let model = try UNetModel.load(folder: try model0.unet(), lora: (w.rank, w.alpha))
        try model.lora!.assign(w, source: loraPath)
        let inputPath = try args.requiredString("--input")
        let input = try SafeTensorsFile(path: inputPath)
        func tensor(_ key: String, rank: Int) throws -> (Buffer, [Int]) {
            guard let info = input.info(key) else { throw CLIError.invalid("\(inputPath): missing tensor '\(key)'") }
            guard info.shape.count == rank else { throw CLIError.invalid("\(inputPath): '\(key)' has shape \(info.shape), expected \(rank) dimensions") }
            return (Buffer(try input.floats(key)), info.shape)
        }
        let (winner, ws) = try tensor("winner", rank: 4), (loser, ls) = try tensor("loser", rank: 4), (noise, ns) = try tensor("noise", rank: 4)
        let (context, cs) = try tensor("encoder_hidden_states", rank: 3)
        guard let tinfo = input.info("timesteps"), tinfo.shape.count == 1 else { throw CLIError.invalid("\(inputPath): missing 1-D tensor 'timesteps'") }
        let timesteps = try input.doubles("timesteps").map { Int($0) }
        let b = ws[0]
        guard ls == ws, ns == ws, cs[0] == b, timesteps.count == b else {
            throw CLIError.invalid("\(inputPath): shapes differ: winner \(ws), loser \(ls), noise \(ns), timesteps [\(timesteps.count)], encoder_hidden_states \(cs)")
        }
        guard ws[1] == model.spec.inChannels, cs[2] == model.spec.crossAttentionDim else {
            throw CLIError.invalid("\(inputPath): \(ws[1]) latent channels / context width \(cs[2]) do not fit the U-Net (\(model.spec.inChannels), \(model.spec.crossAttentionDim))")
        }
        let stride = schedule.trainTimesteps / (try args.int("--stat-inference-steps", in: 1...schedule.trainTimesteps)!)
        let objective = Objective(kind: ObjectiveKind(rawValue: args.string("--objective")!)!, beta: Float(try args.double("--beta")!),
                                  statWeight: Float(try args.double("--stat-weight")!), statStride: stride,
                                  prediction: PredictionType(rawValue: schedule.predictionType)!)
        model.lora!.zeroGrad()
        let batch = PairBatch(pairs: b, winner: winner.ptr, loser: loser.ptr, noise: noise.ptr, timesteps: timesteps, context: context.ptr,
                              channels: ws[1], height: ws[2], width: ws[3], contextLength: cs[1], contextDim: cs[2])
        let t = try accumulatePairGradients(model: model, objective: objective, schedule: schedule, batch: batch, normalizer: b)
        var entries: [SafeTensorsEntry] = []
        let lora = model.lora!
        for target in lora.targets {
            let names = w.keys[target.module] ?? ("unet.\(target.module).lora.down.weight", "unet.\(target.module).lora.up.weight")
            entries.append(SafeTensorsEntry(name: names.down, shape: [lora.rank, target.inFeatures],
                                            floats: UnsafeBufferPointer(start: lora.gradA(target), count: lora.rank * target.inFeatures)))
            entries.append(SafeTensorsEntry(name: names.up, shape: [target.outFeatures, lora.rank],
                                            floats: UnsafeBufferPointer(start: lora.gradB(target), count: target.outFeatures * lora.rank)))
        }
        try SafeTensors.write(entries, to: try args.requiredString("--out"))
        let pairs = Double(b)
        print(JSONValue.object([("loss", .double(t.loss)), ("dpo_loss", .double(t.dpo / pairs)), ("stat_loss", .double(t.stat / pairs)),
                                ("implicit_acc", .double(t.correct / pairs)), ("reward_margin", .double(t.insideSum / pairs)),
                                ("mse_theta_w", .double(t.mseThetaW / pairs)), ("mse_theta_l", .double(t.mseThetaL / pairs)),
                                ("mse_ref_w", .double(t.mseRefW / pairs)), ("mse_ref_l", .double(t.mseRefL / pairs))]).serialized())
    }
}
