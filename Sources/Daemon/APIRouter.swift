// APIRouter: maps one complete HTTP request (method, path, body, peer uid) to a response. Synchronous and
// socket-free, so it is tested directly; the HTTP handler runs it off the event loop.

import Foundation
import Pipeline
import SDDAPI
import TiledKernels

/// A request as the router sees it.
public struct APIRequest: Sendable {
    public var method: String
    /// The request target as sent (path and optional query).
    public var uri: String
    public var body: [UInt8]
    public var peer: PeerCredentials
    /// Who the request acts for: the peer's uid on the socket, the token's NAME on the TCP listener.
    public var owner: JobOwner
    /// Request headers, names lowercased (the first of repeated ones).
    public var headers: [String: String]

    public init(method: String, uri: String, body: [UInt8] = [], peer: PeerCredentials, owner: JobOwner? = nil,
                headers: [String: String] = [:]) {
        self.method = method
        self.uri = uri
        self.body = body
        self.peer = peer
        self.owner = owner ?? .uid(peer.uid)
        self.headers = headers
    }
}

/// A response; `eventsFor` set means "stream this job's events", `file` set means "send this file as the
/// body" (the handler does both).
public struct APIResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    public var headers: [(String, String)]
    public var eventsFor: String?
    /// An open file to stream as the body (instead of `body`); whoever ends up with the response closes it.
    public var file: ResponseFile?
    /// Set: the answer comes once this job is final (the handler waits without holding a thread; see `JobWait`).
    public var awaitJob: JobWait?

    public init(status: Int, contentType: String = "application/json", body: [UInt8], headers: [(String, String)] = [],
                eventsFor: String? = nil, file: ResponseFile? = nil) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.headers = headers
        self.eventsFor = eventsFor
        self.file = file
    }

    static func json<T: Encodable>(_ status: Int, _ value: T, headers: [(String, String)] = []) -> APIResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return APIResponse(status: status, body: Array(data) + [0x0A], headers: headers)
    }

    public static func error(_ e: APIError, headers: [(String, String)] = []) -> APIResponse {
        json(e.httpStatus, APIErrorResponse(error: e), headers: headers)
    }

    /// Decodes the body as `T` (for tests and clients).
    public func decode<T: Decodable>(_ type: T.Type) throws -> T { try JSONDecoder().decode(type, from: Data(body)) }
}

/// What the daemon serves: its model's path and name, its defaults (nil if its configs are unreadable) and the VAE
/// that replaces its own (--vae); once checked, the model itself and its weights' figures (what admission at submit
/// needs), or why it cannot be used.
public struct ModelDescription: Sendable {
    public var url: URL?
    public var name: String
    public var defaults: ModelDefaults?
    /// The VAE that replaces the model's own (--vae), if any.
    public var vae: URL?
    /// The model's configs (scheduler limits); nil until checked, or when it cannot be opened.
    public var model: StableDiffusionModel?
    /// Its weights as the memory planner sees them; nil until checked.
    public var weights: WeightFigures?
    /// Why the model cannot be used (jobs are refused with 503 and this reason; health is "degraded").
    public var problem: String?
    /// Where requests' LoRA names are looked up (`sdd serve --lora-dir`); nil: requests may name none.
    public var loraDirectory: URL?

    public init(url: URL?, name: String, defaults: ModelDefaults?, vae: URL? = nil, model: StableDiffusionModel? = nil,
                weights: WeightFigures? = nil, problem: String? = nil, loraDirectory: URL? = nil) {
        self.url = url
        self.name = name
        self.defaults = defaults
        self.vae = vae
        self.model = model
        self.weights = weights
        self.problem = problem
        self.loraDirectory = loraDirectory
    }

    /// Opens the model as a generation would — configs (every number bounded), tokenizer, every weight file's
    /// header and ranges, every tensor's shape against the configs, and the replacement VAE — without running it.
    /// Never throws: a model that fails is described with its `problem`.
    /// - products: how the worker will multiply (`--precision`; nil: automatic), so the planner sees its weights.
    /// - vaeConfig: the config of a single-file `vae` (--vae-config; nil: the model's own VAE config).
    public static func check(_ url: URL?, vae: URL? = nil, vaeConfig: URL? = nil, residency: WeightResidency = .streamed,
                             products: ProductPrecision? = nil) -> ModelDescription {
        guard let url else {
            return ModelDescription(url: nil, name: "", defaults: nil, vae: vae,
                                    problem: "no model configured: start sdd serve with --model PATH or SDD_MODEL")
        }
        do {
            var model = try StableDiffusionModel(url: url)
            if let vae { model = try model.replacingVAE(with: vae, config: vaeConfig) }
            let weights = try StableDiffusionPipeline(model: model, residency: residency, products: products)
                .weightFigures()
            return ModelDescription(url: url, name: model.name, defaults: ModelDefaults(model: model), vae: vae,
                                    model: model, weights: weights)
        } catch {
            let name = url.hasDirectoryPath ? url.lastPathComponent : url.deletingPathExtension().lastPathComponent
            return ModelDescription(url: url, name: name, defaults: nil, vae: vae, problem: "\(error)")
        }
    }

    /// Reads the model's configs (no weights) for its name and defaults; `vae` replaces its VAE (--vae).
    public static func read(_ url: URL?, vae: URL? = nil, vaeConfig: URL? = nil) throws -> ModelDescription {
        guard let url else { return ModelDescription(url: nil, name: "", defaults: nil) }
        var model = try StableDiffusionModel(url: url)
        if let vae { model = try model.replacingVAE(with: vae, config: vaeConfig) }
        return ModelDescription(url: url, name: model.name, defaults: ModelDefaults(model: model), vae: vae)
    }
}

public final class APIRouter: Sendable {
    public static let version = "0.1.0"

    let queue: JobQueue
    let worker: Worker?
    let model: ModelDescription
    let keepAlive: Double?
    /// Bytes a generation may use; requests the planner says cannot fit are refused with 413. nil: no planning.
    let memoryBudget: Int?
    /// Submissions are refused with 507 while the state directory has less free space than this.
    let minFreeBytes: Int
    let started = Date()
    /// Image downloads in flight, and how many may be.
    public let downloads: DownloadSlots

    /// Most image downloads in flight at once when not told otherwise.
    public static let defaultMaxDownloads = 32

    public init(queue: JobQueue, worker: Worker?, model: ModelDescription, keepAlive: Double?, memoryBudget: Int? = nil,
                minFreeBytes: Int = 0, maxDownloads: Int = APIRouter.defaultMaxDownloads) {
        self.queue = queue
        self.worker = worker
        self.model = model
        self.keepAlive = keepAlive
        downloads = DownloadSlots(limit: maxDownloads)
        self.memoryBudget = memoryBudget
        self.minFreeBytes = minFreeBytes
    }

    /// Why no job can be taken now (the model is unusable, the disk is full), as the error a submission gets.
    func unavailable() -> APIError? {
        if let problem = model.problem { return APIError(.modelUnavailable, "the model cannot be used: \(problem)") }
        if minFreeBytes > 0, let free = queue.spool.freeBytes(), free < minFreeBytes {
            return APIError(.insufficientStorage, "the state directory \(queue.spool.root.path) has "
                + "\(MemorySize.describe(free)) free, under the \(MemorySize.describe(minFreeBytes)) it keeps for "
                + "results (--min-free-space); free some space or lower --retention")
        }
        return nil
    }

    /// `sent` with the model's defaults filled in, once every check a job can be refused by at submit has passed:
    /// the daemon can take jobs, the request is valid, the scheduler places its steps, and the plan fits the budget.
    /// Every route that makes a job (native, OpenAI, A1111) goes through here.
    func admitted(_ sent: JobRequest) throws(APIError) -> JobRequest {
        if let no = unavailable() { throw no }
        let request = try RequestValidation.resolve(sent, defaults: model.defaults, loraDirectory: model.loraDirectory)
        if let checked = model.model {
            try RequestValidation.admit(request, model: checked, weights: model.weights, memoryBudget: memoryBudget)
        }
        return request
    }

    public func route(_ r: APIRequest) -> APIResponse {
        let path = Self.originForm(r.uri).split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
            .first.map(String.init) ?? ""
        // Nothing in the API needs escapes, dot segments or empty segments: refuse them before any lookup.
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        guard path.hasPrefix("/"), !path.contains("%"), !path.contains("\\"),
              !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
            return .error(APIError(.notFound, "no such path"))
        }
        let owner = r.owner
        if let answer = compatibilityRoute(r, path: path, parts: parts) { return answer }
        func allow(_ methods: String...) -> APIResponse? {
            methods.contains(r.method) ? nil
                : .error(APIError(.methodNotAllowed, "\(r.method) is not allowed on \(path); use \(methods.joined(separator: ", "))"),
                         headers: [("Allow", methods.joined(separator: ", "))])
        }
        switch parts.count {
        case 1 where parts[0] == "metrics":
            if let no = allow("GET") { return no }
            let text = Metrics.render(queue.snapshot(), modelLoaded: worker?.modelLoaded ?? false,
                                      uptime: Date().timeIntervalSince(started), downloads: downloads.active)
            return APIResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: Array(text.utf8))
        case 2 where parts[0] == "v1" && parts[1] == "health":
            if let no = allow("GET") { return no }
            let s = queue.snapshot()
            let accepting = queue.isAccepting
            let problem = accepting ? unavailable() : nil
            return .json(accepting && problem == nil ? 200 : 503, Health(
                status: !accepting ? "shutting_down" : problem == nil ? "ok" : "degraded", version: Self.version,
                uptimeSeconds: Date().timeIntervalSince(started), queueDepth: s.queueDepth, running: s.running,
                modelLoaded: worker?.modelLoaded ?? false, reason: problem?.message))
        case 2 where parts[0] == "v1" && parts[1] == "models":
            if let no = allow("GET") { return no }
            return .json(200, ModelList(models: model.url == nil ? [] : [ModelInfo(
                name: model.name, path: model.url?.path ?? "", loaded: worker?.modelLoaded ?? false,
                keepAliveSeconds: keepAlive, defaultWidth: model.defaults?.width, defaultHeight: model.defaults?.height,
                schedulers: SchedulerKind.allCases.map(\.rawValue), defaultSteps: model.defaults?.steps,
                defaultGuidance: model.defaults?.guidance, defaultScheduler: model.defaults?.scheduler,
                vae: model.vae?.path)],
                object: "list", data: model.url == nil ? [] : [OpenAIModel(id: model.name, created: Int(started.timeIntervalSince1970))]))
        case 2 where parts[0] == "v1" && parts[1] == "jobs":
            if let no = allow("GET", "POST") { return no }
            if r.method == "GET" { return .json(200, JobList(jobs: queue.list(owner: owner))) }
            return submit(r)
        case 3 where parts[0] == "v1" && parts[1] == "jobs":
            if let no = allow("GET", "DELETE") { return no }
            let id = parts[2]
            guard JobID.isValid(id) else { return .error(APIError(.notFound, "no job \(id)")) }
            if r.method == "GET" {
                guard let job = queue.job(id, owner: owner) else { return .error(APIError(.notFound, "no job \(id)")) }
                return .json(200, job)
            }
            do throws(APIError) {
                let job = try queue.cancel(id, owner: owner)
                return .json(job.state == .canceled ? 200 : 202, job)
            } catch { return .error(error) }
        case 4 where parts[0] == "v1" && parts[1] == "jobs" && parts[3] == "events":
            if let no = allow("GET") { return no }
            let id = parts[2]
            guard JobID.isValid(id), queue.job(id, owner: owner) != nil else { return .error(APIError(.notFound, "no job \(id)")) }
            return APIResponse(status: 200, contentType: "application/x-ndjson", body: [], eventsFor: id)
        case 4 where parts[0] == "v1" && parts[1] == "jobs" && parts[3] == "preview":
            if let no = allow("GET") { return no }
            return preview(id: parts[2], owner: owner)
        case 5 where parts[0] == "v1" && parts[1] == "jobs" && parts[3] == "images":
            if let no = allow("GET") { return no }
            return image(id: parts[2], index: parts[4], owner: owner)
        default:
            return .error(APIError(.notFound, "no such path \(path)"))
        }
    }

    /// The path and query of a request target. HTTP/1.1 servers must accept the absolute form
    /// (`http://localhost/v1/health`, RFC 9112 §3.2.2) as well as the usual origin form (`/v1/health`); the
    /// authority names no one here (the socket is the address), so it is dropped.
    static func originForm(_ target: String) -> String {
        for scheme in ["http://", "https://"] where target.lowercased().hasPrefix(scheme) {
            let rest = target.dropFirst(scheme.count)
            guard let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) else { return "/" }
            return rest[slash] == "?" ? "/" + rest[slash...] : String(rest[slash...])
        }
        return target
    }

    private func submit(_ r: APIRequest) -> APIResponse {
        do throws(APIError) {
            let sent = try RequestValidation.decode(r.body)
            let request = try admitted(sent)
            let defaults = model.defaults, loraDirectory = model.loraDirectory
            let (job, created) = try queue.submit(request, as: r.owner) { stored in
                RequestValidation.isSameRequest(sent, as: stored, defaults: defaults, loraDirectory: loraDirectory)
            }
            // A retry of a submission that already made a job gets that job, with 200 instead of 202.
            return .json(created ? 202 : 200, job, headers: [("Location", "\(APIVersion.prefix)/jobs/\(job.id)")])
        } catch {
            return .error(error)
        }
    }

    /// The job's latest latent preview (PNG), with the step it shows in `X-SDD-Preview-Step: step/total`.
    private func preview(id: String, owner: JobOwner) -> APIResponse {
        guard JobID.isValid(id), let job = queue.job(id, owner: owner) else { return .error(APIError(.notFound, "no job \(id)")) }
        guard let p = queue.preview(id, owner: owner) else {
            return .error(APIError(.notFound, "job \(id) (\(job.state.rawValue)) has no preview yet"))
        }
        return APIResponse(status: 200, contentType: "image/png", body: p.png,
                           headers: [("X-SDD-Preview-Step", "\(p.step)/\(p.total)")])
    }

    private func image(id: String, index: String, owner: JobOwner) -> APIResponse {
        guard JobID.isValid(id), let job = queue.job(id, owner: owner) else { return .error(APIError(.notFound, "no job \(id)")) }
        // Only canonical decimal indexes name an image: "0", "12"; not "00", "0001" or "+1".
        guard index.utf8.count <= 3, index.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let n = Int(index),
              String(n) == index else {
            return .error(APIError(.notFound, "no image \(index) (images are numbered from 0)"))
        }
        guard job.state == .finished else {
            return .error(APIError(.conflict, "job \(id) is \(job.state.rawValue); images exist once it has finished"))
        }
        guard n < job.images else { return .error(APIError(.notFound, "job \(id) has \(job.images) image(s), numbered from 0")) }
        // The image is streamed from its file as the client reads, so a download costs an open file, not the
        // image's bytes in memory; and only so many run at once.
        guard downloads.acquire() else {
            let busy = APIError(.tooManyDownloads, "\(downloads.limit) image downloads are in progress; try again shortly")
            return .error(busy, headers: [("Retry-After", "1")])
        }
        switch ResponseFile.open(queue.spool.imageURL(id, n).path, slot: downloads) {
        case .success(let file):
            return APIResponse(status: 200, contentType: "image/png", body: [], file: file)
        case .failure(let e) where e.missing:
            return .error(APIError(.notFound, "image \(n) of job \(id) is gone (removed by retention?)"))
        case .failure(let e):
            return .error(APIError(.internalError, "image \(n) of job \(id) cannot be read: \(e.reason)"))
        }
    }
}
