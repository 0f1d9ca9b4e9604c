// `hgdpo probe scheduler` as a user runs it: SD 1.5's scheduler config (a PNDMScheduler file) read into
// DPM-Solver++, 50 steps, on the model outputs of Tests/SchedulersTests/Fixtures/trajectory_dpmpp2m_sd15.safetensors
// (made by Tests/parity/make_scheduler_fixtures.py); and the errors a user can cause.
import Foundation
import IO
import TestSupport
import XCTest

final class ProbeSchedulerTests: XCTestCase {
    static let sd15Config = """
        {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
         "steps_offset": 1, "trained_betas": null, "clip_sample": false}
        """

    /// A pipeline folder holding only scheduler/scheduler_config.json, and IN made from the fixture's correctly rounded
    /// run (its model outputs depend on the trajectory: 0.9·N(0,1) + 0.1·x).
    func setUpFiles() throws -> (model: String, input: String, dir: String, fixture: SafeTensorsFile) {
        let dir = try temporaryDirectory(self)
        let model = dir + "/model", sched = model + "/scheduler"
        try FileManager.default.createDirectory(atPath: sched, withIntermediateDirectories: true)
        try Data(Self.sd15Config.utf8).write(to: URL(fileURLWithPath: sched + "/scheduler_config.json"))
        try Data(#"{"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"]}"#.utf8)
            .write(to: URL(fileURLWithPath: model + "/model_index.json"))
        let f = try SafeTensorsFile(path: repoRoot + "/Tests/SchedulersTests/Fixtures/trajectory_dpmpp2m_sd15.safetensors")
        let input = dir + "/in.safetensors"
        try SafeTensors.write([
            SafeTensorsEntry(name: "sample", shape: f.info("sample")!.shape, floats: try f.floats("sample")),
            SafeTensorsEntry(name: "model_outputs", shape: f.info("model_outputs")!.shape,
                             floats: try f.floats(f.info("model_outputs_cr") != nil ? "model_outputs_cr" : "model_outputs")),
        ], to: input)
        return (model, input, dir, f)
    }

    func testDPMSolverPlusPlusFromSD15Config() throws {
        let (model, input, dir, f) = try setUpFiles()
        let out = dir + "/out.safetensors"
        let r = try hgdpo(["probe", "scheduler", "--model", model, "--scheduler", "dpmsolver++", "--steps", "50",
                           "--input", input, "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        let o = try SafeTensorsFile(path: out)
        XCTAssertEqual(o.metadata["scheduler"], "DPMSolverMultistepScheduler")
        XCTAssertEqual(try o.floats("timesteps").map(Double.init), try f.doubles("timesteps"))
        XCTAssertEqual(o.info("trajectory")?.shape, [51, 2, 4, 8, 8])
        // Bit for bit the diffusers loop with correctly rounded sqrt/log/exp (SchedulersTests compares with diffusers as is).
        XCTAssertEqual(try o.floats("trajectory"), try f.floats("trajectory_cr"))
        XCTAssertEqual(try o.floats("model_inputs"), Array(try f.floats("trajectory_cr").prefix(50 * 512)))  // identity
        assertClose(try o.floats("sigmas"), try f.floats("sigmas"), rtol: 2e-7, atol: 0, label: "sigmas")
    }

    func testUserErrorsExitWithTwoAndNameTheProblem() throws {
        let (model, input, dir, _) = try setUpFiles()
        let out = dir + "/out.safetensors"
        func run(_ extra: [String], steps: String = "50") throws -> ProcessResult {
            try hgdpo(["probe", "scheduler", "--model", model, "--steps", steps, "--input", input, "--out", out] + extra)
        }
        // The config's own class (PNDM) is not implemented: say so and list the choices.
        var r = try run([])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("PNDMScheduler") && r.stderr.contains("--scheduler"), r.stderr)
        // 50 model outputs for 20 steps.
        r = try run(["--scheduler", "euler"], steps: "20")
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("model_outputs") && r.stderr.contains("[20, 2, 4, 8, 8]"), r.stderr)
        // DDPM adds noise at every step but the last: IN has none.
        r = try run(["--scheduler", "ddpm"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("'noise'") && r.stderr.contains("in.safetensors"), r.stderr)
        // dpmsolver (noise prediction) needs final_sigmas_type sigma_min, as in diffusers.
        r = try run(["--scheduler", "dpmsolver"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("scheduler_config.json") && r.stderr.contains("final_sigmas_type"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }
}
