// A training image as diffusers' training scripts make it: resized (antialiased bilinear, aspect kept: Pillow's 8-bit
// resize or torch's float one) so it covers the training size, then cropped to it, in [-1, 1]. Winner and loser of a triplet share the crop: the center, or
// the same random fractions of the free range (so the same box when they have the same size).
// Ref: diffusers examples/text_to_image/train_text_to_image.py and the Diffusion-DPO training script
// (transforms.Resize(resolution, BILINEAR), CenterCrop or RandomCrop(resolution), ToTensor, Normalize([0.5], [0.5])).
import IO
import Tensors

public enum CropMode: String, Sendable, CaseIterable {
    case center, random
}

/// Which antialiased bilinear resize: Pillow's 8-bit one (what torchvision's Resize does to the PIL images of
/// diffusers' training scripts; bit for bit) or torch's float one (`interpolate(antialias=True)`, torchvision's
/// Resize on tensors). They differ by at most one 8-bit level.
public enum ResizeMethod: String, Sendable, CaseIterable {
    case pil, torch
}

public enum TrainingImage {
    /// `image` (any size and channel count convertible to the VAE's) resized to cover `width`×`height` and
    /// cropped to it. `cropFraction` (y, x) in [0, 1) places a random crop; nil centres it as torchvision's CenterCrop.
    public static func prepare(_ image: Image, width: Int, height: Int, cropFraction: (y: Float, x: Float)?) -> Image {
        let size = ResizeCrop.coverSize(width: image.width, height: image.height, targetWidth: width, targetHeight: height)
        let resized = image.resized(width: size.width, height: size.height)
        let (left, top) = cropBox(size: size, width: width, height: height, cropFraction: cropFraction)
        if top == 0 && left == 0 && size.width == width && size.height == height { return resized }
        return resized.cropped(left: left, top: top, width: width, height: height)
    }

    /// 8-bit pixels (as decoded) resized with `method` to cover `width`×`height`, cropped as `prepare(_:…)` does,
    /// and normalised to [-1, 1].
    public static func prepare(_ bytes: ByteImage, width: Int, height: Int, cropFraction: (y: Float, x: Float)?,
                               method: ResizeMethod) -> Image {
        guard method == .pil else {
            return prepare(Image(normalizing: bytes), width: width, height: height, cropFraction: cropFraction)
        }
        let size = ResizeCrop.coverSize(width: bytes.width, height: bytes.height, targetWidth: width, targetHeight: height)
        let box = cropBox(size: size, width: width, height: height, cropFraction: cropFraction)
        return Image(normalizing: bytes.resizedLikePIL(width: size.width, height: size.height)
            .cropped(left: box.left, top: box.top, width: width, height: height))
    }

    /// Where the `width`×`height` crop of an image of `size` starts.
    static func cropBox(size: (width: Int, height: Int), width: Int, height: Int, cropFraction: (y: Float, x: Float)?)
        -> (left: Int, top: Int) {
        if let f = cropFraction {
            // RandomCrop draws top in 0...(h − H) uniformly: floor(u·(h − H + 1)).
            return (min(Int(f.x * Float(size.width - width + 1)), size.width - width),
                    min(Int(f.y * Float(size.height - height + 1)), size.height - height))
        }
        return (ResizeCrop.centerOffset(size: size.width, crop: width), ResizeCrop.centerOffset(size: size.height, crop: height))
    }

    /// The random crop fractions of triplet `row`: a pure function of (seed, row), shared by its winner and loser.
    public static func cropFraction(rng: CounterRNG, row: Int) -> (y: Float, x: Float) {
        (rng.uniform(UInt64(2 * row)), rng.uniform(UInt64(2 * row + 1)))
    }
}
