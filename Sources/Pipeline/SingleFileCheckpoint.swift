// SingleFileCheckpoint: a Stable Diffusion model in one file with CompVis/LDM names (a `.safetensors`
// checkpoint, or a stable-diffusion.cpp GGUF): its name maps and, from names and shapes, its architecture
// with each family's standard settings, as diffusers' `from_single_file` infers them.

import Foundation
import MMapWeights
import TiledKernels

/// What a checkpoint cannot say for itself: the prediction type (SD 2.x files come as epsilon and v).
public enum ModelPrediction: String, Sendable, CaseIterable {
    case epsilon
    case v

    /// diffusers' `prediction_type` value.
    public var schedulerValue: String { self == .v ? "v_prediction" : "epsilon" }

    /// Parses "epsilon", "v" or "v_prediction".
    public init?(argument: String) {
        switch argument.lowercased() {
        case "epsilon", "eps": self = .epsilon
        case "v", "v_prediction", "v-prediction": self = .v
        default: return nil
        }
    }
}

/// How a single-file model is opened: the configs of a diffusers folder instead of inferred ones
/// (`from_single_file(config=)`), and the prediction type.
public struct ModelOpenOptions: Sendable {
    /// A diffusers folder whose unet/, vae/, text_encoder/ configs (and scheduler/, tokenizer/ when
    /// present) replace the inferred ones.
    public var configDirectory: URL?
    /// Overrides the scheduler's prediction_type.
    public var prediction: ModelPrediction?

    public init(configDirectory: URL? = nil, prediction: ModelPrediction? = nil) {
        self.configDirectory = configDirectory
        self.prediction = prediction
    }
}

/// One component of a CompVis file seen under diffusers' names: each name maps to a stored tensor (or part
/// of one), handed out zero-copy. A 1×1 conv kernel [C, C, 1, 1] asked for as [C, C] is the same bytes.
public final class RenamedWeights: WeightProvider, @unchecked Sendable {
    // @unchecked: every stored property is immutable.

    /// diffusers name → where it is stored.
    public let map: [String: RenamedTensor]
    /// The file's tensors under their stored names.
    public let base: WeightProvider
    let path: String

    public init(map: [String: RenamedTensor], base: WeightProvider, path: String) {
        self.map = map
        self.base = base
        self.path = path
    }

    /// The diffusers names, sorted.
    public var tensorNames: [String] { map.keys.sorted() }

    public func has(_ name: String) -> Bool { map[name] != nil }

    /// Drops the pages of the tensors behind `names` (diffusers names), as the base provider does.
    public func release(_ names: [String], dropPageCache: Bool = false) {
        let sources = names.compactMap { map[$0]?.source }
        if let c = base as? ComponentWeights { c.release(sources, dropPageCache: dropPageCache) }
        if let g = base as? GGUFComponentWeights { g.release(sources, dropPageCache: dropPageCache) }
    }

    /// Whether the stored tensors behind this component include block-quantized ones.
    public var hasQuantizedTensors: Bool { (base as? GGUFComponentWeights)?.hasQuantizedTensors ?? false }

    public func weight(_ name: String, shape: [Int]?) throws -> Weight {
        guard let entry = map[name] else {
            throw WeightsError(.missingTensor, file: path, tensor: name, "no tensor maps to this name")
        }
        var w = try base.weight(entry.source, shape: nil)
        if case .rows(let index, let count) = entry.part {
            let rows = w.rows / count
            guard w.rows % count == 0, let rowBytes = w.type.byteCount(elements: w.rowLength) else {
                throw WeightsError(.shapeMismatch, file: path, tensor: entry.source,
                                   "\(w.shape) does not split into \(count) equal parts along its rows")
            }
            let bytes = UnsafeRawBufferPointer(rebasing: w.bytes[(index * rows * rowBytes)..<((index + 1) * rows * rowBytes)])
            var part = Weight(shape: [rows] + w.shape.dropFirst(), type: w.type, bytes: bytes, owner: w.owner)
            part.products = w.products
            w = part
        }
        if let shape, shape != w.shape {
            guard shape.reduce(1, *) == w.count, w.shape.filter({ $0 != 1 }) == shape.filter({ $0 != 1 }),
                shape.last == w.shape.last || !w.type.isQuantized
            else {
                throw WeightsError(.shapeMismatch, file: path, tensor: entry.description,
                                   "expected shape \(shape) (for \(name)), found \(w.shape)")
            }
            w = w.reshaped(shape)
        }
        return w
    }
}

/// A CompVis checkpoint's name maps and inferred architecture.
public struct SingleFileCheckpoint: Sendable {
    public enum Family: String, Sendable {
        case sd1 = "SD 1.x"
        case sd2 = "SD 2.x"
    }

    public var family: Family
    /// diffusers name → stored tensor, per component ("unet", "vae", "text_encoder").
    public var maps: [String: [String: RenamedTensor]]
    /// Inferred diffusers config.json texts: "unet", "vae", "text_encoder", "scheduler".
    public var configs: [String: String]
    /// The tokenizer's pad token: `<|endoftext|>` for SD 1.x's CLIP, "!" for SD 2.x's OpenCLIP.
    public var padToken: String

    /// Whether `names` look like a CompVis checkpoint (a UNet under `model.diffusion_model.`).
    public static func isCompVis(_ names: [String]) -> Bool {
        names.contains { $0.hasPrefix(CompVisNames.unetPrefix) }
    }

    /// Reads the architecture from tensor names and PyTorch shapes (`shapes`: full name → shape). `file`
    /// names the checkpoint in errors. Throws `PipelineError.unsupported` naming the first tensor that fits
    /// neither SD 1.x nor SD 2.x, or a missing component.
    /// With `inferArchitecture` false only the name maps are built (the configs come from elsewhere).
    public init(shapes: [String: [Int]], file: String, prediction: ModelPrediction?,
                inferArchitecture: Bool = true) throws {
        let names = shapes.keys.sorted()
        func under(_ prefix: String) -> [String] {
            names.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
        }
        func misfit(_ tensor: String, _ why: String) -> PipelineError {
            .badWeights(component: file, reason: "tensor \"\(tensor)\" \(why): it fits no Stable Diffusion 1.x/2.x "
                + "architecture (SDXL, SD3, inpainting and other families are not supported)")
        }

        // UNet: CompVis names, or diffusers names under the CompVis prefix (`sd-cli --convert-name`).
        let unetNames = under(CompVisNames.unetPrefix)
        guard !unetNames.isEmpty else {
            throw PipelineError.unsupported(file: file, feature: "a checkpoint without a UNet (no \"\(CompVisNames.unetPrefix)*\" tensors)")
        }
        var unetMap = [String: RenamedTensor]()
        if unetNames.contains("conv_in.weight") {
            for n in unetNames { unetMap[n] = RenamedTensor(source: CompVisNames.unetPrefix + n) }
        } else {
            guard let layout = CompVisNames.unetLayout(unetNames) else {
                throw misfit(CompVisNames.unetPrefix + "input_blocks", "is not laid out as levels of resnets")
            }
            for n in unetNames {
                guard let d = CompVisNames.unetName(n, layersPerBlock: layout.layersPerBlock) else {
                    throw misfit(CompVisNames.unetPrefix + n, "has no diffusers counterpart")
                }
                unetMap[d] = RenamedTensor(source: CompVisNames.unetPrefix + n)
            }
        }

        // VAE.
        let vaeNames = under(CompVisNames.vaePrefix)
        guard !vaeNames.isEmpty else {
            throw PipelineError.unsupported(file: file, feature: "a checkpoint without a VAE (no \"\(CompVisNames.vaePrefix)*\" tensors)")
        }
        let vaeMap = CompVisNames.vaeMap(vaeNames).map.mapValues { RenamedTensor(source: CompVisNames.vaePrefix + $0) }

        // Text encoder.
        var textMap = [String: RenamedTensor]()
        let openCLIP = under(CompVisNames.openCLIPPrefix)
        let clip = under(CompVisNames.clipPrefix)
        if !openCLIP.isEmpty {
            family = .sd2
            let used = CompVisNames.openCLIPLayerCount(openCLIP) - 1
            for n in openCLIP {
                for (d, part) in CompVisNames.openCLIPNames(n, usedLayers: used) {
                    textMap[d] = RenamedTensor(source: CompVisNames.openCLIPPrefix + n, part: part)
                }
            }
        } else if !clip.isEmpty {
            family = .sd1
            for n in clip {
                if let d = CompVisNames.clipName(n) { textMap[d] = RenamedTensor(source: CompVisNames.clipPrefix + n) }
            }
        } else {
            throw PipelineError.unsupported(
                file: file, feature: "a checkpoint without an SD 1.x/2.x text encoder (no \"\(CompVisNames.clipPrefix)*\" "
                    + "or \"\(CompVisNames.openCLIPPrefix)*\" tensors)")
        }
        let allMaps = ["unet": unetMap, "vae": vaeMap, "text_encoder": textMap]
        let familyName = family.rawValue
        maps = allMaps
        padToken = family == .sd2 ? "!" : "<|endoftext|>"
        guard inferArchitecture else {
            configs = [:]
            return
        }

        // Shapes under diffusers' names.
        func shape(_ component: String, _ name: String) throws -> (shape: [Int], source: String) {
            guard let entry = allMaps[component]?[name], let s = shapes[entry.source] else {
                throw PipelineError.unsupported(
                    file: file, feature: "a \(familyName) checkpoint without the tensor for \(component) \"\(name)\"")
            }
            if case .rows(_, let n) = entry.part, let first = s.first { return ([first / n] + s.dropFirst(), entry.source) }
            return (s, entry.source)
        }
        /// Dimension `i` of a tensor's shape, or an error naming the tensor when it has fewer dimensions.
        func dim(_ t: (shape: [Int], source: String), _ i: Int) throws -> Int {
            guard i < t.shape.count else { throw misfit(t.source, "has shape \(t.shape), too few dimensions") }
            return t.shape[i]
        }
        let sd2 = family == .sd2

        // UNet config.
        let convIn = try shape("unet", "conv_in.weight")
        guard convIn.shape.count == 4 else { throw misfit(convIn.source, "is \(convIn.shape), not a conv kernel") }
        let levels = Set(unetMap.keys.compactMap { n -> Int? in
            let c = n.split(separator: ".")
            return c.count > 1 && c[0] == "down_blocks" ? Int(c[1]) : nil
        }).count
        var channels = [Int](), downTypes = [String](), upTypes = [String]()
        var crossDim: Int?
        var linear = false
        var perBlock = 0
        for b in 0..<levels {
            let conv1 = try shape("unet", "down_blocks.\(b).resnets.0.conv1.weight")
            let c = try dim(conv1, 0)
            guard c % 32 == 0 else { throw misfit(conv1.source, "has \(c) channels, not a multiple of 32 groups") }
            if sd2, c % 64 != 0 { throw misfit(conv1.source, "has \(c) channels, not a multiple of 64-wide heads") }
            if !sd2, c % 8 != 0 { throw misfit(conv1.source, "has \(c) channels, not divisible by 8 heads") }
            channels.append(c)
            let attention = unetMap["down_blocks.\(b).attentions.0.proj_in.weight"] != nil
            downTypes.append(attention ? "CrossAttnDownBlock2D" : "DownBlock2D")
            if b == 0 {
                perBlock = Set(unetMap.keys.compactMap { n -> Int? in
                    let c = n.split(separator: ".")
                    return c.count > 3 && c[0] == "down_blocks" && c[1] == "0" && c[2] == "resnets" ? Int(c[3]) : nil
                }).count
            }
            if attention {
                let projIn = try shape("unet", "down_blocks.\(b).attentions.0.proj_in.weight")
                linear = projIn.shape.count == 2
                let toK = try shape("unet", "down_blocks.\(b).attentions.0.transformer_blocks.0.attn2.to_k.weight")
                crossDim = toK.shape.count == 2 ? toK.shape[1] : nil
            }
        }
        for b in 0..<levels {
            upTypes.append(unetMap["up_blocks.\(b).attentions.0.proj_in.weight"] != nil ? "CrossAttnUpBlock2D" : "UpBlock2D")
        }
        guard levels >= 1, let contextDim = crossDim else {
            throw misfit(convIn.source, "belongs to a UNet without cross-attention")
        }
        let convOut = try shape("unet", "conv_out.weight")
        let heads: Any = sd2 ? channels.map { $0 / 64 } : 8
        let sampleSize = sd2 ? 96 : 64
        let unetConfig: [String: Any] = [
            "_class_name": "UNet2DConditionModel", "sample_size": sampleSize,
            "in_channels": try dim(convIn, 1), "out_channels": try dim(convOut, 0),
            "block_out_channels": channels, "layers_per_block": perBlock,
            "down_block_types": downTypes, "up_block_types": upTypes,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "attention_head_dim": heads, "cross_attention_dim": contextDim,
            "use_linear_projection": linear, "upcast_attention": sd2,
            "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
            "flip_sin_to_cos": true, "freq_shift": 0, "downsample_padding": 1,
        ]

        // VAE config.
        let vaeDown = Set(vaeMap.keys.compactMap { n -> Int? in
            let c = n.split(separator: ".")
            return c.count > 2 && c[0] == "encoder" && c[1] == "down_blocks" ? Int(c[2]) : nil
        }).count
        var vaeChannels = [Int]()
        for b in 0..<vaeDown {
            let conv1 = try shape("vae", "encoder.down_blocks.\(b).resnets.0.conv1.weight")
            let c = try dim(conv1, 0)
            guard c % 32 == 0 else { throw misfit(conv1.source, "has \(c) channels, not a multiple of 32 groups") }
            vaeChannels.append(c)
        }
        let vaePerBlock = Set(vaeMap.keys.compactMap { n -> Int? in
            let c = n.split(separator: ".")
            return c.count > 4 && c[0] == "encoder" && c[2] == "0" && c[3] == "resnets" ? Int(c[4]) : nil
        }).count
        let decoderIn = try shape("vae", "decoder.conv_in.weight")
        let decoderOut = try shape("vae", "decoder.conv_out.weight")
        let encoderIn = try shape("vae", "encoder.conv_in.weight")
        let vaeUp = Set(vaeMap.keys.compactMap { n -> Int? in
            let c = n.split(separator: ".")
            return c.count > 2 && c[0] == "decoder" && c[1] == "up_blocks" ? Int(c[2]) : nil
        }).count
        guard vaeDown >= 1, vaeDown == vaeUp else {
            throw misfit(decoderIn.source, "belongs to a VAE whose encoder and decoder have different depths")
        }
        let vaeConfig: [String: Any] = [
            "_class_name": "AutoencoderKL", "in_channels": try dim(encoderIn, 1), "out_channels": try dim(decoderOut, 0),
            "block_out_channels": vaeChannels, "layers_per_block": vaePerBlock,
            "down_block_types": Array(repeating: "DownEncoderBlock2D", count: vaeDown),
            "up_block_types": Array(repeating: "UpDecoderBlock2D", count: vaeDown),
            "latent_channels": try dim(decoderIn, 1), "norm_num_groups": 32, "act_fn": "silu",
            "sample_size": sampleSize * 8, "scaling_factor": 0.18215,
            "use_post_quant_conv": vaeMap["post_quant_conv.weight"] != nil,
            "use_quant_conv": vaeMap["quant_conv.weight"] != nil,
            "mid_block_add_attention": vaeMap["decoder.mid_block.attentions.0.to_q.weight"] != nil,
        ]

        // Text encoder config.
        let tokens = try shape("text_encoder", "text_model.embeddings.token_embedding.weight")
        let positions = try shape("text_encoder", "text_model.embeddings.position_embedding.weight")
        let fc1 = try shape("text_encoder", "text_model.encoder.layers.0.mlp.fc1.weight")
        guard tokens.shape.count == 2, positions.shape.count == 2 else {
            throw misfit(tokens.source, "is \(tokens.shape), not a token embedding")
        }
        let hidden = tokens.shape[1]
        guard hidden % 64 == 0 else {
            throw misfit(tokens.source, "has width \(hidden), not a multiple of CLIP's 64-wide heads (pass --config DIR)")
        }
        let layers = Set(textMap.keys.compactMap { n -> Int? in
            let c = n.split(separator: ".")
            return c.count > 3 && c[1] == "encoder" && c[2] == "layers" ? Int(c[3]) : nil
        }).count
        let textConfig: [String: Any] = [
            "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
            "vocab_size": tokens.shape[0], "hidden_size": hidden, "intermediate_size": try dim(fc1, 0),
            "num_hidden_layers": layers, "num_attention_heads": hidden / 64,
            "max_position_embeddings": positions.shape[0], "hidden_act": sd2 ? "gelu" : "quick_gelu",
            "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": sd2 ? 0 : 49407,
        ]

        // Scheduler: SD 1.5's PNDM, SD 2.1's DDIM (v-prediction), as diffusers' default pipelines have them.
        var scheduler: [String: Any] = [
            "_class_name": sd2 ? "DDIMScheduler" : "PNDMScheduler", "num_train_timesteps": 1000,
            "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "clip_sample": false,
            "timestep_spacing": "leading", "prediction_type": sd2 ? "v_prediction" : "epsilon",
        ]
        if let prediction { scheduler["prediction_type"] = prediction.schedulerValue }

        func json(_ object: [String: Any]) -> String {
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
            return String(decoding: data, as: UTF8.self)
        }
        configs = ["unet": json(unetConfig), "vae": json(vaeConfig), "text_encoder": json(textConfig),
                   "scheduler": json(scheduler)]
    }
}

extension StableDiffusionModel {
    /// A model from a CompVis-named file's tensors: `shapes` (full name → PyTorch shape) and `stored`, which
    /// hands them out by their stored names. Configs are inferred unless `options.configDirectory` gives a
    /// diffusers folder's; the tokenizer is that folder's, else sdd's CLIP BPE table.
    /// `givenConfigs` (config texts by component, e.g. from an sdd GGUF's metadata) and `givenTokenizer`
    /// take the place of inferred ones.
    static func singleFile(url: URL, shapes: [String: [Int]], stored: any WeightProvider & Sendable, options: ModelOpenOptions,
                           pipelineClass: String = "StableDiffusionPipeline", givenConfigs: [String: String]? = nil,
                           givenTokenizer: CLIPTokenizer? = nil) throws -> (StableDiffusionModel, SingleFileCheckpoint) {
        let path = url.path
        var checkpoint = try SingleFileCheckpoint(shapes: shapes, file: path, prediction: options.prediction,
                                                  inferArchitecture: options.configDirectory == nil && givenConfigs == nil)
        var tokenizer: CLIPTokenizer? = givenTokenizer
        if let givenConfigs {
            checkpoint.configs = givenConfigs
            if let prediction = options.prediction, let text = givenConfigs["scheduler"],
                var object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
            {
                object["prediction_type"] = prediction.schedulerValue
                if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
                    checkpoint.configs["scheduler"] = String(decoding: data, as: UTF8.self)
                }
            }
        } else if let dir = options.configDirectory {
            for (component, file) in [("unet", "unet/config.json"), ("vae", "vae/config.json"),
                                      ("text_encoder", "text_encoder/config.json"),
                                      ("scheduler", "scheduler/scheduler_config.json")] {
                let u = dir.appendingPathComponent(file)
                if component == "scheduler", !FileManager.default.fileExists(atPath: u.path) { continue }
                guard let data = FileManager.default.contents(atPath: u.path) else {
                    throw PipelineError.missingFile(path: u.path, what: "--config folder's \(component) config")
                }
                checkpoint.configs[component] = String(decoding: data, as: UTF8.self)
            }
            if let prediction = options.prediction, let text = checkpoint.configs["scheduler"],
                var object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
            {
                object["prediction_type"] = prediction.schedulerValue
                if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
                    checkpoint.configs["scheduler"] = String(decoding: data, as: UTF8.self)
                }
            }
            let tokenizerDir = dir.appendingPathComponent("tokenizer")
            if FileManager.default.fileExists(atPath: tokenizerDir.appendingPathComponent("vocab.json").path) {
                tokenizer = try CLIPTokenizer(directory: tokenizerDir)
            }
        }
        func config<T: Decodable>(_ type: T.Type, _ component: String) throws -> T {
            try decodeConfigJSON(type, Data((checkpoint.configs[component] ?? "{}").utf8), file: path,
                                 key: "\(component) config")
        }
        let unet = try config(UNetConfig.self, "unet")
        try unet.validate(file: "\(path) [unet config]")
        let vae = try config(VAEConfig.self, "vae")
        try vae.validate(file: "\(path) [vae config]")
        let textEncoder = try config(CLIPTextConfig.self, "text_encoder")
        try textEncoder.validate(file: "\(path) [text_encoder config]")
        let scheduler = try config(SchedulerConfig.self, "scheduler")
        let maps = checkpoint.maps
        let model = try StableDiffusionModel(
            url: url, pipelineClass: pipelineClass, unet: unet, vae: vae, textEncoder: textEncoder,
            scheduler: scheduler, tokenizer: try tokenizer ?? CLIPVocabulary.tokenizer(padToken: checkpoint.padToken)
        ) { component in
            guard let map = maps[component] else {
                throw WeightsError(.noWeights, file: path, "no component \"\(component)\" in this file")
            }
            return RenamedWeights(map: map, base: stored, path: path)
        }
        return (model, checkpoint)
    }
}

extension StableDiffusionModel {
    /// The CompVis (original Stable Diffusion) name, with its component prefix, and the PyTorch shape of one
    /// of this model's tensors under diffusers' name; nil for a name outside SD 1.x/2.x's components. Text
    /// encoder names are CLIP's (`cond_stage_model.transformer.text_model.*`); the VAE's mid-attention
    /// matrices become [C, C, 1, 1] convs as in CompVis files.
    public func compVisName(component: String, name: String, shape: [Int]) -> (name: String, shape: [Int])? {
        switch component {
        case "unet":
            let perBlock: Int
            switch unet.layersPerBlock {
            case .all(let v): perBlock = v
            case .each(let list): perBlock = list.first ?? 2
            }
            let ups = unet.upBlockTypes
            return CompVisNames.compVisUNetName(name, layersPerBlock: perBlock) {
                $0 < ups.count && ups[$0].hasPrefix("CrossAttn")
            }.map { (CompVisNames.unetPrefix + $0, shape) }
        case "vae":
            return CompVisNames.compVisVAEName(name, levels: vae.blockOutChannels.count).map {
                (CompVisNames.vaePrefix + $0.name, $0.isAttentionMatrix && shape.count == 2 ? shape + [1, 1] : shape)
            }
        case "text_encoder":
            return (CompVisNames.clipPrefix + (name.hasPrefix("text_model.") ? name : "text_model." + name), shape)
        default:
            return nil
        }
    }
}
