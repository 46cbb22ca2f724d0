// Daemon: `sdd serve` put together — spool, queue, worker, API server, watchdog and housekeeping as Services
// in one ServiceGroup that shuts down gracefully on SIGTERM/SIGINT (checkpointing the running job).

import Foundation
import Logging
import ServiceLifecycle
import SDDAPI
import TiledKernels

/// Everything `sdd serve` can be told.
public struct DaemonConfiguration: Sendable {
    /// The model (diffusers folder or .gguf); nil = jobs fail with a clear error.
    public var model: URL?
    /// Socket path to bind when systemd passes none.
    public var socketPath: String = APIVersion.defaultSocketPath
    public var socketMode: mode_t = 0o660
    public var socketGroup: gid_t?
    /// Listen on this inherited fd instead of binding (socket activation); nil = bind `socketPath`.
    public var inheritedSocket: Int32?
    public var stateDirectory: URL = URL(fileURLWithPath: "/var/lib/sdd")
    /// Seconds the model stays loaded after the last job; nil = forever, 0 = at once.
    public var keepAlive: Double? = 300
    /// Memory budget in bytes for the pipeline (not yet applied; see the lead's issue).
    public var memoryBudget: Int?
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
    public var limits = ConnectionLimits()

    public init() {}
}

public enum Daemon {
    /// Runs until SIGTERM or SIGINT, then stops cleanly. Throws if the socket or state directory cannot be set up.
    public static func run(_ config: DaemonConfiguration, logger: Logger) async throws {
        let notifier = SystemdNotifier()
        let spool = try Spool(root: config.stateDirectory)
        var described: ModelDescription
        do {
            described = try ModelDescription.read(config.model)
        } catch {
            // Keep serving (status, queued jobs are safe); jobs fail with the reason when they run.
            logger.error("cannot read the model; jobs will fail until it is fixed", metadata: ["error": "\(error)"])
            described = ModelDescription(url: config.model, name: config.model?.lastPathComponent ?? "", defaults: nil)
        }
        described.loraDirectory = config.loraDirectory
        let model = described
        let queue = JobQueue(spool: spool, maxQueued: config.maxQueued, logger: logger) { notifier.status($0) }
        let worker = Worker(queue: queue, modelURL: config.model, keepAlive: config.keepAlive,
                            checkpointEvery: config.checkpointEvery, logger: logger)
        worker.memoryBudget = config.memoryBudget
        worker.products = config.products
        worker.loraDirectory = config.loraDirectory
        let router = APIRouter(queue: queue, worker: worker, model: model, keepAlive: config.keepAlive)
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
        let services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: WorkerService(worker: worker)),
            .init(service: HousekeepingService(queue: queue, maxAge: config.retention, maxBytes: config.retentionBytes)),
            .init(service: WatchdogService(worker: worker, notifier: notifier,
                                           interval: SystemdNotifier.watchdogInterval(), logger: logger)),
            .init(service: server),
        ]
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
