// Writes a latent cache (format in LatentCache.swift): triplets are appended one at a time, a shard is written
// (atomically) every `shardSize` triplets, and index.json is written last, so an interrupted run leaves no index
// and is never mistaken for a complete cache. Memory is one shard's worth of rows.

import Foundation
import IO
import Tensors

public final class LatentCacheWriter {
    public let folder: String
    public let latentShape: [Int]    // [C, H, W]
    public let contextShape: [Int]   // [S, D]
    public let dtype: DType
    public let shardSize: Int
    public let source: JSONValue

    /// Triplets appended so far.
    public private(set) var count = 0
    public private(set) var isFinished = false

    private let latentBytes: Int, contextBytes: Int
    private var winnerRows: [UInt8], loserRows: [UInt8], contextRows: [UInt8]   // (shardSize, …) in `dtype`
    private var ids: [String] = []
    private var shards: [(file: String, count: Int)] = []

    /// Creates `folder` if needed and removes an existing index.json there (its shards are overwritten).
    /// `source` is stored as the index's free-form "source" (model, dataset, resolution, …).
    public init(folder: String, latentShape: [Int], contextShape: [Int], dtype: DType = .F16,
                shardSize: Int = LatentCacheFormat.defaultShardSize, source: JSONValue = .object([])) throws {
        guard latentShape.count == 3, latentShape.allSatisfy({ $0 > 0 }) else {
            throw LatentCacheError.invalidArgument(reason: "latent shape \(latentShape) must be [C, H, W], all positive")
        }
        guard contextShape.count == 2, contextShape.allSatisfy({ $0 > 0 }) else {
            throw LatentCacheError.invalidArgument(reason: "context shape \(contextShape) must be [S, D], all positive")
        }
        guard LatentCacheFormat.supportedDTypes.contains(dtype) else {
            throw LatentCacheError.invalidArgument(reason: "dtype \(dtype.rawValue) is not supported (F16 or F32)")
        }
        guard shardSize > 0 else { throw LatentCacheError.invalidArgument(reason: "shard size \(shardSize) must be positive") }
        self.folder = folder
        self.latentShape = latentShape
        self.contextShape = contextShape
        self.dtype = dtype
        self.shardSize = shardSize
        self.source = source
        latentBytes = latentShape.reduce(1, *) * dtype.byteSize
        contextBytes = contextShape.reduce(1, *) * dtype.byteSize
        winnerRows = [UInt8](repeating: 0, count: shardSize * latentBytes)
        loserRows = winnerRows
        contextRows = [UInt8](repeating: 0, count: shardSize * contextBytes)

        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw LatentCacheError.writeFailed(path: folder, reason: "cannot create the folder: \(error.localizedDescription)")
        }
        let indexPath = (folder as NSString).appendingPathComponent(LatentCacheFormat.indexFile)
        if FileManager.default.fileExists(atPath: indexPath) {
            do { try FileManager.default.removeItem(atPath: indexPath) } catch {
                throw LatentCacheError.writeFailed(path: indexPath, reason: "cannot remove the old index: \(error.localizedDescription)")
            }
        }
    }

    /// Appends one triplet: winner and loser latents (C·H·W floats each) and the prompt's hidden states (S·D).
    public func append(id: String, winner: UnsafePointer<Float>, loser: UnsafePointer<Float>,
                       context: UnsafePointer<Float>) throws {
        precondition(!isFinished, "LatentCacheWriter.append after finish()")
        let row = ids.count
        winnerRows.withUnsafeMutableBytes {
            convertFromFloat(winner, count: latentBytes / dtype.byteSize, to: dtype, into: $0.baseAddress! + row * latentBytes)
        }
        loserRows.withUnsafeMutableBytes {
            convertFromFloat(loser, count: latentBytes / dtype.byteSize, to: dtype, into: $0.baseAddress! + row * latentBytes)
        }
        contextRows.withUnsafeMutableBytes {
            convertFromFloat(context, count: contextBytes / dtype.byteSize, to: dtype,
                             into: $0.baseAddress! + row * contextBytes)
        }
        ids.append(id)
        count += 1
        if ids.count == shardSize { try writeShard() }
    }

    /// `append` from arrays, checking their sizes.
    public func append(id: String, winner: [Float], loser: [Float], context: [Float]) throws {
        let latentCount = latentShape.reduce(1, *), contextCount = contextShape.reduce(1, *)
        for (name, array, expected) in [("winner", winner, latentCount), ("loser", loser, latentCount),
                                        ("context", context, contextCount)] where array.count != expected {
            throw LatentCacheError.invalidArgument(
                reason: "triplet \(jsonQuoted(id)): \(name) has \(array.count) floats, expected \(expected)")
        }
        try winner.withUnsafeBufferPointer { w in
            try loser.withUnsafeBufferPointer { l in
                try context.withUnsafeBufferPointer { c in
                    try append(id: id, winner: w.baseAddress!, loser: l.baseAddress!, context: c.baseAddress!)
                }
            }
        }
    }

    /// Writes the last partial shard and then index.json. Call once, after the last `append`.
    public func finish() throws {
        precondition(!isFinished, "LatentCacheWriter.finish called twice")
        if !ids.isEmpty { try writeShard() }
        try Self.writeIndex(folder: folder, latentShape: latentShape, contextShape: contextShape, dtype: dtype,
                            shards: shards, source: source)
        isFinished = true
    }

    private func writeShard() throws {
        let n = ids.count
        let file = LatentCacheFormat.shardFileName(shards.count)
        let path = (folder as NSString).appendingPathComponent(file)
        // Full shards hand over the whole buffer; the last, partial one a prefix.
        func rows(_ buffer: [UInt8], _ rowBytes: Int) -> [UInt8] { n == shardSize ? buffer : Array(buffer[..<(n * rowBytes)]) }
        try Self.writeShard(path: path, ids: ids, latentShape: latentShape, contextShape: contextShape, dtype: dtype,
                            winner: rows(winnerRows, latentBytes), loser: rows(loserRows, latentBytes),
                            context: rows(contextRows, contextBytes))
        shards.append((file, n))
        ids.removeAll(keepingCapacity: true)
    }

    // MARK: - Pieces (also used by writers that produce shards out of order, e.g. `hgdpo encode` on several ranks)

    /// Writes one shard file atomically: `ids.count` rows of winner, loser (`latentShape`) and context
    /// (`contextShape`), each given as raw bytes already in `dtype`.
    public static func writeShard(path: String, ids: [String], latentShape: [Int], contextShape: [Int], dtype: DType,
                                  winner: [UInt8], loser: [UInt8], context: [UInt8]) throws {
        let n = ids.count
        let entries = [
            SafeTensorsEntry(name: LatentCacheFormat.winnerTensor, dtype: dtype, shape: [n] + latentShape, bytes: winner),
            SafeTensorsEntry(name: LatentCacheFormat.loserTensor, dtype: dtype, shape: [n] + latentShape, bytes: loser),
            SafeTensorsEntry(name: LatentCacheFormat.contextTensor, dtype: dtype, shape: [n] + contextShape, bytes: context),
        ]
        let idsJSON = JSONValue.array(ids.map { .string($0) }).serialized()
        try SafeTensors.write(entries, metadata: [LatentCacheFormat.idsMetadataKey: idsJSON], to: path)
    }

    /// Writes `folder/index.json` (atomically) for shards already written, in order. This is what makes a cache
    /// complete, so it comes last.
    public static func writeIndex(folder: String, latentShape: [Int], contextShape: [Int], dtype: DType,
                                  shards: [(file: String, count: Int)], source: JSONValue) throws {
        let index: JSONValue = .object([
            ("format", .string(LatentCacheFormat.name)),
            ("version", .int(LatentCacheFormat.version)),
            ("count", .int(shards.reduce(0) { $0 + $1.count })),
            ("latent_shape", .array(latentShape.map { .int($0) })),
            ("context_shape", .array(contextShape.map { .int($0) })),
            ("dtype", .string(dtype.rawValue)),
            ("shards", .array(shards.map { .object([("file", .string($0.file)), ("count", .int($0.count))]) })),
            ("source", source),
        ])
        let path = (folder as NSString).appendingPathComponent(LatentCacheFormat.indexFile)
        do {
            try Foundation.Data((index.pretty() + "\n").utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw LatentCacheError.writeFailed(path: path, reason: error.localizedDescription)
        }
    }
}
