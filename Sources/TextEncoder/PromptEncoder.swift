// Prompts → the U-Net's conditioning: tokenizer + CLIP text model + prompt weighting, the public entry point the
// sampling pipeline uses. Ref: diffusers StableDiffusionPipeline.encode_prompt (tokenize with padding and truncation
// to model_max_length, `text_encoder(ids)[0]`, optional clip_skip), with the web UI's weighting (PromptWeighting.swift).
import Foundation
import IO
import Tensors

/// The encoded prompts: ids and weights (N, S), hidden states (N, S, D).
public struct PromptEncoding: @unchecked Sendable {
    public let count: Int, length: Int, width: Int
    /// Token ids the text model saw, (N, S): BOS, the prompt's tokens (weighting syntax removed), EOS, padding.
    public let inputIds: [Int]
    /// Per-token weights (N, S): 1 everywhere without weighting syntax.
    public let weights: [Float]
    /// (N, S, D): last_hidden_state (or the clip-skipped layer through final_layer_norm), weighting applied.
    public let hiddenStates: Buffer
}

public final class PromptEncoder: @unchecked Sendable {
    public let tokenizer: CLIPTokenizer
    public let model: CLIPTextModel

    public init(tokenizer: CLIPTokenizer, model: CLIPTextModel) throws {
        guard tokenizer.maxLength <= model.config.maxPositionEmbeddings else {
            throw TextModelError.badInput("tokenizer model_max_length \(tokenizer.maxLength) exceeds the text encoder's "
                                          + "max_position_embeddings \(model.config.maxPositionEmbeddings)")
        }
        if let big = [tokenizer.bosId, tokenizer.eosId, tokenizer.padId].first(where: { $0 >= model.config.vocabSize }) {
            throw TextModelError.badInput("tokenizer special token id \(big) is outside the text encoder's vocab_size \(model.config.vocabSize)")
        }
        self.tokenizer = tokenizer
        self.model = model
    }

    /// Tokenizer and text encoder of a pipeline folder (`tokenizer/`, `text_encoder/`); `variant` picks the text
    /// encoder's weight file (e.g. "fp16").
    public static func load(_ folder: ModelFolder, variant: String? = nil) throws -> PromptEncoder {
        try PromptEncoder(tokenizer: CLIPTokenizer.load(folder),
                          model: CLIPTextModel.load(folder: folder.textEncoder(), variant: variant))
    }

    /// Token ids and weights of one prompt: with `weighting`, the web UI syntax is parsed (PromptWeighting);
    /// without, the prompt is tokenized as is (exactly diffusers' ids) and every weight is 1.
    public func tokens(_ prompt: String, weighting: Bool = true) throws -> (ids: [Int], weights: [Float]) {
        if weighting { return try PromptWeighting.weightedTokens(prompt, tokenizer: tokenizer) }
        let ids = tokenizer.encode(prompt)
        return (ids, [Float](repeating: 1, count: ids.count))
    }

    /// Encodes a batch of prompts (each padded/truncated to model_max_length) in one text-model forward.
    /// `clipSkip` k takes the output of layer L − k through final_layer_norm (diffusers' clip_skip; 0 = last layer).
    public func encode(prompts: [String], weighting: Bool = true, clipSkip: Int = 0) throws -> PromptEncoding {
        guard !prompts.isEmpty else { throw TextModelError.badInput("no prompts to encode") }
        let S = tokenizer.maxLength, D = model.width
        var ids: [Int] = [], weights: [Float] = []
        ids.reserveCapacity(prompts.count * S)
        for prompt in prompts {
            let t = try tokens(prompt, weighting: weighting)
            ids += t.ids
            weights += t.weights
        }
        let hidden = try model.forward(inputIds: ids, batch: prompts.count, length: S, skipLastLayers: clipSkip)
        for n in 0..<prompts.count {
            PromptWeighting.applyEmphasis(hidden.ptr + n * S * D, weights: Array(weights[(n * S)..<((n + 1) * S)]),
                                          length: S, width: D)
        }
        return PromptEncoding(count: prompts.count, length: S, width: D, inputIds: ids, weights: weights, hiddenStates: hidden)
    }
}
