// The VAE's frozen weights: one fp32 allocation addressed by the diffusers state-dict keys the modules declare
// (`encoder.down_blocks.0.resnets.1.conv1.weight`), so loading is a lookup. Files of any float dtype (fp16, bf16)
// are converted to fp32 on read. Checkpoints saved before diffusers 0.14 name the mid-block attention projections
// `query` / `key` / `value` / `proj_attn`; they are renamed to `to_q` / `to_k` / `to_v` / `to_out.0` on load.
// Ref: diffusers models/modeling_utils.py (ModelMixin._fix_state_dict_keys_on_load).
import IO
import Tensors

/// Errors a user can cause with a VAE folder or VAE inputs; each names the file, key or tensor.
public enum VAEError: Error, UserInputError, CustomStringConvertible, Equatable {
    /// A config value this implementation does not support (or that is invalid), with the config file.
    case unsupportedConfig(path: String, key: String, detail: String)
    case weights(source: String, missing: [String], unexpected: [String], mismatched: [String], duplicated: [String])
    case badInput(String)
    case badTiling(String)

    public var description: String {
        switch self {
        case .unsupportedConfig(let path, let key, let detail):
            return "\(path): unsupported AutoencoderKL config: '\(key)' \(detail)"
        case .weights(let source, let missing, let unexpected, let mismatched, let duplicated):
            func list(_ xs: [String]) -> String {
                xs.prefix(5).joined(separator: ", ") + (xs.count > 5 ? ", … (\(xs.count) in all)" : "")
            }
            var parts: [String] = []
            if !missing.isEmpty { parts.append("missing \(missing.count) tensor(s): \(list(missing))") }
            if !mismatched.isEmpty { parts.append("wrong shape: \(list(mismatched))") }
            if !duplicated.isEmpty { parts.append("given twice (old and new attention names, or two files): \(list(duplicated))") }
            if !unexpected.isEmpty { parts.append("\(unexpected.count) unexpected tensor(s): \(list(unexpected))") }
            return "\(source): weights do not match the AutoencoderKL config: " + parts.joined(separator: "; ")
        case .badInput(let m): return m
        case .badTiling(let m): return "VAE tiling: \(m)"
        }
    }
}

/// Keys, shapes and offsets of the VAE's parameters in one flat fp32 buffer (allocated by `allocate()`).
final class VAEWeights: @unchecked Sendable {
    struct Entry { let key: String; let shape: [Int]; let offset: Int; var count: Int { shape.reduce(1, *) } }

    private(set) var entries: [Entry] = []
    private var index: [String: Int] = [:]
    private(set) var count = 0
    /// Paths of the attention blocks whose old key names are renamed on load (diffusers' `_from_deprecated_attn_block`).
    private(set) var deprecatedAttentionPaths: [String] = []
    private var storage: Buffer?

    /// Declares a parameter; returns its offset (resolved to a pointer with `pointer(_:)` after `allocate()`).
    func declare(_ key: String, _ shape: [Int]) -> Int {
        precondition(index[key] == nil, "VAE parameter \(key) declared twice")
        let e = Entry(key: key, shape: shape, offset: count)
        index[key] = entries.count
        entries.append(e)
        count += e.count
        return e.offset
    }

    func declareDeprecatedAttention(_ path: String) { deprecatedAttentionPaths.append(path) }

    func allocate() { storage = Buffer(zeros: count) }

    var base: UnsafeMutablePointer<Float> {
        guard let storage else { preconditionFailure("VAEWeights used before allocate()") }
        return storage.ptr
    }

    func entry(_ key: String) -> Entry? { index[key].map { entries[$0] } }

    subscript(_ key: String) -> UnsafeMutableBufferPointer<Float>? {
        entry(key).map { UnsafeMutableBufferPointer(start: base + $0.offset, count: $0.count) }
    }

    /// The current name of a checkpoint key: `<attention path>.query.weight` → `<attention path>.to_q.weight` etc.
    /// for the attention blocks diffusers converts; every other key unchanged.
    func canonicalKey(_ name: String) -> String {
        for path in deprecatedAttentionPaths where name.hasPrefix(path + ".") {
            let rest = name.dropFirst(path.count + 1)
            for (old, new) in [("query.", "to_q."), ("key.", "to_k."), ("value.", "to_v."), ("proj_attn.", "to_out.0.")]
            where rest.hasPrefix(old) {
                return path + "." + new + rest.dropFirst(old.count)
            }
        }
        return name
    }

    /// Fills every parameter from safetensors files; every declared key must be present once with its shape
    /// (a 1x1 conv kernel (O, I, 1, 1) also fills a linear weight (O, I), as old checkpoints store attention
    /// projections). Keys under `skipPrefixes` (a part of the VAE that was not built) are ignored; any other
    /// unknown key is an error.
    func load(files: [String], skipPrefixes: [String] = []) throws {
        var seen: [String: String] = [:]
        var unexpected: [String] = [], mismatched: [String] = [], duplicated: [String] = []
        for path in files {
            let file = try SafeTensorsFile(path: path)
            for name in file.tensorNames {
                let key = canonicalKey(name)
                guard let e = entry(key) else {
                    if !skipPrefixes.contains(where: { key.hasPrefix($0) }) { unexpected.append(name) }
                    continue
                }
                guard let info = file.info(name),
                      info.shape == e.shape || (info.count == e.count && squeezed(info.shape) == squeezed(e.shape)) else {
                    mismatched.append("\(name) is \(file.info(name)?.shape ?? []), expected \(e.shape)")
                    continue
                }
                if let first = seen[key] {
                    duplicated.append(first == name ? name : "\(first) and \(name)")
                    continue
                }
                try file.read(name, into: UnsafeMutableBufferPointer(start: base + e.offset, count: e.count))
                seen[key] = name
            }
        }
        let missing = entries.map(\.key).filter { seen[$0] == nil }
        if !missing.isEmpty || !unexpected.isEmpty || !mismatched.isEmpty || !duplicated.isEmpty {
            let source = files.count == 1 ? files[0] : "\(files.count) files starting \(files.first ?? "")"
            throw VAEError.weights(source: source, missing: missing, unexpected: unexpected, mismatched: mismatched,
                                   duplicated: duplicated)
        }
    }

    /// Random weights for tests and benchmarks: N(0, 1/fan_in) kernels, GroupNorm weights near 1, small biases.
    func randomize(seed: UInt64) {
        let rng = CounterRNG(seed: seed)
        for (i, e) in entries.enumerated() {
            let buf = UnsafeMutableBufferPointer(start: base + e.offset, count: e.count)
            let s = rng.substream(UInt64(i))
            if e.shape.count >= 2 {
                s.fillNormal(buf, scale: 1 / Float(e.shape.dropFirst().reduce(1, *)).squareRoot())
            } else if e.key.hasSuffix(".weight") && (e.key.contains("norm")) {
                for j in 0..<e.count { buf[j] = 1 + 0.1 * s.normal(UInt64(j)) }
            } else {
                s.fillNormal(buf, scale: 0.02)
            }
        }
    }
}

/// 1x1 conv kernels (O, I, 1, 1) and linear weights (O, I) hold the same numbers.
private func squeezed(_ s: [Int]) -> [Int] { s.filter { $0 != 1 } }
