// A diffusers pipeline folder (what `StableDiffusionPipeline.save_pretrained` writes) or one component folder of it:
//
//   model_index.json
//   unet/config.json          unet/diffusion_pytorch_model[.fp16].safetensors   (or sharded: *.safetensors.index.json)
//   vae/config.json           vae/diffusion_pytorch_model[.fp16].safetensors
//   text_encoder/config.json  text_encoder/model[.fp16].safetensors
//   tokenizer/vocab.json  tokenizer/merges.txt  tokenizer/tokenizer_config.json
//   scheduler/scheduler_config.json
//
// Weight variants follow diffusers' naming: `diffusion_pytorch_model.fp16.safetensors` is variant "fp16".
// Ref: diffusers pipelines/pipeline_utils.py (DiffusionPipeline.from_pretrained), utils/constants.py.
import Foundation

public enum ModelFolderError: Error, UserInputError, CustomStringConvertible, Equatable {
    case notAFolder(String)
    case missingFile(String, what: String)
    case badJSON(String, detail: String)
    case badConfig(String, key: String, detail: String)
    case noWeights(folder: String, variant: String?, found: [String])
    case unsupportedWeights(String)

    public var description: String {
        switch self {
        case .notAFolder(let p):
            return "\(p): not a diffusers model folder (no model_index.json, config.json or scheduler_config.json)"
        case .missingFile(let p, let what): return "\(p): missing (\(what))"
        case .badJSON(let p, let d): return "\(p): not valid JSON: \(d)"
        case .badConfig(let p, let k, let d): return "\(p): key '\(k)': \(d)"
        case .noWeights(let f, let v, let found):
            return "\(f): no safetensors weights" + (v.map { " for variant '\($0)'" } ?? "")
                + (found.isEmpty ? "" : "; found: \(found.joined(separator: ", "))")
        case .unsupportedWeights(let p):
            return "\(p): PyTorch pickle weights are not read (unsafe and slow); convert the model to safetensors "
                + "(diffusers: save_pretrained(..., safe_serialization=True))"
        }
    }
}

/// Whether `data` is UTF-8 text. Foundation's JSON5 reader (`allowsJSON5`, for Python's -Infinity / NaN) traps with
/// a fatal error instead of throwing on some invalid UTF-8 (0xFF where a key should start; found by Tests/FuzzTests),
/// so every JSON5 decode checks this first.
public func isUTF8(_ data: Data) -> Bool { String(data: data, encoding: .utf8) != nil }

/// Reads a JSON config file (or a flat YAML one: `.yaml`/`.yml`, see FlatYAML) into a Codable struct; errors name
/// the file and the key path.
public func decodeConfig<T: Decodable>(_ type: T.Type, from path: String) throws -> T {
    guard var data = FileManager.default.contents(atPath: path) else {
        throw ModelFolderError.missingFile(path, what: "config file")
    }
    if path.hasSuffix(".yaml") || path.hasSuffix(".yml") {
        guard let text = String(data: data, encoding: .utf8) else {
            throw ModelFolderError.badJSON(path, detail: "not UTF-8 text")
        }
        data = Data(try FlatYAML.json(from: text, path: path).utf8)
    }
    // JSON5 numbers: diffusers writes configs with Python's json, which gives -Infinity, Infinity and NaN for
    // non-finite floats (e.g. DPMSolverMultistepScheduler's lambda_min_clipped).
    guard isUTF8(data) else { throw ModelFolderError.badJSON(path, detail: "not UTF-8 text") }
    let decoder = JSONDecoder()
    decoder.allowsJSON5 = true
    do {
        return try decoder.decode(T.self, from: data)
    } catch let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx) {
        throw ModelFolderError.badConfig(path, key: ctx.codingPath.map(\.stringValue).joined(separator: "."),
                                         detail: ctx.debugDescription)
    } catch let DecodingError.keyNotFound(key, ctx) {
        throw ModelFolderError.badConfig(path, key: (ctx.codingPath + [key]).map(\.stringValue).joined(separator: "."),
                                         detail: "required key is missing")
    } catch let DecodingError.dataCorrupted(ctx) {
        throw ModelFolderError.badJSON(path, detail: (ctx.underlyingError as NSError?)?.localizedDescription ?? ctx.debugDescription)
    }
}

/// One component folder (`unet/`, `vae/`, …): its config file and weight files.
public struct ComponentFolder: Sendable, Equatable {
    public let path: String
    public let name: String

    public init(path: String) {
        self.path = path
        self.name = (path as NSString).lastPathComponent
    }

    public var configPath: String {
        let scheduler = (path as NSString).appendingPathComponent("scheduler_config.json")
        return FileManager.default.fileExists(atPath: scheduler) ? scheduler : (path as NSString).appendingPathComponent("config.json")
    }

    public func config<T: Decodable>(_ type: T.Type) throws -> T { try decodeConfig(type, from: configPath) }

    /// `_class_name` of the config, e.g. "UNet2DConditionModel" (transformers configs: `architectures[0]`).
    public func className() throws -> String? {
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw ModelFolderError.missingFile(configPath, what: "config file")
        }
        struct Names: Decodable { let _class_name: String?; let architectures: [String]? }
        let decoder = JSONDecoder()
        decoder.allowsJSON5 = true      // -Infinity / NaN as Python's json writes them (see decodeConfig)
        guard isUTF8(data), let names = try? decoder.decode(Names.self, from: data) else {
            throw ModelFolderError.badJSON(configPath, detail: "expected a JSON object")
        }
        return names._class_name ?? names.architectures?.first
    }

    /// The safetensors files holding this component's weights, for a variant (`"fp16"`) or the plain files (nil).
    /// With no variant asked and no plain file present, a single variant present is used (diffusers would refuse;
    /// a CPU trainer converts on load anyway). Sharded checkpoints are resolved through their index's weight_map.
    public func weightFiles(variant: String? = nil) throws -> [String] {
        let fm = FileManager.default
        guard let entries = try? fm.contentsOfDirectory(atPath: path) else { throw ModelFolderError.notAFolder(path) }
        let safetensors = entries.filter { $0.hasSuffix(".safetensors") }.sorted()
        func stem(_ file: String) -> (base: String, variant: String?) {
            // name[.variant][-0000k-of-0000n].safetensors
            var s = String(file.dropLast(".safetensors".count))
            if let r = s.range(of: #"-\d{5}-of-\d{5}$"#, options: .regularExpression) { s.removeSubrange(r) }
            let parts = s.split(separator: ".", omittingEmptySubsequences: false)
            return parts.count >= 2 ? (parts.dropLast().joined(separator: "."), String(parts.last!)) : (s, nil)
        }
        let known = ["diffusion_pytorch_model", "model"]
        let candidates = safetensors.filter { known.contains(stem($0).base) }
        var chosen = candidates.filter { stem($0).variant == variant }
        if chosen.isEmpty, variant == nil {
            let variants = Set(candidates.compactMap { stem($0).variant })
            if variants.count == 1 { chosen = candidates }
        }
        if chosen.isEmpty {
            if let bin = entries.first(where: { $0.hasSuffix(".bin") || $0.hasSuffix(".ckpt") || $0.hasSuffix(".pt") }) {
                throw ModelFolderError.unsupportedWeights((path as NSString).appendingPathComponent(bin))
            }
            throw ModelFolderError.noWeights(folder: path, variant: variant, found: safetensors)
        }
        // A sharded checkpoint lists its shards in an index; every listed shard must exist.
        let indexFiles = entries.filter { $0.hasSuffix(".safetensors.index.json") && known.contains(stem(String($0.dropLast(".index.json".count))).base) && stem(String($0.dropLast(".index.json".count))).variant == stem(chosen[0]).variant }
        if let indexFile = indexFiles.first {
            let indexPath = (path as NSString).appendingPathComponent(indexFile)
            guard let data = fm.contents(atPath: indexPath),
                  let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let map = obj["weight_map"] as? [String: String] else {
                throw ModelFolderError.badJSON(indexPath, detail: "expected an object with a \"weight_map\" of tensor name → file")
            }
            let shards = Set(map.values).sorted()
            for s in shards where !entries.contains(s) {
                throw ModelFolderError.missingFile((path as NSString).appendingPathComponent(s), what: "shard listed in \(indexFile)")
            }
            return shards.map { (path as NSString).appendingPathComponent($0) }
        }
        return chosen.map { (path as NSString).appendingPathComponent($0) }
    }
}

/// A pipeline root (with model_index.json) or a single component folder given directly.
public struct ModelFolder: Sendable {
    public let path: String
    /// Components listed in model_index.json: name → (library, class), e.g. "unet" → ("diffusers", "UNet2DConditionModel").
    public let components: [String: (library: String, className: String)]
    public var isPipeline: Bool { !components.isEmpty }

    public init(path: String) throws {
        self.path = path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelFolderError.missingFile(path, what: "model folder")
        }
        guard isDir.boolValue else { throw ModelFolderError.notAFolder(path) }
        let indexPath = (path as NSString).appendingPathComponent("model_index.json")
        if let data = FileManager.default.contents(atPath: indexPath) {
            guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw ModelFolderError.badJSON(indexPath, detail: "expected a JSON object")
            }
            var comps: [String: (String, String)] = [:]
            for (k, v) in obj where !k.hasPrefix("_") {
                if let pair = v as? [Any], pair.count == 2, let lib = pair[0] as? String, let cls = pair[1] as? String {
                    comps[k] = (lib, cls)
                }
            }
            components = comps
        } else {
            let fm = FileManager.default
            guard fm.fileExists(atPath: (path as NSString).appendingPathComponent("config.json"))
                    || fm.fileExists(atPath: (path as NSString).appendingPathComponent("scheduler_config.json")) else {
                throw ModelFolderError.notAFolder(path)
            }
            components = [:]
        }
    }

    /// A component of a pipeline (`"unet"`), or, for a component folder given directly, the folder itself when its
    /// config's class matches `expectedClass`.
    public func component(_ name: String, expectedClass: String? = nil) throws -> ComponentFolder {
        if isPipeline {
            let sub = (path as NSString).appendingPathComponent(name)
            guard components[name] != nil || FileManager.default.fileExists(atPath: sub) else {
                throw ModelFolderError.missingFile(sub, what: "component '\(name)' of the pipeline; model_index.json lists "
                                                   + components.keys.sorted().joined(separator: ", "))
            }
            let folder = ComponentFolder(path: sub)
            guard FileManager.default.fileExists(atPath: folder.configPath) else {
                throw ModelFolderError.missingFile(folder.configPath, what: "config of component '\(name)'")
            }
            return folder
        }
        let folder = ComponentFolder(path: path)
        if let expectedClass, let cls = try folder.className(), cls != expectedClass {
            throw ModelFolderError.badConfig(folder.configPath, key: "_class_name",
                                             detail: "is \(cls), expected \(expectedClass) (or give the pipeline root)")
        }
        return folder
    }

    public func unet() throws -> ComponentFolder { try component("unet", expectedClass: "UNet2DConditionModel") }
    public func vae() throws -> ComponentFolder { try component("vae", expectedClass: "AutoencoderKL") }
    public func textEncoder() throws -> ComponentFolder { try component("text_encoder", expectedClass: "CLIPTextModel") }
    public func scheduler() throws -> ComponentFolder { try component("scheduler") }

    /// The tokenizer files, each checked to exist.
    public func tokenizerFiles() throws -> (vocab: String, merges: String, config: String?) {
        let dir = isPipeline ? (path as NSString).appendingPathComponent("tokenizer") : path
        let vocab = (dir as NSString).appendingPathComponent("vocab.json")
        let merges = (dir as NSString).appendingPathComponent("merges.txt")
        let config = (dir as NSString).appendingPathComponent("tokenizer_config.json")
        for (f, what) in [(vocab, "tokenizer vocabulary"), (merges, "tokenizer BPE merges")]
        where !FileManager.default.fileExists(atPath: f) { throw ModelFolderError.missingFile(f, what: what) }
        return (vocab, merges, FileManager.default.fileExists(atPath: config) ? config : nil)
    }
}
