// `hgdpo make-model` → `hgdpo make-triplets` → `hgdpo encode` → `hgdpo train`, for real (processes, MPI ranks through
// launch/local.sh): what the cache holds, that it does not depend on the rank count, resuming, bad inputs.
import Datasets
import Foundation
import IO
import LatentEncoding
import Tensors
import TestSupport
import TextEncoder
import VAE
import XCTest

final class EncodeCommandTests: XCTestCase {
    /// A tiny random pipeline and a dataset of 6 triplets (80x64 PNGs; triplet 2's loser replaced by a 48x72 one),
    /// made once for the class.
    static let world: (model: String, data: String) = {
        let dir = (NSTemporaryDirectory() as NSString).appendingPathComponent("hgdpo-encode-\(getpid())")
        try? FileManager.default.removeItem(atPath: dir)
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let model = dir + "/model", data = dir + "/data"
        var r = try! hgdpo(["make-model", "--shape", "tiny", "--out", model, "--seed", "4"])
        precondition(r.status == 0, r.stderr)
        r = try! hgdpo(["make-triplets", "--count", "6", "--width", "80", "--height", "64", "--out", data, "--seed", "2"])
        precondition(r.status == 0, r.stderr)
        let rng = CounterRNG(seed: 9)
        let portrait = try! Image(width: 48, height: 72, channels: 3, pixels: (0..<(3 * 48 * 72)).map { 2 * rng.uniform(UInt64($0)) - 1 })
        try! PNG.write(portrait, to: data + "/images/2-loser.png")
        return (model, data)
    }()

    func encode(_ out: String, ranks: Int? = nil, _ extra: [String] = []) throws -> ProcessResult {
        let args = ["encode", "--model", Self.world.model, "--data", Self.world.data, "--out", out, "--resolution", "64",
                    "--shard-size", "4", "--batch", "2", "--threads", "1"] + extra
        guard let ranks else { return try hgdpo(args) }
        return try runProcess("/bin/bash", [repoRoot + "/launch/local.sh", "--timeout", "120", String(ranks), "hgdpo"] + args,
                              environment: ["HGDPO_BIN": hgdpoBinary], timeout: 150)
    }

    func shardBytes(_ cache: String, count: Int = 2) throws -> [Foundation.Data] {
        try (0..<count).map { try Foundation.Data(contentsOf: URL(fileURLWithPath: cache + "/" + LatentCacheFormat.shardFileName($0))) }
    }

    /// Every row equals the VAE mean of the prepared images and the weighted prompt encoding, computed here directly.
    func testCacheRowsAreTheEncodedTriplets() throws {
        let out = try temporaryDirectory(self) + "/cache"
        let r = try encode(out, ["--latent-mode", "mean", "--dtype", "F32", "--height", "64", "--width", "128"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"count\":6"), r.stdout)
        let cache = try LatentCache.open(out)
        XCTAssertEqual(cache.count, 6)
        XCTAssertEqual(cache.latentShape, [4, 8, 16])
        XCTAssertEqual(cache.contextShape, [77, 32])
        let dataset = try TripletDataset.open(folder: Self.world.data)
        let vae = try AutoencoderKL.load(modelFolder: Self.world.model, parts: .encoder)
        let prompts = try PromptEncoder.load(ModelFolder(path: Self.world.model))
        for i in 0..<6 {
            let row = try cache.read(i)
            XCTAssertEqual(try cache.id(i), dataset[i].id)
            for (path, stored, label) in [(dataset.winnerPath(i), row.winner, "winner"), (dataset.loserPath(i), row.loser, "loser")] {
                let image = TrainingImage.prepare(try PNG.readBytes(path, channels: 3), width: 128, height: 64, cropFraction: nil,
                                                  method: .pil)
                let z = try vae.encode(FeatureMap(images: [image]), mode: .mean)
                assertClose(stored, Array(UnsafeBufferPointer(start: z.ptr, count: z.count)), rtol: 1e-5, atol: 1e-6,
                            label: "row \(i) \(label)")
            }
            let c = try prompts.encode(prompts: [dataset[i].prompt])
            assertClose(row.context, Array(UnsafeBufferPointer(start: c.hiddenStates.ptr, count: 77 * 32)), rtol: 1e-5, atol: 1e-5,
                        label: "row \(i) context")
        }
    }

    /// Sampled latents (noise keyed by seed and row) and random crops: 1 and 2 ranks write the same bytes; then
    /// `hgdpo train` runs 2 steps on the cache.
    func testSameCacheOnOneAndTwoRanksAndTrainRuns() throws {
        let dir = try temporaryDirectory(self)
        let options = ["--crop", "random", "--seed", "3"]
        var r = try encode(dir + "/one", ranks: 1, options)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try encode(dir + "/two", ranks: 2, options)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("encode: shard 2/2"), r.stderr)
        XCTAssertEqual(try shardBytes(dir + "/one"), try shardBytes(dir + "/two"), "1-rank and 2-rank caches differ")
        // Another seed gives other latents (the draw is used), the mean mode none.
        r = try encode(dir + "/seed4", ranks: 1, ["--crop", "random", "--seed", "4"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertNotEqual(try LatentCache.open(dir + "/one").read(0).winner, try LatentCache.open(dir + "/seed4").read(0).winner)

        let run = dir + "/run"
        r = try runProcess("/bin/bash", [repoRoot + "/launch/local.sh", "--timeout", "120", "2", "hgdpo", "train", "--model",
                                         Self.world.model, "--data", dir + "/two", "--out", run, "--global-batch", "2",
                                         "--local-batch", "1", "--max-steps", "2", "--threads", "1"],
                           environment: ["HGDPO_BIN": hgdpoBinary], timeout: 150)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/step-000002/pytorch_lora_weights.safetensors"), r.stdout + r.stderr)
    }

    /// An interrupted encode (index and the last shard missing) continues: finished shards are kept, the result is
    /// the same; a complete cache and changed settings are refused.
    func testResumeKeepsFinishedShards() throws {
        let out = try temporaryDirectory(self) + "/cache"
        var r = try encode(out)
        XCTAssertEqual(r.status, 0, r.stderr)
        let full = try shardBytes(out)
        r = try encode(out)
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("already a complete latent cache"), r.stderr)

        try FileManager.default.removeItem(atPath: out + "/index.json")
        try FileManager.default.removeItem(atPath: out + "/" + LatentCacheFormat.shardFileName(1))
        let leftover = out + "/." + LatentCacheFormat.shardFileName(1) + ".tmp-99999"   // a killed run's half-written shard
        try Foundation.Data("half".utf8).write(to: URL(fileURLWithPath: leftover))
        let first = try FileManager.default.attributesOfItem(atPath: out + "/" + LatentCacheFormat.shardFileName(0))[.modificationDate] as! Date
        r = try encode(out, ["--seed", "1"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("seed: was 0, now 1"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/index.json"))

        r = try encode(out)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"resumed_shards\":1"), r.stdout)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: out + "/" + LatentCacheFormat.shardFileName(0))[.modificationDate] as! Date,
                       first, "the finished shard was rewritten")
        XCTAssertEqual(try shardBytes(out), full)
        XCTAssertFalse(FileManager.default.fileExists(atPath: leftover), "temporary files are cleaned up")
        XCTAssertEqual(try LatentCache.open(out).count, 6)
    }

    /// A missing image and an undecodable PNG: reported with line and id before anything is written, or skipped
    /// and counted with --skip-bad.
    func testBadLinesStopOrAreSkipped() throws {
        let dir = try temporaryDirectory(self)
        let data = dir + "/data"
        try FileManager.default.copyItem(atPath: Self.world.data, toPath: data)
        try Foundation.Data("not a png".utf8).write(to: URL(fileURLWithPath: data + "/images/broken.png"))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: data + "/triplets.jsonl"))
        handle.seekToEndOfFile()
        handle.write(Foundation.Data("""
            {"id":"gone","prompt":"p","winner":"images/0-winner.png","loser":"images/missing.png"}
            {"id":"broken","prompt":"p","winner":"images/broken.png","loser":"images/0-loser.png"}
            {"id":"broken2","prompt":"p","winner":"images/0-winner.png","loser":"images/broken.png"}

            """.utf8))
        try handle.close()
        let args = ["encode", "--model", Self.world.model, "--data", data, "--resolution", "64", "--threads", "1"]
        var r = try hgdpo(args + ["--out", dir + "/a"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("triplets.jsonl:7 (id \"gone\"): loser \"images/missing.png\" does not exist"), r.stderr)
        XCTAssertTrue(r.stderr.contains("triplets.jsonl:8 (id \"broken\"): winner \"images/broken.png\" is not a readable PNG"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/a"), "nothing is written when a line is bad")

        r = try hgdpo(args + ["--out", dir + "/b", "--skip-bad"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"count\":6") && r.stdout.contains("\"skipped\":3"), r.stdout)
        XCTAssertTrue(r.stderr.contains("skipped triplets.jsonl:8"), r.stderr)
        XCTAssertEqual(try LatentCache.open(dir + "/b").count, 6)

        // On 2 ranks each decodes every other triplet's images (line 8's on rank 0, line 9's on rank 1); the problems
        // are gathered on every rank, and the same triplets are kept.
        r = try runProcess("/bin/bash", [repoRoot + "/launch/local.sh", "--timeout", "120", "2", "hgdpo"] + args
                           + ["--out", dir + "/c", "--skip-bad"], environment: ["HGDPO_BIN": hgdpoBinary], timeout: 150)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"skipped\":3"), r.stdout)
        XCTAssertTrue(r.stderr.contains("skipped triplets.jsonl:9 (id \"broken2\")"), r.stderr)
        let b = try LatentCache.open(dir + "/b"), c = try LatentCache.open(dir + "/c")
        XCTAssertEqual(try (0..<6).map { try c.id($0) }, try (0..<6).map { try b.id($0) })
    }

    /// --mixed-precision bf16: the VAE's convolutions in bf16, latents within 2e-2 of fp32 (relative), contexts equal.
    func testMixedPrecisionBF16() throws {
        let dir = try temporaryDirectory(self)
        for (name, mode) in [("fp32", "no"), ("bf16", "bf16")] {
            let r = try encode(dir + "/" + name, ["--latent-mode", "mean", "--dtype", "F32", "--mixed-precision", mode])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let a = try LatentCache.open(dir + "/fp32"), b = try LatentCache.open(dir + "/bf16")
        var diff: Float = 0, norm: Float = 0
        for i in 0..<6 {
            let x = try a.read(i), y = try b.read(i)
            for (u, v) in zip(x.winner + x.loser, y.winner + y.loser) { diff += (u - v) * (u - v); norm += u * u }
            XCTAssertEqual(x.context, y.context)
        }
        let relative = (diff / norm).squareRoot()
        print("encode --mixed-precision bf16: latents rel. difference from fp32 \(relative)")
        XCTAssertLessThanOrEqual(relative, 2e-2)
        XCTAssertGreaterThan(relative, 1e-5, "bf16 is used")
    }

    /// One job per cache folder: a folder held by a live job is refused naming it; the lock of a dead one is taken over,
    /// and the lock file does not count as "a folder that is not an interrupted encode".
    func testOneEncodeJobPerFolder() throws {
        let out = try temporaryDirectory(self) + "/cache"
        // A live holder: this test process, as another job would be.
        let held = try RunFolderLock(folder: out, command: "encode")
        let refused = try encode(out)
        XCTAssertEqual(refused.status, 2, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("\(out) is in use by another job: hgdpo encode, pid \(getpid())"), refused.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out), [RunFolderLock.fileName], "nothing written")
        held.release()
        // A dead holder (a pid that has exited) left its lock in the new folder: taken over, the encode runs.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let boot = try String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let now = Date().timeIntervalSince1970
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        let dead = "{\"boot_id\":\"\(boot)\",\"command\":\"encode\",\"heartbeat\":\(now),\"heartbeat_every_s\":15,\"host\":\"\(String(cString: name))\","
            + "\"pid\":\(p.processIdentifier),\"stale_after_s\":300,\"started\":\(now),\"token\":\"dead\"}\n"
        try dead.write(toFile: out + "/" + RunFolderLock.fileName, atomically: true, encoding: .utf8)
        let r = try encode(out)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("took over \(out)/\(RunFolderLock.fileName) from hgdpo encode, pid \(p.processIdentifier)"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/" + RunFolderLock.fileName), "released at the end")
        XCTAssertNoThrow(try LatentCache.open(out))
    }

    func testBadOptions() throws {
        let out = try temporaryDirectory(self) + "/cache"
        var r = try encode(out, ["--height", "36"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("'--height'") && r.stderr.contains("multiple of 8"), r.stderr)
        r = try encode(out, ["--height", "40"])   // 5 latent rows; the tiny U-Net needs multiples of 8
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("the U-Net needs multiples of 8 (images in multiples of 64 px)"), r.stderr)
        r = try hgdpo(["encode", "--model", Self.world.model + "/nope", "--data", Self.world.data, "--out", out])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("nope"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }
}
