// safetensors files: a memory-mapped, validated reader and an atomic writer.
// Ref: huggingface/safetensors safetensors/src/tensor.rs — `SafeTensors::read_metadata` (header length checks),
//      `Metadata::validate` (contiguous offsets, byte counts, overflow), `prepare` (writer order and 8-byte padding).
//
// Layout: u64 little-endian header length N, N bytes of UTF-8 JSON, then the data section. The header maps each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end)} relative to the data section, plus an optional
// "__metadata__" object of strings. The reader accepts exactly the files the Rust crate accepts, with these
// deliberate differences: duplicate keys (which serde would silently collapse), dims above Int.max, and the FP8 /
// packed 4-bit dtypes are rejected. The Rust crate's single InvalidHeaderDeserialization case is split here so
// the message says what is wrong. The header is parsed by a small strict JSON parser (serde_json's grammar) so
// that integers stay exact as UInt64, key order is kept, and nesting is bounded (128, as serde_json).

import Glibc
import Tensors

// MARK: - Errors

public enum SafeTensorsError: Error, UserInputError, CustomStringConvertible, Equatable {
    // Opening
    case cannotOpen(path: String, reason: String)
    // Rust HeaderTooSmall / HeaderTooLarge / InvalidHeaderLength / InvalidHeader
    case fileTooSmall(path: String, byteCount: Int)
    case headerTooLarge(path: String, headerLength: UInt64)
    case headerLengthExceedsFile(path: String, headerLength: UInt64, fileSize: Int)
    case headerNotUTF8(path: String)
    // Rust InvalidHeaderDeserialization, split by cause
    case headerNotJSON(path: String, reason: String, byteOffset: Int)
    case headerNotObject(path: String, found: String)
    case invalidMetadata(path: String, reason: String)
    case invalidTensorEntry(path: String, tensor: String, reason: String)
    case unknownDType(path: String, tensor: String, dtype: String)
    case duplicateKey(path: String, key: String)
    // Rust InvalidOffset / ValidationOverflow / TensorInvalidInfo / MetadataIncompleteBuffer
    case invalidOffsets(path: String, tensor: String, begin: UInt64, end: UInt64, expectedBegin: UInt64)
    case shapeOverflow(path: String, tensor: String, shape: [UInt64], dtype: DType)
    case byteCountMismatch(path: String, tensor: String, begin: UInt64, end: UInt64, shape: [UInt64], dtype: DType,
                           neededBytes: UInt64)
    case incompleteBuffer(path: String, dataEnd: UInt64, dataLength: Int)
    // Access
    case tensorNotFound(path: String, tensor: String, tensorCount: Int)
    case countMismatch(path: String, tensor: String, expected: Int, actual: Int)
    case notIntegerType(path: String, tensor: String, dtype: DType)
    case valueOutOfRange(path: String, tensor: String, index: Int, value: String)
    // Writing
    case invalidEntry(path: String, tensor: String, reason: String)
    case writeFailed(path: String, operation: String, reason: String)

    public var description: String {
        switch self {
        case let .cannotOpen(path, reason):
            return "\(path): cannot open safetensors file: \(reason)"
        case let .fileTooSmall(path, n):
            return "\(path): file is \(n) bytes, too short for a safetensors file (the header length alone is 8 bytes)"
        case let .headerTooLarge(path, n):
            return "\(path): header length \(n) exceeds the 100000000-byte limit (not a safetensors file?)"
        case let .headerLengthExceedsFile(path, n, size):
            return "\(path): header length \(n) runs past the end of the \(size)-byte file (truncated file?)"
        case let .headerNotUTF8(path):
            return "\(path): header is not valid UTF-8"
        case let .headerNotJSON(path, reason, offset):
            return "\(path): header is not valid JSON: \(reason) at header byte \(offset)"
        case let .headerNotObject(path, found):
            return "\(path): header is a JSON \(found), expected an object mapping tensor names to entries"
        case let .invalidMetadata(path, reason):
            return "\(path): __metadata__ \(reason)"
        case let .invalidTensorEntry(path, tensor, reason):
            return "\(path): tensor \(quoted(tensor)) \(reason)"
        case let .unknownDType(path, tensor, dtype):
            return "\(path): tensor \(quoted(tensor)) has unsupported dtype \(quoted(dtype)) (supported: "
                + DType.allCases.map(\.rawValue).joined(separator: ", ") + ")"
        case let .duplicateKey(path, key):
            return "\(path): header lists \(quoted(key)) more than once"
        case let .invalidOffsets(path, tensor, begin, end, expectedBegin):
            if end < begin {
                return "\(path): tensor \(quoted(tensor)) has data_offsets [\(begin), \(end)] whose end is before its begin"
            }
            return "\(path): tensor \(quoted(tensor)) has data_offsets [\(begin), \(end)] but should begin at "
                + "\(expectedBegin) (tensor data must be contiguous from 0, without holes or overlaps)"
        case let .shapeOverflow(path, tensor, shape, dtype):
            return "\(path): tensor \(quoted(tensor)) has shape \(list(shape)) of \(dtype.rawValue) whose size overflows"
        case let .byteCountMismatch(path, tensor, begin, end, shape, dtype, needed):
            return "\(path): tensor \(quoted(tensor)) has data_offsets [\(begin), \(end)] but shape \(list(shape)) of "
                + "\(dtype.rawValue) needs \(needed) bytes"
        case let .incompleteBuffer(path, dataEnd, dataLength):
            if dataEnd > UInt64(dataLength) {
                return "\(path): tensors need \(dataEnd) data bytes but the file has only \(dataLength) (truncated file?)"
            }
            return "\(path): tensors end at data byte \(dataEnd) but the file has \(dataLength) data bytes "
                + "(\(UInt64(dataLength) - dataEnd) trailing bytes)"
        case let .tensorNotFound(path, tensor, count):
            return "\(path): no tensor named \(quoted(tensor)) (the file has \(count) tensor\(count == 1 ? "" : "s"))"
        case let .countMismatch(path, tensor, expected, actual):
            return "\(path): tensor \(quoted(tensor)) has \(actual) elements but \(expected) were expected"
        case let .notIntegerType(path, tensor, dtype):
            return "\(path): tensor \(quoted(tensor)) is \(dtype.rawValue), not an integer type"
        case let .valueOutOfRange(path, tensor, index, value):
            return "\(path): tensor \(quoted(tensor)) element \(index) is \(value), which does not fit in Int64"
        case let .invalidEntry(path, tensor, reason):
            return "\(path): cannot write tensor \(quoted(tensor)): \(reason)"
        case let .writeFailed(path, operation, reason):
            return "\(path): \(operation) failed: \(reason)"
        }
    }
}

private func quoted(_ s: String) -> String {
    var out = ""
    appendJSONString(s, to: &out)
    return out
}

private func list<T>(_ xs: [T]) -> String { "[" + xs.map { "\($0)" }.joined(separator: ", ") + "]" }

private func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

// MARK: - Tensor info

public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Offset of the first byte within the data section (the header's `data_offsets[0]`).
    public let byteOffset: Int
    public let byteCount: Int
    /// Number of elements (1 for a 0-d tensor, 0 when a dim is 0).
    public let count: Int
}

// MARK: - Reader

/// A safetensors file mapped read-only. Opening parses and validates the header; tensor bytes are only touched
/// when read. Pointers from `rawBytes` stay valid while this object is alive.
public final class SafeTensorsFile: @unchecked Sendable {   // immutable after init
    public let path: String
    public let metadata: [String: String]
    /// Tensor names in data-offset order (the order the writer laid them out).
    public let tensorNames: [String]
    /// Tensor entries in data-offset order.
    public let tensors: [TensorInfo]
    /// File offset of the data section (8 + header length).
    public let dataSectionOffset: Int
    public let fileSize: Int

    private let base: UnsafeRawPointer
    private let index: [String: Int]

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SafeTensorsError.cannotOpen(path: path, reason: errnoText()) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SafeTensorsError.cannotOpen(path: path, reason: errnoText()) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw SafeTensorsError.cannotOpen(path: path, reason: "not a regular file")
        }
        let size = Int(st.st_size)
        guard size >= 8 else { throw SafeTensorsError.fileTooSmall(path: path, byteCount: size) }
        guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0),
              mapped != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw SafeTensorsError.cannotOpen(path: path, reason: "mmap: " + errnoText())
        }
        let header: ParsedHeader
        do {
            header = try parseSafeTensorsHeader(UnsafeRawBufferPointer(start: mapped, count: size), path: path)
        } catch {
            munmap(mapped, size)
            throw error
        }
        base = UnsafeRawPointer(mapped)
        fileSize = size
        dataSectionOffset = header.dataSectionOffset
        metadata = header.metadata
        tensors = header.tensors
        tensorNames = header.tensors.map(\.name)
        var index = [String: Int](minimumCapacity: header.tensors.count)
        for (i, t) in header.tensors.enumerated() { index[t.name] = i }
        self.index = index
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), fileSize) }

    public func info(_ name: String) -> TensorInfo? { index[name].map { tensors[$0] } }

    private func require(_ name: String) throws -> TensorInfo {
        guard let i = index[name] else {
            throw SafeTensorsError.tensorNotFound(path: path, tensor: name, tensorCount: tensors.count)
        }
        return tensors[i]
    }

    private func dataPointer(_ t: TensorInfo) -> UnsafeRawPointer { base + dataSectionOffset + t.byteOffset }

    /// The tensor's bytes inside the mapping (little-endian, possibly unaligned).
    public func rawBytes(_ name: String) throws -> UnsafeRawBufferPointer {
        let t = try require(name)
        return UnsafeRawBufferPointer(start: dataPointer(t), count: t.byteCount)
    }

    /// All elements converted to Float (any dtype; see `convertToFloat`).
    public func floats(_ name: String) throws -> [Float] {
        let t = try require(name)
        return [Float](unsafeUninitializedCapacity: t.count) { buffer, initialized in
            if let out = buffer.baseAddress, t.count > 0 {
                convertToFloat(from: dataPointer(t), dtype: t.dtype, count: t.count, into: out)
            }
            initialized = t.count
        }
    }

    /// All elements converted to Double (any dtype).
    public func doubles(_ name: String) throws -> [Double] {
        let t = try require(name)
        return [Double](unsafeUninitializedCapacity: t.count) { buffer, initialized in
            if let out = buffer.baseAddress, t.count > 0 {
                convertToDouble(from: dataPointer(t), dtype: t.dtype, count: t.count, into: out)
            }
            initialized = t.count
        }
    }

    /// All elements as Int64; the tensor must have an integer dtype (BOOL reads as 0 / 1).
    public func int64s(_ name: String) throws -> [Int64] {
        let t = try require(name)
        guard t.dtype.isInteger else { throw SafeTensorsError.notIntegerType(path: path, tensor: name, dtype: t.dtype) }
        let source = dataPointer(t)
        if t.dtype == .U64 {
            for i in 0..<t.count {
                let v = source.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)
                if v > UInt64(Int64.max) {
                    throw SafeTensorsError.valueOutOfRange(path: path, tensor: name, index: i, value: String(v))
                }
            }
        }
        return [Int64](unsafeUninitializedCapacity: t.count) { buffer, initialized in
            if let out = buffer.baseAddress, t.count > 0 {
                convertToInt64(from: source, dtype: t.dtype, count: t.count, into: out)
            }
            initialized = t.count
        }
    }

    /// Drops the pages of a tensor's bytes from this process's resident memory (the mapping stays valid: touched
    /// again, they are read back from the file). For loaders that copy tensors out: the copy and the mapping of a
    /// multi-GB file are then not resident at the same time. Unknown names are ignored.
    public func evict(_ name: String) {
        guard let t = info(name), t.byteCount > 0 else { return }
        let page = max(1, Int(sysconf(Int32(_SC_PAGESIZE))))
        let start = (dataSectionOffset + t.byteOffset) / page * page
        let end = min(fileSize, dataSectionOffset + t.byteOffset + t.byteCount)
        madvise(UnsafeMutableRawPointer(mutating: base) + start, end - start, MADV_DONTNEED)
    }

    /// Converts the tensor into `destination`, whose count must equal the tensor's element count.
    public func read(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let t = try require(name)
        guard destination.count == t.count else {
            throw SafeTensorsError.countMismatch(path: path, tensor: name, expected: destination.count, actual: t.count)
        }
        guard let out = destination.baseAddress, t.count > 0 else { return }
        convertToFloat(from: dataPointer(t), dtype: t.dtype, count: t.count, into: out)
    }
}

// MARK: - Header validation

struct ParsedHeader {
    var metadata: [String: String]
    var tensors: [TensorInfo]   // data-offset order
    var dataSectionOffset: Int
}

private let maxHeaderSize: UInt64 = 100_000_000   // Rust MAX_HEADER_SIZE

/// Validates a whole file's bytes as `SafeTensors::read_metadata` does, in the same order of checks.
func parseSafeTensorsHeader(_ file: UnsafeRawBufferPointer, path: String) throws -> ParsedHeader {
    guard file.count >= 8, let start = file.baseAddress else {
        throw SafeTensorsError.fileTooSmall(path: path, byteCount: file.count)
    }
    let n = UInt64(littleEndian: start.loadUnaligned(as: UInt64.self))
    guard n <= maxHeaderSize else { throw SafeTensorsError.headerTooLarge(path: path, headerLength: n) }
    guard 8 + Int(n) <= file.count else {
        throw SafeTensorsError.headerLengthExceedsFile(path: path, headerLength: n, fileSize: file.count)
    }
    let headerBytes = UnsafeRawBufferPointer(start: start + 8, count: Int(n))
    guard String(validating: headerBytes, as: UTF8.self) != nil else {
        throw SafeTensorsError.headerNotUTF8(path: path)
    }

    let root: HeaderValue
    do {
        var parser = HeaderParser(bytes: headerBytes)
        root = try parser.parseDocument()
    } catch let e as HeaderSyntaxError {
        throw SafeTensorsError.headerNotJSON(path: path, reason: e.reason, byteOffset: e.offset)
    }
    guard case .object(let members) = root else {
        throw SafeTensorsError.headerNotObject(path: path, found: root.kind)
    }

    // Entries as the serde structs read them.
    struct Entry { var name: String; var dtype: DType; var shape: [UInt64]; var begin: UInt64; var end: UInt64 }
    var metadata: [String: String] = [:]
    var entries: [Entry] = []
    entries.reserveCapacity(members.count)
    var seen = Set<String>(minimumCapacity: members.count)
    for (key, value) in members {
        guard seen.insert(key).inserted else { throw SafeTensorsError.duplicateKey(path: path, key: key) }
        if key == "__metadata__" {
            metadata = try readMetadata(value, path: path)
        } else {
            let (dtype, shape, begin, end) = try readEntry(value, name: key, path: path)
            entries.append(Entry(name: key, dtype: dtype, shape: shape, begin: begin, end: end))
        }
    }

    // Rust sorts by data_offsets (a stable sort); ties keep header order.
    let order = entries.indices.sorted { a, b in
        let l = entries[a], r = entries[b]
        if l.begin != r.begin { return l.begin < r.begin }
        if l.end != r.end { return l.end < r.end }
        return a < b
    }

    // Metadata::validate
    var elementCounts: [UInt64] = []
    elementCounts.reserveCapacity(entries.count)
    var expectedBegin: UInt64 = 0
    for i in order {
        let e = entries[i]
        if e.begin != expectedBegin || e.end < e.begin {
            throw SafeTensorsError.invalidOffsets(path: path, tensor: e.name, begin: e.begin, end: e.end,
                                                  expectedBegin: expectedBegin)
        }
        expectedBegin = e.end
        var elements: UInt64 = 1
        var overflow = false
        for d in e.shape where !overflow {
            (elements, overflow) = elements.multipliedReportingOverflow(by: d)
        }
        var nbytes: UInt64 = 0
        if !overflow { (nbytes, overflow) = elements.multipliedReportingOverflow(by: UInt64(e.dtype.byteSize)) }
        // Dims above Int.max cannot be represented as [Int] (possible only next to a 0 dim, which Rust accepts).
        if overflow || e.shape.contains(where: { $0 > UInt64(Int.max) }) {
            throw SafeTensorsError.shapeOverflow(path: path, tensor: e.name, shape: e.shape, dtype: e.dtype)
        }
        if e.end - e.begin != nbytes {
            throw SafeTensorsError.byteCountMismatch(path: path, tensor: e.name, begin: e.begin, end: e.end,
                                                     shape: e.shape, dtype: e.dtype, neededBytes: nbytes)
        }
        elementCounts.append(elements)
    }
    let dataLength = file.count - 8 - Int(n)
    guard expectedBegin == UInt64(dataLength) else {
        throw SafeTensorsError.incompleteBuffer(path: path, dataEnd: expectedBegin, dataLength: dataLength)
    }
    // Every offset now lies within the file, so the Int conversions below are exact.
    let tensors = zip(order, elementCounts).map { i, elements in
        let e = entries[i]
        return TensorInfo(name: e.name, dtype: e.dtype, shape: e.shape.map { Int($0) }, byteOffset: Int(e.begin),
                          byteCount: Int(e.end - e.begin), count: Int(elements))
    }
    return ParsedHeader(metadata: metadata, tensors: tensors, dataSectionOffset: 8 + Int(n))
}

/// `__metadata__`: null or an object of strings (serde `Option<HashMap<String, String>>`).
private func readMetadata(_ value: HeaderValue, path: String) throws -> [String: String] {
    switch value {
    case .null: return [:]
    case .object(let members):
        var out: [String: String] = [:]
        for (k, v) in members {
            guard case .string(let s) = v else {
                throw SafeTensorsError.invalidMetadata(path: path,
                                                       reason: "value of \(quoted(k)) is \(v.kindWithArticle), expected a string")
            }
            out[k] = s   // serde's HashMap keeps the last of duplicate keys
        }
        return out
    default:
        throw SafeTensorsError.invalidMetadata(path: path,
                                               reason: "is \(value.kindWithArticle), expected an object of strings")
    }
}

/// A tensor entry (serde `TensorInfo`: unknown fields ignored, duplicate fields rejected).
private func readEntry(_ value: HeaderValue, name: String, path: String) throws
    -> (DType, [UInt64], UInt64, UInt64) {
    func bad(_ reason: String) -> SafeTensorsError {
        .invalidTensorEntry(path: path, tensor: name, reason: reason)
    }
    guard case .object(let fields) = value else {
        throw bad("is \(value.kindWithArticle), expected an object with dtype, shape and data_offsets")
    }
    var dtype: DType?, shape: [UInt64]?, offsets: (UInt64, UInt64)?
    var seen = Set<String>()
    for (key, v) in fields {
        guard key == "dtype" || key == "shape" || key == "data_offsets" else { continue }
        guard seen.insert(key).inserted else { throw bad("has \(quoted(key)) more than once") }
        switch key {
        case "dtype":
            guard case .string(let s) = v else { throw bad("has a dtype that is \(v.kindWithArticle), expected a string") }
            guard let d = DType(rawValue: s) else {
                throw SafeTensorsError.unknownDType(path: path, tensor: name, dtype: s)
            }
            dtype = d
        case "shape":
            guard case .array(let items) = v else {
                throw bad("has a shape that is \(v.kindWithArticle), expected a list of non-negative integers")
            }
            var dims: [UInt64] = []
            dims.reserveCapacity(items.count)
            for item in items {
                guard case .number(_, let u?) = item else {
                    throw bad("has shape element \(item.text), expected a non-negative integer")
                }
                dims.append(u)
            }
            shape = dims
        default:
            guard case .array(let items) = v, items.count == 2,
                  case .number(_, let b?) = items[0], case .number(_, let e?) = items[1] else {
                throw bad("has data_offsets \(v.text), expected [begin, end] as non-negative integers")
            }
            offsets = (b, e)
        }
    }
    guard let dtype else { throw bad("has no \"dtype\"") }
    guard let shape else { throw bad("has no \"shape\"") }
    guard let offsets else { throw bad("has no \"data_offsets\"") }
    return (dtype, shape, offsets.0, offsets.1)
}

// MARK: - Header JSON (strict, serde_json grammar)

private indirect enum HeaderValue {
    case object([(String, HeaderValue)])   // keys in file order
    case array([HeaderValue])
    case string(String)
    /// `unsigned` is set when the literal is an integer in 0...UInt64.max without fraction or exponent
    /// (what serde accepts for usize); anything else is a float or negative number to serde.
    case number(text: String, unsigned: UInt64?)
    case bool(Bool)
    case null

    var kind: String {
        switch self {
        case .object: return "object"
        case .array: return "array"
        case .string: return "string"
        case .number: return "number"
        case .bool: return "boolean"
        case .null: return "null"
        }
    }

    var kindWithArticle: String {
        switch self {
        case .object: return "an object"
        case .array: return "an array"
        case .null: return "null"
        default: return "a \(kind)"
        }
    }

    /// Short rendering for error messages.
    var text: String {
        switch self {
        case .number(let t, _): return t
        case .string(let s): return quoted(s)
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .array(let items):
            let shown = items.prefix(8).map(\.text).joined(separator: ", ")
            return "[" + shown + (items.count > 8 ? ", ..." : "") + "]"
        case .object: return "an object"
        }
    }
}

private struct HeaderSyntaxError: Error {
    var reason: String
    var offset: Int
}

private struct HeaderParser {
    let bytes: UnsafeRawBufferPointer
    var i = 0
    var depth = 0
    static let maxDepth = 128   // serde_json's recursion limit

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    func fail(_ reason: String, at offset: Int? = nil) -> HeaderSyntaxError {
        HeaderSyntaxError(reason: reason, offset: offset ?? i)
    }

    var atEnd: Bool { i >= bytes.count }
    var peek: UInt8 { bytes[i] }

    mutating func skipWhitespace() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    mutating func parseDocument() throws -> HeaderValue {
        skipWhitespace()
        let v = try parseValue()
        skipWhitespace()
        guard atEnd else { throw fail("unexpected \(describeByte(peek)) after the top-level value") }
        return v
    }

    func describeByte(_ b: UInt8) -> String {
        (0x21...0x7E).contains(b) ? "'\(Character(Unicode.Scalar(b)))'" : "byte 0x" + String(b, radix: 16)
    }

    mutating func parseValue() throws -> HeaderValue {
        guard !atEnd else { throw fail("unexpected end of header") }
        switch peek {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw fail("unexpected \(describeByte(peek))")
        }
    }

    mutating func literal(_ word: StaticString) throws {
        let start = i
        let n = word.utf8CodeUnitCount
        guard bytes.count - i >= n else { throw fail("invalid literal", at: start) }
        for k in 0..<n where bytes[i + k] != word.utf8Start[k] { throw fail("invalid literal", at: start) }
        i += n
    }

    mutating func enter() throws {
        depth += 1
        if depth > HeaderParser.maxDepth { throw fail("nesting deeper than \(HeaderParser.maxDepth)") }
    }

    mutating func parseObject() throws -> HeaderValue {
        try enter()
        i += 1   // {
        var members: [(String, HeaderValue)] = []
        skipWhitespace()
        if !atEnd && peek == UInt8(ascii: "}") { i += 1; depth -= 1; return .object(members) }
        while true {
            skipWhitespace()
            guard !atEnd else { throw fail("unexpected end of header inside an object") }
            guard peek == UInt8(ascii: "\"") else { throw fail("expected a string key, found \(describeByte(peek))") }
            let key = try parseString()
            skipWhitespace()
            guard !atEnd, peek == UInt8(ascii: ":") else { throw fail("expected ':' after an object key") }
            i += 1
            skipWhitespace()
            members.append((key, try parseValue()))
            skipWhitespace()
            guard !atEnd else { throw fail("unexpected end of header inside an object") }
            if peek == UInt8(ascii: ",") { i += 1; continue }
            if peek == UInt8(ascii: "}") { i += 1; break }
            throw fail("expected ',' or '}' in an object, found \(describeByte(peek))")
        }
        depth -= 1
        return .object(members)
    }

    mutating func parseArray() throws -> HeaderValue {
        try enter()
        i += 1   // [
        var items: [HeaderValue] = []
        skipWhitespace()
        if !atEnd && peek == UInt8(ascii: "]") { i += 1; depth -= 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try parseValue())
            skipWhitespace()
            guard !atEnd else { throw fail("unexpected end of header inside an array") }
            if peek == UInt8(ascii: ",") { i += 1; continue }
            if peek == UInt8(ascii: "]") { i += 1; break }
            throw fail("expected ',' or ']' in an array, found \(describeByte(peek))")
        }
        depth -= 1
        return .array(items)
    }

    mutating func hex4() throws -> UInt32 {
        guard bytes.count - i >= 4 else { throw fail("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("invalid hex digit in \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    /// The header is already known to be valid UTF-8, so raw bytes are copied as they are.
    mutating func parseString() throws -> String {
        i += 1   // opening quote
        let start = i
        // Fast path: no escapes.
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
                i += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw fail("control character in a string") }
            i += 1
        }
        var out = [UInt8](UnsafeRawBufferPointer(rebasing: bytes[start..<i]))
        while true {
            guard i < bytes.count else { throw fail("unterminated string", at: start - 1) }
            let c = bytes[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < bytes.count else { throw fail("unterminated string", at: start - 1) }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar) {
                    guard bytes.count - i >= 6, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw fail("lone leading surrogate in \\u escape")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw fail("invalid low surrogate in \\u escape") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00..<0xE000).contains(scalar) {
                    throw fail("lone trailing surrogate in \\u escape")
                }
                guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                out.append(contentsOf: UTF8.encode(u)!)
            default:
                throw fail("invalid escape \(describeByte(e))", at: i - 2)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    mutating func parseNumber() throws -> HeaderValue {
        let start = i
        var negative = false
        var integral = true
        if peek == UInt8(ascii: "-") { negative = true; i += 1 }
        func isDigit(_ j: Int) -> Bool { j < bytes.count && (0x30...0x39).contains(bytes[j]) }
        guard isDigit(i) else { throw fail("invalid number", at: start) }
        var value: UInt64? = 0
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
            if isDigit(i) { throw fail("invalid number (leading zero)", at: start) }
        } else {
            while isDigit(i) {
                if let v = value {
                    let (m, o1) = v.multipliedReportingOverflow(by: 10)
                    let (a, o2) = m.addingReportingOverflow(UInt64(bytes[i] - 0x30))
                    value = (o1 || o2) ? nil : a
                }
                i += 1
            }
        }
        if i < bytes.count && bytes[i] == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard isDigit(i) else { throw fail("invalid number (no digit after '.')", at: start) }
            while isDigit(i) { i += 1 }
        }
        if i < bytes.count && (bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E")) {
            integral = false
            i += 1
            if i < bytes.count && (bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-")) { i += 1 }
            guard isDigit(i) else { throw fail("invalid number (no digit in exponent)", at: start) }
            while isDigit(i) { i += 1 }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
        return .number(text: text, unsigned: (negative || !integral) ? nil : value)
    }
}

// MARK: - Writer

/// One tensor to write: little-endian bytes of `dtype` in C order.
public struct SafeTensorsEntry: Sendable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    public var bytes: [UInt8]

    public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// Floats converted to `dtype` (F16 / BF16 round to nearest even, as PyTorch's `.to(dtype)`).
    public init(name: String, shape: [Int], floats: UnsafeBufferPointer<Float>, as dtype: DType = .F32) {
        let n = floats.count
        let bytes = [UInt8](unsafeUninitializedCapacity: n * dtype.byteSize) { buffer, initialized in
            if let src = floats.baseAddress, let dst = buffer.baseAddress, n > 0 {
                convertFromFloat(src, count: n, to: dtype, into: UnsafeMutableRawPointer(dst))
            }
            initialized = n * dtype.byteSize
        }
        self.init(name: name, dtype: dtype, shape: shape, bytes: bytes)
    }

    public init(name: String, shape: [Int], floats: [Float], as dtype: DType = .F32) {
        self = floats.withUnsafeBufferPointer { SafeTensorsEntry(name: name, shape: shape, floats: $0, as: dtype) }
    }

    /// Doubles stored as F64.
    public init(name: String, shape: [Int], doubles: [Double]) {
        let bytes = doubles.withUnsafeBytes { [UInt8]($0) }
        self.init(name: name, dtype: .F64, shape: shape, bytes: bytes)
    }

    /// Int64s stored as I64.
    public init(name: String, shape: [Int], int64s: [Int64]) {
        let bytes = int64s.withUnsafeBytes { [UInt8]($0) }
        self.init(name: name, dtype: .I64, shape: shape, bytes: bytes)
    }
}

public enum SafeTensors {
    /// Writes a safetensors file atomically: a temporary `.NAME.tmp-PID` in the target's directory is written,
    /// fsynced and renamed over `path`, then the directory is fsynced. On failure the temporary file is removed
    /// and an existing file at `path` is left untouched. Tensors are laid out as the Rust crate does (dtype
    /// alignment descending, then name), `__metadata__` comes first when non-empty (keys sorted), and the header
    /// is padded with spaces to a multiple of 8 bytes, so a file Python would write comes out byte-identical.
    public static func write(_ tensors: [SafeTensorsEntry], metadata: [String: String] = [:], to path: String) throws {
        let (header, ordered) = try serializeHeader(tensors, metadata: metadata, path: path)
        try atomicWrite(path: path) { sink in
            var n = UInt64(header.count).littleEndian
            try withUnsafeBytes(of: &n) { try sink.write($0) }
            try header.withUnsafeBytes { try sink.write($0) }
            for t in ordered { try t.bytes.withUnsafeBytes { try sink.write($0) } }
        }
    }

    /// The whole file in memory (same bytes as `write`).
    public static func serialize(_ tensors: [SafeTensorsEntry], metadata: [String: String] = [:],
                                 path: String = "<memory>") throws -> [UInt8] {
        let (header, ordered) = try serializeHeader(tensors, metadata: metadata, path: path)
        var out: [UInt8] = []
        out.reserveCapacity(8 + header.count + ordered.reduce(0) { $0 + $1.bytes.count })
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: header)
        for t in ordered { out.append(contentsOf: t.bytes) }
        return out
    }

    /// Validates the entries and builds the padded header JSON, as serde_json writes it (compact, keys in order).
    static func serializeHeader(_ tensors: [SafeTensorsEntry], metadata: [String: String], path: String) throws
        -> ([UInt8], [SafeTensorsEntry]) {
        var names = Set<String>(minimumCapacity: tensors.count)
        for t in tensors {
            func bad(_ reason: String) -> SafeTensorsError { .invalidEntry(path: path, tensor: t.name, reason: reason) }
            if t.name == "__metadata__" { throw bad("the name is reserved for the metadata") }
            guard names.insert(t.name).inserted else { throw bad("the name appears more than once") }
            if let d = t.shape.first(where: { $0 < 0 }) { throw bad("shape \(list(t.shape)) has negative dim \(d)") }
            var elements = 1, overflow = false
            for d in t.shape where !overflow { (elements, overflow) = elements.multipliedReportingOverflow(by: d) }
            var needed = 0
            if !overflow { (needed, overflow) = elements.multipliedReportingOverflow(by: t.dtype.byteSize) }
            if overflow { throw bad("shape \(list(t.shape)) overflows") }
            if needed != t.bytes.count {
                throw bad("shape \(list(t.shape)) of \(t.dtype.rawValue) needs \(needed) bytes but \(t.bytes.count) were given")
            }
        }
        let ordered = tensors.sorted { l, r in
            if l.dtype.alignmentOrder != r.dtype.alignmentOrder { return l.dtype.alignmentOrder > r.dtype.alignmentOrder }
            return l.name.utf8.lexicographicallyPrecedes(r.name.utf8)   // Rust String order: bytes
        }
        var json = "{"
        var first = true
        if !metadata.isEmpty {
            json += "\"__metadata__\":{"
            let keys = metadata.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
            for (k, key) in keys.enumerated() {
                if k > 0 { json += "," }
                appendJSONString(key, to: &json)
                json += ":"
                appendJSONString(metadata[key]!, to: &json)
            }
            json += "}"
            first = false
        }
        var offset = 0
        for t in ordered {
            if !first { json += "," }
            first = false
            appendJSONString(t.name, to: &json)
            json += ":{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":["
            json += t.shape.map(String.init).joined(separator: ",")
            json += "],\"data_offsets\":[\(offset),\(offset + t.bytes.count)]}"
            offset += t.bytes.count
        }
        json += "}"
        var header = Array(json.utf8)
        header.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - header.count % 8) % 8))
        return (header, ordered)
    }
}

/// serde_json's string escaping: `"` `\` and control characters; everything else, non-ASCII included, verbatim.
private func appendJSONString(_ s: String, to out: inout String) {
    out += "\""
    for u in s.unicodeScalars {
        switch u.value {
        case 0x22: out += "\\\""
        case 0x5C: out += "\\\\"
        case 0x08: out += "\\b"
        case 0x0C: out += "\\f"
        case 0x0A: out += "\\n"
        case 0x0D: out += "\\r"
        case 0x09: out += "\\t"
        case 0..<0x20:
            let hex = String(u.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(u)
        }
    }
    out += "\""
}

// MARK: - Atomic file writing

/// Buffered writes to a file descriptor; small pieces are gathered, large ones go straight through.
final class FileSink {
    let fd: Int32
    let path: String
    private var buffer: [UInt8] = []
    private let capacity = 1 << 20

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
        buffer.reserveCapacity(capacity)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        if buffer.count + bytes.count <= capacity {
            buffer.append(contentsOf: bytes)
            return
        }
        try flush()
        if bytes.count < capacity { buffer.append(contentsOf: bytes) } else { try writeAll(bytes) }
    }

    func flush() throws {
        try buffer.withUnsafeBytes { try writeAll($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        guard var p = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            let n = Glibc.write(fd, p, left)
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.writeFailed(path: path, operation: "write", reason: errnoText())
            }
            p += n
            left -= n
        }
    }
}

/// Writes through `body` into `.NAME.tmp-PID` next to `path`, then fsync + rename + directory fsync.
func atomicWrite(path: String, _ body: (FileSink) throws -> Void) throws {
    let slash = path.lastIndex(of: "/")
    let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
    let fileName = slash.map { String(path[path.index(after: $0)...]) } ?? path
    guard !fileName.isEmpty else {
        throw SafeTensorsError.writeFailed(path: path, operation: "open", reason: "the path names a directory")
    }
    let tempPath = (slash.map { String(path[...$0]) } ?? "") + ".\(fileName).tmp-\(getpid())"

    let fd = open(tempPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
        throw SafeTensorsError.writeFailed(path: path, operation: "creating \(tempPath)", reason: errnoText())
    }
    var isOpen = true
    do {
        let sink = FileSink(fd: fd, path: path)
        try body(sink)
        try sink.flush()
        guard fsync(fd) == 0 else {
            throw SafeTensorsError.writeFailed(path: path, operation: "fsync", reason: errnoText())
        }
        isOpen = false   // the descriptor is released even when close reports an error
        guard close(fd) == 0 else {
            throw SafeTensorsError.writeFailed(path: path, operation: "close", reason: errnoText())
        }
    } catch {
        if isOpen { close(fd) }
        unlink(tempPath)
        throw error
    }
    guard rename(tempPath, path) == 0 else {
        let reason = errnoText()
        unlink(tempPath)
        throw SafeTensorsError.writeFailed(path: path, operation: "rename", reason: reason)
    }
    // Make the rename durable.
    let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dirFD >= 0 else {
        throw SafeTensorsError.writeFailed(path: path, operation: "opening directory \(directory)", reason: errnoText())
    }
    defer { close(dirFD) }
    guard fsync(dirFD) == 0 else {
        throw SafeTensorsError.writeFailed(path: path, operation: "fsync of directory \(directory)", reason: errnoText())
    }
}
