import Foundation
import XCTest
import TestSupport

/// Starts real MPI jobs with launch/local.sh (2 and 4 ranks on this machine, oversubscribed) running
/// `hgdpo probe mpi`, and checks the collectives' results exactly.
final class LocalLaunchTests: XCTestCase {
    func probe(ranks: Int, count: Int) throws -> [String: Any] {
        let script = repoRoot + "/launch/local.sh"
        let r = try runProcess("/bin/bash", [script, "--timeout", "120", String(ranks), "hgdpo", "probe", "mpi", "--count", String(count)],
                        environment: ["HGDPO_BIN": hgdpoBinary], timeout: 180)
        XCTAssertEqual(r.status, 0, "local.sh \(ranks) failed:\n\(r.stderr)")
        let line = r.stdout.split(separator: "\n").first { $0.hasPrefix("{") } ?? ""
        guard let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            XCTFail("no JSON report in:\n\(r.stdout)\n\(r.stderr)")
            return [:]
        }
        return obj
    }

    func check(ranks w: Int) throws {
        let count = 1_000_003
        let report = try probe(ranks: w, count: count)
        XCTAssertEqual(report["world_size"] as? Int, w)
        XCTAssertEqual(report["ok"] as? Bool, true)
        XCTAssertEqual(report["mismatches_all_ranks"] as? Int, 0)
        XCTAssertEqual((report["gather"] as? [String: Any])?["mismatches"] as? Int, 0, "gather of blocks of different lengths")
        // Sum over i of W(W+1)/4 · (i mod 1000), computed here independently of the probe.
        var s = 0.0
        for i in 0..<count { s += Double(i % 1000) }
        let expected = Double(w * (w + 1)) / 4 * s
        for key in ["allreduce_float", "allreduce_double"] {
            let part = report[key] as? [String: Any]
            XCTAssertEqual(part?["mismatches"] as? Int, 0, key)
            XCTAssertEqual((part?["sum"] as? NSNumber)?.doubleValue, expected, key)
        }
        XCTAssertEqual((report["broadcast"] as? [String: Any])?["mismatches"] as? Int, 0)
        let ordered = report["ordered_sum"] as? [String: Any]
        XCTAssertEqual(ordered?["mismatches"] as? Int, 0, "the gradient sum in rank order")
        XCTAssertEqual(ordered?["bucketed_mismatches"] as? Int, 0, "the gradient sum in buckets")
        let ranks = report["ranks"] as? [[String: Any]] ?? []
        XCTAssertEqual(ranks.map { $0["rank"] as? Int }, (0..<w).map { $0 })
        // One machine: every rank is local, with distinct local ranks.
        XCTAssertEqual(Set(ranks.compactMap { $0["local_rank"] as? Int }), Set(0..<w))
        XCTAssertTrue(ranks.allSatisfy { $0["local_size"] as? Int == w })
    }

    func testTwoRanks() throws { try check(ranks: 2) }
    func testFourRanks() throws { try check(ranks: 4) }

    func testRejectsBadRankCount() throws {
        let r = try runProcess("/bin/bash", [repoRoot + "/launch/local.sh", "zero", "hgdpo", "probe", "mpi"],
                        environment: ["HGDPO_BIN": hgdpoBinary], timeout: 60)
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("zero"), r.stderr)
    }

    /// A rank that fails makes the whole job end promptly with that rank's message, not hang.
    func testFailingRankEndsTheJob() throws {
        let r = try runProcess("/bin/bash", [repoRoot + "/launch/local.sh", "--timeout", "60", "2", "hgdpo", "probe", "mpi", "--count", "-5"],
                        environment: ["HGDPO_BIN": hgdpoBinary], timeout: 90)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("'--count'"), r.stderr)
    }
}
