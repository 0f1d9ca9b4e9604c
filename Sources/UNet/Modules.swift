// The modules of diffusers' UNet2DConditionModel as forward/backward pairs over flat buffers. Each module holds
// offsets into the base-weight buffer (keys are the diffusers state-dict names) and, when training, caches what its
// backward needs; frozen weights get no gradients, so convolutions and linears only propagate input gradients, and
// the LoRA projections of the attention layers also accumulate into the flat LoRA gradient buffer.
// Memory: inputs of norms are cached and their outputs recomputed in backward; attention keeps q, k, v, out and the
// log-sum-exp (never the probabilities, see Layers/Attention.swift).
// Ref: diffusers models/resnet.py (ResnetBlock2D, Downsample2D, Upsample2D), models/attention.py
// (BasicTransformerBlock, FeedForward), models/attention_processor.py (Attention, AttnProcessor2_0),
// models/transformers/transformer_2d.py (Transformer2DModel).
import Layers
import Tensors

/// Shared by all modules during one forward or backward pass.
final class Pass {
    let w: UnsafeMutablePointer<Float>          // fp32 base weights: all of them, or (mixed precision) norms and biases
    let wBF16: UnsafeMutablePointer<UInt16>?    // mixed precision: the conv / linear weights (ParameterTable.addMatrix)
    let lora: LoRAAdapters?
    /// LoRA multiplier scale·alpha/r, or nil when adapters are off (the reference model).
    let loraMultiplier: Float?
    /// Cache activations for a backward pass.
    let training: Bool
    let workspace: Workspace

    init(weights: BaseWeights, lora: LoRAAdapters?, loraMultiplier: Float?, training: Bool, workspace: Workspace) {
        w = weights.storage.ptr
        wBF16 = weights.table.precision == .bf16 ? weights.bf16Storage.ptr : nil
        self.lora = lora; self.loraMultiplier = loraMultiplier; self.training = training; self.workspace = workspace
    }

    /// The conv / linear weight at `offset` (an offset `ParameterTable.addMatrix` returned): fp32 or bf16.
    @inline(__always)
    func matrix(_ offset: Int) -> WeightMatrix { wBF16.map { .bf16($0 + offset) } ?? .f32(w + offset) }
}

/// One growable scratch allocation reused by every kernel (kernels run one at a time).
final class Workspace {
    private var buffer = Buffer(uninitialized: 0)
    func get(_ count: Int) -> UnsafeMutablePointer<Float> {
        if buffer.count < count { buffer = Buffer(uninitialized: count) }
        return buffer.ptr
    }
}

// MARK: - Leaf modules

struct Conv2d {
    let weight: Int, bias: Int
    let cin: Int, cout: Int, kernel: Int, stride: Int, padding: Int

    init(_ t: ParameterTable, _ key: String, cin: Int, cout: Int, kernel: Int, stride: Int = 1, padding: Int? = nil) {
        self.cin = cin; self.cout = cout; self.kernel = kernel; self.stride = stride; self.padding = padding ?? kernel / 2
        weight = t.addMatrix(key + ".weight", [cout, cin, kernel, kernel])
        bias = t.add(key + ".bias", [cout])
    }

    func outSize(_ h: Int, _ w: Int) -> (Int, Int) {
        ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1)
    }

    // (B, cin, H, W) -> (B, cout, Ho, Wo)
    func forward(_ p: Pass, _ x: Buffer, _ b: Int, _ h: Int, _ w: Int) -> Buffer {
        let (ho, wo) = outSize(h, w)
        let out = Buffer(uninitialized: b * cout * ho * wo)
        let ws = p.workspace.get(conv2dWorkspaceSize(Cin: cin, H: h, W: w, kernel: kernel, stride: stride, padding: padding))
        conv2dForward(out: out.ptr, inp: x.ptr, weight: p.matrix(weight), bias: p.w + bias, B: b, Cin: cin, H: h, W: w, Cout: cout,
                      kernel: kernel, stride: stride, padding: padding, workspace: ws)
        return out
    }

    // dout (B, cout, Ho, Wo) -> dinp (B, cin, H, W)
    func backward(_ p: Pass, _ dout: Buffer, _ b: Int, _ h: Int, _ w: Int) -> Buffer {
        let dinp = Buffer(zeros: b * cin * h * w)
        let ws = p.workspace.get(conv2dWorkspaceSize(Cin: cin, H: h, W: w, kernel: kernel, stride: stride, padding: padding))
        conv2dBackwardInput(dinp: dinp.ptr, dout: dout.ptr, weight: p.matrix(weight), B: b, Cin: cin, H: h, W: w, Cout: cout,
                            kernel: kernel, stride: stride, padding: padding, workspace: ws)
        return dinp
    }
}

struct GroupNorm {
    let weight: Int, bias: Int, channels: Int, groups: Int
    let eps: Float

    init(_ t: ParameterTable, _ key: String, channels: Int, groups: Int, eps: Double) {
        self.channels = channels; self.groups = groups; self.eps = Float(eps)
        weight = t.add(key + ".weight", [channels])
        bias = t.add(key + ".bias", [channels])
    }

    struct Stats { let mean: Buffer, rstd: Buffer }

    // (B, C, HW) -> (B, C, HW), with per-(batch, group) statistics
    func forward(_ p: Pass, _ x: Buffer, _ b: Int, _ hw: Int) -> (Buffer, Stats) {
        let out = Buffer(uninitialized: b * channels * hw)
        let st = Stats(mean: Buffer(uninitialized: b * groups), rstd: Buffer(uninitialized: b * groups))
        groupNormForward(out: out.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr, inp: x.ptr, weight: p.w + weight, bias: p.w + bias,
                         B: b, C: channels, HW: hw, groups: groups, eps: eps)
        return (out, st)
    }

    func backward(_ p: Pass, _ dout: Buffer, _ x: Buffer, _ st: Stats, _ b: Int, _ hw: Int, into dinp: Buffer) {
        groupNormBackward(dinp: dinp.ptr, dout: dout.ptr, inp: x.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr, weight: p.w + weight,
                          B: b, C: channels, HW: hw, groups: groups)
    }
}

struct LayerNorm {
    let weight: Int, bias: Int, channels: Int
    let eps: Float = 1e-5

    init(_ t: ParameterTable, _ key: String, channels: Int) {
        self.channels = channels
        weight = t.add(key + ".weight", [channels])
        bias = t.add(key + ".bias", [channels])
    }

    struct Stats { let mean: Buffer, rstd: Buffer }

    // (N, C) -> (N, C)
    func forward(_ p: Pass, _ x: Buffer, _ n: Int) -> (Buffer, Stats) {
        let out = Buffer(uninitialized: n * channels)
        let st = Stats(mean: Buffer(uninitialized: n), rstd: Buffer(uninitialized: n))
        layerNormForward(out: out.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr, inp: x.ptr, weight: p.w + weight, bias: p.w + bias,
                         N: n, C: channels, eps: eps)
        return (out, st)
    }

    func backward(_ p: Pass, _ dout: Buffer, _ x: Buffer, _ st: Stats, _ n: Int, into dinp: Buffer) {
        layerNormBackward(dinp: dinp.ptr, dout: dout.ptr, inp: x.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr, weight: p.w + weight,
                          N: n, C: channels)
    }
}

/// A frozen linear layer, optionally with a LoRA adapter (the attention projections).
struct Linear {
    let weight: Int, bias: Int?
    let inFeatures: Int, outFeatures: Int
    let lora: Int?   // index into LoRAAdapters.targets

    init(_ t: ParameterTable, _ key: String, inFeatures: Int, outFeatures: Int, bias: Bool = true, lora: LoRAAdapters? = nil) {
        self.inFeatures = inFeatures; self.outFeatures = outFeatures
        weight = t.addMatrix(key + ".weight", [outFeatures, inFeatures])
        self.bias = bias ? t.add(key + ".bias", [outFeatures]) : nil
        self.lora = lora?.add(module: key, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    /// (N, in) -> (N, out); with LoRA on, also returns x·Aᵀ (N, r) for the backward pass.
    func forward(_ p: Pass, _ x: Buffer, _ n: Int) -> (Buffer, Buffer?) {
        let out = Buffer(uninitialized: n * outFeatures)
        linearForward(out: out.ptr, inp: x.ptr, weight: p.matrix(weight), bias: bias.map { p.w + $0 }, N: n, I: inFeatures, O: outFeatures)
        guard let li = lora, let adapters = p.lora, let m = p.loraMultiplier else { return (out, nil) }
        let t = adapters.targets[li]
        let xa = Buffer(uninitialized: n * adapters.rank)
        loraForward(out: out.ptr, xa: xa.ptr, inp: x.ptr, a: adapters.a(t), b: adapters.b(t), N: n, I: inFeatures, O: outFeatures,
                    rank: adapters.rank, scale: m)
        return (out, p.training ? xa : nil)
    }

    /// Accumulates the input gradient into `dinp` (unless nil) and, with LoRA on, the adapter's gradients.
    func backward(_ p: Pass, _ dout: Buffer, _ x: Buffer, _ xa: Buffer?, _ n: Int, into dinp: Buffer?) {
        if let dinp {
            linearBackwardInput(dinp: dinp.ptr, dout: dout.ptr, weight: p.matrix(weight), N: n, I: inFeatures, O: outFeatures)
        }
        guard let li = lora, let adapters = p.lora, let m = p.loraMultiplier, let xa else { return }
        let t = adapters.targets[li]
        let ws = p.workspace.get(loraWorkspaceSize(N: n, rank: adapters.rank))
        loraBackward(dinp: dinp?.ptr, da: adapters.gradA(t), db: adapters.gradB(t), dout: dout.ptr, inp: x.ptr,
                     xa: xa.ptr, a: adapters.a(t), b: adapters.b(t), N: n, I: inFeatures, O: outFeatures, rank: adapters.rank,
                     scale: m, workspace: ws)
    }
}

// MARK: - ResnetBlock2D

final class ResnetBlock {
    let norm1: GroupNorm, conv1: Conv2d, timeEmbProj: Linear, norm2: GroupNorm, conv2: Conv2d
    let shortcut: Conv2d?
    let cin: Int, cout: Int
    // Cache: input, norm2's input, norm statistics.
    private var x: Buffer?, h: Buffer?, st1: GroupNorm.Stats?, st2: GroupNorm.Stats?

    init(_ t: ParameterTable, _ key: String, cin: Int, cout: Int, tembDim: Int, groups: Int, eps: Double) {
        self.cin = cin; self.cout = cout
        norm1 = GroupNorm(t, key + ".norm1", channels: cin, groups: groups, eps: eps)
        conv1 = Conv2d(t, key + ".conv1", cin: cin, cout: cout, kernel: 3)
        timeEmbProj = Linear(t, key + ".time_emb_proj", inFeatures: tembDim, outFeatures: cout)
        norm2 = GroupNorm(t, key + ".norm2", channels: cout, groups: groups, eps: eps)
        conv2 = Conv2d(t, key + ".conv2", cin: cout, cout: cout, kernel: 3)
        shortcut = cin != cout ? Conv2d(t, key + ".conv_shortcut", cin: cin, cout: cout, kernel: 1, padding: 0) : nil
    }

    /// x (B, cin, H, W), tembAct = SiLU(temb) (B, tembDim) -> (B, cout, H, W)
    func forward(_ p: Pass, _ x: Buffer, _ tembAct: Buffer, _ b: Int, _ hh: Int, _ ww: Int) -> Buffer {
        let hw = hh * ww
        let (n1, st1) = norm1.forward(p, x, b, hw)
        siluForward(out: n1.ptr, inp: n1.ptr, n: n1.count)
        let h = conv1.forward(p, n1, b, hh, ww)
        let (tp, _) = timeEmbProj.forward(p, tembAct, b)
        for bi in 0..<b {
            for c in 0..<cout {
                let v = tp.ptr[bi * cout + c]
                let row = h.ptr + (bi * cout + c) * hw
                for i in 0..<hw { row[i] += v }
            }
        }
        let (n2, st2) = norm2.forward(p, h, b, hw)
        siluForward(out: n2.ptr, inp: n2.ptr, n: n2.count)
        let out = conv2.forward(p, n2, b, hh, ww)
        if let shortcut {
            let s = shortcut.forward(p, x, b, hh, ww)
            addInPlace(out.ptr, s.ptr, out.count)
        } else {
            addInPlace(out.ptr, x.ptr, out.count)
        }
        if p.training { self.x = x; self.h = h; self.st1 = st1; self.st2 = st2 }
        return out
    }

    /// dout (B, cout, H, W) -> dx (B, cin, H, W)
    func backward(_ p: Pass, _ dout: Buffer, _ b: Int, _ hh: Int, _ ww: Int) -> Buffer {
        guard let x, let h, let st1, let st2 else { preconditionFailure("ResnetBlock.backward without a training forward") }
        let hw = hh * ww
        // out = conv2(silu(norm2(h))) + shortcut(x)
        let ds2 = conv2.backward(p, dout, b, hh, ww)
        let (n2, _) = norm2.forward(p, h, b, hw)                  // recompute norm2's output (SiLU's input)
        let dn2 = Buffer(zeros: n2.count)
        siluBackward(dinp: dn2.ptr, dout: ds2.ptr, inp: n2.ptr, n: n2.count)
        let dh = Buffer(zeros: h.count)
        norm2.backward(p, dn2, h, st2, b, hw, into: dh)
        // h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb)): the time path has no trainable parameters.
        let ds1 = conv1.backward(p, dh, b, hh, ww)
        let (n1, _) = norm1.forward(p, x, b, hw)
        let dn1 = Buffer(zeros: n1.count)
        siluBackward(dinp: dn1.ptr, dout: ds1.ptr, inp: n1.ptr, n: n1.count)
        let dx: Buffer
        if let shortcut { dx = shortcut.backward(p, dout, b, hh, ww) } else { dx = Buffer(dout.array) }
        norm1.backward(p, dn1, x, st1, b, hw, into: dx)
        self.x = nil; self.h = nil; self.st1 = nil; self.st2 = nil
        return dx
    }
}

// MARK: - Attention

final class Attention {
    let toQ: Linear, toK: Linear, toV: Linear, toOut: Linear
    let heads: Int, headDim: Int, queryDim: Int, contextDim: Int
    let isSelf: Bool
    private var q: Buffer?, k: Buffer?, v: Buffer?, o: Buffer?, lse: Buffer?
    private var xaQ: Buffer?, xaK: Buffer?, xaV: Buffer?, xaO: Buffer?

    init(_ t: ParameterTable, _ key: String, queryDim: Int, contextDim: Int?, heads: Int, lora: LoRAAdapters?) {
        self.queryDim = queryDim; self.heads = heads; self.headDim = queryDim / heads
        self.contextDim = contextDim ?? queryDim; self.isSelf = contextDim == nil
        toQ = Linear(t, key + ".to_q", inFeatures: queryDim, outFeatures: queryDim, bias: false, lora: lora)
        toK = Linear(t, key + ".to_k", inFeatures: self.contextDim, outFeatures: queryDim, bias: false, lora: lora)
        toV = Linear(t, key + ".to_v", inFeatures: self.contextDim, outFeatures: queryDim, bias: false, lora: lora)
        toOut = Linear(t, key + ".to_out.0", inFeatures: queryDim, outFeatures: queryDim, bias: true, lora: lora)
    }

    /// x (B, N, C), context (B, S, Dc) or nil for self-attention -> (B, N, C)
    func forward(_ p: Pass, _ x: Buffer, _ context: Buffer?, _ b: Int, _ n: Int, _ s: Int) -> Buffer {
        let ctx = context ?? x
        let nk = context == nil ? n : s
        let (q, xaQ) = toQ.forward(p, x, b * n)
        let (k, xaK) = toK.forward(p, ctx, b * nk)
        let (v, xaV) = toV.forward(p, ctx, b * nk)
        let o = Buffer(uninitialized: b * n * queryDim)
        let lse = Buffer(uninitialized: b * heads * n)
        let ws = p.workspace.get(attentionWorkspaceSize(B: b, Nq: n, Nk: nk, heads: heads, headDim: headDim))
        attentionForward(out: o.ptr, lse: lse.ptr, q: q.ptr, k: k.ptr, v: v.ptr, B: b, Nq: n, Nk: nk, heads: heads,
                         headDim: headDim, workspace: ws)
        let (out, xaO) = toOut.forward(p, o, b * n)
        if p.training {
            self.q = q; self.k = k; self.v = v; self.o = o; self.lse = lse
            self.xaQ = xaQ; self.xaK = xaK; self.xaV = xaV; self.xaO = xaO
        }
        return out
    }

    /// Accumulates d(x) into `dx`; the context gets no gradient (it does not depend on trainable parameters) but its
    /// projections' LoRA adapters do.
    func backward(_ p: Pass, _ dout: Buffer, _ x: Buffer, _ context: Buffer?, _ b: Int, _ n: Int, _ s: Int, into dx: Buffer) {
        guard let q, let k, let v, let o, let lse else { preconditionFailure("Attention.backward without a training forward") }
        let ctx = context ?? x
        let nk = context == nil ? n : s
        let dO = Buffer(zeros: o.count)
        toOut.backward(p, dout, o, xaO, b * n, into: dO)
        let dq = Buffer(zeros: q.count), dk = Buffer(zeros: k.count), dv = Buffer(zeros: v.count)
        let ws = p.workspace.get(attentionWorkspaceSize(B: b, Nq: n, Nk: nk, heads: heads, headDim: headDim))
        attentionBackward(dq: dq.ptr, dk: dk.ptr, dv: dv.ptr, dout: dO.ptr, q: q.ptr, k: k.ptr, v: v.ptr, out: o.ptr, lse: lse.ptr,
                          B: b, Nq: n, Nk: nk, heads: heads, headDim: headDim, workspace: ws)
        toQ.backward(p, dq, x, xaQ, b * n, into: dx)
        toK.backward(p, dk, ctx, xaK, b * nk, into: isSelf ? dx : nil)
        toV.backward(p, dv, ctx, xaV, b * nk, into: isSelf ? dx : nil)
        self.q = nil; self.k = nil; self.v = nil; self.o = nil; self.lse = nil
        self.xaQ = nil; self.xaK = nil; self.xaV = nil; self.xaO = nil
    }
}

// MARK: - FeedForward (GEGLU)

final class FeedForward {
    let proj: Linear, out: Linear
    let dim: Int, inner: Int
    private var h: Buffer?

    init(_ t: ParameterTable, _ key: String, dim: Int) {
        self.dim = dim; inner = 4 * dim
        proj = Linear(t, key + ".net.0.proj", inFeatures: dim, outFeatures: 2 * inner)
        out = Linear(t, key + ".net.2", inFeatures: inner, outFeatures: dim)
    }

    // (N, dim) -> (N, dim)
    func forward(_ p: Pass, _ x: Buffer, _ n: Int) -> Buffer {
        let (h, _) = proj.forward(p, x, n)
        let g = Buffer(uninitialized: n * inner)
        gegluForward(out: g.ptr, inp: h.ptr, N: n, D: inner)
        let (y, _) = out.forward(p, g, n)
        if p.training { self.h = h }
        return y
    }

    func backward(_ p: Pass, _ dout: Buffer, _ n: Int, into dx: Buffer) {
        guard let h else { preconditionFailure("FeedForward.backward without a training forward") }
        let dg = Buffer(zeros: n * inner)
        linearBackwardInput(dinp: dg.ptr, dout: dout.ptr, weight: p.matrix(out.weight), N: n, I: inner, O: dim)
        let dh = Buffer(zeros: h.count)
        gegluBackward(dinp: dh.ptr, dout: dg.ptr, inp: h.ptr, N: n, D: inner)
        linearBackwardInput(dinp: dx.ptr, dout: dh.ptr, weight: p.matrix(proj.weight), N: n, I: dim, O: 2 * inner)
        self.h = nil
    }
}

// MARK: - BasicTransformerBlock

final class TransformerBlock {
    let norm1: LayerNorm, attn1: Attention, norm2: LayerNorm, attn2: Attention, norm3: LayerNorm, ff: FeedForward
    let dim: Int
    private var t1: Buffer?, t2: Buffer?, t3: Buffer?, s1: LayerNorm.Stats?, s2: LayerNorm.Stats?, s3: LayerNorm.Stats?

    init(_ t: ParameterTable, _ key: String, dim: Int, heads: Int, contextDim: Int, lora: LoRAAdapters?) {
        self.dim = dim
        norm1 = LayerNorm(t, key + ".norm1", channels: dim)
        attn1 = Attention(t, key + ".attn1", queryDim: dim, contextDim: nil, heads: heads, lora: lora)
        norm2 = LayerNorm(t, key + ".norm2", channels: dim)
        attn2 = Attention(t, key + ".attn2", queryDim: dim, contextDim: contextDim, heads: heads, lora: lora)
        norm3 = LayerNorm(t, key + ".norm3", channels: dim)
        ff = FeedForward(t, key + ".ff", dim: dim)
    }

    /// tokens (B, N, dim), context (B, S, Dc) -> (B, N, dim)
    func forward(_ p: Pass, _ x: Buffer, _ context: Buffer, _ b: Int, _ n: Int, _ s: Int) -> Buffer {
        let (n1, s1) = norm1.forward(p, x, b * n)
        let t2 = attn1.forward(p, n1, nil, b, n, s)
        addInPlace(t2.ptr, x.ptr, t2.count)
        let (n2, s2) = norm2.forward(p, t2, b * n)
        let t3 = attn2.forward(p, n2, context, b, n, s)
        addInPlace(t3.ptr, t2.ptr, t3.count)
        let (n3, s3) = norm3.forward(p, t3, b * n)
        let out = ff.forward(p, n3, b * n)
        addInPlace(out.ptr, t3.ptr, out.count)
        if p.training { t1 = x; self.t2 = t2; self.t3 = t3; self.s1 = s1; self.s2 = s2; self.s3 = s3 }
        return out
    }

    func backward(_ p: Pass, _ dout: Buffer, _ context: Buffer, _ b: Int, _ n: Int, _ s: Int) -> Buffer {
        guard let t1, let t2, let t3, let s1, let s2, let s3 else { preconditionFailure("TransformerBlock.backward without a training forward") }
        let m = b * n
        // out = t3 + ff(norm3(t3))
        let dt3 = Buffer(dout.array)
        let dn3 = Buffer(zeros: m * dim)
        ff.backward(p, dout, m, into: dn3)
        norm3.backward(p, dn3, t3, s3, m, into: dt3)
        // t3 = t2 + attn2(norm2(t2), context)
        let dt2 = Buffer(dt3.array)
        let (n2, _) = norm2.forward(p, t2, m)
        let dn2 = Buffer(zeros: m * dim)
        attn2.backward(p, dt3, n2, context, b, n, s, into: dn2)
        norm2.backward(p, dn2, t2, s2, m, into: dt2)
        // t2 = t1 + attn1(norm1(t1))
        let dt1 = Buffer(dt2.array)
        let (n1, _) = norm1.forward(p, t1, m)
        let dn1 = Buffer(zeros: m * dim)
        attn1.backward(p, dt2, n1, nil, b, n, s, into: dn1)
        norm1.backward(p, dn1, t1, s1, m, into: dt1)
        self.t1 = nil; self.t2 = nil; self.t3 = nil; self.s1 = nil; self.s2 = nil; self.s3 = nil
        return dt1
    }
}

// MARK: - Transformer2DModel

final class Transformer2D {
    let norm: GroupNorm
    let projInConv: Conv2d?, projOutConv: Conv2d?
    let projInLinear: Linear?, projOutLinear: Linear?
    let blocks: [TransformerBlock]
    let channels: Int
    private var x: Buffer?, st: GroupNorm.Stats?

    init(_ t: ParameterTable, _ key: String, channels: Int, heads: Int, contextDim: Int, layers: Int, groups: Int,
         linearProjection: Bool, lora: LoRAAdapters?) {
        self.channels = channels
        norm = GroupNorm(t, key + ".norm", channels: channels, groups: groups, eps: 1e-6)   // diffusers: eps 1e-6 here
        if linearProjection {
            projInLinear = Linear(t, key + ".proj_in", inFeatures: channels, outFeatures: channels)
            projInConv = nil
        } else {
            projInConv = Conv2d(t, key + ".proj_in", cin: channels, cout: channels, kernel: 1, padding: 0)
            projInLinear = nil
        }
        blocks = (0..<layers).map {
            TransformerBlock(t, key + ".transformer_blocks.\($0)", dim: channels, heads: heads, contextDim: contextDim, lora: lora)
        }
        if linearProjection {
            projOutLinear = Linear(t, key + ".proj_out", inFeatures: channels, outFeatures: channels)
            projOutConv = nil
        } else {
            projOutConv = Conv2d(t, key + ".proj_out", cin: channels, cout: channels, kernel: 1, padding: 0)
            projOutLinear = nil
        }
    }

    /// x (B, C, H, W), context (B, S, Dc) -> (B, C, H, W)
    func forward(_ p: Pass, _ x: Buffer, _ context: Buffer, _ b: Int, _ hh: Int, _ ww: Int, _ s: Int) -> Buffer {
        let hw = hh * ww, c = channels
        let (n, st) = norm.forward(p, x, b, hw)
        var tokens = Buffer(uninitialized: b * hw * c)
        if let projInConv {
            let h = projInConv.forward(p, n, b, hh, ww)
            channelsToTokens(out: tokens.ptr, inp: h.ptr, B: b, C: c, HW: hw)
        } else {
            channelsToTokens(out: tokens.ptr, inp: n.ptr, B: b, C: c, HW: hw)
            tokens = projInLinear!.forward(p, tokens, b * hw).0
        }
        for blk in blocks { tokens = blk.forward(p, tokens, context, b, hw, s) }
        let out = Buffer(uninitialized: b * c * hw)
        if let projOutConv {
            let h = Buffer(uninitialized: b * c * hw)
            tokensToChannels(out: h.ptr, inp: tokens.ptr, B: b, C: c, HW: hw)
            let o = projOutConv.forward(p, h, b, hh, ww)
            out.ptr.update(from: o.ptr, count: o.count)
        } else {
            let o = projOutLinear!.forward(p, tokens, b * hw).0
            tokensToChannels(out: out.ptr, inp: o.ptr, B: b, C: c, HW: hw)
        }
        addInPlace(out.ptr, x.ptr, out.count)
        if p.training { self.x = x; self.st = st }
        return out
    }

    func backward(_ p: Pass, _ dout: Buffer, _ context: Buffer, _ b: Int, _ hh: Int, _ ww: Int, _ s: Int) -> Buffer {
        guard let x, let st else { preconditionFailure("Transformer2D.backward without a training forward") }
        let hw = hh * ww, c = channels
        var dtokens = Buffer(uninitialized: b * hw * c)
        if let projOutConv {
            let dh = projOutConv.backward(p, dout, b, hh, ww)
            channelsToTokens(out: dtokens.ptr, inp: dh.ptr, B: b, C: c, HW: hw)
        } else {
            let dO = Buffer(uninitialized: b * hw * c)
            channelsToTokens(out: dO.ptr, inp: dout.ptr, B: b, C: c, HW: hw)
            let d = Buffer(zeros: b * hw * c)
            linearBackwardInput(dinp: d.ptr, dout: dO.ptr, weight: p.matrix(projOutLinear!.weight), N: b * hw, I: c, O: c)
            dtokens = d
        }
        for blk in blocks.reversed() { dtokens = blk.backward(p, dtokens, context, b, hw, s) }
        let dn: Buffer
        if let projInConv {
            let dh = Buffer(uninitialized: b * c * hw)
            tokensToChannels(out: dh.ptr, inp: dtokens.ptr, B: b, C: c, HW: hw)
            dn = projInConv.backward(p, dh, b, hh, ww)
        } else {
            let d = Buffer(zeros: b * hw * c)
            linearBackwardInput(dinp: d.ptr, dout: dtokens.ptr, weight: p.matrix(projInLinear!.weight), N: b * hw, I: c, O: c)
            dn = Buffer(uninitialized: b * c * hw)
            tokensToChannels(out: dn.ptr, inp: d.ptr, B: b, C: c, HW: hw)
        }
        let dx = Buffer(dout.array)
        norm.backward(p, dn, x, st, b, hw, into: dx)
        self.x = nil; self.st = nil
        return dx
    }
}

// MARK: - Resampling

struct Downsample {
    let conv: Conv2d
    init(_ t: ParameterTable, _ key: String, channels: Int) {
        conv = Conv2d(t, key + ".conv", cin: channels, cout: channels, kernel: 3, stride: 2, padding: 1)
    }
}

struct Upsample {
    let conv: Conv2d
    let channels: Int
    init(_ t: ParameterTable, _ key: String, channels: Int) {
        self.channels = channels
        conv = Conv2d(t, key + ".conv", cin: channels, cout: channels, kernel: 3)
    }

    // (B, C, H, W) -> (B, C, 2H, 2W), or (B, C, outH, outW) when given (the next skip's size, for latents that do not
    // halve exactly: diffusers' upsample_size; forward only, training refuses such sizes).
    func forward(_ p: Pass, _ x: Buffer, _ b: Int, _ hh: Int, _ ww: Int, outSize: (Int, Int)? = nil) -> Buffer {
        let (oh, ow) = outSize ?? (2 * hh, 2 * ww)
        let up = Buffer(uninitialized: b * channels * oh * ow)
        if oh == 2 * hh && ow == 2 * ww {
            upsampleNearest2xForward(out: up.ptr, inp: x.ptr, B: b, C: channels, H: hh, W: ww)
        } else {
            upsampleNearestForward(out: up.ptr, inp: x.ptr, B: b, C: channels, H: hh, W: ww, outH: oh, outW: ow)
        }
        return conv.forward(p, up, b, oh, ow)
    }

    func backward(_ p: Pass, _ dout: Buffer, _ b: Int, _ hh: Int, _ ww: Int) -> Buffer {
        let dup = conv.backward(p, dout, b, 2 * hh, 2 * ww)
        let dx = Buffer(zeros: b * channels * hh * ww)
        upsampleNearest2xBackward(dinp: dx.ptr, dout: dup.ptr, B: b, C: channels, H: hh, W: ww)
        return dx
    }
}

@inline(__always)
func addInPlace(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) {
    for i in 0..<n { a[i] += b[i] }
}
