// JobRequest: the body of POST /v1/jobs. Strict: unknown fields and wrong types are rejected.

/// What to generate. Every field but `prompt` is optional; defaults are the model's own, else diffusers' (as
/// `sdd generate`); the daemon fills them in when it accepts the job.
///
/// JSON keys are snake_case: `{"prompt": "a red circle", "steps": 30, "negative_prompt": "blurry"}`.
/// Decoding rejects keys it does not know (`DecodingError.dataCorrupted` with an `unknown field` message),
/// so a typo like `"step": 30` is an error, not a silent default.
public struct JobRequest: Codable, Sendable, Equatable {
    /// The text prompt (required, non-empty; longer than 77 CLIP tokens is truncated by the model).
    public var prompt: String
    /// What the image should not show. Default: none (the empty string).
    public var negativePrompt: String?
    /// Denoising steps, 1…1000. Default: the model's, else 50.
    public var steps: Int?
    /// Classifier-free guidance scale (≤ 1 runs the conditional branch only). Default: the model's, else 7.5.
    public var guidance: Double?
    /// Width in pixels, a multiple of 8, at most 4096. Default: the model's sample size.
    public var width: Int?
    /// Height in pixels, a multiple of 8, at most 4096. Default: the model's sample size.
    public var height: Int?
    /// Seed, as `torch.Generator("cpu").manual_seed(seed)`. Default: chosen by the daemon when the
    /// job is accepted (so a restarted job gives the same image); the job's `settings.seed` shows it.
    public var seed: UInt64?
    /// Scheduler: pndm, ddim, lms, euler, euler-a, dpm++2m, lcm, tcd. Default: the model's own (its scheduler config's class).
    public var scheduler: String?
    /// TCD's stochasticity in 0…1 (only with scheduler tcd). Default 0.3.
    public var eta: Double?
    /// leading, trailing or linspace, replacing the model's scheduler config (not for lcm or tcd). Default: the config's.
    public var timestepSpacing: String?
    /// Images generated in one batch, 1…16. Default 1.
    public var count: Int?
    /// Higher runs first; equal priorities run in arrival order. −100…100, default 0.
    public var priority: Int?
    /// A client-chosen id that makes submitting safe to retry: a second POST with the same `request_id` from
    /// the same user returns the job the first one created (200) instead of queueing another, also after a
    /// daemon restart (it is kept with the job). 1…64 characters of `A-Z a-z 0-9 . _ : -`. Default: none.
    public var requestId: String?
    /// LoRAs to apply, by name in the daemon's `--lora-dir` (never a path), in order. Default: none.
    /// `<lora:NAME:SCALE>` tags in the prompt add more (A1111's syntax; the tags are removed from the prompt text).
    public var loras: [LoRARef]?

    public init(prompt: String, negativePrompt: String? = nil, steps: Int? = nil, guidance: Double? = nil,
                width: Int? = nil, height: Int? = nil, seed: UInt64? = nil, scheduler: String? = nil,
                count: Int? = nil, priority: Int? = nil, requestId: String? = nil, eta: Double? = nil,
                timestepSpacing: String? = nil, loras: [LoRARef]? = nil) {
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
        self.requestId = requestId
        self.eta = eta
        self.timestepSpacing = timestepSpacing
        self.loras = loras
    }

    /// diffusers' defaults, for a model that says nothing else.
    public static let defaultSteps = 50
    public static let defaultGuidance = 7.5
    public static let defaultScheduler = "pndm"
    public static let defaultCount = 1
    public static let priorityRange = -100...100

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case prompt
        case negativePrompt = "negative_prompt"
        case steps, guidance, width, height, seed, scheduler, count, priority, eta, loras
        case timestepSpacing = "timestep_spacing"
        case requestId = "request_id"
    }

    /// Longest `request_id`, characters.
    public static let maxRequestIdLength = 64

    /// Whether `s` may be a `request_id`: 1…64 characters of `A-Z a-z 0-9 . _ : -`.
    public static func isValidRequestId(_ s: String) -> Bool {
        (1...maxRequestIdLength).contains(s.utf8.count) && s.utf8.allSatisfy {
            (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0)
                || Array(".:_-".utf8).contains($0)
        }
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
        steps = try Self.integer(Int.self, c, .steps)
        guidance = try c.decodeIfPresent(Double.self, forKey: .guidance)
        width = try Self.integer(Int.self, c, .width)
        height = try Self.integer(Int.self, c, .height)
        seed = try Self.integer(UInt64.self, c, .seed)
        scheduler = try c.decodeIfPresent(String.self, forKey: .scheduler)
        count = try Self.integer(Int.self, c, .count)
        priority = try Self.integer(Int.self, c, .priority)
        requestId = try c.decodeIfPresent(String.self, forKey: .requestId)
        eta = try c.decodeIfPresent(Double.self, forKey: .eta)
        timestepSpacing = try c.decodeIfPresent(String.self, forKey: .timestepSpacing)
        loras = try c.decodeIfPresent([LoRARef].self, forKey: .loras)
    }

    /// Decodes an optional integer field. A value that is not an integer of `T`'s range (2.5, -1 for the
    /// seed, 2^63 for steps, "ten") is a `typeMismatch` whose description says what was expected and what came,
    /// e.g. `expected an integer from 0 to 18446744073709551615, got -1` (the decoder's own message for a
    /// number that does not fit is "The given data was not valid JSON.", which names neither).
    static func integer<T: FixedWidthInteger & Decodable>(
        _ type: T.Type, _ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys
    ) throws -> T? {
        guard c.contains(key), try !c.decodeNil(forKey: key) else { return nil }
        if let value = try? c.decode(T.self, forKey: key) { return value }
        let got: String
        if let number = try? c.decode(Double.self, forKey: key) {
            if number != number.rounded() {
                got = "\(number)"
            } else if abs(number) < 1e15 {  // exactly representable: print it as the client wrote it
                got = "\(Int64(number))"
            } else {
                got = "an integer outside that range"
            }
        } else if (try? c.decode(String.self, forKey: key)) != nil {
            got = "a string"
        } else if (try? c.decode(Bool.self, forKey: key)) != nil {
            got = "a boolean"
        } else {
            got = "a value of another type"
        }
        throw DecodingError.typeMismatch(T.self, .init(
            codingPath: c.codingPath + [key],
            debugDescription: "expected \(integerDescription(T.self)), got \(got)"))
    }

    /// "an integer from 0 to 18446744073709551615" for `UInt64`.
    public static func integerDescription<T: FixedWidthInteger>(_ type: T.Type) -> String {
        "an integer from \(T.min) to \(T.max)"
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
