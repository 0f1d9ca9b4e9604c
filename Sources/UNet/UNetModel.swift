// diffusers' UNet2DConditionModel: the block structure (down blocks pushing skips, mid block, up blocks popping them)
// over the modules of Modules.swift, with LoRA adapters that can be switched off to give the reference model from the
// same weights (one copy of the base weights, never two).
// Ref: diffusers models/unets/unet_2d_condition.py (forward), unet_2d_blocks.py (CrossAttnDownBlock2D, DownBlock2D,
// UNetMidBlock2DCrossAttn, UpBlock2D, CrossAttnUpBlock2D).
import IO
import Layers
import Tensors

public final class UNetModel: @unchecked Sendable {
    public let spec: UNetSpec
    public let weights: BaseWeights
    public let lora: LoRAAdapters?

    // time_embedding
    private let linear1: Linear, linear2: Linear
    private let convIn: Conv2d
    private let downResnets: [[ResnetBlock]], downAttentions: [[Transformer2D]], downsamplers: [Downsample?]
    private let midResnets: [ResnetBlock], midAttention: Transformer2D
    private let upResnets: [[ResnetBlock]], upAttentions: [[Transformer2D]], upsamplers: [Upsample?]
    private let normOut: GroupNorm, convOut: Conv2d
    private let workspace = Workspace()

    /// How the base weights are stored and multiplied (fp32, or bf16 conv / linear weights with fp32 sums).
    public var precision: MixedPrecision { weights.table.precision }

    /// Builds the module tree and its parameter table; weights are uninitialised until `load`/`randomize`.
    /// `precision` .bf16 stores the conv / linear weights in bf16 (see `MixedPrecision`); LoRA stays fp32.
    public init(spec: UNetSpec, lora: (rank: Int, alpha: Float)? = nil, precision: MixedPrecision = .no) {
        self.spec = spec
        let t = ParameterTable(precision: precision)
        let adapters = lora.map { LoRAAdapters(rank: $0.rank, alpha: $0.alpha) }
        let g = spec.groups, eps = spec.normEps, temb = spec.timeEmbedDim
        linear1 = Linear(t, "time_embedding.linear_1", inFeatures: spec.timeProjDim, outFeatures: temb)
        linear2 = Linear(t, "time_embedding.linear_2", inFeatures: temb, outFeatures: temb)
        convIn = Conv2d(t, "conv_in", cin: spec.inChannels, cout: spec.config.blockOutChannels[0], kernel: 3)
        var dr: [[ResnetBlock]] = [], da: [[Transformer2D]] = [], ds: [Downsample?] = []
        for (i, blk) in spec.down.enumerated() {
            let key = "down_blocks.\(i)"
            dr.append((0..<blk.layers).map {
                ResnetBlock(t, key + ".resnets.\($0)", cin: $0 == 0 ? blk.inChannels : blk.outChannels, cout: blk.outChannels,
                            tembDim: temb, groups: g, eps: eps)
            })
            // diffusers declares resnets and attentions as separate ModuleLists; key order does not matter for loading.
            da.append(blk.hasAttention ? (0..<blk.layers).map {
                Transformer2D(t, key + ".attentions.\($0)", channels: blk.outChannels, heads: blk.heads,
                              contextDim: blk.crossAttentionDim, layers: blk.transformerLayers, groups: g,
                              linearProjection: spec.useLinearProjection, lora: adapters)
            } : [])
            ds.append(blk.addDownsample ? Downsample(t, key + ".downsamplers.0", channels: blk.outChannels) : nil)
        }
        downResnets = dr; downAttentions = da; downsamplers = ds
        let midC = spec.config.blockOutChannels.last!
        midResnets = [ResnetBlock(t, "mid_block.resnets.0", cin: midC, cout: midC, tembDim: temb, groups: g, eps: eps)]
            + [ResnetBlock(t, "mid_block.resnets.1", cin: midC, cout: midC, tembDim: temb, groups: g, eps: eps)]
        midAttention = Transformer2D(t, "mid_block.attentions.0", channels: midC, heads: spec.midHeads,
                                     contextDim: spec.midCrossAttentionDim, layers: spec.midTransformerLayers, groups: g,
                                     linearProjection: spec.useLinearProjection, lora: adapters)
        var ur: [[ResnetBlock]] = [], ua: [[Transformer2D]] = [], us: [Upsample?] = []
        for (i, blk) in spec.up.enumerated() {
            let key = "up_blocks.\(i)"
            ur.append((0..<blk.layers).map {
                ResnetBlock(t, key + ".resnets.\($0)", cin: blk.resnetIn($0), cout: blk.outChannels, tembDim: temb, groups: g, eps: eps)
            })
            ua.append(blk.hasAttention ? (0..<blk.layers).map {
                Transformer2D(t, key + ".attentions.\($0)", channels: blk.outChannels, heads: blk.heads,
                              contextDim: blk.crossAttentionDim, layers: blk.transformerLayers, groups: g,
                              linearProjection: spec.useLinearProjection, lora: adapters)
            } : [])
            us.append(blk.addUpsample ? Upsample(t, key + ".upsamplers.0", channels: blk.outChannels) : nil)
        }
        upResnets = ur; upAttentions = ua; upsamplers = us
        normOut = GroupNorm(t, "conv_norm_out", channels: spec.config.blockOutChannels[0], groups: g, eps: eps)
        convOut = Conv2d(t, "conv_out", cin: spec.config.blockOutChannels[0], cout: spec.outChannels, kernel: 3)
        weights = BaseWeights(table: t)
        adapters?.allocate()
        self.lora = adapters
    }

    /// Loads a diffusers U-Net folder (or the `unet/` of a pipeline): config and safetensors weights.
    /// In bf16 mixed precision each conv / linear weight is rounded to bf16 as it is read (bf16 files: copied as is).
    public static func load(folder: ComponentFolder, variant: String? = nil, lora: (rank: Int, alpha: Float)? = nil,
                            precision: MixedPrecision = .no) throws -> UNetModel {
        let spec = try UNetSpec(folder.config(UNet2DConditionConfig.self), source: folder.configPath)
        let model = UNetModel(spec: spec, lora: lora, precision: precision)
        try model.weights.load(files: folder.weightFiles(variant: variant))
        return model
    }

    public func randomizeWeights(seed: UInt64) { weights.randomize(seed: seed) }

    // MARK: - Forward

    /// Activations kept between a training forward and its backward (per call; the modules keep their own caches).
    private struct Trace {
        var b = 0, h = 0, w = 0, s = 0
        var context: Buffer?
        var tembAct: Buffer?
        var sizes: [(Int, Int)] = []            // spatial size entering each down level
        var skipShapes: [(c: Int, h: Int, w: Int)] = []
        var xOut: Buffer?, stOut: GroupNorm.Stats?
        var loraMultiplier: Float?
        var checkpointInputs: [Buffer] = []     // with gradientCheckpointing: each block's input, in forward order
    }
    private var trace: Trace?

    /// Activation recomputation (diffusers' `enable_gradient_checkpointing`): a training forward keeps only the input
    /// of every ResnetBlock2D and Transformer2DModel, not their internal activations; backward runs each block's
    /// forward again (with caching) just before its backward. Peak activation memory drops to the block inputs plus
    /// one block's internals, for one more policy forward per step (~+33% step time). Gradients are identical.
    public var gradientCheckpointing = false
    /// Block inputs kept by the last training forward for recomputation (0 without gradient checkpointing).
    var checkpointedBlockCount: Int { trace?.checkpointInputs.count ?? 0 }

    /// sample (B, in, H, W), timesteps [B], context (B, S, D) -> (B, out, H, W).
    /// `loraScale` nil runs the reference model (adapters off); `training` keeps what `backward` needs.
    /// Training needs latents that halve exactly at every downsampler; inference takes any size, as diffusers: each
    /// upsampler then resizes to the size of the skip it meets (forward_upsample_size).
    public func forward(sample: Buffer, timesteps: [Float], context: Buffer, batch b: Int, height hh: Int, width ww: Int,
                        contextLength s: Int, loraScale: Float? = 1, training: Bool = false) throws -> Buffer {
        if training { try spec.checkLatentSize(height: hh, width: ww) } else { try spec.checkAnyLatentSize(height: hh, width: ww) }
        precondition(sample.count == b * spec.inChannels * hh * ww && timesteps.count == b
                     && context.count == b * s * spec.crossAttentionDim, "UNetModel.forward: input sizes do not match")
        let p = Pass(weights: weights, lora: lora, loraMultiplier: lora != nil ? loraScale.map { lora!.multiplier(scale: $0) } : nil,
                     training: training, workspace: workspace)
        // Time embedding: sinusoidal projection -> linear_1 -> SiLU -> linear_2; resnets use SiLU(temb).
        let tproj = Buffer(uninitialized: b * spec.timeProjDim)
        timesteps.withUnsafeBufferPointer {
            timestepEmbedding(out: tproj.ptr, timesteps: $0.baseAddress!, B: b, dim: spec.timeProjDim,
                              flipSinToCos: spec.config.flipSinToCos, freqShift: Float(spec.config.freqShift))
        }
        let l1 = linear1.forward(p, tproj, b).0
        siluForward(out: l1.ptr, inp: l1.ptr, n: l1.count)
        let tembAct = linear2.forward(p, l1, b).0
        siluForward(out: tembAct.ptr, inp: tembAct.ptr, n: tembAct.count)

        var t = Trace(b: b, h: hh, w: ww, s: s, context: context, tembAct: tembAct)
        t.loraMultiplier = p.loraMultiplier
        // Blocks run without caching under gradient checkpointing; their inputs are kept for the recomputation.
        let checkpointing = training && gradientCheckpointing
        let pb = checkpointing ? Pass(weights: weights, lora: p.lora, loraMultiplier: p.loraMultiplier, training: false, workspace: workspace) : p
        func keep(_ x: Buffer) -> Buffer { if checkpointing { t.checkpointInputs.append(x) }; return x }
        var h = convIn.forward(p, sample, b, hh, ww)
        var cur = (hh, ww)
        var skips: [Buffer] = [h]
        t.skipShapes.append((spec.config.blockOutChannels[0], hh, ww))
        for (i, blk) in spec.down.enumerated() {
            t.sizes.append(cur)
            for j in 0..<blk.layers {
                h = downResnets[i][j].forward(pb, keep(h), tembAct, b, cur.0, cur.1)
                if blk.hasAttention { h = downAttentions[i][j].forward(pb, keep(h), context, b, cur.0, cur.1, s) }
                skips.append(h); t.skipShapes.append((blk.outChannels, cur.0, cur.1))
            }
            if let d = downsamplers[i] {
                h = d.conv.forward(p, h, b, cur.0, cur.1)
                cur = d.conv.outSize(cur.0, cur.1)
                skips.append(h); t.skipShapes.append((blk.outChannels, cur.0, cur.1))
            }
        }
        h = midResnets[0].forward(pb, keep(h), tembAct, b, cur.0, cur.1)
        h = midAttention.forward(pb, keep(h), context, b, cur.0, cur.1, s)
        h = midResnets[1].forward(pb, keep(h), tembAct, b, cur.0, cur.1)
        for (i, blk) in spec.up.enumerated() {
            for j in 0..<blk.layers {
                let skip = skips.removeLast()
                let c1 = j == 0 ? blk.prevOutputChannels : blk.outChannels
                let cat = Buffer(uninitialized: b * (c1 + blk.skipChannels(j)) * cur.0 * cur.1)
                concatChannels(out: cat.ptr, a: h.ptr, b: skip.ptr, B: b, C1: c1, C2: blk.skipChannels(j), HW: cur.0 * cur.1)
                h = upResnets[i][j].forward(pb, keep(cat), tembAct, b, cur.0, cur.1)
                if blk.hasAttention { h = upAttentions[i][j].forward(pb, keep(h), context, b, cur.0, cur.1, s) }
            }
            if let u = upsamplers[i] {
                let next = t.skipShapes[skips.count - 1]      // the size of the skip the next block pops
                h = u.forward(p, h, b, cur.0, cur.1, outSize: (next.h, next.w))
                cur = (next.h, next.w)
            }
        }
        let (n, st) = normOut.forward(p, h, b, hh * ww)
        siluForward(out: n.ptr, inp: n.ptr, n: n.count)
        let out = convOut.forward(p, n, b, hh, ww)
        // A forward without training (e.g. the reference model between policy forward and backward) keeps the trace.
        if training { t.xOut = h; t.stOut = st; trace = t }
        return out
    }

    // MARK: - Backward

    /// Backward of the last training forward for d(loss)/d(output) = `dout`: accumulates into `lora.grads` and returns
    /// d(loss)/d(sample) when asked (it costs one more convolution backward).
    @discardableResult
    public func backward(_ dout: Buffer, wantSampleGradient: Bool = false) -> Buffer? {
        guard let t = trace, let context = t.context, let xOut = t.xOut, let stOut = t.stOut else {
            preconditionFailure("UNetModel.backward needs a forward with training: true first")
        }
        trace = nil
        let p = Pass(weights: weights, lora: lora, loraMultiplier: t.loraMultiplier, training: true, workspace: workspace)
        let b = t.b, s = t.s
        // Gradient checkpointing: recompute a block's forward (with caching) from its kept input just before its
        // backward; blocks are visited in exactly the reverse order of the forward, so the inputs pop off a stack.
        var kept = t.checkpointInputs
        let tembAct = t.tembAct!
        func recompute(_ r: ResnetBlock, _ hw: (Int, Int)) { if let x = kept.popLast() { _ = r.forward(p, x, tembAct, b, hw.0, hw.1) } }
        func recompute(_ a: Transformer2D, _ hw: (Int, Int)) { if let x = kept.popLast() { _ = a.forward(p, x, context, b, hw.0, hw.1, s) } }
        // out = conv_out(silu(norm_out(h)))
        let ds = convOut.backward(p, dout, b, t.h, t.w)
        let (n, _) = normOut.forward(p, xOut, b, t.h * t.w)
        let dn = Buffer(zeros: n.count)
        siluBackward(dinp: dn.ptr, dout: ds.ptr, inp: n.ptr, n: n.count)
        var dh = Buffer(zeros: xOut.count)
        normOut.backward(p, dn, xOut, stOut, b, t.h * t.w, into: dh)
        // Skip gradients, one per pushed skip, filled by the up path.
        var dskips: [Buffer?] = Array(repeating: nil, count: t.skipShapes.count)
        var cur = (t.h, t.w)
        for (i, blk) in spec.up.enumerated().reversed() {
            // The skips this block popped, in pop order: indices from the top of the stack.
            let popped = spec.up[..<i].reduce(0) { $0 + $1.layers }
            if let u = upsamplers[i] {
                cur = (cur.0 / 2, cur.1 / 2)
                dh = u.backward(p, dh, b, cur.0, cur.1)
            }
            for j in (0..<blk.layers).reversed() {
                if blk.hasAttention { recompute(upAttentions[i][j], cur); dh = upAttentions[i][j].backward(p, dh, context, b, cur.0, cur.1, s) }
                recompute(upResnets[i][j], cur)
                let dcat = upResnets[i][j].backward(p, dh, b, cur.0, cur.1)
                let c1 = j == 0 ? blk.prevOutputChannels : blk.outChannels
                let c2 = blk.skipChannels(j)
                let hw = cur.0 * cur.1
                let dprev = Buffer(zeros: b * c1 * hw), dskip = Buffer(zeros: b * c2 * hw)
                splitChannelsBackward(da: dprev.ptr, db: dskip.ptr, dout: dcat.ptr, B: b, C1: c1, C2: c2, HW: hw)
                let k = t.skipShapes.count - 1 - (popped + j)
                dskips[k] = dskip
                dh = dprev
            }
        }
        recompute(midResnets[1], cur)
        dh = midResnets[1].backward(p, dh, b, cur.0, cur.1)
        recompute(midAttention, cur)
        dh = midAttention.backward(p, dh, context, b, cur.0, cur.1, s)
        recompute(midResnets[0], cur)
        dh = midResnets[0].backward(p, dh, b, cur.0, cur.1)
        var k = t.skipShapes.count - 1
        for (i, blk) in spec.down.enumerated().reversed() {
            let size = t.sizes[i]
            if let d = downsamplers[i] {
                addInPlace(dh.ptr, dskips[k]!.ptr, dh.count); k -= 1
                dh = d.conv.backward(p, dh, b, size.0, size.1)
            }
            for j in (0..<blk.layers).reversed() {
                addInPlace(dh.ptr, dskips[k]!.ptr, dh.count); k -= 1
                if blk.hasAttention { recompute(downAttentions[i][j], size); dh = downAttentions[i][j].backward(p, dh, context, b, size.0, size.1, s) }
                recompute(downResnets[i][j], size)
                dh = downResnets[i][j].backward(p, dh, b, size.0, size.1)
            }
            cur = size
        }
        addInPlace(dh.ptr, dskips[0]!.ptr, dh.count)
        precondition(kept.isEmpty, "UNetModel.backward: gradient-checkpointing inputs left over")
        return wantSampleGradient ? convIn.backward(p, dh, b, t.h, t.w) : nil
    }
}
