// PNG read/write through libpng (the C layer in Sources/CPNG keeps libpng's longjmp out of Swift frames).
// Ref: diffusers VaeImageProcessor.normalize/denormalize, pil_to_numpy, numpy_to_pil; Pillow `Image.open(p).convert`.
//
// Reading gives what diffusers sees after `Image.open(path).convert(mode)` and `VaeImageProcessor.preprocess`:
// palette expanded, tRNS as alpha, 16-bit samples cut to their high byte (for 16-bit *gray* Pillow instead opens
// "I;16" and saturates on convert; we take the high byte there too), channel conversions with Pillow's rounding
// (L = L24 luma), then x / 255 in float32 and 2x - 1. Writing inverts numpy_to_pil: clamp(x/2 + 0.5, 0, 1) * 255,
// round half to even, uint8; NaN becomes 0. Writes are atomic: a temporary file in the target directory is
// written, fsync'ed and renamed over the target, so a failure leaves an existing file as it was.
// Text chunks: tEXt for Latin-1 values and iTXt otherwise, as Pillow's PngInfo.add_text; on reading a repeated key
// keeps its last value, as Pillow's `info`.
import CPNG

// MARK: - Images

/// Pixels as the VAE takes them: planar (C, H, W) floats in [-1, 1]; channels 1 L, 2 LA, 3 RGB, 4 RGBA.
public struct Image: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public let channels: Int
    /// (C, H, W), values in [-1, 1].
    public var pixels: [Float]

    public init(width: Int, height: Int, channels: Int, pixels: [Float]) throws {
        if let reason = PNG.layoutProblem(width: width, height: height, channels: channels, count: pixels.count) {
            throw PNGError.invalidImage(path: nil, reason: reason)
        }
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    init(unchecked width: Int, height: Int, channels: Int, pixels: [Float]) {
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// `2 * (x / 255) - 1` in float32, as pil_to_numpy then VaeImageProcessor.normalize.
    public init(normalizing bytes: ByteImage) {
        let planeCount = bytes.width * bytes.height, channels = bytes.channels
        let table = PNG.normalizedByteValues
        var planar = [Float](repeating: 0, count: planeCount * channels)
        bytes.pixels.withUnsafeBufferPointer { source in
            planar.withUnsafeMutableBufferPointer { out in
                for c in 0..<channels {
                    let plane = out.baseAddress! + c * planeCount
                    let interleaved = source.baseAddress! + c
                    for i in 0..<planeCount { plane[i] = table[Int(interleaved[i * channels])] }
                }
            }
        }
        self.init(unchecked: bytes.width, height: bytes.height, channels: channels, pixels: planar)
    }
}

/// Raw 8-bit pixels: interleaved (H, W, C), as PIL's `np.array(image)`.
public struct ByteImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public let channels: Int
    /// (H, W, C)
    public var pixels: [UInt8]

    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) throws {
        if let reason = PNG.layoutProblem(width: width, height: height, channels: channels, count: pixels.count) {
            throw PNGError.invalidImage(path: nil, reason: reason)
        }
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    init(unchecked width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// `round_half_even(clamp(x / 2 + 0.5, 0, 1) * 255)` in float32, as VaeImageProcessor.denormalize then
    /// numpy_to_pil; NaN maps to 0. Throws if `image.pixels` was resized after the image was made.
    public init(denormalizing image: Image) throws {
        if let reason = PNG.layoutProblem(width: image.width, height: image.height, channels: image.channels,
                                          count: image.pixels.count) {
            throw PNGError.invalidImage(path: nil, reason: reason)
        }
        let planeCount = image.width * image.height, channels = image.channels
        var interleaved = [UInt8](repeating: 0, count: planeCount * channels)
        image.pixels.withUnsafeBufferPointer { source in
            interleaved.withUnsafeMutableBufferPointer { out in
                for c in 0..<channels {
                    let plane = source.baseAddress! + c * planeCount
                    let destination = out.baseAddress! + c
                    for i in 0..<planeCount { destination[i * channels] = PNG.byte(fromNormalized: plane[i]) }
                }
            }
        }
        self.init(unchecked: image.width, height: image.height, channels: channels, pixels: interleaved)
    }
}

// MARK: - Errors

public enum PNGError: Error, UserInputError, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, reason: String)
    case notPNG(path: String, reason: String)
    case corrupt(path: String, detail: String)
    case tooLarge(path: String, detail: String)
    case outOfMemory(path: String, detail: String)
    case cannotWrite(path: String, reason: String)
    /// Dimensions, channel count or pixel count that do not fit; `path` is nil when raised by an initializer.
    case invalidImage(path: String?, reason: String)
    case invalidText(path: String, key: String, reason: String)
    case invalidArgument(path: String, reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let reason): return "\(path): cannot open: \(reason)"
        case .notPNG(let path, let reason): return "\(path): not a PNG file (\(reason))"
        case .corrupt(let path, let detail): return "\(path): truncated or corrupt PNG data (libpng: \(detail))"
        case .tooLarge(let path, let detail): return "\(path): image too large: \(detail)"
        case .outOfMemory(let path, let detail): return "\(path): out of memory: \(detail)"
        case .cannotWrite(let path, let reason): return "\(path): cannot write: \(reason)"
        case .invalidImage(let path?, let reason): return "\(path): \(reason)"
        case .invalidImage(nil, let reason): return "invalid image: \(reason)"
        case .invalidText(let path, let key, let reason): return "\(path): text key \"\(key)\": \(reason)"
        case .invalidArgument(let path, let reason): return "\(path): \(reason)"
        }
    }
}

// MARK: - Reading and writing

public enum PNG {
    /// zlib level used by Pillow's PNG writer by default.
    public static let defaultCompressionLevel = 6

    /// Reads `path` as floats (C, H, W) in [-1, 1]. `channels` nil keeps the decoded channels (a tRNS chunk counts
    /// as alpha); 1, 2, 3 or 4 converts as Pillow's `convert("L" / "LA" / "RGB" / "RGBA")`.
    public static func read(_ path: String, channels: Int? = nil) throws -> Image {
        try readWithText(path, channels: channels).0
    }

    /// `read` plus the tEXt/zTXt/iTXt chunks (before and after IDAT) as key -> value.
    public static func readWithText(_ path: String, channels: Int? = nil) throws -> (Image, [String: String]) {
        let (bytes, text) = try readBytesWithText(path, channels: channels)
        return (Image(normalizing: bytes), text)
    }

    /// Reads `path` as 8-bit interleaved (H, W, C) pixels; `channels` as in `read`.
    public static func readBytes(_ path: String, channels: Int? = nil) throws -> ByteImage {
        try readBytesWithText(path, channels: channels).0
    }

    public static func readBytesWithText(_ path: String, channels: Int? = nil) throws -> (ByteImage, [String: String]) {
        if let channels, !(1...4).contains(channels) {
            throw PNGError.invalidArgument(
                path: path, reason: "cannot convert to \(channels) channels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)")
        }
        var raw = hg_png_image()
        let capacity = Int(HG_PNG_MESSAGE_CAPACITY)
        var message = [CChar](repeating: 0, count: capacity)
        let code = hg_png_read(path, Int32(channels ?? 0), &raw, &message, capacity)
        defer { hg_png_image_free(&raw) }
        guard Int(code) == HG_PNG_OK else { throw error(code: code, path: path, message: message, writing: false) }

        let width = Int(raw.width), height = Int(raw.height), decodedChannels = Int(raw.channels)
        let count = width * height * decodedChannels
        let pixels = [UInt8](UnsafeBufferPointer(start: raw.pixels, count: count))
        var text: [String: String] = [:]
        for i in 0..<Int(raw.text_count) {
            let entry = raw.texts[i]
            text[String(cString: entry.key)] = String(cString: entry.value)
        }
        return (ByteImage(unchecked: width, height: height, channels: decodedChannels, pixels: pixels), text)
    }

    /// Writes `image` as an 8-bit PNG (gray, gray+alpha, RGB or RGBA by its channel count), atomically.
    public static func write(_ image: Image, to path: String, text: [(key: String, value: String)] = [],
                             compressionLevel: Int = defaultCompressionLevel) throws {
        if let reason = layoutProblem(width: image.width, height: image.height, channels: image.channels,
                                      count: image.pixels.count) {
            throw PNGError.invalidImage(path: path, reason: reason)
        }
        try writeBytes(ByteImage(denormalizing: image), to: path, text: text, compressionLevel: compressionLevel)
    }

    /// Writes 8-bit interleaved pixels, atomically; text values that are not Latin-1 go into iTXt chunks.
    public static func writeBytes(_ image: ByteImage, to path: String, text: [(key: String, value: String)] = [],
                                  compressionLevel: Int = defaultCompressionLevel) throws {
        if let reason = layoutProblem(width: image.width, height: image.height, channels: image.channels,
                                      count: image.pixels.count) {
            throw PNGError.invalidImage(path: path, reason: reason)
        }
        guard (0...9).contains(compressionLevel) else {
            throw PNGError.invalidArgument(path: path, reason: "compression level \(compressionLevel) is not in 0...9")
        }
        guard image.width <= Int(UInt32.max >> 1), image.height <= Int(UInt32.max >> 1) else {
            throw PNGError.tooLarge(path: path, detail: "\(image.width) x \(image.height) pixels")
        }
        let chunks = try text.map { try encodeText(key: $0.key, value: $0.value, path: path) }
        let capacity = Int(HG_PNG_MESSAGE_CAPACITY)
        var message = [CChar](repeating: 0, count: capacity)
        let code: Int32 = withTextChunks(chunks) { chunkPointer, chunkCount in
            image.pixels.withUnsafeBufferPointer { pixels in
                hg_png_write(path, pixels.baseAddress, UInt32(image.width), UInt32(image.height), Int32(image.channels),
                             chunkPointer, Int32(chunkCount), Int32(compressionLevel), &message, capacity)
            }
        }
        guard Int(code) == HG_PNG_OK else { throw error(code: code, path: path, message: message, writing: true) }
    }

    // MARK: - Value mapping

    /// normalizedByteValues[k] = 2 * (Float(k) / 255) - 1, in float32 step by step as numpy/torch compute it.
    static let normalizedByteValues: [Float] = (0...255).map { k in
        let unit = Float(k) / 255
        return 2 * unit - 1
    }

    @inline(__always)
    static func byte(fromNormalized x: Float) -> UInt8 {
        var unit = x / 2 + 0.5
        if !(unit >= 0) { unit = 0 }  // negatives and NaN
        if unit > 1 { unit = 1 }
        return UInt8((unit * 255).rounded(.toNearestOrEven))
    }

    // MARK: - Helpers

    /// Why (width, height, channels) cannot describe `count` values, or nil when it can.
    static func layoutProblem(width: Int, height: Int, channels: Int, count: Int) -> String? {
        guard width >= 1, height >= 1 else { return "invalid dimensions \(width) x \(height)" }
        guard (1...4).contains(channels) else {
            return "image has \(channels) channels; PNG holds 1 gray, 2 gray+alpha, 3 RGB or 4 RGBA"
        }
        let (plane, overflow) = width.multipliedReportingOverflow(by: height)
        guard !overflow, plane <= Int.max / 4 else { return "dimensions \(width) x \(height) are too large" }
        if count == plane * channels { return nil }
        if count % plane == 0, (1...4).contains(count / plane) {
            return "image has \(count / plane) channels, not \(channels) as given"
        }
        return "\(count) pixel values do not fill \(width) x \(height) x \(channels) = \(plane * channels)"
    }

    private struct EncodedText {
        var key: [CChar]
        var value: [CChar]
        var isUTF8: Bool
    }

    /// PNG keywords are 1 to 79 printable Latin-1 characters without leading, trailing or repeated spaces.
    private static func encodeText(key: String, value: String, path: String) throws -> EncodedText {
        let keyScalars = Array(key.unicodeScalars)
        guard (1...79).contains(keyScalars.count) else {
            throw PNGError.invalidText(path: path, key: key, reason: "a PNG keyword has 1 to 79 characters")
        }
        guard keyScalars.allSatisfy({ (32...126).contains($0.value) || (161...255).contains($0.value) }) else {
            throw PNGError.invalidText(path: path, key: key,
                                       reason: "a PNG keyword holds only printable Latin-1 characters")
        }
        guard keyScalars.first != " ", keyScalars.last != " ", !key.contains("  ") else {
            throw PNGError.invalidText(path: path, key: key,
                                       reason: "a PNG keyword has no leading, trailing or repeated spaces")
        }
        guard !value.unicodeScalars.contains("\0") else {
            throw PNGError.invalidText(path: path, key: key, reason: "the value contains a NUL character")
        }
        let latin1Key = keyScalars.map { CChar(bitPattern: UInt8($0.value)) } + [0]
        if value.unicodeScalars.allSatisfy({ $0.value <= 255 }) {
            let latin1Value = value.unicodeScalars.map { CChar(bitPattern: UInt8($0.value)) } + [0]
            return EncodedText(key: latin1Key, value: latin1Value, isUTF8: false)
        }
        return EncodedText(key: latin1Key, value: value.utf8.map { CChar(bitPattern: $0) } + [0], isUTF8: true)
    }

    /// Calls `body` with an hg_png_text_in array whose strings stay valid for the call.
    private static func withTextChunks<R>(_ chunks: [EncodedText],
                                          _ body: (UnsafePointer<hg_png_text_in>?, Int) -> R) -> R {
        var storage: [UnsafeMutablePointer<CChar>] = []
        defer { storage.forEach { $0.deallocate() } }
        func copy(_ bytes: [CChar]) -> UnsafeMutablePointer<CChar> {
            let pointer = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count)
            pointer.initialize(from: bytes, count: bytes.count)
            storage.append(pointer)
            return pointer
        }
        let entries = chunks.map { chunk in
            hg_png_text_in(key: copy(chunk.key), value: copy(chunk.value), is_utf8: chunk.isUTF8 ? 1 : 0)
        }
        return entries.withUnsafeBufferPointer { body($0.baseAddress, $0.count) }
    }

    private static func error(code: Int32, path: String, message: [CChar], writing: Bool) -> PNGError {
        let text = message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        switch Int(code) {
        case HG_PNG_ERR_OPEN:
            return writing ? .cannotWrite(path: path, reason: text) : .cannotOpen(path: path, reason: text)
        case HG_PNG_ERR_NOT_PNG: return .notPNG(path: path, reason: text)
        case HG_PNG_ERR_CORRUPT: return .corrupt(path: path, detail: text)
        case HG_PNG_ERR_TOO_LARGE: return .tooLarge(path: path, detail: text)
        case HG_PNG_ERR_NOMEM: return .outOfMemory(path: path, detail: text)
        case HG_PNG_ERR_WRITE: return .cannotWrite(path: path, reason: text)
        case HG_PNG_ERR_INVALID: return .invalidArgument(path: path, reason: text)
        default: return .corrupt(path: path, detail: "unknown error code \(code): \(text)")
        }
    }
}
