// ModelSourceOptions: how a model is opened: configs for a file that carries none (`--config`, `--prediction`)
// and another VAE (`--vae`), declared once for generate and convert.

import ArgumentParser
import Foundation
import Pipeline

struct ModelSourceOptions: ParsableArguments {
    @Option(help: "For a single-file checkpoint: a diffusers model folder whose unet/, vae/, text_encoder/ configs (and scheduler/, tokenizer/ when present) replace the ones inferred from the file's tensors.")
    var config: String?

    @Option(help: "What the model predicts, for files that cannot say: epsilon or v (also v_prediction).")
    var prediction: ModelPrediction?

    @Option(help: "Another VAE: a diffusers AutoencoderKL or AutoencoderTiny (TAESD) folder (its own scaling factor), or a single-file AutoencoderKL .safetensors with CompVis names, bare or under first_stage_model. (e.g. vae-ft-mse-840000-ema-pruned.safetensors), configured as the model's own VAE unless --vae-config says otherwise.")
    var vae: String?

    @Option(help: "For a single-file --vae: the AutoencoderKL config.json (or a folder holding it, or vae/config.json) its tensors follow, as diffusers' from_single_file(config=). Default: the model's own VAE config.")
    var vaeConfig: String?

    /// The options for `StableDiffusionModel(url:options:)`.
    func openOptions() throws -> ModelOpenOptions {
        var options = ModelOpenOptions()
        if let config {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: config, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw PipelineError.invalidRequest("--config \(config): not a diffusers model folder")
            }
            options.configDirectory = URL(fileURLWithPath: config, isDirectory: true)
        }
        options.prediction = prediction
        return options
    }

    /// Opens `path` with these options; a diffusers folder carries its own configs, so it takes neither.
    func open(_ path: String) throws -> StableDiffusionModel {
        let model = try StableDiffusionModel(url: URL(fileURLWithPath: path), options: try openOptions(for: path))
        guard let vae else {
            _ = try vaeConfigURL()
            return model
        }
        return try model.replacingVAE(with: URL(fileURLWithPath: vae), config: try vaeConfigURL())
    }

    /// `--vae-config` as a URL; refused without `--vae`.
    func vaeConfigURL() throws -> URL? {
        guard let vaeConfig else { return nil }
        guard vae != nil else { throw PipelineError.invalidRequest("--vae-config \(vaeConfig): give the VAE file with --vae") }
        return URL(fileURLWithPath: vaeConfig)
    }

    /// `openOptions()`, refused for a diffusers folder, which carries its own configs.
    func openOptions(for path: String) throws -> ModelOpenOptions {
        let options = try openOptions()
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue,
            config != nil || prediction != nil
        {
            throw PipelineError.invalidRequest(
                "--config and --prediction are for single-file models; \(path) is a diffusers folder with its own configs")
        }
        return options
    }
}
