// Scenes of the toy world: a background and 1–3 stick-figure people, drawn from a description, a seed and optionally
// a defect, then rasterised (Render.swift).
//
// A person is drawn in body units (x right, y down, origin between the feet; standing height 22 units) and placed
// with a scale s: 1 person s ≈ 1 (22 px tall in 32 px), two s ≈ 0.8, three s ≈ 0.6.
//   head   disc of radius 2.6 at (0, −19.5) on a neck (radius 0.9) reaching into the torso, skin
//   torso  rectangle x ∈ [−3, 3], y ∈ [−16.5, −8.5], shirt color
//   arms   capsules of radius 1 from the shoulders (±3, −15.5), skin: down to (±6.5, −9.5), up to (±7, −21.5)
//   legs   capsules of radius 1 from the hips (±1.5, −8.5) to (±2.5, −0.5), jeans
// Poses: standing (arms down), waving (one arm up, the side drawn at random), arms up (both), sitting (the body 5
// units lower, thighs out sideways to the knees (±5.5, −3), shins down to (±5.5, 0)).
//
// Defects, the typical failures of generated humans (one person of the scene gets it):
//   missing-limb      one arm or leg is not drawn
//   extra-limb        a third arm (from a shoulder, up where that side's arm is down and down where it is up) or a
//                     third leg (from a hip out sideways)
//   broken-pose       a limb torn off and drawn apart from the body, or the head moved off the shoulders
//   wrong-pose        another pose than the prompt's
//   wrong-color       another shirt color than the prompt's (every person)
//   wrong-background  another background
//   wrong-count       one person more or fewer (within 1–3)
import Tensors

public enum Defect: String, CaseIterable, Sendable, Codable {
    case missingLimb = "missing-limb"
    case extraLimb = "extra-limb"
    case brokenPose = "broken-pose"
    case wrongPose = "wrong-pose"
    case wrongColor = "wrong-color"
    case wrongBackground = "wrong-background"
    case wrongCount = "wrong-count"
}

/// A segment chain drawn as one limb: consecutive points joined by capsules of radius `radius` (body units).
public struct Limb: Sendable, Equatable {
    public enum Kind: Sendable { case arm, leg }
    public var kind: Kind
    public var points: [(x: Float, y: Float)]
    public var radius: Float = 1

    public static func == (a: Limb, b: Limb) -> Bool {
        a.kind == b.kind && a.radius == b.radius && a.points.count == b.points.count
            && zip(a.points, b.points).allSatisfy { $0.x == $1.x && $0.y == $1.y }
    }
}

/// One person as drawn: where, how big, and every part in body units (defects already applied).
public struct Person: Sendable, Equatable {
    public var centerX: Float, feetY: Float, scale: Float
    public var skin: Int
    public var shirt: ShirtColor
    public var pose: Pose
    public var head: (x: Float, y: Float)?
    /// Whether a neck joins the head to the torso (not when a broken pose moved the head off the shoulders).
    public var neck = true
    public var torso: (x0: Float, y0: Float, x1: Float, y1: Float)
    public var limbs: [Limb]

    public static func == (a: Person, b: Person) -> Bool {
        a.centerX == b.centerX && a.feetY == b.feetY && a.scale == b.scale && a.skin == b.skin && a.shirt == b.shirt
            && a.pose == b.pose && a.neck == b.neck && a.head?.x == b.head?.x && a.head?.y == b.head?.y && a.limbs == b.limbs
            && a.torso.x0 == b.torso.x0 && a.torso.y0 == b.torso.y0 && a.torso.x1 == b.torso.x1 && a.torso.y1 == b.torso.y1
    }
}

/// The figure's proportions, shared by the renderer and the scorer (which knows the world, not the scene).
public enum Body {
    public static let headRadius: Float = 2.6
    public static let headY: Float = -19.5
    public static let torsoHalfWidth: Float = 3, torsoTop: Float = -16.5, torsoBottom: Float = -8.5
    public static let limbRadius: Float = 1
    static let shoulderY: Float = -15.5, hipX: Float = 1.5
    static let handDown: (x: Float, y: Float) = (6.5, -9.5), handUp: (x: Float, y: Float) = (7, -21.5)
    static let foot: (x: Float, y: Float) = (2.5, -0.5)
    static let sittingDrop: Float = 5, knee: (x: Float, y: Float) = (5.5, -3)

    public static var torsoWidth: Float { 2 * torsoHalfWidth }
    public static var torsoHeight: Float { torsoBottom - torsoTop }
}

public struct Scene: Sendable, Equatable {
    public var width: Int, height: Int
    public var background: Background
    public var people: [Person]
    /// Seed of the pixel noise and texture.
    public var seed: UInt64
    /// The description the scene was drawn from and the defect it carries (nil: it matches the description).
    public var description: Description
    public var defect: Defect?

    public static let horizon: Float = 0.62   // of the height: sky above, ground below

    /// A scene of `description` from `seed` alone; with a defect, the same scene (same people, places and skins)
    /// with that defect, so a correct and a defective render of one seed differ only by the defect.
    public init(_ description: Description, seed: UInt64, defect: Defect? = nil, width: Int = 32, height: Int = 32) {
        self.width = width; self.height = height; self.seed = seed; self.description = description; self.defect = defect
        var draw = Draws(CounterRNG(seed: seed, stream: 0x746F_7973_6365_6E65))   // "toyscene"
        var shown = description
        // What a defect changes in the description is drawn first, from its own substream, so the rest is shared.
        var defectDraw = Draws(CounterRNG(seed: seed, stream: 0x746F_7964_6566_6563))   // "toydefec"
        switch defect {
        case .wrongPose: shown.pose = defectDraw.other(than: description.pose)
        case .wrongColor: shown.color = defectDraw.other(than: description.color)
        case .wrongBackground: shown.background = defectDraw.other(than: description.background)
        case .wrongCount:
            shown.count = description.count == 1 ? 2 : description.count == 3 ? 2 : (defectDraw.below(2) == 0 ? 1 : 3)
        default: break
        }
        background = shown.background
        let n = shown.count
        let baseScale: Float = [1.0, 0.8, 0.6][n - 1]
        let skins = (0..<3).map { _ in draw.below(Palette.skins.count) }
        let jitters = (0..<3).map { _ in (draw.uniform() - 0.5, draw.uniform() - 0.5, draw.uniform() - 0.5, draw.below(2)) }
        let W = Float(width), H = Float(height)
        var people: [Person] = []
        for i in 0..<n {
            let (jx, jy, js, side) = jitters[i]
            let scale = baseScale * (1 + 0.06 * js) * H / 32
            let slot = W / Float(n)
            let cx = slot * (Float(i) + 0.5) + jx * (n == 1 ? 4 : 1.2) * W / 32
            let feet = H - (n == 1 ? 2.5 : 3) + jy * 1.2 * H / 32
            people.append(Person.drawn(pose: shown.pose, shirt: shown.color, skin: skins[i], centerX: cx, feetY: feet,
                                       scale: scale, wavingSide: side))
        }
        if let defect, [.missingLimb, .extraLimb, .brokenPose].contains(defect) {
            let who = defectDraw.below(n)
            people[who].apply(defect, &defectDraw)
        }
        self.people = people
    }
}

extension Person {
    static func drawn(pose: Pose, shirt: ShirtColor, skin: Int, centerX: Float, feetY: Float, scale: Float, wavingSide: Int) -> Person {
        let drop: Float = pose == .sitting ? Body.sittingDrop : 0
        var limbs: [Limb] = []
        for sign: Float in [-1, 1] {
            let up = pose == .armsUp || (pose == .waving && (sign < 0) == (wavingSide == 0))
            let hand = up ? Body.handUp : Body.handDown
            limbs.append(Limb(kind: .arm, points: [(sign * Body.torsoHalfWidth, Body.shoulderY + drop),
                                                  (sign * hand.x, hand.y + drop)]))
        }
        for sign: Float in [-1, 1] {
            let hip = (x: sign * Body.hipX, y: Body.torsoBottom + drop)
            if pose == .sitting {
                limbs.append(Limb(kind: .leg, points: [hip, (sign * Body.knee.x, Body.knee.y), (sign * Body.knee.x, 0)]))
            } else {
                limbs.append(Limb(kind: .leg, points: [hip, (sign * Body.foot.x, Body.foot.y)]))
            }
        }
        return Person(centerX: centerX, feetY: feetY, scale: scale, skin: skin, shirt: shirt, pose: pose,
                      head: (0, Body.headY + drop),
                      torso: (-Body.torsoHalfWidth, Body.torsoTop + drop, Body.torsoHalfWidth, Body.torsoBottom + drop),
                      limbs: limbs)
    }

    mutating func apply(_ defect: Defect, _ draw: inout Draws) {
        let drop = torso.y0 - Body.torsoTop
        switch defect {
        case .missingLimb:
            limbs.remove(at: draw.below(limbs.count))
        case .extraLimb:
            let sign: Float = draw.below(2) == 0 ? -1 : 1
            if draw.below(2) == 0 {
                // A third arm from a shoulder: up when that side's arm is down, down when it is up.
                let shoulder = (x: sign * Body.torsoHalfWidth, y: Body.shoulderY + drop)
                let sideArm = limbs.first { $0.kind == .arm && ($0.points[1].x > 0) == (sign > 0) }
                let isUp = (sideArm?.points[1].y ?? 0) < shoulder.y
                let hand = isUp ? (x: sign * Body.handDown.x, y: Body.handDown.y + drop) : (x: sign * Body.handUp.x, y: Body.handUp.y + drop)
                limbs.append(Limb(kind: .arm, points: [shoulder, hand]))
            } else {
                let hip = (x: sign * Body.hipX, y: Body.torsoBottom + drop)
                let foot = pose == .sitting ? (x: sign * 9.5, y: Float(-1)) : (x: sign * 7.5, y: Float(-1))
                limbs.append(Limb(kind: .leg, points: [hip, foot]))
            }
        case .brokenPose:
            if draw.below(3) == 0, let h = head {
                // The head slides off the shoulders to one side, below the shoulder line.
                let sign: Float = draw.below(2) == 0 ? -1 : 1
                head = (h.x + sign * 7.5, h.y + 6)
                neck = false
            } else {
                // A limb torn off: an arm moved outwards, a leg dropped below its hip, so it no longer touches the body.
                let k = draw.below(limbs.count)
                let sign: Float = limbs[k].points.last!.x < 0 ? -1 : 1
                let (dx, dy): (Float, Float) = limbs[k].kind == .arm ? (sign * 3.5, 1) : (sign * 1, 2.5)
                limbs[k].points = limbs[k].points.map { ($0.x + dx, $0.y + dy) }
            }
        default:
            break
        }
    }
}

/// Sequential draws from a counter-based stream.
struct Draws {
    let rng: CounterRNG
    var next: UInt64 = 0
    init(_ rng: CounterRNG) { self.rng = rng }
    mutating func uniform() -> Float { defer { next += 1 }; return rng.uniform(next) }
    mutating func below(_ n: Int) -> Int { min(Int(uniform() * Float(n)), n - 1) }
    mutating func other<T: CaseIterable & Equatable>(than value: T) -> T {
        let others = T.allCases.filter { $0 != value }
        return others[below(others.count)]
    }
}
