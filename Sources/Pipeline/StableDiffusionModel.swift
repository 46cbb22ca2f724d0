// StableDiffusionModel: finds a Stable Diffusion model in diffusers' folder layout through model_index.json
// and decodes each component's config, with errors that name the file at fault.

import Foundation

/// A Stable Diffusion 1.x/2.x model: configs, tokenizer and weights of each component.
public struct StableDiffusionModel: Sendable {
    public let url: URL
    public let pipelineClass: String
    public let unet: UNetConfig
    public private(set) var vae: VAEConfig
    public let textEncoder: CLIPTextConfig
    public let scheduler: SchedulerConfig
    public let tokenizer: CLIPTokenizer
    /// What the model says plain generations use (sdd.json or GGUF `sdd.defaults.*`); empty when it says nothing.
    public let defaults: GenerationDefaults
    /// Where the scheduler config came from, for errors ("…/scheduler/scheduler_config.json").
    public let schedulerConfigSource: String
    /// Set when the VAE is an AutoencoderTiny (TAESD, from `replacingVAE(with:)`): its decoder replaces `vae`'s.
    public private(set) var tinyAutoencoder: TinyAutoencoderConfig?
    /// Where a replacement VAE came from (`replacingVAE(with:)`); nil for the model's own.
    public private(set) var vaeURL: URL?
    /// The config.json text of a replacement AutoencoderKL as used (its folder's, `--vae-config`'s, or the model's
    /// own VAE config for a single-file VAE); nil for the model's own VAE.
    public private(set) var vaeConfigText: String?
    /// Opens one component's weights ("unet", "vae", "text_encoder").
    private var openWeights: @Sendable (String) throws -> WeightProvider

    /// The model's short name for metadata (the folder's or file's name, without extension).
    public var name: String { url.hasDirectoryPath ? url.lastPathComponent : url.deletingPathExtension().lastPathComponent }

    /// The weights of one component ("unet", "vae", "text_encoder"), mapped, not read.
    public func weights(_ component: String) throws -> WeightProvider { try openWeights(component) }

    /// A model from parts (used by other on-disk formats such as GGUF).
    public init(url: URL, pipelineClass: String, unet: UNetConfig, vae: VAEConfig, textEncoder: CLIPTextConfig,
                scheduler: SchedulerConfig, tokenizer: CLIPTokenizer, defaults: GenerationDefaults = GenerationDefaults(),
                schedulerConfigSource: String? = nil,
                weights: @escaping @Sendable (String) throws -> WeightProvider) throws {
        self.url = url
        self.pipelineClass = pipelineClass
        self.unet = unet
        self.vae = vae
        self.textEncoder = textEncoder
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.schedulerConfigSource = schedulerConfigSource ?? "\(url.path) [scheduler config]"
        self.openWeights = weights
        try scheduler.validate(file: "\(url.path) [scheduler config]")
        try Self.checkCompatible(unet: unet, vae: vae, textEncoder: textEncoder, file: url.path)
        try defaults.validate(scaleFactor: vae.scaleFactor, file: url.path)
    }

    /// Pixels per latent cell (diffusers' vae_scale_factor).
    public var vaeScaleFactor: Int { tinyAutoencoder?.scaleFactor ?? vae.scaleFactor }

    /// What the pipeline divides latents by before decoding (the VAE config's scaling_factor; diffusers'
    /// StableDiffusionPipeline applies no shift_factor).
    public var latentScalingFactor: Float { tinyAutoencoder?.scalingFactor ?? vae.scalingFactor }

    /// The model's own default size (`defaults`), else diffusers': unet.sample_size × vae_scale_factor.
    public var defaultSize: (width: Int, height: Int) {
        let s = unet.sampleSize ?? .square(64)
        return (defaults.width ?? s.width * vaeScaleFactor, defaults.height ?? s.height * vaeScaleFactor)
    }

    /// Opens a model: a diffusers folder, a .gguf file (sdd's, or stable-diffusion.cpp's CompVis-named one),
    /// or a single-file CompVis `.safetensors` checkpoint; `options` apply to files that carry no configs.
    public init(url: URL, options: ModelOpenOptions = ModelOpenOptions()) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw PipelineError.missingFile(path: url.path, what: "model folder or .gguf file")
        }
        if !isDirectory.boolValue {
            self = try StableDiffusionModel.openSingleFile(url, options: options)
            return
        }
        try self.init(diffusersFolder: URL(fileURLWithPath: url.path, isDirectory: true))
    }

    /// A diffusers pipeline folder: model_index.json plus unet/, vae/, text_encoder/, tokenizer/, scheduler/.
    public init(diffusersFolder url: URL) throws {
        self.url = url
        let indexURL = url.appendingPathComponent("model_index.json")
        guard FileManager.default.fileExists(atPath: indexURL.path) else {
            throw PipelineError.missingFile(path: indexURL.path, what: "model_index.json: is this a diffusers model folder?")
        }
        let index: [String: Any]
        do {
            let object = try JSONSerialization.jsonObject(with: Data(contentsOf: indexURL))
            guard let dict = object as? [String: Any] else { throw CocoaError(.fileReadCorruptFile) }
            index = dict
        } catch {
            throw PipelineError.badConfig(file: indexURL.path, field: "(file)", reason: "is not a JSON object")
        }
        pipelineClass = index["_class_name"] as? String ?? "StableDiffusionPipeline"
        let supported = ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"]
        guard supported.contains(pipelineClass) else {
            throw PipelineError.unsupported(file: indexURL.path, feature: "pipeline class \(pipelineClass)")
        }
        for component in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
            guard let entry = index[component] as? [Any], entry.count == 2, entry[1] is String else {
                throw PipelineError.badConfig(file: indexURL.path, field: component,
                                              reason: "is missing or not a [library, class] pair")
            }
        }
        let unetFile = url.appendingPathComponent("unet/config.json")
        unet = try decodeConfig(UNetConfig.self, at: unetFile)
        try unet.validate(file: unetFile.path)
        let vaeFile = url.appendingPathComponent("vae/config.json")
        vae = try decodeConfig(VAEConfig.self, at: vaeFile)
        try vae.validate(file: vaeFile.path)
        let textFile = url.appendingPathComponent("text_encoder/config.json")
        textEncoder = try decodeConfig(CLIPTextConfig.self, at: textFile)
        try textEncoder.validate(file: textFile.path)
        let schedulerFile = url.appendingPathComponent("scheduler/scheduler_config.json")
        scheduler = try decodeConfig(SchedulerConfig.self, at: schedulerFile)
        try scheduler.validate(file: schedulerFile.path)
        schedulerConfigSource = schedulerFile.path
        tokenizer = try CLIPTokenizer(directory: url.appendingPathComponent("tokenizer"))
        defaults = try GenerationDefaults.load(folder: url) ?? GenerationDefaults()
        let root = url
        openWeights = { component in try ComponentWeights(directory: root, component: component) }
        try Self.checkCompatible(unet: unet, vae: vae, textEncoder: textEncoder, file: unetFile.path)
        try defaults.validate(scaleFactor: vae.scaleFactor,
                              file: url.appendingPathComponent(GenerationDefaults.fileName).path)
    }

    /// The UNet must take the text encoder's embeddings and the VAE's latents.
    static func checkCompatible(unet: UNetConfig, vae: VAEConfig, textEncoder: CLIPTextConfig, file: String) throws {
        let unetFile = file
        let contextDims = try unet.crossAttentionDim.expanded(levels: unet.blockOutChannels.count,
                                                              field: "cross_attention_dim", file: unetFile)
        for dim in contextDims where dim != textEncoder.hiddenSize {
            throw PipelineError.badConfig(file: unetFile, field: "cross_attention_dim",
                                          reason: "is \(dim) but the text encoder's hidden_size is \(textEncoder.hiddenSize)")
        }
        if unet.inChannels != vae.latentChannels {
            throw PipelineError.badConfig(file: unetFile, field: "in_channels",
                                          reason: "is \(unet.inChannels) but the VAE has \(vae.latentChannels) latent channels")
        }
    }

    /// This model with another VAE, as diffusers' `from_pretrained(..., vae=...)`: a diffusers AutoencoderKL or
    /// AutoencoderTiny (TAESD) folder (config.json + weights), a pipeline folder whose vae/ holds one, or a
    /// single-file AutoencoderKL (`.safetensors` with CompVis names, bare or under `first_stage_model.`, as
    /// `AutoencoderKL.from_single_file`). A file's config is `config` (a config.json, or a folder holding one or
    /// vae/config.json) when given, else the model's own VAE config (an ft-MSE VAE has SD's), and its tensors
    /// must fit it. The scaling factor comes from the VAE's config. The latent channels must match the UNet's.
    public func replacingVAE(with url: URL, config: URL? = nil) throws -> StableDiffusionModel {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw PipelineError.missingFile(path: url.path, what: "VAE folder or .safetensors file (--vae)")
        }
        guard isDirectory.boolValue else { return try replacingVAE(file: url, config: config) }
        if let config {
            throw PipelineError.invalidRequest("--vae-config \(config.path): only for a single-file VAE; the folder "
                + "\(url.path) carries its own config.json")
        }
        var folder = URL(fileURLWithPath: url.path, isDirectory: true)
        if !FileManager.default.fileExists(atPath: folder.appendingPathComponent("config.json").path),
           FileManager.default.fileExists(atPath: folder.appendingPathComponent("vae/config.json").path) {
            folder = folder.appendingPathComponent("vae", isDirectory: true)
        }
        let configURL = folder.appendingPathComponent("config.json")
        let className = try decodeConfig(VAEClassName.self, at: configURL).className ?? "AutoencoderKL"
        var copy = self
        let latentChannels: Int
        switch className {
        case "AutoencoderKL":
            let config = try decodeConfig(VAEConfig.self, at: configURL)
            try config.validate(file: configURL.path)
            copy.vae = config
            copy.tinyAutoencoder = nil
            latentChannels = config.latentChannels
        case "AutoencoderTiny":
            let config = try decodeConfig(TinyAutoencoderConfig.self, at: configURL)
            try config.validate(file: configURL.path)
            copy.tinyAutoencoder = config
            latentChannels = config.latentChannels
        default:
            throw PipelineError.unsupported(file: configURL.path,
                                            feature: "VAE class \(className) (supported: AutoencoderKL, AutoencoderTiny)")
        }
        guard latentChannels == unet.inChannels else {
            throw PipelineError.badConfig(file: configURL.path, field: "latent_channels",
                                          reason: "is \(latentChannels) but the UNet takes \(unet.inChannels) channels")
        }
        // The weights must open now, so a broken VAE fails before any work.
        _ = try ComponentWeights(directory: folder, component: "")
        let base = openWeights, vaeFolder = folder
        copy.openWeights = { component in
            component == "vae" ? try ComponentWeights(directory: vaeFolder, component: "") : try base(component)
        }
        copy.vaeURL = folder
        copy.vaeConfigText = className == "AutoencoderKL"
            ? String(decoding: try Data(contentsOf: configURL), as: UTF8.self) : nil
        try copy.defaults.validate(scaleFactor: copy.vaeScaleFactor, file: url.path)
        return copy
    }

    /// `replacingVAE(with:config:)` for a single `.safetensors` file (see `SingleFileVAE`).
    private func replacingVAE(file url: URL, config configLocation: URL?) throws -> StableDiffusionModel {
        var config = vae
        var configText = config.diffusersJSON
        var configSource = "the model's own VAE config (pass --vae-config for another)"
        if let location = configLocation {
            var isDirectory: ObjCBool = false
            var configURL = location
            if FileManager.default.fileExists(atPath: location.path, isDirectory: &isDirectory), isDirectory.boolValue {
                configURL = location.appendingPathComponent("config.json")
                if !FileManager.default.fileExists(atPath: configURL.path) {
                    configURL = location.appendingPathComponent("vae/config.json")
                }
            }
            guard let data = FileManager.default.contents(atPath: configURL.path) else {
                throw PipelineError.missingFile(path: configURL.path, what: "AutoencoderKL config.json (--vae-config)")
            }
            let className = try decodeConfig(VAEClassName.self, at: configURL).className ?? "AutoencoderKL"
            guard className == "AutoencoderKL" else {
                throw PipelineError.unsupported(
                    file: configURL.path, feature: "VAE class \(className) for a single-file VAE (supported: AutoencoderKL)")
            }
            config = try decodeConfig(VAEConfig.self, at: configURL)
            try config.validate(file: configURL.path)
            configText = String(decoding: data, as: UTF8.self)
            configSource = configURL.path
        }
        guard config.latentChannels == unet.inChannels else {
            throw PipelineError.badConfig(
                file: configSource, field: "latent_channels",
                reason: "is \(config.latentChannels) but the UNet takes \(unet.inChannels) channels")
        }
        let single = try SingleFileVAE(url: url, config: config, configSource: configSource)
        var copy = self
        copy.vae = config
        copy.tinyAutoencoder = nil
        let base = openWeights, weights = single.weights
        copy.openWeights = { component in component == "vae" ? weights : try base(component) }
        copy.vaeURL = url
        copy.vaeConfigText = configText
        try copy.defaults.validate(scaleFactor: copy.vaeScaleFactor, file: url.path)
        return copy
    }

    // Single-file formats (`openSingleFile`) live in GGUFModel.swift.
}

/// A component config's `_class_name`.
private struct VAEClassName: Decodable {
    var className: String?
    enum CodingKeys: String, CodingKey { case className = "_class_name" }
}
