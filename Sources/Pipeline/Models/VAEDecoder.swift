// VAEDecoder: diffusers' AutoencoderKL decode path (post_quant_conv, Decoder with its attention
// mid block and UpDecoderBlock2D levels), latents → RGB in [-1, 1].

import MMapWeights
import TiledKernels

public struct VAEDecoder {
    public let config: VAEConfig

    /// The decoder as one list of blocks in execution order: the forward pass walks it, the weight streamer
    /// streams its groups by identity, and the memory estimates sum its declared bytes (see `VAEBlockLayout`).
    let blocks: [VAEBlock]
    let streamer: WeightStreamer

    public init(config: VAEConfig, weights w: WeightProvider, residency: WeightResidency = .resident,
                file: String = "vae/config.json") throws {
        try config.validate(file: file)
        self.config = config
        blocks = try VAEDecoder.layout(config).map { try VAEBlock(binding: $0, weights: w, config: config) }
        streamer = WeightStreamer(blocks: blocks.map { [$0.weights] }, residency: residency)
    }

    /// The decoder's list of blocks as its config describes it, in execution order (each block one weight group).
    static func layout(_ config: VAEConfig) -> [VAEBlockLayout] {
        let channels = config.blockOutChannels
        let levels = channels.count
        let top = channels[levels - 1]
        var blocks: [VAEBlockLayout] = [
            .convIn(latent: config.latentChannels, out: top, postQuant: config.usePostQuantConv),
            .resnet(prefix: "decoder.mid_block.resnets.0", in: top, out: top),
        ]
        if config.midBlockAddAttention { blocks.append(.attention(channels: top)) }
        blocks.append(.resnet(prefix: "decoder.mid_block.resnets.1", in: top, out: top))
        let reversed = Array(channels.reversed())
        var outC = reversed[0]
        for i in 0..<levels {
            let prevC = outC
            outC = reversed[i]
            for j in 0...config.layersPerBlock {
                blocks.append(.resnet(prefix: "decoder.up_blocks.\(i).resnets.\(j)", in: j == 0 ? prevC : outC, out: outC))
            }
            if i < levels - 1 { blocks.append(.upsample(prefix: "decoder.up_blocks.\(i).upsamplers.0", channels: outC)) }
        }
        blocks.append(.out(in: channels[0], out: config.outChannels))
        return blocks
    }

    /// z: [N, latent_channels, h, w] (already divided by scaling_factor) → image [N, 3, h·f, w·f] in about [-1, 1].
    public func callAsFunction(_ z: Tensor) -> Tensor {
        forward(z)
    }

    /// Walks `blocks`, each running its weight group through the streamer by identity; `beforeBlock(i)` and
    /// `afterBlock(i)` bracket block i (the planner-invariant tests read the tensors' high-water mark there).
    func forward(_ z: Tensor, beforeBlock: (Int) -> Void = { _ in }, afterBlock: (Int) -> Void = { _ in }) -> Tensor {
        var x = z
        for (index, block) in blocks.enumerated() {
            beforeBlock(index)
            streamer.run(WeightGroupID(block: index, part: 0)) { block.forward(&x) }
            afterBlock(index)
        }
        return x
    }

    /// Bytes of the largest weight group (what `.streamed` keeps resident at a time, plus the next).
    public var largestGroupBytes: Int { streamer.largestGroupBytes }

    /// Bytes of all weights as stored.
    public var totalWeightBytes: Int { streamer.totalBytes }

    /// Whether every conv weight wider than 1×1 is quantized or 16-bit (each dequantized or transformed into the
    /// caller's scratch arena; see `decodeBytes`' `typedWeights`). A 1×1 conv with an F32 weight takes no arena at
    /// all (a plain GEMM), so it leaves the arenas' roles alone.
    public var convWeightsTyped: Bool {
        blocks.flatMap(\.weights).filter { $0.shape.count == 4 && $0.shape[2] * $0.shape[3] > 1 }
            .allSatisfy { $0.type != .f32 }
    }

    /// The most bytes of tensors alive at once in one decode of [batch, latent_channels, h, w] latents (the
    /// caller's latents not included): the largest of the blocks' declared peaks (`VAEBlockLayout.peakBytes`).
    static func plannedTensorBytes(_ layout: [VAEBlockLayout], batch: Int, latentHeight: Int, latentWidth: Int)
        -> (peak: Int, perBlock: [Int]) {
        var walk = (channels: 0, height: latentHeight, width: latentWidth)
        let perBlock = layout.map { $0.peakBytes(batch: batch, &walk) }
        return (perBlock.max() ?? 0, perBlock)
    }

    /// The kernel scratch of one decode of [batch, latent_channels, h, w] latents, block by block (`perBlock[i]`:
    /// block i's alone) and for the whole walk (`whole`: the arenas' roles carried across blocks, see
    /// `VAEScratch`). Walks `layout` as the forward pass walks the blocks.
    static func plannedScratch(_ layout: [VAEBlockLayout], batch: Int, latentHeight: Int, latentWidth: Int,
                               weightType: TensorType) -> (whole: VAEScratch, perBlock: [VAEScratch]) {
        var walk = (channels: layout.first.map { if case .convIn(let l, _, _) = $0 { l } else { 0 } } ?? 0,
                    height: latentHeight, width: latentWidth)
        var whole = VAEScratch()
        let perBlock = layout.map { block in
            let s = block.scratch(batch: batch, walk, weightType: weightType)
            _ = block.peakBytes(batch: batch, &walk)
            whole.add(s)
            return s
        }
        return (whole, perBlock)
    }
}

/// One block of the VAE decoder as its config describes it.
enum VAEBlockLayout: Sendable, Equatable {
    /// post_quant_conv (when the config has it) and decoder.conv_in.
    case convIn(latent: Int, out: Int, postQuant: Bool)
    case resnet(prefix: String, in: Int, out: Int)
    /// The mid block's single-head self-attention with its group norm.
    case attention(channels: Int)
    /// Nearest 2× upsampling, then a 3×3 conv.
    case upsample(prefix: String, channels: Int)
    /// conv_norm_out + SiLU, conv_out.
    case out(in: Int, out: Int)

    /// The most bytes of tensors alive at once while this block runs on maps of `walk`'s size, the block's
    /// input included, the caller's latents not; advances `walk`. Derived from `VAEBlock.forward` op by op, with
    /// the lifetimes of `UNetBlockLayout.peakBytes` (the VAE hands each block its input; the input stays alive
    /// until the block's result replaces it, except a resnet's, freed after norm1).
    func peakBytes(batch n: Int, _ walk: inout (channels: Int, height: Int, width: Int)) -> Int {
        let unit = n * walk.height * walk.width * 4  // one channel of the batch, in bytes
        switch self {
        case .convIn(let latent, let out, let postQuant):
            walk.channels = out
            return (postQuant ? latent : 0) * unit + out * unit
        case .resnet(_, let inC, let outC):
            let shortcut = inC != outC
            let residual = shortcut ? outC : inC
            walk.channels = outC
            return max((inC + (shortcut ? outC : 0) + inC) * unit,  // shortcut(x), norm1(x)
                       (residual + inC + outC) * unit,  // conv1(norm1(x))
                       (residual + 2 * outC) * unit)  // norm2, conv2, residual add
        case .attention(let c):
            // x with norm(x) and its tokens, then the tokens with q, k, v and the attention output.
            return max(3 * c * unit, 6 * c * unit)
        case .upsample(_, let c):
            walk.height *= 2
            walk.width *= 2
            return c * unit + 8 * c * unit  // x, its 2× copy, the conv output
        case .out(let inC, let outC):
            walk.channels = outC
            return (2 * inC + outC) * unit  // x, norm(x), conv_out
        }
    }
}

/// Kernel scratch of a run of kernels, by where it lives. The scratch pool hands out its arenas last-in first-out, and
/// a call checks out at most `arenas` at once (its caller-held one, if any, and one per concurrent unit), so the
/// same `arenas` arenas serve every call. Units check theirs back in in the order they finish, so they may trade
/// places among themselves; the caller's arena, checked in last, is the next call's first checkout. When every call
/// that takes arenas takes a caller-held one first (`callerFirst`: typed weights are dequantized or transformed into
/// it), that arena only ever serves callers and the others only units: the arenas hold at most `largestCaller` plus
/// `largestUnit` per further arena. Otherwise any arena may serve any role and grow to the largest request:
/// `arenas × max(largestCaller, largestUnit)`. Heap scratch (a direct conv's dequantized weight, attention's score
/// tiles) comes on top while it lives.
struct VAEScratch: Sendable, Equatable {
    var largestCaller = 0
    var largestUnit = 0
    /// The most arenas one call holds at once.
    var arenas = 0
    var callerFirst = true
    var heap = 0

    /// The arenas' bound.
    var arenaBytes: Int {
        callerFirst ? largestCaller + largestUnit * max(arenas - 1, 0) : arenas * max(largestCaller, largestUnit)
    }
    var bytes: Int { arenaBytes + heap }

    mutating func add(_ conv: ConvScratch) {
        let units = conv.perUnit > 0 ? conv.concurrentUnits : 0
        if conv.caller == 0 && units > 0 { callerFirst = false }
        largestCaller = max(largestCaller, conv.caller)
        largestUnit = max(largestUnit, units > 0 ? conv.perUnit : 0)
        arenas = max(arenas, (conv.caller > 0 ? 1 : 0) + units)
        heap = max(heap, conv.heap)
    }

    mutating func add(_ other: VAEScratch) {
        largestCaller = max(largestCaller, other.largestCaller)
        largestUnit = max(largestUnit, other.largestUnit)
        arenas = max(arenas, other.arenas)
        callerFirst = callerFirst && other.callerFirst
        heap = max(heap, other.heap)
    }
}

extension VAEBlockLayout {
    /// The block's kernel scratch on maps of `walk`'s size (the block's input; `walk` is not advanced), from each
    /// of its convolutions' `conv2dScratch` and, for the attention, its products' dequantized weights
    /// (`withPreparedWeight`: a typed weight of at most 4 Mi values is dequantized whole into the caller's arena)
    /// and one online-softmax tile per thread (`attentionScratchBytes`). `weightType`: the
    /// weights' stored type (the planner assumes a typed one: an F32 weight needs no dequantized copy).
    func scratch(batch n: Int, _ walk: (channels: Int, height: Int, width: Int), weightType: TensorType)
        -> VAEScratch {
        var s = VAEScratch()
        let h = walk.height, w = walk.width
        func conv(_ c: Int, _ o: Int, _ k: Int, _ height: Int, _ width: Int) {
            s.add(conv2dScratch(n: n, c: c, h: height, w: width, o: o, kh: k, kw: k, padding: k / 2,
                                weightType: weightType))
        }
        switch self {
        case .convIn(let latent, let out, let postQuant):
            if postQuant { conv(latent, latent, 1, h, w) }
            conv(latent, out, 3, h, w)
        case .resnet(_, let inC, let outC):
            conv(inC, outC, 3, h, w)
            conv(outC, outC, 3, h, w)
            if inC != outC { conv(inC, outC, 1, h, w) }
        case .attention(let c):
            if weightType != .f32 && c * c <= 4 << 20 {
                s.add(ConvScratch(caller: ((c * c + 16383) & ~16383) * MemoryLayout<Float>.stride, perUnit: 0,
                                  concurrentUnits: 0))
            }
            s.heap = attentionScratchBytes(batch: n, tq: h * w, tk: h * w, channels: c, heads: 1)
        case .upsample(_, let c):
            conv(c, c, 3, 2 * h, 2 * w)
        case .out(let inC, let outC):
            conv(inC, outC, 3, h, w)
        }
        return s
    }
}

/// A VAE block bound to its weights.
struct VAEBlock {
    enum Layers {
        case convIn(Conv2d?, Conv2d)
        case resnet(ResnetBlock)
        case attention(GroupNormLayer, MultiHeadAttention)
        case upsample(Upsample)
        case out(GroupNormLayer, Conv2d)
    }

    let layout: VAEBlockLayout
    let layers: Layers

    init(binding layout: VAEBlockLayout, weights w: WeightProvider, config: VAEConfig) throws {
        self.layout = layout
        let groups = config.normNumGroups
        let eps: Float = 1e-6
        switch layout {
        case .convIn(let latent, let out, let postQuant):
            layers = .convIn(postQuant ? try Conv2d(w, "post_quant_conv", in: latent, out: latent, kernel: 1) : nil,
                             try Conv2d(w, "decoder.conv_in", in: latent, out: out, kernel: 3))
        case .resnet(let p, let inC, let outC):
            layers = .resnet(try ResnetBlock(w, p, in: inC, out: outC, timeChannels: nil, groups: groups, eps: eps))
        case .attention(let top):
            let p = "decoder.mid_block.attentions.0"
            // Current diffusers names (to_q …); checkpoints saved before diffusers 0.14 use query/key/value/proj_attn.
            let legacy = !w.has("\(p).to_q.weight") && w.has("\(p).query.weight")
            layers = .attention(
                try GroupNormLayer(w, "\(p).group_norm", channels: top, groups: groups, eps: eps),
                MultiHeadAttention(
                    q: try Linear(w, "\(p).\(legacy ? "query" : "to_q")", in: top, out: top),
                    k: try Linear(w, "\(p).\(legacy ? "key" : "to_k")", in: top, out: top),
                    v: try Linear(w, "\(p).\(legacy ? "value" : "to_v")", in: top, out: top),
                    out: try Linear(w, "\(p).\(legacy ? "proj_attn" : "to_out.0")", in: top, out: top),
                    heads: 1))
        case .upsample(let p, let c):
            layers = .upsample(try Upsample(w, p, channels: c))
        case .out(let inC, let outC):
            layers = .out(try GroupNormLayer(w, "decoder.conv_norm_out", channels: inC, groups: groups, eps: eps),
                          try Conv2d(w, "decoder.conv_out", in: inC, out: outC, kernel: 3))
        }
    }

    /// The block's weights: one streaming group.
    var weights: [Weight] {
        switch layers {
        case .convIn(let pq, let conv): (pq?.weights ?? []) + conv.weights
        case .resnet(let r): r.weights
        case .attention(let norm, let attn): norm.weights + attn.weights
        case .upsample(let u): u.weights
        case .out(let norm, let conv): norm.weights + conv.weights
        }
    }

    /// Replaces `x` by the block's output.
    func forward(_ x: inout Tensor) {
        switch layers {
        case .convIn(let postQuant, let conv):
            x = conv(postQuant.map { $0(x) } ?? x)
        case .resnet(let resnet):
            // Handed over: the shortcut reads it first, then it is freed after norm1.
            x = resnet.forward(lanes: 1, input: { _ in take(&x) }, siluTimeEmbedding: nil, run: .unstreamed)[0]
        case .attention(let norm, let attn):
            let h = x.shape[2], w = x.shape[3]
            let tokens = nchwToTokens(norm(x))
            x = TiledKernels.add(x, tokensToNCHW(attn(tokens), height: h, width: w))
        case .upsample(let us):
            x = us(x)
        case .out(let norm, let conv):
            x = conv(norm(x, silu: true))
        }
    }
}
