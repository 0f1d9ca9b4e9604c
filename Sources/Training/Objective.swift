// The HG-DPO objective (HG-DPO paper Eq. 3, 8, 9) on U-Net noise predictions, and its gradient with respect to the
// policy's predictions; the U-Net's backward takes it from there.
//
// For pair j (winner w, loser l; one noise ε_j and timestep t_j shared by the pair):
//   mse_*      = mean over C,H,W of (ε_pred − ε)²                     for θ (LoRA on) and ref (LoRA off)
//   inside_j   = β·((mse_ref^w − mse_ref^l) − (mse_θ^w − mse_θ^l))     (the reward margin; β = 2500 as the paper)
//   dpo        = mean_j −log σ(inside_j)                                (Diffusion-DPO, Eq. 3)
//   implicit accuracy = mean_j [inside_j > 0], a tie counting ½ (diffusers' train_diffusion_dpo.py)
//   stat       = mean_j Σ_c (mean_hw l_θ^{t'} − mean_hw l_ref^{t'})²   (statistic matching, Eq. 8)
//   loss       = dpo + λ_stat·stat                                      (Eq. 9)
// Ref: diffusers examples/research_projects/diffusion_dpo/train_diffusion_dpo.py, `-logsigmoid(beta_dpo * (ref_diff -
// model_diff))` with beta_dpo 2500; SalesforceAIResearch/DiffusionDPO train.py, `-0.5 * beta_dpo * (model_diff -
// ref_diff)` with beta_dpo 5000: both apply 2500 to the MSE differences.
// `sft` is the noise-prediction MSE on the winners alone (the policy ran on the B winners only, no reference).
// where l^{t'} is the DDPM posterior mean one sampler step from the winner's x_t to t' = t − stride (stride 1 by
// default: t−1); with x0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t and μ = c0·x0 + c1·x_t, the two models' means differ by
// k_j·(ε_θ − ε_ref) with k_j = −c0·√(1−ᾱ_t)/√ᾱ_t, c0 = √ᾱ_{t'}·(1 − ᾱ_t/ᾱ_{t'})/(1 − ᾱ_t), ᾱ_{t'<0} = 1; x_t and the
// sampler's noise cancel. Ref: ../shared/bench/torch_dpo_step.py (the same maths in PyTorch).
// v-prediction models (SD 2.x 768-v; the toy world's model): the target of every image is its velocity
// v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (diffusers' get_velocity, the target train_diffusion_dpo.py uses for them) instead of ε,
// and x0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v, so the two models' posterior means differ by k_j·(v_θ − v_ref) with
// k_j = −c0·√(1−ᾱ_t). Ref: Tests/parity/make_dpo_fixtures.py (dpo_vpred.safetensors).
import Schedulers

public enum ObjectiveKind: String, Sendable, CaseIterable { case hgdpo, dpo, sft }

public struct Objective: Sendable {
    public var kind: ObjectiveKind
    public var beta: Float
    public var statWeight: Float
    /// The statistic term's sampler step: from t to t − statStride (1 = one DDPM step, the trainer issue's default).
    public var statStride: Int
    /// What the U-Net predicts (the scheduler config's prediction_type): epsilon or v_prediction.
    public var prediction: PredictionType

    public init(kind: ObjectiveKind = .hgdpo, beta: Float = 2500, statWeight: Float = 10000, statStride: Int = 1,
                prediction: PredictionType = .epsilon) {
        precondition(prediction != .sample, "Objective: sample prediction is not supported")
        self.kind = kind; self.beta = beta; self.statStride = statStride; self.prediction = prediction
        self.statWeight = kind == .hgdpo ? statWeight : 0
    }

    /// Sums over the pairs given (divide by the pair count for means); `loss` is already normalised by `normalizer`.
    public struct Terms: Sendable, Equatable {
        public var pairs = 0
        public var loss = 0.0, dpo = 0.0, stat = 0.0
        public var correct = 0.0, insideSum = 0.0, absInsideSum = 0.0
        public var mseThetaW = 0.0, mseThetaL = 0.0, mseRefW = 0.0, mseRefL = 0.0
        public init() {}

        public mutating func add(_ o: Terms) {
            pairs += o.pairs; loss += o.loss; dpo += o.dpo; stat += o.stat; correct += o.correct; insideSum += o.insideSum
            absInsideSum += o.absInsideSum
            mseThetaW += o.mseThetaW; mseThetaL += o.mseThetaL; mseRefW += o.mseRefW; mseRefL += o.mseRefL
        }
    }

    /// policy, reference: (2B, C, H, W), the B winners first, then the B losers; for `sft` the policy is the B winners
    /// alone and there is no reference. noise: (B, C, H, W). winner, loser: the clean latents (B, C, H, W), needed
    /// for v-prediction targets only (loser not for `sft`). Writes d(loss)/d(policy) into `dPolicy` (shaped as
    /// `policy`), where loss is the sum over these
    /// pairs divided by `normalizer` (the global batch size, so that gradients all-reduced by sum give the mean).
    public func evaluate(policy: UnsafePointer<Float>, reference: UnsafePointer<Float>?, noise: UnsafePointer<Float>,
                         winner: UnsafePointer<Float>? = nil, loser: UnsafePointer<Float>? = nil,
                         timesteps: [Int], pairs b: Int, channels c: Int, spatial hw: Int, schedule: NoiseSchedule,
                         normalizer: Int, dPolicy: UnsafeMutablePointer<Float>) -> Terms {
        let n = c * hw
        let g = 1 / Double(normalizer)
        var terms = Terms()
        terms.pairs = b
        dPolicy.update(repeating: 0, count: (kind == .sft ? 1 : 2) * b * n)
        func mse(_ x: UnsafePointer<Float>, _ e: UnsafePointer<Float>) -> Double {
            var s = 0.0
            for i in 0..<n { let d = Double(x[i]) - Double(e[i]); s += d * d }   // β = 2500 amplifies rounding here
            return s / Double(n)
        }
        let v = prediction == .vPrediction
        if v { precondition(winner != nil && (kind == .sft || loser != nil), "Objective.evaluate: v-prediction needs the clean latents") }
        // The v-prediction targets of the current pair (winner, loser); ε itself for epsilon models.
        let velocity = UnsafeMutablePointer<Float>.allocate(capacity: v ? 2 * n : 0)
        defer { velocity.deallocate() }
        for j in 0..<b {
            let eps = noise + j * n
            let t = timesteps[j]
            if v {
                schedule.velocity(winner! + j * n, noise: eps, timestep: t, count: n, into: velocity)
                if kind != .sft { schedule.velocity(loser! + j * n, noise: eps, timestep: t, count: n, into: velocity + n) }
            }
            let targetW: UnsafePointer<Float> = v ? UnsafePointer(velocity) : eps
            let targetL: UnsafePointer<Float> = v ? targetW + n : eps
            let pw = policy + j * n, dW = dPolicy + j * n
            let mtw = mse(pw, targetW)
            terms.mseThetaW += mtw
            if kind == .sft {
                // Noise-prediction MSE on winners only (the paper's SFT baseline).
                terms.loss += mtw * g
                let f = Float(2 * g / Double(n))
                for i in 0..<n { dW[i] = f * (pw[i] - targetW[i]) }
                continue
            }
            let pl = policy + (b + j) * n, dL = dPolicy + (b + j) * n
            let mtl = mse(pl, targetL)
            terms.mseThetaL += mtl
            guard let reference else { preconditionFailure("Objective.evaluate: \(kind) needs reference predictions") }
            let rw = reference + j * n, rl = reference + (b + j) * n
            let mrw = mse(rw, targetW), mrl = mse(rl, targetL)
            terms.mseRefW += mrw; terms.mseRefL += mrl
            let inside = Double(beta) * ((mrw - mrl) - (mtw - mtl))
            let dpo = softplus(-inside)                           // −log σ(inside)
            terms.dpo += dpo; terms.insideSum += inside; terms.absInsideSum += abs(inside)
            terms.correct += inside > 0 ? 1 : inside == 0 ? 0.5 : 0
            // d dpo / d inside = −σ(−inside); d inside / d mse_θ^w = −β, / d mse_θ^l = +β; d mse / d pred = 2(pred − ε)/n
            let dInside = -sigmoid(-inside) * g
            let fw = Float(dInside * -Double(beta) * 2 / Double(n))
            let fl = -fw
            for i in 0..<n { dW[i] = fw * (pw[i] - targetW[i]); dL[i] = fl * (pl[i] - targetL[i]) }
            var loss = dpo
            if statWeight != 0 {
                let abar = Double(schedule.alphaBar(t)), abarPrev = Double(schedule.alphaBar(t - statStride))
                let alpha = abar / abarPrev
                let c0 = abarPrev.squareRoot() * (1 - alpha) / (1 - abar)
                let k = -c0 * (1 - abar).squareRoot() / (v ? 1 : abar.squareRoot())
                var stat = 0.0
                for ch in 0..<c {
                    var s = 0.0
                    for i in 0..<hw { s += Double(pw[ch * hw + i] - rw[ch * hw + i]) }
                    let m = k * s / Double(hw)
                    stat += m * m
                    let d = Float(Double(statWeight) * g * 2 * m * k / Double(hw))
                    for i in 0..<hw { dW[ch * hw + i] += d }
                }
                terms.stat += stat
                loss += Double(statWeight) * stat
            }
            terms.loss += loss * g
        }
        return terms
    }
}

@inline(__always) func sigmoid(_ x: Double) -> Double { x >= 0 ? 1 / (1 + _exp(-x)) : _exp(x) / (1 + _exp(x)) }
/// log(1 + e^x), stable for large |x|.
@inline(__always) func softplus(_ x: Double) -> Double { x > 0 ? x + _log1p(_exp(-x)) : _log1p(_exp(x)) }

@_silgen_name("exp") private func _exp(_ x: Double) -> Double
@_silgen_name("log1p") private func _log1p(_ x: Double) -> Double
