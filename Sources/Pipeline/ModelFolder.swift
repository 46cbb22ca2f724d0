// ModelFolder: finds a Stable Diffusion model in diffusers' folder layout through model_index.json
// and decodes each component's config, with errors that name the file at fault.

import Foundation

/// A diffusers pipeline folder: model_index.json plus unet/, vae/, text_encoder/, tokenizer/, scheduler/.
public struct ModelFolder: Sendable {
    public let url: URL
    public let pipelineClass: String
    public let unet: UNetConfig
    public let vae: VAEConfig
    public let textEncoder: CLIPTextConfig
    public let scheduler: SchedulerConfig

    /// The model's short name for metadata (the folder's name).
    public var name: String { url.lastPathComponent }

    /// Pixels per latent cell (diffusers' vae_scale_factor).
    public var vaeScaleFactor: Int { vae.scaleFactor }

    /// diffusers' default size: unet.sample_size × vae_scale_factor.
    public var defaultSize: (width: Int, height: Int) {
        let s = unet.sampleSize ?? .square(64)
        return (s.width * vaeScaleFactor, s.height * vaeScaleFactor)
    }

    public init(url: URL) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw PipelineError.missingFile(path: url.path, what: "model folder")
        }
        guard isDirectory.boolValue else {
            throw PipelineError.unsupported(file: url.path,
                                            feature: "a single-file model (use a diffusers folder with model_index.json)")
        }
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
        scheduler = try decodeConfig(SchedulerConfig.self,
                                     at: url.appendingPathComponent("scheduler/scheduler_config.json"))
        let contextDims = try unet.crossAttentionDim.expanded(levels: unet.blockOutChannels.count,
                                                              field: "cross_attention_dim", file: unetFile.path)
        for dim in contextDims where dim != textEncoder.hiddenSize {
            throw PipelineError.badConfig(file: unetFile.path, field: "cross_attention_dim",
                                          reason: "is \(dim) but the text encoder's hidden_size is \(textEncoder.hiddenSize)")
        }
        if unet.inChannels != vae.latentChannels {
            throw PipelineError.badConfig(file: unetFile.path, field: "in_channels",
                                          reason: "is \(unet.inChannels) but the VAE has \(vae.latentChannels) latent channels")
        }
    }

    public var tokenizerURL: URL { url.appendingPathComponent("tokenizer") }
}
