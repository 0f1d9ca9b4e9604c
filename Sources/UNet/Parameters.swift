// Where the U-Net's numbers live. Base weights: one flat fp32 allocation (plus one bf16 allocation for the conv /
// linear weights in mixed precision), addressed by offsets from a table keyed by the diffusers state-dict names (so
// loading is a lookup). LoRA: parameters and gradients in two more flat buffers with one shared table, so an
// all-reduce or a checkpoint is one call over one buffer (llm.c style).
import IO
import Tensors

/// How the U-Net's frozen base weights are stored and multiplied (`--mixed-precision no|bf16`).
public enum MixedPrecision: String, Sendable, CaseIterable, Codable {
    /// Everything fp32.
    case no
    /// The weight of every convolution and linear layer stored once in bf16 (round to nearest, ties to even, as
    /// torch's `.to(torch.bfloat16)`; no fp32 copy is kept) and multiplied by `BF16.gemm` with fp32 sums: on CPUs with
    /// AVX512-BF16 the activations are rounded to bf16 for the products (as torch.autocast on such CPUs), elsewhere
    /// the weights are widened to fp32 blockwise for sgemm. Norms, biases, activations, LoRA A/B, their gradients
    /// and the optimizer stay fp32.
    case bf16
}

public struct ParameterEntry: Sendable, Equatable {
    public let key: String
    public let shape: [Int]
    /// Offset in the buffer the entry lives in: `BaseWeights.bf16Storage` when `isBF16`, else `BaseWeights.storage`.
    public let offset: Int
    /// A conv / linear weight stored as bf16 (mixed precision).
    public let isBF16: Bool
    public var count: Int { shape.reduce(1, *) }
}

/// Keys, shapes and offsets of the flat parameter buffers, in declaration order. In fp32 all parameters share one
/// buffer; in bf16 mixed precision the GEMM weights (`addMatrix`) are laid out in a second, bf16 buffer.
public final class ParameterTable: @unchecked Sendable {
    public let precision: MixedPrecision
    public private(set) var entries: [ParameterEntry] = []
    /// Parameters in all (both buffers).
    public var count: Int { fp32Count + bf16Count }
    /// Elements of the fp32 buffer and of the bf16 buffer.
    public private(set) var fp32Count = 0
    public private(set) var bf16Count = 0
    private var index: [String: Int] = [:]

    public init(precision: MixedPrecision = .no) { self.precision = precision }

    /// Declares an fp32 parameter (a norm's scale and shift, a bias) and returns its offset in the fp32 buffer.
    @discardableResult
    public func add(_ key: String, _ shape: [Int]) -> Int { add(key, shape, bf16: false) }

    /// Declares the weight of a convolution or linear layer (a GEMM operand) and returns its offset: in the bf16
    /// buffer in mixed precision, else in the fp32 buffer.
    @discardableResult
    public func addMatrix(_ key: String, _ shape: [Int]) -> Int { add(key, shape, bf16: precision == .bf16) }

    private func add(_ key: String, _ shape: [Int], bf16: Bool) -> Int {
        precondition(index[key] == nil, "parameter \(key) declared twice")
        let e = ParameterEntry(key: key, shape: shape, offset: bf16 ? bf16Count : fp32Count, isBF16: bf16)
        index[key] = entries.count
        entries.append(e)
        if bf16 { bf16Count += e.count } else { fp32Count += e.count }
        return e.offset
    }

    public func entry(_ key: String) -> ParameterEntry? { index[key].map { entries[$0] } }
}

public struct WeightLoadError: Error, UserInputError, CustomStringConvertible {
    public let source: String
    public let missing: [String]
    public let unexpected: [String]
    public let mismatched: [String]
    public var description: String {
        var parts: [String] = []
        func list(_ xs: [String]) -> String { xs.prefix(5).joined(separator: ", ") + (xs.count > 5 ? ", … (\(xs.count) in all)" : "") }
        if !missing.isEmpty { parts.append("missing \(missing.count) tensor(s): \(list(missing))") }
        if !mismatched.isEmpty { parts.append("wrong shape: \(list(mismatched))") }
        if !unexpected.isEmpty { parts.append("\(unexpected.count) unexpected tensor(s): \(list(unexpected))") }
        return "\(source): weights do not match the U-Net config: " + parts.joined(separator: "; ")
    }
}

/// The frozen base weights of a model: one fp32 allocation, plus one bf16 allocation for the conv / linear weights in
/// mixed precision (then the fp32 one holds only norms and biases).
public final class BaseWeights: @unchecked Sendable {
    public let table: ParameterTable
    public let storage: Buffer
    public let bf16Storage: BF16Buffer

    init(table: ParameterTable) {
        self.table = table
        storage = Buffer(uninitialized: table.fp32Count)
        bf16Storage = BF16Buffer(uninitialized: table.bf16Count)
    }

    /// Bytes the parameters take in memory.
    public var byteCount: Int { 4 * table.fp32Count + 2 * table.bf16Count }

    /// An fp32-stored parameter in place (nil for unknown keys and for bf16-stored ones: see `floats`).
    public subscript(_ key: String) -> UnsafeMutableBufferPointer<Float>? {
        guard let e = table.entry(key), !e.isBF16 else { return nil }
        return UnsafeMutableBufferPointer(start: storage.ptr + e.offset, count: e.count)
    }

    /// A bf16-stored parameter's bits in place (nil for unknown keys and fp32-stored ones).
    public func bf16Bits(_ key: String) -> UnsafeMutableBufferPointer<UInt16>? {
        guard let e = table.entry(key), e.isBF16 else { return nil }
        return UnsafeMutableBufferPointer(start: bf16Storage.ptr + e.offset, count: e.count)
    }

    /// A parameter's values as the model uses them (bf16 ones widened exactly to Float).
    public func floats(_ key: String) -> [Float]? {
        guard let e = table.entry(key) else { return nil }
        if !e.isBF16 { return Array(UnsafeBufferPointer(start: storage.ptr + e.offset, count: e.count)) }
        return [Float](unsafeUninitializedCapacity: e.count) { buf, n in
            BF16.convert(bf16Storage.ptr + e.offset, to: buf.baseAddress!, count: e.count)
            n = e.count
        }
    }

    /// Fills one parameter from a tensor of `file` (any float dtype). fp32-stored: converted to fp32. bf16-stored: a
    /// BF16 tensor's bits are copied as they are; any other dtype is read to fp32 (exact for F32/F16/BF16) in
    /// `scratch` and rounded to bf16 (nearest, ties to even: torch's `.to(torch.bfloat16)` of the fp32 tensor).
    private func read(_ e: ParameterEntry, _ name: String, from file: SafeTensorsFile, scratch: inout Buffer) throws {
        guard e.isBF16 else {
            try file.read(name, into: UnsafeMutableBufferPointer(start: storage.ptr + e.offset, count: e.count))
            return
        }
        if let info = file.info(name), info.dtype == .BF16, info.count == e.count {
            let raw = try file.rawBytes(name)
            UnsafeMutableRawPointer(bf16Storage.ptr + e.offset).copyMemory(from: raw.baseAddress!, byteCount: 2 * e.count)
            return
        }
        if scratch.count < e.count { scratch = Buffer(uninitialized: e.count) }
        try file.read(name, into: UnsafeMutableBufferPointer(start: scratch.ptr, count: e.count))
        BF16.convert(scratch.ptr, to: bf16Storage.ptr + e.offset, count: e.count)
    }

    /// Fills every parameter from safetensors files (any float dtype, converted to the storage's precision); every
    /// expected key must be present with its exact shape, and no unknown key may be left over. Each tensor's pages of
    /// the mapped file are dropped once read, so loading needs about the model's memory plus one tensor, not the file
    /// on top.
    func load(files: [String]) throws {
        var seen = Set<String>()
        var unexpected: [String] = [], mismatched: [String] = []
        var scratch = Buffer(uninitialized: 0)
        for path in files {
            let file = try SafeTensorsFile(path: path)
            for name in file.tensorNames {
                guard let e = table.entry(name) else { unexpected.append(name); continue }
                guard let info = file.info(name), info.shape == e.shape || (info.shape.reduce(1, *) == e.count && squeezed(info.shape) == squeezed(e.shape)) else {
                    mismatched.append("\(name) is \(file.info(name)?.shape ?? []), expected \(e.shape)")
                    continue
                }
                try read(e, name, from: file, scratch: &scratch)
                file.evict(name)
                seen.insert(name)
            }
        }
        let missing = table.entries.map(\.key).filter { !seen.contains($0) }
        if !missing.isEmpty || !unexpected.isEmpty || !mismatched.isEmpty {
            throw WeightLoadError(source: files.count == 1 ? files[0] : "\(files.count) files in \((files.first ?? "") as String)",
                                  missing: missing, unexpected: unexpected, mismatched: mismatched)
        }
    }

    /// Fills every parameter from `file` under `prefix` + key (parity fixtures hold a module's weights beside its
    /// inputs and outputs); every parameter must be there with its shape.
    func loadSubset(from file: SafeTensorsFile, prefix: String) throws {
        var missing: [String] = [], mismatched: [String] = []
        var scratch = Buffer(uninitialized: 0)
        for e in table.entries {
            guard let info = file.info(prefix + e.key) else { missing.append(prefix + e.key); continue }
            guard info.count == e.count else { mismatched.append("\(e.key) is \(info.shape), expected \(e.shape)"); continue }
            try read(e, prefix + e.key, from: file, scratch: &scratch)
        }
        if !missing.isEmpty || !mismatched.isEmpty {
            throw WeightLoadError(source: file.path, missing: missing, unexpected: [], mismatched: mismatched)
        }
    }

    /// Random weights for benchmarks and tests: N(0, 1/fan_in) for matrices and kernels, small values for the rest.
    /// bf16-stored weights are the rounding of the fp32 draws (the same model as in fp32, rounded).
    func randomize(seed: UInt64) {
        let rng = CounterRNG(seed: seed)
        var scratch = Buffer(uninitialized: 0)
        for (i, e) in table.entries.enumerated() {
            if e.isBF16 && scratch.count < e.count { scratch = Buffer(uninitialized: e.count) }
            let buf = UnsafeMutableBufferPointer(start: e.isBF16 ? scratch.ptr : storage.ptr + e.offset, count: e.count)
            let s = rng.substream(UInt64(i))
            if e.shape.count >= 2 {
                let fanIn = e.shape.dropFirst().reduce(1, *)
                s.fillNormal(buf, scale: 1 / Float(fanIn).squareRoot())
            } else if e.key.hasSuffix("norm.weight") || e.key.contains("norm") && e.key.hasSuffix(".weight") {
                for j in 0..<e.count { buf[j] = 1 + 0.1 * s.normal(UInt64(j)) }
            } else {
                s.fillNormal(buf, scale: 0.02)
            }
            if e.isBF16 { BF16.convert(scratch.ptr, to: bf16Storage.ptr + e.offset, count: e.count) }
        }
    }
}

/// 1x1 conv weights (O, I, 1, 1) and linear weights (O, I) are interchangeable (SD1 vs SD2 proj_in/out).
private func squeezed(_ s: [Int]) -> [Int] { s.filter { $0 != 1 } }
