// Worker: the one thread that owns the pipeline. It takes jobs in queue order, runs them step by step
// (checking for cancel and shutdown between steps), checkpoints every few steps, writes the PNGs, and
// releases the model after the keep-alive idle time.

import Foundation
import Synchronization
import Logging
import Pipeline
import SDDAPI
import TiledKernels

/// @unchecked: the state other threads touch is in `shared` (a Mutex); `pipeline` is only touched on the worker
/// thread, and the configuration vars are set before `start()`.
public final class Worker: @unchecked Sendable {
    public let queue: JobQueue
    public let modelURL: URL?
    /// Seconds the model stays loaded after a job; nil = forever, 0 = released at once.
    public let keepAlive: Double?
    /// A checkpoint is written every this many steps (and when stopping mid-job).
    public let checkpointEvery: Int
    let logger: Logger

    /// What other threads ask about or set (stop requests, health, whether the model is loaded).
    private struct Shared {
        var stopRequested = false
        var busy = false
        var lastProgress = Date()
        var loaded = false
        var finished: [CheckedContinuation<Void, Never>] = []
        var exited = false
    }
    private let shared = Mutex(Shared())

    /// Only touched on the worker thread.
    private var pipeline: StableDiffusionPipeline?

    /// Bytes a generation may use (--memory-budget): each job is planned under it (VAE tiling) or fails
    /// with the planner's message. nil: no limit.
    public var memoryBudget: Int?
    /// Another VAE for the model (`StableDiffusionModel.replacingVAE(with:)`); read when the model loads.
    public var vaeURL: URL?
    /// The config of a single-file `vaeURL` (nil: the model's own VAE config).
    public var vaeConfigURL: URL?
    /// How the pipeline's UNet and VAE multiply (nil: automatic); read when the model loads.
    public var products: ProductPrecision?
    /// A latent preview after every this many steps (nil: about ten per job, see `LatentPreview.isPreviewStep`;
    /// 0: none). Previews only read the latents: the images are the same with or without them.
    public var previewEvery: Int?
    /// Previews decoded by this AutoencoderTiny (TAESD) folder instead of the linear approximation (`--preview-vae`);
    /// opened when the model loads.
    public var previewVAE: URL?
    /// The open `previewVAE`; only touched on the worker thread.
    private var taesdPreview: TAESDPreview?
    /// Where jobs' LoRA names are looked up (`--lora-dir`); nil: a job naming one fails.
    public var loraDirectory: URL?

    public init(queue: JobQueue, modelURL: URL?, keepAlive: Double?, checkpointEvery: Int = 5, logger: Logger) {
        self.queue = queue
        self.modelURL = modelURL
        self.keepAlive = keepAlive
        self.checkpointEvery = max(1, checkpointEvery)
        self.logger = logger
    }

    /// Starts the worker thread. With a memory budget, the process's allocator setting is made here, once.
    public func start() {
        if memoryBudget != nil { ProcessMemory.preferCompactHeap() }
        let thread = Thread { [self] in
            loop()
            let waiters = shared.withLock { s in
                s.exited = true
                defer { s.finished = [] }
                return s.finished
            }
            for w in waiters { w.resume() }
        }
        thread.name = "sdd-worker"
        thread.stackSize = 16 << 20
        thread.start()
    }

    /// Asks the worker to stop (checkpointing a running job after its current step) and waits until it has.
    public func stop() async {
        requestStop()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in whenExited(c) }
    }

    /// Makes the running job pause after its current step (checkpointed), without waking an idle worker.
    /// Safe to call from a queue subscriber; `stop()` finishes the job.
    public func requestStopSoon() {
        shared.withLock { $0.stopRequested = true }
    }

    private func requestStop() {
        shared.withLock { $0.stopRequested = true }
        queue.stopWorker()
    }

    private func whenExited(_ c: CheckedContinuation<Void, Never>) {
        let exited = shared.withLock { s in
            if !s.exited { s.finished.append(c) }
            return s.exited
        }
        if exited { c.resume() }
    }

    /// Whether the worker is making progress: idle, or its last step (or load) ended within `interval` seconds.
    public func isHealthy(within interval: Double, now: Date = Date()) -> Bool {
        shared.withLock { !$0.busy || now.timeIntervalSince($0.lastProgress) < interval }
    }

    /// Whether the model's weights are mapped now.
    public var modelLoaded: Bool { shared.withLock { $0.loaded } }

    private var shouldStop: Bool { shared.withLock { $0.stopRequested } }

    private func heartbeat(busy: Bool? = nil) {
        shared.withLock { s in
            s.lastProgress = Date()
            if let busy { s.busy = busy }
        }
    }

    private func setLoaded(_ value: Bool) {
        shared.withLock { $0.loaded = value }
    }

    // MARK: the worker thread

    private func loop() {
        var idleSince = Date()
        while true {
            let deadline: Date? = pipeline != nil ? keepAlive.map { idleSince.addingTimeInterval($0) } : nil
            switch queue.next(until: deadline) {
            case .stopping:
                return
            case .timedOut:
                unloadModel()
            case .job(let record):
                heartbeat(busy: true)
                run(record)
                heartbeat(busy: false)
                idleSince = Date()
                if keepAlive == 0 { unloadModel() }
            }
        }
    }

    private func unloadModel() {
        guard pipeline != nil else { return }
        pipeline = nil
        taesdPreview = nil
        setLoaded(false)
        logger.info("model released after keep-alive")
    }

    private func loadModel() throws -> StableDiffusionPipeline {
        if let p = pipeline { return p }
        guard let url = modelURL else {
            throw PipelineError.invalidRequest("no model configured: start sdd serve with --model PATH or SDD_MODEL")
        }
        let clock = Date()
        var model = try StableDiffusionModel(url: url)
        if let vae = vaeURL { model = try model.replacingVAE(with: vae, config: vaeConfigURL) }
        let p = try StableDiffusionPipeline(model: model, products: products)
        if let url = previewVAE {
            let preview = try TAESDPreview(folder: url)
            try preview.check(latentChannels: model.unet.inChannels)
            taesdPreview = preview
        }
        pipeline = p
        setLoaded(true)
        logger.info("model loaded", metadata: ["model": "\(url.path)", "seconds": "\(Date().timeIntervalSince(clock))"])
        return p
    }

    private func run(_ record: JobRecord) {
        let id = record.job.id
        let log = Logger.withJob(logger, id)
        do {
            let pipeline = try loadModel()
            heartbeat()
            let generation = try begin(record, pipeline: pipeline, log: log)
            let total = generation.state.totalSteps
            let startStep = generation.state.stepIndex
            var lastCheckpoint = startStep
            queue.markStarted(id, step: startStep, total: total)
            log.info("job started", metadata: ["step": "\(startStep)", "total": "\(total)"])
            let clock = Date()
            while true {
                if queue.isCancelRequested(id) {
                    spoolCheckpointRemove(id)
                    queue.complete(id, state: .canceled, error: APIError(.canceled, "canceled while running"))
                    log.info("job canceled", metadata: ["step": "\(generation.state.stepIndex)"])
                    return
                }
                if shouldStop {
                    if generation.state.stepIndex > lastCheckpoint { try checkpoint(id, generation) }
                    queue.release(id)
                    log.info("job paused for shutdown", metadata: ["step": "\(generation.state.stepIndex)"])
                    return
                }
                let stepClock = Date()
                guard let p = try generation.next() else { break }
                heartbeat()
                let done = p.step - startStep
                let mean = Date().timeIntervalSince(clock) / Double(max(1, done))
                queue.reportStep(id, step: p.step, total: p.totalSteps, seconds: Date().timeIntervalSince(stepClock),
                                 eta: mean * Double(p.totalSteps - p.step))
                if LatentPreview.isPreviewStep(p.step, total: p.totalSteps, every: previewEvery),
                   let png = taesdPreview != nil ? taesdPreview?.png(p.latents) : LatentPreview.png(p.latents) {
                    queue.reportPreview(id, png: png, step: p.step, total: p.totalSteps)
                }
                if p.step - lastCheckpoint >= checkpointEvery, p.step < p.totalSteps {
                    try checkpoint(id, generation)
                    lastCheckpoint = p.step
                }
            }
            let result: GenerationResult
            do {  // with VAE tiling a cancel or a shutdown is seen between tiles
                result = try generation.finish { !queue.isCancelRequested(id) && !shouldStop }
            } catch PipelineError.cancelled {
                if queue.isCancelRequested(id) {
                    spoolCheckpointRemove(id)
                    queue.complete(id, state: .canceled, error: APIError(.canceled, "canceled while decoding"))
                    log.info("job canceled while decoding")
                } else {  // shutdown: the checkpoint holds the final latents, a restart only decodes
                    try checkpoint(id, generation)
                    queue.release(id)
                    log.info("job paused for shutdown while decoding")
                }
                return
            }
            heartbeat()
            let text = PNGMetadata.entries(for: result, model: pipeline.model.name, loras: pipeline.loras?.specs ?? [])
            for (n, image) in result.images.enumerated() {
                try queue.spool.writeImage(id, n, try PNGWriter.encode(rgb: image, width: result.width,
                                                                       height: result.height, text: text))
            }
            // Kept when the outcome cannot be written: the job runs again from it.
            if queue.complete(id, state: .finished, images: result.images.count) { spoolCheckpointRemove(id) }
            log.info("job finished", metadata: ["images": "\(result.images.count)",
                                                "seconds": "\(String(format: "%.2f", Date().timeIntervalSince(clock)))"])
        } catch {
            spoolCheckpointRemove(id)
            queue.complete(id, state: .failed, error: APIError(.generationFailed, "\(error)"))
            log.error("job failed", metadata: ["error": "\(error)"])
        }
    }

    /// Resumes from the job's checkpoint when there is a usable one, else starts at step 0.
    private func begin(_ record: JobRecord, pipeline: StableDiffusionPipeline, log: Logger) throws -> Generation {
        var settings = RequestValidation.settings(record.job.settings)
        // The prompt's <lora:…> tags become LoRAs (and leave the text), after the request's own `loras`.
        let (prompt, loras) = try RequestValidation.loras(record.job.settings, loraDirectory: loraDirectory)
        settings.prompt = prompt
        try pipeline.setLoRAs(loras)
        if !loras.isEmpty { log.info("LoRAs", metadata: ["loras": "\(loras.map { "\($0.path):\($0.scale)" })"]) }
        // Each job plans its own run; nothing of the previous job's stays on the pipeline.
        let context = try MemoryPlanner.runContext(budget: memoryBudget, pipeline: pipeline, width: settings.width,
                                                   height: settings.height, count: settings.count,
                                                   guided: settings.guidance > 1)
        if let plan = context.memoryPlan { log.info("memory plan", metadata: ["plan": "\(plan)"]) }
        if let data = queue.spool.loadCheckpoint(record.job.id) {
            do {
                let state = try JSONDecoder().decode(GenerationState.self, from: data)
                guard state.settings.prompt == settings.prompt, state.settings.seed == settings.seed,
                      state.settings.steps == settings.steps else {
                    throw PipelineError.invalidRequest("the checkpoint belongs to other settings")
                }
                return try pipeline.resume(state, context: context)
            } catch {
                log.warning("checkpoint unusable, starting over", metadata: ["error": "\(error)"])
            }
        }
        return try pipeline.begin(settings, context: context)
    }

    /// Saves the generation state; a failure (disk full) is logged, not fatal: the job goes on without it.
    private func checkpoint(_ id: String, _ generation: Generation) throws {
        do {
            try queue.spool.saveCheckpoint(id, try JSONEncoder().encode(generation.state))
        } catch {
            logger.warning("cannot write a checkpoint", metadata: ["job": "\(id)", "error": "\(error)"])
        }
    }

    private func spoolCheckpointRemove(_ id: String) { queue.spool.removeCheckpoint(id) }
}

extension Logger {
    static func withJob(_ base: Logger, _ id: String) -> Logger {
        var l = base
        l[metadataKey: "job"] = "\(id)"
        return l
    }
}
