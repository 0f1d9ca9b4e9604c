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

public struct CLIPModelError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

// MARK: - Vision tower

/// CLIPVisionTransformer + visual_projection: pixels (B, 3, S, S) → image_embeds (B, P).
public final class CLIPVisionModel: @unchecked Sendable {
    public let config: CLIPVisionConfig
    public let projectionDim: Int
    public let layers: CLIPEncoderLayers
    /// Parameters under transformers' keys without the `vision_model.` prefix, plus `visual_projection.weight`.
    let storage: Buffer
    let table: [String: (offset: Int, shape: [Int])]
    let keys: [String]

    public var patchCount: Int { (config.imageSize / config.patchSize) * (config.imageSize / config.patchSize) }

    public init(config c: CLIPVisionConfig, projectionDim: Int, source: String) throws {
        guard c.hiddenSize > 0, c.numAttentionHeads > 0, c.hiddenSize % c.numAttentionHeads == 0, c.patchSize > 0,
              c.imageSize % c.patchSize == 0, c.numHiddenLayers > 0, c.numChannels == 3 else {
            throw CLIPModelError("\(source): vision_config: hidden_size \(c.hiddenSize), heads \(c.numAttentionHeads), image_size "
                                 + "\(c.imageSize), patch_size \(c.patchSize), channels \(c.numChannels) do not make a ViT")
        }
        guard let act = TextActivation(rawValue: c.hiddenAct) else {
            throw CLIPModelError("\(source): vision_config.hidden_act '\(c.hiddenAct)' is not supported (quick_gelu or gelu)")
        }
        config = c
        self.projectionDim = projectionDim
        layers = CLIPEncoderLayers(width: c.hiddenSize, intermediate: c.intermediateSize, heads: c.numAttentionHeads,
                                   activation: act, eps: Float(c.layerNormEps))
        let D = c.hiddenSize, p = c.patchSize, n = (c.imageSize / p) * (c.imageSize / p)
        var list: [(String, [Int])] = [
            ("embeddings.class_embedding", [D]), ("embeddings.patch_embedding.weight", [D, 3, p, p]),
            ("embeddings.position_embedding.weight", [n + 1, D]), ("pre_layrnorm.weight", [D]), ("pre_layrnorm.bias", [D]),
        ]
        list += layers.parameterShapes(count: c.numHiddenLayers)
        list += [("post_layernorm.weight", [D]), ("post_layernorm.bias", [D]), ("visual_projection.weight", [projectionDim, D])]
        var table: [String: (Int, [Int])] = [:], offset = 0
        for (k, s) in list { table[k] = (offset, s); offset += s.reduce(1, *) }
        self.table = table
        keys = list.map(\.0)
        storage = Buffer(zeros: offset)
    }

    func parameter(_ key: String) -> (pointer: UnsafeMutablePointer<Float>, shape: [Int])? {
        table[key].map { (storage.ptr + $0.offset, $0.shape) }
    }
    private func p(_ key: String) -> UnsafeMutablePointer<Float> { storage.ptr + table[key]!.offset }

    /// image_embeds (B, projectionDim) of pixels (B, 3, S, S) normalised as the processor does.
    public func imageEmbeddings(_ pixels: UnsafePointer<Float>, batch B: Int) -> Buffer {
        let c = config, D = c.hiddenSize, ps = c.patchSize, g = c.imageSize / ps, n = g * g, S = n + 1, K = 3 * ps * ps
        // Patch embedding: a stride-p convolution without bias = patches (B·n, 3·p·p) in (c, kh, kw) order · Wᵀ.
        let patches = Buffer(uninitialized: B * n * K)
        for b in 0..<B {
            for gy in 0..<g {
                for gx in 0..<g {
                    var dst = patches.ptr + ((b * n) + gy * g + gx) * K
                    for ch in 0..<3 {
                        for ky in 0..<ps {
                            let src = pixels + ((b * 3 + ch) * c.imageSize + gy * ps + ky) * c.imageSize + gx * ps
                            dst.update(from: src, count: ps)
                            dst += ps
                        }
                    }
                }
            }
        }
        let embedded = Buffer(uninitialized: B * n * D)
        linearForward(out: embedded.ptr, inp: patches.ptr, weight: p("embeddings.patch_embedding.weight"), bias: nil, N: B * n, I: K, O: D)
        // x (B, S, D) = [class; patches] + position_embedding, then pre_layrnorm.
        let x = Buffer(uninitialized: B * S * D)
        let cls = p("embeddings.class_embedding"), pos = p("embeddings.position_embedding.weight")
        for b in 0..<B {
            for s in 0..<S {
                let row = x.ptr + (b * S + s) * D, src = s == 0 ? UnsafePointer(cls) : UnsafePointer(embedded.ptr + (b * n + s - 1) * D)
                for j in 0..<D { row[j] = src[j] + pos[s * D + j] }
            }
        }
        let mean = Buffer(uninitialized: B * S), rstd = Buffer(uninitialized: B * S)
        let h = Buffer(uninitialized: B * S * D)
        layerNormForward(out: h.ptr, mean: mean.ptr, rstd: rstd.ptr, inp: x.ptr, weight: p("pre_layrnorm.weight"),
                         bias: p("pre_layrnorm.bias"), N: B * S, C: D, eps: layers.eps)
        layers.forward(h.ptr, batch: B, length: S, count: c.numHiddenLayers, causal: false, weight: p)
        // pooled = post_layernorm(x[:, 0]); image_embeds = visual_projection(pooled).
        let first = Buffer(uninitialized: B * D), pooled = Buffer(uninitialized: B * D)
        for b in 0..<B { (first.ptr + b * D).update(from: h.ptr + b * S * D, count: D) }
        layerNormForward(out: pooled.ptr, mean: mean.ptr, rstd: rstd.ptr, inp: first.ptr, weight: p("post_layernorm.weight"),
                         bias: p("post_layernorm.bias"), N: B, C: D, eps: layers.eps)
        let out = Buffer(uninitialized: B * projectionDim)
        linearForward(out: out.ptr, inp: pooled.ptr, weight: p("visual_projection.weight"), bias: nil, N: B, I: D, O: projectionDim)
        return out
    }
}

// MARK: - CLIPModel

public final class CLIPModel: @unchecked Sendable {
    public let config: CLIPConfig
    public let vision: CLIPVisionModel
    public let text: CLIPTextModel
    let textProjection: Buffer      // (P, D_text)
    public private(set) var logitScale: Float = 0   // log of the scale, as stored
    /// "transformers" or "open_clip": the key layout the weights were loaded from.
    public private(set) var layout = "transformers"

    public init(config: CLIPConfig, source: String) throws {
        self.config = config
        vision = try CLIPVisionModel(config: config.visionConfig, projectionDim: config.projectionDim, source: source)
        text = try CLIPTextModel(config: config.textConfig, source: source + " (text_config)")
        textProjection = Buffer(zeros: config.projectionDim * config.textConfig.hiddenSize)
    }

    /// config.json of `folder`, then the weights: `weights` (a safetensors file) or the folder's model.safetensors,
    /// or its only .safetensors file.
    public static func load(folder: String, weights: String? = nil) throws -> CLIPModel {
        let configPath = (folder as NSString).appendingPathComponent("config.json")
        let model = try CLIPModel(config: decodeConfig(CLIPConfig.self, from: configPath), source: configPath)
        var files: [String]
        if let weights { files = [weights] } else {
            do { files = try ComponentFolder(path: folder).weightFiles() } catch {
                let all = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasSuffix(".safetensors") }
                guard all.count == 1 else { throw error }
                files = [(folder as NSString).appendingPathComponent(all[0])]
            }
        }
        try model.load(files: files)
        return model
    }

    /// Where a transformers key lives.
    func target(_ key: String) -> (pointer: UnsafeMutablePointer<Float>, shape: [Int])? {
        if key == "text_projection.weight" { return (textProjection.ptr, [config.projectionDim, config.textConfig.hiddenSize]) }
        if key == "visual_projection.weight" { return vision.parameter(key) }
        if key.hasPrefix("vision_model.") { return vision.parameter(String(key.dropFirst("vision_model.".count))) }
        if key.hasPrefix("text_model.") { return text.parameter(String(key.dropFirst("text_model.".count))) }
        return nil
    }

    var allKeys: [String] {
        vision.keys.map { $0 == "visual_projection.weight" ? $0 : "vision_model." + $0 } + text.parameterKeys.map { "text_model." + $0 }
            + ["text_projection.weight", "logit_scale"]
    }

    public func load(files: [String]) throws {
        var seen = Set<String>(), unexpected: [String] = [], mismatched: [String] = []
        let source = files.joined(separator: ", ")
        for path in files {
            let file = try SafeTensorsFile(path: path)
            if file.tensorNames.contains(where: { $0.hasPrefix("visual.") }) { layout = "open_clip" }
            for name in file.tensorNames {
                if name.hasSuffix("position_ids") || name == "attn_mask" { continue }
                let values = try file.floats(name), shape = file.info(name)!.shape
                let pieces = layout == "open_clip" ? OpenCLIPKeys.map(name, values: values, shape: shape)
                                                   : [(name, values, shape)]
                if pieces.isEmpty { unexpected.append(name); continue }
                for (key, v, s) in pieces {
                    if key == "logit_scale" {
                        guard v.count == 1 else { mismatched.append("\(name) has \(v.count) values, expected 1"); continue }
                        logitScale = v[0]; seen.insert(key); continue
                    }
                    guard let t = target(key) else { unexpected.append(name); continue }
                    guard t.shape.reduce(1, *) == v.count, t.shape == s || t.shape.filter({ $0 != 1 }) == s.filter({ $0 != 1 }) else {
                        mismatched.append("\(name) is \(s), expected \(t.shape)"); continue
                    }
                    v.withUnsafeBufferPointer { t.pointer.update(from: $0.baseAddress!, count: v.count) }
                    seen.insert(key)
                }
            }
        }
        let missing = allKeys.filter { !seen.contains($0) }
        func list(_ xs: [String]) -> String { xs.prefix(5).joined(separator: ", ") + (xs.count > 5 ? ", … (\(xs.count) in all)" : "") }
        var parts: [String] = []
        if !missing.isEmpty { parts.append("missing \(missing.count) tensor(s): \(list(missing))") }
        if !mismatched.isEmpty { parts.append("wrong shape: \(list(mismatched))") }
        if !unexpected.isEmpty { parts.append("\(unexpected.count) unexpected tensor(s): \(list(unexpected))") }
        if !parts.isEmpty { throw CLIPModelError("\(source) (\(layout) layout): weights do not match the CLIP config: \(parts.joined(separator: "; "))") }
    }

    // MARK: - Features

    public func imageEmbeddings(_ pixels: UnsafePointer<Float>, batch: Int) -> Buffer { vision.imageEmbeddings(pixels, batch: batch) }

    /// text_embeds (B, P) of framed token ids (B, S).
    public func textEmbeddings(inputIds: [Int], batch B: Int, length S: Int) throws -> Buffer {
        let hidden = try text.forward(inputIds: inputIds, batch: B, length: S)
        let D = config.textConfig.hiddenSize, P = config.projectionDim, eos = config.textConfig.eosTokenId
        let pooled = Buffer(uninitialized: B * D)
        for b in 0..<B {
            let ids = inputIds[(b * S)..<((b + 1) * S)]
            // transformers: eos_token_id == 2 (old configs) → argmax of the ids; else the first EOS.
            let position = eos == 2 ? ids.firstIndex(of: ids.max()!)! : (ids.firstIndex(of: eos) ?? ids.indices.last!)
            (pooled.ptr + b * D).update(from: hidden.ptr + position * D, count: D)
        }
        let out = Buffer(uninitialized: B * P)
        linearForward(out: out.ptr, inp: pooled.ptr, weight: textProjection.ptr, bias: nil, N: B, I: D, O: P)
        return out
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
