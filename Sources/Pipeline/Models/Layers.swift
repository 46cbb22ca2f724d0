// Layers: the PyTorch modules the models are made of (Linear, Conv2d, GroupNorm, LayerNorm, Attention),
// each bound to its weights by its diffusers / transformers parameter name.

import Synchronization
import TiledKernels

/// A module that reads weights: their list is what weight streaming prefetches and releases.
protocol WeightGroup {
    var weights: [Weight] { get }
}

/// Multiply-add work done by the matmul-shaped layers (2 FLOPs per multiply-add), for `sdd bench`.
public enum ComputeCounter {
    static let flops = Atomic<Int>(0)
    public static var total: Int { flops.load(ordering: .relaxed) }
    public static func reset() { flops.store(0, ordering: .relaxed) }
    static func add(_ n: Int) { flops.add(n, ordering: .relaxed) }
}

/// Where a model component's weights come from (a safetensors folder, a GGUF file, a test double).
public protocol WeightProvider: AnyObject {
    /// The F32 view of tensor `name`; when `shape` is given the stored shape must equal it.
    func weight(_ name: String, shape: [Int]?) throws -> Weight
    func has(_ name: String) -> Bool
    /// Every tensor name (LoRA files are matched against them).
    var tensorNames: [String] { get }
    /// LoRA side paths for the layer `module` (e.g. "mid_block.attentions.0.proj_in"); empty without LoRAs.
    func lowRankTerms(_ module: String) -> [LowRankTerm]
}

extension WeightProvider {
    public func lowRankTerms(_ module: String) -> [LowRankTerm] { [] }
}

/// Hands out another provider's weights set to multiply with `products` (see `Weight.products`): how a
/// pipeline runs a component's linear layers, convolutions and attention in BF16.
final class ProductPrecisionWeights: WeightProvider {
    let base: WeightProvider
    let products: ProductPrecision

    init(_ base: WeightProvider, products: ProductPrecision) {
        self.base = base
        self.products = products
    }

    func weight(_ name: String, shape: [Int]?) throws -> Weight {
        try base.weight(name, shape: shape).multiplying(in: products)
    }

    func has(_ name: String) -> Bool { base.has(name) }
    var tensorNames: [String] { base.tensorNames }
    func lowRankTerms(_ module: String) -> [LowRankTerm] { base.lowRankTerms(module) }
}

/// torch.nn.Linear: weight [out, in], optional bias [out].
struct Linear: WeightGroup {
    let weight: Weight
    let bias: Weight?
    /// LoRA side paths added to the product (see LoRA.swift); empty without LoRAs.
    let lowRank: [LowRankTerm]

    init(_ w: WeightProvider, _ prefix: String, in inFeatures: Int, out outFeatures: Int, bias hasBias: Bool = true) throws {
        weight = try Linear.loadMatrix(w, "\(prefix).weight", out: outFeatures, in: inFeatures)
        bias = hasBias ? try w.weight("\(prefix).bias", shape: [outFeatures]) : nil
        lowRank = w.lowRankTerms(prefix)
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

    var weights: [Weight] { [weight] + (bias.map { [$0] } ?? []) + lowRank.flatMap(\.weights) }

    func callAsFunction(_ x: Tensor) -> Tensor {
        ComputeCounter.add(2 * (x.count / max(weight.rowLength, 1)) * weight.count)
        var y = linear(x, weight: weight, bias: bias)
        for term in lowRank { y = add(y, term.linearDelta(x)) }
        return y
    }
}

/// torch.nn.Conv2d with square kernel, symmetric padding.
struct Conv2d: WeightGroup {
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
        lowRank = w.lowRankTerms(prefix)
    }

    /// LoRA side paths added to the convolution (see LoRA.swift); empty without LoRAs.
    let lowRank: [LowRankTerm]

    var weights: [Weight] { [weight] + (bias.map { [$0] } ?? []) + lowRank.flatMap(\.weights) }

    func callAsFunction(_ x: Tensor) -> Tensor {
        var y = conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding)
        ComputeCounter.add(2 * y.count * weight.rowLength)
        for term in lowRank { y = add(y, term.convDelta(x, stride: stride, padding: padding)) }
        return y
    }
}

/// torch.nn.GroupNorm (affine).
struct GroupNormLayer: WeightGroup {
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

    var weights: [Weight] { [gamma, beta] }

    func callAsFunction(_ x: Tensor, silu: Bool = false) -> Tensor {
        groupNorm(x, groups: groups, gamma: gamma, beta: beta, eps: eps, silu: silu)
    }
}

/// torch.nn.LayerNorm over the last dimension.
struct LayerNormLayer: WeightGroup {
    let gamma: Weight
    let beta: Weight
    let eps: Float

    init(_ w: WeightProvider, _ prefix: String, dim: Int, eps: Float) throws {
        gamma = try w.weight("\(prefix).weight", shape: [dim])
        beta = try w.weight("\(prefix).bias", shape: [dim])
        self.eps = eps
    }

    var weights: [Weight] { [gamma, beta] }

    func callAsFunction(_ x: Tensor) -> Tensor { layerNorm(x, gamma: gamma, beta: beta, eps: eps) }
}

/// Multi-head attention with separate q/k/v/out projections, as diffusers' Attention and CLIP's attention.
/// Tokens in: [B, T, C]; context: [B, S, Cctx] (self-attention when nil).
struct MultiHeadAttention: WeightGroup {
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

    var weights: [Weight] { q.weights + k.weights + v.weights + out.weights }

    func callAsFunction(_ x: Tensor, context: Tensor? = nil, causal: Bool = false) -> Tensor {
        let ctx = context ?? x
        let query = q(x)
        // The scores and their weighted sum multiply as the projections do.
        let a = attention(q: query, k: k(ctx), v: v(ctx), heads: heads, causal: causal,
                          precision: q.weight.products)
        // QKᵀ and PV: 2 · 2 · Tq · Tk · channels per batch item.
        ComputeCounter.add(4 * query.count * ctx.shape[ctx.shape.count - 2])
        return out(a)
    }
}
