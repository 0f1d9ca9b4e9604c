// The files a pool folder holds for users and the later steps to read:
//   pool.jsonl    one line per image: {"prompt_index", "prompt", ["category",] "image_index", "seed", "path"}
//                 (path relative to the pool folder), prompt-major
//   scores.jsonl  one line per image: {"prompt_index", "image_index", "<scorer name>": score, …} (ScoreRun.swift)
//   scorers.json  the descriptor (kind, argument, version, settings) of every scorer column of scores.jsonl
import Foundation
import IO

public struct PoolEntry: Sendable, Equatable {
    public let promptIndex: Int
    public let prompt: String
    public let category: String?
    public let imageIndex: Int
    public let seed: UInt64
    public let path: String

    public init(promptIndex: Int, prompt: String, category: String?, imageIndex: Int, seed: UInt64, path: String) {
        self.promptIndex = promptIndex; self.prompt = prompt; self.category = category; self.imageIndex = imageIndex
        self.seed = seed; self.path = path
    }

    public var jsonLine: String {
        var fields: [(String, JSONValue)] = [("prompt_index", .int(promptIndex)), ("prompt", .string(prompt))]
        if let category { fields.append(("category", .string(category))) }
        fields += [("image_index", .int(imageIndex)), ("seed", .int(Int(seed))), ("path", .string(path))]
        return JSONValue.object(fields).serialized()
    }
}

/// Reads and writes JSON-lines files whose every line is an object, reporting bad lines by file and line number.
enum JSONLines {
    static func objects(_ path: String) throws -> [(line: Int, object: [String: Any])] {
        guard let data = FileManager.default.contents(atPath: path) else { throw PoolError("\(path): cannot read (no such file?)") }
        var out: [(Int, [String: Any])] = []
        var number = 0
        for raw in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            if raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            guard let object = try? JSONSerialization.jsonObject(with: Foundation.Data(raw)) as? [String: Any] else {
                throw PoolError("\(path):\(number): not a JSON object")
            }
            out.append((number, object))
        }
        return out
    }

    static func int(_ object: [String: Any], _ key: String, _ path: String, _ line: Int) throws -> Int {
        guard let n = object[key] as? NSNumber, String(cString: n.objCType) != "c", n.doubleValue == n.doubleValue.rounded(),
              n.doubleValue >= 0 else {
            throw PoolError("\(path):\(line): field \"\(key)\" is missing or not a non-negative integer")
        }
        return n.intValue
    }

    static func string(_ object: [String: Any], _ key: String, _ path: String, _ line: Int) throws -> String {
        guard let s = object[key] as? String else { throw PoolError("\(path):\(line): field \"\(key)\" is missing or not a string") }
        return s
    }

    static func write(_ lines: [String], to path: String) throws {
        try Foundation.Data((lines.map { $0 + "\n" }.joined()).utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

public enum PoolIndex {
    public static let fileName = "pool.jsonl"

    public static func write(_ entries: [PoolEntry], folder: String) throws {
        try JSONLines.write(entries.map(\.jsonLine), to: (folder as NSString).appendingPathComponent(fileName))
    }

    /// pool.jsonl of `folder`; each line's fields are checked and (prompt_index, image_index) pairs are unique.
    public static func read(folder: String) throws -> [PoolEntry] {
        let path = (folder as NSString).appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: path) else {
            throw PoolError("\(path): missing; make the pool with `hgdpo pool` (pool.jsonl is written when every image exists)")
        }
        var seen = Set<[Int]>()
        return try JSONLines.objects(path).map { line, o in
            let p = try JSONLines.int(o, "prompt_index", path, line), k = try JSONLines.int(o, "image_index", path, line)
            guard seen.insert([p, k]).inserted else { throw PoolError("\(path):\(line): prompt \(p) image \(k) is listed twice") }
            let file = try JSONLines.string(o, "path", path, line)
            if file.hasPrefix("/") || file.split(separator: "/").contains("..") {
                throw PoolError("\(path):\(line): path \"\(file)\" must be relative to the pool folder, without '..'")
            }
            guard let seed = (o["seed"] as? NSNumber)?.uint64Value else { throw PoolError("\(path):\(line): field \"seed\" is missing") }
            return PoolEntry(promptIndex: p, prompt: try JSONLines.string(o, "prompt", path, line), category: o["category"] as? String,
                             imageIndex: k, seed: seed, path: file)
        }
    }
}
