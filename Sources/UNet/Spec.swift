// The shape of a UNet2DConditionModel, derived once from its diffusers config and validated: every block's channels,
// heads, layers and cross-attention width. A config this engine does not implement is refused here, naming the key.
// Ref: diffusers models/unets/unet_2d_condition.py (__init__), unet_2d_blocks.py (get_down_block / get_up_block).
import IO

public struct UNetConfigError: Error, UserInputError, CustomStringConvertible, Equatable {
    public let key: String
    public let message: String
    /// The config file, when known.
    public var path: String? = nil
    public var description: String { (path.map { "\($0): " } ?? "") + "unsupported U-Net config: '\(key)' \(message)" }
}

public struct UNetSpec: Sendable, Equatable {
    public struct DownBlock: Sendable, Equatable {
        public let inChannels, outChannels, layers, heads, crossAttentionDim, transformerLayers: Int
        public let hasAttention, addDownsample: Bool
    }
    public struct UpBlock: Sendable, Equatable {
        public let prevOutputChannels, outChannels, inputChannels, layers, heads, crossAttentionDim, transformerLayers: Int
        public let hasAttention, addUpsample: Bool
        /// Channels of the skip each resnet pops: the last pops the block's input width, the others its output width.
        public func skipChannels(_ j: Int) -> Int { j == layers - 1 ? inputChannels : outChannels }
        public func resnetIn(_ j: Int) -> Int { (j == 0 ? prevOutputChannels : outChannels) + skipChannels(j) }
    }

    public let config: UNet2DConditionConfig
    public let inChannels, outChannels, groups: Int
    public let normEps: Double
    public let timeProjDim, timeEmbedDim: Int
    public let down: [DownBlock]
    public let midHeads, midCrossAttentionDim, midTransformerLayers: Int
    public let up: [UpBlock]
    public let useLinearProjection: Bool
    /// The width of `encoder_hidden_states` every cross attention reads.
    public let crossAttentionDim: Int

    /// - Parameter source: the config file, named in errors.
    public init(_ c: UNet2DConditionConfig, source: String? = nil) throws {
        func refuse(_ key: String, _ why: String) -> UNetConfigError { UNetConfigError(key: key, message: why, path: source) }
        let n = c.blockOutChannels.count
        guard n >= 1, c.blockOutChannels.allSatisfy({ $0 > 0 }) else { throw refuse("block_out_channels", "must be a non-empty list of positive ints") }
        guard c.downBlockTypes.count == n else { throw refuse("down_block_types", "has \(c.downBlockTypes.count) entries, block_out_channels \(n)") }
        guard c.upBlockTypes.count == n else { throw refuse("up_block_types", "has \(c.upBlockTypes.count) entries, block_out_channels \(n)") }
        for t in c.downBlockTypes where !["CrossAttnDownBlock2D", "DownBlock2D"].contains(t) {
            throw refuse("down_block_types", "contains \(t); supported: CrossAttnDownBlock2D, DownBlock2D")
        }
        for t in c.upBlockTypes where !["CrossAttnUpBlock2D", "UpBlock2D"].contains(t) {
            throw refuse("up_block_types", "contains \(t); supported: CrossAttnUpBlock2D, UpBlock2D")
        }
        guard c.midBlockType == "UNetMidBlock2DCrossAttn" else {
            throw refuse("mid_block_type", "is \(c.midBlockType ?? "null"); supported: UNetMidBlock2DCrossAttn")
        }
        guard c.actFn == "silu" else { throw refuse("act_fn", "is \(c.actFn); supported: silu") }
        guard let groups = c.normNumGroups else { throw refuse("norm_num_groups", "is null; GroupNorm groups are required") }
        guard groups >= 1 else { throw refuse("norm_num_groups", "must be positive, is \(groups)") }   // (a % 0 traps; Tests/FuzzTests)
        guard c.classEmbedType == nil, c.numClassEmbeds == nil else { throw refuse("class_embed_type", "class embeddings are not supported") }
        guard c.additionEmbedType == nil else { throw refuse("addition_embed_type", "is \(c.additionEmbedType!); not supported (SDXL-style conditioning)") }
        guard c.encoderHidDim == nil else { throw refuse("encoder_hid_dim", "is set; not supported") }
        guard c.timeCondProjDim == nil else { throw refuse("time_cond_proj_dim", "is set; not supported (LCM)") }
        guard c.timeEmbeddingType == "positional" else { throw refuse("time_embedding_type", "is \(c.timeEmbeddingType); supported: positional") }
        guard c.timeEmbeddingDim == nil else { throw refuse("time_embedding_dim", "is set; not supported") }
        guard c.resnetTimeScaleShift == "default" else { throw refuse("resnet_time_scale_shift", "is \(c.resnetTimeScaleShift); supported: default") }
        guard !c.dualCrossAttention else { throw refuse("dual_cross_attention", "is true; not supported") }
        guard !c.onlyCrossAttention.values.contains(true) else { throw refuse("only_cross_attention", "is true; not supported") }
        guard c.convInKernel == 3, c.convOutKernel == 3 else { throw refuse("conv_in_kernel", "must be 3 (conv_in_kernel and conv_out_kernel)") }
        guard !c.centerInputSample else { throw refuse("center_input_sample", "is true; not supported") }
        guard c.downsamplePadding == 1 else { throw refuse("downsample_padding", "is \(c.downsamplePadding); supported: 1") }
        guard c.midBlockScaleFactor == 1 else { throw refuse("mid_block_scale_factor", "is \(c.midBlockScaleFactor); supported: 1") }
        guard c.attentionType == "default" else { throw refuse("attention_type", "is \(c.attentionType); supported: default") }
        guard c.blockOutChannels.allSatisfy({ $0 % groups == 0 }) else {
            throw refuse("norm_num_groups", "(\(groups)) does not divide every block_out_channels entry \(c.blockOutChannels)")
        }
        guard let layers = c.layersPerBlock.perBlock(n) else { throw refuse("layers_per_block", "needs one entry per block (\(n))") }
        guard let heads = c.headsPerBlock else {
            throw refuse(c.numAttentionHeads == nil ? "attention_head_dim" : "num_attention_heads", "needs one entry per block (\(n))")
        }
        guard let cross = c.crossAttentionDim.perBlock(n) else { throw refuse("cross_attention_dim", "needs one entry per block (\(n))") }
        guard Set(cross).count == 1 else { throw refuse("cross_attention_dim", "differs between blocks; one encoder width is supported") }
        guard let tlayers = c.transformerLayersPerBlock.perBlock(n) else {
            throw refuse("transformer_layers_per_block", "needs one entry per block (\(n))")
        }
        for (i, (ch, h)) in zip(c.blockOutChannels, heads).enumerated() where h <= 0 || ch % h != 0 {
            throw refuse(c.numAttentionHeads == nil ? "attention_head_dim" : "num_attention_heads",
                         "block \(i): \(h) heads do not divide \(ch) channels")
        }
        guard c.inChannels > 0, c.outChannels > 0 else { throw refuse("in_channels", "and out_channels must be positive") }
        // Bounds far above any U-Net, so that a damaged file cannot overflow the shape arithmetic (Tests/FuzzTests).
        let limits: [(String, [Int], Int)] = [
            ("block_out_channels", c.blockOutChannels, 1 << 16), ("layers_per_block", layers, 1 << 8),
            ("transformer_layers_per_block", tlayers, 1 << 8), ("cross_attention_dim", cross, 1 << 16),
            ("in_channels", [c.inChannels], 1 << 12), ("out_channels", [c.outChannels], 1 << 12), ("norm_num_groups", [groups], 1 << 12),
        ]
        for (key, values, limit) in limits where !values.allSatisfy({ $0 >= 1 && $0 <= limit }) {
            throw refuse(key, "\(values) is outside 1...\(limit)")
        }

        config = c
        inChannels = c.inChannels
        outChannels = c.outChannels
        self.groups = groups
        normEps = c.normEps
        timeProjDim = c.blockOutChannels[0]
        timeEmbedDim = c.blockOutChannels[0] * 4
        useLinearProjection = c.useLinearProjection
        crossAttentionDim = cross[0]
        var downs: [DownBlock] = []
        var out = c.blockOutChannels[0]
        for i in 0..<n {
            let inC = out
            out = c.blockOutChannels[i]
            downs.append(DownBlock(inChannels: inC, outChannels: out, layers: layers[i], heads: heads[i],
                                   crossAttentionDim: cross[i], transformerLayers: tlayers[i],
                                   hasAttention: c.downBlockTypes[i] == "CrossAttnDownBlock2D", addDownsample: i < n - 1))
        }
        down = downs
        midHeads = heads[n - 1]
        midCrossAttentionDim = cross[n - 1]
        midTransformerLayers = tlayers[n - 1]
        let rch = Array(c.blockOutChannels.reversed()), rheads = Array(heads.reversed()), rlayers = Array(layers.reversed())
        let rcross = Array(cross.reversed()), rtl = Array(tlayers.reversed())
        var ups: [UpBlock] = []
        var prev = rch[0]
        for i in 0..<n {
            let outC = rch[i]
            let inputC = rch[min(i + 1, n - 1)]
            ups.append(UpBlock(prevOutputChannels: prev, outChannels: outC, inputChannels: inputC, layers: rlayers[i] + 1,
                               heads: rheads[i], crossAttentionDim: rcross[i], transformerLayers: rtl[i],
                               hasAttention: c.upBlockTypes[i] == "CrossAttnUpBlock2D", addUpsample: i < n - 1))
            prev = outC
        }
        up = ups
    }

    /// Any positive latent size (inference: upsamplers resize to the skips' sizes, as diffusers).
    public func checkAnyLatentSize(height: Int, width: Int) throws {
        guard height > 0, width > 0 else {
            throw UNetConfigError(key: "sample_size", message: "latent \(height)x\(width) is empty")
        }
    }

    /// Training latent sizes must halve exactly at every downsampler (diffusers would interpolate; training refuses).
    public func checkLatentSize(height: Int, width: Int) throws {
        let f = 1 << (down.count - 1)
        guard height > 0, width > 0, height % f == 0, width % f == 0 else {
            throw UNetConfigError(key: "sample_size", message: "latent \(height)x\(width) is not a multiple of \(f) (2^number of downsamplers)")
        }
    }
}
