// `hgdpo probe vae-encode` / `hgdpo probe vae-decode`: one AutoencoderKL encode or decode on tensors from a
// safetensors file, for parity checks against diffusers and for users checking a VAE.
import IO
import Tensors
import VAE

extension Commands {
    static let probeVAEEncode = CommandSpec(
        ["probe", "vae-encode"],
        summary: "Encode images from a safetensors file into scaled latents with the VAE",
        details: """
            IN holds `sample` [B,C,H,W] float in [-1, 1] (H, W multiples of the VAE's factor, 8 for SD);
            OUT gets `latent` [B,latent_channels,H/8,W/8] float32 = posterior mean (or a draw) × scaling_factor.
            --mode sample draws ε from hgdpo's Philox RNG (image b uses stream b of --seed), so it is distributed as
            diffusers' latent_dist.sample() but not equal to it.
            Example: hgdpo probe vae-encode --model sd15 --input images.safetensors --out latents.safetensors --vae-tile auto
            """,
        options: [
            .value("--model", "DIR", "Pipeline root (its vae/ is used) or an AutoencoderKL folder", required: true),
            .value("--variant", "NAME", "Weight variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)"),
            .value("--input", "IN", "Input tensors (safetensors) with `sample`", required: true),
            .value("--out", "OUT", "Output file (safetensors, written atomically)", required: true),
            .value("--mode", "M", "Latent: the posterior mean or a sample from it", default: "mean", choices: ["mean", "sample"]),
            .value("--seed", "S", "Seed of the posterior noise (--mode sample)", default: "0"),
            .value("--vae-tile", "N", "Encode in tiles of N px as diffusers' enable_tiling (`auto`: the config's sample_size); "
                   + "off by default"),
            .value("--threads", "N", "Compute threads (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        let input = try readVAEInput(args, key: "sample")
        let model = try AutoencoderKL.load(modelFolder: try args.requiredString("--model"), variant: args.string("--variant"),
                                           parts: .encoder)
        let mode: AutoencoderKL.LatentMode
        if args.string("--mode") == "sample" {
            guard let seed = UInt64(args.string("--seed")!) else {
                throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
            }
            mode = .sample(rng: CounterRNG(seed: seed), firstImage: 0)
        } else {
            mode = .mean
        }
        let latents = try model.encode(input, mode: mode, tiling: try vaeTiling(args, model))
        try SafeTensors.write([SafeTensorsEntry(name: "latent", shape: latents.shape, floats: latents.buffer.array)],
                              to: try args.requiredString("--out"))
    }

    static let probeVAEDecode = CommandSpec(
        ["probe", "vae-decode"],
        summary: "Decode scaled latents from a safetensors file into images with the VAE",
        details: """
            IN holds `latent` [B,latent_channels,h,w] float (scaled, as a U-Net or `probe vae-encode` gives them);
            OUT gets `sample` [B,C,8h,8w] float32, nominally in [-1, 1] (not clamped).
            Example: hgdpo probe vae-decode --model sd15 --input latents.safetensors --out images.safetensors
            """,
        options: [
            .value("--model", "DIR", "Pipeline root (its vae/ is used) or an AutoencoderKL folder", required: true),
            .value("--variant", "NAME", "Weight variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)"),
            .value("--input", "IN", "Input tensors (safetensors) with `latent`", required: true),
            .value("--out", "OUT", "Output file (safetensors, written atomically)", required: true),
            .value("--vae-tile", "N", "Decode in tiles of N px as diffusers' enable_tiling (`auto`: the config's sample_size); "
                   + "off by default"),
            .value("--threads", "N", "Compute threads (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        let input = try readVAEInput(args, key: "latent")
        let model = try AutoencoderKL.load(modelFolder: try args.requiredString("--model"), variant: args.string("--variant"),
                                           parts: .decoder)
        let images = try model.decode(input, tiling: try vaeTiling(args, model))
        try SafeTensors.write([SafeTensorsEntry(name: "sample", shape: images.shape, floats: images.buffer.array)],
                              to: try args.requiredString("--out"))
    }

    /// The 4-D float tensor `key` of --input as a feature map.
    private static func readVAEInput(_ args: ParsedArguments, key: String) throws -> FeatureMap {
        let path = try args.requiredString("--input")
        let file = try SafeTensorsFile(path: path)
        guard let info = file.info(key) else {
            throw CLIError.invalid("\(path): missing tensor '\(key)' (has: \(file.tensorNames.sorted().joined(separator: ", ")))")
        }
        guard info.shape.count == 4, info.shape.allSatisfy({ $0 > 0 }) else {
            throw CLIError.invalid("\(path): '\(key)' has shape \(info.shape), expected [B, C, H, W] with no empty dimension")
        }
        guard !info.dtype.isInteger else {
            throw CLIError.invalid("\(path): '\(key)' is \(info.dtype.rawValue), expected a float tensor")
        }
        let buffer = Buffer(uninitialized: info.count)
        try file.read(key, into: buffer.buffer)
        return FeatureMap(buffer, batch: info.shape[0], channels: info.shape[1], height: info.shape[2], width: info.shape[3])
    }

    /// --vae-tile: nil (off), `auto` (the config's sample_size) or a tile size in image pixels.
    private static func vaeTiling(_ args: ParsedArguments, _ model: AutoencoderKL) throws -> VAETiling? {
        guard let s = args.string("--vae-tile") else { return nil }
        if s == "auto" { return try model.tiling() }
        guard let n = Int(s), n > 0 else {
            throw CLIError.badValue(option: "--vae-tile", value: s, expected: "a positive tile size in pixels or `auto`")
        }
        return try model.tiling(sampleTileSize: n)
    }
}
