// A sampling run into a folder: which images (prompt, negative prompt, seed) it makes, their stable file names, the
// parameters written into each PNG's text chunks, what to do with images already there, and the grid. `hgdpo sample`
// runs one; the trainer's validation images (Training/Validation.swift) use its names, text chunks and grid.
//
// Files: NNNNNN-seedS.png (N = the image's index in the run: prompt-major, then image of the prompt), grid.png.
// An existing NNNNNN-seedS.png whose parameters (text chunks) are this run's is kept and skipped, so an interrupted
// run continues; one with other parameters stops the run before anything is sampled (nothing is overwritten).
// grid.png is rewritten only if hgdpo wrote it (its `hgdpo_grid` text chunk).
import Foundation
import IO
import Tensors

/// One image of a run.
public struct SampleJob: Sendable, Equatable {
    public let index: Int
    public let prompt: String
    public let negativePrompt: String
    public let seed: UInt64
    public var fileName: String { String(format: "%06d", index) + "-seed\(seed).png" }

    public init(index: Int, prompt: String, negativePrompt: String, seed: UInt64) {
        self.index = index; self.prompt = prompt; self.negativePrompt = negativePrompt; self.seed = seed
    }

    /// Prompt-major jobs: image j of prompt p has index p·perPrompt + j and seed firstSeed + index (wrapping).
    public static func plan(prompts: [String], negativePrompt: String, imagesPerPrompt: Int, firstSeed: UInt64) -> [SampleJob] {
        var jobs: [SampleJob] = []
        for (p, prompt) in prompts.enumerated() {
            for j in 0..<imagesPerPrompt {
                let k = p * imagesPerPrompt + j
                jobs.append(SampleJob(index: k, prompt: prompt, negativePrompt: negativePrompt, seed: firstSeed &+ UInt64(k)))
            }
        }
        return jobs
    }
}

/// What is recorded with every image, besides its prompt and seed.
public struct SampleRunSettings: Sendable {
    public var parameters: SamplingParameters
    public var scheduler: String
    public var model: String
    public var lora: String?
    public var batch: Int
    public var weighting = true
    public var clipSkip = 0
    public init(parameters: SamplingParameters, scheduler: String, model: String, lora: String?, batch: Int,
                weighting: Bool = true, clipSkip: Int = 0) {
        self.parameters = parameters; self.scheduler = scheduler; self.model = model; self.lora = lora; self.batch = batch
        self.weighting = weighting; self.clipSkip = clipSkip
    }

    /// PNG text chunks of an image: one key per parameter, plus `parameters` in the web UI's one-block form that
    /// image viewers and galleries show.
    public func pngText(_ job: SampleJob) -> [(key: String, value: String)] {
        let p = parameters
        let scale = p.loraScale.map { formatNumber($0) } ?? "none"
        var text: [(key: String, value: String)] = [
            ("prompt", job.prompt), ("negative_prompt", job.negativePrompt), ("seed", String(job.seed)),
            ("steps", String(p.steps)), ("guidance", formatNumber(p.guidanceScale)), ("scheduler", scheduler),
            ("size", "\(p.width)x\(p.height)"), ("model", model), ("lora", lora ?? "none"), ("lora_scale", scale),
            ("lan", p.lan ? "true" : "false"), ("prompt_weighting", weighting ? "true" : "false"),
            ("clip_skip", String(clipSkip)),
        ]
        var summary = job.prompt + "\n"
        if !job.negativePrompt.isEmpty { summary += "Negative prompt: \(job.negativePrompt)\n" }
        summary += "Steps: \(p.steps), Sampler: \(scheduler), CFG scale: \(formatNumber(p.guidanceScale)), Seed: \(job.seed), "
            + "Size: \(p.width)x\(p.height), Model: \((model as NSString).lastPathComponent)"
        if let lora { summary += ", LoRA: \((lora as NSString).lastPathComponent):\(scale)" }
        if p.lan { summary += ", LAN: true" }
        text.append(("parameters", summary))
        text.append(("software", "hgdpo"))
        return text
    }
}

func formatNumber(_ x: Float) -> String { x == x.rounded() && abs(x) < 1e7 ? String(Int(x)) : String(x) }

public struct SampleRunError: Error, UserInputError, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// Progress of a run: after each sampler step of a batch, and when a batch's images are written.
public protocol SamplingProgress: AnyObject {
    func step(_ step: Int, of steps: Int, batch: Int, of batches: Int)
    func wrote(_ jobs: [SampleJob], batch: Int, of batches: Int, seconds: Double)
}

public final class SampleRun {
    public let pipeline: TextToImagePipeline
    public let settings: SampleRunSettings
    public let folder: String
    public let jobs: [SampleJob]
    /// Images already in the folder with this run's parameters (skipped), and the ones to make.
    public private(set) var existing: [SampleJob] = []
    public private(set) var todo: [SampleJob] = []
    /// Images in the grid (the first ones of the run).
    public var gridLimit = 64
    /// Seconds spent by `run` in the text encoder, the sampler loop (all U-Net calls) and the VAE decoder.
    public private(set) var timings = (encode: 0.0, denoise: 0.0, decode: 0.0)

    public init(pipeline: TextToImagePipeline, settings: SampleRunSettings, folder: String, jobs: [SampleJob]) throws {
        guard !jobs.isEmpty else { throw SampleRunError(message: "nothing to sample: no prompts") }
        guard settings.batch >= 1 else { throw SampleRunError(message: "the batch size must be at least 1") }
        self.pipeline = pipeline; self.settings = settings; self.folder = folder; self.jobs = jobs
        (existing, todo) = try SampleRun.inspect(folder: folder, settings: settings, jobs: jobs)
    }

    public func path(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }

    /// Sorts the jobs into existing (same parameters: skipped) and to do; refuses a folder holding one of this run's
    /// file names with other parameters, or a grid.png hgdpo did not write. `hgdpo eval` uses it for its image folders.
    public static func inspect(folder: String, settings: SampleRunSettings,
                               jobs: [SampleJob]) throws -> (existing: [SampleJob], todo: [SampleJob]) {
        func path(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }
        var existing: [SampleJob] = [], todo: [SampleJob] = []
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: folder, isDirectory: &isDir) && !isDir.boolValue {
            throw SampleRunError(message: "\(folder) exists and is not a folder")
        }
        for job in jobs {
            let file = path(job.fileName)
            guard fm.fileExists(atPath: file) else { todo.append(job); continue }
            let text: [String: String]
            do { text = try PNG.readBytesWithText(file).1 } catch {
                throw SampleRunError(message: "\(file) exists and is not a readable PNG (\(error)); it is left as it is: "
                                     + "remove it or choose another --out")
            }
            for (key, value) in settings.pngText(job) where key != "software" && text[key] != value {
                throw SampleRunError(message: "\(file) exists and was made with another \(key) (\(text[key].map { "'\($0)'" } ?? "none") "
                                     + "instead of '\(value)'); nothing is overwritten: choose another --out or remove the old images")
            }
            existing.append(job)
        }
        let grid = path("grid.png")
        if fm.fileExists(atPath: grid) {
            let text = (try? PNG.readBytesWithText(grid).1) ?? [:]
            guard text["hgdpo_grid"] != nil else {
                throw SampleRunError(message: "\(grid) exists and was not written by hgdpo sample; it is not overwritten: "
                                     + "choose another --out or remove it")
            }
        }
        return (existing, todo)
    }

    /// Samples every image to do, batch by batch, writing each batch's PNGs (atomically) as it finishes; then the grid.
    public func run(progress: SamplingProgress? = nil) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let p = settings.parameters
        _ = try pipeline.latentSize(height: p.height, width: p.width)     // a bad size fails before any work
        let batches = stride(from: 0, to: todo.count, by: settings.batch).map { Array(todo[$0..<min($0 + settings.batch, todo.count)]) }
        for (b, batch) in batches.enumerated() {
            let start = Date()
            let cond = try pipeline.encode(prompts: batch.map(\.prompt), negativePrompts: batch.map(\.negativePrompt),
                                           weighting: settings.weighting, clipSkip: settings.clipSkip)
            let encoded = Date()
            let seeds = batch.map(\.seed)
            let (h, w) = try pipeline.latentSize(height: p.height, width: p.width)
            let latents = try pipeline.denoise(initialNoise: pipeline.initialNoise(seeds: seeds, height: h, width: w),
                                               conditioning: cond, seeds: seeds, parameters: p) { k, n in
                progress?.step(k, of: n, batch: b + 1, of: batches.count)
            }
            let denoised = Date()
            let images = try pipeline.decode(latents: latents, count: batch.count, height: h, width: w)
            let decoded = Date()
            for (i, job) in batch.enumerated() {
                try PNG.writeBytes(byteImage(images, i), to: path(job.fileName), text: settings.pngText(job))
            }
            timings.encode += encoded.timeIntervalSince(start)
            timings.denoise += denoised.timeIntervalSince(encoded)
            timings.decode += decoded.timeIntervalSince(denoised)
            progress?.wrote(batch, batch: b + 1, of: batches.count, seconds: Date().timeIntervalSince(start))
        }
        try writeGrid()
    }

    /// grid.png: the run's first `gridLimit` images in index order, read back from the folder.
    public func writeGrid() throws {
        let shown = Array(jobs.prefix(gridLimit))
        let images = try shown.map { try PNG.readBytes(path($0.fileName)) }
        let p = settings.parameters
        try PNG.writeBytes(imageGrid(images), to: path("grid.png"),
                           text: [("hgdpo_grid", "images \(shown.first!.fileName) to \(shown.last!.fileName)"),
                                  ("model", settings.model), ("lora", settings.lora ?? "none"),
                                  ("lora_scale", p.loraScale.map { formatNumber($0) } ?? "none"), ("software", "hgdpo")])
    }
}
