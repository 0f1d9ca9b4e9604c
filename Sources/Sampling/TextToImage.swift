// Text to image: diffusers' StableDiffusionPipeline on the CPU, with a LoRA at a chosen scale and HG-DPO's latent
// adaptive normalization (LAN, paper Eq. 7).
//
//   cond, uncond = encode(prompts), encode(negative prompts or "")              (N, S, D) each
//   x_T = z · init_noise_sigma,  z ~ N(0, 1) from the image's seed (or given)     (N, 4, H/8, W/8)
//   for t in scheduler.timesteps:
//       ε_u, ε_c = unet(scale_model_input([x, x], t), t, [uncond, cond])      one U-Net call on 2N latents
//       ε = ε_u + g·(ε_c − ε_u)                                                 (no CFG when g ≤ 1: one call on N)
//       x = scheduler.step(ε, t, x)
//   images = clamp(vae.decode(x_0 / scaling_factor) / 2 + 0.5, 0, 1)
// A pixel-space pipeline (no vae/, VAE/LatentSpace.swift) has latents (N, 3, H, W) and images = clamp(x_0 / 2 + 0.5, 0, 1).
//
// The U-Net's LoRA runs at `loraScale` (nil = adapters off, the base model; the reference is the same weights).
// LAN (paper §3.2, Eq. 7): h_tgt^{t−1} = sampler(ĥ_tgt^t, p, t, ε_θ) and h_sft^{t−1} = sampler(h_sft^t, p, t, ε_sft)
// run side by side from the same initial noise — ε_θ the LoRA model, ε_sft the same U-Net with the LoRA off, each
// trajectory with its own scheduler state (the multistep history) — and after every step, including the last,
//   ĥ_tgt^{t−1} = (h_tgt^{t−1} − μ(h_tgt^{t−1})) / σ(h_tgt^{t−1}) · σ(h_sft^{t−1}) + μ(h_sft^{t−1}),
// μ and σ per image and channel over the latent's H·W positions; ĥ_tgt is the LoRA trajectory's next input and the
// base trajectory continues unchanged. σ is the population standard deviation (÷ H·W); only the ratio
// σ_sft/σ_tgt enters, so the unbiased estimator would give the same result. A channel with σ_tgt = 0 is only shifted.
// LAN doubles the U-Net work (two trajectories).
//
// Random numbers: the initial latent of an image with seed s is `CounterRNG(seed: s, stream: latentStream)`'s normals
// 0..<C·h·w (Tensors/Philox.swift), so an image depends only on its seed, not on the batch it was sampled in;
// schedulers that add noise at a step (DDPM, DDIM with eta > 0, SDE DPM-Solvers) take it from the same seed's
// substream(step). diffusers draws from torch's generator instead: for parity, give the initial latents
// (`denoise(initialNoise:…)`), as diffusers' `latents=` argument.
// Ref: diffusers pipelines/stable_diffusion/pipeline_stable_diffusion.py (__call__, encode_prompt, prepare_latents),
// image_processor.py (VaeImageProcessor.postprocess / denormalize).
import Foundation
import IO
import NN
import Schedulers
import Tensors
import TextEncoder
import UNet
import VAE

public struct SamplingError: Error, UserInputError, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// How to build a fresh scheduler (one per trajectory: multistep schedulers keep state).
public struct SchedulerRecipe: @unchecked Sendable {
    public let kind: SchedulerKind
    public let configJSON: Data
    public let source: String
    public let overrides: [String: Any]
    /// A short name for the PNG parameters, e.g. "dpmsolver++" or the class name.
    public let name: String

    public init(kind: SchedulerKind, configJSON: Data, source: String, overrides: [String: Any] = [:], name: String? = nil) {
        self.kind = kind; self.configJSON = configJSON; self.source = source; self.overrides = overrides
        self.name = name ?? kind.rawValue
    }

    /// The --scheduler names, as `hgdpo probe scheduler` takes them: the class and the config keys forced on it.
    public static let named: [(name: String, kind: SchedulerKind, overrides: [String: Any])] = [
        ("ddpm", .ddpm, [:]), ("ddim", .ddim, [:]), ("euler", .euler, [:]),
        ("dpmsolver++", .dpmSolverMultistep, ["algorithm_type": "dpmsolver++"]),
        ("dpmsolver", .dpmSolverMultistep, ["algorithm_type": "dpmsolver"]),
        ("sde-dpmsolver++", .dpmSolverMultistep, ["algorithm_type": "sde-dpmsolver++"]),
    ]

    /// The scheduler of a model folder (`scheduler/scheduler_config.json`), by name (nil: the config's own class).
    public static func load(_ folder: ModelFolder, name: String?) throws -> SchedulerRecipe {
        let component = try folder.scheduler()
        let path = component.configPath
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SamplingError("\(path): missing (scheduler config)")
        }
        if let name {
            guard let choice = named.first(where: { $0.name == name }) else {
                throw SamplingError("unknown scheduler '\(name)': expected one of \(named.map(\.name).joined(separator: ", "))")
            }
            return SchedulerRecipe(kind: choice.kind, configJSON: data, source: path, overrides: choice.overrides, name: name)
        }
        let cls = try component.className() ?? "(no _class_name)"
        guard let kind = SchedulerKind(rawValue: cls) else {
            throw SamplingError("\(path): _class_name \(cls) is not a scheduler hgdpo implements; choose one with --scheduler ("
                                + named.map(\.name).joined(separator: ", ") + ")")
        }
        return SchedulerRecipe(kind: kind, configJSON: data, source: path, name: cls)
    }

    public func make() throws -> any Scheduler {
        try kind.make(configJSON: configJSON, source: source, overrides: overrides)
    }
}

/// What a sampling run does, apart from the prompts and seeds.
public struct SamplingParameters: Sendable, Equatable {
    public var steps = 50
    /// Classifier-free guidance scale (paper: 5); ≤ 1 turns guidance off (no unconditional half), as diffusers.
    public var guidanceScale: Float = 5
    public var height = 512, width = 512
    /// The LoRA's scale (paper: 0.5); nil runs the base model (adapters off).
    public var loraScale: Float?
    /// Latent adaptive normalization (paper Eq. 7) against the base model's trajectory; needs `loraScale`.
    public var lan = false
    public init(steps: Int = 50, guidanceScale: Float = 5, height: Int = 512, width: Int = 512, loraScale: Float? = nil,
                lan: Bool = false) {
        self.steps = steps; self.guidanceScale = guidanceScale; self.height = height; self.width = width
        self.loraScale = loraScale; self.lan = lan
    }
    public var doesGuidance: Bool { guidanceScale > 1 }
}

/// Encoded prompts for a batch: cond and uncond (N, S, D) each.
public struct Conditioning: @unchecked Sendable {
    public let count: Int, length: Int, width: Int
    public let cond: Buffer, uncond: Buffer
    public init(count: Int, length: Int, width: Int, cond: Buffer, uncond: Buffer) {
        precondition(cond.count == count * length * width && uncond.count == cond.count, "Conditioning: sizes do not match")
        self.count = count; self.length = length; self.width = width; self.cond = cond; self.uncond = uncond
    }

    /// The prompts at `indices` (in that order) as a batch of their own.
    public func rows(_ indices: [Int]) -> Conditioning {
        let per = length * width
        let c = Buffer(uninitialized: indices.count * per), u = Buffer(uninitialized: indices.count * per)
        for (i, k) in indices.enumerated() {
            precondition(k >= 0 && k < count, "Conditioning.rows: index \(k) of \(count)")
            (c.ptr + i * per).update(from: cond.ptr + k * per, count: per)
            (u.ptr + i * per).update(from: uncond.ptr + k * per, count: per)
        }
        return Conditioning(count: indices.count, length: length, width: width, cond: c, uncond: u)
    }
}

public final class TextToImagePipeline: @unchecked Sendable {
    public let unet: UNetModel
    /// The VAE's latent space, or pixel space.
    public let latentSpace: LatentSpace
    public let scheduler: SchedulerRecipe
    /// nil when the prompts are encoded elsewhere (e.g. once, before training).
    public let promptEncoder: PromptEncoder?
    /// Tiled VAE decode (diffusers' enable_tiling) for large images; nil decodes in one piece.
    public var vaeTiling: VAETiling?

    /// Stream of the initial latents' normals ("latn") and of the schedulers' step noise ("stpn").
    public static let latentStream: UInt64 = 0x6C61_746E
    public static let stepNoiseStream: UInt64 = 0x7374_706E

    public convenience init(unet: UNetModel, vae: AutoencoderKL, scheduler: SchedulerRecipe, promptEncoder: PromptEncoder?) throws {
        try self.init(unet: unet, latentSpace: .vae(vae), scheduler: scheduler, promptEncoder: promptEncoder)
    }

    public init(unet: UNetModel, latentSpace: LatentSpace, scheduler: SchedulerRecipe, promptEncoder: PromptEncoder?) throws {
        guard latentSpace.latentChannels == unet.spec.inChannels, unet.spec.outChannels == unet.spec.inChannels else {
            throw SamplingError((latentSpace.vae == nil ? "pixel-space latents have 3 channels (RGB)" : "the VAE's latent_channels "
                                 + "(\(latentSpace.latentChannels))") + " and the U-Net's in/out channels "
                                + "(\(unet.spec.inChannels)/\(unet.spec.outChannels)) must agree")
        }
        if let p = promptEncoder, p.model.width != unet.spec.crossAttentionDim {
            throw SamplingError("the text encoder's hidden size \(p.model.width) differs from the U-Net's cross_attention_dim "
                                + "\(unet.spec.crossAttentionDim)")
        }
        self.unet = unet; self.latentSpace = latentSpace; self.scheduler = scheduler; self.promptEncoder = promptEncoder
    }

    /// A pipeline folder's U-Net (with the LoRA of `lora`, if any), VAE decoder, text encoder and tokenizer, and
    /// scheduler (`schedulerName` as --scheduler, nil: the folder's class).
    public static func load(modelFolder path: String, variant: String? = nil, lora: LoRAWeights? = nil, loraSource: String = "",
                            precision: MixedPrecision = .no, schedulerName: String? = nil) throws -> TextToImagePipeline {
        let folder = try ModelFolder(path: path)
        try checkPipelineFolder(folder)
        let unet = try UNetModel.load(folder: folder.unet(), variant: variant, lora: lora.map { ($0.rank, $0.alpha) },
                                      precision: precision)
        if let lora { try unet.lora!.assign(lora, source: loraSource) }
        return try TextToImagePipeline(unet: unet, latentSpace: LatentSpace.load(folder, variant: variant, parts: .decoder),
                                       scheduler: SchedulerRecipe.load(folder, name: schedulerName),
                                       promptEncoder: PromptEncoder.load(folder, variant: variant))
    }

    /// Refuses a folder that lacks what text-to-image needs (a U-Net-only folder, as the trainer can use). vae/ may be
    /// absent when model_index.json does not list it (pixel space).
    public static func checkPipelineFolder(_ folder: ModelFolder) throws {
        guard folder.isPipeline else {
            throw SamplingError("\(folder.path): sampling needs a diffusers pipeline folder (model_index.json with unet, vae, "
                                + "text_encoder, tokenizer, scheduler), this is a single component folder")
        }
        var missing: [String] = []
        for name in ["unet", "text_encoder", "tokenizer", "scheduler"] + (LatentSpace.isPixelSpace(folder) ? [] : ["vae"]) {
            let sub = (folder.path as NSString).appendingPathComponent(name)
            if !FileManager.default.fileExists(atPath: sub) { missing.append(name + "/") }
        }
        guard missing.isEmpty else {
            throw SamplingError("\(folder.path): sampling needs the pipeline's unet/, vae/ (unless model_index.json lists no vae: "
                                + "pixel space), text_encoder/, tokenizer/ and scheduler/; missing: \(missing.joined(separator: ", "))")
        }
    }

    // MARK: - Prompts

    /// Encodes prompts and their negative prompts ("" when none: diffusers' unconditional input is the encoding of "").
    public func encode(prompts: [String], negativePrompts: [String]? = nil, weighting: Bool = true, clipSkip: Int = 0) throws -> Conditioning {
        guard let encoder = promptEncoder else { throw SamplingError("this pipeline has no text encoder") }
        let negatives = negativePrompts ?? Array(repeating: "", count: prompts.count)
        guard negatives.count == prompts.count else {
            throw SamplingError("\(prompts.count) prompts but \(negatives.count) negative prompts")
        }
        let c = try encoder.encode(prompts: prompts, weighting: weighting, clipSkip: clipSkip)
        let u = try encoder.encode(prompts: negatives, weighting: weighting, clipSkip: clipSkip)
        return Conditioning(count: prompts.count, length: c.length, width: c.width, cond: c.hiddenStates, uncond: u.hiddenStates)
    }

    // MARK: - Latents

    public var latentChannels: Int { unet.spec.inChannels }

    /// The latent size of an image size; both must be positive multiples of the VAE's factor (8; 1 in pixel space)
    /// and fit the U-Net.
    public func latentSize(height: Int, width: Int) throws -> (h: Int, w: Int) {
        let f = latentSpace.downsamplingFactor
        guard height > 0, width > 0, height % f == 0, width % f == 0 else {
            throw SamplingError("image size \(width)x\(height): width and height must be positive multiples of \(f)")
        }
        try unet.spec.checkAnyLatentSize(height: height / f, width: width / f)
        return (height / f, width / f)
    }

    /// N(0, 1) initial latents (N, C, h, w), image i from `seeds[i]` alone (see the header).
    public func initialNoise(seeds: [UInt64], height h: Int, width w: Int) -> Buffer {
        let per = latentChannels * h * w
        let out = Buffer(uninitialized: seeds.count * per)
        for (i, s) in seeds.enumerated() {
            CounterRNG(seed: s, stream: TextToImagePipeline.latentStream)
                .fillNormal(UnsafeMutableBufferPointer(start: out.ptr + i * per, count: per))
        }
        return out
    }

    // MARK: - Denoising

    /// One trajectory: its scheduler (own state) and its current latents (N, C, h, w).
    private final class Trajectory {
        let scheduler: any Scheduler
        let x: Buffer
        init(_ s: any Scheduler, _ x: Buffer) { scheduler = s; self.x = x }
    }

    /// The scheduler loop from `initialNoise` (N(0, 1), N × C × h × w; scaled by init_noise_sigma here, as diffusers
    /// does with given `latents`) to the final latents x_0 (N, C, h, w). `seeds` (one per image) feed the step noise of
    /// the schedulers that need it. `progress(step, steps)` is called after each step.
    public func denoise(initialNoise: Buffer, conditioning cond: Conditioning, seeds: [UInt64], parameters p: SamplingParameters,
                        progress: (Int, Int) -> Void = { _, _ in }) throws -> Buffer {
        let n = cond.count
        let (h, w) = try latentSize(height: p.height, width: p.width)
        let per = latentChannels * h * w
        guard initialNoise.count == n * per else {
            throw SamplingError("initial latents have \(initialNoise.count) values, expected \(n)x\(latentChannels)x\(h)x\(w)")
        }
        guard seeds.count == n else { throw SamplingError("\(seeds.count) seeds for \(n) images") }
        guard p.steps >= 1 else { throw SamplingError("the number of steps must be at least 1, is \(p.steps)") }
        guard cond.width == unet.spec.crossAttentionDim else {
            throw SamplingError("prompt embeddings are \(cond.width) wide, the U-Net's cross_attention_dim is \(unet.spec.crossAttentionDim)")
        }
        if p.loraScale != nil && unet.lora == nil { throw SamplingError("a LoRA scale was given but the U-Net has no LoRA") }
        if p.lan && p.loraScale == nil { throw SamplingError("LAN matches the LoRA model's latents to the base model's: it needs a LoRA") }

        func start() throws -> Trajectory {
            let s = try scheduler.make()
            try s.setTimesteps(p.steps)
            let x = Buffer(uninitialized: n * per)
            let sigma = s.initNoiseSigma, src = initialNoise.ptr, dst = x.ptr
            for i in 0..<(n * per) { dst[i] = src[i] * sigma }
            return Trajectory(s, x)
        }
        let target = try start()
        let base = p.lan ? try start() : nil
        let timesteps = target.scheduler.timesteps
        // Context for the batched U-Net call: [uncond; cond] (2N, S, D) with guidance, cond (N, S, D) without.
        let sd = cond.length * cond.width
        let context: Buffer
        if p.doesGuidance {
            context = Buffer(uninitialized: 2 * n * sd)
            context.ptr.update(from: cond.uncond.ptr, count: n * sd)
            (context.ptr + n * sd).update(from: cond.cond.ptr, count: n * sd)
        } else {
            context = cond.cond
        }
        let copies = p.doesGuidance ? 2 : 1
        let modelInput = Buffer(uninitialized: copies * n * per)
        let eps = Buffer(uninitialized: n * per)
        let noise: Buffer? = timesteps.contains(where: { target.scheduler.needsNoise(at: $0) }) ? Buffer(uninitialized: n * per) : nil

        /// ε at t for a trajectory: the guided U-Net output, into `eps`.
        func predict(_ traj: Trajectory, _ t: Float, loraScale: Float?) throws {
            try traj.scheduler.scaleModelInput(traj.x.ptr, timestep: t, count: n * per, into: modelInput.ptr)
            if copies == 2 { (modelInput.ptr + n * per).update(from: modelInput.ptr, count: n * per) }
            let out = try unet.forward(sample: modelInput, timesteps: Array(repeating: t, count: copies * n), context: context,
                                       batch: copies * n, height: h, width: w, contextLength: cond.length, loraScale: loraScale)
            if copies == 2 {
                // noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
                let u = out.ptr, c = out.ptr + n * per, e = eps.ptr, g = p.guidanceScale
                for i in 0..<(n * per) { e[i] = u[i] + g * (c[i] - u[i]) }
            } else {
                eps.ptr.update(from: out.ptr, count: n * per)
            }
        }
        func step(_ traj: Trajectory, _ t: Float) throws {
            try traj.scheduler.step(modelOutput: eps.ptr, timestep: t, sample: traj.x.ptr,
                                    noise: traj.scheduler.needsNoise(at: t) ? noise?.ptr : nil, count: n * per, into: traj.x.ptr)
        }
        for (k, t) in timesteps.enumerated() {
            if let noise, target.scheduler.needsNoise(at: t) {
                for (i, s) in seeds.enumerated() {
                    CounterRNG(seed: s, stream: TextToImagePipeline.stepNoiseStream).substream(UInt64(k))
                        .fillNormal(UnsafeMutableBufferPointer(start: noise.ptr + i * per, count: per))
                }
            }
            try predict(target, t, loraScale: p.loraScale)
            try step(target, t)
            if let base {
                try predict(base, t, loraScale: nil)
                try step(base, t)
                latentAdaptiveNormalization(target.x.ptr, reference: base.x.ptr, batch: n, channels: latentChannels, pixels: h * w)
            }
            progress(k + 1, timesteps.count)
        }
        return target.x
    }

    // MARK: - Decoding

    /// Final latents (N, C, h, w) → images (N, 3, H, W) in [0, 1]: vae.decode(latents / scaling_factor) (in pixel
    /// space the latents), then (x / 2 + 0.5) clamped, as VaeImageProcessor.postprocess (do_denormalize).
    public func decode(latents: Buffer, count n: Int, height h: Int, width w: Int) throws -> FeatureMap {
        let images = try latentSpace.decode(FeatureMap(latents, batch: n, channels: latentChannels, height: h, width: w), tiling: vaeTiling)
        let q = images.ptr
        for i in 0..<images.count { q[i] = min(max(q[i] / 2 + 0.5, 0), 1) }
        return images
    }

    /// Prompts to images in [0, 1] (N, 3, H, W) and the final latents, image i from `seeds[i]`.
    public func generate(conditioning: Conditioning, seeds: [UInt64], parameters p: SamplingParameters,
                         progress: (Int, Int) -> Void = { _, _ in }) throws -> (images: FeatureMap, latents: Buffer) {
        let (h, w) = try latentSize(height: p.height, width: p.width)
        let latents = try denoise(initialNoise: initialNoise(seeds: seeds, height: h, width: w), conditioning: conditioning,
                                  seeds: seeds, parameters: p, progress: progress)
        return (try decode(latents: latents, count: conditioning.count, height: h, width: w), latents)
    }
}

// MARK: - LAN

/// HG-DPO Eq. 7 in place: each (image, channel) plane of `x` (N, C, P) gets the mean and standard deviation of the
/// same plane of `reference`: x ← (x − μ(x)) / σ(x) · σ(ref) + μ(ref), statistics over the P positions in float64.
public func latentAdaptiveNormalization(_ x: UnsafeMutablePointer<Float>, reference: UnsafePointer<Float>, batch: Int,
                                        channels: Int, pixels: Int) {
    func stats(_ p: UnsafePointer<Float>) -> (mean: Double, std: Double) {
        var s = 0.0
        for i in 0..<pixels { s += Double(p[i]) }
        let mean = s / Double(pixels)
        var v = 0.0
        for i in 0..<pixels { let d = Double(p[i]) - mean; v += d * d }
        return (mean, (v / Double(pixels)).squareRoot())
    }
    for plane in 0..<(batch * channels) {
        let xp = x + plane * pixels
        let (mt, st) = stats(UnsafePointer(xp)), (ms, ss) = stats(reference + plane * pixels)
        let scale = st > 0 ? ss / st : 1
        for i in 0..<pixels { xp[i] = Float((Double(xp[i]) - mt) * scale + ms) }
    }
}

// MARK: - Images

/// Image `index` of a batch in [0, 1] (C, H, W) as 8-bit pixels: round(x·255), half to even, as diffusers'
/// numpy_to_pil ((images * 255).round().astype("uint8")) after postprocess's clamp.
public func byteImage(_ images: FeatureMap, _ index: Int) throws -> ByteImage {
    let c = images.channels, hw = images.height * images.width
    let src = images.ptr + index * c * hw
    var bytes = [UInt8](repeating: 0, count: c * hw)
    for ch in 0..<c {
        for i in 0..<hw {
            let v = (min(max(src[ch * hw + i], 0), 1) * 255).rounded(.toNearestOrEven)
            bytes[i * c + ch] = v.isNaN ? 0 : UInt8(v)
        }
    }
    return try ByteImage(width: images.width, height: images.height, channels: c, pixels: bytes)
}

/// Images (all the same size) tiled row by row into one with `columns` columns (default ⌈√N⌉), black where the
/// last row is short.
public func imageGrid(_ images: [ByteImage], columns: Int? = nil) throws -> ByteImage {
    guard let first = images.first else { throw SamplingError("no images for a grid") }
    let cols = max(1, columns ?? Int(Double(images.count).squareRoot().rounded(.up)))
    let rows = (images.count + cols - 1) / cols
    let c = first.channels, h = first.height, w = first.width
    let gw = cols * w, gh = rows * h
    var pixels = [UInt8](repeating: 0, count: c * gh * gw)
    for (k, im) in images.enumerated() {
        guard im.width == w, im.height == h, im.channels == c else {
            throw SamplingError("grid: image \(k) is \(im.width)x\(im.height) with \(im.channels) channels, image 0 is "
                                + "\(w)x\(h) with \(c)")
        }
        let x0 = (k % cols) * w, y0 = (k / cols) * h
        for y in 0..<h {
            let src = y * w * c, dst = ((y0 + y) * gw + x0) * c
            for i in 0..<(w * c) { pixels[dst + i] = im.pixels[src + i] }
        }
    }
    return try ByteImage(width: gw, height: gh, channels: c, pixels: pixels)
}
