// Win rates, ties, the paired bootstrap, HSV, the circular hue mean, colour shifts and latent statistics on hand-made
// cases whose answers are known.
import IO
import TestSupport
import XCTest
@testable import Evaluation

final class StatisticsTests: XCTestCase {
    func testWinRateCountsTiesAsHalf() {
        // Prompt 0: win, tie, loss; prompt 1: win, win, tie (within the tolerance 0.01).
        let a: [[Double]] = [[0.9, 0.5, 0.1], [0.8, 0.7, 0.305]]
        let b: [[Double]] = [[0.2, 0.5, 0.4], [0.1, 0.6, 0.3]]
        let exact = PairedComparison.compare(a: a, baseline: b, resamples: 100)
        XCTAssertEqual([exact.wins, exact.ties, exact.losses, exact.pairs], [4, 1, 1, 6])
        XCTAssertEqual(exact.winRate, 4.5 / 6, accuracy: 1e-15)
        // Per prompt (the paper's count): prompt 0 means 0.5 vs 0.3667 (win), prompt 1 0.6017 vs 0.3333 (win).
        XCTAssertEqual(exact.promptWinRate, 1)
        let split = PairedComparison.compare(a: [[1, 0], [0.5]], baseline: [[0, 1], [0.7]], resamples: 10)
        XCTAssertEqual(split.promptWinRate, 0.25)     // a tie (½) and a loss
        let tolerant = PairedComparison.compare(a: a, baseline: b, tieTolerance: 0.01, resamples: 100)
        XCTAssertEqual([tolerant.wins, tolerant.ties, tolerant.losses], [3, 2, 1])
        XCTAssertEqual(tolerant.winRate, 4 / 6, accuracy: 1e-15)
        XCTAssertEqual(exact.meanA, (0.9 + 0.5 + 0.1 + 0.8 + 0.7 + 0.305) / 6, accuracy: 1e-15)
        XCTAssertEqual(exact.meanBaseline, (0.2 + 0.5 + 0.4 + 0.1 + 0.6 + 0.3) / 6, accuracy: 1e-15)
        XCTAssertEqual(PairedComparison.outcome(1, 1), 0.5)
        XCTAssertEqual(PairedComparison.outcome(1, 2), 0)
        XCTAssertEqual(PairedComparison.outcome(2, 1), 1)
    }

    func testAllTiesGiveOneHalfAndADegenerateInterval() {
        let s: [[Double]] = [[0.3, 0.4], [0.1, 0.2], [0.5, 0.5]]
        let w = PairedComparison.compare(a: s, baseline: s)
        XCTAssertEqual(w.winRate, 0.5)
        XCTAssertEqual(w.ciLow, 0.5)
        XCTAssertEqual(w.ciHigh, 0.5)
        XCTAssertEqual(w.ties, 6)
    }

    func testQuantileInterpolatesAsNumpy() {
        // numpy.quantile([1, 2, 3, 4], [0, 0.25, 0.5, 0.975, 1]) = [1, 1.75, 2.5, 3.925, 4]
        let v: [Double] = [1, 2, 3, 4]
        for (q, e) in [(0.0, 1.0), (0.25, 1.75), (0.5, 2.5), (0.975, 3.925), (1.0, 4.0)] {
            XCTAssertEqual(PairedComparison.quantile(sorted: v, q), e, accuracy: 1e-12, "q \(q)")
        }
    }

    /// Three prompts with win rates 0, ½ and 1 (one pair each, the middle one a tie): the 27 equally likely ordered
    /// draws give resampled win rates k/6, k = 0…6, with probabilities 1, 3, 6, 7, 6, 3, 1 (/27). The Monte Carlo
    /// bootstrap's quantiles must land where the exact distribution puts them, and its share of each value match.
    func testBootstrapMatchesTheExactResamplingDistribution() {
        let perPrompt: [(points: Double, pairs: Int)] = [(0, 1), (0.5, 1), (1, 1)]
        // Exact: enumerate all draws.
        var exact: [Double] = []
        for i in 0..<3 { for j in 0..<3 { for k in 0..<3 {
            exact.append((perPrompt[i].points + perPrompt[j].points + perPrompt[k].points) / 3)
        } } }
        exact.sort()
        XCTAssertEqual(exact.filter { $0 == 0 }.count, 1)
        XCTAssertEqual(exact.filter { abs($0 - 0.5) < 1e-12 }.count, 7)
        // P(rate = 0) = 1/27 ≈ 0.037 > 0.025, so the 2.5 % quantile is 0 and, symmetrically, the 97.5 % quantile is 1.
        let (low, high) = PairedComparison.bootstrapInterval(perPrompt: perPrompt, resamples: 20_000, seed: 3)
        XCTAssertEqual(low, 0, accuracy: 1e-12)
        XCTAssertEqual(high, 1, accuracy: 1e-12)
        // An 80 % interval: quantiles 0.1 and 0.9 of the exact distribution are 1/6 and 5/6.
        let (l80, h80) = PairedComparison.bootstrapInterval(perPrompt: perPrompt, resamples: 20_000, seed: 3, level: 0.8)
        XCTAssertEqual(l80, 1.0 / 6, accuracy: 1e-12)
        XCTAssertEqual(h80, 5.0 / 6, accuracy: 1e-12)
        // Same seed, same interval; prompts with more pairs weigh more (Σ points / Σ pairs).
        XCTAssertTrue(PairedComparison.bootstrapInterval(perPrompt: perPrompt, resamples: 500, seed: 9)
                      == PairedComparison.bootstrapInterval(perPrompt: perPrompt, resamples: 500, seed: 9))
        let one = PairedComparison.bootstrapInterval(perPrompt: [(3, 4)], resamples: 100)
        XCTAssertEqual(one.low, 0.75); XCTAssertEqual(one.high, 0.75)
    }

    func testHSVConversionMatchesColorsys() {
        // colorsys.rgb_to_hsv values.
        let cases: [((Double, Double, Double), (Double, Double, Double))] = [
            ((1, 0, 0), (0, 1, 1)), ((0, 1, 0), (1.0 / 3, 1, 1)), ((0, 0, 1), (2.0 / 3, 1, 1)),
            ((1, 1, 0), (1.0 / 6, 1, 1)), ((1, 0, 1), (5.0 / 6, 1, 1)), ((0, 0, 0), (0, 0, 0)), ((0.5, 0.5, 0.5), (0, 0, 0.5)),
            ((0.2, 0.4, 0.6), (0.5833333333333334, 0.6666666666666666, 0.6)),
            ((0.9, 0.1, 0.3), (0.9583333333333334, 0.888888888888889, 0.9)),   // hue just below 1 (wraps from negative)
            ((0.2, 0.6, 0.4), (0.4166666666666667, 0.6666666666666666, 0.6)),   // green maximal
            ((0.3, 0.5, 0.9), (0.6111111111111112, 0.6666666666666667, 0.9)),   // blue maximal
            ((0.7, 0.9, 0.1), (0.20833333333333334, 0.888888888888889, 0.9)),
        ]
        for ((r, g, b), (h, s, v)) in cases {
            let x = HSV.fromRGB(r, g, b)
            XCTAssertEqual(x.h, h, accuracy: 1e-12, "h of \(r),\(g),\(b)")
            XCTAssertEqual(x.s, s, accuracy: 1e-12, "s of \(r),\(g),\(b)")
            XCTAssertEqual(x.v, v, accuracy: 1e-12, "v of \(r),\(g),\(b)")
        }
    }

    private func image(_ rgb: [(UInt8, UInt8, UInt8)]) throws -> ByteImage {
        try ByteImage(width: rgb.count, height: 1, channels: 3, pixels: rgb.flatMap { [$0.0, $0.1, $0.2] })
    }

    /// Two pixels of hue 0.95 and 0.05 (a red on each side of 0): the plain mean is 0.5 (cyan), the circular mean 0.
    func testCircularHueMean() throws {
        var c = ColorStatistics()
        // Red maximal: h = ((g − b)/(max − min))/6 wrapped into [0, 1): (255, 77, 0) → h, (255, 0, 77) → 1 − h.
        c.add(try image([(255, 77, 0), (255, 0, 77)]))
        let h = (77.0 / 255) / 6
        XCTAssertEqual(c.meanH, 0.5, accuracy: 1e-12)
        XCTAssertEqual(c.circularMeanH, 0, accuracy: 1e-12)
        XCTAssertEqual(c.hueConcentration, cos(2 * Double.pi * h), accuracy: 1e-12)
        // Hues 0.1 and 0.3 (greenish-yellow): both means 0.2.
        var d = ColorStatistics()
        d.add(try image([(255, 153, 0), (51, 255, 0)]))     // h = 0.6/6 = 0.1 and (2 − 0.2)/6 = 0.3 (153/255 = 0.6, 51/255 = 0.2)
        XCTAssertEqual(d.meanH, 0.2, accuracy: 1e-12)
        XCTAssertEqual(d.circularMeanH, 0.2, accuracy: 1e-12)
        // Opposite hues cancel: no mean direction.
        var e = ColorStatistics()
        e.add(try image([(255, 0, 0), (0, 255, 255)]))
        XCTAssertTrue(e.circularMeanH.isNaN || e.hueConcentration < 1e-12)
    }

    func testColorShiftPercentages() throws {
        var base = ColorStatistics(), a = ColorStatistics()
        // Baseline: v 0.5, s 0.5, hue 0.1 (255·0.5 = 127.5 is not a byte: use v = 0.4 → 102).
        base.add(try image([(102, 71, 51)]))          // max 102 r, min 51: s = 0.5, h = ((71−51)/51)/6
        a.add(try image([(153, 106, 76)]))            // brighter: v 0.6, s ≈ 0.503
        let hb = (20.0 / 51) / 6, ha = (30.0 / 77) / 6
        let shift = ColorShift(a: a, baseline: base)
        XCTAssertEqual(shift.v, 100 * (0.6 - 0.4) / 0.4, accuracy: 1e-9)
        XCTAssertEqual(shift.s, 100 * (77.0 / 153 - 0.5) / 0.5, accuracy: 1e-9)
        XCTAssertEqual(shift.hPlain, 100 * (ha - hb) / hb, accuracy: 1e-9)
        XCTAssertEqual(shift.h, 100 * (ha - hb) / hb, accuracy: 1e-9)   // no wrap: the circular and plain shifts agree
        XCTAssertEqual(shift.hDegrees, 360 * (ha - hb), accuracy: 1e-9)
        // Across 0: baseline hue 0.02, A hue 0.98 (a shortest turn of −0.04): circular −200 %, plain +4800 %.
        var b2 = ColorStatistics(), a2 = ColorStatistics()
        b2.add(try image([(255, 30, 0)])); a2.add(try image([(255, 0, 30)]))
        let h0 = (30.0 / 255) / 6
        let s2 = ColorShift(a: a2, baseline: b2)
        XCTAssertEqual(s2.h, 100 * (-2 * h0) / h0, accuracy: 1e-9)
        XCTAssertEqual(s2.hPlain, 100 * ((1 - h0) - h0) / h0, accuracy: 1e-9)
        XCTAssertEqual(s2.hDegrees, -720 * h0, accuracy: 1e-9)
        // The same images: no shift.
        let none = ColorShift(a: base, baseline: base)
        XCTAssertEqual([none.h, none.hPlain, none.s, none.v, none.hDegrees], [0, 0, 0, 0, 0])
    }

    func testLatentStatistics() {
        // Channel 0: 1, 2, 3, 4 (mean 2.5, population std √1.25); channel 1: constant 7.
        let latent: [Float] = [1, 2, 3, 4, 7, 7, 7, 7]
        let s = latent.withUnsafeBufferPointer { LatentChannelStats(latent: $0.baseAddress!, channels: 2, pixels: 4) }
        XCTAssertEqual(s.mean, [2.5, 7])
        XCTAssertEqual(s.std[0], 1.25.squareRoot(), accuracy: 1e-12)
        XCTAssertEqual(s.std[1], 0)
        var cmp = LatentComparison(channels: 2)
        cmp.add(a: LatentChannelStats(mean: [1, 5], std: [2, 2]), baseline: LatentChannelStats(mean: [0, 6], std: [1, 2]))
        cmp.add(a: LatentChannelStats(mean: [3, 5], std: [2, 2]), baseline: LatentChannelStats(mean: [0, 2], std: [2, 2]))
        XCTAssertEqual(cmp.images, 2)
        XCTAssertEqual(cmp.meanDistance, [2, 2])     // (1 + 3)/2, (1 + 3)/2
        XCTAssertEqual(cmp.stdDistance, [0.5, 0])
        XCTAssertEqual(cmp.meanA, [2, 5])
        XCTAssertEqual(cmp.meanBaseline, [0, 4])
    }
}
