// JobRequest: the body of POST /v1/jobs. Strict: unknown fields and wrong types are rejected.

/// What to generate. Every field but `prompt` is optional; defaults follow diffusers (and `sdd generate`).
///
/// JSON keys are snake_case: `{"prompt": "a red circle", "steps": 30, "negative_prompt": "blurry"}`.
/// Decoding rejects keys it does not know (`DecodingError.dataCorrupted` with an `unknown field` message),
/// so a typo like `"step": 30` is an error, not a silent default.
public struct JobRequest: Codable, Sendable, Equatable {
    /// The text prompt (required, non-empty; longer than 77 CLIP tokens is truncated by the model).
    public var prompt: String
    /// What the image should not show. Default: none (the empty string).
    public var negativePrompt: String?
    /// Denoising steps, 1…1000. Default 50.
    public var steps: Int?
    /// Classifier-free guidance scale (≤ 1 runs the conditional branch only). Default 7.5.
    public var guidance: Double?
    /// Width in pixels, a multiple of 8, at most 4096. Default: the model's sample size.
    public var width: Int?
    /// Height in pixels, a multiple of 8, at most 4096. Default: the model's sample size.
    public var height: Int?
    /// Seed, as `torch.Generator("cpu").manual_seed(seed)`. Default: chosen by the daemon when the
    /// job is accepted (so a restarted job gives the same image); the job's `settings.seed` shows it.
    public var seed: UInt64?
    /// Scheduler: pndm, ddim, lms, euler, euler-a, dpm++2m. Default pndm.
    public var scheduler: String?
    /// Images generated in one batch, 1…16. Default 1.
    public var count: Int?
    /// Higher runs first; equal priorities run in arrival order. −100…100, default 0.
    public var priority: Int?
    /// LoRAs to apply, by name in the daemon's `--lora-dir` (never a path), in order. Default: none.
    /// `<lora:NAME:SCALE>` tags in the prompt add more (A1111's syntax; the tags are removed from the prompt text).
    public var loras: [LoRARef]?

    public init(prompt: String, negativePrompt: String? = nil, steps: Int? = nil, guidance: Double? = nil,
                width: Int? = nil, height: Int? = nil, seed: UInt64? = nil, scheduler: String? = nil,
                count: Int? = nil, priority: Int? = nil, loras: [LoRARef]? = nil) {
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.steps = steps
        self.guidance = guidance
        self.width = width
        self.height = height
        self.seed = seed
        self.scheduler = scheduler
        self.count = count
        self.priority = priority
        self.loras = loras
    }

    public static let defaultSteps = 50
    public static let defaultGuidance = 7.5
    public static let defaultScheduler = "pndm"
    public static let defaultCount = 1
    public static let priorityRange = -100...100

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case prompt
        case negativePrompt = "negative_prompt"
        case steps, guidance, width, height, seed, scheduler, count, priority, loras
    }

    public init(from decoder: Decoder) throws {
        let known = Set(CodingKeys.allCases.map(\.stringValue))
        let all = try decoder.container(keyedBy: AnyKey.self)
        if let unknown = all.allKeys.map(\.stringValue).filter({ !known.contains($0) }).sorted().first {
            throw DecodingError.dataCorrupted(.init(
                codingPath: [AnyKey(stringValue: unknown)], debugDescription: "unknown field \"\(unknown)\""))
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        prompt = try c.decode(String.self, forKey: .prompt)
        negativePrompt = try c.decodeIfPresent(String.self, forKey: .negativePrompt)
        steps = try c.decodeIfPresent(Int.self, forKey: .steps)
        guidance = try c.decodeIfPresent(Double.self, forKey: .guidance)
        width = try c.decodeIfPresent(Int.self, forKey: .width)
        height = try c.decodeIfPresent(Int.self, forKey: .height)
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed)
        scheduler = try c.decodeIfPresent(String.self, forKey: .scheduler)
        count = try c.decodeIfPresent(Int.self, forKey: .count)
        priority = try c.decodeIfPresent(Int.self, forKey: .priority)
        loras = try c.decodeIfPresent([LoRARef].self, forKey: .loras)
    }
}

/// One LoRA of a request: `{"name": "detail-tweaker", "scale": 0.8}`. The name is a file in the daemon's LoRA
/// directory (NAME.safetensors), never a path. Unknown keys are rejected.
public struct LoRARef: Codable, Sendable, Equatable {
    public var name: String
    /// Strength (diffusers' adapter weight). Default 1.
    public var scale: Double?

    public init(name: String, scale: Double? = nil) {
        self.name = name
        self.scale = scale
    }

    public enum CodingKeys: String, CodingKey, CaseIterable { case name, scale }

    public init(from decoder: Decoder) throws {
        let known = Set(CodingKeys.allCases.map(\.stringValue))
        let all = try decoder.container(keyedBy: AnyKey.self)
        if let unknown = all.allKeys.map(\.stringValue).filter({ !known.contains($0) }).sorted().first {
            throw DecodingError.dataCorrupted(.init(
                codingPath: all.codingPath + [AnyKey(stringValue: unknown)],
                debugDescription: "unknown field \"\(unknown)\" in a LoRA (known: name, scale)"))
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        scale = try c.decodeIfPresent(Double.self, forKey: .scale)
    }
}

/// A coding key for any string: used to list the keys an object actually has.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
