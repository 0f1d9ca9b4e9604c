// Prompt weighting: the web UI's documented parse results, the fixture's per-token weights, the emphasis rule.
import Foundation
import XCTest
import TestSupport
@testable import TextEncoder

struct WeightingCase: Decodable {
    let prompt: String
    let fragments: [[FragmentPart]]
    let ids: [Int]
    let weights: [Double]

    enum FragmentPart: Decodable {
        case text(String), weight(Double)
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { self = .text(s) } else { self = .weight(try c.decode(Double.self)) }
        }
    }

    var expectedFragments: [WeightedFragment] {
        fragments.map { parts in
            guard case .text(let t) = parts[0], case .weight(let w) = parts[1] else { fatalError("bad fixture") }
            return WeightedFragment(t, w)
        }
    }
}

final class PromptWeightingTests: XCTestCase {
    /// The examples of the web UI's parse_prompt_attention docstring, with its printed results.
    func testWebUIDocumentedExamples() throws {
        XCTAssertEqual(try PromptWeighting.parse("normal text"), [WeightedFragment("normal text", 1.0)])
        XCTAssertEqual(try PromptWeighting.parse("an (important) word"),
                       [WeightedFragment("an ", 1.0), WeightedFragment("important", 1.1), WeightedFragment(" word", 1.0)])
        XCTAssertEqual(try PromptWeighting.parse("(unbalanced"), [WeightedFragment("unbalanced", 1.1)])
        XCTAssertEqual(try PromptWeighting.parse("\\(literal\\]"), [WeightedFragment("(literal]", 1.0)])
        XCTAssertEqual(try PromptWeighting.parse("(unnecessary)(parens)"), [WeightedFragment("unnecessaryparens", 1.1)])
        XCTAssertEqual(try PromptWeighting.parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."), [
            WeightedFragment("a ", 1.0), WeightedFragment("house", 1.5730000000000004), WeightedFragment(" ", 1.1),
            WeightedFragment("on", 1.0), WeightedFragment(" a ", 1.1), WeightedFragment("hill", 0.55),
            WeightedFragment(", sun, ", 1.1), WeightedFragment("sky", 1.4641000000000006), WeightedFragment(".", 1.1),
        ])
        XCTAssertEqual(try PromptWeighting.parse(""), [WeightedFragment("", 1.0)])
    }

    func testFixtureFragmentsIdsAndWeights() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: textEncoderFixtures + "/weighting_cases.json"))
        let cases = try JSONDecoder().decode([WeightingCase].self, from: data)
        XCTAssertGreaterThanOrEqual(cases.count, 10)
        let tok = TokenizerTests.sd15
        for c in cases {
            XCTAssertEqual(try PromptWeighting.parse(c.prompt), c.expectedFragments, c.prompt)
            let (ids, weights) = try PromptWeighting.weightedTokens(c.prompt, tokenizer: tok)
            XCTAssertEqual(ids, c.ids, c.prompt)
            XCTAssertEqual(weights, c.weights.map(Float.init), c.prompt)
        }
    }

    /// Without any syntax, weighting changes nothing: the ids are the plain tokenizer's and every weight is 1.
    func testPlainPromptsKeepTheTokenizersIds() throws {
        let tok = TokenizerTests.sd15
        for prompt in ["a photo of a young woman, bust shot, smiling", "", "she's here: 100% café 東京!"] {
            let (ids, weights) = try PromptWeighting.weightedTokens(prompt, tokenizer: tok)
            XCTAssertEqual(ids, tok.encode(prompt), prompt)
            XCTAssertEqual(weights, [Float](repeating: 1, count: 77), prompt)
        }
    }

    func testWeightSyntaxVariants() throws {
        XCTAssertEqual(try PromptWeighting.parse("( a : 1.5 )"), [WeightedFragment(" a ", 1.5)])
        XCTAssertEqual(try PromptWeighting.parse("(a:+.5)(b:-1)"), [WeightedFragment("a", 0.5), WeightedFragment("b", -1)])
        XCTAssertEqual(try PromptWeighting.parse("(a:2.)"), [WeightedFragment("a", 2)])
        XCTAssertEqual(try PromptWeighting.parse("x :1.5) y"), [WeightedFragment("x :1.5) y", 1)])
        XCTAssertEqual(try PromptWeighting.parse("[[a]]"), [WeightedFragment("a", (1 / 1.1) * (1 / 1.1))])
        XCTAssertEqual(try PromptWeighting.parse("a\\b \\\\"), [WeightedFragment("ab \\", 1)])
    }

    func testBadNumberIsAnErrorNamingThePrompt() {
        for (prompt, number) in [("(a:1.2.3)", "1.2.3"), ("(a:.)", ".")] {
            XCTAssertThrowsError(try PromptWeighting.parse(prompt)) { error in
                XCTAssertEqual(error as? PromptWeightingError, .badWeight(prompt: prompt, weight: number))
                XCTAssertTrue("\(error)".contains(prompt))
            }
        }
    }

    /// z·w, then rescaled to the old mean; unit weights leave z as it was.
    func testEmphasisKeepsTheMeanAndScalesTokens() {
        let S = 3, D = 2
        var z: [Float] = [1, 2, 3, 4, -1, 5]
        let before = z
        PromptWeighting.applyEmphasis(&z, weights: [1, 1, 1], length: S, width: D)
        XCTAssertEqual(z, before)
        PromptWeighting.applyEmphasis(&z, weights: [1, 2, 0.5], length: S, width: D)
        // weighted: [1, 2, 6, 8, -0.5, 2.5], mean 19/6; old mean 14/6; ratio 14/19.
        let expected: [Double] = [1, 2, 6, 8, -0.5, 2.5].map { $0 * 14 / 19 }
        assertClose(z.map(Double.init), expected, rtol: 1e-6, atol: 1e-7, label: "emphasis")
        XCTAssertEqual(z.reduce(0, +) / 6, before.reduce(0, +) / 6, accuracy: 1e-6)
    }
}
