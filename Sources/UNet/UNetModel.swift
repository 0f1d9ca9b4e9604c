// diffusers' UNet2DConditionModel: the block structure (down blocks pushing skips, mid block, up blocks popping them)
// over the modules of NN, with LoRA adapters that can be switched off to give the reference model from the same
// weights (one copy of the base weights, never two). A training forward returns its saved activations
// (`UNetActivations`); backward takes them.
// Ref: diffusers models/unets/unet_2d_condition.py (forward), unet_2d_blocks.py (CrossAttnDownBlock2D, DownBlock2D,
// UNetMidBlock2DCrossAttn, UpBlock2D, CrossAttnUpBlock2D).
import IO
import Layers
import NN
import Tensors

public final class UNetModel: @unchecked Sendable {
    public let spec: UNetSpec
    public let weights: Weights
    public let lora: LoRAAdapters?

    // time_embedding
    private let linear1: Linear, linear2: Linear
    private let convIn: Conv2d
    private let downResnets: [[ResnetBlock2D]], downAttentions: [[Transformer2D]], downsamplers: [Downsample2D?]
    private let midResnets: [ResnetBlock2D], midAttention: Transformer2D
    private let upResnets: [[ResnetBlock2D]], upAttentions: [[Transformer2D]], upsamplers: [Upsample2D?]
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
        func resnets(_ key: String, _ n: Int, cout: Int, cin: (Int) -> Int) -> [ResnetBlock2D] {
            (0..<n).map { ResnetBlock2D(t, key + ".resnets.\($0)", cin: cin($0), cout: cout, tembDim: temb, groups: g, eps: eps) }
        }
        // diffusers declares resnets and attentions as separate ModuleLists; key order does not matter for loading.
        func attentions(_ key: String, _ n: Int, _ c: Int, heads: Int, context: Int, layers: Int) -> [Transformer2D] {
            (0..<n).map {
                Transformer2D(t, key + ".attentions.\($0)", channels: c, heads: heads, contextDim: context, layers: layers,
                              groups: g, linearProjection: spec.useLinearProjection, lora: adapters)
            }
        }
        var dr: [[ResnetBlock2D]] = [], da: [[Transformer2D]] = [], ds: [Downsample2D?] = []
        for (i, blk) in spec.down.enumerated() {
            let key = "down_blocks.\(i)", c = blk.outChannels
            dr.append(resnets(key, blk.layers, cout: c) { $0 == 0 ? blk.inChannels : c })
            da.append(blk.hasAttention ? attentions(key, blk.layers, c, heads: blk.heads, context: blk.crossAttentionDim,
                                                    layers: blk.transformerLayers) : [])
            ds.append(blk.addDownsample ? Downsample2D(t, key + ".downsamplers.0", channels: c) : nil)
        }
        downResnets = dr; downAttentions = da; downsamplers = ds
        let midC = spec.config.blockOutChannels.last!
        midResnets = resnets("mid_block", 2, cout: midC) { _ in midC }
        midAttention = attentions("mid_block", 1, midC, heads: spec.midHeads, context: spec.midCrossAttentionDim,
                                  layers: spec.midTransformerLayers)[0]
        var ur: [[ResnetBlock2D]] = [], ua: [[Transformer2D]] = [], us: [Upsample2D?] = []
        for (i, blk) in spec.up.enumerated() {
            let key = "up_blocks.\(i)", c = blk.outChannels
            ur.append(resnets(key, blk.layers, cout: c) { blk.resnetIn($0) })
            ua.append(blk.hasAttention ? attentions(key, blk.layers, c, heads: blk.heads, context: blk.crossAttentionDim,
                                                    layers: blk.transformerLayers) : [])
            us.append(blk.addUpsample ? Upsample2D(t, key + ".upsamplers.0", channels: c) : nil)
        }
        upResnets = ur; upAttentions = ua; upsamplers = us
        normOut = GroupNorm(t, "conv_norm_out", channels: spec.config.blockOutChannels[0], groups: g, eps: eps)
        convOut = Conv2d(t, "conv_out", cin: spec.config.blockOutChannels[0], cout: spec.outChannels, kernel: 3)
        weights = Weights(table: t)
        adapters?.allocate()
        self.lora = adapters
    }

    /// Loads a diffusers U-Net folder (or the `unet/` of a pipeline): config and safetensors weights.
    /// In bf16 mixed precision each conv / linear weight is rounded to bf16 as it is read (bf16 files: copied as is).
    public static func load(folder: ComponentFolder, variant: String? = nil, lora: (rank: Int, alpha: Float)? = nil,
                            precision: MixedPrecision = .no) throws -> UNetModel {
        let spec = try UNetSpec(folder.config(UNet2DConditionConfig.self), source: folder.configPath)
        let model = UNetModel(spec: spec, lora: lora, precision: precision)
        try model.weights.load(files: folder.weightFiles(variant: variant), model: "U-Net")
        return model
    }

    public func randomizeWeights(seed: UInt64) { weights.randomize(seed: seed) }

    // MARK: - Full-parameter training

    /// The gradient of every parameter, in the layout of `weights.storage` (one flat buffer: one all-reduce, one
    /// optimizer call); nil while the base weights are frozen (LoRA training, inference).
    public private(set) var weightGrads: Buffer?

    /// Makes every U-Net parameter trainable: backward then accumulates into `weightGrads` (the caller zeroes it).
    /// fp32 weights only (`--mixed-precision no`).
    public func enableWeightGradients() {
        precondition(precision == .no, "full-parameter training needs fp32 weights")
        if weightGrads == nil { weightGrads = Buffer(zeros: weights.table.fp32Count) }
    }

    // MARK: - Forward

    /// Activation recomputation (diffusers' `enable_gradient_checkpointing`): a training forward saves only the input
    /// of every ResnetBlock2D and Transformer2DModel, not their internal activations; backward runs each block's
    /// forward again just before its backward. Peak activation memory drops to the block inputs plus one block's
    /// internals, for one more policy forward per step (~+33% step time). Gradients are identical.
    public var gradientCheckpointing = false

    /// sample (B, in, H, W), timesteps [B], context (B, S, D) -> (B, out, H, W). `loraScale` nil runs the reference
    /// model (adapters off). Takes any latent size, as diffusers: each upsampler then resizes to the size of the skip
    /// it meets (forward_upsample_size).
    public func forward(sample: Buffer, timesteps: [Float], context: Buffer, batch b: Int, height hh: Int, width ww: Int,
                        contextLength s: Int, loraScale: Float? = 1) throws -> Buffer {
        try spec.checkAnyLatentSize(height: hh, width: ww)
        return run(sample: sample, timesteps: timesteps, context: context, b: b, hh: hh, ww: ww, s: s,
                   pass: pass(loraScale: loraScale, training: false)).out
    }

    /// The forward of a training step: the output and the activations `backward` needs. Training needs latents that
    /// halve exactly at every downsampler.
    public func forwardTraining(sample: Buffer, timesteps: [Float], context: Buffer, batch b: Int, height hh: Int, width ww: Int,
                                contextLength s: Int, loraScale: Float? = 1) throws -> (output: Buffer, saved: UNetActivations) {
        try spec.checkLatentSize(height: hh, width: ww)
        let (out, saved) = run(sample: sample, timesteps: timesteps, context: context, b: b, hh: hh, ww: ww, s: s,
                               pass: pass(loraScale: loraScale, training: true))
        return (out, saved!)
    }

    private func pass(loraScale: Float?, training: Bool) -> Pass {
        Pass(weights: weights, lora: lora, loraMultiplier: lora != nil ? loraScale.map { lora!.multiplier(scale: $0) } : nil,
             training: training, workspace: workspace, grads: training ? weightGrads : nil)
    }

    /// The time embedding: sinusoidal projection → linear_1 → SiLU → linear_2 → SiLU. Returns SiLU(temb) and, for the
    /// backward of the parameters, the projection and both pre-activations.
    private func timeEmbedding(_ p: Pass, _ timesteps: [Float], _ b: Int) -> (act: Buffer, tproj: Buffer, l1: Buffer, temb: Buffer) {
        let tproj = Buffer(uninitialized: b * spec.timeProjDim)
        timestepEmbedding(out: tproj.ptr, timesteps: timesteps, dim: spec.timeProjDim, flipSinToCos: spec.config.flipSinToCos,
                          freqShift: Float(spec.config.freqShift))
        let l1 = linear1.forward(p, tproj, b).out
        let a1 = Buffer(uninitialized: l1.count)
        siluForward(out: a1.ptr, inp: l1.ptr, n: l1.count)
        let temb = linear2.forward(p, a1, b).out
        let act = Buffer(uninitialized: temb.count)
        siluForward(out: act.ptr, inp: temb.ptr, n: temb.count)
        return (act, tproj, l1, temb)
    }

    private func run(sample: Buffer, timesteps: [Float], context: Buffer, b: Int, hh: Int, ww: Int, s: Int,
                     pass p: Pass) -> (out: Buffer, saved: UNetActivations?) {
        precondition(sample.count == b * spec.inChannels * hh * ww && timesteps.count == b
                     && context.count == b * s * spec.crossAttentionDim, "UNetModel.forward: input sizes do not match")
        // Time embedding: sinusoidal projection -> linear_1 -> SiLU -> linear_2; resnets use SiLU(temb).
        let tembAct = timeEmbedding(p, timesteps, b).act
        // Full-parameter training also keeps the inputs of conv_in and of every resampler (their weight gradients).
        let full = p.training && p.grads != nil
        var resampleInputs: [Buffer] = []

        // Blocks save their activations, or (gradient checkpointing) run without and only their input is kept.
        let checkpointing = p.training && gradientCheckpointing
        let pb = checkpointing ? p.inference : p
        var blocks: [BlockActivations] = []
        func resnet(_ r: ResnetBlock2D, _ x: Buffer, _ size: (Int, Int)) -> Buffer {
            let (y, sv) = r.forward(pb, x, temb: tembAct, b, size.0, size.1)
            if checkpointing { blocks.append(.input(x)) } else if let sv { blocks.append(.resnet(sv)) }
            return y
        }
        func transformer(_ a: Transformer2D, _ x: Buffer, _ size: (Int, Int)) -> Buffer {
            let (y, sv) = a.forward(pb, x, context, b, size.0, size.1, s)
            if checkpointing { blocks.append(.input(x)) } else if let sv { blocks.append(.transformer(sv)) }
            return y
        }
        var h = convIn.forward(p, sample, b, hh, ww)
        var cur = (hh, ww)
        var skips: [Buffer] = [h]
        var sizes: [(Int, Int)] = [], skipShapes: [(c: Int, h: Int, w: Int)] = [(spec.config.blockOutChannels[0], hh, ww)]
        for (i, blk) in spec.down.enumerated() {
            sizes.append(cur)
            for j in 0..<blk.layers {
                h = resnet(downResnets[i][j], h, cur)
                if blk.hasAttention { h = transformer(downAttentions[i][j], h, cur) }
                skips.append(h); skipShapes.append((blk.outChannels, cur.0, cur.1))
            }
            if let d = downsamplers[i] {
                if full { resampleInputs.append(h) }
                h = d.conv.forward(p, h, b, cur.0, cur.1)
                cur = d.conv.outSize(cur.0, cur.1)
                skips.append(h); skipShapes.append((blk.outChannels, cur.0, cur.1))
            }
        }
        h = resnet(midResnets[0], h, cur)
        h = transformer(midAttention, h, cur)
        h = resnet(midResnets[1], h, cur)
        for (i, blk) in spec.up.enumerated() {
            for j in 0..<blk.layers {
                let skip = skips.removeLast()
                let c1 = j == 0 ? blk.prevOutputChannels : blk.outChannels
                let cat = Buffer(uninitialized: b * (c1 + blk.skipChannels(j)) * cur.0 * cur.1)
                concatChannels(out: cat.ptr, a: h.ptr, b: skip.ptr, B: b, C1: c1, C2: blk.skipChannels(j), HW: cur.0 * cur.1)
                h = resnet(upResnets[i][j], cat, cur)
                if blk.hasAttention { h = transformer(upAttentions[i][j], h, cur) }
            }
            if let u = upsamplers[i] {
                let next = skipShapes[skips.count - 1]      // the size of the skip the next block pops
                if full { resampleInputs.append(h) }
                h = u.forward(p, h, b, cur.0, cur.1, outSize: (next.h, next.w))
                cur = (next.h, next.w)
            }
        }
        // out = conv_out(silu(conv_norm_out(h)))
        let (n, stOut) = normOut.forward(p, h, b, hh * ww, silu: true)
        let out = convOut.forward(p, n, b, hh, ww)
        guard p.training else { return (out, nil) }
        return (out, UNetActivations(b: b, h: hh, w: ww, s: s, context: context, tembAct: tembAct, loraMultiplier: p.loraMultiplier,
                                     sizes: sizes, skipShapes: skipShapes, blocks: blocks, xOut: h, stOut: stOut,
                                     timesteps: timesteps, sample: full ? sample : nil, resampleInputs: resampleInputs))
    }

    // MARK: - Backward

    /// Backward of a training forward for d(loss)/d(output) = `dout`, given that forward's saved activations:
    /// accumulates into `lora.grads` (and into `weightGrads` when the parameters are trained) and returns
    /// d(loss)/d(sample) when asked (it costs one more convolution backward).
    /// `gradientsFinal(from)`, when given, is called as the backward goes: the trained gradients (`weightGrads` when
    /// every parameter is trained, else `lora.grads`) at offsets from `from` on will not change any more in this call
    /// (`from` only decreases; the rest is final when backward returns). The trainer starts their all-reduce then.
    @discardableResult
    public func backward(_ dout: Buffer, _ saved: UNetActivations, wantSampleGradient: Bool = false,
                         gradientsFinal: ((Int) -> Void)? = nil) -> Buffer? {
        let t = saved
        let full = weightGrads != nil
        // Top-level blocks in backward order, with the offset from which the trained gradients are final after each.
        let watermarks = gradientsFinal == nil ? [:] : finalGradientOffsets()
        var reported = Int.max
        func blockDone(_ key: String) {
            guard let gradientsFinal, let from = watermarks[key], from < reported else { return }
            reported = from
            gradientsFinal(from)
        }
        precondition(!full || t.sample != nil, "UNetModel.backward: the forward ran before enableWeightGradients")
        let p = Pass(weights: weights, lora: lora, loraMultiplier: t.loraMultiplier, training: true, workspace: workspace,
                     grads: weightGrads)
        let b = t.b, s = t.s, context = t.context
        // d(SiLU(temb)), summed over every resnet's time_emb_proj (full-parameter training only).
        let dtemb: Buffer? = full ? Buffer(zeros: t.tembAct.count) : nil
        var resampleInputs = t.resampleInputs
        // Blocks are visited in the reverse order of the forward, so their activations pop off the end; a block that
        // kept only its input (gradient checkpointing) runs its forward again first.
        var blocks = t.blocks
        func resnet(_ r: ResnetBlock2D, _ dh: Buffer, _ size: (Int, Int)) -> Buffer {
            let sv: ResnetBlock2D.Saved
            switch blocks.removeLast() {
            case .resnet(let saved): sv = saved
            case .input(let x): sv = r.forward(p, x, temb: t.tembAct, b, size.0, size.1).1!
            case .transformer: preconditionFailure("UNetModel.backward: activations out of order")
            }
            return r.backward(p, dh, sv, b, size.0, size.1, temb: t.tembAct, dtemb: dtemb)
        }
        func transformer(_ a: Transformer2D, _ dh: Buffer, _ size: (Int, Int)) -> Buffer {
            let sv: Transformer2D.Saved
            switch blocks.removeLast() {
            case .transformer(let saved): sv = saved
            case .input(let x): sv = a.forward(p, x, context, b, size.0, size.1, s).1!
            case .resnet: preconditionFailure("UNetModel.backward: activations out of order")
            }
            return a.backward(p, dh, context, sv, b, size.0, size.1, s)
        }
        // out = conv_out(silu(norm_out(h)))
        let ds = convOut.backward(p, dout, b, t.h, t.w, x: full ? normOut.forward(p, t.xOut, b, t.h * t.w, silu: true).0 : nil)
        var dh = Buffer(zeros: t.xOut.count)
        normOut.backward(p, ds, t.xOut, t.stOut, b, t.h * t.w, silu: true, into: dh)
        blockDone("conv_norm_out")
        // Skip gradients, one per pushed skip, filled by the up path.
        var dskips: [Buffer?] = Array(repeating: nil, count: t.skipShapes.count)
        var cur = (t.h, t.w)
        for (i, blk) in spec.up.enumerated().reversed() {
            // The skips this block popped, in pop order: indices from the top of the stack.
            let popped = spec.up[..<i].reduce(0) { $0 + $1.layers }
            if let u = upsamplers[i] {
                cur = (cur.0 / 2, cur.1 / 2)
                dh = u.backward(p, dh, b, cur.0, cur.1, x: full ? resampleInputs.removeLast() : nil)
            }
            for j in (0..<blk.layers).reversed() {
                if blk.hasAttention { dh = transformer(upAttentions[i][j], dh, cur) }
                let dcat = resnet(upResnets[i][j], dh, cur)
                let c1 = j == 0 ? blk.prevOutputChannels : blk.outChannels
                let c2 = blk.skipChannels(j)
                let hw = cur.0 * cur.1
                let dprev = Buffer(zeros: b * c1 * hw), dskip = Buffer(zeros: b * c2 * hw)
                splitChannelsBackward(da: dprev.ptr, db: dskip.ptr, dout: dcat.ptr, B: b, C1: c1, C2: c2, HW: hw)
                dskips[t.skipShapes.count - 1 - (popped + j)] = dskip
                dh = dprev
            }
            blockDone("up_blocks.\(i)")
        }
        dh = resnet(midResnets[1], dh, cur)
        dh = transformer(midAttention, dh, cur)
        dh = resnet(midResnets[0], dh, cur)
        blockDone("mid_block")
        // With only the LoRA trained and no d(sample) asked for, the down path stops after its last layer (in backward
        // order) that holds a LoRA target: below it (SD1.5: down_blocks.0.resnets.0, conv_in) nothing is trained and
        // no gradient is wanted, as autograd leaves frozen layers whose inputs need no gradient.
        var layersLeft = Int.max
        if !full && !wantSampleGradient, let lora {
            var order: [String] = []
            for (i, blk) in spec.down.enumerated().reversed() {
                if downsamplers[i] != nil { order.append("down_blocks.\(i).downsamplers.0") }
                for j in (0..<blk.layers).reversed() {
                    if blk.hasAttention { order.append("down_blocks.\(i).attentions.\(j)") }
                    order.append("down_blocks.\(i).resnets.\(j)")
                }
            }
            let last = order.lastIndex { key in lora.targets.contains { $0.module.hasPrefix(key + ".") } }
            layersLeft = last.map { $0 + 1 } ?? 0
        }
        var k = t.skipShapes.count - 1
        down: for (i, blk) in spec.down.enumerated().reversed() {
            let size = t.sizes[i]
            if let d = downsamplers[i] {
                guard layersLeft > 0 else { break down }
                layersLeft -= 1
                addInto(dh.ptr, dskips[k]!.ptr, n: dh.count); k -= 1
                dh = d.conv.backward(p, dh, b, size.0, size.1, x: full ? resampleInputs.removeLast() : nil)
            }
            for j in (0..<blk.layers).reversed() {
                guard layersLeft > 0 else { break down }
                addInto(dh.ptr, dskips[k]!.ptr, n: dh.count); k -= 1
                if blk.hasAttention { dh = transformer(downAttentions[i][j], dh, size); layersLeft -= 1 }
                guard layersLeft > 0 else { break down }
                dh = resnet(downResnets[i][j], dh, size); layersLeft -= 1
            }
            blockDone("down_blocks.\(i)")
            cur = size
        }
        guard layersLeft > 0 else {
            // What is left holds nothing trained: every gradient is final (blocks already reported are skipped).
            for i in spec.down.indices.reversed() { blockDone("down_blocks.\(i)") }
            return nil
        }
        addInto(dh.ptr, dskips[0]!.ptr, n: dh.count)
        precondition(blocks.isEmpty && resampleInputs.isEmpty, "UNetModel.backward: saved activations left over")
        if let dtemb, let sample = t.sample {
            // temb = linear_2(SiLU(linear_1(tproj))); the resnets took SiLU(temb). Recomputed: a few small GEMMs.
            let te = timeEmbedding(p, t.timesteps, b)
            let dpre2 = Buffer(zeros: te.temb.count)
            siluBackward(dinp: dpre2.ptr, dout: dtemb.ptr, inp: te.temb.ptr, n: te.temb.count)
            let a1 = Buffer(uninitialized: te.l1.count)
            siluForward(out: a1.ptr, inp: te.l1.ptr, n: te.l1.count)
            let da1 = Buffer(zeros: a1.count)
            linear2.backward(p, dpre2, a1, nil, b, into: da1)
            let dpre1 = Buffer(zeros: te.l1.count)
            siluBackward(dinp: dpre1.ptr, dout: da1.ptr, inp: te.l1.ptr, n: te.l1.count)
            linear1.backward(p, dpre1, te.tproj, nil, b, into: nil)
            if !wantSampleGradient { convIn.backwardWeights(p, dh, sample, b, t.h, t.w) }
        }
        return wantSampleGradient ? convIn.backward(p, dh, b, t.h, t.w, x: t.sample) : nil
    }
}

extension UNetModel {
    /// For each top-level block that `backward` reports (conv_norm_out with conv_out, each up block, mid_block, each
    /// down block), the offset in the trained gradient buffer from which every gradient is final once backward has
    /// gone through that block: the end of the highest parameter not yet visited. Computed from the keys, so it holds
    /// whatever the declaration order (time_embedding and conv_in come last in backward and are never reported).
    func finalGradientOffsets() -> [String: Int] {
        // (key, end offset) of every trained tensor: the LoRA's A and B (one range per target) or every U-Net parameter.
        let trained: [(key: String, end: Int)]
        if weightGrads != nil {
            trained = weights.table.entries.filter { !$0.isBF16 }.map { ($0.key, $0.offset + $0.count) }
        } else if let lora {
            trained = lora.targets.map { ($0.module, $0.offsetB + $0.outFeatures * lora.rank) }
        } else {
            return [:]
        }
        var order = ["conv_out", "conv_norm_out"]
        order += (0..<spec.up.count).reversed().map { "up_blocks.\($0)" }
        order.append("mid_block")
        order += (0..<spec.down.count).reversed().map { "down_blocks.\($0)" }
        // Position in backward order of each tensor's block (time_embedding, conv_in: after all of them).
        let position = trained.map { t in order.firstIndex { t.key == $0 || t.key.hasPrefix($0 + ".") } ?? order.count }
        var result: [String: Int] = [:]
        for (k, key) in order.enumerated() where key != "conv_out" {   // conv_out is reported with conv_norm_out
            result[key] = zip(trained, position).filter { $0.1 > k }.map(\.0.end).max() ?? 0
        }
        return result
    }
}

/// What a training forward of the U-Net saves for its backward; dropping it frees the activations.
public struct UNetActivations {
    let b: Int, h: Int, w: Int, s: Int
    let context: Buffer, tembAct: Buffer
    let loraMultiplier: Float?
    /// The spatial size entering each down level, and the shape of every skip pushed.
    let sizes: [(Int, Int)], skipShapes: [(c: Int, h: Int, w: Int)]
    /// Every ResnetBlock2D and Transformer2DModel in forward order.
    let blocks: [BlockActivations]
    /// conv_norm_out's input and statistics.
    let xOut: Buffer, stOut: GroupNorm.Stats
    /// Full-parameter training: the timesteps (the time embedding is recomputed), conv_in's input and every
    /// resampler's input in forward order (nil and empty otherwise).
    let timesteps: [Float], sample: Buffer?, resampleInputs: [Buffer]

    /// Blocks that kept only their input, to run again in backward (gradient checkpointing); 0 otherwise.
    public var recomputedBlockCount: Int { blocks.filter { if case .input = $0 { return true } else { return false } }.count }
}

enum BlockActivations {
    case resnet(ResnetBlock2D.Saved)
    case transformer(Transformer2D.Saved)
    /// Gradient checkpointing: the block's input, from which backward recomputes its activations.
    case input(Buffer)
}
