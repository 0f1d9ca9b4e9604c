// Layout changes: NCHW feature maps ↔ token sequences (B, HW, C) for the transformer blocks, and channel concat for
// the U-Net skip connections. Transposes go through 32×32 tiles so both sides stay in cache.
import Tensors

// MARK: - Blocked transpose

private let transposeTile = 32

/// For each of `batch` matrices: dst (cols, rows) = srcᵀ (or += when `accumulate`), src (rows, cols) row-major.
/// Parallel over batch × tiles of dst rows, so workers write disjoint rows.
private func batchedTranspose(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>,
                              batch: Int, rows: Int, cols: Int, accumulate: Bool) {
    let tile = transposeTile
    let colTiles = (cols + tile - 1) / tile
    parallelFor(batch * colTiles, work: batch * rows * cols) { job in
        let bIdx = job / colTiles, c0 = (job % colTiles) * tile, c1 = min(cols, c0 + tile)
        let s = src + bIdx * rows * cols, d = dst + bIdx * rows * cols
        var r0 = 0
        while r0 < rows {
            let r1 = min(rows, r0 + tile)
            for c in c0..<c1 {
                let drow = d + c * rows
                if accumulate {
                    for r in r0..<r1 { drow[r] += s[r * cols + c] }
                } else {
                    for r in r0..<r1 { drow[r] = s[r * cols + c] }
                }
            }
            r0 = r1
        }
    }
}

// MARK: - Channels ↔ tokens

/// out[b, t, c] = inp[b, c, t]. Overwrites out.
/// Ref: diffusers Transformer2DModel (`hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, inner_dim)`).
public func channelsToTokens(out: UnsafeMutablePointer<Float>,  // (B, HW, C)
                             inp: UnsafePointer<Float>,         // (B, C, HW)
                             B: Int, C: Int, HW: Int) {
    batchedTranspose(out, inp, batch: B, rows: C, cols: HW, accumulate: false)
}

/// dinp[b, c, t] += dout[b, t, c]. Accumulates.
public func channelsToTokensBackward(dinp: UnsafeMutablePointer<Float>,  // (B, C, HW)
                                     dout: UnsafePointer<Float>,         // (B, HW, C)
                                     B: Int, C: Int, HW: Int) {
    batchedTranspose(dinp, dout, batch: B, rows: HW, cols: C, accumulate: true)
}

/// out[b, c, t] = inp[b, t, c]. Overwrites out.
/// Ref: diffusers Transformer2DModel (`hidden_states.reshape(batch, height, width, inner_dim).permute(0, 3, 1, 2)`).
public func tokensToChannels(out: UnsafeMutablePointer<Float>,  // (B, C, HW)
                             inp: UnsafePointer<Float>,         // (B, HW, C)
                             B: Int, C: Int, HW: Int) {
    batchedTranspose(out, inp, batch: B, rows: HW, cols: C, accumulate: false)
}

/// dinp[b, t, c] += dout[b, c, t]. Accumulates.
public func tokensToChannelsBackward(dinp: UnsafeMutablePointer<Float>,  // (B, HW, C)
                                     dout: UnsafePointer<Float>,         // (B, C, HW)
                                     B: Int, C: Int, HW: Int) {
    batchedTranspose(dinp, dout, batch: B, rows: C, cols: HW, accumulate: true)
}

// MARK: - Channel concat (U-Net skips)

/// out = cat([a, b], dim=1). Overwrites out.
/// Ref: diffusers UpBlock2D / CrossAttnUpBlock2D (`torch.cat([hidden_states, res_hidden_states], dim=1)`: the
/// current hidden state first, the popped skip second).
public func concatChannels(out: UnsafeMutablePointer<Float>,  // (B, C1 + C2, HW)
                           a: UnsafePointer<Float>,           // (B, C1, HW)
                           b: UnsafePointer<Float>,           // (B, C2, HW)
                           B: Int, C1: Int, C2: Int, HW: Int) {
    let C = C1 + C2
    parallelFor(B * C, work: B * C * HW) { bc in
        let bIdx = bc / C, c = bc % C
        let src = c < C1 ? a + (bIdx * C1 + c) * HW : b + (bIdx * C2 + c - C1) * HW
        (out + bc * HW).update(from: src, count: HW)
    }
}

/// da += dout[:, :C1], db += dout[:, C1:]: backward of `concatChannels`. Accumulates.
public func splitChannelsBackward(da: UnsafeMutablePointer<Float>,  // (B, C1, HW)
                                  db: UnsafeMutablePointer<Float>,  // (B, C2, HW)
                                  dout: UnsafePointer<Float>,       // (B, C1 + C2, HW)
                                  B: Int, C1: Int, C2: Int, HW: Int) {
    let C = C1 + C2
    parallelFor(B * C, work: B * C * HW) { bc in
        let bIdx = bc / C, c = bc % C
        let dst = c < C1 ? da + (bIdx * C1 + c) * HW : db + (bIdx * C2 + c - C1) * HW
        let src = dout + bc * HW
        for i in 0..<HW { dst[i] += src[i] }
    }
}
