// The preference-scorer interface shared by the dataset builder (`hgdpo score`), evaluation (`hgdpo eval`) and the
// toy world: a batch of images of one prompt in, one score per image out (higher is preferred). Every scorer is named
// on the command line as `--scorer NAME=KIND[:ARGUMENT]` (e.g. `pickscore=clip:models/PickScore_v1`,
// `aesthetic=aesthetic:FILE`, `toy=toy-human`, `hps=external:CMD`); NAME becomes its column in scores.jsonl and
// results.json, and its descriptor (kind, argument, settings, version) is recorded beside the scores so a pool scored
// with other weights or settings is never mixed with this one.
import IO

/// What identifies a scorer's numbers: two scorers with equal descriptors give the same score to the same image.
public struct ScorerDescriptor: Codable, Equatable, Sendable {
    public var name: String
    public var kind: String
    public var argument: String?
    /// Version of the scorer's code or weights (e.g. a hash of the weight file), so changed weights are noticed.
    public var version: String
    public var settings: [String: String]

    public init(name: String, kind: String, argument: String?, version: String, settings: [String: String] = [:]) {
        self.name = name; self.kind = kind; self.argument = argument; self.version = version; self.settings = settings
    }
}

/// A preference scorer. Implementations may keep caches (e.g. a prompt's text embedding) and are used from one thread.
public protocol Scorer: AnyObject {
    var descriptor: ScorerDescriptor { get }
    /// One score per image, in order. Images are 8-bit RGB (3 channels); a scorer that needs another size resizes.
    func score(images: [ByteImage], prompt: String) throws -> [Double]
}

extension Scorer {
    public var name: String { descriptor.name }
}

public enum ScorerSpecError: Error, UserInputError, CustomStringConvertible, Equatable {
    case malformed(String)
    case unknownKind(spec: String, kind: String, known: [String])
    case missingArgument(spec: String, kind: String, what: String)

    public var description: String {
        switch self {
        case .malformed(let s):
            return "invalid scorer spec '\(s)': expected NAME=KIND[:ARGUMENT], e.g. pickscore=clip:models/PickScore_v1"
        case .unknownKind(let s, let k, let known):
            return "invalid scorer spec '\(s)': unknown kind '\(k)' (known: \(known.joined(separator: ", ")))"
        case .missingArgument(let s, let k, let what):
            return "invalid scorer spec '\(s)': kind '\(k)' needs \(what) after ':'"
        }
    }
}

/// `NAME=KIND[:ARGUMENT]` as given to `--scorer`. NAME is a column name: letters, digits, '_' and '-'.
public struct ScorerSpec: Equatable, Sendable {
    public var name: String
    public var kind: String
    public var argument: String?

    public init(name: String, kind: String, argument: String?) {
        self.name = name; self.kind = kind; self.argument = argument
    }

    public init(parsing text: String) throws {
        guard let eq = text.firstIndex(of: "=") else { throw ScorerSpecError.malformed(text) }
        let name = String(text[..<eq])
        let rest = text[text.index(after: eq)...]
        let kind: Substring, argument: String?
        if let colon = rest.firstIndex(of: ":") {
            kind = rest[..<colon]
            argument = String(rest[rest.index(after: colon)...])
        } else {
            kind = rest
            argument = nil
        }
        let nameOK = !name.isEmpty && name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-"
        }
        guard nameOK, !kind.isEmpty, argument.map({ !$0.isEmpty }) ?? true else { throw ScorerSpecError.malformed(text) }
        self.init(name: name, kind: String(kind), argument: argument)
    }
}
