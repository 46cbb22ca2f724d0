// TinyAutoencoder: diffusers' AutoencoderTiny (TAESD) decoder — tanh clamp, conv + ReLU residual blocks with
// nearest ×2 upsampling — latents → RGB in [-1, 1], decoded in bands of latent rows with an exact halo.

import Foundation
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

/// AutoencoderTiny's decoder (`decoder.layers.N`): conv, ReLU, then per level its AutoencoderTinyBlocks
/// (three 3×3 convs with ReLUs, identity skip, ReLU after the sum), ×2 nearest upsampling and a 3×3 conv
/// (without bias but the last, which maps to RGB with bias).
public struct TinyAutoencoderDecoder {
    public let config: TinyAutoencoderConfig

    private enum Step {
        case conv(Conv2d, relu: Bool)
        case block(Conv2d, Conv2d, Conv2d)
        case upsample
    }

    private let steps: [Step]
    private let streamer: WeightStreamer

    public init(config: TinyAutoencoderConfig, weights w: WeightProvider, residency: WeightResidency = .resident,
                file: String = "vae/config.json") throws {
        try config.validate(file: file)
        self.config = config
        var steps: [Step] = []
        var groups: [[Weight]] = []
        var index = 0
        func conv(_ i: Int, _ inC: Int, _ outC: Int, bias: Bool = true) throws -> Conv2d {
            try Conv2d(w, "decoder.layers.\(i)", in: inC, out: outC, kernel: 3, bias: bias)
        }
        let width = config.decoderBlockOutChannels[0]
        let first = try conv(0, config.latentChannels, width)
        steps.append(.conv(first, relu: true))
        groups.append(first.weights)
        index = 2  // conv, activation
        for (level, count) in config.numDecoderBlocks.enumerated() {
            let isLast = level == config.numDecoderBlocks.count - 1
            for _ in 0..<count {
                let p = "decoder.layers.\(index).conv"
                let a = try Conv2d(w, "\(p).0", in: width, out: width, kernel: 3)
                let b = try Conv2d(w, "\(p).2", in: width, out: width, kernel: 3)
                let c = try Conv2d(w, "\(p).4", in: width, out: width, kernel: 3)
                steps.append(.block(a, b, c))
                groups.append(a.weights + b.weights + c.weights)
                index += 1
            }
            if !isLast {
                steps.append(.upsample)
                index += 1
            }
            let out = try conv(index, width, isLast ? config.outChannels : width, bias: isLast)
            steps.append(.conv(out, relu: false))
            groups.append(out.weights)
            index += 1
        }
        self.steps = steps
        streamer = WeightStreamer(order: groups, residency: residency)
    }

    /// Latent rows each side of a band that reach its output rows through the 3×3 convs (so a band decoded
    /// with this halo gives exactly the rows of the whole decode).
    public var haloLatentRows: Int {
        var rows = 0
        for step in steps.reversed() {
            switch step {
            case .conv: rows += 1
            case .block: rows += 3
            case .upsample: rows = (rows + 1) / 2
            }
        }
        return rows
    }

    /// z: [N, latent_channels, h, w] (already divided by scaling_factor) → image [N, 3, h·f, w·f] in [-1, 1].
    public func callAsFunction(_ z: Tensor) -> Tensor {
        var x = Tensor(shape: z.shape, data: z.data.map { tanh($0 / 3) * 3 })
        for step in steps {
            switch step {
            case .conv(let c, let relu):
                x = streamer.run { relu ? Self.relu(c(x)) : c(x) }
            case .block(let a, let b, let c):
                x = streamer.run { Self.relu(TiledKernels.add(c(Self.relu(b(Self.relu(a(x))))), x)) }
            case .upsample:
                x = upsampleNearest2x(x)
            }
        }
        return Tensor(shape: x.shape, data: x.data.map { $0 * 2 - 1 })
    }

    /// The decode in bands of `bandLatentRows` latent rows (each with `haloLatentRows` more on each side,
    /// clipped at the image edges), cropped and stacked: the same values as decoding the whole latent at once.
    /// `shouldContinue` is asked after each band; false throws `PipelineError.cancelled`.
    public func decode(_ z: Tensor, bandLatentRows: Int?, shouldContinue: () -> Bool = { true }) throws -> Tensor {
        let n = z.shape[0], c = z.shape[1], h = z.shape[2], w = z.shape[3]
        guard let band = bandLatentRows, band < h else { return self(z) }
        let f = config.scaleFactor, halo = haloLatentRows
        let outC = config.outChannels
        var out = [Float](repeating: 0, count: n * outC * h * f * w * f)
        var r0 = 0
        while r0 < h {
            let r1 = min(h, r0 + max(1, band))
            let a = max(0, r0 - halo), b = min(h, r1 + halo)
            var part = [Float](repeating: 0, count: n * c * (b - a) * w)
            for i in 0..<(n * c) {
                for y in a..<b {
                    let src = (i * h + y) * w, dst = (i * (b - a) + (y - a)) * w
                    for x in 0..<w { part[dst + x] = z.data[src + x] }
                }
            }
            let decoded = self(Tensor(shape: [n, c, b - a, w], data: part))
            let rows = (b - a) * f, width = w * f
            for i in 0..<(n * outC) {
                for y in (r0 * f)..<(r1 * f) {
                    let src = (i * rows + (y - a * f)) * width, dst = (i * h * f + y) * width
                    for x in 0..<width { out[dst + x] = decoded.data[src + x] }
                }
            }
            r0 = r1
            if r0 < h && !shouldContinue() { throw PipelineError.cancelled }
        }
        return Tensor(shape: [n, outC, h * f, w * f], data: out)
    }

    /// Bytes of the tensors alive while decoding `latentRows` rows (halo included) of a `latentWidth`-wide latent:
    /// about four maps of the decoder's width at full resolution (a block's input, two intermediates, its sum).
    public static func tensorBytes(config: TinyAutoencoderConfig, latentRows: Int, latentWidth: Int, batch: Int) -> Int {
        let f = config.scaleFactor
        let width = config.decoderBlockOutChannels.max() ?? 64
        return 4 * width * latentRows * f * latentWidth * f * batch * MemoryLayout<Float>.size
    }

    /// The largest band whose decode fits `budgetBytes`, or nil when the whole latent fits (no banding).
    public func bandLatentRows(forBudgetBytes budgetBytes: Int, latentHeight: Int, latentWidth: Int, batch: Int) -> Int? {
        Self.bandLatentRows(config: config, haloLatentRows: haloLatentRows, forBudgetBytes: budgetBytes,
                            latentHeight: latentHeight, latentWidth: latentWidth, batch: batch)
    }

    /// The same from a config and its halo (what the memory planner keeps without binding the decoder).
    public static func bandLatentRows(config: TinyAutoencoderConfig, haloLatentRows: Int, forBudgetBytes budgetBytes: Int,
                                      latentHeight: Int, latentWidth: Int, batch: Int) -> Int? {
        func bytes(_ rows: Int) -> Int {
            tensorBytes(config: config, latentRows: min(latentHeight, rows + 2 * haloLatentRows),
                        latentWidth: latentWidth, batch: batch)
        }
        if tensorBytes(config: config, latentRows: latentHeight, latentWidth: latentWidth, batch: batch)
            <= budgetBytes { return nil }
        var rows = 1
        while rows + 1 < latentHeight && bytes(rows + 1) <= budgetBytes { rows += 1 }
        return rows
    }

    private static func relu(_ x: Tensor) -> Tensor { Tensor(shape: x.shape, data: x.data.map { max($0, 0) }) }

    public var totalWeightBytes: Int { streamer.totalBytes }
}
