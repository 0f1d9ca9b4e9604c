// The pieces of both pages: escaping of user text, the chart writer's ticks, gaps, whiskers and decimation, and the
// order of the training report's charts.
import Foundation
import TestSupport
import XCTest
@testable import Evaluation

final class ReportPiecesTests: XCTestCase {
    func testHTMLEscape() {
        XCTAssertEqual(HTML.escape(#"<script>alert("x" & 'y')</script>"#),
                       "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;")
        XCTAssertEqual(HTML.escape("tab\tnew\nline\r"), "tab\tnew\nline\r")
        XCTAssertEqual(HTML.escape("nul\u{0}bell\u{7}del\u{7F}c1\u{85}"), "nul\u{FFFD}bell\u{FFFD}del\u{FFFD}c1\u{FFFD}")
        // Invalid UTF-8 arrives as U+FFFD (decoding replaced it) and stays; other scripts and emoji pass through.
        let decoded = String(decoding: [0x61, 0xFF, 0xFE, 0x62] as [UInt8], as: UTF8.self)
        XCTAssertEqual(HTML.escape(decoded), "a\u{FFFD}\u{FFFD}b")
        XCTAssertEqual(HTML.escape("Ärger 人 🙂"), "Ärger 人 🙂")
        XCTAssertEqual(HTML.markdownCell("a | b\nc\\d <i>"), "a \\| b c\\\\d &lt;i&gt;")
    }

    func testTableAndPageEscapeEverything() {
        let t = HTML.table(header: ["<h>"], rows: [["<td>&"]])
        XCTAssertTrue(t.contains("<th class=\"text\">&lt;h&gt;</th>"), t)
        XCTAssertTrue(t.contains("<td class=\"text\">&lt;td&gt;&amp;</td>"), t)
        let page = HTML.page(title: "</title><script>", body: "<p>ok</p>")
        XCTAssertTrue(page.contains("<title>&lt;/title&gt;&lt;script&gt;</title>"))
        XCTAssertFalse(page.contains("<script"))
    }

    func testNiceTicksAndNumbers() {
        XCTAssertEqual(SVGChart.niceTicks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1])
        XCTAssertEqual(SVGChart.niceTicks(-0.3, 0.45), [-0.2, 0, 0.2, 0.4])        // range 0.75 / 5 = 0.15 → steps of 0.2
        XCTAssertEqual(SVGChart.niceTicks(3, 47), [10, 20, 30, 40])
        XCTAssertEqual(SVGChart.niceTicks(1, 1), [])
        XCTAssertEqual(SVGChart.paddedRange(2, 2).0, 1.8, accuracy: 1e-12)
        XCTAssertEqual(SVGChart.paddedRange(0, 0).1, 1)
        XCTAssertEqual(fmt(0.123456), "0.1235")
        XCTAssertEqual(fmt(1234.6), "1235")
        XCTAssertEqual(fmt(2e-5), "2.000e-05")
        XCTAssertEqual(fmt(nil), "–")
        XCTAssertEqual(fmt(.nan), "–")
        XCTAssertEqual(fmt(0.5), "0.5")
    }

    func testLineChartGapsLegendAndSinglePoints() {
        let svg = SVGChart.line(title: "a <b>", series: [
            .init(name: "x", points: [(1, 1), (2, .nan), (3, 2), (4, 3)]),
            .init(name: "y & z", points: [(2, 5)]),
        ], xLabel: "step")
        XCTAssertTrue(svg.hasPrefix("<svg class=\"chart\""))
        XCTAssertTrue(svg.contains("<title>a &lt;b&gt;</title>"))
        // The NaN breaks the first series into two segments (M…, then M…L…); the one-point series is a circle.
        let path = svg.components(separatedBy: "<path d=\"")[1].components(separatedBy: "\"")[0]
        XCTAssertEqual(path.filter { $0 == "M" }.count, 2, path)
        XCTAssertEqual(path.filter { $0 == "L" }.count, 1, path)
        XCTAssertTrue(svg.contains("<circle"))
        XCTAssertTrue(svg.contains(">y &amp; z</text>"), "legend")
        XCTAssertTrue(svg.contains("fill=\"\(SVGChart.plotFill)\""))
        XCTAssertTrue(SVGChart.line(title: "empty", series: [.init(name: "n", points: [(1, .nan)])], xLabel: "s").contains("no finite values"))
    }

    func testBarChartWhiskersAndReference() {
        let svg = SVGChart.bars(title: "w", bars: [.init(label: "p", value: 0.75, low: 0.6, high: 0.9), .init(label: "q", value: nil)],
                                yLabel: "win rate", reference: 0.5, range: (0, 1))
        // Plot 204 px high from y = 30: value v at 30 + (1 − v)·204.
        XCTAssertTrue(svg.contains(String(format: "V%.1f", 30 + 0.1 * 204)), "whisker to 0.9: \(svg)")
        XCTAssertTrue(svg.contains(String(format: "y=\"%.1f\"", 30 + 0.25 * 204)), "bar top at 0.75")
        XCTAssertTrue(svg.contains("stroke-dasharray"), "reference line")
        XCTAssertTrue(svg.contains(">n/a</text>"))
        XCTAssertEqual(svg.components(separatedBy: "<rect").count - 1, 2)   // plot area + one bar
    }

    func testDecimationKeepsSpikes() {
        var points = (0..<10_000).map { (x: Double($0), y: 1.0) }
        points[4321].y = 50
        points[7777].y = -20
        let kept = SVGChart.decimate(points)
        XCTAssertLessThanOrEqual(kept.count, SVGChart.maxPoints)
        XCTAssertTrue(kept.contains { $0.y == 50 })
        XCTAssertTrue(kept.contains { $0.y == -20 })
        XCTAssertEqual(kept.first?.x, 0)
        XCTAssertEqual(kept.last?.x, 9999)
    }

    func testChartGroupsOrder() {
        let groups = RunReport.chartGroups(keys: ["zeta", "lr", "mse_ref_l", "loss", "mse_theta_w", "alpha", "clipped", "grad_norm"])
        XCTAssertEqual(groups, [["loss"], ["mse_theta_w", "mse_ref_l"], ["lr"], ["grad_norm"], ["clipped"], ["alpha"], ["zeta"]])
    }
}
