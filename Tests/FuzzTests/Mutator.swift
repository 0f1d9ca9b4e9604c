// Inputs for the fuzz tests: valid files mutated (bytes flipped, set, inserted, deleted, cut, repeated; numbers in
// text replaced by edge values; a safetensors header or a PNG chunk mutated with the framing repaired so the parser
// gets past its first checks) and random files, all from a seeded generator, so a run is replayed by its seed.
import Foundation

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
struct FuzzRNG {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
    mutating func chance(_ p: Double) -> Bool { Double(next() >> 11) / Double(1 << 53) < p }
    mutating func pick<T>(_ xs: [T]) -> T { xs[below(xs.count)] }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

enum Mutator {
    /// Numbers that break parsers: signs, zero, powers of two at type limits, huge exponents, non-numbers.
    static let edgeNumbers = ["0", "-1", "1", "-0", "2147483647", "2147483648", "4294967296", "9223372036854775807",
                              "9223372036854775808", "-9223372036854775809", "18446744073709551616", "1e308", "1e400",
                              "-1e400", "NaN", "Infinity", "1.5", "0.0000001", "99999999999999999999999", "65536",
                              "1099511627776", "3", "\"1\"", "null", "[]", "{}", "true"]
    static let edgeTokens = ["\"", "\\", "{", "}", "[", "]", ":", ",", "\n", "\0", "\u{FF}", "\u{FE}\u{FF}", "#", "---",
                             "'", "- ", "\t", "\r\n", "\\u0000", "\\ud800", "<|endoftext|>", "é", "🙂", " "]

    /// 1 to 4 stacked mutations of `seed`; `text` adds the token-level ones.
    static func mutate(_ seed: [UInt8], text: Bool, rng: inout FuzzRNG) -> [UInt8] {
        var b = seed
        for _ in 0..<(1 + rng.below(4)) {
            switch rng.below(text ? 11 : 8) {
            case 0: if !b.isEmpty { b[rng.below(b.count)] ^= UInt8(1 << rng.below(8)) }
            case 1: if !b.isEmpty { b[rng.below(b.count)] = rng.pick([0, 0xFF, 0x7F, 0x80, 0x20, 0x22, 0x0A]) }
            case 2: b.insert(contentsOf: rng.bytes(1 + rng.below(8)), at: rng.below(b.count + 1))
            case 3: if !b.isEmpty { let i = rng.below(b.count); b.removeSubrange(i..<min(b.count, i + 1 + rng.below(16))) }
            case 4: b = Array(b.prefix(rng.below(b.count + 1)))                                   // cut short
            case 5: if !b.isEmpty {                                                                 // repeat a chunk
                let i = rng.below(b.count), n = min(b.count - i, 1 + rng.below(64))
                b.insert(contentsOf: b[i..<(i + n)], at: rng.below(b.count + 1))
            }
            case 6: if b.count >= 4 {                                                               // overwrite 4 bytes
                let i = rng.below(b.count - 3)
                let v = rng.pick([UInt32.max, 0x7FFF_FFFF, 0x8000_0000, 0, 1, 0xFFFF])
                for k in 0..<4 { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
            }
            case 7: if !b.isEmpty { let i = rng.below(b.count); b.replaceSubrange(i..<min(b.count, i + 8), with: rng.bytes(8)) }
            case 8: b = replaceNumber(b, rng: &rng)
            case 9: b.insert(contentsOf: Array(rng.pick(edgeTokens).utf8), at: rng.below(b.count + 1))
            default: b = spliceLines(b, rng: &rng)
            }
        }
        return b
    }

    /// A run of digits (with sign, point, exponent) replaced by an edge number.
    static func replaceNumber(_ b: [UInt8], rng: inout FuzzRNG) -> [UInt8] {
        let isDigit: (UInt8) -> Bool = { $0 >= 0x30 && $0 <= 0x39 }
        let starts = b.indices.filter { isDigit(b[$0]) && ($0 == 0 || !isDigit(b[$0 - 1])) }
        guard !starts.isEmpty else { return b }
        let s = rng.pick(starts)
        var e = s
        while e < b.count, isDigit(b[e]) || b[e] == 0x2E || b[e] == 0x65 || b[e] == 0x2D || b[e] == 0x2B { e += 1 }
        var out = b
        out.replaceSubrange(s..<e, with: Array(rng.pick(edgeNumbers).utf8))
        return out
    }

    /// A line deleted, repeated or swapped with another.
    static func spliceLines(_ b: [UInt8], rng: inout FuzzRNG) -> [UInt8] {
        var lines = b.split(separator: 0x0A, omittingEmptySubsequences: false).map(Array.init)
        guard !lines.isEmpty else { return b }
        let i = rng.below(lines.count), j = rng.below(lines.count)
        switch rng.below(3) {
        case 0: lines.remove(at: i)
        case 1: lines.insert(lines[i], at: j)
        default: lines.swapAt(i, j)
        }
        return Array(lines.joined(separator: [0x0A]))
    }

    /// safetensors: the JSON header mutated as text, the 8-byte length rewritten to fit (or left as it was).
    static func mutateSafetensors(_ seed: [UInt8], rng: inout FuzzRNG) -> [UInt8] {
        guard seed.count >= 8, rng.chance(0.7) else { return mutate(seed, text: false, rng: &rng) }
        let n = Int(seed[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        guard n <= seed.count - 8 else { return mutate(seed, text: false, rng: &rng) }
        let header = mutate(Array(seed[8..<(8 + n)]), text: true, rng: &rng)
        let length = rng.chance(0.9) ? UInt64(header.count) : UInt64(n)
        return (0..<8).map { UInt8(truncatingIfNeeded: length >> (8 * UInt64($0))) } + header + seed[(8 + n)...]
    }

    /// PNG: one chunk's data (or length, or type) mutated, then every chunk's CRC recomputed (a CRC mismatch alone
    /// would stop libpng at the first check).
    static func mutatePNG(_ seed: [UInt8], rng: inout FuzzRNG) -> [UInt8] {
        var b = mutate(seed, text: false, rng: &rng)
        guard rng.chance(0.8) else { return b }
        var i = 8
        while i + 12 <= b.count {
            let len = Int(UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3]))
            guard len <= b.count - i - 12 else { break }
            let crc = crc32(b[(i + 4)..<(i + 8 + len)])
            for k in 0..<4 { b[i + 8 + len + k] = UInt8(truncatingIfNeeded: crc >> (24 - 8 * UInt32(k))) }
            i += 12 + len
        }
        return b
    }

    static func crc32<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c: UInt32 = 0xFFFF_FFFF
        for x in bytes {
            c ^= UInt32(x)
            for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        }
        return c ^ 0xFFFF_FFFF
    }

    /// A random file: random bytes, or random printable text, up to `maxLength`.
    static func random(maxLength: Int, rng: inout FuzzRNG) -> [UInt8] {
        let n = rng.below(maxLength + 1)
        if rng.chance(0.5) { return rng.bytes(n) }
        let alphabet = Array("{}[]\":,0123456789.-eE abcdefghijklmnopqrstuvwxyz_\n#'\\".utf8)
        return (0..<n).map { _ in rng.pick(alphabet) }
    }
}
