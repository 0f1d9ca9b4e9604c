import Dispatch
import XCTest
@testable import Tensors

final class PhiloxTests: XCTestCase {
    /// Random123 kat_vectors: "philox4x32 10 <counter ×4> <key ×2> <expected ×4>".
    func testKnownAnswerVectors() {
        let cases: [(SIMD4<UInt32>, SIMD2<UInt32>, SIMD4<UInt32>)] = [
            (SIMD4(0, 0, 0, 0), SIMD2(0, 0), SIMD4(0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8)),
            (SIMD4(repeating: 0xffff_ffff), SIMD2(repeating: 0xffff_ffff), SIMD4(0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd)),
            (SIMD4(0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344), SIMD2(0xa409_3822, 0x299f_31d0),
             SIMD4(0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1)),
        ]
        for (counter, key, expected) in cases {
            XCTAssertEqual(Philox4x32(key: key).block(counter), expected)
        }
        // The seed maps to the key as (low word, high word).
        XCTAssertEqual(Philox4x32(seed: 0x299f_31d0_a409_3822).key, SIMD2(0xa409_3822, 0x299f_31d0))
    }

    func testDrawsDependOnlyOnSeedStreamAndIndex() {
        let rng = CounterRNG(seed: 1234, stream: 77)
        let whole = rng.normals(1001)
        // Element by element, in reverse order.
        for i in stride(from: 1000, through: 0, by: -1) { XCTAssertEqual(rng.normal(UInt64(i)), whole[i]) }
        // In uneven chunks starting at odd and even offsets.
        var pieces = [Float](repeating: 0, count: 1001)
        var start = 0
        for len in [1, 2, 3, 7, 64, 1, 500, 423] {
            pieces.withUnsafeMutableBufferPointer { b in
                rng.fillNormal(UnsafeMutableBufferPointer(rebasing: b[start..<start + len]), offset: UInt64(start))
            }
            start += len
        }
        XCTAssertEqual(start, 1001)
        XCTAssertEqual(pieces, whole)
        // From other threads, concurrently: same numbers.
        let results = UnsafeMutableBufferPointer<Float>.allocate(capacity: 1001)
        defer { results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 1001) { i in results[i] = CounterRNG(seed: 1234, stream: 77).normal(UInt64(i)) }
        XCTAssertEqual(Array(results), whole)
    }

    func testStreamsAndSeedsAreIndependent() {
        let base = CounterRNG(seed: 7)
        let a = base.substream(1, 0, 5).normals(256)
        let b = base.substream(1, 0, 6).normals(256)
        let c = base.substream(1, 0, 5).normals(256)
        let d = CounterRNG(seed: 8).substream(1, 0, 5).normals(256)
        XCTAssertEqual(a, c)
        XCTAssertNotEqual(a, b)
        XCTAssertNotEqual(a, d)
        // Path components are not commutative: (0, 5) and (5, 0) are different streams.
        XCTAssertNotEqual(base.substream(0, 5).stream, base.substream(5, 0).stream)
        // Correlation between neighbouring streams is at noise level.
        let x = base.substream(2).normals(100_000), y = base.substream(3).normals(100_000)
        let corr = zip(x, y).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } / 100_000
        XCTAssertLessThan(abs(corr), 0.015)
    }

    func testNormalMoments() {
        let n = 1_000_000
        let z = CounterRNG(seed: 42, stream: 3).normals(n)
        var m1 = 0.0, m2 = 0.0, m3 = 0.0, m4 = 0.0
        for v in z { let d = Double(v); m1 += d; m2 += d * d; m3 += d * d * d; m4 += d * d * d * d }
        m1 /= Double(n); m2 /= Double(n); m3 /= Double(n); m4 /= Double(n)
        // Standard errors at n = 1e6: mean 0.001, second moment 0.0014, third 0.0039, fourth 0.0098; bounds ≈ 5σ.
        XCTAssertLessThan(abs(m1), 0.005)
        XCTAssertLessThan(abs(m2 - 1), 0.007)
        XCTAssertLessThan(abs(m3), 0.02)
        XCTAssertLessThan(abs(m4 - 3), 0.05)
        XCTAssertTrue(z.allSatisfy { $0.isFinite })
    }

    func testUniformAndIntegerRanges() {
        let rng = CounterRNG(seed: 9, stream: 1)
        var sum = 0.0
        for i in 0..<200_000 {
            let u = rng.uniform(UInt64(i))
            XCTAssertTrue(u >= 0 && u < 1)
            sum += Double(u)
        }
        XCTAssertEqual(sum / 200_000, 0.5, accuracy: 0.005)
        // Timesteps U{0 … 999}: chi-square over 10 bins of 100.
        var bins = [Int](repeating: 0, count: 10)
        for i in 0..<100_000 {
            let t = rng.integer(UInt64(i), below: 1000)
            XCTAssertTrue((0..<1000).contains(t))
            bins[t / 100] += 1
        }
        let chi2 = bins.reduce(0.0) { $0 + pow(Double($1) - 10_000, 2) / 10_000 }
        XCTAssertLessThan(chi2, 30)   // 9 degrees of freedom: P(χ² > 30) ≈ 4e-4
    }
}
