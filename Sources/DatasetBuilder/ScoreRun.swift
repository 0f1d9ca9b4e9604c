// Scoring a pool with one or more scorers (Sources/Scoring), sharded over ranks and resumable.
//
// Prompt p is scored by rank p mod W, all its images in one call per scorer (a scorer may batch them and cache the
// prompt's text embedding). Each rank appends its results, a prompt at a time, to POOL/scores.parts/NAME/rankR.jsonl
// ({"prompt_index", "image_index", "score"} lines); a rerun reads every part file (whatever the earlier rank count),
// skips what is scored and drops a torn last line. When every rank is done, one rank merges the parts into
// POOL/scores.jsonl (one line per image of pool.jsonl, one column per scorer) and POOL/scorers.json records each
// scorer's descriptor. A scorer name already recorded with another descriptor (other weights, settings or version) is
// refused, naming what differs: its column would mix two scorers. scorers.json is written with scores.jsonl.
import Foundation
import IO
import Scoring

public final class ScoreRun {
    public static let scoresFile = "scores.jsonl", scorersFile = "scorers.json", partsFolder = "scores.parts"
    public let folder: String
    public let entries: [PoolEntry]
    public let scorers: [any Scorer]
    /// Scores already on disk, per scorer name: [prompt_index, image_index] → score.
    public private(set) var known: [String: [[Int]: Double]] = [:]

    public init(folder: String, scorers: [any Scorer]) throws {
        self.folder = folder
        entries = try PoolIndex.read(folder: folder)
        self.scorers = scorers
        var names = Set<String>()
        for s in scorers where !names.insert(s.name).inserted { throw PoolError("scorer name '\(s.name)' is given twice") }
        for s in scorers { known[s.name] = try ScoreRun.readParts(partsDirectory(s.name)) }
    }

    func path(_ relative: String) -> String { (folder as NSString).appendingPathComponent(relative) }
    func partsDirectory(_ name: String) -> String { path(ScoreRun.partsFolder + "/" + name) }

    // MARK: - Descriptors

    /// scorers.json: the recorded descriptors, in column order.
    public static func readDescriptors(folder: String) throws -> [ScorerDescriptor] {
        let file = (folder as NSString).appendingPathComponent(scorersFile)
        guard let data = FileManager.default.contents(atPath: file) else { return [] }
        do { return try JSONDecoder().decode([String: [ScorerDescriptor]].self, from: data)["scorers"] ?? [] } catch {
            throw PoolError("\(file): not a scorers file ({\"scorers\": [descriptor, …]}): \(error)")
        }
    }

    /// Refuses a scorer whose name is recorded with another descriptor. Call before scoring.
    public func checkDescriptors() throws {
        let recorded = try ScoreRun.readDescriptors(folder: folder)
        for s in scorers {
            let d = s.descriptor
            if let old = recorded.first(where: { $0.name == d.name }) {
                guard old != d else { continue }
                var diff: [String] = []
                if old.kind != d.kind { diff.append("kind '\(old.kind)' → '\(d.kind)'") }
                if old.argument != d.argument { diff.append("argument '\(old.argument ?? "none")' → '\(d.argument ?? "none")'") }
                if old.version != d.version { diff.append("version '\(old.version)' → '\(d.version)'") }
                for key in Set(old.settings.keys).union(d.settings.keys).sorted() where old.settings[key] != d.settings[key] {
                    diff.append("setting \(key) '\(old.settings[key] ?? "none")' → '\(d.settings[key] ?? "none")'")
                }
                throw PoolError("\(path(ScoreRun.scorersFile)): scorer '\(d.name)' was recorded with other settings (\(diff.joined(separator: "; "))); "
                                + "give this scorer another name, or remove its entry and \(ScoreRun.partsFolder)/\(d.name) to score again")
            }
        }
    }

    /// Adds this run's scorers to scorers.json.
    func recordDescriptors() throws {
        var recorded = try ScoreRun.readDescriptors(folder: folder)
        for s in scorers where !recorded.contains(where: { $0.name == s.name }) { recorded.append(s.descriptor) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(["scorers": recorded]).write(to: URL(fileURLWithPath: path(ScoreRun.scorersFile)), options: .atomic)
    }

    // MARK: - Scoring

    /// Prompts of `rank` with an image some scorer has not scored.
    public func pendingPrompts(rank: Int, worldSize: Int) -> [Int] {
        let byPrompt = Dictionary(grouping: entries, by: \.promptIndex)
        return byPrompt.keys.sorted().filter { p in
            p % worldSize == rank && scorers.contains { s in byPrompt[p]!.contains { known[s.name]![[p, $0.imageIndex]] == nil } }
        }
    }

    /// Scores this rank's pending prompts; `progress(done, total)` after each prompt. Returns the images scored.
    @discardableResult
    public func score(rank: Int = 0, worldSize: Int = 1, progress: (Int, Int) -> Void = { _, _ in }) throws -> Int {
        let byPrompt = Dictionary(grouping: entries, by: \.promptIndex)
        let todo = pendingPrompts(rank: rank, worldSize: worldSize)
        var handles: [String: FileHandle] = [:]
        defer { for h in handles.values { try? h.close() } }
        for s in scorers {
            let dir = partsDirectory(s.name)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            handles[s.name] = try ScoreRun.openForAppend((dir as NSString).appendingPathComponent("rank\(rank).jsonl"))
        }
        var scored = 0
        for (done, p) in todo.enumerated() {
            let images = byPrompt[p]!.sorted { $0.imageIndex < $1.imageIndex }
            let pixels = try images.map { e -> ByteImage in
                do { return try PNG.readBytes(path(e.path), channels: 3) } catch {
                    throw PoolError("\(path(e.path)): cannot read the pool image (prompt \(p), image \(e.imageIndex)): \(error)")
                }
            }
            for s in scorers where images.contains(where: { known[s.name]![[p, $0.imageIndex]] == nil }) {
                let scores = try s.score(images: pixels, prompt: images[0].prompt)
                guard scores.count == images.count else {
                    throw PoolError("scorer '\(s.name)' gave \(scores.count) scores for the \(images.count) images of prompt \(p)")
                }
                if let bad = scores.firstIndex(where: { !$0.isFinite }) {
                    throw PoolError("scorer '\(s.name)' gave \(scores[bad]) for \(images[bad].path) (prompt \(p)): scores must be finite")
                }
                var text = ""
                for (e, v) in zip(images, scores) {
                    text += JSONValue.object([("prompt_index", .int(p)), ("image_index", .int(e.imageIndex)), ("score", .double(v))]).serialized() + "\n"
                    known[s.name]![[p, e.imageIndex]] = v
                }
                try handles[s.name]!.write(contentsOf: Foundation.Data(text.utf8))
                scored += images.count
            }
            progress(done + 1, todo.count)
        }
        return scored
    }

    /// Opens a part file for appending, first cutting a torn last line (a run killed while writing it).
    static func openForAppend(_ file: String) throws -> FileHandle {
        if !FileManager.default.fileExists(atPath: file) { _ = FileManager.default.createFile(atPath: file, contents: nil) }
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: file))
        let data = try h.readToEnd() ?? Foundation.Data()
        if let last = data.last, last != UInt8(ascii: "\n") {
            let keep = (data.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0) - data.startIndex
            try h.truncate(atOffset: UInt64(keep))
        }
        try h.seekToEnd()
        return h
    }

    /// Every complete line of the part files in `directory`.
    static func readParts(_ directory: String) throws -> [[Int]: Double] {
        var out: [[Int]: Double] = [:]
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".jsonl") }.sorted()
        for name in files {
            let file = (directory as NSString).appendingPathComponent(name)
            guard var data = FileManager.default.contents(atPath: file) else { continue }
            if let end = data.lastIndex(of: UInt8(ascii: "\n")) { data = data[...end] } else { continue }   // torn last line
            let tmp = Foundation.Data(data)
            for (number, raw) in tmp.split(separator: UInt8(ascii: "\n")).enumerated() {
                guard let o = try? JSONSerialization.jsonObject(with: Foundation.Data(raw)) as? [String: Any],
                      let p = (o["prompt_index"] as? NSNumber)?.intValue, let k = (o["image_index"] as? NSNumber)?.intValue,
                      let s = (o["score"] as? NSNumber)?.doubleValue else {
                    throw PoolError("\(file):\(number + 1): not a score line; remove the file to score its images again")
                }
                out[[p, k]] = s
            }
        }
        return out
    }

    // MARK: - Merge

    /// Writes scores.jsonl: every image of the pool with a column for every recorded scorer whose scores are complete.
    /// Call on one rank after all ranks finished. Returns the columns written.
    @discardableResult
    public func writeScores() throws -> [String] {
        try checkDescriptors()
        try recordDescriptors()
        var columns: [(String, [[Int]: Double])] = []
        for d in try ScoreRun.readDescriptors(folder: folder) {
            let scores = try ScoreRun.readParts(partsDirectory(d.name))   // every rank's parts
            if entries.allSatisfy({ scores[[$0.promptIndex, $0.imageIndex]] != nil }) { columns.append((d.name, scores)) }
        }
        for s in scorers where !columns.contains(where: { $0.0 == s.name }) {
            throw PoolError("scorer '\(s.name)' has not scored every image of \(folder); rerun the command to finish")
        }
        try JSONLines.write(entries.map { e in
            JSONValue.object([("prompt_index", .int(e.promptIndex)), ("image_index", .int(e.imageIndex))]
                             + columns.map { ($0.0, .double($0.1[[e.promptIndex, e.imageIndex]]!)) }).serialized()
        }, to: path(ScoreRun.scoresFile))
        return columns.map(\.0)
    }
}
