// 8-bit Adam / AdamW (Dettmers et al. 2021, "8-bit Optimizers via Block-wise Quantization") over one flat parameter
// buffer that holds many tensors, matching bitsandbytes 0.50 `Adam8bit` / `AdamW8bit` (optim_bits 8, block-wise) as
// it runs on the CPU.
// Ref: bitsandbytes/optim/optimizer.py `Optimizer2State.init_state` / `update_step` (per-tensor state; tensors with
//      fewer than min_8bit_size elements keep fp32 state), bitsandbytes/functional.py `create_dynamic_map`,
//      bitsandbytes/backends/cpu/ops.py `_optimizer_update_8bit_blockwise_cpu` / `_optimizer_update_32bit_cpu` (the
//      update as torch ops), csrc/cpu_ops.cpp `quantize_cpu_impl` / `build_quantize_lut` / `dequantizeBlockwise8bitCpu`.
//
// Per tensor (a segment of the flat buffer) of n >= minQuantizedSize elements, both moments are stored as one byte
// per element plus one fp32 absmax per block of 256: m = signedMap[q1] · absmax1, v = unsignedMap[q2] · absmax2.
// One step, per block (bnb's order and rounding; fma where torch's AVX2 kernels fuse):
//   m ← fma(g, 1−β1, m·β1)                      // state1.mul_(beta1).add_(grad, alpha=1-beta1)
//   v ← fma((1−β2)·g, g, v·β2)                  // state2.mul_(beta2).addcmul_(grad, grad, value=1-beta2)
//   p ← p · (1 − lr·wd)                         // decoupled weight decay, when wd > 0
//   p ← p + (−lr/bc1 · m) / (√v / √bc2 + eps)   // p.addcdiv_(state1, denom, value=-lr/correction1)
//   requantize m, v: absmax = max|x| over the block, x/absmax → 65536-bin lookup table → nearest map entry
//   (bnb's CPU quantizer: idx = trunc(fma((x/absmax + 1)·0.5, 65535, 0.5)), lut[idx] = first entry whose midpoint
//   with the next is not below −1 + 2·idx/65535).
// Tensors below minQuantizedSize take bnb's 32-bit CPU path, whose formula differs slightly:
//   p ← fma(m / (√v + eps·√bc2), −lr·√bc2/bc1, p).
// Scalars (1−β, bias corrections, −lr/bc1, 1−lr·wd) are computed in Double and rounded to Float once, as Python does
// before torch casts them; hence betas / eps / weightDecay are Doubles here.
//
// Exactness: the quantized states, absmax and fp32 states are bit-identical to bitsandbytes (they depend only on the
// gradients). The params differ in the last bit now and then (on the test fixture 31 of 9396 after ten steps, never
// by more than 2 ulp): torch's sqrt on x86 is MKL's vsSqrt (HA), which is not correctly rounded (it refines the CPU's
// rsqrtps estimate, so it even differs between CPUs); this uses the correctly rounded square root.
// `decoupled: false` adds weightDecay·p to the gradient instead (torch.optim.Adam's L2 coupling). bitsandbytes has
// no such variant: its Adam8bit with weight_decay > 0 decays the params exactly as AdamW8bit does, so to reproduce
// either bnb class use `decoupled: true`. NaN / Inf gradients are not special-cased (bnb's CPU path neither).
import Foundation
import IO
import Tensors

public final class Adam8bit: Optimizer, @unchecked Sendable {
    public let beta1: Double, beta2: Double, eps: Double, weightDecay: Double
    public let decoupled: Bool
    public let blockSize: Int
    /// Tensors with fewer elements keep fp32 moments (bnb's `min_8bit_size`).
    public let minQuantizedSize: Int
    /// The tensors inside the flat buffer, in the order given.
    public let segments: [(offset: Int, count: Int)]
    /// Length of the flat buffer the segments tile.
    public let parameterCount: Int
    public private(set) var stepCount = 0

    // State of the quantized segments, concatenated in segment order: one byte per element, one absmax per block.
    let state1: UnsafeMutablePointer<UInt8>, state2: UnsafeMutablePointer<UInt8>   // (quantizedCount)
    let absmax1: Buffer, absmax2: Buffer                                           // (blockCount)
    // Moments of the small segments, concatenated in segment order.
    let expAvg: Buffer, expAvgSq: Buffer                                           // (fp32Count)
    let quantizedCount: Int
    /// Work items: a block of a quantized segment, or a chunk of a small one.
    private let blocks: [Block]

    private struct Block {
        var paramOffset: Int   // into params / grads
        var count: Int
        var stateOffset: Int   // into state1/state2 (quantized) or expAvg/expAvgSq (fp32)
        var absmaxIndex: Int   // -1 for fp32 state
    }

    /// `segments`: (offset, count) of each parameter tensor in the flat buffer; they must tile 0..<N without gaps or
    /// overlaps (any order). Defaults are bitsandbytes' (its Adam8bit has weight decay 0, AdamW8bit 0.01).
    public init(segments: [(offset: Int, count: Int)], betas: (Double, Double) = (0.9, 0.999), eps: Double = 1e-8,
                weightDecay: Double = 0, decoupled: Bool = true, blockSize: Int = 256, minQuantizedSize: Int = 4096) {
        precondition(blockSize > 0 && minQuantizedSize >= 0, "Adam8bit: blockSize \(blockSize), minQuantizedSize \(minQuantizedSize)")
        precondition(segments.allSatisfy { $0.offset >= 0 && $0.count > 0 }, "Adam8bit: segments need offset >= 0 and count > 0")
        var end = 0
        for s in segments.sorted(by: { $0.offset < $1.offset }) {
            precondition(s.offset == end, "Adam8bit: segments must tile the buffer; a gap or overlap at \(s.offset) (expected \(end))")
            end = s.offset + s.count
        }
        self.beta1 = betas.0; self.beta2 = betas.1; self.eps = eps; self.weightDecay = weightDecay
        self.decoupled = decoupled
        self.blockSize = blockSize
        self.minQuantizedSize = minQuantizedSize
        self.segments = segments
        parameterCount = end

        var blocks: [Block] = []
        var quantized = 0, blockCount = 0, fp32 = 0
        for s in segments {
            let isQuantized = s.count >= minQuantizedSize
            for start in stride(from: 0, to: s.count, by: blockSize) {
                let n = min(blockSize, s.count - start)
                if isQuantized {
                    blocks.append(Block(paramOffset: s.offset + start, count: n, stateOffset: quantized + start, absmaxIndex: blockCount))
                    blockCount += 1
                } else {
                    blocks.append(Block(paramOffset: s.offset + start, count: n, stateOffset: fp32 + start, absmaxIndex: -1))
                }
            }
            if isQuantized { quantized += s.count } else { fp32 += s.count }
        }
        self.blocks = blocks
        quantizedCount = quantized
        // bnb starts from zero bytes and zero absmax (dequantized: ±0).
        state1 = .allocate(capacity: max(quantized, 1)); state1.initialize(repeating: 0, count: max(quantized, 1))
        state2 = .allocate(capacity: max(quantized, 1)); state2.initialize(repeating: 0, count: max(quantized, 1))
        absmax1 = Buffer(zeros: blockCount); absmax2 = Buffer(zeros: blockCount)
        expAvg = Buffer(zeros: fp32); expAvgSq = Buffer(zeros: fp32)
    }

    deinit { state1.deallocate(); state2.deallocate() }

    // MARK: - Update

    public func update(params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, count: Int, lr: Float) {
        precondition(count == parameterCount, "Adam8bit.update: \(count) parameters, segments cover \(parameterCount)")
        stepCount += 1
        let step = Double(stepCount), lrD = Double(lr)
        // Python floats, as bitsandbytes computes them.
        let correction1 = 1 - pow(beta1, step), correction2 = (1 - pow(beta2, step)).squareRoot()
        var k = Kernel()
        k.beta1 = Float(beta1); k.oneMinusBeta1 = Float(1 - beta1)
        k.beta2 = Float(beta2); k.oneMinusBeta2 = Float(1 - beta2)
        k.weightDecay = Float(weightDecay)
        k.decayParams = decoupled && weightDecay > 0
        k.decayGrads = !decoupled && weightDecay > 0
        k.decay = Float(1 - lrD * weightDecay)
        k.correction2 = Float(correction2)
        k.eps = Float(eps)
        k.stepSize8bit = Float(-lrD / correction1)
        k.epsCorrected32bit = Float(eps * correction2)
        k.stepSize32bit = Float(-lrD * correction2 / correction1)
        let kernel = k

        let q1 = state1, q2 = state2, a1 = absmax1.ptr, a2 = absmax2.ptr, m32 = expAvg.ptr, v32 = expAvgSq.ptr
        let blockSize = blockSize
        blocks.withUnsafeBufferPointer { blocks in
            parallelFor(blocks.count, work: 8 * count) { b in
                let blk = blocks[b]
                let p = params + blk.paramOffset, g = grads + blk.paramOffset
                if blk.absmaxIndex < 0 {
                    kernel.update32bit(p: p, g: g, m: m32 + blk.stateOffset, v: v32 + blk.stateOffset, count: blk.count)
                } else {
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * blockSize) { scratch in
                        let m = scratch.baseAddress!, v = m + blockSize
                        kernel.update8bit(p: p, g: g, q1: q1 + blk.stateOffset, q2: q2 + blk.stateOffset,
                                     absmax1: a1 + blk.absmaxIndex, absmax2: a2 + blk.absmaxIndex, m: m, v: v, count: blk.count)
                    }
                }
            }
        }
    }

    /// Per-step scalars, each rounded to Float once.
    private struct Kernel {
        var beta1: Float = 0, oneMinusBeta1: Float = 0, beta2: Float = 0, oneMinusBeta2: Float = 0
        var weightDecay: Float = 0, decayParams = false, decayGrads = false, decay: Float = 1
        var correction2: Float = 1, eps: Float = 0, stepSize8bit: Float = 0
        var epsCorrected32bit: Float = 0, stepSize32bit: Float = 0
        // Raw pointers, not arrays: threads retaining one shared array buffer per block contend on its refcount.
        let signed = DynamicMap.signedTables, unsigned = DynamicMap.unsignedTables

        /// One block of a quantized tensor: dequantize, update m, v and p, requantize. `m`, `v`: scratch (count).
        @inline(__always)
        func update8bit(p: UnsafeMutablePointer<Float>, g: UnsafePointer<Float>,
                        q1: UnsafeMutablePointer<UInt8>, q2: UnsafeMutablePointer<UInt8>,
                        absmax1: UnsafeMutablePointer<Float>, absmax2: UnsafeMutablePointer<Float>,
                        m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int) {
            let scale1 = absmax1.pointee, scale2 = absmax2.pointee
            let map1 = signed.map, map2 = unsigned.map
            for i in 0..<count {
                var grad = g[i]
                if decayGrads { grad = grad.addingProduct(p[i], weightDecay) }
                // bnb dequantize: code[A[i]] * absmax
                let mi = (map1[Int(q1[i])] * scale1 * beta1).addingProduct(grad, oneMinusBeta1)
                let vi = (map2[Int(q2[i])] * scale2 * beta2).addingProduct(oneMinusBeta2 * grad, grad)
                m[i] = mi; v[i] = vi
                let denom = vi.squareRoot() / correction2 + eps
                var pi = p[i]
                if decayParams { pi *= decay }
                p[i] = pi + stepSize8bit * mi / denom
            }
            absmax1.pointee = DynamicMap.quantize(m, count: count, lut: signed.lut, into: q1)
            absmax2.pointee = DynamicMap.quantize(v, count: count, lut: unsigned.lut, into: q2)
        }

        /// A chunk of a tensor with fp32 state (bnb's `_optimizer_update_32bit_cpu`).
        @inline(__always)
        func update32bit(p: UnsafeMutablePointer<Float>, g: UnsafePointer<Float>,
                         m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int) {
            for i in 0..<count {
                var grad = g[i]
                if decayGrads { grad = grad.addingProduct(p[i], weightDecay) }
                let mi = (m[i] * beta1).addingProduct(grad, oneMinusBeta1)
                let vi = (v[i] * beta2).addingProduct(oneMinusBeta2 * grad, grad)
                m[i] = mi; v[i] = vi
                var pi = p[i]
                if decayParams { pi *= decay }
                let update = mi / (vi.squareRoot() + epsCorrected32bit)
                p[i] = pi.addingProduct(update, stepSize32bit)
            }
        }
    }

    // MARK: - State

    public func stateEntries() -> (tensors: [SafeTensorsEntry], metadata: [String: String]) {
        let q = quantizedCount
        let tensors = [
            SafeTensorsEntry(name: "state1", dtype: .U8, shape: [q], bytes: Array(UnsafeBufferPointer(start: state1, count: q))),
            SafeTensorsEntry(name: "state2", dtype: .U8, shape: [q], bytes: Array(UnsafeBufferPointer(start: state2, count: q))),
            SafeTensorsEntry(name: "absmax1", shape: [absmax1.count], floats: absmax1.array),
            SafeTensorsEntry(name: "absmax2", shape: [absmax2.count], floats: absmax2.array),
            SafeTensorsEntry(name: "exp_avg", shape: [expAvg.count], floats: expAvg.array),
            SafeTensorsEntry(name: "exp_avg_sq", shape: [expAvgSq.count], floats: expAvgSq.array),
            SafeTensorsEntry(name: "segments", shape: [segments.count, 2], int64s: segments.flatMap { [Int64($0.offset), Int64($0.count)] }),
        ]
        return (tensors, configMetadata.merging(["optimizer": "adam8bit", "step": String(stepCount)]) { $1 })
    }

    /// The settings a state file must share to be continued (Double's description round-trips exactly).
    private var configMetadata: [String: String] {
        ["beta1": "\(beta1)", "beta2": "\(beta2)", "eps": "\(eps)", "weight_decay": "\(weightDecay)",
         "decoupled": "\(decoupled)", "block_size": "\(blockSize)", "min_quantized_size": "\(minQuantizedSize)"]
    }

    public func loadState(from file: SafeTensorsFile) throws {
        func fail(_ message: String) -> OptimizerStateError { OptimizerStateError(path: file.path, message: message) }
        guard file.metadata["optimizer"] == "adam8bit" else {
            throw fail("is not an Adam8bit state (metadata optimizer=\(file.metadata["optimizer"] ?? "none"))")
        }
        guard let stepText = file.metadata["step"], let step = Int(stepText), step >= 0 else {
            throw fail("metadata step=\(file.metadata["step"] ?? "none") is not a step count")
        }
        for (key, value) in configMetadata.sorted(by: { $0.key < $1.key }) where file.metadata[key] != value {
            throw fail("was written with \(key)=\(file.metadata[key] ?? "none"), this optimizer has \(key)=\(value)")
        }
        guard let info = file.info("segments"), info.dtype == .I64, info.shape == [segments.count, 2] else {
            throw fail("'segments' should be I64 [\(segments.count), 2] (this LoRA's \(segments.count) tensors), found "
                       + (file.info("segments").map { "\($0.dtype.rawValue) \($0.shape)" } ?? "none"))
        }
        let saved = try file.int64s("segments")
        for (i, s) in segments.enumerated() where saved[2 * i] != Int64(s.offset) || saved[2 * i + 1] != Int64(s.count) {
            throw fail("tensor \(i) is (offset \(saved[2 * i]), count \(saved[2 * i + 1])) in the state, "
                       + "(offset \(s.offset), count \(s.count)) in this LoRA")
        }
        func check(_ name: String, _ dtype: DType, _ count: Int) throws {
            guard let t = file.info(name) else { throw fail("has no tensor '\(name)'") }
            guard t.dtype == dtype, t.count == count else {
                throw fail("'\(name)' is \(t.dtype.rawValue) with \(t.count) values, expected \(dtype.rawValue) with \(count)")
            }
        }
        try check("state1", .U8, quantizedCount); try check("state2", .U8, quantizedCount)
        try check("absmax1", .F32, absmax1.count); try check("absmax2", .F32, absmax2.count)
        try check("exp_avg", .F32, expAvg.count); try check("exp_avg_sq", .F32, expAvgSq.count)
        // All checked: now overwrite.
        for (name, dst) in [("state1", state1), ("state2", state2)] where quantizedCount > 0 {
            let src = try file.rawBytes(name)
            UnsafeMutableRawPointer(dst).copyMemory(from: src.baseAddress!, byteCount: quantizedCount)
        }
        for (name, buf) in [("absmax1", absmax1), ("absmax2", absmax2), ("exp_avg", expAvg), ("exp_avg_sq", expAvgSq)] {
            try file.read(name, into: buf.buffer)
        }
        stepCount = step
    }
}

// MARK: - Dynamic quantization

/// bitsandbytes' dynamic 8-bit maps and its CPU block quantizer.
enum DynamicMap {
    /// `create_dynamic_map(signed=True)`: the first moment's map, 256 sorted values in [−0.993, 1].
    static let signed = make(signed: true)
    /// `create_dynamic_map(signed=False)`: the second moment's map, 256 sorted values in [0, 1].
    static let unsigned = make(signed: false)
    /// The maps and their lookup tables in never-freed allocations, for the hot loops.
    static let signedTables = Tables(signed)
    static let unsignedTables = Tables(unsigned)

    struct Tables: @unchecked Sendable {
        let map: UnsafePointer<Float>   // (256)
        let lut: UnsafePointer<UInt8>   // (65536)
        init(_ map: [Float]) {
            let m = UnsafeMutablePointer<Float>.allocate(capacity: 256)
            m.initialize(from: map, count: 256)
            let l = UnsafeMutablePointer<UInt8>.allocate(capacity: 65536)
            l.initialize(from: lookupTable(map), count: 65536)
            self.map = UnsafePointer(m); self.lut = UnsafePointer(l)
        }
    }

    /// Ref: bitsandbytes/functional.py `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`: for each
    /// exponent i = 0…6, the midpoints of torch.linspace(0.1, 1, k) (float32) scaled by 10^(i−6) (and negated when
    /// signed), then 0 and 1; `additional_items` is 0 for these arguments.
    static func make(signed: Bool) -> [Float] {
        let powersOfTen: [Double] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1]   // Python's 10 ** (i - 6)
        var data: [Float] = []
        for i in 0..<7 {
            let items = signed ? (1 << i) + 1 : (1 << (i + 1)) + 1
            let b = linspace(0.1, 1, items)
            let scale = Float(powersOfTen[i])
            for j in 0..<(items - 1) {
                let mean = (b[j] + b[j + 1]) / 2
                data.append(scale * mean)
                if signed { data.append(-scale * mean) }
            }
        }
        data += [0, 1]
        precondition(data.count <= 256)
        data += [Float](repeating: 0, count: 256 - data.count)
        return data.sorted()
    }

    /// torch.linspace(start, end, steps, dtype=float32) on the CPU: step = (end − start)/(steps − 1) in float, the
    /// first half as fma(step, i, start), the second as fma(−step, steps − 1 − i, end).
    static func linspace(_ start: Float, _ end: Float, _ steps: Int) -> [Float] {
        let step = (end - start) / Float(steps - 1)
        return (0..<steps).map { i in
            i < steps / 2 ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(steps - 1 - i))
        }
    }

    /// Ref: csrc/cpu_ops.cpp `build_quantize_lut`: 65536 bins over [−1, 1]; bin i holds the index of the first map
    /// entry whose midpoint with the next one is not below −1 + 2i/65535.
    static func lookupTable(_ map: [Float]) -> [UInt8] {
        let midpoints = (0..<255).map { (map[$0] + map[$0 + 1]) * 0.5 }
        var lut = [UInt8](repeating: 0, count: 65536)
        var index = 0
        for i in 0..<65536 {
            let x = Float(i) + Float(i)
            let value = x / 65535 - 1
            while index < 255 && value > midpoints[index] { index += 1 }
            lut[i] = UInt8(index)
        }
        return lut
    }

    /// Quantizes one block; returns its absmax. Ref: csrc/cpu_ops.cpp `quantize_cpu_impl` (scalar path, as built
    /// in bitsandbytes 0.50: absmax = max|x|, 0 → all bytes 0; else lut[trunc(fma((x·(1/absmax) clamped to [−1, 1]
    /// + 1)·0.5, 65535, 0.5))]).
    @inline(__always)
    static func quantize(_ x: UnsafePointer<Float>, count: Int, lut: UnsafePointer<UInt8>, into out: UnsafeMutablePointer<UInt8>) -> Float {
        var absmax: Float = 0
        for i in 0..<count {
            let a = abs(x[i])
            if absmax < a { absmax = a }   // std::max(absmax, a): NaN never wins
        }
        if absmax == 0 {
            out.update(repeating: 0, count: count)
            return absmax
        }
        let inverse = 1 / absmax
        for i in 0..<count {
            var v = x[i] * inverse
            v = v < -1 ? -1 : (1 < v ? 1 : v)   // std::clamp
            let t = Float(0.5).addingProduct((v + 1) * 0.5, 65535)
            out[i] = lut[t >= 0 ? Int(t) & 0xFFFF : 0]   // NaN: cvttss2si gives 0x80000000, bin 0
        }
        return absmax
    }
}
