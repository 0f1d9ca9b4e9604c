// `hgdpo sample`: text to image with a diffusers pipeline folder, optionally with a LoRA at a scale and LAN
// (Sources/Sampling). Writes NNNNNN-seedS.png with the parameters in PNG text chunks, and grid.png.
import Foundation
import IO
import NN
import Sampling
import Tensors
import TextEncoder
import UNet
#if canImport(Glibc)
import Glibc
#endif

extension Commands {
    static let sample = CommandSpec(
        ["sample"],
        summary: "Generate images from prompts (CFG, LoRA at a scale, LAN) into PNGs with their parameters",
        details: """
            Image k (prompt-major: prompt p, image j of it → k = p·N + j with N = --images-per-prompt) is
            OUT/kkkkkk-seedS.png with S = --seed + k; its initial latent comes from S alone (counter-based Philox
            normals), so an image does not depend on --batch or on the other prompts. Each PNG carries prompt,
            negative_prompt, seed, steps, guidance, scheduler, size, model, lora, lora_scale, lan (text chunks, and
            `parameters` in the web UI's form). OUT/grid.png shows the first 64 images.
            An existing image with the same name and parameters is skipped (an interrupted run continues); one with
            other parameters stops the command before anything is sampled: nothing is overwritten.
            --lan (HG-DPO Eq. 7) also runs the base model (LoRA off) from the same noise and, after every step,
            gives the LoRA latent the base latent's per-channel mean and std: twice the U-Net work.
            --prompts FILE: one prompt per line, blank lines skipped; prompts use the web UI weighting syntax
            ((text:1.2), (text), [text]) unless --no-weighting.
            Example: hgdpo sample --model sd15 --lora run/step-001000/pytorch_lora_weights.safetensors --lora-scale 0.5 \\
                       --prompt "a photo of a woman, (bust shot:1.2)" --out samples --steps 50 --guidance 5 --seed 1 --images-per-prompt 4
            """,
        options: [
            .value("--model", "DIR", "diffusers pipeline folder (unet, vae, text_encoder, tokenizer, scheduler; no vae: pixel space)", required: true),
            .value("--variant", "NAME", "Weight variant, e.g. fp16"),
            .value("--lora", "FILE", "LoRA weights (diffusers, peft or kohya format)"),
            .value("--lora-scale", "S", "LoRA scale (the paper samples at 0.5)", default: "1.0"),
            .flag("--lan", "Latent adaptive normalization against the base model (HG-DPO Eq. 7; needs --lora)"),
            .value("--prompt", "TEXT", "One prompt"),
            .value("--prompts", "FILE", "Prompts, one per line"),
            .value("--negative-prompt", "TEXT", "Negative prompt for every image (default: none, i.e. the encoding of \"\")"),
            .value("--out", "DIR", "Output folder", required: true),
            .value("--steps", "N", "Sampler steps", default: "50"),
            .value("--guidance", "G", "Classifier-free guidance scale (≤ 1: off)", default: "5"),
            .value("--scheduler", "NAME", "Sampler", default: "dpmsolver++", choices: SchedulerRecipe.named.map(\.name)),
            .value("--height", "H", "Image height (a multiple of 8 with a VAE; any in pixel space)", default: "512"),
            .value("--width", "W", "Image width (a multiple of 8 with a VAE; any in pixel space)", default: "512"),
            .value("--seed", "S", "Seed of the first image (image k uses S + k)", default: "0"),
            .value("--images-per-prompt", "N", "Images per prompt", default: "1"),
            .value("--batch", "B", "Images per U-Net batch", default: "1"),
            .value("--clip-skip", "K", "Use the text encoder's layer L−K (diffusers' clip_skip)", default: "0"),
            .flag("--no-weighting", "Prompts as they are (brackets are plain text)"),
            .value("--vae-tile", "N|auto", "Decode in overlapping tiles of N pixels (auto: the VAE's sample_size), for large images"),
            .value("--mixed-precision", "MODE", "no = fp32; bf16 = U-Net conv / linear weights in bf16, fp32 sums",
                   default: "no", choices: ["no", "bf16"]),
            .value("--threads", "N", "Compute threads (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        // Inputs first, so a bad option fails before the model loads.
        let prompts: [String]
        switch (args.string("--prompt"), args.string("--prompts")) {
        case (let p?, nil): prompts = [p]
        case (nil, let file?):
            prompts = try readPromptLines(file).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
            guard !prompts.isEmpty else { throw CLIError.invalid("\(file): no prompts (only blank lines)") }
        case (.some, .some): throw CLIError.invalid("give either --prompt or --prompts, not both")
        case (nil, nil): throw CLIError.invalid("'hgdpo sample' needs --prompt TEXT or --prompts FILE; see 'hgdpo sample --help'")
        }
        let loraPath = args.string("--lora")
        if args.given("--lora-scale") && loraPath == nil { throw CLIError.invalid("--lora-scale needs --lora") }
        if args.flag("--lan") && loraPath == nil {
            throw CLIError.invalid("--lan matches the LoRA model's latents to the base model's: it needs --lora")
        }
        var params = SamplingParameters()
        params.steps = try args.int("--steps", in: 1...1000)!
        params.guidanceScale = Float(try args.double("--guidance", in: 0...1000)!)
        params.height = try args.int("--height", in: 8...16384)!
        params.width = try args.int("--width", in: 8...16384)!
        if loraPath != nil { params.loraScale = Float(try args.double("--lora-scale", in: -100...100)!) }
        params.lan = args.flag("--lan")
        guard let seed = UInt64(args.string("--seed")!) else {
            throw CLIError.badValue(option: "--seed", value: args.string("--seed")!, expected: "a non-negative integer")
        }
        let perPrompt = try args.int("--images-per-prompt", in: 1...100_000)!
        let batch = try args.int("--batch", in: 1...4096)!
        let clipSkip = try args.int("--clip-skip", in: 0...1000)!
        let precision = MixedPrecision(rawValue: args.string("--mixed-precision")!)!
        let modelPath = try args.requiredString("--model")
        let out = try args.requiredString("--out")

        let lora = try loraPath.map { try LoRAFile.read($0) }
        let pipeline: TextToImagePipeline
        do {
            pipeline = try TextToImagePipeline.load(modelFolder: modelPath, variant: args.string("--variant"), lora: lora,
                                                    loraSource: loraPath ?? "", precision: precision,
                                                    schedulerName: args.string("--scheduler"))
        } catch let e as SamplingError { throw CLIError.invalid(e.message) }
        if let tile = args.string("--vae-tile") {
            guard let vae = pipeline.latentSpace.vae else {
                throw CLIError.invalid("--vae-tile: \(modelPath) is a pixel-space pipeline (no vae/); there is nothing to tile")
            }
            if tile == "auto" { pipeline.vaeTiling = try vae.tiling() } else {
                guard let n = Int(tile), n > 0 else { throw CLIError.badValue(option: "--vae-tile", value: tile, expected: "a positive integer or auto") }
                pipeline.vaeTiling = try vae.tiling(sampleTileSize: n)
            }
        }
        if let encoder = pipeline.promptEncoder, clipSkip >= encoder.model.layerCount {
            throw CLIError.badValue(option: "--clip-skip", value: String(clipSkip),
                                    expected: "0…\(encoder.model.layerCount - 1) (the text encoder has \(encoder.model.layerCount) layers)")
        }
        do { _ = try pipeline.latentSize(height: params.height, width: params.width) } catch let e as SamplingError {
            throw CLIError.invalid(e.message)
        }
        let settings = SampleRunSettings(parameters: params, scheduler: args.string("--scheduler")!, model: modelPath,
                                         lora: loraPath, batch: batch, weighting: !args.flag("--no-weighting"), clipSkip: clipSkip)
        let jobs = SampleJob.plan(prompts: prompts, negativePrompt: args.string("--negative-prompt") ?? "", imagesPerPrompt: perPrompt,
                                  firstSeed: seed)
        let run: SampleRun
        do { run = try SampleRun(pipeline: pipeline, settings: settings, folder: out, jobs: jobs) } catch let e as SampleRunError {
            throw CLIError.invalid(e.message)
        }
        if !run.existing.isEmpty {
            fputs("\(out): \(run.existing.count) of \(jobs.count) images already there with these parameters: skipped\n", stderr)
        }
        do {
            try run.run(progress: ProgressReporter(total: run.todo.count))
        } catch let e as PromptWeightingError {
            throw CLIError.invalid("prompt: \(e)")
        }
        let t = run.timings
        print(JSONValue.object([("out", .string(out)), ("written", .int(run.todo.count)), ("skipped", .int(run.existing.count)),
                                ("grid", .string(run.path("grid.png"))), ("encode_s", .double(t.encode)),
                                ("denoise_s", .double(t.denoise)), ("decode_s", .double(t.decode)),
                                ("threads", .int(Parallel.threads))]).serialized())
    }
}

/// A progress bar on stderr when it is a terminal (redrawn in place), plain lines per finished batch otherwise.
final class ProgressReporter: SamplingProgress {
    let total: Int
    let tty = isatty(2) == 1
    let started = Date()
    var done = 0

    init(total: Int) { self.total = total }

    func step(_ step: Int, of steps: Int, batch: Int, of batches: Int) {
        guard tty else { return }
        let fraction = (Double(batch - 1) + Double(step) / Double(steps)) / Double(max(1, batches))
        let width = 30, filled = Int(fraction * Double(width))
        let elapsed = Date().timeIntervalSince(started)
        let eta = fraction > 0 ? elapsed * (1 - fraction) / fraction : .nan
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        fputs("\r[\(bar)] batch \(batch)/\(batches) step \(step)/\(steps)  \(clock(elapsed)) elapsed  ETA \(clock(eta)) ", stderr)
    }

    func wrote(_ jobs: [SampleJob], batch: Int, of batches: Int, seconds: Double) {
        done += jobs.count
        let line = "batch \(batch)/\(batches): wrote \(jobs.map(\.fileName).joined(separator: ", ")) "
            + String(format: "(%.1f s, %.1f s/image)", seconds, seconds / Double(jobs.count))
        fputs((tty ? "\r\u{1B}[K" : "") + line + "\n", stderr)
    }

    private func clock(_ s: Double) -> String {
        guard s.isFinite else { return "?" }
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
    }
}
