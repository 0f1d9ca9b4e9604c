// A training image as diffusers' training scripts make it: resized (antialiased bilinear, aspect kept) so it covers
// the training size, then cropped to it, in [-1, 1]. Winner and loser of a triplet share the crop: the center, or
// the same random fractions of the free range (so the same box when they have the same size).
// Ref: diffusers examples/text_to_image/train_text_to_image.py and the Diffusion-DPO training script
// (transforms.Resize(resolution, BILINEAR), CenterCrop or RandomCrop(resolution), ToTensor, Normalize([0.5], [0.5])).
import IO
import Tensors

public enum CropMode: String, Sendable, CaseIterable {
    case center, random
}

public enum TrainingImage {
    /// `image` (any size and channel count convertible to the VAE's) resized to cover `width`×`height` and
    /// cropped to it. `cropFraction` (y, x) in [0, 1) places a random crop; nil centres it as torchvision's CenterCrop.
    public static func prepare(_ image: Image, width: Int, height: Int, cropFraction: (y: Float, x: Float)?) -> Image {
        let size = ResizeCrop.coverSize(width: image.width, height: image.height, targetWidth: width, targetHeight: height)
        let resized = image.resized(width: size.width, height: size.height)
        let top: Int, left: Int
        if let f = cropFraction {
            // RandomCrop draws top in 0...(h − H) uniformly: floor(u·(h − H + 1)).
            top = min(Int(f.y * Float(size.height - height + 1)), size.height - height)
            left = min(Int(f.x * Float(size.width - width + 1)), size.width - width)
        } else {
            top = ResizeCrop.centerOffset(size: size.height, crop: height)
            left = ResizeCrop.centerOffset(size: size.width, crop: width)
        }
        if top == 0 && left == 0 && size.width == width && size.height == height { return resized }
        return resized.cropped(left: left, top: top, width: width, height: height)
    }

    /// The random crop fractions of triplet `row`: a pure function of (seed, row), shared by its winner and loser.
    public static func cropFraction(rng: CounterRNG, row: Int) -> (y: Float, x: Float) {
        (rng.uniform(UInt64(2 * row)), rng.uniform(UInt64(2 * row + 1)))
    }
}
