// One micro-batch of the HG-DPO step, shared by the trainer and `hgdpo probe dpo-loss`: noise the winners and losers
// with their shared noise and timestep, run the policy (LoRA on, caching for backward) and the reference (LoRA off,
// same weights) over the 2B latents, evaluate the objective and backpropagate into the LoRA gradients (accumulated).
// `sft` runs the policy on the B winners only: a third of the U-Net work of a DPO step.
import Schedulers
import Tensors
import UNet

public struct PairBatch {
    public let pairs: Int
    /// (B, C, H, W) each
    public let winner: UnsafePointer<Float>, loser: UnsafePointer<Float>, noise: UnsafePointer<Float>
    public let timesteps: [Int]
    /// (B, S, D)
    public let context: UnsafePointer<Float>
    public let channels: Int, height: Int, width: Int, contextLength: Int, contextDim: Int

    public init(pairs: Int, winner: UnsafePointer<Float>, loser: UnsafePointer<Float>, noise: UnsafePointer<Float>, timesteps: [Int],
                context: UnsafePointer<Float>, channels: Int, height: Int, width: Int, contextLength: Int, contextDim: Int) {
        self.pairs = pairs; self.winner = winner; self.loser = loser; self.noise = noise; self.timesteps = timesteps
        self.context = context; self.channels = channels; self.height = height; self.width = width
        self.contextLength = contextLength; self.contextDim = contextDim
    }
}

/// Adds this micro-batch's gradient of (sum of its pair losses) / normalizer to `model.lora.grads` (and to
/// `model.weightGrads` when every parameter is trained); returns the terms. The DPO reference is `reference` (a frozen
/// copy of the starting U-Net, for full-parameter training) or, when nil, `model` with its LoRA off.
/// `gradientsFinal`: UNetModel.backward's report of the trained gradients that are final (the overlapped all-reduce).
public func accumulatePairGradients(model: UNetModel, reference referenceModel: UNetModel? = nil, objective: Objective,
                                    schedule: NoiseSchedule, batch: PairBatch, normalizer: Int,
                                    gradientsFinal: ((Int) -> Void)? = nil) throws -> Objective.Terms {
    let b = batch.pairs, n = batch.channels * batch.height * batch.width, sd = batch.contextLength * batch.contextDim
    // sft: the winners alone (no loser, no reference pass); otherwise winners then losers, one batch of 2B.
    let sides = objective.kind == .sft ? 1 : 2
    let xt = Buffer(uninitialized: sides * b * n), context = Buffer(uninitialized: sides * b * sd)
    for j in 0..<b {
        let t = batch.timesteps[j]
        guard t >= 0 && t < schedule.trainTimesteps else {
            throw TrainInputError("timestep \(t) is outside 0...\(schedule.trainTimesteps - 1)")
        }
        schedule.addNoise(batch.winner + j * n, noise: batch.noise + j * n, timestep: t, count: n, into: xt.ptr + j * n)
        if sides == 2 {
            schedule.addNoise(batch.loser + j * n, noise: batch.noise + j * n, timestep: t, count: n, into: xt.ptr + (b + j) * n)
        }
    }
    for side in 0..<sides { (context.ptr + side * b * sd).update(from: batch.context, count: b * sd) }
    let tt = Array(repeating: batch.timesteps, count: sides).flatMap { $0 }.map(Float.init)
    let (policy, saved) = try model.forwardTraining(sample: xt, timesteps: tt, context: context, batch: sides * b,
                                                    height: batch.height, width: batch.width,
                                                    contextLength: batch.contextLength, loraScale: 1)
    let reference: Buffer? = objective.kind == .sft ? nil
        : try (referenceModel ?? model).forward(sample: xt, timesteps: tt, context: context, batch: 2 * b, height: batch.height, width: batch.width,
                            contextLength: batch.contextLength, loraScale: nil)
    let dPolicy = Buffer(uninitialized: sides * b * n)
    let terms = objective.evaluate(policy: policy.ptr, reference: reference?.ptr, noise: batch.noise, winner: batch.winner,
                                   loser: batch.loser, timesteps: batch.timesteps,
                                   pairs: b, channels: batch.channels, spatial: batch.height * batch.width, schedule: schedule,
                                   normalizer: normalizer, dPolicy: dPolicy.ptr)
    model.backward(dPolicy, saved, gradientsFinal: gradientsFinal)
    return terms
}
