// LoRA options shared by `sdd generate` and `sdd bench`: --lora PATH[:SCALE] (repeatable), --lora-dir for
// A1111's <lora:NAME:SCALE> prompt tags, and --lora-apply (side path or merge).

import ArgumentParser
import Foundation
import Pipeline

struct LoRAOptions: ParsableArguments {
    @Option(name: .customLong("lora"), help: ArgumentHelp(
        "A LoRA to apply, PATH[:SCALE] (scale default 1; repeat for several): kohya/A1111 or diffusers/PEFT safetensors.",
        valueName: "path[:scale]"))
    var loras: [String] = []

    @Option(help: "Where <lora:NAME:SCALE> tags in a prompt find NAME.safetensors. Default: $SDD_LORA_DIR.")
    var loraDir: String?

    @Option(help: "How LoRAs reach the products: side (beside each product, base weights untouched) or merge (merged into each adapted weight at bind time, in its own type).")
    var loraApply: LoRAApplication = .side

    var directory: URL? {
        let path = loraDir ?? ProcessInfo.processInfo.environment["SDD_LORA_DIR"]
        guard let path, !path.isEmpty else { return nil }
        return URL(fileURLWithPath: path, isDirectory: true)
    }

    /// The prompt without its <lora:…> tags, and the LoRAs to run it with: every --lora, then the prompt's tags
    /// (resolved in --lora-dir) in order.
    func resolve(prompt: String) throws -> (prompt: String, specs: [LoRASpec]) {
        var specs = try loras.map { try LoRASpec.parse($0) }
        let (clean, tags) = try PromptLoRAs.extract(prompt)
        for tag in tags {
            specs.append(LoRASpec(path: try PromptLoRAs.resolve(tag.name, in: directory).path, scale: tag.scale))
        }
        return (clean, specs)
    }
}
