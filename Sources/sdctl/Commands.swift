// Commands: generate, jobs, status, wait, fetch, cancel, models, health — each one or a few API requests.

import ArgumentParser
import NIOHTTP1
import SDDAPI

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

let jobsPath = "\(APIVersion.prefix)/jobs"

extension SDDClient {
    /// The full id for `text`: a 16-character id as is, or a unique prefix of one of the caller's jobs.
    func resolve(_ text: String) async throws -> String {
        if JobID.isValid(text) { return text }
        let isHex = !text.isEmpty && text.utf8.allSatisfy {
            (0x30...0x39).contains($0) || (0x61...0x66).contains($0)
        }
        guard isHex, text.count < JobID.length else { throw CLIError("no job \(text) (not a job id)") }
        let matches = try await json(.GET, jobsPath, as: JobList.self).value.jobs.filter { $0.id.hasPrefix(text) }
        guard let first = matches.first else { throw CLIError("no job \(text)") }
        guard matches.count == 1 else {
            throw CLIError("\(text) is ambiguous: \(matches.map(\.id).joined(separator: ", "))")
        }
        return first.id
    }

    /// Submits `request` (which carries a `request_id`). When the answer is lost — the connection drops or
    /// times out after the request may have reached the daemon — it sends the same request again, with backoff,
    /// until `timeout` seconds have passed since the first try: the daemon returns the job the first attempt
    /// made, if it made one, instead of queueing a second. A daemon that cannot be reached at the first try is
    /// an error at once (nothing was sent).
    func submit(_ request: JobRequest) async throws -> (value: Job, raw: [UInt8]) {
        let body = try Array(JSONEncoder().encode(request))
        let started = JobFollower.now()
        var delay = 0.25
        var sent = false
        while true {
            do {
                return try await json(.POST, jobsPath, body: body, as: Job.self)
            } catch var error as CLIError where error.httpStatus == 400 || error.httpStatus == 413 {
                // The request itself is refused (a bad value, or more than the daemon's memory budget): sending
                // it again cannot help, so it is a usage error, not a failure.
                error.message = "the daemon refused the job: " + error.message
                error.exitStatus = ExitStatus.usage
                throw error
            } catch {
                let refused = (error as? CLIError).map {
                    $0.isConnectionFailure && $0.message.hasPrefix("cannot connect")
                } ?? false
                let lost = (error as? CLIError).map(\.isConnectionFailure) ?? true
                guard lost, sent || !refused else { throw error }
                sent = true
                if JobFollower.now() - started + delay > timeout {
                    let message = (error as? CLIError)?.message ?? "\(error)"
                    throw CLIError(message + "; the job may have been queued all the same: the same command with "
                        + "--request-id \(request.requestId ?? "?") returns it instead of queueing another")
                }
                try await Task.sleep(nanoseconds: UInt64(delay * 1e9))
                delay = min(delay * 2, 2)
            }
        }
    }

    func job(_ id: String) async throws -> Job {
        try await json(.GET, "\(jobsPath)/\(id)", as: Job.self).value
    }

    /// Downloads the images of finished `job` to `output` (FILE, or FILE-1.png … for several); returns the paths.
    func fetchImages(_ job: Job, to output: String, only index: Int? = nil) async throws -> [String] {
        let indices = index.map { [$0] } ?? Array(0..<job.images)
        guard !indices.isEmpty else { throw CLIError("job \(job.id) has no images") }
        if output == "-", indices.count > 1 {
            throw CLIError("job \(job.id) has \(indices.count) images: choose one with --index to write to stdout")
        }
        var paths: [String] = []
        for i in indices {
            // 429: the daemon is serving as many downloads as it allows at once; wait for a free one.
            let started = JobFollower.now()
            var delay = 0.25
            var png: [UInt8]? = nil
            while png == nil {
                png = try await exchange(.GET, "\(jobsPath)/\(job.id)/images/\(i)") { status, body in
                    let bytes = try await body.collect()
                    if status == 429, JobFollower.now() - started + delay <= timeout { return nil }
                    guard status == 200 else { throw Self.apiError(status: status, body: bytes) }
                    return bytes
                }
                if png == nil {
                    try await Task.sleep(nanoseconds: UInt64(delay * 1e9))
                    delay = min(delay * 2, 2)
                }
            }
            guard let png else { continue }
            let path = index == nil ? Format.imagePath(output, index: i, count: indices.count) : output
            try Output.writeFile(png, to: path)
            paths.append(path)
        }
        return paths
    }

    /// Writes job `id`'s latest latent preview to `path` (atomically); false when it has none.
    func fetchPreview(_ id: String, to path: String) async throws -> Bool {
        let png: [UInt8]? = try await exchange(.GET, "\(jobsPath)/\(id)/preview") { status, body in
            let bytes = try await body.collect()
            if status == 404 { return nil }
            guard status == 200 else { throw Self.apiError(status: status, body: bytes) }
            return bytes
        }
        guard let png else { return false }
        try Output.writeFile(png, to: path)
        return true
    }
}

struct Generate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Queue a text-to-image job, wait for it and write its PNGs.",
        discussion: """
            Waits by default, with a progress bar on a terminal (Ctrl-C stops waiting; the job goes on: \
            `sdctl wait ID`, `sdctl cancel ID`). Omitted settings take the model's defaults (`sdctl models` shows them; \
            else diffusers': 50 steps, guidance 7.5, the model's scheduler and size), and a random seed that the job records. Prints the written file \
            names, or with --no-wait the job id. Exit status: 0 finished, 1 failed or error, 2 bad command line or \
            the daemon refused the job (HTTP 400 or 413: invalid, or too large for its memory budget), 3 canceled.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: "What the image should not show.")
    var negativePrompt: String?

    @Option(help: "Denoising steps (default: the model's).")
    var steps: Int?

    @Option(parsing: .unconditional, help: "Classifier-free guidance scale (default: the model's; ≤ 1 runs the conditional branch only).")
    var guidance: Double?

    @Option(help: "Width in pixels, a multiple of 8 (default: the model's sample size).")
    var width: Int?

    @Option(help: "Height in pixels, a multiple of 8 (default: the model's sample size).")
    var height: Int?

    @Option(help: "Seed (same as torch.Generator(\"cpu\").manual_seed). Default: random, chosen by the daemon.")
    var seed: UInt64?

    @Option(help: "Scheduler: pndm, ddim, lms, euler, euler-a, dpm++2m, lcm, tcd (default: the model's own).")
    var scheduler: String?

    @Option(help: "TCD's stochasticity in 0…1 (--scheduler tcd only; default 0.3).")
    var eta: Double?

    @Option(help: "Timestep spacing: leading, trailing or linspace, replacing the model's config (not for lcm, tcd).")
    var timestepSpacing: String?

    @Option(help: "Images in one batch (FILE-1.png … FILE-N.png when more than one).")
    var count: Int?

    @Option(parsing: .unconditional, help: "Queue priority, -100…100: higher runs first (default 0).")
    var priority: Int?

    @Option(name: .customLong("lora"), help: ArgumentHelp(
        "A LoRA from the daemon's --lora-dir, NAME[:SCALE] (scale default 1; repeat for several).",
        valueName: "name[:scale]"))
    var loras: [String] = []

    @Option(name: [.short, .long], help: ArgumentHelp("Output PNG (default sdd-ID.png; - for stdout).",
                                                      valueName: "file"))
    var output: String?

    @Option(help: ArgumentHelp("Keep this PNG replaced by the job's latest latent preview while it runs.",
                               valueName: "file"))
    var preview: String?

    @Flag(help: "Print the job id and exit without waiting.")
    var noWait = false

    @Flag(help: "Print events as JSON lines on stdout (with --no-wait: the job as JSON).")
    var json = false

    @Option(help: ArgumentHelp(
        "Makes submitting safe to repeat: the daemon queues one job per id and user, and returns that job to a "
            + "repeat (default: a new random id, retried with the same id when an answer is lost).",
        valueName: "id"))
    var requestId: String?

    @Argument(help: "The prompt.")
    var prompt: String

    func validate() throws {
        if noWait, output != nil { throw ValidationError("--output has no effect with --no-wait (use sdctl fetch)") }
        if noWait, preview != nil { throw ValidationError("--preview needs the wait (GET /v1/jobs/ID/preview serves it otherwise)") }
        if preview == "-" { throw ValidationError("--preview needs a file name, not -") }
        if json, output == "-" { throw ValidationError("--output - would mix the PNG into --json's events") }
        if output == "-", let count, count > 1 {
            throw ValidationError(
                "--output - writes one PNG to stdout; --count \(count) makes \(count) (use -o FILE.png)")
        }
        if let requestId, !JobRequest.isValidRequestId(requestId) {
            throw ValidationError(
                "--request-id must be 1…\(JobRequest.maxRequestIdLength) characters of A-Z a-z 0-9 . _ : -")
        }
        _ = try loraRefs()
    }

    /// "sdctl-" and 32 random hex digits.
    static func newRequestId() -> String {
        var generator = SystemRandomNumberGenerator()
        let hex = (0..<2).map { _ in
            let s = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return "sdctl-" + hex.joined()
    }

    /// --lora NAME[:SCALE] values as the request's `loras` (nil when none).
    func loraRefs() throws -> [LoRARef]? {
        guard !loras.isEmpty else { return nil }
        return try loras.map { text in
            if let colon = text.lastIndex(of: ":") {
                let name = String(text[..<colon]), tail = text[text.index(after: colon)...]
                guard let scale = Double(tail), scale.isFinite, !name.isEmpty else {
                    throw ValidationError("--lora \(text): expected NAME or NAME:SCALE with a number for SCALE")
                }
                return LoRARef(name: name, scale: scale)
            }
            return LoRARef(name: text)
        }
    }

    func run() async throws {
        let client = global.client
        let request = JobRequest(prompt: prompt, negativePrompt: negativePrompt, steps: steps, guidance: guidance,
                                 width: width, height: height, seed: seed, scheduler: scheduler, count: count,
                                 priority: priority, requestId: requestId ?? Self.newRequestId(), eta: eta,
                                 timestepSpacing: timestepSpacing, loras: try loraRefs())
        let (job, raw) = try await client.submit(request)
        if noWait {
            if json {
                raw.withUnsafeBytes { Output.write($0, to: 1) }
                if raw.last != UInt8(ascii: "\n") { Output.out("\n") }
            } else {
                Output.out(job.id + "\n")
            }
            return
        }
        if !json, Output.stderrIsTerminal {
            Output.error("job \(job.id): seed \(job.settings.seed.map(String.init) ?? "?")")
        }
        // The daemon has answered: if it goes away before the event stream connects, it is coming back (its
        // queue survives), so the follower waits for it.
        let ended = try await JobFollower(client: client, json: json, progress: !json && Output.stderrIsTerminal,
                                          previewPath: preview)
            .follow(job.id, daemonAnswered: true)
        // A short job can end before its first preview event reached the stream: the daemon keeps the last one.
        if let preview, ended.state == .finished { _ = try await client.fetchPreview(job.id, to: preview) }
        if let status = reportUnfinished(ended) { throw ExitCode(status) }
        let paths = try await client.fetchImages(ended, to: output ?? "sdd-\(job.id).png")
        if json {
            for path in paths where path != "-" { Output.error("wrote \(path)") }
        } else {
            for path in paths where path != "-" { Output.out(path + "\n") }
        }
    }
}

struct Jobs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List your jobs (all jobs for root), oldest first.")

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        let (list, raw) = try await global.client.json(.GET, jobsPath, as: JobList.self)
        if json { return printRaw(raw) }
        guard !list.jobs.isEmpty else { return Output.error("no jobs") }
        var lines = [Format.column("ID", 18) + Format.column("STATE", 10) + Format.column("PROGRESS", 10)
            + Format.column("CREATED", 21) + "PROMPT"]
        for job in list.jobs {
            lines.append(Format.column(job.id, 18) + Format.column(job.state.rawValue, 10)
                + Format.column(progressText(job), 10) + Format.column(Format.time(job.createdAt), 21)
                + Format.clip(job.settings.prompt, 60))
        }
        Output.out(lines.joined(separator: "\n") + "\n")
    }
}

/// "12/50", "#2 in queue", "2 images", "".
func progressText(_ job: Job) -> String {
    switch job.state {
    case .queued: return job.position.map { "#\($0)" } ?? ""
    case .running: return job.progress.map { "\($0.step)/\($0.total)" } ?? ""
    case .finished: return "\(job.images) image\(job.images == 1 ? "" : "s")"
    case .failed, .canceled: return ""
    }
}

func printRaw(_ bytes: [UInt8]) {
    bytes.withUnsafeBytes { Output.write($0, to: 1) }
    if bytes.last != UInt8(ascii: "\n") { Output.out("\n") }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one job.")

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    @Argument(help: "The job id (or a unique prefix of it).")
    var id: String

    func run() async throws {
        let client = global.client
        let id = try await client.resolve(id)
        let (job, raw) = try await client.json(.GET, "\(jobsPath)/\(id)", as: Job.self)
        if json { return printRaw(raw) }
        let s = job.settings
        var state = job.state.rawValue
        switch job.state {
        case .queued: state += job.position.map { ", position \($0)" } ?? ""
        case .running:
            if let p = job.progress {
                state += ", step \(p.step)/\(p.total)" + (p.etaSeconds.map { ", ETA \(Format.duration($0))" } ?? "")
            }
        case .finished: state += ", \(job.images) image\(job.images == 1 ? "" : "s")"
        case .failed, .canceled: state += job.error.map { ": \($0.message) (\($0.code.rawValue))" } ?? ""
        }
        var settings: [String] = []
        if let seed = s.seed { settings.append("seed \(seed)") }
        if let steps = s.steps { settings.append("\(steps) steps") }
        if let scheduler = s.scheduler { settings.append(scheduler) }
        if let guidance = s.guidance { settings.append("guidance \(guidance)") }
        if let w = s.width, let h = s.height { settings.append("\(w)x\(h)") }
        if let count = s.count { settings.append("count \(count)") }
        if let priority = s.priority { settings.append("priority \(priority)") }
        var lines = ["job \(job.id): \(state)", "  prompt: \(s.prompt)"]
        if let negative = s.negativePrompt, !negative.isEmpty { lines.append("  negative: \(negative)") }
        lines.append("  " + settings.joined(separator: ", "))
        var times = "  created \(Format.time(job.createdAt))"
        if let t = job.startedAt { times += ", started \(Format.time(t))" }
        if let t = job.finishedAt { times += ", ended \(Format.time(t))" }
        lines.append(times + ", owner uid \(job.owner)")
        Output.out(lines.joined(separator: "\n") + "\n")
    }
}

struct Wait: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait for a job to end.",
        discussion: "Exit status: 0 finished, 1 failed or error, 3 canceled.")

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print events as JSON lines on stdout.")
    var json = false

    @Argument(help: "The job id (or a unique prefix of it).")
    var id: String

    func run() async throws {
        let client = global.client
        let id = try await client.resolve(id)
        let job = try await JobFollower(client: client, json: json, progress: !json && Output.stderrIsTerminal)
            .follow(id)
        if let status = reportUnfinished(job) { throw ExitCode(status) }
    }
}

struct Fetch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download a finished job's images.",
        discussion: "Writes FILE, or FILE-1.png … FILE-N.png for a job with several images; prints the file names.")

    @OptionGroup var global: GlobalOptions

    @Option(name: [.short, .long], help: ArgumentHelp("Output PNG (default sdd-ID.png; - for stdout).",
                                                      valueName: "file"))
    var output: String?

    @Option(help: "Only image N (0-based, as in the API's /images/N), written to FILE as is.")
    var index: Int?

    @Argument(help: "The job id (or a unique prefix of it).")
    var id: String

    func validate() throws {
        if let index, index < 0 { throw ValidationError("--index must be 0 or more") }
    }

    func run() async throws {
        let client = global.client
        let id = try await client.resolve(id)
        let job = try await client.job(id)
        if job.state != .finished {
            if job.state.isFinal, let status = reportUnfinished(job) { throw ExitCode(status) }
            throw CLIError("job \(id) is \(job.state.rawValue), not finished yet (sdctl wait \(id))")
        }
        if let index, index >= job.images {
            let images = "\(job.images) image\(job.images == 1 ? "" : "s")"
            throw CLIError("job \(id) has \(images): --index \(index) is out of range")
        }
        let paths = try await client.fetchImages(job, to: output ?? "sdd-\(id).png", only: index)
        for path in paths where path != "-" { Output.out(path + "\n") }
    }
}

struct Cancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel a queued or running job.")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The job id (or a unique prefix of it).")
    var id: String

    func run() async throws {
        let client = global.client
        let id = try await client.resolve(id)
        try await client.exchange(.DELETE, "\(jobsPath)/\(id)") { status, body in
            let bytes = try await body.collect()
            guard (200..<300).contains(status) else { throw SDDClient.apiError(status: status, body: bytes) }
        }
        Output.error("canceled \(id)")
    }
}

struct Models: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the model the daemon serves.")

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        let (list, raw) = try await global.client.json(.GET, "\(APIVersion.prefix)/models", as: ModelList.self)
        if json { return printRaw(raw) }
        var lines: [String] = []
        for m in list.models {
            var facts = [m.loaded ? "loaded" : "not loaded"]
            if let w = m.defaultWidth, let h = m.defaultHeight { facts.append("\(w)x\(h)") }
            if let k = m.keepAliveSeconds { facts.append("keep-alive \(Format.duration(k))") }
            var defaults: [String] = []
            if let s = m.defaultSteps { defaults.append("\(s) steps") }
            if let g = m.defaultGuidance { defaults.append("guidance \(g)") }
            if let k = m.defaultScheduler { defaults.append(k) }
            lines.append("\(m.name)  \(m.path)")
            lines.append("  " + facts.joined(separator: ", "))
            if !defaults.isEmpty { lines.append("  defaults: " + defaults.joined(separator: ", ")) }
            if let vae = m.vae { lines.append("  vae: \(vae)") }
            lines.append("  schedulers: " + m.schedulers.joined(separator: ", "))
        }
        Output.out(lines.joined(separator: "\n") + "\n")
    }
}

struct Health: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check that the daemon is serving.",
        discussion: "Exit status 0 while it serves, 1 when it is stopping or cannot be reached.")

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        let (health, raw): (SDDAPI.Health, [UInt8]) = try await global.client.exchange(
            .GET, "\(APIVersion.prefix)/health"
        ) { status, body in
            let bytes = try await body.collect()
            // 503 while shutting down still carries a Health body.
            if let health = try? JSONDecoder().decode(SDDAPI.Health.self, from: Data(bytes)) { return (health, bytes) }
            throw SDDClient.apiError(status: status, body: bytes)
        }
        if json {
            printRaw(raw)
        } else {
            var facts = ["up \(Format.duration(health.uptimeSeconds))", "\(health.queueDepth) queued"]
            if let running = health.running { facts.append("running \(running)") }
            facts.append(health.modelLoaded ? "model loaded" : "model not loaded")
            Output.out("\(health.status): sdd \(health.version), " + facts.joined(separator: ", ") + "\n")
        }
        if health.status != "ok" { throw ExitCode(ExitStatus.failure) }
    }
}
