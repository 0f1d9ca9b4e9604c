// Where every model's numbers live (the U-Net, the VAE, the CLIP towers). A `ParameterTable` is filled while a model
// builds its modules: each module declares its tensors under their checkpoint keys (diffusers / transformers
// state-dict names), so loading is a lookup. `Weights` then holds them in one flat fp32 allocation, plus one bf16
// allocation for the GEMM operands in mixed precision, llm.c style: a checkpoint, a random init or a copy is one walk
// over one table.
// Loading is strict: every declared key must be found once with its shape and no file key may be left over, unless
// the model's `KeyRemap` renames it (old checkpoint layouts) or skips it (a part that was not built).
import IO
import Tensors

/// How a model's frozen base weights are stored and multiplied (`--mixed-precision no|bf16`).
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

/// What a parameter is, for random init: a GEMM operand (N(0, 1/fan_in)), an embedding table (N(0, 0.02)) or a
/// vector (norm scales near 1, everything else N(0, 0.02)).
public enum ParameterKind: Sendable, Equatable { case matrix, embedding, vector }

public struct ParameterEntry: Sendable, Equatable {
    public let key: String
    public let shape: [Int]
    public let kind: ParameterKind
    /// Offset in the buffer the entry lives in: `Weights.bf16Storage` when `isBF16`, else `Weights.storage`.
    public let offset: Int
    /// A conv / linear weight stored as bf16 (mixed precision).
    public let isBF16: Bool
    public var count: Int { shape.reduce(1, *) }
}

/// Where a module finds its GEMM weight: an offset and the buffer it is in.
public struct MatrixRef: Sendable, Equatable {
    public let offset: Int
    public let isBF16: Bool
}

/// Keys, shapes and offsets of a model's flat parameter buffers, in declaration order.
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

    /// Declares an fp32 parameter (a norm's scale and shift, a bias, an embedding table); returns its fp32 offset.
    @discardableResult
    public func add(_ key: String, _ shape: [Int], kind: ParameterKind = .vector) -> Int {
        add(key, shape, kind: kind, bf16: false).offset
    }

    /// Declares the weight of a convolution or linear layer (a GEMM operand): in the bf16 buffer in mixed precision
    /// (unless `allowBF16` is false: a layer the reference keeps in fp32), else in the fp32 buffer.
    public func addMatrix(_ key: String, _ shape: [Int], allowBF16: Bool = true) -> MatrixRef {
        let e = add(key, shape, kind: .matrix, bf16: allowBF16 && precision == .bf16)
        return MatrixRef(offset: e.offset, isBF16: e.isBF16)
    }

    private func add(_ key: String, _ shape: [Int], kind: ParameterKind, bf16: Bool) -> ParameterEntry {
        precondition(index[key] == nil, "parameter \(key) declared twice")
        let e = ParameterEntry(key: key, shape: shape, kind: kind, offset: bf16 ? bf16Count : fp32Count, isBF16: bf16)
        index[key] = entries.count
        entries.append(e)
        if bf16 { bf16Count += e.count } else { fp32Count += e.count }
        return e
    }

    public func entry(_ key: String) -> ParameterEntry? { index[key].map { entries[$0] } }
}

/// How a checkpoint's keys map to the model's: a file key → the model key it fills, or nil to skip the tensor
/// (a buffer the model does not use, a part that was not built). Any key that maps to an undeclared name is an error.
public struct KeyRemap: Sendable {
    public let map: @Sendable (String) -> String?
    public init(_ map: @escaping @Sendable (String) -> String?) { self.map = map }
    public static let identity = KeyRemap { $0 }
}

public struct WeightLoadError: Error, UserInputError, CustomStringConvertible {
    public let source: String
    /// The model, for the message ("U-Net", "AutoencoderKL", "text encoder").
    public let model: String
    public let missing: [String], unexpected: [String], mismatched: [String], duplicated: [String]
    public var description: String {
        var parts: [String] = []
        func list(_ xs: [String]) -> String { xs.prefix(5).joined(separator: ", ") + (xs.count > 5 ? ", … (\(xs.count) in all)" : "") }
        if !missing.isEmpty { parts.append("missing \(missing.count) tensor(s): \(list(missing))") }
        if !mismatched.isEmpty { parts.append("wrong shape: \(list(mismatched))") }
        if !duplicated.isEmpty { parts.append("given twice (old and new names, or two files): \(list(duplicated))") }
        if !unexpected.isEmpty { parts.append("\(unexpected.count) unexpected tensor(s): \(list(unexpected))") }
        return "\(source): weights do not match the \(model) config: " + parts.joined(separator: "; ")
    }
}

/// A model's parameters: one fp32 allocation, plus one bf16 allocation for the conv / linear weights in mixed
/// precision (then the fp32 one holds only norms, biases and embeddings).
public final class Weights: @unchecked Sendable {
    public let table: ParameterTable
    public let storage: Buffer
    public let bf16Storage: BF16Buffer

    /// Allocates the table's buffers, uninitialised until `load` or `randomize` (untouched pages cost no memory).
    public init(table: ParameterTable) {
        self.table = table
        storage = Buffer(uninitialized: table.fp32Count)
        bf16Storage = BF16Buffer(uninitialized: table.bf16Count)
    }

    /// Bytes the parameters take in memory.
    public var byteCount: Int { 4 * table.fp32Count + 2 * table.bf16Count }

    /// An fp32-stored parameter in place (nil for unknown keys and for bf16-stored ones: see `floats`).
    public subscript(_ key: String) -> UnsafeMutableBufferPointer<Float>? {
        guard let e = table.entry(key), !e.isBF16 else { return nil }
        return fp32(e)
    }

    /// An fp32-stored entry in place.
    public func fp32(_ e: ParameterEntry) -> UnsafeMutableBufferPointer<Float> {
        precondition(!e.isBF16, "\(e.key) is stored in bf16")
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
        if !e.isBF16 { return Array(fp32(e)) }
        return [Float](unsafeUninitializedCapacity: e.count) { buf, n in
            BF16.convert(bf16Storage.ptr + e.offset, to: buf.baseAddress!, count: e.count)
            n = e.count
        }
    }

    /// Every fp32-stored parameter with its key, in declaration order (what `make-model` writes).
    public var namedParameters: [(key: String, shape: [Int], values: UnsafeBufferPointer<Float>)] {
        table.entries.filter { !$0.isBF16 }.map { ($0.key, $0.shape, UnsafeBufferPointer(fp32($0))) }
    }

    /// Fills one parameter from a tensor of `file` (any float dtype). fp32-stored: converted to fp32. bf16-stored: a
    /// BF16 tensor's bits are copied as they are; any other dtype is read to fp32 (exact for F32/F16/BF16) in
    /// `scratch` and rounded to bf16 (nearest, ties to even: torch's `.to(torch.bfloat16)` of the fp32 tensor).
    private func read(_ e: ParameterEntry, _ name: String, from file: SafeTensorsFile, scratch: inout Buffer) throws {
        guard e.isBF16 else {
            try file.read(name, into: fp32(e))
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

    /// Fills every parameter from safetensors files (any float dtype, converted to the storage's precision). Each
    /// file key goes through `remap`; every declared key must then be present once with its exact shape (a 1x1 conv
    /// kernel (O, I, 1, 1) also fills a linear weight (O, I)), and no other key may be left. Each tensor's pages of
    /// the mapped file are dropped once read, so loading needs about the model's memory plus one tensor.
    public func load(files: [String], model: String, remap: KeyRemap = .identity) throws {
        var seen: [String: String] = [:]
        var unexpected: [String] = [], mismatched: [String] = [], duplicated: [String] = []
        var scratch = Buffer(uninitialized: 0)
        for path in files {
            let file = try SafeTensorsFile(path: path)
            for name in file.tensorNames {
                guard let key = remap.map(name) else { continue }
                guard let e = table.entry(key) else { unexpected.append(name); continue }
                guard let info = file.info(name), info.shape == e.shape || (info.count == e.count && squeezed(info.shape) == squeezed(e.shape)) else {
                    mismatched.append("\(name) is \(file.info(name)?.shape ?? []), expected \(e.shape)")
                    continue
                }
                if let first = seen[key] {
                    duplicated.append(first == name ? name : "\(first) and \(name)")
                    continue
                }
                try read(e, name, from: file, scratch: &scratch)
                file.evict(name)
                seen[key] = name
            }
        }
        let missing = table.entries.map(\.key).filter { seen[$0] == nil }
        if !missing.isEmpty || !unexpected.isEmpty || !mismatched.isEmpty || !duplicated.isEmpty {
            throw WeightLoadError(source: files.count == 1 ? files[0] : "\(files.count) files starting \(files.first ?? "")",
                                  model: model, missing: missing, unexpected: unexpected, mismatched: mismatched,
                                  duplicated: duplicated)
        }
    }

    /// Fills every parameter from `file` under `prefix` + key (parity fixtures hold a module's weights beside its
    /// inputs and outputs); every parameter must be there with its size.
    public func loadSubset(from file: SafeTensorsFile, prefix: String) throws {
        var missing: [String] = [], mismatched: [String] = []
        var scratch = Buffer(uninitialized: 0)
        for e in table.entries {
            guard let info = file.info(prefix + e.key) else { missing.append(prefix + e.key); continue }
            guard info.count == e.count else { mismatched.append("\(e.key) is \(info.shape), expected \(e.shape)"); continue }
            try read(e, prefix + e.key, from: file, scratch: &scratch)
        }
        if !missing.isEmpty || !mismatched.isEmpty {
            throw WeightLoadError(source: file.path, model: "module", missing: missing, unexpected: [], mismatched: mismatched,
                                  duplicated: [])
        }
    }

    /// Random weights for benchmarks and tests, the same for a seed whatever the precision: entry i draws from
    /// substream i; matrices N(0, 1/fan_in), norm scales 1 + 0.1·N(0, 1), everything else N(0, 0.02). bf16-stored
    /// weights are the rounding of the fp32 draws.
    public func randomize(seed: UInt64) {
        let rng = CounterRNG(seed: seed)
        var scratch = Buffer(uninitialized: 0)
        for (i, e) in table.entries.enumerated() {
            if e.isBF16 && scratch.count < e.count { scratch = Buffer(uninitialized: e.count) }
            let buf = e.isBF16 ? UnsafeMutableBufferPointer(start: scratch.ptr, count: e.count) : fp32(e)
            let s = rng.substream(UInt64(i))
            if e.kind == .matrix {
                s.fillNormal(buf, scale: 1 / Float(e.shape.dropFirst().reduce(1, *)).squareRoot())
            } else if e.kind == .vector && e.key.contains("norm") && e.key.hasSuffix(".weight") {
                for j in 0..<e.count { buf[j] = 1 + 0.1 * s.normal(UInt64(j)) }
            } else {
                s.fillNormal(buf, scale: 0.02)
            }
            if e.isBF16 { BF16.convert(scratch.ptr, to: bf16Storage.ptr + e.offset, count: e.count) }
        }
    }
}

/// 1x1 conv weights (O, I, 1, 1) and linear weights (O, I) are interchangeable (SD1 vs SD2 proj_in/out, old VAE
/// attention projections).
private func squeezed(_ s: [Int]) -> [Int] { s.filter { $0 != 1 } }
