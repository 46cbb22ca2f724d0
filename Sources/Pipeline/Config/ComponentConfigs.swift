// Component configs as diffusers / transformers write them (config.json), with their defaults.
// Keys mirror the JSON exactly so a real checkpoint's config decodes as it is.

import Foundation

extension KeyedDecodingContainer {
    /// The value at `key`, or `fallback` when the key is absent or null.
    func value<T: Decodable>(_ key: Key, or fallback: T) throws -> T {
        try decodeIfPresent(T.self, forKey: key) ?? fallback
    }
}

/// The largest value of each config number the architectures sdd runs can have, with room to spare (SD 1.5, SD 2.x
/// and SDXL are far inside). A config beyond them is refused when the model is opened, naming the field, before
/// anything is sized from it: a hostile `num_hidden_layers: 1e9` must not become a 776 GB allocation.
public enum ConfigLimits {
    /// Channels of any UNet or VAE level (SD 1.5: 1280 at most).
    public static let channels = 1 << 13
    /// UNet or VAE levels (SD: 4; 8 gives a VAE scale factor of 128).
    public static let levels = 8
    /// Resnets per level (SD: 2).
    public static let layersPerLevel = 16
    /// Transformer blocks per level (SDXL: 10).
    public static let transformerLayers = 64
    /// Width of the text embeddings the UNet attends to (SD 2.x: 1024, SDXL: 2048).
    public static let contextDim = 1 << 13
    /// Latent or image channels (SD: 4 and 3; SD3: 16).
    public static let imageChannels = 64
    /// unet.sample_size, in latent cells per side (SD 1.5: 64).
    public static let sampleSize = 1 << 10
    /// Convolution kernel size (SD: 3).
    public static let kernel = 7
    /// Text encoder layers (CLIP ViT-L: 12, OpenCLIP bigG: 32).
    public static let textLayers = 128
    /// Text encoder width and MLP width (bigG: 1280 and 5120).
    public static let textHidden = 1 << 13
    public static let textIntermediate = 1 << 16
    /// Token positions (CLIP: 77; long-context CLIP variants: 248).
    public static let positions = 1024
    /// Vocabulary entries (CLIP: 49408).
    public static let vocabulary = 1 << 20
    /// Training timesteps of a scheduler (every diffusers SD scheduler: 1000).
    public static let trainTimesteps = 1 << 16
    /// Multistep solver order (DPM-Solver: 1…3).
    public static let solverOrder = 3

    /// Throws `badConfig` naming `field` unless `value` is in `range`.
    static func check(_ value: Int, _ range: ClosedRange<Int>, field: String, file: String) throws {
        guard range.contains(value) else {
            throw PipelineError.badConfig(file: file, field: field,
                                          reason: "is \(value); sdd supports \(range.lowerBound)…\(range.upperBound)")
        }
    }

    static func check(_ values: [Int], _ range: ClosedRange<Int>, field: String, file: String) throws {
        for v in values { try check(v, range, field: field, file: file) }
    }

    /// Checks every bound of `config` in table order, so the first field out of range is the one named.
    static func check<Config>(_ config: Config, _ bounds: [ConfigBound<Config>], file: String) throws {
        for b in bounds {
            switch b.value {
            case .one(let path): try check(config[keyPath: path], b.range, field: b.field, file: file)
            case .each(let path): try check(config[keyPath: path], b.range, field: b.field, file: file)
            }
        }
    }
}

/// One bounded config number: its config.json key, where the decoded config holds it (a number, or a list whose
/// every entry is bounded), and the values sdd supports.
struct ConfigBound<Config> {
    enum Value {
        case one(KeyPath<Config, Int>)
        case each(KeyPath<Config, [Int]>)
    }
    let field: String
    let value: Value
    let range: ClosedRange<Int>

    init(_ field: String, _ path: KeyPath<Config, Int>, _ range: ClosedRange<Int>) {
        self.field = field
        value = .one(path)
        self.range = range
    }

    init(_ field: String, each path: KeyPath<Config, [Int]>, _ range: ClosedRange<Int>) {
        self.field = field
        value = .each(path)
        self.range = range
    }
}

/// diffusers' UNet2DConditionModel config (the fields SD 1.x / 2.x checkpoints use).
public struct UNetConfig: Decodable, Sendable {
    public var sampleSize: SampleSize?
    public var inChannels: Int
    public var outChannels: Int
    public var centerInputSample: Bool
    public var flipSinToCos: Bool
    public var freqShift: Int
    public var downBlockTypes: [String]
    public var midBlockType: String?
    public var upBlockTypes: [String]
    public var onlyCrossAttention: PerLevel<Bool>
    public var blockOutChannels: [Int]
    public var layersPerBlock: PerLevel<Int>
    public var downsamplePadding: Int
    public var midBlockScaleFactor: Float
    public var actFn: String
    public var normNumGroups: Int
    public var normEps: Float
    public var crossAttentionDim: PerLevel<Int>
    public var transformerLayersPerBlock: PerLevel<Int>
    public var attentionHeadDim: PerLevel<Int>
    public var numAttentionHeads: PerLevel<Int>?
    public var dualCrossAttention: Bool
    public var useLinearProjection: Bool
    public var upcastAttention: Bool
    public var classEmbedType: String?
    public var additionEmbedType: String?
    public var resnetTimeScaleShift: String
    public var timeEmbeddingType: String
    public var timestepPostAct: String?
    public var timeCondProjDim: Int?
    public var encoderHidDim: Int?
    public var convInKernel: Int
    public var convOutKernel: Int
    public var attentionType: String
    public var timeEmbeddingDim: Int?
    public var timeEmbeddingActFn: String?
    public var resnetSkipTimeAct: Bool
    public var resnetOutScaleFactor: Float
    public var crossAttentionNorm: String?
    public var numClassEmbeds: Int?
    public var reverseTransformerLayersPerBlock: [[Int]]?

    enum CodingKeys: String, CodingKey {
        case sampleSize = "sample_size", inChannels = "in_channels", outChannels = "out_channels"
        case centerInputSample = "center_input_sample", flipSinToCos = "flip_sin_to_cos", freqShift = "freq_shift"
        case downBlockTypes = "down_block_types", midBlockType = "mid_block_type", upBlockTypes = "up_block_types"
        case onlyCrossAttention = "only_cross_attention", blockOutChannels = "block_out_channels"
        case layersPerBlock = "layers_per_block", downsamplePadding = "downsample_padding"
        case midBlockScaleFactor = "mid_block_scale_factor", actFn = "act_fn", normNumGroups = "norm_num_groups"
        case normEps = "norm_eps", crossAttentionDim = "cross_attention_dim"
        case transformerLayersPerBlock = "transformer_layers_per_block", attentionHeadDim = "attention_head_dim"
        case numAttentionHeads = "num_attention_heads", dualCrossAttention = "dual_cross_attention"
        case useLinearProjection = "use_linear_projection", upcastAttention = "upcast_attention"
        case classEmbedType = "class_embed_type", additionEmbedType = "addition_embed_type"
        case resnetTimeScaleShift = "resnet_time_scale_shift", timeEmbeddingType = "time_embedding_type"
        case timestepPostAct = "timestep_post_act", timeCondProjDim = "time_cond_proj_dim"
        case encoderHidDim = "encoder_hid_dim", convInKernel = "conv_in_kernel", convOutKernel = "conv_out_kernel"
        case attentionType = "attention_type", timeEmbeddingDim = "time_embedding_dim"
        case timeEmbeddingActFn = "time_embedding_act_fn", resnetSkipTimeAct = "resnet_skip_time_act"
        case resnetOutScaleFactor = "resnet_out_scale_factor", crossAttentionNorm = "cross_attention_norm"
        case numClassEmbeds = "num_class_embeds"
        case reverseTransformerLayersPerBlock = "reverse_transformer_layers_per_block"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        sampleSize = try c.decodeIfPresent(SampleSize.self, forKey: .sampleSize)
        inChannels = try c.value(.inChannels, or: 4)
        outChannels = try c.value(.outChannels, or: 4)
        centerInputSample = try c.value(.centerInputSample, or: false)
        flipSinToCos = try c.value(.flipSinToCos, or: true)
        freqShift = try c.value(.freqShift, or: 0)
        downBlockTypes = try c.value(.downBlockTypes, or: [
            "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D",
        ])
        midBlockType = c.contains(.midBlockType)
            ? try c.decodeIfPresent(String.self, forKey: .midBlockType) : "UNetMidBlock2DCrossAttn"
        upBlockTypes = try c.value(.upBlockTypes, or: [
            "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
        ])
        onlyCrossAttention = try c.value(.onlyCrossAttention, or: .all(false))
        blockOutChannels = try c.value(.blockOutChannels, or: [320, 640, 1280, 1280])
        layersPerBlock = try c.value(.layersPerBlock, or: .all(2))
        downsamplePadding = try c.value(.downsamplePadding, or: 1)
        midBlockScaleFactor = try c.value(.midBlockScaleFactor, or: 1)
        actFn = try c.value(.actFn, or: "silu")
        normNumGroups = try c.value(.normNumGroups, or: 32)
        normEps = try c.value(.normEps, or: 1e-5)
        crossAttentionDim = try c.value(.crossAttentionDim, or: .all(1280))
        transformerLayersPerBlock = try c.value(.transformerLayersPerBlock, or: .all(1))
        attentionHeadDim = try c.value(.attentionHeadDim, or: .all(8))
        numAttentionHeads = try c.decodeIfPresent(PerLevel<Int>.self, forKey: .numAttentionHeads)
        dualCrossAttention = try c.value(.dualCrossAttention, or: false)
        useLinearProjection = try c.value(.useLinearProjection, or: false)
        upcastAttention = try c.value(.upcastAttention, or: false)
        classEmbedType = try c.decodeIfPresent(String.self, forKey: .classEmbedType)
        additionEmbedType = try c.decodeIfPresent(String.self, forKey: .additionEmbedType)
        resnetTimeScaleShift = try c.value(.resnetTimeScaleShift, or: "default")
        timeEmbeddingType = try c.value(.timeEmbeddingType, or: "positional")
        timestepPostAct = try c.decodeIfPresent(String.self, forKey: .timestepPostAct)
        timeCondProjDim = try c.decodeIfPresent(Int.self, forKey: .timeCondProjDim)
        encoderHidDim = try c.decodeIfPresent(Int.self, forKey: .encoderHidDim)
        convInKernel = try c.value(.convInKernel, or: 3)
        convOutKernel = try c.value(.convOutKernel, or: 3)
        attentionType = try c.value(.attentionType, or: "default")
        timeEmbeddingDim = try c.decodeIfPresent(Int.self, forKey: .timeEmbeddingDim)
        timeEmbeddingActFn = try c.decodeIfPresent(String.self, forKey: .timeEmbeddingActFn)
        resnetSkipTimeAct = try c.value(.resnetSkipTimeAct, or: false)
        resnetOutScaleFactor = try c.value(.resnetOutScaleFactor, or: 1)
        crossAttentionNorm = try c.decodeIfPresent(String.self, forKey: .crossAttentionNorm)
        numClassEmbeds = try c.decodeIfPresent(Int.self, forKey: .numClassEmbeds)
        reverseTransformerLayersPerBlock = try c.decodeIfPresent([[Int]].self, forKey: .reverseTransformerLayersPerBlock)
    }

    /// The plain numbers' bounds (per-level lists are expanded and checked in `validate`).
    static var bounds: [ConfigBound<Self>] {
        [
            ConfigBound("block_out_channels (levels)", \.blockOutChannels.count, 1...ConfigLimits.levels),
            ConfigBound("block_out_channels", each: \.blockOutChannels, 1...ConfigLimits.channels),
            ConfigBound("in_channels", \.inChannels, 1...ConfigLimits.imageChannels),
            ConfigBound("out_channels", \.outChannels, 1...ConfigLimits.imageChannels),
            ConfigBound("norm_num_groups", \.normNumGroups, 1...ConfigLimits.channels),
            ConfigBound("conv_in_kernel", \.convInKernel, 1...ConfigLimits.kernel),
            ConfigBound("conv_out_kernel", \.convOutKernel, 1...ConfigLimits.kernel),
            ConfigBound("downsample_padding", \.downsamplePadding, 0...ConfigLimits.kernel),
            ConfigBound("freq_shift", \.freqShift, 0...1),
        ]
    }

    /// Rejects the UNet variants this engine does not implement, naming the field.
    public func validate(file: String) throws {
        func reject(_ field: String, _ reason: String) throws {
            throw PipelineError.badConfig(file: file, field: field, reason: reason)
        }
        let levels = blockOutChannels.count
        if levels == 0 { try reject("block_out_channels", "is empty") }
        try ConfigLimits.check(self, Self.bounds, file: file)
        if let size = sampleSize {
            try ConfigLimits.check([size.width, size.height], 1...ConfigLimits.sampleSize, field: "sample_size", file: file)
        }
        try ConfigLimits.check(try layersPerBlock.expanded(levels: levels, field: "layers_per_block", file: file),
                               1...ConfigLimits.layersPerLevel, field: "layers_per_block", file: file)
        try ConfigLimits.check(
            try transformerLayersPerBlock.expanded(levels: levels, field: "transformer_layers_per_block", file: file),
            1...ConfigLimits.transformerLayers, field: "transformer_layers_per_block", file: file)
        try ConfigLimits.check(try crossAttentionDim.expanded(levels: levels, field: "cross_attention_dim", file: file),
                               1...ConfigLimits.contextDim, field: "cross_attention_dim", file: file)
        let headsField = numAttentionHeads == nil ? "attention_head_dim" : "num_attention_heads"
        let heads = try (numAttentionHeads ?? attentionHeadDim).expanded(levels: levels, field: headsField, file: file)
        for (h, c) in zip(heads, blockOutChannels) where h < 1 || h > c || c % h != 0 {
            try reject(headsField, "(\(h)) must divide the level's channels (\(c))")
        }
        try ConfigLimits.check(try attentionHeadDim.expanded(levels: levels, field: "attention_head_dim", file: file),
                               1...ConfigLimits.channels, field: "attention_head_dim", file: file)
        if !midBlockScaleFactor.isFinite { try reject("mid_block_scale_factor", "must be a finite number") }
        if !(normEps.isFinite && normEps > 0) { try reject("norm_eps", "must be a positive number") }
        if downBlockTypes.count != levels { try reject("down_block_types", "has \(downBlockTypes.count) entries for \(levels) levels") }
        if upBlockTypes.count != levels { try reject("up_block_types", "has \(upBlockTypes.count) entries for \(levels) levels") }
        for t in downBlockTypes where t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
            try reject("down_block_types", "contains \(t); supported: CrossAttnDownBlock2D, DownBlock2D")
        }
        for t in upBlockTypes where t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
            try reject("up_block_types", "contains \(t); supported: CrossAttnUpBlock2D, UpBlock2D")
        }
        if let m = midBlockType, m != "UNetMidBlock2DCrossAttn" {
            try reject("mid_block_type", "is \(m); supported: UNetMidBlock2DCrossAttn")
        }
        if actFn != "silu" && actFn != "swish" { try reject("act_fn", "is \(actFn); supported: silu") }
        if normNumGroups <= 0 || blockOutChannels.contains(where: { $0 <= 0 || $0 % normNumGroups != 0 }) {
            try reject("norm_num_groups", "(\(normNumGroups)) must divide every block_out_channels entry")
        }
        if dualCrossAttention { try reject("dual_cross_attention", "is true (not supported)") }
        if classEmbedType != nil { try reject("class_embed_type", "is set (class-conditioned UNets are not supported)") }
        if additionEmbedType != nil { try reject("addition_embed_type", "is set (SDXL-style UNets are not supported)") }
        if resnetTimeScaleShift != "default" { try reject("resnet_time_scale_shift", "is \(resnetTimeScaleShift); supported: default") }
        if timeEmbeddingType != "positional" { try reject("time_embedding_type", "is \(timeEmbeddingType); supported: positional") }
        if timestepPostAct != nil { try reject("timestep_post_act", "is set (not supported)") }
        if timeCondProjDim != nil { try reject("time_cond_proj_dim", "is set (LCM-style UNets are not supported)") }
        if encoderHidDim != nil { try reject("encoder_hid_dim", "is set (not supported)") }
        if attentionType != "default" { try reject("attention_type", "is \(attentionType); supported: default") }
        if timeEmbeddingDim != nil { try reject("time_embedding_dim", "is set (not supported)") }
        if timeEmbeddingActFn != nil { try reject("time_embedding_act_fn", "is set (not supported)") }
        if resnetSkipTimeAct { try reject("resnet_skip_time_act", "is true (not supported)") }
        if resnetOutScaleFactor != 1 { try reject("resnet_out_scale_factor", "is \(resnetOutScaleFactor); supported: 1") }
        if crossAttentionNorm != nil { try reject("cross_attention_norm", "is set (not supported)") }
        if numClassEmbeds != nil { try reject("num_class_embeds", "is set (class-conditioned UNets are not supported)") }
        if reverseTransformerLayersPerBlock != nil {
            try reject("reverse_transformer_layers_per_block", "is set (not supported)")
        }
        if convInKernel % 2 == 0 { try reject("conv_in_kernel", "must be odd") }
        if convOutKernel % 2 == 0 { try reject("conv_out_kernel", "must be odd") }
        if try onlyCrossAttention.expanded(levels: levels, field: "only_cross_attention", file: file).contains(true) {
            try reject("only_cross_attention", "is true (not supported)")
        }
    }
}

/// diffusers' AutoencoderKL config.
public struct VAEConfig: Decodable, Sendable {
    public var inChannels: Int
    public var outChannels: Int
    public var upBlockTypes: [String]
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    public var actFn: String
    public var latentChannels: Int
    public var normNumGroups: Int
    public var sampleSize: Int?
    public var scalingFactor: Float
    public var shiftFactor: Float?
    public var usePostQuantConv: Bool
    public var midBlockAddAttention: Bool

    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", outChannels = "out_channels", upBlockTypes = "up_block_types"
        case blockOutChannels = "block_out_channels", layersPerBlock = "layers_per_block", actFn = "act_fn"
        case latentChannels = "latent_channels", normNumGroups = "norm_num_groups", sampleSize = "sample_size"
        case scalingFactor = "scaling_factor", shiftFactor = "shift_factor", usePostQuantConv = "use_post_quant_conv"
        case midBlockAddAttention = "mid_block_add_attention"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        inChannels = try c.value(.inChannels, or: 3)
        outChannels = try c.value(.outChannels, or: 3)
        blockOutChannels = try c.value(.blockOutChannels, or: [64])
        upBlockTypes = try c.value(.upBlockTypes, or: Array(repeating: "UpDecoderBlock2D", count: blockOutChannels.count))
        layersPerBlock = try c.value(.layersPerBlock, or: 1)
        actFn = try c.value(.actFn, or: "silu")
        latentChannels = try c.value(.latentChannels, or: 4)
        normNumGroups = try c.value(.normNumGroups, or: 32)
        sampleSize = try? c.decodeIfPresent(Int.self, forKey: .sampleSize)
        scalingFactor = try c.value(.scalingFactor, or: 0.18215)
        shiftFactor = try c.decodeIfPresent(Float.self, forKey: .shiftFactor)
        usePostQuantConv = try c.value(.usePostQuantConv, or: true)
        midBlockAddAttention = try c.value(.midBlockAddAttention, or: true)
    }

    /// Pixels per latent cell: 2^(levels − 1), as diffusers' vae_scale_factor.
    public var scaleFactor: Int { 1 << max(blockOutChannels.count - 1, 0) }

    public func validate(file: String) throws {
        func reject(_ field: String, _ reason: String) throws {
            throw PipelineError.badConfig(file: file, field: field, reason: reason)
        }
        if blockOutChannels.isEmpty { try reject("block_out_channels", "is empty") }
        try ConfigLimits.check(blockOutChannels.count, 1...ConfigLimits.levels, field: "block_out_channels (levels)",
                               file: file)
        try ConfigLimits.check(blockOutChannels, 1...ConfigLimits.channels, field: "block_out_channels", file: file)
        try ConfigLimits.check(inChannels, 1...ConfigLimits.imageChannels, field: "in_channels", file: file)
        try ConfigLimits.check(outChannels, 1...ConfigLimits.imageChannels, field: "out_channels", file: file)
        try ConfigLimits.check(latentChannels, 1...ConfigLimits.imageChannels, field: "latent_channels", file: file)
        try ConfigLimits.check(layersPerBlock, 0...ConfigLimits.layersPerLevel, field: "layers_per_block", file: file)
        try ConfigLimits.check(normNumGroups, 1...ConfigLimits.channels, field: "norm_num_groups", file: file)
        if upBlockTypes.count != blockOutChannels.count {
            try reject("up_block_types", "has \(upBlockTypes.count) entries for \(blockOutChannels.count) levels")
        }
        for t in upBlockTypes where t != "UpDecoderBlock2D" {
            try reject("up_block_types", "contains \(t); supported: UpDecoderBlock2D")
        }
        if actFn != "silu" && actFn != "swish" { try reject("act_fn", "is \(actFn); supported: silu") }
        if layersPerBlock < 0 { try reject("layers_per_block", "is negative") }
        if normNumGroups <= 0 || blockOutChannels.contains(where: { $0 <= 0 || $0 % normNumGroups != 0 }) {
            try reject("norm_num_groups", "(\(normNumGroups)) must divide every block_out_channels entry")
        }
        if !(scalingFactor.isFinite && scalingFactor != 0) { try reject("scaling_factor", "must be a non-zero number") }
    }
}

/// transformers' CLIPTextConfig (text_encoder/config.json).
public struct CLIPTextConfig: Decodable, Sendable {
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var maxPositionEmbeddings: Int
    public var hiddenAct: String
    public var layerNormEps: Float
    public var architectures: [String]?

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case maxPositionEmbeddings = "max_position_embeddings", hiddenAct = "hidden_act"
        case layerNormEps = "layer_norm_eps", architectures
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vocabSize = try c.value(.vocabSize, or: 49408)
        hiddenSize = try c.value(.hiddenSize, or: 512)
        intermediateSize = try c.value(.intermediateSize, or: 2048)
        numHiddenLayers = try c.value(.numHiddenLayers, or: 12)
        numAttentionHeads = try c.value(.numAttentionHeads, or: 8)
        maxPositionEmbeddings = try c.value(.maxPositionEmbeddings, or: 77)
        hiddenAct = try c.value(.hiddenAct, or: "quick_gelu")
        layerNormEps = try c.value(.layerNormEps, or: 1e-5)
        architectures = try c.decodeIfPresent([String].self, forKey: .architectures)
    }

    static var bounds: [ConfigBound<Self>] {
        [
            ConfigBound("vocab_size", \.vocabSize, 1...ConfigLimits.vocabulary),
            ConfigBound("hidden_size", \.hiddenSize, 1...ConfigLimits.textHidden),
            ConfigBound("intermediate_size", \.intermediateSize, 1...ConfigLimits.textIntermediate),
            ConfigBound("num_hidden_layers", \.numHiddenLayers, 0...ConfigLimits.textLayers),
            ConfigBound("max_position_embeddings", \.maxPositionEmbeddings, 2...ConfigLimits.positions),
        ]
    }

    public func validate(file: String) throws {
        func reject(_ field: String, _ reason: String) throws {
            throw PipelineError.badConfig(file: file, field: field, reason: reason)
        }
        try ConfigLimits.check(self, Self.bounds, file: file)
        if !(layerNormEps.isFinite && layerNormEps > 0) { try reject("layer_norm_eps", "must be a positive number") }
        if hiddenSize <= 0 || numAttentionHeads <= 0 || hiddenSize % numAttentionHeads != 0 {
            try reject("num_attention_heads", "(\(numAttentionHeads)) must divide hidden_size (\(hiddenSize))")
        }
        if !["quick_gelu", "gelu"].contains(hiddenAct) { try reject("hidden_act", "is \(hiddenAct); supported: quick_gelu, gelu") }
        if maxPositionEmbeddings <= 1 { try reject("max_position_embeddings", "must be at least 2") }
        if numHiddenLayers < 0 { try reject("num_hidden_layers", "is negative") }
        if let arch = architectures?.first, arch != "CLIPTextModel" {
            try reject("architectures", "is \(arch); supported: CLIPTextModel")
        }
    }
}

/// Decodes `url` as `T`, turning every failure into an error that names the file and field.
func decodeConfig<T: Decodable>(_ type: T.Type, at url: URL) throws -> T {
    guard FileManager.default.fileExists(atPath: url.path) else {
        throw PipelineError.missingFile(path: url.path, what: "config")
    }
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
        throw PipelineError.badConfig(file: url.path, field: "(file)", reason: "cannot be read: \(error.localizedDescription)")
    }
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx) {
        throw PipelineError.badConfig(file: url.path, field: ctx.codingPath.map(\.stringValue).joined(separator: "."),
                                      reason: "has the wrong type (\(ctx.debugDescription))")
    } catch let DecodingError.keyNotFound(key, _) {
        throw PipelineError.badConfig(file: url.path, field: key.stringValue, reason: "is missing")
    } catch {
        throw PipelineError.badConfig(file: url.path, field: "(file)", reason: "is not valid JSON")
    }
}
