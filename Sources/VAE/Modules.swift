// The structure of diffusers' AutoencoderKL (Encoder, Decoder, their mid block and its single-head attention), forward
// only, over the modules of NN: each module is registered under its exact state-dict key. An inference pass releases
// a module's intermediates before the next large buffer is made, so a ResnetBlock2D holds at most its input and two
// other activations at once, never the activations of the whole network.
// Ref: diffusers models/resnet.py (ResnetBlock2D), downsampling.py (Downsample2D), upsampling.py (Upsample2D),
// unets/unet_2d_blocks.py (DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D), attention_processor.py
// (Attention with `_from_deprecated_attn_block`, AttnProcessor2_0), autoencoders/vae.py (Encoder, Decoder).
import Layers
import NN
import Tensors

// MARK: - Feature maps

/// A batch of images or feature maps, NCHW, in one flat fp32 buffer.
public struct FeatureMap: @unchecked Sendable {
    public let buffer: Buffer
    public let batch: Int, channels: Int, height: Int, width: Int

    public init(_ buffer: Buffer, batch: Int, channels: Int, height: Int, width: Int) {
        precondition(buffer.count == batch * channels * height * width,
                     "FeatureMap: \(buffer.count) floats for shape [\(batch), \(channels), \(height), \(width)]")
        self.buffer = buffer
        self.batch = batch; self.channels = channels; self.height = height; self.width = width
    }

    /// Uninitialised storage for a map of this shape.
    public init(batch: Int, channels: Int, height: Int, width: Int) {
        self.init(Buffer(uninitialized: batch * channels * height * width), batch: batch, channels: channels,
                  height: height, width: width)
    }

    public var shape: [Int] { [batch, channels, height, width] }
    public var count: Int { buffer.count }
    public var ptr: UnsafeMutablePointer<Float> { buffer.ptr }
    var pixels: Int { height * width }
}

// MARK: - Modules on feature maps

extension Conv2d {
    // (B, cin, H, W) -> (B, cout, Ho, Wo)
    func forward(_ p: Pass, _ x: FeatureMap) -> FeatureMap {
        precondition(x.channels == cin, "Conv2d: \(x.channels) input channels, expected \(cin)")
        let (ho, wo) = outSize(x.height, x.width)
        return FeatureMap(forward(p, x.buffer, x.batch, x.height, x.width), batch: x.batch, channels: cout, height: ho, width: wo)
    }
}

extension ResnetBlock2D {
    // (B, cin, H, W) -> (B, cout, H, W)
    func forward(_ p: Pass, _ x: FeatureMap) -> FeatureMap {
        FeatureMap(forward(p, x.buffer, temb: nil, x.batch, x.height, x.width).0, batch: x.batch, channels: cout,
                   height: x.height, width: x.width)
    }
}

/// Every GroupNorm of the VAE has eps 1e-6.
private let vaeEps = 1e-6

// MARK: - Mid-block attention

/// Single-head self-attention over all pixels with GroupNorm in front and the input added back:
/// x + to_out.0(softmax(q·kᵀ/√C)·v), q, k, v = to_q/to_k/to_v(GroupNorm(x)) over tokens (B, HW, C), all with bias.
/// Its linear layers stay fp32 in mixed precision (the reference rounds only the convolutions).
/// Ref: diffusers UNetMidBlock2D's Attention(heads = C / attention_head_dim = 1, residual_connection=True,
/// rescale_output_factor=1, eps 1e-6, norm_num_groups = resnet_groups) run by AttnProcessor2_0.
struct MidAttention {
    let groupNorm: GroupNorm, attention: Attention
    let channels: Int

    init(_ t: ParameterTable, _ key: String, channels: Int, groups: Int) {
        self.channels = channels
        groupNorm = GroupNorm(t, key + ".group_norm", channels: channels, groups: groups, eps: vaeEps)
        attention = Attention(t, key, queryDim: channels, heads: 1, qkvBias: true, allowBF16: false)
    }

    // (B, C, H, W) -> (B, C, H, W)
    func forward(_ p: Pass, _ x: FeatureMap) -> FeatureMap {
        let b = x.batch, c = channels, n = x.pixels
        let attended: Buffer                                         // (B, HW, C)
        do {
            let tokens = Buffer(uninitialized: b * n * c)           // (B, HW, C)
            do {
                let normed = groupNorm.forward(p, x.buffer, b, n).0
                channelsToTokens(out: tokens.ptr, inp: normed.ptr, B: b, C: c, HW: n)
            }
            attended = attention.forward(p, tokens, nil, b, n, n).0
        }
        let out = FeatureMap(batch: b, channels: c, height: x.height, width: x.width)
        tokensToChannels(out: out.ptr, inp: attended.ptr, B: b, C: c, HW: n)
        addInto(out.ptr, x.ptr, n: out.count)                       // residual_connection; rescale_output_factor 1
        return out
    }
}

// MARK: - Mid block

/// resnet → attention (unless mid_block_add_attention is false) → resnet. Ref: diffusers UNetMidBlock2D.
struct MidBlock {
    let resnet0: ResnetBlock2D, attention: MidAttention?, resnet1: ResnetBlock2D

    init(_ t: ParameterTable, _ key: String, channels: Int, groups: Int, addAttention: Bool) {
        resnet0 = ResnetBlock2D(t, key + ".resnets.0", cin: channels, cout: channels, tembDim: nil, groups: groups, eps: vaeEps)
        attention = addAttention ? MidAttention(t, key + ".attentions.0", channels: channels, groups: groups) : nil
        resnet1 = ResnetBlock2D(t, key + ".resnets.1", cin: channels, cout: channels, tembDim: nil, groups: groups, eps: vaeEps)
    }

    func forward(_ p: Pass, _ x: FeatureMap) -> FeatureMap {
        var h = resnet0.forward(p, x)
        if let attention { h = attention.forward(p, h) }
        return resnet1.forward(p, h)
    }
}

// MARK: - Encoder

/// conv_in → DownEncoderBlock2D × n (resnets, then a stride-2 conv padded right and bottom, except the last) →
/// mid block → GroupNorm → SiLU → conv_out to 2·latent_channels (mean and log-variance). Ref: diffusers Encoder.
struct Encoder {
    struct DownBlock { let resnets: [ResnetBlock2D]; let downsample: Downsample2D? }
    let convIn: Conv2d, down: [DownBlock], mid: MidBlock, normOut: GroupNorm, convOut: Conv2d

    init(_ t: ParameterTable, _ key: String, _ spec: VAESpec) {
        let ch = spec.blockOutChannels, g = spec.groups
        convIn = Conv2d(t, key + ".conv_in", cin: spec.inChannels, cout: ch[0], kernel: 3)
        var blocks: [DownBlock] = []
        var cin = ch[0]
        for (i, cout) in ch.enumerated() {
            let k = key + ".down_blocks.\(i)"
            let resnets = (0..<spec.layersPerBlock).map {
                ResnetBlock2D(t, k + ".resnets.\($0)", cin: $0 == 0 ? cin : cout, cout: cout, tembDim: nil, groups: g, eps: vaeEps)
            }
            // Downsample2D(padding=0): F.pad(x, (0, 1, 0, 1)), then a 3x3 stride-2 conv without padding.
            let downsample = i < ch.count - 1
                ? Downsample2D(t, k + ".downsamplers.0", channels: cout, padding: Conv2DPadding(top: 0, bottom: 1, left: 0, right: 1))
                : nil
            blocks.append(DownBlock(resnets: resnets, downsample: downsample))
            cin = cout
        }
        down = blocks
        mid = MidBlock(t, key + ".mid_block", channels: ch.last!, groups: g, addAttention: spec.midBlockAddAttention)
        normOut = GroupNorm(t, key + ".conv_norm_out", channels: ch.last!, groups: g, eps: vaeEps)
        convOut = Conv2d(t, key + ".conv_out", cin: ch.last!, cout: 2 * spec.latentChannels, kernel: 3)
    }

    // (B, in, H, W) -> (B, 2·latent, H/f, W/f)
    func forward(_ p: Pass, _ x: FeatureMap) -> FeatureMap {
        var h = convIn.forward(p, x)
        for block in down {
            for resnet in block.resnets { h = resnet.forward(p, h) }
            if let downsample = block.downsample { h = downsample.conv.forward(p, h) }
        }
        h = mid.forward(p, h)
        _ = normOut.forward(p, h.buffer, h.batch, h.pixels, silu: true, into: h.buffer)
        return convOut.forward(p, h)
    }
}

// MARK: - Decoder

/// conv_in → mid block → UpDecoderBlock2D × n over the reversed channels (layers_per_block + 1 resnets, then
/// nearest ×2 and a 3x3 conv, except the last) → GroupNorm → SiLU → conv_out. Ref: diffusers Decoder.
struct Decoder {
    struct UpBlock { let resnets: [ResnetBlock2D]; let upsample: Upsample2D? }
    let convIn: Conv2d, mid: MidBlock, up: [UpBlock], normOut: GroupNorm, convOut: Conv2d

    init(_ t: ParameterTable, _ key: String, _ spec: VAESpec) {
        let reversed = Array(spec.blockOutChannels.reversed()), g = spec.groups
        convIn = Conv2d(t, key + ".conv_in", cin: spec.latentChannels, cout: reversed[0], kernel: 3)
        mid = MidBlock(t, key + ".mid_block", channels: reversed[0], groups: g, addAttention: spec.midBlockAddAttention)
        var blocks: [UpBlock] = []
        var prev = reversed[0]
        for (i, cout) in reversed.enumerated() {
            let k = key + ".up_blocks.\(i)"
            let resnets = (0..<(spec.layersPerBlock + 1)).map {
                ResnetBlock2D(t, k + ".resnets.\($0)", cin: $0 == 0 ? prev : cout, cout: cout, tembDim: nil, groups: g, eps: vaeEps)
            }
            let upsample = i < reversed.count - 1 ? Upsample2D(t, k + ".upsamplers.0", channels: cout) : nil
            blocks.append(UpBlock(resnets: resnets, upsample: upsample))
            prev = cout
        }
        up = blocks
        normOut = GroupNorm(t, key + ".conv_norm_out", channels: spec.blockOutChannels[0], groups: g, eps: vaeEps)
        convOut = Conv2d(t, key + ".conv_out", cin: spec.blockOutChannels[0], cout: spec.outChannels, kernel: 3)
    }

    // (B, latent, h, w) -> (B, out, h·f, w·f)
    func forward(_ p: Pass, _ z: FeatureMap) -> FeatureMap {
        var h = convIn.forward(p, z)
        h = mid.forward(p, h)
        for block in up {
            for resnet in block.resnets { h = resnet.forward(p, h) }
            if let upsample = block.upsample {
                // Upsample2D: F.interpolate(scale_factor=2, mode="nearest"), then the conv.
                h = FeatureMap(upsample.forward(p, h.buffer, h.batch, h.height, h.width), batch: h.batch, channels: h.channels,
                               height: 2 * h.height, width: 2 * h.width)
            }
        }
        _ = normOut.forward(p, h.buffer, h.batch, h.pixels, silu: true, into: h.buffer)
        return convOut.forward(p, h)
    }
}
