// UNet: diffusers' UNet2DConditionModel forward for SD 1.x / 2.x (positional time embedding,
// CrossAttn/plain down and up blocks, cross-attention mid block), built from its config.json.

import CKernels
import Foundation
import MMapWeights
import TiledKernels

public struct UNet {
    public let config: UNetConfig

    /// The network as one list of blocks in execution order: the forward pass walks it, the weight streamer
    /// streams its groups, and the memory planner sums its declared bytes (see `UNetBlock`).
    let blocks: [UNetBlock]
    let streamer: WeightStreamer

    /// residency: how weights stay in memory; `.streamed` keeps about one resnet or transformer resident.
    public init(config: UNetConfig, weights w: WeightProvider, residency: WeightResidency = .resident,
                file: String = "unet/config.json") throws {
        self.config = config
        blocks = try UNet.layout(config, file: file).map { try UNetBlock(binding: $0, weights: w, config: config) }
        streamer = WeightStreamer(blocks: blocks.map(\.groups), residency: residency)
    }

    /// The UNet's list of blocks as its config describes it, in execution order: what `init` binds to weights
    /// (one `UNetBlock` per entry) and what the memory planner walks without weights.
    static func layout(_ config: UNetConfig, file: String = "unet/config.json") throws -> [UNetBlockLayout] {
        try config.validate(file: file)
        let levels = config.blockOutChannels.count
        let channels = config.blockOutChannels
        let heads = try (config.numAttentionHeads ?? config.attentionHeadDim)
            .expanded(levels: levels, field: "attention_head_dim", file: file)
        let contextDims = try config.crossAttentionDim.expanded(levels: levels, field: "cross_attention_dim", file: file)
        let layersPerBlock = try config.layersPerBlock.expanded(levels: levels, field: "layers_per_block", file: file)
        let transformerLayers = try config.transformerLayersPerBlock
            .expanded(levels: levels, field: "transformer_layers_per_block", file: file)
        let timeDim = channels[0] * 4

        var blocks: [UNetBlockLayout] = [
            UNetBlockLayout(.timeEmbedding(channels: channels[0], timeDim: timeDim)),
            UNetBlockLayout(.convIn(in: config.inChannels, out: channels[0], kernel: config.convInKernel), keepsSkip: true),
        ]
        func transformer(_ p: String, _ c: Int, level: Int) -> UNetBlockLayout.Kind {
            .transformer(prefix: p, channels: c, heads: heads[level], layers: transformerLayers[level],
                         contextDim: contextDims[level])
        }

        var outC = channels[0]
        for (i, type) in config.downBlockTypes.enumerated() {
            let inC = outC
            outC = channels[i]
            let p = "down_blocks.\(i)"
            let hasAttention = type == "CrossAttnDownBlock2D"
            for j in 0..<layersPerBlock[i] {
                // The skip connection is the output of the resnet, or of the transformer after it.
                blocks.append(UNetBlockLayout(.resnet(prefix: "\(p).resnets.\(j)", in: j == 0 ? inC : outC, out: outC,
                                                      timeDim: timeDim, outputScale: 1, skipChannels: nil),
                                              keepsSkip: !hasAttention))
                if hasAttention {
                    blocks.append(UNetBlockLayout(transformer("\(p).attentions.\(j)", outC, level: i), keepsSkip: true))
                }
            }
            if i < levels - 1 {
                blocks.append(UNetBlockLayout(.downsample(prefix: "\(p).downsamplers.0", channels: outC),
                                              keepsSkip: true))
            }
        }

        let midC = channels[levels - 1]
        if config.midBlockType != nil {
            func midResnet(_ k: Int) -> UNetBlockLayout {
                UNetBlockLayout(.resnet(prefix: "mid_block.resnets.\(k)", in: midC, out: midC, timeDim: timeDim,
                                        outputScale: config.midBlockScaleFactor, skipChannels: nil))
            }
            blocks.append(midResnet(0))
            blocks.append(UNetBlockLayout(transformer("mid_block.attentions.0", midC, level: levels - 1)))
            blocks.append(midResnet(1))
        }

        let reversedChannels = Array(channels.reversed())
        var upOut = reversedChannels[0]
        for (i, type) in config.upBlockTypes.enumerated() {
            let prevC = upOut
            upOut = reversedChannels[i]
            let inC = reversedChannels[min(i + 1, levels - 1)]
            let level = levels - 1 - i  // up block i mirrors down level (levels - 1 - i)
            let layers = layersPerBlock[level] + 1
            let p = "up_blocks.\(i)"
            let hasAttention = type == "CrossAttnUpBlock2D"
            for j in 0..<layers {
                let skipC = j == layers - 1 ? inC : upOut
                let resIn = j == 0 ? prevC : upOut
                blocks.append(UNetBlockLayout(.resnet(prefix: "\(p).resnets.\(j)", in: resIn + skipC, out: upOut,
                                                      timeDim: timeDim, outputScale: 1, skipChannels: skipC)))
                if hasAttention {
                    blocks.append(UNetBlockLayout(transformer("\(p).attentions.\(j)", upOut, level: level)))
                }
            }
            if i < levels - 1 {
                blocks.append(UNetBlockLayout(.upsample(prefix: "\(p).upsamplers.0", channels: upOut)))
            }
        }
        blocks.append(UNetBlockLayout(.out(in: channels[0], out: config.outChannels, kernel: config.convOutKernel)))
        return blocks
    }

    /// Bytes of the largest weight group: what `.streamed` keeps resident at a time (plus the next one).
    public var largestGroupBytes: Int { streamer.largestGroupBytes }
    /// F32 bytes of the group with most (see `WeightFigures.unetLargestGroupF32Bytes`).
    var largestGroupF32Bytes: Int { streamer.largestGroupF32Bytes }
    /// The most bytes per value of a typed weight.
    var typedBytesPerValue: Double { streamer.typedBytesPerValue }

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
    /// limits: the kernels' scratch bounds for this evaluation (bound as `GemmLimits.current` while it runs; the
    /// products sum the same terms in the same order whatever the panels, so only Winograd-or-im2col choices that
    /// depend on them can change results, by rounding).
    public func callAsFunction(_ sample: Tensor, timestep: Float, context: Tensor,
                               memory: UNetMemoryMode = .fastest, limits: GemmLimits = .standard) -> Tensor {
        GemmLimits.$current.withValue(limits) {
            forward(sample, timestep: timestep, context: context, memory: memory)
        }
    }

    /// The forward pass: walks `blocks` in order, each running its weight groups through the streamer by
    /// identity; a block that keeps a skip connection stores its output. `beforeBlock(i)` and `afterBlock(i)`
    /// bracket block i, its skip included (the planner-invariant tests read the tensors' high-water mark there).
    func forward(_ sample: Tensor, timestep: Float, context: Tensor, memory: UNetMemoryMode,
                 beforeBlock: (Int) -> Void = { _ in }, afterBlock: (Int) -> Void = { _ in }) -> Tensor {
        var state = UNetRunState(sample: sample, timestep: timestep, context: context, memory: memory, config: config)
        for (index, block) in blocks.enumerated() {
            beforeBlock(index)
            block.forward(&state, run: GroupRunner(streamer: streamer, block: index))
            if block.layout.keepsSkip {
                state.skips.append(SkipConnection(state.x, halfPrecision: memory.halfPrecisionSkips))
            }
            afterBlock(index)
        }
        return state.x[0]
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
