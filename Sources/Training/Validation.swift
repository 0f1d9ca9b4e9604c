// Validation images during training (`--validation-prompts FILE --validation-every N`): the fixed prompts sampled with
// the current LoRA into RUN_DIR/validation/step-NNNNNN/, and once with the LoRA off into RUN_DIR/validation/base/,
// each image k from seed validation_seed + k, so every folder shows the same noise and prompts (Sources/Sampling).
//
// Set-up refuses up front a --model without text_encoder/, tokenizer/ or vae/ (vae/ may be absent in a pixel-space
// pipeline). The prompts are encoded once (the text encoder is then freed); the VAE decoder stays loaded; the U-Net is the trainer's own (its LoRA at
// validation_lora_scale, or off for the base images).
//
// Every rank samples its share of the images (image k on rank k mod W), so validation takes 1/W of the time and no
// rank waits long in a collective (the watchdog's --collective-timeout bounds only the imbalance, at most one image's
// sampling time). The 8-bit pixels are then summed to rank 0 by one all-reduce (each image is non-zero on one rank
// only, and small integers are exact in float32), and rank 0 writes the PNGs and grid.png, like checkpoints: no
// shared filesystem is needed. A repeated validation step (after a resume) rewrites its own folder.
import Distributed
import Foundation
import IO
import Sampling
import Schedulers
import Tensors
import TextEncoder
import UNet
import VAE

final class Validation {
    static let defaultSteps = 25, defaultSeed: UInt64 = 0, defaultGuidance = 5.0, defaultLoraScale = 1.0
    let pipeline: TextToImagePipeline
    let jobs: [SampleJob]
    let conditioning: Conditioning
    let settings: SampleRunSettings
    let every: Int
    let root: String
    let batch: Int

    /// Loads what sampling needs besides the trainer's U-Net; throws a TrainError naming what is missing.
    init(config c: TrainConfig, unet: UNetModel, latentHeight: Int, latentWidth: Int) throws {
        guard let promptsPath = c.validationPrompts else { preconditionFailure("Validation without prompts") }
        let folder = try ModelFolder(path: c.model)
        do { try TextToImagePipeline.checkPipelineFolder(folder) } catch let e as SamplingError {
            throw TrainInputError("--validation-prompts: \(e.message)")
        }
        guard let data = FileManager.default.contents(atPath: promptsPath), let text = String(data: data, encoding: .utf8) else {
            throw TrainInputError("--validation-prompts \(promptsPath): cannot read the file as UTF-8 text")
        }
        let prompts = text.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasSuffix("\r") ? String($0.dropLast()) : String($0) }
            .filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        guard !prompts.isEmpty else { throw TrainInputError("--validation-prompts \(promptsPath): no prompts") }
        let latentSpace = try LatentSpace.load(folder, variant: c.variant, parts: .decoder)
        let f = latentSpace.downsamplingFactor
        var params = SamplingParameters(steps: c.validationSteps ?? Validation.defaultSteps,
                                        guidanceScale: Float(c.validationGuidance ?? Validation.defaultGuidance),
                                        height: c.validationHeight ?? latentHeight * f, width: c.validationWidth ?? latentWidth * f,
                                        loraScale: Float(c.validationLoraScale ?? Validation.defaultLoraScale))
        params.lan = false
        let encoder = try PromptEncoder.load(folder, variant: c.variant)
        pipeline = try TextToImagePipeline(unet: unet, latentSpace: latentSpace, scheduler: SchedulerRecipe.load(folder, name: "dpmsolver++"),
                                           promptEncoder: nil)
        do { _ = try pipeline.latentSize(height: params.height, width: params.width) } catch let e as SamplingError {
            throw TrainInputError("validation image size: \(e.message)")
        }
        jobs = SampleJob.plan(prompts: prompts, negativePrompt: "", imagesPerPrompt: 1, firstSeed: c.validationSeed ?? Validation.defaultSeed)
        // Encoded once, here: the text encoder is not kept.
        do {
            let cond = try encoder.encode(prompts: prompts)
            let uncond = try encoder.encode(prompts: Array(repeating: "", count: prompts.count))
            conditioning = Conditioning(count: prompts.count, length: cond.length, width: cond.width, cond: cond.hiddenStates,
                                        uncond: uncond.hiddenStates)
        } catch {
            throw TrainInputError("--validation-prompts \(promptsPath): \(error)")
        }
        guard conditioning.width == unet.spec.crossAttentionDim else {
            throw TrainInputError("--validation-prompts: the text encoder's width \(conditioning.width) differs from the U-Net's "
                             + "cross_attention_dim \(unet.spec.crossAttentionDim)")
        }
        settings = SampleRunSettings(parameters: params, scheduler: "dpmsolver++", model: c.model, lora: nil, batch: 1)
        every = c.validationEvery ?? c.checkpointEvery
        root = (c.output as NSString).appendingPathComponent("validation")
        batch = max(1, c.localBatch)
    }

    func due(step: Int, last: Int) -> Bool { step % every == 0 || step == last }

    /// The base images (LoRA off), unless RUN_DIR/validation/base/ already holds them with these settings (a resume
    /// with other validation options, e.g. another seed or size, makes them again).
    func runBaseIfNeeded(comm: GuardedCommunicator, log: (String) -> Void) throws {
        let folder = (root as NSString).appendingPathComponent("base")
        // Rank 0 decides (it is the one writing): every rank takes the same branch.
        var flag = [comm.isRoot && baseIsCurrent(folder) ? 1.0 : 0.0]
        try comm.allreduce("the flag before the base validation images", &flag)
        guard flag[0] == 0 else { return }
        try sample(folder: folder, loraScale: nil, label: "base (LoRA off)", comm: comm, log: log)
    }

    /// Whether every base image is there with the text chunks these settings write.
    private func baseIsCurrent(_ folder: String) -> Bool {
        let s = textSettings(loraScale: nil, label: "")
        return jobs.allSatisfy { job in
            guard let text = try? PNG.readBytesWithText((folder as NSString).appendingPathComponent(job.fileName)).1 else { return false }
            return s.pngText(job).allSatisfy { $0.key == "software" || text[$0.key] == $0.value }
        }
    }

    /// What the PNGs of one validation record: the LoRA at its scale (named by the step), or none for the base.
    private func textSettings(loraScale: Float?, label: String) -> SampleRunSettings {
        var s = settings
        s.parameters.loraScale = loraScale
        s.lora = loraScale == nil ? nil : "training LoRA (\(label))"
        return s
    }

    func run(step: Int, comm: GuardedCommunicator, log: (String) -> Void) throws {
        let folder = (root as NSString).appendingPathComponent(String(format: "step-%06d", step))
        try sample(folder: folder, loraScale: settings.parameters.loraScale, label: "step \(step)", comm: comm, log: log)
    }

    private func sample(folder: String, loraScale: Float?, label: String, comm: GuardedCommunicator,
                        log: (String) -> Void) throws {
        let start = Watchdog.now()
        var params = settings.parameters
        params.loraScale = loraScale
        let mine = jobs.indices.filter { $0 % comm.size == comm.rank }
        let pixelsPer = 3 * params.height * params.width
        var packed: [UInt8] = []                           // this rank's images, in order
        packed.reserveCapacity(mine.count * pixelsPer)
        for chunkStart in stride(from: 0, to: mine.count, by: batch) {
            let chunk = Array(mine[chunkStart..<min(chunkStart + batch, mine.count)])
            let batchCond = conditioning.rows(chunk)       // not contiguous: image k on rank k mod W
            let (images, _) = try pipeline.generate(conditioning: batchCond, seeds: chunk.map { jobs[$0].seed }, parameters: params)
            for i in chunk.indices { packed += try byteImage(images, i).pixels }
        }
        // Rank 0 receives every rank's images: rank r's block holds images r, r + W, r + 2W, …
        guard let blocks = try comm.gather("the validation images (\(label))", packed) else { return }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let s = textSettings(loraScale: loraScale, label: label)
        var written: [ByteImage] = []
        for (k, job) in jobs.enumerated() {
            let block = blocks[k % comm.size], start = (k / comm.size) * pixelsPer
            let image = try ByteImage(width: params.width, height: params.height, channels: 3,
                                      pixels: Array(block[start..<(start + pixelsPer)]))
            try PNG.writeBytes(image, to: (folder as NSString).appendingPathComponent(job.fileName), text: s.pngText(job))
            written.append(image)
        }
        try PNG.writeBytes(imageGrid(Array(written.prefix(64))), to: (folder as NSString).appendingPathComponent("grid.png"),
                           text: [("hgdpo_grid", label), ("software", "hgdpo")])
        log("validation \(label): \(jobs.count) images in \(folder) (" + String(format: "%.1f", Watchdog.now() - start) + " s)")
    }
}
