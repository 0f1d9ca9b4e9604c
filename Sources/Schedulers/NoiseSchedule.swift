// The training noise schedule shared by every diffusers scheduler: betas, alphas and their cumulative product, from
// `scheduler/scheduler_config.json`, computed as diffusers does (torch.linspace in float32; cumprod of float32 values
// accumulated in double): betas and ᾱ bit-exact, add_noise too up to torch's square roots (MKL's, within an ulp; bit-exact
// against correctly rounded ones, Tests/SchedulersTests). Ref: diffusers schedulers/scheduling_ddpm.py (__init__, add_noise).
import IO

public struct NoiseScheduleError: Error, UserInputError, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

public struct NoiseSchedule: Sendable {
    public let trainTimesteps: Int
    public let betas: [Float]
    public let alphasCumprod: [Float]
    public let predictionType: String

    /// The trainer's schedule: also refuses the `sample` prediction type (hgdpo trains epsilon and v-prediction models).
    /// - Parameter source: the config file, named in errors.
    public init(_ c: SchedulerConfig, source: String? = nil) throws {
        do { try self.init(config: c) } catch let e as NoiseScheduleError where source != nil {
            throw NoiseScheduleError(message: "\(source!): \(e.message)")
        }
    }

    init(config c: SchedulerConfig) throws {
        try self.init(trainTimesteps: c.numTrainTimesteps, betaStart: c.betaStart, betaEnd: c.betaEnd,
                      betaSchedule: c.betaSchedule, trainedBetas: c.trainedBetas,
                      rescaleBetasZeroSnr: c.rescaleBetasZeroSnr, predictionType: c.predictionType)
        guard c.predictionType == "epsilon" || c.predictionType == "v_prediction" else {
            throw NoiseScheduleError(message: "scheduler config: prediction_type '\(c.predictionType)' is not supported; "
                                     + "hgdpo trains epsilon (SD 1.x, SD 2.x base) and v_prediction (SD 2.x 768-v) models")
        }
    }

    /// The schedule from the config's numbers, whatever the prediction type (the sampling schedulers support
    /// epsilon, v_prediction and sample; they check it themselves).
    public init(trainTimesteps n: Int, betaStart: Double, betaEnd: Double, betaSchedule: String, trainedBetas: [Double]?,
                rescaleBetasZeroSnr: Bool, predictionType: String) throws {
        // Bounded (diffusers' models use 1000): a mutated file's 2^31 would allocate gigabytes (Tests/FuzzTests).
        guard n > 0, n <= 1_000_000 else {
            throw NoiseScheduleError(message: "scheduler config: num_train_timesteps must be in 1...1000000, is \(n)")
        }
        var b: [Float]
        if let trained = trainedBetas {
            guard trained.count == n else {
                throw NoiseScheduleError(message: "scheduler config: trained_betas has \(trained.count) values, num_train_timesteps is \(n)")
            }
            b = trained.map(Float.init)
        } else {
            switch betaSchedule {
            case "linear": b = linspace(Float(betaStart), Float(betaEnd), n)
            // beta_start**0.5 is a Python (float64) power; torch.linspace rounds the ends to float32.
            case "scaled_linear": b = linspace(Float(betaStart.squareRoot()), Float(betaEnd.squareRoot()), n).map { $0 * $0 }
            case "squaredcos_cap_v2":
                // betas_for_alpha_bar with the cosine alpha_bar, computed in float64 then cast, as diffusers does.
                func alphaBar(_ t: Double) -> Double { let c = _cos((t + 0.008) / 1.008 * Double.pi / 2); return c * c }
                b = (0..<n).map { i in
                    let t1 = Double(i) / Double(n), t2 = Double(i + 1) / Double(n)
                    return Float(min(1 - alphaBar(t2) / alphaBar(t1), 0.999))
                }
            default:
                throw NoiseScheduleError(message: "scheduler config: beta_schedule '\(betaSchedule)' is not supported "
                                         + "(linear, scaled_linear, squaredcos_cap_v2)")
            }
        }
        guard !rescaleBetasZeroSnr else {
            throw NoiseScheduleError(message: "scheduler config: rescale_betas_zero_snr is not supported")
        }
        trainTimesteps = n
        betas = b
        // torch.cumprod on CPU accumulates float32 inputs in double and rounds each output to float32.
        var acc: Double = 1
        alphasCumprod = b.map { acc *= Double(1 - $0); return Float(acc) }
        self.predictionType = predictionType
    }

    /// ᾱ at timestep t, and 1 for t < 0 (the step before the first: diffusers' `final_alpha_cumprod` with
    /// set_alpha_to_one semantics used by the DDPM posterior at t = 0).
    @inline(__always)
    public func alphaBar(_ t: Int) -> Float { t < 0 ? 1 : alphasCumprod[t] }

    /// x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε, per sample (diffusers DDPMScheduler.add_noise).
    public func addNoise(_ x0: UnsafePointer<Float>, noise: UnsafePointer<Float>, timestep t: Int, count: Int,
                         into out: UnsafeMutablePointer<Float>) {
        let a = alphasCumprod[t]
        let sa = a.squareRoot(), s1 = (1 - a).squareRoot()
        for i in 0..<count { out[i] = sa * x0[i] + s1 * noise[i] }
    }

    /// v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0, per sample: the v-prediction training target (diffusers
    /// DDPMScheduler.get_velocity).
    public func velocity(_ x0: UnsafePointer<Float>, noise: UnsafePointer<Float>, timestep t: Int, count: Int,
                         into out: UnsafeMutablePointer<Float>) {
        let a = alphasCumprod[t]
        let sa = a.squareRoot(), s1 = (1 - a).squareRoot()
        for i in 0..<count { out[i] = sa * noise[i] - s1 * x0[i] }
    }
}

/// torch.linspace in float32 as ATen's CPU kernel computes it: step = (end − start)/(n − 1), then start + step·i for
/// the first half and end − step·(n − 1 − i) for the second, each a fused multiply-add (the AVX2/AVX-512 kernels are
/// built with FMA contraction; checked bit-exact against torch 2.15 for SD's and DDPM's schedules).
func linspace(_ start: Float, _ end: Float, _ n: Int) -> [Float] {
    guard n > 1 else { return [start] }
    let step = (end - start) / Float(n - 1)
    let half = n / 2
    return (0..<n).map { i in i < half ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(n - 1 - i)) }
}

@_silgen_name("cos") private func _cos(_ x: Double) -> Double
