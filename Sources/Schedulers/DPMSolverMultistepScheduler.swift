// DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b): exponential-integrator multistep solvers in
// λ = log(α_t/σ_t). With h = λ_t − λ_s, DPM-Solver++ (data prediction x̂0 = D) steps
//   1st order:  x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·D_0
//   2nd order:  … − ½·α_t·(e^{−h} − 1)·D_1 (midpoint) or + α_t·((e^{−h} − 1)/h + 1)·D_1 (heun),
//               D_1 = (D_0 − D_{−1})/r_0, r_0 = h_{−1}/h
//   3rd order:  with D_2 from three outputs,
// and DPM-Solver (noise prediction) the same in ε with α and σ swapped. The SDE variants add σ_t·√(1 − e^{−2h})·z.
// HG-DPO samples with DPM-Solver++ 2M, 50 steps, from SD 1.5's config.
//
// Matches diffusers DPMSolverMultistepScheduler (scheduling_dpmsolver_multistep.py): algorithm_type dpmsolver++,
// dpmsolver, sde-dpmsolver++, sde-dpmsolver; solver_order 1, 2, 3; solver_type midpoint / heun; lower_order_final,
// euler_at_final, final_sigmas_type zero / sigma_min; timestep_spacing linspace / leading / trailing with
// steps_offset; lambda_min_clipped; use_karras_sigmas; prediction types epsilon / v_prediction / sample. The
// history of converted model outputs is kept between steps, as diffusers' `model_outputs`. Not supported (refused):
// thresholding, learned variance_type, use_exponential_sigmas, use_beta_sigmas, use_lu_lambdas, use_flow_sigmas /
// flow_prediction, dynamic shifting, custom timestep lists, rescale_betas_zero_snr.
import Foundation

public final class DPMSolverMultistepScheduler: Scheduler {
    public static let diffusersClassName = "DPMSolverMultistepScheduler"

    public enum Algorithm: String, Codable, Sendable, CaseIterable {
        case dpmSolverPlusPlus = "dpmsolver++", dpmSolver = "dpmsolver"
        case sdeDPMSolverPlusPlus = "sde-dpmsolver++", sdeDPMSolver = "sde-dpmsolver"
        var isSDE: Bool { self == .sdeDPMSolverPlusPlus || self == .sdeDPMSolver }
        /// Data prediction (x̂0) rather than noise prediction (ε̂).
        var predictsData: Bool { self == .dpmSolverPlusPlus || self == .sdeDPMSolverPlusPlus }
    }

    /// DPMSolverMultistepScheduler's config keys and defaults.
    public struct Config: Codable, Sendable, Equatable {
        public var betas = BetaScheduleConfig()
        public var solverOrder = 2
        public var predictionType = "epsilon"
        public var thresholding = false
        public var algorithmType = "dpmsolver++"
        public var solverType = "midpoint"
        public var lowerOrderFinal = true
        public var eulerAtFinal = false
        public var useKarrasSigmas = false
        public var useExponentialSigmas = false
        public var useBetaSigmas = false
        public var useLuLambdas = false
        public var useFlowSigmas = false
        public var finalSigmasType = "zero"
        public var lambdaMinClipped = -Double.infinity
        public var varianceType: String?
        public var timestepSpacing = "linspace"
        public var stepsOffset = 0
        public var useDynamicShifting = false
        /// Not init arguments of this class, but kept from another class's config and read by `_convert_to_karras`
        /// (diffusers registers such "hidden" keys, e.g. an EulerDiscreteScheduler config's sigma_min).
        public var sigmaMin: Double?
        public var sigmaMax: Double?

        enum CodingKeys: String, CodingKey {
            case solverOrder = "solver_order", predictionType = "prediction_type", thresholding, algorithmType = "algorithm_type"
            case solverType = "solver_type", lowerOrderFinal = "lower_order_final", eulerAtFinal = "euler_at_final"
            case useKarrasSigmas = "use_karras_sigmas", useExponentialSigmas = "use_exponential_sigmas"
            case useBetaSigmas = "use_beta_sigmas", useLuLambdas = "use_lu_lambdas", useFlowSigmas = "use_flow_sigmas"
            case finalSigmasType = "final_sigmas_type", lambdaMinClipped = "lambda_min_clipped", varianceType = "variance_type"
            case timestepSpacing = "timestep_spacing", stepsOffset = "steps_offset", useDynamicShifting = "use_dynamic_shifting"
            case sigmaMin = "sigma_min", sigmaMax = "sigma_max"
        }

        public init() {}

        public init(from decoder: Decoder) throws {
            betas = try BetaScheduleConfig(from: decoder)
            let c = try decoder.container(keyedBy: CodingKeys.self), d = Config()
            solverOrder = try c.value(.solverOrder, d.solverOrder)
            predictionType = try c.value(.predictionType, d.predictionType)
            thresholding = try c.value(.thresholding, d.thresholding)
            algorithmType = try c.value(.algorithmType, d.algorithmType)
            solverType = try c.value(.solverType, d.solverType)
            lowerOrderFinal = try c.value(.lowerOrderFinal, d.lowerOrderFinal)
            eulerAtFinal = try c.value(.eulerAtFinal, d.eulerAtFinal)
            useKarrasSigmas = try c.value(.useKarrasSigmas, d.useKarrasSigmas)
            useExponentialSigmas = try c.value(.useExponentialSigmas, d.useExponentialSigmas)
            useBetaSigmas = try c.value(.useBetaSigmas, d.useBetaSigmas)
            useLuLambdas = try c.value(.useLuLambdas, d.useLuLambdas)
            useFlowSigmas = try c.value(.useFlowSigmas, d.useFlowSigmas)
            finalSigmasType = try c.value(.finalSigmasType, d.finalSigmasType)
            lambdaMinClipped = try c.value(.lambdaMinClipped, d.lambdaMinClipped)
            varianceType = try c.decodeIfPresent(String.self, forKey: .varianceType)
            timestepSpacing = try c.value(.timestepSpacing, d.timestepSpacing)
            stepsOffset = try c.value(.stepsOffset, d.stepsOffset)
            useDynamicShifting = try c.value(.useDynamicShifting, d.useDynamicShifting)
            sigmaMin = try c.decodeIfPresent(Double.self, forKey: .sigmaMin)
            sigmaMax = try c.decodeIfPresent(Double.self, forKey: .sigmaMax)
        }

        public func encode(to encoder: Encoder) throws {
            try betas.encode(to: encoder)
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(solverOrder, forKey: .solverOrder); try c.encode(predictionType, forKey: .predictionType)
            try c.encode(thresholding, forKey: .thresholding); try c.encode(algorithmType, forKey: .algorithmType)
            try c.encode(solverType, forKey: .solverType); try c.encode(lowerOrderFinal, forKey: .lowerOrderFinal)
            try c.encode(eulerAtFinal, forKey: .eulerAtFinal); try c.encode(useKarrasSigmas, forKey: .useKarrasSigmas)
            try c.encode(useExponentialSigmas, forKey: .useExponentialSigmas); try c.encode(useBetaSigmas, forKey: .useBetaSigmas)
            try c.encode(useLuLambdas, forKey: .useLuLambdas); try c.encode(useFlowSigmas, forKey: .useFlowSigmas)
            try c.encode(finalSigmasType, forKey: .finalSigmasType)
            if lambdaMinClipped.isFinite { try c.encode(lambdaMinClipped, forKey: .lambdaMinClipped) }
            try c.encodeIfPresent(varianceType, forKey: .varianceType); try c.encode(timestepSpacing, forKey: .timestepSpacing)
            try c.encode(stepsOffset, forKey: .stepsOffset); try c.encode(useDynamicShifting, forKey: .useDynamicShifting)
            try c.encodeIfPresent(sigmaMin, forKey: .sigmaMin); try c.encodeIfPresent(sigmaMax, forKey: .sigmaMax)
        }
    }

    public let config: Config
    public let schedule: NoiseSchedule
    public let predictionType: PredictionType
    public let algorithm: Algorithm
    public let solverOrder: Int
    public let heun: Bool
    public let spacing: TimestepSpacing
    public private(set) var timesteps: [Float] = []
    /// σ_0 > … > σ_N (σ_N = 0 or σ_min), in diffusers' σ = √((1 − ᾱ)/ᾱ) parameterisation.
    public private(set) var sigmas: [Float] = []
    public var initNoiseSigma: Float { 1 }
    public private(set) var stepIndex: Int?
    /// Converted model outputs of the last `solverOrder` steps, oldest first (diffusers' `model_outputs`).
    private var history: [[Float]?]
    private var lowerOrderNums = 0

    public init(config: Config) throws {
        let cls = Self.diffusersClassName
        guard let p = PredictionType(rawValue: config.predictionType) else {
            throw SchedulerError("scheduler config: prediction_type '\(config.predictionType)' is not supported by \(cls) "
                                 + "(epsilon, v_prediction, sample)")
        }
        // diffusers maps the DEIS names onto DPM-Solver++ / midpoint when a DEIS or UniPC config is loaded.
        let algorithmName = config.algorithmType == "deis" ? "dpmsolver++" : config.algorithmType
        guard let a = Algorithm(rawValue: algorithmName) else {
            throw SchedulerError("scheduler config: algorithm_type '\(config.algorithmType)' is not supported "
                                 + "(dpmsolver++, dpmsolver, sde-dpmsolver++, sde-dpmsolver)")
        }
        let solverName = ["logrho", "bh1", "bh2"].contains(config.solverType) ? "midpoint" : config.solverType
        guard solverName == "midpoint" || solverName == "heun" else {
            throw SchedulerError("scheduler config: solver_type '\(config.solverType)' is not supported (midpoint, heun)")
        }
        guard (1...3).contains(config.solverOrder) else {
            throw SchedulerError("scheduler config: solver_order \(config.solverOrder) is not supported (1, 2, 3)")
        }
        if config.solverOrder == 3 && a == .sdeDPMSolver {
            throw SchedulerError("scheduler config: solver_order 3 with algorithm_type sde-dpmsolver is not defined in diffusers")
        }
        guard let s = TimestepSpacing(rawValue: config.timestepSpacing) else {
            throw SchedulerError("scheduler config: timestep_spacing '\(config.timestepSpacing)' is not supported (linspace, leading, trailing)")
        }
        guard config.finalSigmasType == "zero" || config.finalSigmasType == "sigma_min" else {
            throw SchedulerError("scheduler config: final_sigmas_type '\(config.finalSigmasType)' is not supported (zero, sigma_min)")
        }
        // (diffusers checks the name as given, so a "deis" config with final_sigmas_type zero is refused too.)
        if !["dpmsolver++", "sde-dpmsolver++"].contains(config.algorithmType) && config.finalSigmasType == "zero" {
            throw SchedulerError("scheduler config: final_sigmas_type zero is not supported with algorithm_type "
                                 + "\(config.algorithmType) (diffusers refuses it too); use sigma_min")
        }
        try refuseThresholding(config.thresholding)
        if let v = config.varianceType {
            throw SchedulerError("scheduler config: variance_type '\(v)' (learned variances) is not supported")
        }
        for (on, key) in [(config.useExponentialSigmas, "use_exponential_sigmas"), (config.useBetaSigmas, "use_beta_sigmas"),
                          (config.useLuLambdas, "use_lu_lambdas"), (config.useFlowSigmas, "use_flow_sigmas"),
                          (config.useDynamicShifting, "use_dynamic_shifting")] where on {
            throw SchedulerError("scheduler config: \(key) is not supported by hgdpo's \(cls) (use_karras_sigmas is)")
        }
        if config.useKarrasSigmas && config.useExponentialSigmas || config.useKarrasSigmas && config.useBetaSigmas {
            throw SchedulerError("scheduler config: only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be set")
        }
        self.config = config
        schedule = try config.betas.noiseSchedule(p)
        predictionType = p; algorithm = a; solverOrder = config.solverOrder; heun = solverName == "heun"; spacing = s
        history = Array(repeating: nil, count: config.solverOrder)
    }

    public func setTimesteps(_ count: Int) throws {
        let cls = Self.diffusersClassName
        guard count >= 1 else { throw SchedulerError("\(cls): the number of inference steps must be at least 1, is \(count)") }
        let nTrain = schedule.trainTimesteps
        let ac = schedule.alphasCumprod
        // Ref: diffusers DPMSolverMultistepScheduler.set_timesteps.
        // last_timestep = num_train − searchsorted(flip(λ), lambda_min_clipped): drop the timesteps whose λ is below it.
        let lambdas = ac.map { log($0.squareRoot()) - log((1 - $0).squareRoot()) }
        let clippedIdx = lambdas.filter { Double($0) < config.lambdaMinClipped }.count
        let lastTimestep = nTrain - clippedIdx
        var ts: [Double]
        switch spacing {
        case .linspace:
            ts = Array(npLinspace(0, Double(lastTimestep - 1), count + 1).map(npRound).reversed().dropLast())
        case .leading:
            let ratio = lastTimestep / (count + 1)
            ts = (1...count).reversed().map { Double($0 * ratio + config.stepsOffset) }
        case .trailing:
            let ratio = Double(nTrain) / Double(count)
            ts = npArange(Double(lastTimestep), 0, -ratio).map { npRound($0) - 1 }
        }
        let trainSigmas = trainingSigmas(ac)
        var sig: [Double]
        if config.useKarrasSigmas {
            let logSigmas = logFloat(trainSigmas)
            // From the training sigmas flipped (float32 ends), unless the config sets sigma_min / sigma_max.
            sig = karrasSigmas(sigmaMin: config.sigmaMin ?? Double(trainSigmas[0]),
                               sigmaMax: config.sigmaMax ?? Double(trainSigmas[nTrain - 1]), count: count)
            ts = sig.map { sigmaToT($0, logSigmas: logSigmas) }
            if config.betas.betaSchedule != "squaredcos_cap_v2" { ts = ts.map(npRound) }
        } else {
            let fp = trainSigmas.map(Double.init)
            sig = ts.map { npInterp($0, fp) }
        }
        let sigmaLast: Double = config.finalSigmasType == "sigma_min" ? Double(((1 - ac[0]) / ac[0]).squareRoot()) : 0
        sigmas = (sig + [sigmaLast]).map { Float($0) }
        // int64 timesteps: torch's .to(int64) truncates (only fractional for the cosine schedule with Karras sigmas).
        timesteps = ts.map { Float(Int($0)) }
        reset()
    }

    public func reset() {
        history = Array(repeating: nil, count: solverOrder)
        lowerOrderNums = 0
        stepIndex = nil
    }

    public func needsNoise(at timestep: Float) -> Bool { algorithm.isSDE }

    /// diffusers `index_for_timestep`: the first match, the second when it occurs twice, the last step when absent.
    private func index(of t: Float) -> Int {
        let matches = timesteps.indices.filter { timesteps[$0] == t }
        if matches.isEmpty { return timesteps.count - 1 }
        return matches.count > 1 ? matches[1] : matches[0]
    }

    /// (α_t, σ_t) of a σ: α = 1/√(σ² + 1), σ_t = σ·α (diffusers `_sigma_to_alpha_sigma_t`).
    @inline(__always) private func alphaSigma(_ sigma: Float) -> (alpha: Float, sigma: Float) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    public func step(modelOutput m: UnsafePointer<Float>, timestep: Float, sample x: UnsafePointer<Float>, noise: UnsafePointer<Float>?,
                     count n: Int, into out: UnsafeMutablePointer<Float>) throws {
        let cls = Self.diffusersClassName
        guard !timesteps.isEmpty else { throw SchedulerError("\(cls).step: call setTimesteps first") }
        if stepIndex == nil { stepIndex = index(of: timestep) }
        let i = stepIndex!
        guard i + 1 < sigmas.count else {
            throw SchedulerError("\(cls).step: all \(timesteps.count) steps are done; call reset or setTimesteps")
        }
        if algorithm.isSDE && noise == nil { throw SchedulerError("\(cls).step: algorithm_type \(algorithm.rawValue) adds noise; none was given") }
        let steps = timesteps.count
        // Ref: diffusers DPMSolverMultistepScheduler.step.
        let lowerOrderFinal = i == steps - 1
            && (config.eulerAtFinal || (config.lowerOrderFinal && steps < 15) || config.finalSigmasType == "zero")
        let lowerOrderSecond = i == steps - 2 && config.lowerOrderFinal && steps < 15

        let converted = convertModelOutput(m, sample: x, count: n, stepIndex: i)
        for k in 0..<(solverOrder - 1) { history[k] = history[k + 1] }
        history[solverOrder - 1] = converted

        if solverOrder == 1 || lowerOrderNums < 1 || lowerOrderFinal {
            firstOrderUpdate(converted, sample: x, noise: noise, count: n, stepIndex: i, into: out)
        } else if solverOrder == 2 || lowerOrderNums < 2 || lowerOrderSecond {
            secondOrderUpdate(sample: x, noise: noise, count: n, stepIndex: i, into: out)
        } else {
            thirdOrderUpdate(sample: x, noise: noise, count: n, stepIndex: i, into: out)
        }
        if lowerOrderNums < solverOrder { lowerOrderNums += 1 }
        stepIndex = i + 1
    }

    // MARK: - The solver's pieces (diffusers' methods of the same names)

    /// x̂0 for the ++ algorithms, ε̂ for the others (diffusers `convert_model_output`).
    private func convertModelOutput(_ m: UnsafePointer<Float>, sample x: UnsafePointer<Float>, count n: Int, stepIndex i: Int) -> [Float] {
        let (alpha_t, sigma_t) = alphaSigma(sigmas[i])
        var r = [Float](repeating: 0, count: n)
        switch (algorithm.predictsData, predictionType) {
        case (true, .epsilon): for j in 0..<n { r[j] = (x[j] - sigma_t * m[j]) / alpha_t }
        case (true, .sample), (false, .epsilon): for j in 0..<n { r[j] = m[j] }
        case (true, .vPrediction): for j in 0..<n { r[j] = alpha_t * x[j] - sigma_t * m[j] }
        case (false, .sample): for j in 0..<n { r[j] = (x[j] - alpha_t * m[j]) / sigma_t }
        case (false, .vPrediction): for j in 0..<n { r[j] = alpha_t * m[j] + sigma_t * x[j] }
        }
        return r
    }

    /// λ = log α − log σ of a σ, with its (α, σ).
    private func lambda(_ sigma: Float) -> (alpha: Float, sigma: Float, lambda: Float) {
        let (a, s) = alphaSigma(sigma)
        return (a, s, log(a) - log(s))
    }

    private func firstOrderUpdate(_ m0: [Float], sample x: UnsafePointer<Float>, noise z: UnsafePointer<Float>?, count n: Int,
                                  stepIndex i: Int, into out: UnsafeMutablePointer<Float>) {
        let (alpha_t, sigma_t, lambda_t) = lambda(sigmas[i + 1])
        let (alpha_s, sigma_s, lambda_s) = lambda(sigmas[i])
        let h = lambda_t - lambda_s
        switch algorithm {
        case .dpmSolverPlusPlus:
            let cx = sigma_t / sigma_s, cd = alpha_t * (exp(-h) - 1)
            for j in 0..<n { out[j] = cx * x[j] - cd * m0[j] }
        case .dpmSolver:
            let cx = alpha_t / alpha_s, cd = sigma_t * (exp(h) - 1)
            for j in 0..<n { out[j] = cx * x[j] - cd * m0[j] }
        case .sdeDPMSolverPlusPlus:
            let cx = sigma_t / sigma_s * exp(-h), cd = alpha_t * (1 - exp(-2 * h)), cz = sigma_t * (1 - exp(-2 * h)).squareRoot()
            for j in 0..<n { out[j] = cx * x[j] + cd * m0[j] + cz * z![j] }
        case .sdeDPMSolver:
            let cx = alpha_t / alpha_s, cd = 2 * (sigma_t * (exp(h) - 1)), cz = sigma_t * (exp(2 * h) - 1).squareRoot()
            for j in 0..<n { out[j] = cx * x[j] - cd * m0[j] + cz * z![j] }
        }
    }

    private func secondOrderUpdate(sample x: UnsafePointer<Float>, noise z: UnsafePointer<Float>?, count n: Int, stepIndex i: Int,
                                   into out: UnsafeMutablePointer<Float>) {
        let (alpha_t, sigma_t, lambda_t) = lambda(sigmas[i + 1])
        let (alpha_s0, sigma_s0, lambda_s0) = lambda(sigmas[i])
        let (_, _, lambda_s1) = lambda(sigmas[i - 1])
        let m0 = history[solverOrder - 1]!, m1 = history[solverOrder - 2]!
        let h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1
        let r0 = h_0 / h
        let cD1 = 1 / r0                                         // D1 = (1/r0)·(m0 − m1)
        // x_t = cx·x − c0·D0 − c1·D1 (+ cz·z); the signs of diffusers' expressions are kept in the coefficients' use.
        switch algorithm {
        case .dpmSolverPlusPlus:
            let cx = sigma_t / sigma_s0, c0 = alpha_t * (exp(-h) - 1)
            if heun {
                let c1 = alpha_t * ((exp(-h) - 1) / h + 1)
                for j in 0..<n { out[j] = cx * x[j] - c0 * m0[j] + c1 * (cD1 * (m0[j] - m1[j])) }
            } else {
                let c1 = 0.5 * (alpha_t * (exp(-h) - 1))
                for j in 0..<n { out[j] = cx * x[j] - c0 * m0[j] - c1 * (cD1 * (m0[j] - m1[j])) }
            }
        case .dpmSolver:
            let cx = alpha_t / alpha_s0, c0 = sigma_t * (exp(h) - 1)
            let c1 = heun ? sigma_t * ((exp(h) - 1) / h - 1) : 0.5 * (sigma_t * (exp(h) - 1))
            for j in 0..<n { out[j] = cx * x[j] - c0 * m0[j] - c1 * (cD1 * (m0[j] - m1[j])) }
        case .sdeDPMSolverPlusPlus:
            let cx = sigma_t / sigma_s0 * exp(-h), c0 = alpha_t * (1 - exp(-2 * h))
            let c1 = heun ? alpha_t * ((1 - exp(-2 * h)) / (-2 * h) + 1) : 0.5 * (alpha_t * (1 - exp(-2 * h)))
            let cz = sigma_t * (1 - exp(-2 * h)).squareRoot()
            for j in 0..<n { out[j] = cx * x[j] + c0 * m0[j] + c1 * (cD1 * (m0[j] - m1[j])) + cz * z![j] }
        case .sdeDPMSolver:
            let cx = alpha_t / alpha_s0, c0 = 2 * (sigma_t * (exp(h) - 1))
            let c1 = heun ? 2 * (sigma_t * ((exp(h) - 1) / h - 1)) : sigma_t * (exp(h) - 1)
            let cz = sigma_t * (exp(2 * h) - 1).squareRoot()
            for j in 0..<n { out[j] = cx * x[j] - c0 * m0[j] - c1 * (cD1 * (m0[j] - m1[j])) + cz * z![j] }
        }
    }

    private func thirdOrderUpdate(sample x: UnsafePointer<Float>, noise z: UnsafePointer<Float>?, count n: Int, stepIndex i: Int,
                                  into out: UnsafeMutablePointer<Float>) {
        let (alpha_t, sigma_t, lambda_t) = lambda(sigmas[i + 1])
        let (alpha_s0, sigma_s0, lambda_s0) = lambda(sigmas[i])
        let (_, _, lambda_s1) = lambda(sigmas[i - 1])
        let (_, _, lambda_s2) = lambda(sigmas[i - 2])
        let m0 = history[2]!, m1 = history[1]!, m2 = history[0]!
        let h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1, h_1 = lambda_s1 - lambda_s2
        let r0 = h_0 / h, r1 = h_1 / h
        let cD10 = 1 / r0, cD11 = 1 / r1, cD1 = r0 / (r0 + r1), cD2 = 1 / (r0 + r1)
        // D1_0 = (1/r0)(m0 − m1), D1_1 = (1/r1)(m1 − m2), D1 = D1_0 + (r0/(r0 + r1))(D1_0 − D1_1), D2 = (1/(r0 + r1))(D1_0 − D1_1)
        switch algorithm {
        case .dpmSolverPlusPlus:
            let cx = sigma_t / sigma_s0, c0 = alpha_t * (exp(-h) - 1), c1 = alpha_t * ((exp(-h) - 1) / h + 1)
            let c2 = alpha_t * ((exp(-h) - 1 + h) / (h * h) - 0.5)
            for j in 0..<n {
                let d10 = cD10 * (m0[j] - m1[j]), d11 = cD11 * (m1[j] - m2[j])
                let d1 = d10 + cD1 * (d10 - d11), d2 = cD2 * (d10 - d11)
                out[j] = cx * x[j] - c0 * m0[j] + c1 * d1 - c2 * d2
            }
        case .dpmSolver:
            let cx = alpha_t / alpha_s0, c0 = sigma_t * (exp(h) - 1), c1 = sigma_t * ((exp(h) - 1) / h - 1)
            let c2 = sigma_t * ((exp(h) - 1 - h) / (h * h) - 0.5)
            for j in 0..<n {
                let d10 = cD10 * (m0[j] - m1[j]), d11 = cD11 * (m1[j] - m2[j])
                let d1 = d10 + cD1 * (d10 - d11), d2 = cD2 * (d10 - d11)
                out[j] = cx * x[j] - c0 * m0[j] - c1 * d1 - c2 * d2
            }
        case .sdeDPMSolverPlusPlus:
            let cx = sigma_t / sigma_s0 * exp(-h), c0 = alpha_t * (1 - exp(-2 * h))
            let c1 = alpha_t * ((1 - exp(-2 * h)) / (-2 * h) + 1)
            let c2 = alpha_t * ((1 - exp(-2 * h) - 2 * h) / ((2 * h) * (2 * h)) - 0.5)
            let cz = sigma_t * (1 - exp(-2 * h)).squareRoot()
            for j in 0..<n {
                let d10 = cD10 * (m0[j] - m1[j]), d11 = cD11 * (m1[j] - m2[j])
                let d1 = d10 + cD1 * (d10 - d11), d2 = cD2 * (d10 - d11)
                out[j] = cx * x[j] + c0 * m0[j] + c1 * d1 + c2 * d2 + cz * z![j]
            }
        case .sdeDPMSolver:
            preconditionFailure("refused in init: solver_order 3 with sde-dpmsolver")
        }
    }
}
