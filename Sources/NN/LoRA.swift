// LoRA adapters on the attention projections (attn1/attn2 to_q, to_k, to_v, to_out.0 of every transformer block), with
// peft semantics: y = W·x + b + scale·(alpha/r)·B·(A·x), A (r, in) gaussian(std 1/r), B (out, r) zero at init.
// All A and B live in one flat parameter buffer and their gradients in one flat gradient buffer with the same layout.
// Ref: peft tuners/lora/layer.py (Linear.forward, reset_lora_parameters with init_lora_weights="gaussian").
import Tensors

public struct LoRATarget: Sendable, Equatable {
    /// Module path as in diffusers, e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`.
    public let module: String
    public let inFeatures: Int
    public let outFeatures: Int
    /// Offsets of A (r, in) and B (out, r) in the flat buffers.
    public let offsetA: Int
    public let offsetB: Int
}

public final class LoRAAdapters: @unchecked Sendable {
    public let rank: Int
    public let alpha: Float
    public private(set) var targets: [LoRATarget] = []
    public private(set) var count = 0
    private var byModule: [String: Int] = [:]
    /// Parameters and gradients: flat, same layout (see `targets`).
    public private(set) var params = Buffer(zeros: 0)
    public private(set) var grads = Buffer(zeros: 0)

    public init(rank: Int, alpha: Float) {
        self.rank = rank
        self.alpha = alpha
    }

    /// Declares a target; returns its index. Called while the model is built, before `allocate`.
    public func add(module: String, inFeatures: Int, outFeatures: Int) -> Int {
        let t = LoRATarget(module: module, inFeatures: inFeatures, outFeatures: outFeatures,
                           offsetA: count, offsetB: count + rank * inFeatures)
        count += rank * (inFeatures + outFeatures)
        byModule[module] = targets.count
        targets.append(t)
        return targets.count - 1
    }

    public func allocate() {
        params = Buffer(zeros: count)
        grads = Buffer(zeros: count)
    }

    public func target(_ module: String) -> LoRATarget? { byModule[module].map { targets[$0] } }

    /// peft's "gaussian" init: A ~ N(0, (1/r)²), B = 0. Draws depend only on the seed (same on every rank).
    public func initialize(seed: UInt64) {
        let rng = CounterRNG(seed: seed, stream: 0x4C6F_5241)   // "LoRA"
        params.zero()
        for (i, t) in targets.enumerated() {
            rng.substream(UInt64(i)).fillNormal(UnsafeMutableBufferPointer(start: params.ptr + t.offsetA, count: rank * t.inFeatures),
                                                scale: 1 / Float(rank))
        }
    }

    public func zeroGrad() { grads.zero() }

    /// The multiplier applied to B·A: LoRA scale (e.g. 0.5 at inference) × alpha / r.
    public func multiplier(scale: Float) -> Float { scale * alpha / Float(rank) }

    public func a(_ t: LoRATarget) -> UnsafeMutablePointer<Float> { params.ptr + t.offsetA }
    public func b(_ t: LoRATarget) -> UnsafeMutablePointer<Float> { params.ptr + t.offsetB }
    public func gradA(_ t: LoRATarget) -> UnsafeMutablePointer<Float> { grads.ptr + t.offsetA }
    public func gradB(_ t: LoRATarget) -> UnsafeMutablePointer<Float> { grads.ptr + t.offsetB }
}
