// CLIP's text transformer, forward only: what Stable Diffusion conditions its U-Net on.
// Ref: transformers 5.24 models/clip/modeling_clip.py, CLIPTextModel.forward → last_hidden_state:
//   x = token_embedding[ids] + position_embedding[0..<S]
//   the encoder layers (CLIPEncoder.swift), causal: token i sees tokens ≤ i
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
import Tensors

public enum TextModelError: Error, UserInputError, CustomStringConvertible, Equatable {
    case badConfig(path: String, key: String, detail: String)
    case weights(source: String, detail: String)
    case badInput(String)

    public var description: String {
        switch self {
        case .badConfig(let p, let k, let d): return "\(p): key '\(k)': \(d)"
        case .weights(let s, let d): return "\(s): weights do not match the text encoder config: \(d)"
        case .badInput(let m): return m
        }
    }
}

public enum TextActivation: String, Sendable {
    case quickGelu = "quick_gelu"
    case gelu = "gelu"
}

public final class CLIPTextModel: @unchecked Sendable {
    public let config: CLIPTextConfig
    public let activation: TextActivation
    /// The transformer layers (shared with CLIP's vision tower).
    public let encoderLayers: CLIPEncoderLayers
    /// Every parameter, fp32, in one allocation; `entries` gives each state-dict key (without `text_model.`) its
    /// shape and offset.
    public let storage: Buffer
    let entries: [(key: String, shape: [Int], offset: Int)]
    private let index: [String: Int]

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
        guard let act = TextActivation(rawValue: config.hiddenAct) else {
            throw TextModelError.badConfig(path: source, key: "hidden_act",
                                           detail: "'\(config.hiddenAct)' is not supported (quick_gelu or gelu)")
        }
        self.config = config
        activation = act
        encoderLayers = CLIPEncoderLayers(width: config.hiddenSize, intermediate: config.intermediateSize,
                                          heads: config.numAttentionHeads, activation: act, eps: Float(config.layerNormEps))
        let D = config.hiddenSize
        var list: [(String, [Int])] = [
            ("embeddings.token_embedding.weight", [config.vocabSize, D]),
            ("embeddings.position_embedding.weight", [config.maxPositionEmbeddings, D]),
        ]
        list += encoderLayers.parameterShapes(count: config.numHiddenLayers)
        list += [("final_layer_norm.weight", [D]), ("final_layer_norm.bias", [D])]
        var offset = 0
        var entries: [(key: String, shape: [Int], offset: Int)] = []
        for (key, shape) in list {
            entries.append((key, shape, offset))
            offset += shape.reduce(1, *)
        }
        self.entries = entries
        index = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.key, $0) })
        storage = Buffer(zeros: offset)
    }

    /// Loads a text encoder folder (the `text_encoder/` of a pipeline, or given directly): config.json and the
    /// safetensors weights of `variant` (e.g. "fp16": model.fp16.safetensors).
    public static func load(folder: ComponentFolder, variant: String? = nil) throws -> CLIPTextModel {
        let model = try CLIPTextModel(config: folder.config(CLIPTextConfig.self), source: folder.configPath)
        try model.load(files: folder.weightFiles(variant: variant))
        return model
    }

    private func p(_ key: String) -> UnsafeMutablePointer<Float> { storage.ptr + entries[index[key]!].offset }

    /// A parameter by its key (without `text_model.`) and its shape, for loaders of models that contain this one.
    public func parameter(_ key: String) -> (pointer: UnsafeMutablePointer<Float>, shape: [Int])? {
        index[key].map { (storage.ptr + entries[$0].offset, entries[$0].shape) }
    }

    /// Every parameter key, in declaration order.
    public var parameterKeys: [String] { entries.map(\.key) }

    /// Fills every parameter from safetensors files; each must be present once with its shape, and nothing else but
    /// `position_ids` may be there.
    public func load(files: [String]) throws {
        var seen = Set<String>()
        var unexpected: [String] = [], mismatched: [String] = []
        let source = files.count == 1 ? files[0] : "\(files.count) files in \((files.first.map { ($0 as NSString).deletingLastPathComponent }) ?? "")"
        for path in files {
            let file = try SafeTensorsFile(path: path)
            for name in file.tensorNames {
                let key = name.hasPrefix("text_model.") ? String(name.dropFirst("text_model.".count)) : name
                if key == "embeddings.position_ids" { continue }
                guard let i = index[key] else { unexpected.append(name); continue }
                let e = entries[i]
                guard let info = file.info(name), info.shape == e.shape else {
                    mismatched.append("\(name) is \(file.info(name)?.shape ?? []), expected \(e.shape)")
                    continue
                }
                try file.read(name, into: UnsafeMutableBufferPointer(start: storage.ptr + e.offset, count: info.count))
                seen.insert(key)
            }
        }
        let missing = entries.map(\.key).filter { !seen.contains($0) }
        func list(_ xs: [String]) -> String { xs.prefix(5).joined(separator: ", ") + (xs.count > 5 ? ", … (\(xs.count) in all)" : "") }
        var parts: [String] = []
        if !missing.isEmpty { parts.append("missing \(missing.count) tensor(s): \(list(missing))") }
        if !mismatched.isEmpty { parts.append("wrong shape: \(list(mismatched))") }
        if !unexpected.isEmpty { parts.append("\(unexpected.count) unexpected tensor(s): \(list(unexpected))") }
        if !parts.isEmpty { throw TextModelError.weights(source: source, detail: parts.joined(separator: "; ")) }
    }

    /// Random weights for tests and tools: N(0, 0.02) embeddings and biases, N(0, 1/fan_in) matrices, LayerNorm
    /// weights 1 + 0.1·N(0, 1).
    public func randomizeWeights(seed: UInt64) {
        let rng = CounterRNG(seed: seed)
        for (i, e) in entries.enumerated() {
            let buf = UnsafeMutableBufferPointer(start: storage.ptr + e.offset, count: e.shape.reduce(1, *))
            let s = rng.substream(UInt64(i))
            if e.key.contains("norm") && e.key.hasSuffix(".weight") {
                for j in 0..<buf.count { buf[j] = 1 + 0.1 * s.normal(UInt64(j)) }
            } else if e.shape.count == 2 && !e.key.hasPrefix("embeddings.") {
                s.fillNormal(buf, scale: 1 / Float(e.shape[1]).squareRoot())
            } else {
                s.fillNormal(buf, scale: 0.02)
            }
        }
    }

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
        let eps = Float(config.layerNormEps)

        // Embeddings: x (N, D) = token_embedding[id] + position_embedding[s].
        let x = Buffer(uninitialized: N * D)
        let tok = p("embeddings.token_embedding.weight"), pos = p("embeddings.position_embedding.weight")
        for n in 0..<N {
            let row = x.ptr + n * D, t = tok + inputIds[n] * D, ps = pos + (n % S) * D
            for j in 0..<D { row[j] = t[j] + ps[j] }
        }

        encoderLayers.forward(x.ptr, batch: B, length: S, count: config.numHiddenLayers - skipLastLayers, causal: true, weight: p)
        let mean = Buffer(uninitialized: N), rstd = Buffer(uninitialized: N)
        let out = Buffer(uninitialized: N * D)
        layerNormForward(out: out.ptr, mean: mean.ptr, rstd: rstd.ptr, inp: x.ptr, weight: p("final_layer_norm.weight"),
                         bias: p("final_layer_norm.bias"), N: N, C: D, eps: eps)
        return out
    }
}
