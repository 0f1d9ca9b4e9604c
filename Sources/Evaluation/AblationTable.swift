// `hgdpo report table`: several evaluations (hgdpo eval results.json) side by side as one Markdown table shaped
// like the paper's ablation tables. Nothing is recomputed: every number is read from results.json.
//
// - `winrate` (Tables 3 and 5): one row per configuration, per scorer the win rate against the baseline in % with
//   its 95 % bootstrap interval and wins / ties / losses, then the hue shift and the latent channel-mean drift.
// - `color` (Table 2): one column per configuration, rows Hue / Saturation / Value in % change relative to the
//   baseline (signed; the paper prints magnitudes), the circular hue turn in degrees, the latent |Δμ| and |Δσ|.
//
// The rows must be comparable: the same baseline, prompts, sampling and scorers in every results.json, else an
// error names the folder and what differs.
import Foundation

public enum AblationTable {
    public enum Layout: String, CaseIterable, Sendable { case winrate, color }

    public struct Entry: Sendable {
        public var label: String
        public var folder: String
        public var results: EvalResults
        public init(label: String, folder: String, results: EvalResults) { self.label = label; self.folder = folder; self.results = results }
    }

    /// Reads each `LABEL=EVAL_DIR`'s results.json.
    public static func read(_ pairs: [(label: String, folder: String)]) throws -> [Entry] {
        guard !pairs.isEmpty else { throw EvalError("a table needs at least one --eval LABEL=EVAL_DIR") }
        var seen = Set<String>()
        return try pairs.map { p in
            guard seen.insert(p.label).inserted else { throw EvalError("the label '\(p.label)' is given twice") }
            return Entry(label: p.label, folder: p.folder, results: try EvalResults.read(p.folder))
        }
    }

    /// Every entry against the first: the same baseline, prompts, sampling and scorers.
    public static func checkComparable(_ entries: [Entry]) throws {
        guard let first = entries.first else { return }
        let f = first.results
        for e in entries.dropFirst() {
            let r = e.results
            var differences: [String] = []
            if r.baseline != f.baseline { differences.append("baseline \(EvalReport.describe(r.baseline)) ≠ \(EvalReport.describe(f.baseline))") }
            if r.prompts != f.prompts || r.promptCount != f.promptCount {
                differences.append("prompts \(r.prompts) (\(r.promptCount)) ≠ \(f.prompts) (\(f.promptCount))")
            }
            if r.sampling != f.sampling { differences.append("sampling settings") }
            if r.scorerOrder != f.scorerOrder {
                differences.append("scorers \(r.scorerOrder.joined(separator: ", ")) ≠ \(f.scorerOrder.joined(separator: ", "))")
            }
            if r.tieTolerance != f.tieTolerance { differences.append("tie tolerance") }
            guard differences.isEmpty else {
                throw EvalError("\(e.folder) (\(e.label)) is not comparable with \(first.folder) (\(first.label)): "
                                + differences.joined(separator: "; "))
            }
        }
    }

    static func percent(_ x: Double?) -> String {
        guard let x, x.isFinite else { return "–" }
        return String(format: "%.1f", 100 * x)
    }
    static func signed(_ x: Double?, _ decimals: Int) -> String {
        guard let x, x.isFinite else { return "–" }
        return String(format: "%+.\(decimals)f", x)
    }
    static func row(_ cells: [String]) -> String { "| " + cells.map(HTML.markdownCell).joined(separator: " | ") + " |\n" }
    static func rule(_ n: Int, firstLeft: Bool) -> String {
        "|" + (0..<n).map { $0 == 0 && firstLeft ? " :--- |" : " :---: |" }.joined() + "\n"
    }

    /// The Markdown: an optional `### title`, the table, and a line saying what the rows share.
    public static func markdown(_ entries: [Entry], layout: Layout, title: String? = nil) throws -> String {
        try checkComparable(entries)
        let f = entries[0].results
        var md = title.map { "### " + HTML.markdownCell($0) + "\n\n" } ?? ""
        switch layout {
        case .winrate:
            let scorers = f.scorerOrder
            guard !scorers.isEmpty else {
                throw EvalError("\(entries[0].folder): no scorer results (hgdpo eval ran without --scorer); --layout winrate needs them")
            }
            let header = ["Configuration"] + scorers.flatMap { ["\($0) win rate % [95 % CI]", "\($0) wins / ties / losses"] }
                + ["hue shift (circular, °)", "latent mean |Δμ|"]
            md += row(header) + rule(header.count, firstLeft: true)
            for e in entries {
                let r = e.results
                let cells = scorers.flatMap { name -> [String] in
                    guard let s = r.scorerResults[name] else { return ["–", "–"] }
                    return ["\(percent(s.winRate)) [\(percent(s.ciLow)), \(percent(s.ciHigh))]", "\(s.wins) / \(s.ties) / \(s.losses)"]
                }
                md += row([e.label] + cells + [signed(r.colorShift.hDegrees, 2), fmt(r.latentStats.meanDistanceAvg, 3)])
            }
        case .color:
            let header = [""] + entries.map(\.label)
            md += row(header) + rule(header.count, firstLeft: true)
            let lines: [(String, (EvalResults) -> String)] = [
                ("Hue (%, plain mean as the paper)", { signed($0.colorShift.hPlain, 2) }),
                ("Hue (circular mean, ° turn)", { signed($0.colorShift.hDegrees, 2) }),
                ("Saturation (%)", { signed($0.colorShift.s, 2) }),
                ("Value (%)", { signed($0.colorShift.v, 2) }),
                ("latent mean |Δμ|", { fmt($0.latentStats.meanDistanceAvg, 3) }),
                ("latent std |Δσ|", { fmt($0.latentStats.stdDistanceAvg, 3) }),
            ]
            for (name, value) in lines {
                md += "| " + HTML.markdownCell(name) + " | " + entries.map { HTML.markdownCell(value($0.results)) }.joined(separator: " | ") + " |\n"
            }
        }
        let s = f.sampling
        md += "\n*Against \(HTML.markdownCell(EvalReport.describe(f.baseline))); \(f.promptCount) prompts × \(s.imagesPerPrompt) images = "
            + "\(f.pairs) pairs, the same seeds on every side; \(s.scheduler) \(s.steps) steps, guidance \(fmt(Double(s.guidance))). "
        md += layout == .winrate
            ? "Win rate = (wins + ½·ties) / pairs; interval: percentile bootstrap over prompts (\(f.bootstrap.resamples) resamples). "
              + "Hue shift: the signed turn between the circular mean hues.*\n"
            : "Shifts in % of the baseline's mean (signed); hue is an angle, so its circular turn is given in degrees too.*\n"
        return md
    }
}
