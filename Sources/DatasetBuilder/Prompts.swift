// The prompt list of a pool: a plain file (one prompt per line, blank lines skipped) or a TSV file with a header row
// (PartiPrompts.tsv: Prompt, Category, Challenge, Note), from which `column` gives the prompt and `categories`, if
// any, keeps only the rows whose `Category` is one of them. Prompt p of the list is the p-th prompt kept.
import Foundation
import IO

public struct PoolPrompt: Sendable, Equatable {
    public let text: String
    /// The TSV row's category, when the file has a Category column.
    public let category: String?
    /// 1-based line in the prompts file.
    public let line: Int
}

public struct PromptFileError: Error, UserInputError, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

public enum PromptFile {
    /// Reads `path`. A TSV is read when `column` is given or the name ends in .tsv (default column `Prompt`).
    public static func read(_ path: String, column: String? = nil, categories: [String] = []) throws -> [PoolPrompt] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PromptFileError(message: "\(path): cannot read the prompts file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw PromptFileError(message: "\(path): not UTF-8 text") }
        var lines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            String(String.UnicodeScalarView(line.last == "\r" ? line.dropLast() : line))
        }
        if text.unicodeScalars.last == "\n" { lines.removeLast() }
        let tsv = column != nil || path.lowercased().hasSuffix(".tsv")
        var prompts: [PoolPrompt] = []
        if !tsv {
            guard categories.isEmpty else {
                throw PromptFileError(message: "\(path): --category needs a TSV prompts file with a Category column (give --prompt-column)")
            }
            for (i, l) in lines.enumerated() where !l.trimmingCharacters(in: .whitespaces).isEmpty {
                prompts.append(PoolPrompt(text: l, category: nil, line: i + 1))
            }
        } else {
            guard let header = lines.first?.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) else {
                throw PromptFileError(message: "\(path): empty TSV file (expected a header row)")
            }
            let name = column ?? "Prompt"
            guard let pc = header.firstIndex(of: name) else {
                throw PromptFileError(message: "\(path): no column '\(name)' in the header (columns: \(header.joined(separator: ", ")))")
            }
            let cc = header.firstIndex(of: "Category")
            if !categories.isEmpty && cc == nil {
                throw PromptFileError(message: "\(path): --category needs a 'Category' column (columns: \(header.joined(separator: ", ")))")
            }
            for (i, l) in lines.enumerated().dropFirst() where !l.trimmingCharacters(in: .whitespaces).isEmpty {
                let fields = l.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
                guard fields.count > pc else {
                    throw PromptFileError(message: "\(path):\(i + 1): \(fields.count) fields, the '\(name)' column is field \(pc + 1)")
                }
                let category = cc.flatMap { $0 < fields.count ? fields[$0] : nil }
                if !categories.isEmpty && !categories.contains(category ?? "") { continue }
                guard !fields[pc].trimmingCharacters(in: .whitespaces).isEmpty else { continue }
                prompts.append(PoolPrompt(text: fields[pc], category: category, line: i + 1))
            }
        }
        guard !prompts.isEmpty else {
            throw PromptFileError(message: "\(path): no prompts" + (categories.isEmpty ? "" : " in categories \(categories.joined(separator: ", "))"))
        }
        return prompts
    }
}
