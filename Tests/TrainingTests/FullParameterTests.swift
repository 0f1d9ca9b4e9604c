import Foundation
import XCTest
import IO
import Schedulers
import Tensors
import TestSupport
@testable import Training
import UNet

/// `--train unet`: the trainer's sft step (objective + U-Net backward with every parameter trained) against central
/// finite differences of its loss, for the largest-gradient element of one tensor of each kind. The U-Net's parameter
/// gradients alone are checked against autograd in UNetParityTests.testWeightGradients*.
final class FullParameterTests: XCTestCase {
    func testSFTStepAgainstFiniteDifferences() throws {
        let model = try UNetModel.load(folder: ComponentFolder(path: ObjectiveParityTests.unetFolder))
        model.enableWeightGradients()
        let schedule = try ObjectiveParityTests.sdSchedule()
        let objective = Objective(kind: .sft, beta: 1, statWeight: 0, statStride: 1)
        let b = 2, n = 4 * 8 * 8, s = 7, d = 24
        let rng = CounterRNG(seed: 21)
        let winner = rng.substream(1).normals(b * n), loser = rng.substream(2).normals(b * n)
        let noise = rng.substream(3).normals(b * n), context = rng.substream(4).normals(b * s * d)
        func loss() throws -> Double {
            try winner.withUnsafeBufferPointer { w in try loser.withUnsafeBufferPointer { l in
                try noise.withUnsafeBufferPointer { e in try context.withUnsafeBufferPointer { c in
                    let batch = PairBatch(pairs: b, winner: w.baseAddress!, loser: l.baseAddress!, noise: e.baseAddress!,
                                          timesteps: [40, 600], context: c.baseAddress!, channels: 4, height: 8, width: 8,
                                          contextLength: s, contextDim: d)
                    return try accumulatePairGradients(model: model, objective: objective, schedule: schedule, batch: batch,
                                                       normalizer: 1).loss
                } }
            } }
        }
        model.weightGrads!.zero()
        _ = try loss()
        let grads = model.weightGrads!.array
        // Gradient checkpointing (blocks recomputed in backward, with their parameter-gradient inputs) changes nothing.
        model.gradientCheckpointing = true
        model.weightGrads!.zero()
        _ = try loss()
        XCTAssertEqual(model.weightGrads!.array, grads, "gradient checkpointing")
        model.gradientCheckpointing = false
        let keys = ["conv_in.weight", "time_embedding.linear_1.weight", "time_embedding.linear_2.bias",
                    "down_blocks.0.resnets.0.norm1.weight", "down_blocks.0.resnets.0.time_emb_proj.weight",
                    "down_blocks.0.attentions.0.transformer_blocks.0.norm2.bias",
                    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                    "up_blocks.0.upsamplers.0.conv.weight", "conv_out.bias"]
        let w = model.weights.storage.ptr
        for key in keys {
            let e = model.weights.table.entry(key)!
            let i = (e.offset..<(e.offset + e.count)).max { abs(grads[$0]) < abs(grads[$1]) }!
            let saved = w[i], h = max(abs(saved), 1) * 1e-2
            w[i] = saved + h; let up = try loss()
            w[i] = saved - h; let down = try loss()
            w[i] = saved
            let fd = (up - down) / (2 * Double(h))
            XCTAssertEqual(Double(grads[i]), fd, accuracy: 5e-3 * abs(fd) + 1e-5, "\(key)[\(i - e.offset)]")
            print(String(format: "%@[%d]: gradient %.6e, finite difference %.6e", key, i - e.offset, grads[i], fd))
        }
    }
}
