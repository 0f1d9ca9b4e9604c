// Any text a user can put in a prompt is safe in HTML reports (SafeText.html) and round-trips through PNG text chunks
// exactly.
import Foundation
import TestSupport
import XCTest
@testable import IO

final class SafeTextTests: XCTestCase {
    static let hostile = "<script>alert(\"x\" + 'y')</script> & <img src=x onerror=alert(1)>\nline 2\r\n\ttab – naïve 🙂 \u{2028}</textarea>"

    func testHTMLTextHasNoMarkupLeft() {
        let escaped = SafeText.html(Self.hostile)
        for c in ["<", ">", "\"", "'"] { XCTAssertFalse(escaped.contains(c), escaped) }
        XCTAssertEqual(SafeText.html("a<b>&\"c\"'d'"), "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;")
        // Reading the character references back gives the text (line breaks and tabs kept).
        let decoded = escaped.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&#39;", with: "'")
            .replacingOccurrences(of: "&amp;", with: "&")
        XCTAssertEqual(decoded, Self.hostile)
        // Control characters and NUL become U+FFFD; so do invalid UTF-8 bytes, when text is decoded.
        XCTAssertEqual(SafeText.html("a\u{0}b\u{1B}c\u{85}d\u{7F}"), "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}")
        XCTAssertEqual(SafeText.html(String(decoding: [0x61, 0xFF, 0x3C, 0xC3, 0x28, 0x62], as: UTF8.self)), "a\u{FFFD}&lt;\u{FFFD}(b")
    }

    func testPNGTextChunksRoundTripAnyText() throws {
        let path = try temporaryDirectory(self) + "/t.png"
        let invalidUTF8 = String(decoding: [0x61, 0xFF, 0xFE, 0x62], as: UTF8.self)   // as a prompt file's bytes would decode
        let values = [("prompt", Self.hostile), ("latin1", "café \"quoted\" <b>\n"), ("replaced", invalidUTF8),
                      ("controls", "bell\u{7} esc\u{1B} del\u{7F}"), ("empty", "")]
        try PNG.writeBytes(try ByteImage(width: 2, height: 2, channels: 3, pixels: [UInt8](repeating: 7, count: 12)),
                           to: path, text: values)
        let (_, text) = try PNG.readBytesWithText(path)
        for (k, v) in values { XCTAssertEqual(text[k], v, k) }
        XCTAssertEqual(text["replaced"], "a\u{FFFD}\u{FFFD}b")
        // NUL cannot be stored in a PNG text chunk: a clear error naming the file and key, nothing written.
        let nul = path + ".nul.png"
        XCTAssertThrowsError(try PNG.writeBytes(try ByteImage(width: 1, height: 1, channels: 3, pixels: [0, 0, 0]), to: nul,
                                                text: [("prompt", "a\u{0}b")])) { error in
            XCTAssertTrue("\(error)".contains(nul) && "\(error)".contains("\"prompt\""), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: nul))
    }
}
