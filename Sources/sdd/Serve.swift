// `sdd serve`: the daemon — HTTP/1.1 + JSON on a Unix socket (or the one systemd passes), a durable job queue,
// and systemd notify/watchdog integration. See DESIGN.md, "Daemon".

import ArgumentParser
import Daemon
import Foundation
import Logging
import Pipeline
import SDDAPI
import TiledKernels

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the image generation daemon.",
        discussion: """
            Serves the API on a Unix socket (or the socket systemd passes with LISTEN_FDS, in which case --socket \
            is ignored). Jobs are kept in --state-dir and survive restarts; SIGTERM checkpoints the running job \
            and exits.
            """)

    @OptionGroup var model: ModelOption

    @Option(help: "Another VAE for the model: a diffusers AutoencoderKL or AutoencoderTiny (TAESD) folder, or a single-file AutoencoderKL .safetensors (CompVis names). Default: $SDD_VAE, else the model's own.")
    var vae: String?

    @Option(help: "For a single-file --vae: the AutoencoderKL config.json (or a folder holding it) its tensors follow. Default: the model's own VAE config.")
    var vaeConfig: String?

    @Option(help: "Unix socket to listen on (ignored under socket activation).")
    var socket: String = APIVersion.defaultSocketPath

    @Option(help: "Directory for queued jobs, checkpoints and results.")
    var stateDir: String = "/var/lib/sdd"

    @Option(help: "Permissions of the socket file, octal.")
    var socketMode: String = "0660"

    @Option(help: "Group of the socket file (name or gid). Default: the daemon's group.")
    var socketGroup: String?

    @Option(help: "How long the model stays loaded after the last job: 30s, 5m, 1h, 0 (release at once), -1 or forever.")
    var keepAlive: String = "5m"

    @OptionGroup var compute: ComputeOptions

    @Option(help: "A job whose runs ended with the daemon (killed, e.g. out of memory) this many times is failed with crashed_repeatedly instead of run again.")
    var maxCrashes: Int = 2

    @Option(
        help: ArgumentHelp(
            "Refuse new jobs (507) while the state directory's file system has less free space than this, e.g. 64M (the default); 0 or none: never.",
            valueName: "size"),
        transform: { ["0", "none", "off"].contains($0.lowercased()) ? 0 : try parseSize($0) })
    var minFreeSpace: Int?

    @Option(help: "The directory requests' LoRA names (\"loras\": [{\"name\": …}] and <lora:NAME:SCALE> prompt tags) are looked up in, as NAME.safetensors; the daemon opens LoRAs from nowhere else. Default: $SDD_LORA_DIR; none: requests naming a LoRA are refused.")
    var loraDir: String?

    @Option(help: "Most jobs waiting at once; more submissions get 429.")
    var queueLimit: Int = 1000

    @Option(help: "Most image downloads in progress at once; more get 429 (each holds an open file until read).")
    var maxDownloads: Int = APIRouter.defaultMaxDownloads

    @Option(help: "How often an event stream carries a heartbeat event (10s, 1s), so clients notice a stopped daemon.")
    var eventHeartbeat: String = "10s"

    @Option(help: "Keep finished jobs and their images this long: 24h, 7d, forever.")
    var retention: String = "24h"

    @Option(help: ArgumentHelp("Also remove the oldest finished jobs while their files take more than this, e.g. 2G.",
                               valueName: "size"), transform: parseSize)
    var retentionSize: Int?

    @Option(help: "Write a checkpoint of the running job every this many steps.")
    var checkpointEvery: Int = 5

    @Option(help: "Also serve the API (native, OpenAI, AUTOMATIC1111) on this TCP address, e.g. 127.0.0.1:7860; every request needs a token from --tokens. Default: $SDD_LISTEN.")
    var listen: String?

    @Option(help: "File of \"NAME TOKEN\" lines for --listen (mode 0600): a request carries \"Authorization: Bearer TOKEN\" or HTTP Basic with the token as password, and NAME owns its jobs. Default: $SDD_TOKENS.")
    var tokens: String?

    @Flag(help: "Allow a --listen address other machines can reach (default: loopback addresses only).")
    var listenAny = false

    @Option(help: "Draw a latent preview (GET /v1/jobs/ID/preview, and a preview event) every this many steps; 0: none. Default: about ten per job.")
    var previewEvery: Int?

    @Option(help: "Decode previews with this AutoencoderTiny (TAESD) folder (e.g. madebyollin/taesd) instead of the linear latent→RGB approximation; each decode stays within 32 MiB (larger latents are averaged down first), kept aside from --memory-budget.")
    var previewVAE: String?

    @Option(help: "Log level.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        guard queueLimit >= 1 else { throw ValidationError("--queue-limit must be at least 1") }
        guard maxDownloads >= 1 else { throw ValidationError("--max-downloads must be at least 1") }
        guard checkpointEvery >= 1 else { throw ValidationError("--checkpoint-every must be at least 1") }
        guard maxCrashes >= 1 else { throw ValidationError("--max-crashes must be at least 1") }
    }

    /// The daemon's configuration from the options; throws `OptionError` naming the bad option.
    func makeConfiguration() throws -> DaemonConfiguration {
        var config = DaemonConfiguration()
        config.model = URL(fileURLWithPath: try model.path())
        let vaePath = vae ?? ProcessInfo.processInfo.environment["SDD_VAE"].flatMap { $0.isEmpty ? nil : $0 }
        config.vae = vaePath.map { URL(fileURLWithPath: $0) }
        if let vaeConfig {
            guard config.vae != nil else { throw OptionError("--vae-config \(vaeConfig): give the VAE file with --vae or SDD_VAE") }
            config.vaeConfig = URL(fileURLWithPath: vaeConfig)
        }
        config.socketPath = socket
        config.socketMode = try FileModeOption.parse(socketMode)
        config.socketGroup = try socketGroup.map { try GroupOption.resolve($0) }
        config.stateDirectory = URL(fileURLWithPath: stateDir)
        config.keepAlive = try DurationOption.parse(keepAlive, option: "--keep-alive")
        let budget = compute.budget()
        config.memoryBudget = budget.bytes
        config.memoryBudgetExplanation = budget.explanation
        config.maxCrashes = maxCrashes
        if let minFreeSpace { config.minFreeBytes = minFreeSpace }
        do {
            config.products = try compute.products()
        } catch {
            throw OptionError("--precision \(compute.precision.rawValue): \(error)")
        }
        if let dir = loraDir ?? ProcessInfo.processInfo.environment["SDD_LORA_DIR"], !dir.isEmpty {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw OptionError("--lora-dir \(dir): not a directory")
            }
            config.loraDirectory = URL(fileURLWithPath: dir, isDirectory: true)
        }
        config.maxQueued = queueLimit
        if let n = previewEvery, n < 0 { throw OptionError("--preview-every \(n): give a number of steps, or 0 for no previews") }
        config.previewEvery = previewEvery
        if let previewVAE {
            let preview: TAESDPreview
            do {  // opened now so a bad folder stops the daemon at start, naming it
                preview = try TAESDPreview(folder: URL(fileURLWithPath: previewVAE))
            } catch {
                throw OptionError("--preview-vae \(previewVAE): \(error)")
            }
            config.previewVAE = URL(fileURLWithPath: previewVAE)
            // Previews run beside the steps: their share comes off the budget jobs are planned and admitted under.
            if let bytes = config.memoryBudget {
                guard bytes > preview.reservedBytes else {
                    throw OptionError("--preview-vae \(previewVAE): its previews need \(preview.reservedBytes >> 20) MiB, "
                        + "more than the memory budget of \(bytes >> 20) MiB")
                }
                config.memoryBudget = bytes - preview.reservedBytes
                config.memoryBudgetExplanation = (config.memoryBudgetExplanation ?? "memory budget")
                    + ", less \(preview.reservedBytes >> 20) MiB kept for TAESD previews"
            }
        }
        config.retention = try DurationOption.parse(retention, option: "--retention")
        config.retentionBytes = retentionSize
        config.checkpointEvery = checkpointEvery
        config.maxDownloads = maxDownloads
        let heartbeat = try DurationOption.parse(eventHeartbeat, option: "--event-heartbeat")
        guard let heartbeat, heartbeat >= 0.05 else {
            throw OptionError("--event-heartbeat \"\(eventHeartbeat)\": give an interval of at least 50ms, e.g. 10s")
        }
        config.limits.eventHeartbeat = heartbeat
        let environment = ProcessInfo.processInfo.environment
        if let listen = listen ?? environment["SDD_LISTEN"].flatMap({ $0.isEmpty ? nil : $0 }) {
            config.tcp = try TCPListenConfiguration(
                address: try TCPAddress.parse(listen), tokensPath: tokens ?? environment["SDD_TOKENS"].flatMap { $0.isEmpty ? nil : $0 },
                any: listenAny)
        } else if tokens != nil {
            throw OptionError("--tokens is for --listen (the TCP listener); the Unix socket identifies callers by uid")
        }
        return config
    }

    func run() async throws {
        var config: DaemonConfiguration
        do {
            config = try makeConfiguration()
        } catch {
            printError("sdd serve: error: \(error)")
            throw ExitCode(2)
        }
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "sdd")
        let inherited = SocketActivation.listenFDs()
        if let fd = inherited.first {
            config.inheritedSocket = fd
            if inherited.count > 1 { logger.warning("systemd passed \(inherited.count) sockets; serving the first") }
        } else {
            let dir = URL(fileURLWithPath: config.socketPath).deletingLastPathComponent().path
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                     attributes: [.posixPermissions: 0o755])
        }
        do {
            try await Daemon.run(config, logger: logger)
        } catch {
            logger.critical("sdd serve failed", metadata: ["error": "\(error)"])
            throw ExitCode.failure
        }
    }
}
