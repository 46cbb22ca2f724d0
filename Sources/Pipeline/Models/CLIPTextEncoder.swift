// CLIPTextEncoder: transformers' CLIPTextModel forward (causal self-attention, quick_gelu or gelu MLP,
// final layer norm) as one list of blocks; SD 1.x conditions on its last_hidden_state.

import TiledKernels

public struct CLIPTextEncoder {
    public let config: CLIPTextConfig

    /// The encoder as one list of blocks in execution order: the forward pass walks it and the weight streamer
    /// streams each block's group by identity (`WeightGroupID(block: i, part: 0)`).
    let blocks: [CLIPTextBlock]
    let streamer: WeightStreamer
    /// Read row by row (only the prompt's rows fault in) and released after the lookup, so in no prefetched group.
    private let tokenEmbedding: Weight

    public init(config: CLIPTextConfig, weights w: WeightProvider, residency: WeightResidency = .resident) throws {
        try config.validate(file: "text_encoder/config.json")
        self.config = config
        let d = config.hiddenSize
        // Real SD checkpoints prefix every name with "text_model."; transformers 5 saves without it.
        let p = w.has("text_model.embeddings.token_embedding.weight") || !w.has("embeddings.token_embedding.weight")
            ? "text_model." : ""
        tokenEmbedding = try w.weight("\(p)embeddings.token_embedding.weight", shape: [config.vocabSize, d])
        var blocks: [CLIPTextBlock] = [.embeddings(position: try w.weight("\(p)embeddings.position_embedding.weight",
                                                                         shape: [config.maxPositionEmbeddings, d]))]
        // Bounded by `CLIPTextConfig.validate`; each layer is bound (its shapes checked) before the next is made.
        for i in 0..<config.numHiddenLayers {
            let l = "\(p)encoder.layers.\(i)"
            blocks.append(.layer(CLIPEncoderLayer(
                norm1: try LayerNormLayer(w, "\(l).layer_norm1", dim: d, eps: config.layerNormEps),
                attention: MultiHeadAttention(
                    q: try Linear(w, "\(l).self_attn.q_proj", in: d, out: d),
                    k: try Linear(w, "\(l).self_attn.k_proj", in: d, out: d),
                    v: try Linear(w, "\(l).self_attn.v_proj", in: d, out: d),
                    out: try Linear(w, "\(l).self_attn.out_proj", in: d, out: d),
                    heads: config.numAttentionHeads),
                norm2: try LayerNormLayer(w, "\(l).layer_norm2", dim: d, eps: config.layerNormEps),
                fc1: try Linear(w, "\(l).mlp.fc1", in: d, out: config.intermediateSize),
                fc2: try Linear(w, "\(l).mlp.fc2", in: config.intermediateSize, out: d),
                exactGelu: config.hiddenAct == "gelu")))
        }
        blocks.append(.finalNorm(try LayerNormLayer(w, "\(p)final_layer_norm", dim: d, eps: config.layerNormEps)))
        self.blocks = blocks
        streamer = WeightStreamer(blocks: blocks.map { [$0.weights] }, residency: residency)
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
        for row in ids {
            for id in row where id < 0 || Int(id) >= config.vocabSize {
                throw PipelineError.invalidRequest("text encoder: token id \(id) is outside the vocabulary (\(config.vocabSize))")
            }
        }
        var x = Tensor(zeros: [ids.count, tokens, d])
        for (index, block) in blocks.enumerated() {
            streamer.run(WeightGroupID(block: index, part: 0)) {
                block.forward(&x, ids: ids, tokenEmbedding: tokenEmbedding)
            }
            if index == 0 && streamer.residency != .resident {
                WeightStreamer.release([tokenEmbedding], dropPageCache: streamer.residency == .strict)
            }
        }
        return x
    }
}

/// One pre-norm transformer layer of CLIP's encoder.
struct CLIPEncoderLayer {
    let norm1: LayerNormLayer
    let attention: MultiHeadAttention
    let norm2: LayerNormLayer
    let fc1: Linear
    let fc2: Linear
    /// gelu (SD 2.x's OpenCLIP) rather than quick_gelu.
    let exactGelu: Bool
}

/// A block of the text encoder bound to its weights: one streaming group each.
enum CLIPTextBlock {
    /// Token embeddings (looked up row by row in the table the encoder keeps apart) plus position embeddings.
    case embeddings(position: Weight)
    case layer(CLIPEncoderLayer)
    case finalNorm(LayerNormLayer)

    /// The block's weights: its streaming group.
    var weights: [Weight] {
        switch self {
        case .embeddings(let position): [position]
        case .layer(let l): l.norm1.weights + l.attention.weights + l.norm2.weights + l.fc1.weights + l.fc2.weights
        case .finalNorm(let norm): norm.weights
        }
    }

    /// Replaces `x` ([prompts, tokens, hidden]) by the block's output; `ids` are checked against the vocabulary.
    func forward(_ x: inout Tensor, ids: [[Int32]], tokenEmbedding: Weight) {
        switch self {
        case .embeddings(let positionEmbedding):
            let d = x.shape[2], tokens = x.shape[1]
            var position = [Float](repeating: 0, count: tokens * d)
            position.withUnsafeMutableBufferPointer { positionEmbedding.dequantizeRows(0..<tokens, into: $0.baseAddress!) }
            for (b, row) in ids.enumerated() {
                for (t, id) in row.enumerated() {
                    let dst = (b * tokens + t) * d
                    x.withUnsafeMutableBufferPointer { out in
                        tokenEmbedding.dequantizeRows(Int(id)..<(Int(id) + 1), into: out.baseAddress! + dst)
                        for c in 0..<d { out[dst + c] += position[t * d + c] }
                    }
                }
            }
        case .layer(let layer):
            let a = add(x, layer.attention(layer.norm1(x), causal: true))
            var h = layer.fc1(layer.norm2(a))
            h = layer.exactGelu ? gelu(h) : quickGelu(h)
            x = add(a, layer.fc2(h))
        case .finalNorm(let norm):
            x = norm(x)
        }
    }
}
