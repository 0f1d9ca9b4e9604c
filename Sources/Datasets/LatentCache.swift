// The latent cache: VAE latents of every triplet's winner and loser plus the text encoder's hidden states, written
// once by `hgdpo encode` and streamed by the trainer, so training never runs the VAE or the text encoder.
//
// Format (version 1), a folder holding:
//   index.json   {"format": "hgdpo-latent-cache", "version": 1, "count": N, "latent_shape": [C, H, W],
//                 "context_shape": [S, D], "dtype": "F16" | "F32",
//                 "shards": [{"file": "shard-00000.safetensors", "count": n}, …], "source": {…free-form…}}
//   shard-XXXXX.safetensors, each with
//     winner                 (n, C, H, W)
//     loser                  (n, C, H, W)
//     encoder_hidden_states  (n, S, D)
//     __metadata__ "ids":    JSON array of the n triplet ids, in row order
// Global index i is row i − start(shard) of the shard whose rows cover it, shards in index order. The index is
// written last, so a folder with an index.json is a complete cache.
//
// Reading maps at most `maxMappedShards` shard files at once (least recently used is unmapped first): resident
// memory is bounded by that many shards, whatever the dataset size. The shard table is O(N / shardSize); ids are
// parsed from a shard's metadata only when asked for, and only for mapped shards.

import Foundation
import IO
import Tensors

// MARK: - Format

public enum LatentCacheFormat {
    public static let name = "hgdpo-latent-cache"
    public static let version = 1
    public static let indexFile = "index.json"
    public static let winnerTensor = "winner"
    public static let loserTensor = "loser"
    public static let contextTensor = "encoder_hidden_states"
    public static let idsMetadataKey = "ids"
    public static let defaultShardSize = 1024
    public static let supportedDTypes: [DType] = [.F16, .F32]

    public static func shardFileName(_ shard: Int) -> String {
        let digits = String(shard)
        return "shard-" + String(repeating: "0", count: max(0, 5 - digits.count)) + digits + ".safetensors"
    }
}

// MARK: - Errors

public enum LatentCacheError: Error, UserInputError, CustomStringConvertible, Equatable {
    case cannotRead(path: String, reason: String)
    case invalidIndex(path: String, reason: String)
    case invalidShard(path: String, reason: String)
    case invalidArgument(reason: String)
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case let .cannotRead(path, reason): return "\(path): cannot read the latent cache: \(reason)"
        case let .invalidIndex(path, reason): return "\(path): invalid latent cache index: \(reason)"
        case let .invalidShard(path, reason): return "\(path): invalid latent cache shard: \(reason)"
        case let .invalidArgument(reason): return "latent cache: \(reason)"
        case let .writeFailed(path, reason): return "\(path): cannot write the latent cache: \(reason)"
        }
    }
}

// MARK: - Reader

public final class LatentCache: @unchecked Sendable {   // mutable state (the mapped shards) is behind `lock`
    public struct Shard: Sendable, Equatable {
        public let file: String
        public let count: Int
        /// Global index of the shard's first row.
        public let start: Int
    }

    public let folder: String
    public let count: Int
    public let latentShape: [Int]    // [C, H, W]
    public let contextShape: [Int]   // [S, D]
    public let dtype: DType
    public let shards: [Shard]
    /// The index's "source" value as compact JSON (keys sorted), "null" when absent.
    public let sourceJSON: String
    public let maxMappedShards: Int

    /// Floats per latent (C·H·W) and per context (S·D).
    public let latentCount: Int
    public let contextCount: Int

    private let lock = NSLock()
    private struct MappedShard {
        let shard: Int
        let file: SafeTensorsFile
        var ids: [String]?
    }
    private var mapped: [MappedShard] = []   // least recently used first
    private var mapCount = 0

    /// How many times a shard file has been mapped (each miss of the LRU maps one).
    public var shardMapCount: Int { lock.withLock { mapCount } }
    /// Shards mapped right now (at most `maxMappedShards`).
    public var mappedShards: [Int] { lock.withLock { mapped.map(\.shard) } }

    private init(folder: String, count: Int, latentShape: [Int], contextShape: [Int], dtype: DType, shards: [Shard],
                 sourceJSON: String, maxMappedShards: Int) {
        self.folder = folder
        self.count = count
        self.latentShape = latentShape
        self.contextShape = contextShape
        self.dtype = dtype
        self.shards = shards
        self.sourceJSON = sourceJSON
        self.maxMappedShards = maxMappedShards
        latentCount = latentShape.reduce(1, *)
        contextCount = contextShape.reduce(1, *)
    }

    /// Reads `folder/index.json` and checks every shard's header against it (counts, shapes, dtypes, ids). Shards
    /// are mapped one at a time for the check and unmapped again; only their headers are touched.
    public static func open(_ folder: String, maxMappedShards: Int = 4) throws -> LatentCache {
        guard maxMappedShards >= 1 else {
            throw LatentCacheError.invalidArgument(reason: "maxMappedShards must be at least 1, got \(maxMappedShards)")
        }
        let indexPath = (folder as NSString).appendingPathComponent(LatentCacheFormat.indexFile)
        let bytes: Foundation.Data
        do {
            bytes = try Foundation.Data(contentsOf: URL(fileURLWithPath: indexPath))
        } catch {
            throw LatentCacheError.cannotRead(
                path: indexPath,
                reason: FileManager.default.fileExists(atPath: indexPath) ? error.localizedDescription
                    : "no such file (is this a folder written by `hgdpo encode`?)")
        }
        func bad(_ reason: String) -> LatentCacheError { .invalidIndex(path: indexPath, reason: reason) }

        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: bytes, options: [.fragmentsAllowed])
        } catch {
            let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
            throw bad("not valid JSON" + (detail.map { " (\($0))" } ?? ""))
        }
        guard let index = root as? [String: Any] else { throw bad("is a JSON \(jsonKind(root)), expected an object") }

        func field(_ key: String) throws -> Any {
            guard let v = index[key] else { throw bad("missing field \"\(key)\"") }
            return v
        }
        func integer(_ value: Any, _ what: String) throws -> Int {
            guard let n = value as? NSNumber, String(cString: n.objCType) != "c", let i = Int(exactly: n.doubleValue),
                  Double(n.int64Value) == n.doubleValue else {
                throw bad("\(what) is \(jsonKind(value) == "number" ? "\(value)" : "a \(jsonKind(value))"), "
                    + "expected an integer")
            }
            return i
        }
        func shape(_ key: String, rank: Int, names: String) throws -> [Int] {
            guard let items = try field(key) as? [Any], items.count == rank else {
                throw bad("\"\(key)\" must be an array of \(rank) positive integers \(names)")
            }
            let dims = try items.map { try integer($0, "\"\(key)\" element") }
            guard dims.allSatisfy({ $0 > 0 }) else {
                throw bad("\"\(key)\" \(dims) must be an array of \(rank) positive integers \(names)")
            }
            // One row's elements must be countable (an overflow traps; found by Tests/FuzzTests) and addressable.
            let (elements, overflow) = dims.reduce((1, false)) { acc, d in
                let (p, o) = acc.0.multipliedReportingOverflow(by: d)
                return (p, acc.1 || o)
            }
            guard !overflow, elements <= 1 << 31 else { throw bad("\"\(key)\" \(dims) is too large (more than 2^31 values per row)") }
            return dims
        }

        guard let format = try field("format") as? String, format == LatentCacheFormat.name else {
            throw bad("\"format\" is not \"\(LatentCacheFormat.name)\" (not a latent cache?)")
        }
        let version = try integer(try field("version"), "\"version\"")
        guard version == LatentCacheFormat.version else {
            throw bad("version \(version) is not supported (this build reads version \(LatentCacheFormat.version))")
        }
        let count = try integer(try field("count"), "\"count\"")
        guard count >= 0 else { throw bad("\"count\" is \(count), expected a non-negative integer") }
        let latentShape = try shape("latent_shape", rank: 3, names: "[C, H, W]")
        let contextShape = try shape("context_shape", rank: 2, names: "[S, D]")
        guard let dtypeName = try field("dtype") as? String, let dtype = DType(rawValue: dtypeName),
              LatentCacheFormat.supportedDTypes.contains(dtype) else {
            throw bad("\"dtype\" must be \"F16\" or \"F32\"")
        }
        guard let shardList = try field("shards") as? [Any] else { throw bad("\"shards\" must be an array") }
        var shards: [Shard] = []
        shards.reserveCapacity(shardList.count)
        var start = 0
        for (k, item) in shardList.enumerated() {
            guard let entry = item as? [String: Any] else { throw bad("shards[\(k)] is a \(jsonKind(item)), expected an object") }
            guard let file = entry["file"] as? String else { throw bad("shards[\(k)] has no string \"file\"") }
            guard !file.isEmpty, !file.contains("/"), file != "..", file != "." else {
                throw bad("shards[\(k)] file \(jsonQuoted(file)) must be a file name inside the cache folder")
            }
            guard let n = entry["count"] else { throw bad("shards[\(k)] has no \"count\"") }
            let rows = try integer(n, "shards[\(k)] count")
            guard rows > 0 else { throw bad("shards[\(k)] count is \(rows), expected a positive integer") }
            shards.append(Shard(file: file, count: rows, start: start))
            start += rows
        }
        guard start == count else {
            throw bad("\"count\" is \(count) but the shards' counts add up to \(start)")
        }
        let sourceJSON = index["source"].flatMap {
            try? JSONSerialization.data(withJSONObject: $0, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes])
        }.map { String(decoding: $0, as: UTF8.self) } ?? "null"

        let cache = LatentCache(folder: folder, count: count, latentShape: latentShape, contextShape: contextShape,
                                dtype: dtype, shards: shards, sourceJSON: sourceJSON, maxMappedShards: maxMappedShards)
        for k in shards.indices {
            let file = try cache.openShard(k)
            _ = try cache.ids(of: file, shard: k)
        }
        return cache
    }

    // MARK: Reading

    /// Copies triplet `index`'s latents (C·H·W floats each) and context (S·D floats) out of its shard, converting
    /// F16 to F32. Throws only if a shard changed or vanished since `open`.
    public func read(_ index: Int, winner: UnsafeMutablePointer<Float>, loser: UnsafeMutablePointer<Float>,
                     context: UnsafeMutablePointer<Float>) throws {
        precondition(index >= 0 && index < count, "LatentCache.read: index \(index) out of 0..<\(count)")
        let k = shardIndex(containing: index)
        let row = index - shards[k].start
        try lock.withLock {
            let file = try mappedShard(k).file
            let latentBytes = latentCount * dtype.byteSize, contextBytes = contextCount * dtype.byteSize
            let w = try file.rawBytes(LatentCacheFormat.winnerTensor)
            let l = try file.rawBytes(LatentCacheFormat.loserTensor)
            let c = try file.rawBytes(LatentCacheFormat.contextTensor)
            convertToFloat(from: w.baseAddress! + row * latentBytes, dtype: dtype, count: latentCount, into: winner)
            convertToFloat(from: l.baseAddress! + row * latentBytes, dtype: dtype, count: latentCount, into: loser)
            convertToFloat(from: c.baseAddress! + row * contextBytes, dtype: dtype, count: contextCount, into: context)
        }
    }

    /// `read` into arrays: (winner, loser, context).
    public func read(_ index: Int) throws -> (winner: [Float], loser: [Float], context: [Float]) {
        var w = [Float](repeating: 0, count: latentCount), l = w
        var c = [Float](repeating: 0, count: contextCount)
        try w.withUnsafeMutableBufferPointer { w in
            try l.withUnsafeMutableBufferPointer { l in
                try c.withUnsafeMutableBufferPointer { c in
                    try read(index, winner: w.baseAddress!, loser: l.baseAddress!, context: c.baseAddress!)
                }
            }
        }
        return (w, l, c)
    }

    /// The id of triplet `index` (parsed from its shard's metadata, which is mapped if it is not already).
    public func id(_ index: Int) throws -> String {
        precondition(index >= 0 && index < count, "LatentCache.id: index \(index) out of 0..<\(count)")
        let k = shardIndex(containing: index)
        return try lock.withLock {
            let slot = try mappedSlot(k)
            if mapped[slot].ids == nil { mapped[slot].ids = try ids(of: mapped[slot].file, shard: k) }
            return mapped[slot].ids![index - shards[k].start]
        }
    }

    /// Unmaps every shard (they are mapped again on demand).
    public func unmapAll() { lock.withLock { mapped.removeAll() } }

    /// Binary search over the shards' starts.
    public func shardIndex(containing index: Int) -> Int {
        var lo = 0, hi = shards.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if shards[mid].start <= index { lo = mid } else { hi = mid - 1 }
        }
        return lo
    }

    // MARK: Shards

    private func mappedShard(_ k: Int) throws -> MappedShard { mapped[try mappedSlot(k)] }

    /// The LRU slot holding shard `k`, mapping it (and unmapping the least recently used) on a miss. Caller holds `lock`.
    private func mappedSlot(_ k: Int) throws -> Int {
        if let slot = mapped.lastIndex(where: { $0.shard == k }) {
            if slot != mapped.count - 1 { mapped.append(mapped.remove(at: slot)) }
            return mapped.count - 1
        }
        if mapped.count >= maxMappedShards { mapped.removeFirst() }   // SafeTensorsFile.deinit unmaps
        let file = try openShard(k)
        mapCount += 1
        mapped.append(MappedShard(shard: k, file: file, ids: nil))
        return mapped.count - 1
    }

    /// Maps shard `k` and checks its tensors against the index (header only).
    private func openShard(_ k: Int) throws -> SafeTensorsFile {
        let shard = shards[k]
        let path = (folder as NSString).appendingPathComponent(shard.file)
        func bad(_ reason: String) -> LatentCacheError { .invalidShard(path: path, reason: reason) }
        guard FileManager.default.fileExists(atPath: path) else {
            throw bad("missing (listed in \(LatentCacheFormat.indexFile) as shards[\(k)])")
        }
        let file = try SafeTensorsFile(path: path)
        for (name, dims) in [(LatentCacheFormat.winnerTensor, latentShape), (LatentCacheFormat.loserTensor, latentShape),
                             (LatentCacheFormat.contextTensor, contextShape)] {
            let expected = [shard.count] + dims
            guard let info = file.info(name) else { throw bad("no tensor \"\(name)\"") }
            guard info.dtype == dtype else {
                throw bad("tensor \"\(name)\" is \(info.dtype.rawValue) but \(LatentCacheFormat.indexFile) says \(dtype.rawValue)")
            }
            guard info.shape == expected else {
                throw bad("tensor \"\(name)\" has shape \(info.shape) but \(LatentCacheFormat.indexFile) implies \(expected)"
                    + (info.shape.first != shard.count ? " (shards[\(k)] count is \(shard.count))" : ""))
            }
        }
        guard file.metadata[LatentCacheFormat.idsMetadataKey] != nil else {
            throw bad("no \"\(LatentCacheFormat.idsMetadataKey)\" in its metadata")
        }
        return file
    }

    private func ids(of file: SafeTensorsFile, shard k: Int) throws -> [String] {
        func bad(_ reason: String) -> LatentCacheError { .invalidShard(path: file.path, reason: reason) }
        let text = file.metadata[LatentCacheFormat.idsMetadataKey] ?? ""
        guard let parsed = try? JSONSerialization.jsonObject(with: Foundation.Data(text.utf8)),
              let items = parsed as? [Any] else {
            throw bad("metadata \"\(LatentCacheFormat.idsMetadataKey)\" is not a JSON array")
        }
        guard items.count == shards[k].count else {
            throw bad("metadata \"\(LatentCacheFormat.idsMetadataKey)\" lists \(items.count) ids but the shard has "
                + "\(shards[k].count) rows")
        }
        return try items.enumerated().map { i, item in
            guard let s = item as? String else {
                throw bad("metadata \"\(LatentCacheFormat.idsMetadataKey)\"[\(i)] is a \(jsonKind(item)), expected a string")
            }
            return s
        }
    }
}
