// The building blocks every model is made of, as forward/backward pairs over flat buffers (the kernels of Layers).
// A module is a small value that declares its parameters under its checkpoint key when built and keeps their
// offsets; it holds no state between calls. A training forward returns what its backward needs as a `Saved` value
// (nil when the pass does not train), and backward takes that value: gradient checkpointing is dropping the value
// and running the forward again. Frozen weights get no gradients, so convolutions and linears only propagate input
// gradients; a Linear with a LoRA adapter also accumulates into the flat LoRA gradient buffer. A pass with `grads`
// (full-parameter training, fp32) also accumulates every parameter's gradient into that buffer, which has the
// layout of `Weights.storage`: one flat buffer, so the all-reduce and the optimizer are one call over it.
// Ref: diffusers models/resnet.py (ResnetBlock2D, Downsample2D, Upsample2D), torch.nn (Conv2d, Linear, GroupNorm,
// LayerNorm, Embedding), peft tuners/lora/layer.py (Linear).
import Layers
import Tensors

/// One growable scratch allocation reused by every kernel of a model (kernels run one at a time).
public final class Workspace {
    private var buffer = Buffer(uninitialized: 0)
    public init() {}
    public func get(_ count: Int) -> UnsafeMutablePointer<Float> {
        if buffer.count < count { buffer = Buffer(uninitialized: count) }
        return buffer.ptr
    }
}

/// What every module reads during one forward or backward: the weights, the LoRA (and its multiplier, nil = off),
/// whether to return saved activations, and the scratch space.
public final class Pass {
    public let weights: Weights
    let w: UnsafeMutablePointer<Float>
    let wBF16: UnsafeMutablePointer<UInt16>
    public let lora: LoRAAdapters?
    /// LoRA multiplier scale·alpha/r, or nil when adapters are off (the reference model).
    public let loraMultiplier: Float?
    /// Return the activations a backward pass needs.
    public let training: Bool
    public let workspace: Workspace
    /// The parameter gradients (layout of `weights.storage`), accumulated into by backward; nil = base weights frozen.
    public let grads: UnsafeMutablePointer<Float>?

    public init(weights: Weights, lora: LoRAAdapters? = nil, loraMultiplier: Float? = nil, training: Bool = false,
                workspace: Workspace, grads: Buffer? = nil) {
        precondition(grads == nil || (weights.table.bf16Count == 0 && grads!.count == weights.table.fp32Count),
                     "parameter gradients need fp32 weights and a buffer of the parameter table's size")
        self.weights = weights
        w = weights.storage.ptr; wBF16 = weights.bf16Storage.ptr
        self.lora = lora; self.loraMultiplier = loraMultiplier; self.training = training; self.workspace = workspace
        self.grads = grads?.ptr
    }

    /// The gradient of the parameter at an fp32 offset (only when `grads` is set).
    @inline(__always)
    public func grad(_ offset: Int) -> UnsafeMutablePointer<Float> { grads! + offset }

    /// The same pass without saved activations (the first forward under gradient checkpointing).
    public var inference: Pass {
        training ? Pass(weights: weights, lora: lora, loraMultiplier: loraMultiplier, training: false, workspace: workspace) : self
    }

    /// An fp32 parameter (norm scale, bias, embedding table) at its offset.
    @inline(__always)
    public func vector(_ offset: Int) -> UnsafeMutablePointer<Float> { w + offset }

    /// A conv / linear weight, fp32 or bf16.
    @inline(__always)
    public func matrix(_ m: MatrixRef) -> WeightMatrix { m.isBF16 ? .bf16(wBF16 + m.offset) : .f32(w + m.offset) }
}

/// A fresh copy of a buffer (a residual's gradient starts as the output's).
@inline(__always)
public func copyOf(_ x: Buffer) -> Buffer {
    let out = Buffer(uninitialized: x.count)
    out.ptr.update(from: x.ptr, count: x.count)
    return out
}

// MARK: - Leaf modules

public struct Conv2d {
    public let weight: MatrixRef, bias: Int?
    public let cin: Int, cout: Int, kernel: Int, stride: Int
    public let padding: Conv2DPadding

    public init(_ t: ParameterTable, _ key: String, cin: Int, cout: Int, kernel: Int, stride: Int = 1,
                padding: Conv2DPadding? = nil, bias: Bool = true) {
        self.cin = cin; self.cout = cout; self.kernel = kernel; self.stride = stride
        self.padding = padding ?? Conv2DPadding(kernel / 2)
        weight = t.addMatrix(key + ".weight", [cout, cin, kernel, kernel])
        self.bias = bias ? t.add(key + ".bias", [cout]) : nil
    }

    public func outSize(_ h: Int, _ w: Int) -> (Int, Int) { padding.outputSize(H: h, W: w, kernel: kernel, stride: stride) }

    // (B, cin, H, W) -> (B, cout, Ho, Wo)
    public func forward(_ p: Pass, _ x: Buffer, _ b: Int, _ h: Int, _ w: Int) -> Buffer {
        let (ho, wo) = outSize(h, w)
        let out = Buffer(uninitialized: b * cout * ho * wo)
        let ws = p.workspace.get(conv2dWorkspaceSize(Cin: cin, H: h, W: w, kernel: kernel, stride: stride, padding: padding))
        conv2dForward(out: out.ptr, inp: x.ptr, weight: p.matrix(weight), bias: bias.map { p.vector($0) }, B: b, Cin: cin,
                      H: h, W: w, Cout: cout, kernel: kernel, stride: stride, padding: padding, workspace: ws)
        return out
    }

    /// dout (B, cout, Ho, Wo) -> dinp (B, cin, H, W); with `p.grads`, also the weight and bias gradients, which need
    /// the forward's input `x`.
    public func backward(_ p: Pass, _ dout: Buffer, _ b: Int, _ h: Int, _ w: Int, x: Buffer?) -> Buffer {
        if p.grads != nil { backwardWeights(p, dout, x!, b, h, w) }
        let dinp = Buffer(zeros: b * cin * h * w)
        let ws = p.workspace.get(conv2dWorkspaceSize(Cin: cin, H: h, W: w, kernel: kernel, stride: stride, padding: padding))
        conv2dBackwardInput(dinp: dinp.ptr, dout: dout.ptr, weight: p.matrix(weight), B: b, Cin: cin, H: h, W: w, Cout: cout,
                            kernel: kernel, stride: stride, padding: padding, workspace: ws)
        return dinp
    }

    /// Accumulates the weight and bias gradients into `p.grads` (x: the forward's input).
    public func backwardWeights(_ p: Pass, _ dout: Buffer, _ x: Buffer, _ b: Int, _ h: Int, _ w: Int) {
        conv2dBackwardWeight(dweight: p.grad(weight.offset), dbias: bias.map { p.grad($0) }, dout: dout.ptr, inp: x.ptr,
                             B: b, Cin: cin, H: h, W: w, Cout: cout, kernel: kernel, stride: stride, padding: padding)
    }
}

/// GroupNorm over (B, C, HW), optionally fused with the SiLU that follows it (ResnetBlock2D's norm → nonlinearity,
/// conv_norm_out → conv_act).
public struct GroupNorm {
    public let weight: Int, bias: Int, channels: Int, groups: Int
    public let eps: Float

    public init(_ t: ParameterTable, _ key: String, channels: Int, groups: Int, eps: Double) {
        self.channels = channels; self.groups = groups; self.eps = Float(eps)
        weight = t.add(key + ".weight", [channels])
        bias = t.add(key + ".bias", [channels])
    }

    /// Per-(batch, group) statistics, all the backward needs besides the input.
    public struct Stats { public let mean: Buffer, rstd: Buffer }

    /// out = GroupNorm(x), then SiLU when `silu`. `into` may be `x` itself (a group's statistics are read before it
    /// is written).
    public func forward(_ p: Pass, _ x: Buffer, _ b: Int, _ hw: Int, silu: Bool = false, into: Buffer? = nil) -> (Buffer, Stats) {
        let out = into ?? Buffer(uninitialized: b * channels * hw)
        let st = Stats(mean: Buffer(uninitialized: b * groups), rstd: Buffer(uninitialized: b * groups))
        if silu {
            groupNormSiLUForward(out: out.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr, inp: x.ptr, weight: p.vector(weight),
                                 bias: p.vector(bias), B: b, C: channels, HW: hw, groups: groups, eps: eps)
        } else {
            groupNormForward(out: out.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr, inp: x.ptr, weight: p.vector(weight),
                             bias: p.vector(bias), B: b, C: channels, HW: hw, groups: groups, eps: eps)
        }
        return (out, st)
    }

    /// dinp += ∂L/∂x given the forward's input and statistics.
    public func backward(_ p: Pass, _ dout: Buffer, _ x: Buffer, _ st: Stats, _ b: Int, _ hw: Int, silu: Bool = false,
                         into dinp: Buffer) {
        if p.grads != nil {
            groupNormBackwardAffine(dweight: p.grad(weight), dbias: p.grad(bias), dout: dout.ptr, inp: x.ptr, mean: st.mean.ptr,
                                    rstd: st.rstd.ptr, weight: p.vector(weight), silu: silu ? p.vector(bias) : nil,
                                    B: b, C: channels, HW: hw, groups: groups)
        }
        if silu {
            groupNormSiLUBackward(dinp: dinp.ptr, dout: dout.ptr, inp: x.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr,
                                  weight: p.vector(weight), bias: p.vector(bias), B: b, C: channels, HW: hw, groups: groups)
        } else {
            groupNormBackward(dinp: dinp.ptr, dout: dout.ptr, inp: x.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr,
                              weight: p.vector(weight), B: b, C: channels, HW: hw, groups: groups)
        }
    }
}

public struct LayerNorm {
    public let weight: Int, bias: Int, channels: Int
    public let eps: Float

    public init(_ t: ParameterTable, _ key: String, channels: Int, eps: Double = 1e-5) {
        self.channels = channels; self.eps = Float(eps)
        weight = t.add(key + ".weight", [channels])
        bias = t.add(key + ".bias", [channels])
    }

    public struct Stats { public let mean: Buffer, rstd: Buffer }

    // (N, C) -> (N, C)
    public func forward(_ p: Pass, _ x: Buffer, _ n: Int) -> (Buffer, Stats) {
        let out = Buffer(uninitialized: n * channels)
        let st = Stats(mean: Buffer(uninitialized: n), rstd: Buffer(uninitialized: n))
        layerNormForward(out: out.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr, inp: x.ptr, weight: p.vector(weight),
                         bias: p.vector(bias), N: n, C: channels, eps: eps)
        return (out, st)
    }

    public func backward(_ p: Pass, _ dout: Buffer, _ x: Buffer, _ st: Stats, _ n: Int, into dinp: Buffer) {
        if p.grads != nil {
            layerNormBackwardAffine(dweight: p.grad(weight), dbias: p.grad(bias), dout: dout.ptr, inp: x.ptr, mean: st.mean.ptr,
                                    rstd: st.rstd.ptr, N: n, C: channels)
        }
        layerNormBackward(dinp: dinp.ptr, dout: dout.ptr, inp: x.ptr, mean: st.mean.ptr, rstd: st.rstd.ptr,
                          weight: p.vector(weight), N: n, C: channels)
    }
}

/// A frozen linear layer, optionally with a LoRA adapter (the U-Net's attention projections).
public struct Linear {
    public let weight: MatrixRef, bias: Int?
    public let inFeatures: Int, outFeatures: Int
    /// Index into `LoRAAdapters.targets`.
    public let lora: Int?

    /// `allowBF16` false keeps the weight fp32 in mixed precision (a layer the reference keeps fp32).
    public init(_ t: ParameterTable, _ key: String, inFeatures: Int, outFeatures: Int, bias: Bool = true,
                lora: LoRAAdapters? = nil, allowBF16: Bool = true) {
        self.inFeatures = inFeatures; self.outFeatures = outFeatures
        weight = t.addMatrix(key + ".weight", [outFeatures, inFeatures], allowBF16: allowBF16)
        self.bias = bias ? t.add(key + ".bias", [outFeatures]) : nil
        self.lora = lora?.add(module: key, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    /// (N, in) -> (N, out); with LoRA on in a training pass, also x·Aᵀ (N, r), which backward takes.
    public func forward(_ p: Pass, _ x: Buffer, _ n: Int) -> (out: Buffer, xa: Buffer?) {
        let out = Buffer(uninitialized: n * outFeatures)
        linearForward(out: out.ptr, inp: x.ptr, weight: p.matrix(weight), bias: bias.map { p.vector($0) }, N: n,
                      I: inFeatures, O: outFeatures)
        guard let li = lora, let adapters = p.lora, let m = p.loraMultiplier else { return (out, nil) }
        let t = adapters.targets[li]
        let xa = Buffer(uninitialized: n * adapters.rank)
        loraForward(out: out.ptr, xa: xa.ptr, inp: x.ptr, a: adapters.a(t), b: adapters.b(t), N: n, I: inFeatures,
                    O: outFeatures, rank: adapters.rank, scale: m)
        return (out, p.training ? xa : nil)
    }

    /// Accumulates the input gradient into `dinp` (unless nil; `overwrite`: stores it there, so `dinp` need not be
    /// zeroed) and, with LoRA on, the adapter's gradients (which need the forward's input `x` and its `xa`); with
    /// `p.grads`, the weight and bias gradients (which need `x`).
    public func backward(_ p: Pass, _ dout: Buffer, _ x: Buffer?, _ xa: Buffer?, _ n: Int, into dinp: Buffer?,
                         overwrite: Bool = false) {
        if p.grads != nil {
            linearBackwardWeight(dweight: p.grad(weight.offset), dbias: bias.map { p.grad($0) }, dout: dout.ptr, inp: x!.ptr,
                                 N: n, I: inFeatures, O: outFeatures)
        }
        if let dinp {
            linearBackwardInput(dinp: dinp.ptr, dout: dout.ptr, weight: p.matrix(weight), N: n, I: inFeatures, O: outFeatures,
                                accumulate: !overwrite)
        }
        guard let li = lora, let adapters = p.lora, let m = p.loraMultiplier, let xa, let x else { return }
        let t = adapters.targets[li]
        let ws = p.workspace.get(loraWorkspaceSize(N: n, rank: adapters.rank))
        loraBackward(dinp: dinp?.ptr, da: adapters.gradA(t), db: adapters.gradB(t), dout: dout.ptr, inp: x.ptr,
                     xa: xa.ptr, a: adapters.a(t), b: adapters.b(t), N: n, I: inFeatures, O: outFeatures,
                     rank: adapters.rank, scale: m, workspace: ws)
    }
}

/// A lookup table (count, dim): token and position embeddings.
public struct Embedding {
    public let weight: Int, count: Int, dim: Int

    public init(_ t: ParameterTable, _ key: String, count: Int, dim: Int) {
        self.count = count; self.dim = dim
        weight = t.add(key + ".weight", [count, dim], kind: .embedding)
    }

    /// Row `i` of the table (dim).
    public func row(_ p: Pass, _ i: Int) -> UnsafeMutablePointer<Float> { p.vector(weight) + i * dim }
}

// MARK: - ResnetBlock2D

/// norm1 → SiLU → conv1 (+ time_emb_proj(SiLU(temb)) per channel) → norm2 → SiLU → conv2, plus the input (through a
/// 1x1 `conv_shortcut` when the channel count changes); output_scale_factor 1, dropout off. Without a time-embedding
/// width (the VAE) there is no time_emb_proj.
/// Memory: an inference forward holds at most its input and two other activations; a training forward saves the
/// input and norm2's input with both norms' statistics (the norms' outputs are recomputed in backward).
public struct ResnetBlock2D {
    public let norm1: GroupNorm, conv1: Conv2d, timeEmbProj: Linear?, norm2: GroupNorm, conv2: Conv2d
    public let shortcut: Conv2d?
    public let cin: Int, cout: Int

    public init(_ t: ParameterTable, _ key: String, cin: Int, cout: Int, tembDim: Int?, groups: Int, eps: Double) {
        self.cin = cin; self.cout = cout
        norm1 = GroupNorm(t, key + ".norm1", channels: cin, groups: groups, eps: eps)
        conv1 = Conv2d(t, key + ".conv1", cin: cin, cout: cout, kernel: 3)
        timeEmbProj = tembDim.map { Linear(t, key + ".time_emb_proj", inFeatures: $0, outFeatures: cout) }
        norm2 = GroupNorm(t, key + ".norm2", channels: cout, groups: groups, eps: eps)
        conv2 = Conv2d(t, key + ".conv2", cin: cout, cout: cout, kernel: 3)
        shortcut = cin != cout ? Conv2d(t, key + ".conv_shortcut", cin: cin, cout: cout, kernel: 1, padding: Conv2DPadding(0)) : nil
    }

    public struct Saved { let x: Buffer, h: Buffer, st1: GroupNorm.Stats, st2: GroupNorm.Stats }

    /// x (B, cin, H, W), tembAct = SiLU(temb) (B, tembDim) or nil -> (B, cout, H, W)
    public func forward(_ p: Pass, _ x: Buffer, temb tembAct: Buffer?, _ b: Int, _ hh: Int, _ ww: Int) -> (Buffer, Saved?) {
        let hw = hh * ww
        let h: Buffer, st1: GroupNorm.Stats
        do {
            let (a, s1) = norm1.forward(p, x, b, hw, silu: true)      // released once conv1 has read it
            h = conv1.forward(p, a, b, hh, ww); st1 = s1
        }
        if let timeEmbProj, let tembAct {
            let tp = timeEmbProj.forward(p, tembAct, b).out
            addPerChannel(h.ptr, tp.ptr, B: b, C: cout, HW: hw)
        }
        let (n2, st2) = norm2.forward(p, h, b, hw, silu: true, into: p.training ? nil : h)
        let out = conv2.forward(p, n2, b, hh, ww)
        if let shortcut {
            let s = shortcut.forward(p, x, b, hh, ww)
            addInto(out.ptr, s.ptr, n: out.count)
        } else {
            addInto(out.ptr, x.ptr, n: out.count)
        }
        return (out, p.training ? Saved(x: x, h: h, st1: st1, st2: st2) : nil)
    }

    /// dout (B, cout, H, W) -> dx (B, cin, H, W). The time path gets a gradient only when the parameters are trained
    /// (`p.grads`): then time_emb_proj's parameters get theirs and d(SiLU(temb)) is accumulated into `dtemb`.
    /// Weight gradients need the convolutions' inputs: the norms' outputs are recomputed from the saved statistics.
    public func backward(_ p: Pass, _ dout: Buffer, _ s: Saved, _ b: Int, _ hh: Int, _ ww: Int,
                         temb tembAct: Buffer? = nil, dtemb: Buffer? = nil) -> Buffer {
        let hw = hh * ww, full = p.grads != nil
        // out = conv2(silu(norm2(h))) + shortcut(x)
        let ds2 = conv2.backward(p, dout, b, hh, ww, x: full ? norm2.forward(p, s.h, b, hw, silu: true).0 : nil)
        let dh = Buffer(zeros: s.h.count)
        norm2.backward(p, ds2, s.h, s.st2, b, hw, silu: true, into: dh)
        // h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb))
        if full, let timeEmbProj, let tembAct, let dtemb {
            let dtp = Buffer(zeros: b * cout)
            addPerChannelBackward(dv: dtp.ptr, dout: dh.ptr, B: b, C: cout, HW: hw)
            timeEmbProj.backward(p, dtp, tembAct, nil, b, into: dtemb)
        }
        let ds1 = conv1.backward(p, dh, b, hh, ww, x: full ? norm1.forward(p, s.x, b, hw, silu: true).0 : nil)
        let dx = shortcut?.backward(p, dout, b, hh, ww, x: s.x) ?? copyOf(dout)
        norm1.backward(p, ds1, s.x, s.st1, b, hw, silu: true, into: dx)
        return dx
    }
}

// MARK: - Resampling

/// Downsample2D: a stride-2 3x3 conv (padding 1 in the U-Net; the VAE pads right and bottom only).
public struct Downsample2D {
    public let conv: Conv2d
    public init(_ t: ParameterTable, _ key: String, channels: Int, padding: Conv2DPadding = Conv2DPadding(1)) {
        conv = Conv2d(t, key + ".conv", cin: channels, cout: channels, kernel: 3, stride: 2, padding: padding)
    }
}

/// Upsample2D: nearest ×2 (or to a given size), then a 3x3 conv.
public struct Upsample2D {
    public let conv: Conv2d
    public let channels: Int
    public init(_ t: ParameterTable, _ key: String, channels: Int) {
        self.channels = channels
        conv = Conv2d(t, key + ".conv", cin: channels, cout: channels, kernel: 3)
    }

    // (B, C, H, W) -> (B, C, 2H, 2W), or (B, C, outH, outW) when given (the next skip's size, for latents that do not
    // halve exactly: diffusers' upsample_size; forward only, training refuses such sizes).
    public func forward(_ p: Pass, _ x: Buffer, _ b: Int, _ hh: Int, _ ww: Int, outSize: (Int, Int)? = nil) -> Buffer {
        let (oh, ow) = outSize ?? (2 * hh, 2 * ww)
        let up: Buffer
        do {
            let u = Buffer(uninitialized: b * channels * oh * ow)
            if oh == 2 * hh && ow == 2 * ww {
                upsampleNearest2xForward(out: u.ptr, inp: x.ptr, B: b, C: channels, H: hh, W: ww)
            } else {
                upsampleNearestForward(out: u.ptr, inp: x.ptr, B: b, C: channels, H: hh, W: ww, outH: oh, outW: ow)
            }
            up = u
        }
        return conv.forward(p, up, b, oh, ow)
    }

    /// x: the forward's input, needed for the conv's weight gradient (`p.grads`).
    public func backward(_ p: Pass, _ dout: Buffer, _ b: Int, _ hh: Int, _ ww: Int, x: Buffer?) -> Buffer {
        var up: Buffer?
        if p.grads != nil, let x {
            let u = Buffer(uninitialized: b * channels * 4 * hh * ww)
            upsampleNearest2xForward(out: u.ptr, inp: x.ptr, B: b, C: channels, H: hh, W: ww)
            up = u
        }
        let dup = conv.backward(p, dout, b, 2 * hh, 2 * ww, x: up)
        let dx = Buffer(zeros: b * channels * hh * ww)
        upsampleNearest2xBackward(dinp: dx.ptr, dout: dup.ptr, B: b, C: channels, H: hh, W: ww)
        return dx
    }
}
