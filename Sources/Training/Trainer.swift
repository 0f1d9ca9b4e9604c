// `hgdpo train`: HG-DPO on LoRA adapters of a Stable Diffusion U-Net (or, `--train unet`, on all its parameters),
// data-parallel over MPI ranks.
//
// Each rank holds a U-Net replica with the same LoRA (rank 0's, broadcast at start), takes its contiguous share of
// every global batch from a world-size-independent plan (Data/Sampler.swift), accumulates local gradients over its
// micro-batches with the loss normalised by the global batch size, and all-reduces them by sum: so W ranks × local
// batch b × A accumulation steps give exactly the global batch G = W·b·A. The noise and timestep of a triplet are
// drawn from (seed, epoch, position in the epoch's permutation) with the counter RNG, never from a per-rank stream,
// so a run's trajectory does not depend on the number of ranks. Decisions (skip a non-finite step, stop on a signal)
// are taken on all-reduced values, so every rank takes the same one.
// The gradient sum over the ranks overlaps the last micro-batch's backward (--bucket-mb; BucketedSum): buckets of the
// gradient go out as the backward finishes them, in a fixed order and with a fixed order of additions per element, so
// the result is bit-identical with overlap on or off. Earlier micro-batches of an accumulation never communicate
// (as DDP's no_sync).
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
    /// Every collective of the run, under the --collective-timeout watchdog.
    let comm: GuardedCommunicator
    let model: UNetModel
    /// `--train unet` with a DPO objective: the frozen starting U-Net (with LoRA the reference is the model, LoRA off).
    let reference: UNetModel?
    /// Where the unet/config.json of `--train unet` checkpoints comes from.
    let unetConfigPath: String
    let schedule: NoiseSchedule
    let objective: Objective
    let optimizer: Optimizer
    let cache: LatentCache
    let plan: GlobalBatchPlan
    public let totalSteps: Int
    var state: TrainerState
    /// Test-only fault hooks (HGDPO_FAULT_*); nil in every normal run.
    let faults = FaultInjection(RuntimeOptions.current.faults)
    /// Validation images (--validation-prompts), nil without.
    let validation: Validation?
    var divergenceGuard: DivergenceGuard
    let log: (String) -> Void

    // Random-draw purposes (the counter RNG's stream path starts with one of these).
    static let noisePurpose: UInt64 = 0x6E6F_6973   // "nois"
    static let timestepPurpose: UInt64 = 0x7469_6D65 // "time"

    public init(config c: TrainConfig, comm: Communicator, log: @escaping (String) -> Void = { print($0) }) throws {
        self.config = c
        self.comm = GuardedCommunicator(comm, timeout: c.collectiveTimeout)
        self.log = log
        // From the start (loading a large U-Net takes a while): a stop request during set-up is honoured after the
        // first step instead of killing the rank with no checkpoint.
        signal(SIGTERM) { _ in stopSignal = 1 }
        signal(SIGUSR1) { _ in stopSignal = 1 }
        guard let precision = MixedPrecision(rawValue: c.mixedPrecision) else {
            throw TrainInputError("--mixed-precision \(c.mixedPrecision): expected no (fp32) or bf16")
        }
        let full = c.train == "unet"
        if full && precision != .no {
            throw TrainInputError("--train unet trains the fp32 weights: it needs --mixed-precision no (bf16 is for LoRA training)")
        }
        let folder = try ModelFolder(path: c.model)
        let unetFolder = try folder.unet()
        let schedulerFolder = ComponentFolder(path: (c.model as NSString).appendingPathComponent("scheduler"))
        schedule = try NoiseSchedule(try schedulerFolder.config(SchedulerConfig.self), source: schedulerFolder.configPath)
        // bf16: the frozen base weights in bf16 (half the memory, bf16 GEMMs where the CPU has them); the LoRA, its
        // gradients, their all-reduce and the optimizer stay fp32.
        unetConfigPath = unetFolder.configPath
        model = try UNetModel.load(folder: unetFolder, variant: c.variant, lora: full ? nil : (c.loraRank, Float(c.loraAlpha)),
                                   precision: precision)
        reference = full && c.objective != .sft ? try UNetModel.load(folder: unetFolder, variant: c.variant) : nil
        if full { model.enableWeightGradients() }
        model.gradientCheckpointing = c.gradientCheckpointing
        guard c.statInferenceSteps <= schedule.trainTimesteps else {
            throw TrainInputError("--stat-inference-steps must be in 1...\(schedule.trainTimesteps) (the scheduler's "
                                  + "num_train_timesteps), is \(c.statInferenceSteps)")
        }
        let stride = schedule.trainTimesteps / c.statInferenceSteps
        objective = Objective(kind: c.objective, beta: Float(c.beta), statWeight: Float(c.statWeight), statStride: stride,
                              prediction: PredictionType(rawValue: schedule.predictionType)!)
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
        optimizer = try Trainer.makeOptimizer(c, segments: Trainer.segments(model))
        state = TrainerState(step: 0, epoch: 0, samplesSeen: 0, configHash: c.trajectoryHash, worldSize: comm.size,
                             loraRank: c.loraRank, loraAlpha: c.loraAlpha, seed: c.seed, consecutiveSkips: 0, skippedSteps: 0,
                             mixedPrecision: c.mixedPrecision, train: full ? "unet" : nil)
        // Start: rank 0's LoRA (or U-Net) everywhere (a resume loads it on every rank from the shared filesystem).
        model.lora?.initialize(seed: c.seed)
        if let r = c.resume, let dir = try Checkpoint.resolve(r, runDir: c.output, log: comm.isRoot ? log : { _ in }) { try restore(dir) }
        try self.comm.broadcast(full ? "the initial U-Net" : "the initial LoRA", params.buffer)
    }

    /// The trained parameters and their gradients, flat, same layout: the LoRA's, or (`--train unet`) the U-Net's.
    var params: Buffer { model.lora?.params ?? model.weights.storage }
    var grads: Buffer { model.lora?.grads ?? model.weightGrads! }

    /// The optimizer's tensors (8-bit Adam quantizes per tensor): each LoRA A and B, or each U-Net parameter.
    static func segments(_ model: UNetModel) -> [(offset: Int, count: Int)] {
        if let lora = model.lora {
            return lora.targets.flatMap { t in
                [(offset: t.offsetA, count: lora.rank * t.inFeatures), (offset: t.offsetB, count: t.outFeatures * lora.rank)]
            }
        }
        return model.weights.table.entries.map { (offset: $0.offset, count: $0.count) }
    }

    static func makeOptimizer(_ c: TrainConfig, segments: [(offset: Int, count: Int)]) throws -> Optimizer {
        var cfg = AdamWConfig()
        cfg.beta1 = c.adamBeta1; cfg.beta2 = c.adamBeta2; cfg.eps = c.adamEps; cfg.weightDecay = c.weightDecay
        switch c.optimizer {
        case "adamw": return AdamW(count: segments.reduce(0) { $0 + $1.count }, config: cfg)
        case "adam8bit":
            // bitsandbytes quantizes per tensor: each is its own segment (under 4096 elements: fp32 state).
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
        let savedTrain = s.train ?? "lora"
        guard savedTrain == config.train else {
            throw TrainInputError("\(dir): was trained with --train \(savedTrain), this run asks for --train \(config.train); "
                                  + "resume with --train \(savedTrain), or start a new --out")
        }
        if let lora = model.lora {
            try lora.assign(try LoRAFile.read((dir as NSString).appendingPathComponent(Checkpoint.loraFile)), source: dir)
        } else {
            try model.weights.load(files: [(dir as NSString).appendingPathComponent(Checkpoint.unetWeightsFile)], model: "U-Net")
        }
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
        let metrics = comm.isRoot ? try openMetrics() : nil
        defer { try? metrics?.close() }
        let buffers = MicroBatchBuffers(cache: cache, localBatch: config.localBatch)
        let gradSum = DoubleBuffer(count: grads.count)
        let exchange = try BucketedSum(comm, buffer: gradSum.buffer, bucketElements: config.bucketElements)
        let started = Watchdog.now()
        var done = 0
        if let validation, state.step < totalSteps { try validation.runBaseIfNeeded(comm: comm, log: log) }
        while state.step < totalSteps {
            let stepStart = Watchdog.now()
            let terms = try accumulateGradients(into: gradSum, buffers, exchange)
            let figures = try reduce(gradSum, exchange, terms)
            let update = try applyUpdate(figures)
            done += 1
            if comm.isRoot && (state.step % max(1, config.logEvery) == 0 || state.step == totalSteps) {
                try logStep(figures, update, to: metrics, elapsed: Watchdog.now() - started, stepSeconds: Watchdog.now() - stepStart,
                        stepsDone: done)
            }
            if try finishStep(figures) { break }
        }
        return done
    }

    /// RUN_DIR/metrics.jsonl, appended to (rank 0).
    /// metrics.jsonl for appending, cut back to the steps before the one training continues from (a resume that fell
    /// back to an older checkpoint must not leave the later steps' records in the log).
    func openMetrics() throws -> FileHandle? {
        let path = (config.output as NSString).appendingPathComponent("metrics.jsonl")
        try Checkpoint.trimMetrics(path, throughStep: state.step)
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        let metrics = FileHandle(forWritingAtPath: path)
        metrics?.seekToEndOfFile()
        return metrics
    }

    /// One micro-batch's latents, noise and context (B = --local-batch).
    struct MicroBatchBuffers {
        let c: Int, h: Int, w: Int, s: Int, d: Int, b: Int
        var n: Int { c * h * w }
        let winners: Buffer, losers: Buffer, noise: Buffer, context: Buffer    // (B, C, H, W) ×3, (B, S, D)

        init(cache: LatentCache, localBatch b: Int) {
            c = cache.latentShape[0]; h = cache.latentShape[1]; w = cache.latentShape[2]
            s = cache.contextShape[0]; d = cache.contextShape[1]; self.b = b
            winners = Buffer(uninitialized: b * c * h * w); losers = Buffer(uninitialized: b * c * h * w)
            noise = Buffer(uninitialized: b * c * h * w); context = Buffer(uninitialized: b * s * d)
        }
    }

    /// Step 1: this rank's micro-batches of the step (read, draw noise and timesteps, forward and backward), their
    /// gradients summed in double into `gradSum`; during the last backward, the parts of `gradSum` that are complete
    /// are handed to `exchange`, whose buckets then go out while the backward runs on.
    func accumulateGradients(into gradSum: DoubleBuffer, _ io: MicroBatchBuffers, _ exchange: BucketedSum) throws -> Objective.Terms {
        let grads = self.grads
        let rng = CounterRNG(seed: config.seed)
        let n = io.n, sd = io.s * io.d
        gradSum.zero()
        exchange.begin()
        var terms = Objective.Terms()
        let micros = plan.microBatches(step: state.step, rank: comm.rank)
        for (m, micro) in micros.enumerated() {
            let last = m == micros.count - 1
            precondition(micro.count == io.b, "the plan gives micro-batches of exactly --local-batch")
            var timesteps: [Int] = []
            for (j, sample) in micro.enumerated() {
                try cache.read(sample.datasetIndex, winner: io.winners.ptr + j * n, loser: io.losers.ptr + j * n,
                               context: io.context.ptr + j * sd)
                // Noise and timestep depend only on (seed, epoch, position): the same whichever rank draws them.
                rng.substream(Trainer.noisePurpose, UInt64(sample.epoch), UInt64(sample.position))
                    .fillNormal(UnsafeMutableBufferPointer(start: io.noise.ptr + j * n, count: n))
                timesteps.append(rng.substream(Trainer.timestepPurpose, UInt64(sample.epoch), UInt64(sample.position))
                    .integer(0, below: schedule.trainTimesteps))
            }
            let batch = PairBatch(pairs: io.b, winner: io.winners.ptr, loser: io.losers.ptr, noise: io.noise.ptr,
                                  timesteps: timesteps, context: io.context.ptr, channels: io.c, height: io.h, width: io.w,
                                  contextLength: io.s, contextDim: io.d)
            grads.zero()
            // Before the last micro-batch's backward starts handing buckets out (a NaN fault goes into all of them).
            if last { try faults?.inject(rank: comm.rank, step: state.step + 1, grads: gradSum) }
            // Each micro-batch's gradient is the same bits whatever the rank count (same samples, same order);
            // summing them in double makes the total independent of how they are split over ranks. gradSum[from...]
            // gets this micro-batch's part as soon as the backward reports it final: the same additions, earlier.
            let g = grads.ptr
            var added = grads.count
            let addFinal = { (from: Int) in
                guard from < added else { return }
                for i in from..<added { gradSum.ptr[i] += Double(g[i]) }
                added = from
            }
            terms.add(try accumulatePairGradients(model: model, reference: reference, objective: objective, schedule: schedule,
                                                  batch: batch, normalizer: config.globalBatch,
                                                  gradientsFinal: last && exchange.overlaps ? { from in
                                                      addFinal(from)
                                                      exchange.markFinal(from: from)
                                                  } : nil))
            addFinal(0)
        }
        return terms
    }

    /// What every rank knows after the step's all-reduces: the same bits everywhere, so every rank decides the same.
    struct StepFigures {
        /// Σ over ranks of loss, dpo, stat, correct, Σ inside, the four MSEs, pairs, stop flag, Σ |inside|.
        let packed: [Double]
        let gradNorm: Double, commSeconds: Double
        /// The gradient's buckets, and how many of them went out during the backward.
        let buckets: Int, overlappedBuckets: Int
        var loss: Double { packed[0] }
        var pairs: Double { packed[9] }
        var stop: Bool { packed[10] > 0 }
        var finite: Bool { gradNorm.isFinite && loss.isFinite }
        func perPair(_ i: Int) -> Double { packed[i] / pairs }
    }

    /// Step 2: the all-reduces of the gradients (the rest of `exchange`, then into `lora.grads`) and of the logged
    /// terms with the stop flag. `commSeconds`: the time spent waiting for the gradient sum after the backward (what
    /// the overlap did not hide).
    func reduce(_ gradSum: DoubleBuffer, _ exchange: BucketedSum, _ terms: Objective.Terms) throws -> StepFigures {
        let grads = self.grads
        let commStart = Watchdog.now()
        try exchange.finish("the gradients (step \(state.step + 1))")
        let commSeconds = Watchdog.now() - commStart
        for i in 0..<grads.count { grads.ptr[i] = Float(gradSum.ptr[i]) }
        var packed = [terms.loss, terms.dpo, terms.stat, terms.correct, terms.insideSum, terms.mseThetaW, terms.mseThetaL,
                      terms.mseRefW, terms.mseRefL, Double(terms.pairs), Double(stopSignal), terms.absInsideSum]
        try comm.allreduce("the step's metrics (step \(state.step))", &packed)
        // Global gradient norm, after the all-reduce.
        var sq = 0.0
        let g = grads.ptr
        for i in 0..<grads.count { sq += Double(g[i]) * Double(g[i]) }
        return StepFigures(packed: packed, gradNorm: sq.squareRoot(), commSeconds: commSeconds,
                           buckets: exchange.overlaps ? exchange.bounds.count : 1, overlappedBuckets: exchange.overlappedBuckets)
    }

    struct StepUpdate { let lr: Float, clipped: Bool }

    /// Step 3: clip and apply the update, or skip a non-finite step (failing after --max-skipped-steps in a row);
    /// advance the step counters.
    func applyUpdate(_ f: StepFigures) throws -> StepUpdate {
        let grads = self.grads, g = grads.ptr
        let lr = learningRate(state.step)
        // As torch.nn.utils.clip_grad_norm_ (diffusers' and Salesforce's DPO scripts, max norm 1.0).
        let clipped = f.finite && config.maxGradNorm > 0 && f.gradNorm > config.maxGradNorm
        if f.finite {
            if clipped {
                let factor = Float(config.maxGradNorm / (f.gradNorm + 1e-6))
                for i in 0..<grads.count { g[i] *= factor }
            }
            optimizer.update(params: params.ptr, grads: g, count: grads.count, lr: lr)
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
        return StepUpdate(lr: lr, clipped: clipped)
    }

    /// Step 4 (rank 0): one JSON record in metrics.jsonl and the progress line.
    func logStep(_ f: StepFigures, _ u: StepUpdate, to metrics: FileHandle?, elapsed: Double, stepSeconds: Double, stepsDone: Int) throws {
        let rate = Double(config.globalBatch * stepsDone) / max(elapsed, 1e-9)
        let eta = Double(totalSteps - state.step) * elapsed / Double(stepsDone)
        let record = JSONValue.object([
            ("step", .int(state.step)), ("epoch", .int(state.epoch)), ("loss", .double(f.loss)),
            ("dpo", .double(f.perPair(1))), ("stat", .double(f.perPair(2))),
            ("stat_weighted", .double(Double(objective.statWeight) * f.perPair(2))),
            ("implicit_acc", .double(f.perPair(3))), ("reward_margin", .double(f.perPair(4))),
            ("reward_margin_abs", .double(f.perPair(11))),
            ("mse_theta_w", .double(f.perPair(5))), ("mse_theta_l", .double(f.perPair(6))),
            ("mse_ref_w", .double(f.perPair(7))), ("mse_ref_l", .double(f.perPair(8))),
            ("lr", .double(Double(u.lr))), ("grad_norm", .double(f.gradNorm)), ("clipped", .bool(u.clipped)),
            ("skipped", .bool(!f.finite)),
            ("samples_per_s", .double(rate)), ("step_s", .double(stepSeconds)), ("allreduce_s", .double(f.commSeconds)),
            ("grad_buckets", .int(f.buckets)), ("grad_buckets_overlapped", .int(f.overlappedBuckets)),
            ("world_size", .int(comm.size)),
        ])
        // write(contentsOf:) throws where write(_:) traps (a full disk would crash the rank).
        do { try metrics?.write(contentsOf: Data((record.serialized() + "\n").utf8)) } catch {
            throw TrainError("metrics.jsonl in \(config.output): cannot append the step's record: \(error.localizedDescription)")
        }
        log(String(format: "step %d/%d  loss %.5f  dpo %.5f  stat %.3e  acc %.2f  %.2f samples/s  ETA %@",
                   state.step, totalSteps, f.loss, f.perPair(1), f.perPair(2), f.perPair(3), rate, formatDuration(eta)))
    }

    /// Step 5: the divergence guard, the checkpoint, validation images; true when the run stops here.
    func finishStep(_ f: StepFigures) throws -> Bool {
        let divergence = f.finite ? divergenceGuard.observe(step: state.step, mseThetaW: f.perPair(5), mseRefW: f.perPair(7),
                                                            absMargin: f.perPair(11)) : nil
        if let divergence, comm.isRoot { log("warning: \(divergence)") }
        let stopDiverged = divergence != nil && config.stopOnDivergence
        if state.step % max(1, config.checkpointEvery) == 0 || state.step == totalSteps || f.stop || stopDiverged {
            try checkpoint()
        }
        if let divergence, stopDiverged {
            throw TrainDivergedError(message: "\(divergence); stopped by --stop-on-divergence after writing the checkpoint of step "
                                     + "\(state.step) (\(Checkpoint.list(runDir: config.output).last?.path ?? "none"))")
        }
        // After the checkpoint (a crash while sampling loses nothing) and not when stopping (Slurm's grace time).
        if let validation, !f.stop, validation.due(step: state.step, last: totalSteps) {
            try validation.run(step: state.step, comm: comm, log: log)
        }
        if f.stop, comm.isRoot { log("stop signal received: checkpoint at step \(state.step) written, exiting") }
        return f.stop
    }

    func checkpoint() throws {
        if comm.isRoot {
            let weights: CheckpointWeights = model.lora.map { .lora($0) } ?? .unet(model, config: unetConfigPath)
            let dir = try Checkpoint.save(runDir: config.output, state: state, weights: weights, optimizer: optimizer,
                                          keep: config.keepCheckpoints)
            log("checkpoint: \(dir)")
        }
        try comm.barrier("after the checkpoint")
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
