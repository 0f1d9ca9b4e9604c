// Config files in a flat YAML subset, for `hgdpo train --config run.yaml`: one `key: value` a line, `#` comments,
// blank lines; values are numbers, true/false, null (or ~), 'single' or "double" quoted strings (JSON escapes in
// double quotes), bare strings, and flow lists `[a, b]` of those. Nested mappings, block lists and multi-line
// values are refused with the line number: the trainer's config is flat, and a silent misreading is worse than an error.
import Foundation

public struct FlatYAMLError: Error, UserInputError, CustomStringConvertible, Equatable {
    public let path: String, line: Int, detail: String
    public var description: String { "\(path):\(line): \(detail)" }
}

public enum FlatYAML {
    /// The document as JSON text (an object with the keys in file order), ready for JSONDecoder.
    public static func json(from text: String, path: String) throws -> String {
        var members: [String] = []
        var seen: Set<String> = []
        // "\r\n" is one Character in Swift: normalise line ends before splitting.
        let lines = text.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: false)
        for (index, raw) in lines.enumerated() {
            let lineNumber = index + 1
            func fail(_ d: String) -> FlatYAMLError { FlatYAMLError(path: path, line: lineNumber, detail: d) }
            let line = stripComment(String(raw))
            if line.trimmingCharacters(in: .whitespaces).isEmpty || line == "---" { continue }
            if line.first == " " || line.first == "\t" {
                throw fail("indented line: nested mappings and block lists are not supported (flat `key: value` lines only)")
            }
            if line.hasPrefix("- ") { throw fail("block lists are not supported; write `key: [a, b]`") }
            guard let colon = line.firstIndex(of: ":") else { throw fail("expected `key: value`, found '\(line)'") }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            let valueText = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            guard !key.isEmpty, key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == "." }) else {
                throw fail("bad key '\(key)'")
            }
            guard seen.insert(key).inserted else { throw fail("key '\(key)' given twice") }
            guard !valueText.isEmpty else { throw fail("key '\(key)' has no value (nested mappings are not supported)") }
            members.append("\(jsonString(key)):\(try scalarOrList(valueText, fail: fail))")
        }
        return "{" + members.joined(separator: ",") + "}"
    }

    /// The line without a `#` comment (one that starts the line or follows whitespace, outside quotes).
    static func stripComment(_ line: String) -> String {
        var quote: Character? = nil
        var previous: Character = " "
        var out = ""
        for ch in line {
            if let q = quote {
                if ch == q && previous != "\\" { quote = nil }
            } else if ch == "\"" || ch == "'" {
                quote = ch
            } else if ch == "#" && (previous == " " || previous == "\t") {
                break
            }
            out.append(ch)
            previous = ch
        }
        if out.hasPrefix("#") { return "" }
        return String(out.reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }

    static func scalarOrList(_ text: String, fail: (String) -> FlatYAMLError) throws -> String {
        if text.hasPrefix("[") {
            guard text.hasSuffix("]") else { throw fail("unterminated list '\(text)'") }
            let inner = text.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
            if inner.isEmpty { return "[]" }
            return "[" + (try splitList(inner, fail: fail).map { try scalar($0, fail: fail) }).joined(separator: ",") + "]"
        }
        if text.hasPrefix("{") || text.hasPrefix("|") || text.hasPrefix(">") || text.hasPrefix("&") || text.hasPrefix("*") {
            throw fail("'\(text.prefix(1))' values (flow mappings, block scalars, anchors) are not supported")
        }
        return try scalar(text, fail: fail)
    }

    static func splitList(_ text: String, fail: (String) -> FlatYAMLError) throws -> [String] {
        var items: [String] = [], current = "", quote: Character? = nil, previous: Character = " "
        for ch in text {
            if let q = quote { if ch == q && previous != "\\" { quote = nil } }
            else if ch == "\"" || ch == "'" { quote = ch }
            else if ch == "[" || ch == "{" { throw fail("nested lists and mappings are not supported") }
            if ch == "," && quote == nil { items.append(current.trimmingCharacters(in: .whitespaces)); current = "" }
            else { current.append(ch) }
            previous = ch
        }
        items.append(current.trimmingCharacters(in: .whitespaces))
        if items.contains(where: \.isEmpty) { throw fail("empty list item in '[\(text)]'") }
        return items
    }

    static func scalar(_ text: String, fail: (String) -> FlatYAMLError) throws -> String {
        if text.hasPrefix("\"") {
            guard text.count >= 2, text.hasSuffix("\""),
                  let data = text.data(using: .utf8),
                  let s = try? JSONDecoder().decode(String.self, from: data) else {
                throw fail("bad double-quoted string \(text)")
            }
            return jsonString(s)
        }
        if text.hasPrefix("'") {
            guard text.count >= 2, text.hasSuffix("'") else { throw fail("unterminated single-quoted string \(text)") }
            return jsonString(String(text.dropFirst().dropLast()).replacingOccurrences(of: "''", with: "'"))
        }
        switch text {
        case "true", "True", "TRUE": return "true"
        case "false", "False", "FALSE": return "false"
        case "null", "Null", "NULL", "~": return "null"
        default: break
        }
        if isNumber(text) {
            if let i = Int64(text.hasPrefix("+") ? String(text.dropFirst()) : text) { return String(i) }
            return normalizeNumber(text)
        }
        return jsonString(text)
    }

    /// YAML 1.2 core-schema numbers (decimal); `.5` and `5.` become JSON-valid.
    static func isNumber(_ t: String) -> Bool {
        t.range(of: #"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"#, options: .regularExpression) != nil
    }

    static func normalizeNumber(_ t: String) -> String {
        var s = t.hasPrefix("+") ? String(t.dropFirst()) : t
        let negative = s.hasPrefix("-")
        if negative { s.removeFirst() }
        if s.hasPrefix(".") { s = "0" + s }
        s = s.replacingOccurrences(of: ".e", with: ".0e").replacingOccurrences(of: ".E", with: ".0E")
        if s.hasSuffix(".") { s += "0" }
        return (negative ? "-" : "") + s
    }

    static func jsonString(_ s: String) -> String {
        var out = ""
        JSONValue.escape(s, into: &out)
        return out
    }
}
