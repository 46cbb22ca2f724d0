// TinyAutoencoder: diffusers' AutoencoderTiny (TAESD) decoder — tanh clamp, conv + ReLU residual blocks with
// nearest ×2 upsampling — latents → RGB in [-1, 1], decoded whole or with its high-resolution steps in bands (exact halos).

import Foundation
import MMapWeights
import TiledKernels

/// diffusers' AutoencoderTiny config (the fields its decoder uses).
public struct TinyAutoencoderConfig: Decodable, Sendable {
    public var latentChannels: Int
    public var outChannels: Int
    public var decoderBlockOutChannels: [Int]
    public var numDecoderBlocks: [Int]
    public var upsamplingScalingFactor: Int
    public var actFn: String
    public var upsampleFn: String
    /// The pipeline divides latents by this before decoding (1.0 for TAESD).
    public var scalingFactor: Float

    enum CodingKeys: String, CodingKey {
        case latentChannels = "latent_channels", outChannels = "out_channels"
        case decoderBlockOutChannels = "decoder_block_out_channels", numDecoderBlocks = "num_decoder_blocks"
        case upsamplingScalingFactor = "upsampling_scaling_factor", actFn = "act_fn", upsampleFn = "upsample_fn"
        case scalingFactor = "scaling_factor"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        latentChannels = try c.value(.latentChannels, or: 4)
        outChannels = try c.value(.outChannels, or: 3)
        decoderBlockOutChannels = try c.value(.decoderBlockOutChannels, or: [64, 64, 64, 64])
        numDecoderBlocks = try c.value(.numDecoderBlocks, or: [3, 3, 3, 1])
        upsamplingScalingFactor = try c.value(.upsamplingScalingFactor, or: 2)
        actFn = try c.value(.actFn, or: "relu")
        upsampleFn = try c.value(.upsampleFn, or: "nearest")
        scalingFactor = try c.value(.scalingFactor, or: 1)
    }

    /// Pixels per latent cell: diffusers' vae_scale_factor, 2^(levels − 1).
    public var scaleFactor: Int { 1 << max(decoderBlockOutChannels.count - 1, 0) }

    public func validate(file: String) throws {
        func reject(_ field: String, _ reason: String) throws {
            throw PipelineError.badConfig(file: file, field: field, reason: reason)
        }
        if decoderBlockOutChannels.isEmpty { try reject("decoder_block_out_channels", "is empty") }
        if decoderBlockOutChannels.count != numDecoderBlocks.count {
            try reject("num_decoder_blocks", "has \(numDecoderBlocks.count) entries for \(decoderBlockOutChannels.count) levels")
        }
        // DecoderTiny's blocks keep their width and its level convs do not change it: only equal widths run.
        if decoderBlockOutChannels.contains(where: { $0 <= 0 || $0 != decoderBlockOutChannels[0] }) {
            try reject("decoder_block_out_channels", "must be equal positive widths, as AutoencoderTiny's decoder needs")
        }
        if numDecoderBlocks.contains(where: { $0 < 0 }) { try reject("num_decoder_blocks", "has a negative entry") }
        if upsamplingScalingFactor != 2 { try reject("upsampling_scaling_factor", "is \(upsamplingScalingFactor); supported: 2") }
        if actFn != "relu" { try reject("act_fn", "is \(actFn); supported: relu") }
        if upsampleFn != "nearest" { try reject("upsample_fn", "is \(upsampleFn); supported: nearest") }
        if latentChannels <= 0 || outChannels <= 0 { try reject("latent_channels", "must be positive") }
        if !(scalingFactor.isFinite && scalingFactor != 0) { try reject("scaling_factor", "must be a non-zero number") }
    }
}

/// How a TAESD decode is split to bound its memory: the first `wholeSteps` of the decoder's steps run once on the
/// whole latent (their maps are small at low resolution); the rest run in bands of `bandRows` rows of that stage's
/// output, each widened by the halo those steps' 3×3 convs reach, then cropped and stacked — the whole decode's values.
public struct TinyAutoencoderBands: Sendable, Equatable, CustomStringConvertible {
    /// Steps (convs, residual blocks, upsamplings, in the decoder's order) run on the whole latent first.
    public var wholeSteps: Int
    /// Rows per band at the resolution after `wholeSteps` (latent rows when it is 0).
    public var bandRows: Int

    public init(wholeSteps: Int, bandRows: Int) {
        self.wholeSteps = wholeSteps
        self.bandRows = bandRows
    }

    public var description: String { "bands of \(bandRows) rows after \(wholeSteps) whole steps" }
}

/// AutoencoderTiny's decoder (`decoder.layers.N`): conv, ReLU, then per level its AutoencoderTinyBlocks
/// (three 3×3 convs with ReLUs, identity skip, ReLU after the sum), ×2 nearest upsampling and a 3×3 conv
/// (without bias but the last, which maps to RGB with bias). Its weights (a few MB) stay resident.
public struct TinyAutoencoderDecoder {
    public let config: TinyAutoencoderConfig

    /// One step of the decoder as bound: the same list `layout` describes, with its weights.
    enum Step {
        case conv(Conv2d, relu: Bool)
        case block(Conv2d, Conv2d, Conv2d)
        case upsample

        /// The step's weights: its group (empty for an upsampling).
        var weights: [Weight] {
            switch self {
            case .conv(let c, _): c.weights
            case .block(let a, let b, let c): a.weights + b.weights + c.weights
            case .upsample: []
            }
        }
    }

    /// The decoder as one list of steps in execution order; the forward pass runs step i's weights as group
    /// `WeightGroupID(block: i, part: 0)` of `streamer` (resident: TAESD's few MB are read again by every band).
    let steps: [Step]
    let streamer: WeightStreamer
    private let layout: [TinyAutoencoderStep]
    public let totalWeightBytes: Int

    public init(config: TinyAutoencoderConfig, weights w: WeightProvider, file: String = "vae/config.json") throws {
        try config.validate(file: file)
        self.config = config
        let layout = Self.layout(config)
        var steps: [Step] = []
        for step in layout {
            switch step {
            case .conv(let layer, let inC, let outC, let bias, let relu):
                steps.append(.conv(try Conv2d(w, "decoder.layers.\(layer)", in: inC, out: outC, kernel: 3, bias: bias),
                                   relu: relu))
            case .block(let layer, let width):
                let p = "decoder.layers.\(layer).conv"
                steps.append(.block(try Conv2d(w, "\(p).0", in: width, out: width, kernel: 3),
                                    try Conv2d(w, "\(p).2", in: width, out: width, kernel: 3),
                                    try Conv2d(w, "\(p).4", in: width, out: width, kernel: 3)))
            case .upsample:
                steps.append(.upsample)
            }
        }
        self.steps = steps
        self.layout = layout
        streamer = WeightStreamer(blocks: steps.map { [$0.weights] }, residency: .resident)
        totalWeightBytes = streamer.totalBytes
    }

    /// The decoder's steps from its config alone (what the memory planner reads without binding weights).
    static func layout(_ config: TinyAutoencoderConfig) -> [TinyAutoencoderStep] {
        let width = config.decoderBlockOutChannels.first ?? 64
        var out: [TinyAutoencoderStep] = [.conv(layer: 0, inChannels: config.latentChannels, outChannels: width,
                                                bias: true, relu: true)]
        var index = 2  // conv, activation
        for (level, count) in config.numDecoderBlocks.enumerated() {
            let isLast = level == config.numDecoderBlocks.count - 1
            for _ in 0..<count {
                out.append(.block(layer: index, width: width))
                index += 1
            }
            if !isLast {
                out.append(.upsample)
                index += 1
            }
            out.append(.conv(layer: index, inChannels: width, outChannels: isLast ? config.outChannels : width,
                             bias: isLast, relu: false))
            index += 1
        }
        return out
    }

    /// Latent rows each side of a band that reach its output rows through the 3×3 convs (so a band decoded
    /// with this halo gives exactly the rows of the whole decode).
    public var haloLatentRows: Int { Self.haloRows(layout, from: 0) }

    /// Rows (at the resolution step `first` reads) each side of a band that steps `first...` reach.
    static func haloRows(_ layout: [TinyAutoencoderStep], from first: Int) -> Int {
        var rows = 0
        for step in layout[first...].reversed() {
            switch step {
            case .conv: rows += 1
            case .block: rows += 3
            case .upsample: rows = (rows + 1) / 2
            }
        }
        return rows
    }

    /// Pixels per latent cell of the map step `first` reads (1 for the latent itself).
    static func scale(_ layout: [TinyAutoencoderStep], before first: Int) -> Int {
        layout[..<first].reduce(1) { scale, step in step == .upsample ? scale * 2 : scale }
    }

    /// z: [N, latent_channels, h, w] (already divided by scaling_factor) → image [N, 3, h·f, w·f] in [-1, 1].
    public func callAsFunction(_ z: Tensor) -> Tensor {
        Self.toImage(run(steps.indices, on: Self.clamp(z)))
    }

    /// Runs `range` of the steps on `x`.
    private func run(_ range: Range<Int>, on input: Tensor) -> Tensor {
        var x = input
        for index in range {
            streamer.run(WeightGroupID(block: index, part: 0)) {
                switch steps[index] {
                case .conv(let c, let relu):
                    x = relu ? Self.relu(c(x)) : c(x)
                case .block(let a, let b, let c):
                    x = Self.relu(TiledKernels.add(c(Self.relu(b(Self.relu(a(x))))), x))
                case .upsample:
                    x = upsampleNearest2x(x)
                }
            }
        }
        return x
    }

    /// The decode in bands of `bandLatentRows` latent rows (each with `haloLatentRows` more on each side, clipped
    /// at the image edges), cropped and stacked: the same values as decoding the whole latent at once.
    public func decode(_ z: Tensor, bandLatentRows: Int?, shouldContinue: () -> Bool = { true }) throws -> Tensor {
        try decode(z, bands: bandLatentRows.map { TinyAutoencoderBands(wholeSteps: 0, bandRows: $0) },
                   shouldContinue: shouldContinue)
    }

    /// The decode split as `bands` says (nil: whole): steps before `wholeSteps` on the whole latent, the rest band
    /// by band with their halo. `shouldContinue` is asked after each band; false throws `PipelineError.cancelled`.
    public func decode(_ z: Tensor, bands: TinyAutoencoderBands?, shouldContinue: () -> Bool = { true }) throws -> Tensor {
        guard let bands, bands.wholeSteps >= 0, bands.wholeSteps < steps.count else { return self(z) }
        let n = z.shape[0], h = z.shape[2], w = z.shape[3]
        let k = bands.wholeSteps, f = config.scaleFactor
        let x = run(0..<k, on: Self.clamp(z))
        let rows = x.shape[2]
        let perRow = f / Self.scale(layout, before: k)  // output rows per row of x
        let halo = Self.haloRows(layout, from: k)
        var out = Tensor(uninitialized: [n, config.outChannels, h * f, w * f])
        var r0 = 0
        while r0 < rows {
            let r1 = min(rows, r0 + max(1, bands.bandRows))
            let a = max(0, r0 - halo), b = min(rows, r1 + halo)
            let decoded = run(k..<steps.count, on: Self.rows(a..<b, of: x))
            Self.copyImageRows(from: decoded, firstRow: (r0 - a) * perRow, count: (r1 - r0) * perRow,
                               into: &out, at: r0 * perRow)
            r0 = r1
            if r0 < rows && !shouldContinue() { throw PipelineError.cancelled }
        }
        return out
    }

    /// The bands for `budgetBytes` of tensors: nil when the whole decode fits; otherwise the split that fits and
    /// runs the fewest convolution rows (halos recomputed by every band count), or the smallest if none fits.
    public func bands(forBudgetBytes budgetBytes: Int, latentHeight: Int, latentWidth: Int, batch: Int) -> TinyAutoencoderBands? {
        Self.bands(config: config, forBudgetBytes: budgetBytes, latentHeight: latentHeight, latentWidth: latentWidth,
                   batch: batch)
    }

    /// The same from the config alone (what the memory planner keeps without binding the decoder).
    public static func bands(config: TinyAutoencoderConfig, forBudgetBytes budgetBytes: Int, latentHeight h: Int,
                             latentWidth w: Int, batch: Int) -> TinyAutoencoderBands? {
        if tensorBytes(config: config, latentRows: h, latentWidth: w, batch: batch) <= budgetBytes { return nil }
        let layout = layout(config)
        var best: (bands: TinyAutoencoderBands, cost: Int, count: Int)?
        var smallest: (bands: TinyAutoencoderBands, bytes: Int)?
        for k in 0..<layout.count {
            let rows = h * scale(layout, before: k)
            func bytes(_ b: Int) -> Int {
                tensorBytes(config: config, bands: TinyAutoencoderBands(wholeSteps: k, bandRows: b), latentHeight: h,
                            latentWidth: w, batch: batch)
            }
            let least = bytes(1)
            if least < smallest?.bytes ?? .max { smallest = (TinyAutoencoderBands(wholeSteps: k, bandRows: 1), least) }
            guard least <= budgetBytes else { continue }
            // Bytes grow with the band: the tallest band that fits, by bisection.
            var lo = 1, hi = rows
            while lo < hi {
                let mid = (lo + hi + 1) / 2
                if bytes(mid) <= budgetBytes { lo = mid } else { hi = mid - 1 }
            }
            let candidate = TinyAutoencoderBands(wholeSteps: k, bandRows: lo)
            let cost = convolutionRows(layout, bands: candidate, latentHeight: h)
            let count = (rows + lo - 1) / lo
            if let b = best, (cost, count) >= (b.cost, b.count) { continue }
            best = (candidate, cost, count)
        }
        return best?.bands ?? smallest?.bands
    }

    /// 3×3 convolution rows a decode runs (each at the decoder's width): its compute, halos included.
    static func convolutionRows(_ layout: [TinyAutoencoderStep], bands: TinyAutoencoderBands?, latentHeight h: Int) -> Int {
        func convs(_ step: TinyAutoencoderStep) -> Int {
            switch step {
            case .conv: return 1
            case .block: return 3
            case .upsample: return 0
            }
        }
        let k = min(bands?.wholeSteps ?? layout.count, layout.count)
        var total = 0
        for i in 0..<k { total += convs(layout[i]) * h * scale(layout, before: i + 1) }
        guard let bands, k < layout.count else { return total }
        let s = scale(layout, before: k), rows = h * s, halo = haloRows(layout, from: k)
        var r0 = 0
        while r0 < rows {
            let r1 = min(rows, r0 + max(1, bands.bandRows))
            let extent = min(rows, r1 + halo) - max(0, r0 - halo)
            for i in k..<layout.count { total += convs(layout[i]) * extent * scale(layout, before: i + 1) / s }
            r0 = r1
        }
        return total
    }

    /// Bytes of the tensors alive while decoding `latentRows` rows (halo included) of a `latentWidth`-wide latent
    /// whole: about four maps of the decoder's width at full resolution (a block's input, two intermediates, its sum).
    public static func tensorBytes(config: TinyAutoencoderConfig, latentRows: Int, latentWidth: Int, batch: Int) -> Int {
        let f = config.scaleFactor
        let width = config.decoderBlockOutChannels.max() ?? 64
        return 4 * width * latentRows * f * latentWidth * f * batch * MemoryLayout<Float>.size
    }

    /// Bytes of the tensors alive at once in a decode split as `bands` (nil: whole): the larger of the whole steps'
    /// four maps at their largest resolution, and what the bands need — the whole steps' output, the image being
    /// stacked, and four maps of a band (halo included) at each later resolution.
    public static func tensorBytes(config: TinyAutoencoderConfig, bands: TinyAutoencoderBands?, latentHeight h: Int,
                                   latentWidth w: Int, batch: Int) -> Int {
        let layout = layout(config)
        guard let bands, bands.wholeSteps >= 0, bands.wholeSteps < layout.count else {
            return tensorBytes(config: config, latentRows: h, latentWidth: w, batch: batch)
        }
        let k = bands.wholeSteps, f = config.scaleFactor
        let width = config.decoderBlockOutChannels.max() ?? 64
        let float = MemoryLayout<Float>.size
        func maps(_ count: Int, rows: Int, scale: Int) -> Int { count * width * rows * w * scale * batch * float }
        var whole = 0
        for i in 0..<k {
            let s = scale(layout, before: i + 1)
            whole = max(whole, maps(4, rows: h * s, scale: s))
        }
        let s = scale(layout, before: k), rows = h * s
        let extent = min(rows, max(1, bands.bandRows) + 2 * haloRows(layout, from: k))
        let kept = (k == 0 ? config.latentChannels * h * w * batch * float : maps(1, rows: rows, scale: s))
            + config.outChannels * h * f * w * f * batch * float
        var band = 0
        for i in k..<layout.count {
            let t = scale(layout, before: i + 1)
            band = max(band, maps(4, rows: extent * t / s, scale: t))
        }
        return max(whole, kept + band)
    }

    /// What a decode split as `bands` (nil: whole) and its conversion to 8-bit images hold at their peak: the tensors
    /// (`tensorBytes`), the kernels' scratch of every conv on the largest map it runs on (the whole steps' maps, a
    /// band's maps with its halo; see `VAEScratch`) and the 8-bit images. `typedWeights` as in
    /// `VAEDecoder.decodeBytes`.
    public static func decodeBytes(config: TinyAutoencoderConfig, bands: TinyAutoencoderBands?, latentHeight h: Int,
                                   latentWidth w: Int, batch: Int, typedWeights: Bool = false) -> VAEDecodeBytes {
        let layout = layout(config)
        let k = bands.map { $0.wholeSteps >= 0 && $0.wholeSteps < layout.count ? $0.wholeSteps : layout.count }
            ?? layout.count
        let s = scale(layout, before: k)
        let extent = bands.map { min(h * s, max(1, $0.bandRows) + 2 * haloRows(layout, from: k)) } ?? h * s
        var scratch = VAEScratch()
        for (i, step) in layout.enumerated() {
            // Rows of the map step i reads: the whole latent's before `k`, a band's (with its halo) from `k` on.
            let t = scale(layout, before: i)
            let rows = i < k ? h * t : extent * t / s
            let convs: [(Int, Int)]
            switch step {
            case .conv(_, let inC, let outC, _, _): convs = [(inC, outC)]
            case .block(_, let width): convs = Array(repeating: (width, width), count: 3)
            case .upsample: convs = []
            }
            for (c, o) in convs {
                scratch.add(conv2dScratch(n: batch, c: c, h: rows, w: w * t, o: o, kh: 3, kw: 3, padding: 1,
                                          weightType: .q8_0))
            }
        }
        if !typedWeights { scratch.callerFirst = false }
        let f = config.scaleFactor
        return VAEDecodeBytes(tensors: tensorBytes(config: config, bands: bands, latentHeight: h, latentWidth: w,
                                                   batch: batch),
                              scratch: scratch.bytes, buffers: batch * h * f * w * f * 3)
    }

    /// tanh(z / 3) · 3: AutoencoderTiny's latent clamp.
    private static func clamp(_ z: Tensor) -> Tensor {
        var x = z
        x.withUnsafeMutableBufferPointer { p in
            for i in p.indices { p[i] = tanh(p[i] / 3) * 3 }
        }
        return x
    }

    /// [0, 1] → [-1, 1], in place.
    private static func toImage(_ y: consuming Tensor) -> Tensor {
        var x = consume y
        x.withUnsafeMutableBufferPointer { p in
            for i in p.indices { p[i] = p[i] * 2 - 1 }
        }
        return x
    }

    private static func relu(_ y: consuming Tensor) -> Tensor {
        var x = consume y
        x.withUnsafeMutableBufferPointer { p in
            for i in p.indices { p[i] = max(p[i], 0) }
        }
        return x
    }

    /// Rows `range` of every plane of x [N, C, H, W].
    private static func rows(_ range: Range<Int>, of x: Tensor) -> Tensor {
        let planes = x.shape[0] * x.shape[1], h = x.shape[2], w = x.shape[3]
        var out = Tensor(uninitialized: [x.shape[0], x.shape[1], range.count, w])
        out.withUnsafeMutableBufferPointer { o in
            x.withUnsafeBufferPointer { s in
                guard let op = o.baseAddress, let sp = s.baseAddress else { return }
                for i in 0..<planes {
                    (op + i * range.count * w).update(from: sp + (i * h + range.lowerBound) * w, count: range.count * w)
                }
            }
        }
        return out
    }

    /// Writes rows `firstRow..<firstRow+count` of every plane of `y` ([N, C, rows, W], in [0, 1]) as [-1, 1] values
    /// into rows `at…` of `out` ([N, C, H, W]).
    private static func copyImageRows(from y: Tensor, firstRow: Int, count: Int, into out: inout Tensor, at: Int) {
        let planes = y.shape[0] * y.shape[1], rows = y.shape[2], w = y.shape[3], h = out.shape[2]
        out.withUnsafeMutableBufferPointer { o in
            y.withUnsafeBufferPointer { s in
                guard let op = o.baseAddress, let sp = s.baseAddress else { return }
                for i in 0..<planes {
                    let dst = op + (i * h + at) * w, src = sp + (i * rows + firstRow) * w
                    for j in 0..<(count * w) { dst[j] = src[j] * 2 - 1 }
                }
            }
        }
    }
}

/// One step of the TAESD decoder and the `decoder.layers` index that holds its weights.
enum TinyAutoencoderStep: Equatable {
    case conv(layer: Int, inChannels: Int, outChannels: Int, bias: Bool, relu: Bool)
    case block(layer: Int, width: Int)
    case upsample
}
