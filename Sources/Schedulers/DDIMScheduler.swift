// DDIM (Song et al. 2021, Eq. 12): x_{t'} = √ᾱ_{t'}·x̂0 + √(1 − ᾱ_{t'} − σ_t²)·ε̂ + σ_t·z, with
// σ_t = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_{t'})) and t' = t − num_train_timesteps / num_inference_steps.
//
// Matches diffusers DDIMScheduler (scheduling_ddim.py): timestep_spacing linspace / leading / trailing with
// steps_offset, set_alpha_to_one (ᾱ past the last step), clip_sample, prediction types epsilon / v_prediction /
// sample, eta (given here as a property, diffusers passes it to step) with the noise given to `step`, and
// use_clipped_model_output. Not supported: thresholding, rescale_betas_zero_snr.
import Foundation

public final class DDIMScheduler: Scheduler {
    public static let diffusersClassName = "DDIMScheduler"

    /// DDIMScheduler's config keys and defaults.
    public struct Config: Codable, Sendable, Equatable {
        public var betas = BetaScheduleConfig()
        public var clipSample = true
        public var clipSampleRange = 1.0
        public var setAlphaToOne = true
        public var stepsOffset = 0
        public var predictionType = "epsilon"
        public var thresholding = false
        public var timestepSpacing = "leading"

        enum CodingKeys: String, CodingKey {
            case clipSample = "clip_sample", clipSampleRange = "clip_sample_range", setAlphaToOne = "set_alpha_to_one"
            case stepsOffset = "steps_offset", predictionType = "prediction_type", thresholding, timestepSpacing = "timestep_spacing"
        }

        public init() {}

        public init(from decoder: Decoder) throws {
            betas = try BetaScheduleConfig(from: decoder)
            let c = try decoder.container(keyedBy: CodingKeys.self), d = Config()
            clipSample = try c.value(.clipSample, d.clipSample)
            clipSampleRange = try c.value(.clipSampleRange, d.clipSampleRange)
            setAlphaToOne = try c.value(.setAlphaToOne, d.setAlphaToOne)
            stepsOffset = try c.value(.stepsOffset, d.stepsOffset)
            predictionType = try c.value(.predictionType, d.predictionType)
            thresholding = try c.value(.thresholding, d.thresholding)
            timestepSpacing = try c.value(.timestepSpacing, d.timestepSpacing)
        }

        public func encode(to encoder: Encoder) throws {
            try betas.encode(to: encoder)
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(clipSample, forKey: .clipSample); try c.encode(clipSampleRange, forKey: .clipSampleRange)
            try c.encode(setAlphaToOne, forKey: .setAlphaToOne); try c.encode(stepsOffset, forKey: .stepsOffset)
            try c.encode(predictionType, forKey: .predictionType); try c.encode(thresholding, forKey: .thresholding)
            try c.encode(timestepSpacing, forKey: .timestepSpacing)
        }
    }

    public let config: Config
    public let schedule: NoiseSchedule
    public let predictionType: PredictionType
    public let spacing: TimestepSpacing
    /// η: 0 is deterministic DDIM, 1 is DDPM-like ancestral sampling (diffusers' `eta` argument of step).
    public var eta: Float = 0
    /// Re-derive ε̂ from the clipped x̂0 (diffusers' `use_clipped_model_output`).
    public var useClippedModelOutput = false
    public private(set) var timesteps: [Float] = []
    public var initNoiseSigma: Float { 1 }
    public private(set) var inferenceStepCount: Int?
    /// ᾱ before the first training step: 1 with set_alpha_to_one, else ᾱ_0.
    public let finalAlphaCumprod: Float

    public init(config: Config) throws {
        guard let p = PredictionType(rawValue: config.predictionType) else {
            throw SchedulerError("scheduler config: prediction_type '\(config.predictionType)' is not supported by "
                                 + "\(Self.diffusersClassName) (epsilon, v_prediction, sample)")
        }
        guard let s = TimestepSpacing(rawValue: config.timestepSpacing) else {
            throw SchedulerError("scheduler config: timestep_spacing '\(config.timestepSpacing)' is not supported (linspace, leading, trailing)")
        }
        try refuseThresholding(config.thresholding)
        self.config = config
        schedule = try config.betas.noiseSchedule(p)
        predictionType = p; spacing = s
        finalAlphaCumprod = config.setAlphaToOne ? 1 : schedule.alphasCumprod[0]
    }

    public func setTimesteps(_ count: Int) throws {
        try checkStepCount(count, trainTimesteps: schedule.trainTimesteps, Self.diffusersClassName)
        timesteps = spacedTimesteps(spacing, trainTimesteps: schedule.trainTimesteps, count: count, stepsOffset: config.stepsOffset)
            .map { Float(Int($0)) }
        inferenceStepCount = count
    }

    public func reset() {}

    public func needsNoise(at timestep: Float) -> Bool { eta > 0 }

    public func step(modelOutput m: UnsafePointer<Float>, timestep: Float, sample x: UnsafePointer<Float>, noise: UnsafePointer<Float>?,
                     count n: Int, into out: UnsafeMutablePointer<Float>) throws {
        let cls = Self.diffusersClassName
        guard let steps = inferenceStepCount else { throw SchedulerError("\(cls).step: call setTimesteps first") }
        let t = try discreteTimestep(timestep, cls)
        guard t >= 0, t < schedule.trainTimesteps else {
            throw SchedulerError("\(cls).step: timestep \(t) is outside 0..<\(schedule.trainTimesteps)")
        }
        if eta > 0 && noise == nil { throw SchedulerError("\(cls).step: eta \(eta) > 0 adds noise; none was given") }
        // Ref: diffusers DDIMScheduler.step, float32 scalars in its order of operations.
        let prevT = t - schedule.trainTimesteps / steps
        let alphaProdT = schedule.alphasCumprod[t]
        let alphaProdTPrev = prevT >= 0 ? schedule.alphasCumprod[prevT] : finalAlphaCumprod
        let betaProdT = 1 - alphaProdT
        let sqrtAlphaProdT = alphaProdT.squareRoot(), sqrtBetaProdT = betaProdT.squareRoot()
        let betaProdTPrev = 1 - alphaProdTPrev
        let variance = (betaProdTPrev / betaProdT) * (1 - alphaProdT / alphaProdTPrev)
        let stdDevT = eta * variance.squareRoot()
        let directionCoeff = (1 - alphaProdTPrev - stdDevT * stdDevT).squareRoot()
        let x0Coeff = alphaProdTPrev.squareRoot()
        let clip = config.clipSample, range = Float(config.clipSampleRange)
        for i in 0..<n {
            var x0: Float, eps: Float
            switch predictionType {
            case .epsilon:
                x0 = (x[i] - sqrtBetaProdT * m[i]) / sqrtAlphaProdT
                eps = m[i]
            case .sample:
                x0 = m[i]
                eps = (x[i] - sqrtAlphaProdT * x0) / sqrtBetaProdT
            case .vPrediction:
                x0 = sqrtAlphaProdT * x[i] - sqrtBetaProdT * m[i]
                eps = sqrtAlphaProdT * m[i] + sqrtBetaProdT * x[i]
            }
            if clip { x0 = min(max(x0, -range), range) }
            if useClippedModelOutput { eps = (x[i] - sqrtAlphaProdT * x0) / sqrtBetaProdT }
            var prev = x0Coeff * x0 + directionCoeff * eps
            if eta > 0 { prev = prev + stdDevT * noise![i] }
            out[i] = prev
        }
    }
}
