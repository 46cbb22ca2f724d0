// GenerationDefaults: the settings a model carries with it (steps, guidance, scheduler, size) — an optional
// `sdd.json` beside a diffusers folder, or `sdd.defaults.*` in an sdd GGUF file — and the model's own scheduler.

import Foundation
import MMapWeights

/// What a model says a plain `sdd generate PROMPT` should use. Every field is optional: what is absent takes
/// diffusers' default (50 steps, guidance 7.5, the scheduler class its scheduler config names, unet.sample_size
/// × VAE scale factor). Explicit settings always win over these.
///
/// `sdd.json` beside a diffusers folder's `model_index.json`:
///
///     {"steps": 25, "guidance": 2.5, "scheduler": "pndm", "width": 512, "height": 512}
///
/// `scheduler` is a name `--scheduler` takes (pndm, ddim, …) or a diffusers class name (DDIMScheduler …).
/// Unknown keys are an error, so a typo does not silently fall back to a default.
public struct GenerationDefaults: Sendable, Equatable, Encodable {
    public var steps: Int?
    public var guidance: Float?
    public var scheduler: SchedulerKind?
    public var width: Int?
    public var height: Int?

    public init(steps: Int? = nil, guidance: Float? = nil, scheduler: SchedulerKind? = nil, width: Int? = nil,
                height: Int? = nil) {
        self.steps = steps
        self.guidance = guidance
        self.scheduler = scheduler
        self.width = width
        self.height = height
    }

    /// Whether nothing is set.
    public var isEmpty: Bool { self == GenerationDefaults() }

    /// The file name beside a diffusers folder's model_index.json.
    public static let fileName = "sdd.json"

    /// The GGUF metadata keys (`sdd convert` writes those that are set).
    public enum Key {
        /// u32
        public static let steps = "sdd.defaults.steps"
        /// f32
        public static let guidance = "sdd.defaults.guidance"
        /// string, a `--scheduler` name
        public static let scheduler = "sdd.defaults.scheduler"
        /// u32 pixels
        public static let width = "sdd.defaults.width"
        /// u32 pixels
        public static let height = "sdd.defaults.height"
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case steps, guidance, scheduler, width, height }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(steps, forKey: .steps)
        try c.encodeIfPresent(guidance, forKey: .guidance)
        try c.encodeIfPresent(scheduler?.rawValue, forKey: .scheduler)
        try c.encodeIfPresent(width, forKey: .width)
        try c.encodeIfPresent(height, forKey: .height)
    }

    /// Reads `folder/sdd.json`; nil when there is none.
    public static func load(folder: URL) throws -> GenerationDefaults? {
        let url = folder.appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw PipelineError.badConfig(file: url.path, field: "(file)", reason: "cannot be read")
        }
        return try decode(data, file: url.path)
    }

    /// Decodes an sdd.json text; every error names the file and the field.
    public static func decode(_ data: Data, file: String) throws -> GenerationDefaults {
        guard let object = try? JSONSerialization.jsonObject(with: data), let dict = object as? [String: Any] else {
            throw PipelineError.badConfig(file: file, field: "(file)", reason: "is not a JSON object")
        }
        let known = CodingKeys.allCases.map(\.rawValue)
        if let unknown = dict.keys.sorted().first(where: { !known.contains($0) }) {
            throw PipelineError.badConfig(file: file, field: unknown,
                                          reason: "is not a default sdd knows (\(known.joined(separator: ", ")))")
        }
        for key in [CodingKeys.steps, .width, .height] {  // Foundation's decoder names no field for 2.5 as an Int
            if let n = dict[key.rawValue] as? Double, n != n.rounded() {
                throw PipelineError.badConfig(file: file, field: key.rawValue, reason: "must be an integer")
            }
        }
        struct Raw: Decodable {
            var steps: Int?
            var guidance: Float?
            var scheduler: String?
            var width: Int?
            var height: Int?
        }
        let raw: Raw
        do {
            raw = try JSONDecoder().decode(Raw.self, from: data)
        } catch let DecodingError.typeMismatch(type, ctx), let DecodingError.valueNotFound(type, ctx) {
            throw PipelineError.badConfig(file: file, field: ctx.codingPath.map(\.stringValue).joined(separator: "."),
                                          reason: "must be \(type == String.self ? "a string" : type == Float.self ? "a number" : "an integer")")
        } catch let DecodingError.dataCorrupted(ctx) where !ctx.codingPath.isEmpty {
            throw PipelineError.badConfig(file: file, field: ctx.codingPath.map(\.stringValue).joined(separator: "."),
                                          reason: "must be an integer")
        } catch {
            throw PipelineError.badConfig(file: file, field: "(file)", reason: "is not valid JSON: \(error)")
        }
        var d = GenerationDefaults(steps: raw.steps, guidance: raw.guidance, width: raw.width, height: raw.height)
        if let name = raw.scheduler { d.scheduler = try schedulerKind(name, file: file, field: "scheduler") }
        try d.validate(file: file)
        return d
    }

    /// A scheduler named as `--scheduler` takes it, or by its diffusers class name.
    static func schedulerKind(_ name: String, file: String, field: String) throws -> SchedulerKind {
        if let kind = SchedulerKind(rawValue: name.lowercased()) ?? SchedulerKind(diffusersClassName: name) {
            return kind
        }
        throw PipelineError.badConfig(file: file, field: field, reason: "is \"\(name)\"; choose one of "
            + SchedulerKind.allCases.map(\.rawValue).joined(separator: ", "))
    }

    /// Ranges as `sdd generate` checks them; sizes are checked against the VAE by `validate(scaleFactor:file:)`.
    public func validate(file: String) throws {
        if let s = steps, !(1...GenerationSettings.maxSteps).contains(s) {
            throw PipelineError.badConfig(file: file, field: "steps",
                                          reason: "is \(s); must be 1…\(GenerationSettings.maxSteps)")
        }
        if let g = guidance, !(g.isFinite && g >= 0 && g <= 100) {
            throw PipelineError.badConfig(file: file, field: "guidance", reason: "is \(g); must be 0…100")
        }
        for (name, value) in [("width", width), ("height", height)] {
            guard let v = value else { continue }
            guard (8...GenerationSettings.maxSide).contains(v), v % 8 == 0 else {
                throw PipelineError.badConfig(file: file, field: name,
                                              reason: "is \(v); must be a multiple of 8 in 8…\(GenerationSettings.maxSide)")
            }
        }
    }

    /// Sizes must also be whole latent cells of the model's VAE.
    func validate(scaleFactor: Int, file: String) throws {
        for (name, value) in [("width", width), ("height", height)] {
            if let v = value, v % scaleFactor != 0 {
                throw PipelineError.badConfig(file: file, field: name,
                                              reason: "is \(v), not a multiple of the VAE's scale factor \(scaleFactor)")
            }
        }
    }

    /// The defaults an sdd GGUF file carries (`sdd.defaults.*`); each value is type-checked.
    public init(gguf: GGUFFile) throws {
        let path = gguf.path
        func integer(_ key: String) throws -> Int? {
            guard let value = gguf.value(key) else { return nil }
            guard let n = value.intValue else {
                throw PipelineError.badConfig(file: path, field: key, reason: "must be an integer, found \(value.type.name)")
            }
            return n
        }
        self.init()
        steps = try integer(Key.steps)
        width = try integer(Key.width)
        height = try integer(Key.height)
        if let value = gguf.value(Key.guidance) {
            switch value {
            case .float32(let g): guidance = g
            case .float64(let g): guidance = Float(g)
            default:
                throw PipelineError.badConfig(file: path, field: Key.guidance, reason: "must be a float, found \(value.type.name)")
            }
        }
        if let value = gguf.value(Key.scheduler) {
            guard let name = value.stringValue else {
                throw PipelineError.badConfig(file: path, field: Key.scheduler, reason: "must be a string, found \(value.type.name)")
            }
            scheduler = try Self.schedulerKind(name, file: path, field: Key.scheduler)
        }
        try validate(file: path)
    }

    /// Writes the set fields as `sdd.defaults.*` metadata.
    public func write(to writer: inout GGUFWriter) {
        if let s = steps { writer.set(Key.steps, .uint32(UInt32(clamping: s))) }
        if let g = guidance { writer.set(Key.guidance, .float32(g)) }
        if let k = scheduler { writer.set(Key.scheduler, .string(k.rawValue)) }
        if let w = width { writer.set(Key.width, .uint32(UInt32(clamping: w))) }
        if let h = height { writer.set(Key.height, .uint32(UInt32(clamping: h))) }
    }

    /// One line for listings: "steps 25, guidance 2.5, scheduler pndm" (only what is set), or "none".
    public var summary: String {
        var parts: [String] = []
        if let s = steps { parts.append("steps \(s)") }
        if let g = guidance { parts.append("guidance \(g)") }
        if let k = scheduler { parts.append("scheduler \(k.rawValue)") }
        if let w = width, let h = height { parts.append("size \(w)×\(h)") } else {
            if let w = width { parts.append("width \(w)") }
            if let h = height { parts.append("height \(h)") }
        }
        return parts.isEmpty ? "none" : parts.joined(separator: ", ")
    }
}

extension SchedulerConfig {
    /// The scheduler the config's `_class_name` names, as diffusers' pipeline loads it; an error naming the
    /// class and the supported ones when sdd does not implement it (or the config names none).
    public func implementedKind(file: String = "scheduler_config.json") throws -> SchedulerKind {
        let supported = SchedulerKind.allCases.map { "\($0.diffusersClassName) (\($0.rawValue))" }.joined(separator: ", ")
        guard let name = className else {
            throw PipelineError.badConfig(file: file, field: "_class_name",
                                          reason: "is missing: name a scheduler (--scheduler); supported: \(supported)")
        }
        guard let kind = SchedulerKind(diffusersClassName: name) else {
            throw PipelineError.unsupported(
                file: file,
                feature: "the model's scheduler \(name) (sdd implements \(supported); choose one with --scheduler)")
        }
        return kind
    }
}

extension StableDiffusionModel {
    /// The model's steps: its own default, else diffusers' 50.
    public var defaultSteps: Int { defaults.steps ?? GenerationSettings.diffusersSteps }
    /// The model's guidance: its own default, else diffusers' 7.5.
    public var defaultGuidance: Float { defaults.guidance ?? GenerationSettings.diffusersGuidance }
    /// The model's scheduler: its own default, else the class its scheduler config names (diffusers' choice).
    /// Throws when that class is one sdd does not implement, naming it and the supported ones.
    public func defaultScheduler() throws -> SchedulerKind {
        if let k = defaults.scheduler { return k }
        return try scheduler.implementedKind(file: schedulerConfigSource)
    }
}

extension GenerationSettings {
    /// Settings with `model`'s defaults for steps, guidance and scheduler (size stays nil: `validate` takes the
    /// model's default size). Throws when the model's own scheduler is not implemented.
    public init(prompt: String, defaultsOf model: StableDiffusionModel) throws {
        self.init(prompt: prompt)
        steps = model.defaultSteps
        guidance = model.defaultGuidance
        scheduler = try model.defaultScheduler()
    }
}
