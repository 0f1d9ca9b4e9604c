// `hgdpo probe scheduler`: one sampling trajectory of a scheduler for given model outputs, for parity checks against
// diffusers and for users checking a model's scheduler config (the timesteps and sigmas it gives for N steps).
import Foundation
import IO
import Schedulers

extension Commands {
    /// --scheduler names: the class, and the config keys forced on it (diffusers' from_config keyword arguments).
    static let schedulerChoices: [(name: String, kind: SchedulerKind, overrides: [String: Any])] = [
        ("ddpm", .ddpm, [:]), ("ddim", .ddim, [:]), ("euler", .euler, [:]),
        ("dpmsolver++", .dpmSolverMultistep, ["algorithm_type": "dpmsolver++"]),
        ("dpmsolver", .dpmSolverMultistep, ["algorithm_type": "dpmsolver"]),
        ("sde-dpmsolver++", .dpmSolverMultistep, ["algorithm_type": "sde-dpmsolver++"]),
    ]

    static let probeScheduler = CommandSpec(
        ["probe", "scheduler"],
        summary: "Run a sampling scheduler over given model outputs and write its timesteps and trajectory",
        details: """
            The scheduler is built from the model's scheduler/scheduler_config.json as diffusers' from_config does
            (keys of another class are ignored, missing keys take the scheduler's defaults); without --scheduler the
            config's own class is used (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler or
            DPMSolverMultistepScheduler).
            IN holds `sample` (the initial latents, any shape, already scaled by the scheduler's init_noise_sigma),
            `model_outputs` [N, …] (the model's output at each of the N steps) and, for steps that add noise (DDPM,
            DDIM with --eta > 0, SDE DPM-Solvers), `noise` [N, …] of N(0, 1) values.
            OUT gets `timesteps` [N], `trajectory` [N+1, …] (the sample, then each step's result), `model_inputs`
            [N, …] (scale_model_input of each step's sample), `init_noise_sigma` [1] and, for Euler and DPM-Solver,
            `sigmas` [N+1]; all float32.
            Example: hgdpo probe scheduler --model sd15 --scheduler dpmsolver++ --steps 50 --input in.safetensors --out out.safetensors
            """,
        options: [
            .value("--model", "DIR", "Pipeline root (its scheduler/ is used) or a scheduler folder", required: true),
            .value("--scheduler", "NAME", "Scheduler (default: the config's class)", choices: schedulerChoices.map(\.name)),
            .value("--steps", "N", "Number of inference steps", required: true),
            .value("--eta", "E", "DDIM's eta (0 = deterministic)", default: "0"),
            .value("--input", "IN", "Input tensors (safetensors)", required: true),
            .value("--out", "OUT", "Output file (safetensors, written atomically)", required: true),
        ]
    ) { args in
        let folder = try ModelFolder(path: try args.requiredString("--model")).scheduler()
        let configPath = folder.configPath
        guard let configData = FileManager.default.contents(atPath: configPath) else {
            throw CLIError.invalid("\(configPath): missing (scheduler config)")
        }
        let kind: SchedulerKind, overrides: [String: Any]
        if let name = args.string("--scheduler") {
            let choice = schedulerChoices.first { $0.name == name }!
            (kind, overrides) = (choice.kind, choice.overrides)
        } else {
            let cls = try folder.className() ?? "(no _class_name)"
            guard let k = SchedulerKind(rawValue: cls) else {
                throw CLIError.invalid("\(configPath): _class_name \(cls) is not a scheduler hgdpo implements; choose one with "
                                       + "--scheduler (\(schedulerChoices.map(\.name).joined(separator: ", ")))")
            }
            (kind, overrides) = (k, [:])
        }
        let scheduler: any Scheduler
        do { scheduler = try kind.make(configJSON: configData, source: configPath, overrides: overrides) } catch let e as SchedulerError {
            throw CLIError.invalid(e.message)
        }
        let eta = try args.double("--eta", in: 0...1000)!
        if let ddim = scheduler as? DDIMScheduler {
            ddim.eta = Float(eta)
        } else if eta != 0 {
            throw CLIError.invalid("--eta is DDIM's; \(type(of: scheduler).diffusersClassName) takes none")
        }
        let steps = try args.int("--steps", in: 1...100_000)!
        do { try scheduler.setTimesteps(steps) } catch let e as SchedulerError { throw CLIError.invalid(e.message) }
        let stepCount = scheduler.timesteps.count

        let inputPath = try args.requiredString("--input")
        let input = try SafeTensorsFile(path: inputPath)
        func missing(_ key: String) -> CLIError {
            .invalid("\(inputPath): missing tensor '\(key)' (has: \(input.tensorNames.sorted().joined(separator: ", ")))")
        }
        guard let sampleShape = input.info("sample")?.shape else { throw missing("sample") }
        let n = sampleShape.reduce(1, *)
        func perStep(_ key: String) throws -> [Float] {
            guard let shape = input.info(key)?.shape else { throw missing(key) }
            guard shape == [stepCount] + sampleShape else {
                throw CLIError.invalid("\(inputPath): '\(key)' has shape \(shape), expected \([stepCount] + sampleShape) "
                                       + "(one per step of the \(stepCount) timesteps, each the sample's shape)")
            }
            return try input.floats(key)
        }
        let outputs = try perStep("model_outputs")
        let needsNoise = scheduler.timesteps.contains { scheduler.needsNoise(at: $0) }
        let noise: [Float]? = needsNoise || input.info("noise") != nil ? try perStep("noise") : nil

        var x = try input.floats("sample")
        var trajectory = x, modelInputs: [Float] = []
        trajectory.reserveCapacity((stepCount + 1) * n); modelInputs.reserveCapacity(stepCount * n)
        do {
            for (i, t) in scheduler.timesteps.enumerated() {
                modelInputs += try scheduler.scaleModelInput(x, timestep: t)
                let z = scheduler.needsNoise(at: t) ? Array(noise![i * n..<(i + 1) * n]) : nil
                x = try scheduler.step(modelOutput: Array(outputs[i * n..<(i + 1) * n]), timestep: t, sample: x, noise: z)
                trajectory += x
            }
        } catch let e as SchedulerError { throw CLIError.invalid(e.message) }

        var entries = [
            SafeTensorsEntry(name: "timesteps", shape: [stepCount], floats: scheduler.timesteps),
            SafeTensorsEntry(name: "trajectory", shape: [stepCount + 1] + sampleShape, floats: trajectory),
            SafeTensorsEntry(name: "model_inputs", shape: [stepCount] + sampleShape, floats: modelInputs),
            SafeTensorsEntry(name: "init_noise_sigma", shape: [1], floats: [scheduler.initNoiseSigma]),
        ]
        let sigmas = (scheduler as? EulerDiscreteScheduler)?.sigmas ?? (scheduler as? DPMSolverMultistepScheduler)?.sigmas
        if let sigmas { entries.append(SafeTensorsEntry(name: "sigmas", shape: [sigmas.count], floats: sigmas)) }
        try SafeTensors.write(entries, metadata: ["scheduler": type(of: scheduler).diffusersClassName, "config": configPath],
                              to: try args.requiredString("--out"))
    }
}
