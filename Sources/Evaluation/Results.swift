// results.json of `hgdpo eval`: what a script reads (docs/evaluation.md lists every field). Written and read back
// through Codable (the training report reads the evaluations it shows); numbers that are not finite (a colour shift
// relative to a zero mean) are written as null.
import Foundation
import Scoring

public struct EvalResults: Codable, Sendable {
    public static let format = "hgdpo-eval/1"

    public struct Side: Codable, Sendable, Equatable {
        public var model: String
        public var lora: String?
        public var loraScale: Float?
        public var lan: Bool
        enum CodingKeys: String, CodingKey { case model, lora, loraScale = "lora_scale", lan }
    }

    public struct Sampling: Codable, Sendable, Equatable {
        public var steps: Int
        public var guidance: Float
        public var scheduler: String
        public var height: Int, width: Int
        public var seed: UInt64
        public var imagesPerPrompt: Int
        public var negativePrompt: String
        enum CodingKeys: String, CodingKey {
            case steps, guidance, scheduler, height, width, seed, imagesPerPrompt = "images_per_prompt", negativePrompt = "negative_prompt"
        }
    }

    public struct ScorerResult: Codable, Sendable {
        public var name: String
        public var descriptor: ScorerDescriptor
        public var winRate: Double
        public var ciLow: Double, ciHigh: Double
        public var wins: Int, ties: Int, losses: Int, pairs: Int
        public var meanA: Double, meanBaseline: Double
        public var promptWinRate: Double
        enum CodingKeys: String, CodingKey {
            case name, descriptor, winRate = "win_rate", ciLow = "ci_low", ciHigh = "ci_high", wins, ties, losses, pairs
            case meanA = "mean_a", meanBaseline = "mean_baseline", promptWinRate = "prompt_win_rate"
        }
        public init(name: String, descriptor: ScorerDescriptor, result w: WinRate) {
            self.name = name; self.descriptor = descriptor
            winRate = w.winRate; ciLow = w.ciLow; ciHigh = w.ciHigh; wins = w.wins; ties = w.ties; losses = w.losses
            pairs = w.pairs; meanA = w.meanA; meanBaseline = w.meanBaseline; promptWinRate = w.promptWinRate
        }
    }

    public struct Bootstrap: Codable, Sendable, Equatable {
        public var resamples: Int
        public var seed: UInt64
        public var level: Double
        public var unit: String
    }

    /// Percent changes of A's means relative to the baseline's (ColorShift).
    public struct ColorShiftValues: Codable, Sendable, Equatable {
        public var h: Double?, s: Double?, v: Double?
        public var hPlain: Double?
        public var hDegrees: Double?
        public var hueMean: String
        enum CodingKeys: String, CodingKey { case h, s, v, hPlain = "h_plain", hDegrees = "h_degrees", hueMean = "hue_mean" }
    }

    /// A side's mean H (circular and plain), S, V over all its pixels, h in [0, 1).
    public struct ColorMeans: Codable, Sendable, Equatable {
        public var hCircular: Double?, hPlain: Double, s: Double, v: Double
        public var hueConcentration: Double
        public var pixels: Int
        enum CodingKeys: String, CodingKey {
            case hCircular = "h_circular", hPlain = "h_plain", s, v, hueConcentration = "hue_concentration", pixels
        }
        init(_ c: ColorStatistics) {
            hCircular = finite(c.circularMeanH); hPlain = c.meanH; s = c.meanS; v = c.meanV
            hueConcentration = c.hueConcentration; pixels = c.pixels
        }
    }

    public struct LatentStats: Codable, Sendable, Equatable {
        public var images: Int
        public var channels: Int
        public var meanDistance: [Double], stdDistance: [Double]
        public var meanDistanceAvg: Double?, stdDistanceAvg: Double?
        public var meanA: [Double], meanBaseline: [Double], stdA: [Double], stdBaseline: [Double]
        enum CodingKeys: String, CodingKey {
            case images, channels, meanDistance = "mean_distance", stdDistance = "std_distance"
            case meanDistanceAvg = "mean_distance_avg", stdDistanceAvg = "std_distance_avg"
            case meanA = "mean_a", meanBaseline = "mean_baseline", stdA = "std_a", stdBaseline = "std_baseline"
        }
    }

    public struct PromptScores: Codable, Sendable, Equatable {
        public var a: [Double], baseline: [Double]
        public var wins: Int, ties: Int, losses: Int
        public var meanA: Double { a.reduce(0, +) / Double(a.count) }
        public var meanBaseline: Double { baseline.reduce(0, +) / Double(baseline.count) }
    }

    public struct PromptRow: Codable, Sendable, Equatable {
        public var index: Int
        public var prompt: String
        public var seeds: [UInt64]
        /// Image files relative to the eval folder, in seed order.
        public var a: [String], baseline: [String]
        public var grid: String
        public var scores: [String: PromptScores]
    }

    public var format = EvalResults.format
    public var a: Side, baseline: Side
    public var sampling: Sampling
    public var prompts: String
    public var promptCount: Int
    public var pairs: Int
    public var tieTolerance: Double
    public var bootstrap: Bootstrap
    /// Per scorer, by name (`results["scorers"]["pickscore"]["win_rate"]`), and the names in --scorer order.
    public var scorerResults: [String: ScorerResult]
    public var scorerOrder: [String]
    public var scorers: [ScorerResult] { scorerOrder.compactMap { scorerResults[$0] } }
    public var colorShift: ColorShiftValues
    public var color: [String: ColorMeans]
    public var latentStats: LatentStats
    public var perPrompt: [PromptRow]

    enum CodingKeys: String, CodingKey {
        case format, a, baseline, sampling, prompts, promptCount = "prompt_count", pairs, tieTolerance = "tie_tolerance"
        case bootstrap, scorerResults = "scorers", scorerOrder = "scorer_order", colorShift = "color_shift", color, latentStats = "latent_stats", perPrompt = "per_prompt"
    }

    init(config c: EvalConfig, scorers: [ScorerResult], colorA: ColorStatistics, colorBaseline: ColorStatistics,
         latent: LatentComparison, perPrompt: [PromptRow]) {
        func side(_ s: EvalSide) -> Side { Side(model: s.model, lora: s.lora, loraScale: s.scale, lan: s.lan) }
        a = side(c.a); baseline = side(c.baseline)
        sampling = Sampling(steps: c.steps, guidance: c.guidance, scheduler: c.scheduler, height: c.height, width: c.width, seed: c.seed,
                            imagesPerPrompt: c.imagesPerPrompt, negativePrompt: c.negativePrompt)
        prompts = c.promptSource
        promptCount = c.prompts.count
        pairs = c.prompts.count * c.imagesPerPrompt
        tieTolerance = c.tieTolerance
        bootstrap = Bootstrap(resamples: c.bootstrapResamples, seed: c.bootstrapSeed, level: 0.95, unit: "prompt")
        scorerResults = Dictionary(uniqueKeysWithValues: scorers.map { ($0.name, $0) })
        scorerOrder = scorers.map(\.name)
        let shift = ColorShift(a: colorA, baseline: colorBaseline)
        colorShift = ColorShiftValues(h: finite(shift.h), s: finite(shift.s), v: finite(shift.v), hPlain: finite(shift.hPlain),
                                      hDegrees: finite(shift.hDegrees), hueMean: "circular")
        color = ["a": ColorMeans(colorA), "baseline": ColorMeans(colorBaseline)]
        func avg(_ v: [Double]) -> Double? { v.isEmpty ? nil : v.reduce(0, +) / Double(v.count) }
        latentStats = LatentStats(images: latent.images, channels: latent.channels, meanDistance: latent.meanDistance,
                                  stdDistance: latent.stdDistance, meanDistanceAvg: avg(latent.meanDistance),
                                  stdDistanceAvg: avg(latent.stdDistance), meanA: latent.meanA, meanBaseline: latent.meanBaseline,
                                  stdA: latent.stdA, stdBaseline: latent.stdBaseline)
        self.perPrompt = perPrompt
    }

    public func json() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try e.encode(self)
    }

    /// Reads an eval folder's results.json (or the file itself).
    public static func read(_ path: String) throws -> EvalResults {
        var isDir: ObjCBool = false
        let file = FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
            ? (path as NSString).appendingPathComponent("results.json") : path
        guard let data = FileManager.default.contents(atPath: file) else { throw EvalError("\(file): cannot read (no results.json of hgdpo eval)") }
        do {
            let r = try JSONDecoder().decode(EvalResults.self, from: data)
            guard r.format == format else { throw EvalError("\(file): format '\(r.format)', expected '\(format)'") }
            return r
        } catch let e as EvalError { throw e } catch {
            throw EvalError("\(file): not a results.json of hgdpo eval (\(error))")
        }
    }
}

func finite(_ x: Double) -> Double? { x.isFinite ? x : nil }
