// A1111Routes: AUTOMATIC1111's web UI API (`/sdapi/v1/…`: txt2img, sd-models, samplers, options, progress,
// interrupt) on sdd's durable queue, with A1111's sampler names mapped to sdd's schedulers and its answer shapes.

import Foundation
import Pipeline
import SDDAPI

enum A1111 {
    /// A1111's sampler names (with its k-diffusion aliases) and the sdd scheduler each one runs.
    static var samplerTable: [(name: String, aliases: [String], scheduler: String)] { A1111Samplers.table }

    /// The samplers this build can run (a name whose scheduler sdd lacks is left out).
    static var samplers: [(name: String, aliases: [String], scheduler: String)] {
        samplerTable.filter { SchedulerKind(rawValue: $0.scheduler) != nil }
    }

    /// The sdd scheduler for an A1111 sampler name or alias (case-insensitive).
    static func scheduler(forSampler name: String) throws(FieldError) -> String {
        let key = name.lowercased()
        guard let entry = samplerTable.first(where: { $0.name.lowercased() == key || $0.aliases.contains(key) }) else {
            throw FieldError("sampler_name", "unknown sampler \"\(name)\"; choose one of "
                + samplers.map(\.name).joined(separator: ", "))
        }
        guard SchedulerKind(rawValue: entry.scheduler) != nil else {
            throw FieldError("sampler_name", "sampler \"\(entry.name)\" needs the \(entry.scheduler) scheduler, which this "
                + "sdd does not have; choose one of " + samplers.map(\.name).joined(separator: ", "))
        }
        return entry.scheduler
    }

    /// The A1111 name for an sdd scheduler (the scheduler's own name when A1111 has none).
    static func samplerName(_ scheduler: String?) -> String {
        A1111Samplers.name(ofScheduler: scheduler ?? "")
    }

    /// A1111's error body (its API's exception handler): `{"error": …, "detail": …}`.
    static func error(_ status: Int, _ code: String, _ detail: String) -> APIResponse {
        .json(status, ["error": code, "detail": detail])
    }

    static func error(_ e: APIError) -> APIResponse { error(e.httpStatus, e.code.rawValue, e.message) }

    /// The job a txt2img body asks for and the A1111 sampler name it uses. Unknown fields are ignored; fields sdd
    /// cannot honour with another value than the default (hires fix, a schedule other than automatic) are errors.
    static func jobRequest(_ body: LenientJSON) throws(FieldError) -> JobRequest {
        let prompt = try body.string("prompt") ?? ""
        var request = JobRequest(prompt: prompt)
        if let neg = try body.string("negative_prompt"), !neg.isEmpty { request.negativePrompt = neg }
        request.steps = try body.int("steps")
        request.guidance = try body.double("cfg_scale") ?? 7.0  // A1111's default CFG scale
        request.width = try body.int("width")
        request.height = try body.int("height")
        request.seed = try body.seed("seed", minusOneIsRandom: true)
        let legacySampler = try body.string("sampler_index")
        if let sampler = try body.string("sampler_name") ?? legacySampler, !sampler.isEmpty {
            request.scheduler = try scheduler(forSampler: sampler)
        }
        if let schedule = try body.string("scheduler"), !["automatic", ""].contains(schedule.lowercased()) {
            throw FieldError("scheduler", "schedule type \"\(schedule)\" is not supported: sdd runs each sampler with "
                + "its own (diffusers) timesteps; use automatic")
        }
        let batch = try body.int("batch_size") ?? 1
        let iterations = try body.int("n_iter") ?? 1
        guard batch >= 1, iterations >= 1 else { throw FieldError("batch_size", "batch_size and n_iter must be at least 1") }
        request.count = batch * iterations
        if try body.bool("enable_hr") == true {
            throw FieldError("enable_hr", "hires fix (enable_hr) is not supported by sdd")
        }
        return request
    }

    /// Whether `name` picks the served model: its title/model_name, file or path, optionally with A1111's " [hash]".
    static func names(_ name: String, model: ModelDescription) -> Bool {
        var n = name
        if let bracket = n.range(of: " [") { n = String(n[..<bracket.lowerBound]) }
        return n == model.name || n == model.url?.lastPathComponent || n == model.url?.path
    }
}

extension APIRouter {
    func automatic1111(_ r: APIRequest, endpoint: String) -> APIResponse {
        let methods: [String: [String]] = [
            "txt2img": ["POST"], "sd-models": ["GET"], "samplers": ["GET"], "options": ["GET", "POST"],
            "progress": ["GET"], "interrupt": ["POST"], "scripts": ["GET"], "schedulers": ["GET"],
        ]
        guard let allowed = methods[endpoint] else { return A1111.error(404, "not_found", "Not Found: /sdapi/v1/\(endpoint)") }
        guard allowed.contains(r.method) else {
            var answer = A1111.error(405, "method_not_allowed", "\(r.method) is not allowed; use \(allowed.joined(separator: ", "))")
            answer.headers.append(("Allow", allowed.joined(separator: ", ")))
            return answer
        }
        switch endpoint {
        case "txt2img": return a1111Txt2Img(r)
        case "sd-models":
            guard model.url != nil else { return .json(200, [JSONValue]()) }
            return .json(200, [[
                "title": JSONValue.string(model.name), "model_name": .string(model.name), "hash": .null, "sha256": .null,
                "filename": .string(model.url?.path ?? ""), "config": .null,
            ]])
        case "samplers":
            return .json(200, A1111.samplers.map { s -> [String: JSONValue] in
                ["name": .string(s.name), "aliases": .array(s.aliases.map { .string($0) }), "options": .object([:])]
            })
        case "schedulers":
            return .json(200, [["name": "automatic", "label": "Automatic", "aliases": nil, "default_rho": -1,
                                "need_inner_model": false] as [String: JSONValue]])
        case "scripts":
            return .json(200, ["txt2img": [String](), "img2img": [String]()])
        case "options":
            if r.method == "POST" {
                do throws(FieldError) {
                    let body = try LenientJSON(r.body)
                    if let name = try body.string("sd_model_checkpoint"), !A1111.names(name, model: model) {
                        return A1111.error(400, "invalid_value", "sd_model_checkpoint \"\(name)\": sdd serves one model, \"\(model.name)\"")
                    }
                } catch {
                    return A1111.error(400, "invalid_value", error.message)
                }
                return .json(200, JSONValue.null)  // other options are accepted and ignored
            }
            return .json(200, ["sd_model_checkpoint": JSONValue.string(model.name), "sd_checkpoint_hash": .null,
                               "samples_format": "png", "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"])
        case "progress": return a1111Progress(r)
        default:  // interrupt: stop the caller's running job(s) between steps
            for job in queue.list(owner: r.owner) where job.state == .running { _ = try? queue.cancel(job.id, owner: r.owner) }
            return .json(200, [String: String]())
        }
    }

    private func a1111Progress(_ r: APIRequest) -> APIResponse {
        let mine = queue.list(owner: r.owner)
        let pending = mine.filter { $0.state == .queued || $0.state == .running }
        let running = mine.first { $0.state == .running }
        let p = running?.progress
        let fraction = p.map { $0.total > 0 ? Double($0.step) / Double($0.total) : 0 } ?? 0
        let state: [String: JSONValue] = [
            "skipped": false, "interrupted": .bool(running.map { queue.isCancelRequested($0.id) } ?? false),
            "job": .string(running?.id ?? ""), "job_count": .integer(Int64(pending.count)),
            "job_timestamp": .string(running.map { Self.timestamp($0.startedAt ?? $0.createdAt) } ?? "0"),
            "job_no": 0, "sampling_step": .integer(Int64(p?.step ?? 0)), "sampling_steps": .integer(Int64(p?.total ?? 0)),
        ]
        return .json(200, ["progress": JSONValue.double(fraction), "eta_relative": .double(p?.etaSeconds ?? 0),
                           "state": .object(state), "current_image": .null, "textinfo": .null])
    }

    /// A1111's job_timestamp format, yyyyMMddHHmmss (UTC).
    static func timestamp(_ seconds: Double) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMddHHmmss"
        return f.string(from: Date(timeIntervalSince1970: seconds))
    }

    private func a1111Txt2Img(_ r: APIRequest) -> APIResponse {
        let body: LenientJSON
        let request: JobRequest
        do throws(FieldError) {
            body = try LenientJSON(r.body)
            request = try A1111.jobRequest(body)
            if let checkpoint = try body.object("override_settings")?.string("sd_model_checkpoint"),
               !A1111.names(checkpoint, model: model) {
                throw FieldError("override_settings", "sd_model_checkpoint \"\(checkpoint)\": sdd serves one model, \"\(model.name)\"")
            }
        } catch {
            return A1111.error(400, error.field == nil ? "bad_json" : "invalid_value", error.message)
        }
        let job: Job
        do throws(APIError) {
            job = try queue.submit(try admitted(request), as: r.owner)
        } catch {
            return A1111.error(error)
        }
        let sendImages = (try? body.bool("send_images")) ?? true
        let spool = queue.spool
        let modelName = model.name
        var answer = APIResponse(status: 200, body: [], headers: [("X-SDD-Job", job.id)])
        answer.awaitJob = JobWait(id: job.id, owner: r.owner) { job in
            guard job.state == .finished || job.state == .canceled else {
                return A1111.error(500, job.error?.code.rawValue ?? "generation_failed",
                                   "job \(job.id) failed: \(job.error?.message ?? "unknown error")")
            }
            var images: [JSONValue] = []
            for n in 0..<job.images where sendImages != false {
                guard let png = FileManager.default.contents(atPath: spool.imageURL(job.id, n).path) else {
                    return A1111.error(500, "internal", "image \(n) of job \(job.id) is gone")
                }
                images.append(.string(png.base64EncodedString()))
            }
            // An interrupted job answers like A1111: 200 with the images it has (none: sdd keeps no partial images).
            return .json(200, Self.a1111Answer(body: body, job: job, images: images, model: modelName),
                         headers: [("X-SDD-Job", job.id)])
        }
        return answer
    }

    /// `{"images", "parameters", "info"}`: parameters echo the request (A1111 echoes its request model, seed −1
    /// included) with sdd's effective values for fields it left out; info is a JSON string describing the result.
    static func a1111Answer(body: LenientJSON, job: Job, images: [JSONValue], model: String) -> [String: JSONValue] {
        let s = job.settings
        let sampler = A1111.samplerName(s.scheduler)
        var parameters = body.fields
        let effective: [String: JSONValue] = [
            "prompt": .string(s.prompt), "negative_prompt": .string(s.negativePrompt ?? ""),
            "steps": .integer(Int64(s.steps ?? 0)), "cfg_scale": .double(s.guidance ?? 0),
            "width": .integer(Int64(s.width ?? 0)), "height": .integer(Int64(s.height ?? 0)),
            "seed": .integer(-1), "sampler_name": .string(sampler), "batch_size": .integer(Int64(s.count ?? 1)), "n_iter": 1,
        ]
        for (k, v) in effective where parameters[k] == nil || parameters[k] == .null { parameters[k] = v }
        let seed = JSONValue.unsigned(s.seed ?? 0)
        let count = max(job.images, 1)
        let infotext = A1111.infotext(job: job, model: model)
        let info: [String: JSONValue] = [
            "prompt": .string(s.prompt), "all_prompts": .array(Array(repeating: .string(s.prompt), count: count)),
            "negative_prompt": .string(s.negativePrompt ?? ""),
            "all_negative_prompts": .array(Array(repeating: .string(s.negativePrompt ?? ""), count: count)),
            // The images of one job come from one generator seeded once (diffusers' num_images_per_prompt), not
            // from seed, seed+1, … as in A1111: every entry is the job's seed.
            "seed": seed, "all_seeds": .array(Array(repeating: seed, count: count)),
            "subseed": -1, "all_subseeds": .array(Array(repeating: -1, count: count)), "subseed_strength": 0,
            "width": .integer(Int64(s.width ?? 0)), "height": .integer(Int64(s.height ?? 0)),
            "sampler_name": .string(sampler), "cfg_scale": .double(s.guidance ?? 0), "steps": .integer(Int64(s.steps ?? 0)),
            "batch_size": .integer(Int64(s.count ?? 1)), "restore_faces": false, "face_restoration_model": .null,
            "sd_model_name": .string(model), "sd_model_hash": .null, "sd_vae_name": .null, "sd_vae_hash": .null,
            "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": .null,
            "extra_generation_params": .object(["sdd_job": .string(job.id), "sdd_scheduler": .string(s.scheduler ?? "")]),
            "index_of_first_image": 0, "infotexts": .array(Array(repeating: .string(infotext), count: count)),
            "styles": .array([]), "job_timestamp": .string(timestamp(job.startedAt ?? job.createdAt)), "clip_skip": 1,
            "is_using_inpainting_conditioning": false, "version": .string("sdd \(APIRouter.version)"),
        ]
        let infoData = (try? JSONEncoder().encode(info)) ?? Data("{}".utf8)
        return ["images": .array(images), "parameters": .object(parameters),
                "info": .string(String(decoding: infoData, as: UTF8.self))]
    }
}

extension A1111 {
    /// A1111's "parameters" text for a job: prompt, "Negative prompt: …", then "Steps: …, Sampler: …" pairs.
    static func infotext(job: Job, model: String) -> String {
        let s = job.settings
        var text = s.prompt
        if let neg = s.negativePrompt, !neg.isEmpty { text += "\nNegative prompt: \(neg)" }
        text += "\nSteps: \(s.steps ?? 0), Sampler: \(samplerName(s.scheduler)), Schedule type: Automatic, "
            + "CFG scale: \(s.guidance ?? 0), Seed: \(s.seed ?? 0), Size: \(s.width ?? 0)x\(s.height ?? 0), Model: \(model), "
            + "Version: sdd \(APIRouter.version)"
        return text
    }
}
