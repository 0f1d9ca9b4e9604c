import XCTest
import TestSupport
@testable import Tensors

/// BF16 conversions and GEMMs on every path this CPU can run: the default one, `generic`, and `emulated` (the
/// AVX512-BF16 code compiled as portable C, so its packing / micro-kernels / edges / threads are tested on CPUs
/// without AVX-512 too). GEMMs are checked against a Double reference on the bf16 values (fp32 operands rounded
/// to bf16 where the path does so) with the fp32 summation bound |err| <= 2(K+2)·2⁻²⁴·Σ|terms|.
final class BF16GEMMTests: XCTestCase {
    override func tearDown() {
        BF16.setPath(nil)
        BF16.setThreads(ProcessInfo.processInfo.activeProcessorCount)
        super.tearDown()
    }

    /// The paths to test here, the default first.
    private var paths: [BF16.Path] {
        var p = [BF16.path]
        for q in [BF16.Path.avx512, .avx2, .generic, .emulated] where !p.contains(q) {
            if BF16.setPath(q) { p.append(q) }
        }
        BF16.setPath(nil)
        return p
    }

    // MARK: - Conversions

    /// Bits from PyTorch 2.15 (CPU): `torch.tensor(x).to(torch.bfloat16)`.
    private let pytorchCases: [(UInt32, UInt16)] = [
        (0x7F80_0001, 0xFFFF), (0xFF80_0001, 0xFFFF), (0x7FC0_0000, 0xFFFF), (0xFFC1_2345, 0xFFFF),  // NaNs
        (0x7F7F_FFFF, 0x7F80),  // FLT_MAX rounds up to inf
        (0x3F80_8000, 0x3F80),  // 1 + 2⁻⁸: tie, to even (down)
        (0x3F81_8000, 0x3F82),  // tie, to even (up)
        (0x0000_8000, 0x0000), (0x0001_8000, 0x0002),  // subnormal ties
        (0x807F_FFFF, 0x8080),  // largest negative subnormal rounds to -FLT_MIN
        (0x7F80_0000, 0x7F80), (0xFF80_0000, 0xFF80), (0x8000_0000, 0x8000), (0x0000_0000, 0x0000),
        (0x3F80_7FFF, 0x3F80), (0x3F80_8001, 0x3F81), (0x7F7F_7FFF, 0x7F7F),  // just below / above ties; bf16 max
        (0x0000_0001, 0x0000), (0x0001_16C2, 0x0001),  // tiny subnormals (1e-40 -> 0x0001)
    ]

    func testConversionMatchesPyTorchOnEveryPath() {
        for path in paths {
            XCTAssertTrue(BF16.setPath(path))
            // Each special value at every position of buffers of odd and even lengths (vector bodies and tails).
            for n in [1, 7, 8, 15, 16, 17, 31, 33, 100] {
                for (bits, want) in pytorchCases {
                    for pos in Set([0, n / 2, n - 1]) {
                        var src = (0..<n).map { Float($0) * 0.37 - 3 }
                        src[pos] = Float(bitPattern: bits)
                        let out = BF16.bits(src)
                        XCTAssertEqual(out[pos], want, "\(path) n=\(n) pos=\(pos) x=0x\(String(bits, radix: 16))")
                        for i in 0..<n where i != pos {
                            XCTAssertEqual(out[i], bfloat16Bits(src[i]), "\(path) neighbour \(i)")
                        }
                        var rounded = [Float](repeating: 0, count: n)
                        BF16.round(src, to: &rounded, count: n)
                        XCTAssertEqual(rounded[pos].bitPattern, UInt32(want) << 16, "\(path) round()")
                    }
                }
            }
            // Random bit patterns (all exponents) against the scalar reference (DType.swift) for non-NaN values.
            var rng = SplitMix(seed: 42)
            let src = (0..<4099).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) }
            let out = BF16.bits(src)
            for i in src.indices {
                XCTAssertEqual(out[i], src[i].isNaN ? 0xFFFF : bfloat16Bits(src[i]), "\(path) random \(i)")
            }
        }
    }

    func testBF16ToFloatIsExactForAllBitPatterns() {
        let all = (0...0xFFFF).map { UInt16($0) }
        for path in paths {
            XCTAssertTrue(BF16.setPath(path))
            for n in [all.count, 17, 1] {
                let f = BF16.floats(Array(all[0..<n]))
                for i in 0..<n { XCTAssertEqual(f[i].bitPattern, UInt32(all[i]) << 16, "\(path) 0x\(String(i, radix: 16))") }
            }
            // Round trip: every non-NaN bf16 survives float -> bf16; NaNs stay NaN.
            let back = BF16.bits(BF16.floats(all))
            for i in all.indices {
                if Float(bitPattern: UInt32(all[i]) << 16).isNaN { XCTAssertEqual(back[i], 0xFFFF) }
                else { XCTAssertEqual(back[i], all[i]) }
            }
        }
    }

    // MARK: - GEMMs

    private enum Variant: CaseIterable { case bf16bf16, f32bf16, bf16f32 }

    /// One GEMM against the Double reference. Returns the largest error relative to the bound (< 1 passes).
    @discardableResult
    private func check(_ v: Variant, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, beta: Float,
                       pad: Int, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) -> Double {
        let path = BF16.path
        let roundsF32 = path == .avx512 || path == .emulated
        var rng = SplitMix(seed: seed)
        let (ra, ca) = transA ? (k, m) : (m, k), (rb, cb) = transB ? (n, k) : (k, n)
        let lda = ca + pad, ldb = cb + pad, ldc = n + pad
        let af = (0..<max(1, ra * lda)).map { _ in rng.uniform() * 4 - 2 }
        let bf = (0..<max(1, rb * ldb)).map { _ in rng.uniform() * 4 - 2 }
        let ab = BF16.bits(af), bb = BF16.bits(bf)
        // Operand values as the path sees them.
        let aUsed: [Double] = (v == .f32bf16 && !roundsF32) ? af.map(Double.init) : ab.map { Double(floatFromBFloat16Bits($0)) }
        let bUsed: [Double] = (v == .bf16f32 && !roundsF32) ? bf.map(Double.init) : bb.map { Double(floatFromBFloat16Bits($0)) }
        var c0 = (0..<max(1, m * ldc)).map { _ in rng.uniform() * 2 - 1 }
        if beta == 0 { for i in stride(from: 0, to: c0.count, by: 3) { c0[i] = .nan } }  // must not be read
        var c = c0
        switch v {
        case .bf16bf16:
            BF16.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: ab, lda: lda, b: bb, ldb: ldb,
                      beta: beta, c: &c, ldc: ldc)
        case .f32bf16:
            BF16.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: af, lda: lda, b: bb, ldb: ldb,
                      beta: beta, c: &c, ldc: ldc)
        case .bf16f32:
            BF16.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: ab, lda: lda, b: bf, ldb: ldb,
                      beta: beta, c: &c, ldc: ldc)
        }
        var worst = 0.0, failures = 0
        let label = "\(path) \(v) tA=\(transA) tB=\(transB) m=\(m) n=\(n) k=\(k) alpha=\(alpha) beta=\(beta) pad=\(pad)"
        aUsed.withUnsafeBufferPointer { A in
            bUsed.withUnsafeBufferPointer { B in
                for i in 0..<m {
                    for j in 0..<ldc {
                        let got = Double(c[i * ldc + j])
                        if j >= n {  // padding of C: untouched
                            if !(c[i * ldc + j].bitPattern == c0[i * ldc + j].bitPattern) { failures += 1 }
                            continue
                        }
                        var s = 0.0, mag = 0.0
                        for p in 0..<k {
                            let t = A[transA ? p * lda + i : i * lda + p] * B[transB ? j * ldb + p : p * ldb + j]
                            s += t
                            mag += abs(t)
                        }
                        let cOld = Double(c0[i * ldc + j])
                        let want = Double(alpha) * s + (beta == 0 ? 0 : Double(beta) * cOld)
                        let bound = 2 * Double(k + 2) * 0x1p-24 * (abs(Double(alpha)) * mag + (beta == 0 ? 0 : abs(Double(beta) * cOld))) + 1e-30
                        let r = abs(got - want) / bound
                        if !(r < 1) { failures += 1 }
                        worst = max(worst, r.isNaN ? .infinity : r)
                    }
                }
            }
        }
        XCTAssertEqual(failures, 0, "\(label): \(failures) bad elements, worst error/bound \(worst)", file: file, line: line)
        return worst
    }

    /// Shapes: 1, 3, 17, 33, 257 in every role, plus edges of the 8×48 micro-tile and the 512-deep K blocks
    /// (1025: three balanced blocks).
    private let shapes: [(Int, Int, Int)] = [
        (1, 1, 1), (3, 17, 33), (17, 3, 257), (33, 257, 3), (257, 33, 17), (1, 257, 33), (257, 1, 17), (33, 33, 257),
        (17, 50, 1), (8, 48, 2), (9, 49, 513), (16, 96, 512), (2, 17, 3), (9, 20, 1025),
    ]

    func testAllTransposesAndVariantsOnEveryPath() {
        for path in paths {
            XCTAssertTrue(BF16.setPath(path))
            var seed: UInt64 = 1
            for (m, n, k) in shapes {
                for transA in [false, true] {
                    for transB in [false, true] {
                        for v in Variant.allCases {
                            seed += 1
                            let (alpha, beta): (Float, Float) = [(1, 0), (-0.75, 0.5), (1.5, 1), (0.5, -2)][Int(seed % 4)]
                            check(v, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, beta: beta,
                                  pad: Int(seed % 3) * 3, seed: seed)
                        }
                    }
                }
            }
        }
    }

    /// The AVX512-BF16 path by name: skipped, with the reason, where the CPU lacks it (the tests above then cover
    /// its code only as `emulated`), so a CI log shows whether the real VDPBF16PS code ran.
    func testAVX512BF16Path() throws {
        guard BF16.setPath(.avx512) else { throw XCTSkip("no AVX512-BF16 on this CPU") }
        XCTAssertTrue(BF16.isAccelerated)
        for (i, (m, n, k)) in shapes.enumerated() {
            for v in Variant.allCases {
                check(v, transA: i % 2 == 0, transB: i % 3 == 0, m: m, n: n, k: k, alpha: 1, beta: 0.5, pad: 1,
                      seed: UInt64(500 + i))
            }
        }
    }

    /// The orientations the U-Net uses, small versions, with strides larger than the rows.
    func testUNetOrientations() {
        for path in paths {
            XCTAssertTrue(BF16.setPath(path))
            // linear forward out[N,O] = x[N,I]·W[O,I]ᵀ and backward dx = dy·W
            check(.f32bf16, transA: false, transB: true, m: 70, n: 40, k: 36, alpha: 1, beta: 0, pad: 2, seed: 7)
            check(.f32bf16, transA: false, transB: false, m: 70, n: 36, k: 40, alpha: 1, beta: 1, pad: 1, seed: 8)
            // conv forward C[Cout,HW] = W[Cout,CKK]·col and backward dcol = Wᵀ·dy
            check(.bf16f32, transA: false, transB: false, m: 24, n: 64, k: 90, alpha: 1, beta: 0, pad: 5, seed: 9)
            check(.bf16f32, transA: true, transB: false, m: 90, n: 64, k: 24, alpha: 1, beta: 0, pad: 0, seed: 10)
        }
    }

    /// Several column blocks (N > 3072), K blocks, and both threads on the AVX512-BF16 code (emulated here if the
    /// CPU lacks it); the split over threads must not change a single bit.
    func testBlockingAndThreads() {
        for path in paths {
            XCTAssertTrue(BF16.setPath(path))
            BF16.setThreads(2)
            check(.bf16bf16, transA: false, transB: false, m: 9, n: 3100, k: 40, alpha: 1, beta: 0.5, pad: 1, seed: 11)
            check(.f32bf16, transA: false, transB: true, m: 40, n: 20, k: 600, alpha: 1, beta: 0, pad: 0, seed: 12)
            check(.bf16f32, transA: true, transB: true, m: 100, n: 7, k: 1100, alpha: 2, beta: 1, pad: 3, seed: 13)
        }
        XCTAssertTrue(BF16.setPath(.emulated))
        var rng = SplitMix(seed: 5)
        let (m, n, k) = (70, 150, 1100)
        let a = BF16.bits((0..<m * k).map { _ in rng.uniform() - 0.5 })
        let b = (0..<k * n).map { _ in rng.uniform() - 0.5 }
        var results: [[Float]] = []
        for threads in [1, 2, 3] {
            BF16.setThreads(threads)
            var c = [Float](repeating: 0, count: m * n)
            BF16.gemm(m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: &c, ldc: n)
            results.append(c)
        }
        XCTAssertEqual(results[0], results[1])
        XCTAssertEqual(results[0], results[2])
    }

    func testDegenerateSizesAndScalars() {
        for path in paths {
            XCTAssertTrue(BF16.setPath(path))
            let a = BF16.bits([1, 2, 3, 4]), b = BF16.bits([5, 6, 7, 8])
            // K == 0: C = beta·C; beta == 0 overwrites NaN.
            var c: [Float] = [1, .nan, 3, 4]
            BF16.gemm(m: 2, n: 2, k: 0, a: a, lda: 1, b: b, ldb: 2, beta: 0, c: &c, ldc: 2)
            XCTAssertEqual(c, [0, 0, 0, 0])
            c = [1, 2, 3, 4]
            BF16.gemm(m: 2, n: 2, k: 0, a: a, lda: 1, b: b, ldb: 2, beta: 2, c: &c, ldc: 2)
            XCTAssertEqual(c, [2, 4, 6, 8])
            // alpha == 0: B may hold anything.
            let nanB = BF16.bits([.nan, .nan, .nan, .nan])
            c = [1, 2, 3, 4]
            BF16.gemm(m: 2, n: 2, k: 2, alpha: 0, a: a, lda: 2, b: nanB, ldb: 2, beta: 1, c: &c, ldc: 2)
            XCTAssertEqual(c, [1, 2, 3, 4])
            // M == 0 / N == 0: nothing happens.
            c = [1, 2, 3, 4]
            BF16.gemm(m: 0, n: 2, k: 2, a: a, lda: 2, b: b, ldb: 2, c: &c, ldc: 2)
            BF16.gemm(m: 2, n: 0, k: 2, a: a, lda: 2, b: b, ldb: 1, c: &c, ldc: 1)
            XCTAssertEqual(c, [1, 2, 3, 4])
            // A small exact product: [[1,2],[3,4]]·[[5,6],[7,8]] = [[19,22],[43,50]].
            BF16.gemm(m: 2, n: 2, k: 2, a: a, lda: 2, b: b, ldb: 2, beta: 0, c: &c, ldc: 2)
            XCTAssertEqual(c, [19, 22, 43, 50], "\(path)")
            // Non-finite inputs propagate.
            let infA = BF16.bits([.infinity, 0, 1, 1])
            BF16.gemm(m: 2, n: 2, k: 2, a: infA, lda: 2, b: b, ldb: 2, beta: 0, c: &c, ldc: 2)
            XCTAssertEqual(c[0], .infinity, "\(path)")
            XCTAssertEqual(Array(c[2...]), [12, 14], "\(path)")
        }
    }

    func testPathSelection() {
        XCTAssertTrue(BF16.setPath(.generic))
        XCTAssertEqual(BF16.path, .generic)
        XCTAssertFalse(BF16.isAccelerated)
        XCTAssertTrue(BF16.setPath(.emulated))
        XCTAssertEqual(BF16.path, .emulated)
        XCTAssertFalse(BF16.isAccelerated)
        BF16.setPath(nil)
        XCTAssertEqual(BF16.isAccelerated, BF16.path == .avx512)
        if !BF16.setPath(.avx512) { XCTAssertNotEqual(BF16.path, .avx512) }  // refused on CPUs without AVX512-BF16
    }
}

/// Small deterministic generator for test data.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func uniform() -> Float { Float(next() >> 40) * 0x1p-24 }
}
