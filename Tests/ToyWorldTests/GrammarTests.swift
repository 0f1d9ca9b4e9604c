import ToyWorld
import XCTest

final class GrammarTests: XCTestCase {
    func testEveryDescriptionParsesBack() throws {
        XCTAssertEqual(Description.all.count, 420)
        XCTAssertEqual(Set(Description.all.map(\.prompt)).count, 420)
        for d in Description.all { XCTAssertEqual(try Description(parsing: d.prompt), d, d.prompt) }
    }

    func testPromptText() throws {
        XCTAssertEqual(Description(count: 1, color: .red, pose: .waving, background: .field).prompt,
                       "a person in a red shirt waving on a green field")
        XCTAssertEqual(Description(count: 3, color: .blue, pose: .armsUp, background: .street).prompt,
                       "three people in blue shirts with arms up on a city street")
        XCTAssertEqual(Description(count: 1, color: .orange, pose: .sitting, background: .snow).prompt,
                       "a person in an orange shirt sitting in the snow")
        XCTAssertEqual(try Description(parsing: "a person in a orange shirt sitting in the snow").color, .orange)
        // Case, spacing and a final full stop are free.
        XCTAssertEqual(try Description(parsing: "  Two People in PINK shirts   sitting at night."),
                       Description(count: 2, color: .pink, pose: .sitting, background: .night))
    }

    func testBadPromptsNameThePart() {
        func failure(_ prompt: String) -> ToyPromptError? {
            do { _ = try Description(parsing: prompt); return nil } catch { return error as? ToyPromptError }
        }
        XCTAssertEqual(failure("a person in a teal shirt waving on a green field")?.remainder,
                       "a teal shirt waving on a green field")
        XCTAssertEqual(failure("four people in red shirts waving at night")?.remainder, "four people in red shirts waving at night")
        XCTAssertEqual(failure("a person in a red shirt dancing at night")?.remainder, "dancing at night")
        XCTAssertEqual(failure("a person in a red shirt waving at night, smiling")?.remainder, "at night, smiling")
        let e = failure("a person in a red shirt waving on the moon")
        XCTAssertEqual(e?.remainder, "on the moon")
        XCTAssertTrue(e?.description.contains("'on a green field'") ?? false, e?.description ?? "no error")
    }

    func testSplitsAndPromptSets() throws {
        let heldOut = Description.all.filter(\.isHeldOut)
        XCTAssertGreaterThan(heldOut.count, 60)
        XCTAssertLessThan(heldOut.count, 110)
        let train = PromptSet.prompts(count: 1000, split: .train, seed: 3)
        XCTAssertEqual(train.count, 1000)
        for p in train { XCTAssertFalse(try Description(parsing: p).isHeldOut, p) }
        // Each description once before any twice.
        let pool = 420 - heldOut.count
        XCTAssertEqual(Set(train.prefix(pool)).count, pool)
        XCTAssertEqual(PromptSet.prompts(count: 50, split: .heldout, seed: 3), PromptSet.prompts(count: 50, split: .heldout, seed: 3))
        XCTAssertNotEqual(PromptSet.prompts(count: 50, split: .heldout, seed: 3), PromptSet.prompts(count: 50, split: .heldout, seed: 4))
        for p in PromptSet.prompts(count: 200, split: .heldout, seed: 0) { XCTAssertTrue(try Description(parsing: p).isHeldOut) }
    }
}
