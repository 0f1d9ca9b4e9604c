// The sampling-scheduler protocol and what the schedulers share. A scheduler turns the training noise schedule
// (NoiseSchedule: betas, ᾱ) into a sampling plan — `setTimesteps(count)` picks the model timesteps — and steps a
// latent x_t to x_{t_prev} given the model's output at t. Every scheduler matches one diffusers class step for step
// (float32 arithmetic in diffusers' order of operations; the timestep and sigma plans in float64 as numpy computes
// them). Trajectories are bit-identical to diffusers run with correctly rounded float32 sqrt / log / exp; torch takes
// those from MKL (within an ulp), which leaves diffusers as it runs within 1e-5 (mostly ~1e-6) of the latent's scale
// (Tests/SchedulersTests).
//
// Buffers are flat float32 of any shape ([B, C, H, W] latents): every step is element-wise, so only the element
// count matters. Ref: diffusers schedulers/scheduling_utils.py (SchedulerMixin), apple/ml-stable-diffusion's
// Scheduler protocol.
import Foundation
import IO

public struct SchedulerError: Error, UserInputError, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What the model predicts (`prediction_type`).
public enum PredictionType: String, Codable, Sendable, CaseIterable {
    case epsilon
    case vPrediction = "v_prediction"
    case sample
}

/// How `set_timesteps` spaces the inference timesteps over the training ones (`timestep_spacing`; Table 2 of
/// "Common Diffusion Noise Schedules and Sample Steps are Flawed").
public enum TimestepSpacing: String, Codable, Sendable, CaseIterable {
    case linspace, leading, trailing
}

/// A sampling scheduler over flat float32 buffers. Usage (diffusers' loop):
///
///     try scheduler.setTimesteps(50)
///     x = noise · initNoiseSigma
///     for t in scheduler.timesteps {
///         scaleModelInput(x, t) → model → modelOutput
///         try scheduler.step(modelOutput: …, timestep: t, sample: x, noise: …, count: n, into: x)
///     }
///
/// `step` may write into the `sample` buffer (in place). Stateful schedulers (multistep history, step index) are
/// classes; `reset()` starts a new trajectory over the same timesteps.
public protocol Scheduler: AnyObject {
    /// The diffusers class this scheduler matches step for step.
    static var diffusersClassName: String { get }
    /// The training noise schedule (betas, ᾱ).
    var schedule: NoiseSchedule { get }
    var predictionType: PredictionType { get }
    /// The model timesteps of the sampling plan, in sampling order (empty before `setTimesteps`, except for DDPM,
    /// which like diffusers starts with all training timesteps).
    var timesteps: [Float] { get }
    /// The standard deviation of the initial noise (1, or σ_max-based for sigma-space schedulers).
    var initNoiseSigma: Float { get }
    /// Picks `count` inference timesteps (diffusers `set_timesteps(num_inference_steps)`), and resets the state.
    func setTimesteps(_ count: Int) throws
    /// The model's input at `timestep` (identity except for sigma-space schedulers).
    func scaleModelInput(_ sample: UnsafePointer<Float>, timestep: Float, count: Int, into out: UnsafeMutablePointer<Float>) throws
    /// Whether the step at `timestep` draws noise (then `step` needs `noise`, a N(0, 1) tensor of the sample's size).
    func needsNoise(at timestep: Float) -> Bool
    /// One step from x_t (`sample`) to x_{t_prev} (`prevSample`), given the model output at t.
    func step(modelOutput: UnsafePointer<Float>, timestep: Float, sample: UnsafePointer<Float>, noise: UnsafePointer<Float>?,
              count: Int, into prevSample: UnsafeMutablePointer<Float>) throws
    /// Forgets the trajectory (step index, multistep history); keeps the timesteps.
    func reset()
}

extension Scheduler {
    public func scaleModelInput(_ sample: UnsafePointer<Float>, timestep: Float, count: Int, into out: UnsafeMutablePointer<Float>) throws {
        if UnsafePointer(out) != sample { out.update(from: sample, count: count) }
    }

    public func needsNoise(at timestep: Float) -> Bool { false }

    // MARK: - Array conveniences

    public func scaleModelInput(_ sample: [Float], timestep: Float) throws -> [Float] {
        var out = [Float](repeating: 0, count: sample.count)
        try sample.withUnsafeBufferPointer { s in
            try out.withUnsafeMutableBufferPointer { o in
                try scaleModelInput(s.baseAddress!, timestep: timestep, count: s.count, into: o.baseAddress!)
            }
        }
        return out
    }

    public func step(modelOutput: [Float], timestep: Float, sample: [Float], noise: [Float]? = nil) throws -> [Float] {
        guard modelOutput.count == sample.count, noise.map({ $0.count == sample.count }) ?? true else {
            throw SchedulerError("\(Self.diffusersClassName).step: model output has \(modelOutput.count) elements, sample "
                                 + "\(sample.count)" + (noise.map { ", noise \($0.count)" } ?? ""))
        }
        var out = [Float](repeating: 0, count: sample.count)
        try modelOutput.withUnsafeBufferPointer { m in
            try sample.withUnsafeBufferPointer { s in
                try out.withUnsafeMutableBufferPointer { o in
                    if let noise {
                        try noise.withUnsafeBufferPointer { z in
                            try step(modelOutput: m.baseAddress!, timestep: timestep, sample: s.baseAddress!, noise: z.baseAddress!,
                                     count: s.count, into: o.baseAddress!)
                        }
                    } else {
                        try step(modelOutput: m.baseAddress!, timestep: timestep, sample: s.baseAddress!, noise: nil,
                                 count: s.count, into: o.baseAddress!)
                    }
                }
            }
        }
        return out
    }
}

// MARK: - Choosing a scheduler from a config

/// The schedulers hgdpo implements, by diffusers class.
public enum SchedulerKind: String, CaseIterable, Sendable {
    case ddpm = "DDPMScheduler"
    case ddim = "DDIMScheduler"
    case euler = "EulerDiscreteScheduler"
    case dpmSolverMultistep = "DPMSolverMultistepScheduler"

    /// Builds the scheduler from a scheduler_config.json's bytes the way diffusers' `Class.from_config(config, **overrides)`
    /// does: keys the class does not take are ignored (the config may be another class's, e.g. SD 1.5's
    /// PNDMScheduler), keys the file does not set take this class's defaults, `overrides` (JSON values: String,
    /// Int, Double, Bool) replace the file's. `source` names the file in errors.
    public func make(configJSON data: Data, source: String, overrides: [String: Any] = [:]) throws -> any Scheduler {
        var data = data
        guard isUTF8(data) else { throw SchedulerError("\(source): not UTF-8 text") }
        if !overrides.isEmpty {
            guard var object = try? configDecoder().decode([String: ConfigJSON].self, from: data) else {
                throw SchedulerError("\(source): not valid JSON: expected an object")
            }
            for (k, v) in overrides { object[k] = ConfigJSON(v) }
            data = try configEncoder().encode(object)
        }
        func decode<T: Decodable>(_ t: T.Type) throws -> T {
            do { return try configDecoder().decode(T.self, from: data) } catch let e as DecodingError {
                throw SchedulerError("\(source): \(describe(e))")
            }
        }
        do {
            switch self {
            case .ddpm: return try DDPMScheduler(config: decode(DDPMScheduler.Config.self))
            case .ddim: return try DDIMScheduler(config: decode(DDIMScheduler.Config.self))
            case .euler: return try EulerDiscreteScheduler(config: decode(EulerDiscreteScheduler.Config.self))
            case .dpmSolverMultistep: return try DPMSolverMultistepScheduler(config: decode(DPMSolverMultistepScheduler.Config.self))
            }
        } catch let e as NoiseScheduleError {
            throw SchedulerError("\(source): \(e.message)")
        } catch let e as SchedulerError where !e.message.hasPrefix(source) {
            throw SchedulerError("\(source): \(e.message)")
        }
    }
}

// diffusers saves configs with Python's json module, which writes non-finite floats as -Infinity, Infinity and NaN
// (DPMSolverMultistepScheduler's default lambda_min_clipped is -inf): read them (JSON5 numbers) and write them back
// as those strings when overrides are merged.
private let nonFinite = (positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")

func configDecoder() -> JSONDecoder {
    let d = JSONDecoder()
    d.allowsJSON5 = true
    d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: nonFinite.positiveInfinity,
                                                              negativeInfinity: nonFinite.negativeInfinity, nan: nonFinite.nan)
    return d
}

func configEncoder() -> JSONEncoder {
    let e = JSONEncoder()
    e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: nonFinite.positiveInfinity,
                                                            negativeInfinity: nonFinite.negativeInfinity, nan: nonFinite.nan)
    return e
}


func describe(_ e: DecodingError) -> String {
    switch e {
    case .typeMismatch(_, let c), .valueNotFound(_, let c):
        return "key '\(c.codingPath.map(\.stringValue).joined(separator: "."))': \(c.debugDescription)"
    case .keyNotFound(let k, _): return "key '\(k.stringValue)' is missing"
    case .dataCorrupted(let c):
        return "not valid JSON: " + ((c.underlyingError as NSError?)?.localizedDescription ?? c.debugDescription)
    @unknown default: return "\(e)"
    }
}

// MARK: - Config decoding shared by the schedulers

/// The noise-schedule keys every diffusers scheduler takes, with diffusers' defaults.
public struct BetaScheduleConfig: Codable, Sendable, Equatable {
    public var numTrainTimesteps = 1000
    public var betaStart = 0.0001
    public var betaEnd = 0.02
    public var betaSchedule = "linear"
    public var trainedBetas: [Double]?
    public var rescaleBetasZeroSnr = false

    enum CodingKeys: String, CodingKey {
        case numTrainTimesteps = "num_train_timesteps", betaStart = "beta_start", betaEnd = "beta_end"
        case betaSchedule = "beta_schedule", trainedBetas = "trained_betas", rescaleBetasZeroSnr = "rescale_betas_zero_snr"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = BetaScheduleConfig()
        numTrainTimesteps = try c.value(.numTrainTimesteps, d.numTrainTimesteps)
        betaStart = try c.value(.betaStart, d.betaStart)
        betaEnd = try c.value(.betaEnd, d.betaEnd)
        betaSchedule = try c.value(.betaSchedule, d.betaSchedule)
        trainedBetas = try c.decodeIfPresent([Double].self, forKey: .trainedBetas)
        rescaleBetasZeroSnr = try c.value(.rescaleBetasZeroSnr, d.rescaleBetasZeroSnr)
    }

    func noiseSchedule(_ prediction: PredictionType) throws -> NoiseSchedule {
        try NoiseSchedule(trainTimesteps: numTrainTimesteps, betaStart: betaStart, betaEnd: betaEnd, betaSchedule: betaSchedule,
                          trainedBetas: trainedBetas, rescaleBetasZeroSnr: rescaleBetasZeroSnr, predictionType: prediction.rawValue)
    }
}

extension KeyedDecodingContainer {
    /// The value at `key`, or `fallback` when the key is absent or null (diffusers passes None → the default path).
    func value<T: Decodable>(_ key: Key, _ fallback: T) throws -> T { try decodeIfPresent(T.self, forKey: key) ?? fallback }
}

/// Refusals shared by the schedulers: features diffusers has that hgdpo does not implement.
func refuseThresholding(_ thresholding: Bool) throws {
    guard !thresholding else {
        throw SchedulerError("scheduler config: thresholding (dynamic thresholding, for pixel-space models) is not supported")
    }
}

// MARK: - numpy's float64 arithmetic for the timestep plans

/// np.linspace(start, stop, num) (endpoint true): start + i·step, the last value exactly stop.
func npLinspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
    guard num > 0 else { return [] }
    let div = num - 1
    let delta = stop - start
    var y: [Double]
    if div > 0 {
        let step = delta / Double(div)
        y = step == 0 ? (0..<num).map { Double($0) / Double(div) * delta } : (0..<num).map { Double($0) * step }
    } else {
        y = (0..<num).map { Double($0) * delta }
    }
    for i in 0..<num { y[i] += start }
    if num > 1 { y[num - 1] = stop }
    return y
}

/// np.arange(start, stop, step) in float64: length ceil((stop − start)/step); values start, start + step, then
/// start + i·delta with delta = (start + step) − start (numpy's DOUBLE_fill).
func npArange(_ start: Double, _ stop: Double, _ step: Double) -> [Double] {
    let len = Int(max(0, ((stop - start) / step).rounded(.up)))
    guard len > 0 else { return [] }
    var y = [start]
    guard len > 1 else { return y }
    let next = start + step
    y.append(next)
    let delta = next - start
    for i in 2..<len { y.append(start + Double(i) * delta) }
    return y
}

/// np.round: half to even.
@inline(__always) func npRound(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }

/// np.interp(x, arange(fp.count), fp) in float64 (numpy's arr_interp: slope·(x − xp[j]) + fp[j]).
func npInterp(_ x: Double, _ fp: [Double]) -> Double {
    let n = fp.count
    if x.isNaN { return x }
    if x < 0 { return fp[0] }
    if x >= Double(n - 1) { return fp[n - 1] }
    let j = Int(x.rounded(.down))      // xp = 0, 1, …: the bracketing index
    if Double(j) == x { return fp[j] }
    let slope = (fp[j + 1] - fp[j]) / (Double(j + 1) - Double(j))
    var r = slope * (x - Double(j)) + fp[j]
    if r.isNaN {
        r = slope * (x - Double(j + 1)) + fp[j + 1]
        if r.isNaN && fp[j] == fp[j + 1] { r = fp[j] }
    }
    return r
}

/// Karras et al. (2022) sigmas, ρ = 7, from σ_max down to σ_min (diffusers `_convert_to_karras`, float64).
func karrasSigmas(sigmaMin: Double, sigmaMax: Double, count: Int) -> [Double] {
    let rho = 7.0
    let ramp = npLinspace(0, 1, count)
    let minInvRho = pow(sigmaMin, 1 / rho), maxInvRho = pow(sigmaMax, 1 / rho)
    return ramp.map { pow(maxInvRho + $0 * (minInvRho - maxInvRho), rho) }
}

/// The (fractional) training timestep of a sigma by linear interpolation in log σ (diffusers `_sigma_to_t`; the
/// log σ table is float32 as numpy's np.log of the float32 sigmas, the arithmetic float64).
func sigmaToT(_ sigma: Double, logSigmas: [Float]) -> Double {
    let logSigma = log(max(sigma, 1e-10))
    // low_idx = argmax(cumsum(dists >= 0)) clipped to n − 2: the last index with log σ_j ≤ log σ (first maximum).
    var cum = 0, best = 0, lowIdx = 0
    for j in 0..<logSigmas.count {
        if logSigma - Double(logSigmas[j]) >= 0 { cum += 1 }
        if cum > best { best = cum; lowIdx = j }
    }
    lowIdx = min(lowIdx, logSigmas.count - 2)
    let low = logSigmas[lowIdx], high = logSigmas[lowIdx + 1]
    var w = (Double(low) - logSigma) / Double(low - high)      // low − high: a float32 subtraction in numpy
    w = min(max(w, 0), 1)
    return (1 - w) * Double(lowIdx) + w * Double(lowIdx + 1)
}

/// σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) for every training timestep, in float32 as diffusers' torch expression.
func trainingSigmas(_ alphasCumprod: [Float]) -> [Float] {
    alphasCumprod.map { ((1 - $0) / $0).squareRoot() }
}

/// numpy's float32 np.log of a float32 array (correctly rounded here; numpy's SIMD log is within an ulp).
func logFloat(_ x: [Float]) -> [Float] { x.map { Float(log(Double($0))) } }

/// The inference timesteps of the DDPM/DDIM/Euler plans (`linspace`, `leading`, `trailing`), as float64 before the
/// caller's cast. Ref: diffusers DDPMScheduler.set_timesteps (DDIM's and Euler's are the same arithmetic).
func spacedTimesteps(_ spacing: TimestepSpacing, trainTimesteps: Int, count: Int, stepsOffset: Int) -> [Double] {
    switch spacing {
    case .linspace:
        return npLinspace(0, Double(trainTimesteps - 1), count).reversed().map(npRound)
    case .leading:
        let ratio = trainTimesteps / count
        return (0..<count).reversed().map { Double($0 * ratio + stepsOffset) }
    case .trailing:
        let ratio = Double(trainTimesteps) / Double(count)
        return npArange(Double(trainTimesteps), 0, -ratio).map { npRound($0) - 1 }
    }
}

func checkStepCount(_ count: Int, trainTimesteps: Int, _ cls: String) throws {
    guard count >= 1 else { throw SchedulerError("\(cls): the number of inference steps must be at least 1, is \(count)") }
    guard count <= trainTimesteps else {
        throw SchedulerError("\(cls): \(count) inference steps is more than num_train_timesteps (\(trainTimesteps))")
    }
}

/// An integral timestep for the discrete schedulers (DDPM, DDIM, DPM-Solver use int64 timesteps).
func discreteTimestep(_ t: Float, _ cls: String) throws -> Int {
    guard t.isFinite, t == t.rounded(), abs(t) < 1e9 else {
        throw SchedulerError("\(cls).step: timestep \(t) is not an integer timestep of the schedule")
    }
    return Int(t)
}
