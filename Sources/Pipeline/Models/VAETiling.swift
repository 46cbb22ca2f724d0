// VAETiling: diffusers 0.42.1 AutoencoderKL tiled decoding (enable_tiling → _decode → tiled_decode, blend_v,
// blend_h), streamed row by row so only one tile's activations are alive; plus the decoder's memory estimate.

import Foundation
import TiledKernels

/// Tile geometry of a tiled VAE decode, with diffusers' field semantics:
/// `tileLatentSize` = tile_latent_min_size, `tileSampleSize` = tile_sample_min_size,
/// `overlapFactor` = tile_overlap_factor.
///
/// `overlapFactor` is a Double because diffusers computes `int(tile_latent_min_size * (1 - overlap))` and
/// `int(tile_sample_min_size * overlap)` in Python floats; the truncations must round the same way.
public struct VAETiling: Sendable, Equatable, Codable {
    /// The activation budget `sdd generate --vae-tiling` plans tiles for until a memory planner sets one:
    /// 64 MiB gives 16-cell (128-pixel) tiles for SD 1.5 at 512×512.
    public static let defaultActivationBudgetBytes = 64 << 20

    /// Side of a latent tile in latent cells (tile_latent_min_size).
    public var tileLatentSize: Int
    /// Side of a decoded tile in pixels (tile_sample_min_size); normally tileLatentSize × the VAE scale factor.
    public var tileSampleSize: Int
    /// Fraction of a tile shared with its neighbour (tile_overlap_factor), in [0, 1).
    public var overlapFactor: Double

    /// A tile of `tileLatentSize` latent cells, `tileLatentSize × scaleFactor` pixels.
    public init(tileLatentSize: Int, scaleFactor: Int = 8, overlapFactor: Double = 0.25) {
        self.init(tileLatentSize: tileLatentSize, tileSampleSize: tileLatentSize * scaleFactor,
                  overlapFactor: overlapFactor)
    }

    /// Every field as diffusers names it (for reproducing a diffusers setup whose sizes disagree).
    public init(tileLatentSize: Int, tileSampleSize: Int, overlapFactor: Double = 0.25) {
        self.tileLatentSize = tileLatentSize
        self.tileSampleSize = tileSampleSize
        self.overlapFactor = overlapFactor
    }

    /// What `vae.enable_tiling()` uses for a config: tile_sample_min_size = sample_size (512 for SD 1.5),
    /// tile_latent_min_size = int(sample_size / 2^(levels − 1)) (64), overlap 0.25.
    public static func diffusersDefault(for config: VAEConfig) -> VAETiling {
        let sample = config.sampleSize ?? 512
        return VAETiling(tileLatentSize: Int(Double(sample) / Double(config.scaleFactor)), tileSampleSize: sample,
                         overlapFactor: 0.25)
    }

    /// Latent cells between the starts of neighbouring tiles (diffusers' overlap_size).
    public var latentStride: Int { Int(Double(tileLatentSize) * (1 - overlapFactor)) }
    /// Pixels blended across a tile seam, before clamping to the tiles' sizes (blend_extent).
    public var blendExtent: Int { Int(Double(tileSampleSize) * overlapFactor) }
    /// Pixels each tile contributes per side after blending (row_limit).
    public var rowLimit: Int { tileSampleSize - blendExtent }

    /// diffusers' `_decode` test: a latent larger than one tile in either direction is decoded in tiles.
    public func applies(latentHeight: Int, latentWidth: Int) -> Bool {
        latentWidth > tileLatentSize || latentHeight > tileLatentSize
    }

    /// True when a tiled image has exactly latent × scaleFactor pixels per side (rowLimit equals the tile
    /// stride in pixels). diffusers decodes other geometries too (e.g. 6-cell tiles give a larger image);
    /// the pipeline only accepts size-preserving ones.
    public func preservesSize(scaleFactor: Int) -> Bool { rowLimit == latentStride * scaleFactor }

    /// Throws unless the geometry is one diffusers can run and this decoder can stream.
    public func validate() throws {
        guard tileLatentSize >= 1, tileSampleSize >= 1 else {
            throw PipelineError.invalidRequest("VAE tile of \(tileLatentSize) latent cells / \(tileSampleSize) pixels: sizes must be positive")
        }
        guard overlapFactor.isFinite, overlapFactor >= 0, overlapFactor < 1 else {
            throw PipelineError.invalidRequest("VAE tile overlap \(overlapFactor) is out of range [0, 1)")
        }
        guard latentStride >= 1, rowLimit >= 1 else {
            throw PipelineError.invalidRequest("VAE tile of \(tileLatentSize) latent cells with overlap \(overlapFactor) leaves no stride (\(latentStride) cells, \(rowLimit) pixels)")
        }
    }

    /// Tile starts along one latent axis: Python's range(0, extent, overlap_size).
    func starts(extent: Int) -> [Int] { Array(stride(from: 0, to: extent, by: latentStride)) }

    /// Number of tiles decoded for a latent of this size (1 when the latent fits in one tile).
    public func tileCount(latentHeight: Int, latentWidth: Int) -> Int {
        guard applies(latentHeight: latentHeight, latentWidth: latentWidth), latentStride >= 1 else { return 1 }
        return starts(extent: latentHeight).count * starts(extent: latentWidth).count
    }
}

extension VAEDecoder {
    /// Decodes latents as diffusers' `AutoencoderKL.decode` does with `enable_tiling()` and these tile settings.
    ///
    /// z: [N, latent_channels, h, w] (already divided by scaling_factor) → [N, out_channels, H, W], with
    /// H = W·… = latent × scale factor whenever `tiling.preservesSize` holds (otherwise diffusers' own size).
    /// When the latent fits in one tile (`tiling.applies` is false) this is exactly the untiled decode.
    /// Tiles run row by row, left to right; each is blended with the tile above and the one to its left
    /// (linear ramps over `blendExtent` pixels, as blend_v / blend_h), cropped to `rowLimit` and written
    /// into the image. Alive at once: the image, one tile's activations, and the seams of the previous row.
    /// `progress(done, total)` is called after each decoded tile; returning false throws `PipelineError.cancelled`.
    public func decodeTiled(_ z: Tensor, tiling: VAETiling, progress: ((Int, Int) -> Bool)? = nil) throws -> Tensor {
        guard z.shape.count == 4, z.shape[1] == config.latentChannels else {
            throw PipelineError.invalidRequest("VAE decode: latents \(z.shape), expected [N, \(config.latentChannels), h, w]")
        }
        try tiling.validate()
        let n = z.shape[0], h = z.shape[2], w = z.shape[3]
        guard tiling.applies(latentHeight: h, latentWidth: w) else {
            let image = self(z)
            if let progress, !progress(1, 1) { throw PipelineError.cancelled }
            return image
        }

        let f = config.scaleFactor
        let rowStarts = tiling.starts(extent: h)
        let colStarts = tiling.starts(extent: w)
        let tileCount = rowStarts.count * colStarts.count
        let extent = tiling.blendExtent, limit = tiling.rowLimit
        // Decoded size of the tile starting at s, and what it keeps after cropping to row_limit.
        func decodedSize(_ s: Int, _ axis: Int) -> Int { (min(s + tiling.tileLatentSize, axis) - s) * f }
        let keptHeights = rowStarts.map { min(limit, decodedSize($0, h)) }
        let keptWidths = colStarts.map { min(limit, decodedSize($0, w)) }
        let outH = keptHeights.reduce(0, +), outW = keptWidths.reduce(0, +)
        let outC = config.outChannels
        var image = Tensor(zeros: [n, outC, outH, outW])

        // The bottom rows of each blended tile of the previous row (blend_v's `a`), and the right columns of
        // the previous tile in this row (blend_h's `a`): at most blendExtent pixels deep, which is all
        // blend_v / blend_h read of them.
        var above = [SeamStrip?](repeating: nil, count: colStarts.count)
        var done = 0
        var y0 = 0
        for (ri, rs) in rowStarts.enumerated() {
            var left: SeamStrip?
            var x0 = 0
            for (ci, cs) in colStarts.enumerated() {
                var tile = self(z.croppingSpatial(rows: rs..<min(rs + tiling.tileLatentSize, h),
                                                   cols: cs..<min(cs + tiling.tileLatentSize, w)))
                if let a = above[ci] { a.blendVertically(into: &tile, extent: extent) }
                if let a = left { a.blendHorizontally(into: &tile, extent: extent) }
                image.paste(tile, rows: keptHeights[ri], cols: keptWidths[ci], atRow: y0, col: x0)
                above[ci] = SeamStrip(bottomOf: tile, depth: extent)
                left = SeamStrip(rightOf: tile, depth: extent)
                x0 += keptWidths[ci]
                done += 1
                if let progress, !progress(done, tileCount) { throw PipelineError.cancelled }
            }
            y0 += keptHeights[ri]
        }
        return image
    }

    /// Peak bytes of one decode of a [batch, latent_channels, h, w] latent (the input included, the weights not).
    /// See the static form.
    public func peakActivationBytes(latentHeight: Int, latentWidth: Int, batch: Int = 1) -> Int {
        Self.peakActivationBytes(config: config, latentHeight: latentHeight, latentWidth: latentWidth, batch: batch)
    }

    /// Peak bytes of one untiled decode of a [batch, latent, h, w] input: `decodeBytes` without tiling, its tensors
    /// alone with `kernelScratch: false` (the input latents plus the largest of the blocks' declared tensor peaks,
    /// `VAEBlockLayout.peakBytes`, walking the decoder's own list; for SD 1.5 up_blocks.3's first resnet).
    public static func peakActivationBytes(config: VAEConfig, latentHeight: Int, latentWidth: Int, batch: Int = 1,
                                           kernelScratch: Bool = true) -> Int {
        let bytes = decodeBytes(config: config, tiling: nil, latentHeight: latentHeight, latentWidth: latentWidth,
                                batch: batch)
        return kernelScratch ? bytes.total : bytes.tensors
    }

    /// What one decode (`callAsFunction`, or `decodeTiled` with `tiling`) and its conversion to 8-bit images hold at
    /// their peak, by owner, from the decoder's own list of blocks: the tensors (one tile's activations, the
    /// latents, the output image), the kernels' scratch (`plannedScratch`, on the largest tile) and the plain
    /// arrays beside them (seam strips, 8-bit images). `typedWeights`: every conv weight is quantized or 16-bit
    /// (`VAEDecoder.convWeightsTyped`); otherwise the scratch is bounded for any mix of types (each kernel's requests
    /// sized as for a typed weight, any arena serving any role: see `VAEScratch`).
    public static func decodeBytes(config: VAEConfig, tiling: VAETiling?, latentHeight: Int, latentWidth: Int,
                                   batch: Int = 1, typedWeights: Bool = false) -> VAEDecodeBytes {
        let n = max(batch, 1), f = config.scaleFactor
        let latentBytes = n * config.latentChannels * latentHeight * latentWidth * 4
        let pixel = n * config.outChannels * 4
        let image = pixel * latentHeight * latentWidth * f * f
        // rgb8: one H×W×3 byte image per batch item, made while the decoded image is alive.
        let bytes8 = n * latentHeight * latentWidth * f * f * 3
        let layout = Self.layout(config)
        let tiled = tiling.map { $0.applies(latentHeight: latentHeight, latentWidth: latentWidth) } ?? false
        let tileH = tiled ? min(tiling!.tileLatentSize, latentHeight) : latentHeight
        let tileW = tiled ? min(tiling!.tileLatentSize, latentWidth) : latentWidth
        let tensors = plannedTensorBytes(layout, batch: n, latentHeight: tileH, latentWidth: tileW).peak
        // Scratch over every tile shape the decode runs (edge tiles are smaller, and a smaller map can take a
        // convolution path with more scratch: im2col below Winograd's minimum size).
        var scratchBound = VAEScratch()
        let sizes = { (starts: [Int], extent: Int, size: Int) in Set(starts.map { min($0 + size, extent) - $0 }) }
        let heights = tiled ? sizes(tiling!.starts(extent: latentHeight), latentHeight, tiling!.tileLatentSize) : [tileH]
        let widths = tiled ? sizes(tiling!.starts(extent: latentWidth), latentWidth, tiling!.tileLatentSize) : [tileW]
        for th in heights {
            for tw in widths {
                scratchBound.add(plannedScratch(layout, batch: n, latentHeight: th, latentWidth: tw,
                                                weightType: .q8_0).whole)
            }
        }
        if !typedWeights { scratchBound.callerFirst = false }
        let scratch = scratchBound.bytes
        guard tiled, let tiling else {
            return VAEDecodeBytes(tensors: tensors + latentBytes, scratch: scratch, buffers: bytes8)
        }
        // The tile's latents (cropped from the whole) beside the whole; the image being filled; the strips: the
        // bottom rows of each column's tile above, the right columns of the tile to the left, and the two new ones
        // made while those they replace are still alive.
        let tileLatents = n * config.latentChannels * tileH * tileW * 4
        let tileSide = tiling.tileLatentSize * f
        let columns = tiling.starts(extent: latentWidth).count
        let strips = pixel * tiling.blendExtent * tileSide * (columns + 2)
        return VAEDecodeBytes(tensors: tensors + image + latentBytes + tileLatents, scratch: scratch,
                              buffers: strips + bytes8)
    }

    /// The whole of `decodeBytes` with `tiling` (the untiled decode's when the latent fits in one tile).
    public static func tiledDecodeBytes(config: VAEConfig, tiling: VAETiling, latentHeight: Int, latentWidth: Int,
                                        batch: Int = 1, typedWeights: Bool = false) -> Int {
        decodeBytes(config: config, tiling: tiling, latentHeight: latentHeight, latentWidth: latentWidth,
                    batch: batch, typedWeights: typedWeights).total
    }

    /// The decode's tensors alone with `tiling` (nil: untiled): what the tensor pool may hold during the decode.
    public static func tensorBytes(config: VAEConfig, tiling: VAETiling?, latentHeight: Int, latentWidth: Int,
                                   batch: Int = 1) -> Int {
        decodeBytes(config: config, tiling: tiling, latentHeight: latentHeight, latentWidth: latentWidth,
                    batch: batch).tensors
    }

    /// The largest tile (a multiple of 8 latent cells, overlap 0.25) whose whole decode (`decodeBytes`: tensors,
    /// scratch and buffers) fits `budgetBytes`. nil when the untiled decode fits; throws when even 8-cell tiles
    /// do not.
    public static func tiling(forBudgetBytes budgetBytes: Int, config: VAEConfig, latentHeight: Int,
                              latentWidth: Int, batch: Int = 1, typedWeights: Bool = false) throws -> VAETiling? {
        let untiled = decodeBytes(config: config, tiling: nil, latentHeight: latentHeight, latentWidth: latentWidth,
                                  batch: batch, typedWeights: typedWeights).total
        if untiled <= budgetBytes { return nil }
        let largest = max(latentHeight, latentWidth)
        var side = ((largest - 1) / 8) * 8  // strictly smaller than the latent, or it would not tile
        var smallestNeed = Int.max
        while side >= 8 {
            let tiling = VAETiling(tileLatentSize: side, scaleFactor: config.scaleFactor)
            let need = tiledDecodeBytes(config: config, tiling: tiling, latentHeight: latentHeight,
                                        latentWidth: latentWidth, batch: batch, typedWeights: typedWeights)
            if need <= budgetBytes { return tiling }
            smallestNeed = need
            side -= 8
        }
        let what = smallestNeed == Int.max ? untiled : smallestNeed
        throw PipelineError.invalidRequest(
            "VAE decode of \(latentWidth * config.scaleFactor)×\(latentHeight * config.scaleFactor) needs at least "
            + "\(what / (1024 * 1024)) MiB (\(smallestNeed == Int.max ? "untiled" : "8-cell tiles")), "
            + "over the budget of \(budgetBytes / (1024 * 1024)) MiB")
    }
}

/// The bytes one VAE decode holds at its peak, by where they live (see `VAEDecoder.decodeBytes`).
public struct VAEDecodeBytes: Sendable, Equatable {
    /// Tensors (the tensor pool's limit for the decode): the largest block peak on one tile or the whole latent,
    /// the latents and, tiled, the output image and the tile's latents.
    public var tensors: Int
    /// Kernel scratch: the arenas' bound and heap scratch (`VAEScratch`).
    public var scratch: Int
    /// Plain arrays beside the tensors: a tiled decode's seam strips and the 8-bit images.
    public var buffers: Int

    public var total: Int { tensors + scratch + buffers }
}
/// The edge of a blended tile that its right or lower neighbour blends with: [N, C, rows, cols] values
/// copied out of the tile, `depth` = min(tile extent, blendExtent) deep.
private struct SeamStrip {
    let n: Int, c: Int, rows: Int, cols: Int
    let values: [Float]

    /// The last min(tile height, depth) rows of `tile`, full width.
    init(bottomOf tile: Tensor, depth: Int) {
        n = tile.shape[0]; c = tile.shape[1]
        let th = tile.shape[2], tw = tile.shape[3]
        rows = min(th, depth); cols = tw
        let (planes, rows) = (n * c, rows)
        // Read in place: a copy of the whole tile (`data`) would be one more tile-sized array at the peak.
        values = tile.withUnsafeBufferPointer { all in
            var v = [Float]()
            v.reserveCapacity(planes * rows * tw)
            for p in 0..<planes {
                let base = (p * th + th - rows) * tw
                v.append(contentsOf: all[base..<(base + rows * tw)])
            }
            return v
        }
    }

    /// The last min(tile width, depth) columns of `tile`, full height.
    init(rightOf tile: Tensor, depth: Int) {
        n = tile.shape[0]; c = tile.shape[1]
        let th = tile.shape[2], tw = tile.shape[3]
        rows = th; cols = min(tw, depth)
        let (planes, cols) = (n * c, cols)
        values = tile.withUnsafeBufferPointer { all in
            var v = [Float]()
            v.reserveCapacity(planes * th * cols)
            for p in 0..<planes {
                for y in 0..<th {
                    let base = (p * th + y) * tw + tw - cols
                    v.append(contentsOf: all[base..<(base + cols)])
                }
            }
            return v
        }
    }

    /// diffusers' blend_v(a: the tile above, b: tile): the first e = min(a.h, b.h, extent) rows of b become
    /// a[−e + y] · (1 − y/e) + b[y] · (y/e), with the weights rounded to F32 as torch does for a Python scalar.
    func blendVertically(into tile: inout Tensor, extent: Int) {
        let th = tile.shape[2], tw = tile.shape[3]
        let e = min(rows, th, extent)
        precondition(tile.shape[0] == n && tile.shape[1] == c && tw == cols, "blend_v: strip does not fit the tile")
        guard e > 0 else { return }
        tile.withUnsafeMutableBufferPointer { b in
            values.withUnsafeBufferPointer { a in
                for y in 0..<e {
                    let wb = Float(Double(y) / Double(e)), wa = Float(1 - Double(y) / Double(e))
                    for p in 0..<(n * c) {
                        let ar = (p * rows + rows - e + y) * cols, br = (p * th + y) * tw
                        for x in 0..<tw {
                            let fromA = a[ar + x] * wa
                            let fromB = b[br + x] * wb
                            b[br + x] = fromA + fromB
                        }
                    }
                }
            }
        }
    }

    /// diffusers' blend_h(a: the tile to the left, b: tile): the first e = min(a.w, b.w, extent) columns.
    func blendHorizontally(into tile: inout Tensor, extent: Int) {
        let th = tile.shape[2], tw = tile.shape[3]
        let e = min(cols, tw, extent)
        precondition(tile.shape[0] == n && tile.shape[1] == c && th == rows, "blend_h: strip does not fit the tile")
        guard e > 0 else { return }
        tile.withUnsafeMutableBufferPointer { b in
            values.withUnsafeBufferPointer { a in
                for x in 0..<e {
                    let wb = Float(Double(x) / Double(e)), wa = Float(1 - Double(x) / Double(e))
                    for p in 0..<(n * c) {
                        for y in 0..<th {
                            let ai = (p * rows + y) * cols + cols - e + x, bi = (p * th + y) * tw + x
                            let fromA = a[ai] * wa
                            let fromB = b[bi] * wb
                            b[bi] = fromA + fromB
                        }
                    }
                }
            }
        }
    }
}

extension Tensor {
    /// z[:, :, rows, cols] of an NCHW tensor, copied.
    fileprivate func croppingSpatial(rows: Range<Int>, cols: Range<Int>) -> Tensor {
        let n = shape[0], c = shape[1], h = shape[2], w = shape[3]
        // Straight into the tile's tensor: no copy of the whole latent, no intermediate array.
        var out = Tensor(uninitialized: [n, c, rows.count, cols.count])
        out.withUnsafeMutableBufferPointer { dst in
            withUnsafeBufferPointer { all in
                var i = 0
                for p in 0..<(n * c) {
                    for y in rows {
                        let base = (p * h + y) * w
                        for x in cols {
                            dst[i] = all[base + x]
                            i += 1
                        }
                    }
                }
            }
        }
        return out
    }

    /// Writes tile[:, :, :rows, :cols] into self at (row, col).
    fileprivate mutating func paste(_ tile: Tensor, rows: Int, cols: Int, atRow row: Int, col: Int) {
        let n = shape[0], c = shape[1], h = shape[2], w = shape[3]
        let th = tile.shape[2], tw = tile.shape[3]
        precondition(tile.shape[0] == n && tile.shape[1] == c && rows <= th && cols <= tw
                     && row + rows <= h && col + cols <= w, "paste: tile \(tile.shape) does not fit \(shape) at \(row),\(col)")
        withUnsafeMutableBufferPointer { dst in
            tile.withUnsafeBufferPointer { src in
                guard let d = dst.baseAddress, let s = src.baseAddress else { return }
                for p in 0..<(n * c) {
                    for y in 0..<rows {
                        (d + (p * h + row + y) * w + col).update(from: s + (p * th + y) * tw, count: cols)
                    }
                }
            }
        }
    }
}
