// 2-D convolution (square kernel, equal stride on both axes, no dilation, no groups), NCHW. Zero padding is the same
// on every side, or given per side (`Conv2DPadding`: diffusers' VAE Downsample2D pads only right and bottom).
// Ref: torch.nn.Conv2d / F.conv2d (cross-correlation; Ho = (H + 2·padding − K) / stride + 1, floor division).
//
// Forward is im2col + one sgemm per tile of output rows: out_b (Cout, Ho·Wo) = W (Cout, Cin·K·K) · col (Cin·K·K, Ho·Wo).
// The column buffer is tiled over output rows so it stays around a few MB (in cache, and a small workspace); a 1x1
// stride-1 unpadded convolution is the GEMM on the input directly. Backward (input only: base weights are frozen)
// is the transpose: dcol = Wᵀ · dout (or dcolᵀ = doutᵀ · W for small images), then col2im accumulates into dinp.
// The weight may be bf16 (mixed precision, `WeightMatrix`): the same GEMMs then run through BF16.gemm (fp32 sums);
// im2col / col2im and all activations stay fp32.
// On CPUs with AVX-512F, fp32 stride-1 convolutions whose output rows pack into 16-pixel vectors (widths a multiple
// of 16, or 4 and 8: every U-Net and VAE convolution but the downsamplers) skip all that: CKernels/conv_avx512.c
// runs them as an implicit GEMM, forward and input gradient alike (`conv2dImplicit`); with bf16 weights on CPUs with
// AVX512-BF16 (the bf16 path in force), CKernels/conv_avx512bf16.c does the same with VDPBF16PS (activations rounded
// to bf16 as they are packed, fp32 sums).
import CKernels
import Foundation
import Tensors

// MARK: - Geometry

/// Output height/width of a convolution, as PyTorch computes it (floor division).
@inline(__always)
public func conv2dOutputSize(_ size: Int, kernel: Int, stride: Int, padding: Int) -> Int {
    (size + 2 * padding - kernel) / stride + 1
}

/// Zero padding per side of a convolution's input. Ho = (H + top + bottom − K) / stride + 1 (floor division).
/// Ref: F.pad(x, (left, right, top, bottom)) followed by an unpadded F.conv2d.
public struct Conv2DPadding: Sendable, Equatable {
    public var top: Int, bottom: Int, left: Int, right: Int

    public init(top: Int, bottom: Int, left: Int, right: Int) {
        self.top = top; self.bottom = bottom; self.left = left; self.right = right
    }

    /// The same padding on all four sides (torch.nn.Conv2d's `padding=`).
    public init(_ all: Int) { self.init(top: all, bottom: all, left: all, right: all) }

    /// Output height and width of a convolution over an H × W input with this padding.
    @inline(__always)
    public func outputSize(H: Int, W: Int, kernel: Int, stride: Int) -> (Ho: Int, Wo: Int) {
        ((H + top + bottom - kernel) / stride + 1, (W + left + right - kernel) / stride + 1)
    }

    var isZero: Bool { top == 0 && bottom == 0 && left == 0 && right == 0 }
}

@inline(__always)
private func isPointwise(kernel: Int, stride: Int, padding: Conv2DPadding) -> Bool {
    kernel == 1 && stride == 1 && padding.isZero
}

/// Output rows per im2col tile: enough columns for an efficient GEMM, few enough that the column buffer
/// (Cin·K·K × rows·Wo floats) stays near `conv2dColumnBudget`.
@inline(__always)
private func conv2dTileRows(Cin: Int, kernel: Int, Ho: Int, Wo: Int) -> Int {
    let rowsK = Cin * kernel * kernel
    let columns = max(conv2dMinimumTileColumns, conv2dColumnBudget / max(1, rowsK))
    return max(1, min(Ho, columns / max(1, Wo)))
}

/// Target size (floats) of one im2col tile, and the fewest columns a tile may have (GEMM efficiency).
private let conv2dColumnBudget = 1 << 21
private let conv2dMinimumTileColumns = 512

/// Backward GEMM orientation. For tiles of at most this many output pixels (the 8x8 and 16x16 levels) the
/// backward computes dcolᵀ = doutᵀ · W, which OpenBLAS runs ~1.7× faster on 2 threads than Wᵀ · dout with its
/// tall-thin output (1280 ch at 8x8: 126 vs 70 GFLOPS), and scatters from that layout; larger tiles keep the
/// row-major dcol, whose col2im is contiguous.
private let conv2dTransposedBackwardMaxColumns = 256

@inline(__always)
private func conv2dTransposedBackward(_ n: Int) -> Bool { n <= conv2dTransposedBackwardMaxColumns }

/// Small images are convolved several at a time: the columns of `group` images side by side in one GEMM, so the
/// weight (up to 59 MB for SD1.5's 2560→1280 3x3 convs at the 4x4 and 8x8 levels, where an image has only 16 or 64
/// pixels) is streamed from memory once per group instead of once per image. Measured on SD1.5 at latent 32 (one
/// thread): those GEMMs ran at 13–40 GFLOPS one image at a time. Applies to outputs of at most this many pixels.
private let conv2dBatchedMaxPixels = 256

/// Images per group: at most 1024 columns, and the backward's dcolᵀ (columns × Cin·K·K) at most 4 M floats.
@inline(__always)
private func conv2dBatchGroup(B: Int, L: Int, rowsK: Int) -> Int {
    guard B > 1, L <= conv2dBatchedMaxPixels else { return 1 }
    return max(1, min(B, 1024 / L, (1 << 22) / max(1, L * rowsK)))
}

/// Floats of workspace `conv2dForward` / `conv2dBackwardInput` need for these shapes (0 for a 1x1 stride-1 conv).
public func conv2dWorkspaceSize(Cin: Int, H: Int, W: Int, kernel: Int, stride: Int, padding: Int) -> Int {
    conv2dWorkspaceSize(Cin: Cin, H: H, W: W, kernel: kernel, stride: stride, padding: Conv2DPadding(padding))
}

/// Floats of workspace the per-side-padding `conv2dForward` / `conv2dBackwardInput` need.
public func conv2dWorkspaceSize(Cin: Int, H: Int, W: Int, kernel: Int, stride: Int, padding: Conv2DPadding) -> Int {
    if isPointwise(kernel: kernel, stride: stride, padding: padding) { return 0 }
    let (Ho, Wo) = padding.outputSize(H: H, W: W, kernel: kernel, stride: stride)
    let rows = conv2dTileRows(Cin: Cin, kernel: kernel, Ho: Ho, Wo: Wo)
    return Cin * kernel * kernel * rows * Wo
}

// MARK: - Implicit GEMM (AVX-512F)

/// Whether a convolution runs on CKernels/conv_avx512.c: fp32 weights (checked by the callers), stride 1, kernel up
/// to 7×7, output
/// width a multiple of 16, or 1, 2, 4 or 8 with Ho·Wo a multiple of 16 (for the input gradient: the input's size),
/// a CPU with AVX-512F. Any padding: the input gradient of a stride-1 convolution is a stride-1 correlation with
/// padding k − 1 − p (negative is fine).
/// HGDPO_CONV=blas (`RuntimeOptions.convolutionsOnBLAS`) keeps im2col + the GEMMs everywhere (benchmarks, tests).
@inline(__always)
func conv2dImplicitGEMM(stride: Int, kernel: Int, Ho: Int, Wo: Int) -> Bool {
    conv2dImplicitAvailable && stride == 1 && kernel <= 7 && (Wo % 16 == 0 || (16 % Wo == 0 && (Ho * Wo) % 16 == 0))
}

let conv2dHasAVX512 = hg_cpu_has_avx512f() != 0
var conv2dImplicitAvailable: Bool { conv2dHasAVX512 && !RuntimeOptions.current.convolutionsOnBLAS }

/// The weights an implicit-GEMM convolution multiplies with, as stored: fp32 (CKernels/conv_avx512.c) or bf16
/// (CKernels/conv_avx512bf16.c); the forward's, or the input gradient's flipped, transposed reading of them.
private enum ImplicitWeights {
    case f32(UnsafePointer<Float>, gradInput: Bool)
    case bf16(UnsafePointer<UInt16>, gradInput: Bool)
}

/// out (B, M, Ho, Wo) += the correlation of inp (B, C, H, W) with the weights (see hg_conv_s1_avx512 and
/// hg_conv_s1_avx512bf16), cut into items of whole 48-pixel panels × output channels, about two per thread (one
/// when only the channels are split), spread over the threads. Each item streams its rows of the weights from memory
/// once per block of K and reuses them from L2 for all its panels, so an item with few panels is bound by memory
/// (48 pixels: 24 FLOP per fp32 weight byte). Images of fewer than 16 panels (SD1.5's 16×16 and smaller levels at
/// batch 2) with weights of 2M elements or more (SD1.5's 640- and 1280-channel convolutions: 3.7M and 14.7M) are
/// therefore split by channels only, every item taking all the pixels: at 8×8 × 1280 channels the input gradient
/// then reads the weights once instead of three times (fp32 131 → 184 GFLOPS, bf16 320 → 353; bench conv, 2
/// threads). Larger images, and small weights (which stay in cache, and where every item would pack all the panels),
/// are split by pixels (channels too, when there are too few panels to go round).
private func conv2dImplicit(weights: ImplicitWeights, inp: UnsafePointer<Float>,
                            out: UnsafeMutablePointer<Float>, B: Int, C: Int, H: Int, W: Int, M: Int, kernel: Int,
                            pt: Int, pl: Int, Ho: Int, Wo: Int) {
    let N = B * Ho * Wo, K = C * kernel * kernel, threads = max(1, Parallel.threads), want = 2 * threads
    let panels = (N + 47) / 48
    let chunk = panels < 16 && M * K >= 1 << 21 ? panels * 48 : max(48, (N / want + 47) / 48 * 48)
    let pixelItems = (N + chunk - 1) / chunk
    // Every item packs all its panels: an image split by channels only goes one item a thread (two a thread packed
    // each panel twice as often: 16×16 × 640 and 8×8 × 1280 were 3–6 % slower, bench conv bf16).
    let parts = pixelItems == 1 ? threads : (want + pixelItems - 1) / pixelItems
    let channelParts = pixelItems >= want ? 1 : min((M + 7) / 8, parts)
    let rows = ((M + channelParts - 1) / channelParts + 7) / 8 * 8
    let items = pixelItems * ((M + rows - 1) / rows)
    let scratchSize: Int
    switch weights {
    case .f32: scratchSize = hg_conv_avx512_scratch(Int32(K))
    case .bf16(_, let gradInput):
        scratchSize = hg_conv_avx512bf16_scratch(hg_conv_bf16_pairs(gradInput ? 1 : 0, Int32(C), Int32(kernel)))
    }
    parallelRanges(items, grain: rows * K * min(N, chunk) >= 1 << 20 ? 1 : items) { r in
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: scratchSize)
        defer { scratch.deallocate() }
        for item in r {
            let n0 = Int32((item % pixelItems) * chunk), m0 = (item / pixelItems) * rows
            let n1 = Int32(min(N, Int(n0) + chunk)), m1 = Int32(min(M, m0 + rows))
            switch weights {
            case .f32(let w, let gradInput):
                hg_conv_s1_avx512(w, gradInput ? 1 : 0, inp, out, Int32(C), Int32(H), Int32(W), Int32(M), Int32(kernel),
                                  Int32(pt), Int32(pl), Int32(Ho), Int32(Wo), n0, n1, Int32(m0), m1, scratch)
            case .bf16(let w, let gradInput):
                hg_conv_s1_avx512bf16(w, gradInput ? 1 : 0, inp, out, Int32(C), Int32(H), Int32(W), Int32(M), Int32(kernel),
                                      Int32(pt), Int32(pl), Int32(Ho), Int32(Wo), n0, n1, Int32(m0), m1, scratch)
            }
        }
    }
}

/// Whether a convolution with bf16 weights runs on CKernels/conv_avx512bf16.c: the shapes of `conv2dImplicitGEMM`
/// (for the input gradient: the input's size), the AVX512-BF16 path in force (`BF16.path`, chosen by the CPU or
/// `RuntimeOptions.bf16Path`), and not HGDPO_CONV=blas. Elsewhere bf16 convolutions run im2col + `BF16.gemm`.
@inline(__always)
func conv2dImplicitBF16(stride: Int, kernel: Int, Ho: Int, Wo: Int) -> Bool {
    conv2dImplicitBF16Available && stride == 1 && kernel <= 7 && (Wo % 16 == 0 || (16 % Wo == 0 && (Ho * Wo) % 16 == 0))
}

var conv2dImplicitBF16Available: Bool { BF16.isAccelerated && !RuntimeOptions.current.convolutionsOnBLAS }

/// The code a stride-`stride` forward convolution of that output size runs on, for benchmarks' reports.
public func conv2dPathName(bf16: Bool, stride: Int, kernel: Int, Ho: Int, Wo: Int) -> String {
    if bf16 {
        if conv2dImplicitBF16(stride: stride, kernel: kernel, Ho: Ho, Wo: Wo) { return "implicit GEMM, AVX512-BF16" }
        return BF16.isAccelerated ? "im2col + bf16 GEMM (AVX512-BF16)" : "im2col + bf16 weights widened for sgemm"
    }
    return conv2dImplicitGEMM(stride: stride, kernel: kernel, Ho: Ho, Wo: Wo) ? "implicit GEMM, AVX-512F" : "im2col + sgemm"
}

// MARK: - im2col / col2im

/// col (Cin·K·K, (oh1 − oh0)·Wo) ← the input patches for output rows oh0..<oh1 of one image; zeros where the
/// window hangs over the padding (only the top and left padding shift the window; bottom and right padding only
/// make Ho and Wo larger, and those windows read zeros past the last row or column). Row index (c·K + kh)·K + kw matches the weight layout (Cout, Cin, K, K).
/// `ldCol` is col's row stride (default: the tile's column count; larger when several images share one col).
private func im2colRows(_ col: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>,  // inp: (Cin, H, W)
                        Cin: Int, H: Int, W: Int, kernel K: Int, stride s: Int, padTop pT: Int, padLeft pL: Int,
                        Wo: Int, oh0: Int, oh1: Int, ldCol: Int? = nil) {
    let nCols = (oh1 - oh0) * Wo, ld = ldCol ?? nCols
    parallelFor(Cin, work: Cin * K * K * nCols) { c in
        let src = inp + c * H * W
        for kh in 0..<K {
            for kw in 0..<K {
                var dst = col + ((c * K + kh) * K + kw) * ld
                // Output columns whose input column iw = ow·s − p + kw lies inside [0, W).
                let owLo = min(Wo, max(0, (pL - kw + s - 1) / s))
                let hiNum = W - 1 + pL - kw
                let owHi = hiNum < 0 ? owLo : max(owLo, min(Wo, hiNum / s + 1))
                for oh in oh0..<oh1 {
                    let ih = oh * s - pT + kh
                    if ih < 0 || ih >= H {
                        dst.update(repeating: 0, count: Wo)
                    } else {
                        let row = src + ih * W - pL + kw
                        for ow in 0..<owLo { dst[ow] = 0 }
                        if s == 1 {
                            (dst + owLo).update(from: row + owLo, count: owHi - owLo)
                        } else {
                            for ow in owLo..<owHi { dst[ow] = row[ow * s] }
                        }
                        for ow in owHi..<Wo { dst[ow] = 0 }
                    }
                    dst += Wo
                }
            }
        }
    }
}

/// dinp (Cin, H, W) += the columns of col (Cin·K·K, (oh1 − oh0)·Wo) scattered back to the pixels they were read
/// from (the adjoint of `im2colRows`). Parallel over channels, so no two workers touch the same pixel.
private func col2imRowsAccumulate(_ dinp: UnsafeMutablePointer<Float>, _ col: UnsafePointer<Float>,
                                  Cin: Int, H: Int, W: Int, kernel K: Int, stride s: Int, padTop pT: Int, padLeft pL: Int,
                                  Wo: Int, oh0: Int, oh1: Int) {
    let nCols = (oh1 - oh0) * Wo
    parallelFor(Cin, work: Cin * K * K * nCols) { c in
        let dst = dinp + c * H * W
        for kh in 0..<K {
            for kw in 0..<K {
                var src = col + ((c * K + kh) * K + kw) * nCols
                let owLo = min(Wo, max(0, (pL - kw + s - 1) / s))
                let hiNum = W - 1 + pL - kw
                let owHi = hiNum < 0 ? owLo : max(owLo, min(Wo, hiNum / s + 1))
                for oh in oh0..<oh1 {
                    let ih = oh * s - pT + kh
                    if ih >= 0 && ih < H {
                        let row = dst + ih * W - pL + kw
                        if s == 1 {
                            for ow in owLo..<owHi { row[ow] += src[ow] }
                        } else {
                            for ow in owLo..<owHi { row[ow * s] += src[ow] }
                        }
                    }
                    src += Wo
                }
            }
        }
    }
}

/// dinp (Cin, H, W) += colT (n, Cin·K·K) scattered back like `col2imRowsAccumulate`, from the transposed column
/// layout (one row per output pixel of rows oh0..<oh1) that the backward GEMM produces for small images.
private func col2imTransposedRowsAccumulate(_ dinp: UnsafeMutablePointer<Float>, _ colT: UnsafePointer<Float>,
                                            Cin: Int, H: Int, W: Int, kernel K: Int, stride s: Int, padTop pT: Int, padLeft pL: Int,
                                            Wo: Int, oh0: Int, oh1: Int) {
    let rowsK = Cin * K * K
    parallelFor(Cin, work: rowsK * (oh1 - oh0) * Wo) { c in
        let dst = dinp + c * H * W
        for kh in 0..<K {
            for kw in 0..<K {
                let r = (c * K + kh) * K + kw
                let owLo = min(Wo, max(0, (pL - kw + s - 1) / s))
                let hiNum = W - 1 + pL - kw
                let owHi = hiNum < 0 ? owLo : max(owLo, min(Wo, hiNum / s + 1))
                for oh in oh0..<oh1 {
                    let ih = oh * s - pT + kh
                    guard ih >= 0 && ih < H else { continue }
                    let row = dst + ih * W - pL + kw
                    let src = colT + (oh - oh0) * Wo * rowsK + r
                    for ow in owLo..<owHi { row[ow * s] += src[ow * rowsK] }
                }
            }
        }
    }
}

// MARK: - Forward / backward

/// out = conv2d(pad(inp, padding), weight, bias, stride) with zero padding given per side (`Conv2DPadding(p)`: p on
/// every side, as torch). Overwrites `out`.
/// Ref: torch.nn.Conv2d (diffusers conv_in/conv_out, resnet conv1/conv2/conv_shortcut, Downsample2D, Upsample2D,
/// proj_in/out); diffusers Downsample2D with padding 0 (`F.pad(x, (0, 1, 0, 1))`, then a stride-2 3x3 conv), the VAE's.
/// - Parameter workspace: at least `conv2dWorkspaceSize(Cin:H:W:kernel:stride:padding:)` floats.
public func conv2dForward(out: UnsafeMutablePointer<Float>,      // (B, Cout, Ho, Wo)
                          inp: UnsafePointer<Float>,              // (B, Cin, H, W)
                          weight: WeightMatrix,                   // (Cout, Cin, K, K)
                          bias: UnsafePointer<Float>?,            // (Cout)
                          B: Int, Cin: Int, H: Int, W: Int, Cout: Int,
                          kernel: Int, stride: Int, padding: Conv2DPadding,
                          workspace: UnsafeMutablePointer<Float>) {
    let (Ho, Wo) = padding.outputSize(H: H, W: W, kernel: kernel, stride: stride)
    let L = Ho * Wo, rowsK = Cin * kernel * kernel
    precondition(Ho > 0 && Wo > 0, "conv2dForward: empty output for H \(H), W \(W), kernel \(kernel)")
    // Start from the bias (or zero) and let every GEMM accumulate (beta = 1): saves OpenBLAS's separate beta pass.
    parallelFor(B * Cout, work: B * Cout * L) { bo in
        (out + bo * L).update(repeating: bias?[bo % Cout] ?? 0, count: L)
    }
    switch weight {
    case .f32(let w) where conv2dImplicitGEMM(stride: stride, kernel: kernel, Ho: Ho, Wo: Wo):
        conv2dImplicit(weights: .f32(w, gradInput: false), inp: inp, out: out, B: B, C: Cin, H: H, W: W, M: Cout,
                       kernel: kernel, pt: padding.top, pl: padding.left, Ho: Ho, Wo: Wo)
        return
    case .bf16(let w) where rowsK >= 2 && conv2dImplicitBF16(stride: stride, kernel: kernel, Ho: Ho, Wo: Wo):
        conv2dImplicit(weights: .bf16(w, gradInput: false), inp: inp, out: out, B: B, C: Cin, H: H, W: W, M: Cout,
                       kernel: kernel, pt: padding.top, pl: padding.left, Ho: Ho, Wo: Wo)
        return
    default: break
    }
    let pointwise = isPointwise(kernel: kernel, stride: stride, padding: padding)
    let group = conv2dBatchGroup(B: B, L: L, rowsK: rowsK)
    if group > 1 {
        // tmp (Cout, g·L) = W · col (Cin·K·K, g·L), image j in columns j·L..<(j+1)·L; out_b += tmp's block.
        let col = UnsafeMutablePointer<Float>.allocate(capacity: rowsK * group * L)
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: Cout * group * L)
        defer { col.deallocate(); tmp.deallocate() }
        var b0 = 0
        while b0 < B {
            let g = min(group, B - b0), n = g * L
            for j in 0..<g {
                im2colRows(col + j * L, inp + (b0 + j) * Cin * H * W, Cin: Cin, H: H, W: W, kernel: kernel,
                           stride: stride, padTop: padding.top, padLeft: padding.left, Wo: Wo, oh0: 0, oh1: Ho, ldCol: n)
            }
            BLAS.gemm(m: Cout, n: n, k: rowsK, a: weight, lda: rowsK, b: col, ldb: n, beta: 0, c: tmp, ldc: n)
            parallelFor(g * Cout, work: n * Cout) { jo in
                let j = jo / Cout, o = jo % Cout
                let dst = out + ((b0 + j) * Cout + o) * L, src = tmp + o * n + j * L
                for p in 0..<L { dst[p] += src[p] }
            }
            b0 += g
        }
        return
    }
    let tileRows = conv2dTileRows(Cin: Cin, kernel: kernel, Ho: Ho, Wo: Wo)
    for b in 0..<B {
        let inpB = inp + b * Cin * H * W, outB = out + b * Cout * L
        if pointwise {
            BLAS.gemm(m: Cout, n: L, k: Cin, a: weight, lda: Cin, b: inpB, ldb: L, beta: 1, c: outB, ldc: L)
            continue
        }
        var oh0 = 0
        while oh0 < Ho {
            let oh1 = min(Ho, oh0 + tileRows), n = (oh1 - oh0) * Wo
            im2colRows(workspace, inpB, Cin: Cin, H: H, W: W, kernel: kernel, stride: stride,
                       padTop: padding.top, padLeft: padding.left, Wo: Wo, oh0: oh0, oh1: oh1)
            BLAS.gemm(m: Cout, n: n, k: rowsK, a: weight, lda: rowsK, b: workspace, ldb: n,
                      beta: 1, c: outB + oh0 * Wo, ldc: L)
            oh0 = oh1
        }
    }
}

/// dinp += ∂L/∂inp of `conv2dForward` given dout = ∂L/∂out. Accumulates; the caller zeroes `dinp`.
/// Weight and bias gradients (full-parameter training): `conv2dBackwardWeight`.
/// - Parameter workspace: at least `conv2dWorkspaceSize(Cin:H:W:kernel:stride:padding:)` floats.
public func conv2dBackwardInput(dinp: UnsafeMutablePointer<Float>,   // (B, Cin, H, W)
                                dout: UnsafePointer<Float>,           // (B, Cout, Ho, Wo)
                                weight: WeightMatrix,                 // (Cout, Cin, K, K)
                                B: Int, Cin: Int, H: Int, W: Int, Cout: Int,
                                kernel: Int, stride: Int, padding: Conv2DPadding,
                                workspace: UnsafeMutablePointer<Float>) {
    let (Ho, Wo) = padding.outputSize(H: H, W: W, kernel: kernel, stride: stride)
    let L = Ho * Wo, rowsK = Cin * kernel * kernel
    // dinp = dout correlated with the flipped, transposed kernel, padded k − 1 − p (stride 1 only).
    switch weight {
    case .f32(let w) where conv2dImplicitGEMM(stride: stride, kernel: kernel, Ho: H, Wo: W):
        conv2dImplicit(weights: .f32(w, gradInput: true), inp: dout, out: dinp, B: B, C: Cout, H: Ho, W: Wo, M: Cin,
                       kernel: kernel, pt: kernel - 1 - padding.top, pl: kernel - 1 - padding.left, Ho: H, Wo: W)
        return
    case .bf16(let w) where kernel >= 2 && conv2dImplicitBF16(stride: stride, kernel: kernel, Ho: H, Wo: W):
        // (A 1×1 input gradient is the GEMM below on dout itself.)
        conv2dImplicit(weights: .bf16(w, gradInput: true), inp: dout, out: dinp, B: B, C: Cout, H: Ho, W: Wo, M: Cin,
                       kernel: kernel, pt: kernel - 1 - padding.top, pl: kernel - 1 - padding.left, Ho: H, Wo: W)
        return
    default: break
    }
    let pointwise = isPointwise(kernel: kernel, stride: stride, padding: padding)
    let group = conv2dBatchGroup(B: B, L: L, rowsK: rowsK)
    if group > 1 {
        // doutG (Cout, g·L) gathers the group's dout; dcolᵀ (g·L, Cin·K·K) = doutGᵀ · W; image j's rows scatter back.
        let doutG = UnsafeMutablePointer<Float>.allocate(capacity: Cout * group * L)
        let colT = UnsafeMutablePointer<Float>.allocate(capacity: group * L * rowsK)
        defer { doutG.deallocate(); colT.deallocate() }
        var b0 = 0
        while b0 < B {
            let g = min(group, B - b0), n = g * L
            parallelFor(g * Cout, work: n * Cout) { jo in
                let j = jo / Cout, o = jo % Cout
                (doutG + o * n + j * L).update(from: dout + ((b0 + j) * Cout + o) * L, count: L)
            }
            BLAS.gemm(transA: true, m: n, n: rowsK, k: Cout, a: doutG, lda: n, b: weight, ldb: rowsK,
                      beta: 0, c: colT, ldc: rowsK)
            for j in 0..<g {
                col2imTransposedRowsAccumulate(dinp + (b0 + j) * Cin * H * W, colT + j * L * rowsK, Cin: Cin, H: H, W: W,
                                               kernel: kernel, stride: stride, padTop: padding.top,
                                               padLeft: padding.left, Wo: Wo, oh0: 0, oh1: Ho)
            }
            b0 += g
        }
        return
    }
    let tileRows = conv2dTileRows(Cin: Cin, kernel: kernel, Ho: Ho, Wo: Wo)
    for b in 0..<B {
        let dinpB = dinp + b * Cin * H * W, doutB = dout + b * Cout * L
        if pointwise {
            // dinp_b (Cin, HW) += Wᵀ (Cin, Cout) · dout_b (Cout, HW)
            BLAS.gemm(transA: true, m: Cin, n: L, k: Cout, a: weight, lda: Cin, b: doutB, ldb: L,
                      beta: 1, c: dinpB, ldc: L)
            continue
        }
        var oh0 = 0
        while oh0 < Ho {
            let oh1 = min(Ho, oh0 + tileRows), n = (oh1 - oh0) * Wo
            if conv2dTransposedBackward(n) {
                // dcolᵀ (n, Cin·K·K) = dout_b[:, tile]ᵀ (n, Cout) · W (Cout, Cin·K·K)
                BLAS.gemm(transA: true, m: n, n: rowsK, k: Cout, a: doutB + oh0 * Wo, lda: L, b: weight, ldb: rowsK,
                          beta: 0, c: workspace, ldc: rowsK)
                col2imTransposedRowsAccumulate(dinpB, workspace, Cin: Cin, H: H, W: W, kernel: kernel, stride: stride,
                                               padTop: padding.top, padLeft: padding.left, Wo: Wo, oh0: oh0, oh1: oh1)
            } else {
                // dcol (Cin·K·K, n) = Wᵀ (Cin·K·K, Cout) · dout_b[:, tile] (Cout, n)
                BLAS.gemm(transA: true, m: rowsK, n: n, k: Cout, a: weight, lda: rowsK, b: doutB + oh0 * Wo, ldb: L,
                          beta: 0, c: workspace, ldc: n)
                col2imRowsAccumulate(dinpB, workspace, Cin: Cin, H: H, W: W, kernel: kernel, stride: stride,
                                     padTop: padding.top, padLeft: padding.left, Wo: Wo, oh0: oh0, oh1: oh1)
            }
            oh0 = oh1
        }
    }
}

// MARK: - fp32 weights

/// `conv2dForward` with an fp32 weight (Cout, Cin, K, K).
public func conv2dForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                          bias: UnsafePointer<Float>?, B: Int, Cin: Int, H: Int, W: Int, Cout: Int,
                          kernel: Int, stride: Int, padding: Conv2DPadding, workspace: UnsafeMutablePointer<Float>) {
    conv2dForward(out: out, inp: inp, weight: .f32(weight), bias: bias, B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                  kernel: kernel, stride: stride, padding: padding, workspace: workspace)
}

/// `conv2dBackwardInput` with an fp32 weight (Cout, Cin, K, K).
public func conv2dBackwardInput(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                B: Int, Cin: Int, H: Int, W: Int, Cout: Int, kernel: Int, stride: Int, padding: Conv2DPadding,
                                workspace: UnsafeMutablePointer<Float>) {
    conv2dBackwardInput(dinp: dinp, dout: dout, weight: .f32(weight), B: B, Cin: Cin, H: H, W: W, Cout: Cout,
                        kernel: kernel, stride: stride, padding: padding, workspace: workspace)
}

// MARK: - Weight gradients (full-parameter training)

/// dweight += Σ_b dout_b · im2col(inp_b)ᵀ and dbias += Σ_{b, pixels} dout: the parameter gradients of
/// `conv2dForward`. Accumulates; the caller zeroes them. fp32 weights only (`hgdpo train --train unet`).
public func conv2dBackwardWeight(dweight: UnsafeMutablePointer<Float>,  // (Cout, Cin, K, K)
                                 dbias: UnsafeMutablePointer<Float>?,   // (Cout)
                                 dout: UnsafePointer<Float>,            // (B, Cout, Ho, Wo)
                                 inp: UnsafePointer<Float>,             // (B, Cin, H, W)
                                 B: Int, Cin: Int, H: Int, W: Int, Cout: Int,
                                 kernel: Int, stride: Int, padding: Conv2DPadding) {
    let (Ho, Wo) = padding.outputSize(H: H, W: W, kernel: kernel, stride: stride)
    let L = Ho * Wo, rowsK = Cin * kernel * kernel
    let pointwise = isPointwise(kernel: kernel, stride: stride, padding: padding)
    let col = UnsafeMutablePointer<Float>.allocate(capacity: pointwise ? 1 : rowsK * L)
    defer { col.deallocate() }
    for b in 0..<B {
        let inpB = inp + b * Cin * H * W, doutB = dout + b * Cout * L
        if !pointwise {
            im2colRows(col, inpB, Cin: Cin, H: H, W: W, kernel: kernel, stride: stride, padTop: padding.top,
                       padLeft: padding.left, Wo: Wo, oh0: 0, oh1: Ho)
        }
        // dW (Cout, Cin·K·K) += dout_b (Cout, L) · colᵀ (L, Cin·K·K)
        BLAS.sgemm(transB: true, m: Cout, n: rowsK, k: L, a: doutB, lda: L, b: pointwise ? inpB : UnsafePointer(col), ldb: L,
                   beta: 1, c: dweight, ldc: rowsK)
    }
    guard let dbias else { return }
    parallelFor(Cout, work: B * Cout * L) { o in
        var s = 0.0
        for b in 0..<B { s += sumDouble(dout + (b * Cout + o) * L, L) }
        dbias[o] += Float(s)
    }
}
