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
        "clip": ScorerKind(argument: "a transformers CLIPModel folder: DIR[,weights=FILE][,output=logit|cosine][,batch=N]") { spec in
            try CLIPScorer(name: spec.name, argument: spec.argument!)
        },
        "aesthetic": ScorerKind(argument: "the aesthetic MLP and a CLIP ViT-L/14 folder: FILE,clip=DIR[,batch=N]") { spec in
            try AestheticScorer(name: spec.name, argument: spec.argument!)
        },
        "external": ScorerKind(argument: "a command speaking the JSON-lines protocol (docs/dataset.md): COMMAND[,timeout=S]") { spec in
            try ExternalScorer(name: spec.name, argument: spec.argument!)
        },
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
