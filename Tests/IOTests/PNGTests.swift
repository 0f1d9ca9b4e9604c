// Tests for Sources/IO/PNG.swift and Sources/CPNG.
// Ref: diffusers VaeImageProcessor.normalize/denormalize, numpy_to_pil; Pillow Convert.c (rgb2l's L24 luma).
// Unusual PNGs (16-bit, palette, low bit depth, interlaced, tRNS) come from cpng's hg_png_test_write_raw; broken
// ones are made by cutting or flipping bytes of a valid file, so no fixture files are needed.
import CPNG
import Foundation
import XCTest

@testable import IO

final class PNGTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("hgdpo-png-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// Deterministic bytes (64-bit LCG, high byte).
    private func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed &* 6364136223846793005 &+ 1442695040888963407
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
    }

    /// Writes packed PNG rows through the C test helper.
    private func writeRaw(_ name: String, rows: [UInt8], width: Int, height: Int, bitDepth: Int, colorType: Int,
                          interlaced: Bool = false, palette: [UInt8]? = nil, trnsAlpha: [UInt8]? = nil,
                          trnsColor: [UInt16]? = nil) throws -> String {
        let file = path(name)
        var message = [CChar](repeating: 0, count: 512)
        let capacity = message.count
        let code = hg_png_test_write_raw(file, rows, UInt32(width), UInt32(height), Int32(bitDepth),
                                         Int32(colorType), interlaced ? 1 : 0,
                                         palette, Int32((palette?.count ?? 0) / 3),
                                         trnsAlpha, Int32(trnsAlpha?.count ?? 0), trnsColor,
                                         &message, capacity)
        let text = message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        XCTAssertEqual(Int(code), HG_PNG_OK, text)
        return file
    }

    private func bytes(of file: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: file))) }

    private func store(_ bytes: [UInt8], as name: String) throws -> String {
        let file = path(name)
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        return file
    }

    /// (type, offset of the chunk's length field, data length) for each chunk of a PNG byte string.
    private func chunks(_ png: [UInt8]) -> [(type: String, offset: Int, length: Int)] {
        var result: [(type: String, offset: Int, length: Int)] = []
        var offset = 8
        while offset + 12 <= png.count {
            let length = png[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            let type = String(decoding: png[offset + 4..<offset + 8], as: UTF8.self)
            result.append((type, offset, length))
            offset += 12 + length
        }
        return result
    }

    private func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }

    private func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let length = UInt32(data.count), body = Array(type.utf8) + data
        let crc = crc32(body[...])
        return [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: length >> $0) } + body
            + [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: crc >> $0) }
    }

    private func assertThrows(_ expression: @autoclosure () throws -> Any, naming file: String,
                              containing fragments: [String], line: UInt = #line) -> PNGError? {
        do {
            _ = try expression()
            XCTFail("no error thrown", line: line)
            return nil
        } catch let error as PNGError {
            let text = error.description
            XCTAssertTrue(text.hasPrefix(file + ": "), "message does not start with the path: \(text)", line: line)
            for fragment in fragments {
                XCTAssertTrue(text.contains(fragment), "message lacks \"\(fragment)\": \(text)", line: line)
            }
            return error
        } catch {
            XCTFail("unexpected error type: \(error)", line: line)
            return nil
        }
    }

    // MARK: - Round trips

    func testByteRoundTripForEveryChannelCount() throws {
        for channels in 1...4 {
            let (width, height) = (13, 7)
            let pixels = pseudoRandomBytes(width * height * channels, seed: UInt64(channels))
            let image = try ByteImage(width: width, height: height, channels: channels, pixels: pixels)
            let file = path("bytes\(channels).png")
            try PNG.writeBytes(image, to: file)
            let back = try PNG.readBytes(file)
            XCTAssertEqual(back, image, "channels \(channels)")
            XCTAssertEqual(try PNG.readBytes(file, channels: channels), image)
        }
    }

    func testFloatRoundTripIsWithinHalfAStep() throws {
        let (width, height) = (9, 5)
        for channels in [1, 3, 4] {
            let count = width * height * channels
            let pixels = pseudoRandomBytes(count, seed: 99).map { Float($0) / 127.5 - 1 + Float($0 % 7) / 1000 }
            let image = try Image(width: width, height: height, channels: channels, pixels: pixels)
            let file = path("float\(channels).png")
            try PNG.write(image, to: file)
            let back = try PNG.read(file)
            XCTAssertEqual([back.width, back.height, back.channels], [width, height, channels])
            let worst = zip(back.pixels, image.pixels.map { min(max($0, -1), 1) }).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, 1 / 255 + 1e-6, "channels \(channels)")
        }
    }

    func testFloatsOnTheByteGridAreExact() throws {
        // Planar (C, H, W): one channel, 256 pixels k = 0...255 at x = k / 127.5 - 1.
        let grid = (0...255).map { Float($0) / 127.5 - 1 }
        let image = try Image(width: 16, height: 16, channels: 1, pixels: grid)
        let file = path("grid.png")
        try PNG.write(image, to: file)
        XCTAssertEqual(try PNG.readBytes(file).pixels, (0...255).map { UInt8($0) })
        let back = try PNG.read(file)
        for k in 0...255 {
            let diffusers = 2 * (Float(k) / 255) - 1  // pil_to_numpy (float32 / 255) then normalize (2x - 1)
            XCTAssertEqual(back.pixels[k], diffusers, "k = \(k)")
            XCTAssertEqual(back.pixels[k], grid[k], accuracy: 2 * Float.ulpOfOne, "k = \(k)")
            XCTAssertEqual(PNG.byte(fromNormalized: back.pixels[k]), UInt8(k), "k = \(k)")
        }
    }

    func testPlanarLayoutAndChannelOrder() throws {
        // 2 x 1 RGB: pixel 0 red, pixel 1 blue. Planar floats: R plane, G plane, B plane.
        let bytes = try ByteImage(width: 2, height: 1, channels: 3, pixels: [255, 0, 0, 0, 0, 255])
        let file = path("order.png")
        try PNG.writeBytes(bytes, to: file)
        XCTAssertEqual(try PNG.read(file).pixels, [1, -1, -1, -1, -1, 1])
    }

    func testDenormalizeClampsRoundsHalfToEvenAndMapsNaNToZero() throws {
        XCTAssertEqual(PNG.byte(fromNormalized: .nan), 0)
        XCTAssertEqual(PNG.byte(fromNormalized: -.nan), 0)
        XCTAssertEqual(PNG.byte(fromNormalized: .infinity), 255)
        XCTAssertEqual(PNG.byte(fromNormalized: -.infinity), 0)
        XCTAssertEqual(PNG.byte(fromNormalized: 3), 255)
        XCTAssertEqual(PNG.byte(fromNormalized: -3), 0)
        XCTAssertEqual(PNG.byte(fromNormalized: 0), 128)  // 0.5 * 255 = 127.5 -> 128 (even)
        // Floats whose (x/2 + 0.5) * 255 is exactly k + 0.5 in float32 round to the even neighbour, as numpy's round.
        var halves: Set<Int> = []
        for k in 0..<255 {
            let half = Float(k) + 0.5
            var x = 2 * (half / 255) - 1
            for _ in 0..<64 { x = x.nextDown }
            for _ in 0..<128 {
                if (x / 2 + 0.5) * 255 == half {
                    XCTAssertEqual(PNG.byte(fromNormalized: x), UInt8(k % 2 == 0 ? k : k + 1), "\(half)")
                    halves.insert(k)
                }
                x = x.nextUp
            }
        }
        XCTAssertTrue(halves.contains { $0 % 2 == 0 } && halves.contains { $0 % 2 == 1 }, "\(halves.sorted())")
        // A NaN inside an image written to disk is 0, not a crash.
        let image = try Image(width: 2, height: 1, channels: 1, pixels: [.nan, 1])
        let file = path("nan.png")
        try PNG.write(image, to: file)
        XCTAssertEqual(try PNG.readBytes(file).pixels, [0, 255])
    }

    func testCompressionLevels() throws {
        let pixels = [UInt8]((0..<(64 * 64 * 3)).map { UInt8($0 / 3 % 256) })
        let image = try ByteImage(width: 64, height: 64, channels: 3, pixels: pixels)
        try PNG.writeBytes(image, to: path("l0.png"), compressionLevel: 0)
        try PNG.writeBytes(image, to: path("l9.png"), compressionLevel: 9)
        XCTAssertEqual(try PNG.readBytes(path("l0.png")), image)
        XCTAssertEqual(try PNG.readBytes(path("l9.png")), image)
        XCTAssertLessThan(try bytes(of: path("l9.png")).count, try bytes(of: path("l0.png")).count)
        _ = assertThrows(try PNG.writeBytes(image, to: path("l10.png"), compressionLevel: 10),
                         naming: path("l10.png"), containing: ["compression level 10"])
    }

    // MARK: - Channel conversions (Pillow's convert)

    func testConversionsMatchPillow() throws {
        // RGB -> L pinned against Pillow: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)).
        let colors: [[UInt8]] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [128, 128, 128],
                                 [255, 255, 255], [0, 0, 0], [1, 2, 3]]
        let expectedL: [UInt8] = [76, 150, 29, 18, 128, 255, 0, 2]
        let rgb = try ByteImage(width: colors.count, height: 1, channels: 3, pixels: colors.flatMap { $0 })
        let rgbFile = path("rgb.png")
        try PNG.writeBytes(rgb, to: rgbFile)
        XCTAssertEqual(try PNG.readBytes(rgbFile, channels: 1).pixels, expectedL)
        XCTAssertEqual(try PNG.readBytes(rgbFile, channels: 2).pixels, expectedL.flatMap { [$0, 255] })
        XCTAssertEqual(try PNG.readBytes(rgbFile, channels: 4).pixels, colors.flatMap { $0 + [255] })

        // L24 over all of a random RGBA image (alpha ignored, as rgb2l does).
        let rgba = try ByteImage(width: 32, height: 8, channels: 4, pixels: pseudoRandomBytes(32 * 8 * 4, seed: 5))
        let rgbaFile = path("rgba.png")
        try PNG.writeBytes(rgba, to: rgbaFile)
        var luma: [UInt8] = [], lumaAlpha: [UInt8] = [], rgbOnly: [UInt8] = []
        for i in stride(from: 0, to: rgba.pixels.count, by: 4) {
            let r = UInt32(rgba.pixels[i]), g = UInt32(rgba.pixels[i + 1]), b = UInt32(rgba.pixels[i + 2])
            let l24: UInt32 = r * 19595 + g * 38470 + b * 7471 + 0x8000
            luma.append(UInt8(l24 >> 16))
            lumaAlpha += [UInt8(l24 >> 16), rgba.pixels[i + 3]]
            rgbOnly += rgba.pixels[i..<i + 3]
        }
        XCTAssertEqual(try PNG.readBytes(rgbaFile, channels: 1).pixels, luma)
        XCTAssertEqual(try PNG.readBytes(rgbaFile, channels: 2).pixels, lumaAlpha)
        XCTAssertEqual(try PNG.readBytes(rgbaFile, channels: 3).pixels, rgbOnly)

        // L and LA -> RGB / RGBA replicate gray; LA -> L drops alpha.
        let la = try ByteImage(width: 3, height: 1, channels: 2, pixels: [0, 10, 100, 20, 255, 30])
        let laFile = path("la.png")
        try PNG.writeBytes(la, to: laFile)
        XCTAssertEqual(try PNG.readBytes(laFile, channels: 1).pixels, [0, 100, 255])
        XCTAssertEqual(try PNG.readBytes(laFile, channels: 3).pixels, [0, 0, 0, 100, 100, 100, 255, 255, 255])
        XCTAssertEqual(try PNG.readBytes(laFile, channels: 4).pixels,
                       [0, 0, 0, 10, 100, 100, 100, 20, 255, 255, 255, 30])
        let gray = try ByteImage(width: 2, height: 1, channels: 1, pixels: [7, 200])
        let grayFile = path("l.png")
        try PNG.writeBytes(gray, to: grayFile)
        XCTAssertEqual(try PNG.readBytes(grayFile, channels: 4).pixels, [7, 7, 7, 255, 200, 200, 200, 255])
        let grayAsRGB = try PNG.read(grayFile, channels: 3)
        XCTAssertEqual(grayAsRGB.channels, 3)
        XCTAssertEqual(grayAsRGB.pixels.count, 6)

        _ = assertThrows(try PNG.readBytes(grayFile, channels: 5), naming: grayFile, containing: ["5 channels"])
        _ = assertThrows(try PNG.readBytes(grayFile, channels: 0), naming: grayFile, containing: ["0 channels"])
    }

    // MARK: - Unusual encodings

    func testSixteenBitTakesTheHighByte() throws {
        // RGB 16-bit, 2 x 1: samples 0x12AB, 0x34CD, 0xFFFF | 0x0080, 0x8000, 0x00FF (big-endian in the file).
        let rgb16: [UInt8] = [0x12, 0xAB, 0x34, 0xCD, 0xFF, 0xFF, 0x00, 0x80, 0x80, 0x00, 0x00, 0xFF]
        let rgbFile = try writeRaw("rgb16.png", rows: rgb16, width: 2, height: 1, bitDepth: 16, colorType: 2)
        let rgb = try PNG.readBytes(rgbFile)
        XCTAssertEqual(rgb.channels, 3)
        XCTAssertEqual(rgb.pixels, [0x12, 0x34, 0xFF, 0x00, 0x80, 0x00])

        let gray16: [UInt8] = [0xAB, 0xCD, 0x01, 0xFF]
        let grayFile = try writeRaw("gray16.png", rows: gray16, width: 2, height: 1, bitDepth: 16, colorType: 0)
        XCTAssertEqual(try PNG.readBytes(grayFile).pixels, [0xAB, 0x01])

        let rgba16: [UInt8] = [0x10, 0x00, 0x20, 0x00, 0x30, 0x00, 0x40, 0xFF]
        let rgbaFile = try writeRaw("rgba16.png", rows: rgba16, width: 1, height: 1, bitDepth: 16, colorType: 6)
        XCTAssertEqual(try PNG.readBytes(rgbaFile).pixels, [0x10, 0x20, 0x30, 0x40])
    }

    func testPaletteExpandsToRGBAndTRNSToAlpha() throws {
        let palette: [UInt8] = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
        // 4 x 2 at 2 bits per index: indices 0 1 2 3 / 3 2 1 0.
        let rows: [UInt8] = [0b00_01_10_11, 0b11_10_01_00]
        let plain = try writeRaw("palette.png", rows: rows, width: 4, height: 2, bitDepth: 2, colorType: 3,
                                 palette: palette)
        let image = try PNG.readBytes(plain)
        XCTAssertEqual(image.channels, 3)
        let indices = [0, 1, 2, 3, 3, 2, 1, 0]
        XCTAssertEqual(image.pixels, indices.flatMap { palette[3 * $0..<3 * $0 + 3] })
        XCTAssertEqual(try PNG.readBytes(plain, channels: 1).pixels, indices.map { [76, 150, 29, 18][$0] })

        let transparent = try writeRaw("palette-trns.png", rows: rows, width: 4, height: 2, bitDepth: 2,
                                       colorType: 3, palette: palette, trnsAlpha: [255, 0, 128])
        let rgba = try PNG.readBytes(transparent)
        XCTAssertEqual(rgba.channels, 4)
        let alpha: [UInt8] = [255, 0, 128, 255]  // entries past the tRNS list are opaque
        XCTAssertEqual(rgba.pixels, indices.flatMap { Array(palette[3 * $0..<3 * $0 + 3]) + [alpha[$0]] })
        XCTAssertEqual(try PNG.readBytes(transparent, channels: 3), image)  // Pillow's P -> RGB drops tRNS
    }

    func testLowBitDepthGrayAndGrayTRNS() throws {
        // 1-bit: 8 pixels 10110000 -> 255 0 255 255 0 0 0 0.
        let one = try writeRaw("gray1.png", rows: [0b1011_0000], width: 8, height: 1, bitDepth: 1, colorType: 0)
        XCTAssertEqual(try PNG.readBytes(one).pixels, [255, 0, 255, 255, 0, 0, 0, 0])
        // 2-bit: 0 1 2 3 -> 0 85 170 255; 4-bit: 0x1F -> 17 255.
        let two = try writeRaw("gray2.png", rows: [0b00_01_10_11], width: 4, height: 1, bitDepth: 2, colorType: 0)
        XCTAssertEqual(try PNG.readBytes(two).pixels, [0, 85, 170, 255])
        let four = try writeRaw("gray4.png", rows: [0x1F], width: 2, height: 1, bitDepth: 4, colorType: 0)
        XCTAssertEqual(try PNG.readBytes(four).pixels, [17, 255])
        // 8-bit gray with tRNS gray = 7: becomes LA, alpha 0 where the value is 7.
        let keyed = try writeRaw("gray-trns.png", rows: [7, 8, 7], width: 3, height: 1, bitDepth: 8, colorType: 0,
                                 trnsColor: [7])
        let la = try PNG.readBytes(keyed)
        XCTAssertEqual(la.channels, 2)
        XCTAssertEqual(la.pixels, [7, 0, 8, 255, 7, 0])
        XCTAssertEqual(try PNG.readBytes(keyed, channels: 1).pixels, [7, 8, 7])
    }

    func testInterlacedEqualsNonInterlaced() throws {
        let (width, height) = (11, 9)
        let rows = pseudoRandomBytes(width * height * 3, seed: 3)
        let progressive = try writeRaw("plain.png", rows: rows, width: width, height: height, bitDepth: 8,
                                       colorType: 2)
        let interlaced = try writeRaw("adam7.png", rows: rows, width: width, height: height, bitDepth: 8,
                                      colorType: 2, interlaced: true)
        XCTAssertNotEqual(try bytes(of: progressive), try bytes(of: interlaced))
        XCTAssertEqual(try PNG.readBytes(interlaced).pixels, rows)
        XCTAssertEqual(try PNG.readBytes(interlaced), try PNG.readBytes(progressive))
    }

    // MARK: - Text chunks

    func testTextChunksRoundTrip() throws {
        let text: [(key: String, value: String)] = [
            ("prompt", "a photo of a cat, 4k"), ("latin", "café crème"), ("utf8", "猫の写真 🐈"),
            ("empty", ""), ("multi line", "one\ntwo"),
        ]
        let image = try ByteImage(width: 1, height: 1, channels: 3, pixels: [1, 2, 3])
        let file = path("text.png")
        try PNG.writeBytes(image, to: file, text: text)
        let (back, read) = try PNG.readBytesWithText(file)
        XCTAssertEqual(back, image)
        XCTAssertEqual(read, Dictionary(uniqueKeysWithValues: text.map { ($0.key, $0.value) }))
        let types = chunks(try bytes(of: file)).map(\.type)
        XCTAssertEqual(types.filter { $0 == "tEXt" }.count, 4)
        XCTAssertEqual(types.filter { $0 == "iTXt" }.count, 1)  // only the non-Latin-1 value
        XCTAssertLessThan(types.firstIndex(of: "iTXt")!, types.firstIndex(of: "IDAT")!)

        let (floats, floatText) = try PNG.readWithText(file)
        XCTAssertEqual(floats.pixels.count, 3)
        XCTAssertEqual(floatText["utf8"], "猫の写真 🐈")

        for badKey in ["", String(repeating: "k", count: 80), "emoji🐈", " lead", "two  spaces"] {
            _ = assertThrows(try PNG.writeBytes(image, to: path("badkey.png"), text: [(badKey, "v")]),
                             naming: path("badkey.png"), containing: ["text key"])
        }
        _ = assertThrows(try PNG.writeBytes(image, to: path("nul.png"), text: [("k", "a\0b")]),
                         naming: path("nul.png"), containing: ["NUL"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("badkey.png")))
    }

    func testRepeatedKeyKeepsTheLastValue() throws {
        let image = try ByteImage(width: 1, height: 1, channels: 1, pixels: [9])
        let file = path("repeat.png")
        try PNG.writeBytes(image, to: file, text: [("k", "first"), ("k", "second")])
        XCTAssertEqual(try PNG.readBytesWithText(file).1, ["k": "second"])
    }

    // MARK: - Errors

    func testMissingFile() {
        let file = path("missing.png")
        let error = assertThrows(try PNG.read(file), naming: file, containing: ["cannot open", "No such file"])
        XCTAssertEqual(error, .cannotOpen(path: file, reason: "No such file or directory"))
        _ = assertThrows(try PNG.read(directory.path), naming: directory.path, containing: ["cannot open"])
    }

    func testNotAPNGAndEmptyFile() throws {
        let text = try store(Array("hello, this is not an image\n".utf8), as: "photo.png")
        XCTAssertEqual(assertThrows(try PNG.read(text), naming: text, containing: [])?.description,
                       "\(text): not a PNG file (signature mismatch)")
        let jpeg = try store([0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 74, 70, 73, 70, 0], as: "jpeg.png")
        _ = assertThrows(try PNG.read(jpeg), naming: jpeg, containing: ["not a PNG file"])
        let empty = try store([], as: "empty.png")
        _ = assertThrows(try PNG.read(empty), naming: empty, containing: ["not a PNG file", "empty"])
        let signatureOnly = try store([137, 80, 78, 71], as: "half-signature.png")
        _ = assertThrows(try PNG.read(signatureOnly), naming: signatureOnly, containing: ["truncated or corrupt"])
    }

    private func validRandomPNG(_ name: String) throws -> (file: String, bytes: [UInt8]) {
        let image = try ByteImage(width: 64, height: 64, channels: 3, pixels: pseudoRandomBytes(64 * 64 * 3, seed: 8))
        let file = path(name)
        try PNG.writeBytes(image, to: file, text: [("prompt", "x")])
        return (file, try bytes(of: file))
    }

    func testTruncatedFiles() throws {
        let (_, valid) = try validRandomPNG("valid.png")
        for (name, cut) in [("half.png", valid.count / 2), ("header.png", 20), ("no-iend.png", valid.count - 12)] {
            let file = try store(Array(valid[..<cut]), as: name)
            _ = assertThrows(try PNG.read(file), naming: file, containing: ["truncated or corrupt", "end of file"])
        }
    }

    func testCorruptedCRCs() throws {
        let (_, valid) = try validRandomPNG("valid.png")
        let layout = chunks(valid)
        // A flipped byte inside IDAT data: the IDAT CRC no longer matches.
        let idat = layout.first { $0.type == "IDAT" }!
        var flipped = valid
        flipped[idat.offset + 8 + idat.length / 2] ^= 0x40
        let idatFile = try store(flipped, as: "idat-crc.png")
        _ = assertThrows(try PNG.read(idatFile), naming: idatFile, containing: ["truncated or corrupt", "CRC"])
        // A wrong CRC on an ancillary chunk (tEXt) is an error too, as in Pillow.
        let text = layout.first { $0.type == "tEXt" }!
        var badText = valid
        badText[text.offset + 8 + text.length] ^= 0x01
        let textFile = try store(badText, as: "text-crc.png")
        _ = assertThrows(try PNG.read(textFile), naming: textFile, containing: ["CRC"])
        // A wrong IHDR CRC.
        var badHeader = valid
        badHeader[8 + 8 + 13] ^= 0xFF
        let headerFile = try store(badHeader, as: "ihdr-crc.png")
        _ = assertThrows(try PNG.read(headerFile), naming: headerFile, containing: ["CRC"])
    }

    func testAbsurdDimensionsAreRefusedBeforeAllocating() throws {
        func header(width: UInt32, height: UInt32, colorType: UInt8) -> [UInt8] {
            let be = { (v: UInt32) in [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: v >> $0) } }
            return [137, 80, 78, 71, 13, 10, 26, 10]
                + chunk("IHDR", be(width) + be(height) + [8, colorType, 0, 0, 0])
                + chunk("IDAT", []) + chunk("IEND", [])
        }
        let huge = try store(header(width: 100_000, height: 100_000, colorType: 6), as: "huge.png")
        _ = assertThrows(try PNG.read(huge), naming: huge, containing: ["too large"])
        let widest = try store(header(width: 0x7FFF_FFFF, height: 0x7FFF_FFFF, colorType: 6), as: "widest.png")
        _ = assertThrows(try PNG.read(widest), naming: widest, containing: ["too large"])
        // 40000^2 gray fits (1.6 GB) but not once converted to RGBA.
        let gray = try store(header(width: 40_000, height: 40_000, colorType: 0), as: "gray-huge.png")
        _ = assertThrows(try PNG.read(gray, channels: 4), naming: gray, containing: ["too large"])
        let zero = try store(header(width: 0, height: 10, colorType: 0), as: "zero.png")
        _ = assertThrows(try PNG.read(zero), naming: zero, containing: ["truncated or corrupt"])
    }

    func testInvalidImages() throws {
        XCTAssertThrowsError(try Image(width: 2, height: 2, channels: 4, pixels: [Float](repeating: 0, count: 12))) {
            XCTAssertEqual(($0 as? PNGError)?.description, "invalid image: image has 3 channels, not 4 as given")
        }
        XCTAssertThrowsError(try ByteImage(width: 2, height: 2, channels: 3, pixels: [1, 2, 3]))
        XCTAssertThrowsError(try Image(width: 0, height: 2, channels: 1, pixels: []))
        XCTAssertThrowsError(try Image(width: 1, height: 1, channels: 5, pixels: [0, 0, 0, 0, 0]))
        var image = try Image(width: 2, height: 2, channels: 4, pixels: [Float](repeating: 0, count: 16))
        image.pixels.removeLast(4)
        let file = path("x.png")
        XCTAssertEqual(assertThrows(try PNG.write(image, to: file), naming: file, containing: [])?.description,
                       "\(file): image has 3 channels, not 4 as given")
        XCTAssertFalse(FileManager.default.fileExists(atPath: file))
    }

    // MARK: - Atomic writes

    private func leftoverTemporaries(in folder: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.contains(".tmp.") }
    }

    func testWriteIntoMissingDirectory() throws {
        let file = path("no/such/dir/out.png")
        let image = try ByteImage(width: 1, height: 1, channels: 1, pixels: [0])
        _ = assertThrows(try PNG.writeBytes(image, to: file), naming: file,
                         containing: ["cannot write", "No such file or directory"])
        XCTAssertEqual(try leftoverTemporaries(in: directory.path), [])
    }

    func testWriteReplacesAtomicallyAndFailuresKeepTheOldFile() throws {
        let file = path("keep.png")
        let first = try ByteImage(width: 2, height: 2, channels: 3, pixels: pseudoRandomBytes(12, seed: 1))
        try PNG.writeBytes(first, to: file)
        let original = try bytes(of: file)

        // Overwriting works and leaves no temporary file behind.
        let second = try ByteImage(width: 3, height: 1, channels: 1, pixels: [1, 2, 3])
        try PNG.writeBytes(second, to: file)
        XCTAssertEqual(try PNG.readBytes(file), second)
        try Data(original).write(to: URL(fileURLWithPath: file))

        // Failures before any byte is written.
        _ = assertThrows(try PNG.writeBytes(second, to: file, text: [("", "x")]), naming: file, containing: [])
        _ = assertThrows(try PNG.writeBytes(second, to: file, compressionLevel: -1), naming: file, containing: [])
        XCTAssertEqual(try bytes(of: file), original)

        // A failure in the middle of writing the temporary file: a file size limit makes write() fail with EFBIG.
        var saved = rlimit()
        XCTAssertEqual(getrlimit(Int32(RLIMIT_FSIZE.rawValue), &saved), 0)
        let previousHandler = signal(SIGXFSZ, SIG_IGN)
        var limited = saved
        limited.rlim_cur = 4096
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &limited), 0)
        let big = try ByteImage(width: 256, height: 256, channels: 3, pixels: pseudoRandomBytes(256 * 256 * 3, seed: 4))
        let result = Result { try PNG.writeBytes(big, to: file) }
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &saved), 0)
        signal(SIGXFSZ, previousHandler)
        guard case .failure(let error) = result else { return XCTFail("write under a 4 KiB file size limit succeeded") }
        XCTAssertTrue("\(error)".hasPrefix(file + ": cannot write: "), "\(error)")
        XCTAssertTrue("\(error)".contains("File too large"), "\(error)")
        XCTAssertEqual(try bytes(of: file), original)
        XCTAssertEqual(try PNG.readBytes(file), first)
        XCTAssertEqual(try leftoverTemporaries(in: directory.path), [])

        // The target being a directory: the rename fails, the temporary file is removed.
        let folder = path("folder.png")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        _ = assertThrows(try PNG.writeBytes(second, to: folder), naming: folder, containing: ["cannot write"])
        XCTAssertEqual(try leftoverTemporaries(in: directory.path), [])
    }
}
