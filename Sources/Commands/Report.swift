// `hgdpo report RUN_DIR [--eval EVAL_DIR …]`: the training report page (Sources/Evaluation/RunReport.swift).
import Evaluation
import IO

extension Commands {
    static let report = CommandSpec(
        ["report"],
        summary: "One self-contained HTML page of a run: curves, validation grids, config, evaluations",
        details: """
            Charts every numeric key of RUN_DIR/metrics.jsonl against the step, shows the validation grids of
            RUN_DIR/validation/ over the steps and RUN_DIR/config.json, and the results of each --eval folder
            (hgdpo eval --out). The page needs no network. Example: hgdpo report runs/a --eval eval/step-1000
            """,
        arguments: [ArgumentSpec("RUN_DIR", "The run folder of hgdpo train")],
        options: [
            .list("--eval", "EVAL_DIR", "An hgdpo eval output folder to include"),
            .value("--out", "FILE", "Where to write the page (default: RUN_DIR/report.html)"),
        ]
    ) { args in
        let path = try RunReport.write(runDir: args.argument(0)!, evals: args.strings("--eval"), out: args.string("--out"))
        print(JSONValue.object([("report", .string(path))]).serialized())
    }
}
