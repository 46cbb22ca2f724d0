// Building blocks shared by the UNet and the VAE decoder, after diffusers' ResnetBlock2D,
// Transformer2DModel / BasicTransformerBlock, Downsample2D and Upsample2D.

import TiledKernels

/// diffusers ResnetBlock2D (time_embedding_norm "default", output_scale_factor 1).
struct ResnetBlock: WeightGroup {
    let norm1: GroupNormLayer
    let conv1: Conv2d
    let timeProjection: Linear?
    let norm2: GroupNormLayer
    let conv2: Conv2d
    let shortcut: Conv2d?
    let outputScale: Float

    init(_ w: WeightProvider, _ p: String, in inC: Int, out outC: Int, timeChannels: Int?, groups: Int,
         eps: Float, outputScale: Float = 1) throws {
        norm1 = try GroupNormLayer(w, "\(p).norm1", channels: inC, groups: groups, eps: eps)
        conv1 = try Conv2d(w, "\(p).conv1", in: inC, out: outC, kernel: 3)
        timeProjection = try timeChannels.map { try Linear(w, "\(p).time_emb_proj", in: $0, out: outC) }
        norm2 = try GroupNormLayer(w, "\(p).norm2", channels: outC, groups: groups, eps: eps)
        conv2 = try Conv2d(w, "\(p).conv2", in: outC, out: outC, kernel: 3)
        shortcut = inC != outC ? try Conv2d(w, "\(p).conv_shortcut", in: inC, out: outC, kernel: 1) : nil
        self.outputScale = outputScale
    }

    var weights: [Weight] {
        norm1.weights + conv1.weights + (timeProjection?.weights ?? []) + norm2.weights + conv2.weights
            + (shortcut?.weights ?? [])
    }

    /// Streaming groups in the order `forward` uses them: the first half (norm1, conv1, time projection and
    /// the shortcut, so the input can be dropped once both have read it), then norm2 and conv2.
    var groups: [[Weight]] {
        [norm1.weights + conv1.weights + (timeProjection?.weights ?? []) + (shortcut?.weights ?? []),
         norm2.weights + conv2.weights]
    }

    /// The one forward pass (UNet and VAE): runs `lanes` inputs (the whole batch as one lane, or one lane per
    /// batch item) through each of `groups` in turn, so a group's weights stream in once for all lanes while the
    /// temporaries exist for one lane at a time. `input(i)` hands over lane i's input [n, C, H, W] when its turn
    /// comes (so a concatenation is built just in time); the shortcut reads it first and, unless the caller
    /// still holds it, it is freed before conv1 runs. siluTimeEmbedding: one silu(temb) [n, T] per lane (nil for
    /// the VAE). `run(part)` streams group `part` of `groups`. Values as diffusers' ResnetBlock2D.
    func forward(lanes: Int, input: (Int) -> Tensor, siluTimeEmbedding: [Tensor]?,
                 run: GroupRunner) -> [Tensor] {
        var hidden = [Tensor](repeating: Tensor(zeros: [0]), count: lanes)
        var residual = [Tensor](repeating: Tensor(zeros: [0]), count: lanes)
        run(0) {
            for i in 0..<lanes {
                var x = input(i)
                residual[i] = shortcut.map { $0(x) } ?? x
                var h = norm1(take(&x), silu: true)
                h = conv1(take(&h))
                if let proj = timeProjection, let t = siluTimeEmbedding?[i] {
                    h = addChannelBias(take(&h), proj(t))
                }
                hidden[i] = h
            }
        }
        return run(1) {
            (0..<lanes).map { i in
                var h = norm2(take(&hidden[i]), silu: true)
                h = conv2(take(&h))
                var out = add(take(&residual[i]), h)
                if outputScale != 1 { out = scale(out, by: 1 / outputScale) }
                return out
            }
        }
    }
}

/// diffusers BasicTransformerBlock (layer_norm, self-attention, cross-attention, GEGLU feed-forward).
struct TransformerBlock: WeightGroup {
    let norm1: LayerNormLayer
    let selfAttention: MultiHeadAttention
    let norm2: LayerNormLayer
    let crossAttention: MultiHeadAttention
    let norm3: LayerNormLayer
    let ffIn: Linear
    let ffOut: Linear

    init(_ w: WeightProvider, _ p: String, dim: Int, heads: Int, contextDim: Int) throws {
        func attn(_ name: String, kvDim: Int) throws -> MultiHeadAttention {
            MultiHeadAttention(
                q: try Linear(w, "\(p).\(name).to_q", in: dim, out: dim, bias: false),
                k: try Linear(w, "\(p).\(name).to_k", in: kvDim, out: dim, bias: false),
                v: try Linear(w, "\(p).\(name).to_v", in: kvDim, out: dim, bias: false),
                out: try Linear(w, "\(p).\(name).to_out.0", in: dim, out: dim),
                heads: heads)
        }
        norm1 = try LayerNormLayer(w, "\(p).norm1", dim: dim, eps: 1e-5)
        selfAttention = try attn("attn1", kvDim: dim)
        norm2 = try LayerNormLayer(w, "\(p).norm2", dim: dim, eps: 1e-5)
        crossAttention = try attn("attn2", kvDim: contextDim)
        norm3 = try LayerNormLayer(w, "\(p).norm3", dim: dim, eps: 1e-5)
        ffIn = try Linear(w, "\(p).ff.net.0.proj", in: dim, out: dim * 8)
        ffOut = try Linear(w, "\(p).ff.net.2", in: dim * 4, out: dim)
    }

    var weights: [Weight] {
        norm1.weights + selfAttention.weights + norm2.weights + crossAttention.weights + norm3.weights
            + ffIn.weights + ffOut.weights
    }

    /// Tokens per feed-forward tile: the GEGLU hidden layer (8 × dim wide) exists for this many tokens at a
    /// time (256 × 2560 floats = 2.6 MB at SD's top level, against 84 MB for a guided 64×64 batch at once).
    static let feedForwardTile = 256

    /// Streaming groups in execution order: self-attention, cross-attention, feed-forward.
    var groups: [[Weight]] {
        [norm1.weights + selfAttention.weights, norm2.weights + crossAttention.weights,
         norm3.weights + ffIn.weights + ffOut.weights]
    }

    /// x: [B, T, dim]; context: [B, S, contextDim].
    func callAsFunction(_ x: Tensor, context: Tensor) -> Tensor {
        var lanes = [x]
        forward(&lanes, contexts: [context], run: .unstreamed, firstPart: 0)
        return lanes[0]
    }

    /// Runs each lane's tokens [n, T, dim] (with its context [n, S, contextDim]) through self-attention,
    /// cross-attention and the feed-forward, one streaming group at a time, one lane at a time within it.
    /// `run(firstPart + k)` streams this block's group k (of `groups`) within the enclosing block's groups.
    func forward(_ lanes: inout [Tensor], contexts: [Tensor], run: GroupRunner, firstPart: Int) {
        run(firstPart) {
            for i in lanes.indices { lanes[i] = add(lanes[i], selfAttention(norm1(lanes[i]))) }
        }
        run(firstPart + 1) {
            for i in lanes.indices {
                lanes[i] = add(lanes[i], crossAttention(norm2(lanes[i]), context: contexts[i]))
            }
        }
        run(firstPart + 2) {
            for i in lanes.indices { lanes[i] = feedForward(take(&lanes[i])) }
        }
    }

    /// h + FF(norm3(h)), computed over tiles of tokens so the 8×-wide hidden layer stays small, adding into
    /// h's own storage when the caller hands it over. Every op is row-wise, so tiling gives bit-identical results.
    func feedForward(_ h: consuming Tensor) -> Tensor {
        let dim = h.shape[h.shape.count - 1]
        let rows = h.count / dim
        let tile = TransformerBlock.feedForwardTile
        if rows <= tile { return add(h, ffOut(geglu(ffIn(norm3(h))))) }
        var out = h
        var start = 0
        while start < rows {
            let n = min(tile, rows - start)
            // Rows from `start` on are still h's own values: each tile only adds into its own rows.
            let chunk = out.reshaped([rows, dim]).slice(batch: start..<(start + n))
            let y = ffOut(geglu(ffIn(norm3(chunk))))
            out.withUnsafeMutableBufferPointer { o in
                y.withUnsafeBufferPointer { src in
                    for i in 0..<(n * dim) { o[start * dim + i] += src[i] }
                }
            }
            start += n
        }
        return out
    }
}

/// diffusers Transformer2DModel over an NCHW feature map (conv or linear projections).
struct SpatialTransformer: WeightGroup {
    let norm: GroupNormLayer
    let linearProjection: Bool
    let projInConv: Conv2d?
    let projInLinear: Linear?
    let blocks: [TransformerBlock]
    let projOutConv: Conv2d?
    let projOutLinear: Linear?

    init(_ w: WeightProvider, _ p: String, channels: Int, heads: Int, layers: Int, contextDim: Int,
         groups: Int, linearProjection: Bool) throws {
        guard heads > 0, channels % heads == 0 else {
            throw PipelineError.badWeights(component: p, reason: "\(channels) channels do not split into \(heads) heads")
        }
        norm = try GroupNormLayer(w, "\(p).norm", channels: channels, groups: groups, eps: 1e-6)
        self.linearProjection = linearProjection
        if linearProjection {
            projInLinear = try Linear(w, "\(p).proj_in", in: channels, out: channels)
            projOutLinear = try Linear(w, "\(p).proj_out", in: channels, out: channels)
            projInConv = nil
            projOutConv = nil
        } else {
            projInConv = try Conv2d(w, "\(p).proj_in", in: channels, out: channels, kernel: 1)
            projOutConv = try Conv2d(w, "\(p).proj_out", in: channels, out: channels, kernel: 1)
            projInLinear = nil
            projOutLinear = nil
        }
        blocks = try (0..<layers).map {
            try TransformerBlock(w, "\(p).transformer_blocks.\($0)", dim: channels, heads: heads, contextDim: contextDim)
        }
    }

    var weights: [Weight] {
        norm.weights + (projInConv?.weights ?? []) + (projInLinear?.weights ?? []) + blocks.flatMap(\.weights)
            + (projOutConv?.weights ?? []) + (projOutLinear?.weights ?? [])
    }

    /// Streaming groups in execution order: input projection, each block's groups, output projection.
    var groups: [[Weight]] {
        [norm.weights + (projInConv?.weights ?? []) + (projInLinear?.weights ?? [])] + blocks.flatMap(\.groups)
            + [(projOutConv?.weights ?? []) + (projOutLinear?.weights ?? [])]
    }

    /// x: [N, C, H, W]; context: [N, S, contextDim].
    func callAsFunction(_ x: Tensor, context: Tensor) -> Tensor {
        var lanes = [x]
        forward(&lanes, contexts: [context], run: .unstreamed)
        return lanes[0]
    }

    /// Replaces each lane's map [n, C, H, W] by the transformer's output; contexts: one [n, S, contextDim]
    /// per lane. Each streaming group runs every lane in turn (see ResnetBlock.forward); `run(part)` streams
    /// group `part` of `groups`.
    func forward(_ lanes: inout [Tensor], contexts: [Tensor], run: GroupRunner) {
        var tokens = [Tensor](repeating: Tensor(zeros: [0]), count: lanes.count)
        run(0) {
            for i in lanes.indices {
                let normed = norm(lanes[i])
                if let conv = projInConv {
                    tokens[i] = nchwToTokens(conv(normed))
                } else if let lin = projInLinear {
                    tokens[i] = lin(nchwToTokens(normed))
                } else {
                    tokens[i] = normed
                }
            }
        }
        for (k, block) in blocks.enumerated() {
            block.forward(&tokens, contexts: contexts, run: run, firstPart: 1 + 3 * k)
        }
        run(1 + 3 * blocks.count) {
            for i in lanes.indices {
                let height = lanes[i].shape[2], width = lanes[i].shape[3]
                var h = take(&tokens[i])
                if let lin = projOutLinear {
                    h = tokensToNCHW(lin(take(&h)), height: height, width: width)
                } else if let conv = projOutConv {
                    h = conv(tokensToNCHW(take(&h), height: height, width: width))
                }
                lanes[i] = add(h, lanes[i])
            }
        }
    }
}

/// diffusers Downsample2D with a conv (stride 2).
struct Downsample: WeightGroup {
    let conv: Conv2d

    init(_ w: WeightProvider, _ p: String, channels: Int, padding: Int) throws {
        guard padding == 1 else {
            throw PipelineError.unsupported(file: p, feature: "downsample_padding \(padding)")
        }
        conv = try Conv2d(w, "\(p).conv", in: channels, out: channels, kernel: 3, stride: 2, padding: padding)
    }

    var weights: [Weight] { conv.weights }

    func callAsFunction(_ x: Tensor) -> Tensor { conv(x) }
}

/// diffusers Upsample2D with a conv: nearest-neighbour resize (to `size`, or 2×), then 3×3 conv.
struct Upsample: WeightGroup {
    let conv: Conv2d

    init(_ w: WeightProvider, _ p: String, channels: Int) throws {
        conv = try Conv2d(w, "\(p).conv", in: channels, out: channels, kernel: 3)
    }

    var weights: [Weight] { conv.weights }

    func callAsFunction(_ x: Tensor, size: (height: Int, width: Int)? = nil) -> Tensor {
        let target = size ?? (x.shape[2] * 2, x.shape[3] * 2)
        if target.height == x.shape[2] * 2 && target.width == x.shape[3] * 2 {
            return conv(upsampleNearest2x(x))
        }
        return conv(upsampleNearest(x, height: target.height, width: target.width))
    }
}
