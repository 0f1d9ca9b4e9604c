// Text from users (prompts, file names, ids, error messages) inside HTML reports, made safe: every report writer
// passes such text through `HTML.text` (element content and quoted attribute values alike) and data embedded in a
// <script> block through `HTML.scriptJSON`, so a prompt holding `<script>`, quotes, `&` or control characters is shown
// as the characters it holds and never becomes markup. Bytes that are not UTF-8 are shown as U+FFFD.
// Ref: the HTML Living Standard, 13.1.2.6 (restrictions on raw text) and 13.2.5 (tokenization).

public enum HTML {
    /// `s` as HTML text: `& < > " '` as character references; NUL and the C0/C1 control characters other than tab,
    /// line feed and carriage return (which the HTML parser drops or reports as errors) as U+FFFD. Line breaks are
    /// kept (shown as spaces unless the element has `white-space: pre-wrap`).
    public static func text(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for u in s.unicodeScalars {
            switch u {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            case "\t", "\n", "\r": out.unicodeScalars.append(u)
            default:
                if u.value < 0x20 || (0x7F...0x9F).contains(u.value) { out += "\u{FFFD}" } else { out.unicodeScalars.append(u) }
            }
        }
        return out
    }

    /// Raw bytes (e.g. a line of a file that may not be UTF-8) as HTML text: invalid sequences become U+FFFD.
    public static func text(bytes: [UInt8]) -> String { text(String(decoding: bytes, as: UTF8.self)) }

    /// Serialized JSON made safe inside `<script>…</script>`: `<`, `>` and `&` as \u escapes (no `</script>` or
    /// `<!--` can end or change the block), and U+2028/U+2029 escaped (line terminators in older JavaScript).
    /// The JSON value is unchanged.
    public static func scriptJSON(_ json: String) -> String {
        var out = ""
        out.reserveCapacity(json.utf8.count)
        for u in json.unicodeScalars {
            switch u {
            case "<": out += "\\u003c"
            case ">": out += "\\u003e"
            case "&": out += "\\u0026"
            case "\u{2028}": out += "\\u2028"
            case "\u{2029}": out += "\\u2029"
            default: out.unicodeScalars.append(u)
            }
        }
        return out
    }
}
