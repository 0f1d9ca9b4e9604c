// `hgdpo inspect FILE.safetensors`: the tensors (name, dtype, shape) and metadata of a safetensors file, as JSON.
import IO

extension Commands {
    static let inspect = CommandSpec(
        ["inspect"],
        summary: "Print the tensors (name, dtype, shape) and metadata of a safetensors file as JSON",
        details: "Output: {\"tensors\":[{\"name\":…,\"dtype\":…,\"shape\":[…]}],\"metadata\":{…}}, tensors sorted by name.\n"
            + "Example: hgdpo inspect unet/diffusion_pytorch_model.safetensors",
        arguments: [ArgumentSpec("FILE.safetensors", "the file to read (only its header is read)")],
        options: [.flag("--pretty", "Indent the JSON")]
    ) { args in
        let file = try SafeTensorsFile(path: args.positionals[0])
        print(inspectJSON(file).render(pretty: args.flag("--pretty")))
    }

    static func inspectJSON(_ file: SafeTensorsFile) -> JSONValue {
        let tensors: [JSONValue] = file.tensorNames.sorted().compactMap { name in
            guard let info = file.info(name) else { return nil }
            return .object([("name", .string(name)), ("dtype", .string(info.dtype.rawValue)),
                            ("shape", .array(info.shape.map { .int($0) }))])
        }
        let metadata = JSONValue.object(file.metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })
        return .object([("tensors", .array(tensors)), ("metadata", metadata)])
    }
}

