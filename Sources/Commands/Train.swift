// `hgdpo train`: the main job. Options come from TrainConfig.options (one table: flags, config-file keys, defaults,
// checks, help, identity); a config file (--config: JSON, or flat YAML by extension) is read strictly and the command
// line overrides it. The resolved config is saved as RUN_DIR/config.json, itself a valid --config file.
import Distributed
import Foundation
import IO
import NN
import Tensors
import Training
import UNet

extension Commands {
    /// `hgdpo train`'s options: --config, then every entry of TrainConfig.options (the one table of train options).
    static let trainOptions: [OptionSpec] = [
        .value("--config", "FILE", "JSON or flat YAML (.yaml/.yml) file with any of these options (keys like global_batch); "
               + "command-line options override it; an unknown key or a bad value is an error"),
    ] + TrainConfig.options.entries.map { e in
        e.isFlag ? .flag(e.flag, e.help)
            : .value(e.flag, e.valueName!, e.help, default: e.defaultText(TrainConfig()), choices: e.choices)
    }

    static let train = CommandSpec(
        ["train"],
        summary: "Train a LoRA with HG-DPO (data-parallel over MPI ranks)",
        details: """
            Example: launch/local.sh 4 hgdpo train --model sd15 --data cache --out runs/a --global-batch 16 --local-batch 4
            Rank 0 prints a progress line per step and appends metrics.jsonl; checkpoints go to RUN_DIR/step-NNNNNN/
            (pytorch_lora_weights.safetensors loads in diffusers as is). SIGTERM/SIGUSR1: checkpoint and exit 0.
            Exit codes: 0 done (or stopped by a signal after a checkpoint), 2 a bad option, file or setting,
            1 a failure while running, 3 stopped by --stop-on-divergence.
            """,
        options: trainOptions
    ) { args in
        let config = try trainConfig(args)
        try applyThreads(args)
        if let n = config.threads { Parallel.threads = n; BLAS.setThreads(n) }
        let comm = try Communicator.world()
        // One job per run folder (rank 0 holds the lock for the job; a second job stops here with exit code 2).
        let lock = comm.isRoot ? try lockRunFolder(config.output, command: "train") : nil
        defer { lock?.release() }
        if comm.isRoot {
            try Data((config.json.pretty() + "\n").utf8).write(
                to: URL(fileURLWithPath: (config.output as NSString).appendingPathComponent("config.json")), options: .atomic)
        }
        try comm.barrier()
        let trainer = try Trainer(config: config, comm: comm)
        try trainer.run()
        if comm.isRoot { print("report: hgdpo report \(config.output)") }
    }

    /// The config file (if any) with the command line's options on top, checked as a whole.
    static func trainConfig(_ args: ParsedArguments) throws -> TrainConfig {
        var c = TrainConfig()
        if let path = args.string("--config") { try TrainConfig.options.apply(file: path, to: &c) }
        for e in TrainConfig.options.entries where args.given(e.flag) {
            try e.set(&c, text: e.isFlag ? "true" : args.string(e.flag)!)
        }
        try c.validate()
        return c
    }
}
