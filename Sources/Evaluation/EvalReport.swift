// The outputs of `hgdpo eval` after scoring: results.json, report.md (tables, links to the grids) and report.html (one
// self-contained page: the tables, the win-rate chart with interval whiskers, the HSV shift chart, the grids inlined).
// `summaryHTML` is also the evaluation section of `hgdpo report`'s page.
import Foundation
import IO

public enum EvalReport {
    /// results.json, report.md and report.html into `folder` (atomically each).
    public static func write(_ r: EvalResults, folder: String, reportGrids: Int) throws {
        func file(_ name: String) -> URL { URL(fileURLWithPath: (folder as NSString).appendingPathComponent(name)) }
        try r.json().write(to: file("results.json"), options: .atomic)
        try Data(markdown(r).utf8).write(to: file("report.md"), options: .atomic)
        try Data(html(r, folder: folder, grids: reportGrids).utf8).write(to: file("report.html"), options: .atomic)
    }

    // MARK: - Rows shared by both formats

    static func winRateRows(_ r: EvalResults) -> [[String]] {
        r.scorers.map { s in
            [s.name, fmt(s.winRate, 3), "[\(fmt(s.ciLow, 3)), \(fmt(s.ciHigh, 3))]", String(s.wins), String(s.ties), String(s.losses),
             String(s.pairs), fmt(s.meanA, 5), fmt(s.meanBaseline, 5), fmt(s.promptWinRate, 3)]
        }
    }
    static let winRateHeader = ["scorer", "win rate", "95% CI (bootstrap over prompts)", "wins", "ties (½)", "losses", "pairs",
                                "mean A", "mean baseline", "per-prompt win rate (paper)"]

    static func colorRows(_ r: EvalResults) -> [[String]] {
        let a = r.color["a"], b = r.color["baseline"], c = r.colorShift
        return [
            ["Hue (circular mean)", fmt(a?.hCircular), fmt(b?.hCircular), fmt(c.h, 3),
             "Δ = \(fmt(c.hDegrees, 3))° (shortest turn)"],
            ["Hue (plain mean, as the paper)", fmt(a?.hPlain), fmt(b?.hPlain), fmt(c.hPlain, 3), ""],
            ["Saturation", fmt(a?.s), fmt(b?.s), fmt(c.s, 3), ""],
            ["Value", fmt(a?.v), fmt(b?.v), fmt(c.v, 3), ""],
        ]
    }
    static let colorHeader = ["HSV channel", "mean A", "mean baseline", "shift (%)", "note"]

    static func latentRows(_ r: EvalResults) -> [[String]] {
        let l = r.latentStats
        return (0..<l.channels).map { c in
            [String(c), fmt(l.meanA[c]), fmt(l.meanBaseline[c]), fmt(l.meanDistance[c]), fmt(l.stdA[c]), fmt(l.stdBaseline[c]),
             fmt(l.stdDistance[c])]
        } + [["all", "", "", fmt(l.meanDistanceAvg), "", "", fmt(l.stdDistanceAvg)]]
    }
    static let latentHeader = ["channel", "μ A", "μ baseline", "mean |Δμ|", "σ A", "σ baseline", "mean |Δσ|"]

    static func promptRows(_ r: EvalResults) -> (header: [String], rows: [[String]]) {
        let names = r.scorers.map(\.name)
        let header = ["#", "prompt"] + names.flatMap { ["\($0) A", "\($0) baseline", "\($0) W/T/L"] }
        let rows = r.perPrompt.map { p in
            [String(p.index), p.prompt] + names.flatMap { n -> [String] in
                guard let s = p.scores[n] else { return ["", "", ""] }
                return [fmt(s.meanA, 5), fmt(s.meanBaseline, 5), "\(s.wins)/\(s.ties)/\(s.losses)"]
            }
        }
        return (header, rows)
    }

    static func describe(_ s: EvalResults.Side) -> String {
        var t = s.model
        if let l = s.lora { t += " + LoRA \(l) at scale \(s.loraScale.map { fmt(Double($0)) } ?? "?")" } else { t += " (no LoRA)" }
        if s.lan { t += ", LAN" }
        return t
    }

    static func settingsLines(_ r: EvalResults) -> [String] {
        let s = r.sampling
        return ["A: " + describe(r.a), "baseline: " + describe(r.baseline),
                "prompts: \(r.prompts) (\(r.promptCount) prompts × \(s.imagesPerPrompt) images = \(r.pairs) pairs, same seeds on both sides)",
                "sampling: \(s.scheduler), \(s.steps) steps, guidance \(fmt(Double(s.guidance))), \(s.width)x\(s.height), first seed \(s.seed)"
                    + (s.negativePrompt.isEmpty ? "" : ", negative prompt \"\(s.negativePrompt)\""),
                "win rate: (wins + ½·ties) / pairs, ties = |score A − score baseline| ≤ \(fmt(r.tieTolerance)); "
                    + "interval: percentile bootstrap over prompts, \(r.bootstrap.resamples) resamples"]
    }

    // MARK: - Markdown

    static func markdown(_ r: EvalResults) -> String {
        func table(_ header: [String], _ rows: [[String]]) -> String {
            "| " + header.map(HTML.markdownCell).joined(separator: " | ") + " |\n|" + header.map { _ in " --- |" }.joined() + "\n"
                + rows.map { "| " + $0.map(HTML.markdownCell).joined(separator: " | ") + " |\n" }.joined()
        }
        var md = "# hgdpo eval\n\n" + settingsLines(r).map { "- " + HTML.markdownCell($0) + "\n" }.joined() + "\n"
        md += "## Win rates of A over the baseline\n\n"
        md += r.scorers.isEmpty ? "No scorers were given (`--scorer`).\n\n" : table(winRateHeader, winRateRows(r)) + "\n"
        md += "## Colour shift (HSV, paper Table 2)\n\nMeans over all pixels of each side's images, h in [0, 1); shift = 100 · (A − baseline) / baseline. "
            + "The paper averages hue plainly; hue is an angle, so the circular mean (atan2 of the mean sine and cosine) is given too.\n\n"
        md += table(colorHeader, colorRows(r)) + "\n"
        md += "## Latent channel statistics (paper Fig. 5b)\n\nPer channel of the final latents (before the VAE), over \(r.latentStats.images) image pairs.\n\n"
        md += table(latentHeader, latentRows(r)) + "\n"
        let (h, rows) = promptRows(r)
        md += "## Per prompt\n\n" + table(h, rows) + "\n## Grids (baseline | A, one row per seed)\n\n"
        for p in r.perPrompt { md += "- [\(p.index): \(HTML.markdownCell(String(p.prompt.prefix(80))))](\(p.grid))\n" }
        return md
    }

    // MARK: - HTML

    /// Tables and charts of one evaluation (no grids); `h` is the heading level of its sections.
    public static func summaryHTML(_ r: EvalResults, h: Int = 2) -> String {
        var body = "<ul>" + settingsLines(r).map { "<li>\(HTML.escape($0))</li>" }.joined() + "</ul>\n"
        body += "<h\(h)>Win rates of A over the baseline</h\(h)>\n"
        if r.scorers.isEmpty {
            body += "<p class=\"note\">No scorers were given (--scorer).</p>\n"
        } else {
            body += HTML.table(header: winRateHeader, rows: winRateRows(r))
            body += "<div class=\"charts\">" + SVGChart.bars(
                title: "Win rate of A (95% bootstrap interval)",
                bars: r.scorers.map { .init(label: $0.name, value: $0.winRate, low: $0.ciLow, high: $0.ciHigh) },
                yLabel: "win rate", reference: 0.5, range: (0, 1)) + "</div>\n"
        }
        body += "<h\(h)>Colour shift (HSV, paper Table 2)</h\(h)>\n<p class=\"note\">Means over all pixels of each side's images, "
            + "h in [0, 1); shift = 100 · (A − baseline) / baseline. The paper averages hue plainly; hue is an angle, so the circular "
            + "mean (atan2 of the mean sine and cosine) is given too.</p>\n"
        body += HTML.table(header: colorHeader, rows: colorRows(r), textColumns: [0, 4])
        let c = r.colorShift
        body += "<div class=\"charts\">" + SVGChart.bars(
            title: "HSV shift of A relative to the baseline (%)",
            bars: [.init(label: "hue (circular)", value: c.h), .init(label: "hue (plain)", value: c.hPlain),
                   .init(label: "saturation", value: c.s), .init(label: "value", value: c.v)],
            yLabel: "% change") + "</div>\n"
        body += "<h\(h)>Latent channel statistics (paper Fig. 5b)</h\(h)>\n<p class=\"note\">Per channel of the final latents (before "
            + "the VAE), over \(r.latentStats.images) image pairs: the mean over images of the distance between the two sides' "
            + "channel means (μ) and standard deviations (σ).</p>\n"
        body += HTML.table(header: latentHeader, rows: latentRows(r))
        return body
    }

    static func html(_ r: EvalResults, folder: String, grids: Int) throws -> String {
        var body = "<h1>hgdpo eval</h1>\n" + summaryHTML(r)
        let (h, rows) = promptRows(r)
        body += "<h2>Per prompt</h2>\n" + HTML.table(header: h, rows: rows, textColumns: [1])
        body += "<h2>Grids: baseline | A, one row per seed</h2>\n"
        let shown = r.perPrompt.prefix(grids)
        if shown.count < r.perPrompt.count {
            body += "<p class=\"note\">The first \(shown.count) of \(r.perPrompt.count) prompts; all grids are in grids/.</p>\n"
        }
        body += "<div class=\"figures\">\n"
        for p in shown {
            body += try HTML.figure(imageFile: (folder as NSString).appendingPathComponent(p.grid),
                                    caption: "\(p.index): \(p.prompt) (seeds \(p.seeds.map(String.init).joined(separator: ", ")))", maxSide: 768)
        }
        body += "</div>\n"
        return HTML.page(title: "hgdpo eval: \(r.a.lora ?? r.a.model) vs \(r.baseline.lora ?? r.baseline.model)", body: body)
    }
}
