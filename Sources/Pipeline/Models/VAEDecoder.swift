// VAEDecoder: diffusers' AutoencoderKL decode path (post_quant_conv, Decoder with its attention
// mid block and UpDecoderBlock2D levels), latents → RGB in [-1, 1].

import TiledKernels

public struct VAEDecoder {
    public let config: VAEConfig

    private struct UpLevel {
        let resnets: [ResnetBlock]
        let upsample: Upsample?
    }

    private let postQuantConv: Conv2d?
    private let convIn: Conv2d
    private let midResnets: [ResnetBlock]
    private let midNorm: GroupNormLayer?
    private let midAttention: MultiHeadAttention?
    private let up: [UpLevel]
    private let normOut: GroupNormLayer
    private let convOut: Conv2d
    private let streamer: WeightStreamer

    public init(config: VAEConfig, weights w: WeightProvider, residency: WeightResidency = .resident,
                file: String = "vae/config.json") throws {
        try config.validate(file: file)
        self.config = config
        let channels = config.blockOutChannels
        let levels = channels.count
        let groups = config.normNumGroups
        let eps: Float = 1e-6
        let latent = config.latentChannels
        let top = channels[levels - 1]

        postQuantConv = config.usePostQuantConv
            ? try Conv2d(w, "post_quant_conv", in: latent, out: latent, kernel: 1) : nil
        convIn = try Conv2d(w, "decoder.conv_in", in: latent, out: top, kernel: 3)
        midResnets = try (0..<2).map {
            try ResnetBlock(w, "decoder.mid_block.resnets.\($0)", in: top, out: top, timeChannels: nil,
                            groups: groups, eps: eps)
        }
        if config.midBlockAddAttention {
            let p = "decoder.mid_block.attentions.0"
            // Current diffusers names (to_q …); checkpoints saved before diffusers 0.14 use query/key/value/proj_attn.
            let legacy = !w.has("\(p).to_q.weight") && w.has("\(p).query.weight")
            midNorm = try GroupNormLayer(w, "\(p).group_norm", channels: top, groups: groups, eps: eps)
            midAttention = MultiHeadAttention(
                q: try Linear(w, "\(p).\(legacy ? "query" : "to_q")", in: top, out: top),
                k: try Linear(w, "\(p).\(legacy ? "key" : "to_k")", in: top, out: top),
                v: try Linear(w, "\(p).\(legacy ? "value" : "to_v")", in: top, out: top),
                out: try Linear(w, "\(p).\(legacy ? "proj_attn" : "to_out.0")", in: top, out: top),
                heads: 1)
        } else {
            midNorm = nil
            midAttention = nil
        }

        let reversed = Array(channels.reversed())
        var up: [UpLevel] = []
        var outC = reversed[0]
        for i in 0..<levels {
            let prevC = outC
            outC = reversed[i]
            let p = "decoder.up_blocks.\(i)"
            let resnets = try (0...config.layersPerBlock).map { j in
                try ResnetBlock(w, "\(p).resnets.\(j)", in: j == 0 ? prevC : outC, out: outC, timeChannels: nil,
                                groups: groups, eps: eps)
            }
            let upsample = i == levels - 1 ? nil : try Upsample(w, "\(p).upsamplers.0", channels: outC)
            up.append(UpLevel(resnets: resnets, upsample: upsample))
        }
        self.up = up
        normOut = try GroupNormLayer(w, "decoder.conv_norm_out", channels: channels[0], groups: groups, eps: eps)
        convOut = try Conv2d(w, "decoder.conv_out", in: channels[0], out: config.outChannels, kernel: 3)

        // Weight groups in the order callAsFunction visits them.
        var order: [[Weight]] = [(postQuantConv?.weights ?? []) + convIn.weights, midResnets[0].weights]
        if let norm = midNorm, let attn = midAttention { order.append(norm.weights + attn.weights) }
        order.append(midResnets[1].weights)
        for level in up {
            order += level.resnets.map(\.weights)
            if let u = level.upsample { order.append(u.weights) }
        }
        order.append(normOut.weights + convOut.weights)
        streamer = WeightStreamer(order: order, residency: residency)
    }

    /// z: [N, latent_channels, h, w] (already divided by scaling_factor) → image [N, 3, h·f, w·f] in about [-1, 1].
    public func callAsFunction(_ z: Tensor) -> Tensor {
        var x = streamer.run { convIn(postQuantConv.map { $0(z) } ?? z) }
        x = streamer.run { Self.resnet(midResnets[0], &x) }
        if let norm = midNorm, let attn = midAttention {
            x = streamer.run {
                let h = x.shape[2], w = x.shape[3]
                let tokens = nchwToTokens(norm(x))
                return TiledKernels.add(x, tokensToNCHW(attn(tokens), height: h, width: w))
            }
        }
        x = streamer.run { Self.resnet(midResnets[1], &x) }
        for level in up {
            for resnet in level.resnets { x = streamer.run { Self.resnet(resnet, &x) } }
            if let us = level.upsample { x = streamer.run { us(x) } }
        }
        return streamer.run { convOut(normOut(x, silu: true)) }
    }

    /// Runs `resnet` on `x`, handing it over (the shortcut reads it first, then it is freed after norm1).
    private static func resnet(_ resnet: ResnetBlock, _ x: inout Tensor) -> Tensor {
        resnet.forward(lanes: 1, input: { _ in take(&x) }, siluTimeEmbedding: nil, run: .unstreamed)[0]
    }

    /// Bytes of the largest weight group (what `.streamed` keeps resident at a time, plus the next).
    public var largestGroupBytes: Int { streamer.largestGroupBytes }

    /// Bytes of all weights as stored.
    public var totalWeightBytes: Int { streamer.totalBytes }
}
