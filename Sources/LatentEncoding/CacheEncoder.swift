// `hgdpo encode`: a triplet dataset (triplets.jsonl + PNGs) → the latent cache the trainer streams (format in
// Datasets/LatentCache.swift): per triplet the VAE latents of the winner and loser images and the text encoder's
// hidden states of the prompt.
//
// Per triplet at row r of the cache (its position among the good lines of triplets.jsonl):
//   image   PNG → RGB → resized to cover the training size (Pillow's 8-bit bilinear, or torch's float one) and
//           cropped to it, in [-1, 1] (TrainingImage), winner and loser with the same crop; a random crop's fractions
//           come from (seed, r)
//   latent  AutoencoderKL.encode: `latent_dist.sample() · scaling_factor` as diffusers' training scripts (default), the
//           noise from the counter-based RNG keyed by (seed, r, winner|loser), or the posterior mean (--latent-mode mean);
//           for a pixel-space pipeline (no vae/, VAE/LatentSpace.swift) the image in [-1, 1] itself
//   context CLIP last_hidden_state [77, D] with the prompt weighting `hgdpo sample` and the probes use
//
// Distribution and determinism. Shard k holds rows [k·S, k·S + S). Within a shard, rows go in batches of B and
// batch g is encoded by rank g mod W; the shard's rows are then summed over ranks (each row is non-zero on one rank
// only, and −0 is made +0 first, so the sum is exact) and rank k mod W writes the shard. A row's numbers depend on
// the settings and its batch, never on W, so the cache is the same whatever the rank count (given the same threads
// per rank: thread counts may change the last bits of a GEMM).
//
// Resumability. `encode.json` (settings + dataset fingerprint) is written first; shards are written atomically
// (temporary file, fsync, rename) and a shard whose file is there with the expected ids is not encoded again; index.json
// is written last by rank 0, so a folder with an index is complete and one without is resumable with the same command.
import Datasets
import Distributed
import Foundation
import IO
import NN
import Tensors
import TextEncoder
import VAE

// MARK: - Settings

public enum LatentModeName: String, Sendable, CaseIterable {
    case sample, mean
}

public struct EncodeSettings: Sendable {
    public var model: String
    public var data: String
    public var out: String
    public var width = 512, height = 512
    public var crop = CropMode.center
    public var resize = ResizeMethod.pil
    public var latentMode = LatentModeName.sample
    /// VAE convolutions in bf16 (AutoencoderKL precision .bf16); the text encoder stays fp32.
    public var bf16 = false
    public var seed: UInt64 = 0
    public var skipBad = false
    public var batch = 4
    public var shardSize = 256
    public var dtype = DType.F16
    public var weighting = true
    public var clipSkip = 0
    public var variant: String?
    /// VAE tile size in image pixels (nil: no tiling; 0: the VAE config's sample_size).
    public var tile: Int?

    public init(model: String, data: String, out: String) {
        self.model = model; self.data = data; self.out = out
    }

    /// What must be equal for an interrupted encode to continue in the same folder (batch included: it decides
    /// which images are encoded together).
    func manifest(count: Int, fingerprint: String) -> JSONValue {
        .object([
            ("format", "hgdpo-encode"), ("model", .string(absolute(model))), ("variant", variant.map { .string($0) } ?? .null),
            ("data", .string(absolute(data))), ("triplets", .int(count)), ("dataset_fingerprint", .string(fingerprint)),
            ("width", .int(width)), ("height", .int(height)), ("crop", .string(crop.rawValue)),
            ("resize", .string(resize.rawValue)), ("latent_mode", .string(latentMode.rawValue)), ("seed", .string(String(seed))), ("skip_bad", .bool(skipBad)),
            ("batch", .int(batch)), ("shard_size", .int(shardSize)), ("mixed_precision", bf16 ? "bf16" : "no"), ("dtype", .string(dtype.rawValue)),
            ("prompt_weighting", .bool(weighting)), ("clip_skip", .int(clipSkip)), ("tile", tile.map { .int($0) } ?? .null),
        ])
    }
}

public enum EncodeError: Error, UserInputError, CustomStringConvertible {
    case badSetting(String)
    case outputExists(path: String, reason: String)
    case settingsChanged(path: String, differences: [String])
    case modelMismatch(String)
    case badImage(TripletProblem)

    public var description: String {
        switch self {
        case .badSetting(let m): return m
        case .outputExists(let p, let r): return "\(p): \(r)"
        case .settingsChanged(let p, let d):
            return "\(p): this folder holds an interrupted encode with other settings or data (\(d.joined(separator: "; "))); "
                + "rerun with the same settings to continue it, or choose a new folder"
        case .modelMismatch(let m): return m
        case .badImage(let p): return "\(p)"
        }
    }
}

public struct EncodeSummary: Sendable {
    public let count: Int
    public let skipped: Int
    public let shards: Int
    /// Shards found complete from an earlier, interrupted run.
    public let resumedShards: Int
    public let latentShape: [Int]
    public let contextShape: [Int]
}

// MARK: - Encoder

public final class CacheEncoder {
    public static let manifestFile = "encode.json"

    let settings: EncodeSettings
    /// Every collective, under the --collective-timeout watchdog (a lost rank or a cut network otherwise leaves the
    /// others waiting forever); nil without MPI.
    let comm: GuardedCommunicator?
    var rank: Int { comm?.rank ?? 0 }
    var worldSize: Int { comm?.size ?? 1 }
    /// Progress lines (rank 0 only).
    let progress: (String) -> Void

    /// `collectiveTimeout`: seconds a collective may take before the process exits naming rank, host and operation
    /// (0: no bound; only used with more than one rank).
    public init(settings: EncodeSettings, comm: Communicator?, collectiveTimeout: Double = 0,
                progress: @escaping (String) -> Void = { _ in }) throws {
        guard settings.width > 0, settings.height > 0 else {
            throw EncodeError.badSetting("training size \(settings.width)x\(settings.height) must be positive")
        }
        guard settings.batch > 0, settings.shardSize > 0 else {
            throw EncodeError.badSetting("batch \(settings.batch) and shard size \(settings.shardSize) must be positive")
        }
        guard LatentCacheFormat.supportedDTypes.contains(settings.dtype) else {
            throw EncodeError.badSetting("cache dtype \(settings.dtype.rawValue) is not supported (F16 or F32)")
        }
        self.settings = settings
        self.comm = comm.map { GuardedCommunicator($0, timeout: collectiveTimeout) }
        self.progress = comm.map { $0.isRoot } ?? true ? progress : { _ in }
    }

    /// Sends this rank's batches of shard k (batch g is encoded by rank g mod W) to the shard's writer, rank k mod W,
    /// in one gather; the writer copies the other ranks' rows into place, bit for bit.
    private func gatherShard(_ k: Int, rows r: Range<Int>, comm: GuardedCommunicator, winners: inout [Float],
                             losers: inout [Float], contexts: inout [Float], latentCount: Int, contextCount: Int) throws {
        let batch = settings.batch, n = r.count, batches = (n + batch - 1) / batch
        func shardRows(_ g: Int) -> Range<Int> { (g * batch)..<min((g + 1) * batch, n) }
        var packed: [UInt8] = []
        func pack(_ a: [Float], _ rows: Range<Int>, _ per: Int) {
            a[(rows.lowerBound * per)..<(rows.upperBound * per)].withUnsafeBytes { packed += $0 }
        }
        for g in stride(from: comm.rank, to: batches, by: comm.size) {
            pack(winners, shardRows(g), latentCount); pack(losers, shardRows(g), latentCount); pack(contexts, shardRows(g), contextCount)
        }
        guard let blocks = try comm.gather("shard \(k)", packed, root: k % comm.size) else { return }
        for (source, block) in blocks.enumerated() where source != comm.rank {
            var at = 0
            func unpack(_ a: inout [Float], _ rows: Range<Int>, _ per: Int) {
                let bytes = rows.count * per * MemoryLayout<Float>.stride
                a.withUnsafeMutableBytes { dst in
                    block.withUnsafeBytes { src in
                        (dst.baseAddress! + rows.lowerBound * per * MemoryLayout<Float>.stride)
                            .copyMemory(from: src.baseAddress! + at, byteCount: bytes)
                    }
                }
                at += bytes
            }
            for g in stride(from: source, to: batches, by: comm.size) {
                unpack(&winners, shardRows(g), latentCount); unpack(&losers, shardRows(g), latentCount)
                unpack(&contexts, shardRows(g), contextCount)
            }
        }
    }

    public func run() throws -> EncodeSummary {
        let s = settings
        // Refuse a finished cache before any work.
        let indexPath = (s.out as NSString).appendingPathComponent(LatentCacheFormat.indexFile)
        if FileManager.default.fileExists(atPath: indexPath) {
            throw EncodeError.outputExists(path: s.out, reason: "is already a complete latent cache (it has \(LatentCacheFormat.indexFile)); "
                                           + "choose a new folder to encode again")
        }
        let models = try loadModels()                     // first: a wrong model is reported before the dataset is read
        let (triplets, problems) = try usableTriplets()
        // The output folder: new, or an interrupted encode of the same settings and data.
        try prepareOutput(s.manifest(count: triplets.count, fingerprint: Self.fingerprint(triplets)))
        let shards = ShardPlan(count: triplets.count, shardSize: s.shardSize)
        let pending = try pendingShards(shards, triplets: triplets, models: models)
        let resumed = shards.count - pending.count
        if resumed > 0 { progress("encode: resuming: \(resumed) of \(shards.count) shards are already written") }
        var meter = ProgressMeter(total: pending.reduce(0) { $0 + shards.rows($1).count }, shardCount: shards.count)
        for k in pending {
            try encodeShard(k, rows: shards.rows(k), triplets: triplets, models: models, meter: &meter)
        }
        // Every shard is on disk (each writer finished before reaching the barrier): the index comes last.
        try comm?.barrier("before the index")
        if rank == 0 { try writeIndex(shards, models: models, skipped: problems.count) }
        try comm?.barrier("after the index")
        return EncodeSummary(count: triplets.count, skipped: problems.count, shards: shards.count, resumedShards: resumed,
                             latentShape: models.latentShape, contextShape: models.contextShape)
    }

    // MARK: - Steps of run()

    /// The VAE encoder (or pixel space) and the prompt encoder, the cache's shapes, checked against the settings and
    /// the U-Net.
    struct Models {
        let space: LatentSpace, prompts: PromptEncoder, tiling: VAETiling?
        /// (C, H/f, W/f) and (S, D)
        let latentShape: [Int], contextShape: [Int]
        var latentCount: Int { latentShape.reduce(1, *) }
        var contextCount: Int { contextShape.reduce(1, *) }
    }

    func loadModels() throws -> Models {
        let s = settings
        let folder = try ModelFolder(path: s.model)
        let space = try LatentSpace.load(folder, variant: s.variant, parts: .encoder, precision: s.bf16 ? .bf16 : .no)
        let prompts = try PromptEncoder.load(folder, variant: s.variant)
        let f = space.downsamplingFactor
        guard s.width % f == 0, s.height % f == 0 else {
            throw EncodeError.badSetting("training size \(s.width)x\(s.height): width and height must be multiples of \(f), "
                                         + "the VAE's downsampling factor")
        }
        guard s.clipSkip < prompts.model.layerCount else {
            throw EncodeError.badSetting("clip skip \(s.clipSkip) must be below the text encoder's \(prompts.model.layerCount) layers")
        }
        let latentShape = [space.latentChannels, s.height / f, s.width / f]
        let contextShape = [prompts.tokenizer.maxLength, prompts.model.width]
        try checkUNet(folder, latentShape: latentShape, contextWidth: contextShape[1])
        let tiling = try s.tile.map { tile in
            guard let vae = space.vae else {
                throw EncodeError.badSetting("VAE tiles: \(s.model) is a pixel-space pipeline (no vae/); there is nothing to tile")
            }
            return try vae.tiling(sampleTileSize: tile == 0 ? nil : tile)
        }
        return Models(space: space, prompts: prompts, tiling: tiling, latentShape: latentShape, contextShape: contextShape)
    }

    /// The dataset's lines checked on every rank and its images decoded once, split over the ranks: the triplets to
    /// encode, and the problems skipped (an error without --skip-bad).
    func usableTriplets() throws -> (triplets: [Triplet], problems: [TripletProblem]) {
        let s = settings
        let dataset = try TripletDataset.open(folder: s.data, skipBad: true)
        let imageProblems = try decodeCheck(dataset)
        let bad = Set(imageProblems.map(\.line))
        let problems = (dataset.skipped + imageProblems).sorted { $0.line < $1.line }
        if !problems.isEmpty && !s.skipBad {
            throw TripletDatasetError.badLines(path: (s.data as NSString).appendingPathComponent(TripletDataset.fileName),
                                               problems: Array(problems.prefix(TripletDataset.problemsShown)),
                                               total: problems.count, lineCount: dataset.count + dataset.skipped.count)
        }
        for p in problems { progress("encode: skipped \(p)") }
        let triplets = dataset.triplets.filter { !bad.contains($0.line) }
        guard !triplets.isEmpty else {
            throw EncodeError.badSetting("\(s.data): no usable triplets" + (problems.isEmpty ? "" : " (\(problems.count) bad lines skipped)"))
        }
        return (triplets, problems)
    }

    /// Shard k holds rows k·S ..< (k + 1)·S of the triplets.
    struct ShardPlan {
        let count: Int, shardSize: Int, rowCount: Int
        init(count rows: Int, shardSize: Int) {
            self.rowCount = rows; self.shardSize = shardSize; count = (rows + shardSize - 1) / shardSize
        }
        func rows(_ k: Int) -> Range<Int> { (k * shardSize)..<min((k + 1) * shardSize, rowCount) }
    }

    /// The shards not yet complete on disk, as every rank agrees.
    func pendingShards(_ shards: ShardPlan, triplets: [Triplet], models: Models) throws -> [Int] {
        var done = (0..<shards.count).map { k in
            Self.shardIsComplete(path: shardPath(k), ids: triplets[shards.rows(k)].map(\.id), latentShape: models.latentShape,
                                 contextShape: models.contextShape, dtype: settings.dtype) ? Float(1) : 0
        }
        try comm?.allreduce("the finished shards", &done, op: .min)
        return (0..<shards.count).filter { done[$0] == 0 }
    }

    /// Progress lines: at most every 5 s while a shard is encoded, and after each shard.
    struct ProgressMeter {
        let total: Int, shardCount: Int
        let start = Date()
        var encoded = 0, lastReport = Date(), lastDone = -1

        init(total: Int, shardCount: Int) { self.total = total; self.shardCount = shardCount; lastReport = start }

        mutating func report(_ k: Int, done: Int, force: Bool, to progress: (String) -> Void) {
            let now = Date()
            guard done != lastDone, force || now.timeIntervalSince(lastReport) >= 5 else { return }
            lastReport = now
            lastDone = done
            let rate = Double(done) / max(now.timeIntervalSince(start), 1e-9)
            let speed = rate >= 1 ? String(format: "%.2f triplets/s", rate) : String(format: "%.1f s/triplet", 1 / max(rate, 1e-9))
            progress("encode: shard \(k + 1)/\(shardCount)  \(done)/\(total) triplets  \(speed)  "
                     + String(format: "ETA %.0fs", Double(total - done) / max(rate, 1e-9)))
        }
    }

    /// Encodes this rank's batches of shard k (batch g on rank g mod W), gathers the shard on its writer (rank k mod W),
    /// which writes it.
    func encodeShard(_ k: Int, rows r: Range<Int>, triplets: [Triplet], models m: Models, meter: inout ProgressMeter) throws {
        let s = settings, n = r.count
        var winners = [Float](repeating: 0, count: n * m.latentCount), losers = winners
        var contexts = [Float](repeating: 0, count: n * m.contextCount)
        let batches = (n + s.batch - 1) / s.batch
        for g in stride(from: rank, to: batches, by: worldSize) {
            let b0 = r.lowerBound + g * s.batch, b1 = min(b0 + s.batch, r.upperBound)
            let (w, l, c) = try encodeBatch(Array(triplets[b0..<b1]), firstRow: b0, models: m)
            let offset = b0 - r.lowerBound, count = b1 - b0
            winners.replaceSubrange((offset * m.latentCount)..<((offset + count) * m.latentCount), with: w)
            losers.replaceSubrange((offset * m.latentCount)..<((offset + count) * m.latentCount), with: l)
            contexts.replaceSubrange((offset * m.contextCount)..<((offset + count) * m.contextCount), with: c)
            // Rank 0 encodes batches 0, W, 2W, …: when it is done with batch g, about g + 1 batches are done on every rank.
            meter.report(k, done: meter.encoded + min(n, (g + 1) * s.batch), force: false, to: progress)
        }
        if let comm, comm.size > 1 {
            try gatherShard(k, rows: r, comm: comm, winners: &winners, losers: &losers, contexts: &contexts,
                            latentCount: m.latentCount, contextCount: m.contextCount)
        }
        if k % worldSize == rank {
            try LatentCacheWriter.writeShard(path: shardPath(k), ids: triplets[r].map(\.id), latentShape: m.latentShape,
                                             contextShape: m.contextShape, dtype: s.dtype, winner: bytes(winners),
                                             loser: bytes(losers), context: bytes(contexts))
        }
        meter.encoded += n
        meter.report(k, done: meter.encoded, force: true, to: progress)
    }

    /// One batch of triplets (rows firstRow ..< firstRow + count of the dataset): winner and loser latents, prompt
    /// contexts, flat (B, C, h, w) and (B, S, D).
    func encodeBatch(_ batch: [Triplet], firstRow b0: Int, models m: Models) throws -> ([Float], [Float], [Float]) {
        let s = settings
        let base = CounterRNG(seed: s.seed)
        let noise = base.substream(RNGStream.latentNoise), crops = base.substream(RNGStream.crop)
        var images: [[Image]] = [[], []]                  // winners, losers
        for (i, t) in batch.enumerated() {
            let fraction = s.crop == .random ? TrainingImage.cropFraction(rng: crops, row: b0 + i) : nil
            for (role, path, list) in [("winner", t.winner, 0), ("loser", t.loser, 1)] {
                let image: ByteImage
                do {
                    image = try PNG.readBytes((s.data as NSString).appendingPathComponent(path), channels: m.space.imageChannels)
                } catch {   // changed since the check
                    throw EncodeError.badImage(TripletProblem(line: t.line, id: t.id, reason: "\(role) \(path): \(error)"))
                }
                images[list].append(TrainingImage.prepare(image, width: s.width, height: s.height, cropFraction: fraction,
                                                          method: s.resize))
            }
        }
        let latents = try [UInt64(0), 1].map { stream -> [Float] in
            let mode: AutoencoderKL.LatentMode = s.latentMode == .mean ? .mean
                : .sample(rng: noise.substream(stream), firstImage: b0)
            let z = try m.space.encode(FeatureMap(images: images[Int(stream)]), mode: mode, tiling: m.tiling)
            return Array(UnsafeBufferPointer(start: z.ptr, count: z.count))
        }
        let encoding = try m.prompts.encode(prompts: batch.map(\.prompt), weighting: s.weighting, clipSkip: s.clipSkip)
        let contexts = Array(UnsafeBufferPointer(start: encoding.hiddenStates.ptr, count: batch.count * m.contextCount))
        return (latents[0], latents[1], contexts)
    }

    /// Rank 0, after every shard: index.json with the settings as its source, checked by opening the cache as the
    /// trainer does; temporary files of shards a killed run was writing are removed.
    func writeIndex(_ shards: ShardPlan, models m: Models, skipped: Int) throws {
        let s = settings
        let source: JSONValue = .object([
            ("generator", "hgdpo encode"), ("model", .string(s.model)), ("data", .string(s.data)),
            ("width", .int(s.width)), ("height", .int(s.height)), ("crop", .string(s.crop.rawValue)),
            ("resize", .string(s.resize.rawValue)), ("mixed_precision", s.bf16 ? "bf16" : "no"), ("latent_mode", .string(s.latentMode.rawValue)), ("seed", .string(String(s.seed))),
            ("prompt_weighting", .bool(s.weighting)), ("clip_skip", .int(s.clipSkip)),
            ("skipped", .int(skipped)),
        ])
        try LatentCacheWriter.writeIndex(folder: s.out, latentShape: m.latentShape, contextShape: m.contextShape, dtype: s.dtype,
                                         shards: (0..<shards.count).map { (LatentCacheFormat.shardFileName($0), shards.rows($0).count) },
                                         source: source)
        _ = try LatentCache.open(s.out)   // the trainer's own checks, on what was just written
        // Temporary files of shards a killed run was writing (`.shard-XXXXX.safetensors.tmp-PID`).
        for name in (try? FileManager.default.contentsOfDirectory(atPath: s.out)) ?? []
        where name.hasPrefix(".shard-") && name.contains(".tmp-") {
            try? FileManager.default.removeItem(atPath: (s.out as NSString).appendingPathComponent(name))
        }
    }

    // MARK: - Pieces

    enum RNGStream {
        static let latentNoise: UInt64 = 0x656E_636F_6465_6E7A   // "encodenz"
        static let crop: UInt64 = 0x656E_636F_6465_6372          // "encodecr"
    }

    func shardPath(_ k: Int) -> String { (settings.out as NSString).appendingPathComponent(LatentCacheFormat.shardFileName(k)) }

    func bytes(_ values: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: values.count * settings.dtype.byteSize)
        values.withUnsafeBufferPointer { v in
            out.withUnsafeMutableBytes { convertFromFloat(v.baseAddress!, count: v.count, to: settings.dtype, into: $0.baseAddress!) }
        }
        return out
    }

    /// The U-Net of the pipeline, when there is one, must take these latents and contexts.
    func checkUNet(_ folder: ModelFolder, latentShape: [Int], contextWidth: Int) throws {
        guard let unet = try? folder.unet(), FileManager.default.fileExists(atPath: unet.configPath) else { return }
        let config = try unet.config(UNet2DConditionConfig.self)
        if config.inChannels != latentShape[0] {
            throw EncodeError.modelMismatch("\(unet.configPath): the U-Net takes \(config.inChannels) latent channels but the "
                                               + "\(LatentSpace.isPixelSpace(folder) ? "pixel-space latents have" : "VAE makes") \(latentShape[0])")
        }
        let m = 1 << max(0, config.blockOutChannels.count - 1)   // the U-Net halves the latent at every level but the last
        if latentShape[1] % m != 0 || latentShape[2] % m != 0 {
            throw EncodeError.badSetting("training size \(settings.width)x\(settings.height) gives \(latentShape[2])x\(latentShape[1]) latents; "
                                         + "the U-Net needs multiples of \(m) (images in multiples of \(m * settings.height / latentShape[1]) px)")
        }
        if case .one(let d) = config.crossAttentionDim, d != contextWidth {
            throw EncodeError.modelMismatch("\(unet.configPath): cross_attention_dim is \(d) but the text encoder is \(contextWidth) wide")
        }
    }

    /// Decodes every image (triplet i on rank i mod W) and gathers the problems on every rank, in line order.
    func decodeCheck(_ dataset: TripletDataset) throws -> [TripletProblem] {
        let mine = stride(from: rank, to: dataset.count, by: worldSize).map { $0 }
        var found = [TripletProblem?](repeating: nil, count: mine.count)
        found.withUnsafeMutableBufferPointer { out in
            let out = out
            parallelFor(mine.count, work: .max) { j in
                let t = dataset[mine[j]]
                for (role, path) in [("winner", t.winner), ("loser", t.loser)] {
                    do {
                        _ = try PNG.readBytes((dataset.folder as NSString).appendingPathComponent(path))
                    } catch {
                        out[j] = TripletProblem(line: t.line, id: t.id, reason: "\(role) \(jsonText(path)) is not a readable PNG: \(error)")
                        return
                    }
                }
            }
        }
        var problems = found.compactMap { $0 }
        if let comm, comm.size > 1 {
            let encoded = Array(JSONValue.array(problems.map {
                .object([("line", .int($0.line)), ("id", $0.id.map { .string($0) } ?? .null), ("reason", .string($0.reason))])
            }).serialized().utf8)
            problems = []
            for root in 0..<comm.size {
                let bytes = try comm.broadcast("rank \(root)'s unreadable triplets", encoded, root: root)
                guard let items = try JSONSerialization.jsonObject(with: Foundation.Data(bytes)) as? [[String: Any]] else { continue }
                for item in items {
                    problems.append(TripletProblem(line: item["line"] as? Int ?? 0, id: item["id"] as? String,
                                                   reason: item["reason"] as? String ?? ""))
                }
            }
        }
        return problems.sorted { $0.line < $1.line }
    }

    /// Rank 0 checks the output folder and writes encode.json; the others wait.
    func prepareOutput(_ manifest: JSONValue) throws {
        if rank == 0 {
            let fm = FileManager.default
            let out = settings.out
            let manifestPath = (out as NSString).appendingPathComponent(Self.manifestFile)
            var isDir: ObjCBool = false
            if fm.fileExists(atPath: out, isDirectory: &isDir) {
                guard isDir.boolValue else { throw EncodeError.outputExists(path: out, reason: "exists and is not a folder") }
                if let data = fm.contents(atPath: manifestPath) {
                    let old = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
                    let new = try JSONSerialization.jsonObject(with: Foundation.Data(manifest.serialized().utf8)) as! [String: Any]
                    let differences = Set(old.keys).union(new.keys).sorted().compactMap { key -> String? in
                        let a = old[key].map { "\($0)" } ?? "absent", b = new[key].map { "\($0)" } ?? "absent"
                        return a == b ? nil : "\(key): was \(a), now \(b)"
                    }
                    if !differences.isEmpty { throw EncodeError.settingsChanged(path: out, differences: differences) }
                } else if !((try? fm.contentsOfDirectory(atPath: out)) ?? []).filter({ !RunFolderLock.isLockFile($0) }).isEmpty {
                    throw EncodeError.outputExists(path: out, reason: "exists and is not an interrupted `hgdpo encode` (no \(Self.manifestFile)); "
                                                   + "choose a new or empty folder")
                }
            }
            do {
                try fm.createDirectory(atPath: out, withIntermediateDirectories: true)
                try Foundation.Data((manifest.pretty() + "\n").utf8).write(to: URL(fileURLWithPath: manifestPath), options: .atomic)
            } catch {
                throw EncodeError.outputExists(path: out, reason: "cannot write: \(error.localizedDescription)")
            }
        }
        try comm?.barrier("after preparing the output folder")
    }

    /// A shard written by an earlier run: present (files appear only complete) with the expected rows and ids.
    static func shardIsComplete(path: String, ids: [String], latentShape: [Int], contextShape: [Int], dtype: DType) -> Bool {
        guard FileManager.default.fileExists(atPath: path), let file = try? SafeTensorsFile(path: path) else { return false }
        let n = ids.count
        for (name, shape) in [(LatentCacheFormat.winnerTensor, latentShape), (LatentCacheFormat.loserTensor, latentShape),
                              (LatentCacheFormat.contextTensor, contextShape)] {
            guard let info = file.info(name), info.dtype == dtype, info.shape == [n] + shape else { return false }
        }
        return file.metadata[LatentCacheFormat.idsMetadataKey] == JSONValue.array(ids.map { .string($0) }).serialized()
    }

    /// FNV-1a 64 over every usable triplet's id, prompt and image paths, in order.
    static func fingerprint(_ triplets: [Triplet]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for t in triplets {
            for field in [t.id, t.prompt, t.winner, t.loser] {
                for byte in field.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
                h = (h ^ 0xff) &* 0x100_0000_01b3
            }
        }
        return String(h, radix: 16)
    }
}

private func jsonText(_ s: String) -> String { JSONValue.string(s).serialized() }

/// `path` made absolute and standardised, so a resumed encode started from another directory is recognised.
private func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }
