// `hgdpo probe vae-encode` / `vae-decode` run as a user would, on the `vae_tiny` fixture.
import Foundation
import XCTest
import IO
import TestSupport

final class ProbeVAETests: XCTestCase {
    func maxError(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) } }

    func testEncodeAndDecodeProbes() throws {
        let dir = try temporaryDirectory(self)
        let io = try SafeTensorsFile(path: vaeFixture + "/io.safetensors")
        let input = dir + "/in.safetensors"
        try SafeTensors.write([
            SafeTensorsEntry(name: "sample", shape: io.info("sample")!.shape, floats: try io.floats("sample")),
            SafeTensorsEntry(name: "latent", shape: io.info("latent")!.shape, floats: try io.floats("latent"), as: .F16),
        ], to: input)

        let enc = try hgdpo(["probe", "vae-encode", "--model", vaeFixture, "--input", input, "--out", dir + "/latent.safetensors",
                             "--vae-tile", "auto", "--threads", "1"])
        XCTAssertEqual(enc.status, 0, enc.stderr)
        let latent = try SafeTensorsFile(path: dir + "/latent.safetensors")
        XCTAssertEqual(latent.info("latent")?.shape, [2, 4, 16, 12])
        XCTAssertLessThan(maxError(try latent.floats("latent"), try io.floats("latent_mean_tile32")), 1e-4)

        // Decode reads `latent` of any float dtype (here f16): compare with a decode of the same f16-rounded values.
        let dec = try hgdpo(["probe", "vae-decode", "--model", vaeFixture, "--input", input, "--out", dir + "/sample.safetensors"])
        XCTAssertEqual(dec.status, 0, dec.stderr)
        let decoded = try SafeTensorsFile(path: dir + "/sample.safetensors")
        XCTAssertEqual(decoded.info("sample")?.shape, [2, 3, 64, 48])
        XCTAssertLessThan(maxError(try decoded.floats("sample"), try io.floats("decoded")), 2e-2, "f16 input")

        let sampled = try hgdpo(["probe", "vae-encode", "--model", vaeFixture, "--input", input, "--out", dir + "/s.safetensors",
                                 "--mode", "sample", "--seed", "7"])
        XCTAssertEqual(sampled.status, 0, sampled.stderr)
        let s = try SafeTensorsFile(path: dir + "/s.safetensors").floats("latent")
        XCTAssertGreaterThan(maxError(s, try io.floats("latent_mean")), 1e-2, "a draw differs from the mean")
    }

    func testProbeErrorsExitTwoAndNameTheProblem() throws {
        let dir = try temporaryDirectory(self)
        let input = dir + "/in.safetensors"
        try SafeTensors.write([SafeTensorsEntry(name: "images", shape: [1, 3, 8, 8], floats: [Float](repeating: 0, count: 192))],
                              to: input)
        let missing = try hgdpo(["probe", "vae-encode", "--model", vaeFixture, "--input", input, "--out", dir + "/o.safetensors"])
        XCTAssertEqual(missing.status, 2)
        XCTAssertTrue(missing.stderr.contains("missing tensor 'sample'"), missing.stderr)

        try SafeTensors.write([SafeTensorsEntry(name: "sample", shape: [1, 3, 8, 8], floats: [Float](repeating: 0, count: 192)),
                               SafeTensorsEntry(name: "latent", shape: [1, 4, 2, 2], floats: [Float](repeating: 0, count: 16))],
                              to: input)
        let tile = try hgdpo(["probe", "vae-encode", "--model", vaeFixture, "--input", input, "--out", dir + "/o.safetensors",
                              "--vae-tile", "24"])
        XCTAssertEqual(tile.status, 2)
        XCTAssertTrue(tile.stderr.contains("multiple of 16"), tile.stderr)

        let notVAE = try hgdpo(["probe", "vae-decode", "--model", repoRoot + "/Tests/UNetTests/Fixtures/unet_conv",
                                "--input", input, "--out", dir + "/o.safetensors"])
        XCTAssertEqual(notVAE.status, 2)
        XCTAssertTrue(notVAE.stderr.contains("_class_name"), notVAE.stderr)
    }
}
