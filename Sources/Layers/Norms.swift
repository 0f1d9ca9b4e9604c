// Normalisation layers: GroupNorm (resnets, Transformer2DModel.norm, conv_norm_out), GroupNorm fused with SiLU
// (diffusers resnets and conv_norm_out always apply SiLU right after the norm), and LayerNorm (transformer blocks).
// Forward caches mean and rstd = 1/sqrt(var + eps) (biased variance, as PyTorch); backward recomputes x̂ from them.
// Statistics accumulate in Double over float partial sums of 16-element lanes, so they match PyTorch to ~1e-7.
import Tensors

// MARK: - Reductions (Double accumulation over SIMD float lanes)

/// Elements per block: each lane of a SIMD16 sums at most 16 floats before the block total goes to Double.
private let reductionBlock = 256

/// Σ x[i] for i in 0..<n.
@inline(__always)
func sumDouble(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
    var total = 0.0, i = 0
    let raw = UnsafeRawPointer(x)
    while i + 16 <= n {
        var acc = SIMD16<Float>(repeating: 0)
        let end = min(n, i + reductionBlock)
        var j = i
        while j + 16 <= end { acc += raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self); j += 16 }
        total += Double(acc.sum())
        i = j
    }
    while i < n { total += Double(x[i]); i += 1 }
    return total
}

/// Σ (x[i] − shift)² for i in 0..<n.
@inline(__always)
func sumSquaredDeviationDouble(_ x: UnsafePointer<Float>, _ n: Int, shift: Float) -> Double {
    var total = 0.0, i = 0
    let raw = UnsafeRawPointer(x), m = SIMD16<Float>(repeating: shift)
    while i + 16 <= n {
        var acc = SIMD16<Float>(repeating: 0)
        let end = min(n, i + reductionBlock)
        var j = i
        while j + 16 <= end {
            let d = raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self) - m
            acc += d * d  // not addProduct: that lowers to a libm fmaf call per lane
            j += 16
        }
        total += Double(acc.sum())
        i = j
    }
    while i < n { let d = Double(x[i] - shift); total += d * d; i += 1 }
    return total
}

/// Σ y[i] · (x[i] − shift) for i in 0..<n.
@inline(__always)
func dotCenteredDouble(_ y: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int, shift: Float) -> Double {
    var total = 0.0, i = 0
    let ry = UnsafeRawPointer(y), rx = UnsafeRawPointer(x), m = SIMD16<Float>(repeating: shift)
    while i + 16 <= n {
        var acc = SIMD16<Float>(repeating: 0)
        let end = min(n, i + reductionBlock)
        var j = i
        while j + 16 <= end {
            let d = rx.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self) - m
            acc += ry.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self) * d
            j += 16
        }
        total += Double(acc.sum())
        i = j
    }
    while i < n { total += Double(y[i]) * Double(x[i] - shift); i += 1 }
    return total
}

/// (Σ y[i]·w[i], Σ y[i]·w[i]·(x[i] − shift)) for i in 0..<n (LayerNorm backward).
@inline(__always)
func weightedSumsDouble(_ y: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int,
                        shift: Float) -> (Double, Double) {
    var total1 = 0.0, total2 = 0.0, i = 0
    let ry = UnsafeRawPointer(y), rw = UnsafeRawPointer(w), rx = UnsafeRawPointer(x)
    let m = SIMD16<Float>(repeating: shift)
    while i + 16 <= n {
        var acc1 = SIMD16<Float>(repeating: 0), acc2 = SIMD16<Float>(repeating: 0)
        let end = min(n, i + reductionBlock)
        var j = i
        while j + 16 <= end {
            let yw = ry.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self)
                * rw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self)
            acc1 += yw
            acc2 += yw * (rx.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self) - m)
            j += 16
        }
        total1 += Double(acc1.sum()); total2 += Double(acc2.sum())
        i = j
    }
    while i < n {
        let yw = Double(y[i] * w[i])
        total1 += yw; total2 += yw * Double(x[i] - shift)
        i += 1
    }
    return (total1, total2)
}

/// (mean, rstd) of n floats: two passes (mean, then centred squares), biased variance as torch's norms use.
@inline(__always)
private func moments(_ x: UnsafePointer<Float>, _ n: Int, eps: Float) -> (mean: Float, rstd: Float) {
    let mean = sumDouble(x, n) / Double(n)
    // Centre on the float mean; the residual (mean − Float(mean)) correction keeps the variance exact to rounding.
    let m = Float(mean), shift = mean - Double(m)
    let variance = max(0, sumSquaredDeviationDouble(x, n, shift: m) / Double(n) - shift * shift)
    return (m, Float(1 / (variance + Double(eps)).squareRoot()))
}

// MARK: - GroupNorm

/// out = (x − mean_g) · rstd_g · weight_c + bias_c over groups of C/G consecutive channels. Overwrites out, mean, rstd;
/// `out` may be `inp` (a group's statistics are taken before any of it is written).
/// Ref: torch.nn.GroupNorm (affine), used by diffusers ResnetBlock2D.norm1/norm2 (eps 1e-5),
/// Transformer2DModel.norm (eps 1e-6) and UNet2DConditionModel.conv_norm_out.
public func groupNormForward(out: UnsafeMutablePointer<Float>,    // (B, C, HW)
                             mean: UnsafeMutablePointer<Float>,   // (B, G)
                             rstd: UnsafeMutablePointer<Float>,   // (B, G)
                             inp: UnsafePointer<Float>,           // (B, C, HW)
                             weight: UnsafePointer<Float>,        // (C)
                             bias: UnsafePointer<Float>,          // (C)
                             B: Int, C: Int, HW: Int, groups G: Int, eps: Float) {
    groupNormForwardImpl(out: out, mean: mean, rstd: rstd, inp: inp, weight: weight, bias: bias,
                         B: B, C: C, HW: HW, groups: G, eps: eps, silu: false)
}

/// dinp += ∂L/∂inp of `groupNormForward` (weight and bias gradients: `groupNormBackwardAffine`). Accumulates.
/// dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)) per group, with dx̂ = dout · weight_c.
/// Ref: torch.nn.GroupNorm backward (aten native_group_norm_backward).
public func groupNormBackward(dinp: UnsafeMutablePointer<Float>,   // (B, C, HW)
                              dout: UnsafePointer<Float>,          // (B, C, HW)
                              inp: UnsafePointer<Float>,           // (B, C, HW)
                              mean: UnsafePointer<Float>,          // (B, G)
                              rstd: UnsafePointer<Float>,          // (B, G)
                              weight: UnsafePointer<Float>,        // (C)
                              B: Int, C: Int, HW: Int, groups G: Int) {
    groupNormBackwardImpl(dinp: dinp, dout: dout, inp: inp, mean: mean, rstd: rstd, weight: weight, bias: nil,
                          B: B, C: C, HW: HW, groups: G)
}

/// out = SiLU(GroupNorm(inp)) in one pass: diffusers ResnetBlock2D's norm1 → nonlinearity and norm2 → nonlinearity,
/// and conv_norm_out → conv_act. Overwrites out, mean, rstd (the GroupNorm statistics, as `groupNormForward`);
/// `out` may be `inp`.
/// Ref: torch.nn.GroupNorm followed by torch.nn.SiLU.
public func groupNormSiLUForward(out: UnsafeMutablePointer<Float>,    // (B, C, HW)
                                 mean: UnsafeMutablePointer<Float>,   // (B, G)
                                 rstd: UnsafeMutablePointer<Float>,   // (B, G)
                                 inp: UnsafePointer<Float>,           // (B, C, HW)
                                 weight: UnsafePointer<Float>,        // (C)
                                 bias: UnsafePointer<Float>,          // (C)
                                 B: Int, C: Int, HW: Int, groups G: Int, eps: Float) {
    groupNormForwardImpl(out: out, mean: mean, rstd: rstd, inp: inp, weight: weight, bias: bias,
                         B: B, C: C, HW: HW, groups: G, eps: eps, silu: true)
}

/// dinp += ∂L/∂inp of `groupNormSiLUForward`; the pre-activation y is recomputed from inp, mean and rstd (hence
/// `bias`), so nothing but the statistics is cached. Accumulates.
public func groupNormSiLUBackward(dinp: UnsafeMutablePointer<Float>,   // (B, C, HW)
                                  dout: UnsafePointer<Float>,          // (B, C, HW)
                                  inp: UnsafePointer<Float>,           // (B, C, HW)
                                  mean: UnsafePointer<Float>,          // (B, G)
                                  rstd: UnsafePointer<Float>,          // (B, G)
                                  weight: UnsafePointer<Float>,        // (C)
                                  bias: UnsafePointer<Float>,          // (C)
                                  B: Int, C: Int, HW: Int, groups G: Int) {
    groupNormBackwardImpl(dinp: dinp, dout: dout, inp: inp, mean: mean, rstd: rstd, weight: weight, bias: bias,
                          B: B, C: C, HW: HW, groups: G)
}

private func groupNormForwardImpl(out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
                                  rstd: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                                  weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                                  B: Int, C: Int, HW: Int, groups G: Int, eps: Float, silu: Bool) {
    precondition(G > 0 && C % G == 0, "groupNorm: \(C) channels not divisible into \(G) groups")
    let Cg = C / G
    parallelFor(B * G, work: B * C * HW) { bg in
        let g = bg % G
        let x = inp + bg * Cg * HW, y = out + bg * Cg * HW
        let (m, r) = moments(x, Cg * HW, eps: eps)
        mean[bg] = m
        rstd[bg] = r
        for cg in 0..<Cg {
            let c = g * Cg + cg
            // y = (x − m)·a + b with a = r·w. (torch folds this into x·a + (b − m·a), which cancels when |m| ≫ std.)
            let a = r * weight[c], b = bias[c]
            let xc = x + cg * HW, yc = y + cg * HW
            if silu {
                for i in 0..<HW { yc[i] = siluScalar((xc[i] - m) * a + b) }
            } else {
                for i in 0..<HW { yc[i] = (xc[i] - m) * a + b }
            }
        }
    }
}

/// `bias == nil`: plain GroupNorm backward; otherwise dout is first pulled back through SiLU at y = GN(x).
private func groupNormBackwardImpl(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                   inp: UnsafePointer<Float>, mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                   weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                   B: Int, C: Int, HW: Int, groups G: Int) {
    let Cg = C / G
    let n = Double(Cg * HW)
    parallelFor(B * G, work: B * C * HW) { bg in
      withUnsafeTemporaryAllocation(of: Float.self, capacity: reductionBlock) { tile in
        let scratch = tile.baseAddress!
        let g = bg % G
        let base = bg * Cg * HW
        let m = mean[bg], r = rstd[bg]
        // Σ dx̂ and Σ dx̂·x̂ over the group, dx̂ = dy · w_c, dy = dout (or dout · silu'(y)).
        var sumDxhat = 0.0, sumDxhatXhat = 0.0
        for cg in 0..<Cg {
            let c = g * Cg + cg
            let x = inp + base + cg * HW, dy = dout + base + cg * HW
            var sdy = 0.0, sdyx = 0.0
            if let bias {
                // dy = dout · silu'(y), y = (x − m)·a + b, a block at a time into the scratch tile, then vector sums.
                let a = r * weight[c], b = bias[c]
                var i = 0
                while i < HW {
                    let count = min(reductionBlock, HW - i)
                    for k in 0..<count { scratch[k] = dy[i + k] * siluDerivativeScalar((x[i + k] - m) * a + b) }
                    sdy += sumDouble(scratch, count)
                    sdyx += dotCenteredDouble(scratch, x + i, count, shift: m)
                    i += count
                }
            } else {
                sdy = sumDouble(dy, HW)
                sdyx = dotCenteredDouble(dy, x, HW, shift: m)
            }
            sumDxhat += Double(weight[c]) * sdy
            sumDxhatXhat += Double(weight[c]) * sdyx * Double(r)
        }
        let meanDxhat = Float(sumDxhat / n), meanDxhatXhat = Float(sumDxhatXhat / n)
        for cg in 0..<Cg {
            let c = g * Cg + cg
            let x = inp + base + cg * HW, dy = dout + base + cg * HW, dx = dinp + base + cg * HW
            let w = weight[c]
            if let bias {
                let a = r * w, b = bias[c]
                for i in 0..<HW {
                    let dxhat = dy[i] * siluDerivativeScalar((x[i] - m) * a + b) * w
                    let xhat = (x[i] - m) * r
                    dx[i] += r * (dxhat - meanDxhat - xhat * meanDxhatXhat)
                }
            } else {
                for i in 0..<HW {
                    let xhat = (x[i] - m) * r
                    dx[i] += r * (dy[i] * w - meanDxhat - xhat * meanDxhatXhat)
                }
            }
        }
      }
    }
}

// MARK: - LayerNorm

/// out = (x − mean) · rstd · weight + bias over the last dimension. Overwrites out, mean, rstd.
/// Ref: torch.nn.LayerNorm (diffusers BasicTransformerBlock norm1/norm2/norm3, eps 1e-5).
public func layerNormForward(out: UnsafeMutablePointer<Float>,    // (N, C)
                             mean: UnsafeMutablePointer<Float>,   // (N)
                             rstd: UnsafeMutablePointer<Float>,   // (N)
                             inp: UnsafePointer<Float>,           // (N, C)
                             weight: UnsafePointer<Float>,        // (C)
                             bias: UnsafePointer<Float>,          // (C)
                             N: Int, C: Int, eps: Float) {
    parallelFor(N, work: N * C) { row in
        let x = inp + row * C, y = out + row * C
        let (m, r) = moments(x, C, eps: eps)
        mean[row] = m
        rstd[row] = r
        for i in 0..<C { y[i] = (x[i] - m) * r * weight[i] + bias[i] }
    }
}

/// dinp += ∂L/∂inp of `layerNormForward` (weight and bias gradients: `layerNormBackwardAffine`). Accumulates.
/// Ref: torch.nn.LayerNorm backward (aten native_layer_norm_backward).
public func layerNormBackward(dinp: UnsafeMutablePointer<Float>,   // (N, C)
                              dout: UnsafePointer<Float>,          // (N, C)
                              inp: UnsafePointer<Float>,           // (N, C)
                              mean: UnsafePointer<Float>,          // (N)
                              rstd: UnsafePointer<Float>,          // (N)
                              weight: UnsafePointer<Float>,        // (C)
                              N: Int, C: Int) {
    parallelFor(N, work: N * C) { row in
        let x = inp + row * C, dy = dout + row * C, dx = dinp + row * C
        let m = mean[row], r = rstd[row]
        let (sumDxhat, sumDxhatXhat) = weightedSumsDouble(dy, weight, x, C, shift: m)
        let meanDxhat = Float(sumDxhat / Double(C)), meanDxhatXhat = Float(sumDxhatXhat * Double(r) / Double(C))
        for i in 0..<C {
            let xhat = (x[i] - m) * r
            dx[i] += r * (dy[i] * weight[i] - meanDxhat - xhat * meanDxhatXhat)
        }
    }
}

// MARK: - Affine parameter gradients (full-parameter training)

/// dweight_c += Σ dy·x̂ and dbias_c += Σ dy over the batch and pixels of channel c, with dy = dout, or
/// dout · silu'(y) for the fused GroupNorm + SiLU (`bias` given). The parameter gradients of `groupNormForward` /
/// `groupNormSiLUForward`. Accumulates; the caller zeroes them.
public func groupNormBackwardAffine(dweight: UnsafeMutablePointer<Float>,  // (C)
                                    dbias: UnsafeMutablePointer<Float>,    // (C)
                                    dout: UnsafePointer<Float>,            // (B, C, HW)
                                    inp: UnsafePointer<Float>,             // (B, C, HW)
                                    mean: UnsafePointer<Float>,            // (B, G)
                                    rstd: UnsafePointer<Float>,            // (B, G)
                                    weight: UnsafePointer<Float>,          // (C)
                                    silu bias: UnsafePointer<Float>?,      // (C), the fused SiLU's GroupNorm bias
                                    B: Int, C: Int, HW: Int, groups G: Int) {
    let Cg = C / G
    parallelFor(C, work: B * C * HW) { c in
        let g = c / Cg
        var sw = 0.0, sb = 0.0
        for b in 0..<B {
            let m = mean[b * G + g], r = rstd[b * G + g]
            let x = inp + (b * C + c) * HW, dy = dout + (b * C + c) * HW
            if let bias {
                let a = r * weight[c], beta = bias[c]
                for i in 0..<HW {
                    // y = (x − m)·a + b, as the forward computes it
                    let d = dy[i] * siluDerivativeScalar((x[i] - m) * a + beta)
                    let xhat = (x[i] - m) * r
                    sw += Double(d * xhat); sb += Double(d)
                }
            } else {
                for i in 0..<HW {
                    sw += Double(dy[i] * (x[i] - m) * r); sb += Double(dy[i])
                }
            }
        }
        dweight[c] += Float(sw)
        dbias[c] += Float(sb)
    }
}

/// dweight_i += Σ_rows dy·x̂ and dbias_i += Σ_rows dy: the parameter gradients of `layerNormForward`. Accumulates.
public func layerNormBackwardAffine(dweight: UnsafeMutablePointer<Float>,  // (C)
                                    dbias: UnsafeMutablePointer<Float>,    // (C)
                                    dout: UnsafePointer<Float>,            // (N, C)
                                    inp: UnsafePointer<Float>,             // (N, C)
                                    mean: UnsafePointer<Float>,            // (N)
                                    rstd: UnsafePointer<Float>,            // (N)
                                    N: Int, C: Int) {
    // A block of columns per task, rows in order (the same bits for any thread count).
    let block = 64
    parallelFor((C + block - 1) / block, work: N * C) { j in
        let c0 = j * block, c1 = min(C, c0 + block)
        for n in 0..<N {
            let x = inp + n * C, dy = dout + n * C, m = mean[n], r = rstd[n]
            for i in c0..<c1 {
                dweight[i] += dy[i] * (x[i] - m) * r
                dbias[i] += dy[i]
            }
        }
    }
}
