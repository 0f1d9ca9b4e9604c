// `hgdpo lora convert`: rewrites a LoRA from any format hgdpo reads (peft, kohya, old attention-processor files) in
// the format diffusers' trainers write, with alpha recorded.
import IO
import UNet

extension Commands {
    static let loraConvert = CommandSpec(
        ["lora", "convert"],
        summary: "Convert a U-Net LoRA (peft, kohya or diffusers format) to diffusers' format",
        details: "Example: hgdpo lora convert my_kohya_lora.safetensors pytorch_lora_weights.safetensors",
        arguments: [ArgumentSpec("IN", "the LoRA file to read"), ArgumentSpec("OUT", "the file to write (atomically)")],
        options: []
    ) { args in
        let w = try LoRAFile.read(args.positionals[0])
        try LoRAFile.write(w, to: args.positionals[1])
        print(JSONValue.object([("format_in", .string(w.format.rawValue)), ("modules", .int(w.modules.count)),
                                ("rank", .int(w.rank)), ("alpha", .double(Double(w.alpha))), ("out", .string(args.positionals[1]))]).serialized())
    }
}
