// `hgdpo probe unet`: one U-Net forward on given inputs, for parity checks against diffusers and for users debugging
// a model or a LoRA.
import IO
import NN
import Tensors
import UNet

extension Commands {
    static let probeUNet = CommandSpec(
        ["probe", "unet"],
        summary: "Run the U-Net once on inputs from a safetensors file and write its output",
        details: """
            IN holds `sample` [B,C,H,W], `timestep` [B] (float or int) and `encoder_hidden_states` [B,S,D];
            OUT gets `sample` [B,C,H,W] float32.
            Example: hgdpo probe unet --model sd15 --lora run/step-000100/pytorch_lora_weights.safetensors --lora-scale 0.5 \\
                       --input in.safetensors --out out.safetensors
            """,
        options: [
            .value("--model", "DIR", "Pipeline root (its unet/ is used) or a U-Net folder", required: true),
            .value("--variant", "NAME", "Weight variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)"),
            .value("--lora", "FILE", "LoRA weights (diffusers, peft or kohya format)"),
            .value("--lora-scale", "S", "LoRA scale", default: "1.0"),
            .value("--input", "IN", "Input tensors (safetensors)", required: true),
            .value("--out", "OUT", "Output file (safetensors, written atomically)", required: true),
            .value("--mixed-precision", "MODE", "no = fp32; bf16 = conv / linear weights in bf16, fp32 sums (see `hgdpo train`)",
                   default: "no", choices: ["no", "bf16"]),
            .value("--threads", "N", "Compute threads (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        let precision = MixedPrecision(rawValue: args.string("--mixed-precision")!)!
        let folder = try ModelFolder(path: try args.requiredString("--model")).unet()
        let inputPath = try args.requiredString("--input")
        let input = try SafeTensorsFile(path: inputPath)
        func tensor(_ key: String, rank: Int) throws -> (values: [Float], shape: [Int]) {
            guard let info = input.info(key) else {
                throw CLIError.invalid("\(inputPath): missing tensor '\(key)' (has: \(input.tensorNames.sorted().joined(separator: ", ")))")
            }
            guard info.shape.count == rank else {
                throw CLIError.invalid("\(inputPath): '\(key)' has shape \(info.shape), expected \(rank) dimensions")
            }
            return (try input.floats(key), info.shape)
        }
        let sample = try tensor("sample", rank: 4), t = try tensor("timestep", rank: 1), ctx = try tensor("encoder_hidden_states", rank: 3)
        let b = sample.shape[0]
        guard t.shape[0] == b, ctx.shape[0] == b else {
            throw CLIError.invalid("\(inputPath): batch sizes differ: sample \(b), timestep \(t.shape[0]), encoder_hidden_states \(ctx.shape[0])")
        }
        var loraWeights: LoRAWeights?
        var loraSource = ""
        if let path = args.string("--lora") { loraWeights = try LoRAFile.read(path); loraSource = path }
        let model = try UNetModel.load(folder: folder, variant: args.string("--variant"),
                                       lora: loraWeights.map { ($0.rank, $0.alpha) }, precision: precision)
        guard sample.shape[1] == model.spec.inChannels else {
            throw CLIError.invalid("\(inputPath): sample has \(sample.shape[1]) channels, the U-Net takes \(model.spec.inChannels)")
        }
        guard ctx.shape[2] == model.spec.crossAttentionDim else {
            throw CLIError.invalid("\(inputPath): encoder_hidden_states width \(ctx.shape[2]), the U-Net's cross_attention_dim is \(model.spec.crossAttentionDim)")
        }
        if let w = loraWeights { try model.lora!.assign(w, source: loraSource) }
        let out = try model.forward(sample: Buffer(sample.values), timesteps: t.values, context: Buffer(ctx.values), batch: b,
                                    height: sample.shape[2], width: sample.shape[3], contextLength: ctx.shape[1],
                                    loraScale: loraWeights == nil ? nil : Float(try args.double("--lora-scale")!))
        let shape = [b, model.spec.outChannels, sample.shape[2], sample.shape[3]]
        try SafeTensors.write([SafeTensorsEntry(name: "sample", shape: shape, floats: out.array)], to: try args.requiredString("--out"))
    }

    /// `--threads N` (or HGDPO_THREADS): compute threads for our loops and for OpenBLAS.
    static func applyThreads(_ args: ParsedArguments) throws {
        if let n = try args.int("--threads", in: 1...1024) {
            Parallel.threads = n
            BLAS.setThreads(n)
        }
    }
}
