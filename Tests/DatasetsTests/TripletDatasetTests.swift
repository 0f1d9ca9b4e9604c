// TripletDataset: every kind of bad line is reported with its exact line number and id; skipBad drops and counts.
import Foundation
import IO
import TestSupport
import XCTest
@testable import Datasets

final class TripletDatasetTests: XCTestCase {
    /// A dataset folder with img/w.png, img/l.png (valid PNGs), img/bad.png (zero bytes) and the given lines.
    private func makeDataset(_ lines: [String], terminator: String = "\n") throws -> String {
        let dir = try temporaryDirectory(self)
        let img = (dir as NSString).appendingPathComponent("img")
        try FileManager.default.createDirectory(atPath: img, withIntermediateDirectories: true)
        let image = try Image(width: 2, height: 2, channels: 3, pixels: (0..<12).map { Float($0) / 6 - 1 })
        try PNG.write(image, to: img + "/w.png")
        try PNG.write(image, to: img + "/l.png")
        _ = FileManager.default.createFile(atPath: img + "/bad.png", contents: Foundation.Data())
        let text = lines.joined(separator: terminator)
        try text.write(toFile: dir + "/triplets.jsonl", atomically: true, encoding: .utf8)
        return dir
    }

    private static func line(_ id: String, winner: String = "img/w.png", loser: String = "img/l.png") -> String {
        #"{"id": "\#(id)", "prompt": "a photo of \#(id)", "winner": "\#(winner)", "loser": "\#(loser)"}"#
    }

    /// One line per problem kind; the comment is the 1-based line number.
    private static let mixedLines: [String] = [
        #"{"id": "a1", "prompt": "a cat", "winner": "img/w.png", "loser": "img/l.png", "score": 0.5, "tags": ["x/y", 2]}"#, // 1
        "   ",                                                                                         // 2 blank
        #"{"id": "a3", "prompt": "#,                                                                   // 3
        "[1, 2]",                                                                                      // 4
        #"{"prompt": "p", "winner": "img/w.png", "loser": "img/l.png"}"#,                               // 5
        #"{"id": 6, "prompt": "p", "winner": "img/w.png", "loser": "img/l.png"}"#,                      // 6
        #"{"id": "", "prompt": "p", "winner": "img/w.png", "loser": "img/l.png"}"#,                     // 7
        #"{"id": "a8", "winner": "img/w.png", "loser": "img/l.png"}"#,                                  // 8
        #"{"id": "a9", "prompt": "p", "winner": true, "loser": "img/l.png"}"#,                          // 9
        #"{"id": "a10", "prompt": "p", "winner": "img/w.png", "loser": null}"#,                         // 10
        line("a1"),                                                                                    // 11 duplicate
        line("a12", winner: "../w.png"),                                                               // 12
        line("a13", loser: "/etc/passwd"),                                                             // 13
        line("a14", winner: "img/x.png"),                                                              // 14
        line("a15", loser: "img"),                                                                     // 15
        line("a16", winner: "img/./w.png") + "\r",                                                     // 16 good, CRLF
        line("a17", winner: "img/bad.png"),                                                            // 17 undecodable
        "",                                                                                            // 18 blank
    ]

    private static let expectedProblems = [
        "triplets.jsonl:4: is a JSON array, expected an object with id, prompt, winner and loser",
        #"triplets.jsonl:5: missing field "id""#,
        #"triplets.jsonl:6: field "id" is a number, expected a string"#,
        #"triplets.jsonl:7: field "id" is empty"#,
        #"triplets.jsonl:8 (id "a8"): missing field "prompt""#,
        #"triplets.jsonl:9 (id "a9"): field "winner" is a boolean, expected a string"#,
        #"triplets.jsonl:10 (id "a10"): field "loser" is a null, expected a string"#,
        #"triplets.jsonl:11 (id "a1"): duplicate id (first used on line 1)"#,
        #"triplets.jsonl:12 (id "a12"): winner "../w.png" leaves the dataset folder (".." is not allowed)"#,
        #"triplets.jsonl:13 (id "a13"): loser "/etc/passwd" is an absolute path (paths must be relative to the dataset folder)"#,
        #"triplets.jsonl:14 (id "a14"): winner "img/x.png" does not exist"#,
        #"triplets.jsonl:15 (id "a15"): loser "img" is a directory"#,
    ]

    func testEveryProblemNamesLineAndId() throws {
        let dir = try makeDataset(Self.mixedLines)
        let dataset = try TripletDataset.open(folder: dir, skipBad: true, checkImages: false)
        let messages = dataset.skipped.map(\.description)
        XCTAssertEqual(messages.count, 13, messages.joined(separator: "\n"))
        XCTAssertTrue(messages[0].hasPrefix("triplets.jsonl:3: not valid JSON"), messages[0])
        XCTAssertEqual(Array(messages.dropFirst()), Self.expectedProblems)
        XCTAssertEqual(dataset.triplets.map(\.id), ["a1", "a16", "a17"])
        XCTAssertEqual(dataset.triplets.map(\.line), [1, 16, 17])
        XCTAssertTrue(dataset.report.contains("3 triplets, 13 bad lines skipped:"), dataset.report)
        XCTAssertTrue(dataset.report.contains(Self.expectedProblems[10]), dataset.report)
    }

    func testCheckImagesReportsUndecodablePNG() throws {
        let dir = try makeDataset(Self.mixedLines)
        let dataset = try TripletDataset.open(folder: dir, skipBad: true, checkImages: true)
        XCTAssertEqual(dataset.skipped.count, 14)
        XCTAssertEqual(dataset.triplets.map(\.id), ["a1", "a16"])
        let last = dataset.skipped.last!.description
        XCTAssertTrue(last.hasPrefix(#"triplets.jsonl:17 (id "a17"): winner "img/bad.png" is not a readable PNG: "#), last)
        // The good images decode, so a clean dataset passes the check.
        let clean = try makeDataset([Self.line("x"), Self.line("y", winner: "img/l.png", loser: "img/w.png")])
        XCTAssertEqual(try TripletDataset.open(folder: clean, checkImages: true).count, 2)
    }

    func testWithoutSkipBadThrowsFirstProblemsAndTotal() throws {
        let dir = try makeDataset(Self.mixedLines)
        XCTAssertThrowsError(try TripletDataset.open(folder: dir)) { error in
            guard case let TripletDatasetError.badLines(path, problems, total, lines) = error else {
                return XCTFail("unexpected error \(error)")
            }
            XCTAssertEqual(path, dir + "/triplets.jsonl")
            XCTAssertEqual(total, 13)
            XCTAssertEqual(lines, 16)
            XCTAssertEqual(problems.map(\.line), [3, 4, 5, 6, 7])
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix(dir + "/triplets.jsonl: 13 of 16 triplet lines are bad (first 5 shown)"), text)
            XCTAssertTrue(text.contains(Self.expectedProblems[0]), text)
            XCTAssertFalse(text.contains("triplets.jsonl:8 "), text)
        }
        // One bad line: no "first N shown".
        let one = try makeDataset([Self.line("a"), Self.line("b", loser: "img/none.png")])
        XCTAssertThrowsError(try TripletDataset.open(folder: one)) { error in
            XCTAssertEqual("\(error)", one + "/triplets.jsonl: 1 of 2 triplet lines are bad; fix them or skip bad lines:\n"
                + "  triplets.jsonl:2 (id \"b\"): loser \"img/none.png\" does not exist")
        }
    }

    func testGoodDatasetKeepsFieldsAndExtras() throws {
        let dir = try makeDataset([Self.mixedLines[0], Self.line("b")], terminator: "\r\n")
        let dataset = try TripletDataset.open(folder: dir)
        XCTAssertEqual(dataset.count, 2)
        XCTAssertTrue(dataset.skipped.isEmpty)
        let a = dataset[0]
        XCTAssertEqual(a.prompt, "a cat")
        XCTAssertEqual(a.winner, "img/w.png")
        XCTAssertEqual(a.extraFields, ["score": "0.5", "tags": #"["x/y",2]"#])
        XCTAssertEqual(dataset.winnerPath(0), dir + "/img/w.png")
        XCTAssertEqual(dataset.loserPath(1), dir + "/img/l.png")
        XCTAssertEqual(a.jsonLine(),
                       #"{"id":"a1","prompt":"a cat","winner":"img/w.png","loser":"img/l.png","score":0.5,"tags":["x/y",2]}"#)
        // jsonLine reads back to the same triplet.
        let again = try makeDataset([a.jsonLine()])
        let b = try TripletDataset.open(folder: again)[0]
        XCTAssertEqual(b, Triplet(id: "a1", prompt: "a cat", winner: "img/w.png", loser: "img/l.png", line: 1,
                                  extraFields: a.extraFields))
        XCTAssertEqual(dataset.report, dir + "/triplets.jsonl: 2 triplets, no bad lines")
    }

    func testBlankFileAndMissingFile() throws {
        let blank = try makeDataset(["", "  ", ""])
        XCTAssertEqual(try TripletDataset.open(folder: blank).count, 0)
        let dir = try temporaryDirectory(self)
        XCTAssertThrowsError(try TripletDataset.open(folder: dir)) { error in
            XCTAssertEqual("\(error)", dir + "/triplets.jsonl: cannot read the triplet list: no such file")
        }
    }

    func testAllBadWithSkipBadGivesEmptyDataset() throws {
        let dir = try makeDataset(["nope", "{}"])
        let dataset = try TripletDataset.open(folder: dir, skipBad: true)
        XCTAssertEqual(dataset.count, 0)
        XCTAssertEqual(dataset.skipped.map(\.line), [1, 2])
        XCTAssertEqual(dataset.skipped[1].description, #"triplets.jsonl:2: missing field "id""#)
    }
}
