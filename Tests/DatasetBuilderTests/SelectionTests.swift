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
            XCTAssertTrue("\($0)".contains("--winner-rank 6 is beyond the pool's 5 images per prompt"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/e"), "nothing written for bad settings")
    }

    /// The ablation settings (pool size N, loser rank l) against the pool: every impossible combination is an error
    /// naming the option, before anything is written; the possible extremes work.
    func testPoolSizeAndRankChecks() throws {
        let dir = try temporaryDirectory(self)
        let pool = try makePool(dir, values: [[3, 9, 1, 7, 5], [4, 1, 2, 8, 6]])
        try score(pool)
        func settings(pool n: Int? = nil, winner: Int = 1, loser: Int = -1) -> SelectionSettings {
            var s = SelectionSettings(scorer: "t")
            s.poolSize = n; s.winnerRank = winner; s.loserRank = loser
            return s
        }
        let bad: [(SelectionSettings, String)] = [
            (settings(pool: 6), "--pool-size 6 is larger than the pool's 5 images per prompt"),
            (settings(pool: 1), "--pool-size 1: a pair needs at least 2 images"),
            (settings(pool: 2, loser: -3), "--loser-rank -3 is beyond the 2 images of --pool-size 2"),
            (settings(pool: 3, loser: 4), "--loser-rank 4 is beyond the 3 images of --pool-size 3"),
            (settings(winner: -6), "--winner-rank -6 is beyond the pool's 5 images per prompt"),
            (settings(winner: 1, loser: -5), "--winner-rank 1 and --loser-rank -5 are the same image among 5 ranked"),
            (settings(pool: 2, winner: 2, loser: -1), "--winner-rank 2 and --loser-rank -1 are the same image among 2 ranked"),
            (settings(loser: 0), "ranks are 1-based"),
        ]
        for (i, (s, message)) in bad.enumerated() {
            XCTAssertThrowsError(try Selection.run(pool: pool, out: dir + "/bad\(i)", settings: s)) {
                XCTAssertTrue("\($0)".contains(message), "case \(i): \($0)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad\(i)"), "case \(i) wrote its folder")
        }
        // The whole pool (N = 5) and loser rank 5 = −1; N = 2 with loser rank 2 = −1 (the worst of two).
        var r = try Selection.run(pool: pool, out: dir + "/n5", settings: settings(pool: 5, loser: 5))
        XCTAssertEqual(r.triplets, 2)
        XCTAssertEqual(try triplets(dir + "/n5").map { $0["loser_score"] as? Double }, [1, 1])
        r = try Selection.run(pool: pool, out: dir + "/n2", settings: settings(pool: 2, loser: 2))
        XCTAssertEqual(try triplets(dir + "/n2").map { [$0["winner_score"] as? Double, $0["loser_score"] as? Double] }, [[9, 3], [4, 1]])
        XCTAssertEqual(r.meanMargin, 4.5)   // (9 − 3 + 4 − 1) / 2
        // Worst of 3 in the first three images: prompt 1 ranks 4 > 2 > 1.
        r = try Selection.run(pool: pool, out: dir + "/l3", settings: settings(pool: 3, loser: 3))
        XCTAssertEqual(try triplets(dir + "/l3").map { $0["loser_image_index"] as? Int }, [2, 1])
        XCTAssertEqual(r.triplets, 2)
    }

    /// The command line: bad values exit with 2 and a message naming the option.
    func testSelectCommandRejectsBadValues() throws {
        let dir = try temporaryDirectory(self)
        let pool = try makePool(dir, values: [[3, 9, 1, 7, 5], [4, 1, 2, 8, 6]])
        try score(pool)
        let base = ["select", "--pool", pool, "--by", "t", "--out", dir + "/t"]
        for (extra, message) in [(["--pool-size", "20"], "--pool-size 20 is larger than the pool's 5 images per prompt"),
                                 (["--pool-size", "1"], "--pool-size"),
                                 (["--pool-size", "two"], "--pool-size"),
                                 (["--loser-rank", "0"], "--loser-rank"),
                                 (["--loser-rank", "-9"], "--loser-rank -9 is beyond the pool's 5 images per prompt"),
                                 (["--winner-rank", "3", "--loser-rank", "-3"], "the same image among 5 ranked")] {
            let r = try hgdpo(base + extra)
            XCTAssertEqual(r.status, 2, "\(extra): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(message), "\(extra): \(r.stderr)")
        }
        let r = try hgdpo(base + ["--pool-size", "4", "--loser-rank", "2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        // First four: prompt 0 ranks 9 7 3 1 (loser 7), prompt 1 ranks 8 4 2 1 (loser 4): margins 2 and 4.
        XCTAssertTrue(r.stdout.contains(#""pool_size":4"#) && r.stdout.contains(#""triplets":2"#), r.stdout)
        XCTAssertTrue(r.stdout.contains(#""mean_margin":3"#), r.stdout)
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
