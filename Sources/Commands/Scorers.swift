// Turns `--scorer NAME=KIND[:ARGUMENT]` into a scorer (Sources/Scoring). Each scorer kind registers one entry in
// `scorerKinds`; `score`, `eval` and the toy world's demo all go through `makeScorer`, so a kind added here is
// available to every command at once.
import Scoring
import ToyWorld

extension Commands {
    /// A scorer kind: what its ARGUMENT is (nil when it takes none) and how to build it.
    struct ScorerKind {
        let argument: String?
        let make: (ScorerSpec) throws -> any Scorer
    }

    /// Every scorer kind, by the KIND word of a spec.
    static let scorerKinds: [String: ScorerKind] = [
        ToyHumanScorer.kind: ScorerKind(argument: nil) { ToyHumanScorer(name: $0.name) },
    ]

    static func makeScorer(_ text: String) throws -> any Scorer {
        let spec = try ScorerSpec(parsing: text)
        guard let kind = scorerKinds[spec.kind] else {
            throw ScorerSpecError.unknownKind(spec: text, kind: spec.kind, known: scorerKinds.keys.sorted())
        }
        if let what = kind.argument, spec.argument == nil {
            throw ScorerSpecError.missingArgument(spec: text, kind: spec.kind, what: what)
        }
        return try kind.make(spec)
    }
}
