// Winner and loser per prompt from a scored pool (HG-DPO Eq. 6: the best and the worst image of the pool; appendix:
// a loser of rank l), written as the triplet dataset `hgdpo data check`, `encode` and `train` read
// (Sources/Datasets/Triplets.swift).
//
// For each prompt, the images with image_index < pool size are ranked by the scorer's column, best first (equal
// scores keep image order). Rank w is the winner and rank l the loser (1-based; a negative l counts from the worst:
// −1 is the worst). A prompt is skipped, and counted, when it has fewer images than a rank needs, when winner and loser
// scores are equal (a tie) or when their margin is below the minimum. Images are hard-linked into OUT/images (the
// pool's relative paths), copied where the filesystem cannot link.
import Datasets
import Foundation
import IO

public struct SelectionSettings: Sendable {
    public var scorer: String
    public var winnerRank = 1
    public var loserRank = -1
    /// Images of each prompt used (the first ones); nil: all.
    public var poolSize: Int?
    public var minMargin = 0.0
    public init(scorer: String) { self.scorer = scorer }
}

public struct SelectionSummary: Sendable {
    public var triplets = 0, ties = 0, belowMargin = 0, tooFewImages = 0, linked = 0, copied = 0
    /// Sum of winner − loser scores over the triplets written.
    public var marginSum = 0.0
    public var meanMargin: Double { triplets == 0 ? 0 : marginSum / Double(triplets) }
}

public enum Selection {
    public static func run(pool: String, out: String, settings s: SelectionSettings) throws -> SelectionSummary {
        let entries = try PoolIndex.read(folder: pool)
        let scoresPath = (pool as NSString).appendingPathComponent(ScoreRun.scoresFile)
        guard FileManager.default.fileExists(atPath: scoresPath) else {
            throw PoolError("\(scoresPath): missing; score the pool first (hgdpo score --pool \(pool) --scorer …)")
        }
        var scores: [[Int]: Double] = [:]
        var columns = Set<String>()
        for (line, o) in try JSONLines.objects(scoresPath) {
            let p = try JSONLines.int(o, "prompt_index", scoresPath, line), k = try JSONLines.int(o, "image_index", scoresPath, line)
            columns.formUnion(o.keys.filter { $0 != "prompt_index" && $0 != "image_index" })
            if let v = o[s.scorer] {
                guard let n = v as? NSNumber, n.doubleValue.isFinite else {
                    throw PoolError("\(scoresPath):\(line): \"\(s.scorer)\" is not a finite number")
                }
                scores[[p, k]] = n.doubleValue
            }
        }
        guard columns.contains(s.scorer) else {
            throw PoolError("\(scoresPath): no column '\(s.scorer)' (columns: \(columns.sorted().joined(separator: ", ")))")
        }
        let byPrompt = Dictionary(grouping: entries, by: \.promptIndex)
        try checkRanks(s, imagesPerPrompt: byPrompt.values.map(\.count).max() ?? 0)
        let fm = FileManager.default
        if fm.fileExists(atPath: (out as NSString).appendingPathComponent(TripletDataset.fileName)) {
            throw PoolError("\(out) already holds a \(TripletDataset.fileName); choose a new --out")
        }
        try fm.createDirectory(atPath: out, withIntermediateDirectories: true)

        var summary = SelectionSummary()
        var lines: [String] = []
        for p in byPrompt.keys.sorted() {
            let images = byPrompt[p]!.filter { e in s.poolSize.map { e.imageIndex < $0 } ?? true }
            var ranked: [(entry: PoolEntry, score: Double)] = []
            for e in images {
                guard let v = scores[[e.promptIndex, e.imageIndex]] else {
                    throw PoolError("\(scoresPath): no '\(s.scorer)' score for prompt \(p) image \(e.imageIndex)")
                }
                ranked.append((e, v))
            }
            ranked.sort { $0.score != $1.score ? $0.score > $1.score : $0.entry.imageIndex < $1.entry.imageIndex }
            let n = ranked.count
            let w = s.winnerRank > 0 ? s.winnerRank - 1 : n + s.winnerRank
            let l = s.loserRank > 0 ? s.loserRank - 1 : n + s.loserRank
            guard (0..<n).contains(w), (0..<n).contains(l), w != l else { summary.tooFewImages += 1; continue }
            let (winner, loser) = (ranked[w], ranked[l])
            if winner.score == loser.score { summary.ties += 1; continue }
            if abs(winner.score - loser.score) < s.minMargin { summary.belowMargin += 1; continue }
            for e in [winner.entry, loser.entry] { try link(from: pool, to: out, e.path, &summary) }
            let extra: [String: JSONValue] = [
                "prompt_index": .int(p), "scorer": .string(s.scorer),
                "winner_score": .double(winner.score), "loser_score": .double(loser.score),
                "winner_rank": .int(w + 1), "loser_rank": .int(l + 1), "pool_size": .int(n),
                "winner_image_index": .int(winner.entry.imageIndex), "loser_image_index": .int(loser.entry.imageIndex),
                "winner_seed": .int(Int(winner.entry.seed)), "loser_seed": .int(Int(loser.entry.seed)),
            ]
            let triplet = Triplet(id: String(format: "p%08d", p), prompt: winner.entry.prompt, winner: winner.entry.path,
                                  loser: loser.entry.path, extraFields: extra.mapValues { $0.serialized() })
            lines.append(triplet.jsonLine())
            summary.triplets += 1
            summary.marginSum += winner.score - loser.score
        }
        guard !lines.isEmpty else {
            throw PoolError("no prompt gave a triplet (ties \(summary.ties), below the margin \(summary.belowMargin), "
                            + "too few images \(summary.tooFewImages)): nothing written")
        }
        try JSONLines.write(lines, to: (out as NSString).appendingPathComponent(TripletDataset.fileName))
        return summary
    }

    /// The settings against the pool's images per prompt, before anything is written: a pool size larger than the
    /// pool, a rank beyond the images ranked, or a winner and loser rank naming the same image are errors (a run
    /// that silently ranked fewer images, or skipped every prompt, would mislabel an ablation).
    public static func checkRanks(_ s: SelectionSettings, imagesPerPrompt pool: Int) throws {
        guard s.winnerRank != 0, s.loserRank != 0 else { throw PoolError("ranks are 1-based (1 = best) or negative (−1 = worst); 0 is neither") }
        if let n = s.poolSize {
            guard n >= 2 else { throw PoolError("--pool-size \(n): a pair needs at least 2 images") }
            guard n <= pool else { throw PoolError("--pool-size \(n) is larger than the pool's \(pool) images per prompt") }
        }
        let n = s.poolSize ?? pool
        let what = s.poolSize == nil ? "the pool's \(n) images per prompt" : "the \(n) images of --pool-size \(n)"
        for (name, r) in [("--winner-rank", s.winnerRank), ("--loser-rank", s.loserRank)] where abs(r) > n {
            throw PoolError("\(name) \(r) is beyond \(what) (ranks 1…\(n) from the best, −1…−\(n) from the worst)")
        }
        let w = s.winnerRank > 0 ? s.winnerRank - 1 : n + s.winnerRank
        let l = s.loserRank > 0 ? s.loserRank - 1 : n + s.loserRank
        guard w != l else {
            throw PoolError("--winner-rank \(s.winnerRank) and --loser-rank \(s.loserRank) are the same image among \(n) ranked")
        }
    }

    /// Hard-links pool/relative to out/relative (a copy where linking fails, e.g. across filesystems).
    static func link(from pool: String, to out: String, _ relative: String, _ summary: inout SelectionSummary) throws {
        let src = (pool as NSString).appendingPathComponent(relative), dst = (out as NSString).appendingPathComponent(relative)
        let fm = FileManager.default
        if fm.fileExists(atPath: dst) { return }
        try fm.createDirectory(atPath: (dst as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        do { try fm.linkItem(atPath: src, toPath: dst); summary.linked += 1 } catch {
            do { try fm.copyItem(atPath: src, toPath: dst); summary.copied += 1 } catch {
                throw PoolError("\(src): cannot link or copy into \(out): \(error)")
            }
        }
    }
}
