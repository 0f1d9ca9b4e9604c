import Foundation
import XCTest
import IO
import Tensors
import TestSupport
@testable import UNet

/// `--mixed-precision bf16`: the conv / linear weights stored once in bf16, GEMMs with fp32 sums, LoRA and
/// gradients fp32. Measures the error of the tiny U-Nets' output and LoRA gradients against the same model in fp32
/// and against the diffusers fixtures (exact float64 answers), on every bf16 path this CPU can run: the default
/// (here AVX2: weights widened to fp32 for sgemm, activations exact) and `emulated` (the AVX512-BF16 code as
/// portable C: activations rounded to bf16 for the products too, as on CPUs with AVX512-BF16).
///
/// Errors are relative L2 norms, ‖x − ref‖ / ‖ref‖, over the whole tensor (gradients: over all LoRA parameters,
/// and the worst single A or B matrix). Measured (Zen 3, 2025-11; both fixtures, LoRA scale 1, adapters off):
///                                   widened (avx2)        emulated AVX512-BF16
///   output vs fp32                  2.3e-3 … 3.5e-3       3.9e-3 … 5.5e-3
///   output vs diffusers (fp64)      same as vs fp32 (fp32 itself is within 1e-6)
///   LoRA grads vs fp32, all         3.6e-3 … 4.1e-3       5.6e-3 … 7.0e-3
///   LoRA grads, worst matrix        1.2e-2 … 1.4e-2       1.9e-2 … 2.6e-2
///   d loss / d sample vs fp32       3.2e-3 … 3.7e-3       5.0e-3 … 6.6e-3
/// bf16 keeps 8 significant bits (unit roundoff 2⁻⁹ ≈ 2.0e-3), so these are one to three roundings of the weights
/// (and activations) propagated through the network. The asserted bounds below are the worst measured value × ~2.
final class MixedPrecisionTests: XCTestCase {
    // Asserted bounds (see the table above; worst measured × ~2).
    static let outputTolerance = 1.0e-2
    static let gradTolerance = 1.5e-2
    static let worstGradMatrixTolerance = 5.0e-2

    override func tearDown() {
        BF16.setPath(nil)
        super.tearDown()
    }

    /// The default path and the emulated AVX512-BF16 one (and the real one, when the CPU has it).
    var paths: [BF16.Path] {
        BF16.setPath(nil)
        var p = [BF16.path]
        for q in [BF16.Path.avx512, .emulated] where !p.contains(q) && BF16.setPath(q) { p.append(q) }
        BF16.setPath(nil)
        return p
    }

    struct Fixture {
        let folder: String
        let io: SafeTensorsFile
        let b, h, w, s: Int
        let timesteps: [Float]
        let sample: Buffer, context: Buffer
    }

    func fixture(_ name: String) throws -> Fixture {
        let folder = "\(unetFixtures)/unet_\(name)"
        let io = try SafeTensorsFile(path: folder + "/io.safetensors")
        let shape = io.info("sample")!.shape
        return Fixture(folder: folder, io: io, b: shape[0], h: shape[2], w: shape[3],
                       s: io.info("encoder_hidden_states")!.shape[1], timesteps: try io.floats("timestep"),
                       sample: Buffer(try io.floats("sample")), context: Buffer(try io.floats("encoder_hidden_states")))
    }

    func model(_ f: Fixture, _ precision: MixedPrecision) throws -> UNetModel {
        let weights = try LoRAFile.read(f.folder + "/lora_diffusers.safetensors")
        let m = try UNetModel.load(folder: ComponentFolder(path: f.folder), lora: (weights.rank, weights.alpha), precision: precision)
        XCTAssertEqual(try m.lora!.assign(weights, source: "lora_diffusers"), [])
        return m
    }

    func forward(_ m: UNetModel, _ f: Fixture, scale: Float?, training: Bool = false) throws -> [Float] {
        try m.forward(sample: f.sample, timesteps: f.timesteps, context: f.context, batch: f.b, height: f.h, width: f.w,
                      contextLength: f.s, loraScale: scale, training: training).array
    }

    /// ‖x − ref‖ / ‖ref‖
    func relativeError(_ x: UnsafeBufferPointer<Float>, _ ref: UnsafeBufferPointer<Float>) -> Double {
        precondition(x.count == ref.count)
        var num = 0.0, den = 0.0
        for i in 0..<x.count {
            let d = Double(x[i]) - Double(ref[i])
            num += d * d
            den += Double(ref[i]) * Double(ref[i])
        }
        return (num / max(den, 1e-300)).squareRoot()
    }

    func relativeError(_ x: [Float], _ ref: [Float]) -> Double {
        x.withUnsafeBufferPointer { a in ref.withUnsafeBufferPointer { b in relativeError(a, b) } }
    }

    // MARK: - Storage

    /// Every conv / linear weight is held once, in bf16, with the bits torch's `.to(torch.bfloat16)` gives (round to
    /// nearest even; a BF16 file's bits are taken as they are); the fp32 buffer holds only norms and biases.
    func testBF16StorageHalvesTheWeightBytes() throws {
        let f = try fixture("conv")
        let fp32 = try model(f, .no), bf16 = try model(f, .bf16)
        XCTAssertEqual(bf16.precision, .bf16)
        let matrices = fp32.weights.table.entries.filter { $0.shape.count >= 2 }
        let matrixCount = matrices.reduce(0) { $0 + $1.count }
        XCTAssertEqual(bf16.weights.table.count, fp32.weights.table.count)
        XCTAssertEqual(bf16.weights.table.bf16Count, matrixCount)
        XCTAssertEqual(bf16.weights.storage.count, fp32.weights.table.count - matrixCount, "no fp32 copy of the GEMM weights")
        XCTAssertEqual(bf16.weights.byteCount, 2 * matrixCount + 4 * (fp32.weights.table.count - matrixCount))
        XCTAssertEqual(fp32.weights.byteCount, 4 * fp32.weights.table.count)
        let ratio = Double(bf16.weights.byteCount) / Double(fp32.weights.byteCount)
        print("tiny U-Net weights: fp32 \(fp32.weights.byteCount) B, bf16 \(bf16.weights.byteCount) B (ratio \(ratio))")
        XCTAssertLessThan(ratio, 0.51)

        // The same weights written as a BF16 file (SafeTensorsEntry rounds as torch) load to the same bits.
        let dir = try temporaryDirectory(self)
        try SafeTensors.write(fp32.weights.table.entries.map { e in
            SafeTensorsEntry(name: e.key, shape: e.shape, floats: fp32.weights.floats(e.key)!, as: e.shape.count >= 2 ? .BF16 : .F32)
        }, to: dir + "/diffusion_pytorch_model.safetensors")
        try FileManager.default.copyItem(atPath: f.folder + "/config.json", toPath: dir + "/config.json")
        let fromBF16File = try UNetModel.load(folder: ComponentFolder(path: dir), precision: .bf16)
        for e in matrices {
            let bits = bf16.weights.bf16Bits(e.key)!
            XCTAssertEqual(Array(bits), BF16.bits(fp32.weights.floats(e.key)!), e.key)
            XCTAssertEqual(Array(fromBF16File.weights.bf16Bits(e.key)!), Array(bits), e.key)
            XCTAssertNil(bf16.weights[e.key], "no fp32 view of a bf16 weight")
        }
        for e in fp32.weights.table.entries where e.shape.count < 2 {
            XCTAssertEqual(bf16.weights.floats(e.key)!, fp32.weights.floats(e.key)!, "\(e.key) stays fp32")
        }
    }

    /// Stable Diffusion 1.5's U-Net (859.5M parameters): 3.44 GB of fp32 weights, 1.72 GB in bf16. (Built without
    /// loading: the storage is allocated but never touched.)
    func testSD15WeightBytes() throws {
        var c = UNet2DConditionConfig()
        c.crossAttentionDim = .int(768)
        let m = UNetModel(spec: try UNetSpec(c), precision: .bf16)
        let t = m.weights.table
        print("SD1.5 U-Net: \(t.count) parameters, \(t.bf16Count) in bf16; fp32 \(4 * t.count) B, bf16 \(m.weights.byteCount) B")
        XCTAssertEqual(t.count, 859_520_964)
        XCTAssertLessThan(t.fp32Count, t.count / 1000, "norms and biases: under 0.1% of the parameters")
        XCTAssertLessThan(Double(m.weights.byteCount), 0.5005 * Double(4 * t.count))
    }

    // MARK: - Accuracy

    func testOutputAccuracy() throws {
        for name in ["conv", "linear"] {
            let f = try fixture(name)
            let fp32 = try model(f, .no)
            let ref1 = try forward(fp32, f, scale: 1), ref0 = try forward(fp32, f, scale: nil)
            let exact1 = try f.io.floats("output_lora_1"), exact0 = try f.io.floats("output")
            XCTAssertLessThan(relativeError(ref1, exact1), 1e-5, "fp32 itself")
            let bf16 = try model(f, .bf16)
            for path in paths {
                XCTAssertTrue(BF16.setPath(path))
                let out1 = try forward(bf16, f, scale: 1), out0 = try forward(bf16, f, scale: nil)
                let e = [relativeError(out1, ref1), relativeError(out0, ref0), relativeError(out1, exact1), relativeError(out0, exact0)]
                print(String(format: "bf16 %@ %@ output: vs fp32 %.2e (LoRA 1) %.2e (off); vs diffusers %.2e / %.2e",
                             "\(path)", name, e[0], e[1], e[2], e[3]))
                for (x, label) in zip(e, ["vs fp32, LoRA 1", "vs fp32, adapters off", "vs diffusers, LoRA 1", "vs diffusers, off"]) {
                    XCTAssertLessThan(x, Self.outputTolerance, "\(name) \(path) \(label)")
                    XCTAssertGreaterThan(x, 1e-5, "\(name) \(path) \(label): bf16 weights must change the result")
                }
            }
        }
    }

    func testLoRAGradientAccuracy() throws {
        for name in ["conv", "linear"] {
            let f = try fixture(name)
            let lossWeights = Buffer(try f.io.floats("loss_weights"))
            func gradients(_ m: UNetModel) throws -> (lora: [Float], sample: [Float]) {
                _ = try forward(m, f, scale: 1, training: true)
                m.lora!.zeroGrad()
                let ds = m.backward(lossWeights, wantSampleGradient: true)!
                return (m.lora!.grads.array, ds.array)
            }
            let fp32 = try model(f, .no)
            let ref = try gradients(fp32)
            // The diffusers gradients in the LoRA buffer's layout.
            var exact = [Float](repeating: 0, count: ref.lora.count)
            for t in fp32.lora!.targets {
                let a = try f.io.floats("grad.\(t.module).lora_A.weight"), b = try f.io.floats("grad.\(t.module).lora_B.weight")
                exact.replaceSubrange(t.offsetA..<(t.offsetA + a.count), with: a)
                exact.replaceSubrange(t.offsetB..<(t.offsetB + b.count), with: b)
            }
            XCTAssertLessThan(relativeError(ref.lora, exact), 1e-4, "fp32 itself")
            let bf16 = try model(f, .bf16)
            for path in paths {
                XCTAssertTrue(BF16.setPath(path))
                let g = try gradients(bf16)
                var worst = (0.0, "")
                for t in bf16.lora!.targets {
                    for (suffix, offset, count) in [("A", t.offsetA, bf16.lora!.rank * t.inFeatures), ("B", t.offsetB, t.outFeatures * bf16.lora!.rank)] {
                        let e = relativeError(Array(g.lora[offset..<(offset + count)]), Array(ref.lora[offset..<(offset + count)]))
                        if e > worst.0 { worst = (e, "\(t.module).\(suffix)") }
                    }
                }
                let all = relativeError(g.lora, ref.lora), allExact = relativeError(g.lora, exact)
                let sample = relativeError(g.sample, ref.sample)
                let sampleExact = relativeError(g.sample, try f.io.floats("grad_sample"))
                print(String(format: "bf16 %@ %@ LoRA grads: vs fp32 %.2e (worst matrix %.2e, %@), vs diffusers %.2e; d/d sample vs fp32 %.2e, vs diffusers %.2e",
                             "\(path)", name, all, worst.0, worst.1, allExact, sample, sampleExact))
                XCTAssertLessThan(all, Self.gradTolerance, "\(name) \(path) LoRA grads vs fp32")
                XCTAssertLessThan(allExact, Self.gradTolerance, "\(name) \(path) LoRA grads vs diffusers")
                XCTAssertLessThan(worst.0, Self.worstGradMatrixTolerance, "\(name) \(path) worst LoRA matrix \(worst.1)")
                XCTAssertLessThan(sample, Self.outputTolerance, "\(name) \(path) d loss / d sample vs fp32")
                XCTAssertLessThan(sampleExact, Self.outputTolerance, "\(name) \(path) d loss / d sample vs diffusers")
                XCTAssertGreaterThan(all, 1e-5, "\(name) \(path): bf16 weights must change the gradients")
            }
        }
    }
}
