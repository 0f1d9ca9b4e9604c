import Tensors

// How often the toy scorer prefers a correct render to a defective one: for each defect kind, `pairs` seeded pairs
// (a random description, seed k: the correct scene and the same scene with the defect; or, `independent`, the
// defective render of another scene of the same description, as in a pool). A tie counts as a failure. `hgdpo world check-scorer` prints it; docs/toyworld.md states it; the tests hold it up.

public struct ScorerAccuracy: Sendable {
    public let defect: Defect
    public let pairs: Int
    public let correct: Int
    public var accuracy: Double { Double(correct) / Double(pairs) }
}

public enum ScorerCheck {
    /// The description of pair `k` (uniform over the split's descriptions, from `seed`).
    public static func description(_ k: Int, seed: UInt64, split: PromptSplit = .all) -> Description {
        let pool = Description.all.filter { split.contains($0) }
        var draw = Draws(CounterRNG(seed: seed, stream: 0x746F_7963_6865_636B).substream(UInt64(k)))   // "toycheck"
        return pool[draw.below(pool.count)]
    }

    public static func run(scorer: ToyHumanScorer, pairs: Int, seed: UInt64, defects: [Defect] = Defect.allCases,
                           size: Int = 32, independent: Bool = false) -> [ScorerAccuracy] {
        defects.map { defect in
            var correct = 0
            for k in 0..<pairs {
                let d = description(k, seed: seed)
                let sceneSeed = seed &* 1_000_003 &+ UInt64(k)
                let good = Scene(d, seed: sceneSeed, width: size, height: size).render()
                let bad = Scene(d, seed: independent ? ~sceneSeed : sceneSeed, defect: defect, width: size, height: size).render()
                let a = scorer.score(analysis: scorer.analyze(good), expected: d)
                let b = scorer.score(analysis: scorer.analyze(bad), expected: d)
                if a > b { correct += 1 }
            }
            return ScorerAccuracy(defect: defect, pairs: pairs, correct: correct)
        }
    }
}
