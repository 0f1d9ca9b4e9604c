// transformers' CLIPImageProcessor (the slow, PIL-based one PickScore's and the LAION CLIP processors use):
//   convert to RGB; resize so the short side is size.shortest_edge (the long side int(size · long / short)) with
//   Pillow's resampling filter (resample 3: BICUBIC) on the 8-bit image; centre crop crop_size (top = (h − ch) // 2);
//   x · rescale_factor (1/255); (x − image_mean) / image_std per channel → pixel_values (3, ch, cw).
// Ref: transformers models/clip/image_processing_clip.py, image_transforms.py (resize, center_crop,
// get_resize_output_image_size with default_to_square=False). Pillow's resampling is IO/ImageResize.swift.
import Foundation
import IO
import Tensors

public struct CLIPImageProcessor: Sendable, Equatable {
    public var shortestEdge = 224
    public var cropHeight = 224, cropWidth = 224
    public var mean: [Float] = [0.48145466, 0.4578275, 0.40821073]
    public var std: [Float] = [0.26862954, 0.26130258, 0.27577711]
    public var rescaleFactor: Float = 1.0 / 255
    public var filter: PILFilter = .bicubic
    public var doResize = true, doCenterCrop = true, doNormalize = true, doRescale = true

    public init() {}

    /// preprocessor_config.json of a model folder; CLIPImageProcessor's defaults where a key is absent (or the file).
    public static func load(folder: String) throws -> CLIPImageProcessor {
        let path = (folder as NSString).appendingPathComponent("preprocessor_config.json")
        var p = CLIPImageProcessor()
        guard let data = FileManager.default.contents(atPath: path) else { return p }
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw CLIPModelError("\(path): not a JSON object")
        }
        func int(_ v: Any?, _ key: String) throws -> Int? {
            guard let v else { return nil }
            guard let n = v as? NSNumber, n.intValue > 0 else { throw CLIPModelError("\(path): key '\(key)': expected a positive integer") }
            return n.intValue
        }
        func floats(_ key: String) throws -> [Float]? {
            guard let v = o[key] else { return nil }
            if let n = v as? NSNumber { return Array(repeating: n.floatValue, count: 3) }
            guard let a = v as? [NSNumber], a.count == 3 else { throw CLIPModelError("\(path): key '\(key)': expected 3 numbers") }
            return a.map(\.floatValue)
        }
        if let size = o["size"] {
            if let d = size as? [String: Any] {
                guard let s = try int(d["shortest_edge"], "size.shortest_edge") else {
                    throw CLIPModelError("\(path): key 'size': only {\"shortest_edge\": N} (or a number) is supported")
                }
                p.shortestEdge = s
            } else if let s = try int(size, "size") { p.shortestEdge = s }
        }
        if let crop = o["crop_size"] {
            if let d = crop as? [String: Any] {
                p.cropHeight = try int(d["height"], "crop_size.height") ?? p.cropHeight
                p.cropWidth = try int(d["width"], "crop_size.width") ?? p.cropWidth
            } else if let s = try int(crop, "crop_size") { p.cropHeight = s; p.cropWidth = s }
        }
        p.mean = try floats("image_mean") ?? p.mean
        p.std = try floats("image_std") ?? p.std
        if let r = o["rescale_factor"] as? NSNumber { p.rescaleFactor = r.floatValue }
        if let r = o["resample"] {
            switch (r as? NSNumber)?.intValue {
            case 2: p.filter = .bilinear
            case 3: p.filter = .bicubic
            default: throw CLIPModelError("\(path): key 'resample': \(r) is not supported (2 = bilinear, 3 = bicubic)")
            }
        }
        for (key, keyPath) in [("do_resize", \CLIPImageProcessor.doResize), ("do_center_crop", \.doCenterCrop),
                               ("do_normalize", \.doNormalize), ("do_rescale", \.doRescale)] {
            if let b = o[key] as? Bool { p[keyPath: keyPath] = b }
        }
        return p
    }

    /// pixel_values (B, 3, cropHeight, cropWidth) of 8-bit RGB images.
    public func pixelValues(_ images: [ByteImage]) throws -> Buffer {
        let H = cropHeight, W = cropWidth, plane = H * W
        let out = Buffer(uninitialized: images.count * 3 * plane)
        for (b, source) in images.enumerated() {
            guard source.channels == 3 else { throw CLIPModelError("CLIP preprocessing needs RGB images, got \(source.channels) channels") }
            var im = source
            if doResize {
                let (w, h) = (im.width, im.height)
                let short = min(w, h), long = max(w, h)
                let newLong = Int(Double(shortestEdge) * Double(long) / Double(short))
                let (nw, nh) = w <= h ? (shortestEdge, newLong) : (newLong, shortestEdge)
                if nw != w || nh != h { im = im.resizedLikePIL(width: nw, height: nh, filter: filter) }
            }
            if doCenterCrop {
                guard im.width >= W, im.height >= H else {
                    throw CLIPModelError("image of \(im.width)x\(im.height) after resizing is smaller than the crop \(W)x\(H)")
                }
                im = im.cropped(left: (im.width - W) / 2, top: (im.height - H) / 2, width: W, height: H)
            }
            guard im.width == W, im.height == H else {
                throw CLIPModelError("image of \(im.width)x\(im.height) does not match the model's \(W)x\(H) input")
            }
            let dst = out.ptr + b * 3 * plane
            for c in 0..<3 {
                let scale = doRescale ? rescaleFactor : 1
                let m = doNormalize ? mean[c] : 0, s = doNormalize ? std[c] : 1
                for i in 0..<plane { dst[c * plane + i] = (Float(im.pixels[i * 3 + c]) * scale - m) / s }
            }
        }
        return out
    }
}
