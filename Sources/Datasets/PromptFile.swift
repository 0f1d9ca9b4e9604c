// Prompt files as `hgdpo eval` (and the dataset builder's `pool`) read them:
//   - plain text: one prompt per line, blank lines skipped, "\r\n" line ends accepted;
//   - TSV with a header line (the first line has a tab), e.g. PartiPrompts' PartiPrompts.tsv
//     (`Prompt  Category  Challenge  Note`): the prompt column is `--prompt-column` (default: the column named
//     "prompt", any case), and `--category NAME` keeps the rows whose `Category` column is NAME (any case), as the
//     paper's test set is PartiPrompts' "People" rows.
// Every problem (unreadable file, bad UTF-8, a missing column, a short row, no prompts left) is a PromptFileError naming
// the file and, where there is one, the line.
import Foundation
import IO

public struct PromptFileError: Error, UserInputError, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum PromptFile {
    /// The prompts of `path`, in file order. `column` and `category` apply to TSV files only.
    public static func read(_ path: String, column: String? = nil, category: String? = nil) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PromptFileError("\(path): cannot read the prompts file")
        }
        // Split on "\n" bytes first, so a bad byte sequence is reported with its line number.
        var lines: [String] = []
        for (i, raw) in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            let bytes = raw.last == UInt8(ascii: "\r") ? raw.dropLast() : raw
            guard let line = String(data: Data(bytes), encoding: .utf8) else {
                throw PromptFileError("\(path): line \(i + 1) is not valid UTF-8")
            }
            if line.unicodeScalars.contains("\0") { throw PromptFileError("\(path): line \(i + 1) contains a NUL character") }
            lines.append(line)
        }
        if data.last == UInt8(ascii: "\n") { lines.removeLast() }
        if lines.first?.hasPrefix("\u{FEFF}") == true { lines[0].removeFirst() }   // a UTF-8 byte-order mark
        func blank(_ s: String) -> Bool { s.trimmingCharacters(in: .whitespaces).isEmpty }

        let prompts: [String]
        if let header = lines.first, header.contains("\t") {
            let names = header.components(separatedBy: "\t").map { $0.trimmingCharacters(in: .whitespaces) }
            func index(of name: String, what: String) throws -> Int {
                guard let k = names.firstIndex(where: { $0.caseInsensitiveCompare(name) == .orderedSame }) else {
                    throw PromptFileError("\(path): line 1 (header) has no column '\(name)' (\(what)); columns: "
                                          + names.joined(separator: ", "))
                }
                return k
            }
            let promptColumn = try index(of: column ?? "prompt", what: column == nil ? "the default prompt column" : "--prompt-column")
            let categoryColumn = try category.map { _ in try index(of: "category", what: "needed by --category") }
            var kept: [String] = []
            for (i, line) in lines.enumerated().dropFirst() where !blank(line) {
                let fields = line.components(separatedBy: "\t")
                let needed = max(promptColumn, categoryColumn ?? 0)
                guard fields.count > needed else {
                    throw PromptFileError("\(path): line \(i + 1) has \(fields.count) tab-separated fields, the header has "
                                          + "\(names.count) (column '\(names[needed])' is missing)")
                }
                if let category, let c = categoryColumn,
                   fields[c].trimmingCharacters(in: .whitespaces).caseInsensitiveCompare(category) != .orderedSame { continue }
                let prompt = fields[promptColumn]
                guard !blank(prompt) else { throw PromptFileError("\(path): line \(i + 1): the prompt is empty") }
                kept.append(prompt)
            }
            prompts = kept
            if prompts.isEmpty {
                throw PromptFileError("\(path): no prompts" + (category.map { " in category '\($0)'" } ?? ""))
            }
        } else {
            if column != nil { throw PromptFileError("\(path): --prompt-column needs a TSV file with a header line (tab-separated)") }
            if category != nil { throw PromptFileError("\(path): --category needs a TSV file with a Category column") }
            prompts = lines.filter { !blank($0) }
            if prompts.isEmpty { throw PromptFileError("\(path): no prompts (only blank lines)") }
        }
        return prompts
    }
}
