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

    @Option(help: "Another VAE: a diffusers AutoencoderKL or AutoencoderTiny (TAESD) folder (its own scaling factor).")
    var vae: String?

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
        return try vae.map { try model.replacingVAE(with: URL(fileURLWithPath: $0)) } ?? model
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
