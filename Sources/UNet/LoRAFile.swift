// LoRA files: write the format diffusers' own LoRA trainers write, read that, peft's and kohya's.
//
//   diffusers  unet.<module>.lora.down.weight (A, r×in), unet.<module>.lora.up.weight (B, out×r)
//              (older attention-processor files: <module without .to_x>.processor.to_q_lora.down.weight …)
//   peft       [base_model.model.|unet.]<module>.lora_A.weight / .lora_B.weight
//   kohya      lora_unet_<module with '.' → '_'>.lora_down.weight / .lora_up.weight / .alpha (scalar)
//
// alpha: diffusers and peft files carry none in their tensors; hgdpo records it in the safetensors metadata
// (`lora_alpha`, `r`, and diffusers' `lora_adapter_metadata` JSON), and a file without it means alpha = r, as in
// diffusers. Ref: diffusers loaders/lora_pipeline.py, loaders/lora_conversion_utils.py, utils/state_dict_utils.py.
import Foundation
import IO
import NN
import Tensors

public enum LoRAFormat: String, Sendable { case diffusers, peft, kohya, attnProcs = "attn-procs" }

public struct LoRAFileError: Error, UserInputError, CustomStringConvertible {
    public let path: String
    public let message: String
    public var description: String { "\(path): \(message)" }
}

/// A LoRA as read from a file: per module (diffusers path), A (r, in) and B (out, r), with B already multiplied by
/// any per-module alpha that differs from the file's common alpha.
public struct LoRAWeights: Sendable {
    public var format: LoRAFormat
    public var rank: Int
    public var alpha: Float
    public var modules: [String: (a: [Float], b: [Float], inFeatures: Int, outFeatures: Int)]
    /// The file's own key names per module (down = A, up = B), so outputs can use the names the user gave.
    public var keys: [String: (down: String, up: String)] = [:]
}

public enum LoRAFile {
    // MARK: - Reading

    public static func read(_ path: String) throws -> LoRAWeights {
        let file = try SafeTensorsFile(path: path)
        func fail(_ m: String) -> LoRAFileError { LoRAFileError(path: path, message: m) }
        var down: [String: String] = [:], up: [String: String] = [:], alphas: [String: String] = [:]
        var format: LoRAFormat?
        var unknown: [String] = []
        for name in file.tensorNames {
            guard let (module, role, fmt) = parseKey(name) else { unknown.append(name); continue }
            if let f = format, f != fmt {
                throw fail("mixes LoRA key formats (\(f.rawValue) and \(fmt.rawValue)), e.g. \(name)")
            }
            format = fmt
            switch role {
            case "down": down[module] = name
            case "up": up[module] = name
            default: alphas[module] = name
            }
        }
        if !unknown.isEmpty {
            throw fail("\(unknown.count) key(s) are not U-Net LoRA weights in a known format (diffusers, peft, kohya): "
                       + unknown.prefix(5).joined(separator: ", "))
        }
        guard let format, !down.isEmpty else { throw fail("holds no LoRA weights") }
        let unpaired = Set(down.keys).symmetricDifference(up.keys).sorted()
        if !unpaired.isEmpty { throw fail("modules with only one of the two LoRA matrices: " + unpaired.prefix(5).joined(separator: ", ")) }
        // Rank from the A matrices; all must agree.
        var rank: Int?
        var mods: [String: (a: [Float], b: [Float], inFeatures: Int, outFeatures: Int)] = [:]
        var moduleAlpha: [String: Float] = [:]
        for (m, dn) in down {
            let ai = file.info(dn)!, bi = file.info(up[m]!)!
            let sa = ai.shape.filter { $0 != 1 || ai.shape.count <= 2 }, sb = bi.shape.filter { $0 != 1 || bi.shape.count <= 2 }
            guard sa.count == 2, sb.count == 2, sb[1] == sa[0] else {
                throw fail("\(m): LoRA shapes do not fit: down \(ai.shape), up \(bi.shape)")
            }
            if let r = rank, r != sa[0] { throw fail("\(m): rank \(sa[0]) differs from the other modules' rank \(r)") }
            rank = sa[0]
            mods[m] = (try file.floats(dn), try file.floats(up[m]!), sa[1], sb[0])
            if let an = alphas[m] {
                let v = try file.floats(an)
                guard v.count == 1 else { throw fail("\(an): alpha must be a scalar, has \(v.count) values") }
                moduleAlpha[m] = v[0]
            }
        }
        let r = rank!
        // The common alpha: from kohya's per-module tensors, else the metadata, else r.
        var alpha = Float(r)
        if let meta = file.metadata["lora_alpha"].flatMap(Float.init) { alpha = meta }
        else if let json = file.metadata["lora_adapter_metadata"], let data = json.data(using: .utf8),
                let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
            // diffusers ≥ 0.33 writes the peft LoraConfig with keys prefixed by the component ("unet.lora_alpha").
            let value = obj["unet.lora_alpha"] ?? obj["lora_alpha"] ?? (obj["unet"] as? [String: Any])?["lora_alpha"]
            if let a = (value as? NSNumber)?.floatValue { alpha = a }
        }
        if !moduleAlpha.isEmpty {
            let values = Set(moduleAlpha.values)
            alpha = values.count == 1 ? values.first! : Float(r)
            for (m, a) in moduleAlpha where a != alpha {   // fold a differing alpha into B
                let f = a / alpha
                mods[m]!.b = mods[m]!.b.map { $0 * f }
            }
        }
        var result = LoRAWeights(format: format, rank: r, alpha: alpha, modules: mods)
        for (m, dn) in down { result.keys[m] = (dn, up[m]!) }
        return result
    }

    /// (module, "down"|"up"|"alpha", format) for a LoRA key, or nil if it is not one.
    static func parseKey(_ key: String) -> (String, String, LoRAFormat)? {
        var k = key
        if k.hasPrefix("lora_unet_") {
            let body = String(k.dropFirst("lora_unet_".count))
            for (suffix, role) in [(".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha")] where body.hasSuffix(suffix) {
                return (kohyaModule(String(body.dropLast(suffix.count))), role, .kohya)
            }
            return nil
        }
        for prefix in ["base_model.model.", "unet."] where k.hasPrefix(prefix) { k.removeFirst(prefix.count) }
        for (suffix, role, fmt) in [(".lora.down.weight", "down", LoRAFormat.diffusers), (".lora.up.weight", "up", .diffusers),
                                    (".lora_A.weight", "down", .peft), (".lora_B.weight", "up", .peft),
                                    (".lora_A.default.weight", "down", .peft), (".lora_B.default.weight", "up", .peft),
                                    (".down.weight", "down", .attnProcs), (".up.weight", "up", .attnProcs)]
        where k.hasSuffix(suffix) {
            let module = String(k.dropLast(suffix.count))
            // Old attention-processor naming: …attn1.processor.to_q_lora.down.weight (found by Tests/FuzzTests:
            // these keys end in "_lora.down.weight", which the diffusers suffix ".lora.down.weight" does not match).
            if let r = module.range(of: ".processor.") {
                let proj = module[r.upperBound...]
                let map = ["to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"]
                guard let p = map[String(proj)] else { return nil }
                return (module[..<r.lowerBound] + "." + p, role, .attnProcs)
            }
            guard fmt != .attnProcs else { return nil }
            return (module, role, fmt)
        }
        return nil
    }

    /// kohya flattens the module path with underscores; diffusers' path words are known, so this is reversible:
    /// words of two parts (down_blocks, to_q, …) are re-joined, every other part is its own path component.
    static func kohyaModule(_ flat: String) -> String {
        let twoPart: Set<String> = ["down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v",
                                    "to_out", "proj_in", "proj_out", "time_emb_proj", "conv_shortcut"]
        let parts = flat.split(separator: "_", omittingEmptySubsequences: false).map(String.init)
        var words: [String] = []
        var i = 0
        while i < parts.count {
            if i + 1 < parts.count, twoPart.contains(parts[i] + "_" + parts[i + 1]) {
                words.append(parts[i] + "_" + parts[i + 1]); i += 2
            } else {
                words.append(parts[i]); i += 1
            }
        }
        return words.joined(separator: ".")
    }

    // MARK: - Writing

    /// Writes the adapters as diffusers' LoRA trainers do (`pytorch_lora_weights.safetensors`), atomically, with alpha
    /// and rank in the metadata so the file round-trips.
    public static func write(_ lora: LoRAAdapters, to path: String, extraMetadata: [String: String] = [:]) throws {
        var modules: [String: (a: [Float], b: [Float], inFeatures: Int, outFeatures: Int)] = [:]
        for t in lora.targets {
            modules[t.module] = (Array(UnsafeBufferPointer(start: lora.a(t), count: lora.rank * t.inFeatures)),
                                 Array(UnsafeBufferPointer(start: lora.b(t), count: t.outFeatures * lora.rank)),
                                 t.inFeatures, t.outFeatures)
        }
        try write(LoRAWeights(format: .diffusers, rank: lora.rank, alpha: lora.alpha, modules: modules), to: path,
                  extraMetadata: extraMetadata)
    }

    /// Writes LoRA weights in diffusers' format (any source format converts through this).
    public static func write(_ w: LoRAWeights, to path: String, extraMetadata: [String: String] = [:]) throws {
        var entries: [SafeTensorsEntry] = []
        for m in w.modules.keys.sorted() {
            let v = w.modules[m]!
            entries.append(SafeTensorsEntry(name: "unet.\(m).lora.down.weight", shape: [w.rank, v.inFeatures], floats: v.a))
            entries.append(SafeTensorsEntry(name: "unet.\(m).lora.up.weight", shape: [v.outFeatures, w.rank], floats: v.b))
        }
        let alphaText = w.alpha == w.alpha.rounded() ? String(Int(w.alpha)) : String(w.alpha)
        let targets = Set(w.modules.keys.map { $0.hasSuffix("to_out.0") ? "to_out.0" : String($0.split(separator: ".").last!) }).sorted()
        // diffusers' own metadata entry (a peft LoraConfig, keys prefixed with the component), so
        // `load_lora_weights` rebuilds the adapter with this alpha.
        let targetList = targets.map { "\"\($0)\"" }.joined(separator: ", ")
        let adapterMeta = #"{"unet.r": \#(w.rank), "unet.lora_alpha": \#(alphaText), "unet.init_lora_weights": "gaussian", "#
            + #""unet.peft_type": "LORA", "unet.target_modules": [\#(targetList)]}"#
        var metadata = ["format": "pt", "lora_alpha": alphaText, "r": String(w.rank), "lora_adapter_metadata": adapterMeta,
                        "written_by": "hgdpo"]
        for (k, v) in extraMetadata { metadata[k] = v }
        try SafeTensors.write(entries, metadata: metadata, to: path)
    }
}

extension LoRAAdapters {
    /// Copies a LoRA read from a file into these adapters. Unknown modules and shape mismatches are errors listing the
    /// first offenders; modules the file does not cover get zero B (no effect) and are returned.
    @discardableResult
    public func assign(_ w: LoRAWeights, source: String) throws -> [String] {
        guard w.rank == rank else {
            throw LoRAFileError(path: source, message: "has rank \(w.rank), the model's adapters rank \(rank)")
        }
        var unknown: [String] = [], mismatched: [String] = []
        for (m, v) in w.modules {
            guard let t = target(m) else { unknown.append(m); continue }
            if v.inFeatures != t.inFeatures || v.outFeatures != t.outFeatures {
                mismatched.append("\(m): \(v.outFeatures)x\(v.inFeatures), model has \(t.outFeatures)x\(t.inFeatures)")
            }
        }
        if !unknown.isEmpty || !mismatched.isEmpty {
            var parts: [String] = []
            if !unknown.isEmpty { parts.append("\(unknown.count) module(s) not in this U-Net: " + unknown.sorted().prefix(5).joined(separator: ", ")) }
            if !mismatched.isEmpty { parts.append("shape mismatches: " + mismatched.sorted().prefix(5).joined(separator: "; ")) }
            throw LoRAFileError(path: source, message: parts.joined(separator: "; "))
        }
        // The file's alpha may differ from ours: fold the ratio into B.
        let ratio = (w.alpha / Float(w.rank)) / (alpha / Float(rank))
        params.zero()
        var missing: [String] = []
        for t in targets {
            guard let v = w.modules[t.module] else { missing.append(t.module); continue }
            v.a.withUnsafeBufferPointer { a(t).update(from: $0.baseAddress!, count: v.a.count) }
            for i in 0..<v.b.count { b(t)[i] = v.b[i] * ratio }
        }
        return missing
    }
}
