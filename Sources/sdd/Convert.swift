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

    @OptionGroup var model: ModelOption

    @OptionGroup var source: ModelSourceOptions

    @Option(help: "Tensor names: sdd (unet.*, vae.*, text_encoder.*; conv kernels quantized too) or compvis (the original Stable Diffusion names stable-diffusion.cpp loads; conv kernels stay F16 under a quantized --type).")
    var names: GGUFNaming = .sdd

    @Option(help: "Weight type.")
    var type: WritableType

    @Option(help: "VAE weight type: f16, f32 or same (as --type). Default: f16 for quantized types, else same.")
    var vaeType: VAETypeChoice?

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
        let main = type.tensorType
        let vae: TensorType?
        switch vaeType {
        case nil: vae = nil
        case .same?: vae = main
        case .f16?: vae = .f16
        case .f32?: vae = .f32
        }
        let naming = names
        let path = try model.path()
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

/// `--type`: the tensor types sdd writes — those the type table has an encoder for (the k-quants are read only).
struct WritableType: ExpressibleByArgument {
    let tensorType: TensorType

    init?(argument: String) {
        guard let type = TensorType(name: argument), type.isWritable else { return nil }
        tensorType = type
    }

    static var allValueStrings: [String] { TensorType.allCases.filter(\.isWritable).map(\.name) }

    var defaultValueDescription: String { tensorType.name }
}

/// `--vae-type`: f16, f32, or the same as `--type`.
enum VAETypeChoice: String, CaseIterable, ExpressibleByArgument {
    case f16, f32, same

    init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}
