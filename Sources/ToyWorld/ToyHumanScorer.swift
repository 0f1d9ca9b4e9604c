// `--scorer NAME=toy-human`: a prompt-aware preference scorer for the toy world that reads the image alone (not the
// scene it was rendered from). It knows the world's palette and body proportions, as a template scorer would, and
// measures:
//   background  the median colors of the top and bottom rows → the nearest background of the palette
//   people      foreground = pixels far from both of those colors; each 4-connected shirt-colored blob with a core
//               (a pixel whose four neighbours are shirt too) and at least a third of the largest one's area is a
//               torso (one person); every other foreground pixel goes to the nearest torso of its 8-connected region;
//               foreground regions without a torso are fragments (torn-off limbs, floating heads)
//   anatomy     per person: head area above the torso, skin area (arms) and jeans area (legs) on each side of the
//               torso's centre, each divided by the area one head, arm or leg has in a correct figure of that size
//               (the size: the median of what torso, head and limbs say, so any scale works): ≈ 1 when right,
//               ≈ 0 missing, ≈ 2 doubled
//   pose        an arm is up when its skin reaches above the torso's top; legs shorter than 0.8 torso heights sit
//   color       the torso's mean color → the nearest shirt color
// and subtracts from 10: the anatomy error |reading − 1| of each part (capped at 1.5), 1 per fragment, 2 per person
// too many or too few, 2 for a wrong background, 2 × the fraction of people with the wrong shirt color and 2 × the
// fraction in the wrong pose, plus small continuous terms (color distances,
// unexplained foreground) that order otherwise equal images. Higher is better; a perfect render scores ≈ 10.
// The prompt must follow the toy grammar (Grammar.swift); another prompt is an error naming it.
import IO
import Scoring

public final class ToyHumanScorer: Scorer {
    public let descriptor: ScorerDescriptor
    /// Part areas of a correct figure as fractions of its torso's area, measured on clean renders (`calibration`).
    let unit: Calibration

    public static let kind = "toy-human"
    public static let version = "2"

    public init(name: String) {
        descriptor = ScorerDescriptor(name: name, kind: ToyHumanScorer.kind, argument: nil, version: ToyHumanScorer.version)
        unit = ToyHumanScorer.calibration
    }

    public func score(images: [ByteImage], prompt: String) throws -> [Double] {
        let expected = try Description(parsing: prompt)
        return images.map { score(analysis: analyze($0), expected: expected) }
    }

    // MARK: - Measurements

    /// What the scorer sees in one person.
    public struct PersonReading: Sendable {
        public var color: ShirtColor
        public var colorDistance: Float
        /// Head, then arms and legs on the left and right, in units of a correct part (≈ 1 each when right).
        public var head: Float, armsLeft: Float, armsRight: Float, legsLeft: Float, legsRight: Float
        public var armsUp: Int
        public var sitting: Bool
        public var pose: Pose {
            armsUp >= 2 ? .armsUp : armsUp == 1 ? .waving : sitting ? .sitting : .standing
        }
        /// Pixel counts for calibration.
        var torsoArea: Float, headArea: Float, armArea: [Float], legArea: [Float], legHeightToTorso: Float
    }

    public struct Analysis: Sendable {
        public var background: Background
        public var backgroundDistance: Float
        public var people: [PersonReading]
        public var fragments: Int
        /// Foreground pixels of no known color, as a fraction of all torso area.
        public var unexplained: Float
        /// Foreground outside every person's region (fragments, specks, noise), as a fraction of the image.
        public var clutter: Float
    }

    struct Calibration: Sendable {
        var head: Float, arm: Float, leg: Float, sittingLeg: Float
    }

    /// The areas of one person of scale 1 (standing, and sitting for the legs), relative to its torso.
    static let calibration: Calibration = {
        func reading(_ pose: Pose) -> PersonReading {
            var scene = Scene(Description(count: 1, color: .red, pose: pose, background: .field), seed: 0)
            scene.people[0].centerX = 16; scene.people[0].feetY = 29.5; scene.people[0].scale = 1
            return analyzeRaw(scene.render(), unit: Calibration(head: 1, arm: 1, leg: 1, sittingLeg: 1)).people[0]
        }
        let standing = reading(.standing), sitting = reading(.sitting)
        let t = standing.torsoArea
        return Calibration(head: standing.headArea / t, arm: standing.armArea.reduce(0, +) / (2 * t),
                           leg: standing.legArea.reduce(0, +) / (2 * t), sittingLeg: sitting.legArea.reduce(0, +) / (2 * sitting.torsoArea))
    }()

    public func analyze(_ image: ByteImage) -> Analysis { ToyHumanScorer.analyzeRaw(image, unit: unit) }

    static func analyzeRaw(_ image: ByteImage, unit: Calibration) -> Analysis {
        let w = image.width, h = image.height, c = image.channels
        func rgb(_ i: Int) -> RGB {
            let p = i * c
            return c >= 3 ? (Float(image.pixels[p]), Float(image.pixels[p + 1]), Float(image.pixels[p + 2]))
                : (Float(image.pixels[p]), Float(image.pixels[p]), Float(image.pixels[p]))
        }
        func dist(_ a: RGB, _ b: RGB) -> Float {
            ((a.r - b.r) * (a.r - b.r) + (a.g - b.g) * (a.g - b.g) + (a.b - b.b) * (a.b - b.b)).squareRoot()
        }
        func median(rows: [Int]) -> RGB {
            var r: [Float] = [], g: [Float] = [], b: [Float] = []
            for y in rows { for x in 0..<w { let v = rgb(y * w + x); r.append(v.r); g.append(v.g); b.append(v.b) } }
            func m(_ a: [Float]) -> Float { a.sorted()[a.count / 2] }
            return (m(r), m(g), m(b))
        }
        let sky = median(rows: [0, 1]), ground = median(rows: [h - 1])
        let bg = Background.allCases.map { b in (b, dist(sky, Palette.sky(b)) + dist(ground, Palette.ground(b))) }
            .min { $0.1 < $1.1 }!

        // Pixel classes: 0 background, 1 skin, 2 jeans, 3 shirt, 4 unknown foreground. A foreground pixel near a
        // part's color is that part; another is explained as a part's color mixed with sky or ground (blurred
        // edges, thin limbs), and the part's share `alpha` in [0, 1] counts as its area. Background: near sky or ground, or a mix of the two (the horizon).
        func mix(_ v: RGB, _ p: RGB, _ b: RGB) -> (alpha: Float, residual: Float) {
            let d: RGB = (p.r - b.r, p.g - b.g, p.b - b.b), u: RGB = (v.r - b.r, v.g - b.g, v.b - b.b)
            let n2 = d.r * d.r + d.g * d.g + d.b * d.b
            let t = n2 > 0 ? min(max((u.r * d.r + u.g * d.g + u.b * d.b) / n2, 0), 1) : 0
            return (t, dist(v, (b.r + t * d.r, b.g + t * d.g, b.b + t * d.b)))
        }
        let partColors: [(RGB, UInt8)] = Palette.skins.map { ($0, 1) } + [(Palette.jeans, 2)] + ShirtColor.allCases.map { (Palette.shirt($0), 3) }
        let backgroundThreshold: Float = 25, residualThreshold: Float = 40, pureThreshold: Float = 20
        var cls = [UInt8](repeating: 0, count: w * h), alpha = [Float](repeating: 0, count: w * h)
        for i in 0..<(w * h) {
            let v = rgb(i)
            guard min(dist(v, sky), dist(v, ground)) > backgroundThreshold, mix(v, sky, ground).residual > backgroundThreshold
            else { continue }
            // A part's own color (within the pixel noise) first; a mix with the background only otherwise.
            let pure = partColors.map { (dist(v, $0.0), $0.1) }.min { $0.0 < $1.0 }!
            if pure.0 <= pureThreshold { (cls[i], alpha[i]) = (pure.1, 1); continue }
            var best: (residual: Float, alpha: Float, cls: UInt8) = (.infinity, 1, 4)
            for (color, c) in partColors {
                for b in [sky, ground] {
                    let m = mix(v, color, b)
                    if m.residual < best.residual { best = (m.residual, m.alpha, c) }
                }
            }
            (cls[i], alpha[i]) = best.residual > residualThreshold ? (4, 1) : (best.cls, best.alpha)
        }

        // Torsos: 4-connected blobs of mostly-shirt pixels; regions: 8-connected foreground.
        let mostlyShirt = (0..<(w * h)).map { cls[$0] == 3 && alpha[$0] >= 0.5 ? UInt8(1) : 0 }
        let torsoBlobs = label(mostlyShirt, w, h, eightConnected: false) { $0 == 1 }
        let regionLabels = label(cls, w, h, eightConnected: true) { $0 != 0 }
        struct Torso {
            var x0 = Int.max, x1 = Int.min, y0 = Int.max, y1 = Int.min, area: Float = 0, core = 0, region = 0
            var r: Float = 0, g: Float = 0, b: Float = 0, weight: Float = 0
        }
        var torsos: [Int: Torso] = [:]
        for i in 0..<(w * h) where torsoBlobs[i] > 0 {
            let x = i % w, y = i / w, v = rgb(i)
            var t = torsos[torsoBlobs[i]] ?? Torso()
            t.x0 = min(t.x0, x); t.x1 = max(t.x1, x); t.y0 = min(t.y0, y); t.y1 = max(t.y1, y)
            t.area += alpha[i]; t.region = regionLabels[i]
            // Its color from its purest pixels.
            let wgt = alpha[i] * alpha[i] * alpha[i] * alpha[i]
            t.r += wgt * v.r; t.g += wgt * v.g; t.b += wgt * v.b; t.weight += wgt
            // A core pixel has shirt above, below, left and right: thin rims of mixed colors (blur) have none.
            if x > 0, x < w - 1, y > 0, y < h - 1, [i - 1, i + 1, i - w, i + w].allSatisfy({ torsoBlobs[$0] == torsoBlobs[i] }) {
                t.core += 1
            }
            torsos[torsoBlobs[i]] = t
        }
        // A torso is a shirt blob with a core, at least a third of the largest one's area.
        let largest = torsos.values.filter { $0.core > 0 }.map(\.area).max() ?? 0
        // Left to right; the blob label orders torsos that start in the same column (a dictionary's order is not
        // fixed from one process to the next, and the order decides which torso a pixel goes to on a tie).
        let people = torsos.sorted { ($0.value.x0, $0.key) < ($1.value.x0, $1.key) }.map(\.value)
            .filter { $0.core > 0 && 3 * $0.area >= largest }
        var headArea = [Float](repeating: 0, count: people.count)
        var arms = [[Float]](repeating: [0, 0], count: people.count), armsAbove = arms, legs = arms
        var legTop = [Int](repeating: Int.max, count: people.count), legBottom = [Int](repeating: Int.min, count: people.count)
        var unexplained: Float = 0
        var regionArea: [Int: Float] = [:], clutterArea: Float = 0   // summed in pixel order: the same bits every run
        let peopleRegions = Set(people.map(\.region))
        for i in 0..<(w * h) where cls[i] != 0 {
            let region = regionLabels[i]
            guard peopleRegions.contains(region) else { regionArea[region, default: 0] += alpha[i]; clutterArea += alpha[i]; continue }
            if cls[i] == 4 { unexplained += 1; continue }
            guard cls[i] == 1 || cls[i] == 2 else { continue }
            let x = i % w, y = i / w
            // The nearest torso of this region, by horizontal distance to its columns.
            var best = -1, bestD = Int.max
            for (k, t) in people.enumerated() where t.region == region {
                let d = x < t.x0 ? t.x0 - x : x > t.x1 ? x - t.x1 : 0
                if d < bestD { best = k; bestD = d }
            }
            let t = people[best]
            let side = 2 * x + 1 < t.x0 + t.x1 + 1 ? 0 : 1   // pixel centre left of the torso's centre
            if cls[i] == 1 {
                if y < t.y0 && x >= t.x0 && x <= t.x1 { headArea[best] += alpha[i] } else {
                    arms[best][side] += alpha[i]
                    if y < t.y0 { armsAbove[best][side] += alpha[i] }
                }
            } else {
                legs[best][side] += alpha[i]
                if alpha[i] >= 0.5 { legTop[best] = min(legTop[best], y); legBottom[best] = max(legBottom[best], y) }
            }
        }
        var readings: [PersonReading] = []
        var totalTorso: Float = 0
        for (k, t) in people.enumerated() {
            totalTorso += t.area
            let a = t.area
            let mean: RGB = (t.r / t.weight, t.g / t.weight, t.b / t.weight)
            let color = ShirtColor.allCases.min { dist(mean, Palette.shirt($0)) < dist(mean, Palette.shirt($1)) }!
            let legHeight = legBottom[k] >= legTop[k] ? Float(legBottom[k] - legTop[k] + 1) : 0
            let legRatio = legHeight / Float(t.y1 - t.y0 + 1)
            let sitting = legRatio > 0 && legRatio < 0.8
            let unitLeg = a * (sitting ? unit.sittingLeg : unit.leg)
            // The person's scale, in units of a correct figure's part areas: the median of what the torso, head and
            // four limbs each say (1 each for a correct figure of this torso), so one missing, doubled or
            // badly rasterised part does not move it and the torso's own pixel rounding cancels.
            let raw = [1, headArea[k] / (a * unit.head), arms[k][0] / (a * unit.arm), arms[k][1] / (a * unit.arm),
                       legs[k][0] / unitLeg, legs[k][1] / unitLeg]
            let scale = max(raw.sorted()[2...3].reduce(0, +) / 2, 0.25)
            let unitArm = a * unit.arm * scale
            readings.append(PersonReading(
                color: color, colorDistance: dist(mean, Palette.shirt(color)),
                head: raw[1] / scale, armsLeft: raw[2] / scale, armsRight: raw[3] / scale,
                legsLeft: raw[4] / scale, legsRight: raw[5] / scale,
                armsUp: armsAbove[k].filter { $0 > 0.3 * unitArm }.count, sitting: sitting,
                torsoArea: t.area, headArea: headArea[k], armArea: arms[k], legArea: legs[k], legHeightToTorso: legRatio))
        }
        // A fragment must be at least a third of a limb (of the people's median torso) to count.
        let medianTorso: Float = people.isEmpty ? 12 : people.map(\.area).sorted()[people.count / 2]
        let minFragment = max(2, medianTorso * unit.arm / 3)
        let fragments = regionArea.values.filter { $0 >= minFragment }.count
        return Analysis(background: bg.0, backgroundDistance: bg.1, people: readings, fragments: fragments,
                        unexplained: unexplained / max(totalTorso, 1),
                        clutter: clutterArea / Float(w * h))
    }

    /// Connected-component labels (1, 2, …; 0 where `member` is false).
    static func label(_ cls: [UInt8], _ w: Int, _ h: Int, eightConnected: Bool, member: (UInt8) -> Bool) -> [Int] {
        var labels = [Int](repeating: 0, count: w * h)
        var next = 0
        var stack: [Int] = []
        let offsets = eightConnected ? [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)]
            : [(0, -1), (-1, 0), (1, 0), (0, 1)]
        for start in 0..<(w * h) where labels[start] == 0 && member(cls[start]) {
            next += 1
            labels[start] = next
            stack.append(start)
            while let i = stack.popLast() {
                let x = i % w, y = i / w
                for (dx, dy) in offsets {
                    let nx = x + dx, ny = y + dy
                    guard nx >= 0, nx < w, ny >= 0, ny < h else { continue }
                    let j = ny * w + nx
                    if labels[j] == 0 && member(cls[j]) { labels[j] = next; stack.append(j) }
                }
            }
        }
        return labels
    }

    // MARK: - Score

    /// The score's penalties by name (the score is 10 minus their sum): see the file's header.
    public func penalties(analysis a: Analysis, expected: Description) -> [(name: String, value: Float)] {
        func part(_ x: Float) -> Float { min(abs(x - 1), 1.5) }
        // x·cap/(x + cap): ≈ x when small, below `cap` however large (orders broken figures, never past a missing one).
        func saturate(_ x: Float, _ cap: Float) -> Float { x * cap / (x + cap) }
        let anatomy = a.people.map { p in
            saturate(part(p.head) + part(p.armsLeft) + part(p.armsRight) + part(p.legsLeft) + part(p.legsRight), 2)
        }.reduce(0, +)
        let missing = max(expected.count - a.people.count, 0), extra = max(a.people.count - expected.count, 0)
        let n = Float(max(a.people.count, 1))
        // Tie-breakers (well below one unit): how far the colors are from the palette's, unexplained foreground.
        let colorDistance = a.people.map(\.colorDistance).reduce(0, +) / n
        return [
            ("anatomy", anatomy),
            ("fragments", saturate(Float(a.fragments), 3)),
            ("clutter", 4 * min(a.clutter / 0.25, 1)),
            ("count", 3 * Float(missing) + 2 * Float(extra)),
            ("background", a.background == expected.background ? 0 : 2),
            ("shirt", 2 * Float(a.people.filter { $0.color != expected.color }.count) / n),
            ("pose", 2 * Float(a.people.filter { $0.pose != expected.pose }.count) / n),
            ("ties", 0.1 * min(colorDistance / 100, 1) + 0.1 * min(a.backgroundDistance / 200, 1) + 0.1 * min(a.unexplained, 1)),
        ]
    }

    public func score(analysis a: Analysis, expected: Description) -> Double {
        Double(10 - penalties(analysis: a, expected: expected).reduce(0) { $0 + $1.value })
    }
}
