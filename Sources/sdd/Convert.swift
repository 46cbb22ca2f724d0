// `sdd convert`: a diffusers folder → one GGUF file holding every component, config and the tokenizer.

import ArgumentParser
import Foundation
import MMapWeights
import Pipeline

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a diffusers model folder or a CompVis single file to one (quantized) GGUF file.",
        discussion: """
            Large matmul and conv weights get --type (when their rows are whole blocks of 32); norms, biases, \
            position embeddings and small tensors stay F32; tensors whose rows are not whole blocks fall back \
            to F16. The VAE is kept F16 for quantized types unless --vae-type says otherwise. The output is \
            written to a temp file, fsynced and renamed into place; it alone is a complete --model.
            """)

    @Option(help: "The model: a diffusers folder, a CompVis single-file .safetensors checkpoint or a stable-diffusion.cpp GGUF. Default: $SDD_MODEL.")
    var model: String?

    @OptionGroup var source: ModelSourceOptions

    @Option(help: "Tensor names: sdd (unet.*, vae.*, text_encoder.*; conv kernels quantized too) or compvis (the original Stable Diffusion names stable-diffusion.cpp loads; conv kernels stay F16 under a quantized --type).")
    var names: String = "sdd"

    @Option(help: "Weight type: q8_0, q4_0, q4_1, q5_0, q5_1, f16, bf16 or f32.")
    var type: String

    @Option(help: "VAE weight type: f16, f32 or same (as --type). Default: f16 for quantized types, else same.")
    var vaeType: String?

    @Option(name: .customLong("lora"), help: ArgumentHelp(
        "A LoRA to bake into the UNet and text encoder weights, PATH[:SCALE] (repeatable); summed in F32 before quantizing.",
        valueName: "path[:scale]"))
    var loras: [String] = []

    @Option(name: [.short, .long], help: "The GGUF file to write.")
    var output: String

    func run() throws {
        do {
            try convert()
        } catch {
            printError("sdd: error: \(error)")
            throw ExitCode.failure
        }
    }

    private func convert() throws {
        guard let main = TensorType(name: type), main.isWritable else {
            throw PipelineError.invalidRequest(
                "--type \(type): choose one of q8_0, q4_0, q4_1, q5_0, q5_1, f16, bf16, f32")
        }
        var vae: TensorType?
        switch vaeType?.lowercased() {
        case nil: vae = nil
        case "same": vae = main
        case "f16": vae = .f16
        case "f32": vae = .f32
        case let other?: throw PipelineError.invalidRequest("--vae-type \(other): choose f16, f32 or same")
        }
        guard let naming = GGUFNaming(rawValue: names.lowercased()) else {
            throw PipelineError.invalidRequest("--names \(names): choose sdd or compvis")
        }
        let path = try ModelLocation.resolve(model)
        guard FileManager.default.fileExists(atPath: path) else {
            throw PipelineError.invalidRequest("--model \(path): no such folder or file")
        }
        let start = Date()
        let summary = try ModelConverter.convert(
            model: URL(fileURLWithPath: path), openOptions: try source.openOptions(for: path),
            vae: source.vae.map { URL(fileURLWithPath: $0) }, vaeConfig: try source.vaeConfigURL(),
            to: URL(fileURLWithPath: output),
            options: ConversionOptions(type: main, vaeType: vae, naming: naming,
                                      loras: try loras.map { try LoRASpec.parse($0) })
        ) { printError("sdd: convert: \($0)") }
        let types = summary.countsByType.sorted { $0.key.name < $1.key.name }.map { "\($0.key.name) \($0.value)" }
        if !summary.skipped.isEmpty {
            printError("sdd: convert: left out non-float tensors: \(summary.skipped.joined(separator: ", "))")
        }
        printError(String(format: "sdd: convert: %d tensors (%@), %.1f MB in %.1f s",
                          summary.tensorCount, types.joined(separator: ", "),
                          Double(summary.fileSize) / 1_000_000, Date().timeIntervalSince(start)))
        print(output)
    }
}
