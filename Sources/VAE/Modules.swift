// The modules of diffusers' AutoencoderKL, forward only, over the Layers kernels. Each module is registered under
// its exact state-dict key and keeps offsets into the flat weight buffer.
// Memory: a module's intermediates live in nested scopes and are released before the next large buffer is made, so
// a ResnetBlock2D holds at most its input and two other activations at once, never the activations of the whole
// network (measured: 0.9 GB peak RSS for `probe vae-decode` of one 512x512 image with an SD-shaped VAE, weights included).
// Ref: diffusers models/resnet.py (ResnetBlock2D), downsampling.py (Downsample2D), upsampling.py (Upsample2D),
// unets/unet_2d_blocks.py (DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D), attention_processor.py
// (Attention with `_from_deprecated_attn_block`, AttnProcessor2_0), autoencoders/vae.py (Encoder, Decoder).
import Layers
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

/// One growable scratch allocation shared by the kernels of a pass (they run one at a time).
final class Workspace {
    private var buffer = Buffer(uninitialized: 0)
    /// bf16 copies of the weights at the fp32 offsets (`AutoencoderKL.useBF16Convolutions`): convolutions then
    /// multiply through BF16.gemm.
    var bf16Weights: UnsafePointer<UInt16>?
    func get(_ count: Int) -> UnsafeMutablePointer<Float> {
        if buffer.count < count { buffer = Buffer(uninitialized: count) }
        return buffer.ptr
    }
}

// MARK: - Leaf modules

struct Conv2d {
    let weight: Int, bias: Int
    let cin: Int, cout: Int, kernel: Int, stride: Int
    let padding: Conv2DPadding

    init(_ t: VAEWeights, _ key: String, cin: Int, cout: Int, kernel: Int, stride: Int = 1, padding: Conv2DPadding? = nil) {
        self.cin = cin; self.cout = cout; self.kernel = kernel; self.stride = stride
        self.padding = padding ?? Conv2DPadding(kernel / 2)
        weight = t.declare(key + ".weight", [cout, cin, kernel, kernel])
        bias = t.declare(key + ".bias", [cout])
    }

    // (B, cin, H, W) -> (B, cout, Ho, Wo)
    func forward(_ w: UnsafeMutablePointer<Float>, _ x: FeatureMap, _ ws: Workspace) -> FeatureMap {
        precondition(x.channels == cin, "Conv2d: \(x.channels) input channels, expected \(cin)")
        let (ho, wo) = padding.outputSize(H: x.height, W: x.width, kernel: kernel, stride: stride)
        let out = FeatureMap(batch: x.batch, channels: cout, height: ho, width: wo)
        let scratch = ws.get(conv2dWorkspaceSize(Cin: cin, H: x.height, W: x.width, kernel: kernel, stride: stride,
                                                 padding: padding))
        let matrix: WeightMatrix = ws.bf16Weights.map { .bf16($0 + weight) } ?? .f32(w + weight)
        conv2dForward(out: out.ptr, inp: x.ptr, weight: matrix, bias: w + bias, B: x.batch, Cin: cin, H: x.height,
                      W: x.width, Cout: cout, kernel: kernel, stride: stride, padding: padding, workspace: scratch)
        return out
    }
}

/// GroupNorm (eps 1e-6 everywhere in the VAE), optionally fused with the SiLU that follows it.
struct GroupNorm {
    let weight: Int, bias: Int, channels: Int, groups: Int
    let eps: Float

    init(_ t: VAEWeights, _ key: String, channels: Int, groups: Int, eps: Float = 1e-6) {
        self.channels = channels; self.groups = groups; self.eps = eps
        weight = t.declare(key + ".weight", [channels])
        bias = t.declare(key + ".bias", [channels])
    }

    /// out = GroupNorm(x) (then SiLU when `silu`); `out` may be `x` itself (the kernel reads a group's statistics
    /// before writing it, element by element).
    func forward(_ w: UnsafeMutablePointer<Float>, _ x: FeatureMap, silu: Bool, into out: FeatureMap) {
        precondition(x.channels == channels && out.count == x.count)
        let mean = Buffer(uninitialized: x.batch * groups), rstd = Buffer(uninitialized: x.batch * groups)
        if silu {
            groupNormSiLUForward(out: out.ptr, mean: mean.ptr, rstd: rstd.ptr, inp: x.ptr, weight: w + weight, bias: w + bias,
                                 B: x.batch, C: channels, HW: x.pixels, groups: groups, eps: eps)
        } else {
            groupNormForward(out: out.ptr, mean: mean.ptr, rstd: rstd.ptr, inp: x.ptr, weight: w + weight, bias: w + bias,
                             B: x.batch, C: channels, HW: x.pixels, groups: groups, eps: eps)
        }
    }

    func forward(_ w: UnsafeMutablePointer<Float>, _ x: FeatureMap, silu: Bool) -> FeatureMap {
        let out = FeatureMap(batch: x.batch, channels: x.channels, height: x.height, width: x.width)
        forward(w, x, silu: silu, into: out)
        return out
    }
}

struct Linear {
    let weight: Int, bias: Int, inFeatures: Int, outFeatures: Int

    init(_ t: VAEWeights, _ key: String, inFeatures: Int, outFeatures: Int) {
        self.inFeatures = inFeatures; self.outFeatures = outFeatures
        weight = t.declare(key + ".weight", [outFeatures, inFeatures])
        bias = t.declare(key + ".bias", [outFeatures])
    }

    // (N, in) -> (N, out)
    func forward(_ w: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) -> Buffer {
        let out = Buffer(uninitialized: n * outFeatures)
        linearForward(out: out.ptr, inp: x, weight: w + weight, bias: w + bias, N: n, I: inFeatures, O: outFeatures)
        return out
    }
}

// MARK: - ResnetBlock2D (no time embedding)

/// norm1 → SiLU → conv1 → norm2 → SiLU → conv2, plus the input (through a 1x1 `conv_shortcut` when the channel
/// count changes); output_scale_factor 1, dropout off. Ref: diffusers ResnetBlock2D.forward with temb None.
struct ResnetBlock {
    let norm1: GroupNorm, conv1: Conv2d, norm2: GroupNorm, conv2: Conv2d
    let shortcut: Conv2d?

    init(_ t: VAEWeights, _ key: String, cin: Int, cout: Int, groups: Int) {
        norm1 = GroupNorm(t, key + ".norm1", channels: cin, groups: groups)
        conv1 = Conv2d(t, key + ".conv1", cin: cin, cout: cout, kernel: 3)
        norm2 = GroupNorm(t, key + ".norm2", channels: cout, groups: groups)
        conv2 = Conv2d(t, key + ".conv2", cin: cout, cout: cout, kernel: 3)
        shortcut = cin != cout ? Conv2d(t, key + ".conv_shortcut", cin: cin, cout: cout, kernel: 1) : nil
    }

    // (B, cin, H, W) -> (B, cout, H, W)
    func forward(_ w: UnsafeMutablePointer<Float>, _ x: FeatureMap, _ ws: Workspace) -> FeatureMap {
        let out: FeatureMap
        do {
            let h: FeatureMap
            do {
                let a = norm1.forward(w, x, silu: true)     // released when conv1 has read it
                h = conv1.forward(w, a, ws)
            }
            norm2.forward(w, h, silu: true, into: h)       // in place
            out = conv2.forward(w, h, ws)
        }
        if let shortcut {
            let s = shortcut.forward(w, x, ws)
            addInto(out.ptr, s.ptr, n: out.count)
        } else {
            addInto(out.ptr, x.ptr, n: out.count)
        }
        return out
    }
}

// MARK: - Mid-block attention

/// Single-head self-attention over all pixels with GroupNorm in front and the input added back:
/// x + to_out.0(softmax(q·kᵀ/√C)·v), q, k, v = to_q/to_k/to_v(GroupNorm(x)) over tokens (B, HW, C), all with bias.
/// Ref: diffusers UNetMidBlock2D's Attention(heads = C / attention_head_dim = 1, residual_connection=True,
/// rescale_output_factor=1, eps 1e-6, norm_num_groups = resnet_groups) run by AttnProcessor2_0.
struct MidAttention {
    let groupNorm: GroupNorm
    let toQ: Linear, toK: Linear, toV: Linear, toOut: Linear
    let channels: Int

    init(_ t: VAEWeights, _ key: String, channels: Int, groups: Int) {
        self.channels = channels
        groupNorm = GroupNorm(t, key + ".group_norm", channels: channels, groups: groups)
        toQ = Linear(t, key + ".to_q", inFeatures: channels, outFeatures: channels)
        toK = Linear(t, key + ".to_k", inFeatures: channels, outFeatures: channels)
        toV = Linear(t, key + ".to_v", inFeatures: channels, outFeatures: channels)
        toOut = Linear(t, key + ".to_out.0", inFeatures: channels, outFeatures: channels)
        t.declareDeprecatedAttention(key)
    }

    // (B, C, H, W) -> (B, C, H, W)
    func forward(_ w: UnsafeMutablePointer<Float>, _ x: FeatureMap, _ ws: Workspace) -> FeatureMap {
        let b = x.batch, c = channels, n = x.pixels
        let attended = Buffer(uninitialized: b * n * c)             // (B, HW, C)
        do {
            let q: Buffer, k: Buffer, v: Buffer                     // (B·HW, C) each
            do {
                let tokens = Buffer(uninitialized: b * n * c)       // (B, HW, C)
                do {
                    let normed = groupNorm.forward(w, x, silu: false)
                    channelsToTokens(out: tokens.ptr, inp: normed.ptr, B: b, C: c, HW: n)
                }
                q = toQ.forward(w, tokens.ptr, b * n)
                k = toK.forward(w, tokens.ptr, b * n)
                v = toV.forward(w, tokens.ptr, b * n)
            }
            let lse = Buffer(uninitialized: b * n)
            let scratch = ws.get(attentionWorkspaceSize(B: b, Nq: n, Nk: n, heads: 1, headDim: c))
            attentionForward(out: attended.ptr, lse: lse.ptr, q: q.ptr, k: k.ptr, v: v.ptr, B: b, Nq: n, Nk: n,
                             heads: 1, headDim: c, workspace: scratch)
        }
        let out = FeatureMap(batch: b, channels: c, height: x.height, width: x.width)
        do {
            let projected = toOut.forward(w, attended.ptr, b * n)    // (B, HW, C)
            tokensToChannels(out: out.ptr, inp: projected.ptr, B: b, C: c, HW: n)
        }
        addInto(out.ptr, x.ptr, n: out.count)                       // residual_connection; rescale_output_factor 1
        return out
    }
}

// MARK: - Mid block

/// resnet → attention (unless mid_block_add_attention is false) → resnet. Ref: diffusers UNetMidBlock2D.
struct MidBlock {
    let resnet0: ResnetBlock, attention: MidAttention?, resnet1: ResnetBlock

    init(_ t: VAEWeights, _ key: String, channels: Int, groups: Int, addAttention: Bool) {
        resnet0 = ResnetBlock(t, key + ".resnets.0", cin: channels, cout: channels, groups: groups)
        attention = addAttention ? MidAttention(t, key + ".attentions.0", channels: channels, groups: groups) : nil
        resnet1 = ResnetBlock(t, key + ".resnets.1", cin: channels, cout: channels, groups: groups)
    }

    func forward(_ w: UnsafeMutablePointer<Float>, _ x: FeatureMap, _ ws: Workspace) -> FeatureMap {
        var h = resnet0.forward(w, x, ws)
        if let attention { h = attention.forward(w, h, ws) }
        return resnet1.forward(w, h, ws)
    }
}

// MARK: - Encoder

/// conv_in → DownEncoderBlock2D × n (resnets, then a stride-2 conv padded right and bottom, except the last) →
/// mid block → GroupNorm → SiLU → conv_out to 2·latent_channels (mean and log-variance). Ref: diffusers Encoder.
struct Encoder {
    struct DownBlock { let resnets: [ResnetBlock]; let downsample: Conv2d? }
    let convIn: Conv2d, down: [DownBlock], mid: MidBlock, normOut: GroupNorm, convOut: Conv2d

    init(_ t: VAEWeights, _ key: String, _ spec: VAESpec) {
        let ch = spec.blockOutChannels, g = spec.groups
        convIn = Conv2d(t, key + ".conv_in", cin: spec.inChannels, cout: ch[0], kernel: 3)
        var blocks: [DownBlock] = []
        var cin = ch[0]
        for (i, cout) in ch.enumerated() {
            let k = key + ".down_blocks.\(i)"
            let resnets = (0..<spec.layersPerBlock).map {
                ResnetBlock(t, k + ".resnets.\($0)", cin: $0 == 0 ? cin : cout, cout: cout, groups: g)
            }
            // Downsample2D(padding=0): F.pad(x, (0, 1, 0, 1)), then a 3x3 stride-2 conv without padding.
            let downsample = i < ch.count - 1
                ? Conv2d(t, k + ".downsamplers.0.conv", cin: cout, cout: cout, kernel: 3, stride: 2,
                         padding: Conv2DPadding(top: 0, bottom: 1, left: 0, right: 1))
                : nil
            blocks.append(DownBlock(resnets: resnets, downsample: downsample))
            cin = cout
        }
        down = blocks
        mid = MidBlock(t, key + ".mid_block", channels: ch.last!, groups: g, addAttention: spec.midBlockAddAttention)
        normOut = GroupNorm(t, key + ".conv_norm_out", channels: ch.last!, groups: g)
        convOut = Conv2d(t, key + ".conv_out", cin: ch.last!, cout: 2 * spec.latentChannels, kernel: 3)
    }

    // (B, in, H, W) -> (B, 2·latent, H/f, W/f)
    func forward(_ w: UnsafeMutablePointer<Float>, _ x: FeatureMap, _ ws: Workspace) -> FeatureMap {
        var h = convIn.forward(w, x, ws)
        for block in down {
            for resnet in block.resnets { h = resnet.forward(w, h, ws) }
            if let downsample = block.downsample { h = downsample.forward(w, h, ws) }
        }
        h = mid.forward(w, h, ws)
        normOut.forward(w, h, silu: true, into: h)
        return convOut.forward(w, h, ws)
    }
}

// MARK: - Decoder

/// conv_in → mid block → UpDecoderBlock2D × n over the reversed channels (layers_per_block + 1 resnets, then
/// nearest ×2 and a 3x3 conv, except the last) → GroupNorm → SiLU → conv_out. Ref: diffusers Decoder.
struct Decoder {
    struct UpBlock { let resnets: [ResnetBlock]; let upsampleConv: Conv2d? }
    let convIn: Conv2d, mid: MidBlock, up: [UpBlock], normOut: GroupNorm, convOut: Conv2d

    init(_ t: VAEWeights, _ key: String, _ spec: VAESpec) {
        let reversed = Array(spec.blockOutChannels.reversed()), g = spec.groups
        convIn = Conv2d(t, key + ".conv_in", cin: spec.latentChannels, cout: reversed[0], kernel: 3)
        mid = MidBlock(t, key + ".mid_block", channels: reversed[0], groups: g, addAttention: spec.midBlockAddAttention)
        var blocks: [UpBlock] = []
        var prev = reversed[0]
        for (i, cout) in reversed.enumerated() {
            let k = key + ".up_blocks.\(i)"
            let resnets = (0..<(spec.layersPerBlock + 1)).map {
                ResnetBlock(t, k + ".resnets.\($0)", cin: $0 == 0 ? prev : cout, cout: cout, groups: g)
            }
            let upsampleConv = i < reversed.count - 1
                ? Conv2d(t, k + ".upsamplers.0.conv", cin: cout, cout: cout, kernel: 3) : nil
            blocks.append(UpBlock(resnets: resnets, upsampleConv: upsampleConv))
            prev = cout
        }
        up = blocks
        normOut = GroupNorm(t, key + ".conv_norm_out", channels: spec.blockOutChannels[0], groups: g)
        convOut = Conv2d(t, key + ".conv_out", cin: spec.blockOutChannels[0], cout: spec.outChannels, kernel: 3)
    }

    // (B, latent, h, w) -> (B, out, h·f, w·f)
    func forward(_ w: UnsafeMutablePointer<Float>, _ z: FeatureMap, _ ws: Workspace) -> FeatureMap {
        var h = convIn.forward(w, z, ws)
        h = mid.forward(w, h, ws)
        for block in up {
            for resnet in block.resnets { h = resnet.forward(w, h, ws) }
            if let conv = block.upsampleConv {
                // Upsample2D: F.interpolate(scale_factor=2, mode="nearest"), then the conv.
                let upsampled = FeatureMap(batch: h.batch, channels: h.channels, height: 2 * h.height, width: 2 * h.width)
                upsampleNearest2xForward(out: upsampled.ptr, inp: h.ptr, B: h.batch, C: h.channels, H: h.height, W: h.width)
                h = upsampled                                     // the small map is released here
                h = conv.forward(w, h, ws)
            }
        }
        normOut.forward(w, h, silu: true, into: h)
        return convOut.forward(w, h, ws)
    }
}
