// UNet: diffusers' UNet2DConditionModel forward for SD 1.x / 2.x (positional time embedding,
// CrossAttn/plain down and up blocks, cross-attention mid block), built from its config.json.

import CKernels
import Foundation
import MMapWeights
import TiledKernels

public struct UNet {
    public let config: UNetConfig

    /// One resolution level going down: resnets (each optionally followed by a transformer), then a downsampler.
    struct DownLevel {
        let resnets: [ResnetBlock]
        let transformers: [SpatialTransformer?]
        let downsample: Downsample?
    }

    /// One level going up: each resnet takes the current map concatenated with one skip connection.
    struct UpLevel {
        let resnets: [ResnetBlock]
        let transformers: [SpatialTransformer?]
        let upsample: Upsample?
    }

    private let timeLinear1: Linear
    private let timeLinear2: Linear
    private let convIn: Conv2d
    private let down: [DownLevel]
    private let midResnets: [ResnetBlock]
    private let midTransformer: SpatialTransformer?
    private let up: [UpLevel]
    private let normOut: GroupNormLayer
    private let convOut: Conv2d
    private let streamer: WeightStreamer

    /// residency: how weights stay in memory; `.streamed` keeps about one resnet or transformer resident.
    public init(config: UNetConfig, weights w: WeightProvider, residency: WeightResidency = .resident,
                file: String = "unet/config.json") throws {
        try config.validate(file: file)
        self.config = config
        let levels = config.blockOutChannels.count
        let channels = config.blockOutChannels
        let heads = try (config.numAttentionHeads ?? config.attentionHeadDim)
            .expanded(levels: levels, field: "attention_head_dim", file: file)
        let contextDims = try config.crossAttentionDim.expanded(levels: levels, field: "cross_attention_dim", file: file)
        let layersPerBlock = try config.layersPerBlock.expanded(levels: levels, field: "layers_per_block", file: file)
        let transformerLayers = try config.transformerLayersPerBlock
            .expanded(levels: levels, field: "transformer_layers_per_block", file: file)
        let groups = config.normNumGroups
        let eps = config.normEps
        let timeDim = channels[0] * 4

        timeLinear1 = try Linear(w, "time_embedding.linear_1", in: channels[0], out: timeDim)
        timeLinear2 = try Linear(w, "time_embedding.linear_2", in: timeDim, out: timeDim)
        convIn = try Conv2d(w, "conv_in", in: config.inChannels, out: channels[0], kernel: config.convInKernel)

        func transformer(_ p: String, _ c: Int, level: Int) throws -> SpatialTransformer {
            try SpatialTransformer(w, p, channels: c, heads: heads[level], layers: transformerLayers[level],
                                   contextDim: contextDims[level], groups: groups,
                                   linearProjection: config.useLinearProjection)
        }

        var down: [DownLevel] = []
        var outC = channels[0]
        for (i, type) in config.downBlockTypes.enumerated() {
            let inC = outC
            outC = channels[i]
            let p = "down_blocks.\(i)"
            let hasAttention = type == "CrossAttnDownBlock2D"
            var resnets: [ResnetBlock] = []
            var transformers: [SpatialTransformer?] = []
            for j in 0..<layersPerBlock[i] {
                resnets.append(try ResnetBlock(w, "\(p).resnets.\(j)", in: j == 0 ? inC : outC, out: outC,
                                               timeChannels: timeDim, groups: groups, eps: eps))
                transformers.append(hasAttention ? try transformer("\(p).attentions.\(j)", outC, level: i) : nil)
            }
            let isFinal = i == levels - 1
            let downsample = isFinal ? nil
                : try Downsample(w, "\(p).downsamplers.0", channels: outC, padding: config.downsamplePadding)
            down.append(DownLevel(resnets: resnets, transformers: transformers, downsample: downsample))
        }
        self.down = down

        let midC = channels[levels - 1]
        if config.midBlockType != nil {
            midResnets = try (0..<2).map {
                try ResnetBlock(w, "mid_block.resnets.\($0)", in: midC, out: midC, timeChannels: timeDim,
                                groups: groups, eps: eps, outputScale: config.midBlockScaleFactor)
            }
            midTransformer = try transformer("mid_block.attentions.0", midC, level: levels - 1)
        } else {
            midResnets = []
            midTransformer = nil
        }

        let reversedChannels = Array(channels.reversed())
        var up: [UpLevel] = []
        var upOut = reversedChannels[0]
        for (i, type) in config.upBlockTypes.enumerated() {
            let prevC = upOut
            upOut = reversedChannels[i]
            let inC = reversedChannels[min(i + 1, levels - 1)]
            let level = levels - 1 - i  // up block i mirrors down level (levels - 1 - i)
            let layers = layersPerBlock[level] + 1
            let p = "up_blocks.\(i)"
            let hasAttention = type == "CrossAttnUpBlock2D"
            var resnets: [ResnetBlock] = []
            var transformers: [SpatialTransformer?] = []
            for j in 0..<layers {
                let skipC = j == layers - 1 ? inC : upOut
                let resIn = j == 0 ? prevC : upOut
                resnets.append(try ResnetBlock(w, "\(p).resnets.\(j)", in: resIn + skipC, out: upOut,
                                               timeChannels: timeDim, groups: groups, eps: eps))
                transformers.append(hasAttention ? try transformer("\(p).attentions.\(j)", upOut, level: level) : nil)
            }
            let upsample = i == levels - 1 ? nil : try Upsample(w, "\(p).upsamplers.0", channels: upOut)
            up.append(UpLevel(resnets: resnets, transformers: transformers, upsample: upsample))
        }
        self.up = up

        normOut = try GroupNormLayer(w, "conv_norm_out", channels: channels[0], groups: groups, eps: eps)
        convOut = try Conv2d(w, "conv_out", in: channels[0], out: config.outChannels, kernel: config.convOutKernel)

        // The execution order of weight groups, exactly as callAsFunction visits them.
        var order: [[Weight]] = [timeLinear1.weights + timeLinear2.weights, convIn.weights]
        for level in down {
            for (resnet, transformer) in zip(level.resnets, level.transformers) {
                order += resnet.groups
                if let t = transformer { order += t.groups }
            }
            if let d = level.downsample { order.append(d.weights) }
        }
        if let midT = midTransformer {
            order += midResnets[0].groups + midT.groups + midResnets[1].groups
        }
        for level in up {
            for (resnet, transformer) in zip(level.resnets, level.transformers) {
                order += resnet.groups
                if let t = transformer { order += t.groups }
            }
            if let u = level.upsample { order.append(u.weights) }
        }
        order.append(normOut.weights + convOut.weights)
        streamer = WeightStreamer(order: order, residency: residency)
    }

    /// Bytes of the largest weight group: what `.streamed` keeps resident at a time (plus the next one).
    public var largestGroupBytes: Int { streamer.largestGroupBytes }

    /// Bytes of all weights as stored.
    public var totalWeightBytes: Int { streamer.totalBytes }
    /// Bytes of weights LoRAs were merged into (resident for as long as the UNet is bound).
    public var mergedLoRABytes: Int { streamer.mergedBytes }

    /// Values in the largest single weight (what a product may dequantize at once).
    public var largestWeightElements: Int { streamer.largestWeightElements }

    /// Sinusoidal timestep features as diffusers' get_timestep_embedding (float32 arithmetic, max_period 10000).
    static func timestepFeatures(_ t: Float, dim: Int, flipSinToCos: Bool, freqShift: Float) -> [Float] {
        let half = dim / 2
        let logMax = Float(-log(10000.0))
        var sines = [Float](repeating: 0, count: half)
        var cosines = [Float](repeating: 0, count: half)
        for i in 0..<half {
            let exponent = logMax * Float(i) / (Float(half) - freqShift)
            let arg = t * Foundation.exp(exponent)
            sines[i] = Foundation.sin(arg)
            cosines[i] = Foundation.cos(arg)
        }
        var out = flipSinToCos ? cosines + sines : sines + cosines
        if dim % 2 == 1 { out.append(0) }
        return out
    }

    /// Noise prediction. sample: [N, in_channels, h, w]; timestep: the scheduler's t (same for the batch);
    /// context: [N, tokens, cross_attention_dim]. Returns [N, out_channels, h, w].
    /// memory: `.fastest` (default) is bit-exact with the batched computation; `.compact` runs the batch one
    /// item at a time through each module and keeps skip connections as F16 (see `UNetMemoryMode`).
    public func callAsFunction(_ sample: Tensor, timestep: Float, context: Tensor,
                               memory: UNetMemoryMode = .fastest) -> Tensor {
        let n = sample.shape[0]
        let c0 = config.blockOutChannels[0]
        let feats = UNet.timestepFeatures(timestep, dim: c0, flipSinToCos: config.flipSinToCos,
                                          freqShift: Float(config.freqShift))
        let tFeatures = Tensor(shape: [n, c0], data: Array([[Float]](repeating: feats, count: n).joined()))
        let siluTemb = streamer.run { silu(timeLinear2(silu(timeLinear1(tFeatures)))) }

        // Lanes: the whole batch as one, or one per batch item (each module then runs them in turn) at the
        // resolutions where `memory` asks for it. The lane count follows the maps' size, so a skip connection is
        // taken on the way up with the lanes it was stored with.
        let itemLanes = memory.itemByItem && n > 1 ? n : 1
        func laneCount(_ t: Tensor) -> Int { t.shape[2] * t.shape[3] >= memory.itemByItemMinimumPixels ? itemLanes : 1 }
        func lanes(_ t: Tensor, _ count: Int) -> [Tensor] {
            count == 1 ? [t] : (0..<n).map { t.slice(batch: $0..<($0 + 1)) }
        }
        /// The same maps as `count` lanes: split the batch or stack the items.
        func relane(_ x: inout [Tensor], _ count: Int) {
            if x.count == count { return }
            x = count == 1 ? [Tensor.stack(batches: x)] : lanes(take(&x[0]), count)
        }
        let tembs = [lanes(siluTemb, 1), lanes(siluTemb, itemLanes)]
        let contexts = [lanes(context, 1), lanes(context, itemLanes)]
        func perLane(_ both: [[Tensor]], _ x: [Tensor]) -> [Tensor] { x.count == 1 ? both[0] : both[1] }
        let input = config.centerInputSample ? Tensor(shape: sample.shape, data: sample.data.map { 2 * $0 - 1 }) : sample
        var x = lanes(input, laneCount(input))
        streamer.run { for i in x.indices { x[i] = convIn(take(&x[i])) } }

        var skips: [SkipConnection] = [SkipConnection(x, halfPrecision: memory.halfPrecisionSkips)]
        for level in down {
            for (resnet, transformer) in zip(level.resnets, level.transformers) {
                x = resnet.forward(lanes: x.count, input: { take(&x[$0]) }, siluTimeEmbedding: perLane(tembs, x),
                                   streamer: streamer)
                transformer?.forward(&x, contexts: perLane(contexts, x), streamer: streamer)
                skips.append(SkipConnection(x, halfPrecision: memory.halfPrecisionSkips))
            }
            if let ds = level.downsample {
                streamer.run { for i in x.indices { x[i] = ds(take(&x[i])) } }
                relane(&x, laneCount(x[0]))
                skips.append(SkipConnection(x, halfPrecision: memory.halfPrecisionSkips))
            }
        }
        if let midT = midTransformer {
            x = midResnets[0].forward(lanes: x.count, input: { take(&x[$0]) }, siluTimeEmbedding: perLane(tembs, x),
                                      streamer: streamer)
            midT.forward(&x, contexts: perLane(contexts, x), streamer: streamer)
            x = midResnets[1].forward(lanes: x.count, input: { take(&x[$0]) }, siluTimeEmbedding: perLane(tembs, x),
                                      streamer: streamer)
        }
        for level in up {
            for (resnet, transformer) in zip(level.resnets, level.transformers) {
                // Each lane's map and skip meet in a concatenation built when the resnet reaches that lane, and
                // neither outlives it (the peak of the up path).
                var skip = skips.removeLast()
                x = resnet.forward(lanes: x.count, input: { concatChannels(take(&x[$0]), skip.take(lane: $0)) },
                                   siluTimeEmbedding: perLane(tembs, x), streamer: streamer)
                transformer?.forward(&x, contexts: perLane(contexts, x), streamer: streamer)
            }
            if let us = level.upsample, let next = skips.last {
                streamer.run { for i in x.indices { x[i] = us(take(&x[i]), size: next.spatialSize) } }
                relane(&x, laneCount(x[0]))
            }
        }
        return streamer.run {
            let out = x.map { convOut(normOut($0, silu: true)) }
            return out.count == 1 ? out[0] : Tensor.stack(batches: out)
        }
    }
}

/// How one UNet evaluation trades speed for memory; the memory planner picks it for a budget.
public struct UNetMemoryMode: Sendable, Equatable, CustomStringConvertible {
    /// Run the batch (the two halves of a guided batch) one item at a time through each module: every
    /// module's temporaries exist for one item at once, while each weight group still streams in once per
    /// evaluation. Same arithmetic per item, but products over fewer rows (results may differ in the last bits).
    public var itemByItem: Bool
    /// Keep skip connections as F16 between the down and up paths (half their bytes; rounds them to F16).
    public var halfPrecisionSkips: Bool
    /// With `itemByItem`, only modules whose maps have at least this many pixels (h·w) run item by item; the
    /// smaller levels, whose activations are a fraction of the top level's but whose weights are the largest,
    /// run the whole batch: each weight panel is dequantized once and the products have twice the rows (SD 1.5
    /// at 512×512: the 32×32 and 64×64 levels item by item, 16×16 and 8×8 whole).
    public var itemByItemMinimumPixels: Int

    public init(itemByItem: Bool, halfPrecisionSkips: Bool, itemByItemMinimumPixels: Int = 1024) {
        self.itemByItem = itemByItem
        self.halfPrecisionSkips = halfPrecisionSkips
        self.itemByItemMinimumPixels = itemByItemMinimumPixels
    }

    /// The whole batch at once, F32 skips: bit-exact with diffusers' computation order.
    public static let fastest = UNetMemoryMode(itemByItem: false, halfPrecisionSkips: false)
    /// Item by item with F16 skips: about half the activation memory.
    public static let compact = UNetMemoryMode(itemByItem: true, halfPrecisionSkips: true)

    public var description: String {
        self == .fastest ? "whole batch" : self == .compact ? "item by item, F16 skips"
            : "\(itemByItem ? "item by item" : "whole batch"), \(halfPrecisionSkips ? "F16" : "F32") skips"
    }
}

/// One skip connection between the down and up paths: a map per lane, kept as F32 or as F16 bits. F16 bits
/// are packed two to a float slot of a `Tensor`, so they come from the tensor pool and count in its footprint.
struct SkipConnection {
    private var full: [Tensor]
    private var half: [(shape: [Int], bits: Tensor)]

    init(_ lanes: [Tensor], halfPrecision: Bool) {
        if halfPrecision {
            full = []
            half = lanes.map { ($0.shape, SkipConnection.toHalf($0)) }
        } else {
            full = lanes
            half = []
        }
    }

    /// (height, width) of the maps.
    var spatialSize: (Int, Int) {
        let shape = full.first?.shape ?? half.first?.shape ?? [0, 0, 0, 0]
        return (shape[2], shape[3])
    }

    /// Lane i as F32, released from this connection.
    mutating func take(lane i: Int) -> Tensor {
        if !full.isEmpty { return Pipeline.take(&full[i]) }
        let shape = half[i].shape
        let bits = Pipeline.take(&half[i].bits)
        var out = Tensor(uninitialized: shape)
        let count = out.count
        bits.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                guard let s = src.baseAddress, let d = dst.baseAddress else { return }
                if ck_dequantize(TensorType.f16.rawValue, s, Int64(count), d) != 0 {
                    s.withMemoryRebound(to: UInt16.self, capacity: count) { h in
                        for j in 0..<count { d[j] = Float32Conversion.halfToFloat(h[j]) }
                    }
                }
            }
        }
        return out
    }

    /// F32 → IEEE binary16 bits (rounded to nearest even), two to each float slot of the result.
    static func toHalf(_ values: Tensor) -> Tensor {
        var bits = Tensor(uninitialized: [(values.count + 1) / 2])
        bits.withUnsafeMutableBufferPointer { dst in
            dst.baseAddress!.withMemoryRebound(to: UInt16.self, capacity: values.count) { h in
                values.withUnsafeBufferPointer { src in
                    for j in 0..<src.count { h[j] = Float32Conversion.floatToHalf(src[j]) }
                }
            }
        }
        return bits
    }
}

/// Moves a tensor out of a variable, leaving it empty, so its storage is freed as soon as the taker is done.
func take(_ t: inout Tensor) -> Tensor {
    let value = t
    t = Tensor(zeros: [0])
    return value
}
