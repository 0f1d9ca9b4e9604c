// Streaming a large latent cache must not grow memory with the dataset: 100,000 triplets are written and then read
// end to end while resident memory is watched.
import Foundation
import Tensors
import TestSupport
import XCTest
@testable import Datasets

final class LatentCacheMemoryTests: XCTestCase {
    /// VmRSS and VmHWM of this process, in KiB.
    private func memory() -> (rss: Int, peak: Int) {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return (0, 0) }
        func field(_ name: String) -> Int {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return 0 }
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
        }
        return (field("VmRSS"), field("VmHWM"))
    }

    /// Resets VmHWM to the current RSS (Linux `clear_refs` value 5); false where that is not allowed.
    private func resetPeak() -> Bool {
        guard let handle = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? handle.close() }
        do { try handle.write(contentsOf: Foundation.Data("5".utf8)) } catch { return false }
        return true
    }

    func testStreamingHundredThousandTripletsKeepsMemoryBounded() throws {
        let count = 100_000
        let latentShape = [4, 4, 4], contextShape = [4, 8]   // 64 and 32 floats
        let latentCount = 64, contextCount = 32
        let folder = try temporaryDirectory(self) + "/cache"

        // Rows encode their index so every read can be checked: below 64 with steps of 1/32, exact in F16.
        func value(_ i: Int, _ j: Int, _ tensor: Int) -> Float { Float(i % 16 + 16 * tensor) + Float(j % 32) / 32 }
        let writeStart = Date()
        do {
            let writer = try LatentCacheWriter(folder: folder, latentShape: latentShape, contextShape: contextShape,
                                               dtype: .F16, shardSize: 1024)
            var w = [Float](repeating: 0, count: latentCount), l = w
            var c = [Float](repeating: 0, count: contextCount)
            for i in 0..<count {
                for j in 0..<latentCount { w[j] = value(i, j, 0); l[j] = value(i, j, 1) }
                for j in 0..<contextCount { c[j] = value(i, j, 2) }
                try writer.append(id: String(i), winner: w, loser: l, context: c)
            }
            try writer.finish()
        }
        let writeSeconds = Date().timeIntervalSince(writeStart)

        // Everything in memory would be 100,000 × (64 + 64 + 32) values: 32 MB as the mapped F16 shards (98 of
        // ~327 KB), 64 MB as F32. Keeping at most 4 shards mapped costs ~1.3 MB, so an 8 MB bound passes with room
        // for allocator noise and fails if all shards stayed mapped (or all rows were decoded and kept).
        let boundKiB = 8 * 1024
        let peakWasReset = resetPeak()
        let before = memory()
        let readStart = Date()
        let cache = try LatentCache.open(folder)
        XCTAssertEqual(cache.count, count)
        XCTAssertEqual(cache.shards.count, 98)
        var w = [Float](repeating: 0, count: latentCount), l = w
        var c = [Float](repeating: 0, count: contextCount)
        var maxRSS = before.rss
        var mismatches = 0
        try w.withUnsafeMutableBufferPointer { w in
            try l.withUnsafeMutableBufferPointer { l in
                try c.withUnsafeMutableBufferPointer { c in
                    for i in 0..<count {
                        try cache.read(i, winner: w.baseAddress!, loser: l.baseAddress!, context: c.baseAddress!)
                        if w[latentCount - 1] != value(i, latentCount - 1, 0) || l[0] != value(i, 0, 1)
                            || c[contextCount - 1] != value(i, contextCount - 1, 2) { mismatches += 1 }
                        if i % 4096 == 0 {
                            XCTAssertEqual(try cache.id(i), String(i))
                            maxRSS = max(maxRSS, memory().rss)
                        }
                    }
                }
            }
        }
        let readSeconds = Date().timeIntervalSince(readStart)
        let after = memory()
        maxRSS = max(maxRSS, after.rss)
        XCTAssertEqual(mismatches, 0)
        XCTAssertEqual(cache.shardMapCount, 98)   // sequential: each shard mapped once
        XCTAssertLessThanOrEqual(cache.mappedShards.count, 4)

        let growth = maxRSS - before.rss
        let peakGrowth = after.peak - before.rss
        print("latent cache memory: write \(String(format: "%.2f", writeSeconds)) s, read \(String(format: "%.2f", readSeconds)) s; "
              + "VmRSS before \(before.rss) KiB, max while streaming \(maxRSS) KiB (+\(growth) KiB); VmHWM after "
              + "\(after.peak) KiB (+\(peakGrowth) KiB\(peakWasReset ? "" : ", not reset: includes the write phase"))")
        XCTAssertLessThan(growth, boundKiB, "RSS grew by \(growth) KiB while streaming")
        if peakWasReset { XCTAssertLessThan(peakGrowth, boundKiB, "peak RSS grew by \(peakGrowth) KiB while streaming") }
    }
}
