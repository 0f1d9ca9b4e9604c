// DDPM ancestral sampling (Ho et al. 2020): x_{t'} ~ N(μ̃(x_t, x̂0), σ²) with the posterior mean
// μ̃ = √ᾱ_{t'}·β̄_t/(1 − ᾱ_t)·x̂0 + √(ᾱ_t/ᾱ_{t'})·(1 − ᾱ_{t'})/(1 − ᾱ_t)·x_t, β̄_t = 1 − ᾱ_t/ᾱ_{t'}, t' the previous
// timestep of the plan (ᾱ of t' < 0 is 1). This is also the step the trainer's statistic term (Training/Objective.swift)
// takes from t to t − stride.
//
// Matches diffusers DDPMScheduler (scheduling_ddpm.py): set_timesteps with linspace / leading / trailing spacing and
// steps_offset, previous_timestep from the plan, prediction types epsilon / v_prediction / sample, clip_sample, and
// variance_type fixed_small, fixed_small_log, fixed_large. Not supported (refused when configured): learned variances
// (the model output would carry 2·C channels), fixed_large_log (diffusers takes the square root of a log there),
// thresholding, custom timestep lists, rescale_betas_zero_snr.
import Foundation

public final class DDPMScheduler: Scheduler {
    public static let diffusersClassName = "DDPMScheduler"

    public enum VarianceType: String, Codable, Sendable, CaseIterable {
        case fixedSmall = "fixed_small", fixedSmallLog = "fixed_small_log", fixedLarge = "fixed_large"
    }

    /// DDPMScheduler's config keys and defaults.
    public struct Config: Codable, Sendable, Equatable {
        public var betas = BetaScheduleConfig()
        public var varianceType = "fixed_small"
        public var clipSample = true
        public var clipSampleRange = 1.0
        public var predictionType = "epsilon"
        public var thresholding = false
        public var timestepSpacing = "leading"
        public var stepsOffset = 0

        enum CodingKeys: String, CodingKey {
            case varianceType = "variance_type", clipSample = "clip_sample", clipSampleRange = "clip_sample_range"
            case predictionType = "prediction_type", thresholding, timestepSpacing = "timestep_spacing", stepsOffset = "steps_offset"
        }

        public init() {}

        public init(from decoder: Decoder) throws {
            betas = try BetaScheduleConfig(from: decoder)
            let c = try decoder.container(keyedBy: CodingKeys.self), d = Config()
            varianceType = try c.value(.varianceType, d.varianceType)
            clipSample = try c.value(.clipSample, d.clipSample)
            clipSampleRange = try c.value(.clipSampleRange, d.clipSampleRange)
            predictionType = try c.value(.predictionType, d.predictionType)
            thresholding = try c.value(.thresholding, d.thresholding)
            timestepSpacing = try c.value(.timestepSpacing, d.timestepSpacing)
            stepsOffset = try c.value(.stepsOffset, d.stepsOffset)
        }

        public func encode(to encoder: Encoder) throws {
            try betas.encode(to: encoder)
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(varianceType, forKey: .varianceType); try c.encode(clipSample, forKey: .clipSample)
            try c.encode(clipSampleRange, forKey: .clipSampleRange); try c.encode(predictionType, forKey: .predictionType)
            try c.encode(thresholding, forKey: .thresholding); try c.encode(timestepSpacing, forKey: .timestepSpacing)
            try c.encode(stepsOffset, forKey: .stepsOffset)
        }
    }

    public let config: Config
    public let schedule: NoiseSchedule
    public let predictionType: PredictionType
    public let varianceType: VarianceType
    public let spacing: TimestepSpacing
    public private(set) var timesteps: [Float]
    public var initNoiseSigma: Float { 1 }
    /// nil until setTimesteps: then the previous timestep is t − 1 (diffusers' num_inference_steps None).
    public private(set) var inferenceStepCount: Int?
    private var plan: [Int]

    public init(config: Config) throws {
        let cls = Self.diffusersClassName
        guard let p = PredictionType(rawValue: config.predictionType) else {
            throw SchedulerError("scheduler config: prediction_type '\(config.predictionType)' is not supported by \(cls) "
                                 + "(epsilon, v_prediction, sample)")
        }
        guard let v = VarianceType(rawValue: config.varianceType) else {
            throw SchedulerError("scheduler config: variance_type '\(config.varianceType)' is not supported by \(cls) "
                                 + "(fixed_small, fixed_small_log, fixed_large)")
        }
        guard let s = TimestepSpacing(rawValue: config.timestepSpacing) else {
            throw SchedulerError("scheduler config: timestep_spacing '\(config.timestepSpacing)' is not supported (linspace, leading, trailing)")
        }
        try refuseThresholding(config.thresholding)
        self.config = config
        schedule = try config.betas.noiseSchedule(p)
        predictionType = p; varianceType = v; spacing = s
        plan = Array((0..<schedule.trainTimesteps).reversed())
        timesteps = plan.map(Float.init)
    }

    public func setTimesteps(_ count: Int) throws {
        try checkStepCount(count, trainTimesteps: schedule.trainTimesteps, Self.diffusersClassName)
        plan = spacedTimesteps(spacing, trainTimesteps: schedule.trainTimesteps, count: count, stepsOffset: config.stepsOffset).map { Int($0) }
        timesteps = plan.map(Float.init)
        inferenceStepCount = count
    }

    public func reset() {}

    public func needsNoise(at timestep: Float) -> Bool { timestep > 0 }

    /// The forward process x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε at one timestep (diffusers DDPMScheduler.add_noise).
    public func addNoise(_ x0: UnsafePointer<Float>, noise: UnsafePointer<Float>, timestep t: Int, count: Int,
                         into out: UnsafeMutablePointer<Float>) throws {
        guard t >= 0, t < schedule.trainTimesteps else {
            throw SchedulerError("\(Self.diffusersClassName).addNoise: timestep \(t) is outside 0..<\(schedule.trainTimesteps)")
        }
        schedule.addNoise(x0, noise: noise, timestep: t, count: count, into: out)
    }

    /// diffusers `previous_timestep`: the next timestep of the plan (−1 after the last), or t − 1 without a plan.
    public func previousTimestep(_ t: Int) throws -> Int {
        guard inferenceStepCount != nil else { return t - 1 }
        guard let i = plan.firstIndex(of: t) else {
            throw SchedulerError("\(Self.diffusersClassName).step: timestep \(t) is not in the schedule's timesteps")
        }
        return i == plan.count - 1 ? -1 : plan[i + 1]
    }

    public func step(modelOutput m: UnsafePointer<Float>, timestep: Float, sample x: UnsafePointer<Float>, noise: UnsafePointer<Float>?,
                     count n: Int, into out: UnsafeMutablePointer<Float>) throws {
        let t = try discreteTimestep(timestep, Self.diffusersClassName)
        guard t >= 0, t < schedule.trainTimesteps else {
            throw SchedulerError("\(Self.diffusersClassName).step: timestep \(t) is outside 0..<\(schedule.trainTimesteps)")
        }
        let prevT = try previousTimestep(t)
        if t > 0 && noise == nil {
            throw SchedulerError("\(Self.diffusersClassName).step: the step at timestep \(t) adds noise; none was given")
        }
        // Ref: diffusers DDPMScheduler.step, float32 scalars in its order of operations.
        let alphaProdT = schedule.alphasCumprod[t]
        let alphaProdTPrev: Float = prevT >= 0 ? schedule.alphasCumprod[prevT] : 1
        let betaProdT = 1 - alphaProdT
        let betaProdTPrev = 1 - alphaProdTPrev
        let currentAlphaT = alphaProdT / alphaProdTPrev
        let currentBetaT = 1 - currentAlphaT
        let sqrtAlphaProdT = alphaProdT.squareRoot(), sqrtBetaProdT = betaProdT.squareRoot()
        let clip = config.clipSample, range = Float(config.clipSampleRange)
        let x0Coeff = (alphaProdTPrev.squareRoot() * currentBetaT) / betaProdT
        let xtCoeff = currentAlphaT.squareRoot() * betaProdTPrev / betaProdT
        // σ of the added noise (variance_type); 0 at t = 0.
        var std: Float = 0
        if t > 0 {
            var variance = (1 - alphaProdTPrev) / (1 - alphaProdT) * currentBetaT
            variance = max(variance, 1e-20)
            switch varianceType {
            case .fixedSmall: std = variance.squareRoot()
            case .fixedSmallLog: std = exp(0.5 * log(variance))
            case .fixedLarge: std = currentBetaT.squareRoot()
            }
        }
        for i in 0..<n {
            var x0: Float
            switch predictionType {
            case .epsilon: x0 = (x[i] - sqrtBetaProdT * m[i]) / sqrtAlphaProdT
            case .sample: x0 = m[i]
            case .vPrediction: x0 = sqrtAlphaProdT * x[i] - sqrtBetaProdT * m[i]
            }
            if clip { x0 = min(max(x0, -range), range) }
            var prev = x0Coeff * x0 + xtCoeff * x[i]
            if t > 0 { prev = prev + std * noise![i] }
            out[i] = prev
        }
    }
}
