// Tiled encode / decode with diffusers' `enable_tiling()` semantics, so a tiled result equals diffusers' tiled
// result (not the untiled one: each tile sees only its own pixels, and the seams are hidden by blending).
//
// Tiles of `tileSize` input pixels start every `stride` pixels (stride = int(tile·(1 − overlap))); tiles at the
// bottom and right edges are smaller. Each tile's output is blended in place with the (already blended) tile above
// it over its first `blendExtent` rows and with the tile to its left over its first `blendExtent` columns, by linear
// ramps: b[y] = a[end − e + y]·(1 − y/e) + b[y]·(y/e) with e = min(a rows, b rows, blendExtent). Then its top-left
// `rowLimit` × `rowLimit` corner goes into the output. Only the previous row of tile outputs is kept, so memory is
// one tile's activations plus two rows of tile outputs plus the result.
// Ref: diffusers AutoencoderKL._tiled_encode, tiled_decode, blend_v, blend_h (autoencoder_kl.py).
import Tensors

/// diffusers' tiling parameters: `tile_sample_min_size`, `tile_latent_min_size` and `tile_overlap_factor`.
/// Encode works on image tiles of `sampleTileSize` (latent tiles then blend over int(latentTileSize·overlap) rows);
/// decode on latent tiles of `latentTileSize` (image tiles blend over int(sampleTileSize·overlap) rows).
public struct VAETiling: Sendable, Equatable {
    public var sampleTileSize: Int
    public var latentTileSize: Int
    public var overlapFactor: Double

    public init(sampleTileSize: Int, latentTileSize: Int, overlapFactor: Double = 0.25) {
        self.sampleTileSize = sampleTileSize; self.latentTileSize = latentTileSize; self.overlapFactor = overlapFactor
    }

    /// tile_latent_min_size = int(sample_size / 2^(len(block_out_channels) − 1)), as AutoencoderKL.__init__.
    public init(sampleTileSize: Int, downsamplingFactor f: Int, overlapFactor: Double = 0.25) {
        self.init(sampleTileSize: sampleTileSize, latentTileSize: Int(Double(sampleTileSize) / Double(f)),
                  overlapFactor: overlapFactor)
    }

    // Python's int(x) truncates toward zero, as Int(Double) does.
    /// Encode: image tiles start every `sampleStride` pixels; latent tiles blend over `latentBlendExtent` rows and
    /// keep `latentRowLimit` rows / columns.
    var sampleStride: Int { Int(Double(sampleTileSize) * (1 - overlapFactor)) }
    var latentBlendExtent: Int { Int(Double(latentTileSize) * overlapFactor) }
    var latentRowLimit: Int { latentTileSize - latentBlendExtent }
    /// Decode: latent tiles start every `latentStride` pixels; image tiles blend over `sampleBlendExtent` rows and
    /// keep `sampleRowLimit`.
    var latentStride: Int { Int(Double(latentTileSize) * (1 - overlapFactor)) }
    var sampleBlendExtent: Int { Int(Double(sampleTileSize) * overlapFactor) }
    var sampleRowLimit: Int { sampleTileSize - sampleBlendExtent }

    /// Every tile must advance (strides ≥ 1) and every image tile must be a multiple of the downsampling factor f
    /// (the encoder halves it n − 1 times); with images that are multiples of f, a tile size that is a multiple of
    /// 4f (512 for SD) guarantees that.
    public func validate(downsamplingFactor f: Int) throws {
        guard overlapFactor >= 0, overlapFactor < 1 else {
            throw VAEError.badTiling("overlap factor \(overlapFactor) must be in [0, 1)")
        }
        guard sampleTileSize >= 1, latentTileSize >= 1, sampleStride >= 1, latentStride >= 1 else {
            throw VAEError.badTiling("tile size \(sampleTileSize) px (latent \(latentTileSize)) is too small: tiles must "
                                     + "advance by at least one pixel; use a multiple of \(4 * f)")
        }
        guard sampleTileSize % f == 0, sampleStride % f == 0 else {
            throw VAEError.badTiling("tile size \(sampleTileSize) px and its stride \(sampleStride) px must be multiples of "
                                     + "the VAE's downsampling factor \(f); use a multiple of \(4 * f)")
        }
    }
}

/// `run` over overlapping tiles of `x`, blended and cropped as diffusers does (see the file header).
/// `outSize` maps a tile's input height or width to its output's.
func tiledApply(_ x: FeatureMap, tileSize: Int, stride: Int, blendExtent: Int, rowLimit: Int, outChannels: Int,
                outSize: (Int) -> Int, _ run: (FeatureMap) -> FeatureMap) -> FeatureMap {
    let rowStarts = Array(Swift.stride(from: 0, to: x.height, by: stride))
    let colStarts = Array(Swift.stride(from: 0, to: x.width, by: stride))
    let tileRows = rowStarts.map { min(tileSize, x.height - $0) }, tileCols = colStarts.map { min(tileSize, x.width - $0) }
    let keptRows = tileRows.map { min(rowLimit, outSize($0)) }, keptCols = tileCols.map { min(rowLimit, outSize($0)) }
    let out = FeatureMap(batch: x.batch, channels: outChannels, height: keptRows.reduce(0, +), width: keptCols.reduce(0, +))

    var above: [FeatureMap] = []
    var y0 = 0
    for i in rowStarts.indices {
        var row: [FeatureMap] = []
        var x0 = 0
        for j in colStarts.indices {
            let tile = run(crop(x, top: rowStarts[i], left: colStarts[j], height: tileRows[i], width: tileCols[j]))
            precondition(tile.channels == outChannels && tile.height == outSize(tileRows[i])
                         && tile.width == outSize(tileCols[j]), "tiledApply: tile output \(tile.shape)")
            if i > 0 { blendVertical(above[j], into: tile, extent: blendExtent) }
            if j > 0 { blendHorizontal(row[j - 1], into: tile, extent: blendExtent) }
            paste(tile, rows: keptRows[i], cols: keptCols[j], into: out, top: y0, left: x0)
            row.append(tile)
            x0 += keptCols[j]
        }
        above = row
        y0 += keptRows[i]
    }
    return out
}

/// x[:, :, top ..< top + height, left ..< left + width] as a new map.
func crop(_ x: FeatureMap, top: Int, left: Int, height: Int, width: Int) -> FeatureMap {
    let out = FeatureMap(batch: x.batch, channels: x.channels, height: height, width: width)
    let src = x.ptr, dst = out.ptr
    parallelFor(x.batch * x.channels, work: out.count) { bc in
        for r in 0..<height {
            (dst + (bc * height + r) * width).update(from: src + (bc * x.height + top + r) * x.width + left, count: width)
        }
    }
    return out
}

/// out[:, :, top ..< top + rows, left ..< left + cols] = tile[:, :, :rows, :cols].
private func paste(_ tile: FeatureMap, rows: Int, cols: Int, into out: FeatureMap, top: Int, left: Int) {
    let src = tile.ptr, dst = out.ptr
    parallelFor(tile.batch * tile.channels, work: tile.batch * tile.channels * rows * cols) { bc in
        for r in 0..<rows {
            (dst + (bc * out.height + top + r) * out.width + left).update(from: src + (bc * tile.height + r) * tile.width,
                                                                          count: cols)
        }
    }
}

/// b[:, :, y, :] = a[:, :, a.height − e + y, :]·(1 − y/e) + b[:, :, y, :]·(y/e) for y < e = min(a.height, b.height,
/// extent). Ref: diffusers AutoencoderKL.blend_v.
func blendVertical(_ a: FeatureMap, into b: FeatureMap, extent: Int) {
    precondition(a.width == b.width && a.batch == b.batch && a.channels == b.channels, "blendVertical: \(a.shape) vs \(b.shape)")
    let e = min(a.height, b.height, extent)
    guard e > 0 else { return }
    let w = b.width, pa = a.ptr, pb = b.ptr
    parallelFor(b.batch * b.channels, work: b.batch * b.channels * e * w) { bc in
        for y in 0..<e {
            let t = Double(y) / Double(e)
            let wa = Float(1 - t), wb = Float(t)
            let ra = pa + (bc * a.height + a.height - e + y) * w, rb = pb + (bc * b.height + y) * w
            for k in 0..<w { rb[k] = ra[k] * wa + rb[k] * wb }
        }
    }
}

/// b[:, :, :, x] = a[:, :, :, a.width − e + x]·(1 − x/e) + b[:, :, :, x]·(x/e) for x < e = min(a.width, b.width,
/// extent). Ref: diffusers AutoencoderKL.blend_h.
func blendHorizontal(_ a: FeatureMap, into b: FeatureMap, extent: Int) {
    precondition(a.height == b.height && a.batch == b.batch && a.channels == b.channels, "blendHorizontal: \(a.shape) vs \(b.shape)")
    let e = min(a.width, b.width, extent)
    guard e > 0 else { return }
    let h = b.height, pa = a.ptr, pb = b.ptr
    parallelFor(b.batch * b.channels, work: b.batch * b.channels * e * h) { bc in
        for r in 0..<h {
            let ra = pa + (bc * h + r) * a.width + a.width - e, rb = pb + (bc * h + r) * b.width
            for x in 0..<e {
                let t = Double(x) / Double(e)
                rb[x] = ra[x] * Float(1 - t) + rb[x] * Float(t)
            }
        }
    }
}
