// `hgdpo make-model`: a diffusers pipeline folder (model_index.json, unet/, scheduler/) with a random-weight U-Net of a
// named shape, for trying the tools end to end and for tests and benchmarks, where no real weights can be had.
import Foundation
import IO
import UNet

extension Commands {
    static let makeModel = CommandSpec(
        ["make-model"],
        summary: "Write a diffusers pipeline folder with a random-weight U-Net (tiny, small, sd15 or a given config) and SD's DDPM schedule",
        details: "Example: hgdpo make-model --config tiny --out models/tiny",
        options: [
            .value("--config", "NAME|DIR", "U-Net shape: tiny, small, sd15 (../shared/bench/unet_configs.py) or a U-Net folder's config", default: "tiny"),
            .value("--out", "DIR", "Folder to create (must not exist)", required: true),
            .value("--seed", "S", "Seed of the weights", default: "0"),
            .value("--variant", "NAME", "Also write the weights as a variant file, e.g. fp16", choices: ["fp16"]),
        ]
    ) { args in
        let out = try args.requiredString("--out")
        guard !FileManager.default.fileExists(atPath: out) else { throw CLIError.invalid("\(out): already exists; choose a new folder") }
        guard let seed = UInt64(args.string("--seed")!) else {
            throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
        }
        let config = try benchConfig(args.string("--config")!)
        let model = UNetModel(spec: try UNetSpec(config))
        model.randomizeWeights(seed: seed)
        try writePipeline(model: model, to: out, fp16Variant: args.string("--variant") == "fp16")
        print(JSONValue.object([("out", .string(out)), ("params", .int(model.weights.table.count))]).serialized())
    }

    /// Writes `model` as a diffusers pipeline folder with Stable Diffusion's scheduler configuration.
    static func writePipeline(model: UNetModel, to out: String, fp16Variant: Bool = false) throws {
        let fm = FileManager.default
        let unetDir = (out as NSString).appendingPathComponent("unet"), schedDir = (out as NSString).appendingPathComponent("scheduler")
        try fm.createDirectory(atPath: unetDir, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: schedDir, withIntermediateDirectories: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted]
        var unetJSON = try JSONSerialization.jsonObject(with: enc.encode(model.spec.config)) as! [String: Any]
        unetJSON["_class_name"] = "UNet2DConditionModel"
        unetJSON["_diffusers_version"] = "0.42.1"
        try JSONSerialization.data(withJSONObject: unetJSON, options: [.sortedKeys, .prettyPrinted])
            .write(to: URL(fileURLWithPath: (unetDir as NSString).appendingPathComponent("config.json")))
        let w = model.weights
        let entries = w.table.entries.map { e in
            SafeTensorsEntry(name: e.key, shape: e.shape, floats: UnsafeBufferPointer(start: w.storage.ptr + e.offset, count: e.count))
        }
        try SafeTensors.write(entries, metadata: ["format": "pt"], to: (unetDir as NSString).appendingPathComponent("diffusion_pytorch_model.safetensors"))
        if fp16Variant {
            let half = w.table.entries.map { e in
                SafeTensorsEntry(name: e.key, shape: e.shape, floats: UnsafeBufferPointer(start: w.storage.ptr + e.offset, count: e.count), as: .F16)
            }
            try SafeTensors.write(half, metadata: ["format": "pt"], to: (unetDir as NSString).appendingPathComponent("diffusion_pytorch_model.fp16.safetensors"))
        }
        let scheduler: [String: Any] = [
            "_class_name": "DDPMScheduler", "_diffusers_version": "0.42.1", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "clip_sample": false,
            "set_alpha_to_one": false, "steps_offset": 1, "timestep_spacing": "leading",
        ]
        try JSONSerialization.data(withJSONObject: scheduler, options: [.sortedKeys, .prettyPrinted])
            .write(to: URL(fileURLWithPath: (schedDir as NSString).appendingPathComponent("scheduler_config.json")))
        let index: [String: Any] = [
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDPMScheduler"],
        ]
        try JSONSerialization.data(withJSONObject: index, options: [.sortedKeys, .prettyPrinted])
            .write(to: URL(fileURLWithPath: (out as NSString).appendingPathComponent("model_index.json")))
    }
}
