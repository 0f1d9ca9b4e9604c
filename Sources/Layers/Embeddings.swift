// Sinusoidal timestep embedding (forward only: timesteps carry no gradient).
import Foundation
import Tensors

/// out[b] = [sin(t_b · f), cos(t_b · f)] (or [cos, sin] when `flipSinToCos`), f_k = exp(−ln(maxPeriod) · k / (half − freqShift)),
/// k < half = dim / 2; an odd `dim` leaves a final zero column. Overwrites out.
/// Ref: diffusers embeddings.get_timestep_embedding (called by Timesteps with scale 1; SD: flip_sin_to_cos=True,
/// downscale_freq_shift=0). Each step rounds to float32 where torch computes in float32: the exponent as
/// fl(fl(−ln(maxPeriod) · k) / (half − freqShift)), then exp, then t · f, then sin / cos.
public func timestepEmbedding(out: UnsafeMutablePointer<Float>,  // (B, dim)
                              timesteps: UnsafePointer<Float>,   // (B)
                              B: Int, dim: Int, flipSinToCos: Bool, freqShift: Float, maxPeriod: Float = 10000) {
    let half = dim / 2
    let logPeriod = Float(-Foundation.log(Double(maxPeriod)))   // torch: Python float scalar, cast to float32
    let denominator = Float(half) - freqShift
    // exp is computed in Double and rounded once: the correctly rounded float32 value, which torch's (Sleef, ~1 ulp)
    // expf returns too except in rare ties.
    let freqs = (0..<half).map { k -> Float in
        let exponent = (logPeriod * Float(k)) / denominator
        return Float(Foundation.exp(Double(exponent)))
    }
    for b in 0..<B {
        let t = timesteps[b], row = out + b * dim
        let sinPart = row + (flipSinToCos ? half : 0), cosPart = row + (flipSinToCos ? 0 : half)
        for k in 0..<half {
            let arg = t * freqs[k]
            sinPart[k] = Float(Foundation.sin(Double(arg)))
            cosPart[k] = Float(Foundation.cos(Double(arg)))
        }
        if dim % 2 == 1 { row[dim - 1] = 0 }
    }
}

/// Convenience overload taking the timesteps as an array (B = timesteps.count).
public func timestepEmbedding(out: UnsafeMutablePointer<Float>,  // (B, dim)
                              timesteps: [Float], dim: Int, flipSinToCos: Bool, freqShift: Float,
                              maxPeriod: Float = 10000) {
    guard !timesteps.isEmpty else { return }
    timesteps.withUnsafeBufferPointer {
        timestepEmbedding(out: out, timesteps: $0.baseAddress!, B: $0.count, dim: dim, flipSinToCos: flipSinToCos,
                          freqShift: freqShift, maxPeriod: maxPeriod)
    }
}
