// The toy world's vocabulary and prompt grammar. A prompt describes a whole scene:
//
//   prompt     = count " in " shirt " " pose " " background
//   count      = "a person" | "two people" | "three people"
//   shirt      = "a COLOR shirt" ("an orange shirt") (one person) | "COLOR shirts" (two or three)
//   COLOR      = red | orange | yellow | green | blue | purple | pink
//   pose       = "standing" | "waving" | "with arms up" | "sitting"
//   background = "on a green field" | "on a beach" | "in the snow" | "on a city street" | "at night"
//
// e.g. "a person in a red shirt waving on a green field", "two people in blue shirts sitting on a beach".
// 3 × 7 × 4 × 5 = 420 descriptions. `Description(parsing:)` reads a prompt back (case and spacing are free, a final
// "." is allowed; "a"/"an" either way, and "a red shirt" with two people, are accepted too); anything else is a
// `ToyPromptError` naming the part that did not parse and what was expected there (a user input error: exit code 2).
import IO

public enum ShirtColor: String, CaseIterable, Sendable, Codable {
    case red, orange, yellow, green, blue, purple, pink

    var article: String { self == .orange ? "an" : "a" }
}

public enum Pose: String, CaseIterable, Sendable, Codable {
    case standing, waving
    case armsUp = "arms up"
    case sitting

    var phrase: String { self == .armsUp ? "with arms up" : rawValue }
}

public enum Background: String, CaseIterable, Sendable, Codable {
    case field, beach, snow, street, night

    var phrase: String {
        switch self {
        case .field: return "on a green field"
        case .beach: return "on a beach"
        case .snow: return "in the snow"
        case .street: return "on a city street"
        case .night: return "at night"
        }
    }
}

public struct ToyPromptError: Error, UserInputError, CustomStringConvertible, Equatable {
    public let prompt: String
    public let remainder: String
    public let expected: [String]
    public var description: String {
        "toy-world prompt '\(prompt)': cannot read '\(remainder.isEmpty ? "(end of prompt)" : remainder)'; expected "
            + expected.map { "'\($0)'" }.joined(separator: " or ")
            + " (grammar: docs/toyworld.md, e.g. 'a person in a red shirt waving on a green field')"
    }
}

/// What a prompt says: the scene's people count, shirt color, pose and background.
public struct Description: Hashable, Sendable, Codable {
    public var count: Int
    public var color: ShirtColor
    public var pose: Pose
    public var background: Background

    public init(count: Int, color: ShirtColor, pose: Pose, background: Background) {
        precondition((1...3).contains(count), "Description: 1 to 3 people")
        self.count = count; self.color = color; self.pose = pose; self.background = background
    }

    static let countPhrases = [1: "a person", 2: "two people", 3: "three people"]

    public var prompt: String {
        let shirt = count == 1 ? "\(color.article) \(color.rawValue) shirt" : "\(color.rawValue) shirts"
        return "\(Description.countPhrases[count]!) in \(shirt) \(pose.phrase) \(background.phrase)"
    }

    public init(parsing text: String) throws {
        let normalized = text.lowercased().split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
        var rest = Substring(normalized.hasSuffix(".") ? String(normalized.dropLast()) : normalized)
        func take<T>(_ options: [(String, T)]) throws -> T {
            // Longest phrase first, so "a person" is not read as "a".
            for (phrase, value) in options.sorted(by: { $0.0.count > $1.0.count })
            where rest == phrase || rest.hasPrefix(phrase + " ") {
                rest = rest.dropFirst(phrase.count).drop { $0 == " " }
                return value
            }
            throw ToyPromptError(prompt: text, remainder: String(rest), expected: options.map(\.0))
        }
        let count = try take(Description.countPhrases.sorted { $0.key < $1.key }.map { ($1, $0) })
        try take([("in", ())])
        let color = try take(ShirtColor.allCases.flatMap {
            [("a \($0.rawValue) shirt", $0), ("an \($0.rawValue) shirt", $0), ("\($0.rawValue) shirts", $0)]
        })
        let pose = try take(Pose.allCases.map { ($0.phrase, $0) })
        let background = try take(Background.allCases.map { ($0.phrase, $0) })
        guard rest.isEmpty else { throw ToyPromptError(prompt: text, remainder: String(rest), expected: ["(end of prompt)"]) }
        self.init(count: count, color: color, pose: pose, background: background)
    }

    /// Every description, in a fixed order (count, color, pose, background).
    public static let all: [Description] = (1...3).flatMap { n in
        ShirtColor.allCases.flatMap { c in
            Pose.allCases.flatMap { p in Background.allCases.map { b in Description(count: n, color: c, pose: p, background: b) } }
        }
    }

    /// The held-out fifth of the descriptions (by a hash of the prompt text), never drawn for training prompts, so an
    /// evaluation on them measures generalisation to unseen attribute combinations.
    public var isHeldOut: Bool {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325   // FNV-1a 64
        for byte in prompt.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return h % 5 == 0
    }

    /// Every word a prompt can contain (the toy tokenizer's vocabulary).
    public static var words: [String] {
        var seen: [String] = []
        for d in all {
            for w in d.prompt.split(separator: " ").map(String.init) where !seen.contains(w) { seen.append(w) }
        }
        return seen
    }
}

public enum PromptSplit: String, CaseIterable, Sendable {
    case train, heldout, all

    public func contains(_ d: Description) -> Bool {
        switch self {
        case .train: return !d.isHeldOut
        case .heldout: return d.isHeldOut
        case .all: return true
        }
    }
}
