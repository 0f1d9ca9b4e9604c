import IO
import ToyWorld
import XCTest

final class SceneTests: XCTestCase {
    let d = Description(count: 1, color: .red, pose: .waving, background: .field)

    func testRenderIsDeterministic() {
        XCTAssertEqual(Scene(d, seed: 7).render(), Scene(d, seed: 7).render())
        XCTAssertNotEqual(Scene(d, seed: 7).render(), Scene(d, seed: 8).render())
        let image = Scene(d, seed: 7, width: 48, height: 40).render()
        XCTAssertEqual([image.width, image.height, image.channels], [48, 40, 3])
    }

    func testPeopleAndDefects() {
        for n in 1...3 {
            var e = d
            e.count = n
            XCTAssertEqual(Scene(e, seed: 1).people.count, n)
            XCTAssertTrue(Scene(e, seed: 1).people.allSatisfy { $0.limbs.count == 4 && $0.head != nil })
        }
        for defect in Defect.allCases {
            let bad = Scene(d, seed: 5, defect: defect)
            XCTAssertNotEqual(bad.render(), Scene(d, seed: 5).render(), defect.rawValue)
            switch defect {
            case .missingLimb: XCTAssertEqual(bad.people[0].limbs.count, 3)
            case .extraLimb: XCTAssertEqual(bad.people[0].limbs.count, 5)
            case .wrongPose: XCTAssertNotEqual(bad.people[0].pose, d.pose)
            case .wrongColor: XCTAssertNotEqual(bad.people[0].shirt, d.color)
            case .wrongBackground: XCTAssertNotEqual(bad.background, d.background)
            case .wrongCount: XCTAssertEqual(bad.people.count, 2)
            case .brokenPose: XCTAssertNotEqual(bad.people[0], Scene(d, seed: 5).people[0])
            }
        }
    }

    /// The pixels of the first person's torso are the shirt color (within the noise), the corners sky and ground.
    func testColors() {
        let scene = Scene(d, seed: 2)
        let image = scene.render()
        func pixel(_ x: Int, _ y: Int) -> [Int] { (0..<3).map { Int(image.pixels[(y * 32 + x) * 3 + $0]) } }
        func near(_ p: [Int], _ c: RGB) -> Bool { abs(p[0] - Int(c.r)) <= 6 && abs(p[1] - Int(c.g)) <= 6 && abs(p[2] - Int(c.b)) <= 6 }
        XCTAssertTrue(near(pixel(0, 0), Palette.sky(.field)))
        XCTAssertTrue(near(pixel(31, 31), Palette.ground(.field)))
        let p = scene.people[0]
        let cx = Int(p.centerX), cy = Int(p.feetY + p.scale * (Body.torsoTop + Body.torsoBottom) / 2)
        XCTAssertTrue(near(pixel(cx, cy), Palette.shirt(.red)), "\(pixel(cx, cy))")
    }
}
