// Daemon: `sdd serve` put together — over one spool and job queue, the worker, housekeeping, watchdog, API server
// (and the TCP listener) as Services in one ServiceGroup that shuts down gracefully on SIGTERM/SIGINT
// (checkpointing the running job).

import Foundation
import Logging
import ServiceLifecycle
import SDDAPI
import TiledKernels

/// Everything `sdd serve` can be told.
public struct DaemonConfiguration: Sendable {
    /// The model (a diffusers folder, a .gguf file or a CompVis single-file checkpoint); nil: health is degraded
    /// ("no model configured") and submissions are refused with 503 — as for a model that cannot be opened.
    public var model: URL?
    /// Another VAE for the model (--vae: an AutoencoderKL or AutoencoderTiny folder); nil = the model's own.
    public var vae: URL?
    /// The AutoencoderKL config of a single-file `vae` (--vae-config); nil = the model's own VAE config.
    public var vaeConfig: URL?
    /// Socket path to bind when systemd passes none.
    public var socketPath: String = APIVersion.defaultSocketPath
    /// Permissions and group of the bound socket file; nil group: the daemon's own.
    public var socketMode: mode_t = 0o660
    public var socketGroup: gid_t?
    /// Listen on this inherited fd instead of binding (socket activation); nil = bind `socketPath`.
    public var inheritedSocket: Int32?
    public var stateDirectory: URL = URL(fileURLWithPath: "/var/lib/sdd")
    /// Seconds the model stays loaded after the last job; nil = forever, 0 = at once.
    public var keepAlive: Double? = 300
    /// Memory budget in bytes: each job is planned under it, and requests that cannot fit are refused at submit
    /// (413). nil: no planning.
    public var memoryBudget: Int?
    /// Where the budget came from (logged at start).
    public var memoryBudgetExplanation: String?
    /// A job whose runs ended with the process this many times is failed (`crashed_repeatedly`).
    public var maxCrashes: Int = 2
    /// Submissions get 507 while the state directory has less free space than this many bytes.
    public var minFreeBytes: Int = 64 << 20
    /// How the UNet and VAE multiply (`--precision`); nil: the pipeline's automatic choice.
    public var products: ProductPrecision?
    /// The only place LoRAs are loaded from: requests name files in it (`--lora-dir`); nil: none may be named.
    public var loraDirectory: URL?
    /// Most queued jobs; more get 429.
    public var maxQueued: Int = 1000
    /// Finished, failed and canceled jobs are removed this many seconds after they ended; nil = never.
    public var retention: Double? = 24 * 3600
    /// And the oldest of them while they take more than this many bytes; nil = no size limit.
    public var retentionBytes: Int?
    /// Checkpoint every this many steps.
    public var checkpointEvery: Int = 5
    /// A latent preview every this many steps (nil: about ten per job; 0: none).
    public var previewEvery: Int?
    /// Previews decoded by this AutoencoderTiny (TAESD) folder (--preview-vae); nil: the linear approximation.
    public var previewVAE: URL?
    /// Per-connection limits: timeouts, the largest body, the event stream's heartbeat.
    public var limits = ConnectionLimits()
    /// Most image downloads in flight at once; more get 429.
    public var maxDownloads: Int = APIRouter.defaultMaxDownloads
    /// Also serve the API on this TCP address, token-authenticated (`--listen`, `--tokens`); nil = socket only.
    public var tcp: TCPListenConfiguration?

    public init() {}
}

public enum Daemon {
    /// Runs until SIGTERM or SIGINT, then stops cleanly. Throws if the socket or state directory cannot be set up.
    public static func run(_ config: DaemonConfiguration, logger: Logger) async throws {
        let notifier = SystemdNotifier()
        // One daemon per state directory, before anything in it is read or cleaned.
        let lock = try StateDirectoryLock(stateDirectory: config.stateDirectory)
        defer { withExtendedLifetime(lock) {} }
        let spool = try Spool(root: config.stateDirectory)
        if let explanation = config.memoryBudgetExplanation { logger.info("\(explanation)") }
        // Opened and checked now, so that a broken model is reported (health "degraded", jobs refused with 503 and
        // the reason) instead of every job failing later.
        var described = ModelDescription.check(config.model, vae: config.vae, vaeConfig: config.vaeConfig,
                                               products: config.products)
        described.loraDirectory = config.loraDirectory
        let model = described
        if let problem = model.problem {
            logger.error("the model cannot be used; jobs are refused until it is fixed", metadata: ["error": "\(problem)"])
        }
        let queue = JobQueue(spool: spool, maxQueued: config.maxQueued, maxCrashes: config.maxCrashes,
                             minFreeBytes: config.minFreeBytes, logger: logger) { notifier.status($0) }
        let worker = Worker(queue: queue, modelURL: config.model, keepAlive: config.keepAlive,
                            checkpointEvery: config.checkpointEvery, logger: logger)
        worker.vaeURL = config.vae
        worker.vaeConfigURL = config.vaeConfig
        worker.memoryBudget = config.memoryBudget
        worker.products = config.products
        worker.previewEvery = config.previewEvery
        worker.previewVAE = config.previewVAE
        worker.loraDirectory = config.loraDirectory
        let router = APIRouter(queue: queue, worker: worker, model: model, keepAlive: config.keepAlive,
                               memoryBudget: config.memoryBudget, minFreeBytes: config.minFreeBytes,
                               maxDownloads: config.maxDownloads)
        let address: ListenAddress = config.inheritedSocket.map { .inherited($0) }
            ?? .path(config.socketPath, mode: config.socketMode, group: config.socketGroup)
        let server = APIServer(
            address: address, router: router, limits: config.limits, notifier: notifier, logger: logger,
            onReady: {
                logger.info("ready", metadata: ["state_dir": "\(config.stateDirectory.path)", "model": "\(model.name)"])
                notifier.ready(status: queue.statusLine())
            },
            onStopping: {
                notifier.stopping()
                queue.stopAccepting()
            })
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: WorkerService(worker: worker)),
            .init(service: HousekeepingService(queue: queue, maxAge: config.retention, maxBytes: config.retentionBytes)),
            .init(service: WatchdogService(worker: worker, notifier: notifier,
                                           interval: SystemdNotifier.watchdogInterval(), logger: logger)),
            .init(service: server),
        ]
        if let tcp = config.tcp {
            services.append(.init(service: TCPListener(config: tcp, router: router, limits: config.limits, logger: logger)))
        }
        let group = ServiceGroup(configuration: .init(
            services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("stopped")
    }
}

/// Runs the worker thread; on shutdown, lets it checkpoint the running job and waits for it.
struct WorkerService: Service {
    let worker: Worker

    func run() async throws {
        worker.start()
        try? await gracefulShutdown()
        await worker.stop()
    }
}

/// Applies retention every minute (or sooner for short retention times).
struct HousekeepingService: Service {
    let queue: JobQueue
    let maxAge: Double?
    let maxBytes: Int?

    func run() async throws {
        let period = min(60, max(0.5, (maxAge ?? 60) / 4))
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if maxAge != nil || maxBytes != nil { queue.sweep(maxAge: maxAge, maxBytes: maxBytes) }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(period)) }
        }
    }
}
