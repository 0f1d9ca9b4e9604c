// CLIP (vision ViT + text transformer + projections + logit_scale), forward only, for preference scorers: PickScore
// (a transformers CLIPModel), CLIP score, HPS v2 (an open_clip ViT-H-14 fine-tune) and the LAION aesthetic
// predictor's image embeddings.
// Ref: transformers models/clip/modeling_clip.py (CLIPModel.get_image_features / get_text_features, CLIPVisionTransformer):
//   vision: x = [class_embedding; patch_embedding(pixels)] + position_embedding   (B, 1 + (S/p)², D)
//           x = pre_layrnorm(x); the encoder layers (full attention); pooled = post_layernorm(x[:, 0])
//           image_embeds = visual_projection(pooled)                                        (no bias)
//   text:   last_hidden_state of CLIPTextModel; pooled = the row of the first EOS token (eos_token_id 2, legacy
//           configs: the row of the largest id, as transformers does); text_embeds = text_projection(pooled)
//   logits_per_image = exp(logit_scale) · cos(image_embeds, text_embeds)
// Weights: the folder's model.safetensors with transformers' keys (`text_model.…`, `vision_model.…`,
// `visual_projection.weight`, `text_projection.weight`, `logit_scale`), or an open_clip state dict (`visual.…`,
// `transformer.…`, …) remapped by `OpenCLIPKeys` (its in_proj split into q/k/v, its projections transposed).
import Foundation
import IO
import Layers
import NN
import Tensors
import TextEncoder

/// transformers `CLIPVisionConfig`. Ref: transformers models/clip/configuration_clip.py.
public struct CLIPVisionConfig: Codable, Sendable, Equatable {
    public var hiddenSize = 768, intermediateSize = 3072, numHiddenLayers = 12, numAttentionHeads = 12
    public var numChannels = 3, imageSize = 224, patchSize = 32
    public var hiddenAct = "quick_gelu"
    public var layerNormEps = 1e-5

    enum CodingKeys: String, CodingKey {
        case hiddenSize = "hidden_size", intermediateSize = "intermediate_size", numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads", numChannels = "num_channels", imageSize = "image_size"
        case patchSize = "patch_size", hiddenAct = "hidden_act", layerNormEps = "layer_norm_eps"
    }
    public init() {}
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self), d = CLIPVisionConfig()
        hiddenSize = try c.decodeIfPresent(Int.self, forKey: .hiddenSize) ?? d.hiddenSize
        intermediateSize = try c.decodeIfPresent(Int.self, forKey: .intermediateSize) ?? d.intermediateSize
        numHiddenLayers = try c.decodeIfPresent(Int.self, forKey: .numHiddenLayers) ?? d.numHiddenLayers
        numAttentionHeads = try c.decodeIfPresent(Int.self, forKey: .numAttentionHeads) ?? d.numAttentionHeads
        numChannels = try c.decodeIfPresent(Int.self, forKey: .numChannels) ?? d.numChannels
        imageSize = try c.decodeIfPresent(Int.self, forKey: .imageSize) ?? d.imageSize
        patchSize = try c.decodeIfPresent(Int.self, forKey: .patchSize) ?? d.patchSize
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct) ?? d.hiddenAct
        layerNormEps = try c.decodeIfPresent(Double.self, forKey: .layerNormEps) ?? d.layerNormEps
    }
}

/// transformers `CLIPConfig` (config.json of a CLIPModel folder).
public struct CLIPConfig: Codable, Sendable {
    public var textConfig = CLIPTextConfig()
    public var visionConfig = CLIPVisionConfig()
    public var projectionDim = 512
    enum CodingKeys: String, CodingKey { case textConfig = "text_config", visionConfig = "vision_config", projectionDim = "projection_dim" }
    public init() {}
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        textConfig = try c.decodeIfPresent(CLIPTextConfig.self, forKey: .textConfig) ?? CLIPTextConfig()
        visionConfig = try c.decodeIfPresent(CLIPVisionConfig.self, forKey: .visionConfig) ?? CLIPVisionConfig()
        projectionDim = try c.decodeIfPresent(Int.self, forKey: .projectionDim) ?? 512
    }
}

public struct CLIPModelError: Error, UserInputError, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

// MARK: - CLIPModel

/// CLIPModel on the NN framework: the vision tower and the projections are modules declared here under transformers'
/// keys; the text tower is TextEncoder's CLIPTextModel (its own parameter table, keys without `text_model.`).
public final class CLIPModel: @unchecked Sendable {
    public let config: CLIPConfig
    public let text: CLIPTextModel
    /// The vision tower, visual_projection, text_projection and logit_scale.
    public let weights: Weights
    let classEmbedding: Int
    let patchEmbedding: Conv2d
    let positionEmbedding: Embedding
    let preLayerNorm: LayerNorm
    let layers: [CLIPEncoderLayer]
    let postLayerNorm: LayerNorm
    let visualProjection: Linear, textProjection: Linear
    let logitScaleOffset: Int
    private let workspace = Workspace()
    /// "transformers" or "open_clip": the key layout the weights were loaded from.
    public private(set) var layout = "transformers"

    /// exp of this scales the cosine (stored as its log, as both layouts do).
    public var logitScale: Float { weights.storage.ptr[logitScaleOffset] }
    public var projectionDim: Int { config.projectionDim }

    public init(config: CLIPConfig, source: String) throws {
        let c = config.visionConfig
        guard c.hiddenSize > 0, c.numAttentionHeads > 0, c.hiddenSize % c.numAttentionHeads == 0, c.patchSize > 0,
              c.imageSize % c.patchSize == 0, c.numHiddenLayers > 0, c.numChannels == 3, config.projectionDim > 0 else {
            throw CLIPModelError("\(source): vision_config: hidden_size \(c.hiddenSize), heads \(c.numAttentionHeads), image_size "
                                 + "\(c.imageSize), patch_size \(c.patchSize), channels \(c.numChannels) do not make a ViT")
        }
        guard let act = CLIPActivation(rawValue: c.hiddenAct) else {
            throw CLIPModelError("\(source): vision_config.hidden_act '\(c.hiddenAct)' is not supported (quick_gelu or gelu)")
        }
        self.config = config
        text = try CLIPTextModel(config: config.textConfig, source: source + " (text_config)")
        let t = ParameterTable(), D = c.hiddenSize, g = c.imageSize / c.patchSize, v = "vision_model."
        classEmbedding = t.add(v + "embeddings.class_embedding", [D])
        patchEmbedding = Conv2d(t, v + "embeddings.patch_embedding", cin: 3, cout: D, kernel: c.patchSize, stride: c.patchSize,
                                padding: Conv2DPadding(0), bias: false)
        positionEmbedding = Embedding(t, v + "embeddings.position_embedding", count: g * g + 1, dim: D)
        preLayerNorm = LayerNorm(t, v + "pre_layrnorm", channels: D, eps: c.layerNormEps)
        layers = (0..<c.numHiddenLayers).map {
            CLIPEncoderLayer(t, v + "encoder.layers.\($0)", width: D, intermediate: c.intermediateSize, heads: c.numAttentionHeads,
                             eps: c.layerNormEps, activation: act, causal: false)
        }
        postLayerNorm = LayerNorm(t, v + "post_layernorm", channels: D, eps: c.layerNormEps)
        visualProjection = Linear(t, "visual_projection", inFeatures: D, outFeatures: config.projectionDim, bias: false)
        textProjection = Linear(t, "text_projection", inFeatures: config.textConfig.hiddenSize, outFeatures: config.projectionDim, bias: false)
        logitScaleOffset = t.add("logit_scale", [1])
        weights = Weights(table: t)
    }

    /// config.json of `folder`, then the weights: `weights` (a safetensors file) or the folder's model.safetensors,
    /// or its only .safetensors file.
    public static func load(folder: String, weights: String? = nil) throws -> CLIPModel {
        let configPath = (folder as NSString).appendingPathComponent("config.json")
        let model = try CLIPModel(config: decodeConfig(CLIPConfig.self, from: configPath), source: configPath)
        try model.load(files: weightFiles(folder: folder, weights: weights))
        return model
    }

    static func weightFiles(folder: String, weights: String?) throws -> [String] {
        if let weights { return [weights] }
        do { return try ComponentFolder(path: folder).weightFiles() } catch {
            let all = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasSuffix(".safetensors") }
            guard all.count == 1 else { throw error }
            return [(folder as NSString).appendingPathComponent(all[0])]
        }
    }

    /// Where a transformers key lives: the text model's table (without `text_model.`) or this one.
    func target(_ key: String) -> UnsafeMutableBufferPointer<Float>? {
        key.hasPrefix("text_model.") ? text.weights[String(key.dropFirst("text_model.".count))] : weights[key]
    }

    var allKeys: [String] {
        weights.table.entries.map(\.key) + text.weights.table.entries.map { "text_model." + $0.key }
    }

    /// Every parameter from safetensors files with transformers' keys or open_clip's (remapped by OpenCLIPKeys);
    /// each must be there once with its size, nothing else.
    public func load(files: [String]) throws {
        var seen = Set<String>(), unexpected: [String] = [], mismatched: [String] = [], duplicated: [String] = []
        for path in files {
            let file = try SafeTensorsFile(path: path)
            if file.tensorNames.contains(where: { $0.hasPrefix("visual.") }) { layout = "open_clip" }
            for name in file.tensorNames {
                if name.hasSuffix("position_ids") || name == "attn_mask" { continue }
                let values = try file.floats(name), shape = file.info(name)!.shape
                let pieces = layout == "open_clip" ? OpenCLIPKeys.map(name, values: values, shape: shape) : [(name, values, shape)]
                if pieces.isEmpty { unexpected.append(name); continue }
                for (key, v, s) in pieces {
                    guard let t = target(key) else { unexpected.append(name); continue }
                    guard t.count == v.count else { mismatched.append("\(name) is \(s), expected \(t.count) values"); continue }
                    guard seen.insert(key).inserted else { duplicated.append(name); continue }
                    _ = t.update(from: v)
                }
                file.evict(name)
            }
        }
        let missing = allKeys.filter { !seen.contains($0) }
        if !missing.isEmpty || !unexpected.isEmpty || !mismatched.isEmpty || !duplicated.isEmpty {
            func list(_ xs: [String]) -> String { xs.prefix(5).joined(separator: ", ") + (xs.count > 5 ? ", … (\(xs.count) in all)" : "") }
            let parts = [("missing", missing), ("unexpected", unexpected), ("wrong size", mismatched), ("given twice", duplicated)]
                .filter { !$0.1.isEmpty }.map { "\($0.1.count) \($0.0) tensor(s): \(list($0.1))" }
            throw CLIPModelError("\(files.joined(separator: ", ")) (\(layout) layout): weights do not match the CLIP config: "
                                 + parts.joined(separator: "; "))
        }
    }

    /// Random weights (tests and benchmarks).
    public func randomizeWeights(seed: UInt64) {
        weights.randomize(seed: seed)
        text.randomizeWeights(seed: seed &+ 1)
    }

    // MARK: - Features

    /// image_embeds (B, projection_dim) of pixel_values (B, 3, S, S), before normalisation.
    public func imageEmbeddings(_ pixels: UnsafePointer<Float>, batch B: Int) -> Buffer {
        let c = config.visionConfig, D = c.hiddenSize, g = c.imageSize / c.patchSize, n = g * g, S = n + 1
        let p = Pass(weights: weights, workspace: workspace)
        let input = Buffer(uninitialized: B * 3 * c.imageSize * c.imageSize)
        input.ptr.update(from: pixels, count: input.count)
        let patches = patchEmbedding.forward(p, input, B, c.imageSize, c.imageSize)     // (B, D, g, g)
        // x (B, S, D) = [class_embedding; patches (transposed to tokens)] + position_embedding
        let x = Buffer(uninitialized: B * S * D)
        let cls = p.vector(classEmbedding)
        for b in 0..<B {
            for s in 0..<S {
                let row = x.ptr + (b * S + s) * D, pos = positionEmbedding.row(p, s)
                if s == 0 {
                    for j in 0..<D { row[j] = cls[j] + pos[j] }
                } else {
                    let src = patches.ptr + b * D * n + (s - 1)
                    for j in 0..<D { row[j] = src[j * n] + pos[j] }
                }
            }
        }
        let h = preLayerNorm.forward(p, x, B * S).0
        for layer in layers { layer.forward(p, h, B, S) }
        // pooled = post_layernorm(x[:, 0]); image_embeds = visual_projection(pooled)
        let first = Buffer(uninitialized: B * D)
        for b in 0..<B { (first.ptr + b * D).update(from: h.ptr + b * S * D, count: D) }
        return visualProjection.forward(p, postLayerNorm.forward(p, first, B).0, B).out
    }

    /// text_embeds (B, projection_dim) of framed token ids (B, S), before normalisation.
    public func textEmbeddings(inputIds: [Int], batch B: Int, length S: Int) throws -> Buffer {
        let hidden = try text.forward(inputIds: inputIds, batch: B, length: S)
        let D = config.textConfig.hiddenSize, eos = config.textConfig.eosTokenId
        let pooled = Buffer(uninitialized: B * D)
        for b in 0..<B {
            let ids = inputIds[(b * S)..<((b + 1) * S)]
            // transformers: eos_token_id == 2 (old configs) → the row of the largest id; else the first EOS.
            let position = eos == 2 ? ids.firstIndex(of: ids.max()!)! : (ids.firstIndex(of: eos) ?? ids.indices.last!)
            (pooled.ptr + b * D).update(from: hidden.ptr + position * D, count: D)
        }
        return textProjection.forward(Pass(weights: weights, workspace: workspace), pooled, B).out
    }
}

/// Rows of x (N, C) scaled to unit length in place.
public func normalizeRows(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
    for r in 0..<rows {
        let row = x + r * width
        var s: Double = 0
        for j in 0..<width { s += Double(row[j]) * Double(row[j]) }
        let inv = Float(1 / max(s.squareRoot(), 1e-12))
        for j in 0..<width { row[j] *= inv }
    }
}
