// CLIP's byte-level BPE tokenizer, as the `CLIPTokenizer` that diffusers' Stable Diffusion pipelines load from a
// pipeline's tokenizer/ folder (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json).
//
// Ref: transformers 5.24 models/clip/tokenization_clip.py (CLIPTokenizer, backed by the `tokenizers` library, the
// same pipeline as transformers 4's CLIPTokenizerFast):
//   1. special tokens (bos, eos, unk, pad) are split out of the raw text first (longest match, case-sensitive);
//   2. normalizer: NFC, then every run of whitespace (Unicode White_Space) → one " ", then lower-casing character by
//      character (full Unicode mapping, no context rules: "Σ" at a word end gives "σ", "İ" gives "i" + U+0307);
//   3. pre-tokenizer: the words are the matches of
//      `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//      (letters runs, single digits, runs of anything else; whitespace is dropped), each word's UTF-8 bytes mapped
//      through `bytesToUnicode`;
//   4. BPE per word: the bytes' symbols, the last one with "</w>" appended, then repeatedly the adjacent pair with
//      the lowest merge rank is merged (every occurrence, left to right) until no pair has a rank;
//   5. `<|startoftext|>` + ids + `<|endoftext|>`, truncated so the whole fits model_max_length (77), padded on the
//      right with the pad token (SD 1.x: `<|endoftext|>`; SD 2.x: "!", whose id is 0).
// Special tokens are split out of the text again after normalisation, so "<|STARTOFTEXT|>" is the bos token too
// (transformers 5 does this for added tokens marked `normalized`, and transformers 4's slow tokenizer for both).
// Because the pad token is a special token, with SD 2.x's "!" every "!" in a prompt becomes id 0 (as in transformers).
//
// transformers 4's *slow* CLIPTokenizer (what diffusers loaded before transformers 5; read from its source, not run
// here) differs in the cleanup before the regex. Without ftfy (BERT's BasicTokenizer) it drops control characters,
// puts spaces around CJK ideographs (so each becomes its own word), splits on Python's whitespace and lower-cases with
// Python's str.lower (a word-final "Σ" becomes "ς"); with ftfy installed it ran ftfy.fix_text instead (which also
// straightens curly quotes, expands ligatures, narrows full-width forms, …). It read at most 48 894 merges. On plain
// ASCII prompts without control characters all of them give the same ids. This file follows the transformers of the fixture venv (5.24,
// ftfy absent, which transformers 5 never uses anyway); the fixtures are its output.
import Foundation
import IO

public enum TokenizerError: Error, UserInputError, CustomStringConvertible, Equatable {
    case badVocabulary(path: String, detail: String)
    case badMerges(path: String, line: Int, detail: String)
    case badConfig(path: String, key: String, detail: String)

    public var description: String {
        switch self {
        case .badVocabulary(let p, let d): return "\(p): \(d)"
        case .badMerges(let p, let l, let d): return "\(p):\(l): \(d)"
        case .badConfig(let p, let k, let d): return "\(p): key '\(k)': \(d)"
        }
    }
}

/// GPT-2 / CLIP byte → symbol table: the 188 printable Latin-1 bytes ("!"…"~", "¡"…"¬", "®"…"ÿ") map to themselves,
/// the other 68 bytes, in byte order, to U+0100, U+0101, …. Ref: transformers clip `bytes_to_unicode`.
public let bytesToUnicode: [Unicode.Scalar] = {
    var table = [Unicode.Scalar](repeating: " ", count: 256)
    var next: UInt32 = 256
    for b in 0..<256 {
        if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
            table[b] = Unicode.Scalar(UInt8(b))
        } else {
            table[b] = Unicode.Scalar(next)!
            next += 1
        }
    }
    return table
}()

public final class CLIPTokenizer: @unchecked Sendable {   // immutable after init except the locked cache
    /// Token string → id, as in vocab.json.
    public let vocabulary: [String: Int]
    /// Merges in rank order (rank = index), as in merges.txt.
    public let mergeCount: Int
    /// model_max_length: the length of every `encode` result (BOS … EOS + padding).
    public let maxLength: Int
    public let bosToken: String, eosToken: String, padToken: String, unkToken: String
    public let bosId: Int, eosId: Int, padId: Int, unkId: Int

    /// Symbol ids of each byte, alone and as the last symbol of a word ("</w>"); -1 when the vocabulary lacks it
    /// (such a symbol can take part in no merge and comes out as the unk token).
    private let byteIds: [Int], byteEndIds: [Int]
    /// (left id, right id) packed in one Int → (rank, merged id).
    private let merges: [Int: (rank: Int, merged: Int)]
    /// Special tokens as scalar sequences, longest first, with their ids.
    private let specials: [(scalars: [Unicode.Scalar], id: Int)]
    private var cache: [[UInt8]: [Int]] = [:]
    private let cacheLock = NSLock()
    private static let cacheCapacity = 10_000

    // MARK: - Loading

    /// Reads vocab.json and merges.txt; the special tokens and model_max_length come from `config`
    /// (`TokenizerConfig()` holds transformers' CLIPTokenizer defaults and 77).
    public init(vocabPath: String, mergesPath: String, config: TokenizerConfig = TokenizerConfig(),
                configSource: String = "tokenizer config") throws {
        guard let vocabData = FileManager.default.contents(atPath: vocabPath) else {
            throw ModelFolderError.missingFile(vocabPath, what: "tokenizer vocabulary")
        }
        let vocab: [String: Int]
        do {
            vocab = try JSONDecoder().decode([String: Int].self, from: vocabData)
        } catch {
            throw TokenizerError.badVocabulary(path: vocabPath, detail: "expected a JSON object of token → integer id")
        }
        if let (token, i) = vocab.first(where: { $0.value < 0 || $0.value > Int(Int32.max) }) {
            throw TokenizerError.badVocabulary(path: vocabPath, detail: "token '\(token)' has the id \(i)")
        }
        vocabulary = vocab

        func id(_ token: String, _ key: String) throws -> Int {
            guard let i = vocab[token] else {
                throw TokenizerError.badConfig(path: configSource, key: key, detail: "token '\(token)' is not in \(vocabPath)")
            }
            return i
        }
        bosToken = config.bosToken; eosToken = config.eosToken; padToken = config.padToken; unkToken = config.unkToken
        bosId = try id(bosToken, "bos_token"); eosId = try id(eosToken, "eos_token")
        padId = try id(padToken, "pad_token"); unkId = try id(unkToken, "unk_token")
        guard config.modelMaxLength >= 2 else {
            throw TokenizerError.badConfig(path: configSource, key: "model_max_length",
                                           detail: "\(config.modelMaxLength) leaves no room for the bos and eos tokens")
        }
        guard config.modelMaxLength <= 1 << 16 else {   // transformers' "no limit" sentinel (1e30) cannot pad
            throw TokenizerError.badConfig(path: configSource, key: "model_max_length",
                                           detail: "must be the text encoder's sequence length (77 for CLIP), got no limit")
        }
        maxLength = config.modelMaxLength

        var byteIds = [Int](repeating: -1, count: 256), byteEndIds = [Int](repeating: -1, count: 256)
        for b in 0..<256 {
            let symbol = String(Character(bytesToUnicode[b]))
            byteIds[b] = vocab[symbol] ?? -1
            byteEndIds[b] = vocab[symbol + "</w>"] ?? -1
        }
        self.byteIds = byteIds; self.byteEndIds = byteEndIds

        guard let mergesData = FileManager.default.contents(atPath: mergesPath) else {
            throw ModelFolderError.missingFile(mergesPath, what: "tokenizer BPE merges")
        }
        guard let text = String(data: mergesData, encoding: .utf8) else {
            throw TokenizerError.badMerges(path: mergesPath, line: 1, detail: "not UTF-8 text")
        }
        var table: [Int: (rank: Int, merged: Int)] = [:]
        var rank = 0
        // Split on "\n" scalars: as Characters, "\r\n" is one grapheme and would not split on "\n".
        for (index, scalars) in text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(String.UnicodeScalarView(scalars.last == "\r" ? scalars.dropLast() : scalars))
            if line.isEmpty || (index == 0 && line.hasPrefix("#version")) { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw TokenizerError.badMerges(path: mergesPath, line: index + 1, detail: "expected two symbols separated by one space, got '\(line)'")
            }
            let a = String(parts[0]), b = String(parts[1])
            guard let ia = vocab[a], let ib = vocab[b], let merged = vocab[a + b] else {
                let missing = [a, b, a + b].first { vocab[$0] == nil }!
                throw TokenizerError.badMerges(path: mergesPath, line: index + 1, detail: "'\(missing)' is not in \(vocabPath)")
            }
            let key = CLIPTokenizer.pairKey(ia, ib)
            if table[key] == nil { table[key] = (rank, merged) }   // a repeated merge keeps its first (best) rank
            rank += 1
        }
        merges = table
        mergeCount = rank

        var specialIds: [String: Int] = [:]
        for (token, i) in [(bosToken, bosId), (eosToken, eosId), (unkToken, unkId), (padToken, padId)] { specialIds[token] = i }
        specials = specialIds.filter { !$0.key.isEmpty }.map { (Array($0.key.unicodeScalars), $0.value) }
            .sorted { $0.0.count != $1.0.count ? $0.0.count > $1.0.count : $0.1 < $1.1 }
    }

    /// The tokenizer of a pipeline (its tokenizer/ folder) or a tokenizer folder given directly. Special tokens:
    /// tokenizer_config.json, overridden by special_tokens_map.json where that names them (as transformers does).
    public static func load(_ folder: ModelFolder) throws -> CLIPTokenizer {
        try load(directory: (try folder.tokenizerFiles().vocab as NSString).deletingLastPathComponent)
    }

    /// A tokenizer folder: vocab.json and merges.txt, optional tokenizer_config.json and special_tokens_map.json.
    public static func load(directory: String) throws -> CLIPTokenizer {
        func file(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }
        let fm = FileManager.default
        var config = TokenizerConfig()
        var source = directory
        if fm.fileExists(atPath: file("tokenizer_config.json")) {
            config = try decodeConfig(TokenizerConfig.self, from: file("tokenizer_config.json"))
            source = file("tokenizer_config.json")
        }
        if fm.fileExists(atPath: file("special_tokens_map.json")) {
            try applySpecialTokensMap(file("special_tokens_map.json"), to: &config)
            source += " / special_tokens_map.json"
        }
        return try CLIPTokenizer(vocabPath: file("vocab.json"), mergesPath: file("merges.txt"), config: config,
                                 configSource: source)
    }

    /// special_tokens_map.json: {"bos_token": "…" or {"content": "…", …}, …}; each token given replaces the config's.
    static func applySpecialTokensMap(_ path: String, to config: inout TokenizerConfig) throws {
        guard let data = FileManager.default.contents(atPath: path),
              let object = try? JSONSerialization.jsonObject(with: data), let map = object as? [String: Any] else {
            throw ModelFolderError.badJSON(path, detail: "expected a JSON object of special tokens")
        }
        func token(_ key: String) throws -> String? {
            guard let value = map[key], !(value is NSNull) else { return nil }
            if let s = value as? String { return s }
            if let d = value as? [String: Any], let s = d["content"] as? String { return s }
            throw ModelFolderError.badConfig(path, key: key, detail: "expected a string or an object with \"content\"")
        }
        if let t = try token("bos_token") { config.bosToken = t }
        if let t = try token("eos_token") { config.eosToken = t }
        if let t = try token("unk_token") { config.unkToken = t }
        if let t = try token("pad_token") { config.padToken = t }
    }

    // MARK: - Encoding

    /// BOS + the ids of `text` (at most maxLength − 2 of them: the rest is cut, as `truncation=True`) + EOS, padded
    /// with the pad id to `maxLength` entries. Ref: `tokenizer(prompt, padding="max_length",
    /// max_length=tokenizer.model_max_length, truncation=True)` in diffusers' StableDiffusionPipeline.encode_prompt.
    public func encode(_ text: String) -> [Int] { frame(tokenize(text)) }

    /// BOS + content (truncated to maxLength − 2) + EOS + padding to maxLength.
    public func frame(_ content: [Int]) -> [Int] {
        var ids = [bosId]
        ids.append(contentsOf: content.prefix(maxLength - 2))
        ids.append(eosId)
        ids.append(contentsOf: repeatElement(padId, count: maxLength - ids.count))
        return ids
    }

    /// The token ids of `text` without BOS/EOS, truncation or padding (`add_special_tokens=False`).
    public func tokenize(_ text: String) -> [Int] {
        var ids: [Int] = []
        for segment in splitSpecials(Array(text.unicodeScalars)) {
            switch segment {
            case .special(let id): ids.append(id)
            case .text(let raw):
                for inner in splitSpecials(normalize(raw)) {
                    switch inner {
                    case .special(let id): ids.append(id)
                    case .text(let normalized):
                        for word in CLIPTokenizer.words(normalized) { ids.append(contentsOf: bpe(word)) }
                    }
                }
            }
        }
        return ids
    }

    /// The token strings of ids (for messages and tests).
    public func tokens(_ ids: [Int]) -> [String] {
        let inverse = Dictionary(vocabulary.map { ($0.value, $0.key) }, uniquingKeysWith: { a, _ in a })
        return ids.map { inverse[$0] ?? "<\($0)?>" }
    }

    // MARK: - Steps

    enum Segment { case text([Unicode.Scalar]), special(Int) }

    /// Splits out every special token (leftmost, longest first).
    func splitSpecials(_ s: [Unicode.Scalar]) -> [Segment] {
        var out: [Segment] = []
        var start = 0, i = 0
        outer: while i < s.count {
            for (pattern, id) in specials where pattern.count <= s.count - i && s[i] == pattern[0] {
                if s[i..<(i + pattern.count)].elementsEqual(pattern) {
                    if start < i { out.append(.text(Array(s[start..<i]))) }
                    out.append(.special(id))
                    i += pattern.count
                    start = i
                    continue outer
                }
            }
            i += 1
        }
        if start < s.count { out.append(.text(Array(s[start..<s.count]))) }
        return out
    }

    /// NFC, whitespace runs → " ", per-character full lower-case mapping.
    /// Ref: tokenizers normalizers NFC, Replace(Regex(r"\s+"), " "), Lowercase (Rust `char::to_lowercase`).
    func normalize(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var text = String(String.UnicodeScalarView(s))
        text = text.precomposedStringWithCanonicalMapping
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(text.unicodeScalars.count)
        var inSpace = false
        for c in text.unicodeScalars {
            if c.properties.isWhitespace {
                if !inSpace { out.append(" ") }
                inSpace = true
                continue
            }
            inSpace = false
            if c.isASCII {
                out.append((0x41...0x5A).contains(c.value) ? Unicode.Scalar(c.value + 32)! : c)
            } else {
                out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
            }
        }
        return out
    }

    /// The words of normalized text: the matches of
    /// `'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+` left to right (alternatives tried in order at
    /// each position), as UTF-8 bytes. Ref: CLIPTokenizer's Split pre-tokenizer (behavior "removed", invert).
    static func words(_ s: [Unicode.Scalar]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var i = 0
        while i < s.count {
            let c = s[i]
            if c.properties.isWhitespace { i += 1; continue }
            var end = i + 1
            if c == "'", let n = contractionLength(s, i) {
                end = i + n
            } else if isLetter(c) {
                while end < s.count && isLetter(s[end]) { end += 1 }
            } else if isNumber(c) {
                end = i + 1
            } else {
                while end < s.count && !s[end].properties.isWhitespace && !isLetter(s[end]) && !isNumber(s[end]) { end += 1 }
            }
            var bytes: [UInt8] = []
            for scalar in s[i..<end] { bytes.append(contentsOf: UTF8.encode(scalar)!) }
            out.append(bytes)
            i = end
        }
        return out
    }

    private static let contractions: [[Unicode.Scalar]] = ["s", "t", "re", "ve", "m", "ll", "d"].map { Array($0.unicodeScalars) }

    /// Length of the contraction ('s, 't, …) starting at the apostrophe s[i], if any (first alternative wins).
    private static func contractionLength(_ s: [Unicode.Scalar], _ i: Int) -> Int? {
        for tail in contractions where i + tail.count < s.count {
            if s[(i + 1)...(i + tail.count)].elementsEqual(tail) { return tail.count + 1 }
        }
        return nil
    }

    /// \p{L}: general category Lu, Ll, Lt, Lm, Lo.
    static func isLetter(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    /// \p{N}: general category Nd, Nl, No.
    static func isNumber(_ c: Unicode.Scalar) -> Bool {
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    @inline(__always)
    private static func pairKey(_ a: Int, _ b: Int) -> Int { (a << 32) | b }

    /// BPE of one word (its UTF-8 bytes) → token ids, cached per word.
    /// Ref: CLIPTokenizer.bpe (transformers 4) / tokenizers BPE with end_of_word_suffix "</w>": start from the byte
    /// symbols (the last one with "</w>"), merge the lowest-ranked adjacent pair everywhere, repeat.
    func bpe(_ word: [UInt8]) -> [Int] {
        cacheLock.lock()
        if let hit = cache[word] { cacheLock.unlock(); return hit }
        cacheLock.unlock()

        var symbols = word.indices.map { $0 == word.count - 1 ? byteEndIds[Int(word[$0])] : byteIds[Int(word[$0])] }
        while symbols.count > 1 {
            var best: (rank: Int, merged: Int, left: Int, right: Int)?
            for j in 0..<(symbols.count - 1) where symbols[j] >= 0 && symbols[j + 1] >= 0 {
                if let m = merges[CLIPTokenizer.pairKey(symbols[j], symbols[j + 1])], m.rank < (best?.rank ?? Int.max) {
                    best = (m.rank, m.merged, symbols[j], symbols[j + 1])
                }
            }
            guard let b = best else { break }
            var merged: [Int] = []
            merged.reserveCapacity(symbols.count)
            var j = 0
            while j < symbols.count {
                if j + 1 < symbols.count && symbols[j] == b.left && symbols[j + 1] == b.right {
                    merged.append(b.merged)
                    j += 2
                } else {
                    merged.append(symbols[j])
                    j += 1
                }
            }
            symbols = merged
        }
        let ids = symbols.map { $0 >= 0 ? $0 : unkId }

        cacheLock.lock()
        if cache.count >= CLIPTokenizer.cacheCapacity { cache.removeAll(keepingCapacity: true) }
        cache[word] = ids
        cacheLock.unlock()
        return ids
    }
}
