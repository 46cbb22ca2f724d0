// Layers: the PyTorch modules the models are made of (Linear, Conv2d, GroupNorm, LayerNorm, Attention),
// each bound to its weights by its diffusers / transformers parameter name.

import TiledKernels

/// Where a model component's weights come from (a safetensors folder, a GGUF file, a test double).
public protocol WeightProvider: AnyObject {
    /// The F32 view of tensor `name`; when `shape` is given the stored shape must equal it.
    func weight(_ name: String, shape: [Int]?) throws -> Weight
    func has(_ name: String) -> Bool
}

/// torch.nn.Linear: weight [out, in], optional bias [out].
struct Linear {
    let weight: Weight
    let bias: Weight?

    init(_ w: WeightProvider, _ prefix: String, in inFeatures: Int, out outFeatures: Int, bias hasBias: Bool = true) throws {
        weight = try Linear.loadMatrix(w, "\(prefix).weight", out: outFeatures, in: inFeatures)
        bias = hasBias ? try w.weight("\(prefix).bias", shape: [outFeatures]) : nil
    }

    /// Loads [out, in]; also accepts a 1×1 conv's [out, in, 1, 1] (older VAE attention checkpoints).
    static func loadMatrix(_ w: WeightProvider, _ name: String, out: Int, in inFeatures: Int) throws -> Weight {
        let raw = try w.weight(name, shape: nil)
        if raw.shape == [out, inFeatures] { return raw }
        if raw.shape == [out, inFeatures, 1, 1] {
            return raw.reshaped([out, inFeatures])
        }
        throw PipelineError.badWeights(component: name, reason: "shape \(raw.shape), expected \([out, inFeatures])")
    }

    func callAsFunction(_ x: Tensor) -> Tensor { linear(x, weight: weight, bias: bias) }
}

/// torch.nn.Conv2d with square kernel, symmetric padding.
struct Conv2d {
    let weight: Weight
    let bias: Weight?
    let stride: Int
    let padding: Int

    init(_ w: WeightProvider, _ prefix: String, in inChannels: Int, out outChannels: Int, kernel: Int,
         stride: Int = 1, padding: Int? = nil, bias hasBias: Bool = true) throws {
        weight = try w.weight("\(prefix).weight", shape: [outChannels, inChannels, kernel, kernel])
        bias = hasBias ? try w.weight("\(prefix).bias", shape: [outChannels]) : nil
        self.stride = stride
        self.padding = padding ?? kernel / 2
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding)
    }
}

/// torch.nn.GroupNorm (affine).
struct GroupNormLayer {
    let gamma: Weight
    let beta: Weight
    let groups: Int
    let eps: Float

    init(_ w: WeightProvider, _ prefix: String, channels: Int, groups: Int, eps: Float) throws {
        gamma = try w.weight("\(prefix).weight", shape: [channels])
        beta = try w.weight("\(prefix).bias", shape: [channels])
        self.groups = groups
        self.eps = eps
    }

    func callAsFunction(_ x: Tensor, silu: Bool = false) -> Tensor {
        groupNorm(x, groups: groups, gamma: gamma, beta: beta, eps: eps, silu: silu)
    }
}

/// torch.nn.LayerNorm over the last dimension.
struct LayerNormLayer {
    let gamma: Weight
    let beta: Weight
    let eps: Float

    init(_ w: WeightProvider, _ prefix: String, dim: Int, eps: Float) throws {
        gamma = try w.weight("\(prefix).weight", shape: [dim])
        beta = try w.weight("\(prefix).bias", shape: [dim])
        self.eps = eps
    }

    func callAsFunction(_ x: Tensor) -> Tensor { layerNorm(x, gamma: gamma, beta: beta, eps: eps) }
}

/// Multi-head attention with separate q/k/v/out projections, as diffusers' Attention and CLIP's attention.
/// Tokens in: [B, T, C]; context: [B, S, Cctx] (self-attention when nil).
struct MultiHeadAttention {
    let q: Linear
    let k: Linear
    let v: Linear
    let out: Linear
    let heads: Int

    init(q: Linear, k: Linear, v: Linear, out: Linear, heads: Int) {
        self.q = q
        self.k = k
        self.v = v
        self.out = out
        self.heads = heads
    }

    func callAsFunction(_ x: Tensor, context: Tensor? = nil, causal: Bool = false) -> Tensor {
        let ctx = context ?? x
        let a = attention(q: q(x), k: k(ctx), v: v(ctx), heads: heads, causal: causal)
        return out(a)
    }
}
