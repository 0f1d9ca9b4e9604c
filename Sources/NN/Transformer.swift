// Attention and the transformer blocks built from it: diffusers' Attention (U-Net self/cross attention with LoRA,
// the VAE's single-head mid-block attention), BasicTransformerBlock and Transformer2DModel, and transformers'
// CLIPEncoderLayer (the text and vision towers share it). Attention keeps q, k, v, out and the log-sum-exp for
// backward (never the probabilities, see Layers/Attention.swift).
// Ref: diffusers models/attention_processor.py (Attention, AttnProcessor2_0), models/attention.py
// (BasicTransformerBlock, FeedForward, GEGLU), models/transformers/transformer_2d.py (Transformer2DModel);
// transformers models/clip/modeling_clip.py (CLIPAttention, CLIPMLP, CLIPEncoderLayer).
import Layers
import Tensors

// MARK: - Attention

/// The checkpoint names of an attention's four projections.
public struct AttentionKeys: Sendable {
    public let q: String, k: String, v: String, out: String
    public init(q: String, k: String, v: String, out: String) { self.q = q; self.k = k; self.v = v; self.out = out }
    /// diffusers: to_q, to_k, to_v, to_out.0
    public static let diffusers = AttentionKeys(q: "to_q", k: "to_k", v: "to_v", out: "to_out.0")
    /// transformers' CLIP: q_proj, k_proj, v_proj, out_proj
    public static let clip = AttentionKeys(q: "q_proj", k: "k_proj", v: "v_proj", out: "out_proj")
}

/// Multi-head attention over tokens (B, N, C): out(softmax(q·kᵀ/√d)·v), q from x, k and v from the context (or x).
public struct Attention {
    public let toQ: Linear, toK: Linear, toV: Linear, toOut: Linear
    public let heads: Int, headDim: Int, queryDim: Int, contextDim: Int
    public let isSelf: Bool, causal: Bool

    /// `qkvBias` gives q, k and v a bias (CLIP, the VAE; the U-Net's have none); the output projection always has one.
    public init(_ t: ParameterTable, _ key: String, queryDim: Int, contextDim: Int? = nil, heads: Int,
                keys: AttentionKeys = .diffusers, qkvBias: Bool = false, causal: Bool = false, lora: LoRAAdapters? = nil,
                allowBF16: Bool = true) {
        self.queryDim = queryDim; self.heads = heads; self.headDim = queryDim / heads
        self.contextDim = contextDim ?? queryDim; self.isSelf = contextDim == nil; self.causal = causal
        func linear(_ name: String, _ inFeatures: Int, bias: Bool) -> Linear {
            Linear(t, key + "." + name, inFeatures: inFeatures, outFeatures: queryDim, bias: bias, lora: lora, allowBF16: allowBF16)
        }
        toQ = linear(keys.q, queryDim, bias: qkvBias)
        toK = linear(keys.k, self.contextDim, bias: qkvBias)
        toV = linear(keys.v, self.contextDim, bias: qkvBias)
        toOut = linear(keys.out, queryDim, bias: true)
    }

    public struct Saved { let q: Buffer, k: Buffer, v: Buffer, o: Buffer, lse: Buffer, xaQ: Buffer?, xaK: Buffer?, xaV: Buffer?, xaO: Buffer? }

    /// The projections hold bf16 weights (mixed precision): the attention between them may then run in bf16 too
    /// (AttentionKernel.choose).
    var bf16: Bool { toQ.weight.isBF16 }

    /// x (B, N, C), context (B, S, Dc) or nil for self-attention -> (B, N, C)
    public func forward(_ p: Pass, _ x: Buffer, _ context: Buffer?, _ b: Int, _ n: Int, _ s: Int) -> (Buffer, Saved?) {
        let ctx = context ?? x
        let nk = context == nil ? n : s
        let (q, xaQ) = toQ.forward(p, x, b * n)
        let (k, xaK) = toK.forward(p, ctx, b * nk)
        let (v, xaV) = toV.forward(p, ctx, b * nk)
        let o = Buffer(uninitialized: b * n * queryDim)
        let lse = Buffer(uninitialized: b * heads * n)
        let ws = p.workspace.get(attentionWorkspaceSize(B: b, Nq: n, Nk: nk, heads: heads, headDim: headDim, bf16: bf16))
        attentionForward(out: o.ptr, lse: lse.ptr, q: q.ptr, k: k.ptr, v: v.ptr, B: b, Nq: n, Nk: nk, heads: heads,
                         headDim: headDim, workspace: ws, causal: causal, bf16: bf16)
        let (out, xaO) = toOut.forward(p, o, b * n)
        guard p.training else { return (out, nil) }
        return (out, Saved(q: q, k: k, v: v, o: o, lse: lse, xaQ: xaQ, xaK: xaK, xaV: xaV, xaO: xaO))
    }

    /// Accumulates d(x) into `dx` (`overwrite`: stores it, so `dx` need not be zeroed); the context gets no gradient
    /// (it does not depend on trainable parameters) but its projections' LoRA adapters do.
    public func backward(_ p: Pass, _ dout: Buffer, _ x: Buffer, _ context: Buffer?, _ sv: Saved, _ b: Int, _ n: Int, _ s: Int,
                         into dx: Buffer, overwrite: Bool = false) {
        let ctx = context ?? x
        let nk = context == nil ? n : s
        let dO = Buffer(uninitialized: sv.o.count)
        toOut.backward(p, dout, sv.o, sv.xaO, b * n, into: dO, overwrite: true)
        let dq = Buffer(zeros: sv.q.count), dk = Buffer(zeros: sv.k.count), dv = Buffer(zeros: sv.v.count)
        let ws = p.workspace.get(attentionWorkspaceSize(B: b, Nq: n, Nk: nk, heads: heads, headDim: headDim, bf16: bf16))
        attentionBackward(dq: dq.ptr, dk: dk.ptr, dv: dv.ptr, dout: dO.ptr, q: sv.q.ptr, k: sv.k.ptr, v: sv.v.ptr, out: sv.o.ptr,
                          lse: sv.lse.ptr, B: b, Nq: n, Nk: nk, heads: heads, headDim: headDim, workspace: ws, causal: causal,
                          bf16: bf16)
        toQ.backward(p, dq, x, sv.xaQ, b * n, into: dx, overwrite: overwrite)
        toK.backward(p, dk, ctx, sv.xaK, b * nk, into: isSelf ? dx : nil)
        toV.backward(p, dv, ctx, sv.xaV, b * nk, into: isSelf ? dx : nil)
    }
}

// MARK: - FeedForward (GEGLU)

public struct FeedForward {
    public let proj: Linear, out: Linear
    public let dim: Int, inner: Int

    public init(_ t: ParameterTable, _ key: String, dim: Int) {
        self.dim = dim; inner = 4 * dim
        proj = Linear(t, key + ".net.0.proj", inFeatures: dim, outFeatures: 2 * inner)
        out = Linear(t, key + ".net.2", inFeatures: inner, outFeatures: dim)
    }

    /// The GEGLU's input (N, 2·inner).
    public struct Saved { let h: Buffer }

    // (N, dim) -> (N, dim)
    public func forward(_ p: Pass, _ x: Buffer, _ n: Int) -> (Buffer, Saved?) {
        let h = proj.forward(p, x, n).out
        let g = Buffer(uninitialized: n * inner)
        gegluForward(out: g.ptr, inp: h.ptr, N: n, D: inner)
        return (out.forward(p, g, n).out, p.training ? Saved(h: h) : nil)
    }

    /// x: the forward's input, needed (with the recomputed GEGLU output) for the weight gradients (`p.grads`).
    /// Accumulates d(x) into `dx` (`overwrite`: stores it).
    public func backward(_ p: Pass, _ dout: Buffer, _ sv: Saved, _ n: Int, x: Buffer?, into dx: Buffer,
                         overwrite: Bool = false) {
        var g: Buffer?
        if p.grads != nil {
            let gg = Buffer(uninitialized: n * inner)
            gegluForward(out: gg.ptr, inp: sv.h.ptr, N: n, D: inner)
            g = gg
        }
        // Both stored, not accumulated: no zeroing of (n, inner) and (n, 2·inner) buffers.
        let dg = Buffer(uninitialized: n * inner)
        out.backward(p, dout, g, nil, n, into: dg, overwrite: true)
        let dh = Buffer(uninitialized: sv.h.count)
        gegluBackward(dinp: dh.ptr, dout: dg.ptr, inp: sv.h.ptr, N: n, D: inner, accumulate: false)
        proj.backward(p, dh, x, nil, n, into: dx, overwrite: overwrite)
    }
}

// MARK: - BasicTransformerBlock

/// t2 = x + attn1(norm1(x)); t3 = t2 + attn2(norm2(t2), context); out = t3 + ff(norm3(t3)).
public struct TransformerBlock {
    public let norm1: LayerNorm, attn1: Attention, norm2: LayerNorm, attn2: Attention, norm3: LayerNorm, ff: FeedForward
    public let dim: Int

    public init(_ t: ParameterTable, _ key: String, dim: Int, heads: Int, contextDim: Int, lora: LoRAAdapters?) {
        self.dim = dim
        norm1 = LayerNorm(t, key + ".norm1", channels: dim)
        attn1 = Attention(t, key + ".attn1", queryDim: dim, heads: heads, lora: lora)
        norm2 = LayerNorm(t, key + ".norm2", channels: dim)
        attn2 = Attention(t, key + ".attn2", queryDim: dim, contextDim: contextDim, heads: heads, lora: lora)
        norm3 = LayerNorm(t, key + ".norm3", channels: dim)
        ff = FeedForward(t, key + ".ff", dim: dim)
    }

    /// The block's residual stream and norm statistics (the norms' outputs are recomputed), and its layers' values.
    public struct Saved {
        let t1: Buffer, t2: Buffer, t3: Buffer, s1: LayerNorm.Stats, s2: LayerNorm.Stats, s3: LayerNorm.Stats
        let attn1: Attention.Saved, attn2: Attention.Saved, ff: FeedForward.Saved
    }

    /// tokens (B, N, dim), context (B, S, Dc) -> (B, N, dim)
    public func forward(_ p: Pass, _ x: Buffer, _ context: Buffer, _ b: Int, _ n: Int, _ s: Int) -> (Buffer, Saved?) {
        let (n1, s1) = norm1.forward(p, x, b * n)
        let (t2, a1) = attn1.forward(p, n1, nil, b, n, s)
        addInto(t2.ptr, x.ptr, n: t2.count)
        let (n2, s2) = norm2.forward(p, t2, b * n)
        let (t3, a2) = attn2.forward(p, n2, context, b, n, s)
        addInto(t3.ptr, t2.ptr, n: t3.count)
        let (n3, s3) = norm3.forward(p, t3, b * n)
        let (out, f) = ff.forward(p, n3, b * n)
        addInto(out.ptr, t3.ptr, n: out.count)
        guard let a1, let a2, let f else { return (out, nil) }
        return (out, Saved(t1: x, t2: t2, t3: t3, s1: s1, s2: s2, s3: s3, attn1: a1, attn2: a2, ff: f))
    }

    public func backward(_ p: Pass, _ dout: Buffer, _ context: Buffer, _ sv: Saved, _ b: Int, _ n: Int, _ s: Int) -> Buffer {
        let m = b * n
        // out = t3 + ff(norm3(t3))
        let dt3 = copyOf(dout)
        // The norms' input gradients are stored, not accumulated, into fresh buffers: no zeroing.
        let dn3 = Buffer(uninitialized: m * dim)
        ff.backward(p, dout, sv.ff, m, x: p.grads != nil ? norm3.forward(p, sv.t3, m).0 : nil, into: dn3, overwrite: true)
        norm3.backward(p, dn3, sv.t3, sv.s3, m, into: dt3)
        // t3 = t2 + attn2(norm2(t2), context)
        let dt2 = copyOf(dt3)
        let (n2, _) = norm2.forward(p, sv.t2, m)
        let dn2 = Buffer(uninitialized: m * dim)
        attn2.backward(p, dt3, n2, context, sv.attn2, b, n, s, into: dn2, overwrite: true)
        norm2.backward(p, dn2, sv.t2, sv.s2, m, into: dt2)
        // t2 = t1 + attn1(norm1(t1))
        let dt1 = copyOf(dt2)
        let (n1, _) = norm1.forward(p, sv.t1, m)
        let dn1 = Buffer(uninitialized: m * dim)
        attn1.backward(p, dt2, n1, nil, sv.attn1, b, n, s, into: dn1, overwrite: true)
        norm1.backward(p, dn1, sv.t1, sv.s1, m, into: dt1)
        return dt1
    }
}

// MARK: - Transformer2DModel

/// GroupNorm → proj_in (1x1 conv, or linear on tokens) → transformer blocks → proj_out, plus the input.
public struct Transformer2D {
    public let norm: GroupNorm
    public let projInConv: Conv2d?, projOutConv: Conv2d?
    public let projInLinear: Linear?, projOutLinear: Linear?
    public let blocks: [TransformerBlock]
    public let channels: Int

    public init(_ t: ParameterTable, _ key: String, channels: Int, heads: Int, contextDim: Int, layers: Int, groups: Int,
                linearProjection: Bool, lora: LoRAAdapters?) {
        self.channels = channels
        norm = GroupNorm(t, key + ".norm", channels: channels, groups: groups, eps: 1e-6)   // diffusers: eps 1e-6 here
        let one = Conv2DPadding(0)
        projInLinear = linearProjection ? Linear(t, key + ".proj_in", inFeatures: channels, outFeatures: channels) : nil
        projInConv = linearProjection ? nil : Conv2d(t, key + ".proj_in", cin: channels, cout: channels, kernel: 1, padding: one)
        blocks = (0..<layers).map {
            TransformerBlock(t, key + ".transformer_blocks.\($0)", dim: channels, heads: heads, contextDim: contextDim, lora: lora)
        }
        projOutLinear = linearProjection ? Linear(t, key + ".proj_out", inFeatures: channels, outFeatures: channels) : nil
        projOutConv = linearProjection ? nil : Conv2d(t, key + ".proj_out", cin: channels, cout: channels, kernel: 1, padding: one)
    }

    /// `tokens`: the last block's output, proj_out's input (kept only when the parameters are trained).
    public struct Saved { let x: Buffer, st: GroupNorm.Stats, blocks: [TransformerBlock.Saved], tokens: Buffer? }

    /// x (B, C, H, W), context (B, S, Dc) -> (B, C, H, W)
    public func forward(_ p: Pass, _ x: Buffer, _ context: Buffer, _ b: Int, _ hh: Int, _ ww: Int, _ s: Int) -> (Buffer, Saved?) {
        let hw = hh * ww, c = channels
        let (n, st) = norm.forward(p, x, b, hw)
        var tokens = Buffer(uninitialized: b * hw * c)
        if let projInConv {
            let h = projInConv.forward(p, n, b, hh, ww)
            channelsToTokens(out: tokens.ptr, inp: h.ptr, B: b, C: c, HW: hw)
        } else {
            channelsToTokens(out: tokens.ptr, inp: n.ptr, B: b, C: c, HW: hw)
            tokens = projInLinear!.forward(p, tokens, b * hw).out
        }
        var saved: [TransformerBlock.Saved] = []
        for blk in blocks {
            let (y, sv) = blk.forward(p, tokens, context, b, hw, s)
            tokens = y
            if let sv { saved.append(sv) }
        }
        let out = Buffer(uninitialized: b * c * hw)
        if let projOutConv {
            let h = Buffer(uninitialized: b * c * hw)
            tokensToChannels(out: h.ptr, inp: tokens.ptr, B: b, C: c, HW: hw)
            let o = projOutConv.forward(p, h, b, hh, ww)
            out.ptr.update(from: o.ptr, count: o.count)
        } else {
            let o = projOutLinear!.forward(p, tokens, b * hw).out
            tokensToChannels(out: out.ptr, inp: o.ptr, B: b, C: c, HW: hw)
        }
        addInto(out.ptr, x.ptr, n: out.count)
        return (out, p.training ? Saved(x: x, st: st, blocks: saved, tokens: p.grads != nil ? tokens : nil) : nil)
    }

    public func backward(_ p: Pass, _ dout: Buffer, _ context: Buffer, _ sv: Saved, _ b: Int, _ hh: Int, _ ww: Int, _ s: Int) -> Buffer {
        let hw = hh * ww, c = channels
        // With `p.grads` the projections' inputs are needed: the saved last tokens and the recomputed norm output.
        let full = p.grads != nil
        let normed = full ? norm.forward(p, sv.x, b, hw).0 : nil
        var dtokens = Buffer(uninitialized: b * hw * c)
        if let projOutConv {
            var h: Buffer?
            if full {
                h = Buffer(uninitialized: b * c * hw)
                tokensToChannels(out: h!.ptr, inp: sv.tokens!.ptr, B: b, C: c, HW: hw)
            }
            let dh = projOutConv.backward(p, dout, b, hh, ww, x: h)
            channelsToTokens(out: dtokens.ptr, inp: dh.ptr, B: b, C: c, HW: hw)
        } else {
            let dO = Buffer(uninitialized: b * hw * c)
            channelsToTokens(out: dO.ptr, inp: dout.ptr, B: b, C: c, HW: hw)
            dtokens = Buffer(zeros: b * hw * c)
            projOutLinear!.backward(p, dO, sv.tokens, nil, b * hw, into: dtokens)
        }
        for (blk, saved) in zip(blocks, sv.blocks).reversed() { dtokens = blk.backward(p, dtokens, context, saved, b, hw, s) }
        let dn: Buffer
        if let projInConv {
            let dh = Buffer(uninitialized: b * c * hw)
            tokensToChannels(out: dh.ptr, inp: dtokens.ptr, B: b, C: c, HW: hw)
            dn = projInConv.backward(p, dh, b, hh, ww, x: normed)
        } else {
            var tokensIn: Buffer?
            if let normed {
                tokensIn = Buffer(uninitialized: b * hw * c)
                channelsToTokens(out: tokensIn!.ptr, inp: normed.ptr, B: b, C: c, HW: hw)
            }
            let d = Buffer(zeros: b * hw * c)
            projInLinear!.backward(p, dtokens, tokensIn, nil, b * hw, into: d)
            dn = Buffer(uninitialized: b * c * hw)
            tokensToChannels(out: dn.ptr, inp: d.ptr, B: b, C: c, HW: hw)
        }
        let dx = copyOf(dout)
        norm.backward(p, dn, sv.x, sv.st, b, hw, into: dx)
        return dx
    }
}

// MARK: - CLIPEncoderLayer

/// CLIP's MLP activation (config `hidden_act`).
public enum CLIPActivation: String, Sendable {
    case quickGelu = "quick_gelu"
    case gelu = "gelu"
}

/// x += out_proj(attention(layer_norm1(x))); x += fc2(act(fc1(layer_norm2(x)))). Forward only. Causal in the text
/// tower (token i sees tokens ≤ i), full in the vision tower.
public struct CLIPEncoderLayer {
    public let selfAttn: Attention, layerNorm1: LayerNorm, fc1: Linear, fc2: Linear, layerNorm2: LayerNorm
    public let activation: CLIPActivation

    public init(_ t: ParameterTable, _ key: String, width: Int, intermediate: Int, heads: Int, eps: Double,
                activation: CLIPActivation, causal: Bool) {
        self.activation = activation
        selfAttn = Attention(t, key + ".self_attn", queryDim: width, heads: heads, keys: .clip, qkvBias: true, causal: causal)
        layerNorm1 = LayerNorm(t, key + ".layer_norm1", channels: width, eps: eps)
        fc1 = Linear(t, key + ".mlp.fc1", inFeatures: width, outFeatures: intermediate)
        fc2 = Linear(t, key + ".mlp.fc2", inFeatures: intermediate, outFeatures: width)
        layerNorm2 = LayerNorm(t, key + ".layer_norm2", channels: width, eps: eps)
    }

    /// x (B, S, D), updated in place.
    public func forward(_ p: Pass, _ x: Buffer, _ b: Int, _ s: Int) {
        let n = b * s
        do {
            let h = layerNorm1.forward(p, x, n).0
            let a = selfAttn.forward(p, h, nil, b, s, s).0
            addInto(x.ptr, a.ptr, n: x.count)
        }
        let h = layerNorm2.forward(p, x, n).0
        let hidden = fc1.forward(p, h, n).out
        switch activation {
        case .quickGelu: quickGeluForward(out: hidden.ptr, inp: hidden.ptr, n: hidden.count)
        case .gelu: geluForward(out: hidden.ptr, inp: hidden.ptr, n: hidden.count)
        }
        let y = fc2.forward(p, hidden, n).out
        addInto(x.ptr, y.ptr, n: x.count)
    }
}
