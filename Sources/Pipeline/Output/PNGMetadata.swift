// PNGMetadata: the generation parameters written into each PNG, in the "parameters" text chunk
// convention other Stable Diffusion tools read, plus one key per parameter.

import Foundation

public enum PNGMetadata {
    /// loras: the LoRAs the image was made with; they appear as A1111's `<lora:NAME:SCALE>` tags after the prompt in
    /// `parameters` (NAME: the file name without .safetensors) and as a `loras` entry.
    public static func entries(for result: GenerationResult, model: String,
                               loras: [LoRASpec] = []) -> [(key: String, value: String)] {
        let s = result.settings
        let tags = loras.map { spec -> String in
            var name = URL(fileURLWithPath: spec.path).lastPathComponent
            if name.hasSuffix(".safetensors") { name = String(name.dropLast(".safetensors".count)) }
            return "<lora:\(name):\(spec.scale)>"
        }
        var summary = s.prompt + (tags.isEmpty ? "" : " " + tags.joined(separator: " "))
        if let neg = s.negativePrompt { summary += "\nNegative prompt: \(neg)" }
        summary += "\nSteps: \(s.steps), Sampler: \(A1111Samplers.name(ofScheduler: s.scheduler.rawValue)), CFG scale: \(s.guidance), "
            + "Seed: \(result.seed), Size: \(result.width)x\(result.height), Model: \(model)"
        if let eta = s.eta { summary += ", Eta: \(eta)" }
        if let spacing = s.timestepSpacing { summary += ", Timestep spacing: \(spacing.rawValue)" }
        var entries: [(key: String, value: String)] = [
            ("parameters", summary),
            ("prompt", s.prompt),
            ("negative_prompt", s.negativePrompt ?? ""),
            ("seed", String(result.seed)),
            ("steps", String(s.steps)),
            ("scheduler", s.scheduler.rawValue),
            ("guidance", String(s.guidance)),
            ("size", "\(result.width)x\(result.height)"),
            ("model", model),
            ("Software", "sdd"),
        ] + (tags.isEmpty ? [] : [("loras", tags.joined(separator: " "))])
        if let eta = s.eta { entries.append(("eta", String(eta))) }
        if let spacing = s.timestepSpacing { entries.append(("timestep_spacing", spacing.rawValue)) }
        return entries
    }
}
