// `hgdpo train`: HG-DPO on LoRA adapters of a Stable Diffusion U-Net, data-parallel over MPI ranks.
//
// Each rank holds a U-Net replica with the same LoRA (rank 0's, broadcast at start), takes its contiguous share of
// every global batch from a world-size-independent plan (Data/Sampler.swift), accumulates local gradients over its
// micro-batches with the loss normalised by the global batch size, and all-reduces them by sum: so W ranks × local
// batch b × A accumulation steps give exactly the global batch G = W·b·A. The noise and timestep of a triplet are
// drawn from (seed, epoch, position in the epoch's permutation) with the counter RNG, never from a per-rank stream,
// so a run's trajectory does not depend on the number of ranks. Decisions (skip a non-finite step, stop on a signal)
// are taken on all-reduced values, so every rank takes the same one.
import Datasets
import Distributed
import Foundation
import IO
import NN
import Schedulers
import Tensors
import UNet
#if canImport(Glibc)
import Glibc
#endif

/// Set by SIGTERM / SIGUSR1 (Slurm's --signal): finish the step, checkpoint, exit 0.
nonisolated(unsafe) var stopSignal: sig_atomic_t = 0

public final class Trainer {
    public let config: TrainConfig
    let comm: Communicator
    let watchdog: Watchdog
    let model: UNetModel
    let schedule: NoiseSchedule
    let objective: Objective
    let optimizer: Optimizer
    let cache: LatentCache
    let plan: GlobalBatchPlan
    public let totalSteps: Int
    var state: TrainerState
    let faults = FaultInjection.fromEnvironment()
    /// Validation images (--validation-prompts), nil without.
    let validation: Validation?
    var divergenceGuard: DivergenceGuard
    let log: (String) -> Void

    // Random-draw purposes (the counter RNG's stream path starts with one of these).
    static let noisePurpose: UInt64 = 0x6E6F_6973   // "nois"
    static let timestepPurpose: UInt64 = 0x7469_6D65 // "time"

    public init(config c: TrainConfig, comm: Communicator, log: @escaping (String) -> Void = { print($0) }) throws {
        self.config = c
        self.comm = comm
        self.log = log
        // From the start (loading a large U-Net takes a while): a stop request during set-up is honoured after the
        // first step instead of killing the rank with no checkpoint.
        signal(SIGTERM) { _ in stopSignal = 1 }
        signal(SIGUSR1) { _ in stopSignal = 1 }
        watchdog = Watchdog(timeout: c.collectiveTimeout, rank: comm.rank, host: comm.host)
        guard let precision = MixedPrecision(rawValue: c.mixedPrecision) else {
            throw TrainInputError("--mixed-precision \(c.mixedPrecision): expected no (fp32) or bf16")
        }
        let folder = try ModelFolder(path: c.model)
        let unetFolder = try folder.unet()
        schedule = try NoiseSchedule(try ComponentFolder(path: (c.model as NSString).appendingPathComponent("scheduler"))
            .config(SchedulerConfig.self))
        // bf16: the frozen base weights in bf16 (half the memory, bf16 GEMMs where the CPU has them); the LoRA, its
        // gradients, their all-reduce and the optimizer stay fp32.
        model = try UNetModel.load(folder: unetFolder, variant: c.variant, lora: (c.loraRank, Float(c.loraAlpha)),
                                   precision: precision)
        model.gradientCheckpointing = c.gradientCheckpointing
        let stride: Int
        if let n = c.statInferenceSteps {
            guard n > 0, n <= schedule.trainTimesteps else {
                throw TrainInputError("--stat-inference-steps must be in 1...\(schedule.trainTimesteps), is \(n)")
            }
            stride = schedule.trainTimesteps / n
        } else { stride = 1 }
        objective = Objective(kind: c.objective, beta: Float(c.beta), statWeight: Float(c.statWeight), statStride: stride)
        divergenceGuard = DivergenceGuard(mseRatio: c.divergenceMSERatio, margin: c.divergenceMargin, patience: c.divergencePatience,
                                          active: c.objective != .sft)
        cache = try LatentCache.open(c.data)
        guard cache.latentShape[0] == model.spec.inChannels else {
            throw TrainInputError("\(c.data): latents have \(cache.latentShape[0]) channels, the U-Net takes \(model.spec.inChannels)")
        }
        guard cache.contextShape[1] == model.spec.crossAttentionDim else {
            throw TrainInputError("\(c.data): prompt embeddings are \(cache.contextShape[1]) wide, the U-Net's cross_attention_dim is \(model.spec.crossAttentionDim)")
        }
        try model.spec.checkLatentSize(height: cache.latentShape[1], width: cache.latentShape[2])
        validation = c.validationPrompts == nil ? nil
            : try Validation(config: c, unet: model, latentHeight: cache.latentShape[1], latentWidth: cache.latentShape[2])
        plan = try GlobalBatchPlan(count: cache.count, globalBatch: c.globalBatch, worldSize: comm.size, localBatch: c.localBatch,
                                   seed: c.seed)
        if let m = c.maxSteps { totalSteps = m } else { totalSteps = c.epochs * plan.stepsPerEpoch }
        guard totalSteps > 0 else { throw TrainInputError("nothing to train: --max-steps or --epochs gives 0 steps") }
        optimizer = try Trainer.makeOptimizer(c, lora: model.lora!)
        state = TrainerState(step: 0, epoch: 0, samplesSeen: 0, configHash: c.trajectoryHash, worldSize: comm.size,
                             loraRank: c.loraRank, loraAlpha: c.loraAlpha, seed: c.seed, consecutiveSkips: 0, skippedSteps: 0,
                             mixedPrecision: c.mixedPrecision)
        // Start: rank 0's LoRA everywhere (a resume loads it on every rank from the shared filesystem).
        model.lora!.initialize(seed: c.seed)
        if let r = c.resume, let dir = try Checkpoint.resolve(r, runDir: c.output) { try restore(dir) }
        try watchdog.guarded("MPI_Bcast of the initial LoRA") { try comm.broadcast(model.lora!.params.buffer) }
    }

    static func makeOptimizer(_ c: TrainConfig, lora: LoRAAdapters) throws -> Optimizer {
        var cfg = AdamWConfig()
        cfg.beta1 = c.adamBeta1; cfg.beta2 = c.adamBeta2; cfg.eps = c.adamEps; cfg.weightDecay = c.weightDecay
        switch c.optimizer {
        case "adamw": return AdamW(count: lora.count, config: cfg)
        case "adam8bit":
            // bitsandbytes quantizes per tensor: each LoRA A and B is its own segment (under 4096 elements: fp32 state).
            let segments = lora.targets.flatMap { t in
                [(offset: t.offsetA, count: lora.rank * t.inFeatures), (offset: t.offsetB, count: t.outFeatures * lora.rank)]
            }
            return Adam8bit(segments: segments, betas: (c.adamBeta1, c.adamBeta2), eps: c.adamEps, weightDecay: c.weightDecay,
                            decoupled: true)
        default: throw TrainInputError("--optimizer \(c.optimizer): expected adamw or adam8bit")
        }
    }

    func restore(_ dir: String) throws {
        let s = try Checkpoint.loadState(dir)
        // The precision is part of the trajectory (bf16 weights give other gradients): a change is refused, by name.
        let saved = s.mixedPrecision ?? "no"
        guard saved == config.mixedPrecision else {
            throw TrainInputError("\(dir): was trained with --mixed-precision \(saved), this run asks for \(config.mixedPrecision); "
                             + "resume with --mixed-precision \(saved), or start a new --out")
        }
        guard s.configHash == config.trajectoryHash else {
            throw TrainInputError("\(dir): was written by a run with other training settings (config hash \(s.configHash), "
                             + "this run \(config.trajectoryHash)); resume with the same settings or start a new --out")
        }
        let w = try LoRAFile.read((dir as NSString).appendingPathComponent(Checkpoint.loraFile))
        try model.lora!.assign(w, source: dir)
        try optimizer.loadState(from: try SafeTensorsFile(path: (dir as NSString).appendingPathComponent(Checkpoint.optimizerFile)))
        state = s
        state.worldSize = comm.size
        if comm.isRoot { log("resumed from \(dir) at step \(s.step)") }
    }

    /// Learning rate at a step: constant, or linear warm-up then constant / cosine decay to 0.
    func learningRate(_ step: Int) -> Float {
        let base = config.lr
        if config.warmupSteps > 0 && step < config.warmupSteps { return Float(base * Double(step + 1) / Double(config.warmupSteps)) }
        switch config.lrSchedule {
        case "cosine":
            let p = Double(step - config.warmupSteps) / Double(max(1, totalSteps - config.warmupSteps))
            return Float(base * 0.5 * (1 + _cos(Double.pi * min(1, p))))
        default: return Float(base)
        }
    }

    // MARK: - The loop

    /// Runs until the last step or a stop signal; returns the steps completed in this call.
    @discardableResult
    public func run() throws -> Int {
        let lora = model.lora!
        let c = cache.latentShape[0], h = cache.latentShape[1], w = cache.latentShape[2], n = c * h * w
        let s = cache.contextShape[0], d = cache.contextShape[1]
        let b = config.localBatch
        let metricsPath = (config.output as NSString).appendingPathComponent("metrics.jsonl")
        var metrics: FileHandle?
        if comm.isRoot {
            if !FileManager.default.fileExists(atPath: metricsPath) { _ = FileManager.default.createFile(atPath: metricsPath, contents: nil) }
            metrics = FileHandle(forWritingAtPath: metricsPath)
            metrics?.seekToEndOfFile()
        }
        defer { try? metrics?.close() }
        let started = Watchdog.now()
        let firstStep = state.step
        var done = 0
        // Buffers for one micro-batch.
        let winners = Buffer(uninitialized: b * n), losers = Buffer(uninitialized: b * n)
        let noise = Buffer(uninitialized: b * n), context = Buffer(uninitialized: b * s * d)
        let rng = CounterRNG(seed: config.seed)
        let gradSum = DoubleBuffer(count: lora.count)
        if let validation, state.step < totalSteps { try validation.runBaseIfNeeded(comm: comm, watchdog: watchdog, log: log) }
        while state.step < totalSteps {
            let stepStart = Watchdog.now()
            gradSum.zero()
            var terms = Objective.Terms()
            for micro in plan.microBatches(step: state.step, rank: comm.rank) {
                precondition(micro.count == b, "the plan gives micro-batches of exactly --local-batch")
                var timesteps: [Int] = []
                for (j, sample) in micro.enumerated() {
                    try cache.read(sample.datasetIndex, winner: winners.ptr + j * n, loser: losers.ptr + j * n,
                                   context: context.ptr + j * s * d)
                    // Noise and timestep depend only on (seed, epoch, position): the same whichever rank draws them.
                    rng.substream(Trainer.noisePurpose, UInt64(sample.epoch), UInt64(sample.position))
                        .fillNormal(UnsafeMutableBufferPointer(start: noise.ptr + j * n, count: n))
                    timesteps.append(rng.substream(Trainer.timestepPurpose, UInt64(sample.epoch), UInt64(sample.position))
                        .integer(0, below: schedule.trainTimesteps))
                }
                let batch = PairBatch(pairs: b, winner: winners.ptr, loser: losers.ptr, noise: noise.ptr, timesteps: timesteps,
                                      context: context.ptr, channels: c, height: h, width: w, contextLength: s, contextDim: d)
                lora.zeroGrad()
                terms.add(try accumulatePairGradients(model: model, objective: objective, schedule: schedule, batch: batch,
                                                      normalizer: config.globalBatch))
                // Each micro-batch's gradient is the same bits whatever the rank count (same samples, same order);
                // summing them in double makes the total independent of how they are split over ranks.
                let g = lora.grads.ptr
                for i in 0..<lora.count { gradSum.ptr[i] += Double(g[i]) }
            }
            try faults.inject(rank: comm.rank, step: state.step + 1, grads: gradSum)
            // One all-reduce for the gradients, one for the logged terms and the stop flag.
            let commStart = Watchdog.now()
            try watchdog.guarded("MPI_Allreduce of the LoRA gradients (step \(state.step))") { try comm.allreduce(gradSum.buffer) }
            let commSeconds = Watchdog.now() - commStart
            for i in 0..<lora.count { lora.grads.ptr[i] = Float(gradSum.ptr[i]) }
            var packed = [terms.loss, terms.dpo, terms.stat, terms.correct, terms.insideSum, terms.mseThetaW, terms.mseThetaL,
                          terms.mseRefW, terms.mseRefL, Double(terms.pairs), Double(stopSignal), terms.absInsideSum]
            try watchdog.guarded("MPI_Allreduce of the step's metrics (step \(state.step))") { try comm.allreduce(&packed) }
            let pairs = packed[9]
            // Global gradient norm, after the all-reduce: identical on every rank, so every rank decides the same.
            var sq = 0.0
            let g = lora.grads.ptr
            for i in 0..<lora.count { sq += Double(g[i]) * Double(g[i]) }
            let gradNorm = sq.squareRoot()
            let finite = gradNorm.isFinite && packed[0].isFinite
            let lr = learningRate(state.step)
            // As torch.nn.utils.clip_grad_norm_ (diffusers' and Salesforce's DPO scripts, max norm 1.0).
            let clipped = finite && config.maxGradNorm > 0 && gradNorm > config.maxGradNorm
            if finite {
                if clipped {
                    let f = Float(config.maxGradNorm / (gradNorm + 1e-6))
                    for i in 0..<lora.count { g[i] *= f }
                }
                optimizer.update(params: lora.params.ptr, grads: g, count: lora.count, lr: lr)
                state.consecutiveSkips = 0
            } else {
                state.consecutiveSkips += 1
                state.skippedSteps += 1
                if comm.isRoot { log("step \(state.step + 1): non-finite loss or gradient, step skipped (\(state.consecutiveSkips) in a row)") }
                if state.consecutiveSkips >= config.maxSkippedSteps {
                    throw TrainError("\(state.consecutiveSkips) consecutive steps had a non-finite loss or gradient; stopping "
                                     + "(last complete checkpoint: \(Checkpoint.list(runDir: config.output).last?.path ?? "none"))")
                }
            }
            state.step += 1
            state.samplesSeen += config.globalBatch
            state.epoch = (state.step - 1) / plan.stepsPerEpoch
            done += 1
            let now = Watchdog.now()
            if comm.isRoot && (state.step % max(1, config.logEvery) == 0 || state.step == totalSteps) {
                let elapsed = now - started
                let rate = Double(config.globalBatch * done) / max(elapsed, 1e-9)
                let eta = Double(totalSteps - state.step) * elapsed / Double(done)
                let record = JSONValue.object([
                    ("step", .int(state.step)), ("epoch", .int(state.epoch)), ("loss", .double(packed[0])),
                    ("dpo", .double(packed[1] / pairs)), ("stat", .double(packed[2] / pairs)),
                    ("stat_weighted", .double(Double(objective.statWeight) * packed[2] / pairs)),
                    ("implicit_acc", .double(packed[3] / pairs)), ("reward_margin", .double(packed[4] / pairs)),
                    ("reward_margin_abs", .double(packed[11] / pairs)),
                    ("mse_theta_w", .double(packed[5] / pairs)), ("mse_theta_l", .double(packed[6] / pairs)),
                    ("mse_ref_w", .double(packed[7] / pairs)), ("mse_ref_l", .double(packed[8] / pairs)),
                    ("lr", .double(Double(lr))), ("grad_norm", .double(gradNorm)), ("clipped", .bool(clipped)),
                    ("skipped", .bool(!finite)),
                    ("samples_per_s", .double(rate)), ("step_s", .double(now - stepStart)), ("allreduce_s", .double(commSeconds)), ("world_size", .int(comm.size)),
                ])
                metrics?.write((record.serialized() + "\n").data(using: .utf8)!)
                log(String(format: "step %d/%d  loss %.5f  dpo %.5f  stat %.3e  acc %.2f  %.2f samples/s  ETA %@",
                           state.step, totalSteps, packed[0], packed[1] / pairs, packed[2] / pairs, packed[3] / pairs, rate,
                           formatDuration(eta)))
            }
            let stop = packed[10] > 0
            // Every rank sees the same all-reduced figures, so every rank takes the same decision.
            let divergence = finite ? divergenceGuard.observe(step: state.step, mseThetaW: packed[5] / pairs,
                                                              mseRefW: packed[7] / pairs, absMargin: packed[11] / pairs) : nil
            if let divergence, comm.isRoot { log("warning: \(divergence)") }
            let stopDiverged = divergence != nil && config.stopOnDivergence
            if state.step % max(1, config.checkpointEvery) == 0 || state.step == totalSteps || stop || stopDiverged {
                try checkpoint()
            }
            if stopDiverged {
                throw TrainDivergedError(message: "\(divergence!); stopped by --stop-on-divergence after writing the checkpoint of step "
                                         + "\(state.step) (\(Checkpoint.list(runDir: config.output).last?.path ?? "none"))")
            }
            // After the checkpoint (a crash while sampling loses nothing) and not when stopping (Slurm's grace time).
            if let validation, !stop, validation.due(step: state.step, last: totalSteps) {
                try validation.run(step: state.step, comm: comm, watchdog: watchdog, log: log)
            }
            if stop {
                if comm.isRoot { log("stop signal received: checkpoint at step \(state.step) written, exiting") }
                break
            }
        }
        _ = firstStep
        return done
    }

    func checkpoint() throws {
        if comm.isRoot {
            let dir = try Checkpoint.save(runDir: config.output, state: state, lora: model.lora!, optimizer: optimizer,
                                          keep: config.keepCheckpoints)
            log("checkpoint: \(dir)")
        }
        try watchdog.guarded("MPI_Barrier after the checkpoint") { try comm.barrier() }
    }
}

/// Test hooks for the fault tests (never set in normal runs): `HGDPO_FAULT_NAN="rank=R,from_step=S"` puts a NaN into
/// rank R's gradients from step S on; `HGDPO_FAULT_EXIT="rank=R,step=S"` kills rank R (SIGKILL) at step S;
/// `HGDPO_FAULT_THROW="rank=R,step=S"` makes rank R fail with an error at step S (the other ranks are in a collective).
struct FaultInjection {
    var nanRank: Int?, nanFrom = 0, exitRank: Int?, exitStep = 0, throwRank: Int?, throwStep = 0

    static func fromEnvironment() -> FaultInjection {
        func parse(_ name: String) -> [String: Int]? {
            guard let v = getenv(name) else { return nil }
            var d: [String: Int] = [:]
            for part in String(cString: v).split(separator: ",") {
                let kv = part.split(separator: "=")
                if kv.count == 2, let n = Int(kv[1]) { d[String(kv[0])] = n }
            }
            return d
        }
        var f = FaultInjection()
        if let d = parse("HGDPO_FAULT_NAN") { f.nanRank = d["rank"]; f.nanFrom = d["from_step"] ?? 1 }
        if let d = parse("HGDPO_FAULT_EXIT") { f.exitRank = d["rank"]; f.exitStep = d["step"] ?? 1 }
        if let d = parse("HGDPO_FAULT_THROW") { f.throwRank = d["rank"]; f.throwStep = d["step"] ?? 1 }
        return f
    }

    func inject(rank: Int, step: Int, grads: DoubleBuffer) throws {
        if exitRank == rank && step == exitStep { raise(SIGKILL) }
        if throwRank == rank && step == throwStep { throw TrainError("fault injected by HGDPO_FAULT_THROW at step \(step)") }
        if nanRank == rank && step >= nanFrom && grads.count > 0 { grads.ptr[0] = .nan }
    }
}

/// A flat Double allocation (gradient accumulation across micro-batches and ranks).
final class DoubleBuffer {
    let count: Int
    let ptr: UnsafeMutablePointer<Double>
    init(count: Int) { self.count = count; ptr = .allocate(capacity: max(1, count)); ptr.initialize(repeating: 0, count: count) }
    deinit { ptr.deallocate() }
    var buffer: UnsafeMutableBufferPointer<Double> { UnsafeMutableBufferPointer(start: ptr, count: count) }
    func zero() { ptr.update(repeating: 0, count: count) }
}

/// Watches a preference run for the divergence users of DPO trainers report (the loss collapses while samples turn
/// to noise): a step is suspect when the policy's MSE on the winners exceeds `mseRatio` × the reference's (the policy
/// got worse at the data it should prefer) or when the pairs' mean |reward margin| |β·(Δref − Δθ)| exceeds `margin`
/// (the policy's MSEs moved so far from the reference's that the sigmoid saturates: the loss spikes, or the loser's
/// MSE is driven up without bound; healthy runs stay within a few units). After `patience` suspect steps in a row it
/// returns a warning naming the step and the figures, once per streak. Not active for `sft` (no reference).
struct DivergenceGuard {
    let mseRatio: Double, margin: Double, patience: Int, active: Bool
    private(set) var streak = 0

    init(mseRatio: Double, margin: Double, patience: Int, active: Bool) {
        self.mseRatio = mseRatio; self.margin = margin; self.patience = patience; self.active = active
    }

    mutating func observe(step: Int, mseThetaW: Double, mseRefW: Double, absMargin m: Double) -> String? {
        guard active else { return nil }
        let ratio = mseThetaW / max(mseRefW, 1e-30)
        guard ratio > mseRatio || m > margin else { streak = 0; return nil }
        streak += 1
        guard streak == patience else { return nil }
        return String(format: "training looks diverged at step %d: %d steps in a row with the policy's winner MSE %.4g = %.3g × "
                      + "the reference's %.4g (limit %.3g×) or the mean |reward margin| %.4g above %.4g; lower --lr or raise --beta",
                      step, streak, mseThetaW, ratio, mseRefW, mseRatio, m, margin)
    }
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
}

@_silgen_name("cos") private func _cos(_ x: Double) -> Double
