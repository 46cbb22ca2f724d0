// Options shared by `sdd generate`, `bench` and `serve`, declared once (the model, the memory budget, how the
// products multiply, weight residency), and the typed values every command parses its named choices as.

import ArgumentParser
import Foundation
import Logging
import MMapWeights
import Pipeline
import TiledKernels

/// `--model`, for every command that opens one.
struct ModelOption: ParsableArguments {
    @Option(help: "Model: a diffusers folder, a .gguf file (sdd's or stable-diffusion.cpp's) or a CompVis single-file .safetensors checkpoint. Default: $SDD_MODEL, else the bundled demo model.")
    var model: String?

    /// --model, else $SDD_MODEL, else the bundled demo model.
    func path() throws -> String { try ModelLocation.resolve(model) }
}

/// How a run is fitted to the machine: `--memory-budget` and `--precision`.
struct ComputeOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Memory budget, e.g. 256M, 1.5G or 2T, or none (no planning): weights are streamed and the VAE tiled to stay under it, or the run is refused with the numbers (by serve: the request, with 413). Default: the limit sdd runs under (its cgroup's memory.max / memory.high / memory.limit_in_bytes, so a unit's MemoryMax=, else MemAvailable) less headroom.",
            valueName: "size"),
        transform: { try MemoryBudgetOption.Setting(parsing: $0) })
    var memoryBudget: MemoryBudgetOption.Setting?

    @Option(help: "How the UNet and VAE multiply: auto (bf16 for a quantized GGUF on a CPU with AVX512_BF16, else f32), f32 (diffusers' results to rounding) or bf16 (operands rounded to BF16, F32 sums; faster where the CPU has AVX512_BF16).")
    var precision: PrecisionChoice = .auto

    /// The budget in bytes (nil: no planning) and where it came from.
    func budget() -> MemoryBudgetOption.Resolved { MemoryBudgetOption.resolve(setting: memoryBudget) }

    /// The products to run with; nil: the pipeline's automatic choice. Throws for bf16 on a CPU without it.
    func products() throws -> ProductPrecision? { try ProductPrecision.named(precision.rawValue) }
}

/// `--residency`, for the commands that load weights themselves (the daemon always streams).
struct ResidencyOption: ParsableArguments {
    @Option(help: "Weight residency: streamed (about one module resident), resident, or strict (also drops page cache).")
    var residency: WeightResidency = .streamed
}

/// `--precision`'s choices; bf16 is checked against the CPU when the run starts.
enum PrecisionChoice: String, CaseIterable, ExpressibleByArgument {
    case auto, f32, bf16

    init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

/// A size option's value: `MemorySize.parse`, for `@Option(transform:)`.
func parseSize(_ text: String) throws -> Int { try MemorySize.parse(text) }

// Choices a user names on the command line. ArgumentParser lists the raw values when one is not known, and refuses
// it as a usage error; names are matched in any case.

extension SchedulerKind: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

extension TimestepSpacing: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

extension WeightResidency: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

extension LoRAApplication: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

extension GGUFNaming: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

// ModelPrediction's own init?(argument:) also takes "eps" and "v_prediction".
extension ModelPrediction: ExpressibleByArgument {}

extension Logger.Level: @retroactive ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}
