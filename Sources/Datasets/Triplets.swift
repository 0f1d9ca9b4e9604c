// Triplet datasets: what users bring and `hgdpo` dataset builders write. A folder holding `triplets.jsonl` (one
// JSON object per line: {"id", "prompt", "winner", "loser", …extra fields}) and the PNG images it names by paths
// relative to the folder. Diffusion-DPO trains on (prompt, preferred image x_w, rejected image x_l) triplets.
//
// Every line is checked before training starts, so a bad line is reported by its line number and id instead of
// failing hours into a run: malformed JSON, missing or wrong-typed fields, an empty or duplicate id, a path that
// escapes the folder, a missing image and (optionally) a PNG that does not decode. With `skipBad` the bad lines are
// dropped and listed in `report`; otherwise `open` throws with the first few problems and the total.

import Foundation
import IO
import Tensors

// MARK: - Triplets

/// One (prompt, winner, loser) line of `triplets.jsonl`.
public struct Triplet: Sendable, Equatable {
    public let id: String
    public let prompt: String
    /// Image paths as written in the file, relative to the dataset folder.
    public let winner: String
    public let loser: String
    /// 1-based line number in `triplets.jsonl`.
    public let line: Int
    /// Fields other than id / prompt / winner / loser, as key -> compact JSON text of the value, so writers can pass
    /// them through unchanged (e.g. scores from the dataset builder).
    public let extraFields: [String: String]

    public init(id: String, prompt: String, winner: String, loser: String, line: Int = 0,
                extraFields: [String: String] = [:]) {
        self.id = id
        self.prompt = prompt
        self.winner = winner
        self.loser = loser
        self.line = line
        self.extraFields = extraFields
    }

    /// The triplet as one `triplets.jsonl` line (no newline): the four fields in order, then the extra fields by key.
    public func jsonLine() -> String {
        var fields = [("id", jsonQuoted(id)), ("prompt", jsonQuoted(prompt)), ("winner", jsonQuoted(winner)),
                      ("loser", jsonQuoted(loser))]
        for key in extraFields.keys.sorted() { fields.append((key, extraFields[key]!)) }
        return "{" + fields.map { jsonQuoted($0.0) + ":" + $0.1 }.joined(separator: ",") + "}"
    }
}

/// A bad line of `triplets.jsonl`.
public struct TripletProblem: Error, UserInputError, Sendable, Equatable, CustomStringConvertible {
    public let line: Int
    /// The line's id when it has a usable one.
    public let id: String?
    public let reason: String

    public init(line: Int, id: String?, reason: String) {
        self.line = line
        self.id = id
        self.reason = reason
    }

    /// `triplets.jsonl:17 (id "a12"): winner "img/x.png" does not exist`
    public var description: String {
        "\(TripletDataset.fileName):\(line)" + (id.map { " (id \(jsonQuoted($0)))" } ?? "") + ": \(reason)"
    }
}

public enum TripletDatasetError: Error, UserInputError, CustomStringConvertible, Equatable {
    case cannotRead(path: String, reason: String)
    /// `problems` holds the first few; `total` counts them all.
    case badLines(path: String, problems: [TripletProblem], total: Int, lineCount: Int)

    public var description: String {
        switch self {
        case let .cannotRead(path, reason):
            return "\(path): cannot read the triplet list: \(reason)"
        case let .badLines(path, problems, total, lineCount):
            var s = "\(path): \(total) of \(lineCount) triplet line\(lineCount == 1 ? " is" : "s are") bad"
            if problems.count < total { s += " (first \(problems.count) shown)" }
            s += "; fix them or skip bad lines:"
            for p in problems { s += "\n  \(p)" }
            return s
        }
    }
}

// MARK: - Dataset

public struct TripletDataset: Sendable {
    public static let fileName = "triplets.jsonl"
    /// How many problems an error message lists.
    public static let problemsShown = 5

    public let folder: String
    /// The good lines, in file order.
    public let triplets: [Triplet]
    /// The lines dropped by `skipBad`, in file order.
    public let skipped: [TripletProblem]

    public var count: Int { triplets.count }
    public subscript(i: Int) -> Triplet { triplets[i] }

    public func winnerPath(_ i: Int) -> String { (folder as NSString).appendingPathComponent(triplets[i].winner) }
    public func loserPath(_ i: Int) -> String { (folder as NSString).appendingPathComponent(triplets[i].loser) }

    /// One line for logs, then every skipped line.
    public var report: String {
        var s = "\(folder)/\(Self.fileName): \(triplets.count) triplet\(triplets.count == 1 ? "" : "s")"
        if skipped.isEmpty { return s + ", no bad lines" }
        s += ", \(skipped.count) bad line\(skipped.count == 1 ? "" : "s") skipped:"
        for p in skipped { s += "\n  \(p)" }
        return s
    }

    /// Reads and checks `folder/triplets.jsonl`. `checkImages` also decodes every PNG (slower: a full decode).
    public static func open(folder: String, skipBad: Bool = false, checkImages: Bool = false) throws -> TripletDataset {
        let path = (folder as NSString).appendingPathComponent(fileName)
        let bytes: Foundation.Data
        do {
            bytes = try Foundation.Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            let reason = FileManager.default.fileExists(atPath: path) ? "\(error.localizedDescription)" : "no such file"
            throw TripletDatasetError.cannotRead(path: path, reason: reason)
        }

        // Pass 1: parse every line, check fields and ids.
        var candidates: [Triplet] = []
        var problems: [TripletProblem] = []
        var firstLineOfId: [String: Int] = [:]
        var lineNumber = 0
        var lineCount = 0   // non-blank lines
        var start = bytes.startIndex
        while start < bytes.endIndex {
            let end = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) ?? bytes.endIndex
            lineNumber += 1
            let line = bytes[start..<end]
            start = end < bytes.endIndex ? bytes.index(after: end) : end
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }   // blank (CRLF too)
            lineCount += 1
            switch parseLine(line, number: lineNumber) {
            case .failure(let problem):
                problems.append(problem)
            case .success(let triplet):
                if let first = firstLineOfId[triplet.id] {
                    problems.append(TripletProblem(line: lineNumber, id: triplet.id,
                                                   reason: "duplicate id (first used on line \(first))"))
                } else {
                    firstLineOfId[triplet.id] = lineNumber
                    candidates.append(triplet)
                }
            }
        }

        // Pass 2: the images exist (and decode), checked concurrently since decoding dominates.
        var imageProblems = [TripletProblem?](repeating: nil, count: candidates.count)
        imageProblems.withUnsafeMutableBufferPointer { out in
            let out = out   // captured by value: each iteration writes only its own slot
            parallelFor(candidates.count, work: checkImages ? .max : 0) { i in
                out[i] = imageProblem(candidates[i], folder: folder, checkImages: checkImages)
            }
        }
        var triplets: [Triplet] = []
        triplets.reserveCapacity(candidates.count)
        for (t, problem) in zip(candidates, imageProblems) {
            if let problem { problems.append(problem) } else { triplets.append(t) }
        }
        problems.sort { $0.line < $1.line }

        if !problems.isEmpty && !skipBad {
            throw TripletDatasetError.badLines(path: path, problems: Array(problems.prefix(problemsShown)),
                                               total: problems.count, lineCount: lineCount)
        }
        return TripletDataset(folder: folder, triplets: triplets, skipped: problems)
    }

    /// The four required fields with their types, and everything else kept as JSON text.
    static func parseLine(_ line: Foundation.Data.SubSequence, number: Int) -> Result<Triplet, TripletProblem> {
        func fail(_ reason: String, id: String? = nil) -> Result<Triplet, TripletProblem> {
            .failure(TripletProblem(line: number, id: id, reason: reason))
        }
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: Foundation.Data(line), options: [.fragmentsAllowed])
        } catch {
            let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
            return fail("not valid JSON" + (detail.map { " (\($0))" } ?? ""))
        }
        guard let object = parsed as? [String: Any] else {
            return fail("is a JSON \(jsonKind(parsed)), expected an object with id, prompt, winner and loser")
        }
        // The id first, so later problems can name it.
        guard let idValue = object["id"] else { return fail("missing field \"id\"") }
        guard let id = idValue as? String else { return fail("field \"id\" is a \(jsonKind(idValue)), expected a string") }
        guard !id.isEmpty else { return fail("field \"id\" is empty") }
        var fields: [String: String] = [:]
        for key in ["prompt", "winner", "loser"] {
            guard let value = object[key] else { return fail("missing field \"\(key)\"", id: id) }
            guard let s = value as? String else {
                return fail("field \"\(key)\" is a \(jsonKind(value)), expected a string", id: id)
            }
            fields[key] = s
        }
        for key in ["winner", "loser"] {
            if let reason = pathProblem(fields[key]!) { return fail("\(key) \(jsonQuoted(fields[key]!)) \(reason)", id: id) }
        }
        var extra: [String: String] = [:]
        for (key, value) in object where !["id", "prompt", "winner", "loser"].contains(key) {
            let text = (try? JSONSerialization.data(withJSONObject: value,
                                                    options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes]))
                .map { String(decoding: $0, as: UTF8.self) } ?? "null"
            extra[key] = text
        }
        return .success(Triplet(id: id, prompt: fields["prompt"]!, winner: fields["winner"]!, loser: fields["loser"]!,
                                line: number, extraFields: extra))
    }

    /// Paths must stay inside the dataset folder: relative, without `..` components.
    static func pathProblem(_ path: String) -> String? {
        if path.isEmpty { return "is empty" }
        if path.hasPrefix("/") { return "is an absolute path (paths must be relative to the dataset folder)" }
        if path.split(separator: "/", omittingEmptySubsequences: false).contains("..") {
            return "leaves the dataset folder (\"..\" is not allowed)"
        }
        if path.utf8.contains(0) { return "contains a NUL character" }
        return nil
    }

    static func imageProblem(_ t: Triplet, folder: String, checkImages: Bool) -> TripletProblem? {
        for (role, relative) in [("winner", t.winner), ("loser", t.loser)] {
            let full = (folder as NSString).appendingPathComponent(relative)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory) else {
                return TripletProblem(line: t.line, id: t.id, reason: "\(role) \(jsonQuoted(relative)) does not exist")
            }
            if isDirectory.boolValue {
                return TripletProblem(line: t.line, id: t.id, reason: "\(role) \(jsonQuoted(relative)) is a directory")
            }
            if checkImages {
                do {
                    _ = try PNG.readBytes(full)
                } catch {
                    return TripletProblem(line: t.line, id: t.id,
                                          reason: "\(role) \(jsonQuoted(relative)) is not a readable PNG: \(error)")
                }
            }
        }
        return nil
    }
}

// MARK: - Helpers

/// The JSON type of a JSONSerialization value, for messages.
func jsonKind(_ value: Any) -> String {
    switch value {
    case is String: return "string"
    case is NSNull: return "null"
    case is [Any]: return "array"
    case is [String: Any]: return "object"
    case let n as NSNumber: return String(cString: n.objCType) == "c" ? "boolean" : "number"
    default: return "\(type(of: value))"
    }
}

func jsonQuoted(_ s: String) -> String { JSONValue.string(s).serialized() }
