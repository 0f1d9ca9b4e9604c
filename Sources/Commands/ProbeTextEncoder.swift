// `hgdpo probe text-encoder`: tokenizer + CLIP text encoder on a file of prompts, for parity checks against
// transformers and for looking at what a prompt (and its weighting) turns into.
import Foundation
import IO
import Tensors
import TextEncoder

extension Commands {
    static let probeTextEncoder = CommandSpec(
        ["probe", "text-encoder"],
        summary: "Tokenize prompts and run the CLIP text encoder; write ids and hidden states",
        details: """
            FILE holds one prompt per line (UTF-8, \\n or \\r\\n line ends; an empty line is the empty prompt; a
            final line end does not start another prompt). OUT gets `input_ids` int64 [N,S] (S = the tokenizer's
            model_max_length, 77), `token_weights` float32 [N,S] and `last_hidden_state` float32 [N,S,D].
            Weighting (on unless --no-weighting) follows the web UI: (text) ×1.1, [text] ÷1.1, (text:1.3) ×1.3,
            nesting multiplies, \\( \\) \\[ \\] are literal; the encoder runs on the ids without the syntax, then each
            token's hidden state is scaled by its weight and the whole rescaled to its unweighted mean.
            Example: hgdpo probe text-encoder --model sd15 --prompts prompts.txt --out te.safetensors
            """,
        options: [
            .value("--model", "DIR", "Pipeline root with tokenizer/ and text_encoder/", required: true),
            .value("--prompts", "FILE", "Prompts, one per line", required: true),
            .value("--out", "OUT", "Output file (safetensors, written atomically)", required: true),
            .value("--variant", "NAME", "Text encoder weight variant, e.g. fp16 (model.fp16.safetensors)"),
            .value("--clip-skip", "K", "Use the output of layer L−K through final_layer_norm (diffusers' clip_skip)", default: "0"),
            .flag("--no-weighting", "Tokenize prompts as they are (brackets are plain text), all weights 1"),
            .value("--threads", "N", "Compute threads (default: HGDPO_THREADS or all cores)"),
        ]
    ) { args in
        try applyThreads(args)
        let promptsPath = try args.requiredString("--prompts")
        let prompts = try readPromptLines(promptsPath)
        let encoder = try PromptEncoder.load(ModelFolder(path: try args.requiredString("--model")), variant: args.string("--variant"))
        let clipSkip = try args.int("--clip-skip", in: 0...Int(Int32.max)) ?? 0
        guard clipSkip < encoder.model.layerCount else {
            throw CLIError.badValue(option: "--clip-skip", value: String(clipSkip),
                                    expected: "0…\(encoder.model.layerCount - 1) (the text encoder has \(encoder.model.layerCount) layers)")
        }
        let encoding: PromptEncoding
        do {
            encoding = try encoder.encode(prompts: prompts, weighting: !args.flag("--no-weighting"), clipSkip: clipSkip)
        } catch let error as PromptWeightingError {
            throw CLIError.invalid("\(promptsPath): \(error)")
        }
        let n = encoding.count, s = encoding.length, d = encoding.width
        try SafeTensors.write([
            SafeTensorsEntry(name: "input_ids", shape: [n, s], int64s: encoding.inputIds.map(Int64.init)),
            SafeTensorsEntry(name: "token_weights", shape: [n, s], floats: encoding.weights),
            SafeTensorsEntry(name: "last_hidden_state", shape: [n, s, d], floats: encoding.hiddenStates.array),
        ], to: try args.requiredString("--out"))
    }

    /// One prompt per line; a final line break does not start another prompt; "\r\n" endings are accepted.
    static func readPromptLines(_ path: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError.invalid("\(path): cannot read the prompts file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw CLIError.invalid("\(path): not UTF-8 text")
        }
        guard !text.isEmpty else { throw CLIError.invalid("\(path): no prompts (the file is empty)") }
        // Split on "\n" scalars: as Characters, "\r\n" is one grapheme and would not split on "\n".
        var lines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            String(String.UnicodeScalarView(line.last == "\r" ? line.dropLast() : line))
        }
        if text.unicodeScalars.last == "\n" { lines.removeLast() }
        return lines
    }
}
