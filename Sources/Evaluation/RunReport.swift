// `hgdpo report RUN_DIR [--eval EVAL_DIR …]`: one self-contained HTML page about a training run: a chart per metric
// of RUN_DIR/metrics.jsonl (every numeric key, the known ones first in a fixed order, the four MSEs in one chart),
// the validation grids over the steps (RUN_DIR/validation/), the run's config.json, and the evaluations given (their
// results.json, as in eval's own report).
import Foundation
import IO

public enum RunReport {
    /// Chart order of the trainer's keys (Training/Trainer.swift); keys in one group share a chart. Other numeric keys
    /// follow in alphabetical order; `step` is the x axis.
    public static let knownGroups: [[String]] = [
        ["loss"], ["dpo"], ["stat"], ["stat_weighted"], ["implicit_acc"], ["reward_margin"], ["reward_margin_abs"],
        ["mse_theta_w", "mse_theta_l", "mse_ref_w", "mse_ref_l"], ["lr"], ["grad_norm"], ["clipped"], ["skipped"],
        ["samples_per_s"], ["step_s"], ["allreduce_s"], ["epoch"], ["world_size"],
    ]
    static let titles: [String: String] = [
        "loss": "loss", "dpo": "DPO loss", "stat": "statistic matching (raw)", "stat_weighted": "statistic matching × λ",
        "implicit_acc": "implicit accuracy", "reward_margin": "reward margin", "reward_margin_abs": "|reward margin|",
        "mse_theta_w": "MSE (θ, ref; winner w, loser l)",
        "lr": "learning rate", "grad_norm": "gradient norm (before clipping)", "clipped": "gradient clipped (1 = yes)",
        "skipped": "step skipped (1 = yes)", "samples_per_s": "samples/s", "step_s": "seconds per step", "allreduce_s": "all-reduce seconds",
    ]

    /// One metrics.jsonl value: a number, a boolean (charted as 0/1), or anything else (not charted).
    enum Value: Decodable {
        case number(Double), other
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let b = try? c.decode(Bool.self) { self = .number(b ? 1 : 0) }
            else if let d = try? c.decode(Double.self) { self = .number(d) }
            else { self = .other }
        }
    }

    /// Records of metrics.jsonl by step (a step logged again after a resume keeps its last record), and notes on
    /// what was skipped. A malformed line is an error naming it, except an unfinished last line (a run still writing).
    public static func readMetrics(_ path: String) throws -> (steps: [Int], values: [[String: Double]], notes: [String]) {
        guard let data = FileManager.default.contents(atPath: path) else { return ([], [], ["\(path): missing, no curves"]) }
        var byStep: [Int: [String: Double]] = [:]
        var notes: [String] = []
        let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        for (i, line) in lines.enumerated() where !line.allSatisfy({ $0 == 32 || $0 == 13 || $0 == 9 }) {
            let record: [String: Value]
            do { record = try JSONDecoder().decode([String: Value].self, from: Data(line)) } catch {
                if i == lines.count - 1 && data.last != UInt8(ascii: "\n") {
                    notes.append("\(path): line \(i + 1) is unfinished (the run is still writing it) and is left out")
                    continue
                }
                throw EvalError("\(path): line \(i + 1) is not a JSON object")
            }
            guard case .number(let s)? = record["step"], s == s.rounded(), s >= 0, s < 1e15 else {
                throw EvalError("\(path): line \(i + 1) has no numeric \"step\"")
            }
            var values: [String: Double] = [:]
            for (k, v) in record where k != "step" { if case .number(let x) = v { values[k] = x } }
            byStep[Int(s)] = values
        }
        let steps = byStep.keys.sorted()
        return (steps, steps.map { byStep[$0]! }, notes)
    }

    /// The chart groups of the keys present: known groups (their present keys) in order, then the rest alphabetically.
    public static func chartGroups(keys: Set<String>) -> [[String]] {
        var groups = knownGroups.map { $0.filter(keys.contains) }.filter { !$0.isEmpty }
        let known = Set(knownGroups.joined())
        groups += keys.subtracting(known).sorted().map { [$0] }
        return groups
    }

    /// Writes the page to `out` (default RUN_DIR/report.html) and returns its path.
    @discardableResult
    public static func write(runDir: String, evals: [String], out: String? = nil, maxValidationSteps: Int = 12) throws -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: runDir, isDirectory: &isDir), isDir.boolValue else {
            throw EvalError("\(runDir): no such run folder")
        }
        func file(_ name: String) -> String { (runDir as NSString).appendingPathComponent(name) }
        let results = try evals.map { ($0, try EvalResults.read($0)) }     // a bad --eval fails before anything is written
        var body = "<h1>hgdpo training report</h1>\n<p>\(HTML.escape(runDir))</p>\n"

        // Curves.
        let (steps, values, notes) = try readMetrics(file("metrics.jsonl"))
        body += "<h2>Training curves</h2>\n"
        for n in notes { body += "<p class=\"note\">\(HTML.escape(n))</p>\n" }
        if !steps.isEmpty {
            body += "<p class=\"note\">\(steps.count) logged steps, \(steps.first!) to \(steps.last!).</p>\n<div class=\"charts\">\n"
            let keys = Set(values.flatMap(\.keys))
            for group in chartGroups(keys: keys) {
                let series = group.map { k in
                    SVGChart.Series(name: k, points: zip(steps, values).compactMap { s, v in v[k].map { (Double(s), $0) } })
                }
                body += SVGChart.line(title: titles[group[0]] ?? group[0], series: series, xLabel: "step") + "\n"
            }
            body += "</div>\n"
        }

        // Validation grids.
        let validation = file("validation")
        let folders = ((try? FileManager.default.contentsOfDirectory(atPath: validation)) ?? [])
            .filter { $0.hasPrefix("step-") && FileManager.default.fileExists(atPath: "\(validation)/\($0)/grid.png") }.sorted()
        body += "<h2>Validation images</h2>\n"
        var shown: [String] = []
        if FileManager.default.fileExists(atPath: "\(validation)/base/grid.png") { shown.append("base") }
        if folders.count <= maxValidationSteps { shown += folders } else {
            // Evenly spaced, always with the last.
            shown += (0..<maxValidationSteps).map { folders[$0 * (folders.count - 1) / (maxValidationSteps - 1)] }
        }
        if shown.isEmpty {
            body += "<p class=\"note\">No validation images (train with --validation-prompts FILE).</p>\n"
        } else {
            if shown.count - (shown.first == "base" ? 1 : 0) < folders.count {
                body += "<p class=\"note\">\(maxValidationSteps) of \(folders.count) validation steps, evenly spaced.</p>\n"
            }
            body += "<div class=\"figures\">\n"
            for name in shown {
                let caption = name == "base" ? "base model (LoRA off)" : "step \(Int(name.dropFirst(5)) ?? 0)"
                body += try HTML.figure(imageFile: "\(validation)/\(name)/grid.png", caption: caption, maxSide: 640)
            }
            body += "</div>\n"
        }

        // Config.
        body += "<h2>Config</h2>\n"
        if let data = FileManager.default.contents(atPath: file("config.json")) {
            body += "<pre>\(HTML.escape(String(decoding: data, as: UTF8.self)))</pre>\n"
        } else {
            body += "<p class=\"note\">No config.json in the run folder.</p>\n"
        }

        // Evaluations.
        for (path, r) in results {
            body += "<h2>Evaluation: \(HTML.escape(path))</h2>\n"
            let page = (path as NSString).appendingPathComponent("report.html")
            if FileManager.default.fileExists(atPath: page) {
                body += "<p><a href=\"\(HTML.escape(URL(fileURLWithPath: page).absoluteString))\">full report with the grids</a></p>\n"
            }
            body += EvalReport.summaryHTML(r, h: 3)
        }
        let target = out ?? file("report.html")
        try Data(HTML.page(title: "hgdpo report: \(runDir)", body: body).utf8).write(to: URL(fileURLWithPath: target), options: .atomic)
        return target
    }
}
