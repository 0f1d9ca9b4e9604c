// Reference initialisation and parameter export for `hgdpo make-model`, which writes random-weight VAEs where no
// real weights can be had. diffusers' AutoencoderKL has no init of its own, so a fresh one has PyTorch's defaults:
// Conv2d and Linear weights kaiming_uniform(a = √5), i.e. U(−1/√fan_in, 1/√fan_in), biases U(−1/√fan_in, 1/√fan_in),
// GroupNorm weight 1 and bias 0. Drawn from our counter-based RNG (same seed, same weights; not torch's generator).
// Ref: torch/nn/modules/conv.py and linear.py (reset_parameters), normalization.py (GroupNorm.reset_parameters).
import IO
import Tensors

extension AutoencoderKL {
    /// Mixed precision: every convolution multiplies bf16 weights (rounded as torch's `.to(torch.bfloat16)`) with fp32
    /// sums through BF16.gemm (AVX512-BF16 rounds the activations to bf16 too; elsewhere the weights are widened);
    /// norms, the attention's linear layers and all activations stay fp32. Call after loading; keeps the fp32 weights.
    public func useBF16Convolutions() {
        let bits = UnsafeMutablePointer<UInt16>.allocate(capacity: max(1, weights.count))
        BF16.convert(weights.base, to: bits, count: weights.count)
        bf16Storage = bits
    }

    /// Every parameter with its diffusers state-dict key, in declaration order.
    public var namedParameters: [(key: String, shape: [Int], values: UnsafeBufferPointer<Float>)] {
        weights.entries.map { e in (e.key, e.shape, UnsafeBufferPointer(start: weights.base + e.offset, count: e.count)) }
    }

    /// Draws every weight as PyTorch initialises a new AutoencoderKL (see the file header).
    public func initializeAsDiffusers(seed: UInt64) {
        let rng = CounterRNG(seed: seed)
        let entries = weights.entries
        var fanIn: [String: Int] = [:]   // module path → fan_in of its weight
        for e in entries where e.shape.count >= 2 && e.key.hasSuffix(".weight") {
            fanIn[String(e.key.dropLast(".weight".count))] = e.shape.dropFirst().reduce(1, *)
        }
        for (i, e) in entries.enumerated() {
            let buf = UnsafeMutableBufferPointer(start: weights.base + e.offset, count: e.count)
            let s = rng.substream(UInt64(i))
            let module = String(e.key[..<(e.key.lastIndex(of: ".") ?? e.key.endIndex)])
            if let n = fanIn[module] {   // a conv or linear weight or bias
                let bound = 1 / Float(n).squareRoot()
                for j in 0..<e.count { buf[j] = (2 * s.uniform(UInt64(j)) - 1) * bound }
            } else {                     // a GroupNorm
                buf.update(repeating: e.key.hasSuffix(".weight") ? 1 : 0)
            }
        }
    }
}
