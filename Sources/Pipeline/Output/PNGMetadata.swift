// PNGMetadata: the generation parameters written into each PNG, in the "parameters" text chunk
// convention other Stable Diffusion tools read, plus one key per parameter.

public enum PNGMetadata {
    public static func entries(for result: GenerationResult, model: String) -> [(key: String, value: String)] {
        let s = result.settings
        var summary = s.prompt
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
        ]
        if let eta = s.eta { entries.append(("eta", String(eta))) }
        if let spacing = s.timestepSpacing { entries.append(("timestep_spacing", spacing.rawValue)) }
        return entries
    }
}
