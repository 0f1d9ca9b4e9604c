import IO
import Tensors

// How often the toy scorer prefers a correct render to a defective one: for each defect kind, `pairs` seeded pairs
// (a random description, seed k: the correct scene and the same scene with the defect; or, `independent`, the
// defective render of another scene of the same description, as in a pool), optionally both blurred (`blur`: the
// weight of the 8 neighbours in a 3x3 kernel whose centre weighs 1, a stand-in for a model's soft samples). A tie
// counts as a failure. `hgdpo world check-scorer` prints it; docs/toyworld.md states it; the tests hold it up.

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
                           size: Int = 32, independent: Bool = false, blur: Float = 0) -> [ScorerAccuracy] {
        defects.map { defect in
            var correct = 0
            for k in 0..<pairs {
                let d = description(k, seed: seed)
                let sceneSeed = seed &* 1_000_003 &+ UInt64(k)
                let good = blurred(Scene(d, seed: sceneSeed, width: size, height: size).render(), blur)
                let bad = blurred(Scene(d, seed: independent ? ~sceneSeed : sceneSeed, defect: defect, width: size, height: size).render(), blur)
                let a = scorer.score(analysis: scorer.analyze(good), expected: d)
                let b = scorer.score(analysis: scorer.analyze(bad), expected: d)
                if a > b { correct += 1 }
            }
            return ScorerAccuracy(defect: defect, pairs: pairs, correct: correct)
        }
    }
}

/// A 3x3 blur of an RGB image: the centre weighs 1 and each of the 8 neighbours `neighbourWeight` (renormalised at the
/// border); 0 returns the image unchanged.
public func blurred(_ image: ByteImage, _ neighbourWeight: Float) -> ByteImage {
    guard neighbourWeight > 0 else { return image }
    let w = image.width, h = image.height, c = image.channels
    var out = image
    for y in 0..<h {
        for x in 0..<w {
            for ch in 0..<c {
                var sum: Float = 0, norm: Float = 0
                for dy in -1...1 {
                    for dx in -1...1 {
                        let yy = y + dy, xx = x + dx
                        guard yy >= 0, yy < h, xx >= 0, xx < w else { continue }
                        let k: Float = dx == 0 && dy == 0 ? 1 : neighbourWeight
                        sum += k * Float(image.pixels[(yy * w + xx) * c + ch]); norm += k
                    }
                }
                out.pixels[(y * w + x) * c + ch] = UInt8(min(max((sum / norm).rounded(), 0), 255))
            }
        }
    }
    return out
}
