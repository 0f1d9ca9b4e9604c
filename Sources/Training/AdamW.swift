// AdamW over one flat parameter buffer, fp32 state, exactly torch.optim.AdamW's update order (decoupled weight decay,
// then the bias-corrected step p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)). Ref: torch/optim/adamw.py (_single_tensor_adamw).
import IO
import Tensors

public struct AdamWConfig: Codable, Sendable, Equatable {
    // Doubles, as torch keeps them (Python floats): 1 − β is formed in double and rounded once.
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double = 1e-8
    public var weightDecay: Double = 0.01
    public init() {}
}

public final class AdamW: Optimizer, @unchecked Sendable {
    public let config: AdamWConfig
    public private(set) var stepCount = 0
    public let m: Buffer, v: Buffer

    public init(count: Int, config: AdamWConfig = AdamWConfig()) {
        self.config = config
        m = Buffer(zeros: count)
        v = Buffer(zeros: count)
    }

    /// One update of `params` from `grads` (same flat layout) at learning rate `lr`.
    public func update(params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, count: Int, lr: Float) {
        precondition(count == m.count, "AdamW.update: \(count) parameters, state for \(m.count)")
        stepCount += 1
        let step = stepCount
        let b2 = Float(config.beta2), eps = Float(config.eps)
        let oneMinusB1 = Float(1 - config.beta1), oneMinusB2 = Float(1 - config.beta2)
        let bc1 = 1 - config.beta1.pow(step), bc2 = 1 - config.beta2.pow(step)
        let stepSize = Float(Double(lr) / bc1), bc2Sqrt = Float(bc2.squareRoot())
        let decay = Float(1 - Double(lr) * config.weightDecay)
        let mp = m.ptr, vp = v.ptr
        parallelFor(count, work: count) { i in
            let g = grads[i]
            params[i] *= decay
            mp[i] += oneMinusB1 * (g - mp[i])                 // torch: m.lerp_(g, 1 - beta1)
            vp[i] = vp[i] * b2 + oneMinusB2 * g * g
            let denom = vp[i].squareRoot() / bc2Sqrt + eps
            params[i] -= stepSize * mp[i] / denom
        }
    }

    public func stateEntries() -> (tensors: [SafeTensorsEntry], metadata: [String: String]) {
        ([SafeTensorsEntry(name: "exp_avg", shape: [m.count], floats: m.array),
          SafeTensorsEntry(name: "exp_avg_sq", shape: [v.count], floats: v.array)],
         ["optimizer": "adamw", "step": String(stepCount)])
    }

    public func loadState(from file: SafeTensorsFile) throws {
        guard file.metadata["optimizer"] == "adamw", let step = file.metadata["step"].flatMap(Int.init) else {
            throw OptimizerStateError(path: file.path, message: "is not an AdamW state (metadata optimizer=\(file.metadata["optimizer"] ?? "none"))")
        }
        for (name, buf) in [("exp_avg", m), ("exp_avg_sq", v)] {
            guard let info = file.info(name), info.count == buf.count else {
                throw OptimizerStateError(path: file.path, message: "'\(name)' has \(file.info(name)?.count ?? 0) values, the LoRA has \(buf.count)")
            }
            try file.read(name, into: buf.buffer)
        }
        stepCount = step
    }
}

public struct OptimizerStateError: Error, UserInputError, CustomStringConvertible {
    public let path: String
    public let message: String
    public var description: String { "\(path): \(message)" }
}

extension Double {
    func pow(_ n: Int) -> Double { var r = 1.0; for _ in 0..<n { r *= self }; return r }
}
