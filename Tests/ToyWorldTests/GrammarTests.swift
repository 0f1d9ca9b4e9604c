import ToyWorld
import XCTest

final class GrammarTests: XCTestCase {
    func testEveryDescriptionParsesBack() throws {
        XCTAssertEqual(Description.all.count, 420)
        for d in Description.all { XCTAssertEqual(try Description(parsing: d.prompt), d, d.prompt) }
    }
}
