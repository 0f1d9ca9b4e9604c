// Where the U-Net's numbers live. Base weights: one flat fp32 allocation, addressed by offsets from a table keyed by
// the diffusers state-dict names (so loading is a lookup). LoRA: parameters and gradients in two more flat buffers
// with one shared table, so an all-reduce or a checkpoint is one call over one buffer (llm.c style).
import IO
import Tensors

public struct ParameterEntry: Sendable, Equatable {
    public let key: String
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
}

/// Keys, shapes and offsets of a flat parameter buffer, in declaration order.
public final class ParameterTable: @unchecked Sendable {
    public private(set) var entries: [ParameterEntry] = []
    public private(set) var count = 0
    private var index: [String: Int] = [:]

    /// Declares a parameter and returns its offset in the flat buffer.
    @discardableResult
    public func add(_ key: String, _ shape: [Int]) -> Int {
        precondition(index[key] == nil, "parameter \(key) declared twice")
        let e = ParameterEntry(key: key, shape: shape, offset: count)
        index[key] = entries.count
        entries.append(e)
        count += e.count
        return e.offset
    }

    public func entry(_ key: String) -> ParameterEntry? { index[key].map { entries[$0] } }
}

public struct WeightLoadError: Error, CustomStringConvertible {
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

/// The frozen base weights of a model, fp32, one allocation.
public final class BaseWeights: @unchecked Sendable {
    public let table: ParameterTable
    public let storage: Buffer

    init(table: ParameterTable) {
        self.table = table
        self.storage = Buffer(uninitialized: table.count)
    }

    public subscript(_ key: String) -> UnsafeMutableBufferPointer<Float>? {
        table.entry(key).map { UnsafeMutableBufferPointer(start: storage.ptr + $0.offset, count: $0.count) }
    }

    /// Fills every parameter from safetensors files (any float dtype, converted to fp32); every expected key must be
    /// present with its exact shape, and no unknown key may be left over.
    func load(files: [String]) throws {
        var seen = Set<String>()
        var unexpected: [String] = [], mismatched: [String] = []
        for path in files {
            let file = try SafeTensorsFile(path: path)
            for name in file.tensorNames {
                guard let e = table.entry(name) else { unexpected.append(name); continue }
                guard let info = file.info(name), info.shape == e.shape || (info.shape.reduce(1, *) == e.count && squeezed(info.shape) == squeezed(e.shape)) else {
                    mismatched.append("\(name) is \(file.info(name)?.shape ?? []), expected \(e.shape)")
                    continue
                }
                try file.read(name, into: UnsafeMutableBufferPointer(start: storage.ptr + e.offset, count: e.count))
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
        for e in table.entries {
            guard let info = file.info(prefix + e.key) else { missing.append(prefix + e.key); continue }
            guard info.count == e.count else { mismatched.append("\(e.key) is \(info.shape), expected \(e.shape)"); continue }
            try file.read(prefix + e.key, into: UnsafeMutableBufferPointer(start: storage.ptr + e.offset, count: e.count))
        }
        if !missing.isEmpty || !mismatched.isEmpty {
            throw WeightLoadError(source: file.path, missing: missing, unexpected: [], mismatched: mismatched)
        }
    }

    /// Random weights for benchmarks and tests: N(0, 1/fan_in) for matrices and kernels, small values for the rest.
    func randomize(seed: UInt64) {
        let rng = CounterRNG(seed: seed)
        for (i, e) in table.entries.enumerated() {
            let buf = UnsafeMutableBufferPointer(start: storage.ptr + e.offset, count: e.count)
            let s = rng.substream(UInt64(i))
            if e.shape.count >= 2 {
                let fanIn = e.shape.dropFirst().reduce(1, *)
                s.fillNormal(buf, scale: 1 / Float(fanIn).squareRoot())
            } else if e.key.hasSuffix("norm.weight") || e.key.contains("norm") && e.key.hasSuffix(".weight") {
                for j in 0..<e.count { buf[j] = 1 + 0.1 * s.normal(UInt64(j)) }
            } else {
                s.fillNormal(buf, scale: 0.02)
            }
        }
    }
}

/// 1x1 conv weights (O, I, 1, 1) and linear weights (O, I) are interchangeable (SD1 vs SD2 proj_in/out).
private func squeezed(_ s: [Int]) -> [Int] { s.filter { $0 != 1 } }
