// An image pool (HG-DPO §3.1: N images of the target model per prompt, from which a scorer picks winner and loser).
//
// POOL/pool.json        the settings the pool was made with (refused if a rerun changes any, naming which)
// POOL/images/GGGGG/PPPPPPPP-KKK.png   image K of prompt P (G = P / 1000), with its parameters in PNG text chunks
// POOL/pool.jsonl       written when every image exists: one line per image (PoolIndex.swift)
//
// Image k of prompt p has the seed PoolRun.seed(base, p, k), a hash of (base seed, p, k) alone, and its initial latent
// comes from that seed alone (TextToImagePipeline.initialNoise). The work is cut into units — image chunks
// [c·B, (c+1)·B) of one prompt, B = --batch — and unit u is sampled by rank u mod W as one batched U-Net call per step
// (both CFG halves of the B images together). A unit's composition depends only on the settings, so 1, 2 or 4 ranks
// write the same bytes (given the same threads per rank). Resuming: an image whose PNG exists is done (PNGs are
// written atomically: a killed run leaves no half image); a unit with any image missing is sampled again whole, which
// gives the missing images the bytes an uninterrupted run would have written.
import Foundation
import IO
import Sampling
import Tensors

public struct PoolError: Error, UserInputError, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Everything that decides a pool's bytes, recorded in pool.json.
public struct PoolSettings: Sendable {
    public var sampling: SampleRunSettings
    public var negativePrompt = ""
    public var imagesPerPrompt = 20
    public var seed: UInt64 = 0
    public var mixedPrecision = "no"
    /// The prompts file and how it was read (Datasets.PromptFile).
    public var promptsFile = "", promptColumn: String?, category: String?

    public init(sampling: SampleRunSettings) { self.sampling = sampling }

    /// pool.json's "settings": every value as a string, in a fixed order; `prompts` adds the count and a digest.
    public func record(prompts: [String]) -> [(String, String)] {
        let p = sampling.parameters
        return [
            ("model", sampling.model), ("lora", sampling.lora ?? "none"),
            ("lora_scale", p.loraScale.map { String($0) } ?? "none"), ("lan", String(p.lan)),
            ("steps", String(p.steps)), ("guidance", String(p.guidanceScale)), ("scheduler", sampling.scheduler),
            ("height", String(p.height)), ("width", String(p.width)), ("negative_prompt", negativePrompt),
            ("prompt_weighting", String(sampling.weighting)), ("clip_skip", String(sampling.clipSkip)),
            ("images_per_prompt", String(imagesPerPrompt)), ("seed", String(seed)), ("batch", String(sampling.batch)),
            ("mixed_precision", mixedPrecision), ("prompts_file", promptsFile), ("prompt_column", promptColumn ?? "none"),
            ("category", category ?? "all"),
            ("prompt_count", String(prompts.count)), ("prompts_digest", PoolSettings.digest(prompts)),
        ]
    }

    /// FNV-1a 64 of the prompts joined by newlines, as 16 hex digits.
    static func digest(_ texts: [String]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for (i, t) in texts.enumerated() {
            for b in Array((i == 0 ? "" : "\n").utf8) + Array(t.utf8) { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        }
        return String(format: "%016llx", h)
    }
}

/// One image of a pool.
public struct PoolImage: Sendable, Equatable {
    public let promptIndex: Int
    public let imageIndex: Int
    public let seed: UInt64
    /// Relative to the pool folder.
    public var path: String { PoolRun.imagePath(prompt: promptIndex, image: imageIndex) }
}

/// Progress of a rank's share of the pool.
public protocol PoolProgress: AnyObject {
    func step(_ step: Int, of steps: Int)
    /// After each unit: images written so far by this rank and how many it has to write in all.
    func wrote(_ images: [PoolImage], done: Int, of total: Int)
}

public final class PoolRun {
    public static let settingsFile = "pool.json"
    public let pipeline: TextToImagePipeline
    public let settings: PoolSettings
    public let prompts: [String]
    public let folder: String
    /// Seconds spent in the text encoder, the sampler loop and the decoder by `sample`.
    public private(set) var timings = (encode: 0.0, denoise: 0.0, decode: 0.0)

    public init(pipeline: TextToImagePipeline, settings: PoolSettings, prompts: [String], folder: String) throws {
        guard settings.imagesPerPrompt >= 1, settings.sampling.batch >= 1 else {
            throw PoolError("images per prompt and the batch must be at least 1")
        }
        self.pipeline = pipeline; self.settings = settings; self.prompts = prompts; self.folder = folder
    }

    public func path(_ relative: String) -> String { (folder as NSString).appendingPathComponent(relative) }

    // MARK: - Plan

    /// The seed of image `image` of prompt `prompt`: a Philox hash of (base, prompt, image) cut to 53 bits, so JSON
    /// readers that hold numbers as doubles read it exactly. `hgdpo sample --seed S` with the same settings remakes it.
    public static func seed(base: UInt64, prompt: Int, image: Int) -> UInt64 {
        let w = Philox4x32(seed: base).block(SIMD4(UInt32(truncatingIfNeeded: prompt), UInt32(truncatingIfNeeded: prompt >> 32),
                                                    UInt32(truncatingIfNeeded: image), 0x706F_6F6C))   // "pool"
        return (UInt64(w.x) | UInt64(w.y) << 32) & ((1 << 53) - 1)
    }

    public static func imagePath(prompt: Int, image: Int) -> String {
        String(format: "images/%05d/%08d-%03d.png", prompt / 1000, prompt, image)
    }

    /// Units (prompt, images) in prompt-major order.
    public var units: [(prompt: Int, images: Range<Int>)] {
        let n = settings.imagesPerPrompt, b = settings.sampling.batch
        return prompts.indices.flatMap { p in stride(from: 0, to: n, by: b).map { (p, $0..<min($0 + b, n)) } }
    }

    public func image(_ p: Int, _ k: Int) -> PoolImage {
        PoolImage(promptIndex: p, imageIndex: k, seed: PoolRun.seed(base: settings.seed, prompt: p, image: k))
    }

    public var allImages: [PoolImage] {
        prompts.indices.flatMap { p in (0..<settings.imagesPerPrompt).map { image(p, $0) } }
    }

    // MARK: - Settings

    /// Refuses a folder made with other settings (naming every setting that differs) or holding something else;
    /// writes pool.json for a new pool. Call on one rank before any sampling.
    public func prepareFolder() throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: folder, isDirectory: &isDir) && !isDir.boolValue {
            throw PoolError("\(folder) exists and is not a folder")
        }
        let record = settings.record(prompts: prompts)
        let file = path(PoolRun.settingsFile)
        if fm.fileExists(atPath: file) {
            let old = try PoolRun.readSettings(folder: folder)
            var changed: [String] = []
            for (key, value) in record where old[key] != value {
                changed.append("\(key): \(old[key].map { "'\($0)'" } ?? "not recorded") → '\(value)'")
            }
            guard changed.isEmpty else {
                throw PoolError("\(file): this pool was made with other settings; \(changed.joined(separator: "; ")). "
                                + "Nothing is overwritten: rerun with the pool's settings or choose another --out")
            }
            return
        }
        if fm.fileExists(atPath: folder), let contents = try? fm.contentsOfDirectory(atPath: folder),
           contents.contains(where: { !RunFolderLock.isLockFile($0) }) {
            throw PoolError("\(folder) is not empty and has no \(PoolRun.settingsFile): not a pool; choose another --out")
        }
        try fm.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let json = JSONValue.object([("format", .string("hgdpo-pool")), ("version", .int(1)),
                                     ("settings", .object(record.map { ($0.0, .string($0.1)) }))])
        try Foundation.Data((json.pretty() + "\n").utf8).write(to: URL(fileURLWithPath: file), options: .atomic)
    }

    /// pool.json's settings as key → value.
    public static func readSettings(folder: String) throws -> [String: String] {
        let file = (folder as NSString).appendingPathComponent(settingsFile)
        guard let data = FileManager.default.contents(atPath: file) else { throw PoolError("\(file): cannot read (is \(folder) a pool?)") }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let settings = object["settings"] as? [String: Any] else {
            throw PoolError("\(file): not a pool settings file (expected {\"settings\": {…}})")
        }
        var out: [String: String] = [:]
        for (k, v) in settings {
            guard let s = v as? String else { throw PoolError("\(file): settings key '\(k)' is not a string") }
            out[k] = s
        }
        return out
    }

    // MARK: - Sampling

    /// The units of `rank` (u mod worldSize) with at least one image missing.
    public func pendingUnits(rank: Int, worldSize: Int) -> [(prompt: Int, images: Range<Int>)] {
        units.enumerated().filter { $0.offset % worldSize == rank }.map(\.element).filter { u in
            u.images.contains { !FileManager.default.fileExists(atPath: path(PoolRun.imagePath(prompt: u.prompt, image: $0))) }
        }
    }

    /// Samples this rank's pending units, writing each unit's missing images (atomically) when it finishes.
    /// Returns the number of images written.
    @discardableResult
    public func sample(rank: Int = 0, worldSize: Int = 1, progress: PoolProgress? = nil) throws -> Int {
        let todo = pendingUnits(rank: rank, worldSize: worldSize)
        let total = todo.reduce(0) { $0 + $1.images.count }
        let p = settings.sampling.parameters
        let (h, w) = try pipeline.latentSize(height: p.height, width: p.width)
        var cached: (prompt: Int, conditioning: Conditioning)?
        var done = 0, written = 0
        for unit in todo {
            let start = Date()
            if cached?.prompt != unit.prompt {
                let prompt = prompts[unit.prompt]
                cached = (unit.prompt, try pipeline.encode(prompts: [prompt], negativePrompts: [settings.negativePrompt],
                                                           weighting: settings.sampling.weighting, clipSkip: settings.sampling.clipSkip))
            }
            let cond = cached!.conditioning.rows(Array(repeating: 0, count: unit.images.count))
            let images = unit.images.map { image(unit.prompt, $0) }
            let seeds = images.map(\.seed)
            let encoded = Date()
            let latents = try pipeline.denoise(initialNoise: pipeline.initialNoise(seeds: seeds, height: h, width: w),
                                               conditioning: cond, seeds: seeds, parameters: p) { progress?.step($0, of: $1) }
            let denoised = Date()
            let pixels = try pipeline.decode(latents: latents, count: images.count, height: h, width: w)
            let decoded = Date()
            var wrote: [PoolImage] = []
            for (i, im) in images.enumerated() {
                let file = path(im.path)
                if FileManager.default.fileExists(atPath: file) { continue }
                try FileManager.default.createDirectory(atPath: (file as NSString).deletingLastPathComponent,
                                                        withIntermediateDirectories: true)
                try PNG.writeBytes(byteImage(pixels, i), to: file, text: pngText(im))
                wrote.append(im)
            }
            timings.encode += encoded.timeIntervalSince(start)
            timings.denoise += denoised.timeIntervalSince(encoded)
            timings.decode += decoded.timeIntervalSince(denoised)
            done += images.count
            written += wrote.count
            progress?.wrote(wrote, done: done, of: total)
        }
        return written
    }

    /// `hgdpo sample`'s text chunks (prompt, seed, steps, guidance, scheduler, size, model, lora, …) plus the image's
    /// place in the pool and the precision.
    public func pngText(_ im: PoolImage) -> [(key: String, value: String)] {
        let job = SampleJob(index: im.promptIndex * settings.imagesPerPrompt + im.imageIndex, prompt: prompts[im.promptIndex],
                            negativePrompt: settings.negativePrompt, seed: im.seed)
        return [("prompt_index", String(im.promptIndex)), ("image_index", String(im.imageIndex)),
                ("mixed_precision", settings.mixedPrecision)] + settings.sampling.pngText(job)
    }

    // MARK: - Index

    /// Writes pool.jsonl once every image exists (call on one rank after all ranks finished).
    public func writeIndex() throws {
        let images = allImages
        if let missing = images.first(where: { !FileManager.default.fileExists(atPath: path($0.path)) }) {
            throw PoolError("\(path(missing.path)) is missing after sampling; rerun the command to make it")
        }
        try PoolIndex.write(images.map { im in
            PoolEntry(promptIndex: im.promptIndex, prompt: prompts[im.promptIndex], category: settings.category,
                      imageIndex: im.imageIndex, seed: im.seed, path: im.path)
        }, folder: folder)
    }
}
