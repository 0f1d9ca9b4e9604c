import Foundation
import XCTest
import IO
import Schedulers
import Tensors
import TestSupport
@testable import Training
import UNet

/// The HG-DPO objective against PyTorch, and against finite differences of the loss.
///
/// Parity: one training step on the random-weight `unet_conv` U-Net with its LoRA (policy = LoRA at scale 1, reference
/// = adapters off), assembled as the trainer does, against Fixtures/dpo_loss.safetensors (Tests/parity/make_dpo_fixtures.py,
/// float64 autograd through diffusers + peft; its statistic term is the literal DDPM posterior mean, so
/// Objective.swift's closed form k·(ε_θ − ε_ref) is checked, not copied). Settings: both terms, DPO only, statistic
/// only, and a 20-step statistic; timesteps 0 (ᾱ of the step before = 1), 517, 999.
final class ObjectiveParityTests: XCTestCase {
    static let fixturePath = repoRoot + "/Tests/TrainingTests/Fixtures/dpo_loss.safetensors"
    static let unetFolder = repoRoot + "/Tests/UNetTests/Fixtures/unet_conv"

    /// The schedule make_dpo_fixtures.py uses: DDPMScheduler(0.00085, 0.012, "scaled_linear", 1000).
    static func sdSchedule() throws -> NoiseSchedule {
        var c = SchedulerConfig()
        c.betaStart = 0.00085; c.betaEnd = 0.012; c.betaSchedule = "scaled_linear"; c.numTrainTimesteps = 1000
        return try NoiseSchedule(c)
    }

    static func relativeError(_ actual: Double, _ expected: Double) -> Double {
        abs(actual - expected) / max(abs(expected), 1e-300)
    }

    /// ‖actual − expected‖₂ / ‖expected‖₂.
    static func relativeL2(_ actual: UnsafePointer<Float>, _ expected: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for i in 0..<expected.count {
            let d = Double(actual[i]) - Double(expected[i])
            num += d * d; den += Double(expected[i]) * Double(expected[i])
        }
        return (num / max(den, 1e-300)).squareRoot()
    }

    // MARK: - Parity with PyTorch on the U-Net

    struct Step {
        let model: UNetModel
        let terms: Objective.Terms
    }

    func model() throws -> UNetModel {
        let lora = try LoRAFile.read(Self.unetFolder + "/lora_diffusers.safetensors")
        let m = try UNetModel.load(folder: ComponentFolder(path: Self.unetFolder), lora: (lora.rank, lora.alpha))
        XCTAssertEqual(try m.lora!.assign(lora, source: "lora_diffusers.safetensors"), [], "modules the LoRA file does not cover")
        return m
    }

    func objective(_ f: SafeTensorsFile, _ setting: String) throws -> Objective {
        let beta = try f.doubles("\(setting).beta")[0], lambda = try f.doubles("\(setting).stat_weight")[0]
        let stride = Int(try f.int64s("\(setting).stat_stride")[0])
        // λ = 0 is the plain Diffusion-DPO objective; run it as that kind.
        return Objective(kind: lambda == 0 ? .dpo : .hgdpo, beta: Float(beta), statWeight: Float(lambda), statStride: stride)
    }

    /// One step as Bench.swift / Step.swift assemble it: winners then losers in one batch of 2B, shared noise and
    /// timestep, context duplicated; policy forward (training), reference forward, objective, backward.
    func step(_ f: SafeTensorsFile, _ objective: Objective) throws -> Step {
        let m = try model()
        let schedule = try Self.sdSchedule()
        let shape = f.info("winner")!.shape
        let b = shape[0], c = shape[1], h = shape[2], w = shape[3], n = c * h * w
        let ehs = f.info("encoder_hidden_states")!.shape
        let s = ehs[1], sd = ehs[1] * ehs[2]
        let winner = Buffer(try f.floats("winner")), loser = Buffer(try f.floats("loser"))   // (B, C, H, W)
        let noise = Buffer(try f.floats("noise"))                                             // (B, C, H, W)
        let t = try f.int64s("timesteps").map { Int($0) }
        let ctx1 = try f.floats("encoder_hidden_states")                                      // (B, S, D)
        XCTAssertEqual(t.count, b)
        let xt = Buffer(uninitialized: 2 * b * n)     // (2B, C, H, W)
        for j in 0..<b {
            schedule.addNoise(winner.ptr + j * n, noise: noise.ptr + j * n, timestep: t[j], count: n, into: xt.ptr + j * n)
            schedule.addNoise(loser.ptr + j * n, noise: noise.ptr + j * n, timestep: t[j], count: n, into: xt.ptr + (b + j) * n)
        }
        let context = Buffer(ctx1 + ctx1)             // (2B, S, D)
        XCTAssertEqual(context.count, 2 * b * sd)
        let tt = (t + t).map(Float.init)
        let (policy, saved) = try m.forwardTraining(sample: xt, timesteps: tt, context: context, batch: 2 * b, height: h, width: w,
                                                    contextLength: s, loraScale: 1)
        let reference = try m.forward(sample: xt, timesteps: tt, context: context, batch: 2 * b, height: h, width: w,
                                      contextLength: s, loraScale: nil)
        let dPolicy = Buffer(uninitialized: 2 * b * n)
        let terms = objective.evaluate(policy: policy.ptr, reference: reference.ptr, noise: noise.ptr, timesteps: t, pairs: b,
                                       channels: c, spatial: h * w, schedule: schedule, normalizer: b, dPolicy: dPolicy.ptr)
        m.lora!.zeroGrad()
        m.backward(dPolicy, saved)
        return Step(model: m, terms: terms)
    }

    /// Checks the loss terms against the fixture; returns (label, relative error) for the log. `dpoRtol` bounds the
    /// terms that go through inside_j (dpo, loss, Σ inside), `rtol` the others.
    func checkTerms(_ f: SafeTensorsFile, _ setting: String, _ objective: Objective, _ terms: Objective.Terms,
                    rtol: Double, dpoRtol: Double, file: StaticString, line: UInt) throws -> [(String, Double)] {
        let pairs = Double(terms.pairs)
        XCTAssertEqual(terms.pairs, 3, file: file, line: line)
        var errors: [(String, Double)] = []
        func close(_ label: String, _ actual: Double, _ expectedKey: String, _ tol: Double) throws {
            let expected = try f.doubles(expectedKey).reduce(0, +)   // a scalar, or per-pair values summed as Terms does
            let err = Self.relativeError(actual, expected)
            errors.append((label, err))
            XCTAssertLessThanOrEqual(err, tol, "\(setting) \(label): \(actual) vs \(expected)", file: file, line: line)
        }
        try close("loss", terms.loss, "\(setting).loss", objective.beta != 0 ? dpoRtol : rtol)
        try close("dpo", terms.dpo / pairs, "\(setting).dpo_loss", dpoRtol)
        if objective.statWeight != 0 {
            try close("stat", terms.stat / pairs, "\(setting).stat_loss", rtol)
        } else {
            XCTAssertEqual(terms.stat, 0, "\(setting): an unweighted statistic is not computed", file: file, line: line)
        }
        try close("mse_theta_w", terms.mseThetaW, "mse_theta_w", rtol)
        try close("mse_theta_l", terms.mseThetaL, "mse_theta_l", rtol)
        try close("mse_ref_w", terms.mseRefW, "mse_ref_w", rtol)
        try close("mse_ref_l", terms.mseRefL, "mse_ref_l", rtol)
        // Σ inside_j: its terms have mixed signs, so the scale is Σ |inside_j|.
        let inside = try f.doubles("\(setting).inside")
        let insideErr = abs(terms.insideSum - inside.reduce(0, +)) / max(inside.reduce(0) { $0 + abs($1) }, 1e-300)
        errors.append(("inside", insideErr))
        XCTAssertLessThanOrEqual(insideErr, dpoRtol, "\(setting) Σ inside: \(terms.insideSum) vs \(inside)", file: file, line: line)
        // Exactly: every |inside_j| ≥ 1.9 in the fixture, far from a sign flip.
        XCTAssertEqual(terms.correct / pairs, try f.doubles("\(setting).implicit_acc")[0], "\(setting) implicit accuracy",
                       file: file, line: line)
        return errors
    }

    static func format(_ errors: [(String, Double)]) -> String {
        errors.map { "\($0.0) \(String(format: "%.1e", $0.1))" }.joined(separator: ", ")
    }

    /// The whole step against PyTorch. The U-Net runs in float32, and inside_j multiplies its MSEs' float32 error
    /// (~2e-8 relative) by β/2 = 1250, so the terms through inside_j get 1e-4; the rest 1e-5; LoRA gradients 1e-3 (L2).
    func checkStep(_ setting: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let f = try SafeTensorsFile(path: Self.fixturePath)
        let objective = try objective(f, setting)
        let st = try step(f, objective)
        let errors = try checkTerms(f, setting, objective, st.terms, rtol: 1e-5, dpoRtol: 1e-4, file: file, line: line)

        let lora = st.model.lora!
        var checked = 0, worstGrad = (name: "", err: 0.0)
        for t in lora.targets {
            for (suffix, ptr) in [("lora_A", lora.gradA(t)), ("lora_B", lora.gradB(t))] {
                let key = "\(setting).grad.\(t.module).\(suffix).weight"
                guard f.info(key) != nil else { XCTFail("fixture has no \(key)", file: file, line: line); continue }
                let expected = try f.floats(key)
                XCTAssertEqual(expected.count, suffix == "lora_A" ? lora.rank * t.inFeatures : t.outFeatures * lora.rank, key)
                let err = Self.relativeL2(ptr, expected)
                if err > worstGrad.err { worstGrad = (key, err) }
                XCTAssertLessThanOrEqual(err, 1e-3, key, file: file, line: line)
                checked += 1
            }
        }
        // 4 transformer blocks × (attn1, attn2) × (to_q, to_k, to_v, to_out.0) × (A, B)
        XCTAssertEqual(checked, 64, "\(setting): LoRA tensors checked", file: file, line: line)
        let gradKeys = f.tensorNames.filter { $0.hasPrefix("\(setting).grad.") }.count
        XCTAssertEqual(gradKeys, checked, "\(setting): fixture gradients without a LoRA target", file: file, line: line)
        print("[\(setting) step] relative errors: \(Self.format(errors)); worst LoRA gradient (L2) "
              + "\(String(format: "%.1e", worstGrad.err)) (\(worstGrad.name))")
    }

    /// Objective.evaluate alone on PyTorch's own ε predictions (rounded to float32): terms within 1e-5 relative,
    /// d loss / d ε_θ within 1e-5 (L2).
    func checkObjective(_ setting: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let f = try SafeTensorsFile(path: Self.fixturePath)
        let objective = try objective(f, setting)
        let shape = f.info("policy_eps")!.shape
        let b = shape[0] / 2, c = shape[1], hw = shape[2] * shape[3]
        let policy = try f.floats("policy_eps"), reference = try f.floats("reference_eps"), noise = try f.floats("noise")
        let t = try f.int64s("timesteps").map { Int($0) }
        let schedule = try Self.sdSchedule()
        var dPolicy = [Float](repeating: .nan, count: policy.count)
        let terms = policy.withUnsafeBufferPointer { p in reference.withUnsafeBufferPointer { r in
            noise.withUnsafeBufferPointer { e in dPolicy.withUnsafeMutableBufferPointer { d in
                objective.evaluate(policy: p.baseAddress!, reference: r.baseAddress!, noise: e.baseAddress!, timesteps: t,
                                   pairs: b, channels: c, spatial: hw, schedule: schedule, normalizer: b,
                                   dPolicy: d.baseAddress!)
            }}
        }}
        let errors = try checkTerms(f, setting, objective, terms, rtol: 1e-5, dpoRtol: 1e-5, file: file, line: line)
        let expected = try f.floats("\(setting).grad_policy_eps")
        let err = dPolicy.withUnsafeBufferPointer { Self.relativeL2($0.baseAddress!, expected) }
        XCTAssertLessThanOrEqual(err, 1e-5, "\(setting) d loss / d policy_eps", file: file, line: line)
        print("[\(setting) objective] relative errors: \(Self.format(errors)); d loss / d ε_θ (L2) \(String(format: "%.1e", err))")
    }

    /// A v-prediction model's objective (Objective.prediction = .vPrediction: targets are the images' velocities,
    /// the statistic's x0 from v) against Fixtures/dpo_vpred.safetensors (make_dpo_fixtures.py, float64 autograd
    /// with diffusers' get_velocity): terms within 1e-5 relative, d loss / d v_θ within 1e-5 (L2).
    func testVPredictionObjective() throws {
        let f = try SafeTensorsFile(path: repoRoot + "/Tests/TrainingTests/Fixtures/dpo_vpred.safetensors")
        let shape = f.info("policy_v")!.shape
        let b = shape[0] / 2, c = shape[1], hw = shape[2] * shape[3]
        let policy = try f.floats("policy_v"), reference = try f.floats("reference_v"), noise = try f.floats("noise")
        let winner = try f.floats("winner"), loser = try f.floats("loser")
        let t = try f.int64s("timesteps").map { Int($0) }
        let schedule = try Self.sdSchedule()
        for setting in ["both", "dpo_only", "stat_only", "stride20", "sft"] {
            let beta = try f.doubles("\(setting).beta")[0], lambda = try f.doubles("\(setting).stat_weight")[0]
            let kind: ObjectiveKind = setting == "sft" ? .sft : lambda == 0 ? .dpo : .hgdpo
            let objective = Objective(kind: kind, beta: Float(beta), statWeight: Float(lambda),
                                      statStride: Int(try f.int64s("\(setting).stat_stride")[0]), prediction: .vPrediction)
            let rows = kind == .sft ? b : 2 * b
            var dPolicy = [Float](repeating: .nan, count: rows * c * hw)
            let terms = policy.withUnsafeBufferPointer { p in reference.withUnsafeBufferPointer { r in
                noise.withUnsafeBufferPointer { e in winner.withUnsafeBufferPointer { w in loser.withUnsafeBufferPointer { l in
                    dPolicy.withUnsafeMutableBufferPointer { d in
                        objective.evaluate(policy: p.baseAddress!, reference: kind == .sft ? nil : r.baseAddress!, noise: e.baseAddress!,
                                           winner: w.baseAddress!, loser: l.baseAddress!, timesteps: t, pairs: b, channels: c,
                                           spatial: hw, schedule: schedule, normalizer: b, dPolicy: d.baseAddress!)
                    }
                }}}
            }}
            let pairs = Double(b)
            func close(_ label: String, _ actual: Double, _ key: String) throws {
                let expected = try f.doubles(key).reduce(0, +)
                XCTAssertLessThanOrEqual(Self.relativeError(actual, expected), 1e-5, "v \(setting) \(label): \(actual) vs \(expected)")
            }
            try close("loss", terms.loss, "\(setting).loss")
            try close("mse_theta_w", terms.mseThetaW, "mse_theta_w")
            if kind != .sft {
                try close("dpo", terms.dpo / pairs, "\(setting).dpo_loss")
                try close("mse_theta_l", terms.mseThetaL, "mse_theta_l")
                try close("mse_ref_w", terms.mseRefW, "mse_ref_w")
                try close("mse_ref_l", terms.mseRefL, "mse_ref_l")
            }
            if lambda != 0 { try close("stat", terms.stat / pairs, "\(setting).stat_loss") }
            let expected = try f.floats("\(setting).grad_policy_v")
            XCTAssertEqual(expected.count, dPolicy.count)
            let err = dPolicy.withUnsafeBufferPointer { Self.relativeL2($0.baseAddress!, expected) }
            XCTAssertLessThanOrEqual(err, 1e-5, "v \(setting) d loss / d v_θ")
            print("[v-prediction \(setting)] loss \(terms.loss); d loss / d v_θ (L2) \(String(format: "%.1e", err))")
        }
        // The epsilon reading of the same numbers is a different loss: the targets matter.
        let eps = Objective(kind: .dpo, prediction: .epsilon)
        var d = [Float](repeating: 0, count: policy.count)
        let te = policy.withUnsafeBufferPointer { p in reference.withUnsafeBufferPointer { r in noise.withUnsafeBufferPointer { e in
            d.withUnsafeMutableBufferPointer { eps.evaluate(policy: p.baseAddress!, reference: r.baseAddress!, noise: e.baseAddress!,
                                                            timesteps: t, pairs: b, channels: c, spatial: hw, schedule: schedule,
                                                            normalizer: b, dPolicy: $0.baseAddress!) } } } }
        XCTAssertGreaterThan(Self.relativeError(te.mseThetaW, try f.doubles("mse_theta_w").reduce(0, +)), 0.1)
        // The trainer's schedule takes epsilon and v_prediction models and names what it refuses.
        var config = SchedulerConfig()
        config.predictionType = "v_prediction"
        XCTAssertEqual(try NoiseSchedule(config, source: "s.json").predictionType, "v_prediction")
        config.predictionType = "sample"
        XCTAssertThrowsError(try NoiseSchedule(config, source: "s.json")) { XCTAssertTrue("\($0)".contains("s.json: scheduler config: prediction_type 'sample'"), "\($0)") }
    }

    func testStepBothTerms() throws { try checkStep("both") }
    func testStepDPOOnly() throws { try checkStep("dpo_only") }
    func testStepStatisticOnly() throws { try checkStep("stat_only") }
    func testStepStatisticStride20() throws { try checkStep("stride20") }

    func testObjectiveOnTorchPredictions() throws {
        for setting in ["both", "dpo_only", "stat_only", "stride20"] { try checkObjective(setting) }
    }

    /// The trainer's shared micro-batch step (Step.swift) is the same computation as the step assembled above.
    func testSharedStepMatchesAssembledStep() throws {
        let f = try SafeTensorsFile(path: Self.fixturePath)
        let objective = try objective(f, "both")
        let assembled = try step(f, objective)
        let m = try model()
        let winner = try f.floats("winner"), loser = try f.floats("loser"), noise = try f.floats("noise")
        let ctx = try f.floats("encoder_hidden_states")
        let shape = f.info("winner")!.shape, ehs = f.info("encoder_hidden_states")!.shape
        m.lora!.zeroGrad()
        let terms = try winner.withUnsafeBufferPointer { w in try loser.withUnsafeBufferPointer { l in
            try noise.withUnsafeBufferPointer { e in try ctx.withUnsafeBufferPointer { c in
                let batch = PairBatch(pairs: shape[0], winner: w.baseAddress!, loser: l.baseAddress!, noise: e.baseAddress!,
                                      timesteps: try f.int64s("timesteps").map { Int($0) }, context: c.baseAddress!,
                                      channels: shape[1], height: shape[2], width: shape[3], contextLength: ehs[1],
                                      contextDim: ehs[2])
                return try accumulatePairGradients(model: m, objective: objective, schedule: try Self.sdSchedule(),
                                                   batch: batch, normalizer: shape[0])
            }}
        }}
        XCTAssertEqual(terms.correct, assembled.terms.correct)
        XCTAssertEqual(terms.loss, assembled.terms.loss, accuracy: 1e-6 * abs(assembled.terms.loss))
        let count = m.lora!.count
        XCTAssertLessThanOrEqual(Self.relativeL2(m.lora!.grads.ptr, Array(UnsafeBufferPointer(start: assembled.model.lora!.grads.ptr, count: count))),
                                 1e-6)
    }

    // MARK: - Objective.evaluate against finite differences of the loss

    /// The loss in Double, written from the paper (HG-DPO Eq. 3, 8, 9) and torch_dpo_step.py, independently of
    /// Objective.swift: the statistic uses the DDPM posterior mean of x_{t−stride} from the winner's x_t literally.
    /// Returns (loss / normalizer, Σ dpo, Σ stat, Σ [inside > 0], inside_j).
    struct Case {
        var kind: ObjectiveKind, beta: Double, statWeight: Double, stride: Int
        var timesteps: [Int]
        var spread: Double            // policy = reference + spread·N(0,1)
    }

    static func referenceLoss(_ k: Case, policy: [Double], reference: [Double], noise: [Double], xt: [Double],
                              b: Int, c: Int, hw: Int, schedule: NoiseSchedule, normalizer: Int)
        -> (loss: Double, dpo: Double, stat: Double, correct: Double, inside: [Double]) {
        let n = c * hw
        func mse(_ x: [Double], _ xo: Int, _ eo: Int) -> Double {
            (0..<n).reduce(0.0) { s, i in let d = x[xo + i] - noise[eo + i]; return s + d * d } / Double(n)
        }
        func abar(_ t: Int) -> Double { t < 0 ? 1 : Double(schedule.alphasCumprod[t]) }
        var loss = 0.0, dpoSum = 0.0, statSum = 0.0, correct = 0.0, insides: [Double] = []
        for j in 0..<b {
            let mtw = mse(policy, j * n, j * n), mtl = mse(policy, (b + j) * n, j * n)
            if k.kind == .sft { loss += mtw; continue }
            let mrw = mse(reference, j * n, j * n), mrl = mse(reference, (b + j) * n, j * n)
            let inside = k.beta * ((mrw - mrl) - (mtw - mtl))   // paper Eq. 3, diffusers' beta_dpo·(ref_diff − model_diff)
            let dpo = -log(1 / (1 + exp(-inside)))
            dpoSum += dpo
            correct += inside > 0 ? 1 : inside == 0 ? 0.5 : 0   // a tie counts ½, as diffusers
            insides.append(inside)
            var stat = 0.0
            if k.kind == .hgdpo {
                // μ(ε) = c0·x0(ε) + c1·x_t, x0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t  (DDPM posterior mean, t → t − stride)
                let t = k.timesteps[j]
                let a = abar(t), ap = abar(t - k.stride), alpha = a / ap
                let c0 = ap.squareRoot() * (1 - alpha) / (1 - a), c1 = alpha.squareRoot() * (1 - ap) / (1 - a)
                for ch in 0..<c {
                    var mTheta = 0.0, mRef = 0.0
                    for i in 0..<hw {
                        let o = j * n + ch * hw + i
                        let x = xt[o]
                        mTheta += c0 * (x - (1 - a).squareRoot() * policy[o]) / a.squareRoot() + c1 * x
                        mRef += c0 * (x - (1 - a).squareRoot() * reference[o]) / a.squareRoot() + c1 * x
                    }
                    let d = (mTheta - mRef) / Double(hw)
                    stat += d * d
                }
                statSum += stat
            }
            loss += dpo + k.statWeight * stat
        }
        return (loss / Double(normalizer), dpoSum, statSum, correct, insides)
    }

    func checkAgainstFiniteDifferences(_ k: Case, label: String) throws {
        let schedule = try Self.sdSchedule()
        let b = k.timesteps.count, c = 4, hw = 16, n = c * hw, normalizer = 5
        let rng = CounterRNG(seed: 7, stream: UInt64(label.utf8.reduce(0) { $0 &* 31 &+ Int($1) } & 0xFFFF))
        let reference = rng.substream(1).normals(2 * b * n)
        let delta = rng.substream(2).normals(2 * b * n)
        let policy = (0..<2 * b * n).map { reference[$0] + Float(k.spread) * delta[$0] }
        let noise = rng.substream(3).normals(b * n)
        let xt = rng.substream(4).normals(b * n).map(Double.init)   // cancels in the statistic; any values do
        let objective = Objective(kind: k.kind, beta: Float(k.beta), statWeight: Float(k.statWeight), statStride: k.stride)
        var dPolicy = [Float](repeating: .nan, count: 2 * b * n)
        let terms = policy.withUnsafeBufferPointer { p in reference.withUnsafeBufferPointer { r in
            noise.withUnsafeBufferPointer { e in dPolicy.withUnsafeMutableBufferPointer { d in
                objective.evaluate(policy: p.baseAddress!, reference: k.kind == .sft ? nil : r.baseAddress!, noise: e.baseAddress!,
                                   timesteps: k.timesteps, pairs: b, channels: c, spatial: hw, schedule: schedule,
                                   normalizer: normalizer, dPolicy: d.baseAddress!)
            }}
        }}
        let pd = policy.map(Double.init), rd = reference.map(Double.init), nd = noise.map(Double.init)
        let exact = Self.referenceLoss(k, policy: pd, reference: rd, noise: nd, xt: xt, b: b, c: c, hw: hw,
                                       schedule: schedule, normalizer: normalizer)
        // evaluate forms pred − ε in Float; with β = 500 that moves inside by ~1e-6 relative.
        XCTAssertEqual(terms.loss, exact.loss, accuracy: 1e-5 * abs(exact.loss), "\(label) loss")
        XCTAssertEqual(terms.dpo, exact.dpo, accuracy: 1e-5 * abs(exact.dpo), "\(label) dpo")
        XCTAssertEqual(terms.stat, exact.stat, accuracy: 1e-5 * abs(exact.stat), "\(label) stat")
        XCTAssertEqual(terms.correct, exact.correct, "\(label) correct")
        XCTAssertEqual(terms.pairs, b)

        // Central differences of the Double loss, one policy element at a time.
        let h = 1e-5
        var fd = [Double](repeating: 0, count: 2 * b * n)
        var p = pd
        for i in 0..<p.count {
            let v = p[i]
            p[i] = v + h
            let up = Self.referenceLoss(k, policy: p, reference: rd, noise: nd, xt: xt, b: b, c: c, hw: hw, schedule: schedule,
                                        normalizer: normalizer).loss
            p[i] = v - h
            let down = Self.referenceLoss(k, policy: p, reference: rd, noise: nd, xt: xt, b: b, c: c, hw: hw, schedule: schedule,
                                          normalizer: normalizer).loss
            p[i] = v
            fd[i] = (up - down) / (2 * h)
        }
        // sft: the policy is the B winners alone, so only their gradient is written; the rest keeps its NaN sentinel.
        let written = k.kind == .sft ? b * n : 2 * b * n
        if k.kind == .sft {
            XCTAssertTrue(dPolicy[written...].allSatisfy(\.isNaN), "\(label): sft writes no loser gradient")
            XCTAssertTrue(fd[written...].allSatisfy { $0 == 0 }, "\(label): losers do not enter the SFT loss")
        }
        fd = Array(fd[..<written])
        let scale = fd.reduce(0) { max($0, abs($1)) }
        XCTAssertGreaterThan(scale, 0, "\(label): the loss depends on the policy")
        assertClose(dPolicy[..<written].map(Double.init), fd, rtol: 1e-4, atol: 1e-5 * scale, label: "\(label) d loss / d policy")
        let worst = (0..<fd.count).map { abs(Double(dPolicy[$0]) - fd[$0]) }.max()! / scale
        print("[\(label)] loss \(String(format: "%.3e", terms.loss)) (relative error \(String(format: "%.1e", Self.relativeError(terms.loss, exact.loss))))"
              + ", inside \(exact.inside.map { String(format: "%.3g", $0) }), max |dPolicy − finite difference| / max |fd| "
              + String(format: "%.1e", worst))
    }

    func testSFTAgainstFiniteDifferences() throws {
        try checkAgainstFiniteDifferences(Case(kind: .sft, beta: 500, statWeight: 0, stride: 1, timesteps: [3, 700], spread: 0.1),
                                          label: "sft")
    }

    func testDPOAgainstFiniteDifferences() throws {
        try checkAgainstFiniteDifferences(Case(kind: .dpo, beta: 500, statWeight: 0, stride: 1, timesteps: [0, 400, 999], spread: 0.01),
                                          label: "dpo")
    }

    func testHGDPOAgainstFiniteDifferences() throws {
        try checkAgainstFiniteDifferences(Case(kind: .hgdpo, beta: 500, statWeight: 1e4, stride: 1, timesteps: [0, 400, 999],
                                               spread: 0.01), label: "hgdpo")
    }

    /// β = 0: the gradient is the statistic term's alone; stride 20 from t = 10 reaches below 0 (ᾱ = 1).
    func testStatisticTermAgainstFiniteDifferences() throws {
        try checkAgainstFiniteDifferences(Case(kind: .hgdpo, beta: 0, statWeight: 1e4, stride: 20, timesteps: [10, 517, 999],
                                               spread: 0.5), label: "statistic stride 20")
        try checkAgainstFiniteDifferences(Case(kind: .hgdpo, beta: 0, statWeight: 1e4, stride: 1, timesteps: [0, 1, 998],
                                               spread: 0.5), label: "statistic stride 1")
    }
}
