import Foundation
import XCTest
import Datasets
import IO
import Tensors
import UNet
import TestSupport
@testable import Training

/// `hgdpo train` for real, through launch/local.sh: a random-weight tiny U-Net and a synthetic latent cache.
final class TrainerTests: XCTestCase {
    /// A pipeline folder and a latent cache shared by the tests of this class (made once).
    static let world: (model: String, cache: String) = {
        let dir = (NSTemporaryDirectory() as NSString).appendingPathComponent("hgdpo-train-\(getpid())")
        try? FileManager.default.removeItem(atPath: dir)
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let model = dir + "/model", cache = dir + "/cache"
        // The two-level U-Net of the parity fixtures (block_out_channels 32, 64; cross_attention_dim 24), random weights.
        let r = try! runProcess(hgdpoBinary, ["make-model", "--shape", repoRoot + "/Tests/UNetTests/Fixtures/unet_conv", "--out", model, "--seed", "3"])
        precondition(r.status == 0, r.stderr)
        // 40 triplets of 4x8x8 latents with 6x24 prompt embeddings.
        let w = try! LatentCacheWriter(folder: cache, latentShape: [4, 8, 8], contextShape: [6, 24], dtype: .F32, shardSize: 16)
        let rng = CounterRNG(seed: 11)
        for i in 0..<40 {
            try! w.append(id: "t\(i)", winner: rng.substream(1, UInt64(i)).normals(256), loser: rng.substream(2, UInt64(i)).normals(256),
                          context: rng.substream(3, UInt64(i)).normals(6 * 24))
        }
        try! w.finish()
        return (model, cache)
    }()

    /// `launch/local.sh RANKS hgdpo train` with the tests' defaults, `options` overriding or adding (name → value).
    func train(ranks: Int, output: String, options: [String: String] = [:], environment: [String: String] = [:],
               timeout: Int = 240) throws -> ProcessResult {
        var opts = ["--model": Self.world.model, "--data": Self.world.cache, "--out": output, "--global-batch": "8",
                    "--local-batch": "2", "--max-steps": "3", "--lr": "1e-3", "--optimizer": "adamw", "--seed": "5",
                    "--threads": "1", "--collective-timeout": "60"]
        for (k, v) in options { opts[k] = v }
        // An empty value gives a flag (e.g. "--stop-on-divergence": "").
        let args = ["--timeout", String(timeout), String(ranks), "hgdpo", "train"]
            + opts.sorted { $0.key < $1.key }.flatMap { $0.value.isEmpty ? [$0.key] : [$0.key, $0.value] }
        var env = ["HGDPO_BIN": hgdpoBinary]
        for (k, v) in environment { env[k] = v }
        return try runProcess("/bin/bash", [repoRoot + "/launch/local.sh"] + args, environment: env, timeout: TimeInterval(timeout + 30))
    }

    func lora(_ run: String, step: Int = 3) throws -> [String: [Float]] {
        let f = try SafeTensorsFile(path: "\(run)/\(Checkpoint.name(step: step))/\(Checkpoint.loraFile)")
        return Dictionary(uniqueKeysWithValues: try f.tensorNames.map { ($0, try f.floats($0)) })
    }

    /// ‖a − b‖ / ‖b‖ over all LoRA tensors, asserted ≤ rtol; returns it.
    @discardableResult
    func assertSameLoRA(_ a: [String: [Float]], _ b: [String: [Float]], rtol: Double, label: String) -> Double {
        XCTAssertEqual(Set(a.keys), Set(b.keys), label)
        var num = 0.0, den = 0.0
        for (k, x) in a { for (u, v) in zip(x, b[k] ?? []) { num += Double(u - v) * Double(u - v); den += Double(v) * Double(v) } }
        let e = (num / max(den, 1e-30)).squareRoot()
        XCTAssertLessThanOrEqual(e, rtol, label)
        return e
    }

    /// 1 rank × 4 accumulation steps, 2 ranks × 2, 4 ranks × 1: the same global batch of 8, the same LoRA.
    func testRankCountDoesNotChangeTheResult() throws {
        let dir = try temporaryDirectory(self)
        var results: [[String: [Float]]] = []
        for w in [1, 2, 4] {
            let r = try train(ranks: w, output: "\(dir)/w\(w)")
            XCTAssertEqual(r.status, 0, "\(w) ranks: \(r.stderr)")
            results.append(try lora("\(dir)/w\(w)"))
        }
        let initial = try SafeTensorsFile(path: "\(dir)/w1/\(Checkpoint.name(step: 3))/\(Checkpoint.loraFile)")
        XCTAssertGreaterThan(initial.tensorNames.count, 0)
        assertSameLoRA(results[1], results[0], rtol: 1e-5, label: "2 ranks vs 1")
        assertSameLoRA(results[2], results[0], rtol: 1e-5, label: "4 ranks vs 1")
        // The metrics log has one record per step with the loss terms.
        let lines = try String(contentsOfFile: "\(dir)/w4/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        let rec = try JSONSerialization.jsonObject(with: Data(lines[2].utf8)) as! [String: Any]
        for key in ["loss", "dpo", "stat", "implicit_acc", "reward_margin", "grad_norm", "clipped", "lr", "samples_per_s"] {
            XCTAssertNotNil(rec[key], key)
        }
        XCTAssertEqual(rec["step"] as? Int, 3)
    }

    /// The gradient all-reduce overlapped with the backward (--bucket-mb): buckets of 131 doubles, so the tiny U-Net's
    /// LoRA goes out in many, all of them during the backward (the metrics count them), give the same LoRA and optimizer
    /// state, bit for bit, as one all-reduce after the backward (--bucket-mb 0) and as one rank, on 2 and 4 ranks with
    /// and without gradient accumulation (global batch 8, local batch 2: 4 ranks × 1 micro-batch, 2 × 2, of which only
    /// the last backward overlaps). The per-element order of the sum is fixed
    /// (Distributed/OrderedSum.swift), so this holds by construction; a bucket started before its gradients were final,
    /// or the wrong part of the buffer, would change the result.
    func testOverlappedAllReduceIsBitIdentical() throws {
        let dir = try temporaryDirectory(self)
        let opts = ["--checkpoint-every": "3"]
        func files(_ run: String) throws -> [Data] {
            try [Checkpoint.loraFile, Checkpoint.optimizerFile].map {
                try Data(contentsOf: URL(fileURLWithPath: "\(run)/\(Checkpoint.name(step: 3))/\($0)"))
            }
        }
        let one = try train(ranks: 1, output: "\(dir)/w1", options: opts)
        XCTAssertEqual(one.status, 0, one.stderr)
        let reference = try files("\(dir)/w1")
        for w in [2, 4] {
            for bucket in ["0", "0.001"] {
                let run = "\(dir)/w\(w)-b\(bucket)"
                let r = try train(ranks: w, output: run, options: opts.merging(["--bucket-mb": bucket]) { $1 })
                XCTAssertEqual(r.status, 0, "\(w) ranks, --bucket-mb \(bucket): \(r.stderr)")
                XCTAssertEqual(try files(run), reference, "\(w) ranks, --bucket-mb \(bucket): LoRA or optimizer state differs from 1 rank's")
                let records = try String(contentsOfFile: "\(run)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                    .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
                XCTAssertEqual(records.count, 3)
                for rec in records {
                    let buckets = rec["grad_buckets"] as? Int ?? -1, early = rec["grad_buckets_overlapped"] as? Int ?? -1
                    if bucket == "0" {
                        XCTAssertEqual(buckets, 1); XCTAssertEqual(early, 0)
                    } else {
                        XCTAssertGreaterThan(buckets, 10, "\(rec)")
                        // Every LoRA gradient is final once the down blocks are through (conv_in, time_embedding: no LoRA).
                        XCTAssertEqual(early, buckets, "\(rec)")
                    }
                }
            }
        }
        // A bad bucket size is a clear error.
        let bad = try train(ranks: 1, output: "\(dir)/bad", options: ["--bucket-mb": "-1"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("bucket-mb"), bad.stderr)
    }

    /// `--mixed-precision bf16` (U-Net weights in bf16, LoRA / gradients / optimizer fp32): 1, 2 and 4 ranks give the
    /// same LoRA after 3 steps, as in fp32. Each micro-batch's gradient is computed by the same code on the same
    /// samples whatever the rank count, and summed in double, so the runs agree exactly in practice. Measured (Zen 3,
    /// widened-to-fp32 path, 2026-11): 0 for 2 and for 4 ranks vs 1; asserted ≤ 1e-5 relative, as in fp32 (the
    /// AVX512-BF16 kernels split M or N over threads, never K, so they are deterministic too).
    /// Against the fp32 run, relative over the whole LoRA / over B alone: 2.2e-3 / 7.0e-2 on the widened path (Zen 3,
    /// 2026-11), 7.7e-3 / 3.0e-1 on the AVX512-BF16 path, which also rounds the activations to bf16 (Sapphire
    /// Rapids, 2026-12). B starts at 0, so it is all learnt: 3 AdamW steps at lr 1e-3 are nearly ±lr per element,
    /// and bf16 flips the sign of the small gradient elements, so B alone is a harsh measure; a wrong sign or a
    /// missing update would give ≥ 1. Asserted ≤ 1.5e-2 and ≤ 5e-1. A resume that changes the precision is refused.
    static let bf16VsFP32Tolerance = 1.5e-2
    static let bf16VsFP32UpdateTolerance = 5e-1
    func testRankCountDoesNotChangeTheResultInBF16() throws {
        let dir = try temporaryDirectory(self)
        var results: [[String: [Float]]] = []
        for w in [1, 2, 4] {
            let r = try train(ranks: w, output: "\(dir)/w\(w)", options: ["--mixed-precision": "bf16", "--checkpoint-every": "1"])
            XCTAssertEqual(r.status, 0, "\(w) ranks: \(r.stderr)")
            results.append(try lora("\(dir)/w\(w)"))
        }
        let e2 = assertSameLoRA(results[1], results[0], rtol: 1e-5, label: "bf16: 2 ranks vs 1")
        let e4 = assertSameLoRA(results[2], results[0], rtol: 1e-5, label: "bf16: 4 ranks vs 1")
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/w4/config.json"))) as! [String: Any]
        XCTAssertEqual(config["mixed_precision"] as? String, "bf16", "\(config)")
        // Against the same run in fp32: all of the LoRA, and B alone (zero at init, so B is what training learnt).
        let fp32 = try train(ranks: 2, output: "\(dir)/fp32")
        XCTAssertEqual(fp32.status, 0, fp32.stderr)
        let fp32LoRA = try lora("\(dir)/fp32")
        let vsFP32 = assertSameLoRA(results[0], fp32LoRA, rtol: Self.bf16VsFP32Tolerance, label: "bf16 vs fp32")
        func up(_ w: [String: [Float]]) -> [String: [Float]] { w.filter { $0.key.hasSuffix(".lora.up.weight") } }
        XCTAssertFalse(up(fp32LoRA).isEmpty)
        let bVsFP32 = assertSameLoRA(up(results[0]), up(fp32LoRA), rtol: Self.bf16VsFP32UpdateTolerance, label: "bf16 vs fp32, B")
        XCTAssertGreaterThan(vsFP32, 0, "bf16 weights must change the trajectory")
        print(String(format: "bf16 LoRA after 3 steps: 2 ranks vs 1 %.2e, 4 vs 1 %.2e; bf16 vs fp32 %.2e (B alone: %.2e)",
                     e2, e4, vsFP32, bVsFP32))
        // Resuming a bf16 run in fp32 is refused by name.
        let bad = try train(ranks: 1, output: "\(dir)/w1", options: ["--resume": "auto", "--max-steps": "4"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--mixed-precision bf16") && bad.stderr.contains("asks for no"), bad.stderr)
    }

    /// The U-Net of a `--train unet` checkpoint, tensor by tensor.
    func unet(_ run: String, step: Int = 3) throws -> [String: [Float]] {
        let f = try SafeTensorsFile(path: "\(run)/\(Checkpoint.name(step: step))/\(Checkpoint.unetWeightsFile)")
        return Dictionary(uniqueKeysWithValues: try f.tensorNames.map { ($0, try f.floats($0)) })
    }

    /// `--train unet --objective sft` (every U-Net parameter, the toy world's SFT model): 1 and 2 ranks give the same
    /// U-Net; every tensor moved from the starting model; the checkpoint's unet/ folder loads as a U-Net; a run
    /// stopped after step 2 and resumed ends bit-identical; bf16 is refused by name; dpo runs with a frozen reference.
    func testFullUNetTrainingSFT() throws {
        let dir = try temporaryDirectory(self)
        let opts = ["--train": "unet", "--objective": "sft", "--checkpoint-every": "1"]
        for w in [1, 2] {
            let r = try train(ranks: w, output: "\(dir)/w\(w)", options: opts)
            XCTAssertEqual(r.status, 0, "\(w) ranks: \(r.stderr)")
        }
        let one = try unet("\(dir)/w1"), two = try unet("\(dir)/w2")
        assertSameLoRA(two, one, rtol: 1e-6, label: "--train unet: 2 ranks vs 1")
        // Every parameter tensor trained (3 AdamW steps at lr 1e-3 move every element that has a gradient).
        let start = try SafeTensorsFile(path: Self.world.model + "/unet/diffusion_pytorch_model.safetensors")
        XCTAssertEqual(Set(start.tensorNames), Set(one.keys))
        for name in start.tensorNames {
            let a = try start.floats(name), b = one[name]!
            let moved = zip(a, b).filter { $0 != $1 }.count
            XCTAssertGreaterThan(moved, a.count / 2, "\(name): \(moved) of \(a.count) elements changed")
        }
        // The checkpoint's unet/ is a diffusers U-Net folder.
        let folder = ComponentFolder(path: "\(dir)/w1/\(Checkpoint.name(step: 3))/\(Checkpoint.unetFolder)")
        let model = try UNetModel.load(folder: folder)
        for (name, values) in one { XCTAssertEqual(model.weights.floats(name), values, name) }
        let probe = try runProcess(hgdpoBinary, ["probe", "unet", "--model", folder.path, "--out", "\(dir)/probe.safetensors",
                                                 "--input", repoRoot + "/Tests/UNetTests/Fixtures/unet_conv/io.safetensors"])
        XCTAssertEqual(probe.status, 0, probe.stderr)
        XCTAssertTrue(try SafeTensorsFile(path: "\(dir)/probe.safetensors").floats("sample").allSatisfy(\.isFinite))
        // Resume: stop after step 2, continue to 3: bit-identical.
        var part = opts
        part["--max-steps"] = "2"
        XCTAssertEqual(try train(ranks: 2, output: "\(dir)/part", options: part).status, 0)
        var resume = opts
        resume["--resume"] = "auto"
        let r = try train(ranks: 2, output: "\(dir)/part", options: resume)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("resumed from"), r.stdout)
        XCTAssertEqual(try unet("\(dir)/part"), two, "resumed --train unet run: bit-identical")
        // A LoRA resume of a --train unet run is refused by name.
        let mixed = try train(ranks: 1, output: "\(dir)/part", options: ["--objective": "sft", "--resume": "auto", "--max-steps": "4"])
        XCTAssertEqual(mixed.status, 2, mixed.stderr)
        XCTAssertTrue(mixed.stderr.contains("was trained with --train unet"), mixed.stderr)
        // bf16 is refused, by name.
        let bf16 = try train(ranks: 1, output: "\(dir)/bf16", options: opts.merging(["--mixed-precision": "bf16"]) { $1 })
        XCTAssertEqual(bf16.status, 2)
        XCTAssertTrue(bf16.stderr.contains("--train unet") && bf16.stderr.contains("--mixed-precision no"), bf16.stderr)
        // dpo: the reference is a frozen copy of the starting U-Net; the loss at step 1 is log 2 (policy = reference).
        let dpo = try train(ranks: 2, output: "\(dir)/dpo", options: ["--train": "unet", "--objective": "dpo", "--max-steps": "2"])
        XCTAssertEqual(dpo.status, 0, dpo.stderr)
        let first = try String(contentsOfFile: "\(dir)/dpo/metrics.jsonl", encoding: .utf8).split(separator: "\n")[0]
        let rec = try JSONSerialization.jsonObject(with: Data(first.utf8)) as! [String: Any]
        XCTAssertEqual(rec["dpo"] as? Double ?? 0, log(2.0), accuracy: 1e-6, "\(rec)")
    }

    /// A run stopped after step 2 and resumed (on another rank count) ends where an uninterrupted run ends.
    func testResumeContinuesExactly() throws {
        let dir = try temporaryDirectory(self)
        let full = try train(ranks: 2, output: "\(dir)/full", options: ["--checkpoint-every": "1"])
        XCTAssertEqual(full.status, 0, full.stderr)
        let part = try train(ranks: 2, output: "\(dir)/part", options: ["--checkpoint-every": "1", "--max-steps": "2"])
        XCTAssertEqual(part.status, 0, part.stderr)
        let resumed = try train(ranks: 2, output: "\(dir)/part", options: ["--checkpoint-every": "1", "--resume": "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stdout.contains("resumed from"), resumed.stdout)
        let a = try lora("\(dir)/full"), b = try lora("\(dir)/part")
        XCTAssertEqual(a, b, "same world size: bit-identical")
        let other = try train(ranks: 4, output: "\(dir)/part4", options: ["--checkpoint-every": "1", "--max-steps": "2"])
        XCTAssertEqual(other.status, 0, other.stderr)
        let resumed4 = try train(ranks: 1, output: "\(dir)/part4", options: ["--checkpoint-every": "1", "--resume": "auto"])
        XCTAssertEqual(resumed4.status, 0, resumed4.stderr)
        assertSameLoRA(try lora("\(dir)/part4"), a, rtol: 1e-5, label: "resumed on another world size")
        // Resuming with other settings is refused, naming the checkpoint.
        let bad = try train(ranks: 1, output: "\(dir)/part", options: ["--resume": "auto", "--beta": "100"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("other training settings"), bad.stderr)
    }

    /// The default optimizer (8-bit AdamW as bitsandbytes; rank 128 makes the 64-channel LoRA matrices large enough to be
    /// quantized) resumes bit-exactly: its quantized state is in the checkpoint.
    func testAdam8bitResumesExactly() throws {
        let dir = try temporaryDirectory(self)
        let opts = ["--optimizer": "adam8bit", "--lora-rank": "128", "--lora-alpha": "128", "--checkpoint-every": "1"]
        let full = try train(ranks: 2, output: "\(dir)/full", options: opts)
        XCTAssertEqual(full.status, 0, full.stderr)
        var partOpts = opts
        partOpts["--max-steps"] = "2"
        XCTAssertEqual(try train(ranks: 2, output: "\(dir)/part", options: partOpts).status, 0)
        var resumeOpts = opts
        resumeOpts["--resume"] = "auto"
        let r = try train(ranks: 2, output: "\(dir)/part", options: resumeOpts)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try lora("\(dir)/full"), try lora("\(dir)/part"))
        let state = try SafeTensorsFile(path: "\(dir)/part/\(Checkpoint.name(step: 3))/\(Checkpoint.optimizerFile)")
        XCTAssertEqual(state.metadata["optimizer"], "adam8bit")
        XCTAssertEqual(state.info("state1")?.dtype, .U8)
    }

    /// A NaN on one rank: every rank skips the same step; too many in a row stops the run with an error, and the
    /// checkpoint already written survives.
    func testNonFiniteGradientsAreSkippedTogether() throws {
        let dir = try temporaryDirectory(self)
        let f = try train(ranks: 2, output: "\(dir)/f", options: ["--max-steps": "6", "--checkpoint-every": "1", "--max-skipped-steps": "2"],
                          environment: ["HGDPO_FAULT_NAN": "rank=1,from_step=3"], timeout: 200)
        XCTAssertEqual(f.status, 1, "a failure while running, not a usage error")
        XCTAssertTrue(f.stderr.contains("consecutive steps had a non-finite"), f.stderr)
        XCTAssertTrue(f.stdout.contains("step 3: non-finite loss or gradient, step skipped"), f.stdout)
        // Steps 1 and 2 completed and were checkpointed; the LoRA there is finite and loads.
        let w = try LoRAFile.read("\(dir)/f/\(Checkpoint.name(step: 2))/\(Checkpoint.loraFile)")
        XCTAssertTrue(w.modules.values.allSatisfy { $0.a.allSatisfy(\.isFinite) && $0.b.allSatisfy(\.isFinite) })
    }

    /// A rank that dies makes the whole job end promptly, non-zero, and loses no checkpoint already written.
    func testKilledRankEndsTheJob() throws {
        let dir = try temporaryDirectory(self)
        let start = Date()
        let f = try train(ranks: 2, output: "\(dir)/k", options: ["--max-steps": "6", "--checkpoint-every": "1"],
                          environment: ["HGDPO_FAULT_EXIT": "rank=1,step=3"], timeout: 120)
        XCTAssertNotEqual(f.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
        let w = try LoRAFile.read("\(dir)/k/\(Checkpoint.name(step: 2))/\(Checkpoint.loraFile)")
        XCTAssertEqual(w.rank, 8)
    }

    /// A damaged cache shard stops the run before the first step, naming the file.
    func testCorruptCacheIsAClearError() throws {
        let dir = try temporaryDirectory(self)
        try FileManager.default.copyItem(atPath: Self.world.cache, toPath: dir + "/cache")
        let shard = dir + "/cache/shard-00001.safetensors"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: shard))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: shard))
        let r = try train(ranks: 2, output: dir + "/run", options: ["--data": dir + "/cache"], timeout: 120)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("shard-00001.safetensors"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run/latest"))
    }

    /// --max-grad-norm (default 1.0 as the reference DPO scripts) clips the all-reduced gradient; metrics.jsonl logs
    /// the norm before clipping and whether the step clipped. A tiny limit clips every step and changes the result.
    func testGradientClipping() throws {
        let dir = try temporaryDirectory(self)
        XCTAssertEqual(try train(ranks: 1, output: "\(dir)/off", options: ["--max-grad-norm": "0"]).status, 0)
        XCTAssertEqual(try train(ranks: 1, output: "\(dir)/tiny", options: ["--max-grad-norm": "1e-9", "--optimizer": "adamw"]).status, 0)
        func records(_ run: String) throws -> [[String: Any]] {
            try String(contentsOfFile: "\(run)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        }
        let off = try records("\(dir)/off"), tiny = try records("\(dir)/tiny")
        XCTAssertTrue(off.allSatisfy { ($0["clipped"] as? Bool) == false })
        XCTAssertTrue(tiny.allSatisfy { ($0["clipped"] as? Bool) == true })
        // The logged norm is the one before clipping: the same first step either way.
        XCTAssertEqual(off[0]["grad_norm"] as! Double, tiny[0]["grad_norm"] as! Double, accuracy: 1e-12)
        XCTAssertGreaterThan(off[0]["grad_norm"] as! Double, 1e-9)
        XCTAssertNotEqual(try lora("\(dir)/off"), try lora("\(dir)/tiny"))
    }

    /// A huge learning rate makes the policy's winner MSE run far above the reference's: the guard warns, naming the
    /// step and the figures, and with --stop-on-divergence the run checkpoints and exits with code 3.
    func testDivergenceGuardWarnsAndStops() throws {
        let dir = try temporaryDirectory(self)
        let opts = ["--lr": "5", "--max-steps": "12", "--checkpoint-every": "100", "--divergence-patience": "2"]
        let warned = try train(ranks: 2, output: "\(dir)/warn", options: opts)
        XCTAssertEqual(warned.status, 0, warned.stderr)
        XCTAssertTrue(warned.stdout.contains("warning: training looks diverged at step"), warned.stdout)
        var stopOpts = opts
        stopOpts["--stop-on-divergence"] = ""
        let stopped = try train(ranks: 2, output: "\(dir)/stop", options: stopOpts)
        XCTAssertEqual(stopped.status, 3, stopped.stderr)
        XCTAssertTrue(stopped.stderr.contains("stopped by --stop-on-divergence"), stopped.stderr)
        let step = try XCTUnwrap(Checkpoint.list(runDir: "\(dir)/stop").last?.step)
        XCTAssertLessThan(step, 12, "stopped early")
        XCTAssertTrue(stopped.stderr.contains(Checkpoint.name(step: step)), stopped.stderr)
        // A healthy run (the tests' lr 1e-3 for 3 steps) never warns.
        let healthy = try train(ranks: 1, output: "\(dir)/ok", options: ["--divergence-patience": "1"])
        XCTAssertEqual(healthy.status, 0, healthy.stderr)
        XCTAssertFalse(healthy.stdout.contains("diverged"), healthy.stdout)
    }

    /// A misspelt key or a bad enumeration value in --config fails before any work, naming the key, with exit code 2;
    /// the command line overrides the file.
    func testConfigFileIsStrictAndOverridden() throws {
        let dir = try temporaryDirectory(self)
        try "model: \(Self.world.model)\ndata: \(Self.world.cache)\nlr_schedul: cosine\n".write(toFile: "\(dir)/typo.yaml", atomically: true, encoding: .utf8)
        let typo = try hgdpo(["train", "--config", "\(dir)/typo.yaml", "--out", "\(dir)/typo"])
        XCTAssertEqual(typo.status, 2)
        XCTAssertTrue(typo.stderr.contains("unknown key 'lr_schedul' (did you mean 'lr_schedule'?)"), typo.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/typo"), "nothing written")
        try #"{"lr_schedule": "cosin"}"#.write(toFile: "\(dir)/enum.json", atomically: true, encoding: .utf8)
        let bad = try hgdpo(["train", "--config", "\(dir)/enum.json", "--model", Self.world.model, "--data", Self.world.cache,
                             "--out", "\(dir)/enum"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("key 'lr_schedule'") && bad.stderr.contains("one of constant, cosine"), bad.stderr)
        try "global_batch: 8\nlocal_batch: 2\nmax_steps: 1\nlr: 1e-3\nthreads: 1\n".write(toFile: "\(dir)/run.yaml", atomically: true, encoding: .utf8)
        let run = try hgdpo(["train", "--config", "\(dir)/run.yaml", "--model", Self.world.model, "--data", Self.world.cache,
                             "--out", "\(dir)/run", "--lr", "2e-3"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let saved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/run/config.json"))) as! [String: Any]
        XCTAssertEqual(saved["lr"] as? Double, 2e-3, "the command line wins")
        XCTAssertEqual(saved["global_batch"] as? Int, 8, "the file's value")
        XCTAssertEqual(saved["lr_schedule"] as? String, "constant", "the default")
    }

    /// The statistic term's step defaults to a 50-step sampler's (stride T/50 = 20): the default run is the explicit
    /// `--stat-inference-steps 50` run bit for bit, and one DDPM step (`--stat-inference-steps 1000`) gives a raw term
    /// two orders smaller (k_t² grows about as the stride squared) and another LoRA.
    func testStatisticStepDefaultsToFiftySamplerSteps() throws {
        let dir = try temporaryDirectory(self)
        func run(_ name: String, _ options: [String: String]) throws -> (lora: [String: [Float]], stat: Double, saved: [String: Any]) {
            let r = try train(ranks: 1, output: "\(dir)/\(name)", options: options)
            XCTAssertEqual(r.status, 0, "\(name): \(r.stderr)")
            let lines = try String(contentsOfFile: "\(dir)/\(name)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            let last = try JSONSerialization.jsonObject(with: Data(lines.last!.utf8)) as! [String: Any]
            let saved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)/config.json")))
            return (try lora("\(dir)/\(name)"), last["stat"] as! Double, saved as! [String: Any])
        }
        let byDefault = try run("default", [:]), fifty = try run("fifty", ["--stat-inference-steps": "50"])
        let oneStep = try run("one", ["--stat-inference-steps": "1000"])
        XCTAssertEqual(byDefault.saved["stat_inference_steps"] as? Int, 50)
        XCTAssertEqual(byDefault.lora, fifty.lora, "the default is --stat-inference-steps 50")
        XCTAssertEqual(byDefault.stat, fifty.stat)
        XCTAssertNotEqual(oneStep.lora, byDefault.lora)
        XCTAssertGreaterThan(oneStep.stat, 0)
        XCTAssertLessThan(oneStep.stat * 20, byDefault.stat, "one DDPM step: a much smaller raw statistic term")
        let tooMany = try train(ranks: 1, output: "\(dir)/bad", options: ["--stat-inference-steps": "1001"])
        XCTAssertEqual(tooMany.status, 2)
        XCTAssertTrue(tooMany.stderr.contains("--stat-inference-steps must be in 1...1000"), tooMany.stderr)
    }

    func testBadOptionsAreClearErrors() throws {
        let dir = try temporaryDirectory(self)
        let r = try train(ranks: 1, output: "\(dir)/x", options: ["--global-batch": "6", "--local-batch": "4"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("6") && r.stderr.contains("4"), r.stderr)
        let m = try hgdpo(["train", "--data", Self.world.cache, "--out", "\(dir)/y"])
        XCTAssertEqual(m.status, 2)
        XCTAssertTrue(m.stderr.contains("--model"), m.stderr)
    }
}
