// `hgdpo report table`: evaluations side by side as the paper's ablation tables. The numbers come from results.json
// unchanged (written here by hand, so every cell is known), rows that are not comparable and bad options are refused.
import Foundation
import TestSupport
import XCTest
@testable import Evaluation

final class AblationTableTests: XCTestCase {
    /// A results.json as hgdpo eval writes it (every field docs/evaluation.md lists), with the given numbers.
    func writeResults(_ dir: String, lora: String, winRate: Double, ci: (Double, Double), wtl: (Int, Int, Int), hDegrees: Double,
                      hPlain: Double, s: Double, v: Double, drift: Double, baseline: String = "models/toy", steps: Int = 20,
                      scorers: [String] = ["toy"]) throws -> String {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let scorer: [String: Any] = [
            "name": "toy", "descriptor": ["name": "toy", "kind": "toy-human", "version": "1", "settings": [String: String]()],
            "win_rate": winRate, "ci_low": ci.0, "ci_high": ci.1, "wins": wtl.0, "ties": wtl.1, "losses": wtl.2,
            "pairs": wtl.0 + wtl.1 + wtl.2, "mean_a": 7.5, "mean_baseline": 7.25, "prompt_win_rate": winRate,
        ]
        let json: [String: Any] = [
            "format": "hgdpo-eval/1",
            "a": ["model": "models/toy", "lora": lora, "lora_scale": 1, "lan": false],
            "baseline": ["model": baseline, "lan": false],
            "sampling": ["steps": steps, "guidance": 1, "scheduler": "ddim", "height": 32, "width": 32, "seed": 1000,
                         "images_per_prompt": 4, "negative_prompt": ""],
            "prompts": "heldout.txt", "prompt_count": 32, "pairs": 128, "tie_tolerance": 0,
            "bootstrap": ["resamples": 2000, "seed": 0, "level": 0.95, "unit": "prompt"],
            "scorers": Dictionary(uniqueKeysWithValues: scorers.map { ($0, scorer) }), "scorer_order": scorers,
            "color_shift": ["h": 1.0, "h_plain": hPlain, "s": s, "v": v, "h_degrees": hDegrees, "hue_mean": "circular"],
            "color": [String: Any](),
            "latent_stats": ["images": 128, "channels": 3, "mean_distance": [drift, drift, drift], "std_distance": [0.5, 0.5, 0.5],
                             "mean_distance_avg": drift, "std_distance_avg": 0.5, "mean_a": [0, 0, 0], "mean_baseline": [0, 0, 0],
                             "std_a": [1, 1, 1], "std_baseline": [1, 1, 1]],
            "per_prompt": [Any](),
        ]
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: dir + "/results.json"))
        return dir
    }

    func twoRuns(_ dir: String) throws -> (String, String) {
        (try writeResults(dir + "/n2", lora: "n2.safetensors", winRate: 0.5234, ci: (0.461, 0.582), wtl: (27, 80, 21), hDegrees: -0.36,
                          hPlain: 6.59, s: -4.5, v: 1.32, drift: 0.0364),
         try writeResults(dir + "/n20", lora: "n20.safetensors", winRate: 0.547, ci: (0.492, 0.594), wtl: (30, 80, 18), hDegrees: 8.11,
                          hPlain: 24.93, s: 12.52, v: -3.43, drift: 0.3049))
    }

    func testWinRateLayoutIsTable3Shaped() throws {
        let dir = try temporaryDirectory(self)
        let (n2, n20) = try twoRuns(dir)
        let md = try AblationTable.markdown(try AblationTable.read([("N-2", n2), ("N-20", n20)]), layout: .winrate, title: "Pool size")
        let lines = md.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        XCTAssertEqual(lines[0], "### Pool size")
        XCTAssertEqual(lines[2], "| Configuration | toy win rate % [95 % CI] | toy wins / ties / losses | hue shift (circular, °) | latent mean |Δμ| |"
            .replacingOccurrences(of: "|Δμ|", with: "\\|Δμ\\|"))
        XCTAssertEqual(lines[4], "| N-2 | 52.3 [46.1, 58.2] | 27 / 80 / 21 | -0.36 | 0.0364 |")
        XCTAssertEqual(lines[5], "| N-20 | 54.7 [49.2, 59.4] | 30 / 80 / 18 | +8.11 | 0.305 |")
        XCTAssertTrue(md.contains("32 prompts × 4 images = 128 pairs"), md)
        XCTAssertTrue(md.contains("2000 resamples"), md)
    }

    func testColorLayoutIsTable2Shaped() throws {
        let dir = try temporaryDirectory(self)
        let (n2, n20) = try twoRuns(dir)
        let md = try AblationTable.markdown(try AblationTable.read([("N-2", n2), ("N-20", n20)]), layout: .color)
        XCTAssertTrue(md.hasPrefix("|  | N-2 | N-20 |\n| :--- | :---: | :---: |\n"), md)
        XCTAssertTrue(md.contains("| Hue (%, plain mean as the paper) | +6.59 | +24.93 |"), md)
        XCTAssertTrue(md.contains("| Hue (circular mean, ° turn) | -0.36 | +8.11 |"), md)
        XCTAssertTrue(md.contains("| Saturation (%) | -4.50 | +12.52 |"), md)
        XCTAssertTrue(md.contains("| Value (%) | +1.32 | -3.43 |"), md)
        XCTAssertTrue(md.contains("| latent mean \\|Δμ\\| | 0.0364 | 0.305 |"), md)
    }

    func testRowsMustBeComparable() throws {
        let dir = try temporaryDirectory(self)
        let (n2, _) = try twoRuns(dir)
        let cases: [(String, String)] = [
            (try writeResults(dir + "/b", lora: "x", winRate: 0.5, ci: (0.5, 0.5), wtl: (0, 1, 0), hDegrees: 0, hPlain: 0, s: 0, v: 0,
                              drift: 0, baseline: "models/other"), "baseline models/other (no LoRA) ≠ models/toy (no LoRA)"),
            (try writeResults(dir + "/s", lora: "x", winRate: 0.5, ci: (0.5, 0.5), wtl: (0, 1, 0), hDegrees: 0, hPlain: 0, s: 0, v: 0,
                              drift: 0, steps: 50), "sampling settings"),
            (try writeResults(dir + "/c", lora: "x", winRate: 0.5, ci: (0.5, 0.5), wtl: (0, 1, 0), hDegrees: 0, hPlain: 0, s: 0, v: 0,
                              drift: 0, scorers: ["pick"]), "scorers pick ≠ toy"),
        ]
        for (other, message) in cases {
            XCTAssertThrowsError(try AblationTable.markdown(try AblationTable.read([("N-2", n2), ("X", other)]), layout: .winrate)) {
                XCTAssertTrue("\($0)".contains("\(other) (X) is not comparable with \(n2) (N-2)") && "\($0)".contains(message), "\($0)")
            }
        }
        XCTAssertThrowsError(try AblationTable.read([("N-2", n2), ("N-2", n2)])) {
            XCTAssertTrue("\($0)".contains("the label 'N-2' is given twice"), "\($0)")
        }
        XCTAssertThrowsError(try AblationTable.read([("missing", dir + "/nothing")])) {
            XCTAssertTrue("\($0)".contains("nothing: cannot read (no results.json of hgdpo eval)"), "\($0)")
        }
    }

    /// The command: prints the table, writes --out, refuses bad options with exit code 2 naming them.
    func testCommand() throws {
        let dir = try temporaryDirectory(self)
        let (n2, n20) = try twoRuns(dir)
        var r = try hgdpo(["report", "table", "--layout", "color", "--eval", "N-2=" + n2, "--eval", "N-20=" + n20, "--out", dir + "/t.md"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("| Saturation (%) | -4.50 | +12.52 |"), r.stdout)
        XCTAssertEqual(try String(contentsOfFile: dir + "/t.md", encoding: .utf8), r.stdout)
        for (args, message) in [(["--eval", n2], "invalid value '\(n2)' for '--eval': expected LABEL=EVAL_DIR"),
                                (["--eval", "=" + n2], "expected LABEL=EVAL_DIR"),
                                (["--eval", "N-2="], "expected LABEL=EVAL_DIR"),
                                ([String](), "give at least one --eval"),
                                (["--eval", "N-2=" + n2, "--layout", "rows"], "'--layout'"),
                                (["--eval", "N-2=" + dir], "results.json: cannot read"),
                                (["--eval", "N-2=" + n2, "--out", dir + "/no/such/dir/t.md"], "cannot write the table")] {
            r = try hgdpo(["report", "table"] + args)
            XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(message), "\(args): \(r.stderr)")
        }
    }
}
