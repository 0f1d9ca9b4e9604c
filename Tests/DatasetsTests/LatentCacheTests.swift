// LatentCache / LatentCacheWriter: round trips in F16 and F32 across shard boundaries, the LRU bound on mapped
// shards, and index/shard validation errors that name the file.
import Foundation
import IO
import Tensors
import TestSupport
import XCTest
@testable import Datasets

final class LatentCacheTests: XCTestCase {
    static let latentShape = [2, 3, 2], contextShape = [3, 4]
    static let latentCount = 12, contextCount = 12

    /// Deterministic values for triplet i: normal draws, distinct per tensor and triplet.
    static func values(_ i: Int) -> (winner: [Float], loser: [Float], context: [Float]) {
        let rng = CounterRNG(seed: 7).substream(UInt64(i))
        return (rng.normals(latentCount, offset: 0), rng.normals(latentCount, offset: 100), rng.normals(contextCount, offset: 200))
    }

    /// Writes `count` triplets with ids "t<i>".
    @discardableResult
    func writeCache(_ dir: String, count: Int, dtype: DType, shardSize: Int) throws -> String {
        let folder = dir + "/cache"
        let writer = try LatentCacheWriter(folder: folder, latentShape: Self.latentShape, contextShape: Self.contextShape,
                                           dtype: dtype, shardSize: shardSize,
                                           source: .object([("model", "toy"), ("resolution", 24)]))
        for i in 0..<count {
            let v = Self.values(i)
            try writer.append(id: "t\(i)", winner: v.winner, loser: v.loser, context: v.context)
        }
        XCTAssertEqual(writer.count, count)
        try writer.finish()
        return folder
    }

    func roundTrip(dtype: DType) throws {
        let dir = try temporaryDirectory(self)
        let folder = try writeCache(dir, count: 23, dtype: dtype, shardSize: 7)   // shards of 7, 7, 7, 2
        let cache = try LatentCache.open(folder, maxMappedShards: 2)
        XCTAssertEqual(cache.count, 23)
        XCTAssertEqual(cache.dtype, dtype)
        XCTAssertEqual(cache.latentShape, Self.latentShape)
        XCTAssertEqual(cache.contextShape, Self.contextShape)
        XCTAssertEqual(cache.shards.map(\.count), [7, 7, 7, 2])
        XCTAssertEqual(cache.shards.map(\.start), [0, 7, 14, 21])
        XCTAssertEqual(cache.shards.map(\.file), (0..<4).map { "shard-0000\($0).safetensors" })
        XCTAssertEqual(cache.sourceJSON, #"{"model":"toy","resolution":24}"#)
        // F16 rounds to nearest even, as torch's .half().
        func stored(_ x: [Float]) -> [Float] { dtype == .F16 ? x.map { floatFromFloat16Bits(float16Bits($0)) } : x }
        // In order (each shard mapped once), then in a scrambled order that crosses shard boundaries.
        let order = Array(0..<23) + GlobalBatchPlan.permutation(count: 23, seed: 3, epoch: 0)
        for i in order {
            let (w, l, c) = try cache.read(i)
            let v = Self.values(i)
            assertClose(w, stored(v.winner), rtol: 0, atol: 0, label: "winner \(i)")
            assertClose(l, stored(v.loser), rtol: 0, atol: 0, label: "loser \(i)")
            assertClose(c, stored(v.context), rtol: 0, atol: 0, label: "context \(i)")
            XCTAssertEqual(try cache.id(i), "t\(i)")
            XCTAssertLessThanOrEqual(cache.mappedShards.count, 2)
            if i == 22 && cache.shardMapCount == 4 { XCTAssertEqual(cache.mappedShards, [2, 3]) }
        }
        XCTAssertGreaterThan(cache.shardMapCount, 4)   // the scrambled pass had to remap evicted shards
        cache.unmapAll()
        XCTAssertEqual(cache.mappedShards, [])
        XCTAssertEqual(try cache.id(8), "t8")
    }

    func testRoundTripF16() throws { try roundTrip(dtype: .F16) }
    func testRoundTripF32() throws { try roundTrip(dtype: .F32) }

    func testSequentialReadMapsEachShardOnce() throws {
        let dir = try temporaryDirectory(self)
        let folder = try writeCache(dir, count: 20, dtype: .F16, shardSize: 4)
        let cache = try LatentCache.open(folder)
        XCTAssertEqual(cache.shardIndex(containing: 0), 0)
        XCTAssertEqual(cache.shardIndex(containing: 3), 0)
        XCTAssertEqual(cache.shardIndex(containing: 4), 1)
        XCTAssertEqual(cache.shardIndex(containing: 19), 4)
        for i in 0..<20 { _ = try cache.read(i) }
        XCTAssertEqual(cache.shardMapCount, 5)
        XCTAssertEqual(cache.mappedShards, [1, 2, 3, 4])   // the default bound, 4; shard 0 unmapped
    }

    func testIndexFormat() throws {
        let dir = try temporaryDirectory(self)
        let folder = try writeCache(dir, count: 5, dtype: .F32, shardSize: 3)
        let index = try String(contentsOfFile: folder + "/index.json", encoding: .utf8)
        let object = try JSONSerialization.jsonObject(with: Foundation.Data(index.utf8)) as! [String: Any]
        XCTAssertEqual(object["format"] as? String, "hgdpo-latent-cache")
        XCTAssertEqual(object["version"] as? Int, 1)
        XCTAssertEqual(object["count"] as? Int, 5)
        XCTAssertEqual(object["latent_shape"] as? [Int], [2, 3, 2])
        XCTAssertEqual(object["context_shape"] as? [Int], [3, 4])
        XCTAssertEqual(object["dtype"] as? String, "F32")
        let shards = object["shards"] as! [[String: Any]]
        XCTAssertEqual(shards.map { $0["file"] as! String }, ["shard-00000.safetensors", "shard-00001.safetensors"])
        XCTAssertEqual(shards.map { $0["count"] as! Int }, [3, 2])
        let shard = try SafeTensorsFile(path: folder + "/shard-00001.safetensors")
        XCTAssertEqual(shard.metadata["ids"], #"["t3","t4"]"#)
        XCTAssertEqual(shard.info("winner")?.shape, [2, 2, 3, 2])
        XCTAssertEqual(shard.info("encoder_hidden_states")?.shape, [2, 3, 4])
        XCTAssertEqual(shard.info("loser")?.dtype, .F32)
    }

    func testEmptyCache() throws {
        let dir = try temporaryDirectory(self)
        let folder = try writeCache(dir, count: 0, dtype: .F16, shardSize: 3)
        let cache = try LatentCache.open(folder)
        XCTAssertEqual(cache.count, 0)
        XCTAssertEqual(cache.shards, [])
    }

    func testWriterRejectsBadArguments() throws {
        let dir = try temporaryDirectory(self)
        XCTAssertThrowsError(try LatentCacheWriter(folder: dir, latentShape: [4, 8], contextShape: [2, 3])) {
            XCTAssertEqual("\($0)", "latent cache: latent shape [4, 8] must be [C, H, W], all positive")
        }
        XCTAssertThrowsError(try LatentCacheWriter(folder: dir, latentShape: [4, 8, 8], contextShape: [2, 3], dtype: .BF16))
        let writer = try LatentCacheWriter(folder: dir + "/c", latentShape: [1, 1, 2], contextShape: [1, 1])
        XCTAssertThrowsError(try writer.append(id: "x", winner: [1, 2], loser: [1], context: [0])) {
            XCTAssertEqual("\($0)", "latent cache: triplet \"x\": loser has 1 floats, expected 2")
        }
    }

    func testWriterRemovesStaleIndex() throws {
        let dir = try temporaryDirectory(self)
        let folder = try writeCache(dir, count: 5, dtype: .F16, shardSize: 3)
        let writer = try LatentCacheWriter(folder: folder, latentShape: [1, 1, 1], contextShape: [1, 1])
        try writer.append(id: "x", winner: [1], loser: [2], context: [3])
        // Interrupted before finish: no index, so the folder is not a cache.
        XCTAssertThrowsError(try LatentCache.open(folder)) {
            XCTAssertTrue("\($0)".contains("index.json: cannot read the latent cache: no such file"), "\($0)")
        }
        _ = writer
    }

    // MARK: - Validation errors

    private func editIndex(_ folder: String, _ edit: (inout [String: Any]) -> Void) throws {
        let path = folder + "/index.json"
        var object = try JSONSerialization.jsonObject(with: Foundation.Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        edit(&object)
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
    }

    private func assertOpenFails(_ folder: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try LatentCache.open(folder), file: file, line: line) { error in
            XCTAssertEqual("\(error)", expected, file: file, line: line)
        }
    }

    func testMissingShard() throws {
        let folder = try writeCache(try temporaryDirectory(self), count: 10, dtype: .F16, shardSize: 4)
        try FileManager.default.removeItem(atPath: folder + "/shard-00001.safetensors")
        assertOpenFails(folder, folder + "/shard-00001.safetensors: invalid latent cache shard: missing (listed in "
            + "index.json as shards[1])")
    }

    func testShardVanishingAfterOpenIsAnErrorOnRead() throws {
        let folder = try writeCache(try temporaryDirectory(self), count: 10, dtype: .F16, shardSize: 4)
        let cache = try LatentCache.open(folder)
        try FileManager.default.removeItem(atPath: folder + "/shard-00002.safetensors")
        XCTAssertNoThrow(try cache.read(0))
        XCTAssertThrowsError(try cache.read(9)) {
            XCTAssertTrue("\($0)".hasPrefix(folder + "/shard-00002.safetensors: invalid latent cache shard: missing"), "\($0)")
        }
    }

    func testWrongCounts() throws {
        let folder = try writeCache(try temporaryDirectory(self), count: 10, dtype: .F16, shardSize: 4)
        try editIndex(folder) { $0["count"] = 11 }
        assertOpenFails(folder, folder + "/index.json: invalid latent cache index: \"count\" is 11 but the shards' counts "
            + "add up to 10")
        // A shard count that disagrees with the shard's rows (and the total adjusted to match).
        try editIndex(folder) {
            $0["count"] = 9
            var shards = $0["shards"] as! [[String: Any]]
            shards[1]["count"] = 3
            $0["shards"] = shards
        }
        assertOpenFails(folder, folder + "/shard-00001.safetensors: invalid latent cache shard: tensor \"winner\" has "
            + "shape [4, 2, 3, 2] but index.json implies [3, 2, 3, 2] (shards[1] count is 3)")
    }

    func testShapeAndDTypeMismatch() throws {
        let folder = try writeCache(try temporaryDirectory(self), count: 5, dtype: .F16, shardSize: 4)
        try editIndex(folder) { $0["context_shape"] = [4, 3] }
        assertOpenFails(folder, folder + "/shard-00000.safetensors: invalid latent cache shard: tensor "
            + "\"encoder_hidden_states\" has shape [4, 3, 4] but index.json implies [4, 4, 3]")
        try editIndex(folder) { $0["context_shape"] = [3, 4]; $0["latent_shape"] = [2, 3] }
        assertOpenFails(folder, folder + "/index.json: invalid latent cache index: \"latent_shape\" must be an array of "
            + "3 positive integers [C, H, W]")
        try editIndex(folder) { $0["latent_shape"] = [2, 3, 2]; $0["dtype"] = "F32" }
        assertOpenFails(folder, folder + "/shard-00000.safetensors: invalid latent cache shard: tensor \"winner\" is F16 "
            + "but index.json says F32")
        try editIndex(folder) { $0["dtype"] = "BF16" }
        assertOpenFails(folder, folder + "/index.json: invalid latent cache index: \"dtype\" must be \"F16\" or \"F32\"")
    }

    func testIndexNotJSONOrNotACache() throws {
        let folder = try writeCache(try temporaryDirectory(self), count: 5, dtype: .F16, shardSize: 4)
        try "{\"format\": ".write(toFile: folder + "/index.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try LatentCache.open(folder)) {
            XCTAssertTrue("\($0)".hasPrefix(folder + "/index.json: invalid latent cache index: not valid JSON"), "\($0)")
        }
        try "[1]".write(toFile: folder + "/index.json", atomically: true, encoding: .utf8)
        assertOpenFails(folder, folder + "/index.json: invalid latent cache index: is a JSON array, expected an object")
        try #"{"format": "other"}"#.write(toFile: folder + "/index.json", atomically: true, encoding: .utf8)
        assertOpenFails(folder, folder + "/index.json: invalid latent cache index: \"format\" is not "
            + "\"hgdpo-latent-cache\" (not a latent cache?)")
        try #"{"format": "hgdpo-latent-cache", "version": 2}"#.write(toFile: folder + "/index.json", atomically: true,
                                                                     encoding: .utf8)
        assertOpenFails(folder, folder + "/index.json: invalid latent cache index: version 2 is not supported (this "
            + "build reads version 1)")
        let empty = try temporaryDirectory(self)
        assertOpenFails(empty, empty + "/index.json: cannot read the latent cache: no such file (is this a folder "
            + "written by `hgdpo encode`?)")
    }

    func testShardPathMustStayInFolder() throws {
        let folder = try writeCache(try temporaryDirectory(self), count: 5, dtype: .F16, shardSize: 5)
        try editIndex(folder) { $0["shards"] = [["file": "../shard-00000.safetensors", "count": 5]] }
        assertOpenFails(folder, folder + "/index.json: invalid latent cache index: shards[0] file "
            + "\"../shard-00000.safetensors\" must be a file name inside the cache folder")
    }

    func testBadIdsMetadata() throws {
        let folder = try writeCache(try temporaryDirectory(self), count: 2, dtype: .F32, shardSize: 2)
        let path = folder + "/shard-00000.safetensors"
        let zeros = [Float](repeating: 0, count: 2 * 12)
        func entries() -> [SafeTensorsEntry] {
            [SafeTensorsEntry(name: "winner", shape: [2, 2, 3, 2], floats: zeros),
             SafeTensorsEntry(name: "loser", shape: [2, 2, 3, 2], floats: zeros),
             SafeTensorsEntry(name: "encoder_hidden_states", shape: [2, 3, 4], floats: zeros)]
        }
        try SafeTensors.write(entries(), metadata: ["ids": #"["only-one"]"#], to: path)
        assertOpenFails(folder, path + ": invalid latent cache shard: metadata \"ids\" lists 1 ids but the shard has 2 rows")
        try SafeTensors.write(entries(), metadata: ["ids": #"["a", 2]"#], to: path)
        assertOpenFails(folder, path + ": invalid latent cache shard: metadata \"ids\"[1] is a number, expected a string")
        try SafeTensors.write(entries(), to: path)
        assertOpenFails(folder, path + ": invalid latent cache shard: no \"ids\" in its metadata")
        try SafeTensors.write(Array(entries().dropLast()), metadata: ["ids": #"["a","b"]"#], to: path)
        assertOpenFails(folder, path + ": invalid latent cache shard: no tensor \"encoder_hidden_states\"")
        try "garbage".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try LatentCache.open(folder)) { XCTAssertTrue("\($0)".hasPrefix(path + ": "), "\($0)") }
    }
}
