// Denoising: a generation as an iterator of steps (each `next()` is one UNet evaluation), whose
// state — latents, scheduler state, RNG, step index — is a value that can be checkpointed and resumed.

import Foundation
import TiledKernels

/// Everything needed to continue a generation; Codable so it can be written as a checkpoint.
public struct GenerationState: Sendable {
    /// The request with width, height and seed resolved.
    public var settings: GenerationSettings
    /// [count, latent_channels, h/f, w/f].
    public var latents: Tensor
    public var scheduler: any Scheduler
    public var random: TorchRandom
    /// UNet evaluations done so far (0 … scheduler.timesteps.count).
    public var stepIndex: Int

    public var totalSteps: Int { scheduler.timesteps.count }
    public var isDenoised: Bool { stepIndex >= totalSteps }
}

extension GenerationState: Codable {
    enum CodingKeys: String, CodingKey { case settings, latentShape, latents, schedulerKind, scheduler, random, stepIndex }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        settings = try c.decode(GenerationSettings.self, forKey: .settings)
        let shape = try c.decode([Int].self, forKey: .latentShape)
        let bytes = try c.decode(Data.self, forKey: .latents)
        guard shape.allSatisfy({ $0 > 0 }), bytes.count == shape.reduce(1, *) * 4 else {
            throw DecodingError.dataCorruptedError(forKey: .latents, in: c, debugDescription: "latents do not match their shape")
        }
        latents = Tensor(shape: shape, data: bytes.withUnsafeBytes { raw in
            (0..<(bytes.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        })
        let kind = try c.decode(SchedulerKind.self, forKey: .schedulerKind)
        scheduler = try decodeScheduler(kind: kind, from: try c.decode(Data.self, forKey: .scheduler))
        random = try c.decode(TorchRandom.self, forKey: .random)
        stepIndex = try c.decode(Int.self, forKey: .stepIndex)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(settings, forKey: .settings)
        try c.encode(latents.shape, forKey: .latentShape)
        var bytes = Data(capacity: latents.count * 4)
        for v in latents.data { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
        try c.encode(bytes, forKey: .latents)
        try c.encode(scheduler.kind, forKey: .schedulerKind)
        try c.encode(try encodeScheduler(scheduler), forKey: .scheduler)
        try c.encode(random, forKey: .random)
        try c.encode(stepIndex, forKey: .stepIndex)
    }
}

/// A generation in progress on one pipeline. Call `next()` until it returns nil, then `finish()`.
public final class Generation {
    public private(set) var state: GenerationState
    private let pipeline: StableDiffusionPipeline
    /// The run's memory settings, read by every stage.
    public let runContext: RunContext
    private let context: Tensor
    private var timings = StageTimings()
    private let promptTruncated: Bool
    private let negativePromptTruncated: Bool
    private let started = Date()

    /// Encodes the prompts (recomputed on resume: they are a pure function of the settings).
    init(pipeline: StableDiffusionPipeline, state: GenerationState, run: RunContext) throws {
        self.pipeline = pipeline
        self.state = state
        runContext = run
        // The process-wide pools take this run's limits as it starts (see `RunContext`): the scratch arenas keep
        // what the run allows; the text encoder's tensors (77 tokens) are not planned, so the pool is unbounded
        // until the UNet's first step sets its own limit.
        ScratchArena.limitRetainedBytes(run.retainedScratchBytes)
        TensorMemory.limitFootprint(nil)
        let clock = Date()
        let prompts = try pipeline.encodePrompts(state.settings, guided: state.settings.guidance > 1,
                                                 encoder: try pipeline.textEncoder())
        context = prompts.context
        promptTruncated = prompts.truncated
        negativePromptTruncated = prompts.negativeTruncated
        timings.textEncode = Date().timeIntervalSince(clock)
    }

    /// Runs one denoising step; nil once every step is done.
    public func next() throws -> StepProgress? {
        guard !state.isDenoised else { return nil }
        let clock = Date()
        let t = state.scheduler.timesteps[state.stepIndex]
        try pipeline.denoise(&state, context: context, run: runContext)
        timings.steps.append(Date().timeIntervalSince(clock))
        return StepProgress(step: state.stepIndex, totalSteps: state.totalSteps, timestep: t,
                            elapsed: Date().timeIntervalSince(started), latents: state.latents)
    }

    /// Decodes the final latents (runs any steps still left first).
    /// Runs any steps left, then decodes. With VAE tiling, `shouldContinue` is asked after each tile;
    /// returning false throws `PipelineError.cancelled` (the state keeps the final latents).
    public func finish(shouldContinue: () -> Bool = { true }) throws -> GenerationResult {
        while try next() != nil {}
        let clock = Date()
        let images = try pipeline.decode(state.latents, run: runContext, shouldContinue: shouldContinue)
        timings.vaeDecode = Date().timeIntervalSince(clock)
        let s = state.settings
        return GenerationResult(settings: s, seed: s.seed ?? 0, width: s.width ?? 0, height: s.height ?? 0,
                                latents: state.latents, images: images, promptTruncated: promptTruncated,
                                negativePromptTruncated: negativePromptTruncated, timings: timings)
    }
}
