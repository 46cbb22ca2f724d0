// Conv2d: NCHW 2-D convolution (torch.nn.Conv2d, groups = 1) as im2col over bands of output rows
// plus one BLAS GEMM per band, so the im2col scratch stays bounded however large the image is.

/// Bound on the im2col scratch of one band, in floats: 2 Mi floats = 8 MiB.
let conv2dDefaultScratchFloats = 2 * 1024 * 1024

/// NCHW convolution with symmetric zero padding.
/// x: [N, C, H, W]; weight: [O, C, kh, kw]; bias: [O] or nil
/// → [N, O, (H + 2·padding − kh) / stride + 1, (W + 2·padding − kw) / stride + 1].
/// Runs over bands of output rows: each band is unfolded (im2col) into a scratch buffer of at most ~8 MB
/// and multiplied by the weight with cblas_sgemm; a 1×1, stride-1, unpadded conv is a plain GEMM.
public func conv2d(_ x: Tensor, weight: Weight, bias: Weight?, stride: Int = 1, padding: Int = 0) -> Tensor {
    conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding,
           maxScratchFloats: conv2dDefaultScratchFloats)
}

/// `conv2d` with the band scratch bound as a parameter (tests force many small bands with it).
/// A band is at least one output row, so the scratch can exceed `maxScratchFloats` when one row alone does.
func conv2d(_ x: Tensor, weight: Weight, bias: Weight?, stride: Int, padding: Int,
            maxScratchFloats: Int) -> Tensor {
    precondition(x.shape.count == 4, "conv2d: input must be [N, C, H, W], got \(x.shape)")
    precondition(weight.shape.count == 4, "conv2d: weight must be [O, C, kh, kw], got \(weight.shape)")
    precondition(stride >= 1 && padding >= 0, "conv2d: stride \(stride), padding \(padding)")
    let n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    let o = weight.shape[0], kh = weight.shape[2], kw = weight.shape[3]
    precondition(weight.shape[1] == c, "conv2d: weight \(weight.shape) for \(c) input channels")
    precondition(kh >= 1 && kw >= 1 && h + 2 * padding >= kh && w + 2 * padding >= kw,
                 "conv2d: kernel \(kh)×\(kw) larger than padded input \(h)×\(w) (padding \(padding))")
    if let bias { precondition(bias.count == o, "conv2d: bias \(bias.shape) for \(o) output channels") }

    let hOut = (h + 2 * padding - kh) / stride + 1
    let wOut = (w + 2 * padding - kw) / stride + 1
    let plane = hOut * wOut
    var y = Tensor(zeros: [n, o, hOut, wOut])
    if y.count == 0 { return y }
    let kdim = c * kh * kw
    let beta: Float = bias == nil ? 0 : 1

    y.data.withUnsafeMutableBufferPointer { yb in
        guard let yp = yb.baseAddress else { return }
        if let bias {
            let bp = bias.base
            for b in 0..<n {
                for oc in 0..<o {
                    (yp + (b * o + oc) * plane).initialize(repeating: bp[oc], count: plane)
                }
            }
        }
        if kdim == 0 { return }
        x.data.withUnsafeBufferPointer { xb in
            guard let xp = xb.baseAddress else { return }
            if kh == 1 && kw == 1 && stride == 1 && padding == 0 {
                // Pointwise: out[b] [O, HW] = W [O, C] · x[b] [C, HW].
                for b in 0..<n {
                    sgemm(m: o, n: plane, k: c, a: weight.base, lda: c,
                          b: xp + b * c * h * w, ldb: plane, beta: beta, c: yp + b * o * plane, ldc: plane)
                }
                return
            }
            let bandRows = max(1, min(hOut, maxScratchFloats / (kdim * wOut)))
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: kdim * bandRows * wOut)
            defer { scratch.deallocate() }
            let geometry = Im2colGeometry(channels: c, height: h, width: w, kh: kh, kw: kw,
                                          stride: stride, padding: padding, outWidth: wOut)
            for b in 0..<n {
                var r0 = 0
                while r0 < hOut {
                    let rows = min(bandRows, hOut - r0)
                    let cols = rows * wOut
                    geometry.unfold(image: xp + b * c * h * w, firstRow: r0, rows: rows, into: scratch)
                    // out[b, :, r0..<r0+rows, :] (row stride = plane) = W [O, kdim] · band [kdim, cols].
                    sgemm(m: o, n: cols, k: kdim, a: weight.base, lda: kdim,
                          b: scratch, ldb: cols, beta: beta, c: yp + b * o * plane + r0 * wOut, ldc: plane)
                    r0 += rows
                }
            }
        }
    }
    return y
}

/// The shape facts im2col needs; `unfold` writes one band of output rows.
struct Im2colGeometry {
    let channels: Int, height: Int, width: Int
    let kh: Int, kw: Int, stride: Int, padding: Int, outWidth: Int

    /// Writes the band matrix [C·kh·kw, rows·outWidth] for output rows `firstRow..<firstRow+rows` of one image
    /// ([C, H, W] at `image`) into `dst`; taps that fall in the padding are zero.
    func unfold(image: UnsafePointer<Float>, firstRow: Int, rows: Int, into dst: UnsafeMutablePointer<Float>) {
        let cols = rows * outWidth
        let perChannel = kh * kw * cols
        // Each channel fills its own kh·kw rows of the band, so channels split across threads.
        Parallel.forEachChunk(count: channels, minItemsPerChunk: max(1, (1 << 16) / max(1, perChannel))) { range in
            for ci in range {
                let src = image + ci * height * width
                for ki in 0..<kh {
                    for kj in 0..<kw {
                        unfoldTap(src: src, ki: ki, kj: kj, firstRow: firstRow, rows: rows,
                                  dst: dst + ((ci * kh + ki) * kw + kj) * cols)
                    }
                }
            }
        }
    }

    /// One im2col row: tap (ki, kj) of one channel across the band's output pixels.
    @inline(__always)
    private func unfoldTap(src: UnsafePointer<Float>, ki: Int, kj: Int, firstRow: Int, rows: Int,
                           dst: UnsafeMutablePointer<Float>) {
        // Output columns whose input column ix = ow·stride − padding + kj lies inside [0, width).
        let lowNum = padding - kj
        let owLo = lowNum <= 0 ? 0 : min(outWidth, (lowNum + stride - 1) / stride)
        let highNum = width - 1 + padding - kj
        let owHi = highNum < 0 ? 0 : min(outWidth, highNum / stride + 1)
        for r in 0..<rows {
            let out = dst + r * outWidth
            let iy = (firstRow + r) * stride - padding + ki
            if iy < 0 || iy >= height || owLo >= owHi {
                out.initialize(repeating: 0, count: outWidth)
                continue
            }
            let line = src + iy * width
            if owLo > 0 { out.initialize(repeating: 0, count: owLo) }
            if owHi < outWidth { (out + owHi).initialize(repeating: 0, count: outWidth - owHi) }
            if stride == 1 {
                (out + owLo).initialize(from: line + (owLo - padding + kj), count: owHi - owLo)
            } else {
                var ix = owLo * stride - padding + kj
                for ow in owLo..<owHi {
                    out[ow] = line[ix]
                    ix += stride
                }
            }
        }
    }
}
