// Which triplets each rank trains on at each step, independent of the number of ranks.
//
// Every epoch is a permutation of 0..<N that depends only on (seed, epoch). Global step s takes permutation
// positions [(s mod stepsPerEpoch)·G, +G) of epoch s / stepsPerEpoch (the last partial global batch of an epoch is
// dropped); rank r of W takes the contiguous G/W of those starting at r·G/W, as A = G/(W·b) micro-batches of b.
// So the global batch of step s — and, through each sample's (epoch, position), its noise and timestep drawn
// from the counter RNG — is the same on 1, 2 or 8 ranks: only who computes which part changes.

import IO
import Foundation
import Tensors

/// One triplet of a global batch.
public struct Sample: Sendable, Hashable, CustomStringConvertible {
    /// Row in the dataset / latent cache.
    public let datasetIndex: Int
    public let epoch: Int
    /// Position in the epoch's permutation; (epoch, position) seeds the triplet's noise and timestep.
    public let position: Int

    public init(datasetIndex: Int, epoch: Int, position: Int) {
        self.datasetIndex = datasetIndex
        self.epoch = epoch
        self.position = position
    }

    public var description: String { "#\(datasetIndex)@\(epoch):\(position)" }
}

public enum BatchPlanError: Error, UserInputError, CustomStringConvertible, Equatable {
    case notPositive(name: String, value: Int)
    case notDivisible(globalBatch: Int, worldSize: Int, localBatch: Int)
    case datasetTooSmall(count: Int, globalBatch: Int)

    public var description: String {
        switch self {
        case let .notPositive(name, value):
            return "\(name) must be positive, got \(value)"
        case let .notDivisible(g, w, b):
            return "global batch \(g) is not divisible by world size \(w) × local batch \(b) = \(w * b): each rank "
                + "must take a whole number of micro-batches (choose a global batch that is a multiple of \(w * b))"
        case let .datasetTooSmall(n, g):
            return "the dataset has \(n) triplet\(n == 1 ? "" : "s"), fewer than the global batch \(g): "
                + "not one step fits in an epoch"
        }
    }
}

/// Stream purposes for `CounterRNG.substream`, so no two uses of the run seed share draws.
public enum SamplerStreams {
    /// The epoch permutation: `CounterRNG(seed:).substream(permutation, epoch)`, draw i for element i.
    public static let permutation: UInt64 = 0x5045_524D_5554_4531   // "PERMUTE1"
}

public struct GlobalBatchPlan: Sendable {
    public let count: Int
    public let globalBatch: Int
    public let worldSize: Int
    public let localBatch: Int
    public let seed: UInt64
    /// N / G: steps before the permutation changes (the remainder N mod G is not seen that epoch).
    public let stepsPerEpoch: Int
    /// G / W samples per rank per step.
    public var samplesPerRank: Int { globalBatch / worldSize }
    /// A = G / (W·b): gradient-accumulation micro-batches per rank per step.
    public var microBatchesPerStep: Int { globalBatch / (worldSize * localBatch) }

    private let cache = PermutationCache()

    public init(count: Int, globalBatch: Int, worldSize: Int, localBatch: Int, seed: UInt64 = 0) throws {
        for (name, value) in [("global batch", globalBatch), ("world size", worldSize), ("local batch", localBatch)]
        where value <= 0 {
            throw BatchPlanError.notPositive(name: name, value: value)
        }
        guard globalBatch % (worldSize * localBatch) == 0 else {
            throw BatchPlanError.notDivisible(globalBatch: globalBatch, worldSize: worldSize, localBatch: localBatch)
        }
        guard count >= globalBatch else { throw BatchPlanError.datasetTooSmall(count: count, globalBatch: globalBatch) }
        self.count = count
        self.globalBatch = globalBatch
        self.worldSize = worldSize
        self.localBatch = localBatch
        self.seed = seed
        stepsPerEpoch = count / globalBatch
    }

    public func epoch(ofStep step: Int) -> Int { step / stepsPerEpoch }

    /// The whole global batch of `step`, in permutation order (= the ranks' parts concatenated rank-major).
    public func globalBatch(step: Int) -> [Sample] {
        precondition(step >= 0, "GlobalBatchPlan: step \(step) is negative")
        return samples(step: step, offset: 0, length: globalBatch)
    }

    /// Rank `rank`'s part of `step`: `microBatchesPerStep` micro-batches of `localBatch` samples.
    public func microBatches(step: Int, rank: Int) -> [[Sample]] {
        precondition(step >= 0, "GlobalBatchPlan: step \(step) is negative")
        precondition(rank >= 0 && rank < worldSize, "GlobalBatchPlan: rank \(rank) out of 0..<\(worldSize)")
        let mine = samples(step: step, offset: rank * samplesPerRank, length: samplesPerRank)
        return stride(from: 0, to: mine.count, by: localBatch).map { Array(mine[$0..<($0 + localBatch)]) }
    }

    private func samples(step: Int, offset: Int, length: Int) -> [Sample] {
        let epoch = step / stepsPerEpoch
        let first = (step % stepsPerEpoch) * globalBatch + offset
        return cache.withPermutation(epoch: epoch, count: count, seed: seed) { permutation in
            (first..<(first + length)).map { Sample(datasetIndex: permutation[$0], epoch: epoch, position: $0) }
        }
    }

    /// Permutations computed by this plan (and its copies) so far; for tests of the cache.
    var permutationComputations: Int { cache.computations }

    /// The epoch's order of dataset indices.
    public func permutation(epoch: Int) -> [Int] {
        cache.withPermutation(epoch: epoch, count: count, seed: seed) { Array($0) }
    }

    /// Fisher–Yates over 0..<count: for i = count−1 … 1, swap element i with j = draw i of the epoch's stream,
    /// uniform in 0…i. Each draw depends only on (seed, epoch, i), so any process computes the same permutation.
    public static func permutation(count: Int, seed: UInt64, epoch: Int) -> [Int] {
        let rng = CounterRNG(seed: seed).substream(SamplerStreams.permutation, UInt64(epoch))
        var p = Array(0..<count)
        p.withUnsafeMutableBufferPointer { p in
            var i = count - 1
            while i > 0 {
                p.swapAt(i, rng.integer(UInt64(i), below: i + 1))
                i -= 1
            }
        }
        return p
    }
}

/// The current epoch's permutation, recomputed only when the epoch changes. Shared by copies of a plan.
private final class PermutationCache: @unchecked Sendable {   // state behind `lock`
    private let lock = NSLock()
    private var epoch = -1
    private var permutation: [Int] = []
    private(set) var computations = 0   // for tests: permutations computed so far

    func withPermutation<R>(epoch: Int, count: Int, seed: UInt64, _ body: (ArraySlice<Int>) -> R) -> R {
        lock.withLock {
            if epoch != self.epoch {
                permutation = GlobalBatchPlan.permutation(count: count, seed: seed, epoch: epoch)
                self.epoch = epoch
                computations += 1
            }
            return body(permutation[...])
        }
    }
}
