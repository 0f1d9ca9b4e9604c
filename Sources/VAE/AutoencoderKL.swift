// diffusers' AutoencoderKL for Stable Diffusion: images in [-1, 1] → scaled latents (the posterior's mean, or a draw
// from it) and back, optionally in overlapping tiles so memory is bounded by the tile size (Tiling.swift).
//
//   encode: moments = quant_conv(Encoder(x)) (B, 2L, H/f, W/f); mean, logvar = chunk(moments, 2, dim=1);
//           z = mean, or mean + exp(0.5·clamp(logvar, −30, 20))·ε; latents = (z − shift_factor)·scaling_factor
//   decode: x = Decoder(post_quant_conv(latents / scaling_factor + shift_factor))
//
// f = 2^(len(block_out_channels) − 1) (8 for SD). shift_factor is null for SD (0 here); scaling by the config's
// factor is what diffusers' training scripts and pipelines do around vae.encode / vae.decode.
// ε comes from our counter-based Philox RNG (Tensors/Philox.swift), not torch's generator: a sampled latent is
// distributed as diffusers' but not bit-equal; the mean mode and the sampling formula given ε match exactly.
// Ref: diffusers models/autoencoders/autoencoder_kl.py (AutoencoderKL), vae.py (DiagonalGaussianDistribution),
// examples/text_to_image/train_text_to_image.py (`latent_dist.sample() * vae.config.scaling_factor`),
// pipelines/stable_diffusion/pipeline_stable_diffusion.py (`vae.decode(latents / vae.config.scaling_factor)`).
import Foundation
import IO
import Layers
import NN
import Tensors

/// Errors a user can cause with a VAE folder or VAE inputs; each names the file, key or tensor. (Weight files that
/// do not fit the config are `WeightLoadError`s.)
public enum VAEError: Error, UserInputError, CustomStringConvertible, Equatable {
    /// A config value this implementation does not support (or that is invalid), with the config file.
    case unsupportedConfig(path: String, key: String, detail: String)
    case badInput(String)
    case badTiling(String)

    public var description: String {
        switch self {
        case .unsupportedConfig(let path, let key, let detail):
            return "\(path): unsupported AutoencoderKL config: '\(key)' \(detail)"
        case .badInput(let m): return m
        case .badTiling(let m): return "VAE tiling: \(m)"
        }
    }
}

// MARK: - Spec

/// The validated shape of an AutoencoderKL, from its diffusers config. Unsupported configs are refused here,
/// naming the key.
public struct VAESpec: Sendable, Equatable {
    public let config: AutoencoderKLConfig
    public let inChannels: Int, outChannels: Int, latentChannels: Int
    public let blockOutChannels: [Int]
    public let layersPerBlock: Int, groups: Int
    public let midBlockAddAttention: Bool
    /// Spatial factor between images and latents: 2^(len(block_out_channels) − 1).
    public let downsamplingFactor: Int

    /// - Parameter source: the config file named in errors.
    public init(_ c: AutoencoderKLConfig, source: String = "vae/config.json") throws {
        func refuse(_ key: String, _ why: String) -> VAEError { .unsupportedConfig(path: source, key: key, detail: why) }
        let n = c.blockOutChannels.count
        guard n >= 1, n <= 16, c.blockOutChannels.allSatisfy({ $0 > 0 }) else {
            throw refuse("block_out_channels", "must be a non-empty list of positive ints")
        }
        guard c.downBlockTypes.count == n else {
            throw refuse("down_block_types", "has \(c.downBlockTypes.count) entries, block_out_channels \(n)")
        }
        guard c.upBlockTypes.count == n else {
            throw refuse("up_block_types", "has \(c.upBlockTypes.count) entries, block_out_channels \(n)")
        }
        for t in c.downBlockTypes where t != "DownEncoderBlock2D" {
            throw refuse("down_block_types", "contains \(t); supported: DownEncoderBlock2D")
        }
        for t in c.upBlockTypes where t != "UpDecoderBlock2D" {
            throw refuse("up_block_types", "contains \(t); supported: UpDecoderBlock2D")
        }
        guard c.actFn == "silu" || c.actFn == "swish" else { throw refuse("act_fn", "is \(c.actFn); supported: silu") }
        guard c.layersPerBlock >= 1 else { throw refuse("layers_per_block", "is \(c.layersPerBlock); must be at least 1") }
        guard c.inChannels >= 1 else { throw refuse("in_channels", "is \(c.inChannels); must be positive") }
        guard c.outChannels >= 1 else { throw refuse("out_channels", "is \(c.outChannels); must be positive") }
        guard c.latentChannels >= 1 else { throw refuse("latent_channels", "is \(c.latentChannels); must be positive") }
        guard c.normNumGroups >= 1 else { throw refuse("norm_num_groups", "is \(c.normNumGroups); must be positive") }
        for ch in c.blockOutChannels where ch % c.normNumGroups != 0 {
            throw refuse("norm_num_groups", "is \(c.normNumGroups), which does not divide block_out_channels entry \(ch)")
        }
        guard c.scalingFactor.isFinite, c.scalingFactor != 0 else {
            throw refuse("scaling_factor", "is \(c.scalingFactor); must be a finite non-zero number")
        }
        if let s = c.shiftFactor, !s.isFinite { throw refuse("shift_factor", "is \(s); must be finite or null") }
        guard c.sampleSize >= 1 else { throw refuse("sample_size", "is \(c.sampleSize); must be positive") }
        config = c
        inChannels = c.inChannels; outChannels = c.outChannels; latentChannels = c.latentChannels
        blockOutChannels = c.blockOutChannels
        layersPerBlock = c.layersPerBlock; groups = c.normNumGroups
        midBlockAddAttention = c.midBlockAddAttention
        downsamplingFactor = 1 << (n - 1)
    }
}

// MARK: - Model

public final class AutoencoderKL: @unchecked Sendable {
    /// Which halves to build and load: `hgdpo encode` needs only the encoder, `hgdpo sample` only the decoder.
    public struct Parts: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        public static let encoder = Parts(rawValue: 1)
        public static let decoder = Parts(rawValue: 2)
        public static let all: Parts = [.encoder, .decoder]
    }

    /// How `encode` turns the posterior into latents.
    public enum LatentMode: Sendable, Equatable {
        /// posterior.mode() = the mean (deterministic).
        case mean
        /// mean + std·ε with ε ~ N(0, 1): image b of the batch draws ε from `rng.substream(firstImage + b)`, so an
        /// image's noise depends on its global index, never on how the images were batched.
        case sample(rng: CounterRNG, firstImage: Int)
    }

    public let spec: VAESpec
    public let parts: Parts
    public let weights: Weights
    private let encoder: Encoder?, quantConv: Conv2d?
    private let postQuantConv: Conv2d?, decoder: Decoder?
    private let workspace = Workspace()

    public var scalingFactor: Float { Float(spec.config.scalingFactor) }
    public var shiftFactor: Float { Float(spec.config.shiftFactor ?? 0) }
    public var downsamplingFactor: Int { spec.downsamplingFactor }
    public var parameterCount: Int { weights.table.count }
    /// How the convolution weights are stored (`--mixed-precision bf16`: rounded once to bf16, multiplied with fp32
    /// sums; norms, the attention's linear layers and all activations stay fp32).
    public var precision: MixedPrecision { weights.table.precision }

    /// Builds the module tree; weights are uninitialised until `load` or `randomizeWeights`.
    public init(spec: VAESpec, parts: Parts = .all, precision: MixedPrecision = .no) {
        self.spec = spec
        self.parts = parts
        let t = ParameterTable(precision: precision)
        let l = spec.latentChannels
        if parts.contains(.encoder) {
            encoder = Encoder(t, "encoder", spec)
            quantConv = spec.config.useQuantConv ? Conv2d(t, "quant_conv", cin: 2 * l, cout: 2 * l, kernel: 1) : nil
        } else {
            encoder = nil; quantConv = nil
        }
        if parts.contains(.decoder) {
            postQuantConv = spec.config.usePostQuantConv ? Conv2d(t, "post_quant_conv", cin: l, cout: l, kernel: 1) : nil
            decoder = Decoder(t, "decoder", spec)
        } else {
            postQuantConv = nil; decoder = nil
        }
        weights = Weights(table: t)
    }

    private var pass: Pass { Pass(weights: weights, workspace: workspace) }

    /// Loads a diffusers AutoencoderKL: a pipeline root (its `vae/` is used) or a VAE folder itself.
    public static func load(modelFolder path: String, variant: String? = nil, parts: Parts = .all,
                            precision: MixedPrecision = .no) throws -> AutoencoderKL {
        try load(folder: ModelFolder(path: path).vae(), variant: variant, parts: parts, precision: precision)
    }

    public static func load(folder: ComponentFolder, variant: String? = nil, parts: Parts = .all,
                            precision: MixedPrecision = .no) throws -> AutoencoderKL {
        let spec = try VAESpec(folder.config(AutoencoderKLConfig.self), source: folder.configPath)
        // Per-channel latent statistics replace scaling_factor in the pipelines that use them (not SD's): refuse
        // rather than scale latents the wrong way.
        let statistics = try folder.config(LatentStatistics.self)
        if statistics.latentsMean != nil || statistics.latentsStd != nil {
            throw VAEError.unsupportedConfig(path: folder.configPath, key: statistics.latentsMean != nil ? "latents_mean" : "latents_std",
                                             detail: "is set; per-channel latent statistics are not supported (SD VAEs have null)")
        }
        let model = AutoencoderKL(spec: spec, parts: parts, precision: precision)
        try model.weights.load(files: folder.weightFiles(variant: variant), model: "AutoencoderKL", remap: model.keyRemap)
        return model
    }

    /// Checkpoints saved before diffusers 0.14 name the mid-block attention projections `query` / `key` / `value` /
    /// `proj_attn`: renamed to `to_q` / `to_k` / `to_v` / `to_out.0`. The halves that were not built are skipped.
    /// Ref: diffusers models/modeling_utils.py (ModelMixin._fix_state_dict_keys_on_load).
    var keyRemap: KeyRemap {
        var skip: [String] = []
        if !parts.contains(.encoder) { skip += ["encoder.", "quant_conv."] }
        if !parts.contains(.decoder) { skip += ["decoder.", "post_quant_conv."] }
        return KeyRemap { [skip] name in
            if skip.contains(where: { name.hasPrefix($0) }) { return nil }
            guard let range = name.range(of: ".mid_block.attentions.0.") else { return name }
            let rest = name[range.upperBound...]
            for (old, new) in [("query.", "to_q."), ("key.", "to_k."), ("value.", "to_v."), ("proj_attn.", "to_out.0.")]
            where rest.hasPrefix(old) {
                return String(name[..<range.upperBound]) + new + String(rest.dropFirst(old.count))
            }
            return name
        }
    }

    public func randomizeWeights(seed: UInt64) { weights.randomize(seed: seed) }

    /// The values of a parameter as the model uses them, by its diffusers key (nil if the model has no such parameter).
    public func parameter(_ key: String) -> [Float]? { weights.floats(key) }

    // MARK: - Encode

    /// images (B, in_channels, H, W) in [-1, 1] → latents (B, latent_channels, H/f, W/f), (z − shift)·scaling_factor.
    /// H and W must be multiples of f. With `tiling`, images larger than its tile are encoded tile by tile.
    public func encode(_ images: FeatureMap, mode: LatentMode = .mean, tiling: VAETiling? = nil) throws -> FeatureMap {
        let moments = try encodeMoments(images, tiling: tiling)
        let z: FeatureMap
        switch mode {
        case .mean:
            z = posteriorMean(moments)
        case .sample(let rng, let firstImage):
            guard firstImage >= 0 else { throw VAEError.badInput("LatentMode.sample: firstImage \(firstImage) is negative") }
            let noise = FeatureMap(batch: moments.batch, channels: moments.channels / 2, height: moments.height,
                                   width: moments.width)
            let perImage = noise.count / max(1, noise.batch)
            for b in 0..<noise.batch {
                rng.substream(UInt64(firstImage + b))
                    .fillNormal(UnsafeMutableBufferPointer(start: noise.ptr + b * perImage, count: perImage))
            }
            z = posteriorSample(moments, noise: noise)
        }
        let scale = scalingFactor, shift = shiftFactor
        let p = z.ptr
        parallelRanges(z.count) { r in for i in r { p[i] = (p[i] - shift) * scale } }
        return z
    }

    /// The posterior's parameters: quant_conv(Encoder(images)) (B, 2·latent_channels, H/f, W/f), mean channels
    /// first, then log-variance (DiagonalGaussianDistribution.parameters). Tiled like diffusers' `_tiled_encode`.
    public func encodeMoments(_ images: FeatureMap, tiling: VAETiling? = nil) throws -> FeatureMap {
        guard let encoder else { throw VAEError.badInput("this AutoencoderKL was built without its encoder") }
        let f = spec.downsamplingFactor
        guard images.channels == spec.inChannels else {
            throw VAEError.badInput("images have \(images.channels) channels, the VAE takes \(spec.inChannels) (in_channels)")
        }
        guard images.batch >= 1, images.height >= f, images.width >= f, images.height % f == 0, images.width % f == 0 else {
            throw VAEError.badInput("image size \(images.height)x\(images.width) (batch \(images.batch)): height and width "
                                    + "must be positive multiples of \(f), the VAE's downsampling factor")
        }
        let p = pass
        let run: (FeatureMap) -> FeatureMap = { tile in
            let moments = encoder.forward(p, tile)
            return self.quantConv?.forward(p, moments) ?? moments
        }
        if let tiling, images.height > tiling.sampleTileSize || images.width > tiling.sampleTileSize {
            try tiling.validate(downsamplingFactor: f)
            return tiledApply(images, tileSize: tiling.sampleTileSize, stride: tiling.sampleStride,
                              blendExtent: tiling.latentBlendExtent, rowLimit: tiling.latentRowLimit,
                              outChannels: 2 * spec.latentChannels, outSize: { $0 / f }, run)
        }
        return run(images)
    }

    // MARK: - Decode

    /// latents (B, latent_channels, h, w), scaled as `encode` returns them → images (B, out_channels, h·f, w·f),
    /// nominally in [-1, 1] (not clamped). With `tiling`, latents larger than its latent tile are decoded tile by tile.
    public func decode(_ latents: FeatureMap, tiling: VAETiling? = nil) throws -> FeatureMap {
        guard let decoder else { throw VAEError.badInput("this AutoencoderKL was built without its decoder") }
        guard latents.channels == spec.latentChannels else {
            throw VAEError.badInput("latents have \(latents.channels) channels, the VAE's latent_channels is \(spec.latentChannels)")
        }
        guard latents.batch >= 1, latents.height >= 1, latents.width >= 1 else {
            throw VAEError.badInput("latents have an empty shape \(latents.shape)")
        }
        let z = FeatureMap(batch: latents.batch, channels: latents.channels, height: latents.height, width: latents.width)
        let scale = scalingFactor, shift = shiftFactor
        let src = latents.ptr, dst = z.ptr
        parallelRanges(z.count) { r in for i in r { dst[i] = src[i] / scale + shift } }
        let p = pass, f = spec.downsamplingFactor
        let run: (FeatureMap) -> FeatureMap = { tile in
            decoder.forward(p, self.postQuantConv?.forward(p, tile) ?? tile)
        }
        if let tiling, z.height > tiling.latentTileSize || z.width > tiling.latentTileSize {
            try tiling.validate(downsamplingFactor: f)
            return tiledApply(z, tileSize: tiling.latentTileSize, stride: tiling.latentStride,
                              blendExtent: tiling.sampleBlendExtent, rowLimit: tiling.sampleRowLimit,
                              outChannels: spec.outChannels, outSize: { $0 * f }, run)
        }
        return run(z)
    }

    // MARK: - Tiling

    /// diffusers' tiling for this model: tile_sample_min_size = `sampleTileSize` (default: the config's
    /// sample_size, as `enable_tiling()`), tile_latent_min_size = sampleTileSize / f, overlap factor 0.25.
    public func tiling(sampleTileSize: Int? = nil) throws -> VAETiling {
        let t = VAETiling(sampleTileSize: sampleTileSize ?? spec.config.sampleSize, downsamplingFactor: spec.downsamplingFactor)
        try t.validate(downsamplingFactor: spec.downsamplingFactor)
        return t
    }
}

/// The config keys AutoencoderKLConfig does not carry, read only to refuse them.
private struct LatentStatistics: Decodable {
    let latentsMean: [Double]?, latentsStd: [Double]?
    enum CodingKeys: String, CodingKey { case latentsMean = "latents_mean", latentsStd = "latents_std" }
}

// MARK: - DiagonalGaussianDistribution

/// posterior.mode(): the first half of the moments' channels. (B, 2L, h, w) → (B, L, h, w).
public func posteriorMean(_ moments: FeatureMap) -> FeatureMap {
    let l = moments.channels / 2, hw = moments.pixels
    let out = FeatureMap(batch: moments.batch, channels: l, height: moments.height, width: moments.width)
    for b in 0..<moments.batch {
        (out.ptr + b * l * hw).update(from: moments.ptr + b * 2 * l * hw, count: l * hw)
    }
    return out
}

/// posterior.sample() with the noise given: mean + exp(0.5·clamp(logvar, −30, 20))·noise, noise (B, L, h, w).
/// Ref: diffusers DiagonalGaussianDistribution (__init__ clamps logvar and sets std = exp(0.5·logvar); sample).
public func posteriorSample(_ moments: FeatureMap, noise: FeatureMap) -> FeatureMap {
    let l = moments.channels / 2, hw = moments.pixels
    precondition(noise.count == moments.batch * l * hw, "posteriorSample: noise shape \(noise.shape)")
    let out = FeatureMap(batch: moments.batch, channels: l, height: moments.height, width: moments.width)
    let m = moments.ptr, e = noise.ptr, o = out.ptr
    parallelFor(moments.batch * l, work: out.count * 8) { bc in
        let b = bc / l, c = bc % l
        let mean = m + (b * 2 * l + c) * hw, logvar = mean + l * hw
        let eps = e + bc * hw, dst = o + bc * hw
        for i in 0..<hw {
            let std = Foundation.exp(0.5 * min(max(logvar[i], -30), 20))
            dst[i] = mean[i] + std * eps[i]
        }
    }
    return out
}

// MARK: - Images

extension FeatureMap {
    /// A batch of same-sized images, planar (C, H, W) in [-1, 1] as `PNG.read` returns them (diffusers'
    /// VaeImageProcessor.preprocess without resizing).
    public init(images: [Image]) throws {
        guard let first = images.first else { throw VAEError.badInput("no images to batch") }
        for (i, im) in images.enumerated()
        where im.width != first.width || im.height != first.height || im.channels != first.channels {
            throw VAEError.badInput("image \(i) is \(im.width)x\(im.height) with \(im.channels) channels; image 0 is "
                                    + "\(first.width)x\(first.height) with \(first.channels): a batch needs one size")
        }
        let per = first.channels * first.height * first.width
        let buffer = Buffer(uninitialized: images.count * per)
        for (i, im) in images.enumerated() {
            im.pixels.withUnsafeBufferPointer { (buffer.ptr + i * per).update(from: $0.baseAddress!, count: per) }
        }
        self.init(buffer, batch: images.count, channels: first.channels, height: first.height, width: first.width)
    }

    /// Image `index` of the batch, values as they are (`PNG.write` clamps to [-1, 1] and rounds, as numpy_to_pil).
    public func image(_ index: Int) throws -> Image {
        precondition(index >= 0 && index < batch, "FeatureMap.image: index \(index) of a batch of \(batch)")
        let per = channels * height * width
        return try Image(width: width, height: height, channels: channels,
                         pixels: Array(UnsafeBufferPointer(start: ptr + index * per, count: per)))
    }
}
