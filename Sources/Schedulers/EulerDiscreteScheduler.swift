// Euler's method on the probability-flow ODE in σ-space (Karras et al. 2022, Algorithm 2 without churn):
// x̂0 from the model output, d = (x − x̂0)/σ_i, x_{i+1} = x + d·(σ_{i+1} − σ_i). The model sees x/√(σ² + 1).
//
// Matches diffusers EulerDiscreteScheduler (scheduling_euler_discrete.py) with its default step arguments
// (s_churn = 0): timestep_spacing linspace / leading / trailing with steps_offset, interpolation_type linear /
// log_linear, use_karras_sigmas, final_sigmas_type zero / sigma_min, timestep_type discrete / continuous (continuous
// only changes the timesteps, with v_prediction, as in diffusers), prediction types epsilon / v_prediction / sample.
// Not supported: use_exponential_sigmas, use_beta_sigmas, s_churn > 0, custom timestep or sigma lists,
// rescale_betas_zero_snr.
import Foundation

public final class EulerDiscreteScheduler: Scheduler {
    public static let diffusersClassName = "EulerDiscreteScheduler"

    /// EulerDiscreteScheduler's config keys and defaults.
    public struct Config: Codable, Sendable, Equatable {
        public var betas = BetaScheduleConfig()
        public var predictionType = "epsilon"
        public var interpolationType = "linear"
        public var useKarrasSigmas = false
        public var useExponentialSigmas = false
        public var useBetaSigmas = false
        public var sigmaMin: Double?
        public var sigmaMax: Double?
        public var timestepSpacing = "linspace"
        public var timestepType = "discrete"
        public var stepsOffset = 0
        public var finalSigmasType = "zero"

        enum CodingKeys: String, CodingKey {
            case predictionType = "prediction_type", interpolationType = "interpolation_type", useKarrasSigmas = "use_karras_sigmas"
            case useExponentialSigmas = "use_exponential_sigmas", useBetaSigmas = "use_beta_sigmas", sigmaMin = "sigma_min"
            case sigmaMax = "sigma_max", timestepSpacing = "timestep_spacing", timestepType = "timestep_type"
            case stepsOffset = "steps_offset", finalSigmasType = "final_sigmas_type"
        }

        public init() {}

        public init(from decoder: Decoder) throws {
            betas = try BetaScheduleConfig(from: decoder)
            let c = try decoder.container(keyedBy: CodingKeys.self), d = Config()
            predictionType = try c.value(.predictionType, d.predictionType)
            interpolationType = try c.value(.interpolationType, d.interpolationType)
            useKarrasSigmas = try c.value(.useKarrasSigmas, d.useKarrasSigmas)
            useExponentialSigmas = try c.value(.useExponentialSigmas, d.useExponentialSigmas)
            useBetaSigmas = try c.value(.useBetaSigmas, d.useBetaSigmas)
            sigmaMin = try c.decodeIfPresent(Double.self, forKey: .sigmaMin)
            sigmaMax = try c.decodeIfPresent(Double.self, forKey: .sigmaMax)
            timestepSpacing = try c.value(.timestepSpacing, d.timestepSpacing)
            timestepType = try c.value(.timestepType, d.timestepType)
            stepsOffset = try c.value(.stepsOffset, d.stepsOffset)
            finalSigmasType = try c.value(.finalSigmasType, d.finalSigmasType)
        }

        public func encode(to encoder: Encoder) throws {
            try betas.encode(to: encoder)
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(predictionType, forKey: .predictionType); try c.encode(interpolationType, forKey: .interpolationType)
            try c.encode(useKarrasSigmas, forKey: .useKarrasSigmas)
            try c.encode(useExponentialSigmas, forKey: .useExponentialSigmas); try c.encode(useBetaSigmas, forKey: .useBetaSigmas)
            try c.encodeIfPresent(sigmaMin, forKey: .sigmaMin); try c.encodeIfPresent(sigmaMax, forKey: .sigmaMax)
            try c.encode(timestepSpacing, forKey: .timestepSpacing); try c.encode(timestepType, forKey: .timestepType)
            try c.encode(stepsOffset, forKey: .stepsOffset); try c.encode(finalSigmasType, forKey: .finalSigmasType)
        }
    }

    public let config: Config
    public let schedule: NoiseSchedule
    public let predictionType: PredictionType
    public let spacing: TimestepSpacing
    public private(set) var timesteps: [Float] = []
    /// σ_0 > σ_1 > … > σ_N (σ_N = 0 or σ_min): one per timestep plus the final one.
    public private(set) var sigmas: [Float] = []
    public private(set) var stepIndex: Int?
    private let logLinear: Bool
    private let continuousTimesteps: Bool

    public init(config: Config) throws {
        guard let p = PredictionType(rawValue: config.predictionType) else {
            throw SchedulerError("scheduler config: prediction_type '\(config.predictionType)' is not supported by "
                                 + "\(Self.diffusersClassName) (epsilon, v_prediction, sample)")
        }
        guard let s = TimestepSpacing(rawValue: config.timestepSpacing) else {
            throw SchedulerError("scheduler config: timestep_spacing '\(config.timestepSpacing)' is not supported (linspace, leading, trailing)")
        }
        guard config.interpolationType == "linear" || config.interpolationType == "log_linear" else {
            throw SchedulerError("scheduler config: interpolation_type '\(config.interpolationType)' is not supported (linear, log_linear)")
        }
        guard config.timestepType == "discrete" || config.timestepType == "continuous" else {
            throw SchedulerError("scheduler config: timestep_type '\(config.timestepType)' is not supported (discrete, continuous)")
        }
        guard config.finalSigmasType == "zero" || config.finalSigmasType == "sigma_min" else {
            throw SchedulerError("scheduler config: final_sigmas_type '\(config.finalSigmasType)' is not supported (zero, sigma_min)")
        }
        guard !config.useExponentialSigmas, !config.useBetaSigmas else {
            throw SchedulerError("scheduler config: use_exponential_sigmas / use_beta_sigmas are not supported (use_karras_sigmas is)")
        }
        self.config = config
        schedule = try config.betas.noiseSchedule(p)
        predictionType = p; spacing = s
        logLinear = config.interpolationType == "log_linear"
        continuousTimesteps = config.timestepType == "continuous" && p == .vPrediction
    }

    /// diffusers `init_noise_sigma`: σ_max for linspace / trailing spacing, else √(σ_max² + 1).
    public var initNoiseSigma: Float {
        let maxSigma = sigmas.max() ?? trainingSigmas(schedule.alphasCumprod).max()!
        return spacing == .leading ? (maxSigma * maxSigma + 1).squareRoot() : maxSigma
    }

    public func setTimesteps(_ count: Int) throws {
        try checkStepCount(count, trainTimesteps: Int.max, Self.diffusersClassName)
        let nTrain = schedule.trainTimesteps
        // Ref: diffusers EulerDiscreteScheduler.set_timesteps. Timesteps are float32 here (linspace is not rounded).
        var ts: [Double]
        switch spacing {
        case .linspace: ts = npLinspace(0, Double(nTrain - 1), count).reversed().map { Double(Float($0)) }
        case .leading, .trailing:
            ts = spacedTimesteps(spacing, trainTimesteps: nTrain, count: count, stepsOffset: config.stepsOffset)
        }
        let trainSigmas = trainingSigmas(schedule.alphasCumprod)
        let logSigmas = logFloat(trainSigmas)
        var sig: [Double]
        if logLinear {
            // torch.linspace(log σ_first, log σ_last, N + 1).exp() in float32.
            // (N + 1 sigmas, then the final one appended: diffusers' log_linear plan has one sigma more.)
            sig = linspace(logSigmas[nTrain - 1], logSigmas[0], count + 1).map { Double(exp($0)) }
        } else {
            let fp = trainSigmas.map(Double.init)
            sig = ts.map { npInterp($0, fp) }
        }
        if config.useKarrasSigmas {
            // From the interpolated sigmas' ends (float64), not the training range's.
            sig = karrasSigmas(sigmaMin: config.sigmaMin ?? sig[sig.count - 1], sigmaMax: config.sigmaMax ?? sig[0], count: count)
            ts = sig.map { sigmaToT($0, logSigmas: logSigmas) }
        }
        let sigmaLast: Double = config.finalSigmasType == "sigma_min"
            ? Double(((1 - schedule.alphasCumprod[0]) / schedule.alphasCumprod[0]).squareRoot()) : 0
        sigmas = (sig + [sigmaLast]).map { Float($0) }
        if continuousTimesteps {
            timesteps = sigmas.dropLast().map { 0.25 * log($0) }
        } else {
            timesteps = ts.map { Float($0) }
        }
        stepIndex = nil
    }

    public func reset() { stepIndex = nil }

    /// diffusers `index_for_timestep`: the first match, or the second when the timestep occurs twice.
    private func index(of t: Float) throws -> Int {
        let matches = timesteps.indices.filter { timesteps[$0] == t }
        guard let first = matches.first else {
            throw SchedulerError("\(Self.diffusersClassName): timestep \(t) is not in the schedule's timesteps")
        }
        return matches.count > 1 ? matches[1] : first
    }

    public func scaleModelInput(_ sample: UnsafePointer<Float>, timestep: Float, count n: Int, into out: UnsafeMutablePointer<Float>) throws {
        guard !sigmas.isEmpty else { throw SchedulerError("\(Self.diffusersClassName): call setTimesteps first") }
        if stepIndex == nil { stepIndex = try index(of: timestep) }
        let sigma = sigmas[stepIndex!]
        let scale = (sigma * sigma + 1).squareRoot()
        for i in 0..<n { out[i] = sample[i] / scale }
    }

    public func step(modelOutput m: UnsafePointer<Float>, timestep: Float, sample x: UnsafePointer<Float>, noise: UnsafePointer<Float>?,
                     count n: Int, into out: UnsafeMutablePointer<Float>) throws {
        guard !sigmas.isEmpty else { throw SchedulerError("\(Self.diffusersClassName).step: call setTimesteps first") }
        if stepIndex == nil { stepIndex = try index(of: timestep) }
        let i0 = stepIndex!
        guard i0 + 1 < sigmas.count else {
            throw SchedulerError("\(Self.diffusersClassName).step: all \(timesteps.count) steps are done; call reset or setTimesteps")
        }
        // Ref: diffusers EulerDiscreteScheduler.step with s_churn = 0 (γ = 0, σ̂ = σ).
        let sigma = sigmas[i0]
        let sigmaHat = sigma * (0 + 1)
        let dt = sigmas[i0 + 1] - sigmaHat
        let vScale = -sigma / (sigma * sigma + 1).squareRoot(), vDiv = sigma * sigma + 1
        for i in 0..<n {
            let x0: Float
            switch predictionType {
            case .sample: x0 = m[i]
            case .epsilon: x0 = x[i] - sigmaHat * m[i]
            case .vPrediction: x0 = m[i] * vScale + x[i] / vDiv
            }
            let derivative = (x[i] - x0) / sigmaHat
            out[i] = x[i] + derivative * dt
        }
        stepIndex = i0 + 1
    }
}
