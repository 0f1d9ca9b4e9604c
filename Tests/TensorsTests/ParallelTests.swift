import CBLAS
import CKernels
import Foundation
import XCTest
@testable import Tensors

/// The one thread pool (CKernels/parallel.c) against its serial reference, and the GEMM row split against one
/// OpenBLAS call, bit for bit.
final class ParallelTests: XCTestCase {
    private let savedThreads = Parallel.threads
    override func tearDown() {
        Parallel.threads = savedThreads
        super.tearDown()
    }

    /// Every index once, for many loop sizes and widths; loops nested in a task run serially and still cover all.
    func testParallelForCoversEachIndexOnce() {
        for threads in [2, 3, 8] {
            Parallel.threads = threads
            for n in [2, 3, 7, 64, 1000] {
                let counts = UnsafeMutablePointer<Int>.allocate(capacity: n * n)
                counts.initialize(repeating: 0, count: n * n)
                defer { counts.deallocate() }
                parallelFor(n) { i in
                    parallelFor(n) { j in counts[i * n + j] += 1 }
                }
                XCTAssertEqual((0..<(n * n)).filter { counts[$0] != 1 }.count, 0, "threads \(threads), n \(n)")
            }
        }
    }

    /// Many short runs back to back (the workers poll between them), with task counts that grow and shrink from one
    /// run to the next (a worker late for one run must not take a task of the next), and runs started from two
    /// threads at once (one of them runs serially): every task runs exactly once.
    func testPoolBackToBackAndConcurrentCallers() {
        Parallel.threads = 2
        let lock = NSLock()
        var total = 0, expected = 0
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            for i in 0..<2000 {
                let tasks = 2 + i % 4
                let sum = UnsafeMutablePointer<Int>.allocate(capacity: tasks)
                sum.initialize(repeating: 0, count: tasks)
                Parallel.run(tasks: tasks) { t in sum[t] += t + 1 }
                lock.lock()
                total += (0..<tasks).reduce(0) { $0 + sum[$1] }
                expected += tasks * (tasks + 1) / 2
                lock.unlock()
                sum.deallocate()
            }
        }
        XCTAssertEqual(total, expected)
    }

    /// hg_sgemm (rows of C, or its columns when it has too few rows, in blocks of 16 over 2–4 tasks) equals one OpenBLAS call (single-threaded and on
    /// OpenBLAS's own 2 threads) bit for bit, on the U-Net's GEMM shapes (linear layers, LoRA, 1×1 and im2col
    /// convolutions, attention blocks) and small ones near the split threshold, every transpose combination.
    /// How many elements differ in bits (memcmp first: the element loop is slow in debug builds).
    private func differing(_ x: [Float], _ y: [Float]) -> Int {
        if x.count == y.count && memcmp(x, y, x.count * MemoryLayout<Float>.size) == 0 { return 0 }
        return zip(x, y).filter { $0.bitPattern != $1.bitPattern }.count + abs(x.count - y.count)
    }

    func testSgemmRowSplitIsBitIdentical() {
        let shapes: [(Int, Int, Int)] = [
            (2048, 320, 320), (2048, 1280, 320), (512, 640, 640), (128, 1280, 1280), (32, 1280, 1280),
            (2048, 64, 64), (2048, 256, 64), (512, 128, 128), (320, 320, 2048), (1280, 1280, 128), (2048, 8, 256),
            (8, 256, 2048), (2048, 320, 8), (154, 320, 768), (1024, 77, 40), (1024, 40, 77), (100, 100, 100),
            (48, 64, 256), (33, 17, 500), (96, 96, 96), (40, 4096, 8),
            // Too few rows to split, so by columns: LoRA dA = d(xa)ᵀ·x at small@32 and sd15@32 with 4 pairs.
            (8, 64, 8192), (8, 320, 8192), (8, 1280, 512), (16, 200, 4000),
        ]
        // One pool of values in [-1, 1) for every operand (a 32-bit LCG: fast in debug builds too).
        let largest = shapes.map { max($0.0 * $0.2, $0.2 * $0.1, $0.0 * $0.1) }.max()!
        var values = [Float](repeating: 0, count: largest + 4096)
        var state: UInt32 = 12345
        for i in values.indices {
            state = state &* 1_664_525 &+ 1_013_904_223
            values[i] = Float(state >> 8) / Float(1 << 23) - 1
        }
        for (index, (m, n, k)) in shapes.enumerated() {
            for (transA, transB) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = Array(values[(index * 7)..<(index * 7 + m * k)])
                let b = Array(values[(index * 11 + 1000)..<(index * 11 + 1000 + k * n)])
                let c0 = Array(values[(index * 13 + 3000)..<(index * 13 + 3000 + m * n)])
                let lda = transA ? m : k, ldb = transB ? k : n
                func reference(_ blasThreads: Int32) -> [Float] {
                    var c = c0
                    openblas_set_num_threads(blasThreads)
                    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                                Int32(m), Int32(n), Int32(k), 0.75, a, Int32(lda), b, Int32(ldb), 0.5, &c, Int32(n))
                    openblas_set_num_threads(1)
                    return c
                }
                let one = reference(1), two = reference(2)
                XCTAssertEqual(differing(one, two), 0, "OpenBLAS 1 vs 2 threads \(m)×\(n)×\(k) \(transA) \(transB)")
                for threads in [1, 2, 3, 4] {
                    var c = c0
                    hg_sgemm(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), 0.75, a, Int32(lda), b,
                             Int32(ldb), 0.5, &c, Int32(n), Int32(threads))
                    XCTAssertEqual(differing(c, one), 0, "\(m)×\(n)×\(k) transA \(transA) transB \(transB) threads \(threads)")
                }
            }
        }
    }
}
