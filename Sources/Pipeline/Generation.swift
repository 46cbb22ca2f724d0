// Generation: the text-to-image run as diffusers' StableDiffusionPipeline.__call__ does it —
// settings, prompt encoding with classifier-free guidance, the denoising loop, VAE decode.

import Foundation
import TiledKernels

/// What to generate. `init(prompt:)` takes diffusers' SD 1.x defaults (50 steps, guidance 7.5, PNDM);
/// `init(prompt:defaultsOf:)` takes a model's own (its `GenerationDefaults`, else its scheduler config's class).
public struct GenerationSettings: Sendable, Codable, Equatable {
    public var prompt: String
    public var negativePrompt: String?
    public var steps: Int = 50
    public var guidance: Float = 7.5
    /// nil: unet.sample_size × vae_scale_factor.
    public var width: Int?
    public var height: Int?
    /// nil: a random seed, reported in the result.
    public var seed: UInt64?
    public var scheduler: SchedulerKind = .pndm
    /// TCD's stochasticity η in 0…1 (nil: TCDScheduler's default 0.3); only TCD takes it.
    public var eta: Float?
    /// Replaces the model scheduler config's `timestep_spacing` (nil: the config's own, or the class default).
    public var timestepSpacing: TimestepSpacing?
    /// Images per prompt, generated as one batch seeded like diffusers' num_images_per_prompt.
    public var count: Int = 1

    public init(prompt: String) { self.prompt = prompt }

    /// diffusers' StableDiffusionPipeline defaults.
    public static let diffusersSteps = 50
    public static let diffusersGuidance: Float = 7.5

    public static let maxSteps = 1000
    public static let maxCount = 16
    public static let maxSide = 4096

    // The range checks every front end (sdd generate, the daemon's requests) applies; each error names the field.

    /// `steps` in 1…maxSteps.
    public static func checkSteps(_ steps: Int) throws(PipelineError) {
        guard (1...maxSteps).contains(steps) else {
            throw .invalidRequest("steps \(steps) is out of range (1…\(maxSteps))")
        }
    }

    /// `count` in 1…maxCount.
    public static func checkCount(_ count: Int) throws(PipelineError) {
        guard (1...maxCount).contains(count) else {
            throw .invalidRequest("count \(count) is out of range (1…\(maxCount))")
        }
    }

    /// A side (`name`: "width" or "height") in multiple…maxSide and a multiple of `multiple`: 8 and the VAE's
    /// scale factor (`scaleFactor`), whichever is larger.
    public static func checkSide(_ name: String, _ value: Int, scaleFactor: Int) throws(PipelineError) {
        let multiple = max(8, scaleFactor)
        guard (multiple...maxSide).contains(value) else {
            throw .invalidRequest("\(name) \(value) is out of range (\(multiple)…\(maxSide))")
        }
        guard value % multiple == 0 else { throw .invalidRequest("\(name) \(value) is not a multiple of \(multiple)") }
    }
}

extension StableDiffusionModel {
    /// The scheduler a generation with `s` runs: the model's scheduler config with the request's overrides, for
    /// `s.steps` steps. Throws when the scheduler cannot place every step in the training range (PNDM at 1000).
    public func scheduler(for s: GenerationSettings) throws -> any Scheduler {
        let config = try scheduler.overriding(timestepSpacing: s.timestepSpacing, for: s.scheduler)
        return try makeScheduler(s.scheduler, config: config, steps: s.steps, eta: s.eta)
    }
}

/// Progress of one denoising step; return false from the handler to cancel.
public struct StepProgress: Sendable {
    public let step: Int
    public let totalSteps: Int
    public let timestep: Float
    public let elapsed: TimeInterval
    /// The latents after this step: [count, latent_channels, h/f, w/f].
    public let latents: Tensor
}

/// The outcome of a generation.
public struct GenerationResult: Sendable {
    public let settings: GenerationSettings
    public let seed: UInt64
    public let width: Int
    public let height: Int
    /// Final denoised latents (diffusers' output_type="latent"): [count, latent_channels, h/f, w/f].
    public let latents: Tensor
    /// One 8-bit RGB image per item, row-major height × width × 3.
    public let images: [[UInt8]]
    /// True when the prompt or negative prompt was cut to the tokenizer's 77 tokens.
    public let promptTruncated: Bool
    public let negativePromptTruncated: Bool
    /// Wall-clock seconds of each stage.
    public let timings: StageTimings
}

/// Seconds spent in each stage of one generation.
public struct StageTimings: Sendable, Codable {
    public var textEncode: Double = 0
    /// One entry per UNet evaluation (guided batch included).
    public var steps: [Double] = []
    public var vaeDecode: Double = 0

    public var medianStep: Double {
        guard !steps.isEmpty else { return 0 }
        let sorted = steps.sorted()
        let mid = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
    }
}

extension ProductPrecision {
    /// The precision a `--precision` option names: f32, bf16 (only where the CPU has AVX512_BF16), or nil
    /// for auto (see `StableDiffusionPipeline.automaticProducts`).
    public static func named(_ name: String) throws -> ProductPrecision? {
        if name.lowercased() == "auto" { return nil }
        guard let p = ProductPrecision(rawValue: name.lowercased()) else {
            throw PipelineError.invalidRequest("unknown precision \(name); choose auto, f32 or bf16")
        }
        if p == .bf16 && !ProductPrecision.bf16Available {
            throw PipelineError.invalidRequest("precision bf16 needs a CPU with AVX512_BF16, which this one lacks; use f32")
        }
        return p
    }
}

/// A loaded model: configs, tokenizer and weights of each component, ready to generate.
public final class StableDiffusionPipeline {
    public let model: StableDiffusionModel
    public let tokenizer: CLIPTokenizer
    public let residency: WeightResidency
    /// How the UNet's and the VAE decoder's products multiply (`ProductPrecision`); the text encoder's always
    /// run in F32. BF16 products run about twice as fast where the CPU has AVX512_BF16, further from
    /// diffusers' fp32.
    public let products: ProductPrecision
    /// The components' weights as mapped, without LoRAs.
    private let baseTextEncoderWeights: WeightProvider
    private let baseUNetWeights: WeightProvider
    /// The weights the models bind: the base weights with the current LoRAs attached.
    private var textEncoderWeights: WeightProvider
    private var unetWeights: WeightProvider
    private let vaeWeights: WeightProvider
    /// The LoRAs the text encoder and UNet run with (see `setLoRAs`).
    public private(set) var loras: ResolvedLoRAs?
    /// How LoRAs reach the products (side path by default; see `LoRAApplication`).
    public private(set) var loraApplication: LoRAApplication = .side
    // Built on first use and kept: binding weights converts F16/BF16 tensors to F32 once.
    private var textEncoderModel: CLIPTextEncoder?
    private var unetModel: UNet?
    private var vaeModel: VAEDecoder?
    private var tinyVAEModel: TinyAutoencoderDecoder?
    // A run's memory plan, UNet memory mode and VAE tiling are not kept here: each run carries its `RunContext`.

    func textEncoder() throws -> CLIPTextEncoder {
        if let m = textEncoderModel { return m }
        let m = try CLIPTextEncoder(config: model.textEncoder, weights: textEncoderWeights, residency: residency)
        textEncoderModel = m
        return m
    }

    func unet() throws -> UNet {
        if let m = unetModel { return m }
        let m = try UNet(config: model.unet, weights: unetWeights, residency: residency)
        unetModel = m
        return m
    }

    /// The VAE decoder, bound to this pipeline's weights and products on first use and kept.
    public func vaeDecoder() throws -> VAEDecoder {
        if let m = vaeModel { return m }
        let m = try VAEDecoder(config: model.vae, weights: vaeWeights, residency: residency)
        vaeModel = m
        return m
    }

    /// The AutoencoderTiny (TAESD) decoder of a model whose VAE is one, bound on first use and kept.
    public func tinyVAEDecoder() throws -> TinyAutoencoderDecoder? {
        guard let config = model.tinyAutoencoder else { return nil }
        if let m = tinyVAEModel { return m }
        // Resident whatever the residency: a few MB, read again by every band of a banded decode.
        let m = try TinyAutoencoderDecoder(config: config, weights: vaeWeights,
                                           file: model.vaeURL?.appendingPathComponent("config.json").path ?? "vae/config.json")
        tinyVAEModel = m
        return m
    }

    /// Reads configs and the tokenizer and maps every component's weights now (validating each file's
    /// header and tensor ranges, so a broken file fails before any work); pages are read on use.
    /// residency: `.streamed` (default) keeps about one module's weights resident; `.resident` keeps
    /// every page once read; `.strict` also drops them from the page cache.
    /// products: how the UNet and VAE multiply; nil chooses by `automaticProducts`.
    public init(model: StableDiffusionModel, residency: WeightResidency = .streamed,
                products: ProductPrecision? = nil) throws {
        self.model = model
        self.residency = residency
        tokenizer = model.tokenizer
        baseTextEncoderWeights = try model.weights("text_encoder")
        textEncoderWeights = baseTextEncoderWeights
        let unet = try model.weights("unet")
        baseUNetWeights = unet
        let chosen = products ?? StableDiffusionPipeline.automaticProducts(unetWeights: unet)
        self.products = chosen
        unetWeights = ProductPrecisionWeights(unet, products: chosen)
        vaeWeights = ProductPrecisionWeights(try model.weights("vae"), products: chosen)
    }

    /// Binds every component's weights (each tensor's shape checked against the configs; nothing is read or
    /// copied for mapped F16/BF16/quantized data) and returns what the memory planner needs of them. A model whose
    /// weights do not match its configs fails here, before any generation work.
    public func weightFigures() throws -> WeightFigures {
        _ = try textEncoder()
        let unet = try unet()
        if let tiny = try tinyVAEDecoder() {
            // TAESD's weights stay resident (a few MB); its decode is planned in bands of latent rows.
            return WeightFigures(unetLargestGroupBytes: unet.largestGroupBytes, unetTotalBytes: unet.totalWeightBytes,
                                 unetLargestWeightElements: unet.largestWeightElements,
                                 unetMergedLoRABytes: unet.mergedLoRABytes,
                                 unetLargestGroupF32Bytes: unet.largestGroupF32Bytes,
                                 unetTypedBytesPerValue: unet.typedBytesPerValue,
                                 vaeLargestGroupBytes: tiny.totalWeightBytes, vaeTotalBytes: tiny.totalWeightBytes,
                                 streamed: residency != .resident)
        }
        let vae = try vaeDecoder()
        return WeightFigures(unetLargestGroupBytes: unet.largestGroupBytes, unetTotalBytes: unet.totalWeightBytes,
                             unetLargestWeightElements: unet.largestWeightElements,
                             unetMergedLoRABytes: unet.mergedLoRABytes,
                             unetLargestGroupF32Bytes: unet.largestGroupF32Bytes,
                             unetTypedBytesPerValue: unet.typedBytesPerValue,
                             vaeLargestGroupBytes: vae.largestGroupBytes, vaeTotalBytes: vae.totalWeightBytes,
                             streamed: residency != .resident, vaeConvWeightsTyped: vae.convWeightsTyped)
    }

    /// Runs the text encoder and UNet with `specs` (in order; none: the plain model) from now on. Opens and checks
    /// every file against the model first — a layer the model lacks or a shape that does not fit throws a
    /// `LoRAError` naming the key, and the pipeline keeps its previous LoRAs. Rebinds the two models only when
    /// the set changes.
    public func setLoRAs(_ specs: [LoRASpec], application: LoRAApplication = .side) throws {
        if specs == (loras?.specs ?? []) && application == loraApplication { return }
        let resolved = specs.isEmpty ? nil : try ResolvedLoRAs(
            specs, components: ["text_encoder": baseTextEncoderWeights, "unet": baseUNetWeights])
        loras = resolved
        loraApplication = application
        textEncoderWeights = resolved?.provider("text_encoder", base: baseTextEncoderWeights,
                                                application: application) ?? baseTextEncoderWeights
        let unet = resolved?.provider("unet", base: baseUNetWeights, application: application) ?? baseUNetWeights
        unetWeights = ProductPrecisionWeights(unet, products: products)
        textEncoderModel = nil
        unetModel = nil
    }

    /// Binds the text encoder and UNet to their weights now (with the current LoRAs) instead of on first use.
    public func bindModels() throws {
        _ = try textEncoder()
        _ = try unet()
    }

    /// BF16 products for a model whose UNet weights are block-quantized (already a few parts in a thousand
    /// from F32, as stable-diffusion.cpp's quantized products are) on a CPU with AVX512_BF16; F32 otherwise,
    /// so F32, F16 and BF16 weights keep diffusers' results to rounding.
    static func automaticProducts(unetWeights: WeightProvider) -> ProductPrecision {
        let quantized = (unetWeights as? GGUFComponentWeights)?.hasQuantizedTensors
            ?? (unetWeights as? RenamedWeights)?.hasQuantizedTensors ?? false
        guard ProductPrecision.bf16Available, quantized else { return .f32 }
        return .bf16
    }

    /// Checks a request against the model and returns the resolved (width, height).
    public func validate(_ s: GenerationSettings) throws -> (width: Int, height: Int) {
        let f = model.vaeScaleFactor
        let width = s.width ?? model.defaultSize.width
        let height = s.height ?? model.defaultSize.height
        for (name, value) in [("width", width), ("height", height)] {
            try GenerationSettings.checkSide(name, value, scaleFactor: f)
        }
        try GenerationSettings.checkSteps(s.steps)
        try GenerationSettings.checkCount(s.count)
        guard s.guidance.isFinite else { throw PipelineError.invalidRequest("guidance must be a finite number") }
        do {
            // The scheduler must be able to place every step in the training range (e.g. PNDM at 1000 steps cannot).
            _ = try scheduler(for: s)
        } catch {
            throw PipelineError.invalidRequest("\(s.scheduler.rawValue) with \(s.steps) steps: \(error)")
        }
        return (width, height)
    }

    /// The request's scheduler, built from the model's scheduler config with the request's overrides.
    func scheduler(for s: GenerationSettings) throws -> any Scheduler { try model.scheduler(for: s) }

    /// Prompt embeddings as diffusers' encode_prompt: [uncond ×count, cond ×count] with guidance, else cond ×count.
    func encodePrompts(_ s: GenerationSettings, guided: Bool, encoder: CLIPTextEncoder)
        throws -> (context: Tensor, truncated: Bool, negativeTruncated: Bool) {
        let maxLength = model.textEncoder.maxPositionEmbeddings
        let cond = tokenizer.encode(s.prompt, maxLength: maxLength)
        var rows = [cond.ids]
        var negativeTruncated = false
        if guided {
            let neg = tokenizer.encode(s.negativePrompt ?? "", maxLength: maxLength)
            negativeTruncated = neg.truncated
            rows.insert(neg.ids, at: 0)
        }
        let embedded = try encoder.encode(rows)
        let parts = (0..<rows.count).flatMap { r in
            Array(repeating: embedded.slice(batch: r..<(r + 1)), count: s.count)
        }
        return (Tensor.stack(batches: parts), cond.truncated, negativeTruncated)
    }

    /// Starts a generation: validates, resolves size and seed, draws the initial latents. No model runs yet.
    /// `context`: the run's memory settings (default: no plan, the fastest UNet, no tiling).
    public func begin(_ s: GenerationSettings, context: RunContext = RunContext()) throws -> Generation {
        let (width, height) = try validate(s)
        var resolved = s
        resolved.width = width
        resolved.height = height
        resolved.seed = s.seed ?? UInt64.random(in: 0..<(1 << 32))
        let scheduler = try self.scheduler(for: s)
        var random = TorchRandom(seed: resolved.seed ?? 0)
        let f = model.vaeScaleFactor
        let latentShape = [s.count, model.unet.inChannels, height / f, width / f]
        let latents = scale(random.randn(latentShape), by: scheduler.initNoiseSigma)
        let state = GenerationState(settings: resolved, latents: latents, scheduler: scheduler, random: random,
                                    stepIndex: 0)
        return try Generation(pipeline: self, state: state, run: context)
    }

    /// Continues a generation from a checkpoint (`Generation.state`), giving the same result as an uninterrupted run.
    public func resume(_ state: GenerationState, context: RunContext = RunContext()) throws -> Generation {
        let (width, height) = try validate(state.settings)
        let f = model.vaeScaleFactor
        let expected = [state.settings.count, model.unet.inChannels, height / f, width / f]
        guard state.latents.shape == expected, state.stepIndex <= state.scheduler.timesteps.count else {
            throw PipelineError.invalidRequest("checkpoint does not fit this model or request (latents \(state.latents.shape), expected \(expected))")
        }
        return try Generation(pipeline: self, state: state, run: context)
    }

    /// Runs the whole generation. `progress` is called after every step; returning false cancels.
    public func generate(_ s: GenerationSettings, context: RunContext = RunContext(),
                         progress: (StepProgress) -> Bool = { _ in true }) throws -> GenerationResult {
        let generation = try begin(s, context: context)
        while let p = try generation.next() {
            if !progress(p) { throw PipelineError.cancelled }
        }
        return try generation.finish()
    }

    /// One guided UNet evaluation and scheduler step on `state`.
    func denoise(_ state: inout GenerationState, context: Tensor, run: RunContext) throws {
        let s = state.settings
        let guided = s.guidance > 1
        let unet = try unet()
        let i = state.stepIndex
        let t = state.scheduler.timesteps[i]
        let input = guided ? Tensor.stack(batches: [state.latents, state.latents]) : state.latents
        // The pool keeps what the plan gives the UNet's tensors; without a plan, what they are modelled to need.
        TensorMemory.limitFootprint(try run.unetTensorBytes ?? MemoryPlanner.unetActivationBytes(
            model.unet, latentHeight: input.shape[2], latentWidth: input.shape[3], batch: input.shape[0],
            memory: run.unetMemory, contextTokens: context.shape[1]))
        // Under tighter scratch bounds the plan counts only buffers of those bounds' size, so idle ones an earlier
        // stage or step left (larger, or more of them) go first.
        if run.unetGemmLimits != .standard { ScratchArena.releaseIdle() }
        let scaled = state.scheduler.scaleModelInput(input, stepIndex: i)
        var eps = unet(scaled, timestep: t, context: context, memory: run.unetMemory, limits: run.unetGemmLimits)
        if guided {
            let uncond = eps.slice(batch: 0..<s.count)
            let text = eps.slice(batch: s.count..<(2 * s.count))
            eps = TiledKernels.add(uncond, scale(TiledKernels.add(text, scale(uncond, by: -1)), by: s.guidance))
        }
        state.latents = state.scheduler.step(output: eps, stepIndex: i, sample: state.latents, random: &state.random)
        state.stepIndex += 1
    }

    /// Latents → images through the VAE decoder (diffusers divides by scaling_factor only; shift_factor is SD3's).
    func decode(_ latents: Tensor, run: RunContext, shouldContinue: () -> Bool = { true }) throws -> [[UInt8]] {
        // The UNet's idle tensor blocks have the UNet's sizes; the decoder's are others.
        TensorMemory.releaseIdle()
        // The UNet's idle scratch arenas too: the decode's scratch (`VAEDecoder.decodeBytes`) is its own.
        ScratchArena.releaseIdle()
        defer { TensorMemory.releaseIdle() }
        let h = latents.shape[2], w = latents.shape[3], n = latents.shape[0]
        let z = Tensor(shape: latents.shape, data: latents.data.map { $0 / model.latentScalingFactor })
        if let tiny = try tinyVAEDecoder() {
            // TAESD decodes exactly in bands (its high-resolution steps band by band, with halos); a plan's (or
            // --vae-tiling's) activation budget chooses them, else the whole latent decodes at once (diffusers'
            // default for AutoencoderTiny).
            let budget = run.vaeTensorBytes ?? (run.vaeTiling == nil ? nil : VAETiling.defaultActivationBudgetBytes)
            let bands = budget.flatMap { tiny.bands(forBudgetBytes: $0, latentHeight: h, latentWidth: w, batch: n) }
            TensorMemory.limitFootprint(TinyAutoencoderDecoder.tensorBytes(
                config: tiny.config, bands: bands, latentHeight: h, latentWidth: w, batch: n))
            return StableDiffusionPipeline.rgb8(try withoutActuallyEscaping(shouldContinue) { ask in
                try tiny.decode(z, bands: bands, shouldContinue: ask)
            })
        }
        let vae = try vaeDecoder()
        TensorMemory.limitFootprint(run.vaeTensorBytes ?? VAEDecoder.tensorBytes(
            config: model.vae, tiling: run.vaeTiling, latentHeight: h, latentWidth: w, batch: n))
        if let tiling = run.vaeTiling {
            guard tiling.preservesSize(scaleFactor: model.vaeScaleFactor) else {
                throw PipelineError.invalidRequest("VAE tiles of \(tiling.tileLatentSize) latent cells with overlap "
                    + "\(tiling.overlapFactor) would not give a \(latents.shape[3] * model.vaeScaleFactor)×"
                    + "\(latents.shape[2] * model.vaeScaleFactor) image")
            }
            return StableDiffusionPipeline.rgb8(try withoutActuallyEscaping(shouldContinue) { ask in
                try vae.decodeTiled(z, tiling: tiling) { _, _ in ask() }
            })
        }
        return StableDiffusionPipeline.rgb8(vae(z))
    }

    /// image: [N, 3, H, W] in [-1, 1] → N row-major H×W×3 byte images, rounded as diffusers' numpy_to_pil.
    public static func rgb8(_ image: Tensor) -> [[UInt8]] {
        let n = image.shape[0], c = image.shape[1], h = image.shape[2], w = image.shape[3]
        // Read in place: a copy (`data`) would be a second F32 image at the decode's end (3 MiB at 512×512).
        return image.withUnsafeBufferPointer { values in (0..<n).map { b in
            var out = [UInt8](repeating: 0, count: h * w * 3)
            for y in 0..<h {
                for x in 0..<w {
                    for ch in 0..<3 {
                        let src = ch < c ? values[((b * c + ch) * h + y) * w + x] : 0
                        let v = min(max(src / 2 + 0.5, 0), 1) * 255
                        // A NaN (weights that hold NaNs, as a damaged file can) becomes 0, as numpy's cast does.
                        out[(y * w + x) * 3 + ch] = v.isNaN ? 0 : UInt8(v.rounded(.toNearestOrEven))
                    }
                }
            }
            return out
        } }
    }
}
