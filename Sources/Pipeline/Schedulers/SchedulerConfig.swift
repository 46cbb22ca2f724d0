// diffusers' scheduler_config.json as a Codable value: every key optional, the scheduler that is
// built from it supplies its own defaults (the semantics of `Scheduler.from_config`).
import Foundation

/// A diffusers `scheduler_config.json`. Keys a scheduler class does not have are ignored by it;
/// keys that are absent take that class's default (see `resolved(for:)`). Unknown keys are ignored.
public struct SchedulerConfig: Codable, Sendable, Equatable {
    /// `_class_name` (e.g. "PNDMScheduler"): the scheduler a model runs with by default, as in diffusers
    /// (`implementedKind(file:)`); `--scheduler` picks another and configures it from these same values.
    public var className: String?
    public var numTrainTimesteps: Int?
    public var betaStart: Double?
    public var betaEnd: Double?
    /// "linear" | "scaled_linear" | "squaredcos_cap_v2".
    public var betaSchedule: String?
    public var trainedBetas: [Double]?
    public var setAlphaToOne: Bool?
    public var stepsOffset: Int?
    public var skipPrkSteps: Bool?
    /// "leading" | "trailing" | "linspace".
    public var timestepSpacing: String?
    /// "epsilon" | "v_prediction" | "sample".
    public var predictionType: String?
    public var clipSample: Bool?
    public var clipSampleRange: Double?
    public var thresholding: Bool?
    public var interpolationType: String?
    public var useKarrasSigmas: Bool?
    public var useExponentialSigmas: Bool?
    public var useBetaSigmas: Bool?
    public var useLuLambdas: Bool?
    public var useFlowSigmas: Bool?
    public var sigmaMin: Double?
    public var sigmaMax: Double?
    /// "zero" | "sigma_min".
    public var finalSigmasType: String?
    public var solverOrder: Int?
    /// "midpoint" | "heun".
    public var solverType: String?
    /// "dpmsolver++" | "dpmsolver" | "sde-dpmsolver++" | "sde-dpmsolver".
    public var algorithmType: String?
    public var lowerOrderFinal: Bool?
    public var eulerAtFinal: Bool?
    /// "discrete" | "continuous".
    public var timestepType: String?
    public var rescaleBetasZeroSnr: Bool?
    public var lambdaMinClipped: Double?
    public var varianceType: String?
    /// LCM / TCD: the distillation schedule's step count their timesteps are taken from (default 50).
    public var originalInferenceSteps: Int?
    /// LCM / TCD: the factor on t in the consistency boundary-condition scalings c_skip, c_out (default 10).
    public var timestepScaling: Double?

    enum CodingKeys: String, CodingKey {
        case className = "_class_name"
        case numTrainTimesteps = "num_train_timesteps"
        case betaStart = "beta_start"
        case betaEnd = "beta_end"
        case betaSchedule = "beta_schedule"
        case trainedBetas = "trained_betas"
        case setAlphaToOne = "set_alpha_to_one"
        case stepsOffset = "steps_offset"
        case skipPrkSteps = "skip_prk_steps"
        case timestepSpacing = "timestep_spacing"
        case predictionType = "prediction_type"
        case clipSample = "clip_sample"
        case clipSampleRange = "clip_sample_range"
        case thresholding
        case interpolationType = "interpolation_type"
        case useKarrasSigmas = "use_karras_sigmas"
        case useExponentialSigmas = "use_exponential_sigmas"
        case useBetaSigmas = "use_beta_sigmas"
        case useLuLambdas = "use_lu_lambdas"
        case useFlowSigmas = "use_flow_sigmas"
        case sigmaMin = "sigma_min"
        case sigmaMax = "sigma_max"
        case finalSigmasType = "final_sigmas_type"
        case solverOrder = "solver_order"
        case solverType = "solver_type"
        case algorithmType = "algorithm_type"
        case lowerOrderFinal = "lower_order_final"
        case eulerAtFinal = "euler_at_final"
        case timestepType = "timestep_type"
        case rescaleBetasZeroSnr = "rescale_betas_zero_snr"
        case lambdaMinClipped = "lambda_min_clipped"
        case varianceType = "variance_type"
        case originalInferenceSteps = "original_inference_steps"
        case timestepScaling = "timestep_scaling"
    }

    public init() {}

    /// SD 1.x's scheduler/scheduler_config.json (PNDM, scaled_linear 0.00085…0.012, steps_offset 1,
    /// skip_prk_steps, leading spacing).
    public static let stableDiffusion15: SchedulerConfig = {
        var c = SchedulerConfig()
        c.className = "PNDMScheduler"
        c.numTrainTimesteps = 1000
        c.betaStart = 0.00085
        c.betaEnd = 0.012
        c.betaSchedule = "scaled_linear"
        c.skipPrkSteps = true
        c.setAlphaToOne = false
        c.stepsOffset = 1
        c.timestepSpacing = "leading"
        c.predictionType = "epsilon"
        return c
    }()

    /// Decodes a scheduler_config.json. Python's json writes `-Infinity` for lambda_min_clipped's
    /// default; that (and `Infinity`, `NaN`) is accepted.
    public static func decode(_ data: Data, file: String = "scheduler_config.json") throws -> SchedulerConfig {
        guard var text = String(data: data, encoding: .utf8) else {
            throw SchedulerError.invalidConfig(file: file, reason: "not UTF-8")
        }
        for token in ["-Infinity", "Infinity", "NaN"] {
            text = text.replacingOccurrences(of: ": \(token)", with: ": \"\(token)\"")
            text = text.replacingOccurrences(of: ":\(token)", with: ":\"\(token)\"")
        }
        var json = Data(text.utf8)
        // A config saved from a loaded scheduler lists keys that only had class defaults in
        // `_use_default_values`; from_config treats them as absent, so the target's defaults apply.
        if let object = try? JSONSerialization.jsonObject(with: json) as? [String: Any],
            let defaulted = object["_use_default_values"] as? [String], !defaulted.isEmpty
        {
            let kept = object.filter { !defaulted.contains($0.key) }
            if let reencoded = try? JSONSerialization.data(withJSONObject: kept) { json = reencoded }
        }
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        do {
            return try decoder.decode(SchedulerConfig.self, from: json)
        } catch {
            throw SchedulerError.invalidConfig(file: file, reason: "\(error)")
        }
    }

    /// Refuses numbers no scheduler can be built from, naming the field, before any table is sized from them.
    public func validate(file: String) throws {
        let n = numTrainTimesteps ?? 1000
        try ConfigLimits.check(n, 2...ConfigLimits.trainTimesteps, field: "num_train_timesteps", file: file)
        if let betas = trainedBetas, betas.count != n {
            throw PipelineError.badConfig(file: file, field: "trained_betas",
                                          reason: "has \(betas.count) values for num_train_timesteps \(n)")
        }
        if let offset = stepsOffset { try ConfigLimits.check(offset, 0...(n - 1), field: "steps_offset", file: file) }
        if let order = solverOrder { try ConfigLimits.check(order, 1...ConfigLimits.solverOrder, field: "solver_order", file: file) }
        for (field, value) in [("beta_start", betaStart), ("beta_end", betaEnd)] {
            if let v = value, !(v.isFinite && v >= 0 && v < 1) {
                throw PipelineError.badConfig(file: file, field: field, reason: "is \(v); must be in [0, 1)")
            }
        }
    }

    /// Reads and decodes `url`.
    public static func load(_ url: URL) throws -> SchedulerConfig {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw SchedulerError.invalidConfig(file: url.path, reason: "cannot read file")
        }
        return try decode(data, file: url.path)
    }
}

/// What the factory or a scheduler rejects. Each case names the field.
public enum SchedulerError: Error, Equatable, CustomStringConvertible {
    case invalidConfig(file: String, reason: String)
    case unsupported(field: String, value: String, scheduler: String)
    case invalidValue(field: String, value: String, reason: String)

    public var description: String {
        switch self {
        case .invalidConfig(let file, let reason): return "scheduler config \(file): \(reason)"
        case .unsupported(let field, let value, let scheduler):
            return "scheduler \(scheduler): \(field) = \(value) is not supported"
        case .invalidValue(let field, let value, let reason): return "scheduler: \(field) = \(value): \(reason)"
        }
    }
}
