// OpenAIRoutes: OpenAI's Images API (`POST /v1/images/generations`) on sdd's durable queue — each request is an
// ordinary job owned by its caller, answered when it is done — with OpenAI's response and error shapes.

import Foundation
import SDDAPI

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}` (param and code may be null).
struct OpenAIError: Encodable {
    var message: String
    var type: String
    var param: String?
    var code: String?

    func encode(to encoder: Encoder) throws {
        var outer = encoder.container(keyedBy: Key.self)
        var c = outer.nestedContainer(keyedBy: Key.self, forKey: .error)
        try c.encode(message, forKey: .message)
        try c.encode(type, forKey: .type)
        try c.encode(param, forKey: .param)
        try c.encode(code, forKey: .code)
    }

    enum Key: String, CodingKey { case error, message, type, param, code }

    static func response(_ status: Int, _ message: String, param: String? = nil, code: String? = nil) -> APIResponse {
        let type = status >= 500 ? "server_error" : status == 429 ? "rate_limit_error" : "invalid_request_error"
        return .json(status, OpenAIError(message: message, type: type, param: param, code: code))
    }

    /// An sdd error in OpenAI's shape; `param` is the request field the message names.
    static func response(_ e: APIError) -> APIResponse {
        response(e.httpStatus, e.message, param: OpenAIRoutes.param(naming: e.message), code: e.code.rawValue)
    }
}

/// OpenAI's image answer: `{"created": …, "data": [{"b64_json": …} | {"url": …}]}` (no `revised_prompt`).
struct OpenAIImagesResponse: Codable {
    struct Image: Codable {
        var b64Json: String?
        var url: String?
        enum CodingKeys: String, CodingKey {
            case b64Json = "b64_json"
            case url
        }
    }
    var created: Int
    var data: [Image]
}

enum OpenAIRoutes {
    /// The sdd field an error message is about, as the OpenAI request calls it.
    static func param(naming message: String) -> String? {
        let first = message.split(separator: " ").first.map(String.init) ?? ""
        switch first {
        case "prompt", "steps", "guidance", "seed", "scheduler", "negative_prompt": return first
        case "width", "height": return "size"
        case "count": return "n"
        case "unknown": return message.hasPrefix("unknown scheduler") ? "scheduler" : nil
        default: return nil
        }
    }

    /// "1024x1024" → (1024, 1024); "auto" → nil (the model's size).
    static func size(_ text: String) throws(FieldError) -> (Int, Int)? {
        if text == "auto" { return nil }
        let parts = text.lowercased().split(separator: "x", omittingEmptySubsequences: false)
        guard parts.count == 2, let w = Int(parts[0]), let h = Int(parts[1]), w > 0, h > 0 else {
            throw FieldError("size", "size \"\(text)\" must be WIDTHxHEIGHT in pixels, e.g. 512x512, or auto")
        }
        return (w, h)
    }

    /// The job an OpenAI request asks for, before sdd's own checks (ranges, defaults).
    static func jobRequest(_ body: LenientJSON) throws(FieldError) -> (JobRequest, format: String) {
        guard let prompt = try body.string("prompt") else { throw FieldError("prompt", "prompt is required") }
        var request = JobRequest(prompt: prompt)
        request.negativePrompt = try body.string("negative_prompt")
        request.steps = try body.int("steps")
        request.guidance = try body.double("guidance")
        request.seed = try body.seed("seed", minusOneIsRandom: false)
        request.scheduler = try body.string("scheduler")
        request.count = try body.int("n")
        if let size = try body.string("size"), let (w, h) = try Self.size(size) {
            request.width = w
            request.height = h
        }
        let format = try body.string("response_format") ?? "b64_json"
        guard format == "b64_json" || format == "url" else {
            throw FieldError("response_format", "response_format \"\(format)\" is not supported; use b64_json or url")
        }
        // `model`, `user`, `quality`, `style` and anything else are accepted and ignored: sdd serves one model.
        _ = try body.string("model")
        _ = try body.string("user")
        return (request, format)
    }
}

extension APIRouter {
    /// The OpenAI and AUTOMATIC1111 routes; nil for every other path (the native API).
    func compatibilityRoute(_ r: APIRequest, path: String, parts: [String]) -> APIResponse? {
        if parts.count == 3, parts[0] == "v1", parts[1] == "images", parts[2] == "generations" { return openAIImages(r) }
        if parts.count == 3, parts[0] == "sdapi", parts[1] == "v1" { return automatic1111(r, endpoint: parts[2]) }
        return nil
    }

    /// POST /v1/images/generations: queue a job, answer in OpenAI's shape when it is done.
    func openAIImages(_ r: APIRequest) -> APIResponse {
        guard r.method == "POST" else {
            var answer = OpenAIError.response(405, "\(r.method) is not allowed on /v1/images/generations; use POST",
                                              code: "method_not_allowed")
            answer.headers.append(("Allow", "POST"))
            return answer
        }
        let request: JobRequest
        let format: String
        do throws(FieldError) {
            (request, format) = try OpenAIRoutes.jobRequest(try LenientJSON(r.body))
        } catch {
            return OpenAIError.response(400, error.message, param: error.field,
                                        code: error.field == nil ? "bad_json" : "invalid_value")
        }
        let job: Job
        do throws(APIError) {
            job = try queue.submit(try admitted(request), as: r.owner)
        } catch {
            return OpenAIError.response(error)
        }
        let host = r.headers["host"] ?? "localhost"
        let spool = queue.spool
        var answer = APIResponse(status: 200, body: [], headers: [("X-SDD-Job", job.id)])
        answer.awaitJob = JobWait(id: job.id, owner: r.owner) { job in
            switch job.state {
            case .finished:
                var data: [OpenAIImagesResponse.Image] = []
                for n in 0..<job.images {
                    if format == "url" {
                        data.append(.init(url: "http://\(host)\(APIVersion.prefix)/jobs/\(job.id)/images/\(n)"))
                    } else {
                        guard let png = FileManager.default.contents(atPath: spool.imageURL(job.id, n).path) else {
                            return OpenAIError.response(500, "image \(n) of job \(job.id) is gone", code: "internal")
                        }
                        data.append(.init(b64Json: png.base64EncodedString()))
                    }
                }
                return .json(200, OpenAIImagesResponse(created: Int(job.createdAt), data: data),
                             headers: [("X-SDD-Job", job.id)])
            case .canceled:
                return OpenAIError.response(500, "job \(job.id) was canceled", code: "canceled")
            default:
                return OpenAIError.response(500, "job \(job.id) failed: \(job.error?.message ?? "unknown error")",
                                            code: job.error?.code.rawValue ?? "generation_failed")
            }
        }
        return answer
    }
}
