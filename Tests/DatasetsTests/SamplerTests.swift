// GlobalBatchPlan: the samples of a step do not depend on the world size; every index once per epoch; epochs and
// seeds give different permutations; clear errors for impossible batch layouts.
import Tensors
import TestSupport
import XCTest
@testable import Datasets

final class SamplerTests: XCTestCase {
    func testSameSamplesForAnyWorldSize() throws {
        // N = 103, G = 12: 8 steps per epoch (7 triplets left over each epoch); steps 0..<20 cross two epoch ends.
        let reference = try GlobalBatchPlan(count: 103, globalBatch: 12, worldSize: 1, localBatch: 12, seed: 42)
        for (w, b) in [(1, 3), (2, 2), (2, 6), (3, 4), (4, 3), (4, 1), (12, 1)] {
            let plan = try GlobalBatchPlan(count: 103, globalBatch: 12, worldSize: w, localBatch: b, seed: 42)
            XCTAssertEqual(plan.microBatchesPerStep, 12 / (w * b))
            for step in 0..<20 {
                var concatenated: [Sample] = []
                for rank in 0..<w {
                    let micro = plan.microBatches(step: step, rank: rank)
                    XCTAssertEqual(micro.count, 12 / (w * b), "W=\(w) b=\(b)")
                    XCTAssertTrue(micro.allSatisfy { $0.count == b })
                    concatenated += micro.joined()
                }
                XCTAssertEqual(concatenated, reference.globalBatch(step: step), "W=\(w) b=\(b) step \(step)")
                XCTAssertEqual(concatenated, reference.microBatches(step: step, rank: 0)[0])
            }
        }
    }

    func testEveryIndexOncePerEpoch() throws {
        // N divisible by G: the steps of an epoch cover 0..<N exactly once.
        let plan = try GlobalBatchPlan(count: 96, globalBatch: 8, worldSize: 2, localBatch: 2, seed: 1)
        XCTAssertEqual(plan.stepsPerEpoch, 12)
        for epoch in 0..<3 {
            var seen: [Int] = []
            for step in (epoch * 12)..<((epoch + 1) * 12) {
                for rank in 0..<2 { seen += plan.microBatches(step: step, rank: rank).joined().map(\.datasetIndex) }
            }
            XCTAssertEqual(seen.sorted(), Array(0..<96), "epoch \(epoch)")
        }
        // N not divisible: each index at most once, N mod G dropped, and the permutation itself covers all of 0..<N.
        let ragged = try GlobalBatchPlan(count: 50, globalBatch: 8, worldSize: 1, localBatch: 4, seed: 1)
        XCTAssertEqual(ragged.stepsPerEpoch, 6)
        let seen = (0..<6).flatMap { ragged.globalBatch(step: $0).map(\.datasetIndex) }
        XCTAssertEqual(Set(seen).count, 48)
        XCTAssertEqual(seen, Array(ragged.permutation(epoch: 0).prefix(48)))
        XCTAssertEqual(ragged.permutation(epoch: 0).sorted(), Array(0..<50))
    }

    func testPermutationsDifferByEpochAndSeedAndAreReproducible() throws {
        let p00 = GlobalBatchPlan.permutation(count: 1000, seed: 0, epoch: 0)
        let p01 = GlobalBatchPlan.permutation(count: 1000, seed: 0, epoch: 1)
        let p10 = GlobalBatchPlan.permutation(count: 1000, seed: 1, epoch: 0)
        XCTAssertNotEqual(p00, p01)
        XCTAssertNotEqual(p00, p10)
        XCTAssertNotEqual(p01, p10)
        XCTAssertNotEqual(p00, Array(0..<1000))
        for p in [p00, p01, p10] { XCTAssertEqual(p.sorted(), Array(0..<1000)) }
        XCTAssertEqual(GlobalBatchPlan.permutation(count: 1000, seed: 0, epoch: 1), p01)
        // Pinned: changing the stream constant or the Fisher–Yates draw order would reshuffle every run's data.
        XCTAssertEqual(GlobalBatchPlan.permutation(count: 10, seed: 1234, epoch: 3), Self.pinnedPermutation)
        // Fisher–Yates by hand: element i swaps with draw i of the (seed, epoch) stream.
        let rng = CounterRNG(seed: 1234).substream(SamplerStreams.permutation, 3)
        var p = Array(0..<10)
        for i in stride(from: 9, through: 1, by: -1) { p.swapAt(i, rng.integer(UInt64(i), below: i + 1)) }
        XCTAssertEqual(p, Self.pinnedPermutation)
    }
    static let pinnedPermutation = [2, 0, 4, 9, 5, 7, 8, 1, 6, 3]

    func testEpochBoundary() throws {
        let plan = try GlobalBatchPlan(count: 30, globalBatch: 8, worldSize: 2, localBatch: 2, seed: 9)
        XCTAssertEqual(plan.stepsPerEpoch, 3)   // positions 24..<30 are dropped
        let last = plan.globalBatch(step: 2)
        XCTAssertEqual(last.map(\.epoch), Array(repeating: 0, count: 8))
        XCTAssertEqual(last.map(\.position), Array(16..<24))
        XCTAssertEqual(last.map(\.datasetIndex), Array(plan.permutation(epoch: 0)[16..<24]))
        let first = plan.globalBatch(step: 3)
        XCTAssertEqual(first.map(\.epoch), Array(repeating: 1, count: 8))
        XCTAssertEqual(first.map(\.position), Array(0..<8))
        XCTAssertEqual(first.map(\.datasetIndex), Array(plan.permutation(epoch: 1)[0..<8]))
        XCTAssertEqual(plan.microBatches(step: 3, rank: 1),
                       [Array(first[4..<6]), Array(first[6..<8])])
        XCTAssertEqual(plan.epoch(ofStep: 7), 2)
        XCTAssertEqual(plan.globalBatch(step: 1000).first?.epoch, 333)
    }

    func testPermutationCachedPerEpoch() throws {
        let plan = try GlobalBatchPlan(count: 40, globalBatch: 4, worldSize: 2, localBatch: 1, seed: 5)
        for step in 0..<10 { for rank in 0..<2 { _ = plan.microBatches(step: step, rank: rank) } }
        XCTAssertEqual(plan.permutationComputations, 1)
        _ = plan.microBatches(step: 10, rank: 0)
        _ = plan.microBatches(step: 11, rank: 1)
        XCTAssertEqual(plan.permutationComputations, 2)
    }

    func testErrors() {
        XCTAssertThrowsError(try GlobalBatchPlan(count: 100, globalBatch: 10, worldSize: 4, localBatch: 2)) {
            XCTAssertEqual($0 as? BatchPlanError, .notDivisible(globalBatch: 10, worldSize: 4, localBatch: 2))
            XCTAssertTrue("\($0)".hasPrefix("global batch 10 is not divisible by world size 4 × local batch 2 = 8"), "\($0)")
        }
        XCTAssertThrowsError(try GlobalBatchPlan(count: 100, globalBatch: 12, worldSize: 1, localBatch: 8))
        XCTAssertThrowsError(try GlobalBatchPlan(count: 7, globalBatch: 8, worldSize: 2, localBatch: 2)) {
            XCTAssertEqual("\($0)", "the dataset has 7 triplets, fewer than the global batch 8: not one step fits in an epoch")
        }
        XCTAssertThrowsError(try GlobalBatchPlan(count: 7, globalBatch: 0, worldSize: 1, localBatch: 1)) {
            XCTAssertEqual("\($0)", "global batch must be positive, got 0")
        }
        XCTAssertThrowsError(try GlobalBatchPlan(count: 7, globalBatch: 4, worldSize: 1, localBatch: -1)) {
            XCTAssertEqual("\($0)", "local batch must be positive, got -1")
        }
        XCTAssertNoThrow(try GlobalBatchPlan(count: 8, globalBatch: 8, worldSize: 2, localBatch: 2))
    }
}
