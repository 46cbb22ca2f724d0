// Conv2d: NCHW 2-D convolution (torch.nn.Conv2d, groups = 1) as im2col over bands of output rows plus one
// GEMM per band, with a weight of any stored type. Bands (and, for large typed weights, panels of weight rows)
// are the units of work spread over the cores; each unit's scratch comes from a pooled ScratchArena.
// 3×3 stride-1 padding-1 convolutions with enough channels (the VAE's and most of the UNet's) run as Winograd
// F(2×2, 3×3) or, for wide ones on large images, F(4×4, 3×3): 16 or 36 GEMMs per band of tile rows with 2.25× or
// 4× fewer multiply-adds than im2col.
import CKernels
import MMapWeights

/// Below this many pixels per image (16×16) a Winograd conv has too few tiles for good GEMM shapes: SD 1.5's
/// 1280-channel convs at 8×8 ran at 69–76 GFLOP/s as Winograd and 132–141 as im2col; at 16×16, 164–189 vs 120–141.
let winogradMinimumPixels = 256

/// F(4×4, 3×3) replaces F(2×2, 3×3) from this many pixels per image (64×64) and input channels: measured with
/// `sdd bench --stage conv`, 14–26% faster on the VAE's 512- and 256-channel convs from 128×128 and the UNet's
/// 640 → 320 at 64×64; equal at 128 channels or 32×32 (its transforms cost as much as the products it saves),
/// 30% slower at 16×16.
let winograd4MinimumPixels = 4096
let winograd4MinimumChannels = 256

/// The Winograd output tile (2 or 4) of a 3×3, stride-1, padding-1 convolution, or nil for im2col: Winograd
/// when both channel counts are at least 32, the image has `winogradMinimumPixels` and a chunk of 32 output
/// channels' transformed weight fits the limits; F(4×4) from `winograd4MinimumPixels` and
/// `winograd4MinimumChannels` on.
func winogradTile(channels c: Int, outChannels o: Int, pixels: Int, limits: GemmLimits) -> Int? {
    switch limits.convAlgorithm {
    case .im2col: return nil
    case .winograd: return 2
    case .winograd4: return 4
    case .automatic:
        guard c >= 32 && o >= 32 && pixels >= winogradMinimumPixels else { return nil }
        // F(4×4)'s input transform costs as much as a fifth of its products: repeated for chunks of fewer than
        // 128 output channels, it loses to F(2×2) (measured with 4 MiB chunks: a budgeted VAE decode 17 s → 20 s).
        if pixels >= winograd4MinimumPixels, c >= winograd4MinimumChannels,
           36 * min(o, 128) * c <= limits.wholeWeightFloats { return 4 }
        return 16 * 32 * c <= limits.wholeWeightFloats ? 2 : nil
    }
}

/// Bound on the im2col scratch of one band, in floats: 2 Mi floats = 8 MiB (one band per core at a time).
let conv2dDefaultScratchFloats = GemmLimits.standard.bandFloats

/// NCHW convolution with symmetric zero padding.
/// x: [N, C, H, W]; weight: [O, C, kh, kw] (any `TensorType`); bias: [O] or nil
/// → [N, O, (H + 2·padding − kh) / stride + 1, (W + 2·padding − kw) / stride + 1].
/// Runs over bands of output rows: each band is unfolded (im2col) into a scratch buffer of at most ~8 MB and
/// multiplied by the weight; a 1×1, stride-1, unpadded conv is a plain GEMM over column chunks. A typed weight
/// is dequantized once per call when it fits 16 MB of F32, else in panels of rows (see `GemmLimits`; the bounds
/// are `GemmLimits.current`, the standard ones unless the caller bound others).
/// A 3×3, stride-1, padding-1 conv with at least 32 input and output channels and 16×16 pixels runs as Winograd
/// F(2×2, 3×3) or F(4×4, 3×3) instead (`winogradTile`, `WinogradProblem`), over chunks of output channels whose
/// transformed weight (16·O·C or 36·O·C floats) fits the same 16 MB; results differ from im2col's by rounding only.
/// One with at most `directConvMaximumOutputChannels` outputs (an RGB or latent conv_out) runs as a direct loop.
/// Profile GFLOP/s count the direct convolution's multiply-adds either way.
public func conv2d(_ x: Tensor, weight: Weight, bias: Weight?, stride: Int = 1, padding: Int = 0) -> Tensor {
    KernelProfile.measure(
        "conv\(weight.shape.count == 4 ? "\(weight.shape[2])x\(weight.shape[3])" : "")s\(stride) \(weight.type.name)"
            + weight.products.profileSuffix
            + (KernelProfile.detailed ? " \(x.shape.dropFirst(1).map(String.init).joined(separator: "x"))→\(weight.shape[0])" : ""),
        flops: 2 * Double(weight.count) * Double(x.count / max(1, x.shape.count > 1 ? x.shape[1] : 1)) / Double(stride * stride)
    ) {
        conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding, limits: GemmLimits.current)
    }
}

/// The kernel scratch of one `conv2d` call, as the call takes it from the `ScratchArena` pool (each request
/// rounded up to 64 KiB as the pool rounds it) or from the heap: `caller` bytes held by the calling thread for the
/// whole call (a dequantized weight, Winograd's transformed weight, a shared im2col band), `perUnit` bytes
/// held by each unit of work, of which at most `concurrentUnits` run at once (one per core), and `heap` bytes
/// from the heap rather than an arena (a direct conv's dequantized weight).
public struct ConvScratch: Sendable, Equatable {
    public var caller: Int
    public var perUnit: Int
    public var concurrentUnits: Int
    public var heap: Int

    public init(caller: Int, perUnit: Int, concurrentUnits: Int, heap: Int = 0) {
        self.caller = caller
        self.perUnit = perUnit
        self.concurrentUnits = concurrentUnits
        self.heap = heap
    }

    /// The most bytes the call holds at once.
    public var peak: Int { caller + perUnit * concurrentUnits + heap }
}

/// The threads the kernels spread their units of work over (one per online core).
public var kernelThreadCount: Int { Parallel.cores }

/// What `conv2d` on x [n, c, h, w] with a weight [o, c, kh, kw] of `weightType` takes as scratch (see
/// `ConvScratch`), from the same problem descriptions (`winogradTile`, `WinogradProblem`, `ConvProblem`) the
/// call runs: the memory planner's figure for a convolution comes from the code that allocates it.
public func conv2dScratch(n: Int, c: Int, h: Int, w: Int, o: Int, kh: Int, kw: Int, stride: Int = 1,
                          padding: Int = 0, weightType: TensorType) -> ConvScratch {
    conv2dScratch(n: n, c: c, h: h, w: w, o: o, kh: kh, kw: kw, stride: stride, padding: padding,
                  weightType: weightType, limits: .standard)
}

/// `conv2dScratch` under explicit limits.
func conv2dScratch(n: Int, c: Int, h: Int, w: Int, o: Int, kh: Int, kw: Int, stride: Int, padding: Int,
                   weightType: TensorType, limits: GemmLimits) -> ConvScratch {
    // ScratchArena.rounded: every arena request is rounded up to a multiple of 16 Ki floats (64 KiB).
    func arena(_ floats: Int) -> Int { ((max(floats, 16) + 16383) & ~16383) * MemoryLayout<Float>.stride }
    let none = ConvScratch(caller: 0, perUnit: 0, concurrentUnits: 0)
    let hOut = (h + 2 * padding - kh) / stride + 1, wOut = (w + 2 * padding - kw) / stride + 1
    let kdim = c * kh * kw, weightCount = o * kdim
    guard n > 0, o > 0, hOut > 0, wOut > 0, kdim > 0 else { return none }
    let typed = weightType != .f32
    if kh == 3 && kw == 3 && stride == 1 && padding == 1 && o <= directConvMaximumOutputChannels {
        // `Weight.withFloats`: a typed weight is dequantized into an array for the call.
        return ConvScratch(caller: 0, perUnit: 0, concurrentUnits: 0,
                           heap: typed ? weightCount * MemoryLayout<Float>.stride : 0)
    }
    if kh == 3 && kw == 3 && stride == 1 && padding == 1,
       let tile = winogradTile(channels: c, outChannels: o, pixels: h * w, limits: limits) {
        let p = WinogradProblem(n: n, c: c, h: h, w: w, o: o, tile: tile, limits: limits)
        let chunk = p.chunkChannels, rows = p.bandTileRows
        let units = n * ((p.tilesHigh + rows - 1) / rows)
        let inputScratch = (tile * p.tilesWide + 2) + (tile * rows + 2) * (tile + 2) * p.tilesWide
        let outputScratch = tile * tile * p.tilesWide
        let band = arena(p.planes * (c + chunk) * rows * p.tilesWide + max(inputScratch, outputScratch))
        // transformWeight's dequantized panels (typed weights) run before the bands, while U is held.
        let rowLength = 9 * c
        let step = max(1, min(chunk, (1 << 16) / rowLength))
        let panel = typed ? arena(step * rowLength) : 0
        return ConvScratch(caller: arena(p.planes * chunk * c), perUnit: max(band, panel),
                           concurrentUnits: min(max(units, 1), Parallel.cores))
    }
    let pointwise = kh == 1 && kw == 1 && stride == 1 && padding == 0
    let problem = ConvProblem(n: n, c: c, h: h, w: w, o: o, kdim: kdim, hOut: hOut, wOut: wOut,
                              geometry: Im2colGeometry(channels: c, height: h, width: w, kh: kh, kw: kw,
                                                       stride: stride, padding: padding, outWidth: wOut),
                              pointwise: pointwise, beta: 0, limits: limits)
    if !typed || weightCount <= limits.wholeWeightFloats {
        // runBands: the whole dequantized weight (typed), then one im2col band per unit (none for a 1×1).
        let rows = problem.bandRows
        let units = n * ((hOut + rows - 1) / rows)
        return ConvScratch(caller: typed ? arena(weightCount) : 0, perUnit: pointwise ? 0 : arena(kdim * rows * wOut),
                           concurrentUnits: pointwise ? 0 : min(units, Parallel.cores))
    }
    // runPanels: one shared band (not for a 1×1), then one dequantized panel of weight rows per unit.
    let rows = pointwise ? hOut : max(1, min(hOut, limits.bandFloats / max(1, kdim * wOut)))
    var panelRows = max(1, limits.panelFloats / kdim)
    panelRows = min(panelRows, max(1, (o + 2 * Parallel.cores - 1) / (2 * Parallel.cores)))
    if panelRows > 16 { panelRows = panelRows / 16 * 16 }
    let panels = (o + panelRows - 1) / panelRows
    return ConvScratch(caller: pointwise ? 0 : arena(kdim * rows * wOut), perUnit: arena(panelRows * kdim),
                       concurrentUnits: min(panels, Parallel.cores))
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
    var y = kdim == 0 && bias == nil ? Tensor(zeros: [n, o, hOut, wOut]) : Tensor(uninitialized: [n, o, hOut, wOut])
    if y.count == 0 { return y }
    let beta: Float = bias == nil ? 0 : 1

    if kh == 3 && kw == 3 && stride == 1 && padding == 1 && o <= directConvMaximumOutputChannels {
        y.withUnsafeMutableBufferPointer { yb in
            x.withUnsafeBufferPointer { xb in
                guard let yp = yb.baseAddress, let xp = xb.baseAddress else { return }
                weight.withFloats { wp in
                    if let bias {
                        bias.withFloats { bp in directConv3x3(x: xp, n: n, c: c, h: h, w: w, weight: wp, o: o, bias: bp, y: yp) }
                    } else {
                        directConv3x3(x: xp, n: n, c: c, h: h, w: w, weight: wp, o: o, bias: nil, y: yp)
                    }
                }
            }
        }
        return y
    }

    if kh == 3 && kw == 3 && stride == 1 && padding == 1,
       let tile = winogradTile(channels: c, outChannels: o, pixels: h * w, limits: limits) {
        let problem = WinogradProblem(n: n, c: c, h: h, w: w, o: o, tile: tile, limits: limits)
        y.withUnsafeMutableBufferPointer { yb in
            x.withUnsafeBufferPointer { xb in
                guard let yp = yb.baseAddress, let xp = xb.baseAddress else { return }
                problem.run(x: xp, weight: weight, bias: bias, y: yp)
            }
        }
        return y
    }

    y.withUnsafeMutableBufferPointer { yb in
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
        x.withUnsafeBufferPointer { xb in
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

/// Output channels up to which a 3×3, stride-1, padding-1 conv runs as a direct loop (`directConv3x3`): with so
/// few GEMM rows the im2col unfold (C·9 floats written and read per output pixel) costs more than the products —
/// TAESD's 64 → 3 RGB conv at 512×512 ran at 1 GFLOP/s as im2col + GEMM.
let directConvMaximumOutputChannels = 4

/// y [N, O, H, W] = 3×3, stride-1, padding-1 convolution of x [N, C, H, W] with an F32 weight [O, C, 3, 3] (+ bias),
/// summed in F32 directly: each unit of work is a band of output rows of one image, whose O output rows stay in
/// cache while every input channel's three source rows pass once. Weights of any products precision run in F32.
func directConv3x3(x: UnsafePointer<Float>, n: Int, c: Int, h: Int, w: Int, weight: UnsafePointer<Float>, o: Int,
                   bias: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>) {
    let rowsPerUnit = max(1, min(h, 8))
    let unitsPerImage = (h + rowsPerUnit - 1) / rowsPerUnit
    let plane = h * w
    Parallel.forEachUnit(count: n * unitsPerImage) { u in
        let b = u / unitsPerImage, r0 = (u % unitsPerImage) * rowsPerUnit
        for r in r0..<min(h, r0 + rowsPerUnit) {
            for oc in 0..<o { (y + (b * o + oc) * plane + r * w).initialize(repeating: bias?[oc] ?? 0, count: w) }
            for ch in 0..<c {
                for ki in 0..<3 {
                    let sr = r + ki - 1
                    if sr < 0 || sr >= h { continue }
                    let src = x + (b * c + ch) * plane + sr * w
                    for oc in 0..<o {
                        let out = y + (b * o + oc) * plane + r * w
                        let k = weight + ((oc * c + ch) * 3 + ki) * 3
                        let w0 = k[0], w1 = k[1], w2 = k[2]
                        if w == 1 {
                            out[0] += w1 * src[0]
                            continue
                        }
                        out[0] += w1 * src[0] + w2 * src[1]
                        var j = 1
                        while j < w - 1 {
                            out[j] += w0 * src[j - 1] + w1 * src[j] + w2 * src[j + 1]
                            j += 1
                        }
                        out[w - 1] += w0 * src[w - 2] + w1 * src[w - 1]
                    }
                }
            }
        }
    }
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
                runBands(x: x, weight: prepared.whole!, precision: weight.products, y: y)
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
    private func runBands(x: UnsafePointer<Float>, weight wp: UnsafePointer<Float>, precision: ProductPrecision,
                          y: UnsafeMutablePointer<Float>) {
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
                      beta: beta, c: y + b * o * plane + p0, ldc: plane, precision: precision)
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
                      c: y + b * o * plane + r0 * wOut, ldc: plane, precision: precision)
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
                            if limits.releasesMappedWeights { weight.releaseMappedRows(oc) }
                            sgemm(m: oc.count, n: cols, k: kdim, a: panel, lda: kdim, b: band,
                                  ldb: pointwise ? plane : cols, beta: beta,
                                  c: y + (b * o + oc.lowerBound) * plane + r0 * wOut, ldc: plane,
                                  precision: weight.products)
                        }
                    }
                    r0 += rows
                }
            }
        }
    }
}

/// A 3×3, stride-1, padding-1 convolution as Winograd F(m×m, 3×3) with m = 2 or 4, over chunks of output
/// channels whose transformed weight U [(m+2)², O_chunk, C] fits `limits.wholeWeightFloats` (all of O when it
/// fits): each chunk's weight is transformed once per call; each unit of work (image, band of tile rows)
/// transforms its input tiles into V [(m+2)², C, T], multiplies M_ξ = U_ξ · V_ξ for every ξ (sgemm), and
/// transforms M [(m+2)², O_chunk, T] back into its output rows, bias included. Each m×m output tile costs
/// (m+2)² products per (o, c) instead of 9m²: 2.25× fewer for F(2×2), 4× for F(4×4); the input transform is
/// repeated per chunk, 1/O_chunk of the products' cost. Rounding differs from im2col's by a few ulps of the
/// inputs' scale for F(2×2) (transforms of up to 16 terms) and about ten times that for F(4×4), whose
/// transforms scale by up to 8 and 1/24 (measured 8e-6 of the output's scale against 8e-7, 512 channels).
struct WinogradProblem {
    let n: Int, c: Int, h: Int, w: Int, o: Int
    /// Output tile side m: 2 or 4.
    let tile: Int
    let limits: GemmLimits

    /// Transform planes: (m + 2)².
    var planes: Int { (tile + 2) * (tile + 2) }
    var tilesHigh: Int { (h + tile - 1) / tile }
    var tilesWide: Int { (w + tile - 1) / tile }
    /// Output channels per chunk: the whole of O when its transformed weight fits, else as many as fit.
    var chunkChannels: Int {
        max(1, min(o, limits.wholeWeightFloats / max(1, planes * c)))
    }

    /// Tile rows per band: V and M of one band (planes · (C + O_chunk) · T floats) stay within
    /// `limits.bandFloats`, and large inputs are cut into at least two bands per core.
    var bandTileRows: Int {
        var rows = max(1, min(tilesHigh, limits.bandFloats / max(1, planes * (c + chunkChannels) * tilesWide)))
        let bands = n * ((tilesHigh + rows - 1) / rows)
        if bands < 2 * Parallel.cores && 2 * o * c * 9 * h * w * n >= (1 << 24) {
            rows = max(1, min(rows, (n * tilesHigh + 2 * Parallel.cores - 1) / (2 * Parallel.cores)))
        }
        return rows
    }

    /// U's rows transformed at a time when U is packed (`packsWeight`): at most 8, and no more than the
    /// dequantized panel `transformWeight` takes for a typed weight (so the declared per-unit scratch holds).
    var packGroupRows: Int { max(1, min(8, (1 << 16) / (9 * c))) }

    /// Pair words of one plane U_ξ [oc, C] packed for `ck_gemm_amx_packed`.
    func packedPlaneWords(outChannels oc: Int) -> Int { Int(ck_gemm_amx_packed_a_words(Int64(oc), Int64(c))) }

    /// Whether the bands multiply by U packed once per chunk of output channels for the AMX kernel
    /// (`ck_gemm_amx_packed`) rather than by the F32 U, which `ck_gemm_bf16` rounds and packs again for every
    /// band and every 256 tiles (measured: packing A was ~29% of ck_gemm_amx's time in a guided SD 1.5 run,
    /// most of it here). Only with BF16 products on the AMX kernel, when a band's products pay in BF16, and
    /// when the packed U (about half the F32 U) and each worker's transformed rows fit in the arena the F32 U
    /// would take: the scratch `conv2dScratch` declares holds either way. Decided per chunk of `oc` output
    /// channels; a packed chunk runs every band on AMX. The words are those ck_gemm_bf16 packs, so where every
    /// band's product pays in BF16 the result is the same to the bit.
    func packsWeight(products: ProductPrecision, outChannels oc: Int) -> Bool {
        guard products == .bf16, ProductPrecision.bf16Kernel == .amx else { return false }
        guard bf16Pays(m: oc, n: bandTileRows * tilesWide, k: c, kernel: .amx) else { return false }
        return packWorkers(outChannels: oc) >= 1
    }

    /// The workers `transformAndPackWeight` runs for a chunk of `oc` output channels: one per core and per
    /// group of rows, as many as have room for their rows beside the packed U in the F32 U's arena.
    func packWorkers(outChannels oc: Int) -> Int {
        let room = planes * chunkChannels * c - planes * packedPlaneWords(outChannels: oc)
        let groups = (oc + packGroupRows - 1) / packGroupRows
        return min(Parallel.cores, groups, max(0, room) / (planes * packGroupRows * c))
    }

    /// `packing` false never packs U (tests compare both ways).
    func run(x: UnsafePointer<Float>, weight: Weight, bias: Weight?, y: UnsafeMutablePointer<Float>,
             packing: Bool = true) {
        let (c, o, h, w, m) = (self.c, self.o, self.h, self.w, self.tile)
        let tilesWide = self.tilesWide, tilesHigh = self.tilesHigh, planes = self.planes
        let chunk = chunkChannels
        let inputTransform = m == 2 ? ck_winograd_f23_input : ck_winograd_f43_input
        let outputTransform = m == 2 ? ck_winograd_f23_output : ck_winograd_f43_output
        ScratchArena.withArena { weightArena in
            let u = weightArena.floats(planes * chunk * c)
            // Packed: U_ξ's words at packedU + ξ · planeWords, then each worker's transformed rows.
            let packedU = UnsafeMutablePointer<UInt32>(OpaquePointer(u))
            let bandRows = bandTileRows
            let bandsPerImage = (tilesHigh + bandRows - 1) / bandRows
            withOptionalFloats(bias) { bias in
                for o0 in stride(from: 0, to: o, by: chunk) {
                    let oc = min(chunk, o - o0)
                    let planeWords = packedPlaneWords(outChannels: oc)
                    let packed = packing && packsWeight(products: weight.products, outChannels: oc)
                    if packed {
                        transformAndPackWeight(weight, rows: o0..<(o0 + oc), into: packedU, planeWords: planeWords,
                                               rowScratch: u + planes * planeWords)
                    } else {
                        transformWeight(weight, rows: o0..<(o0 + oc), into: u)
                    }
                    Parallel.forEachUnit(count: n * bandsPerImage) { unit in
                        let b = unit / bandsPerImage, ty0 = (unit % bandsPerImage) * bandRows
                        let rows = min(bandRows, tilesHigh - ty0)
                        let tiles = rows * tilesWide
                        ScratchArena.withArena { arena in
                            let inputScratch = (m * tilesWide + 2) + (m * rows + 2) * (m + 2) * tilesWide
                            let outputScratch = m * m * tilesWide
                            let v = arena.floats(planes * (c + oc) * tiles + max(inputScratch, outputScratch))
                            let mp = v + planes * c * tiles
                            let scratch = mp + planes * oc * tiles
                            inputTransform(x + b * c * h * w, Int64(c), Int64(h), Int64(w), Int64(ty0), Int64(rows),
                                           Int64(tilesWide), v, scratch)
                            for xi in 0..<planes {
                                if packed {
                                    let status = ck_gemm_amx_packed(0, Int64(oc), Int64(tiles), Int64(c),
                                                                    packedU + xi * planeWords, v + xi * c * tiles,
                                                                    Int64(tiles), 0, mp + xi * oc * tiles, Int64(tiles))
                                    precondition(status == 0, "conv2d: the AMX product could not allocate its workspace")
                                } else {
                                    sgemm(m: oc, n: tiles, k: c, a: u + xi * oc * c, lda: c, b: v + xi * c * tiles,
                                          ldb: tiles, beta: 0, c: mp + xi * oc * tiles, ldc: tiles,
                                          precision: weight.products)
                                }
                            }
                            outputTransform(mp, Int64(oc), Int64(rows), Int64(tilesWide), bias.map { $0 + o0 },
                                            y + (b * o + o0) * h * w, Int64(h), Int64(w), Int64(ty0), scratch)
                        }
                    }
                }
            }
        }
    }

    /// U [planes, rows.count, C] = G g Gᵀ for every (o, c) with o in `rows`, over groups of those rows on the cores;
    /// a typed weight is dequantized a few rows at a time on the way.
    private func transformWeight(_ weight: Weight, rows: Range<Int>, into u: UnsafeMutablePointer<Float>) {
        let c = self.c
        let rowLength = 9 * c
        let planeRows = rows.count
        Parallel.forEachChunk(count: planeRows, minItemsPerChunk: max(1, (1 << 16) / rowLength)) { local in
            let first = rows.lowerBound + local.lowerBound
            let transform = tile == 2 ? ck_winograd_f23_weight : ck_winograd_f43_weight
            if weight.type == .f32 {
                transform(weight.base + first * rowLength, Int64(local.count), Int64(c), Int64(planeRows),
                          u + local.lowerBound * c)
                return
            }
            let step = max(1, min(local.count, (1 << 16) / rowLength))
            ScratchArena.withArena { arena in
                let panel = arena.floats(step * rowLength)
                var r0 = local.lowerBound
                while r0 < local.upperBound {
                    let count = min(step, local.upperBound - r0)
                    let range = (rows.lowerBound + r0)..<(rows.lowerBound + r0 + count)
                    weight.dequantizeRows(range, into: panel)
                    if limits.releasesMappedWeights { weight.releaseMappedRows(range) }
                    transform(panel, Int64(count), Int64(c), Int64(planeRows), u + r0 * c)
                    r0 += count
                }
            }
        }
    }
}

extension WinogradProblem {
    /// U [planes, rows.count, C] as `transformWeight` computes it, packed plane by plane for the AMX kernel
    /// (`ck_gemm_amx_pack_a_rows`) `packGroupRows` rows at a time, never held whole in F32: each worker
    /// transforms a group of rows into its part of `rowScratch` (planes · packGroupRows · C floats each), a
    /// typed weight dequantized on the way as in `transformWeight`.
    fileprivate func transformAndPackWeight(_ weight: Weight, rows: Range<Int>, into packed: UnsafeMutablePointer<UInt32>,
                                            planeWords: Int, rowScratch: UnsafeMutablePointer<Float>) {
        let c = self.c, planes = self.planes, rowLength = 9 * c
        let oc = rows.count, groupRows = packGroupRows
        let groups = (oc + groupRows - 1) / groupRows
        let workers = packWorkers(outChannels: oc)
        precondition(workers >= 1, "conv2d: no room to pack U")
        let transform = tile == 2 ? ck_winograd_f23_weight : ck_winograd_f43_weight
        Parallel.forEachUnit(count: workers) { worker in
            let local = rowScratch + worker * planes * groupRows * c
            func transformAndPack(_ source: UnsafePointer<Float>, first: Int, count: Int) {
                transform(source, Int64(count), Int64(c), Int64(count), local)
                for xi in 0..<planes {
                    let status = ck_gemm_amx_pack_a_rows(Int64(oc), Int64(c), Int64(first), Int64(count),
                                                         local + xi * count * c, Int64(c), packed + xi * planeWords)
                    precondition(status == 0, "conv2d: AMX packing ran where AMX cannot")
                }
            }
            ScratchArena.withArena { arena in
                let panel = weight.type == .f32 ? nil : arena.floats(groupRows * rowLength)
                var group = worker
                while group < groups {
                    let first = group * groupRows, count = min(groupRows, oc - first)
                    let range = (rows.lowerBound + first)..<(rows.lowerBound + first + count)
                    if let panel {
                        weight.dequantizeRows(range, into: panel)
                        if limits.releasesMappedWeights { weight.releaseMappedRows(range) }
                        transformAndPack(panel, first: first, count: count)
                    } else {
                        transformAndPack(weight.base + range.lowerBound * rowLength, first: first, count: count)
                    }
                    group += workers
                }
            }
        }
    }
}

/// Runs `body` with a weight's F32 values, or with nil when there is no weight.
private func withOptionalFloats<R>(_ weight: Weight?, _ body: (UnsafePointer<Float>?) -> R) -> R {
    guard let weight else { return body(nil) }
    return weight.withFloats { body($0) }
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

extension GemmLimits {
    /// The scratch of one band of a 3×3, stride-1, padding-1 convolution of `channels` → `outChannels` over one
    /// `height` × `width` image under these limits, in floats, for the algorithm `conv2d` picks: `image`, a band
    /// over the whole image, and `oneRow`, the least band (one output row of im2col, or one tile row of Winograd's
    /// transformed input and products with its transform scratch), which a band never goes below whatever
    /// `bandFloats` says. (The memory planner's figure for a network's scratch.)
    public func conv3x3BandFloats(channels c: Int, outChannels o: Int, height h: Int, width w: Int)
        -> (image: Int, oneRow: Int) {
        if o <= directConvMaximumOutputChannels { return (0, 0) }
        guard let m = winogradTile(channels: c, outChannels: o, pixels: h * w, limits: self) else {
            return (9 * c * h * w, 9 * c * w)
        }
        let problem = WinogradProblem(n: 1, c: c, h: h, w: w, o: o, tile: m, limits: self)
        let row = problem.planes * (c + problem.chunkChannels) * problem.tilesWide
            + max((m * problem.tilesWide + 2) + (m + 2) * (m + 2) * problem.tilesWide, m * m * problem.tilesWide)
        return (row * problem.tilesHigh, row)
    }
}
