// The built-in scorers on CLIP (CLIPModel.swift):
//   clip:DIR[,weights=FILE][,output=logit|cosine][,batch=N]
//       DIR is a transformers CLIPModel folder (config.json, model.safetensors, vocab.json, merges.txt,
//       preprocessor_config.json), e.g. PickScore_v1; weights=FILE loads another safetensors file into it, e.g. the
//       HPS v2 open_clip checkpoint with the config and tokenizer of laion/CLIP-ViT-H-14-laion2B-s32B-b79K.
//       output=logit (default): exp(logit_scale) · cos(image, prompt), PickScore's score (its logit_scale is
//       log 100); output=cosine: the cosine, HPS v2's score.
//       Ref: PickScore README (`model.logit_scale.exp() * (text_embs @ image_embs.T)`), HPSv2 img_score.py.
//   aesthetic:FILE,clip=DIR[,batch=N]
//       LAION's improved-aesthetic-predictor: an MLP (layers.0 … layers.7: 768→1024→128→64→16→1, dropout between,
//       no activations) on the L2-normalised CLIP ViT-L/14 image embedding of DIR (openai/clip-vit-large-patch14).
//       Ref: christophschuhmann/improved-aesthetic-predictor simple_inference.py.
import Foundation
import IO
import Layers
import Tensors
import TextEncoder

/// `PATH[,key=value…]`: the path and the options, refusing keys a scorer does not take.
struct ScorerArgument {
    let path: String
    let options: [String: String]

    /// `strict`: a trailing `,word=value` with an unknown key is an error (scorers whose argument is a path); an
    /// external command keeps it as part of the command.
    init(_ text: String, spec: String, allowed: [String], strict: Bool = true) throws {
        var parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        var options: [String: String] = [:]
        while parts.count > 1, let eq = parts.last!.firstIndex(of: "="), allowed.contains(String(parts.last![..<eq])) {
            let last = parts.removeLast()
            options[String(last[..<eq])] = String(last[last.index(after: eq)...])
        }
        path = parts.joined(separator: ",")
        if strict, parts.count > 1, let last = parts.last, let eq = last.firstIndex(of: "="),
           last[..<eq].allSatisfy({ $0.isLetter || $0 == "_" }) {
            throw CLIPModelError("invalid scorer spec '\(spec)': unknown option '\(last)' (options: \(allowed.joined(separator: ", ")))")
        }
        self.options = options
    }

    func int(_ key: String, default d: Int, spec: String) throws -> Int {
        guard let v = options[key] else { return d }
        guard let n = Int(v), n > 0 else { throw CLIPModelError("invalid scorer spec '\(spec)': option \(key)=\(v) must be a positive integer") }
        return n
    }
}

/// A cheap fingerprint of weight files: FNV-1a 64 of each file's size, safetensors header and 16 slices of 64 KiB
/// spread over its data (fine-tunes with the same shapes differ there), as 16 hex digits.
func weightFingerprint(_ files: [String]) throws -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    func mix<S: Sequence>(_ bytes: S) where S.Element == UInt8 { for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 } }
    for file in files {
        guard let handle = FileHandle(forReadingAtPath: file) else { throw CLIPModelError("\(file): cannot read") }
        defer { try? handle.close() }
        let size = try handle.seekToEnd()
        mix(withUnsafeBytes(of: size.littleEndian) { Array($0) })
        try handle.seek(toOffset: 0)
        let headerLength = (try handle.read(upToCount: 8) ?? Data()).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        mix(try handle.read(upToCount: Int(min(headerLength, 100_000_000))) ?? Data())
        for k in 0..<16 {
            try handle.seek(toOffset: size / 16 * UInt64(k))
            mix(try handle.read(upToCount: 65536) ?? Data())
        }
    }
    return String(format: "%016llx", h)
}

/// CLIP image–prompt similarity: PickScore, CLIP score, HPS v2.
public final class CLIPScorer: Scorer {
    public let descriptor: ScorerDescriptor
    public let model: CLIPModel
    public let processor: CLIPImageProcessor
    let tokenizer: CLIPTokenizer
    let cosineOnly: Bool
    let batch: Int
    private var cachedPrompt: (text: String, embedding: [Float])?

    public init(name: String, argument: String) throws {
        let spec = "\(name)=clip:\(argument)"
        let arg = try ScorerArgument(argument, spec: spec, allowed: ["weights", "output", "batch"])
        guard ["logit", "cosine"].contains(arg.options["output"] ?? "logit") else {
            throw CLIPModelError("invalid scorer spec '\(spec)': output=\(arg.options["output"]!) must be logit or cosine")
        }
        cosineOnly = arg.options["output"] == "cosine"
        batch = try arg.int("batch", default: 8, spec: spec)
        model = try CLIPModel.load(folder: arg.path, weights: arg.options["weights"])
        processor = try CLIPImageProcessor.load(folder: arg.path)
        tokenizer = try CLIPTokenizer.load(directory: arg.path)
        guard processor.cropHeight == model.config.visionConfig.imageSize, processor.cropWidth == model.config.visionConfig.imageSize else {
            throw CLIPModelError("\(arg.path): preprocessor crop \(processor.cropWidth)x\(processor.cropHeight) differs from vision_config.image_size \(model.config.visionConfig.imageSize)")
        }
        let files = try CLIPModel.weightFiles(folder: arg.path, weights: arg.options["weights"])
        descriptor = ScorerDescriptor(name: name, kind: "clip", argument: argument, version: try weightFingerprint(files),
                                      settings: ["output": cosineOnly ? "cosine" : "logit", "layout": model.layout,
                                                 "logit_scale": String(exp(model.logitScale))])
    }

    /// The normalised text embedding of a prompt (cached for the last prompt).
    func promptEmbedding(_ prompt: String) throws -> [Float] {
        if let c = cachedPrompt, c.text == prompt { return c.embedding }
        let ids = tokenizer.encode(prompt)
        let e = try model.textEmbeddings(inputIds: ids, batch: 1, length: ids.count)
        normalizeRows(e.ptr, rows: 1, width: model.config.projectionDim)
        let v = Array(UnsafeBufferPointer(start: e.ptr, count: model.config.projectionDim))
        cachedPrompt = (prompt, v)
        return v
    }

    /// Normalised image embeddings (N, P), `batch` images per forward.
    public func imageEmbeddings(_ images: [ByteImage]) throws -> [Float] {
        try normalizedImageEmbeddings(model, processor, images, batch: batch)
    }

    public func score(images: [ByteImage], prompt: String) throws -> [Double] {
        let t = try promptEmbedding(prompt), P = model.config.projectionDim
        let e = try imageEmbeddings(images)
        let scale = cosineOnly ? 1 : Double(exp(model.logitScale))
        return (0..<images.count).map { i in
            var dot: Double = 0
            for j in 0..<P { dot += Double(e[i * P + j]) * Double(t[j]) }
            return scale * dot
        }
    }
}

func normalizedImageEmbeddings(_ model: CLIPModel, _ processor: CLIPImageProcessor, _ images: [ByteImage], batch: Int) throws -> [Float] {
    let P = model.projectionDim
    var out = [Float](repeating: 0, count: images.count * P)
    for start in stride(from: 0, to: images.count, by: batch) {
        let chunk = Array(images[start..<min(start + batch, images.count)])
        let pixels = try processor.pixelValues(chunk)
        let e = model.imageEmbeddings(pixels.ptr, batch: chunk.count)
        normalizeRows(e.ptr, rows: chunk.count, width: P)
        for i in 0..<(chunk.count * P) { out[start * P + i] = e.ptr[i] }
    }
    return out
}

// MARK: - Aesthetic predictor

/// LAION's improved aesthetic predictor: a stack of Linear layers (no activations) on normalised CLIP image embeddings.
public final class AestheticScorer: Scorer {
    public let descriptor: ScorerDescriptor
    public let clip: CLIPModel
    public let processor: CLIPImageProcessor
    /// (weight (O, I), bias (O), I, O) in order.
    let layers: [(weight: [Float], bias: [Float], inputs: Int, outputs: Int)]
    let batch: Int

    public init(name: String, argument: String) throws {
        let spec = "\(name)=aesthetic:\(argument)"
        let arg = try ScorerArgument(argument, spec: spec, allowed: ["clip", "batch"])
        guard let clipFolder = arg.options["clip"] else {
            throw ScorerSpecError.missingArgument(spec: spec, kind: "aesthetic",
                                                  what: "the MLP file and the CLIP ViT-L/14 folder: FILE,clip=DIR")
        }
        batch = try arg.int("batch", default: 8, spec: spec)
        layers = try AestheticScorer.readMLP(arg.path)
        clip = try CLIPModel.load(folder: clipFolder)
        processor = try CLIPImageProcessor.load(folder: clipFolder)
        guard layers.first!.inputs == clip.config.projectionDim, layers.last!.outputs == 1 else {
            throw CLIPModelError("\(arg.path): the MLP takes \(layers.first!.inputs) inputs and gives \(layers.last!.outputs); "
                                 + "the CLIP model at \(clipFolder) gives \(clip.config.projectionDim)-wide embeddings (and one score is needed)")
        }
        let version = try weightFingerprint([arg.path] + CLIPModel.weightFiles(folder: clipFolder, weights: nil))
        descriptor = ScorerDescriptor(name: name, kind: "aesthetic", argument: argument, version: version,
                                      settings: ["layers": layers.map { "\($0.inputs)→\($0.outputs)" }.joined(separator: ",")])
    }

    /// `layers.{i}.weight` / `.bias` for the Linear layers of the nn.Sequential, in index order, widths chained.
    static func readMLP(_ path: String) throws -> [(weight: [Float], bias: [Float], inputs: Int, outputs: Int)] {
        let file = try SafeTensorsFile(path: path)
        let indices = Set(file.tensorNames.compactMap { n -> Int? in
            let parts = n.split(separator: ".")
            return parts.count == 3 && parts[0] == "layers" ? Int(parts[1]) : nil
        }).sorted()
        guard !indices.isEmpty else { throw CLIPModelError("\(path): no layers.N.weight tensors (expected the improved-aesthetic-predictor MLP)") }
        var out: [(weight: [Float], bias: [Float], inputs: Int, outputs: Int)] = []
        for i in indices {
            guard let w = file.info("layers.\(i).weight"), w.shape.count == 2, let b = file.info("layers.\(i).bias"), b.shape == [w.shape[0]] else {
                throw CLIPModelError("\(path): layers.\(i) needs a weight (O, I) and a bias (O)")
            }
            if let prev = out.last, prev.outputs != w.shape[1] {
                throw CLIPModelError("\(path): layers.\(i).weight takes \(w.shape[1]) inputs, the layer before gives \(prev.outputs)")
            }
            out.append((try file.floats("layers.\(i).weight"), try file.floats("layers.\(i).bias"), w.shape[1], w.shape[0]))
        }
        return out
    }

    /// The MLP on rows of x (N, I).
    public func mlp(_ x: [Float], rows n: Int) -> [Float] {
        var h = x
        for l in layers {
            var next = [Float](repeating: 0, count: n * l.outputs)
            h.withUnsafeBufferPointer { inp in
                l.weight.withUnsafeBufferPointer { w in
                    l.bias.withUnsafeBufferPointer { b in
                        next.withUnsafeMutableBufferPointer { o in
                            linearForward(out: o.baseAddress!, inp: inp.baseAddress!, weight: w.baseAddress!, bias: b.baseAddress!,
                                          N: n, I: l.inputs, O: l.outputs)
                        }
                    }
                }
            }
            h = next
        }
        return h
    }

    public func score(images: [ByteImage], prompt: String) throws -> [Double] {
        let e = try normalizedImageEmbeddings(clip, processor, images, batch: batch)
        return mlp(e, rows: images.count).map(Double.init)
    }
}
