// Declarative option tables: one entry per user-settable option (flag, config-file key, type, default, range or
// choices, help, and whether it is part of a run's identity). The CLI's options, strict config-file decoding (JSON and
// flat YAML), the saved config.json, `--help` and a run's identity hash all come from the same table, so an option is
// written once. A config file with an unknown key, a value of the wrong type, outside its range or outside its
// choices is an error naming the file, the key and (for a typo) the closest valid key, before any work is done.
import Foundation

/// Marks errors caused by what the user gave (flags, files, folders): the CLI exits with code 2 for these and with 1
/// for every other error (an internal failure: MPI, a lost rank, the system).
public protocol UserInputError: Error {}

public enum OptionError: Error, CustomStringConvertible, Equatable, UserInputError {
    /// `source` is the flag (`--lr`) or the file and key (`run.yaml: lr`).
    case badValue(source: String, value: String, expected: String)
    case unknownKey(file: String, key: String, suggestion: String?)
    case notAnObject(file: String)

    public var description: String {
        switch self {
        case .badValue(let s, let v, let e): return "invalid value '\(v)' for \(s): expected \(e)"
        case .unknownKey(let f, let k, let s):
            return "\(f): unknown key '\(k)'" + (s.map { " (did you mean '\($0)'?)" } ?? "")
        case .notAnObject(let f): return "\(f): expected an object of `key: value` settings"
        }
    }
}

/// A config file's value as decoded (JSON, or flat YAML turned into JSON), before it is checked against its option;
/// numbers keep their integer or float kind (the scheduler's config overrides are merged through it too).
public indirect enum ConfigJSON: Codable, Equatable {
    case null, bool(Bool), int(Int), double(Double), string(String), array([ConfigJSON]), object([String: ConfigJSON])

    /// From a JSONSerialization-style value (Bool, Int, Double, String, arrays, dictionaries; anything else is null).
    public init(_ v: Any) {
        switch v {
        case let b as Bool: self = .bool(b)
        case let i as Int: self = .int(i)
        case let d as Double: self = .double(d)
        case let s as String: self = .string(s)
        case let a as [Any]: self = .array(a.map(ConfigJSON.init))
        case let o as [String: Any]: self = .object(o.mapValues(ConfigJSON.init))
        default: self = .null
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([ConfigJSON].self) { self = .array(a) }
        else { self = .object(try c.decode([String: ConfigJSON].self)) }
    }

    var shown: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return "\(d)"
        case .string(let s): return s
        case .array(let a): return "[" + a.map(\.shown).joined(separator: ", ") + "]"
        case .object: return "{…}"
        }
    }
}

/// A type an option can hold: parsed from command-line text or a decoded JSON value, written back as JSON.
public protocol OptionValue {
    static func parse(_ text: String) -> Self?
    static func fromJSON(_ value: ConfigJSON) -> Self?
    var json: JSONValue { get }
    var text: String { get }
    static var expected: String { get }
}

extension Int: OptionValue {
    public static func parse(_ text: String) -> Int? { Int(text) }
    public static func fromJSON(_ value: ConfigJSON) -> Int? {
        switch value {
        case .int(let i): return i
        case .double(let d) where d.rounded() == d && abs(d) < 9.0e15: return Int(d)   // 1e4 in a file
        default: return nil
        }
    }
    public var json: JSONValue { .int(self) }
    public var text: String { String(self) }
    public static var expected: String { "an integer" }
}

extension UInt64: OptionValue {
    public static func parse(_ text: String) -> UInt64? { UInt64(text) }
    public static func fromJSON(_ value: ConfigJSON) -> UInt64? {
        if case .string(let s) = value { return UInt64(s) }               // seeds beyond 2^53 survive as strings
        guard let i = Int.fromJSON(value), i >= 0 else { return nil }
        return UInt64(i)
    }
    public var json: JSONValue { self <= 1 << 53 ? .int(Int(self)) : .string(String(self)) }
    public var text: String { String(self) }
    public static var expected: String { "a non-negative integer" }
}

extension Double: OptionValue {
    public static func parse(_ text: String) -> Double? {
        guard let d = Double(text), d.isFinite else { return nil }
        return d
    }
    public static func fromJSON(_ value: ConfigJSON) -> Double? {
        switch value {
        case .int(let i): return Double(i)
        case .double(let d) where d.isFinite: return d
        default: return nil
        }
    }
    public var json: JSONValue { .double(self) }
    public var text: String { "\(self)".hasSuffix(".0") ? String("\(self)".dropLast(2)) : "\(self)" }
    public static var expected: String { "a number" }
}

extension String: OptionValue {
    public static func parse(_ text: String) -> String? { text }
    public static func fromJSON(_ value: ConfigJSON) -> String? {
        if case .string(let s) = value { return s }
        return nil
    }
    public var json: JSONValue { .string(self) }
    public var text: String { self }
    public static var expected: String { "a string" }
}

extension Bool: OptionValue {
    public static func parse(_ text: String) -> Bool? { ["true": true, "false": false][text.lowercased()] }
    public static func fromJSON(_ value: ConfigJSON) -> Bool? {
        if case .bool(let b) = value { return b }
        return nil
    }
    public var json: JSONValue { .bool(self) }
    public var text: String { self ? "true" : "false" }
    public static var expected: String { "true or false" }
}

/// Where a value came from, for error messages and for the rule that the command line overrides the file.
public enum OptionSource {
    case commandLine
    case file(String)

    func name(_ option: OptionEntry<some Any>) -> String {
        switch self {
        case .commandLine: return option.flag
        case .file(let path): return "\(path): key '\(option.key)'"
        }
    }
}

/// A value as given: command-line text or a config file's JSON.
public enum OptionInput {
    case text(String)
    case json(ConfigJSON)

    var shown: String {
        switch self {
        case .text(let t): return t
        case .json(let j): return j.shown
        }
    }
}

/// One option of a settings struct `Settings`.
public struct OptionEntry<Settings> {
    /// The config-file key (`global_batch`); the flag is `--` + the key with '-' for '_'.
    public let key: String
    /// Placeholder in help (`N`); nil makes a boolean flag (given = true).
    public let valueName: String?
    public let help: String
    public let choices: [String]?
    /// Part of the run's identity: a checkpoint records the hash of these, and a resume with others is refused.
    public let identity: Bool
    /// The value a fresh `Settings` holds, as text for help; nil when unset by default.
    public let defaultText: (Settings) -> String?
    let assign: (inout Settings, OptionInput, OptionSource, OptionEntry) throws -> Void
    let read: (Settings) -> JSONValue

    public var flag: String { "--" + key.replacingOccurrences(of: "_", with: "-") }
    public var isFlag: Bool { valueName == nil }

    /// Sets the option from command-line text.
    public func set(_ settings: inout Settings, text: String) throws { try assign(&settings, .text(text), .commandLine, self) }
    /// Sets the option from a config file's decoded JSON value.
    public func set(_ settings: inout Settings, json: ConfigJSON, file: String) throws {
        try assign(&settings, .json(json), .file(file), self)
    }
    public func value(_ settings: Settings) -> JSONValue { read(settings) }
}

extension OptionEntry {
    /// A required-valued option of type T, checked against `range` or `choices`.
    public static func value<T: OptionValue & Comparable>(
        _ key: String, _ path: WritableKeyPath<Settings, T>, _ valueName: String, _ help: String,
        range: ClosedRange<T>? = nil, choices: [String]? = nil, identity: Bool = true
    ) -> OptionEntry {
        OptionEntry(key: key, valueName: valueName, help: help, choices: choices, identity: identity,
                    defaultText: { $0[keyPath: path].text },
                    assign: { s, raw, source, me in s[keyPath: path] = try convert(raw, range, choices, source, me) },
                    read: { $0[keyPath: path].json })
    }

    /// An option that is unset (nil) unless given.
    public static func value<T: OptionValue & Comparable>(
        _ key: String, _ path: WritableKeyPath<Settings, T?>, _ valueName: String, _ help: String,
        range: ClosedRange<T>? = nil, choices: [String]? = nil, identity: Bool = true
    ) -> OptionEntry {
        OptionEntry(key: key, valueName: valueName, help: help, choices: choices, identity: identity,
                    defaultText: { $0[keyPath: path]?.text },
                    assign: { s, raw, source, me in
                        if case .json(.null) = raw { s[keyPath: path] = nil; return }
                        s[keyPath: path] = try convert(raw, range, choices, source, me) },
                    read: { $0[keyPath: path]?.json ?? .null })
    }

    /// An enumeration stored as its Swift type.
    public static func choice<E: RawRepresentable & CaseIterable>(
        _ key: String, _ path: WritableKeyPath<Settings, E>, _ valueName: String, _ help: String, identity: Bool = true
    ) -> OptionEntry where E.RawValue == String {
        let names = E.allCases.map(\.rawValue)
        return OptionEntry(key: key, valueName: valueName, help: help, choices: names, identity: identity,
                           defaultText: { $0[keyPath: path].rawValue },
                           assign: { s, raw, source, me in
                               let name: String = try convert(raw, nil, names, source, me)
                               s[keyPath: path] = E(rawValue: name)! },
                           read: { .string($0[keyPath: path].rawValue) })
    }

    /// A boolean: a flag on the command line (given = true), true/false in a file.
    public static func flag(_ key: String, _ path: WritableKeyPath<Settings, Bool>, _ help: String,
                            identity: Bool = true) -> OptionEntry {
        OptionEntry(key: key, valueName: nil, help: help, choices: nil, identity: identity,
                    defaultText: { _ in nil },
                    assign: { s, raw, source, me in
                        if case .text = raw { s[keyPath: path] = true } else { s[keyPath: path] = try convert(raw, Bool.expected, source, me) } },
                    read: { .bool($0[keyPath: path]) })
    }

    private static func convert<T: OptionValue & Comparable>(_ raw: OptionInput, _ range: ClosedRange<T>?, _ choices: [String]?,
                                                             _ source: OptionSource, _ me: OptionEntry) throws -> T {
        var expected = T.expected
        if let choices { expected = "one of " + choices.joined(separator: ", ") }
        else if let range { expected += " in \(range.lowerBound.text)...\(range.upperBound.text)" }
        return try convert(raw, expected, source, me) { v in
            (range.map { $0.contains(v) } ?? true) && (choices.map { $0.contains(v.text) } ?? true)
        }
    }

    private static func convert<T: OptionValue>(_ raw: OptionInput, _ expected: String, _ source: OptionSource,
                                                _ me: OptionEntry, valid: (T) -> Bool = { _ in true }) throws -> T {
        let value: T?
        switch raw {
        case .text(let t): value = T.parse(t)
        case .json(let j): value = T.fromJSON(j)
        }
        guard let value, valid(value) else { throw OptionError.badValue(source: source.name(me), value: raw.shown, expected: expected) }
        return value
    }
}

/// A settings struct's whole table.
public struct OptionTable<Settings> {
    public let entries: [OptionEntry<Settings>]

    public init(_ entries: [OptionEntry<Settings>]) {
        self.entries = entries
        precondition(Set(entries.map(\.key)).count == entries.count, "option keys must be unique")
    }

    public func entry(key: String) -> OptionEntry<Settings>? { entries.first { $0.key == key } }
    public func entry(flag: String) -> OptionEntry<Settings>? { entries.first { $0.flag == flag } }

    /// Applies a JSON or flat YAML (`.yaml`/`.yml`) config file strictly: every key must be an option's key
    /// (a flag spelling such as `global-batch` is accepted for `global_batch`), every value valid for it.
    public func apply(file path: String, to settings: inout Settings) throws {
        guard var data = FileManager.default.contents(atPath: path) else {
            throw ModelFolderError.missingFile(path, what: "config file")
        }
        if path.hasSuffix(".yaml") || path.hasSuffix(".yml") {
            guard let text = String(data: data, encoding: .utf8) else { throw ModelFolderError.badJSON(path, detail: "not UTF-8 text") }
            data = Data(try FlatYAML.json(from: text, path: path).utf8)
        }
        guard isUTF8(data) else { throw ModelFolderError.badJSON(path, detail: "not UTF-8 text") }   // see isUTF8
        let decoder = JSONDecoder()
        decoder.allowsJSON5 = true
        let object: ConfigJSON
        do { object = try decoder.decode(ConfigJSON.self, from: data) }
        catch { throw ModelFolderError.badJSON(path, detail: "\(error)") }
        guard case .object(let dict) = object else { throw OptionError.notAnObject(file: path) }
        for key in dict.keys.sorted() {
            let normalised = key.replacingOccurrences(of: "-", with: "_")
            guard let e = entry(key: normalised) else {
                throw OptionError.unknownKey(file: path, key: key, suggestion: closestMatch(normalised, among: entries.map(\.key)))
            }
            try e.set(&settings, json: dict[key]!, file: path)
        }
    }

    /// Every option's value, in table order (unset optional ones as null), as config.json holds it.
    public func json(_ settings: Settings) -> JSONValue { .object(entries.map { ($0.key, $0.value(settings)) }) }

    /// FNV-1a 64 of the identity options' values: equal for two runs that follow the same trajectory.
    public func identityHash(_ settings: Settings) -> String {
        let text = JSONValue.object(entries.filter(\.identity).map { ($0.key, $0.value(settings)) }).serialized()
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return String(h, radix: 16)
    }
}

/// The candidate nearest by edit distance, if near enough to be a likely typo.
public func closestMatch(_ word: String, among candidates: [String]) -> String? {
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        var prev = Array(0...b.count)
        for (i, ca) in a.enumerated() {
            var cur = [i + 1] + Array(repeating: 0, count: b.count)
            for (j, cb) in b.enumerated() { cur[j + 1] = min(prev[j + 1] + 1, cur[j] + 1, prev[j] + (ca == cb ? 0 : 1)) }
            prev = cur
        }
        return prev[b.count]
    }
    let w = Array(word)
    let best = candidates.map { ($0, distance(w, Array($0))) }.min { $0.1 < $1.1 }
    guard let best, best.1 <= max(2, word.count / 3) else { return nil }
    return best.0
}
