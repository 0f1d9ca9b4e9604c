// `hgdpo checkpoint verify DIR`: checks a checkpoint folder, or every checkpoint of a run folder, as `--resume` does
// (Training/Checkpoint.swift `verify`: files complete, tensors readable, the state consistent).
import Foundation
import IO
import Training

extension Commands {
    static let checkpointVerify = CommandSpec(
        ["checkpoint", "verify"],
        summary: "Check a checkpoint folder, or every checkpoint of a run folder, as --resume does",
        details: """
            Prints one JSON line per checkpoint ({"checkpoint":DIR,"step":N,"ok":true} or "ok":false with the error) and
            exits 2 if any is damaged. Example: hgdpo checkpoint verify runs/a
            """,
        arguments: [ArgumentSpec("DIR", "a run folder (RUN_DIR) or one checkpoint folder (RUN_DIR/step-NNNNNN)")],
        options: []
    ) { args in
        let dir = args.positionals[0]
        let isCheckpoint = FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent(Checkpoint.stateFile))
        let folders = isCheckpoint ? [dir] : Checkpoint.list(runDir: dir).map(\.path)
        guard !folders.isEmpty else { throw CLIError.invalid("\(dir): neither a checkpoint folder nor a run folder with checkpoints") }
        var damaged = 0
        for folder in folders {
            var fields: [(String, JSONValue)] = [("checkpoint", .string(folder))]
            do {
                try Checkpoint.verify(folder)
                fields += [("step", .int(try Checkpoint.loadState(folder).step)), ("ok", .bool(true))]
            } catch {
                damaged += 1
                fields += [("ok", .bool(false)), ("error", .string("\(error)"))]
            }
            print(JSONValue.object(fields).serialized())
        }
        if damaged > 0 { throw CLIError.invalid("\(damaged) of \(folders.count) checkpoint(s) in \(dir) are damaged") }
    }
}
