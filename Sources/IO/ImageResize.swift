// Resizing and cropping images for training, as diffusers' training scripts prepare them:
// `transforms.Resize(resolution, interpolation=BILINEAR)` (the shortest side to `resolution`), then
// `CenterCrop(resolution)` or `RandomCrop(resolution)`, then `Normalize([0.5], [0.5])`.
//
// The resize is antialiased bilinear: each output pixel is a triangle-filter average over the input pixels its
// footprint covers (support = the scale factor when shrinking, 1 when enlarging), weights normalised to 1, done as a
// horizontal then a vertical pass. That is torch's `interpolate(mode="bilinear", antialias=True,
// align_corners=False)` on float tensors (torchvision's Resize on tensors) and PIL's `Image.resize(BILINEAR)`
// (torchvision's Resize on PIL images), up to PIL's 8-bit rounding between and after its passes. Resampling is
// linear with non-negative weights, so resizing [-1, 1] floats equals resizing bytes and normalising after.
// Ref: pytorch aten/src/ATen/native/cpu/UpSampleKernel.cpp (_compute_indices_min_size_weights_aa, aa_filter),
// Pillow src/libImaging/Resample.c (precompute_coeffs, bilinear_filter), torchvision transforms/functional.py
// (resize's _compute_resized_output_size, center_crop).

// MARK: - Sizes

public enum ResizeCrop {
    /// The size `Resize` gives before a crop to `width`×`height`: the image scaled, aspect kept, so it covers the
    /// target, the limiting side exactly at the target and the other side truncated as torchvision does
    /// (`int(size * long / short)` for a square target).
    public static func coverSize(width w: Int, height h: Int, targetWidth W: Int, targetHeight H: Int) -> (width: Int, height: Int) {
        // H/h ≥ W/w ⇔ H·w ≥ W·h: the height limits; the width follows (≥ W since H·w/h ≥ W).
        if H * w >= W * h {
            return (max(W, Int(Double(H) * Double(w) / Double(h))), H)
        }
        return (W, max(H, Int(Double(W) * Double(h) / Double(w))))
    }

    /// torchvision's center_crop offsets: `int(round((size - crop) / 2))` with Python's round (half to even).
    public static func centerOffset(size: Int, crop: Int) -> Int {
        Int((Double(size - crop) / 2).rounded(.toNearestOrEven))
    }
}

// MARK: - Resize and crop

extension Image {
    /// Antialiased bilinear resize to `width`×`height` (see the file header). The same size returns a copy.
    public func resized(width outW: Int, height outH: Int) -> Image {
        precondition(outW > 0 && outH > 0, "Image.resized: size \(outW)x\(outH)")
        let C = channels
        // Horizontal pass: (C, height, width) → (C, height, outW).
        var horizontal: [Float]
        if outW == width {
            horizontal = pixels
        } else {
            let taps = ResampleTaps(input: width, output: outW)
            horizontal = [Float](repeating: 0, count: C * height * outW)
            pixels.withUnsafeBufferPointer { src in
                horizontal.withUnsafeMutableBufferPointer { dst in
                    for row in 0..<(C * height) {
                        let s = src.baseAddress! + row * width, d = dst.baseAddress! + row * outW
                        for x in 0..<outW { d[x] = taps.apply(x, s, stride: 1) }
                    }
                }
            }
        }
        // Vertical pass: (C, height, outW) → (C, outH, outW).
        var out: [Float]
        if outH == height {
            out = horizontal
        } else {
            let taps = ResampleTaps(input: height, output: outH)
            out = [Float](repeating: 0, count: C * outH * outW)
            horizontal.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    for c in 0..<C {
                        let s = src.baseAddress! + c * height * outW, d = dst.baseAddress! + c * outH * outW
                        for y in 0..<outH {
                            for x in 0..<outW { d[y * outW + x] = taps.apply(y, s + x, stride: outW) }
                        }
                    }
                }
            }
        }
        return Image(unchecked: outW, height: outH, channels: C, pixels: out)
    }

    /// The `width`×`height` window at (`left`, `top`); it must lie inside the image.
    public func cropped(left: Int, top: Int, width w: Int, height h: Int) -> Image {
        precondition(left >= 0 && top >= 0 && w > 0 && h > 0 && left + w <= width && top + h <= height,
                     "Image.cropped: window \(w)x\(h) at (\(left), \(top)) outside \(width)x\(height)")
        var out = [Float](repeating: 0, count: channels * w * h)
        for c in 0..<channels {
            for y in 0..<h {
                let s = (c * height + top + y) * width + left, d = (c * h + y) * w
                out[d..<(d + w)] = pixels[s..<(s + w)]
            }
        }
        return Image(unchecked: w, height: h, channels: channels, pixels: out)
    }
}

/// Per output index: the first input index and the normalised triangle-filter weights.
/// Ref: _compute_indices_min_size_weights_aa (float arithmetic as torch does for float tensors).
struct ResampleTaps {
    let start: [Int]
    let count: [Int]
    let weights: [Float]   // (output, maxTaps)
    let maxTaps: Int

    init(input: Int, output: Int) {
        let scale = Float(input) / Float(output)
        let support: Float = scale >= 1 ? scale : 1          // interp_size / 2 = 1 for bilinear
        let invScale: Float = scale >= 1 ? 1 / scale : 1
        maxTaps = Int(support.rounded(.up)) * 2 + 1
        var start = [Int](repeating: 0, count: output), count = start
        var weights = [Float](repeating: 0, count: output * maxTaps)
        for i in 0..<output {
            let center = scale * (Float(i) + 0.5)
            let lo = max(Int(center - support + 0.5), 0)
            let n = min(Int(center + support + 0.5), input) - lo
            var total: Float = 0
            for j in 0..<n {
                let t = abs((Float(j + lo) - center + 0.5) * invScale)
                let w: Float = t < 1 ? 1 - t : 0
                weights[i * maxTaps + j] = w
                total += w
            }
            if total != 0 { for j in 0..<n { weights[i * maxTaps + j] /= total } }
            start[i] = lo
            count[i] = n
        }
        self.start = start
        self.count = count
        self.weights = weights
    }

    @inline(__always)
    func apply(_ i: Int, _ src: UnsafePointer<Float>, stride: Int) -> Float {
        var acc: Float = 0
        let base = i * maxTaps, lo = start[i]
        for j in 0..<count[i] { acc += weights[base + j] * src[(lo + j) * stride] }
        return acc
    }
}

// MARK: - PIL's 8-bit resize

extension ByteImage {
    /// PIL's `Image.resize((width, height), Image.BILINEAR)` bit for bit: the same triangle-filter coefficients
    /// (computed in double, normalised, then fixed point with 22 fraction bits), a horizontal pass then a vertical
    /// one, each rounded (+½, shift) and clamped to 8 bits. This is what torchvision's Resize does to the PIL images of
    /// diffusers' training scripts. Ref: Pillow src/libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc,
    /// ImagingResampleHorizontal_8bpc / Vertical_8bpc).
    public func resizedLikePIL(width outW: Int, height outH: Int, filter: PILFilter = .bilinear) -> ByteImage {
        precondition(outW > 0 && outH > 0, "ByteImage.resizedLikePIL: size \(outW)x\(outH)")
        let C = channels
        var current = self
        if outW != width {
            let taps = PILTaps(input: width, output: outW, filter: filter)
            var out = [UInt8](repeating: 0, count: height * outW * C)
            current.pixels.withUnsafeBufferPointer { src in
                for y in 0..<height {
                    for x in 0..<outW {
                        for c in 0..<C { out[(y * outW + x) * C + c] = taps.apply(x, src.baseAddress! + y * width * C + c, stride: C) }
                    }
                }
            }
            current = ByteImage(unchecked: outW, height: height, channels: C, pixels: out)
        }
        if outH != height {
            let taps = PILTaps(input: height, output: outH, filter: filter)
            var out = [UInt8](repeating: 0, count: outH * outW * C)
            current.pixels.withUnsafeBufferPointer { src in
                for y in 0..<outH {
                    for i in 0..<(outW * C) { out[y * outW * C + i] = taps.apply(y, src.baseAddress! + i, stride: outW * C) }
                }
            }
            current = ByteImage(unchecked: outW, height: outH, channels: C, pixels: out)
        }
        return current
    }

    /// The `width`×`height` window at (`left`, `top`); it must lie inside the image.
    public func cropped(left: Int, top: Int, width w: Int, height h: Int) -> ByteImage {
        precondition(left >= 0 && top >= 0 && w > 0 && h > 0 && left + w <= width && top + h <= height,
                     "ByteImage.cropped: window \(w)x\(h) at (\(left), \(top)) outside \(width)x\(height)")
        var out = [UInt8](repeating: 0, count: channels * w * h)
        for y in 0..<h {
            let s = ((top + y) * width + left) * channels, d = y * w * channels
            out[d..<(d + w * channels)] = pixels[s..<(s + w * channels)]
        }
        return ByteImage(unchecked: w, height: h, channels: channels, pixels: out)
    }
}

/// Pillow's resampling filters: `Image.BILINEAR` (triangle, support 1) and `Image.BICUBIC` (Keys cubic with a = −0.5,
/// support 2; what CLIPImageProcessor and open_clip's Resize use). Ref: Pillow src/libImaging/Resample.c.
public enum PILFilter: Sendable {
    case bilinear, bicubic

    var support: Double { self == .bilinear ? 1 : 2 }

    func weight(_ x: Double) -> Double {
        let x = abs(x)
        switch self {
        case .bilinear: return x < 1 ? 1 - x : 0
        case .bicubic:
            let a = -0.5
            if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
            if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0
        }
    }
}

/// Pillow's coefficients for one axis, in 8-bit fixed point.
struct PILTaps {
    static let precisionBits = 32 - 8 - 2
    let start: [Int], count: [Int]
    let weights: [Int32]   // (output, maxTaps)
    let maxTaps: Int

    init(input: Int, output: Int, filter: PILFilter) {
        let scale = Double(input) / Double(output)
        let filterScale = max(scale, 1)
        let support = filter.support * filterScale
        maxTaps = Int(support.rounded(.up)) * 2 + 1
        var start = [Int](repeating: 0, count: output), count = start
        var weights = [Int32](repeating: 0, count: output * maxTaps)
        var k = [Double](repeating: 0, count: maxTaps)
        for xx in 0..<output {
            let center = (Double(xx) + 0.5) * scale
            let ss = 1 / filterScale
            let xmin = max(Int(center - support + 0.5), 0)
            let n = min(Int(center + support + 0.5), input) - xmin
            var ww = 0.0
            for x in 0..<n {
                k[x] = filter.weight((Double(x + xmin) - center + 0.5) * ss)
                ww += k[x]
            }
            for x in 0..<n {
                let w = ww != 0 ? k[x] / ww : k[x]
                let fixed = w * Double(1 << PILTaps.precisionBits)
                weights[xx * maxTaps + x] = Int32(w < 0 ? (-0.5 + fixed).rounded(.towardZero) : (0.5 + fixed).rounded(.towardZero))
            }
            start[xx] = xmin
            count[xx] = n
        }
        self.start = start
        self.count = count
        self.weights = weights
    }

    @inline(__always)
    func apply(_ i: Int, _ src: UnsafePointer<UInt8>, stride: Int) -> UInt8 {
        var ss = Int32(1) << (PILTaps.precisionBits - 1)
        let base = i * maxTaps, lo = start[i]
        for j in 0..<count[i] { ss &+= Int32(src[(lo + j) * stride]) &* weights[base + j] }
        return UInt8(clamping: ss >> PILTaps.precisionBits)
    }
}
