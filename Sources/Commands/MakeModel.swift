// `hgdpo make-model`: a diffusers Stable Diffusion pipeline folder with random weights of a named shape, for trying
// the tools end to end and for tests and benchmarks, where no real weights can be had:
//   model_index.json   as diffusers' save_pretrained writes it (no safety checker)
//   unet/              UNet2DConditionModel (config.json, diffusion_pytorch_model.safetensors)
//   scheduler/         DDPMScheduler with Stable Diffusion's schedule (scaled_linear 0.00085 … 0.012, 1000 steps)
//   text_encoder/      transformers CLIPTextModel (config.json, model.safetensors), hidden_size = the U-Net's
//                      cross_attention_dim; weights drawn as transformers' _init_weights
//   tokenizer/         CLIPTokenizer files over a byte-level vocabulary: the 256 byte symbols, their "</w>" forms,
//                      <|startoftext|> and <|endoftext|> (514 tokens), no merges: every byte is a token
//   vae/               AutoencoderKL (config.json, diffusion_pytorch_model.safetensors), PyTorch's default init
// `--parts unet` writes only model_index.json, unet/ and scheduler/ (what the trainer reads).
import Foundation
import IO
import NN
import Tensors
import TextEncoder
import UNet
import VAE

extension Commands {
    static let makeModel = CommandSpec(
        ["make-model"],
        summary: "Write a random-weight Stable Diffusion pipeline folder (U-Net, scheduler, CLIP text encoder and tokenizer, VAE) of a named shape",
        details: """
            Example: hgdpo make-model --shape tiny --out models/tiny
            Shapes: tiny and small have a narrow text encoder (width = the U-Net's cross_attention_dim) and a small VAE;
            sd15 has Stable Diffusion 1.5's shapes throughout (CLIP ViT-L/14 text encoder: 768 wide, 12 layers).
            """,
        options: [
            .value("--shape", "NAME|DIR", "U-Net shape: tiny, small, sd15 (../shared/bench/unet_configs.py) or a U-Net folder's config", default: "tiny"),
            .value("--out", "DIR", "Folder to create (must not exist)", required: true),
            .value("--seed", "S", "Seed of the weights", default: "0"),
            .value("--variant", "NAME", "Also write the weights as a variant file, e.g. fp16", choices: ["fp16"]),
            .value("--parts", "WHICH", "all: the full pipeline; unet: only unet/ and scheduler/", default: "all", choices: ["all", "unet"]),
        ]
    ) { args in
        let out = try args.requiredString("--out")
        guard !FileManager.default.fileExists(atPath: out) else { throw CLIError.invalid("\(out): already exists; choose a new folder") }
        guard let seed = UInt64(args.string("--seed")!) else {
            throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
        }
        let name = args.string("--shape")!
        let config = try benchConfig(name)
        let model = UNetModel(spec: try UNetSpec(config))
        model.randomizeWeights(seed: seed)
        let fp16 = args.string("--variant") == "fp16"
        var fields: [(String, JSONValue)] = [("out", .string(out)), ("params", .int(model.weights.table.count))]
        if args.string("--parts") == "all" {
            let shapes = try pipelineShapes(name, unet: config)
            let text = try CLIPTextModel(config: shapes.text)
            text.initializeAsTransformers(seed: seed &+ 1)
            let vae = AutoencoderKL(spec: try VAESpec(shapes.vae))
            vae.initializeAsDiffusers(seed: seed &+ 2)
            try writePipeline(model: model, textEncoder: text, vae: vae, to: out, fp16Variant: fp16)
            fields += [("text_encoder_params", .int(text.weights.table.count)), ("vae_params", .int(vae.parameterCount))]
        } else {
            try writePipeline(model: model, to: out, fp16Variant: fp16)
        }
        print(JSONValue.object(fields).serialized())
    }

    // MARK: - Shapes

    /// The text encoder and VAE that go with a U-Net shape: sd15 gets Stable Diffusion 1.5's (CLIP ViT-L/14's text
    /// tower, SD's VAE); tiny, small and U-Net folders a text encoder as wide as the U-Net's cross_attention_dim
    /// with 2–4 layers and a 4-level VAE of 32–64 channels (8x downsampling, as SD's).
    static func pipelineShapes(_ name: String, unet: UNet2DConditionConfig) throws -> (text: CLIPTextConfig, vae: AutoencoderKLConfig) {
        guard case .one(let width) = unet.crossAttentionDim else {
            throw CLIError.invalid("--config \(name): the U-Net has a per-block cross_attention_dim; a text encoder cannot match it (use --parts unet)")
        }
        var text = CLIPTextConfig()
        let vocabulary = ByteLevelVocabulary()
        text.vocabSize = vocabulary.size
        text.bosTokenId = vocabulary.bosId
        text.eosTokenId = vocabulary.eosId
        text.padTokenId = 1   // transformers' CLIPTextConfig default, unused by the model
        text.maxPositionEmbeddings = 77
        text.hiddenAct = "quick_gelu"
        text.hiddenSize = width
        text.projectionDim = width
        text.intermediateSize = 4 * width
        var vae = AutoencoderKLConfig()
        vae.downBlockTypes = Array(repeating: "DownEncoderBlock2D", count: 4)
        vae.upBlockTypes = Array(repeating: "UpDecoderBlock2D", count: 4)
        vae.latentChannels = unet.inChannels
        vae.sampleSize = (unet.sampleSize ?? 64) * 8
        vae.scalingFactor = 0.18215
        if name == "sd15" {
            text.numHiddenLayers = 12; text.numAttentionHeads = 12
            vae.blockOutChannels = [128, 256, 512, 512]; vae.layersPerBlock = 2; vae.normNumGroups = 32
        } else {
            text.numHiddenLayers = name == "small" ? 4 : 2
            text.numAttentionHeads = [8, 4, 2].first { width % $0 == 0 && width / $0 >= 8 } ?? 1
            vae.blockOutChannels = [32, 64, 64, 64]; vae.layersPerBlock = 1; vae.normNumGroups = 16
        }
        return (text, vae)
    }

    // MARK: - Writing

    /// Writes `model` as a diffusers pipeline folder with Stable Diffusion's scheduler configuration (with
    /// `schedulerOverrides` replacing its keys); with a text encoder and a VAE, also text_encoder/, tokenizer/ (the
    /// byte-level vocabulary, plus whole-word tokens for `vocabulary.words`) and vae/. Without a VAE but with a text
    /// encoder the pipeline is pixel space (VAE/LatentSpace.swift).
    static func writePipeline(model: UNetModel, textEncoder: CLIPTextModel? = nil, vae: AutoencoderKL? = nil,
                              vocabulary: ByteLevelVocabulary = ByteLevelVocabulary(), schedulerOverrides: [String: Any] = [:],
                              to out: String, fp16Variant: Bool = false) throws {
        func path(_ parts: String...) -> String { parts.reduce(out) { ($0 as NSString).appendingPathComponent($1) } }
        for dir in ["unet", "scheduler"] + (textEncoder != nil ? ["text_encoder", "tokenizer"] : []) + (vae != nil ? ["vae"] : []) {
            try FileManager.default.createDirectory(atPath: path(dir), withIntermediateDirectories: true)
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted]
        var unetJSON = try JSONSerialization.jsonObject(with: enc.encode(model.spec.config)) as! [String: Any]
        unetJSON["_class_name"] = "UNet2DConditionModel"
        unetJSON["_diffusers_version"] = diffusersVersion
        try JSONSerialization.data(withJSONObject: unetJSON, options: [.sortedKeys, .prettyPrinted])
            .write(to: URL(fileURLWithPath: path("unet", "config.json")))
        try writeWeights(model.weights.namedParameters, to: path("unet"), name: "diffusion_pytorch_model", fp16Variant: fp16Variant)
        var scheduler: [String: Any] = [
            "_class_name": "DDPMScheduler", "_diffusers_version": diffusersVersion, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "clip_sample": false,
            "set_alpha_to_one": false, "steps_offset": 1, "timestep_spacing": "leading",
        ]
        scheduler.merge(schedulerOverrides) { $1 }
        try JSONSerialization.data(withJSONObject: scheduler, options: [.sortedKeys, .prettyPrinted])
            .write(to: URL(fileURLWithPath: path("scheduler", "scheduler_config.json")))

        var index: [(String, JSONValue)] = [("_class_name", "StableDiffusionPipeline"), ("_diffusers_version", .string(diffusersVersion))]
        if let textEncoder {
            try writeJSON(textEncoderConfigJSON(textEncoder.config), to: path("text_encoder", "config.json"))
            // Keys as transformers 4 saved them (`text_model.…`, as every SD release has them): transformers 4 and 5 load that.
            let prefixed = textEncoder.weights.namedParameters.map { (key: "text_model." + $0.key, shape: $0.shape, values: $0.values) }
            try writeWeights(prefixed, to: path("text_encoder"), name: "model", fp16Variant: fp16Variant)
            try vocabulary.write(to: path("tokenizer"))
        }
        if let vae {
            try writeJSON(vaeConfigJSON(vae.spec.config), to: path("vae", "config.json"))
            try writeWeights(vae.weights.namedParameters, to: path("vae"), name: "diffusion_pytorch_model", fp16Variant: fp16Variant)
        }
        // Component entries in diffusers' order; a pipeline saved without a safety checker lists it as [null, null].
        if textEncoder != nil || vae != nil {
            index += [("feature_extractor", .array([.null, .null])), ("image_encoder", .array([.null, .null])),
                      ("requires_safety_checker", .bool(false)), ("safety_checker", .array([.null, .null]))]
        }
        index.append(("scheduler", .array(["diffusers", "DDPMScheduler"])))
        if textEncoder != nil {
            index += [("text_encoder", .array(["transformers", "CLIPTextModel"])), ("tokenizer", .array(["transformers", "CLIPTokenizer"]))]
        }
        index.append(("unet", .array(["diffusers", "UNet2DConditionModel"])))
        if vae != nil { index.append(("vae", .array(["diffusers", "AutoencoderKL"]))) }
        try writeJSON(.object(index), to: path("model_index.json"))
    }

    static let diffusersVersion = "0.42.1"

    /// `NAME.safetensors` (fp32) and, with `fp16Variant`, `NAME.fp16.safetensors`, with `{"format": "pt"}` metadata.
    static func writeWeights(_ parameters: [(key: String, shape: [Int], values: UnsafeBufferPointer<Float>)], to dir: String,
                             name: String, fp16Variant: Bool) throws {
        for dtype in fp16Variant ? [DType.F32, .F16] : [.F32] {
            let entries = parameters.map { SafeTensorsEntry(name: $0.key, shape: $0.shape, floats: $0.values, as: dtype) }
            let file = name + (dtype == .F16 ? ".fp16" : "") + ".safetensors"
            try SafeTensors.write(entries, metadata: ["format": "pt"], to: (dir as NSString).appendingPathComponent(file))
        }
    }

    static func writeJSON(_ value: JSONValue, to path: String) throws {
        try Foundation.Data((value.pretty() + "\n").utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    /// text_encoder/config.json with the keys transformers 5 writes for a CLIPTextModel.
    static func textEncoderConfigJSON(_ c: CLIPTextConfig) -> JSONValue {
        .object([
            ("architectures", .array(["CLIPTextModel"])), ("attention_dropout", .double(0)),
            ("bos_token_id", .int(c.bosTokenId)), ("dtype", "float32"), ("eos_token_id", .int(c.eosTokenId)),
            ("hidden_act", .string(c.hiddenAct)), ("hidden_size", .int(c.hiddenSize)), ("initializer_factor", .double(1)),
            ("initializer_range", .double(0.02)), ("intermediate_size", .int(c.intermediateSize)),
            ("layer_norm_eps", .double(c.layerNormEps)), ("max_position_embeddings", .int(c.maxPositionEmbeddings)),
            ("model_type", "clip_text_model"), ("num_attention_heads", .int(c.numAttentionHeads)),
            ("num_hidden_layers", .int(c.numHiddenLayers)), ("pad_token_id", .int(c.padTokenId)),
            ("projection_dim", .int(c.projectionDim)), ("transformers_version", "5.0.0"), ("vocab_size", .int(c.vocabSize)),
        ])
    }

    /// vae/config.json with the keys diffusers writes for an AutoencoderKL.
    static func vaeConfigJSON(_ c: AutoencoderKLConfig) -> JSONValue {
        .object([
            ("_class_name", "AutoencoderKL"), ("_diffusers_version", .string(diffusersVersion)), ("act_fn", .string(c.actFn)),
            ("block_out_channels", .array(c.blockOutChannels.map { .int($0) })),
            ("down_block_types", .array(c.downBlockTypes.map { .string($0) })), ("force_upcast", .bool(c.forceUpcast)),
            ("in_channels", .int(c.inChannels)), ("latent_channels", .int(c.latentChannels)), ("latents_mean", .null),
            ("latents_std", .null), ("layers_per_block", .int(c.layersPerBlock)),
            ("mid_block_add_attention", .bool(c.midBlockAddAttention)), ("norm_num_groups", .int(c.normNumGroups)),
            ("out_channels", .int(c.outChannels)), ("sample_size", .int(c.sampleSize)), ("scaling_factor", .double(c.scalingFactor)),
            ("shift_factor", .null), ("up_block_types", .array(c.upBlockTypes.map { .string($0) })),
            ("use_post_quant_conv", .bool(c.usePostQuantConv)), ("use_quant_conv", .bool(c.useQuantConv)),
        ])
    }
}

// MARK: - Tokenizer

/// A CLIP tokenizer over bytes, laid out as CLIP's vocabulary starts (ids 0…255 the byte symbols of bytes_to_unicode
/// in its order, 256…511 the same with "</w>"), then optional whole-word tokens, then <|startoftext|>, <|endoftext|>.
/// Without words (make-model) there are no merges: every UTF-8 byte of a word is one token, the last one carrying
/// "</w>" (514 tokens). Each of `words` (the toy world's grammar) gets the merges that make it one token (e.g.
/// "r e", "re d</w>"), and other text still tokenizes, in pieces down to bytes. transformers'
/// CLIPTokenizer and ours read it as any CLIP vocabulary.
struct ByteLevelVocabulary {
    var words: [String] = []
    /// model_max_length: the token sequence length (the text encoder's max_position_embeddings must be at least it).
    var maxLength = 77

    /// The 256 byte symbols in CLIP's vocabulary order: the printable bytes ("!"…"~", "¡"…"¬", "®"…"ÿ") first,
    /// then the others' remapped symbols (U+0100…) in byte order.
    static var symbols: [String] {
        let printable = (0..<256).filter { (0x21...0x7E).contains($0) || (0xA1...0xAC).contains($0) || (0xAE...0xFF).contains($0) }
        let rest = (0..<256).filter { !printable.contains($0) }
        return (printable + rest).map { String(Character(bytesToUnicode[$0])) }
    }

    /// The merges, in rank order, that make each of `words` one token. Word by word, BPE (as the tokenizer runs it:
    /// repeatedly the best-ranked adjacent pair, every occurrence) is run with the merges so far, and while the word
    /// is still in pieces the merge of its first two is appended. An appended merge ranks below all earlier ones, so
    /// it never changes how an earlier word is merged (that word always has a better-ranked pair until it is whole).
    var merges: [(String, String)] {
        var out: [(String, String)] = []
        var rank: [String: Int] = [:]   // "left right" → rank
        for word in words {
            var parts = Array(word.utf8).map { String(Character(bytesToUnicode[Int($0)])) }
            guard !parts.isEmpty else { continue }
            parts[parts.count - 1] += "</w>"
            while parts.count > 1 {
                let pairs = (0..<(parts.count - 1)).compactMap { i in rank[parts[i] + " " + parts[i + 1]].map { (i, $0) } }
                if let best = pairs.min(by: { $0.1 < $1.1 }) {
                    let (l, r) = (parts[best.0], parts[best.0 + 1])
                    var merged: [String] = [], i = 0
                    while i < parts.count {
                        if i + 1 < parts.count && parts[i] == l && parts[i + 1] == r { merged.append(l + r); i += 2 } else { merged.append(parts[i]); i += 1 }
                    }
                    parts = merged
                } else {
                    rank[parts[0] + " " + parts[1]] = out.count
                    out.append((parts[0], parts[1]))
                }
            }
        }
        return out
    }

    var tokens: [String] {
        let s = ByteLevelVocabulary.symbols
        var merged: [String] = []
        for (a, b) in merges where !merged.contains(a + b) { merged.append(a + b) }
        return s + s.map { $0 + "</w>" } + merged + ["<|startoftext|>", "<|endoftext|>"]
    }

    var size: Int { tokens.count }
    var bosId: Int { size - 2 }
    var eosId: Int { size - 1 }

    func write(to dir: String) throws {
        let vocab = tokens
        func token(_ content: String) -> JSONValue {
            .object([("content", .string(content)), ("lstrip", false), ("normalized", true), ("rstrip", false), ("single_word", false)])
        }
        try Commands.writeJSON(.object(vocab.enumerated().map { ($1, .int($0)) }), to: (dir as NSString).appendingPathComponent("vocab.json"))
        let mergeLines = merges.map { "\($0.0) \($0.1)\n" }.joined()
        try Foundation.Data(("#version: 0.2\n" + mergeLines).utf8)
            .write(to: URL(fileURLWithPath: (dir as NSString).appendingPathComponent("merges.txt")))
        try Commands.writeJSON(.object([
            ("add_prefix_space", false), ("bos_token", token("<|startoftext|>")), ("do_lower_case", true),
            ("eos_token", token("<|endoftext|>")), ("errors", "replace"), ("model_max_length", .int(maxLength)),
            ("pad_token", "<|endoftext|>"), ("tokenizer_class", "CLIPTokenizer"), ("unk_token", token("<|endoftext|>")),
        ]), to: (dir as NSString).appendingPathComponent("tokenizer_config.json"))
        try Commands.writeJSON(.object([
            ("bos_token", token("<|startoftext|>")), ("eos_token", token("<|endoftext|>")), ("pad_token", "<|endoftext|>"),
            ("unk_token", token("<|endoftext|>")),
        ]), to: (dir as NSString).appendingPathComponent("special_tokens_map.json"))
    }
}
