// `hgdpo report RUN_DIR [--eval EVAL_DIR …]`: the training report page (Sources/Evaluation/RunReport.swift).
import Evaluation
import Foundation
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

    static let reportTable = CommandSpec(
        ["report", "table"],
        summary: "Evaluations side by side as one Markdown table, shaped like the paper's ablation tables",
        details: """
            Reads each --eval LABEL=EVAL_DIR's results.json (hgdpo eval --out) and writes one table, in --eval order.
            --layout winrate (paper Tables 3 and 5): a row per configuration with, per scorer, the win rate against
            the baseline in % with its 95 % bootstrap interval and wins / ties / losses, then the hue shift and the
            latent channel-mean drift. --layout color (paper Table 2): a column per configuration and the HSV shifts
            in % of the baseline (signed), the circular hue turn in degrees and the latent |Δμ| and |Δσ|. Nothing is
            recomputed. Every evaluation must share the baseline, prompts, sampling and scorers (an error names the
            folder that does not). Prints the Markdown; --out also writes it to FILE.
            Example: hgdpo report table --layout winrate --title "Pool size" --eval N-2=eval/n2 --eval N-20=eval/n20
            """,
        options: [
            .list("--eval", "LABEL=EVAL_DIR", "A row (column for --layout color): its label and hgdpo eval output folder"),
            .value("--layout", "NAME", "winrate (Tables 3, 5) or color (Table 2)", default: "winrate",
                   choices: AblationTable.Layout.allCases.map(\.rawValue)),
            .value("--title", "TEXT", "A heading above the table"),
            .value("--out", "FILE", "Also write the Markdown to FILE"),
        ]
    ) { args in
        let pairs = try args.strings("--eval").map { item -> (label: String, folder: String) in
            guard let eq = item.firstIndex(of: "="), eq != item.startIndex, item.index(after: eq) != item.endIndex else {
                throw CLIError.badValue(option: "--eval", value: item, expected: "LABEL=EVAL_DIR (a label, '=', an hgdpo eval folder)")
            }
            return (String(item[..<eq]), String(item[item.index(after: eq)...]))
        }
        guard !pairs.isEmpty else { throw CLIError.invalid("report table: give at least one --eval LABEL=EVAL_DIR") }
        let layout = AblationTable.Layout(rawValue: try args.requiredString("--layout"))!
        let md = try AblationTable.markdown(try AblationTable.read(pairs), layout: layout, title: args.string("--title"))
        if let out = args.string("--out") {
            do { try Foundation.Data(md.utf8).write(to: URL(fileURLWithPath: out), options: .atomic) } catch {
                throw CLIError.invalid("\(out): cannot write the table (\(error.localizedDescription))")
            }
        }
        print(md, terminator: "")
    }
}
