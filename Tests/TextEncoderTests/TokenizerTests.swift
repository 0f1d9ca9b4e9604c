// CLIPTokenizer against transformers 5.24's CLIPTokenizer on tricky prompts (Tests/parity/make_text_encoder_fixtures.py).
import Foundation
import XCTest
import IO
import TestSupport
@testable import TextEncoder

let textEncoderFixtures = repoRoot + "/Tests/TextEncoderTests/Fixtures"

struct TokenizerCase: Decodable {
    let prompt: String
    let ids: [Int]
    let ids_77: [Int]
    let ids_77_sd2: [Int]
}

final class TokenizerTests: XCTestCase {
    static let sd15 = try! CLIPTokenizer.load(ModelFolder(path: textEncoderFixtures + "/pipeline"))
    static let sd2 = try! CLIPTokenizer.load(ModelFolder(path: textEncoderFixtures + "/pipeline_gelu"))

    func cases() throws -> [TokenizerCase] {
        let data = try Data(contentsOf: URL(fileURLWithPath: textEncoderFixtures + "/tokenizer_cases.json"))
        return try JSONDecoder().decode([TokenizerCase].self, from: data)
    }

    func testMatchesTransformersOnTrickyPrompts() throws {
        let tok = Self.sd15, tok2 = Self.sd2
        let cases = try cases()
        XCTAssertGreaterThanOrEqual(cases.count, 25)
        for c in cases {
            let ids = [tok.bosId] + tok.tokenize(c.prompt) + [tok.eosId]
            XCTAssertEqual(ids, c.ids, "\(c.prompt.debugDescription): got \(tok.tokens(ids)), expected \(tok.tokens(c.ids))")
            XCTAssertEqual(tok.encode(c.prompt), c.ids_77, "\(c.prompt.debugDescription) padded to 77")
            XCTAssertEqual(tok2.encode(c.prompt), c.ids_77_sd2, "\(c.prompt.debugDescription) with pad \"!\"")
        }
        // The cases do exercise truncation and both pad tokens.
        XCTAssertTrue(cases.contains { $0.ids.count > 77 })
        XCTAssertTrue(cases.contains { $0.ids_77_sd2.last == 0 && $0.ids_77.last == tok.eosId })
    }

    func testSpecialTokensAndLengths() {
        let tok = Self.sd15, tok2 = Self.sd2
        XCTAssertEqual(tok.vocabulary.count, 3014)
        XCTAssertEqual(tok.mergeCount, 2500)
        XCTAssertEqual(tok.maxLength, 77)
        XCTAssertEqual([tok.bosId, tok.eosId, tok.padId, tok.unkId], [3012, 3013, 3013, 3013])
        // special_tokens_map.json's "!" wins over tokenizer_config.json's <|endoftext|>.
        XCTAssertEqual(tok2.padToken, "!")
        XCTAssertEqual(tok2.padId, 0)
        XCTAssertEqual(tok.encode("").count, 77)
        XCTAssertEqual(tok.encode(String(repeating: "cat ", count: 200)).count, 77)
    }

    /// The vocabulary is laid out as CLIP's: the 256 byte symbols in bytes_to_unicode order, then the same with </w>.
    func testByteSymbolsAndVocabularyLayout() {
        XCTAssertEqual(Set(bytesToUnicode).count, 256)
        XCTAssertEqual(bytesToUnicode[Int(UInt8(ascii: "a"))], "a")
        XCTAssertEqual(bytesToUnicode[Int(UInt8(ascii: " "))], "\u{120}")   // "Ġ"
        XCTAssertEqual(bytesToUnicode[0], "\u{100}")
        let tok = Self.sd15
        let order = (0..<256).map { b -> Int in
            // bytes_to_unicode lists the printable bytes first, then the others.
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            return printable ? 0 : 1
        }
        var expectedFirst: [Int] = []
        for pass in 0..<2 { for b in 0..<256 where order[b] == pass { expectedFirst.append(b) } }
        for (id, b) in expectedFirst.enumerated() {
            let symbol = String(Character(bytesToUnicode[b]))
            XCTAssertEqual(tok.vocabulary[symbol], id)
            XCTAssertEqual(tok.vocabulary[symbol + "</w>"], id + 256)
        }
    }

    func testCacheGivesTheSameIds() {
        let tok = Self.sd15
        let prompt = "a photo of a young woman, bust shot, smiling"
        let first = tok.tokenize(prompt), second = tok.tokenize(prompt)
        XCTAssertEqual(first, second)
        XCTAssertEqual(tok.tokens(tok.tokenize("a photo")), ["a</w>", "photo</w>"])
    }

    // MARK: - Errors name the file and line

    func folder(vocab: String? = nil, merges: String? = nil, config: String? = nil) throws -> String {
        let dir = try temporaryDirectory(self)
        let src = textEncoderFixtures + "/pipeline/tokenizer/"
        try (vocab.map { Data($0.utf8) } ?? Data(contentsOf: URL(fileURLWithPath: src + "vocab.json")))
            .write(to: URL(fileURLWithPath: dir + "/vocab.json"))
        try (merges.map { Data($0.utf8) } ?? Data(contentsOf: URL(fileURLWithPath: src + "merges.txt")))
            .write(to: URL(fileURLWithPath: dir + "/merges.txt"))
        if let config { try Data(config.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer_config.json")) }
        return dir
    }

    func assertError(_ dir: String, contains parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try CLIPTokenizer(vocabPath: dir + "/vocab.json", mergesPath: dir + "/merges.txt",
                                  config: (try? decodeConfig(TokenizerConfig.self, from: dir + "/tokenizer_config.json")) ?? TokenizerConfig(),
                                  configSource: dir + "/tokenizer_config.json")
            XCTFail("no error", file: file, line: line)
        } catch {
            for p in parts { XCTAssertTrue("\(error)".contains(p), "\(error) lacks \(p)", file: file, line: line) }
        }
    }

    func testBadFilesAreErrorsNamingTheFile() throws {
        var dir = try folder(vocab: "[1, 2]")
        assertError(dir, contains: [dir + "/vocab.json", "token → integer id"])
        dir = try folder(vocab: #"{"a": -3}"#)
        assertError(dir, contains: [dir + "/vocab.json", "'a' has the id -3"])
        dir = try folder(merges: "#version: 0.2\nt h\nbad line here\n")
        assertError(dir, contains: [dir + "/merges.txt:3:", "two symbols"])
        dir = try folder(merges: "#version: 0.2\nt h\nq zz\n")
        assertError(dir, contains: [dir + "/merges.txt:3:", "'zz' is not in"])
        dir = try folder(config: #"{"pad_token": "<|nope|>"}"#)
        assertError(dir, contains: ["pad_token", "<|nope|>"])
        dir = try folder(config: #"{"model_max_length": 1}"#)
        assertError(dir, contains: ["model_max_length", "no room"])
        dir = try folder(config: #"{"model_max_length": 1e30}"#)
        assertError(dir, contains: ["model_max_length", "no limit"])
    }

    /// BPE on a hand-made vocabulary: lowest rank first, every occurrence, left to right; a byte the vocabulary
    /// lacks comes out as the unk token and merges with nothing.
    func testBPERulesOnAHandMadeVocabulary() throws {
        let dir = try temporaryDirectory(self)
        let tokens = ["a", "b", "c", "a</w>", "b</w>", "aa", "ab</w>", "aab</w>", "<|startoftext|>", "<|endoftext|>"]
        let vocab = Dictionary(uniqueKeysWithValues: tokens.enumerated().map { ($1, $0) })
        try JSONEncoder().encode(vocab).write(to: URL(fileURLWithPath: dir + "/vocab.json"))
        try "#version: 0.2\na b</w>\na a\naa b</w>\n".write(toFile: dir + "/merges.txt", atomically: true, encoding: .utf8)
        let tok = try CLIPTokenizer.load(directory: dir)
        XCTAssertEqual(tok.mergeCount, 3)
        XCTAssertEqual(tok.tokens(tok.tokenize("ab")), ["ab</w>"])
        // "a a b</w>": rank 0 (a, b</w>) first gives a + ab</w>, and (a, ab</w>) has no rank.
        XCTAssertEqual(tok.tokens(tok.tokenize("AAB")), ["a", "ab</w>"])
        // "a a a a</w>": (a, a) merges left to right without overlap, giving aa a a</w>; then (aa, a) and
        // (a, a</w>) have no rank.
        XCTAssertEqual(tok.tokens(tok.tokenize("aaaa")), ["aa", "a", "a</w>"])
        // "d" and "x" are not in the vocabulary (neither alone nor with </w>): unk, and c b</w> stays apart.
        XCTAssertEqual(tok.tokenize("dcb x"), [tok.unkId, 2, 4, tok.unkId])
        XCTAssertEqual(tok.unkId, 9)
        XCTAssertEqual(tok.encode("ab").count, 77)
    }

    func testMergesWithCRLFAndNoVersionLineLoad() throws {
        let src = try String(contentsOfFile: textEncoderFixtures + "/pipeline/tokenizer/merges.txt", encoding: .utf8)
        let lines = src.split(separator: "\n").dropFirst()
        let dir = try folder(merges: lines.joined(separator: "\r\n") + "\r\n")
        let tok = try CLIPTokenizer(vocabPath: dir + "/vocab.json", mergesPath: dir + "/merges.txt")
        XCTAssertEqual(tok.mergeCount, 2500)
        let prompt = "a photo of a young woman, bust shot, smiling"
        XCTAssertEqual(tok.encode(prompt), Self.sd15.encode(prompt))
    }
}
