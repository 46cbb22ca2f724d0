// APIRouter: maps one complete HTTP request (method, path, body, peer uid) to a response. Synchronous and
// socket-free, so it is tested directly; the HTTP handler runs it off the event loop.

import Foundation
import Pipeline
import SDDAPI

/// A request as the router sees it.
public struct APIRequest: Sendable {
    public var method: String
    /// The request target as sent (path and optional query).
    public var uri: String
    public var body: [UInt8]
    public var peer: PeerCredentials

    public init(method: String, uri: String, body: [UInt8] = [], peer: PeerCredentials) {
        self.method = method
        self.uri = uri
        self.body = body
        self.peer = peer
    }
}

/// A response; `eventsFor` set means "stream this job's events" (the handler does that).
public struct APIResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    public var headers: [(String, String)]
    public var eventsFor: String?

    public init(status: Int, contentType: String = "application/json", body: [UInt8], headers: [(String, String)] = [],
                eventsFor: String? = nil) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.headers = headers
        self.eventsFor = eventsFor
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

/// What the daemon serves: its model's path and name, and defaults read from its config (nil if unreadable).
public struct ModelDescription: Sendable {
    public var url: URL?
    public var name: String
    public var defaults: ModelDefaults?
    /// Where requests' LoRA names are looked up (`sdd serve --lora-dir`); nil: requests may name none.
    public var loraDirectory: URL?

    public init(url: URL?, name: String, defaults: ModelDefaults?, loraDirectory: URL? = nil) {
        self.url = url
        self.name = name
        self.defaults = defaults
        self.loraDirectory = loraDirectory
    }

    /// Reads the model's configs (no weights) for its name and default size.
    public static func read(_ url: URL?) throws -> ModelDescription {
        guard let url else { return ModelDescription(url: nil, name: "", defaults: nil) }
        let model = try StableDiffusionModel(url: url)
        let size = model.defaultSize
        return ModelDescription(url: url, name: model.name, defaults: ModelDefaults(
            width: size.width, height: size.height, sizeMultiple: model.vaeScaleFactor))
    }
}

public final class APIRouter: Sendable {
    public static let version = "0.1.0"

    let queue: JobQueue
    let worker: Worker?
    let model: ModelDescription
    let keepAlive: Double?
    let started = Date()

    public init(queue: JobQueue, worker: Worker?, model: ModelDescription, keepAlive: Double?) {
        self.queue = queue
        self.worker = worker
        self.model = model
        self.keepAlive = keepAlive
    }

    public func route(_ r: APIRequest) -> APIResponse {
        let path = r.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        // Nothing in the API needs escapes, dot segments or empty segments: refuse them before any lookup.
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        guard path.hasPrefix("/"), !path.contains("%"), !path.contains("\\"),
              !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
            return .error(APIError(.notFound, "no such path"))
        }
        let uid = r.peer.uid
        func allow(_ methods: String...) -> APIResponse? {
            methods.contains(r.method) ? nil
                : .error(APIError(.methodNotAllowed, "\(r.method) is not allowed on \(path); use \(methods.joined(separator: ", "))"),
                         headers: [("Allow", methods.joined(separator: ", "))])
        }
        switch parts.count {
        case 1 where parts[0] == "metrics":
            if let no = allow("GET") { return no }
            let text = Metrics.render(queue.snapshot(), modelLoaded: worker?.modelLoaded ?? false,
                                      uptime: Date().timeIntervalSince(started))
            return APIResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: Array(text.utf8))
        case 2 where parts[0] == "v1" && parts[1] == "health":
            if let no = allow("GET") { return no }
            let s = queue.snapshot()
            let accepting = queue.isAccepting
            return .json(accepting ? 200 : 503, Health(
                status: accepting ? "ok" : "shutting_down", version: Self.version,
                uptimeSeconds: Date().timeIntervalSince(started), queueDepth: s.queueDepth, running: s.running,
                modelLoaded: worker?.modelLoaded ?? false))
        case 2 where parts[0] == "v1" && parts[1] == "models":
            if let no = allow("GET") { return no }
            return .json(200, ModelList(models: model.url == nil ? [] : [ModelInfo(
                name: model.name, path: model.url?.path ?? "", loaded: worker?.modelLoaded ?? false,
                keepAliveSeconds: keepAlive, defaultWidth: model.defaults?.width, defaultHeight: model.defaults?.height,
                schedulers: SchedulerKind.allCases.map(\.rawValue))]))
        case 2 where parts[0] == "v1" && parts[1] == "jobs":
            if let no = allow("GET", "POST") { return no }
            if r.method == "GET" { return .json(200, JobList(jobs: queue.list(uid: uid))) }
            return submit(r)
        case 3 where parts[0] == "v1" && parts[1] == "jobs":
            if let no = allow("GET", "DELETE") { return no }
            let id = parts[2]
            guard JobID.isValid(id) else { return .error(APIError(.notFound, "no job \(id)")) }
            if r.method == "GET" {
                guard let job = queue.job(id, uid: uid) else { return .error(APIError(.notFound, "no job \(id)")) }
                return .json(200, job)
            }
            do throws(APIError) {
                let job = try queue.cancel(id, uid: uid)
                return .json(job.state == .canceled ? 200 : 202, job)
            } catch { return .error(error) }
        case 4 where parts[0] == "v1" && parts[1] == "jobs" && parts[3] == "events":
            if let no = allow("GET") { return no }
            let id = parts[2]
            guard JobID.isValid(id), queue.job(id, uid: uid) != nil else { return .error(APIError(.notFound, "no job \(id)")) }
            return APIResponse(status: 200, contentType: "application/x-ndjson", body: [], eventsFor: id)
        case 5 where parts[0] == "v1" && parts[1] == "jobs" && parts[3] == "images":
            if let no = allow("GET") { return no }
            return image(id: parts[2], index: parts[4], uid: uid)
        default:
            return .error(APIError(.notFound, "no such path \(path)"))
        }
    }

    private func submit(_ r: APIRequest) -> APIResponse {
        do throws(APIError) {
            let request = try RequestValidation.resolve(try RequestValidation.decode(r.body), defaults: model.defaults,
                                                    loraDirectory: model.loraDirectory)
            let job = try queue.submit(request, owner: r.peer.uid)
            return .json(202, job, headers: [("Location", "\(APIVersion.prefix)/jobs/\(job.id)")])
        } catch {
            return .error(error)
        }
    }

    private func image(id: String, index: String, uid: UInt32) -> APIResponse {
        guard JobID.isValid(id), let job = queue.job(id, uid: uid) else { return .error(APIError(.notFound, "no job \(id)")) }
        guard index.utf8.count <= 3, index.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let n = Int(index) else {
            return .error(APIError(.notFound, "no image \(index) (images are numbered from 0)"))
        }
        guard job.state == .finished else {
            return .error(APIError(.conflict, "job \(id) is \(job.state.rawValue); images exist once it has finished"))
        }
        guard n < job.images else { return .error(APIError(.notFound, "job \(id) has \(job.images) image(s), numbered from 0")) }
        guard let data = FileManager.default.contents(atPath: queue.spool.imageURL(id, n).path) else {
            return .error(APIError(.notFound, "image \(n) of job \(id) is gone (removed by retention?)"))
        }
        return APIResponse(status: 200, contentType: "image/png", body: Array(data))
    }
}
