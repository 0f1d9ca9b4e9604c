// Tests for Sources/IO/SafeTensors.swift and Sources/Tensors/DType.swift.
// Fixtures come from Tests/parity/make_io_fixtures.py (torch + safetensors + diffusers); the closed forms used there
// are recomputed here.
import Foundation
import XCTest
@testable import IO
import Tensors
import TestSupport

final class SafeTensorsTests: XCTestCase {

    // MARK: - Helpers

    var fixtures: String { Bundle.module.path(forResource: "Fixtures", ofType: nil)! }

    /// A file made of an explicit header length, header text and data bytes.
    func makeFile(_ dir: String, _ name: String, header: String, data: [UInt8] = [],
                  headerLength: UInt64? = nil) -> String {
        var bytes: [UInt8] = []
        let h = Array(header.utf8)
        withUnsafeBytes(of: (headerLength ?? UInt64(h.count)).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: h)
        bytes.append(contentsOf: data)
        let path = dir + "/" + name
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        return path
    }

    func makeFile(_ dir: String, _ name: String, bytes: [UInt8]) -> String {
        let path = dir + "/" + name
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        return path
    }

    /// Opening `path` must fail with an error `matches` accepts, whose message starts with the path.
    func assertOpenFails(_ path: String, file: StaticString = #filePath, line: UInt = #line,
                         _ matches: (SafeTensorsError) -> Bool) {
        do {
            _ = try SafeTensorsFile(path: path)
            XCTFail("\(path) opened but should not have", file: file, line: line)
        } catch let e as SafeTensorsError {
            XCTAssertTrue(matches(e), "unexpected error: \(e)", file: file, line: line)
            XCTAssertTrue(e.description.hasPrefix(path + ": "), "message does not name the file: \(e)",
                          file: file, line: line)
        } catch {
            XCTFail("not a SafeTensorsError: \(error)", file: file, line: line)
        }
    }

    func assertThrows<T>(_ body: @autoclosure () throws -> T, file: StaticString = #filePath, line: UInt = #line,
                         _ matches: (SafeTensorsError) -> Bool) {
        do {
            _ = try body()
            XCTFail("did not throw", file: file, line: line)
        } catch let e as SafeTensorsError {
            XCTAssertTrue(matches(e), "unexpected error: \(e)", file: file, line: line)
        } catch {
            XCTFail("not a SafeTensorsError: \(error)", file: file, line: line)
        }
    }

    func bytes(of floats: [Float]) -> [UInt8] { floats.withUnsafeBytes { [UInt8]($0) } }

    func fileBytes(_ path: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }

    // MARK: - DType

    func testDTypeNamesAndSizes() {
        XCTAssertEqual(DType.allCases.count, 13)
        let sizes: [DType: Int] = [.F64: 8, .F32: 4, .F16: 2, .BF16: 2, .I64: 8, .I32: 4, .I16: 2, .I8: 1, .U8: 1,
                                   .BOOL: 1, .U16: 2, .U32: 4, .U64: 8]
        for d in DType.allCases { XCTAssertEqual(d.byteSize, sizes[d], "\(d)") }
        XCTAssertEqual(DType(rawValue: "BF16"), .BF16)
        XCTAssertNil(DType(rawValue: "bf16"))
        // Rust Dtype declaration order, descending, is the writer's order.
        let sorted = DType.allCases.sorted { $0.alignmentOrder > $1.alignmentOrder }.map(\.rawValue)
        XCTAssertEqual(sorted, ["U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "I8", "U8", "BOOL"])
    }

    func testBFloat16Rounding() {
        XCTAssertEqual(bfloat16Bits(1), 0x3F80)
        XCTAssertEqual(bfloat16Bits(1 + 0x1p-8), 0x3F80)            // tie -> even (down)
        XCTAssertEqual(bfloat16Bits(1 + 3 * 0x1p-8), 0x3F82)        // tie -> even (up)
        XCTAssertEqual(bfloat16Bits(1 + 0x1p-8 + 0x1p-20), 0x3F81)  // above the tie
        XCTAssertEqual(bfloat16Bits(-0.0), 0x8000)
        XCTAssertEqual(bfloat16Bits(.infinity), 0x7F80)
        XCTAssertEqual(bfloat16Bits(-.infinity), 0xFF80)
        XCTAssertEqual(bfloat16Bits(.greatestFiniteMagnitude), 0x7F80)   // overflows to inf, as torch
        XCTAssertEqual(bfloat16Bits(Float(bitPattern: 0x0001_16C2)), 0x0001)   // subnormals are kept
        XCTAssertTrue(floatFromBFloat16Bits(bfloat16Bits(.nan)).isNaN)
        XCTAssertTrue(floatFromBFloat16Bits(bfloat16Bits(-.nan)).isNaN)
        XCTAssertTrue(floatFromBFloat16Bits(bfloat16Bits(.signalingNaN)).isNaN)
        // Every BF16 value survives BF16 -> F32 -> BF16.
        for bits in 0...UInt16.max {
            let f = floatFromBFloat16Bits(bits)
            if f.isNaN { XCTAssertTrue(floatFromBFloat16Bits(bfloat16Bits(f)).isNaN); continue }
            if bfloat16Bits(f) != bits { XCTFail("BF16 \(bits) -> \(f) -> \(bfloat16Bits(f))"); break }
        }
    }

    func testFloat16Rounding() {
        XCTAssertEqual(float16Bits(65504), 0x7BFF)
        XCTAssertEqual(float16Bits(65519), 0x7BFF)
        XCTAssertEqual(float16Bits(65520), 0x7C00)         // rounds to inf
        XCTAssertEqual(float16Bits(0x1p-24), 0x0001)       // smallest subnormal
        XCTAssertEqual(float16Bits(0x1p-25), 0x0000)       // tie -> even (0)
        XCTAssertEqual(float16Bits(3 * 0x1p-25), 0x0002)   // tie -> even (2)
        XCTAssertEqual(float16Bits(-0.0), 0x8000)
        XCTAssertEqual(float16Bits(.nan), 0x7E00)
        XCTAssertEqual(float16Bits(-.nan), 0xFE00)
        for bits in 0...UInt16.max {
            let f = floatFromFloat16Bits(bits)
            let reference = Float(Float16(bitPattern: bits))   // Swift's own conversion is the oracle
            if f.bitPattern != reference.bitPattern && !(f.isNaN && reference.isNaN) {
                XCTFail("F16 0x\(String(bits, radix: 16)) -> \(f), Float16 says \(reference)"); break
            }
            if f.isNaN { XCTAssertTrue(floatFromFloat16Bits(float16Bits(f)).isNaN); continue }
            if float16Bits(f) != bits { XCTFail("F16 \(bits) -> \(f) -> \(float16Bits(f))"); break }
        }
        // The branch-free F32 -> F16 against Float16(x): every F16 value ± 1 ulp of F32 and midpoints, then
        // random bit patterns over the whole F32 range.
        var inputs: [Float] = []
        for bits in 0...UInt16.max {
            let f = floatFromFloat16Bits(bits)
            guard f.isFinite else { continue }
            let next = floatFromFloat16Bits(bits &+ 1)
            inputs += [f, f.nextUp, f.nextDown]
            if next.isFinite { let mid = (f + next) / 2; inputs += [mid, mid.nextUp, mid.nextDown] }
        }
        var rng = SplitMix64(seed: 16)
        for _ in 0..<1_000_000 { inputs.append(Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng))) }
        var failures = 0
        for x in inputs where !x.isNaN {
            let ours = float16Bits(x), reference = Float16(x).bitPattern
            if ours != reference {
                failures += 1
                if failures <= 5 { XCTFail("\(x) (0x\(String(x.bitPattern, radix: 16))): ours 0x\(String(ours, radix: 16)) Float16 0x\(String(reference, radix: 16))") }
            }
        }
        XCTAssertEqual(failures, 0)
    }

    func testBufferConversionsHandleUnalignedSources() {
        // Values at an odd byte offset, for every dtype.
        let values: [Float] = [0, 1, -2, 3.5, 100, -7, 42, 1]
        for dtype in DType.allCases {
            let unsignedOrBool = [.U8, .U16, .U32, .U64, .BOOL].contains(dtype)
            let input = unsignedOrBool ? values.map { dtype == .BOOL ? ($0 != 0 ? 1 : 0) : abs($0).rounded(.down) }
                                       : (dtype.isInteger ? values.map { $0.rounded(.towardZero) } : values)
            var raw = [UInt8](repeating: 0xAB, count: 1 + input.count * dtype.byteSize)
            raw.withUnsafeMutableBytes { convertFromFloat(input, count: input.count, to: dtype, into: $0.baseAddress! + 1) }
            var floats = [Float](repeating: .nan, count: input.count)
            var doubles = [Double](repeating: .nan, count: input.count)
            var ints = [Int64](repeating: -99, count: input.count)
            raw.withUnsafeBytes {
                convertToFloat(from: $0.baseAddress! + 1, dtype: dtype, count: input.count, into: &floats)
                convertToDouble(from: $0.baseAddress! + 1, dtype: dtype, count: input.count, into: &doubles)
                convertToInt64(from: $0.baseAddress! + 1, dtype: dtype, count: input.count, into: &ints)
            }
            XCTAssertEqual(raw[0], 0xAB, "\(dtype) wrote before its destination")
            XCTAssertEqual(floats, input, "\(dtype)")
            XCTAssertEqual(doubles, input.map(Double.init), "\(dtype)")
            XCTAssertEqual(ints, input.map { Int64($0.rounded(.towardZero)) }, "\(dtype)")
        }
    }

    func testIntegerConversionsSaturate() {
        let input: [Float] = [.nan, .infinity, -.infinity, 1e20, -1e20, 200.9, -200.9, 127.99, -128.5]
        var i8 = [Int8](repeating: 0, count: input.count)
        var u8 = [UInt8](repeating: 0, count: input.count)
        var i64 = [Int64](repeating: 0, count: input.count)
        i8.withUnsafeMutableBytes { convertFromFloat(input, count: input.count, to: .I8, into: $0.baseAddress!) }
        u8.withUnsafeMutableBytes { convertFromFloat(input, count: input.count, to: .U8, into: $0.baseAddress!) }
        i64.withUnsafeMutableBytes { convertFromFloat(input, count: input.count, to: .I64, into: $0.baseAddress!) }
        XCTAssertEqual(i8, [0, 127, -128, 127, -128, 127, -128, 127, -128])
        XCTAssertEqual(u8, [0, 255, 0, 255, 0, 200, 0, 127, 0])
        XCTAssertEqual(i64, [0, .max, .min, .max, .min, 200, -200, 127, -128])
    }

    // MARK: - Round trips

    func testRoundTripEveryDType() throws {
        let dir = try temporaryDirectory(self)
        let path = dir + "/all.safetensors"
        let k = (0..<24).map(Float.init)
        let general = k.map { $0 * 0.37 - 5 }
        let special: [Float] = [.nan, .infinity, -.infinity, -0.0, 0x1p-24, 0x1p-25, 3 * 0x1p-25, Float(bitPattern: 0x0001_16C2), 65520,
                                .greatestFiniteMagnitude, 1 + 0x1p-8, 1 + 3 * 0x1p-8]
        var entries: [SafeTensorsEntry] = [
            SafeTensorsEntry(name: "f32", shape: [2, 3, 4], floats: general),
            SafeTensorsEntry(name: "f32_special", shape: [special.count], floats: special),
            SafeTensorsEntry(name: "f16", shape: [4, 6], floats: general, as: .F16),
            SafeTensorsEntry(name: "f16_special", shape: [special.count], floats: special, as: .F16),
            SafeTensorsEntry(name: "bf16", shape: [24], floats: general, as: .BF16),
            SafeTensorsEntry(name: "bf16_special", shape: [special.count], floats: special, as: .BF16),
            SafeTensorsEntry(name: "f64", shape: [3, 8], doubles: k.map { Double($0) * 0.37 - 5 }),
            SafeTensorsEntry(name: "f64_from_floats", shape: [24], floats: general, as: .F64),
            SafeTensorsEntry(name: "i64", shape: [4], int64s: [.min, -1, 0, .max]),
            SafeTensorsEntry(name: "scalar", shape: [], floats: [2.5]),
            SafeTensorsEntry(name: "empty", shape: [0, 3], floats: []),
        ]
        let intValues: [Float] = [0, 1, 2, 100, 127, 3, 0, 1]
        for dtype in [DType.I32, .I16, .I8, .U8, .U16, .U32, .U64, .BOOL] {
            entries.append(SafeTensorsEntry(name: "int_\(dtype.rawValue)", shape: [2, 4], floats: intValues, as: dtype))
        }
        try SafeTensors.write(entries, to: path)

        let file = try SafeTensorsFile(path: path)
        XCTAssertEqual(Set(file.tensorNames), Set(entries.map(\.name)))
        XCTAssertEqual(file.metadata, [:])
        for e in entries {
            let info = try XCTUnwrap(file.info(e.name))
            XCTAssertEqual(info.dtype, e.dtype, e.name)
            XCTAssertEqual(info.shape, e.shape, e.name)
            XCTAssertEqual(info.count, e.shape.reduce(1, *), e.name)
            XCTAssertEqual(Array(try file.rawBytes(e.name)), e.bytes, e.name)
        }
        XCTAssertEqual(try file.floats("f32"), general)
        XCTAssertEqual(try file.floats("f32_special").map(\.bitPattern), special.map(\.bitPattern))
        XCTAssertEqual(try file.floats("f16"), general.map { Float(Float16($0)) })
        XCTAssertEqual(try file.floats("bf16"), general.map { floatFromBFloat16Bits(bfloat16Bits($0)) })
        XCTAssertEqual(try file.doubles("f64"), k.map { Double($0) * 0.37 - 5 })
        XCTAssertEqual(try file.doubles("f64_from_floats"), general.map(Double.init))
        XCTAssertEqual(try file.int64s("i64"), [.min, -1, 0, .max])
        XCTAssertEqual(try file.floats("scalar"), [2.5])
        XCTAssertEqual(try file.floats("empty"), [])
        XCTAssertEqual(file.info("scalar")?.shape, [])

        let f16 = try file.floats("f16_special")
        XCTAssertTrue(f16[0].isNaN)
        let f16Expected: [Float] = [.infinity, -.infinity, -0.0, 0x1p-24, 0, 0x1p-23, 0, .infinity, .infinity,
                                    1 + 0x1p-8, 1 + 0x1.8p-7]   // 1 + 3·2^-8 is exact in F16's 10 mantissa bits
        XCTAssertEqual(Array(f16[1...]), f16Expected)
        XCTAssertEqual(f16[3].sign, .minus)
        let bf16 = try file.floats("bf16_special")
        XCTAssertTrue(bf16[0].isNaN)
        let bf16Expected: [Float] = [.infinity, -.infinity, -0.0, 0x1p-24, 0x1p-25, 0x1.8p-24,
                                     floatFromBFloat16Bits(0x0001), 65536, .infinity, 1, 1 + 0x1p-6]
        XCTAssertEqual(Array(bf16[1...]), bf16Expected)

        for dtype in [DType.I32, .I16, .I8, .U8, .U16, .U32, .U64] {
            XCTAssertEqual(try file.floats("int_\(dtype.rawValue)"), intValues, "\(dtype)")
            XCTAssertEqual(try file.int64s("int_\(dtype.rawValue)"), intValues.map { Int64($0) }, "\(dtype)")
        }
        XCTAssertEqual(try file.int64s("int_BOOL"), intValues.map { $0 != 0 ? 1 : 0 })

        // read(into:) fills a caller buffer; the count must match.
        var out = [Float](repeating: 0, count: 24)
        try out.withUnsafeMutableBufferPointer { try file.read("bf16", into: $0) }
        XCTAssertEqual(out, try file.floats("bf16"))
        var short = [Float](repeating: 0, count: 23)
        try short.withUnsafeMutableBufferPointer { buffer in
            assertThrows(try file.read("bf16", into: buffer)) {
                guard case let .countMismatch(p, t, expected, actual) = $0 else { return false }
                return p == path && t == "bf16" && expected == 23 && actual == 24
                    && $0.description.contains("\"bf16\"") && $0.description.contains("23")
            }
        }
    }

    func testMetadataRoundTripAndHeaderLayout() throws {
        let dir = try temporaryDirectory(self)
        let path = dir + "/meta.safetensors"
        let metadata = ["format": "pt", "b": "ünïcode \"q\" back\\slash / tab\t nl\n \u{1} \u{7f} 😀", "": "empty key"]
        try SafeTensors.write([SafeTensorsEntry(name: "née", shape: [1], floats: [1])], metadata: metadata, to: path)
        let file = try SafeTensorsFile(path: path)
        XCTAssertEqual(file.metadata, metadata)
        XCTAssertEqual(file.tensorNames, ["née"])
        let bytes = fileBytes(path)
        let n = Int(bytes[0..<8].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        XCTAssertEqual(n % 8, 0)
        let header = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
        XCTAssertEqual(header.trimmingCharacters(in: .whitespaces),
                       #"{"__metadata__":{"":"empty key","b":"ünïcode \"q\" back\\slash / tab\t nl\n \u0001 "#
                       + "\u{7f}" + #" 😀","format":"pt"},"née":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#)
    }

    /// Byte-exact outputs from the Rust crate's own tests (tensor.rs: test_serialization, test_empty,
    /// test_serialization_forced_alignement).
    func testSerializationMatchesRustCrateBytes() throws {
        let data = bytes(of: [0, 1, 2, 3, 4, 5])
        let expected: [UInt8] = [
            64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
            116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
            58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
            101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
            0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
        ]
        XCTAssertEqual(try SafeTensors.serialize([SafeTensorsEntry(name: "attn.0", dtype: .F32, shape: [1, 2, 3],
                                                                   bytes: data)]), expected)
        XCTAssertEqual(try SafeTensors.serialize([]), [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32])
        XCTAssertEqual(try SafeTensors.serialize([], metadata: ["framework": "pt"]), [
            40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
            95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
            116, 34, 125, 125, 32, 32, 32, 32, 32,
        ])
        let aligned = try SafeTensors.serialize([SafeTensorsEntry(name: "attn0", dtype: .F32, shape: [1, 1, 2, 3],
                                                                  bytes: data)])
        XCTAssertEqual(aligned[0], 72)
        XCTAssertEqual(Array(aligned[(8 + 72 - 7)..<(8 + 72)]), [UInt8](repeating: 32, count: 7))
        XCTAssertEqual(Array(aligned[(8 + 72)...]), data)

        // Order: dtype alignment descending, then name bytes.
        let order = try SafeTensors.serialize([
            SafeTensorsEntry(name: "b", shape: [1], floats: [1], as: .F16),
            SafeTensorsEntry(name: "a", shape: [1], floats: [1], as: .U8),
            SafeTensorsEntry(name: "Z", shape: [1], floats: [1]),
            SafeTensorsEntry(name: "a", shape: [1], int64s: [1]).renamed("c"),
            SafeTensorsEntry(name: "B", shape: [1], floats: [1]),
        ])
        let file = try order.withUnsafeBytes { try parseSafeTensorsHeader($0, path: "mem") }
        XCTAssertEqual(file.tensors.map(\.name), ["c", "B", "Z", "b", "a"])
    }

    func testWriterRejectsBadEntriesAndLeavesTargetIntact() throws {
        let dir = try temporaryDirectory(self)
        let path = dir + "/model.safetensors"
        try SafeTensors.write([SafeTensorsEntry(name: "w", shape: [2], floats: [1, 2])], to: path)
        let original = fileBytes(path)

        func attempt(_ entries: [SafeTensorsEntry], _ reason: String) {
            assertThrows(try SafeTensors.write(entries, to: path)) {
                guard case let .invalidEntry(p, _, r) = $0 else { return false }
                return p == path && r.contains(reason) && $0.description.hasPrefix(path + ": ")
            }
            XCTAssertEqual(fileBytes(path), original)
        }
        attempt([SafeTensorsEntry(name: "x", shape: [1], floats: [1]), SafeTensorsEntry(name: "x", shape: [1], floats: [2])],
                "more than once")
        attempt([SafeTensorsEntry(name: "x", shape: [3], floats: [1, 2])], "needs 12 bytes but 8 were given")
        attempt([SafeTensorsEntry(name: "x", dtype: .F32, shape: [-1, -4], bytes: [UInt8](repeating: 0, count: 16))],
                "negative")
        attempt([SafeTensorsEntry(name: "__metadata__", shape: [1], floats: [1])], "reserved")
        attempt([SafeTensorsEntry(name: "x", dtype: .U8, shape: [Int.max, 2], bytes: [])], "overflows")

        // A failure at the file-system level (the target is a non-empty directory): temp removed, nothing else.
        let blocked = dir + "/blocked"
        try FileManager.default.createDirectory(atPath: blocked + "/inner", withIntermediateDirectories: true)
        assertThrows(try SafeTensors.write([SafeTensorsEntry(name: "w", shape: [1], floats: [1])], to: blocked)) {
            guard case let .writeFailed(p, op, _) = $0 else { return false }
            return p == blocked && op == "rename"
        }
        assertThrows(try SafeTensors.write([], to: dir + "/missing/x.safetensors")) {
            guard case .writeFailed = $0 else { return false }
            return true
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["blocked", "model.safetensors"])
        XCTAssertEqual(fileBytes(path), original)

        // A successful write replaces the file.
        try SafeTensors.write([SafeTensorsEntry(name: "w", shape: [3], floats: [1, 2, 3])], to: path)
        XCTAssertEqual(try SafeTensorsFile(path: path).floats("w"), [1, 2, 3])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["blocked", "model.safetensors"])
    }

    /// `evict` drops a tensor's pages from the process's resident memory (a loader's copy and the mapping of a large
    /// file are then not resident together) and the tensor still reads back the same afterwards.
    func testEvictReleasesResidentPagesAndKeepsTheMappingValid() throws {
        func residentKB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
        }
        let dir = try temporaryDirectory(self)
        let n = 8 << 20   // 32 MB of F32
        let values = (0..<n).map { Float($0 % 1000) }
        try SafeTensors.write([SafeTensorsEntry(name: "big", shape: [n], floats: values),
                               SafeTensorsEntry(name: "small", shape: [3], floats: [1, 2, 3])], to: dir + "/big.safetensors")
        let file = try SafeTensorsFile(path: dir + "/big.safetensors")
        var sum = 0.0
        let raw = try file.rawBytes("big")
        for i in stride(from: 0, to: raw.count, by: 4096) { sum += Double(raw[i]) }   // touch every page
        let touched = residentKB()
        file.evict("big")
        let evicted = residentKB()
        XCTAssertGreaterThan(touched - evicted, 24 << 10, "RSS \(touched) kB -> \(evicted) kB after evict")
        XCTAssertEqual(try file.floats("big"), values)
        XCTAssertEqual(try file.floats("small"), [1, 2, 3])
        file.evict("no such tensor")
        XCTAssertGreaterThanOrEqual(sum, 0)
    }

    func testAccessErrors() throws {
        let dir = try temporaryDirectory(self)
        let path = dir + "/a.safetensors"
        try SafeTensors.write([SafeTensorsEntry(name: "w", shape: [2], floats: [1, 2]),
                               SafeTensorsEntry(name: "u", dtype: .U64, shape: [2],
                                                bytes: [1, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255])],
                              to: path)
        let file = try SafeTensorsFile(path: path)
        assertThrows(try file.floats("nope")) {
            guard case let .tensorNotFound(p, t, n) = $0 else { return false }
            return p == path && t == "nope" && n == 2
                && $0.description == "\(path): no tensor named \"nope\" (the file has 2 tensors)"
        }
        XCTAssertNil(file.info("nope"))
        assertThrows(try file.int64s("w")) {
            guard case .notIntegerType(path, "w", .F32) = $0 else { return false }
            return true
        }
        assertThrows(try file.int64s("u")) {
            guard case .valueOutOfRange(path, "u", 1, "18446744073709551615") = $0 else { return false }
            return true
        }
        XCTAssertEqual(try file.doubles("u"), [1, 18446744073709551615.0])
        assertOpenFails(dir + "/absent.safetensors") {
            guard case .cannotOpen = $0 else { return false }
            return true
        }
        assertOpenFails(dir) {
            guard case .cannotOpen(_, "not a regular file") = $0 else { return false }
            return true
        }
    }

    func testUnalignedTensorsInAFile() throws {
        // Valid for the Rust crate: nothing requires alignment. F32 data at data offset 3, F64 at 7.
        let dir = try temporaryDirectory(self)
        var data: [UInt8] = [1, 2, 3]
        data += bytes(of: [1.5, -2.25])
        data += [Double](arrayLiteral: 3.125, -1e300).withUnsafeBytes { [UInt8]($0) }
        data += [0x80, 0x3F]   // BF16 1.0
        let header = #"{"b":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"# +
            #""f":{"dtype":"F32","shape":[2],"data_offsets":[3,11]},"d":{"dtype":"F64","shape":[2],"data_offsets":[11,27]},"# +
            #""h":{"dtype":"BF16","shape":[],"data_offsets":[27,29]}}"#
        let file = try SafeTensorsFile(path: makeFile(dir, "u.safetensors", header: header, data: data))
        XCTAssertEqual(file.tensorNames, ["b", "f", "d", "h"])
        XCTAssertEqual(try file.floats("f"), [1.5, -2.25])
        XCTAssertEqual(try file.doubles("d"), [3.125, -1e300])
        XCTAssertEqual(try file.floats("d"), [3.125, -.infinity])
        XCTAssertEqual(try file.floats("h"), [1])
        XCTAssertEqual(try file.int64s("b"), [1, 2, 3])
        XCTAssertEqual(file.info("d")?.byteOffset, 11)
        XCTAssertEqual(file.dataSectionOffset, 8 + header.utf8.count)
    }

    // MARK: - Malformed files (one case per SafeTensorError / validate branch)

    func testMalformedFileLevel() throws {
        let dir = try temporaryDirectory(self)
        assertOpenFails(makeFile(dir, "empty.safetensors", bytes: [])) {
            guard case .fileTooSmall(_, 0) = $0 else { return false }
            return true
        }
        assertOpenFails(makeFile(dir, "short.safetensors", bytes: [2, 0, 0, 0, 0])) {
            guard case .fileTooSmall(_, 5) = $0 else { return false }
            return true
        }
        assertOpenFails(makeFile(dir, "huge.safetensors", header: "{}", headerLength: 100_000_001)) {
            guard case .headerTooLarge(_, 100_000_001) = $0 else { return false }
            return true
        }
        assertOpenFails(makeFile(dir, "max.safetensors", header: "{}", headerLength: .max)) {
            guard case .headerTooLarge(_, .max) = $0 else { return false }
            return true
        }
        assertOpenFails(makeFile(dir, "past.safetensors", header: "{}      ", headerLength: 100)) {
            guard case .headerLengthExceedsFile(_, 100, 16) = $0 else { return false }
            return true
        }
        var notUTF8 = [UInt8](repeating: 0, count: 8)
        notUTF8[0] = 8
        notUTF8 += [UInt8(ascii: "{"), UInt8(ascii: "\""), 0xC3, 0x28, UInt8(ascii: "\""), UInt8(ascii: ":"), 0x31,
                    UInt8(ascii: "}")]
        assertOpenFails(makeFile(dir, "utf8.safetensors", bytes: notUTF8)) {
            guard case .headerNotUTF8 = $0 else { return false }
            return true
        }
        // A valid empty file, and the same with trailing or missing bytes.
        XCTAssertEqual(try SafeTensorsFile(path: makeFile(dir, "ok.safetensors", header: "{}      ")).tensorNames, [])
        assertOpenFails(makeFile(dir, "trail.safetensors", header: "{}      ", data: [0, 0, 0])) {
            guard case .incompleteBuffer(_, 0, 3) = $0 else { return false }
            return $0.description.contains("3 trailing bytes")
        }
    }

    func testMalformedJSON() throws {
        let dir = try temporaryDirectory(self)
        let bad = ["", "{", "{\"a\":", "{} x", "{'a':1}", "{\"a\":01}", "{\"a\":1,}", "{\"a\":\"\\x\"}",
                   "{\"a\":\"\\ud800\"}", "{\"a\":\"\t\"}", "{\"a\" 1}", "nul", "{\"a\":tru}", "{\"a\":-}",
                   "{\"a\":1.}", "{\"a\":1e}", String(repeating: "[", count: 200) + String(repeating: "]", count: 200)]
        for (i, text) in bad.enumerated() {
            assertOpenFails(makeFile(dir, "json\(i).safetensors", header: text)) {
                guard case .headerNotJSON = $0 else { return false }
                return true
            }
        }
        for (i, text) in ["[]", "1", "\"x\"", "null", "[{\"a\":1}]"].enumerated() {
            assertOpenFails(makeFile(dir, "notobj\(i).safetensors", header: text)) {
                guard case .headerNotObject = $0 else { return false }
                return true
            }
        }
        // Whitespace around the object and escapes in names are fine.
        let ok = makeFile(dir, "ws.safetensors", header: " \n{\"a\\u00e9\\n\\/\" : {\"dtype\":\"U8\",\"shape\":[1],"
                          + "\"data_offsets\":[0,1],\"extra\":[null,true,{\"k\":-1.5e3}]} }\t", data: [7])
        XCTAssertEqual(try SafeTensorsFile(path: ok).int64s("aé\n/"), [7])
    }

    func testMalformedEntries() throws {
        let dir = try temporaryDirectory(self)
        func entry(_ body: String) -> String { "{\"t\":{\(body)}}" }
        let cases: [(String, String)] = [
            (entry(#""shape":[1],"data_offsets":[0,4]"#), "has no \"dtype\""),
            (entry(#""dtype":"F32","data_offsets":[0,4]"#), "has no \"shape\""),
            (entry(#""dtype":"F32","shape":[1]"#), "has no \"data_offsets\""),
            (entry(#""dtype":3,"shape":[1],"data_offsets":[0,4]"#), "dtype that is a number"),
            (entry(#""dtype":"F32","shape":"1","data_offsets":[0,4]"#), "shape that is a string"),
            (entry(#""dtype":"F32","shape":[-1],"data_offsets":[0,4]"#), "shape element -1"),
            (entry(#""dtype":"F32","shape":[1.0],"data_offsets":[0,4]"#), "shape element 1.0"),
            (entry(#""dtype":"F32","shape":[1e0],"data_offsets":[0,4]"#), "shape element 1e0"),
            (entry(#""dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]"#), "18446744073709551616"),
            (entry(#""dtype":"F32","shape":[1],"data_offsets":[0]"#), "data_offsets [0]"),
            (entry(#""dtype":"F32","shape":[1],"data_offsets":[0,4,8]"#), "data_offsets [0, 4, 8]"),
            (entry(#""dtype":"F32","shape":[1],"data_offsets":[-0,4]"#), "data_offsets [-0, 4]"),
            (entry(#""dtype":"F32","shape":[1],"data_offsets":{"a":1}"#), "data_offsets an object"),
            (entry(#""dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]"#), "\"dtype\" more than once"),
            ("{\"t\":[1]}", "is an array"),
        ]
        for (i, (header, reason)) in cases.enumerated() {
            assertOpenFails(makeFile(dir, "entry\(i).safetensors", header: header, data: [0, 0, 0, 0])) {
                guard case let .invalidTensorEntry(_, "t", r) = $0 else { return false }
                return r.contains(reason)
            }
        }
        assertOpenFails(makeFile(dir, "dtype.safetensors", header: entry(#""dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]"#),
                                 data: [0])) {
            guard case .unknownDType(_, "t", "F8_E4M3") = $0 else { return false }
            return true
        }
        assertOpenFails(makeFile(dir, "dup.safetensors",
                                 header: #"{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"t":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
                                 data: [0, 0])) {
            guard case .duplicateKey(_, "t") = $0 else { return false }
            return true
        }
        for (i, meta) in ["[]", "{\"a\":1}", "{\"a\":null}", "\"x\""].enumerated() {
            assertOpenFails(makeFile(dir, "meta\(i).safetensors", header: "{\"__metadata__\":\(meta)}")) {
                guard case .invalidMetadata = $0 else { return false }
                return true
            }
        }
        let nullMeta = makeFile(dir, "nullmeta.safetensors", header: #"{"__metadata__":null}"#)
        XCTAssertEqual(try SafeTensorsFile(path: nullMeta).metadata, [:])
    }

    func testMalformedOffsets() throws {
        let dir = try temporaryDirectory(self)
        func two(_ a: String, _ b: String) -> String {
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":\#(a)},"b":{"dtype":"F32","shape":[1],"data_offsets":\#(b)}}"#
        }
        let eight = [UInt8](repeating: 0, count: 8)
        // Hole at the start, hole between, overlap, end before begin.
        assertOpenFails(makeFile(dir, "hole0.safetensors", header: two("[4,8]", "[8,12]"), data: eight)) {
            guard case .invalidOffsets(_, "a", 4, 8, 0) = $0 else { return false }
            return $0.description.contains("contiguous")
        }
        assertOpenFails(makeFile(dir, "hole.safetensors", header: two("[0,4]", "[5,9]"), data: eight + [0])) {
            guard case .invalidOffsets(_, "b", 5, 9, 4) = $0 else { return false }
            return true
        }
        assertOpenFails(makeFile(dir, "overlap.safetensors", header: two("[0,4]", "[2,6]"), data: eight)) {
            guard case .invalidOffsets(_, "b", 2, 6, 4) = $0 else { return false }
            return true
        }
        assertOpenFails(makeFile(dir, "backwards.safetensors", header: two("[0,4]", "[4,0]"), data: eight)) {
            guard case .invalidOffsets(_, "b", 4, 0, 4) = $0 else { return false }
            return $0.description.contains("end is before its begin")
        }
        // Offsets may be listed in any order in the header: the file is sorted by offsets first.
        let swapped = makeFile(dir, "swapped.safetensors", header: two("[4,8]", "[0,4]"), data: bytes(of: [1, 2]))
        let file = try SafeTensorsFile(path: swapped)
        XCTAssertEqual(file.tensorNames, ["b", "a"])
        XCTAssertEqual(try file.floats("a"), [2])

        // Byte count that does not match shape × dtype size: the message from the brief.
        let conv = makeFile(dir, "model.safetensors",
                            header: #"{"conv_in.weight":{"dtype":"F32","shape":[4,4,3,3],"data_offsets":[0,100]}}"#,
                            data: [UInt8](repeating: 0, count: 100))
        assertOpenFails(conv) {
            guard case .byteCountMismatch(_, "conv_in.weight", 0, 100, [4, 4, 3, 3], .F32, 576) = $0 else { return false }
            return $0.description == "\(conv): tensor \"conv_in.weight\" has data_offsets [0, 100] but shape "
                + "[4, 4, 3, 3] of F32 needs 576 bytes"
        }
        // Shape product overflow.
        assertOpenFails(makeFile(dir, "overflow.safetensors",
                                 header: #"{"t":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,4]}}"#,
                                 data: [0, 0, 0, 0])) {
            guard case .shapeOverflow(_, "t", [4294967296, 4294967296, 2], .F32) = $0 else { return false }
            return true
        }
        assertOpenFails(makeFile(dir, "overflow2.safetensors",
                                 header: #"{"t":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,4]}}"#,
                                 data: [0, 0, 0, 0])) {
            guard case .shapeOverflow = $0 else { return false }
            return true
        }
        // Offsets above 2^53 stay exact (no Double rounding): 2^53 + 1 bytes of U8 pass validate, then the data
        // section is far too short.
        assertOpenFails(makeFile(dir, "big.safetensors",
                                 header: #"{"t":{"dtype":"U8","shape":[9007199254740993],"data_offsets":[0,9007199254740993]}}"#,
                                 data: [0])) {
            guard case .incompleteBuffer(_, 9007199254740993, 1) = $0 else { return false }
            return $0.description.contains("truncated")
        }
        // Truncated data section and trailing bytes.
        assertOpenFails(makeFile(dir, "truncated.safetensors", header: two("[0,4]", "[4,8]"), data: [0, 0, 0, 0, 0])) {
            guard case .incompleteBuffer(_, 8, 5) = $0 else { return false }
            return true
        }
        assertOpenFails(makeFile(dir, "trailing.safetensors", header: two("[0,4]", "[4,8]"), data: eight + [1])) {
            guard case .incompleteBuffer(_, 8, 9) = $0 else { return false }
            return true
        }
        // A 0-dim next to an enormous one is valid for the Rust crate but cannot be an [Int] shape.
        assertOpenFails(makeFile(dir, "hugedim.safetensors",
                                 header: #"{"t":{"dtype":"U8","shape":[0,18446744073709551615],"data_offsets":[0,0]}}"#)) {
            guard case .shapeOverflow = $0 else { return false }
            return true
        }
        // Several empty tensors at the same offset keep header order.
        let empties = makeFile(dir, "empties.safetensors",
                               header: #"{"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"# +
                                   #""a":{"dtype":"I8","shape":[2,0],"data_offsets":[0,0]},"# +
                                   #""m":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [9])
        let e = try SafeTensorsFile(path: empties)
        XCTAssertEqual(e.tensorNames, ["z", "a", "m"])
        XCTAssertEqual(e.info("a")?.shape, [2, 0])
        XCTAssertEqual(e.info("a")?.count, 0)
    }

    /// Random corruptions of a valid file must throw or open, never trap.
    func testCorruptedFilesNeverCrash() throws {
        var rng = SplitMix64(seed: 7)
        let valid = try SafeTensors.serialize([
            SafeTensorsEntry(name: "weight", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6]),
            SafeTensorsEntry(name: "bias", shape: [3], floats: [1, 2, 3], as: .BF16),
            SafeTensorsEntry(name: "ids", shape: [2], int64s: [5, 6]),
        ], metadata: ["format": "pt"])
        var opened = 0
        for trial in 0..<3000 {
            var b = valid
            switch trial % 4 {
            case 0: b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            case 1: b.removeLast(Int.random(in: 1...b.count, using: &rng))
            case 2:   // flip a digit in the header
                let i = Int.random(in: 8..<min(b.count, 200), using: &rng)
                if (0x30...0x39).contains(b[i]) { b[i] = UInt8.random(in: 0x30...0x39, using: &rng) }
            default:
                for _ in 0..<3 { b[Int.random(in: 0..<16, using: &rng)] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng) }
            }
            let result = b.withUnsafeBytes { raw in Result { try parseSafeTensorsHeader(raw, path: "fuzz") } }
            if case .success(let h) = result {
                opened += 1
                for t in h.tensors { XCTAssertLessThanOrEqual(h.dataSectionOffset + t.byteOffset + t.byteCount, b.count) }
            }
        }
        XCTAssertGreaterThan(opened, 0)
    }

    // MARK: - Python fixtures

    func testPythonDTypesFixture() throws {
        let path = fixtures + "/python_dtypes.safetensors"
        let file = try SafeTensorsFile(path: path)
        XCTAssertEqual(file.metadata, ["format": "pt", "source": "make_io_fixtures.py",
                                       "note": "ünïcode \"quoted\" / back\\slash\ttab"])
        // The Rust writer's order, read back in data-offset order.
        XCTAssertEqual(file.tensorNames, ["u64", "i64", "i64_extremes", "bf16_as_f64", "f16_as_f64", "f64", "empty_f32",
                                          "f32", "round_f32", "scalar_f32", "u32", "empty_i32", "i32", "bf16",
                                          "round_bf16", "f16", "round_f16", "u16", "i16", "i8", "u8", "bool"])

        func check(_ name: String, _ dtype: DType, _ shape: [Int]) throws {
            let info = try XCTUnwrap(file.info(name), name)
            XCTAssertEqual(info.dtype, dtype, name)
            XCTAssertEqual(info.shape, shape, name)
        }
        func closedForm(_ n: Int) -> [Double] { (0..<n).map { Double($0) * 0.37 - 5 } }
        let k = { (n: Int) in (0..<Int64(n)).map { $0 } }

        try check("f64", .F64, [3, 4])
        XCTAssertEqual(try file.doubles("f64"), closedForm(12))
        try check("f32", .F32, [2, 3, 4])
        XCTAssertEqual(try file.floats("f32"), closedForm(24).map { Float($0) })
        try check("f16", .F16, [5, 7])
        let f16 = try file.floats("f16")
        XCTAssertEqual(f16.map(Double.init), try file.doubles("f16_as_f64"))
        XCTAssertEqual(f16, closedForm(35).map { floatFromFloat16Bits(float16Bits(Float($0))) })
        try check("bf16", .BF16, [7, 5])
        let bf16 = try file.floats("bf16")
        XCTAssertEqual(bf16.map(Double.init), try file.doubles("bf16_as_f64"))
        XCTAssertEqual(bf16, closedForm(35).map { floatFromBFloat16Bits(bfloat16Bits(Float($0 * 1000))) })
        try check("i64", .I64, [6])
        XCTAssertEqual(try file.int64s("i64"), k(6).map { $0 * 123456789012 - 300000000000 })
        XCTAssertEqual(try file.int64s("i64_extremes"), [.min, .max, -1, 0])
        try check("i32", .I32, [2, 5])
        XCTAssertEqual(try file.int64s("i32"), k(10).map { $0 * 100003 - 500000 })
        try check("i16", .I16, [10])
        XCTAssertEqual(try file.int64s("i16"), k(10).map { $0 * 1001 - 5000 })
        XCTAssertEqual(try file.floats("i16"), k(10).map { Float($0 * 1001 - 5000) })
        try check("i8", .I8, [16])
        XCTAssertEqual(try file.int64s("i8"), k(16).map { $0 * 13 - 100 })
        try check("u8", .U8, [4, 4])
        XCTAssertEqual(try file.int64s("u8"), k(16).map { ($0 * 17) % 256 })
        try check("u16", .U16, [5])
        XCTAssertEqual(try file.int64s("u16"), k(5).map { $0 * 16000 })
        try check("u32", .U32, [3])
        XCTAssertEqual(try file.int64s("u32"), [0, 1, 4294967295])
        try check("u64", .U64, [3])
        XCTAssertEqual(try file.doubles("u64"), [0, 9223372036854775807.0, 18446744073709551615.0])
        XCTAssertThrowsError(try file.int64s("u64"))
        XCTAssertEqual(Array(try file.rawBytes("u64"))[16...], [255, 255, 255, 255, 255, 255, 255, 255])
        try check("bool", .BOOL, [7])
        XCTAssertEqual(try file.int64s("bool"), k(7).map { $0 % 3 == 0 ? 1 : 0 })
        try check("scalar_f32", .F32, [])
        XCTAssertEqual(try file.floats("scalar_f32"), [3.25])
        try check("empty_f32", .F32, [0])
        XCTAssertEqual(try file.floats("empty_f32"), [])
        try check("empty_i32", .I32, [3, 0])
        XCTAssertEqual(try file.int64s("empty_i32"), [])
    }

    /// Our F32 -> F16 / BF16 conversions against torch's `.to(dtype)` on edge cases and 2048 random bit patterns.
    func testRoundingMatchesTorch() throws {
        let file = try SafeTensorsFile(path: fixtures + "/python_dtypes.safetensors")
        let input = try file.floats("round_f32")
        XCTAssertGreaterThan(input.count, 2000)
        for (dtype, name) in [(DType.F16, "round_f16"), (.BF16, "round_bf16")] {
            let torchBits = try file.rawBytes(name).withMemoryRebound(to: UInt16.self) { Array($0) }
            var ours = [UInt16](repeating: 0, count: input.count)
            ours.withUnsafeMutableBytes { convertFromFloat(input, count: input.count, to: dtype, into: $0.baseAddress!) }
            var mismatches: [String] = []
            for i in 0..<input.count {
                if input[i].isNaN {   // torch's vectorized BF16 kernel writes 0xFFFF, c10's scalar 0x7FC0
                    let back = dtype == .F16 ? floatFromFloat16Bits(torchBits[i]) : floatFromBFloat16Bits(torchBits[i])
                    XCTAssertTrue(back.isNaN)
                    XCTAssertTrue((dtype == .F16 ? floatFromFloat16Bits(ours[i]) : floatFromBFloat16Bits(ours[i])).isNaN)
                } else if ours[i] != torchBits[i] {
                    mismatches.append("[\(i)] \(input[i]) (0x\(String(input[i].bitPattern, radix: 16))): "
                                      + "ours 0x\(String(ours[i], radix: 16)) torch 0x\(String(torchBits[i], radix: 16))")
                }
            }
            XCTAssertTrue(mismatches.isEmpty, "\(dtype): \(mismatches.count) mismatches: \(mismatches.prefix(5))")
        }
    }

    func testTinyUNetFixture() throws {
        let dir = fixtures + "/tiny_unet"
        let fp32 = try SafeTensorsFile(path: dir + "/diffusion_pytorch_model.safetensors")
        let fp16 = try SafeTensorsFile(path: dir + "/diffusion_pytorch_model.fp16.safetensors")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/expected_inspect.json")))
        let expected = try XCTUnwrap(json as? [[String: Any]])
        XCTAssertEqual(fp32.tensorNames, expected.map { $0["name"] as! String })
        XCTAssertEqual(fp32.tensors.map(\.dtype.rawValue), expected.map { $0["dtype"] as! String })
        XCTAssertEqual(fp32.tensors.map(\.shape), expected.map { $0["shape"] as! [Int] })
        XCTAssertEqual(fp32.metadata, ["format": "pt"])
        XCTAssertGreaterThan(fp32.tensors.count, 100)
        XCTAssertEqual(fp16.tensorNames, fp32.tensorNames)
        XCTAssertTrue(fp16.tensors.allSatisfy { $0.dtype == .F16 })
        XCTAssertEqual(fp16.tensors.map(\.shape), fp32.tensors.map(\.shape))
        // The fp16 file holds the fp32 weights rounded the way our F16 conversion rounds.
        for name in fp32.tensorNames {
            XCTAssertEqual(try fp16.floats(name), try fp32.floats(name).map { floatFromFloat16Bits(float16Bits($0)) }, name)
        }

        // Re-serializing what we read gives the Python files byte for byte.
        for (file, path) in [(fp32, "/diffusion_pytorch_model.safetensors"), (fp16, "/diffusion_pytorch_model.fp16.safetensors")] {
            let entries = try file.tensors.map {
                SafeTensorsEntry(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: Array(try file.rawBytes($0.name)))
            }
            XCTAssertEqual(try SafeTensors.serialize(entries.reversed(), metadata: file.metadata), fileBytes(dir + path), path)
        }
    }

    func testWrittenFileMatchesPythonLayoutForAllDTypes() throws {
        // Rewrite python_dtypes with its metadata reduced to one key (Python's metadata order is a HashMap's) and
        // compare the tensor part of the header and the data section.
        let src = try SafeTensorsFile(path: fixtures + "/python_dtypes.safetensors")
        let entries = try src.tensors.map {
            SafeTensorsEntry(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: Array(try src.rawBytes($0.name)))
        }
        let ours = try SafeTensors.serialize(entries.shuffled())
        let theirs = fileBytes(fixtures + "/python_dtypes.safetensors")
        XCTAssertEqual(Array(ours[(ours.count - 17873)...]), Array(theirs[(theirs.count - 17873)...]))
        let header = { (b: [UInt8]) -> String in
            let n = Int(b[0..<8].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            let s = String(decoding: b[8..<(8 + n)], as: UTF8.self)
            return String(s[s.range(of: "\"u64\":")!.lowerBound...]).trimmingCharacters(in: .whitespaces)
        }
        XCTAssertEqual(header(ours), header(theirs))
    }
}

/// Seeded generator so random tests are reproducible.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private extension SafeTensorsEntry {
    func renamed(_ name: String) -> SafeTensorsEntry {
        var e = self
        e.name = name
        return e
    }
}
