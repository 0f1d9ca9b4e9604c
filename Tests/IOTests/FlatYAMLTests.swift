import Foundation
import XCTest
@testable import IO

final class FlatYAMLTests: XCTestCase {
    struct Sample: Decodable, Equatable {
        var lr: Double, global_batch: Int, seed: UInt64, name: String, quoted: String, single: String
        var flag: Bool, missing: Int?, list: [Double], mixed_precision: String
    }

    func testParsesFlatDocumentIntoTheSameValuesAsJSON() throws {
        let yaml = """
        # an HG-DPO run
        ---
        lr: 1e-5            # the paper's
        global_batch: 16
        seed: 18446744073709551615
        name: run a#1
        quoted: "a: b # not a comment\\n"
        single: 'it''s'
        flag: true
        missing: ~
        list: [0.9, .999, +2]
        mixed_precision: bf16\r

        """
        let json = try FlatYAML.json(from: yaml, path: "run.yaml")
        let s = try JSONDecoder().decode(Sample.self, from: Data(json.utf8))
        XCTAssertEqual(s, Sample(lr: 1e-5, global_batch: 16, seed: .max, name: "run a#1", quoted: "a: b # not a comment\n",
                                 single: "it's", flag: true, missing: nil, list: [0.9, 0.999, 2], mixed_precision: "bf16"))
    }

    func testRefusesWhatItDoesNotReadWithTheLine() {
        let cases: [(String, Int, String)] = [
            ("a: 1\n  b: 2\n", 2, "indented"),
            ("a: 1\nb:\n", 2, "no value"),
            ("- x\n", 1, "block lists"),
            ("a: 1\na: 2\n", 2, "twice"),
            ("just words\n", 1, "expected `key: value`"),
            ("a: [1, [2]]\n", 1, "nested"),
            ("a: \"open\n", 1, "double-quoted"),
            ("a: {b: 1}\n", 1, "flow mappings"),
        ]
        for (text, line, words) in cases {
            XCTAssertThrowsError(try FlatYAML.json(from: text, path: "c.yaml"), text) { error in
                guard let e = error as? FlatYAMLError else { return XCTFail("\(error)") }
                XCTAssertEqual(e.line, line, text)
                XCTAssertTrue(e.description.hasPrefix("c.yaml:\(line): "), e.description)
                XCTAssertTrue(e.description.contains(words), "\(e.description) should say \(words)")
            }
        }
    }

    func testDecodeConfigReadsYAMLFilesByExtension() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("flatyaml-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        struct Config: Decodable, Equatable { var beta: Double; var objective: String }
        let yaml = dir.appendingPathComponent("run.yml").path
        try "beta: 2500\nobjective: dpo\n".write(toFile: yaml, atomically: true, encoding: .utf8)
        XCTAssertEqual(try decodeConfig(Config.self, from: yaml), Config(beta: 2500, objective: "dpo"))
        try "beta: [1]\nobjective: dpo\n".write(toFile: yaml, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try decodeConfig(Config.self, from: yaml)) { error in
            XCTAssertTrue("\(error)".contains("run.yml") && "\(error)".contains("beta"), "\(error)")
        }
    }
}
