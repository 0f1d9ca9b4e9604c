// The transformer encoder shared by CLIP's text tower (CLIPTextModel, causal) and vision tower (Sources/Scoring,
// CLIPVisionModel, full attention). Ref: transformers models/clip/modeling_clip.py, CLIPEncoderLayer:
//   x += out_proj(attention(layer_norm1(x)))      heads of size D/H, scale 1/sqrt(D/H)
//   x += fc2(act(fc1(layer_norm2(x))))            act quick_gelu (OpenAI CLIP) or gelu (LAION / open_clip)
// Parameters are looked up under transformers' keys `encoder.layers.{l}.…`.
import Layers
import Tensors

public struct CLIPEncoderLayers: Sendable {
    public let width: Int, intermediate: Int, heads: Int
    public let activation: TextActivation
    public let eps: Float

    public init(width: Int, intermediate: Int, heads: Int, activation: TextActivation, eps: Float) {
        self.width = width; self.intermediate = intermediate; self.heads = heads; self.activation = activation; self.eps = eps
    }

    /// State-dict keys and shapes of layers 0..<count.
    public func parameterShapes(count: Int) -> [(String, [Int])] {
        let D = width, I = intermediate
        var list: [(String, [Int])] = []
        for l in 0..<count {
            let p = "encoder.layers.\(l)."
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                list += [(p + "self_attn.\(proj).weight", [D, D]), (p + "self_attn.\(proj).bias", [D])]
            }
            list += [(p + "layer_norm1.weight", [D]), (p + "layer_norm1.bias", [D]),
                     (p + "mlp.fc1.weight", [I, D]), (p + "mlp.fc1.bias", [I]),
                     (p + "mlp.fc2.weight", [D, I]), (p + "mlp.fc2.bias", [D]),
                     (p + "layer_norm2.weight", [D]), (p + "layer_norm2.bias", [D])]
        }
        return list
    }

    /// Runs layers 0..<count over x (B, S, D) in place; `weight(key)` gives a parameter by its key.
    public func forward(_ x: UnsafeMutablePointer<Float>, batch B: Int, length S: Int, count: Int, causal: Bool,
                        weight p: (String) -> UnsafeMutablePointer<Float>) {
        let D = width, I = intermediate, H = heads, N = B * S
        let h = Buffer(uninitialized: N * D)                       // (N, D) layer-norm output
        let q = Buffer(uninitialized: N * D), k = Buffer(uninitialized: N * D), v = Buffer(uninitialized: N * D)
        let att = Buffer(uninitialized: N * D), proj = Buffer(uninitialized: N * D)
        let hidden = Buffer(uninitialized: N * I)                  // (N, I) MLP
        let mean = Buffer(uninitialized: N), rstd = Buffer(uninitialized: N)
        let lse = Buffer(uninitialized: B * H * S)
        let workspace = Buffer(uninitialized: attentionWorkspaceSize(B: B, Nq: S, Nk: S, heads: H, headDim: D / H))
        for l in 0..<count {
            let pre = "encoder.layers.\(l)."
            // x += out_proj(attention(layer_norm1(x)))
            layerNormForward(out: h.ptr, mean: mean.ptr, rstd: rstd.ptr, inp: x,
                             weight: p(pre + "layer_norm1.weight"), bias: p(pre + "layer_norm1.bias"), N: N, C: D, eps: eps)
            for (out, name) in [(q, "q_proj"), (k, "k_proj"), (v, "v_proj")] {
                linearForward(out: out.ptr, inp: h.ptr, weight: p(pre + "self_attn.\(name).weight"),
                              bias: p(pre + "self_attn.\(name).bias"), N: N, I: D, O: D)
            }
            attentionForward(out: att.ptr, lse: lse.ptr, q: q.ptr, k: k.ptr, v: v.ptr, B: B, Nq: S, Nk: S, heads: H,
                             headDim: D / H, workspace: workspace.ptr, causal: causal)
            linearForward(out: proj.ptr, inp: att.ptr, weight: p(pre + "self_attn.out_proj.weight"),
                          bias: p(pre + "self_attn.out_proj.bias"), N: N, I: D, O: D)
            addInto(x, proj.ptr, n: N * D)
            // x += fc2(act(fc1(layer_norm2(x))))
            layerNormForward(out: h.ptr, mean: mean.ptr, rstd: rstd.ptr, inp: x,
                             weight: p(pre + "layer_norm2.weight"), bias: p(pre + "layer_norm2.bias"), N: N, C: D, eps: eps)
            linearForward(out: hidden.ptr, inp: h.ptr, weight: p(pre + "mlp.fc1.weight"), bias: p(pre + "mlp.fc1.bias"),
                          N: N, I: D, O: I)
            switch activation {
            case .quickGelu: quickGeluForward(out: hidden.ptr, inp: hidden.ptr, n: N * I)
            case .gelu: geluForward(out: hidden.ptr, inp: hidden.ptr, n: N * I)
            }
            linearForward(out: proj.ptr, inp: hidden.ptr, weight: p(pre + "mlp.fc2.weight"), bias: p(pre + "mlp.fc2.bias"),
                          N: N, I: I, O: D)
            addInto(x, proj.ptr, n: N * D)
        }
    }
}
