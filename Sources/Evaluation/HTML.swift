// The pieces both reports (eval's report.html, `hgdpo report`'s page) are made of: escaping, one page shell with one
// stylesheet, tables, and images inlined as data: URIs, so a page is one file that opens with no network (no script,
// no CDN, no external file). The stylesheet's greys are neutral (r = g = b): only the charts' plot areas use the
// bluish greys the browser launch test looks for (SVGChart.plotFill).
import Foundation
import IO
import Sampling

public enum HTML {
    /// Text for an HTML element or a quoted attribute (IO's SafeText.html, shared by every report): & < > " ' escaped;
    /// control characters other than tab, newline and carriage return (which HTML forbids) become U+FFFD.
    public static func escape(_ s: String) -> String { SafeText.html(s) }

    /// Text for a Markdown table cell: HTML-escaped (Markdown renders inline HTML), `|` and backslash escaped,
    /// newlines as spaces.
    public static func markdownCell(_ s: String) -> String {
        escape(s).replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "|", with: "\\|")
            .replacingOccurrences(of: "\r\n", with: " ").replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\r", with: " ")
    }

    /// A whole page: title, one stylesheet, the body's HTML as given (already escaped).
    public static func page(title: String, body: String) -> String {
        """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta name="generator" content="hgdpo">
        <title>\(escape(title))</title>
        <style>
        body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto; max-width: 1180px;
               padding: 0 16px; color: #1d1d1f; background: #ffffff; line-height: 1.4; }
        h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
        h3 { font-size: 15px; }
        table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
        th, td { border: 1px solid #d0d0d8; padding: 3px 8px; text-align: right; vertical-align: top; }
        th { background: #f0f0f0; } td.text, th.text { text-align: left; max-width: 560px; white-space: pre-wrap; word-break: break-word; }
        .charts { display: flex; flex-wrap: wrap; gap: 12px; }
        .chart { border: 1px solid #dddddd; background: #ffffff; }
        .figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
        figure { margin: 8px 0 12px; max-width: 560px; }
        figcaption { font-size: 13px; color: #444; white-space: pre-wrap; word-break: break-word; }
        img.grid { height: 280px; width: auto; max-width: 100%; object-fit: contain; image-rendering: pixelated; border: 1px solid #ddd; }
        pre { background: #f5f5f5; padding: 8px; overflow-x: auto; font-size: 12px; white-space: pre-wrap; word-break: break-word; }
        .note { color: #555; font-size: 13px; }
        </style>
        </head>
        <body>
        \(body)
        </body>
        </html>

        """
    }

    /// A table; `header` and `rows` are escaped here. Columns listed in `textColumns` are left-aligned.
    public static func table(header: [String], rows: [[String]], textColumns: Set<Int> = [0]) -> String {
        func cell(_ tag: String, _ k: Int, _ s: String) -> String {
            "<\(tag)\(textColumns.contains(k) ? " class=\"text\"" : "")>\(escape(s))</\(tag)>"
        }
        var out = "<table>\n<tr>" + header.enumerated().map { cell("th", $0, $1) }.joined() + "</tr>\n"
        for r in rows { out += "<tr>" + r.enumerated().map { cell("td", $0, $1) }.joined() + "</tr>\n" }
        return out + "</table>\n"
    }

    /// A PNG as a data: URI, scaled down (PIL bilinear) so its longer side is at most `maxSide` pixels.
    public static func pngDataURI(_ image: ByteImage, maxSide: Int = 1024) throws -> String {
        var im = image
        let longest = max(image.width, image.height)
        if longest > maxSide {
            let f = Double(maxSide) / Double(longest)
            im = image.resizedLikePIL(width: max(1, Int((Double(image.width) * f).rounded())),
                                      height: max(1, Int((Double(image.height) * f).rounded())))
        }
        let tmp = (NSTemporaryDirectory() as NSString).appendingPathComponent("hgdpo-inline-\(getpid())-\(UUID().uuidString).png")
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try PNG.writeBytes(im, to: tmp)
        guard let data = FileManager.default.contents(atPath: tmp) else { throw EvalError("\(tmp): cannot read back the inlined PNG") }
        return "data:image/png;base64," + data.base64EncodedString()
    }

    /// A figure with an inlined image file (scaled down) and an escaped caption.
    public static func figure(imageFile: String, caption: String, maxSide: Int = 1024) throws -> String {
        let image = try PNG.readBytes(imageFile, channels: 3)
        return "<figure><img class=\"grid\" alt=\"\(escape(caption))\" src=\"\(try pngDataURI(image, maxSide: maxSide))\">"
            + "<figcaption>\(escape(caption))</figcaption></figure>\n"
    }
}

/// Numbers as the reports print them: up to `digits` significant digits, "–" for nil or non-finite.
func fmt(_ x: Double?, _ digits: Int = 4) -> String {
    guard let x, x.isFinite else { return "–" }
    if x == 0 { return "0" }
    if abs(x) >= 1e6 || abs(x) < 1e-4 { return String(format: "%.\(max(0, digits - 1))e", x) }
    let decimals = max(0, digits - 1 - Int(log10(abs(x)).rounded(.down)))
    var s = String(format: "%.\(decimals)f", x)
    if s.contains(".") { while s.hasSuffix("0") { s.removeLast() }; if s.hasSuffix(".") { s.removeLast() } }
    return s
}
