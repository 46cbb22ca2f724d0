// The scheduler protocol (apple/ml-stable-diffusion style) and the factory that builds any kind
// from a model's scheduler config, like diffusers' `SchedulerClass.from_config(config)`.
import Foundation
import TiledKernels

/// A denoising scheduler. Values are Codable so a generation can be checkpointed as
/// latents + scheduler state + step index, and resumed with `decodeScheduler(kind:from:)`.
public protocol Scheduler: Sendable, Codable {
    /// Which algorithm this is.
    var kind: SchedulerKind { get }
    /// The model timestep of each denoising iteration (what the UNet gets); count = number of
    /// UNet evaluations. (PNDM with skip_prk_steps has steps + 1 entries.)
    var timesteps: [Float] { get }
    /// Multiply the initial noise by this (1 for DDPM-style schedulers, σ_max-ish for sigma ones).
    var initNoiseSigma: Float { get }
    /// The UNet input for iteration `stepIndex` (sample / sqrt(σ² + 1) for sigma schedulers).
    /// sample: latents [batch, 4, h/8, w/8].
    func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor
    /// One denoising step for iteration `stepIndex` (0 ..< timesteps.count): returns the previous,
    /// less noisy sample. `output` is the (guided) model output for `sample`, same shape.
    /// `random` is drawn from by ancestral samplers only (torch generator semantics).
    mutating func step(output: Tensor, stepIndex: Int, sample: Tensor, random: inout TorchRandom) -> Tensor
}

/// The schedulers sdd implements; raw values are the names users type.
public enum SchedulerKind: String, Codable, Sendable, CaseIterable {
    case pndm
    case ddim
    case lms
    case euler
    case eulerAncestral = "euler-a"
    case dpmSolverMultistep = "dpm++2m"
    case lcm
    case tcd

    /// The diffusers class whose semantics the kind follows.
    public var diffusersClassName: String {
        switch self {
        case .pndm: return "PNDMScheduler"
        case .ddim: return "DDIMScheduler"
        case .lms: return "LMSDiscreteScheduler"
        case .euler: return "EulerDiscreteScheduler"
        case .eulerAncestral: return "EulerAncestralDiscreteScheduler"
        case .dpmSolverMultistep: return "DPMSolverMultistepScheduler"
        case .lcm: return "LCMScheduler"
        case .tcd: return "TCDScheduler"
        }
    }

    /// Whether the kind spaces its timesteps by the config's `timestep_spacing` (LCM and TCD take theirs
    /// from `original_inference_steps` instead).
    public var usesTimestepSpacing: Bool { self != .lcm && self != .tcd }

    /// Whether the kind's step takes a stochasticity η (`--eta`).
    public var takesEta: Bool { self == .tcd }

    /// The kind a config's `_class_name` names, if sdd implements it.
    public init?(diffusersClassName name: String) {
        guard let kind = Self.allCases.first(where: { $0.diffusersClassName == name }) else { return nil }
        self = kind
    }
}

/// How a scheduler spreads its timesteps over the training range (diffusers' `timestep_spacing`); a
/// `--timestep-spacing` overrides the model config's value for every scheduler that uses it.
public enum TimestepSpacing: String, Codable, Sendable, CaseIterable {
    case leading
    case trailing
    case linspace
}

extension SchedulerConfig {
    /// This config with `timestep_spacing` replaced by `spacing` (nil: unchanged) for a `kind` scheduler;
    /// an error for kinds that take their timesteps from elsewhere (LCM, TCD).
    public func overriding(timestepSpacing spacing: TimestepSpacing?, for kind: SchedulerKind) throws -> SchedulerConfig {
        guard let spacing else { return self }
        guard kind.usesTimestepSpacing else {
            throw SchedulerError.invalidValue(
                field: "timestep_spacing", value: spacing.rawValue,
                reason: "\(kind.rawValue) takes its timesteps from original_inference_steps, not from a spacing")
        }
        var config = self
        config.timestepSpacing = spacing.rawValue
        return config
    }
}

/// Builds a `kind` scheduler for `steps` inference steps from a model's scheduler config, with
/// diffusers' `from_config` semantics: keys the target class does not have are ignored, absent keys
/// take the target class's defaults (so SD 1.5's PNDM config can drive DPM++ 2M).
/// eta: TCD's stochasticity (nil: its default 0.3); an error for kinds that take none.
public func makeScheduler(_ kind: SchedulerKind, config: SchedulerConfig, steps: Int, eta: Float? = nil) throws
    -> any Scheduler
{
    guard steps >= 1 else {
        throw SchedulerError.invalidValue(field: "steps", value: "\(steps)", reason: "need at least 1 step")
    }
    guard steps <= (config.numTrainTimesteps ?? 1000) else {
        throw SchedulerError.invalidValue(
            field: "steps", value: "\(steps)", reason: "more than num_train_timesteps \(config.numTrainTimesteps ?? 1000)")
    }
    if let eta, !kind.takesEta {
        throw SchedulerError.invalidValue(
            field: "eta", value: "\(eta)", reason: "only \(SchedulerKind.allCases.filter(\.takesEta).map(\.rawValue).joined(separator: ", ")) takes eta, not \(kind.rawValue)")
    }
    switch kind {
    case .pndm: return try PNDMScheduler(config: config, steps: steps)
    case .ddim: return try DDIMScheduler(config: config, steps: steps)
    case .lms: return try LMSDiscreteScheduler(config: config, steps: steps)
    case .euler: return try EulerDiscreteScheduler(config: config, steps: steps)
    case .eulerAncestral: return try EulerAncestralDiscreteScheduler(config: config, steps: steps)
    case .dpmSolverMultistep: return try DPMSolverMultistepScheduler(config: config, steps: steps)
    case .lcm: return try LCMScheduler(config: config, steps: steps)
    case .tcd: return try TCDScheduler(config: config, steps: steps, eta: eta ?? TCDScheduler.defaultEta)
    }
}

/// Restores a scheduler encoded (JSON) from a value of the given kind, for resuming a checkpoint.
public func decodeScheduler(kind: SchedulerKind, from data: Data) throws -> any Scheduler {
    let decoder = JSONDecoder()
    decoder.nonConformingFloatDecodingStrategy = .convertFromString(
        positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    switch kind {
    case .pndm: return try decoder.decode(PNDMScheduler.self, from: data)
    case .ddim: return try decoder.decode(DDIMScheduler.self, from: data)
    case .lms: return try decoder.decode(LMSDiscreteScheduler.self, from: data)
    case .euler: return try decoder.decode(EulerDiscreteScheduler.self, from: data)
    case .eulerAncestral: return try decoder.decode(EulerAncestralDiscreteScheduler.self, from: data)
    case .dpmSolverMultistep: return try decoder.decode(DPMSolverMultistepScheduler.self, from: data)
    case .lcm: return try decoder.decode(LCMScheduler.self, from: data)
    case .tcd: return try decoder.decode(TCDScheduler.self, from: data)
    }
}

/// Encodes a scheduler's full state (JSON) for a checkpoint; pair with `decodeScheduler`.
public func encodeScheduler(_ scheduler: any Scheduler) throws -> Data {
    let encoder = JSONEncoder()
    encoder.nonConformingFloatEncodingStrategy = .convertToString(
        positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    return try encoder.encode(scheduler)
}

/// What diffusers' model-output conversion needs to know.
enum PredictionType: String, Codable, Sendable {
    case epsilon
    case vPrediction = "v_prediction"
    case sample

    init(_ value: String?, allowed: Set<PredictionType>, scheduler: String) throws {
        guard let p = PredictionType(rawValue: value ?? "epsilon"), allowed.contains(p) else {
            throw SchedulerError.unsupported(field: "prediction_type", value: value ?? "", scheduler: scheduler)
        }
        self = p
    }
}
