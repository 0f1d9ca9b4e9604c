// The one chart writer of both reports: inline SVG (no script, no network), line charts for training curves and bar
// charts with interval whiskers for win rates and colour shifts. Every chart has the same frame: a plot area filled
// with `plotFill` (the browser launch test finds the charts by that colour), grid lines at "nice" ticks (1, 2, 5 × 10^k),
// axis labels, a title, and a legend when there are several series.
import Foundation

public enum SVGChart {
    public struct Series {
        public var name: String
        public var points: [(x: Double, y: Double)]
        public init(name: String, points: [(x: Double, y: Double)]) { self.name = name; self.points = points }
    }

    public struct Bar {
        public var label: String
        public var value: Double?
        /// Interval whisker (both or neither).
        public var low: Double?, high: Double?
        public init(label: String, value: Double?, low: Double? = nil, high: Double? = nil) {
            self.label = label; self.value = value; self.low = low; self.high = high
        }
    }

    public static let palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    /// The plot area's fill, rgb(251, 251, 254): nothing else on the pages uses it.
    public static let plotFill = "#fbfbfe"
    static let margin = (left: 66.0, right: 14.0, top: 30.0, bottom: 46.0)     // whole pixels (crisp lines)
    /// Longest series drawn point by point; longer ones keep each bucket's first, lowest, highest and last point.
    static let maxPoints = 1600

    // MARK: - Line chart

    public static func line(title: String, series: [Series], xLabel: String, width: Double = 560, height: Double = 280) -> String {
        let all = series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite }
        var svg = frameStart(title: title, width: width, height: height)
        guard !all.isEmpty else {
            return svg + emptyNote(width: width, height: height) + "</svg>"
        }
        let xs = paddedRange(all.map(\.x).min()!, all.map(\.x).max()!)
        let ys = paddedRange(all.map(\.y).min()!, all.map(\.y).max()!)
        let plot = Plot(width: width, height: height, x: xs, y: ys)
        // With a legend the legend row takes the x-axis label's place (the axis is "step" in every report chart).
        svg += plot.axes(xLabel: series.count > 1 ? nil : xLabel, yLabel: nil)
        for (k, s) in series.enumerated() {
            let color = palette[k % palette.count]
            var d = "", open = false, drawn = 0
            for p in decimate(s.points) {
                guard p.x.isFinite && p.y.isFinite else { open = false; continue }   // a gap for null / NaN values
                d += (open ? "L" : "M") + String(format: "%.1f,%.1f", plot.px(p.x), plot.py(p.y))
                open = true; drawn += 1
            }
            if drawn == 1, let p = s.points.first(where: { $0.x.isFinite && $0.y.isFinite }) {
                svg += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%@\"/>", plot.px(p.x), plot.py(p.y), color)
            } else if drawn > 1 {
                svg += "<path d=\"\(d)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.6\" stroke-linejoin=\"round\"/>"
            }
        }
        if series.count > 1 { svg += legend(series.map(\.name), plot: plot) }
        return svg + "</svg>"
    }

    /// At most `maxPoints` points: per bucket of consecutive points, the first, the lowest, the highest and the last,
    /// so spikes survive.
    static func decimate(_ points: [(x: Double, y: Double)]) -> [(x: Double, y: Double)] {
        guard points.count > maxPoints else { return points }
        let bucket = (points.count + maxPoints / 4 - 1) / (maxPoints / 4)
        var out: [(x: Double, y: Double)] = []
        for start in stride(from: 0, to: points.count, by: bucket) {
            let chunk = points[start..<min(start + bucket, points.count)]
            let finite = chunk.indices.filter { chunk[$0].y.isFinite }
            var keep: Set<Int> = [chunk.startIndex, chunk.endIndex - 1]
            if let lo = finite.min(by: { chunk[$0].y < chunk[$1].y }) { keep.insert(lo) }
            if let hi = finite.max(by: { chunk[$0].y < chunk[$1].y }) { keep.insert(hi) }
            out += keep.sorted().map { chunk[$0] }
        }
        return out
    }

    // MARK: - Bar chart

    /// Bars from 0 (or `reference`'s line, drawn dashed) with optional whiskers; `range` fixes the y axis.
    public static func bars(title: String, bars: [Bar], yLabel: String, reference: Double? = nil, range: (Double, Double)? = nil,
                            width: Double = 560, height: Double = 280) -> String {
        var svg = frameStart(title: title, width: width, height: height)
        let values = bars.flatMap { [$0.value, $0.low, $0.high] }.compactMap { $0 }.filter(\.isFinite)
        guard !bars.isEmpty else { return svg + emptyNote(width: width, height: height) + "</svg>" }
        let ys: (Double, Double)
        if let range { ys = range } else {
            let lo = min(0, values.min() ?? 0, reference ?? 0), hi = max(0, values.max() ?? 0, reference ?? 0)
            ys = paddedRange(lo, hi)
        }
        let plot = Plot(width: width, height: height, x: (0, Double(bars.count)), y: ys)
        svg += plot.axes(xLabel: nil, yLabel: yLabel, categories: bars.map(\.label))
        let slot = plot.plotWidth / Double(bars.count), barWidth = min(64, slot * 0.6)
        let zero = plot.py(min(max(0, ys.0), ys.1))
        for (k, b) in bars.enumerated() {
            let cx = plot.left + slot * (Double(k) + 0.5)
            guard let v = b.value, v.isFinite else {
                svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\" fill=\"#777\">n/a</text>", cx, zero - 4)
                continue
            }
            let y = plot.py(v)
            let color = palette[k % palette.count]
            svg += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%@\"/>",
                          cx - barWidth / 2, min(y, zero), barWidth, max(1, abs(zero - y)), color)
            var labelY = min(y, zero) - 4
            if let lo = b.low, let hi = b.high, lo.isFinite, hi.isFinite {
                let y0 = plot.py(lo), y1 = plot.py(hi), cap = barWidth / 4
                svg += String(format: "<path d=\"M%.1f,%.1fV%.1fM%.1f,%.1fH%.1fM%.1f,%.1fH%.1f\" stroke=\"#222\" stroke-width=\"1.5\" fill=\"none\"/>",
                              cx, y0, y1, cx - cap, y0, cx + cap, cx - cap, y1, cx + cap)
                labelY = min(labelY, y1 - 4)
            }
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\" fill=\"#222\">%@</text>",
                          cx + barWidth / 2 + 2, max(plot.top + 10, labelY), HTML.escape(fmt(v, 3)))
        }
        if let r = reference, r >= ys.0, r <= ys.1 {
            svg += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#555\" stroke-dasharray=\"5,4\"/>",
                          plot.left, plot.left + plot.plotWidth, plot.py(r), plot.py(r))
        }
        return svg + "</svg>"
    }

    // MARK: - Frame, axes, ticks

    struct Plot {
        let width: Double, height: Double
        let x: (Double, Double), y: (Double, Double)
        var left: Double { margin.left }
        var top: Double { margin.top }
        var plotWidth: Double { width - margin.left - margin.right }
        var plotHeight: Double { height - margin.top - margin.bottom }
        func px(_ v: Double) -> Double { left + (v - x.0) / (x.1 - x.0) * plotWidth }
        func py(_ v: Double) -> Double { top + (1 - (v - y.0) / (y.1 - y.0)) * plotHeight }
        /// A 1-pixel line's coordinate on a pixel's centre, so it covers one row or column instead of blending two.
        func crisp(_ v: Double) -> Double { v.rounded(.down) + 0.5 }

        /// Plot area, grid lines, tick labels; x ticks are numbers, or `categories` under their slots.
        func axes(xLabel: String?, yLabel: String?, categories: [String]? = nil) -> String {
            var s = String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%@\" stroke=\"#b8b8c4\"/>",
                           crisp(left), crisp(top), plotWidth.rounded(), plotHeight.rounded(), plotFill)
            for t in niceTicks(y.0, y.1) {
                let yy = crisp(py(t))
                s += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4ec\"/>", left, left + plotWidth, yy, yy)
                s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\" fill=\"#333\">%@</text>",
                            left - 5, yy + 4, HTML.escape(fmt(t, 3)))
            }
            if let categories {
                let slot = plotWidth / Double(categories.count)
                for (k, c) in categories.enumerated() {
                    let label = c.count > 18 ? String(c.prefix(17)) + "…" : c
                    s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\" fill=\"#333\">%@</text>",
                                left + slot * (Double(k) + 0.5), top + plotHeight + 16, HTML.escape(label))
                }
            } else {
                for t in niceTicks(x.0, x.1) {
                    let xx = crisp(px(t))
                    s += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4ec\"/>", xx, xx, top, top + plotHeight)
                    s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\" fill=\"#333\">%@</text>",
                                xx, top + plotHeight + 15, HTML.escape(fmt(t, 4)))
                }
            }
            if let xLabel {
                s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\" fill=\"#333\">%@</text>",
                            left + plotWidth / 2, height - 8, HTML.escape(xLabel))
            }
            if let yLabel {
                s += String(format: "<text x=\"14\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\" fill=\"#333\" transform=\"rotate(-90 14 %.1f)\">%@</text>",
                            top + plotHeight / 2, top + plotHeight / 2, HTML.escape(yLabel))
            }
            return s
        }
    }

    static func frameStart(title: String, width: Double, height: Double) -> String {
        String(format: "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" role=\"img\">",
               width, height, width, height)
            + "<title>\(HTML.escape(title))</title>"
            + String(format: "<text x=\"%.1f\" y=\"19\" font-size=\"14\" font-weight=\"600\" fill=\"#1d1d1f\">%@</text>", margin.left, HTML.escape(title))
    }

    static func emptyNote(width: Double, height: Double) -> String {
        String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\" fill=\"#777\">no finite values</text>",
               width / 2, height / 2)
    }

    /// One row of entries under the x axis, in the x-axis label's place.
    static func legend(_ names: [String], plot: Plot) -> String {
        var s = "", x = plot.left
        let y = plot.height - 8
        for (k, n) in names.enumerated() {
            s += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%@\" stroke-width=\"3\"/>",
                        x, x + 14, y - 4, y - 4, palette[k % palette.count])
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"#333\">%@</text>", x + 18, y, HTML.escape(n))
            x += 24 + Double(n.count) * 6.5
        }
        return s
    }

    /// A range that is never empty: equal ends are widened by 10 % of their size (or 1 around 0).
    static func paddedRange(_ lo: Double, _ hi: Double) -> (Double, Double) {
        if hi > lo { let pad = (hi - lo) * 0.05; return (lo - pad, hi + pad) }
        let d = lo == 0 ? 1 : abs(lo) * 0.1
        return (lo - d, hi + d)
    }

    /// About five ticks at 1, 2 or 5 × 10^k inside [lo, hi].
    static func niceTicks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        guard hi > lo, lo.isFinite, hi.isFinite else { return [] }
        let raw = (hi - lo) / Double(count)
        let mag = pow(10, (log10(raw)).rounded(.down))
        let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
        // k·step (not a running sum, which would print 0.6000000000000001), each rounded to the step's decimals.
        let first = Int((lo / step - 1e-9).rounded(.up)), last = Int((hi / step + 1e-9).rounded(.down))
        guard last >= first else { return [] }
        let decimals = max(0, -Int(log10(step).rounded(.down)))
        let scale = pow(10, Double(decimals))
        return (first...min(last, first + 50)).map { k in (Double(k) * step * scale).rounded() / scale }
    }
}
