// The external scorer's JSON-lines protocol against small shell and Python commands: answers, errors, deaths,
// garbage and time-outs each end with a message naming the scorer and what went wrong.
import Foundation
import IO
import Scoring
import TestSupport
import XCTest

final class ExternalScorerTests: XCTestCase {
    let images = [try! ByteImage(width: 2, height: 1, channels: 3, pixels: [255, 0, 0, 10, 10, 10]),
                  try! ByteImage(width: 2, height: 1, channels: 3, pixels: [0, 0, 0, 0, 0, 0])]

    func testExampleScriptScoresColourfulness() throws {
        let scorer = try ExternalScorer(name: "col", command: "python3 \(repoRoot)/scripts/example_scorer.py")
        XCTAssertEqual(scorer.descriptor.version, "1")
        XCTAssertEqual(scorer.descriptor.settings["reported_name"], "example-colourfulness")
        let scores = try scorer.score(images: images, prompt: "a red dot")
        XCTAssertEqual(scores[0], 0.5, accuracy: 1e-9)    // (255 + 0) / 255 / 2 pixels
        XCTAssertEqual(scores[1], 0, accuracy: 1e-9)
        XCTAssertEqual(try scorer.score(images: [images[0]], prompt: "again").count, 1)
    }

    func failure(_ command: String, timeout: Double = 600, score: Bool = true) -> String {
        do {
            let s = try ExternalScorer(name: "x", command: command, timeout: timeout, helloTimeout: 5)
            if score { _ = try s.score(images: images, prompt: "p") }
            return "no error"
        } catch { return "\(error)" }
    }

    let hello = #"read l; echo '{"version":"2"}'; "#

    func testErrorsNameWhatWentWrong() {
        XCTAssertTrue(failure(hello + "read l; echo 'not json'").contains("not a JSON object"))
        XCTAssertTrue(failure(hello + #"read l; echo '{"id":1,"scores":[1]}'"#).contains("1 scores for 2 images"))
        XCTAssertTrue(failure(hello + #"read l; echo '{"id":1,"scores":[1,"a"]}'"#).contains("is not a finite number"))
        XCTAssertTrue(failure(hello + #"read l; echo '{"id":1,"error":"model not found"}'"#).contains("model not found"))
        let died = failure(hello + "read l; echo 'CUDA out of memory' >&2; exit 3")
        XCTAssertTrue(died.contains("exited (status 3)") && died.contains("CUDA out of memory"), died)
        let slow = failure(hello + "read l; sleep 30", timeout: 1)
        XCTAssertTrue(slow.contains("no answer within 1 s"), slow)
        XCTAssertTrue(failure("exit 0", score: false).contains("x"))
    }

    /// `COMMAND,timeout=S` sets the limit; other trailing text stays part of the command.
    func testSpecArgument() throws {
        let slow = "read l; echo '{}'; read l; sleep 30"
        XCTAssertThrowsError(try ExternalScorer(name: "s", argument: slow + ",timeout=1").score(images: images, prompt: "p")) {
            XCTAssertTrue("\($0)".contains("no answer within 1 s"), "\($0)")
        }
        let s = try ExternalScorer(name: "e", argument: #"read l; echo '{"version":"3"}'; echo a,b=c >&2"#)
        XCTAssertEqual(s.command, #"read l; echo '{"version":"3"}'; echo a,b=c >&2"#)
        XCTAssertEqual(s.descriptor.settings["timeout_s"], "600.0")
        XCTAssertThrowsError(try ExternalScorer(name: "s", argument: "true,timeout=soon")) {
            XCTAssertTrue("\($0)".contains("timeout=soon must be a positive number"), "\($0)")
        }
    }
}
