// `hgdpo bench step`: times one full HG-DPO training step with random weights, as ../shared/bench/torch_dpo_step.py
// does in PyTorch (same configs, same JSON), so the two can be compared on one machine with the same threads.
// A step: winner and loser share noise and timestep; policy (LoRA on) and reference (LoRA off) forwards over both;
// the HG-DPO loss; backward of the policy forward; AdamW update of the LoRA.
import Distributed
import Foundation
import IO
import NN
import Layers
import Schedulers
import Tensors
import Training
import UNet

extension Commands {
    /// The U-Net shapes of ../shared/bench/unet_configs.py.
    static func benchConfig(_ name: String) throws -> UNet2DConditionConfig {
        var sd15 = UNet2DConditionConfig()
        sd15.crossAttentionDim = .one(768)
        sd15.sampleSize = 64
        switch name {
        case "sd15": return sd15
        case "tiny":
            var c = sd15
            c.blockOutChannels = [32, 64, 64, 64]; c.crossAttentionDim = .one(32); c.normNumGroups = 8; c.layersPerBlock = .one(1)
            return c
        case "small":
            var c = sd15
            c.blockOutChannels = [64, 128, 256, 256]; c.crossAttentionDim = .one(256); c.layersPerBlock = .one(1)
            return c
        default:
            return try ModelFolder(path: name).unet().config(UNet2DConditionConfig.self)
        }
    }

    static let benchStep = CommandSpec(
        ["bench", "step"],
        summary: "Time one HG-DPO training step on a random-weight U-Net and print JSON (compare: bench/compare.sh)",
        details: "Example: hgdpo bench step --shape small --latent 32 --pairs 1 --steps 3 --threads 2",
        options: [
            .value("--shape", "NAME|DIR", "tiny, small, sd15 (../shared/bench/unet_configs.py) or a U-Net folder's config", default: "sd15"),
            .value("--latent", "N", "Latent height and width", default: "32"),
            .value("--pairs", "P", "Preference pairs per step", default: "1"),
            .value("--steps", "K", "Timed steps (after one warm-up step)", default: "3"),
            .value("--lora-rank", "R", "LoRA rank (alpha = rank)", default: "8"),
            .value("--context-length", "S", "Text tokens", default: "77"),
            .value("--mixed-precision", "MODE", "no = fp32; bf16 = conv / linear weights in bf16, fp32 sums (see `hgdpo train`)",
                   default: "no", choices: ["no", "bf16"]),
            .value("--threads", "N", "Compute threads (default: HGDPO_THREADS or all cores)"),
            .flag("--gradient-checkpointing", "Recompute block activations in backward (less memory, more compute)"),
            .value("--objective", "NAME", "hgdpo (policy + reference over winners and losers) or sft (policy over the winners only)",
                   default: "hgdpo", choices: ["hgdpo", "dpo", "sft"]),
        ]
    ) { args in
        try applyThreads(args)
        let name = try args.requiredString("--shape")
        let spec = try UNetSpec(try benchConfig(name))
        let l = try args.int("--latent", in: 8...512)!, b = try args.int("--pairs", in: 1...256)!
        let steps = try args.int("--steps", in: 1...1000)!, rank = try args.int("--lora-rank", in: 1...1024)!
        let s = try args.int("--context-length", in: 1...1024)!
        try spec.checkLatentSize(height: l, width: l)
        let precision = MixedPrecision(rawValue: args.string("--mixed-precision")!)!
        let model = UNetModel(spec: spec, lora: (rank, Float(rank)), precision: precision)
        model.gradientCheckpointing = args.flag("--gradient-checkpointing")
        model.randomizeWeights(seed: 0)
        model.lora!.initialize(seed: 0)
        var sched = SchedulerConfig()
        sched.betaStart = 0.00085; sched.betaEnd = 0.012; sched.betaSchedule = "scaled_linear"
        let schedule = try NoiseSchedule(sched)
        let objective = Objective(kind: ObjectiveKind(rawValue: args.string("--objective")!)!)
        let opt = AdamW(count: model.lora!.count)
        let c = spec.inChannels, n = c * l * l, d = spec.crossAttentionDim
        let rng = CounterRNG(seed: 1)
        let winners = Buffer(rng.substream(1).normals(b * n)), losers = Buffer(rng.substream(2).normals(b * n))
        let context = Buffer(rng.substream(3).normals(b * s * d))

        func step(_ k: Int) throws {
            let noise = Buffer(rng.substream(4, UInt64(k)).normals(b * n))
            let t = (0..<b).map { rng.substream(5, UInt64(k)).integer(UInt64($0), below: schedule.trainTimesteps) }
            let batch = PairBatch(pairs: b, winner: winners.ptr, loser: losers.ptr, noise: noise.ptr, timesteps: t, context: context.ptr,
                                  channels: c, height: l, width: l, contextLength: s, contextDim: d)
            model.lora!.zeroGrad()
            _ = try accumulatePairGradients(model: model, objective: objective, schedule: schedule, batch: batch, normalizer: b)
            opt.update(params: model.lora!.params.ptr, grads: model.lora!.grads.ptr, count: model.lora!.count, lr: 1e-5)
        }
        try step(0)
        var times: [Double] = []
        for k in 1...steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try step(k)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        times.sort()
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        // The kernel paths of this run (bench/compare.sh prints them beside the figures).
        let headDims: [Int] = spec.down.filter(\.hasAttention).map { $0.outChannels / $0.heads }
            + [spec.config.blockOutChannels.last! / spec.midHeads]
        let attention: [(String, JSONValue)] = Set(headDims).sorted().map { ("head_dim_\($0)", .string(KernelPaths.attention(headDim: $0, bf16: precision == .bf16))) }
        let kernels = JSONValue.object([
            ("attention", .object(attention)),
            ("convolution", .string(KernelPaths.convolution(bf16Weights: precision == .bf16))),
            ("gemm", .string(KernelPaths.gemm)),
            ("bf16_gemm", .string(precision == .bf16 ? KernelPaths.bf16GEMM : "unused (fp32)")),
        ])
        print(JSONValue.object([
            ("impl", .string("hgdpo-\(version)")), ("config", .string(name)), ("objective", .string(objective.kind.rawValue)),
            ("latent", .int(l)), ("pairs", .int(b)),
            ("threads", .int(Parallel.threads)), ("bf16", .bool(precision == .bf16)),
            ("bf16_gemm", .string(precision == .bf16 ? (BF16.isAccelerated ? "avx512bf16" : "widened to fp32 + sgemm") : "none")), ("gradient_checkpointing", .bool(model.gradientCheckpointing)),
            ("kernels", kernels),
            ("median_step_s", .double(times[times.count / 2])),
            ("min_step_s", .double(times[0])), ("peak_rss_mb", .double(Double(usage.ru_maxrss) / 1024)),
            ("params", .int(model.weights.table.count)), ("param_bytes", .int(model.weights.byteCount)),
            ("lora_params", .int(model.lora!.count)),
        ]).serialized())
    }
}

// `hgdpo bench allreduce`: times the trainer's one big collective, the all-reduce of the LoRA gradient, on the ranks
// it is started on (launch/local.sh, launch/mpirun.sh): see bench/allreduce.sh and BENCHMARKS.md.
extension Commands {
    static let benchAllreduce = CommandSpec(
        ["bench", "allreduce"],
        summary: "Time the all-reduce of the LoRA gradient across the MPI ranks and print JSON (bench/allreduce.sh)",
        details: """
            The element count defaults to the U-Net LoRA of --shape at --lora-rank (sd15, rank 8: 1,594,368), in the trainer's
            dtype (f64: it sums gradients in double); each iteration is barrier, all-reduce, and the slowest rank's time.
            --method ordered is the trainer's sum (Distributed/OrderedSum.swift: rank order per element, Isend/Irecv,
            one bucket), mpi is MPI_Allreduce.
            Bus bandwidth = bytes × 2(n−1)/n / time (what a ring all-reduce moves per rank), comparable to a link's speed.
            Example: launch/local.sh 4 hgdpo bench allreduce --iters 20
            """,
        options: [
            .value("--count", "N", "Elements (default: the LoRA of --shape at --lora-rank)"),
            .value("--shape", "NAME|DIR", "U-Net whose LoRA sets the count: tiny, small, sd15 or a U-Net folder", default: "sd15"),
            .value("--lora-rank", "R", "LoRA rank", default: "8"),
            .value("--dtype", "T", "f64 (what hgdpo train all-reduces) or f32", default: "f64", choices: ["f64", "f32"]),
            .value("--method", "M", "ordered (the trainer's fixed-order sum, f64) or mpi (MPI_Allreduce)", default: "ordered",
                   choices: ["ordered", "mpi"]),
            .value("--iters", "K", "Timed iterations (after --warmup)", default: "20"),
            .value("--warmup", "W", "Untimed iterations first", default: "3"),
        ]
    ) { args in
        let comm = try Communicator.world()
        let count: Int
        if args.given("--count") { count = try args.int("--count", in: 1...(1 << 31))! } else {
            let spec = try UNetSpec(try benchConfig(try args.requiredString("--shape")))
            let r = try args.int("--lora-rank", in: 1...1024)!
            count = UNetModel(spec: spec, lora: (r, Float(r))).lora!.count  // weights are reserved, never touched
        }
        let iters = try args.int("--iters", in: 1...100_000)!, warmup = try args.int("--warmup", in: 0...100_000)!
        let f64 = args.string("--dtype") == "f64", ordered = args.string("--method") == "ordered"
        if ordered && !f64 { throw CLIError.invalid("--dtype f32 needs --method mpi (the trainer's ordered sum is in f64)") }
        let guarded = GuardedCommunicator(comm, timeout: 0)
        var d = f64 ? [Double](repeating: 0, count: count) : [], f = f64 ? [] : [Float](repeating: 0, count: count)
        var times: [Double] = []
        var wrong = 0
        for k in 0..<(warmup + iters) {
            // Every element becomes the sum over ranks of (rank + 1): W(W+1)/2, exact in both dtypes.
            if f64 { for i in 0..<count { d[i] = Double(comm.rank + 1) } } else { for i in 0..<count { f[i] = Float(comm.rank + 1) } }
            try comm.barrier()
            let t0 = Watchdog.now()
            if ordered {
                try d.withUnsafeMutableBufferPointer { try BucketedSum(guarded, buffer: $0, bucketElements: 0).finish("the benchmark's buffer") }
            } else if f64 { try comm.allreduce(&d) } else { try comm.allreduce(&f) }
            let t = try comm.allreduce(Watchdog.now() - t0, op: .max)
            let expected = Double(comm.size * (comm.size + 1) / 2)
            for i in stride(from: 0, to: count, by: 997) where (f64 ? d[i] : Double(f[i])) != expected { wrong += 1 }
            if k >= warmup { times.append(t) }
        }
        wrong = Int(try comm.allreduce(Double(wrong)))
        let bytes = count * (f64 ? 8 : 4)
        let hosts = Set(try (0..<comm.size).map { String(decoding: try comm.broadcast(Array(comm.host.utf8), root: $0), as: UTF8.self) })
        times.sort()
        let median = times[times.count / 2], w = Double(comm.size)
        if comm.isRoot {
            print(JSONValue.object([
                ("count", .int(count)), ("dtype", .string(f64 ? "f64" : "f32")), ("method", .string(ordered ? "ordered" : "mpi")),
                ("bytes", .int(bytes)),
                ("ranks", .int(comm.size)), ("hosts", .int(hosts.count)), ("iters", .int(iters)),
                ("median_s", .double(median)), ("min_s", .double(times[0])), ("max_s", .double(times[times.count - 1])),
                ("algbw_gb_s", .double(Double(bytes) / median / 1e9)),
                ("busbw_gb_s", .double(Double(bytes) * 2 * (w - 1) / w / median / 1e9)), ("ok", .bool(wrong == 0)),
            ]).serialized())
        }
        if wrong != 0 { throw CLIError.invalid("all-reduce gave \(wrong) wrong values (checked every 997th element)") }
    }
}

// `hgdpo bench attention`: times the attention kernels alone (forward, and backward with its recomputation) on the
// U-Net's layout, q (B, Nq, H·d), k and v (B, Nk, H·d); bench/attention_torch.py times F.scaled_dot_product_attention
// on the same shapes, so a slow level of the U-Net can be looked at by itself.
extension Commands {
    static let benchAttention = CommandSpec(
        ["bench", "attention"],
        summary: "Time the attention forward and backward kernels on one shape and print JSON",
        details: "Example: hgdpo bench attention --batch 2 --tokens 1024 --keys 1024 --heads 8 --head-dim 8 --threads 2",
        options: [
            .value("--batch", "B", "Samples", default: "2"),
            .value("--tokens", "N", "Query tokens (latent height × width at that level)", default: "1024"),
            .value("--keys", "N", "Key tokens (= --tokens for self-attention, 77 for cross-attention)", default: "1024"),
            .value("--heads", "H", "Heads", default: "8"),
            .value("--head-dim", "D", "Channels per head", default: "8"),
            .value("--iters", "K", "Timed iterations (after one warm-up)", default: "10"),
            .value("--threads", "N", "Compute threads (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        let B = try args.int("--batch", in: 1...256)!, Nq = try args.int("--tokens", in: 1...65536)!
        let Nk = try args.int("--keys", in: 1...65536)!, H = try args.int("--heads", in: 1...256)!
        let d = try args.int("--head-dim", in: 1...1024)!, iters = try args.int("--iters", in: 1...10000)!
        let rng = CounterRNG(seed: 7)
        let q = Buffer(rng.substream(1).normals(B * Nq * H * d)), k = Buffer(rng.substream(2).normals(B * Nk * H * d))
        let v = Buffer(rng.substream(3).normals(B * Nk * H * d)), dout = Buffer(rng.substream(4).normals(B * Nq * H * d))
        let out = Buffer(zeros: B * Nq * H * d), lse = Buffer(zeros: B * H * Nq)
        let dq = Buffer(zeros: B * Nq * H * d), dk = Buffer(zeros: B * Nk * H * d), dv = Buffer(zeros: B * Nk * H * d)
        let ws = Buffer(zeros: attentionWorkspaceSize(B: B, Nq: Nq, Nk: Nk, heads: H, headDim: d))
        let t = timeKernelPair(iters: iters) {
            attentionForward(out: out.ptr, lse: lse.ptr, q: q.ptr, k: k.ptr, v: v.ptr, B: B, Nq: Nq, Nk: Nk, heads: H,
                             headDim: d, workspace: ws.ptr)
        } backward: {
            attentionBackward(dq: dq.ptr, dk: dk.ptr, dv: dv.ptr, dout: dout.ptr, q: q.ptr, k: k.ptr, v: v.ptr, out: out.ptr,
                              lse: lse.ptr, B: B, Nq: Nq, Nk: Nk, heads: H, headDim: d, workspace: ws.ptr)
        }
        let flops = 4.0 * Double(B * H * Nq * Nk * d)       // Q·Kᵀ and P·V; the backward counts 2.5 times that
        print(JSONValue.object([
            ("impl", .string("hgdpo-\(version)")), ("batch", .int(B)), ("tokens", .int(Nq)), ("keys", .int(Nk)),
            ("heads", .int(H)), ("head_dim", .int(d)), ("threads", .int(Parallel.threads)),
        ] + t.fields(forwardFlops: flops, backwardFlops: 2.5 * flops)).serialized())
    }
}

// `hgdpo bench conv`: times one convolution's forward and input gradient (what the trainer's backward computes for
// frozen convolutions) with random fp32 weights; HGDPO_CONV=blas forces im2col + OpenBLAS for comparison.
extension Commands {
    static let benchConv = CommandSpec(
        ["bench", "conv"],
        summary: "Time a convolution's forward and input gradient on one shape and print JSON",
        details: "Example: hgdpo bench conv --batch 2 --in-channels 64 --out-channels 64 --size 32 --kernel 3 --threads 2",
        options: [
            .value("--batch", "B", "Images", default: "2"),
            .value("--in-channels", "C", "Input channels", default: "64"),
            .value("--out-channels", "C", "Output channels", default: "64"),
            .value("--size", "N", "Input height and width", default: "32"),
            .value("--kernel", "K", "Kernel size (padding K/2)", default: "3"),
            .value("--stride", "S", "Stride", default: "1"),
            .value("--iters", "K", "Timed iterations (after one warm-up)", default: "10"),
            .value("--threads", "N", "Compute threads (default: HGDPO_THREADS or all cores)"),
            .value("--mixed-precision", "MODE", "no = fp32 weights; bf16 = the weights in bf16, fp32 sums (as `hgdpo train`)",
                   default: "no", choices: ["no", "bf16"]),
        ]
    ) { args in
        try applyThreads(args)
        let bf16 = args.string("--mixed-precision") == "bf16"
        let B = try args.int("--batch", in: 1...256)!, cin = try args.int("--in-channels", in: 1...8192)!
        let cout = try args.int("--out-channels", in: 1...8192)!, n = try args.int("--size", in: 1...4096)!
        let k = try args.int("--kernel", in: 1...15)!, s = try args.int("--stride", in: 1...8)!
        let iters = try args.int("--iters", in: 1...10000)!
        let p = k / 2, no = (n + 2 * p - k) / s + 1
        let rng = CounterRNG(seed: 9)
        let x = Buffer(rng.substream(1).normals(B * cin * n * n)), w = Buffer(rng.substream(2).normals(cout * cin * k * k))
        let bias = Buffer(zeros: cout), dout = Buffer(rng.substream(3).normals(B * cout * no * no))
        let out = Buffer(zeros: B * cout * no * no), dinp = Buffer(zeros: B * cin * n * n)
        let ws = Buffer(zeros: conv2dWorkspaceSize(Cin: cin, H: n, W: n, kernel: k, stride: s, padding: p))
        let wBF16 = BF16Buffer(uninitialized: bf16 ? w.count : 0)
        if bf16 { BF16.convert(w.ptr, to: wBF16.ptr, count: w.count) }
        let weight: WeightMatrix = bf16 ? .bf16(wBF16.ptr) : .f32(w.ptr)
        let t = timeKernelPair(iters: iters) {
            conv2dForward(out: out.ptr, inp: x.ptr, weight: weight, bias: bias.ptr, B: B, Cin: cin, H: n, W: n, Cout: cout,
                          kernel: k, stride: s, padding: Conv2DPadding(p), workspace: ws.ptr)
        } backward: {
            conv2dBackwardInput(dinp: dinp.ptr, dout: dout.ptr, weight: weight, B: B, Cin: cin, H: n, W: n, Cout: cout,
                                kernel: k, stride: s, padding: Conv2DPadding(p), workspace: ws.ptr)
        }
        let flops = 2.0 * Double(B * cout * cin * k * k * no * no)   // the input gradient costs the same
        print(JSONValue.object([
            ("impl", .string("hgdpo-\(version)")), ("batch", .int(B)), ("in", .int(cin)), ("out", .int(cout)),
            ("size", .int(n)), ("kernel", .int(k)), ("stride", .int(s)), ("threads", .int(Parallel.threads)),
            ("bf16", .bool(bf16)), ("forward_path", .string(conv2dPathName(bf16: bf16, stride: s, kernel: k, Ho: no, Wo: no))),
        ] + t.fields(forwardFlops: flops, backwardFlops: flops)).serialized())
    }
}

/// Seconds of a forward and a backward kernel, each run once untimed and then `iters` times, sorted.
struct KernelPairTimes {
    var forward: [Double] = [], backward: [Double] = []

    /// Median and minimum milliseconds of both, and GFLOPS at the minimum.
    func fields(forwardFlops: Double, backwardFlops: Double) -> [(String, JSONValue)] {
        [("forward_ms", .double(forward[forward.count / 2] * 1e3)), ("backward_ms", .double(backward[backward.count / 2] * 1e3)),
         ("forward_min_ms", .double(forward[0] * 1e3)), ("backward_min_ms", .double(backward[0] * 1e3)),
         ("forward_gflops", .double(forwardFlops / forward[0] / 1e9)),
         ("backward_gflops", .double(backwardFlops / backward[0] / 1e9))]
    }
}

func timeKernelPair(iters: Int, forward: () -> Void, backward: () -> Void) -> KernelPairTimes {
    var t = KernelPairTimes()
    for it in 0...iters {
        let t0 = DispatchTime.now().uptimeNanoseconds
        forward()
        let t1 = DispatchTime.now().uptimeNanoseconds
        backward()
        let t2 = DispatchTime.now().uptimeNanoseconds
        if it > 0 { t.forward.append(Double(t1 - t0) / 1e9); t.backward.append(Double(t2 - t1) / 1e9) }
    }
    t.forward.sort(); t.backward.sort()
    return t
}
