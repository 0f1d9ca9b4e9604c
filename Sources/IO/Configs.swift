// Codable configuration structs for the files of a diffusers pipeline folder, with the diffusers / transformers JSON
// key names as CodingKeys. Decoding is as lenient as diffusers is: unknown keys are ignored, a missing key takes the
// default of the Python class's __init__, and keys that may be an int or a list (attention_head_dim, …) accept both.
// Whether a config is *supported* by an engine is the engine's question (e.g. UNet refuses class embeddings).
import Foundation

// MARK: - Lenient scalar-or-list values

/// One value, or one value per block: diffusers' `attention_head_dim`, `transformer_layers_per_block`, … (Int) and
/// `only_cross_attention` (Bool).
public enum OneOrList<Value: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    case one(Value)
    case list([Value])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(Value.self) { self = .one(v) } else { self = .list(try c.decode([Value].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self { case .one(let v): try c.encode(v); case .list(let l): try c.encode(l) }
    }

    /// One value per block; a list of the wrong length is nil (the caller names the key in its error).
    public func perBlock(_ count: Int) -> [Value]? {
        switch self {
        case .one(let v): return Array(repeating: v, count: count)
        case .list(let l): return l.count == count ? l : nil
        }
    }

    public var values: [Value] { switch self { case .one(let v): [v]; case .list(let l): l } }
}
public typealias IntOrList = OneOrList<Int>

private extension KeyedDecodingContainer {
    func value<T: Decodable>(_ key: Key, _ fallback: T) throws -> T { try decodeIfPresent(T.self, forKey: key) ?? fallback }
}

// MARK: - UNet2DConditionModel

/// diffusers `UNet2DConditionModel` config (`unet/config.json`). Ref: diffusers models/unets/unet_2d_condition.py.
public struct UNet2DConditionConfig: Codable, Sendable, Equatable {
    public var sampleSize: Int?
    public var inChannels = 4
    public var outChannels = 4
    public var centerInputSample = false
    public var flipSinToCos = true
    public var freqShift = 0
    public var downBlockTypes = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    public var midBlockType: String? = "UNetMidBlock2DCrossAttn"
    public var upBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    public var onlyCrossAttention: OneOrList<Bool> = .one(false)
    public var blockOutChannels = [320, 640, 1280, 1280]
    public var layersPerBlock: IntOrList = .one(2)
    public var downsamplePadding = 1
    public var midBlockScaleFactor = 1.0
    public var actFn = "silu"
    public var normNumGroups: Int? = 32
    public var normEps = 1e-5
    public var crossAttentionDim: IntOrList = .one(1280)
    public var transformerLayersPerBlock: IntOrList = .one(1)
    public var encoderHidDim: Int?
    public var attentionHeadDim: IntOrList = .one(8)
    public var numAttentionHeads: IntOrList?
    public var dualCrossAttention = false
    public var useLinearProjection = false
    public var classEmbedType: String?
    public var additionEmbedType: String?
    public var numClassEmbeds: Int?
    public var upcastAttention = false
    public var resnetTimeScaleShift = "default"
    public var timeEmbeddingType = "positional"
    public var timeEmbeddingDim: Int?
    public var timeCondProjDim: Int?
    public var convInKernel = 3
    public var convOutKernel = 3
    public var attentionType = "default"

    enum CodingKeys: String, CodingKey {
        case sampleSize = "sample_size", inChannels = "in_channels", outChannels = "out_channels"
        case centerInputSample = "center_input_sample", flipSinToCos = "flip_sin_to_cos", freqShift = "freq_shift"
        case downBlockTypes = "down_block_types", midBlockType = "mid_block_type", upBlockTypes = "up_block_types"
        case onlyCrossAttention = "only_cross_attention", blockOutChannels = "block_out_channels"
        case layersPerBlock = "layers_per_block", downsamplePadding = "downsample_padding"
        case midBlockScaleFactor = "mid_block_scale_factor", actFn = "act_fn", normNumGroups = "norm_num_groups"
        case normEps = "norm_eps", crossAttentionDim = "cross_attention_dim"
        case transformerLayersPerBlock = "transformer_layers_per_block", encoderHidDim = "encoder_hid_dim"
        case attentionHeadDim = "attention_head_dim", numAttentionHeads = "num_attention_heads"
        case dualCrossAttention = "dual_cross_attention", useLinearProjection = "use_linear_projection"
        case classEmbedType = "class_embed_type", additionEmbedType = "addition_embed_type"
        case numClassEmbeds = "num_class_embeds", upcastAttention = "upcast_attention"
        case resnetTimeScaleShift = "resnet_time_scale_shift", timeEmbeddingType = "time_embedding_type"
        case timeEmbeddingDim = "time_embedding_dim", timeCondProjDim = "time_cond_proj_dim"
        case convInKernel = "conv_in_kernel", convOutKernel = "conv_out_kernel", attentionType = "attention_type"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = UNet2DConditionConfig()
        sampleSize = try c.decodeIfPresent(Int.self, forKey: .sampleSize)
        inChannels = try c.value(.inChannels, d.inChannels)
        outChannels = try c.value(.outChannels, d.outChannels)
        centerInputSample = try c.value(.centerInputSample, d.centerInputSample)
        flipSinToCos = try c.value(.flipSinToCos, d.flipSinToCos)
        freqShift = try c.value(.freqShift, d.freqShift)
        downBlockTypes = try c.value(.downBlockTypes, d.downBlockTypes)
        midBlockType = c.contains(.midBlockType) ? try c.decodeIfPresent(String.self, forKey: .midBlockType) : d.midBlockType
        upBlockTypes = try c.value(.upBlockTypes, d.upBlockTypes)
        onlyCrossAttention = try c.value(.onlyCrossAttention, d.onlyCrossAttention)
        blockOutChannels = try c.value(.blockOutChannels, d.blockOutChannels)
        layersPerBlock = try c.value(.layersPerBlock, d.layersPerBlock)
        downsamplePadding = try c.value(.downsamplePadding, d.downsamplePadding)
        midBlockScaleFactor = try c.value(.midBlockScaleFactor, d.midBlockScaleFactor)
        actFn = try c.value(.actFn, d.actFn)
        normNumGroups = c.contains(.normNumGroups) ? try c.decodeIfPresent(Int.self, forKey: .normNumGroups) : d.normNumGroups
        normEps = try c.value(.normEps, d.normEps)
        crossAttentionDim = try c.value(.crossAttentionDim, d.crossAttentionDim)
        transformerLayersPerBlock = try c.value(.transformerLayersPerBlock, d.transformerLayersPerBlock)
        encoderHidDim = try c.decodeIfPresent(Int.self, forKey: .encoderHidDim)
        attentionHeadDim = try c.value(.attentionHeadDim, d.attentionHeadDim)
        numAttentionHeads = try c.decodeIfPresent(IntOrList.self, forKey: .numAttentionHeads)
        dualCrossAttention = try c.value(.dualCrossAttention, d.dualCrossAttention)
        useLinearProjection = try c.value(.useLinearProjection, d.useLinearProjection)
        classEmbedType = try c.decodeIfPresent(String.self, forKey: .classEmbedType)
        additionEmbedType = try c.decodeIfPresent(String.self, forKey: .additionEmbedType)
        numClassEmbeds = try c.decodeIfPresent(Int.self, forKey: .numClassEmbeds)
        upcastAttention = try c.value(.upcastAttention, d.upcastAttention)
        resnetTimeScaleShift = try c.value(.resnetTimeScaleShift, d.resnetTimeScaleShift)
        timeEmbeddingType = try c.value(.timeEmbeddingType, d.timeEmbeddingType)
        timeEmbeddingDim = try c.decodeIfPresent(Int.self, forKey: .timeEmbeddingDim)
        timeCondProjDim = try c.decodeIfPresent(Int.self, forKey: .timeCondProjDim)
        convInKernel = try c.value(.convInKernel, d.convInKernel)
        convOutKernel = try c.value(.convOutKernel, d.convOutKernel)
        attentionType = try c.value(.attentionType, d.attentionType)
    }

    /// Attention heads per block. diffusers: `num_attention_heads = num_attention_heads or attention_head_dim`, so
    /// SD 1.x's `attention_head_dim: 8` means 8 heads (the name is a historical misnomer there).
    public var headsPerBlock: [Int]? { (numAttentionHeads ?? attentionHeadDim).perBlock(blockOutChannels.count) }
}

// MARK: - AutoencoderKL

/// diffusers `AutoencoderKL` config (`vae/config.json`). Ref: diffusers models/autoencoders/autoencoder_kl.py.
public struct AutoencoderKLConfig: Codable, Sendable, Equatable {
    public var inChannels = 3
    public var outChannels = 3
    public var downBlockTypes = ["DownEncoderBlock2D"]
    public var upBlockTypes = ["UpDecoderBlock2D"]
    public var blockOutChannels = [64]
    public var layersPerBlock = 1
    public var actFn = "silu"
    public var latentChannels = 4
    public var normNumGroups = 32
    public var sampleSize = 32
    public var scalingFactor = 0.18215
    public var shiftFactor: Double?
    public var forceUpcast = true
    public var useQuantConv = true
    public var usePostQuantConv = true
    public var midBlockAddAttention = true

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", outChannels = "out_channels", downBlockTypes = "down_block_types"
        case upBlockTypes = "up_block_types", blockOutChannels = "block_out_channels", layersPerBlock = "layers_per_block"
        case actFn = "act_fn", latentChannels = "latent_channels", normNumGroups = "norm_num_groups"
        case sampleSize = "sample_size", scalingFactor = "scaling_factor", shiftFactor = "shift_factor"
        case forceUpcast = "force_upcast", useQuantConv = "use_quant_conv", usePostQuantConv = "use_post_quant_conv"
        case midBlockAddAttention = "mid_block_add_attention"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = AutoencoderKLConfig()
        inChannels = try c.value(.inChannels, d.inChannels)
        outChannels = try c.value(.outChannels, d.outChannels)
        downBlockTypes = try c.value(.downBlockTypes, d.downBlockTypes)
        upBlockTypes = try c.value(.upBlockTypes, d.upBlockTypes)
        blockOutChannels = try c.value(.blockOutChannels, d.blockOutChannels)
        layersPerBlock = try c.value(.layersPerBlock, d.layersPerBlock)
        actFn = try c.value(.actFn, d.actFn)
        latentChannels = try c.value(.latentChannels, d.latentChannels)
        normNumGroups = try c.value(.normNumGroups, d.normNumGroups)
        sampleSize = try c.value(.sampleSize, d.sampleSize)
        scalingFactor = try c.value(.scalingFactor, d.scalingFactor)
        shiftFactor = try c.decodeIfPresent(Double.self, forKey: .shiftFactor)
        forceUpcast = try c.value(.forceUpcast, d.forceUpcast)
        useQuantConv = try c.value(.useQuantConv, d.useQuantConv)
        usePostQuantConv = try c.value(.usePostQuantConv, d.usePostQuantConv)
        midBlockAddAttention = try c.value(.midBlockAddAttention, d.midBlockAddAttention)
    }
}

// MARK: - CLIPTextModel

/// transformers `CLIPTextConfig` (`text_encoder/config.json`). Ref: transformers models/clip/configuration_clip.py.
public struct CLIPTextConfig: Codable, Sendable, Equatable {
    public var vocabSize = 49408
    public var hiddenSize = 512
    public var intermediateSize = 2048
    public var projectionDim = 512
    public var numHiddenLayers = 12
    public var numAttentionHeads = 8
    public var maxPositionEmbeddings = 77
    public var hiddenAct = "quick_gelu"
    public var layerNormEps = 1e-5
    public var padTokenId = 1
    public var bosTokenId = 49406
    public var eosTokenId = 49407

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case projectionDim = "projection_dim", numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads", maxPositionEmbeddings = "max_position_embeddings"
        case hiddenAct = "hidden_act", layerNormEps = "layer_norm_eps", padTokenId = "pad_token_id"
        case bosTokenId = "bos_token_id", eosTokenId = "eos_token_id"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = CLIPTextConfig()
        vocabSize = try c.value(.vocabSize, d.vocabSize)
        hiddenSize = try c.value(.hiddenSize, d.hiddenSize)
        intermediateSize = try c.value(.intermediateSize, d.intermediateSize)
        projectionDim = try c.value(.projectionDim, d.projectionDim)
        numHiddenLayers = try c.value(.numHiddenLayers, d.numHiddenLayers)
        numAttentionHeads = try c.value(.numAttentionHeads, d.numAttentionHeads)
        maxPositionEmbeddings = try c.value(.maxPositionEmbeddings, d.maxPositionEmbeddings)
        hiddenAct = try c.value(.hiddenAct, d.hiddenAct)
        layerNormEps = try c.value(.layerNormEps, d.layerNormEps)
        padTokenId = try c.value(.padTokenId, d.padTokenId)
        bosTokenId = try c.value(.bosTokenId, d.bosTokenId)
        eosTokenId = try c.value(.eosTokenId, d.eosTokenId)
    }
}

// MARK: - Schedulers

/// The fields shared by diffusers' scheduler configs (`scheduler/scheduler_config.json`); the class name says which
/// scheduler the pipeline was saved with (SD 1.5: PNDMScheduler), the numbers define the noise schedule any
/// scheduler can reuse. Ref: diffusers schedulers/scheduling_ddpm.py, scheduling_dpmsolver_multistep.py.
public struct SchedulerConfig: Codable, Sendable, Equatable {
    public var className: String?
    public var numTrainTimesteps = 1000
    public var betaStart = 0.0001
    public var betaEnd = 0.02
    public var betaSchedule = "linear"
    public var trainedBetas: [Double]?
    public var predictionType = "epsilon"
    public var clipSample = true
    public var clipSampleRange = 1.0
    public var setAlphaToOne = true
    public var stepsOffset = 0
    public var timestepSpacing = "leading"
    public var rescaleBetasZeroSnr = false
    public var thresholding = false
    public var algorithmType: String?
    public var solverOrder: Int?
    public var lowerOrderFinal: Bool?

    enum CodingKeys: String, CodingKey {
        case className = "_class_name", numTrainTimesteps = "num_train_timesteps", betaStart = "beta_start"
        case betaEnd = "beta_end", betaSchedule = "beta_schedule", trainedBetas = "trained_betas"
        case predictionType = "prediction_type", clipSample = "clip_sample", clipSampleRange = "clip_sample_range"
        case setAlphaToOne = "set_alpha_to_one", stepsOffset = "steps_offset", timestepSpacing = "timestep_spacing"
        case rescaleBetasZeroSnr = "rescale_betas_zero_snr", thresholding, algorithmType = "algorithm_type"
        case solverOrder = "solver_order", lowerOrderFinal = "lower_order_final"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = SchedulerConfig()
        className = try c.decodeIfPresent(String.self, forKey: .className)
        numTrainTimesteps = try c.value(.numTrainTimesteps, d.numTrainTimesteps)
        betaStart = try c.value(.betaStart, d.betaStart)
        betaEnd = try c.value(.betaEnd, d.betaEnd)
        betaSchedule = try c.value(.betaSchedule, d.betaSchedule)
        trainedBetas = try c.decodeIfPresent([Double].self, forKey: .trainedBetas)
        predictionType = try c.value(.predictionType, d.predictionType)
        clipSample = try c.value(.clipSample, d.clipSample)
        clipSampleRange = try c.value(.clipSampleRange, d.clipSampleRange)
        setAlphaToOne = try c.value(.setAlphaToOne, d.setAlphaToOne)
        stepsOffset = try c.value(.stepsOffset, d.stepsOffset)
        timestepSpacing = try c.value(.timestepSpacing, d.timestepSpacing)
        rescaleBetasZeroSnr = try c.value(.rescaleBetasZeroSnr, d.rescaleBetasZeroSnr)
        thresholding = try c.value(.thresholding, d.thresholding)
        algorithmType = try c.decodeIfPresent(String.self, forKey: .algorithmType)
        solverOrder = try c.decodeIfPresent(Int.self, forKey: .solverOrder)
        lowerOrderFinal = try c.decodeIfPresent(Bool.self, forKey: .lowerOrderFinal)
    }
}

// MARK: - Tokenizer

/// transformers `tokenizer_config.json` of a CLIPTokenizer; special tokens may be strings or `{"content": …}` objects.
public struct TokenizerConfig: Codable, Sendable, Equatable {
    public var modelMaxLength = 77
    public var doLowerCase = true
    public var bosToken = "<|startoftext|>"
    public var eosToken = "<|endoftext|>"
    public var unkToken = "<|endoftext|>"
    public var padToken = "<|endoftext|>"

    enum CodingKeys: String, CodingKey {
        case modelMaxLength = "model_max_length", doLowerCase = "do_lower_case", bosToken = "bos_token"
        case eosToken = "eos_token", unkToken = "unk_token", padToken = "pad_token"
    }

    private struct AddedToken: Decodable { let content: String }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = TokenizerConfig()
        func token(_ k: CodingKeys, _ fallback: String) throws -> String {
            guard c.contains(k), try !c.decodeNil(forKey: k) else { return fallback }
            if let s = try? c.decode(String.self, forKey: k) { return s }
            return try c.decode(AddedToken.self, forKey: k).content
        }
        // Very large sentinel values (1e30) stand for "no limit" in transformers.
        if let m = try? c.decodeIfPresent(Double.self, forKey: .modelMaxLength) {
            // (Found by Tests/FuzzTests: Int(NaN) traps.)
            guard m >= 1 else {
                throw DecodingError.dataCorruptedError(forKey: .modelMaxLength, in: c, debugDescription: "must be a positive number, is \(m)")
            }
            modelMaxLength = m > 1e9 ? Int.max : Int(m)
        }
        doLowerCase = try c.value(.doLowerCase, d.doLowerCase)
        bosToken = try token(.bosToken, d.bosToken)
        eosToken = try token(.eosToken, d.eosToken)
        unkToken = try token(.unkToken, d.unkToken)
        padToken = try token(.padToken, d.padToken)
    }
}
