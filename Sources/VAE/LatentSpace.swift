// Where a pipeline's U-Net works: the latent space of its VAE (vae/), or pixel space, for a pipeline folder without
// vae/ (model_index.json lists no vae and the folder has none): the latents are the RGB image itself scaled to
// [-1, 1], (B, 3, H, W), so encoding and decoding are the identity and the downsampling factor is 1. The toy world's
// target model (docs/toyworld.md) is such a pipeline; `hgdpo sample`, `hgdpo encode` and the trainer's validation
// read either kind through this type.
import Foundation
import IO
import NN
import Tensors

public enum LatentSpace: @unchecked Sendable {
    case vae(AutoencoderKL)
    /// Pixel space: RGB images in [-1, 1] are the latents.
    case pixels

    /// The channels of a pixel-space latent (RGB).
    public static let pixelChannels = 3

    /// The latent space of a model folder: its VAE (`parts` of it, in `precision`), or pixel space for a pipeline
    /// without vae/.
    public static func load(_ folder: ModelFolder, variant: String? = nil, parts: AutoencoderKL.Parts,
                            precision: MixedPrecision = .no) throws -> LatentSpace {
        if isPixelSpace(folder) { return .pixels }
        return .vae(try AutoencoderKL.load(folder: folder.vae(), variant: variant, parts: parts, precision: precision))
    }

    /// A pipeline folder whose model_index.json lists no vae and that has no vae/ folder.
    public static func isPixelSpace(_ folder: ModelFolder) -> Bool {
        folder.isPipeline && folder.components["vae"] == nil
            && !FileManager.default.fileExists(atPath: (folder.path as NSString).appendingPathComponent("vae"))
    }

    public var vae: AutoencoderKL? {
        if case .vae(let v) = self { return v }
        return nil
    }

    public var latentChannels: Int { vae?.spec.latentChannels ?? LatentSpace.pixelChannels }
    /// Channels of the images it encodes.
    public var imageChannels: Int { vae?.spec.inChannels ?? LatentSpace.pixelChannels }
    /// Image size / latent size.
    public var downsamplingFactor: Int { vae?.downsamplingFactor ?? 1 }

    /// Images (B, C, H, W) in [-1, 1] → latents: the VAE's (see AutoencoderKL.encode), or the images themselves.
    public func encode(_ images: FeatureMap, mode: AutoencoderKL.LatentMode = .mean, tiling: VAETiling? = nil) throws -> FeatureMap {
        if let vae { return try vae.encode(images, mode: mode, tiling: tiling) }
        guard images.channels == LatentSpace.pixelChannels else {
            throw VAEError.badInput("images have \(images.channels) channels; pixel-space latents are RGB (3)")
        }
        return copy(images)
    }

    /// Latents → images (B, C, H, W), nominally in [-1, 1] (not clamped): the VAE's decoder, or the latents themselves.
    public func decode(_ latents: FeatureMap, tiling: VAETiling? = nil) throws -> FeatureMap {
        if let vae { return try vae.decode(latents, tiling: tiling) }
        guard latents.channels == LatentSpace.pixelChannels else {
            throw VAEError.badInput("latents have \(latents.channels) channels; pixel-space latents are RGB (3)")
        }
        return copy(latents)
    }

    private func copy(_ x: FeatureMap) -> FeatureMap {
        let out = FeatureMap(batch: x.batch, channels: x.channels, height: x.height, width: x.width)
        out.ptr.update(from: x.ptr, count: x.count)
        return out
    }
}
