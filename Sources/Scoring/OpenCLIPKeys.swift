// open_clip's state-dict keys → transformers CLIPModel keys, as a small table of rules. open_clip (and HPS v2, an
// open_clip ViT-H-14 fine-tune) keeps attention as one in_proj (3D, D) = [q; k; v] and its projections as (D, P)
// matrices used as x @ proj; transformers has q/k/v_proj and Linear weights (P, D).
// Ref: open_clip src/open_clip/model.py (CLIP, VisionTransformer, TextTransformer), transformer.py
// (ResidualAttentionBlock: ln_1, attn, ln_2, mlp.c_fc / mlp.c_proj); transformers convert_clip_original_pytorch_to_hf.py.
enum OpenCLIPKeys {
    /// Whole-tensor renames (after the block rules below).
    static let renames: [String: String] = [
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight", "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight", "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    ]
    /// Renames inside a residual block.
    static let blockParts: [String: String] = [
        "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    ]

    /// The transformers tensors an open_clip tensor becomes (none: not a CLIP tensor).
    static func map(_ name: String, values: [Float], shape: [Int]) -> [(String, [Float], [Int])] {
        if let key = renames[name] { return [(key, values, shape)] }
        // Projections: x @ proj (D, P) → Linear weight (P, D).
        if (name == "visual.proj" || name == "text_projection") && shape.count == 2 {
            let (d, p) = (shape[0], shape[1])
            var t = [Float](repeating: 0, count: values.count)
            for i in 0..<d { for j in 0..<p { t[j * d + i] = values[i * p + j] } }
            return [(name == "visual.proj" ? "visual_projection.weight" : "text_projection.weight", t, [p, d])]
        }
        // Blocks: visual.transformer.resblocks.N.… / transformer.resblocks.N.…
        for (prefix, tower) in [("visual.transformer.resblocks.", "vision_model"), ("transformer.resblocks.", "text_model")]
        where name.hasPrefix(prefix) {
            let rest = name.dropFirst(prefix.count)
            guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return [] }
            let part = String(rest[rest.index(after: dot)...])
            let base = "\(tower).encoder.layers.\(layer)."
            if part == "attn.in_proj_weight" || part == "attn.in_proj_bias" {
                let kind = part.hasSuffix("weight") ? "weight" : "bias"
                let rows = shape[0] / 3, per = values.count / 3
                return ["q_proj", "k_proj", "v_proj"].enumerated().map { i, proj in
                    (base + "self_attn.\(proj).\(kind)", Array(values[(i * per)..<((i + 1) * per)]), kind == "weight" ? [rows, shape[1]] : [rows])
                }
            }
            for (from, to) in blockParts where part.hasPrefix(from + ".") {
                return [(base + to + part.dropFirst(from.count), values, shape)]
            }
            return []
        }
        return []
    }
}
