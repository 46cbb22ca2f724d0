// RequestValidation: turns a POST /v1/jobs body into a fully resolved JobRequest, or an APIError that names
// the field at fault. Runs before anything is queued, so a bad request never touches accepted jobs.

import Foundation
import Pipeline
import SDDAPI

/// What the daemon knows about the model without loading its weights (from its config files): the settings a
/// job that leaves them out gets (the model's own defaults, else diffusers').
public struct ModelDefaults: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// Sizes must be multiples of this (and of 8).
    public var sizeMultiple: Int
    public var steps: Int
    public var guidance: Double
    /// The model's own scheduler; nil when its scheduler config names a class sdd does not implement
    /// (`schedulerProblem` says which), so a request must name one.
    public var scheduler: String?
    public var schedulerProblem: String?

    public init(width: Int, height: Int, sizeMultiple: Int, steps: Int = JobRequest.defaultSteps,
                guidance: Double = JobRequest.defaultGuidance, scheduler: String? = JobRequest.defaultScheduler,
                schedulerProblem: String? = nil) {
        self.width = width
        self.height = height
        self.sizeMultiple = sizeMultiple
        self.steps = steps
        self.guidance = guidance
        self.scheduler = scheduler
        self.schedulerProblem = schedulerProblem
    }

    /// A model's defaults as `sdd generate` resolves them.
    public init(model: StableDiffusionModel) {
        let size = model.defaultSize
        var problem: String?
        var scheduler: String?
        do { scheduler = try model.defaultScheduler().rawValue } catch { problem = "\(error)" }
        self.init(width: size.width, height: size.height, sizeMultiple: model.vaeScaleFactor,
                  steps: model.defaultSteps, guidance: Double(model.defaultGuidance), scheduler: scheduler,
                  schedulerProblem: problem)
    }
}

public enum RequestValidation {
    /// Decodes the body strictly (unknown fields, wrong types and bad JSON are errors).
    public static func decode(_ body: [UInt8]) throws(APIError) -> JobRequest {
        do {
            return try JSONDecoder().decode(JobRequest.self, from: Data(body))
        } catch let error as DecodingError {
            throw map(error, validJSON: (try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed])) != nil)
        } catch {
            throw APIError(.badJSON, "the body is not valid JSON: \(error)")
        }
    }

    static func map(_ error: DecodingError, validJSON: Bool) -> APIError {
        func field(_ path: [CodingKey]) -> String { path.map(\.stringValue).joined(separator: ".") }
        switch error {
        case .typeMismatch(let type, let ctx):
            if ctx.codingPath.isEmpty { return APIError(.badJSON, "the body must be a JSON object") }
            // JobRequest's own checks say what they expected and what came; the decoder's say neither.
            let expected = ctx.debugDescription.hasPrefix("expected ")
                ? ctx.debugDescription : "expected \(typeName(type))"
            return APIError(.wrongType, "field \"\(field(ctx.codingPath))\": \(expected)")
        case .valueNotFound(let type, let ctx):
            // `null` as the whole body: there is no field to name.
            if ctx.codingPath.isEmpty { return APIError(.badJSON, "the body must be a JSON object, not null") }
            return APIError(.wrongType, "field \"\(field(ctx.codingPath))\": expected \(typeName(type)), got null")
        case .keyNotFound(let key, _):
            return APIError(.wrongType, "field \"\(key.stringValue)\" is required")
        case .dataCorrupted(let ctx):
            if ctx.debugDescription.hasPrefix("unknown field") && ctx.codingPath.count > 1 {
                return APIError(.unknownField, "field \"\(field(ctx.codingPath.dropLast()))\": \(ctx.debugDescription)")
            }
            if ctx.debugDescription.hasPrefix("unknown field") {
                return APIError(.unknownField, "\(ctx.debugDescription); known fields: "
                    + JobRequest.CodingKeys.allCases.map(\.stringValue).joined(separator: ", "))
            }
            if ctx.codingPath.isEmpty && !validJSON {
                return APIError(.badJSON, "the body is not valid JSON: \(ctx.debugDescription)")
            }
            // A number that does not fit the field (2.5 for steps, -1 for seed).
            let name = ctx.codingPath.isEmpty ? "" : "field \"\(field(ctx.codingPath))\": "
            return APIError(.wrongType, "\(name)\(ctx.debugDescription)")
        @unknown default:
            return APIError(.badJSON, "the body could not be read: \(error)")
        }
    }

    static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Int.Type, is UInt64.Type: return "an integer"
        case is Double.Type: return "a number"
        default: return "\(type)"
        }
    }

    /// Checks ranges and fills every default (seed included), so the job runs the same after any restart.
    /// - defaults: the model's defaults; nil if the model could not be read (size stays unresolved, the rest
    ///   takes diffusers' defaults).
    /// - loraDirectory: where LoRA names (`loras`, `<lora:NAME>` prompt tags) are looked up; nil: none may be named.
    public static func resolve(_ r: JobRequest, defaults: ModelDefaults?,
                               loraDirectory: URL? = nil) throws(APIError) -> JobRequest {
        var out = r
        guard !r.prompt.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw APIError(.invalidValue, "prompt must not be empty")
        }
        // A NUL cannot be stored in the PNG's text chunks (nor is it text a prompt can mean).
        for (field, text) in [("prompt", r.prompt), ("negative_prompt", r.negativePrompt ?? "")]
        where text.unicodeScalars.contains("\u{0}") {
            throw APIError(.invalidValue, "\(field) contains a NUL character (U+0000), which cannot be stored with the image")
        }
        let steps = r.steps ?? defaults?.steps ?? JobRequest.defaultSteps
        try invalidValue { () throws(PipelineError) in try GenerationSettings.checkSteps(steps) }
        out.steps = steps
        let guidance = r.guidance ?? defaults?.guidance ?? JobRequest.defaultGuidance
        guard guidance.isFinite, (0...100).contains(guidance) else {
            throw APIError(.invalidValue, "guidance \(guidance) is out of range (0…100)")
        }
        out.guidance = guidance
        for (name, value) in [("width", r.width), ("height", r.height)] {
            guard let v = value else { continue }
            try invalidValue { () throws(PipelineError) in
                try GenerationSettings.checkSide(name, v, scaleFactor: defaults?.sizeMultiple ?? 8)
            }
        }
        out.width = r.width ?? defaults?.width
        out.height = r.height ?? defaults?.height
        if r.scheduler == nil, let defaults, defaults.scheduler == nil {
            throw APIError(.invalidValue, "name a scheduler: \(defaults.schedulerProblem ?? "the model names none")")
        }
        let name = (r.scheduler ?? defaults?.scheduler ?? JobRequest.defaultScheduler).lowercased()
        guard SchedulerKind(rawValue: name) != nil else {
            throw APIError(.invalidValue, "unknown scheduler \"\(r.scheduler ?? "")\"; choose one of "
                + SchedulerKind.allCases.map(\.rawValue).joined(separator: ", "))
        }
        out.scheduler = name
        try resolveSchedulerOptions(r, scheduler: name)
        let count = r.count ?? JobRequest.defaultCount
        try invalidValue { () throws(PipelineError) in try GenerationSettings.checkCount(count) }
        out.count = count
        let priority = r.priority ?? 0
        guard JobRequest.priorityRange.contains(priority) else {
            throw APIError(.invalidValue, "priority \(priority) is out of range (\(JobRequest.priorityRange.lowerBound)…\(JobRequest.priorityRange.upperBound))")
        }
        out.priority = priority
        out.seed = r.seed ?? UInt64.random(in: 0..<(1 << 32))
        if let key = r.requestId, !JobRequest.isValidRequestId(key) {
            throw APIError(.invalidValue, "request_id must be 1…\(JobRequest.maxRequestIdLength) characters of "
                + "A-Z a-z 0-9 . _ : - (got \(key.utf8.count) characters)")
        }
        for (i, lora) in (r.loras ?? []).enumerated() {
            do {
                _ = try PromptLoRAs.resolve(lora.name, in: loraDirectory)
            } catch {
                throw APIError(.invalidValue, "loras[\(i)].name: \(error)")
            }
            guard let scale = lora.scale else { continue }
            guard scale.isFinite, (-100...100).contains(scale) else {
                throw APIError(.invalidValue, "loras[\(i)].scale \(scale) is out of range (-100…100)")
            }
        }
        do {
            for tag in try PromptLoRAs.extract(r.prompt).loras { _ = try PromptLoRAs.resolve(tag.name, in: loraDirectory) }
        } catch {
            throw APIError(.invalidValue, "prompt: \(error)")
        }
        return out
    }

    /// Checks a resolved request against what the model and the memory budget allow, so that a job that can only
    /// fail is refused now instead of accepted: the scheduler must place every step inside the model's training
    /// schedule (400 `invalid_value` naming `steps`), and the memory planner must fit the run under the budget
    /// (413 `exceeds_memory_budget` with the planner's numbers). `weights` nil or `memoryBudget` nil: no planning.
    public static func admit(_ r: JobRequest, model: StableDiffusionModel, weights: WeightFigures?,
                             memoryBudget: Int?) throws(APIError) {
        let s = settings(r)
        do {
            _ = try model.scheduler(for: s)
        } catch {
            throw APIError(.invalidValue, "steps \(s.steps) cannot run with scheduler \(s.scheduler.rawValue) on this model "
                + "(its schedule has \(model.scheduler.numTrainTimesteps ?? 1000) training timesteps): \(error)")
        }
        guard let budget = memoryBudget, let weights else { return }
        do {
            _ = try MemoryPlanner.plan(budget: budget, model: model, weights: weights, width: s.width, height: s.height,
                                       count: s.count, guided: s.guidance > 1)
        } catch {
            throw APIError(.exceedsMemoryBudget, "\(error)")
        }
    }

    /// Runs one of Pipeline's settings checks; its message becomes a 400 `invalid_value`.
    static func invalidValue(_ check: () throws(PipelineError) -> Void) throws(APIError) {
        do { try check() } catch { throw APIError(.invalidValue, error.description) }
    }

    /// Whether `request` (as the client sent it, unresolved) asks for what `stored` (a job's resolved settings)
    /// is: a retried submission. A seed the client left out matches the one the daemon chose.
    public static func isSameRequest(_ request: JobRequest, as stored: JobRequest, defaults: ModelDefaults?,
                                     loraDirectory: URL? = nil) -> Bool {
        var candidate = request
        if candidate.seed == nil { candidate.seed = stored.seed }
        guard let resolved = try? resolve(candidate, defaults: defaults, loraDirectory: loraDirectory) else { return false }
        return resolved == stored
    }

    /// eta and timestep_spacing: in range, and only for schedulers that use them.
    static func resolveSchedulerOptions(_ r: JobRequest, scheduler name: String) throws(APIError) {
        guard let kind = SchedulerKind(rawValue: name) else { return }
        if let eta = r.eta {
            guard eta.isFinite, (0...1).contains(eta) else { throw APIError(.invalidValue, "eta \(eta) is out of range (0…1)") }
            guard kind.takesEta else {
                throw APIError(.invalidValue, "eta applies to the tcd scheduler only, not \(name)")
            }
        }
        if let spacing = r.timestepSpacing {
            guard TimestepSpacing(rawValue: spacing) != nil else {
                throw APIError(.invalidValue, "unknown timestep_spacing \"\(spacing)\"; choose one of "
                    + TimestepSpacing.allCases.map(\.rawValue).joined(separator: ", "))
            }
            guard kind.usesTimestepSpacing else {
                throw APIError(.invalidValue, "timestep_spacing does not apply to \(name): its timesteps come from original_inference_steps")
            }
        }
    }

    /// The LoRAs a resolved request runs with (its `loras`, then its prompt's `<lora:…>` tags, as files in
    /// `loraDirectory`) and the prompt without the tags.
    public static func loras(_ r: JobRequest, loraDirectory: URL?) throws -> (prompt: String, specs: [LoRASpec]) {
        var specs = try (r.loras ?? []).map {
            LoRASpec(path: try PromptLoRAs.resolve($0.name, in: loraDirectory).path, scale: Float($0.scale ?? 1))
        }
        let (prompt, tags) = try PromptLoRAs.extract(r.prompt)
        for tag in tags {
            specs.append(LoRASpec(path: try PromptLoRAs.resolve(tag.name, in: loraDirectory).path, scale: tag.scale))
        }
        return (prompt, specs)
    }

    /// The pipeline's settings for a resolved request.
    public static func settings(_ r: JobRequest) -> GenerationSettings {
        var s = GenerationSettings(prompt: r.prompt)
        s.negativePrompt = r.negativePrompt
        s.steps = r.steps ?? JobRequest.defaultSteps
        s.guidance = Float(r.guidance ?? JobRequest.defaultGuidance)
        s.width = r.width
        s.height = r.height
        s.seed = r.seed
        s.scheduler = SchedulerKind(rawValue: r.scheduler ?? JobRequest.defaultScheduler) ?? .pndm
        s.count = r.count ?? JobRequest.defaultCount
        s.eta = r.eta.map { Float($0) }
        s.timestepSpacing = r.timestepSpacing.flatMap(TimestepSpacing.init(rawValue:))
        return s
    }
}
