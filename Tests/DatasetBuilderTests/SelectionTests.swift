// Winner/loser selection and score files on a synthetic pool (no sampling): ranks, pool sizes, ties, margins, links,
// and ScoreRun's resumable part files.
import Datasets
import DatasetBuilder
import Foundation
import IO
import Scoring
import TestSupport
import XCTest

/// A scorer with fixed scores per image (by the image's first pixel), counting its calls.
final class TableScorer: Scorer {
    let descriptor = ScorerDescriptor(name: "t", kind: "table", argument: nil, version: "1")
    var calls = 0
    func score(images: [ByteImage], prompt: String) throws -> [Double] {
        calls += 1
        return images.map { Double($0.pixels[0]) }
    }
}

final class SelectionTests: XCTestCase {
    /// Two prompts of 5 images; image k of prompt p has first pixel `values[p][k]`.
    func makePool(_ dir: String, values: [[UInt8]]) throws -> String {
        let pool = dir + "/pool"
        var entries: [PoolEntry] = []
        for (p, row) in values.enumerated() {
            for (k, v) in row.enumerated() {
                let path = String(format: "images/%05d/%08d-%03d.png", 0, p, k)
                try FileManager.default.createDirectory(atPath: pool + "/images/00000", withIntermediateDirectories: true)
                try PNG.writeBytes(ByteImage(width: 1, height: 1, channels: 3, pixels: [v, 0, 0]), to: pool + "/" + path)
                entries.append(PoolEntry(promptIndex: p, prompt: "prompt \(p)", category: nil, imageIndex: k, seed: UInt64(10 * p + k), path: path))
            }
        }
        try PoolIndex.write(entries, folder: pool)
        return pool
    }

    func score(_ pool: String) throws {
        let run = try ScoreRun(folder: pool, scorers: [TableScorer()])
        try run.checkDescriptors()
        try run.score()
        try run.writeScores()
    }

    func triplets(_ out: String) throws -> [[String: Any]] {
        try String(contentsOfFile: out + "/triplets.jsonl", encoding: .utf8).split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Foundation.Data($0.utf8)) as! [String: Any]
        }
    }

    func testRanksPoolSizeTiesAndMargins() throws {
        let dir = try temporaryDirectory(self)
        let pool = try makePool(dir, values: [[3, 9, 1, 7, 5], [4, 4, 2, 8, 6], [5, 5, 5, 5, 9]])
        try score(pool)
        // Best against worst.
        var s = SelectionSettings(scorer: "t")
        var r = try Selection.run(pool: pool, out: dir + "/a", settings: s)
        XCTAssertEqual(r.triplets, 3)
        var t = try triplets(dir + "/a")
        XCTAssertEqual(t[0]["winner"] as? String, "images/00000/00000000-001.png")
        XCTAssertEqual(t[0]["loser"] as? String, "images/00000/00000000-002.png")
        XCTAssertEqual(t[0]["winner_score"] as? Double, 9)
        XCTAssertEqual(t[0]["loser_rank"] as? Int, 5)
        XCTAssertEqual(t[1]["winner_seed"] as? Int, 13)
        XCTAssertEqual(try TripletDataset.open(folder: dir + "/a", checkImages: true).count, 3)
        // Hard links: the same inode as the pool's image.
        let a = try FileManager.default.attributesOfItem(atPath: pool + "/images/00000/00000000-001.png")[.systemFileNumber] as? Int
        let b = try FileManager.default.attributesOfItem(atPath: dir + "/a/images/00000/00000000-001.png")[.systemFileNumber] as? Int
        XCTAssertEqual(a, b)
        XCTAssertEqual(r.linked, 6)

        // The first 2 images only (N = 2 ablation): prompt 1 ties (4, 4), prompt 2 ties (5, 5).
        s.poolSize = 2
        r = try Selection.run(pool: pool, out: dir + "/b", settings: s)
        XCTAssertEqual([r.triplets, r.ties], [1, 2])
        XCTAssertEqual(try triplets(dir + "/b")[0]["loser"] as? String, "images/00000/00000000-000.png")

        // Loser rank 2 (the second best), minimum margin 2.5: prompts 0 (9 vs 7) and 1 (8 vs 6) fall below it, 2 (9 vs 5) is kept.
        s = SelectionSettings(scorer: "t")
        s.loserRank = 2
        s.minMargin = 2.5
        r = try Selection.run(pool: pool, out: dir + "/c", settings: s)
        XCTAssertEqual([r.triplets, r.belowMargin], [1, 2])
        t = try triplets(dir + "/c")
        XCTAssertEqual(t[0]["prompt_index"] as? Int, 2)
        XCTAssertEqual(t[0]["loser_rank"] as? Int, 2)

        // Errors: an unknown column, an existing dataset, a rank beyond the pool.
        XCTAssertThrowsError(try Selection.run(pool: pool, out: dir + "/d", settings: SelectionSettings(scorer: "pick"))) {
            XCTAssertTrue("\($0)".contains("no column 'pick'"), "\($0)")
        }
        XCTAssertThrowsError(try Selection.run(pool: pool, out: dir + "/a", settings: SelectionSettings(scorer: "t"))) {
            XCTAssertTrue("\($0)".contains("already holds"), "\($0)")
        }
        s = SelectionSettings(scorer: "t")
        s.winnerRank = 6
        XCTAssertThrowsError(try Selection.run(pool: pool, out: dir + "/e", settings: s)) {
            XCTAssertTrue("\($0)".contains("too few images 3"), "\($0)")
        }
    }

    /// Part files survive an interruption: a torn last line is dropped and only the missing prompts are scored again.
    func testScoringResumesFromPartFiles() throws {
        let dir = try temporaryDirectory(self)
        let pool = try makePool(dir, values: [[1, 2], [3, 4], [5, 6]])
        let part = pool + "/scores.parts/t"
        try FileManager.default.createDirectory(atPath: part, withIntermediateDirectories: true)
        // As left by a 2-rank run killed mid-line: prompt 0 done on rank 0, prompt 1 torn on rank 1.
        try Foundation.Data(#"{"prompt_index":0,"image_index":0,"score":1}\#n{"prompt_index":0,"image_index":1,"score":2}\#n"#.utf8)
            .write(to: URL(fileURLWithPath: part + "/rank0.jsonl"))
        try Foundation.Data(#"{"prompt_index":1,"image_index":0,"score":3}\#n{"prompt_index":1,"image_"#.utf8)
            .write(to: URL(fileURLWithPath: part + "/rank1.jsonl"))
        let scorer = TableScorer()
        let run = try ScoreRun(folder: pool, scorers: [scorer])
        XCTAssertEqual(run.pendingPrompts(rank: 0, worldSize: 1), [1, 2])
        try run.score()
        XCTAssertEqual(scorer.calls, 2)
        try run.writeScores()
        let lines = try String(contentsOfFile: pool + "/scores.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.map(String.init), (0..<6).map { #"{"prompt_index":\#($0 / 2),"image_index":\#($0 % 2),"t":\#($0 + 1).0}"# })
        // A garbled complete line is an error naming the file and line.
        try Foundation.Data("garbage\n".utf8).write(to: URL(fileURLWithPath: part + "/rank1.jsonl"))
        XCTAssertThrowsError(try ScoreRun(folder: pool, scorers: [TableScorer()])) {
            XCTAssertTrue("\($0)".contains("rank1.jsonl:1: not a score line"), "\($0)")
        }
    }
}
