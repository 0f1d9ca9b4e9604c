// The sampling schedulers against diffusers 0.42: whole trajectories (our own x fed back each step, so errors would
// accumulate) and the timestep / sigma plans of many configs, from Fixtures/ written by
// Tests/parity/make_scheduler_fixtures.py. Each trajectory must agree with diffusers as it runs to 1e-5 of the
// latent's scale, and bit for bit with the same diffusers code run with correctly rounded float32 sqrt / log / exp
// (torch takes those from MKL, within an ulp; that ulp, amplified along the trajectory, is all the 1e-5 allows for).
// Discrete timesteps must be equal.
import Foundation
import IO
import Schedulers
import TestSupport
import XCTest

private let fixtures = repoRoot + "/Tests/SchedulersTests/Fixtures"

final class SchedulerParityTests: XCTestCase {
    /// Worst |a − e| (and, filled in by the caller, |a − e| over the step's scale max(1, max |e|)).
    struct Errors { var abs: Double = 0; var rel: Double = 0 }

    static func errors(_ a: [Float], _ e: [Float]) -> Errors {
        var r = Errors()
        for i in 0..<min(a.count, e.count) {
            let d = Double(abs(a[i] - e[i]))
            r.abs = max(r.abs, d.isNaN ? .infinity : d)
        }
        return r
    }

    /// The fixture's metadata: {class, config, steps, eta}.
    struct Fixture: Decodable {
        let `class`: String
        let config: JSONAny
        let steps: Int
        let eta: Double
    }

    func fixture(_ file: SafeTensorsFile) throws -> Fixture {
        try JSONDecoder().decode(Fixture.self, from: Data(try XCTUnwrap(file.metadata["fixture"]).utf8))
    }

    func makeScheduler(_ file: SafeTensorsFile) throws -> any Scheduler {
        let meta = try fixture(file)
        let kind = try XCTUnwrap(SchedulerKind(rawValue: meta.class), "unknown class \(meta.class)")
        let s = try kind.make(configJSON: meta.config.data, source: file.path)
        if let ddim = s as? DDIMScheduler { ddim.eta = Float(meta.eta) }
        return s
    }

    /// Runs diffusers' sampling loop on the fixture's model outputs and noise and compares every step, twice: against
    /// diffusers as it runs (torch's sqrt / log / exp go through MKL, within an ulp of correct rounding), to 1e-5; and
    /// against the same diffusers code with correctly rounded sqrt / log / exp (the `_cr` keys), which an exact
    /// re-implementation of its order of operations reproduces to the bit.
    func checkTrajectory(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let f = try SafeTensorsFile(path: "\(fixtures)/trajectory_\(name).safetensors")
        let asIs = try run(f, correctlyRounded: false, file: file, line: line)
        let exact = try run(f, correctlyRounded: true, file: file, line: line)
        print("\(name): \(try fixture(f).steps) steps; vs diffusers max |Δx| \(asIs.abs), max |Δx|/max(1, max|x|) \(asIs.rel); "
              + "vs diffusers with correctly rounded sqrt/log/exp max |Δx| \(exact.abs)")
    }

    func run(_ f: SafeTensorsFile, correctlyRounded cr: Bool, file: StaticString, line: UInt) throws -> Errors {
        func key(_ k: String) -> String { cr && f.info(k + "_cr") != nil ? k + "_cr" : k }
        let label = (f.path as NSString).lastPathComponent + (cr ? " (correctly rounded)" : "")
        let s = try makeScheduler(f)
        let steps = try fixture(f).steps
        try s.setTimesteps(steps)

        let expectedT = try f.doubles(key("timesteps")), actualT = s.timesteps.map(Double.init)
        if !cr && f.info("timesteps_cr") != nil {
            // Fractional Euler timesteps through log σ (Karras, continuous): an ulp of torch's / numpy's log.
            assertClose(actualT, expectedT, rtol: 1e-6, atol: 1e-3, label: "\(label): timesteps", file: file, line: line)
        } else {
            XCTAssertEqual(actualT, expectedT, "\(label): timesteps", file: file, line: line)
        }
        if f.info("sigmas") != nil {
            let sigmas = (s as? EulerDiscreteScheduler)?.sigmas ?? (s as? DPMSolverMultistepScheduler)?.sigmas ?? []
            assertClose(sigmas, try f.floats(key("sigmas")), rtol: cr ? 0 : 2e-7, atol: 0, label: "\(label): sigmas", file: file, line: line)
        }
        assertClose([s.initNoiseSigma], try f.floats(key("init_noise_sigma")), rtol: cr ? 0 : 2e-7, atol: 0,
                    label: "\(label): init_noise_sigma", file: file, line: line)

        let sample = try f.floats(key("sample")), n = sample.count
        let outputs = try f.floats(key("model_outputs")), trajectory = try f.floats(key("trajectory"))
        let noise = f.info("noise") != nil ? try f.floats("noise") : nil
        let inputs = f.info("model_inputs") != nil ? try f.floats(key("model_inputs")) : nil
        XCTAssertEqual(outputs.count, steps * n); XCTAssertEqual(trajectory.count, (steps + 1) * n)
        // Diffusers as is: |Δx| ≤ 1e-5 · max(1, max |x|) per step (relative to the latent's scale: elements near zero
        // are differences of terms of that size). Correctly rounded: exact.
        var x = sample, worst = Errors()
        for (i, t) in s.timesteps.enumerated() {
            let input = try s.scaleModelInput(x, timestep: t)
            if let inputs {
                let e = Array(inputs[i * n..<(i + 1) * n])
                let scale = Float(max(1, e.map(abs).max()!))
                assertClose(input, e, rtol: 0, atol: cr ? 0 : 1e-5 * scale, label: "\(label): model input \(i)", file: file, line: line)
            } else {
                XCTAssertEqual(input, x, "\(label): scaleModelInput is the identity", file: file, line: line)
            }
            let z = s.needsNoise(at: t) ? Array(noise![i * n..<(i + 1) * n]) : nil
            x = try s.step(modelOutput: Array(outputs[i * n..<(i + 1) * n]), timestep: t, sample: x, noise: z)
            let expected = Array(trajectory[(i + 1) * n..<(i + 2) * n])
            let scale = max(1, Double(expected.map(abs).max()!))
            let e = Self.errors(x, expected)
            worst.abs = max(worst.abs, e.abs); worst.rel = max(worst.rel, e.abs / scale)
            let atol = cr ? 0 : Float(1e-5 * scale)
            assertClose(x, expected, rtol: 0, atol: atol, label: "\(label): step \(i) (t = \(t))", file: file, line: line)
            if !(e.abs <= Double(atol)) { break }   // the rest would only repeat the divergence
        }
        return worst
    }

    // MARK: - Trajectories

    func testDDPM_SD15() throws { try checkTrajectory("ddpm_sd15") }
    func testDDPM_LinearClipSmallLogTrailing() throws { try checkTrajectory("ddpm_linear_clip_smalllog_trailing") }
    func testDDPM_VPredictionFixedLargeLinspace() throws { try checkTrajectory("ddpm_v_large_linspace") }
    func testDDIM_SD15() throws { try checkTrajectory("ddim_sd15") }
    func testDDIM_EtaVPredictionTrailingClip() throws { try checkTrajectory("ddim_eta_v_trailing_clip") }
    func testDDIM_SamplePredictionLinspace() throws { try checkTrajectory("ddim_sample_linspace") }
    func testEuler_SD15() throws { try checkTrajectory("euler_sd15") }
    func testEuler_KarrasLeading() throws { try checkTrajectory("euler_karras_leading") }
    func testEuler_VContinuousTrailingSigmaMin() throws { try checkTrajectory("euler_v_continuous_trailing") }
    func testDPMSolverPP2M_SD15_50Steps() throws { try checkTrajectory("dpmpp2m_sd15") }
    func testDPMSolverPP2M_KarrasHeun() throws { try checkTrajectory("dpmpp2m_karras_heun") }
    func testDPMSolverPP3M_Trailing() throws { try checkTrajectory("dpmpp3m_trailing") }
    func testDPMSolverPP3M_LeadingVPredictionSigmaMin() throws { try checkTrajectory("dpmpp3m_leading_v_sigmamin") }
    func testDPMSolver2M_MidpointSigmaMin() throws { try checkTrajectory("dpm2m_midpoint_sigmamin") }
    func testDPMSolver3M_HeunSamplePrediction() throws { try checkTrajectory("dpm3m_heun_sample_linspace") }
    func testDPMSolverPP1_EulerAtFinalLambdaClipped() throws { try checkTrajectory("dpmpp1_euler_at_final_clipped") }
    func testDPMSolverPP2M_LinearSigmaMinEulerAtFinal() throws { try checkTrajectory("dpmpp2m_linear_sigmamin_euler_final") }
    func testSDEDPMSolverPP2M() throws { try checkTrajectory("sde_dpmpp2m_sd15") }
    func testSDEDPMSolverPP3M_Heun() throws { try checkTrajectory("sde_dpmpp3m_heun") }
    func testSDEDPMSolver2M_SigmaMin() throws { try checkTrajectory("sde_dpm2m_heun_sigmamin") }

    /// DDPMScheduler.add_noise, one timestep per row: bit for bit with correctly rounded square roots.
    func testDDPMAddNoise() throws {
        for name in ["ddpm_sd15", "ddpm_linear_clip_smalllog_trailing"] {
            let f = try SafeTensorsFile(path: "\(fixtures)/trajectory_\(name).safetensors")
            let s = try makeScheduler(f) as! DDPMScheduler
            let x0 = try f.floats("add_noise.original"), eps = try f.floats("add_noise.noise")
            let ts = try f.doubles("add_noise.timesteps"), n = x0.count / ts.count
            var out = [Float](repeating: 0, count: x0.count)
            try x0.withUnsafeBufferPointer { x0 in
                try eps.withUnsafeBufferPointer { eps in
                    try out.withUnsafeMutableBufferPointer { out in
                        for (r, t) in ts.enumerated() {
                            try s.addNoise(x0.baseAddress! + r * n, noise: eps.baseAddress! + r * n, timestep: Int(t), count: n,
                                           into: out.baseAddress! + r * n)
                        }
                    }
                }
            }
            XCTAssertEqual(out, try f.floats(f.info("add_noise_cr") != nil ? "add_noise_cr" : "add_noise"), name)
            assertClose(out, try f.floats("add_noise"), rtol: 1e-6, atol: 1e-6, label: "\(name): add_noise")
        }
    }

    // MARK: - Timestep and sigma plans

    struct PlanCase: Decodable {
        let name: String
        let `class`: String
        let config: JSONAny
        let steps: Int
    }

    /// Any JSON value, re-serialised for the scheduler's decoder.
    struct JSONAny: Decodable {
        let data: Data
        init(from decoder: Decoder) throws {
            let v = try decoder.singleValueContainer().decode(Value.self)
            data = try JSONEncoder().encode(v)
        }
        indirect enum Value: Codable {
            case null, bool(Bool), number(Double), string(String), array([Value]), object([String: Value])
            init(from decoder: Decoder) throws {
                let c = try decoder.singleValueContainer()
                if c.decodeNil() { self = .null } else if let b = try? c.decode(Bool.self) { self = .bool(b) }
                else if let d = try? c.decode(Double.self) { self = .number(d) } else if let s = try? c.decode(String.self) { self = .string(s) }
                else if let a = try? c.decode([Value].self) { self = .array(a) } else { self = .object(try c.decode([String: Value].self)) }
            }
            func encode(to encoder: Encoder) throws {
                var c = encoder.singleValueContainer()
                switch self {
                case .null: try c.encodeNil()
                case .bool(let b): try c.encode(b)
                case .number(let d): if d == d.rounded(), abs(d) < 1e15 { try c.encode(Int(d)) } else { try c.encode(d) }
                case .string(let s): try c.encode(s)
                case .array(let a): try c.encode(a)
                case .object(let o): try c.encode(o)
                }
            }
        }
    }

    func testTimestepAndSigmaPlans() throws {
        let f = try SafeTensorsFile(path: "\(fixtures)/timesteps.safetensors")
        let cases = try JSONDecoder().decode([PlanCase].self, from: Data(f.metadata["cases"]!.utf8))
        XCTAssertGreaterThan(cases.count, 250)
        var worstSigma = 0.0, worstFractional = 0.0, checked = 0
        for c in cases {
            let s = try SchedulerKind(rawValue: c.class)!.make(configJSON: c.config.data, source: c.name)
            try s.setTimesteps(c.steps)
            let expected = try f.doubles("\(c.name).timesteps")
            let actual = s.timesteps.map(Double.init)
            let karrasEuler = s is EulerDiscreteScheduler && String(decoding: c.config.data, as: UTF8.self).contains("\"use_karras_sigmas\":true")
            if karrasEuler {
                // Fractional timesteps through log σ: numpy's float32 log may differ by an ulp from ours.
                XCTAssertEqual(actual.count, expected.count, c.name)
                for (a, e) in zip(actual, expected) { worstFractional = max(worstFractional, abs(a - e)) }
                assertClose(actual, expected, rtol: 0, atol: 2e-3, label: "\(c.name): timesteps")
            } else {
                XCTAssertEqual(actual, expected, "\(c.name): timesteps")
            }
            if f.info("\(c.name).sigmas") != nil {
                let sigmas = (s as? EulerDiscreteScheduler)?.sigmas ?? (s as? DPMSolverMultistepScheduler)!.sigmas
                let e = try f.floats("\(c.name).sigmas")
                assertClose(sigmas, e, rtol: 1e-6, atol: 0, label: "\(c.name): sigmas")
                for (a, b) in zip(sigmas, e) { worstSigma = max(worstSigma, Double(abs(a - b) / b)) }
            }
            assertClose([s.initNoiseSigma], try f.floats("\(c.name).init_noise_sigma"), rtol: 1e-6, atol: 0, label: "\(c.name): init_noise_sigma")
            checked += 1
        }
        print("\(checked) plans: sigmas max relative error \(worstSigma); Euler Karras timesteps max |Δt| \(worstFractional)")
    }

    // MARK: - Configs and refusals

    /// SD 1.5's PNDMScheduler config read into DPM-Solver++ as diffusers' from_config does: PNDM-only keys ignored,
    /// keys the file lacks (timestep_spacing) take DPMSolverMultistepScheduler's defaults.
    func testForeignConfigTakesTheTargetClassDefaults() throws {
        let sd15 = """
            {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
             "trained_betas": null, "clip_sample": false, "some_future_key": [1, 2]}
            """
        let dpm = try SchedulerKind.dpmSolverMultistep.make(configJSON: Data(sd15.utf8), source: "sd15") as! DPMSolverMultistepScheduler
        XCTAssertEqual(dpm.spacing, .linspace)
        XCTAssertEqual(dpm.config.stepsOffset, 1)
        XCTAssertEqual(dpm.algorithm, .dpmSolverPlusPlus)
        XCTAssertEqual(dpm.solverOrder, 2)
        try dpm.setTimesteps(50)
        XCTAssertEqual(Array(dpm.timesteps.prefix(3)), [999, 979, 959])
        XCTAssertEqual(Array(dpm.timesteps.suffix(2)), [40, 20])
        let ddim = try SchedulerKind.ddim.make(configJSON: Data(sd15.utf8), source: "sd15") as! DDIMScheduler
        XCTAssertEqual(ddim.spacing, .leading)
        XCTAssertFalse(ddim.config.clipSample)
        XCTAssertEqual(ddim.finalAlphaCumprod, ddim.schedule.alphasCumprod[0])
        let euler = try SchedulerKind.euler.make(configJSON: Data(sd15.utf8), source: "sd15") as! EulerDiscreteScheduler
        XCTAssertEqual(euler.spacing, .linspace)
    }

    func testUnsupportedConfigsAreRefusedByName() throws {
        func refusal(_ kind: SchedulerKind, _ json: String) -> String {
            do { _ = try kind.make(configJSON: Data(json.utf8), source: "dir/scheduler_config.json"); return "accepted" } catch {
                return "\(error)"
            }
        }
        let cases: [(SchedulerKind, String, String)] = [
            (.ddpm, #"{"thresholding": true}"#, "thresholding"),
            (.ddim, #"{"thresholding": true}"#, "thresholding"),
            (.dpmSolverMultistep, #"{"thresholding": true}"#, "thresholding"),
            (.ddpm, #"{"variance_type": "learned_range"}"#, "variance_type 'learned_range'"),
            (.dpmSolverMultistep, #"{"algorithm_type": "dpmsolver"}"#, "final_sigmas_type zero"),
            (.dpmSolverMultistep, #"{"solver_order": 4}"#, "solver_order 4"),
            (.dpmSolverMultistep, #"{"use_lu_lambdas": true}"#, "use_lu_lambdas"),
            (.euler, #"{"use_exponential_sigmas": true}"#, "use_exponential_sigmas"),
            (.euler, #"{"prediction_type": "flow_prediction"}"#, "prediction_type 'flow_prediction'"),
            (.ddim, #"{"timestep_spacing": "sometimes"}"#, "timestep_spacing 'sometimes'"),
            (.ddim, #"{"beta_schedule": "sigmoid"}"#, "beta_schedule 'sigmoid'"),
            (.euler, #"{"rescale_betas_zero_snr": true}"#, "rescale_betas_zero_snr"),
            (.ddpm, #"{"num_train_timesteps": "many"}"#, "num_train_timesteps"),
            (.ddpm, #"{"num_train_timesteps": 10"#, "not valid JSON"),
        ]
        for (kind, json, expected) in cases {
            let message = refusal(kind, json)
            XCTAssertTrue(message.contains(expected) && message.hasPrefix("dir/scheduler_config.json: "),
                          "\(kind) \(json): \(message)")
        }
    }

    func testStepMisuseIsAnErrorNotACrash() throws {
        let ddpm = try SchedulerKind.ddpm.make(configJSON: Data("{}".utf8), source: "c")
        try ddpm.setTimesteps(10)
        let x = [Float](repeating: 0.5, count: 8)
        XCTAssertEqual(ddpm.timesteps.first, 900)
        XCTAssertThrowsError(try ddpm.step(modelOutput: x, timestep: 901, sample: x, noise: x))   // not in the plan
        XCTAssertThrowsError(try ddpm.step(modelOutput: x, timestep: ddpm.timesteps[0], sample: x))   // needs noise
        XCTAssertThrowsError(try ddpm.step(modelOutput: [1], timestep: ddpm.timesteps[0], sample: x, noise: x))
        XCTAssertThrowsError(try ddpm.setTimesteps(1001))
        let ddim = try SchedulerKind.ddim.make(configJSON: Data("{}".utf8), source: "c")
        XCTAssertThrowsError(try ddim.step(modelOutput: x, timestep: 999, sample: x))   // no setTimesteps
        let euler = try SchedulerKind.euler.make(configJSON: Data("{}".utf8), source: "c")
        try euler.setTimesteps(3)
        XCTAssertThrowsError(try euler.step(modelOutput: x, timestep: 12.5, sample: x))
        for t in euler.timesteps { _ = try euler.step(modelOutput: x, timestep: t, sample: x) }
        XCTAssertThrowsError(try euler.step(modelOutput: x, timestep: euler.timesteps[0], sample: x))   // past the end
        euler.reset()
        XCTAssertNoThrow(try euler.step(modelOutput: x, timestep: euler.timesteps[0], sample: x))
    }

    /// reset() starts the multistep history over: the same inputs give the same trajectory twice.
    func testResetRepeatsTheTrajectory() throws {
        let f = try SafeTensorsFile(path: "\(fixtures)/trajectory_dpmpp3m_trailing.safetensors")
        let s = try makeScheduler(f)
        try s.setTimesteps(try fixture(f).steps)
        let sample = try f.floats("sample"), outputs = try f.floats("model_outputs"), n = sample.count
        func run() throws -> [Float] {
            var x = sample
            for (i, t) in s.timesteps.enumerated() {
                x = try s.step(modelOutput: Array(outputs[i * n..<(i + 1) * n]), timestep: t, sample: x)
            }
            return x
        }
        let first = try run()
        s.reset()
        XCTAssertEqual(try run(), first)
        assertClose(first, Array(try f.floats("trajectory").suffix(n)), rtol: 1e-5, atol: 1e-5, label: "final x")
    }

    // MARK: - The trainer's statistic term

    /// Training/Objective.swift's statistic term takes the DDPM posterior mean from t to t − stride and uses that two
    /// models' means differ by k·(ε_θ − ε_ref), k = −c0·√(1 − ᾱ_t)/√ᾱ_t, c0 = √ᾱ_{t'}·(1 − ᾱ_t/ᾱ_{t'})/(1 − ᾱ_t), ᾱ_{t'<0} = 1.
    /// Check that against the DDPM step (clip_sample false, as SD's config; t = 0 adds no noise, others get the same noise).
    func testDDPMStepIsTheTrainersPosteriorMean() throws {
        let config = #"{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": false}"#
        for (steps, stride) in [(nil, 1), (50, 20)] as [(Int?, Int)] {
            let s = try SchedulerKind.ddpm.make(configJSON: Data(config.utf8), source: "c") as! DDPMScheduler
            if let steps { try s.setTimesteps(steps) }
            let n = 64
            let x = (0..<n).map { Float(sin(Double($0))) }, z = (0..<n).map { Float(cos(Double($0) * 0.7)) }
            let e1 = (0..<n).map { Float(sin(Double($0) * 1.3 + 0.2)) }, e2 = (0..<n).map { Float(cos(Double($0) * 0.4)) }
            for t in [0, stride, 20 * stride, 49 * stride].filter({ s.timesteps.contains(Float($0)) }) {
                XCTAssertEqual(try s.previousTimestep(t), max(t - stride, -1))   // ᾱ of any t' < 0 is 1
                let a = Double(s.schedule.alphaBar(t)), ap = Double(s.schedule.alphaBar(t - stride))
                let c0 = ap.squareRoot() * (1 - a / ap) / (1 - a)
                let k = -c0 * (1 - a).squareRoot() / a.squareRoot()
                let m1 = try s.step(modelOutput: e1, timestep: Float(t), sample: x, noise: z)
                let m2 = try s.step(modelOutput: e2, timestep: Float(t), sample: x, noise: z)
                let scale = max(1, abs(k)) * 2
                for i in 0..<n {
                    XCTAssertEqual(Double(m1[i] - m2[i]), k * Double(e1[i] - e2[i]), accuracy: 2e-6 * scale * max(1, abs(Double(m1[i]))),
                                   "t \(t), stride \(stride), element \(i)")
                }
            }
        }
    }
}
