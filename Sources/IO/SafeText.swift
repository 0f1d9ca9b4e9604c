// Text from users (prompts, file names, ids, error messages) inside HTML reports, made safe: report writers pass such
// text through `SafeText.html` (Evaluation's `HTML.escape` is this), so a prompt holding `<script>`, quotes, `&` or
// control characters is shown as the characters it holds and never becomes markup. (Invalid UTF-8 never reaches it:
// Swift strings are Unicode, and the readers either refuse it naming the file and line, or decode it as U+FFFD.)
// Ref: the HTML Living Standard, 13.1.2.6 (restrictions on text contents) and 13.2.5 (tokenization).

public enum SafeText {
    /// `s` as HTML text, for element content and quoted attribute values alike: `& < > " '` as character references;
    /// NUL and the C0/C1 control characters other than tab, line feed and carriage return (which HTML forbids) as
    /// U+FFFD. Line breaks are kept (shown as spaces unless the element has `white-space: pre-wrap`).
    public static func html(_ s: String) -> String {
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
            case _ where u.value < 0x20 || (0x7F..<0xA0).contains(u.value): out += "\u{FFFD}"
            default: out.unicodeScalars.append(u)
            }
        }
        return out
    }
}
