// Conv2d: NCHW 2-D convolution (torch.nn.Conv2d, groups = 1) as im2col over bands of output rows plus one
// GEMM per band, with a weight of any stored type. Bands (and, for large typed weights, panels of weight rows)
// are the units of work spread over the cores; each unit's scratch comes from a pooled ScratchArena.

/// Bound on the im2col scratch of one band, in floats: 2 Mi floats = 8 MiB (one band per core at a time).
let conv2dDefaultScratchFloats = GemmLimits.standard.bandFloats

/// NCHW convolution with symmetric zero padding.
/// x: [N, C, H, W]; weight: [O, C, kh, kw] (any `TensorType`); bias: [O] or nil
/// → [N, O, (H + 2·padding − kh) / stride + 1, (W + 2·padding − kw) / stride + 1].
/// Runs over bands of output rows: each band is unfolded (im2col) into a scratch buffer of at most ~8 MB and
/// multiplied by the weight; a 1×1, stride-1, unpadded conv is a plain GEMM over column chunks. A typed weight
/// is dequantized once per call when it fits 16 MB of F32, else in panels of rows (see `GemmLimits`).
public func conv2d(_ x: Tensor, weight: Weight, bias: Weight?, stride: Int = 1, padding: Int = 0) -> Tensor {
    KernelProfile.measure(
        "conv\(weight.shape.count == 4 ? "\(weight.shape[2])x\(weight.shape[3])" : "")s\(stride) \(weight.type.name)",
        flops: 2 * Double(weight.count) * Double(x.count / max(1, x.shape.count > 1 ? x.shape[1] : 1)) / Double(stride * stride)
    ) {
        conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding, limits: .standard)
    }
}

/// `conv2d` with the band scratch bound as a parameter (tests force many small bands with it).
/// A band is at least one output row, so the scratch can exceed `maxScratchFloats` when one row alone does.
func conv2d(_ x: Tensor, weight: Weight, bias: Weight?, stride: Int, padding: Int,
            maxScratchFloats: Int) -> Tensor {
    var limits = GemmLimits.standard
    limits.bandFloats = maxScratchFloats
    return conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding, limits: limits)
}

/// `conv2d` with every scratch bound as a parameter.
func conv2d(_ x: Tensor, weight: Weight, bias: Weight?, stride: Int, padding: Int, limits: GemmLimits) -> Tensor {
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
    let kdim = c * kh * kw
    // Every output element is written below (bias fill, or a beta = 0 GEMM), except with no taps at all.
    var y = kdim == 0 && bias == nil ? Tensor(zeros: [n, o, hOut, wOut]) : uninitializedTensor([n, o, hOut, wOut])
    if y.count == 0 { return y }
    let beta: Float = bias == nil ? 0 : 1

    y.data.withUnsafeMutableBufferPointer { yb in
        guard let yp = yb.baseAddress else { return }
        if let bias {
            bias.withFloats { bp in
                for b in 0..<n {
                    for oc in 0..<o {
                        (yp + (b * o + oc) * plane).initialize(repeating: bp[oc], count: plane)
                    }
                }
            }
        }
        if kdim == 0 { return }
        x.data.withUnsafeBufferPointer { xb in
            guard let xp = xb.baseAddress else { return }
            let problem = ConvProblem(n: n, c: c, h: h, w: w, o: o, kdim: kdim, hOut: hOut, wOut: wOut,
                                      geometry: Im2colGeometry(channels: c, height: h, width: w, kh: kh, kw: kw,
                                                               stride: stride, padding: padding, outWidth: wOut),
                                      pointwise: kh == 1 && kw == 1 && stride == 1 && padding == 0,
                                      beta: beta, limits: limits)
            problem.run(x: xp, weight: weight, y: yp)
        }
    }
    return y
}

/// One convolution call's shapes and the loop orders that run it.
private struct ConvProblem {
    let n: Int, c: Int, h: Int, w: Int, o: Int, kdim: Int, hOut: Int, wOut: Int
    let geometry: Im2colGeometry
    let pointwise: Bool
    let beta: Float
    let limits: GemmLimits

    var plane: Int { hOut * wOut }

    /// Output rows per band: the im2col band [kdim, rows · wOut] stays within `limits.bandFloats`, and large
    /// inputs are cut into enough bands to keep every core busy.
    var bandRows: Int {
        var rows = max(1, min(hOut, limits.bandFloats / max(1, kdim * wOut)))
        let bands = n * ((hOut + rows - 1) / rows)
        if bands < 2 * Parallel.cores && 2 * o * kdim * plane * n >= (1 << 24) {
            rows = max(1, min(rows, (n * hOut + 2 * Parallel.cores - 1) / (2 * Parallel.cores)))
        }
        return rows
    }

    func run(x: UnsafePointer<Float>, weight: Weight, y: UnsafeMutablePointer<Float>) {
        // Whole-weight loop order first: typed weights that fit the cap are dequantized once for all bands.
        let fitsWhole = weight.type == .f32 || weight.count <= limits.wholeWeightFloats
        if fitsWhole {
            withPreparedWeight(weight, limits: limits, minPanels: 1) { prepared in
                runBands(x: x, weight: prepared.whole!, y: y)
            }
            return
        }
        // Large typed weight: panels of weight rows are the units; the unfolded input is shared by all of them.
        withPreparedWeight(weight, limits: limits, minPanels: 2 * Parallel.cores) { prepared in
            runPanels(x: x, prepared: prepared, y: y)
        }
    }

    /// Units = (image, band of output rows) [or (image, column chunk) for a pointwise conv]; each unit
    /// unfolds its band into its own arena and multiplies the whole F32 weight [O, kdim] by it.
    private func runBands(x: UnsafePointer<Float>, weight wp: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        if pointwise {
            // out[b] [O, HW] = W [O, C] · x[b] [C, HW], over chunks of columns.
            var parts = 1
            if Parallel.cores > 1 && 2 * o * c * plane * n >= (1 << 22) {
                parts = max(1, min((4 * Parallel.cores + n - 1) / n, plane / 256))
            }
            let chunk = parts == 1 ? plane : min(plane, ((plane + parts - 1) / parts + 15) / 16 * 16)
            let chunks = (plane + chunk - 1) / chunk
            Parallel.forEachUnit(count: n * chunks) { u in
                let b = u / chunks, p0 = (u % chunks) * chunk, cols = min(chunk, plane - p0)
                sgemm(m: o, n: cols, k: c, a: wp, lda: c, b: x + b * c * h * w + p0, ldb: plane,
                      beta: beta, c: y + b * o * plane + p0, ldc: plane)
            }
            return
        }
        let rowsPerBand = bandRows
        let bandsPerImage = (hOut + rowsPerBand - 1) / rowsPerBand
        Parallel.forEachUnit(count: n * bandsPerImage) { u in
            let b = u / bandsPerImage, r0 = (u % bandsPerImage) * rowsPerBand
            let rows = min(rowsPerBand, hOut - r0)
            let cols = rows * wOut
            ScratchArena.withArena { arena in
                let scratch = arena.floats(kdim * cols)
                geometry.unfold(image: x + b * c * h * w, firstRow: r0, rows: rows, into: scratch, parallel: false)
                // out[b, :, r0..<r0+rows, :] (row stride = plane) = W [O, kdim] · band [kdim, cols].
                sgemm(m: o, n: cols, k: kdim, a: wp, lda: kdim, b: scratch, ldb: cols, beta: beta,
                      c: y + b * o * plane + r0 * wOut, ldc: plane)
            }
        }
    }

    /// Units = panels of weight rows; the input is unfolded once per image (or per band when one image's
    /// unfolding exceeds the band bound, repeating the panel dequantization per band).
    private func runPanels(x: UnsafePointer<Float>, prepared: PreparedWeight, y: UnsafeMutablePointer<Float>) {
        let weight = prepared.weight
        let rowsPerBand = pointwise ? hOut : max(1, min(hOut, limits.bandFloats / max(1, kdim * wOut)))
        ScratchArena.withArena { shared in
            for b in 0..<n {
                let image = x + b * c * h * w
                var r0 = 0
                while r0 < hOut {
                    let rows = min(rowsPerBand, hOut - r0)
                    let cols = rows * wOut
                    let band: UnsafePointer<Float>
                    if pointwise {
                        band = image
                    } else {
                        let scratch = shared.floats(kdim * cols)
                        geometry.unfold(image: image, firstRow: r0, rows: rows, into: scratch, parallel: true)
                        band = UnsafePointer(scratch)
                    }
                    Parallel.forEachUnit(count: prepared.panels) { p in
                        let oc = prepared.panelRange(p)
                        ScratchArena.withArena { arena in
                            let panel = arena.floats(oc.count * kdim)
                            weight.dequantizeRows(oc, into: panel)
                            sgemm(m: oc.count, n: cols, k: kdim, a: panel, lda: kdim, b: band,
                                  ldb: pointwise ? plane : cols, beta: beta,
                                  c: y + (b * o + oc.lowerBound) * plane + r0 * wOut, ldc: plane)
                        }
                    }
                    r0 += rows
                }
            }
        }
    }
}

/// The shape facts im2col needs; `unfold` writes one band of output rows.
struct Im2colGeometry {
    let channels: Int, height: Int, width: Int
    let kh: Int, kw: Int, stride: Int, padding: Int, outWidth: Int

    /// Writes the band matrix [C·kh·kw, rows·outWidth] for output rows `firstRow..<firstRow+rows` of one image
    /// ([C, H, W] at `image`) into `dst`; taps that fall in the padding are zero.
    /// `parallel`: split channels across the cores (false inside a unit that already runs on one of them).
    func unfold(image: UnsafePointer<Float>, firstRow: Int, rows: Int, into dst: UnsafeMutablePointer<Float>,
                parallel: Bool) {
        let cols = rows * outWidth
        let perChannel = kh * kw * cols
        // Each channel fills its own kh·kw rows of the band, so channels split across threads.
        let minChannels = parallel ? max(1, (1 << 16) / max(1, perChannel)) : channels
        Parallel.forEachChunk(count: channels, minItemsPerChunk: minChannels) { range in
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
