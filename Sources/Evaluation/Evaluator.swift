// `hgdpo eval`'s core: side A (a model with a LoRA at a scale, optionally with LAN) against a baseline (the same model
// with the LoRA off, another LoRA, or another model), as the paper's Tables 1-3 and 5-6 compare HG-DPO with the SFT
// model. Both sides sample image j of prompt p from the same seed (seed + p·k + j), so each pair differs only by the
// model; every scorer scores both, and the statistics of Statistics.swift are computed on the pairs.
//
// EVAL_DIR/
//   a/NNNNNN-seedS.png, baseline/NNNNNN-seedS.png   the images, with their parameters in PNG text chunks (as
//                                                   `hgdpo sample` writes them) plus `latent_mean` / `latent_std`, the
//                                                   final latent's per-channel statistics (before the VAE)
//   grids/prompt-NNNN.png                           per prompt: one row per seed, baseline | A
//   results.json, report.md, report.html            (EvalReport.swift; docs/evaluation.md lists the fields)
//
// Sampling is sharded over ranks and resumable. Rank 0 decides which images are missing (an image already there with
// the same parameters is kept: an interrupted eval continues; one with other parameters stops the eval, nothing is
// overwritten). The missing ones go in rounds of ranks × batch images: each rank samples its batch of the round, the
// pixels and latent statistics are summed to every rank (an all-reduce: each value is non-zero on one rank only, so
// the sum is exact) and rank 0 writes the PNGs. No shared filesystem is needed, no rank waits longer than one batch,
// and an image does not depend on the rank count. Scoring and the report run on rank 0 only.
import Foundation
import IO
import NN
import Sampling
import Scoring
import Tensors
import UNet

public struct EvalError: Error, UserInputError, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One side of the comparison.
public struct EvalSide: Sendable, Equatable {
    public var model: String
    public var variant: String?
    /// LoRA weights file; nil samples the model itself.
    public var lora: String?
    public var loraScale: Float
    /// Latent adaptive normalization (paper Eq. 7) against the same model with the LoRA off; needs `lora`.
    public var lan: Bool

    public init(model: String, variant: String? = nil, lora: String? = nil, loraScale: Float = 0.5, lan: Bool = false) {
        self.model = model; self.variant = variant; self.lora = lora; self.loraScale = loraScale; self.lan = lan
    }

    /// The LoRA's scale when there is a LoRA (nil: adapters off).
    var scale: Float? { lora == nil ? nil : loraScale }

    /// "model + LoRA file @ scale (LAN)" for tables.
    public var summary: String {
        var s = model
        if let lora { s += " + \(lora) @ \(loraScale)" }
        if lan { s += " (LAN)" }
        return s
    }
}

public struct EvalConfig: Sendable {
    public var a: EvalSide
    public var baseline: EvalSide
    public var prompts: [String]
    /// Where the prompts came from, for the report (file, column, category).
    public var promptSource: String
    public var imagesPerPrompt = 1
    public var seed: UInt64 = 0
    public var negativePrompt = ""
    public var steps = 50
    public var guidance: Float = 5
    public var height = 512, width = 512
    public var scheduler = "dpmsolver++"
    /// Images per U-Net batch on one rank.
    public var batch = 1
    public var precision: MixedPrecision = .no
    public var out: String
    /// Score differences up to this count as ties.
    public var tieTolerance = 0.0
    public var bootstrapResamples = 10_000
    public var bootstrapSeed: UInt64 = 0
    /// Prompts whose grids the HTML report shows (all grids are written to grids/).
    public var reportGrids = 16

    public init(a: EvalSide, baseline: EvalSide, prompts: [String], promptSource: String, out: String) {
        self.a = a; self.baseline = baseline; self.prompts = prompts; self.promptSource = promptSource; self.out = out
    }

    public var jobs: [SampleJob] {
        SampleJob.plan(prompts: prompts, negativePrompt: negativePrompt, imagesPerPrompt: imagesPerPrompt, firstSeed: seed)
    }

    func settings(_ side: EvalSide) -> SampleRunSettings {
        var p = SamplingParameters(steps: steps, guidanceScale: guidance, height: height, width: width, loraScale: side.scale)
        p.lan = side.lan
        return SampleRunSettings(parameters: p, scheduler: scheduler, model: side.model, lora: side.lora, batch: batch)
    }

    /// Refuses what cannot be compared, before any work.
    public func validate() throws {
        guard !prompts.isEmpty else { throw EvalError("no prompts") }
        guard imagesPerPrompt >= 1, batch >= 1, steps >= 1 else { throw EvalError("images per prompt, batch and steps must be at least 1") }
        for (name, side) in [("A", a), ("baseline", baseline)] where side.lan && side.lora == nil {
            throw EvalError("LAN on the \(name) side needs a LoRA (it matches the LoRA model's latents to the model without it)")
        }
        if a.lora == nil && baseline.lora == nil && a.model == baseline.model {
            throw EvalError("side A and the baseline are the same (\(a.summary), no LoRA): give --lora, --baseline-lora or --baseline-model")
        }
    }
}

/// The ranks sampling together. `sum` adds a buffer over all ranks in place (an MPI all-reduce); `what` names the
/// operation for a timeout message.
public struct RankGroup {
    public let rank: Int
    public let size: Int
    public let sum: (UnsafeMutableBufferPointer<Double>, _ what: String) throws -> Void
    public init(rank: Int, size: Int, sum: @escaping (UnsafeMutableBufferPointer<Double>, String) throws -> Void) {
        self.rank = rank; self.size = size; self.sum = sum
    }
    public static let single = RankGroup(rank: 0, size: 1) { _, _ in }
    public var isRoot: Bool { rank == 0 }
}

public final class Evaluator {
    public let config: EvalConfig
    public let scorers: [any Scorer]
    public let ranks: RankGroup
    let log: (String) -> Void
    private var loaded: (side: EvalSide, pipeline: TextToImagePipeline)?
    /// Images sampled by this process (the others were already there).
    public private(set) var sampled = 0

    public static let sideFolders = (a: "a", baseline: "baseline")

    public init(config: EvalConfig, scorers: [any Scorer], ranks: RankGroup = .single, log: @escaping (String) -> Void = { print($0) }) throws {
        try config.validate()
        var names = Set<String>()
        for s in scorers where !names.insert(s.name).inserted { throw EvalError("two scorers are named '\(s.name)'") }
        self.config = config; self.scorers = scorers; self.ranks = ranks; self.log = log
    }

    func path(_ parts: String...) -> String { parts.reduce(config.out) { ($0 as NSString).appendingPathComponent($1) } }

    /// Samples what is missing on both sides (every rank), then on rank 0 scores, computes and writes results.json,
    /// the grids and the reports. Returns the results on rank 0, nil on the others.
    @discardableResult
    public func run() throws -> EvalResults? {
        try preflight()
        try sample(config.a, folder: path(Evaluator.sideFolders.a))
        try sample(config.baseline, folder: path(Evaluator.sideFolders.baseline))
        loaded = nil
        guard ranks.isRoot else { return nil }
        let results = try analyze()
        try EvalReport.write(results, folder: config.out, reportGrids: config.reportGrids)
        return results
    }

    // MARK: - Sampling

    /// A bad model folder or LoRA file of either side fails here, before any image is sampled.
    private func preflight() throws {
        for side in [config.a, config.baseline] {
            // Every failure here is about a path the user gave (missing folder, not a pipeline, unreadable LoRA).
            do {
                try TextToImagePipeline.checkPipelineFolder(ModelFolder(path: side.model))
                if let lora = side.lora { _ = try LoRAFile.read(lora) }
            } catch { throw EvalError("\(error)") }
        }
    }

    /// The pipeline of a side; the baseline with the LoRA off reuses side A's (its LoRA runs at scale nil).
    private func pipeline(for side: EvalSide) throws -> TextToImagePipeline {
        if let l = loaded, l.side.model == side.model, l.side.variant == side.variant, side.lora == nil || l.side.lora == side.lora {
            return l.pipeline
        }
        loaded = nil    // free the other side's model first
        let lora = try side.lora.map { try LoRAFile.read($0) }
        let p = try TextToImagePipeline.load(modelFolder: side.model, variant: side.variant, lora: lora, loraSource: side.lora ?? "",
                                             precision: config.precision, schedulerName: config.scheduler)
        _ = try p.latentSize(height: config.height, width: config.width)
        loaded = (side, p)
        return p
    }

    static let latentMeanKey = "latent_mean", latentStdKey = "latent_std"

    private func sample(_ side: EvalSide, folder: String) throws {
        let jobs = config.jobs
        let settings = config.settings(side)
        // Rank 0 finds the missing images and tells the others (flags summed: non-zero on rank 0 only).
        var flags = [Double](repeating: 0, count: jobs.count)
        if ranks.isRoot {
            let found = try SampleRun.inspect(folder: folder, settings: settings, jobs: jobs)
            for job in found.existing {
                let file = (folder as NSString).appendingPathComponent(job.fileName)
                let text = try PNG.readBytesWithText(file).1
                guard text[Evaluator.latentMeanKey] != nil, text[Evaluator.latentStdKey] != nil else {
                    throw EvalError("\(file) has no latent statistics (was it written by hgdpo sample?); remove it or choose another --out")
                }
            }
            for job in found.todo { flags[job.index] = 1 }
            if found.todo.isEmpty { log("\(folder): all \(jobs.count) images already there") }
            else if !found.existing.isEmpty { log("\(folder): \(found.existing.count) of \(jobs.count) images already there, skipped") }
        }
        try flags.withUnsafeMutableBufferPointer { try ranks.sum($0, "the list of images to sample") }
        let todo = jobs.filter { flags[$0.index] != 0 }
        guard !todo.isEmpty else { return }

        let pixels = 3 * config.height * config.width
        // The buffer layout needs the latent channel count on every rank, also on one without work in a round.
        let channels: Int
        do { channels = try ModelFolder(path: side.model).unet().config(UNet2DConditionConfig.self).inChannels } catch {
            throw EvalError("\(side.model): \(error)")
        }
        let perRound = ranks.size * config.batch
        let rounds = (todo.count + perRound - 1) / perRound
        for r in 0..<rounds {
            let start = Date()
            let round = Array(todo[(r * perRound)..<min((r + 1) * perRound, todo.count)])
            let mineStart = min(ranks.rank * config.batch, round.count), mineEnd = min(mineStart + config.batch, round.count)
            let mine = Array(round[mineStart..<mineEnd])
            var stats: [LatentChannelStats] = []
            var images: [[UInt8]] = []     // (H, W, 3) bytes per image of mine
            if !mine.isEmpty {
                let p = try pipeline(for: side)
                let cond = try p.encode(prompts: mine.map(\.prompt), negativePrompts: mine.map(\.negativePrompt))
                let seeds = mine.map(\.seed)
                let (h, w) = try p.latentSize(height: config.height, width: config.width)
                let latents = try p.denoise(initialNoise: p.initialNoise(seeds: seeds, height: h, width: w), conditioning: cond,
                                            seeds: seeds, parameters: settings.parameters)
                for i in 0..<mine.count {
                    stats.append(LatentChannelStats(latent: latents.ptr + i * channels * h * w, channels: channels, pixels: h * w))
                }
                let decoded = try p.decode(latents: latents, count: mine.count, height: h, width: w)
                images = try (0..<mine.count).map { try byteImage(decoded, $0).pixels }
            }
            let per = pixels + 2 * channels
            var buffer = [Double](repeating: 0, count: round.count * per)
            for (i, bytes) in images.enumerated() {
                let base = (mineStart + i) * per
                for j in 0..<pixels { buffer[base + j] = Double(bytes[j]) }
                for k in 0..<channels {
                    buffer[base + pixels + k] = stats[i].mean[k]
                    buffer[base + pixels + channels + k] = stats[i].std[k]
                }
            }
            try buffer.withUnsafeMutableBufferPointer { try ranks.sum($0, "the sampled images (round \(r + 1)/\(rounds))") }
            sampled += mine.count
            guard ranks.isRoot else { continue }
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            for (i, job) in round.enumerated() {
                let base = i * per
                let image = try ByteImage(width: config.width, height: config.height, channels: 3,
                                          pixels: (0..<pixels).map { UInt8(buffer[base + $0]) })
                let mean = (0..<channels).map { buffer[base + pixels + $0] }
                let std = (0..<channels).map { buffer[base + pixels + channels + $0] }
                var text = settings.pngText(job)
                text.append((Evaluator.latentMeanKey, mean.map { "\($0)" }.joined(separator: ",")))
                text.append((Evaluator.latentStdKey, std.map { "\($0)" }.joined(separator: ",")))
                try PNG.writeBytes(image, to: (folder as NSString).appendingPathComponent(job.fileName), text: text)
            }
            log("\((folder as NSString).lastPathComponent): round \(r + 1)/\(rounds): wrote \(round.map(\.fileName).joined(separator: ", ")) "
                + String(format: "(%.1f s)", Date().timeIntervalSince(start)))
        }
    }

    // MARK: - Scoring and statistics (rank 0)

    /// Reads both sides' images of every prompt, scores them and computes the results.
    public func analyze() throws -> EvalResults {
        let jobs = config.jobs
        let k = config.imagesPerPrompt
        var scores = [String: (a: [[Double]], baseline: [[Double]])]()
        for s in scorers { scores[s.name] = ([], []) }
        var colorA = ColorStatistics(), colorB = ColorStatistics()
        var latent: LatentComparison?
        var perPrompt: [EvalResults.PromptRow] = []
        try FileManager.default.createDirectory(atPath: path("grids"), withIntermediateDirectories: true)
        for (p, prompt) in config.prompts.enumerated() {
            let promptJobs = Array(jobs[(p * k)..<((p + 1) * k)])
            func read(_ side: String) throws -> (images: [ByteImage], stats: [LatentChannelStats], files: [String]) {
                var images: [ByteImage] = [], stats: [LatentChannelStats] = [], files: [String] = []
                for job in promptJobs {
                    let rel = side + "/" + job.fileName
                    let (image, text) = try PNG.readBytesWithText(path(rel), channels: 3)
                    images.append(image)
                    stats.append(try Evaluator.latentStats(text, file: path(rel)))
                    files.append(rel)
                }
                return (images, stats, files)
            }
            let a = try read(Evaluator.sideFolders.a), b = try read(Evaluator.sideFolders.baseline)
            for (sa, sb) in zip(a.stats, b.stats) {
                if latent == nil { latent = LatentComparison(channels: sa.mean.count) }
                guard sa.mean.count == latent!.channels, sb.mean.count == latent!.channels else {
                    throw EvalError("prompt \(p): the two sides' latents have different channel counts (\(sa.mean.count), \(sb.mean.count))")
                }
                latent!.add(a: sa, baseline: sb)
            }
            a.images.forEach { colorA.add($0) }
            b.images.forEach { colorB.add($0) }
            var row = EvalResults.PromptRow(index: p, prompt: prompt, seeds: promptJobs.map(\.seed), a: a.files, baseline: b.files,
                                            grid: "grids/" + String(format: "prompt-%04d.png", p), scores: [:])
            for s in scorers {
                let sa = try score(s, a.images, prompt: prompt, files: a.files)
                let sb = try score(s, b.images, prompt: prompt, files: b.files)
                scores[s.name]!.a.append(sa); scores[s.name]!.baseline.append(sb)
                let outcomes = zip(sa, sb).map { PairedComparison.outcome($0, $1, tieTolerance: config.tieTolerance) }
                row.scores[s.name] = .init(a: sa, baseline: sb, wins: outcomes.filter { $0 == 1 }.count,
                                           ties: outcomes.filter { $0 == 0.5 }.count, losses: outcomes.filter { $0 == 0 }.count)
            }
            // Grid: one row per seed, baseline left, A right.
            try PNG.writeBytes(imageGrid(zip(b.images, a.images).flatMap { [$0, $1] }, columns: 2), to: path(row.grid),
                               text: [("hgdpo_grid", "prompt \(p): baseline | A"), ("software", "hgdpo")])
            perPrompt.append(row)
        }
        var scorerResults: [EvalResults.ScorerResult] = []
        for s in scorers {
            let w = PairedComparison.compare(a: scores[s.name]!.a, baseline: scores[s.name]!.baseline, tieTolerance: config.tieTolerance,
                                             resamples: config.bootstrapResamples, seed: config.bootstrapSeed)
            scorerResults.append(EvalResults.ScorerResult(name: s.name, descriptor: s.descriptor, result: w))
        }
        return EvalResults(config: config, scorers: scorerResults, colorA: colorA, colorBaseline: colorB,
                           latent: latent ?? LatentComparison(channels: 0), perPrompt: perPrompt)
    }

    private func score(_ scorer: any Scorer, _ images: [ByteImage], prompt: String, files: [String]) throws -> [Double] {
        let s = try scorer.score(images: images, prompt: prompt)
        guard s.count == images.count else {
            throw EvalError("scorer '\(scorer.name)' gave \(s.count) scores for \(images.count) images (\(files.joined(separator: ", ")))")
        }
        if let bad = s.firstIndex(where: { !$0.isFinite }) {
            throw EvalError("scorer '\(scorer.name)' gave \(s[bad]) for \(files[bad])")
        }
        return s
    }

    /// The `latent_mean` / `latent_std` text chunks of an image.
    static func latentStats(_ text: [String: String], file: String) throws -> LatentChannelStats {
        func values(_ key: String) throws -> [Double] {
            guard let s = text[key] else { throw EvalError("\(file): no '\(key)' text chunk (not written by hgdpo eval)") }
            let v = s.split(separator: ",").map { Double($0) }
            guard !v.isEmpty, v.allSatisfy({ $0?.isFinite == true }) else { throw EvalError("\(file): '\(key)' is not a list of numbers: \(s)") }
            return v.map { $0! }
        }
        let m = try values(latentMeanKey), s = try values(latentStdKey)
        guard m.count == s.count else { throw EvalError("\(file): latent_mean has \(m.count) channels, latent_std \(s.count)") }
        return LatentChannelStats(mean: m, std: s)
    }
}
