import IO
import Scoring
import ToyWorld
import XCTest

final class ToyHumanScorerTests: XCTestCase {
    let scorer = ToyHumanScorer(name: "toy")

    /// The scorer prefers the correct render to the same scene with each kind of defect (docs/toyworld.md states the
    /// rate over 1000 pairs; `hgdpo world check-scorer`). A scorer that stopped telling them apart (constant, random
    /// or blind to one kind) fails here.
    func testPrefersCorrectToDefective() {
        for r in ScorerCheck.run(scorer: scorer, pairs: 150, seed: 11) {
            XCTAssertGreaterThanOrEqual(r.accuracy, 0.93, "\(r.defect.rawValue): \(r.correct)/\(r.pairs)")
        }
    }

    /// Blurred renders (edges and thin limbs mixed with the background, as a model's soft samples) are still ordered
    /// mostly right: the scorer explains mixed pixels as a part's color mixed with sky or ground.
    func testBlurredRenders() {
        for r in ScorerCheck.run(scorer: scorer, pairs: 100, seed: 12, blur: 0.5) {
            XCTAssertGreaterThanOrEqual(r.accuracy, 0.65, "\(r.defect.rawValue): \(r.correct)/\(r.pairs)")
        }
    }

    /// What it reads off a correct render agrees with the scene's description.
    func testReadsTheSceneFromPixels() {
        var agree = (count: 0, color: 0, pose: 0, background: 0), fragments = 0
        let n = 200
        for k in 0..<n {
            let d = ScorerCheck.description(k, seed: 5)
            let a = scorer.analyze(Scene(d, seed: UInt64(k)).render())
            if a.people.count == d.count { agree.count += 1 }
            if a.background == d.background { agree.background += 1 }
            if !a.people.isEmpty && a.people.allSatisfy({ $0.color == d.color }) { agree.color += 1 }
            if !a.people.isEmpty && a.people.allSatisfy({ $0.pose == d.pose }) { agree.pose += 1 }
            fragments += a.fragments
        }
        XCTAssertEqual(agree.background, n)
        XCTAssertEqual(agree.color, n)
        XCTAssertGreaterThanOrEqual(agree.count, n * 98 / 100)
        XCTAssertGreaterThanOrEqual(agree.pose, n * 95 / 100)
        XCTAssertLessThanOrEqual(fragments, n / 50)
    }

    func testScorerInterface() throws {
        let d = Description(count: 2, color: .yellow, pose: .armsUp, background: .snow)
        let images = [Scene(d, seed: 1).render(), Scene(d, seed: 1, defect: .missingLimb).render()]
        let scores = try scorer.score(images: images, prompt: d.prompt)
        XCTAssertEqual(scores.count, 2)
        XCTAssertGreaterThan(scores[0], scores[1])
        XCTAssertEqual(scorer.descriptor, ScorerDescriptor(name: "toy", kind: "toy-human", argument: nil, version: ToyHumanScorer.version))
        XCTAssertThrowsError(try scorer.score(images: images, prompt: "a photo of a cat")) { error in
            XCTAssertTrue("\(error)".contains("a photo of a cat"), "\(error)")
        }
        // A blank image has nobody in it and scores below a correct render.
        let blank = try ByteImage(width: 32, height: 32, channels: 3, pixels: [UInt8](repeating: 128, count: 32 * 32 * 3))
        XCTAssertLessThan(try scorer.score(images: [blank], prompt: d.prompt)[0], scores[0] - 3)
    }

    /// Noise is the worst image there is: uniform noise, and noise over the right background, score below every
    /// defective render of the prompt, however broken, so a pool never picks noise as its winner over a drawn figure
    /// (version 1 preferred noise to blurred figures: 2 per missing person against up to 7.5 per broken one).
    func testNoiseRanksBelowEveryRender() throws {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt8 { state = state &* 6364136223846793005 &+ 1442695040888963407; return UInt8(truncatingIfNeeded: state >> 56) }
        for k in 0..<40 {
            let d = ScorerCheck.description(k, seed: 21)
            let noise = try ByteImage(width: 32, height: 32, channels: 3, pixels: (0..<(32 * 32 * 3)).map { _ in next() })
            // The right background with noise over the middle half (a sample that never formed people).
            var noisy = Scene(Description(count: d.count, color: d.color, pose: d.pose, background: d.background), seed: UInt64(k)).render()
            for y in 8..<28 { for x in 0..<32 { for c in 0..<3 { noisy.pixels[(y * 32 + x) * 3 + c] = next() } } }
            let noiseScores = try scorer.score(images: [noise, noisy], prompt: d.prompt)
            let renders = [Scene(d, seed: UInt64(k)).render()] + Defect.allCases.map { Scene(d, seed: UInt64(k), defect: $0).render() }
            let worst = try scorer.score(images: renders, prompt: d.prompt).min()!
            XCTAssertLessThan(noiseScores.max()!, worst, "\(d.prompt): noise \(noiseScores) vs the worst render \(worst)")
        }
    }
}
