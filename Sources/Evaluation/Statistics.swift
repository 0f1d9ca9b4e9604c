// The numbers of an evaluation, as functions of plain arrays so each is tested on hand-made cases:
//   - win rates of side A over the baseline per image pair (same prompt, same seed), ties counted as ½, with a paired
//     bootstrap percentile interval over prompts (the prompts are the sampled units; a prompt's pairs stay together);
//   - HSV colour statistics (paper Table 2) with the hue averaged both as the paper does (a plain mean of h in [0, 1))
//     and as a circular mean (hue is an angle: 0.99 and 0.01 are neighbours, their plain mean 0.5 is cyan);
//   - per-channel latent statistics (paper Fig. 5b): mean and standard deviation of each channel over H×W.
import IO
import Tensors

// MARK: - Win rates

/// One scorer's comparison of side A against the baseline.
public struct WinRate: Equatable, Sendable {
    /// (wins + ½·ties) / pairs.
    public var winRate: Double
    /// Paired bootstrap percentile interval over prompts (95 % by default).
    public var ciLow: Double, ciHigh: Double
    public var wins: Int, ties: Int, losses: Int
    public var pairs: Int
    /// Mean score of all images of each side.
    public var meanA: Double, meanBaseline: Double
    /// The paper's count: the share of prompts whose mean score is higher for A (ties ½, same tolerance); equal to
    /// `winRate` with one image per prompt.
    public var promptWinRate: Double
}

public enum PairedComparison {
    /// 1 when A scores higher, ½ when the scores differ by at most `tieTolerance`, 0 when the baseline scores higher.
    public static func outcome(_ a: Double, _ baseline: Double, tieTolerance: Double = 0) -> Double {
        abs(a - baseline) <= tieTolerance ? 0.5 : (a > baseline ? 1 : 0)
    }

    /// Scores per prompt (`a[p][j]` and `baseline[p][j]` are the same prompt and seed). Every prompt needs the same
    /// number of images on both sides, at least one.
    public static func compare(a: [[Double]], baseline: [[Double]], tieTolerance: Double = 0, resamples: Int = 10_000,
                               seed: UInt64 = 0, level: Double = 0.95) -> WinRate {
        precondition(a.count == baseline.count && !a.isEmpty, "PairedComparison: one score list per prompt on each side")
        var wins = 0, ties = 0, losses = 0
        var perPrompt: [(points: Double, pairs: Int)] = []
        var promptPoints = 0.0
        for (sa, sb) in zip(a, baseline) {
            precondition(sa.count == sb.count && !sa.isEmpty, "PairedComparison: a prompt's images must pair up")
            promptPoints += outcome(sa.reduce(0, +) / Double(sa.count), sb.reduce(0, +) / Double(sb.count), tieTolerance: tieTolerance)
            var points = 0.0
            for (x, y) in zip(sa, sb) {
                let o = outcome(x, y, tieTolerance: tieTolerance)
                points += o
                if o == 1 { wins += 1 } else if o == 0 { losses += 1 } else { ties += 1 }
            }
            perPrompt.append((points, sa.count))
        }
        let pairs = wins + ties + losses
        let (low, high) = bootstrapInterval(perPrompt: perPrompt, resamples: resamples, seed: seed, level: level)
        let all = { (s: [[Double]]) in s.joined().reduce(0, +) / Double(pairs) }
        return WinRate(winRate: (Double(wins) + 0.5 * Double(ties)) / Double(pairs), ciLow: low, ciHigh: high,
                       wins: wins, ties: ties, losses: losses, pairs: pairs, meanA: all(a), meanBaseline: all(baseline),
                       promptWinRate: promptPoints / Double(a.count))
    }

    /// Percentile bootstrap over prompts: each resample draws as many prompts as there are, with replacement, and its
    /// win rate is Σ points / Σ pairs of the drawn prompts; the interval is the (1 − level)/2 and (1 + level)/2
    /// quantiles of the resampled win rates. Draws come from a counter-based RNG: the same seed, the same interval.
    public static func bootstrapInterval(perPrompt: [(points: Double, pairs: Int)], resamples: Int = 10_000, seed: UInt64 = 0,
                                         level: Double = 0.95) -> (low: Double, high: Double) {
        precondition(!perPrompt.isEmpty && resamples >= 1 && level > 0 && level < 1)
        let rng = CounterRNG(seed: seed, stream: 0x626F_6F74)   // "boot"
        let n = perPrompt.count
        var rates = [Double](repeating: 0, count: resamples)
        for r in 0..<resamples {
            let draw = rng.substream(UInt64(r))
            var points = 0.0, pairs = 0
            for i in 0..<n {
                let p = perPrompt[draw.integer(UInt64(i), below: n)]
                points += p.points; pairs += p.pairs
            }
            rates[r] = points / Double(pairs)
        }
        rates.sort()
        return (quantile(sorted: rates, (1 - level) / 2), quantile(sorted: rates, (1 + level) / 2))
    }

    /// The q-quantile of sorted values, interpolating linearly between order statistics (numpy's default "linear").
    public static func quantile(sorted v: [Double], _ q: Double) -> Double {
        precondition(!v.isEmpty && q >= 0 && q <= 1)
        let pos = q * Double(v.count - 1)
        let i = Int(pos.rounded(.down)), frac = pos - Double(i)
        return i + 1 < v.count ? v[i] + (v[i + 1] - v[i]) * frac : v[i]
    }
}

// MARK: - HSV colour statistics

public enum HSV {
    /// RGB in [0, 1] to (h, s, v) in [0, 1) × [0, 1] × [0, 1], as Python's colorsys.rgb_to_hsv, matplotlib's and
    /// scikit-image's rgb2hsv: v = max, s = (max − min)/max (0 for black), h = the hexcone angle / 360° (0 for greys).
    @inline(__always)
    public static func fromRGB(_ r: Double, _ g: Double, _ b: Double) -> (h: Double, s: Double, v: Double) {
        let mx = max(r, g, b), mn = min(r, g, b), d = mx - mn
        guard mx > 0 else { return (0, 0, 0) }
        guard d > 0 else { return (0, 0, mx) }
        var h: Double
        if mx == r { h = (g - b) / d } else if mx == g { h = 2 + (b - r) / d } else { h = 4 + (r - g) / d }
        h /= 6
        if h < 0 { h += 1 }
        return (h, d / mx, mx)
    }
}

/// Running HSV sums over all pixels of a side's images (8-bit RGB).
public struct ColorStatistics: Equatable, Sendable {
    public private(set) var pixels = 0
    public private(set) var sumH = 0.0, sumS = 0.0, sumV = 0.0
    /// Σ cos(2πh), Σ sin(2πh): the hue as a unit vector, for the circular mean.
    public private(set) var sumCos = 0.0, sumSin = 0.0

    public init() {}

    /// Adds every pixel of an RGB image (3 channels; a 4th, alpha, is ignored).
    public mutating func add(_ image: ByteImage) {
        precondition(image.channels >= 3, "ColorStatistics: RGB images only")
        // Hue of the 256³ byte triples takes one table of 1536 steps per max−min; compute directly, it is cheap enough.
        let c = image.channels
        image.pixels.withUnsafeBufferPointer { p in
            var sh = 0.0, ss = 0.0, sv = 0.0, sc = 0.0, sn = 0.0
            for i in 0..<(image.width * image.height) {
                let (h, s, v) = HSV.fromRGB(Double(p[i * c]) / 255, Double(p[i * c + 1]) / 255, Double(p[i * c + 2]) / 255)
                sh += h; ss += s; sv += v
                let angle = 2 * Double.pi * h
                sc += _cos(angle); sn += _sin(angle)
            }
            sumH += sh; sumS += ss; sumV += sv; sumCos += sc; sumSin += sn
        }
        pixels += image.width * image.height
    }

    public mutating func add(_ other: ColorStatistics) {
        pixels += other.pixels; sumH += other.sumH; sumS += other.sumS; sumV += other.sumV
        sumCos += other.sumCos; sumSin += other.sumSin
    }

    public var meanH: Double { sumH / Double(pixels) }
    public var meanS: Double { sumS / Double(pixels) }
    public var meanV: Double { sumV / Double(pixels) }
    /// atan2(mean sin, mean cos) / 2π in [0, 1); NaN when the hues cancel out exactly (no mean direction).
    public var circularMeanH: Double {
        guard sumCos != 0 || sumSin != 0 else { return .nan }
        var h = _atan2(sumSin, sumCos) / (2 * Double.pi)
        if h < 0 { h += 1 }
        return h >= 1 ? 0 : h
    }
    /// Mean resultant length in [0, 1]: 1 when every hue is the same, near 0 when hues spread round the circle.
    public var hueConcentration: Double { (sumCos * sumCos + sumSin * sumSin).squareRoot() / Double(pixels) }
}

/// Percentage change of each side-A mean relative to the baseline's (paper Table 2 lists their magnitudes).
public struct ColorShift: Equatable, Sendable {
    /// Circular-mean hue: 100 · Δ / baseline's circular mean, Δ the signed shortest turn from the baseline's hue to A's.
    public var h: Double
    /// The paper's plain-mean hue: 100 · (mean h_A − mean h_baseline) / mean h_baseline.
    public var hPlain: Double
    public var s: Double, v: Double
    /// Δ of the circular means in degrees, in (−180, 180].
    public var hDegrees: Double

    public init(a: ColorStatistics, baseline b: ColorStatistics) {
        func change(_ x: Double, _ ref: Double) -> Double { 100 * (x - ref) / ref }   // ref 0: ±inf or NaN → null in JSON
        var turn = a.circularMeanH - b.circularMeanH
        if turn > 0.5 { turn -= 1 } else if turn <= -0.5 { turn += 1 }
        h = 100 * turn / b.circularMeanH
        hPlain = change(a.meanH, b.meanH)
        s = change(a.meanS, b.meanS)
        v = change(a.meanV, b.meanV)
        hDegrees = 360 * turn
    }
}

// MARK: - Latent channel statistics

/// Mean and population standard deviation of each channel of one latent (C, H, W), over its H·W positions.
public struct LatentChannelStats: Equatable, Sendable {
    public var mean: [Double]
    public var std: [Double]

    public init(mean: [Double], std: [Double]) { self.mean = mean; self.std = std }

    public init(latent: UnsafePointer<Float>, channels: Int, pixels: Int) {
        mean = []; std = []
        for c in 0..<channels {
            let p = latent + c * pixels
            var s = 0.0
            for i in 0..<pixels { s += Double(p[i]) }
            let m = s / Double(pixels)
            var v = 0.0
            for i in 0..<pixels { let d = Double(p[i]) - m; v += d * d }
            mean.append(m); std.append((v / Double(pixels)).squareRoot())
        }
    }
}

/// Over paired images: per channel, the mean over images of |μ_A − μ_baseline| and |σ_A − σ_baseline| (the gap the
/// statistic-matching loss closes), and each side's mean μ and σ.
public struct LatentComparison: Equatable, Sendable {
    public private(set) var images = 0
    /// Sums over images, per channel: |Δμ|, |Δσ|, μ_A, μ_baseline, σ_A, σ_baseline.
    private var sums: [[Double]]

    public init(channels: Int) { sums = Array(repeating: [Double](repeating: 0, count: channels), count: 6) }

    public var channels: Int { sums[0].count }

    public mutating func add(a: LatentChannelStats, baseline b: LatentChannelStats) {
        precondition(a.mean.count == channels && b.mean.count == channels && a.std.count == channels && b.std.count == channels,
                     "LatentComparison: channel counts differ")
        for c in 0..<channels {
            sums[0][c] += abs(a.mean[c] - b.mean[c]); sums[1][c] += abs(a.std[c] - b.std[c])
            sums[2][c] += a.mean[c]; sums[3][c] += b.mean[c]; sums[4][c] += a.std[c]; sums[5][c] += b.std[c]
        }
        images += 1
    }

    private func average(_ k: Int) -> [Double] { sums[k].map { $0 / Double(images) } }
    public var meanDistance: [Double] { average(0) }
    public var stdDistance: [Double] { average(1) }
    public var meanA: [Double] { average(2) }
    public var meanBaseline: [Double] { average(3) }
    public var stdA: [Double] { average(4) }
    public var stdBaseline: [Double] { average(5) }
}

@_silgen_name("cos") private func _cos(_ x: Double) -> Double
@_silgen_name("sin") private func _sin(_ x: Double) -> Double
@_silgen_name("atan2") private func _atan2(_ y: Double, _ x: Double) -> Double
