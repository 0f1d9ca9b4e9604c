// CLIP's text transformer, forward only: what Stable Diffusion conditions its U-Net on.
// Ref: transformers 5.24 models/clip/modeling_clip.py, CLIPTextModel.forward → last_hidden_state:
//   x = token_embedding[ids] + position_embedding[0..<S]
//   per layer: x += out_proj(attention(layer_norm1(x)))      (causal: token i sees tokens ≤ i; heads of size D/H,
//              x += fc2(act(fc1(layer_norm2(x))))             scale 1/sqrt(D/H); act quick_gelu or gelu)
//   last_hidden_state = final_layer_norm(x)
// No padding mask: diffusers' SD pipelines call the text encoder with the ids alone (config.use_attention_mask unset),
// so padding tokens attend to everything before them, as here.
//
// Weights: text_encoder/model[.fp16].safetensors (any float dtype, converted to fp32). Checkpoints saved by
// transformers 4 (all Stable Diffusion releases) name the tensors `text_model.embeddings…`; transformers 5 saves
// them without the `text_model.` prefix; both load. `…embeddings.position_ids` (an int64 buffer in old files) is ignored.
import Foundation
import IO
import Layers
import NN
import Tensors

public enum TextModelError: Error, UserInputError, CustomStringConvertible, Equatable {
    case badConfig(path: String, key: String, detail: String)
    case badInput(String)

    public var description: String {
        switch self {
        case .badConfig(let p, let k, let d): return "\(p): key '\(k)': \(d)"
        case .badInput(let m): return m
        }
    }
}

public final class CLIPTextModel: @unchecked Sendable {
    public let config: CLIPTextConfig
    public let activation: CLIPActivation
    /// Every parameter, fp32, under its state-dict key without `text_model.`.
    public let weights: Weights
    let tokenEmbedding: Embedding, positionEmbedding: Embedding
    let layers: [CLIPEncoderLayer]
    let finalLayerNorm: LayerNorm
    private let workspace = Workspace()

    public var width: Int { config.hiddenSize }
    public var layerCount: Int { config.numHiddenLayers }
    public var heads: Int { config.numAttentionHeads }

    /// Builds the parameter table for a config (weights uninitialised until `load`); `source` names the config in errors.
    public init(config: CLIPTextConfig, source: String = "text encoder config") throws {
        func check(_ ok: Bool, _ key: String, _ detail: String) throws {
            if !ok { throw TextModelError.badConfig(path: source, key: key, detail: detail) }
        }
        try check(config.hiddenSize > 0, "hidden_size", "must be positive, got \(config.hiddenSize)")
        try check(config.numAttentionHeads > 0 && config.hiddenSize % config.numAttentionHeads == 0, "num_attention_heads",
                  "\(config.numAttentionHeads) does not divide hidden_size \(config.hiddenSize)")
        try check(config.intermediateSize > 0, "intermediate_size", "must be positive, got \(config.intermediateSize)")
        try check(config.numHiddenLayers > 0, "num_hidden_layers", "must be positive, got \(config.numHiddenLayers)")
        try check(config.vocabSize > 0, "vocab_size", "must be positive, got \(config.vocabSize)")
        try check(config.maxPositionEmbeddings > 0, "max_position_embeddings", "must be positive, got \(config.maxPositionEmbeddings)")
        try check(config.layerNormEps > 0, "layer_norm_eps", "must be positive, got \(config.layerNormEps)")
        // Bounds far above any CLIP text model, so that a damaged file cannot overflow the size arithmetic or ask
        // for terabytes (found by Tests/FuzzTests).
        for (key, value, limit) in [("hidden_size", config.hiddenSize, 1 << 16), ("intermediate_size", config.intermediateSize, 1 << 18),
                                    ("vocab_size", config.vocabSize, 1 << 24), ("max_position_embeddings", config.maxPositionEmbeddings, 1 << 16),
                                    ("num_hidden_layers", config.numHiddenLayers, 1 << 10)] {
            try check(value <= limit, key, "\(value) is larger than this implementation's limit \(limit)")
        }
        guard let act = CLIPActivation(rawValue: config.hiddenAct) else {
            throw TextModelError.badConfig(path: source, key: "hidden_act",
                                           detail: "'\(config.hiddenAct)' is not supported (quick_gelu or gelu)")
        }
        self.config = config
        activation = act
        let t = ParameterTable(), D = config.hiddenSize
        tokenEmbedding = Embedding(t, "embeddings.token_embedding", count: config.vocabSize, dim: D)
        positionEmbedding = Embedding(t, "embeddings.position_embedding", count: config.maxPositionEmbeddings, dim: D)
        layers = (0..<config.numHiddenLayers).map {
            CLIPEncoderLayer(t, "encoder.layers.\($0)", width: D, intermediate: config.intermediateSize,
                             heads: config.numAttentionHeads, eps: config.layerNormEps, activation: act, causal: true)
        }
        finalLayerNorm = LayerNorm(t, "final_layer_norm", channels: D, eps: config.layerNormEps)
        weights = Weights(table: t)
    }

    /// Loads a text encoder folder (the `text_encoder/` of a pipeline, or given directly): config.json and the
    /// safetensors weights of `variant` (e.g. "fp16": model.fp16.safetensors).
    public static func load(folder: ComponentFolder, variant: String? = nil) throws -> CLIPTextModel {
        let model = try CLIPTextModel(config: folder.config(CLIPTextConfig.self), source: folder.configPath)
        try model.load(files: folder.weightFiles(variant: variant))
        return model
    }

    /// transformers 4 checkpoints prefix every key with `text_model.`; `embeddings.position_ids` (an int64 buffer in
    /// old files) is not a parameter.
    static let keyRemap = KeyRemap { name in
        let key = name.hasPrefix("text_model.") ? String(name.dropFirst("text_model.".count)) : name
        return key == "embeddings.position_ids" ? nil : key
    }

    /// Fills every parameter from safetensors files; each must be present once with its shape.
    public func load(files: [String]) throws {
        try weights.load(files: files, model: "text encoder", remap: Self.keyRemap)
    }

    /// Random weights for tests and tools: N(0, 0.02) embeddings and biases, N(0, 1/fan_in) matrices, LayerNorm
    /// weights 1 + 0.1·N(0, 1).
    public func randomizeWeights(seed: UInt64) { weights.randomize(seed: seed) }

    // MARK: - Forward

    /// last_hidden_state (B, S, D) of token ids (B, S), S ≤ max_position_embeddings.
    /// `skipLastLayers` k runs only the first L − k layers before final_layer_norm (diffusers' `clip_skip`:
    /// `final_layer_norm(hidden_states[-(k + 1)])`); 0 is the plain last_hidden_state.
    public func forward(inputIds: [Int], batch B: Int, length S: Int, skipLastLayers: Int = 0) throws -> Buffer {
        let D = config.hiddenSize, N = B * S
        guard B > 0, S > 0, inputIds.count == N else {
            throw TextModelError.badInput("text encoder: \(inputIds.count) token ids for a batch of \(B) × \(S)")
        }
        guard S <= config.maxPositionEmbeddings else {
            throw TextModelError.badInput("text encoder: sequence length \(S) exceeds max_position_embeddings \(config.maxPositionEmbeddings)")
        }
        guard (0..<config.numHiddenLayers).contains(skipLastLayers) else {
            throw TextModelError.badInput("text encoder: clip skip \(skipLastLayers) must be in 0..<\(config.numHiddenLayers) (the layer count)")
        }
        if let bad = inputIds.firstIndex(where: { $0 < 0 || $0 >= config.vocabSize }) {
            throw TextModelError.badInput("text encoder: token id \(inputIds[bad]) (prompt \(bad / S), position \(bad % S)) is outside the vocabulary (vocab_size \(config.vocabSize))")
        }
        let p = Pass(weights: weights, workspace: workspace)
        // Embeddings: x (N, D) = token_embedding[id] + position_embedding[s].
        let x = Buffer(uninitialized: N * D)
        for n in 0..<N {
            let row = x.ptr + n * D, t = tokenEmbedding.row(p, inputIds[n]), ps = positionEmbedding.row(p, n % S)
            for j in 0..<D { row[j] = t[j] + ps[j] }
        }
        for layer in layers.prefix(config.numHiddenLayers - skipLastLayers) { layer.forward(p, x, B, S) }
        return finalLayerNorm.forward(p, x, N).0
    }
}
