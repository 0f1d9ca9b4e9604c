// Rasterising a scene: flat colors with a little pixel noise, no antialiasing (a pixel belongs to a part when its
// centre is inside it). Order: sky and ground, then per person arms, legs, neck, torso (over the limbs' shoulder and hip
// ends), head. Colors are chosen so every part stands apart from every background (the scorer relies on it).
import IO
import Tensors

public typealias RGB = (r: Float, g: Float, b: Float)

public enum Palette {
    public static func shirt(_ c: ShirtColor) -> RGB {
        switch c {
        case .red: return (215, 35, 35)
        case .orange: return (245, 135, 25)
        case .yellow: return (245, 215, 30)
        case .green: return (25, 140, 120)
        case .blue: return (35, 75, 215)
        case .purple: return (135, 45, 175)
        case .pink: return (245, 120, 185)
        }
    }
    public static func sky(_ b: Background) -> RGB {
        switch b {
        case .field: return (140, 195, 240)
        case .beach: return (95, 170, 235)
        case .snow: return (190, 200, 215)
        case .street: return (150, 150, 160)
        case .night: return (20, 25, 60)
        }
    }
    public static func ground(_ b: Background) -> RGB {
        switch b {
        case .field: return (80, 160, 70)
        case .beach: return (230, 210, 100)
        case .snow: return (245, 245, 250)
        case .street: return (80, 80, 85)
        case .night: return (45, 55, 45)
        }
    }
    public static let skins: [RGB] = [(240, 195, 160), (205, 150, 110), (150, 100, 70)]
    public static let jeans: RGB = (40, 60, 140)
    /// Half-width of the uniform pixel noise, in 8-bit levels.
    static let noise: Float = 6
}

extension Scene {
    /// The scene as 8-bit RGB.
    public func render() -> ByteImage {
        var rgb = [Float](repeating: 0, count: width * height * 3)
        let horizonRow = Int((Float(height) * Scene.horizon).rounded())
        func put(_ x: Int, _ y: Int, _ c: RGB) {
            let i = (y * width + x) * 3
            rgb[i] = c.r; rgb[i + 1] = c.g; rgb[i + 2] = c.b
        }
        for y in 0..<height {
            for x in 0..<width { put(x, y, y < horizonRow ? Palette.sky(background) : Palette.ground(background)) }
        }
        for p in people {
            let s = p.scale
            func toImage(_ u: (x: Float, y: Float)) -> (x: Float, y: Float) { (p.centerX + s * u.x, p.feetY + s * u.y) }
            /// Fills the pixels whose centres satisfy `inside` (in image coordinates) within a bounding box.
            func fill(_ box: (x0: Float, y0: Float, x1: Float, y1: Float), _ color: RGB, _ inside: (Float, Float) -> Bool) {
                let xa = max(0, Int(box.x0.rounded(.down))), xb = min(width - 1, Int(box.x1.rounded(.up)))
                let ya = max(0, Int(box.y0.rounded(.down))), yb = min(height - 1, Int(box.y1.rounded(.up)))
                guard xa <= xb, ya <= yb else { return }
                for y in ya...yb {
                    for x in xa...xb where inside(Float(x) + 0.5, Float(y) + 0.5) { put(x, y, color) }
                }
            }
            func capsule(_ a: (x: Float, y: Float), _ b: (x: Float, y: Float), radius: Float, _ color: RGB) {
                let r = radius * s
                fill((min(a.x, b.x) - r, min(a.y, b.y) - r, max(a.x, b.x) + r, max(a.y, b.y) + r), color) { px, py in
                    let dx = b.x - a.x, dy = b.y - a.y
                    let len2 = dx * dx + dy * dy
                    let t = len2 > 0 ? min(max(((px - a.x) * dx + (py - a.y) * dy) / len2, 0), 1) : 0
                    let ex = px - (a.x + t * dx), ey = py - (a.y + t * dy)
                    return ex * ex + ey * ey <= r * r
                }
            }
            let skin = Palette.skins[p.skin]
            for limb in p.limbs.sorted(by: { ($0.kind == .arm ? 0 : 1) < ($1.kind == .arm ? 0 : 1) }) {
                let color = limb.kind == .arm ? skin : Palette.jeans
                for (a, b) in zip(limb.points, limb.points.dropFirst()) {
                    capsule(toImage(a), toImage(b), radius: limb.radius, color)
                }
            }
            if let h = p.head, p.neck {   // the neck, under the torso and the head: the head always touches the body
                capsule(toImage(h), toImage((h.x, p.torso.y0 + 1)), radius: 0.9, skin)
            }
            let t0 = toImage((p.torso.x0, p.torso.y0)), t1 = toImage((p.torso.x1, p.torso.y1))
            fill((t0.x, t0.y, t1.x, t1.y), Palette.shirt(p.shirt)) { px, py in px >= t0.x && px < t1.x && py >= t0.y && py < t1.y }
            if let h = p.head {
                let c = toImage(h), r = Body.headRadius * s
                fill((c.x - r, c.y - r, c.x + r, c.y + r), skin) { px, py in (px - c.x) * (px - c.x) + (py - c.y) * (py - c.y) <= r * r }
            }
        }
        let noise = CounterRNG(seed: seed, stream: 0x746F_796E_6F69_7365)   // "toynoise"
        var bytes = [UInt8](repeating: 0, count: rgb.count)
        for i in 0..<rgb.count {
            let v = rgb[i] + (2 * noise.uniform(UInt64(i)) - 1) * Palette.noise
            bytes[i] = UInt8(min(max(v.rounded(), 0), 255))
        }
        return try! ByteImage(width: width, height: height, channels: 3, pixels: bytes)   // sizes are consistent by construction
    }
}
