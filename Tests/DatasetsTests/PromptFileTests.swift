// PromptFile: plain and TSV prompt files, --prompt-column, --category, and each bad input named with its line.
import Foundation
import TestSupport
import XCTest
@testable import Datasets

final class PromptFileTests: XCTestCase {
    private func file(_ bytes: [UInt8]) throws -> String {
        let path = try temporaryDirectory(self) + "/prompts"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        return path
    }
    private func file(_ text: String) throws -> String { try file(Array(text.utf8)) }

    private func assertError(_ body: @autoclosure () throws -> [String], contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(contains), "\(error) does not contain '\(contains)'", file: file, line: line)
        }
    }

    func testPlainLines() throws {
        let path = try file("a photo of a woman\r\n\n   \nthree people, <b>\"quoted\"</b>\nlast without newline")
        XCTAssertEqual(try PromptFile.read(path), ["a photo of a woman", "three people, <b>\"quoted\"</b>", "last without newline"])
    }

    func testTSVWithPromptColumnAndCategory() throws {
        let path = try file("\u{FEFF}Prompt\tCategory\tChallenge\n"
                            + "a man riding a horse\tPeople\tBasic\n"
                            + "a red car\tVehicles\tBasic\n"
                            + "\n"
                            + "a woman reading\tpeople\tComplex\n")
        XCTAssertEqual(try PromptFile.read(path), ["a man riding a horse", "a red car", "a woman reading"])
        XCTAssertEqual(try PromptFile.read(path, category: "People"), ["a man riding a horse", "a woman reading"])
        XCTAssertEqual(try PromptFile.read(path, column: "challenge", category: "Vehicles"), ["Basic"])
        assertError(try PromptFile.read(path, column: "text"), contains: "line 1 (header) has no column 'text'")
        assertError(try PromptFile.read(path, category: "Animals"), contains: "no prompts in category 'Animals'")
    }

    func testBadInputsNameTheLine() throws {
        assertError(try PromptFile.read("/nonexistent/prompts.txt"), contains: "/nonexistent/prompts.txt: cannot read")
        assertError(try PromptFile.read(try file([0x61, 0x0A, 0x62, 0xFF, 0xFE, 0x0A])), contains: "line 2 is not valid UTF-8")
        assertError(try PromptFile.read(try file("\n \n")), contains: "no prompts (only blank lines)")
        assertError(try PromptFile.read(try file("a\nb"), category: "People"), contains: "--category needs a TSV")
        assertError(try PromptFile.read(try file("a\nb"), column: "prompt"), contains: "--prompt-column needs a TSV")
        assertError(try PromptFile.read(try file("Prompt\tCategory\nok\tPeople\nshort\n"), category: "People"),
                    contains: "line 3 has 1 tab-separated fields")
        assertError(try PromptFile.read(try file("Prompt\tCategory\n\tPeople\n")), contains: "line 2: the prompt is empty")
        assertError(try PromptFile.read(try file("Category\tNote\nPeople\tx\n")), contains: "no column 'prompt'")
    }
}
