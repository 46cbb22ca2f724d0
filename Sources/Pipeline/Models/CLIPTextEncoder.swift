// CLIPTextEncoder: transformers' CLIPTextModel forward (causal self-attention, quick_gelu or gelu MLP,
// final layer norm); SD 1.x conditions on its last_hidden_state.

import TiledKernels

public struct CLIPTextEncoder {
    public let config: CLIPTextConfig

    private struct EncoderLayer {
        let norm1: LayerNormLayer
        let attention: MultiHeadAttention
        let norm2: LayerNormLayer
        let fc1: Linear
        let fc2: Linear
    }

    private let tokenEmbedding: Weight
    private let positionEmbedding: Weight
    private let layers: [EncoderLayer]
    private let finalNorm: LayerNormLayer
    private let streamer: WeightStreamer

    public init(config: CLIPTextConfig, weights w: WeightProvider, residency: WeightResidency = .resident) throws {
        try config.validate(file: "text_encoder/config.json")
        self.config = config
        let d = config.hiddenSize
        // Real SD checkpoints prefix every name with "text_model."; transformers 5 saves without it.
        let p = w.has("text_model.embeddings.token_embedding.weight") || !w.has("embeddings.token_embedding.weight")
            ? "text_model." : ""
        tokenEmbedding = try w.weight("\(p)embeddings.token_embedding.weight", shape: [config.vocabSize, d])
        positionEmbedding = try w.weight("\(p)embeddings.position_embedding.weight",
                                         shape: [config.maxPositionEmbeddings, d])
        // Bounded by `CLIPTextConfig.validate`; each layer is bound (its shapes checked) before the next is made.
        var layers: [EncoderLayer] = []
        for i in 0..<config.numHiddenLayers {
            let l = "\(p)encoder.layers.\(i)"
            layers.append(EncoderLayer(
                norm1: try LayerNormLayer(w, "\(l).layer_norm1", dim: d, eps: config.layerNormEps),
                attention: MultiHeadAttention(
                    q: try Linear(w, "\(l).self_attn.q_proj", in: d, out: d),
                    k: try Linear(w, "\(l).self_attn.k_proj", in: d, out: d),
                    v: try Linear(w, "\(l).self_attn.v_proj", in: d, out: d),
                    out: try Linear(w, "\(l).self_attn.out_proj", in: d, out: d),
                    heads: config.numAttentionHeads),
                norm2: try LayerNormLayer(w, "\(l).layer_norm2", dim: d, eps: config.layerNormEps),
                fc1: try Linear(w, "\(l).mlp.fc1", in: d, out: config.intermediateSize),
                fc2: try Linear(w, "\(l).mlp.fc2", in: config.intermediateSize, out: d)))
        }
        self.layers = layers
        finalNorm = try LayerNormLayer(w, "\(p)final_layer_norm", dim: d, eps: config.layerNormEps)
        // Per-layer groups; the token table is read row by row (only the prompt's rows fault in) and
        // released after the lookup, so it is not in the prefetched order.
        streamer = WeightStreamer(
            order: [[positionEmbedding]] + layers.map {
                $0.norm1.weights + $0.attention.weights + $0.norm2.weights + $0.fc1.weights + $0.fc2.weights
            } + [finalNorm.weights],
            residency: residency)
    }

    /// ids: one row of token ids per prompt (each row ≤ max_position_embeddings long).
    /// Returns last_hidden_state: [prompts, tokens, hidden].
    public func encode(_ ids: [[Int32]]) throws -> Tensor {
        let d = config.hiddenSize
        guard let tokens = ids.first?.count, ids.allSatisfy({ $0.count == tokens }) else {
            throw PipelineError.invalidRequest("text encoder: token rows must be non-empty and of equal length")
        }
        guard tokens <= config.maxPositionEmbeddings else {
            throw PipelineError.invalidRequest("text encoder: \(tokens) tokens exceed max_position_embeddings \(config.maxPositionEmbeddings)")
        }
        var x = Tensor(zeros: [ids.count, tokens, d])
        var position = [Float](repeating: 0, count: tokens * d)
        streamer.run {
            position.withUnsafeMutableBufferPointer { positionEmbedding.dequantizeRows(0..<tokens, into: $0.baseAddress!) }
        }
        for (b, row) in ids.enumerated() {
            for (t, id) in row.enumerated() {
                guard id >= 0, Int(id) < config.vocabSize else {
                    throw PipelineError.invalidRequest("text encoder: token id \(id) is outside the vocabulary (\(config.vocabSize))")
                }
                let dst = (b * tokens + t) * d
                x.withUnsafeMutableBufferPointer { out in
                    tokenEmbedding.dequantizeRows(Int(id)..<(Int(id) + 1), into: out.baseAddress! + dst)
                    for c in 0..<d { out[dst + c] += position[t * d + c] }
                }
            }
        }
        if streamer.residency != .resident {
            WeightStreamer.release([tokenEmbedding], dropPageCache: streamer.residency == .strict)
        }
        for layer in layers {
            x = streamer.run {
                let a = add(x, layer.attention(layer.norm1(x), causal: true))
                var h = layer.fc1(layer.norm2(a))
                h = config.hiddenAct == "gelu" ? gelu(h) : quickGelu(h)
                return add(a, layer.fc2(h))
            }
        }
        return streamer.run { finalNorm(x) }
    }
}
