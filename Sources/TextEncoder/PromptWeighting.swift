// Prompt weighting in the syntax of the AUTOMATIC1111 web UI, which the HG-DPO paper's prompts use
// (`(bust shot:1.2)`), and its "Original" emphasis rule on the text encoder's output.
//
// Syntax (Ref: stable-diffusion-webui modules/prompt_parser.py, parse_prompt_attention):
//   (text)        weight × 1.1            [text]        weight × (1/1.1)
//   (text:1.3)    weight × 1.3 (also `( text : 1.3 )` spacing around the number, any [+-]?[.0-9]+ number)
//   nesting multiplies: `((a))` = 1.21, `[(a:2)]` = 2/1.1; an unclosed `(` or `[` applies to the end of the prompt;
//   a `)` or `]` with nothing open and a `:N)` outside round brackets are plain text;
//   `\(` `\)` `\[` `\]` `\\` are the literal characters; any other backslash is dropped.
// The prompt becomes fragments (text, weight) with neighbours of equal weight merged; each fragment is tokenized on
// its own, every token taking its fragment's weight.
//
// Emphasis (Ref: stable-diffusion-webui modules/sd_emphasis.py, EmphasisOriginal.after_transformers): the text
// encoder runs on the plain token ids (brackets and weights removed); then, per prompt, with z its hidden states
// (77, D) and w the per-token weights (1 for BOS, EOS and padding),
//     z ← z · w (each token's row scaled),   z ← z · mean(z_before) / mean(z_after)
// i.e. the scaling is undone on the mean of all of z. Departures from the web UI: the mean is taken per prompt (the
// web UI takes it over its whole batch, so a prompt's result depends on its batch mates; for one prompt they
// agree); prompts longer than 75 tokens are truncated as diffusers does, not continued in further 77-token chunks,
// and `BREAK` is plain text; a number that is not a decimal (e.g. `1.2.3`, where the web UI fails) is an error.
import IO
import Foundation

public enum PromptWeightingError: Error, UserInputError, CustomStringConvertible, Equatable {
    case badWeight(prompt: String, weight: String)

    public var description: String {
        switch self {
        case .badWeight(let p, let w): return "prompt \"\(p)\": '\(w)' is not a number (weights are written (text:1.2))"
        }
    }
}

/// A piece of prompt text and its attention weight.
public struct WeightedFragment: Equatable, Sendable, CustomStringConvertible {
    public var text: String
    public var weight: Double
    public init(_ text: String, _ weight: Double) { self.text = text; self.weight = weight }
    public var description: String { "(\"\(text)\", \(weight))" }
}

public enum PromptWeighting {
    static let roundMultiplier = 1.1
    static let squareMultiplier = 1 / 1.1

    /// The fragments of a prompt with their weights (never empty: "" gives [("", 1)]).
    public static func parse(_ prompt: String) throws -> [WeightedFragment] {
        let s = Array(prompt.unicodeScalars)
        var res: [(text: [Unicode.Scalar], weight: Double)] = []
        var round: [Int] = [], square: [Int] = []
        func multiply(from start: Int, _ m: Double) { for p in start..<res.count { res[p].weight *= m } }

        var i = 0
        while i < s.count {
            let c = s[i]
            if c == "\\" {
                // `\(` `\)` `\[` `\]` `\\` give the character; a lone backslash gives nothing.
                if i + 1 < s.count, "()[]\\".unicodeScalars.contains(s[i + 1]) {
                    res.append(([s[i + 1]], 1)); i += 2
                } else {
                    res.append(([], 1)); i += 1
                }
            } else if c == "(" {
                round.append(res.count); i += 1
            } else if c == "[" {
                square.append(res.count); i += 1
            } else if c == ":", let (number, end) = weightSuffix(s, i) {
                if let start = round.popLast() {
                    guard let w = Double(String(String.UnicodeScalarView(number))) else {
                        throw PromptWeightingError.badWeight(prompt: prompt, weight: String(String.UnicodeScalarView(number)))
                    }
                    multiply(from: start, w)
                } else {
                    res.append((Array(s[i..<end]), 1))
                }
                i = end
            } else if c == ")" {
                if let start = round.popLast() { multiply(from: start, roundMultiplier) } else { res.append(([c], 1)) }
                i += 1
            } else if c == "]" {
                if let start = square.popLast() { multiply(from: start, squareMultiplier) } else { res.append(([c], 1)) }
                i += 1
            } else if c == ":" {
                res.append(([c], 1)); i += 1
            } else {
                var end = i + 1
                while end < s.count && !"\\()[]:".unicodeScalars.contains(s[end]) { end += 1 }
                res.append((Array(s[i..<end]), 1))
                i = end
            }
        }
        for start in round { multiply(from: start, roundMultiplier) }
        for start in square { multiply(from: start, squareMultiplier) }
        if res.isEmpty { res = [([], 1)] }

        // Merge runs of identical weights.
        var merged: [(text: [Unicode.Scalar], weight: Double)] = []
        for r in res {
            if let last = merged.last, last.weight == r.weight { merged[merged.count - 1].text += r.text } else { merged.append(r) }
        }
        return merged.map { WeightedFragment(String(String.UnicodeScalarView($0.text)), $0.weight) }
    }

    /// Matches `:\s*([+-]?[.\d]+)\s*\)` at s[i] (s[i] == ":"): the number's scalars and the index after the `)`.
    static func weightSuffix(_ s: [Unicode.Scalar], _ i: Int) -> ([Unicode.Scalar], Int)? {
        var j = i + 1
        while j < s.count && isPythonSpace(s[j]) { j += 1 }
        let start = j
        if j < s.count && (s[j] == "+" || s[j] == "-") { j += 1 }
        let digitsStart = j
        while j < s.count && (s[j] == "." || ("0"..."9").contains(s[j])) { j += 1 }
        guard j > digitsStart else { return nil }
        let number = Array(s[start..<j])
        while j < s.count && isPythonSpace(s[j]) { j += 1 }
        guard j < s.count && s[j] == ")" else { return nil }
        return (number, j + 1)
    }

    /// Python's `\s` in a str pattern: Unicode White_Space plus the separators U+001C…U+001F.
    static func isPythonSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace || (0x1C...0x1F).contains(c.value) }

    /// Token ids and per-token weights of a prompt: each fragment tokenized on its own, then framed like
    /// `CLIPTokenizer.encode` (BOS, at most maxLength − 2 tokens, EOS, padding); BOS, EOS and padding weigh 1.
    public static func weightedTokens(_ prompt: String, tokenizer: CLIPTokenizer) throws -> (ids: [Int], weights: [Float]) {
        var content: [Int] = [], contentWeights: [Double] = []
        for fragment in try parse(prompt) {
            let ids = tokenizer.tokenize(fragment.text)
            content += ids
            contentWeights += repeatElement(fragment.weight, count: ids.count)
        }
        let ids = tokenizer.frame(content)
        let kept = min(content.count, tokenizer.maxLength - 2)
        var weights = [Float](repeating: 1, count: ids.count)
        for t in 0..<kept { weights[1 + t] = Float(contentWeights[t]) }
        return (ids, weights)
    }

    /// The web UI's "Original" emphasis on one prompt's hidden states, in place:
    /// z ← z · w per token, then z ← z · mean(z before) / mean(z after). Means accumulate in Double.
    /// Unit weights leave z untouched; if the weighted mean is exactly 0 the rescaling is skipped (the web UI would
    /// divide by zero).
    public static func applyEmphasis(_ z: UnsafeMutablePointer<Float>,   // (S, D)
                                     weights: [Float],                    // (S)
                                     length S: Int, width D: Int) {
        precondition(weights.count == S, "applyEmphasis: one weight per token")
        guard weights.contains(where: { $0 != 1 }) else { return }
        let n = S * D
        var before = 0.0
        for i in 0..<n { before += Double(z[i]) }
        var after = 0.0
        for t in 0..<S {
            let row = z + t * D, w = weights[t]
            for j in 0..<D { row[j] *= w; after += Double(row[j]) }
        }
        guard after != 0 else { return }
        let ratio = Float(before / after)
        for i in 0..<n { z[i] *= ratio }
    }
}
