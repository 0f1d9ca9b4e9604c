// `hgdpo encode`: a triplet dataset (triplets.jsonl + PNGs) → the latent cache the trainer streams (format in
// Datasets/LatentCache.swift): per triplet the VAE latents of the winner and loser images and the text encoder's
// hidden states of the prompt.
//
// Per triplet at row r of the cache (its position among the good lines of triplets.jsonl):
//   image   PNG → RGB → resized to cover the training size (Pillow's 8-bit bilinear, or torch's float one) and
//           cropped to it, in [-1, 1] (TrainingImage), winner and loser with the same crop; a random crop's fractions
//           come from (seed, r)
//   latent  AutoencoderKL.encode: `latent_dist.sample() · scaling_factor` as diffusers' training scripts (default), the
//           noise from the counter-based RNG keyed by (seed, r, winner|loser), or the posterior mean (--latent-mode mean)
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
    let comm: Communicator?
    var rank: Int { comm?.rank ?? 0 }
    var worldSize: Int { comm?.size ?? 1 }
    /// Progress lines (rank 0 only).
    let progress: (String) -> Void
    /// Bounds every collective (a lost rank or a cut network otherwise leaves the others waiting forever).
    let watchdog: Watchdog?

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
        self.comm = comm
        self.progress = comm.map { $0.isRoot } ?? true ? progress : { _ in }
        watchdog = comm.flatMap { $0.size > 1 && collectiveTimeout > 0
            ? Watchdog(timeout: collectiveTimeout, rank: $0.rank, host: $0.host) : nil }
    }

    /// Runs a collective under the watchdog.
    func collective<T>(_ operation: String, _ body: () throws -> T) rethrows -> T {
        if let watchdog { return try watchdog.guarded(operation, body) }
        return try body()
    }

    public func run() throws -> EncodeSummary {
        let s = settings
        // Refuse a finished cache before any work.
        let indexPath = (s.out as NSString).appendingPathComponent(LatentCacheFormat.indexFile)
        if FileManager.default.fileExists(atPath: indexPath) {
            throw EncodeError.outputExists(path: s.out, reason: "is already a complete latent cache (it has \(LatentCacheFormat.indexFile)); "
                                           + "choose a new folder to encode again")
        }

        // Models first: a wrong model is reported before the dataset is read.
        let folder = try ModelFolder(path: s.model)
        let vae = try AutoencoderKL.load(folder: folder.vae(), variant: s.variant, parts: .encoder, precision: s.bf16 ? .bf16 : .no)
        let prompts = try PromptEncoder.load(folder, variant: s.variant)
        let f = vae.downsamplingFactor
        guard s.width % f == 0, s.height % f == 0 else {
            throw EncodeError.badSetting("training size \(s.width)x\(s.height): width and height must be multiples of \(f), "
                                         + "the VAE's downsampling factor")
        }
        guard s.clipSkip < prompts.model.layerCount else {
            throw EncodeError.badSetting("clip skip \(s.clipSkip) must be below the text encoder's \(prompts.model.layerCount) layers")
        }
        let latentShape = [vae.spec.latentChannels, s.height / f, s.width / f]
        let contextShape = [prompts.tokenizer.maxLength, prompts.model.width]
        try checkUNet(folder, latentShape: latentShape, contextWidth: contextShape[1])
        let tiling = try s.tile.map { try vae.tiling(sampleTileSize: $0 == 0 ? nil : $0) }

        // The dataset: lines checked on every rank, images decoded once, split over the ranks.
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

        // The output folder: new, or an interrupted encode of the same settings and data.
        try prepareOutput(s.manifest(count: triplets.count, fingerprint: Self.fingerprint(triplets)))

        let S = s.shardSize, shardCount = (triplets.count + S - 1) / S
        func rows(_ k: Int) -> Range<Int> { (k * S)..<min((k + 1) * S, triplets.count) }
        var done = (0..<shardCount).map { k in
            Self.shardIsComplete(path: shardPath(k), ids: triplets[rows(k)].map(\.id), latentShape: latentShape,
                                 contextShape: contextShape, dtype: s.dtype) ? Float(1) : 0
        }
        // Every rank agrees on what is left.
        try collective("MPI_Allreduce of the finished shards") { try comm?.allreduce(&done, op: .min) }
        let resumed = done.filter { $0 == 1 }.count
        if resumed > 0 { progress("encode: resuming: \(resumed) of \(shardCount) shards are already written") }

        let latentCount = latentShape.reduce(1, *), contextCount = contextShape.reduce(1, *)
        let base = CounterRNG(seed: s.seed)
        let noise = base.substream(RNGStream.latentNoise), crops = base.substream(RNGStream.crop)
        let start = Date()
        var encoded = 0, lastReport = start, lastDone = -1
        func report(_ k: Int, done: Int, force: Bool) {
            let now = Date()
            guard done != lastDone, force || now.timeIntervalSince(lastReport) >= 5 else { return }
            lastReport = now
            lastDone = done
            let rate = Double(done) / max(now.timeIntervalSince(start), 1e-9)
            let speed = rate >= 1 ? String(format: "%.2f triplets/s", rate) : String(format: "%.1f s/triplet", 1 / max(rate, 1e-9))
            progress("encode: shard \(k + 1)/\(shardCount)  \(done)/\(pendingTotal) triplets  \(speed)  "
                     + String(format: "ETA %.0fs", Double(pendingTotal - done) / max(rate, 1e-9)))
        }
        let pendingTotal = (0..<shardCount).filter { done[$0] == 0 }.reduce(0) { $0 + rows($1).count }
        for k in 0..<shardCount where done[k] == 0 {
            let r = rows(k), n = r.count
            var winners = [Float](repeating: 0, count: n * latentCount), losers = winners
            var contexts = [Float](repeating: 0, count: n * contextCount)
            let batches = (n + s.batch - 1) / s.batch
            for g in stride(from: rank, to: batches, by: worldSize) {
                let b0 = r.lowerBound + g * s.batch, b1 = min(b0 + s.batch, r.upperBound)
                let batch = Array(triplets[b0..<b1])
                var winnerImages: [Image] = [], loserImages: [Image] = []
                for (i, t) in batch.enumerated() {
                    let fraction = s.crop == .random ? TrainingImage.cropFraction(rng: crops, row: b0 + i) : nil
                    for (role, path, list) in [("winner", t.winner, 0), ("loser", t.loser, 1)] {
                        let full = (s.data as NSString).appendingPathComponent(path)
                        let image: ByteImage
                        do {
                            image = try PNG.readBytes(full, channels: vae.spec.inChannels)
                        } catch {   // changed since the check
                            throw EncodeError.badImage(TripletProblem(line: t.line, id: t.id, reason: "\(role) \(path): \(error)"))
                        }
                        let prepared = TrainingImage.prepare(image, width: s.width, height: s.height, cropFraction: fraction,
                                                             method: s.resize)
                        if list == 0 { winnerImages.append(prepared) } else { loserImages.append(prepared) }
                    }
                }
                let offset = b0 - r.lowerBound
                for (images, stream, out) in [(winnerImages, UInt64(0), 0), (loserImages, UInt64(1), 1)] {
                    let mode: AutoencoderKL.LatentMode = s.latentMode == .mean ? .mean
                        : .sample(rng: noise.substream(stream), firstImage: b0)
                    let latents = try vae.encode(FeatureMap(images: images), mode: mode, tiling: tiling)
                    let src = UnsafeBufferPointer(start: latents.ptr, count: latents.count)
                    if out == 0 {
                        winners.replaceSubrange((offset * latentCount)..<((offset + batch.count) * latentCount), with: src)
                    } else {
                        losers.replaceSubrange((offset * latentCount)..<((offset + batch.count) * latentCount), with: src)
                    }
                }
                let encoding = try prompts.encode(prompts: batch.map(\.prompt), weighting: s.weighting, clipSkip: s.clipSkip)
                contexts.replaceSubrange((offset * contextCount)..<((offset + batch.count) * contextCount),
                                         with: UnsafeBufferPointer(start: encoding.hiddenStates.ptr, count: batch.count * contextCount))
                // Rank 0 encodes batches 0, W, 2W, …: when it is done with batch g, about g + 1 batches are done on every rank.
                report(k, done: encoded + min(n, (g + 1) * s.batch), force: false)
            }
            // Gather the shard: each row is non-zero on its encoding rank only; x + 0 = x exactly once −0 is +0.
            for i in winners.indices where winners[i] == 0 { winners[i] = 0 }
            for i in losers.indices where losers[i] == 0 { losers[i] = 0 }
            for i in contexts.indices where contexts[i] == 0 { contexts[i] = 0 }
            if let comm, comm.size > 1 {
                try collective("MPI_Allreduce of shard \(k)") {
                    try comm.allreduce(&winners)
                    try comm.allreduce(&losers)
                    try comm.allreduce(&contexts)
                }
            }
            if k % worldSize == rank {
                try LatentCacheWriter.writeShard(path: shardPath(k), ids: triplets[r].map(\.id), latentShape: latentShape,
                                                 contextShape: contextShape, dtype: s.dtype, winner: bytes(winners),
                                                 loser: bytes(losers), context: bytes(contexts))
            }
            encoded += n
            report(k, done: encoded, force: true)
        }

        // Every shard is on disk (each writer finished before reaching the barrier): the index comes last.
        try collective("MPI_Barrier before the index") { try comm?.barrier() }
        if rank == 0 {
            let source: JSONValue = .object([
                ("generator", "hgdpo encode"), ("model", .string(s.model)), ("data", .string(s.data)),
                ("width", .int(s.width)), ("height", .int(s.height)), ("crop", .string(s.crop.rawValue)),
                ("resize", .string(s.resize.rawValue)), ("mixed_precision", s.bf16 ? "bf16" : "no"), ("latent_mode", .string(s.latentMode.rawValue)), ("seed", .string(String(s.seed))),
                ("prompt_weighting", .bool(s.weighting)), ("clip_skip", .int(s.clipSkip)),
                ("skipped", .int(problems.count)),
            ])
            try LatentCacheWriter.writeIndex(folder: s.out, latentShape: latentShape, contextShape: contextShape, dtype: s.dtype,
                                             shards: (0..<shardCount).map { (LatentCacheFormat.shardFileName($0), rows($0).count) },
                                             source: source)
            _ = try LatentCache.open(s.out)   // the trainer's own checks, on what was just written
            // Temporary files of shards a killed run was writing (`.shard-XXXXX.safetensors.tmp-PID`).
            for name in (try? FileManager.default.contentsOfDirectory(atPath: s.out)) ?? []
            where name.hasPrefix(".shard-") && name.contains(".tmp-") {
                try? FileManager.default.removeItem(atPath: (s.out as NSString).appendingPathComponent(name))
            }
        }
        try collective("MPI_Barrier after the index") { try comm?.barrier() }
        return EncodeSummary(count: triplets.count, skipped: problems.count, shards: shardCount, resumedShards: resumed,
                             latentShape: latentShape, contextShape: contextShape)
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
            throw EncodeError.modelMismatch("\(unet.configPath): the U-Net takes \(config.inChannels) latent channels but the VAE makes \(latentShape[0])")
        }
        let m = 1 << max(0, config.blockOutChannels.count - 1)   // the U-Net halves the latent at every level but the last
        if latentShape[1] % m != 0 || latentShape[2] % m != 0 {
            throw EncodeError.badSetting("training size \(settings.width)x\(settings.height) gives \(latentShape[2])x\(latentShape[1]) latents; "
                                         + "the U-Net needs multiples of \(m) (images in multiples of \(m * settings.height / latentShape[1]) px)")
        }
        if case .int(let d) = config.crossAttentionDim, d != contextWidth {
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
                let bytes = try collective("MPI_Bcast of rank \(root)'s unreadable triplets") {
                    try comm.broadcast(encoded, root: root)
                }
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
                } else if !((try? fm.contentsOfDirectory(atPath: out)) ?? []).isEmpty {
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
        try collective("MPI_Barrier after preparing the output folder") { try comm?.barrier() }
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
