// Attention forward/backward against a naive Double implementation, finite differences and the accumulate contract.
import CKernels
import XCTest
import TestSupport
import Tensors
@testable import Layers

final class AttentionTests: XCTestCase {
    // MARK: - Naive Double reference (same tokens-major layout)

    struct Shape { let B, Nq, Nk, H, d: Int; var C: Int { H * d } }

    /// Softmax probabilities P (Nq, Nk) and lse (Nq) of head (b, h), rows `rowsQ` only.
    static func naiveProbs(_ s: Shape, _ q: [Float], _ k: [Float], b: Int, h: Int, rowsQ: [Int])
        -> (P: [[Double]], lse: [Double]) {
        let scale = 1 / Double(s.d).squareRoot()
        var P: [[Double]] = [], lse: [Double] = []
        for i in rowsQ {
            var sc = [Double](repeating: 0, count: s.Nk)
            for j in 0..<s.Nk {
                var acc = 0.0
                for c in 0..<s.d {
                    acc += Double(q[(b * s.Nq + i) * s.C + h * s.d + c]) * Double(k[(b * s.Nk + j) * s.C + h * s.d + c])
                }
                sc[j] = acc * scale
            }
            let m = sc.max()!
            let e = sc.map { Foundation.exp($0 - m) }
            let sum = e.reduce(0, +)
            P.append(e.map { $0 / sum })
            lse.append(m + Foundation.log(sum))
        }
        return (P, lse)
    }

    static func naiveForward(_ s: Shape, _ q: [Float], _ k: [Float], _ v: [Float]) -> (out: [Double], lse: [Double]) {
        var out = [Double](repeating: 0, count: s.B * s.Nq * s.C), lse = [Double](repeating: 0, count: s.B * s.H * s.Nq)
        for b in 0..<s.B {
            for h in 0..<s.H {
                let (P, l) = naiveProbs(s, q, k, b: b, h: h, rowsQ: Array(0..<s.Nq))
                for i in 0..<s.Nq {
                    lse[(b * s.H + h) * s.Nq + i] = l[i]
                    for c in 0..<s.d {
                        var acc = 0.0
                        for j in 0..<s.Nk { acc += P[i][j] * Double(v[(b * s.Nk + j) * s.C + h * s.d + c]) }
                        out[(b * s.Nq + i) * s.C + h * s.d + c] = acc
                    }
                }
            }
        }
        return (out, lse)
    }

    static func naiveBackward(_ s: Shape, _ q: [Float], _ k: [Float], _ v: [Float], _ dout: [Float])
        -> (dq: [Double], dk: [Double], dv: [Double]) {
        let scale = 1 / Double(s.d).squareRoot()
        var dq = [Double](repeating: 0, count: q.count), dk = [Double](repeating: 0, count: k.count)
        var dv = [Double](repeating: 0, count: v.count)
        for b in 0..<s.B {
            for h in 0..<s.H {
                let (P, _) = naiveProbs(s, q, k, b: b, h: h, rowsQ: Array(0..<s.Nq))
                let qi = { (i: Int, c: Int) in (b * s.Nq + i) * s.C + h * s.d + c }
                let kj = { (j: Int, c: Int) in (b * s.Nk + j) * s.C + h * s.d + c }
                for i in 0..<s.Nq {
                    var dP = [Double](repeating: 0, count: s.Nk)
                    for j in 0..<s.Nk {
                        for c in 0..<s.d { dP[j] += Double(dout[qi(i, c)]) * Double(v[kj(j, c)]) }
                    }
                    var D = 0.0
                    for j in 0..<s.Nk { D += P[i][j] * dP[j] }
                    for j in 0..<s.Nk {
                        let dS = P[i][j] * (dP[j] - D)
                        for c in 0..<s.d {
                            dq[qi(i, c)] += scale * dS * Double(k[kj(j, c)])
                            dk[kj(j, c)] += scale * dS * Double(q[qi(i, c)])
                            dv[kj(j, c)] += P[i][j] * Double(dout[qi(i, c)])
                        }
                    }
                }
            }
        }
        return (dq, dk, dv)
    }

    // MARK: - Helpers

    static func random(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<n).map { _ in
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return (Float(state >> 40) / Float(1 << 24) * 2 - 1) * scale
        }
    }

    static func inputs(_ s: Shape, seed: UInt64) -> (q: [Float], k: [Float], v: [Float]) {
        // Scale 2 gives peaked softmax rows (scores up to ~±4·sqrt(d)), not just near-uniform ones.
        (random(s.B * s.Nq * s.C, seed: seed, scale: 2), random(s.B * s.Nk * s.C, seed: seed + 1, scale: 2),
         random(s.B * s.Nk * s.C, seed: seed + 2))
    }

    static func forward(_ s: Shape, _ q: [Float], _ k: [Float], _ v: [Float], plan: AttentionPlan)
        -> (out: [Float], lse: [Float]) {
        var out = [Float](repeating: .nan, count: s.B * s.Nq * s.C), lse = [Float](repeating: .nan, count: s.B * s.H * s.Nq)
        var ws = [Float](repeating: .nan, count: plan.workspaceSize)
        attentionForward(out: &out, lse: &lse, q: q, k: k, v: v, B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d,
                         workspace: &ws, plan: plan)
        return (out, lse)
    }

    /// Adds the backward into dq/dk/dv (as the kernel does).
    static func backward(_ s: Shape, _ q: [Float], _ k: [Float], _ v: [Float], _ dout: [Float], plan: AttentionPlan,
                         dq: inout [Float], dk: inout [Float], dv: inout [Float]) {
        let (out, lse) = forward(s, q, k, v, plan: plan)
        var ws = [Float](repeating: .nan, count: plan.workspaceSize)
        attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dout, q: q, k: k, v: v, out: out, lse: lse,
                          B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, workspace: &ws, plan: plan)
    }

    /// For batch 0, head h: lse, out, dq on query rows `rows` and dk, dv on key rows `rows` (row-major (rows, d)),
    /// in Double with flat loops (it has to run in a debug build: all of P and D is needed for dk and dv).
    static func naiveHeadRows(_ s: Shape, _ q: [Float], _ k: [Float], _ v: [Float], _ dout: [Float], h: Int, rows: [Int])
        -> (lse: [Double], out: [Double], dq: [Double], dk: [Double], dv: [Double]) {
        let d = s.d, Nq = s.Nq, Nk = s.Nk
        let head = { (x: [Float], n: Int) in (0..<n * d).map { Double(x[($0 / d) * s.C + h * d + $0 % d]) } }
        let qh = head(q, Nq), kh = head(k, Nk), vh = head(v, Nk), gh = head(dout, Nq)
        let scale = 1 / Double(d).squareRoot()
        var P = [Double](repeating: 0, count: Nq * Nk), lse = [Double](repeating: 0, count: Nq)
        var D = [Double](repeating: 0, count: Nq), out = [Double](repeating: 0, count: Nq * d)
        for i in 0..<Nq {
            var m = -Double.infinity
            for j in 0..<Nk {
                var acc = 0.0
                for c in 0..<d { acc += qh[i * d + c] * kh[j * d + c] }
                P[i * Nk + j] = acc * scale
                m = max(m, acc * scale)
            }
            var sum = 0.0
            for j in 0..<Nk { P[i * Nk + j] = Foundation.exp(P[i * Nk + j] - m); sum += P[i * Nk + j] }
            for j in 0..<Nk { P[i * Nk + j] /= sum }
            lse[i] = m + Foundation.log(sum)
            for j in 0..<Nk { for c in 0..<d { out[i * d + c] += P[i * Nk + j] * vh[j * d + c] } }
            for c in 0..<d { D[i] += gh[i * d + c] * out[i * d + c] }      // D_i = Σ dO_i·O_i
        }
        let dP = { (i: Int, j: Int) in (0..<d).reduce(0.0) { $0 + gh[i * d + $1] * vh[j * d + $1] } }
        var dq: [Double] = [], dk: [Double] = [], dv: [Double] = []
        for i in rows {
            var g = [Double](repeating: 0, count: d)
            for j in 0..<Nk {
                let dS = P[i * Nk + j] * (dP(i, j) - D[i])
                for c in 0..<d { g[c] += scale * dS * kh[j * d + c] }
            }
            dq += g
        }
        for j in rows {
            var gk = [Double](repeating: 0, count: d), gv = [Double](repeating: 0, count: d)
            for i in 0..<Nq {
                let p = P[i * Nk + j], dS = p * (dP(i, j) - D[i])
                for c in 0..<d { gk[c] += scale * dS * qh[i * d + c]; gv[c] += p * gh[i * d + c] }
            }
            dk += gk; dv += gv
        }
        return (rows.map { lse[$0] }, rows.flatMap { i in (0..<d).map { out[i * d + $0] } }, dq, dk, dv)
    }

    static let oddShapes = [Shape(B: 2, Nq: 37, Nk: 5, H: 1, d: 8), Shape(B: 2, Nq: 37, Nk: 37, H: 3, d: 5),
                            Shape(B: 2, Nq: 37, Nk: 5, H: 3, d: 5), Shape(B: 2, Nq: 37, Nk: 37, H: 1, d: 8),
                            Shape(B: 1, Nq: 19, Nk: 77, H: 2, d: 8), Shape(B: 1, Nq: 70, Nk: 130, H: 2, d: 19)]

    /// The kernels this CPU runs: OpenBLAS always, CKernels/attention_avx512.c where there is AVX-512F.
    static let kernels: [AttentionKernel] = AttentionKernel.avx512Available ? [.blas, .avx512] : [.blas]

    // MARK: - Tests

    func testFastExp() {
        var maxRel = 0.0
        var x: Float = -87.3
        while x < 88 {
            let ref = Foundation.exp(Double(x))
            maxRel = max(maxRel, abs(Double(fastExp(x)) - ref) / ref)
            x += 0.000_731
        }
        XCTAssertLessThan(maxRel, 1.2e-7, "fastExp max relative error")
        for x: Float in [-.infinity, -1000, -88, -87.5] { XCTAssertEqual(fastExp(x), 0, "exp(\(x))") }
        XCTAssertEqual(fastExp(0), 1)
        XCTAssertEqual(fastExp(88.5), fastExp(88))
        XCTAssertEqual(Double(fastExp(1)), Foundation.exp(1.0), accuracy: 3e-7)
    }

    /// The AVX-512F softmax row kernels (CKernels/softmax_rows.c) against the Swift ones (AVX2): row max exact, exp
    /// and sum within rounding, −∞ gives 0, NaN stays NaN. Skipped on CPUs without AVX-512F (then only Swift runs).
    func testAVX512RowKernelsMatchSwift() throws {
        guard hg_cpu_has_avx512f() != 0 else { throw XCTSkip("no AVX-512F on this CPU") }
        XCTAssertTrue(AttentionKernel.avx512Available)
        for n in [1, 7, 15, 16, 17, 31, 32, 33, 77, 1000, 1024] {
            var x = Self.random(n, seed: UInt64(60 + n)).map { $0 * 30 }
            if n > 3 { x[2] = -.infinity }
            var y = x
            let mx = x.withUnsafeBufferPointer { hg_row_max_avx512($0.baseAddress!, Int32(n)) }
            XCTAssertEqual(mx, x.withUnsafeBufferPointer { rowMax($0.baseAddress!, n) }, "max n \(n)")
            let sum = x.withUnsafeMutableBufferPointer { hg_row_exp_sum_avx512($0.baseAddress!, Int32(n), mx) }
            let ref = y.withUnsafeMutableBufferPointer { p -> Float in
                expShiftedInPlace(p.baseAddress!, n, shift: mx)
                return rowSum(p.baseAddress!, n)
            }
            XCTAssertEqual(Double(sum), Double(ref), accuracy: 1e-6 * Double(ref), "sum n \(n)")
            for j in 0..<n { XCTAssertEqual(Double(x[j]), Double(y[j]), accuracy: 2.4e-7 * Double(y[j]), "exp n \(n) j \(j)") }
            if n > 3 { XCTAssertEqual(x[2], 0, "exp(−∞) n \(n)") }
        }
        var z: [Float] = [0, .nan, -1, 2] + [Float](repeating: 1, count: 20)
        let s = z.withUnsafeMutableBufferPointer { hg_row_exp_sum_avx512($0.baseAddress!, Int32($0.count), 0) }
        XCTAssertTrue(z[1].isNaN && s.isNaN, "NaN must propagate")
    }

    /// The AVX-512F kernel against the OpenBLAS one (the portable path) on the same inputs, forward and backward,
    /// on the odd shapes and on head sizes of the U-Nets (8, 40, 64). Skipped, naming the feature, where the CPU
    /// lacks AVX-512F (the tests above then run OpenBLAS only).
    func testAVX512KernelMatchesBLASOnSameInputs() throws {
        guard AttentionKernel.avx512Available else { throw XCTSkip("no AVX-512F on this CPU") }
        let shapes = Self.oddShapes + [Shape(B: 1, Nq: 64, Nk: 64, H: 2, d: 40), Shape(B: 1, Nq: 48, Nk: 77, H: 2, d: 64),
                                       Shape(B: 2, Nq: 256, Nk: 256, H: 1, d: 8)]
        for (n, s) in shapes.enumerated() {
            let (q, k, v) = Self.inputs(s, seed: UInt64(70 + n))
            let dout = Self.random(q.count, seed: UInt64(80 + n))
            var results: [[Float]] = []
            for kernel in [AttentionKernel.blas, .avx512] {
                let plan = AttentionPlan(B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, threads: 2, kernel: kernel)
                XCTAssertEqual(plan.kernel, kernel, "\(s): the plan must run the kernel asked for")
                let (out, lse) = Self.forward(s, q, k, v, plan: plan)
                var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count)
                var dv = [Float](repeating: 0, count: v.count)
                Self.backward(s, q, k, v, dout, plan: plan, dq: &dq, dk: &dk, dv: &dv)
                results.append(out + lse + dq + dk + dv)
            }
            let scale = results[0].reduce(0) { max($0, abs($1)) }
            assertClose(results[1], results[0], rtol: 2e-5, atol: 2e-6 * scale, label: "avx512 vs blas \(s)")
        }
    }

    func testForwardMatchesNaive() {
        for (n, s) in Self.oddShapes.enumerated() {
            let (q, k, v) = Self.inputs(s, seed: UInt64(10 + n))
            let ref = Self.naiveForward(s, q, k, v)
            for kernel in Self.kernels {
            var first: [Float]?
            // Block heights that cut Nq unevenly (8: 37 = 4·8 + 5), a single block, and 1 or 2 threads.
            for (rows, threads) in [(8, 1), (8, 2), (16, 2), (nil, 1), (1, 2)] as [(Int?, Int)] {
                let plan = AttentionPlan(B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, threads: threads, rows: rows,
                                         kernel: kernel)
                let (out, lse) = Self.forward(s, q, k, v, plan: plan)
                let label = "\(kernel) \(s) rows \(rows.map(String.init) ?? "auto") threads \(threads)"
                assertClose(out.map(Double.init), ref.out, rtol: 2e-5, atol: 2e-6, label: "out \(label)")
                assertClose(lse.map(Double.init), ref.lse, rtol: 2e-6, atol: 2e-6, label: "lse \(label)")
                // Every row is computed the same way whatever the blocking and threading.
                if rows == 8 { if let f = first { XCTAssertEqual(out, f, label) } else { first = out } }
            }
            }
        }
    }

    func testBackwardMatchesNaive() {
        for (n, s) in Self.oddShapes.enumerated() {
            let (q, k, v) = Self.inputs(s, seed: UInt64(20 + n))
            let dout = Self.random(q.count, seed: UInt64(30 + n))
            let ref = Self.naiveBackward(s, q, k, v, dout)
            for kernel in Self.kernels {
            for (rows, threads) in [(8, 1), (8, 2), (nil, 2), (1, 1)] as [(Int?, Int)] {
                let plan = AttentionPlan(B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, threads: threads, rows: rows,
                                         kernel: kernel)
                var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count)
                var dv = [Float](repeating: 0, count: v.count)
                Self.backward(s, q, k, v, dout, plan: plan, dq: &dq, dk: &dk, dv: &dv)
                let label = "\(kernel) \(s) rows \(rows.map(String.init) ?? "auto") threads \(threads)"
                assertClose(dq.map(Double.init), ref.dq, rtol: 1e-4, atol: 1e-5, label: "dq \(label)")
                assertClose(dk.map(Double.init), ref.dk, rtol: 1e-4, atol: 1e-5, label: "dk \(label)")
                assertClose(dv.map(Double.init), ref.dv, rtol: 1e-4, atol: 1e-5, label: "dv \(label)")
            }
            }
        }
    }

    /// Central differences of L = Σ out·R through the Float forward, for every element of q, k and v.
    func testBackwardMatchesFiniteDifferences() { for kernel in Self.kernels { finiteDifferences(kernel) } }

    private func finiteDifferences(_ kernel: AttentionKernel) {
        let s = Shape(B: 2, Nq: 7, Nk: 5, H: 2, d: 3)
        var (q, k, v) = Self.inputs(s, seed: 40)
        let R = Self.random(q.count, seed: 41)
        let plan = AttentionPlan(B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, threads: 2, rows: 3, kernel: kernel)
        var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count)
        var dv = [Float](repeating: 0, count: v.count)
        Self.backward(s, q, k, v, R, plan: plan, dq: &dq, dk: &dk, dv: &dv)
        func loss() -> Double {
            let out = Self.forward(s, q, k, v, plan: plan).out
            return zip(out, R).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        }
        let eps: Float = 1e-2
        // Nudges element i of q (0), k (1) or v (2); loss() reads the arrays between the assignments.
        func set(_ which: Int, _ i: Int, _ x: Float) {
            switch which { case 0: q[i] = x; case 1: k[i] = x; default: v[i] = x }
        }
        func numeric(_ which: Int, _ i: Int) -> Double {
            let x0 = [q, k, v][which][i]
            set(which, i, x0 + eps); let lp = loss()
            set(which, i, x0 - eps); let lm = loss()
            set(which, i, x0)
            return (lp - lm) / (2 * Double(eps))
        }
        assertClose(dq.map(Double.init), (0..<q.count).map { numeric(0, $0) }, rtol: 2e-3, atol: 2e-4,
                    label: "dq vs finite differences")
        assertClose(dk.map(Double.init), (0..<k.count).map { numeric(1, $0) }, rtol: 2e-3, atol: 2e-4,
                    label: "dk vs finite differences")
        assertClose(dv.map(Double.init), (0..<v.count).map { numeric(2, $0) }, rtol: 2e-3, atol: 2e-4,
                    label: "dv vs finite differences")
    }

    /// Backward adds into the gradients: a second call adds the same again, on top of what was there.
    func testBackwardAccumulates() { for kernel in Self.kernels { accumulates(kernel) } }

    private func accumulates(_ kernel: AttentionKernel) {
        let s = Shape(B: 2, Nq: 37, Nk: 37, H: 3, d: 5)
        let (q, k, v) = Self.inputs(s, seed: 50)
        let dout = Self.random(q.count, seed: 51)
        let plan = AttentionPlan(B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, threads: 2, rows: 8, kernel: kernel)
        var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count)
        var dv = [Float](repeating: 0, count: v.count)
        Self.backward(s, q, k, v, dout, plan: plan, dq: &dq, dk: &dk, dv: &dv)
        let once = (dq, dk, dv)
        Self.backward(s, q, k, v, dout, plan: plan, dq: &dq, dk: &dk, dv: &dv)
        assertClose(dq, once.0.map { 2 * $0 }, rtol: 1e-6, atol: 1e-7, label: "dq twice")
        assertClose(dk, once.1.map { 2 * $0 }, rtol: 1e-6, atol: 1e-7, label: "dk twice")
        assertClose(dv, once.2.map { 2 * $0 }, rtol: 1e-6, atol: 1e-7, label: "dv twice")
        var dq3 = [Float](repeating: 3, count: q.count), dk3 = [Float](repeating: -1, count: k.count)
        var dv3 = [Float](repeating: 0.5, count: v.count)
        Self.backward(s, q, k, v, dout, plan: plan, dq: &dq3, dk: &dk3, dv: &dv3)
        assertClose(dq3, once.0.map { 3 + $0 }, rtol: 1e-6, atol: 1e-6, label: "dq onto 3")
        assertClose(dk3, once.1.map { -1 + $0 }, rtol: 1e-6, atol: 1e-6, label: "dk onto −1")
        assertClose(dv3, once.2.map { 0.5 + $0 }, rtol: 1e-6, atol: 1e-6, label: "dv onto 0.5")
    }

    /// Causal self-attention (CLIP's text encoder): query i sees keys j ≤ i. Forward and backward against a naive
    /// Double reference with the mask, with block edges inside Nq (rows 3, 8) and 1 or 2 threads.
    func testCausalMatchesNaive() { for kernel in Self.kernels { causal(kernel) } }

    private func causal(_ kernel: AttentionKernel) {
        let s = Shape(B: 2, Nq: 19, Nk: 19, H: 3, d: 5)
        let (q, k, v) = Self.inputs(s, seed: 60)
        let dout = Self.random(q.count, seed: 61)
        let scale = 1 / Double(s.d).squareRoot(), C = s.C
        var refOut = [Double](repeating: 0, count: q.count), refLse = [Double](repeating: 0, count: s.B * s.H * s.Nq)
        var refDq = [Double](repeating: 0, count: q.count), refDk = [Double](repeating: 0, count: k.count)
        var refDv = [Double](repeating: 0, count: v.count)
        for b in 0..<s.B {
            for h in 0..<s.H {
                let at = { (x: [Float], t: Int, c: Int) in Double(x[(b * s.Nq + t) * C + h * s.d + c]) }
                for i in 0..<s.Nq {
                    let keys = 0...i
                    let sc = keys.map { j in scale * (0..<s.d).reduce(0.0) { $0 + at(q, i, $1) * at(k, j, $1) } }
                    let m = sc.max()!, e = sc.map { Foundation.exp($0 - m) }, sum = e.reduce(0, +)
                    let P = e.map { $0 / sum }
                    refLse[(b * s.H + h) * s.Nq + i] = m + Foundation.log(sum)
                    var o = [Double](repeating: 0, count: s.d)
                    for j in keys { for c in 0..<s.d { o[c] += P[j] * at(v, j, c) } }
                    for c in 0..<s.d { refOut[(b * s.Nq + i) * C + h * s.d + c] = o[c] }
                    let dP = keys.map { j in (0..<s.d).reduce(0.0) { $0 + at(dout, i, $1) * at(v, j, $1) } }
                    let D = keys.reduce(0.0) { $0 + P[$1] * dP[$1] }
                    for j in keys {
                        let dS = P[j] * (dP[j] - D)
                        for c in 0..<s.d {
                            refDq[(b * s.Nq + i) * C + h * s.d + c] += scale * dS * at(k, j, c)
                            refDk[(b * s.Nk + j) * C + h * s.d + c] += scale * dS * at(q, i, c)
                            refDv[(b * s.Nk + j) * C + h * s.d + c] += P[j] * at(dout, i, c)
                        }
                    }
                }
            }
        }
        for (rows, threads) in [(3, 1), (8, 2), (nil, 2)] as [(Int?, Int)] {
            let plan = AttentionPlan(B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, threads: threads, rows: rows,
                                     kernel: kernel)
            var out = [Float](repeating: .nan, count: q.count), lse = [Float](repeating: .nan, count: refLse.count)
            var ws = [Float](repeating: .nan, count: plan.workspaceSize)
            attentionForward(out: &out, lse: &lse, q: q, k: k, v: v, B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H,
                             headDim: s.d, workspace: &ws, plan: plan, causal: true)
            let label = "\(kernel) causal rows \(rows.map(String.init) ?? "auto") threads \(threads)"
            assertClose(out.map(Double.init), refOut, rtol: 2e-5, atol: 2e-6, label: "out \(label)")
            assertClose(lse.map(Double.init), refLse, rtol: 2e-6, atol: 2e-6, label: "lse \(label)")
            var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count)
            var dv = [Float](repeating: 0, count: v.count)
            attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dout, q: q, k: k, v: v, out: out, lse: lse,
                              B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, workspace: &ws, plan: plan, causal: true)
            assertClose(dq.map(Double.init), refDq, rtol: 1e-4, atol: 1e-5, label: "dq \(label)")
            assertClose(dk.map(Double.init), refDk, rtol: 1e-4, atol: 1e-5, label: "dk \(label)")
            assertClose(dv.map(Double.init), refDv, rtol: 1e-4, atol: 1e-5, label: "dv \(label)")
        }
        // The first query attends to itself only: its output is v of token 0.
        var out = [Float](repeating: 0, count: q.count), lse = [Float](repeating: 0, count: refLse.count)
        var ws = [Float](repeating: 0, count: attentionWorkspaceSize(B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d))
        attentionForward(out: &out, lse: &lse, q: q, k: k, v: v, B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d,
                         workspace: &ws, causal: true)
        XCTAssertEqual(Array(out[0..<C]), Array(v[0..<C]))
    }

    func testWorkspaceDoesNotGrowWithQueries() {
        for kernel in Self.kernels + (AttentionKernel.avx512bf16Available ? [.avx512bf16] : []) {
            let size = { (B: Int, Nq: Int, Nk: Int, H: Int, threads: Int) in
                AttentionPlan(B: B, Nq: Nq, Nk: Nk, heads: H, headDim: 40, threads: threads, kernel: kernel).workspaceSize
            }
            XCTAssertEqual(size(1, 4096, 4096, 8, 2), size(4, 65536, 4096, 8, 2), "\(kernel)")
            switch kernel {
            case .blas:
                XCTAssertEqual(size(1, 4096, 4096, 8, 2), 2 * (2 * 256 * (4096 + 16) + 256), "256 rows of 4112 floats, twice, per worker")
                XCTAssertEqual(size(1, 1, 77, 1, 8), 2 * 80 + 1, "one query row, one worker")
                XCTAssertEqual(size(2, 4096, 77, 8, 2), 2 * (2 * 512 * 80 + 512), "cross-attention: 512-row blocks")
            case .avx512:
                // Kt, Vt, dKt, dVt (40, ld) and P, dS (32, ld) with ld = 4112 or 80, 32 floats of D, 16 to align.
                XCTAssertEqual(size(1, 4096, 4096, 8, 2), 2 * ((4 * 40 + 64) * 4112 + 48))
                XCTAssertEqual(size(1, 1, 77, 1, 8), (4 * 40 + 64) * 80 + 48, "one query row, one worker")
            case .avx512bf16:
                // Kt2, Vt2 (20, ld), K keys-paired (40, 2064), dKt, dVt (40, ld), P, dS (32, ld), P2, dS2 (16, ld),
                // dS keys-paired (32, 2064), Q and dO words (32, 20), their row pairs (40, 16), D and 256 floats to
                // align the 15 buffers; ld = 4112.
                XCTAssertEqual(size(1, 4096, 4096, 8, 2),
                               2 * ((2 * 20 + 2 * 40 + 2 * 32 + 2 * 16) * 4112 + (40 + 32) * 2064 + 2 * 32 * 20 + 2 * 40 * 16 + 32 + 256))
            }
        }
    }

    /// SD-sized self-attention (Nq = Nk = 1024, 8 heads, d = 40) through the public API with its default plan;
    /// out, lse and dq checked on a few query rows, dk and dv on a few key rows, of the first and last head.
    func testLargeSelfAttentionRows() {
        let s = Shape(B: 1, Nq: 1024, Nk: 1024, H: 8, d: 40)
        let (q, k, v) = Self.inputs(s, seed: 60)
        let dout = Self.random(q.count, seed: 61)
        var out = [Float](repeating: 0, count: q.count), lse = [Float](repeating: 0, count: s.H * s.Nq)
        var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count)
        var dv = [Float](repeating: 0, count: v.count)
        var ws = [Float](repeating: .nan, count: attentionWorkspaceSize(B: 1, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d))
        attentionForward(out: &out, lse: &lse, q: q, k: k, v: v, B: 1, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d,
                         workspace: &ws)
        attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dout, q: q, k: k, v: v, out: out, lse: lse,
                          B: 1, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, workspace: &ws)
        let checkRows = [0, 1, 255, 256, 700, 1023]
        for h in [0, s.H - 1] {
            let ref = Self.naiveHeadRows(s, q, k, v, dout, h: h, rows: checkRows)
            let col = { (t: Int, c: Int) in t * s.C + h * s.d + c }
            let pick = { (x: [Float]) in checkRows.flatMap { t in (0..<s.d).map { Double(x[col(t, $0)]) } } }
            let gotL = checkRows.map { Double(lse[h * s.Nq + $0]) }, refL = ref.lse
            let gotOut = pick(out), refOut = ref.out, gotDq = pick(dq), refDq = ref.dq
            let gotDk = pick(dk), refDk = ref.dk, gotDv = pick(dv), refDv = ref.dv
            assertClose(gotL, refL, rtol: 2e-6, atol: 2e-6, label: "lse head \(h)")
            assertClose(gotOut, refOut, rtol: 1e-4, atol: 1e-5, label: "out head \(h)")
            assertClose(gotDq, refDq, rtol: 1e-3, atol: 1e-5, label: "dq head \(h)")
            assertClose(gotDk, refDk, rtol: 1e-3, atol: 1e-5, label: "dk head \(h)")
            assertClose(gotDv, refDv, rtol: 1e-3, atol: 1e-5, label: "dv head \(h)")
        }
    }
}

// MARK: - The bf16 build (attention_avx512bf16.c)

extension AttentionTests {
    /// Relative L2 error of x against ref.
    static func relativeL2(_ x: [Float], _ ref: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for (a, b) in zip(x, ref) { num += (Double(a) - Double(b)) * (Double(a) - Double(b)); den += Double(b) * Double(b) }
        return (num / max(den, 1e-300)).squareRoot()
    }

    /// hg_attention_bf16_ref over every (batch, head): out and lse of the forward; dq, dk, dv of the backward given
    /// the kernel's own out and lse (so that the backward is compared on its own).
    static func bf16Reference(_ s: Shape, _ q: [Float], _ k: [Float], _ v: [Float], _ dout: [Float], out: [Float],
                              lse: [Float], causal: Bool)
        -> (out: [Float], lse: [Float], dq: [Float], dk: [Float], dv: [Float]) {
        let q = Buffer(q), k = Buffer(k), v = Buffer(v), g = Buffer(dout), kOut = Buffer(out), kLse = Buffer(lse)
        let rOut = Buffer(zeros: q.count), rLse = Buffer(zeros: lse.count)
        let dq = Buffer(zeros: q.count), dk = Buffer(zeros: k.count), dv = Buffer(zeros: v.count)
        let scale = 1 / Float(s.d).squareRoot(), C = Int32(s.C), Nq = Int32(s.Nq), Nk = Int32(s.Nk), d = Int32(s.d)
        for b in 0..<s.B {
            for h in 0..<s.H {
                let qo = b * s.Nq * s.C + h * s.d, kv = b * s.Nk * s.C + h * s.d, lo = (b * s.H + h) * s.Nq
                hg_attention_bf16_ref(q.ptr + qo, k.ptr + kv, v.ptr + kv, nil, C, Nq, Nk, d, scale, causal ? 1 : 0,
                                      rOut.ptr + qo, rLse.ptr + lo, nil, nil, nil)
                hg_attention_bf16_ref(q.ptr + qo, k.ptr + kv, v.ptr + kv, g.ptr + qo, C, Nq, Nk, d, scale, causal ? 1 : 0,
                                      kOut.ptr + qo, kLse.ptr + lo, dq.ptr + qo, dk.ptr + kv, dv.ptr + kv)
            }
        }
        return (rOut.array, rLse.array, dq.array, dk.array, dv.array)
    }

    /// The bf16 kernels against their scalar reference (the same roundings, float64 sums) and against the exact
    /// (fp32) attention, forward and backward, causal or not, on odd shapes, on both P·V paths (V in place for short
    /// key rows, key pairs for long ones: 1030 keys) and on SD1.5's head sizes (40, 80, 160). Where a kernel and its
    /// reference differ, it is by fp32 sum order and by the exp of P rounding to a neighbouring bf16 now and then.
    /// Skipped, naming the feature, where the CPU lacks AVX512-BF16.
    func testAVX512BF16KernelMatchesItsReference() throws {
        guard AttentionKernel.avx512bf16Available else { throw XCTSkip("no AVX512-BF16 on this CPU") }
        let shapes = Self.oddShapes + [Shape(B: 1, Nq: 64, Nk: 64, H: 2, d: 40), Shape(B: 1, Nq: 48, Nk: 77, H: 2, d: 64),
                                       Shape(B: 1, Nq: 35, Nk: 1030, H: 1, d: 40), Shape(B: 1, Nq: 33, Nk: 1030, H: 1, d: 7),
                                       Shape(B: 1, Nq: 64, Nk: 64, H: 1, d: 80), Shape(B: 1, Nq: 16, Nk: 16, H: 2, d: 160)]
        var worst = (ref: 0.0, exact: 1.0)
        for (n, s) in shapes.enumerated() {
            for causal in s.Nq == s.Nk ? [false, true] : [false] {
                let (q, k, v) = Self.inputs(s, seed: UInt64(90 + n))
                let dout = Self.random(q.count, seed: UInt64(110 + n))
                var results: [[[Float]]] = []
                for kernel in [AttentionKernel.avx512bf16, .blas] {
                    let plan = AttentionPlan(B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, threads: 2, kernel: kernel)
                    XCTAssertEqual(plan.kernel, kernel, "\(s): the plan must run the kernel asked for")
                    var out = [Float](repeating: .nan, count: q.count), lse = [Float](repeating: .nan, count: s.B * s.H * s.Nq)
                    var ws = [Float](repeating: .nan, count: plan.workspaceSize)
                    attentionForward(out: &out, lse: &lse, q: q, k: k, v: v, B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H,
                                     headDim: s.d, workspace: &ws, plan: plan, causal: causal)
                    var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count)
                    var dv = [Float](repeating: 0, count: v.count)
                    attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dout, q: q, k: k, v: v, out: out, lse: lse,
                                      B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, workspace: &ws, plan: plan,
                                      causal: causal)
                    results.append([out, lse, dq, dk, dv])
                }
                let r = Self.bf16Reference(s, q, k, v, dout, out: results[0][0], lse: results[0][1], causal: causal)
                for (i, name) in ["out", "lse", "dq", "dk", "dv"].enumerated() {
                    let vsRef = Self.relativeL2(results[0][i], [r.out, r.lse, r.dq, r.dk, r.dv][i])
                    let vsExact = Self.relativeL2(results[0][i], results[1][i])
                    let label = "\(name) \(s)\(causal ? " causal" : "")"
                    XCTAssertLessThan(vsRef, 5e-5, "\(label) vs its reference")
                    XCTAssertLessThan(vsExact, 2e-2, "\(label) vs fp32")
                    worst.ref = max(worst.ref, vsRef)
                    if name != "lse" { worst.exact = min(worst.exact, vsExact) }
                }
            }
        }
        // The operands are rounded: the kernel is not the fp32 attention.
        XCTAssertGreaterThan(worst.exact, 1e-4, "bf16 attention must differ from fp32 by bf16 rounding")
        print("bf16 attention: worst relative error against its reference \(worst.ref), smallest against fp32 \(worst.exact)")
    }

    /// The bf16 kernels give the same bits whatever the query blocks and threads, and their backward adds into the
    /// gradients.
    func testAVX512BF16KernelIsBlockingInvariantAndAccumulates() throws {
        guard AttentionKernel.avx512bf16Available else { throw XCTSkip("no AVX512-BF16 on this CPU") }
        let s = Shape(B: 2, Nq: 37, Nk: 37, H: 3, d: 40)
        let (q, k, v) = Self.inputs(s, seed: 130)
        let dout = Self.random(q.count, seed: 131)
        var first: [Float]?
        for (rows, threads) in [(8, 1), (16, 2), (nil, 2), (1, 1)] as [(Int?, Int)] {
            let plan = AttentionPlan(B: s.B, Nq: s.Nq, Nk: s.Nk, heads: s.H, headDim: s.d, threads: threads, rows: rows,
                                     kernel: .avx512bf16)
            var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count)
            var dv = [Float](repeating: 0, count: v.count)
            Self.backward(s, q, k, v, dout, plan: plan, dq: &dq, dk: &dk, dv: &dv)
            let all = Self.forward(s, q, k, v, plan: plan).out + dq + dk + dv
            if let f = first { XCTAssertEqual(all, f, "rows \(rows.map(String.init) ?? "auto") threads \(threads)") } else { first = all }
            let once = (dq, dk, dv)
            Self.backward(s, q, k, v, dout, plan: plan, dq: &dq, dk: &dk, dv: &dv)
            assertClose(dq, once.0.map { 2 * $0 }, rtol: 1e-6, atol: 1e-7, label: "dq twice")
            assertClose(dk, once.1.map { 2 * $0 }, rtol: 1e-6, atol: 1e-7, label: "dk twice")
            assertClose(dv, once.2.map { 2 * $0 }, rtol: 1e-6, atol: 1e-7, label: "dv twice")
        }
    }
}
