// Reference initialisation and parameter export for `hgdpo make-model`, which writes random-weight VAEs where no
// real weights can be had. diffusers' AutoencoderKL has no init of its own, so a fresh one has PyTorch's defaults:
// Conv2d and Linear weights kaiming_uniform(a = √5), i.e. U(−1/√fan_in, 1/√fan_in), biases U(−1/√fan_in, 1/√fan_in),
// GroupNorm weight 1 and bias 0. Drawn from our counter-based RNG (same seed, same weights; not torch's generator).
// Ref: torch/nn/modules/conv.py and linear.py (reset_parameters), normalization.py (GroupNorm.reset_parameters).
import IO
import NN
import Tensors

extension AutoencoderKL {
    /// Draws every weight as PyTorch initialises a new AutoencoderKL (see the file header).
    public func initializeAsDiffusers(seed: UInt64) {
        let rng = CounterRNG(seed: seed)
        let entries = weights.table.entries
        var fanIn: [String: Int] = [:]   // module path → fan_in of its weight
        for e in entries where e.shape.count >= 2 && e.key.hasSuffix(".weight") {
            fanIn[String(e.key.dropLast(".weight".count))] = e.shape.dropFirst().reduce(1, *)
        }
        for (i, e) in entries.enumerated() {
            let buf = weights.fp32(e)
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
