// The OpenAI Images and AUTOMATIC1111 routes through APIRouter, fed the exact requests the real `openai` and
// `webuiapi` clients sent (Tests/Fixtures/clients, captured by tools/clients/capture.py): each becomes a durable
// job with the right settings, and the answer comes in the client's shapes once the job is final.

import Daemon
import Foundation
import Pipeline
import SDDAPI
import XCTest

/// One request as tools/clients/capture.py recorded it.
struct CapturedRequest: Decodable {
    var client: String
    var call: String
    var method: String
    var path: String
    var authorization: String?
    var body: JSONValue?

    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/clients")

    /// The first request of `call` in `file` (openai.json or a1111.json).
    static func load(_ file: String, call: String) throws -> CapturedRequest {
        let all = try JSONDecoder().decode([CapturedRequest].self, from: Data(contentsOf: directory.appendingPathComponent(file)))
        guard let r = all.first(where: { $0.call == call }) else { throw ClientError(description: "no \(call) in \(file)") }
        return r
    }

    /// The body as it went over the wire (re-encoded), with `changes` applied to its top-level object.
    func bodyBytes(_ changes: [String: JSONValue] = [:]) -> [UInt8] {
        guard var value = body else { return [] }
        if case .object(var o) = value {
            for (k, v) in changes { o[k] = v }
            value = .object(o)
        }
        return Array((try? JSONEncoder().encode(value)) ?? Data())
    }
}

final class CompatRoutesTests: XCTestCase {
    var dir: URL!
    var queue: JobQueue!
    var router: APIRouter!
    let alice = JobOwner.token("alice")
    let peer = PeerCredentials(pid: 0, uid: JobOwner.tokenJobUID, gid: JobOwner.tokenJobUID)
    let defaults = ModelDefaults(width: 64, height: 64, sizeMultiple: 8)

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-compat-\(UUID().uuidString)")
        queue = JobQueue(spool: try Spool(root: dir), maxQueued: 100, logger: .init(label: "test"))
        router = APIRouter(queue: queue, worker: nil, model: ModelDescription(
            url: URL(fileURLWithPath: "/m/tiny-sd"), name: "tiny-sd", defaults: defaults), keepAlive: 300)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func call(_ method: String, _ uri: String, _ body: [UInt8] = [], as owner: JobOwner? = nil) -> APIResponse {
        router.route(APIRequest(method: method, uri: uri, body: body, peer: peer, owner: owner ?? alice,
                                headers: ["host": "127.0.0.1:7860"]))
    }

    func replay(_ file: String, _ callName: String, changes: [String: JSONValue] = [:], as owner: JobOwner? = nil) throws -> APIResponse {
        let r = try CapturedRequest.load(file, call: callName)
        return call(r.method, r.path, r.bodyBytes(changes), as: owner)
    }

    func object(_ r: APIResponse) throws -> [String: Any] {
        let o = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
        return try XCTUnwrap(o, String(decoding: r.body, as: UTF8.self))
    }

    func jobID(_ r: APIResponse) throws -> String {
        try XCTUnwrap(r.headers.first { $0.0 == "X-SDD-Job" }?.1, "no X-SDD-Job header")
    }

    /// Plays the worker: takes the next job, writes `images` PNGs of its size, and completes it.
    @discardableResult
    func finishNext(images: Int = 1, state: JobState = .finished) throws -> (Job, [[UInt8]]) {
        guard case .job(let record) = queue.next(until: Date().addingTimeInterval(5)) else {
            throw ClientError(description: "no job queued")
        }
        let s = record.job.settings
        var written: [[UInt8]] = []
        for n in 0..<(state == .finished ? images : 0) {
            let png = try PNGWriter.encode(rgb: [UInt8](repeating: UInt8(40 * n + 7), count: (s.width ?? 8) * (s.height ?? 8) * 3),
                                           width: s.width ?? 8, height: s.height ?? 8, text: [("parameters", "test")])
            try OutputFiles.writeAtomically(png, to: queue.spool.imageURL(record.job.id, n))
            written.append(png)
        }
        queue.complete(record.job.id, state: state, images: written.count,
                       error: state == .failed ? APIError(.generationFailed, "the model broke") : nil)
        return (record.job, written)
    }

    func answer(_ r: APIResponse) throws -> APIResponse {
        let wait = try XCTUnwrap(r.awaitJob, "the route should wait for its job")
        return try XCTUnwrap(wait.wait(on: queue, timeout: 20), "no answer within 20 s")
    }

    // MARK: OpenAI

    func testOpenAIClientsRequestIsADurableJobWithItsSettings() throws {
        let r = try replay("openai.json", "images.generate")
        let id = try jobID(r)
        let job = try XCTUnwrap(queue.job(id, owner: alice), "the job is in the queue before any answer")
        XCTAssertEqual(job.state, .queued)
        XCTAssertEqual(job.ownerName, "alice")
        XCTAssertEqual(job.settings, JobRequest(prompt: "a red circle", negativePrompt: "blue", steps: 4, guidance: 2.5,
                                                width: 64, height: 64, seed: 7, scheduler: "euler", count: 1, priority: 0))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("jobs/\(id).json").path))
    }

    func testOpenAIAnswerIsCreatedAndBase64PNGsWithoutRevisedPrompt() throws {
        let r = try replay("openai.json", "images.generate", changes: ["n": 2])
        let (job, pngs) = try finishNext(images: 2)
        let a = try answer(r)
        XCTAssertEqual(a.status, 200)
        let o = try object(a)
        XCTAssertEqual(o["created"] as? Int, Int(job.createdAt))
        let data = try XCTUnwrap(o["data"] as? [[String: Any]])
        XCTAssertEqual(data.count, 2)
        for (i, item) in data.enumerated() {
            XCTAssertEqual(Set(item.keys), ["b64_json"], "no url, no revised_prompt")
            XCTAssertEqual(Data(base64Encoded: item["b64_json"] as? String ?? "").map { Array($0) }, pngs[i])
        }
    }

    func testOpenAIMinimalRequestTakesSddsDefaults() throws {
        let r = try replay("openai.json", "images.generate(minimal)")
        let job = try XCTUnwrap(queue.job(try jobID(r), owner: alice))
        XCTAssertEqual(job.settings.width, 64)
        XCTAssertEqual(job.settings.steps, JobRequest.defaultSteps)
        XCTAssertEqual(job.settings.scheduler, JobRequest.defaultScheduler)
        XCTAssertNotNil(job.settings.seed, "a seed is chosen at submit so a resumed job gives the same image")
    }

    func testOpenAIUnknownFieldsAreIgnored() throws {
        let r = try replay("openai.json", "images.generate", changes: ["quality": "hd", "style": "vivid", "user": "u-1",
                                                                     "background": "auto"])
        XCTAssertNotNil(r.awaitJob, String(decoding: r.body, as: UTF8.self))
    }

    func testOpenAIURLFormatLinksToTheNativeImageRoute() throws {
        let r = try replay("openai.json", "images.generate", changes: ["response_format": "url"])
        let (job, _) = try finishNext()
        let data = try XCTUnwrap(try object(try answer(r))["data"] as? [[String: Any]])
        XCTAssertEqual(data.first?["url"] as? String, "http://127.0.0.1:7860/v1/jobs/\(job.id)/images/0")
    }

    func testOpenAIErrorsHaveOpenAIsShapeAndNameTheParam() throws {
        let cases: [(changes: [String: JSONValue], param: String?)] = [
            (["size": "big"], "size"), (["size": "64x60"], "size"), (["steps": 0], "steps"), (["steps": "four"], "steps"),
            (["n": 99], "n"), (["seed": -1], "seed"), (["scheduler": "karras"], "scheduler"), (["prompt": nil], "prompt"),
            (["response_format": "webp"], "response_format"), (["guidance": 1000], "guidance"),
        ]
        for c in cases {
            let r = try replay("openai.json", "images.generate", changes: c.changes)
            XCTAssertEqual(r.status, 400, "\(c.changes)")
            XCTAssertNil(r.awaitJob)
            let e = try XCTUnwrap(try object(r)["error"] as? [String: Any], "\(c.changes)")
            XCTAssertEqual(Set(e.keys), ["message", "type", "param", "code"], "\(c.changes)")
            XCTAssertEqual(e["type"] as? String, "invalid_request_error")
            XCTAssertEqual(e["param"] as? String, c.param, "\(c.changes): \(e)")
            XCTAssertFalse((e["message"] as? String ?? "").isEmpty)
        }
        let notJSON = call("POST", "/v1/images/generations", Array("{".utf8))
        XCTAssertEqual(notJSON.status, 400)
        XCTAssertTrue((try object(notJSON)["error"] as? [String: Any])?["param"] is NSNull)
        XCTAssertEqual(call("GET", "/v1/images/generations").status, 405)
        XCTAssertTrue(queue.list(owner: alice).isEmpty, "no job for a refused request")
    }

    func testOpenAIFailedJobIsA500InOpenAIsShape() throws {
        let r = try replay("openai.json", "images.generate")
        try finishNext(state: .failed)
        let a = try answer(r)
        XCTAssertEqual(a.status, 500)
        let e = try XCTUnwrap(try object(a)["error"] as? [String: Any])
        XCTAssertEqual(e["type"] as? String, "server_error")
        XCTAssertTrue((e["message"] as? String ?? "").contains("the model broke"))
    }

    func testModelsAnswerInOpenAIsListShapeAndKeepSdctlsFields() throws {
        let r = try replay("openai.json", "models.list")
        XCTAssertEqual(r.status, 200)
        let o = try object(r)
        XCTAssertEqual(o["object"] as? String, "list")
        let data = try XCTUnwrap(o["data"] as? [[String: Any]])
        XCTAssertEqual(data.first?["id"] as? String, "tiny-sd")
        XCTAssertEqual(data.first?["object"] as? String, "model")
        XCTAssertNotNil(data.first?["created"] as? Int)
        XCTAssertEqual(data.first?["owned_by"] as? String, "sdd")
        XCTAssertEqual(try r.decode(ModelList.self).models.first?.name, "tiny-sd", "sdctl's fields are still there")
    }

    // MARK: ownership

    func testTokenNamesOwnTheirJobsAndNeverPassForUids() throws {
        let id = try jobID(try replay("openai.json", "images.generate"))
        XCTAssertEqual(call("GET", "/v1/jobs/\(id)").status, 200, "its token name sees it natively")
        XCTAssertEqual(call("GET", "/v1/jobs/\(id)", as: .token("bob")).status, 404)
        for uid: UInt32 in [1000, JobOwner.tokenJobUID] {
            XCTAssertEqual(call("GET", "/v1/jobs/\(id)", as: .uid(uid)).status, 404, "uid \(uid)")
        }
        XCTAssertEqual(call("GET", "/v1/jobs/\(id)", as: .uid(0)).status, 200, "root sees every job")
        // And a uid's job is not a token's whose name is that number.
        let native = call("POST", "/v1/jobs", Array(#"{"prompt": "x"}"#.utf8), as: .uid(1000))
        let nativeID = try native.decode(Job.self).id
        XCTAssertEqual(call("GET", "/v1/jobs/\(nativeID)", as: .token("1000")).status, 404)
        XCTAssertEqual(try call("GET", "/v1/jobs").decode(JobList.self).jobs.map(\.id), [id])
    }

    func testOnTheSocketTheCallersUidOwnsTheJob() throws {
        let r = try replay("openai.json", "images.generate", as: .uid(1000))
        let id = try jobID(r)
        XCTAssertEqual(queue.list(uid: 1000).map(\.id), [id], "sdctl jobs shows it to its uid")
        XCTAssertEqual(queue.job(id, uid: 1000)?.owner, 1000)
        XCTAssertNil(queue.job(id, uid: 1000)?.ownerName)
        XCTAssertNil(queue.job(id, owner: .token("alice")))
    }

    func testATokenOwnedJobSurvivesARestartWithItsOwner() throws {
        let id = try jobID(try replay("openai.json", "images.generate"))
        let reloaded = JobQueue(spool: try Spool(root: dir), maxQueued: 100, logger: .init(label: "test"))
        XCTAssertEqual(reloaded.job(id, owner: alice)?.state, .queued, "still queued for its token name")
        XCTAssertNil(reloaded.job(id, owner: .uid(JobOwner.tokenJobUID)))
        XCTAssertNil(reloaded.job(id, owner: .token("bob")))
    }

    // MARK: AUTOMATIC1111

    func testWebuiapiTxt2ImgBecomesAJobWithMappedSettings() throws {
        let r = try replay("a1111.json", "txt2img")
        let job = try XCTUnwrap(queue.job(try jobID(r), owner: alice))
        XCTAssertEqual(job.settings, JobRequest(prompt: "a red circle", negativePrompt: "blue", steps: 4, guidance: 2.5,
                                                width: 64, height: 64, seed: 7, scheduler: "euler-a", count: 1, priority: 0))
    }

    func testA1111AnswerHasImagesParametersAndInfo() throws {
        let r = try replay("a1111.json", "txt2img")
        let (job, pngs) = try finishNext()
        let a = try answer(r)
        XCTAssertEqual(a.status, 200)
        let o = try object(a)
        XCTAssertEqual((o["images"] as? [String])?.compactMap { Data(base64Encoded: $0).map { Array($0) } }, pngs)
        let parameters = try XCTUnwrap(o["parameters"] as? [String: Any])
        XCTAssertEqual(parameters["sampler_name"] as? String, "Euler a")
        XCTAssertEqual(parameters["seed"] as? Int, 7)
        XCTAssertNotNil(parameters["alwayson_scripts"], "parameters echo the request")
        let infoText = try XCTUnwrap(o["info"] as? String, "info is a JSON string, as webuiapi json.loads it")
        let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(infoText.utf8)) as? [String: Any])
        XCTAssertEqual(info["seed"] as? Int, 7)
        XCTAssertEqual(info["all_seeds"] as? [Int], [7])
        XCTAssertEqual(info["sampler_name"] as? String, "Euler a")
        XCTAssertEqual(info["sd_model_name"] as? String, "tiny-sd")
        XCTAssertEqual(info["width"] as? Int, 64)
        let infotext = try XCTUnwrap((info["infotexts"] as? [String])?.first)
        XCTAssertTrue(infotext.hasPrefix("a red circle\nNegative prompt: blue\nSteps: 4, Sampler: Euler a, "), infotext)
        XCTAssertTrue(infotext.contains("Seed: 7, Size: 64x64, Model: tiny-sd"), infotext)
        XCTAssertEqual((info["extra_generation_params"] as? [String: Any])?["sdd_job"] as? String, job.id)
    }

    func testA1111SamplerNamesMapToSddSchedulers() throws {
        let expected = ["Euler a": "euler-a", "Euler": "euler", "LMS": "lms", "DDIM": "ddim", "PLMS": "pndm",
                        "DPM++ 2M": "dpm++2m", "k_euler_a": "euler-a", "dpm++ 2m": "dpm++2m"]
        for (name, scheduler) in expected {
            let r = try replay("a1111.json", "txt2img", changes: ["sampler_name": .string(name)])
            XCTAssertEqual(queue.job(try jobID(r), owner: alice)?.settings.scheduler, scheduler, name)
        }
        let lcm = try replay("a1111.json", "txt2img", changes: ["sampler_name": "LCM"])
        if SchedulerKind(rawValue: "lcm") == nil {
            XCTAssertEqual(lcm.status, 400)
            XCTAssertTrue((try object(lcm)["detail"] as? String ?? "").contains("lcm scheduler"))
        } else {
            XCTAssertEqual(queue.job(try jobID(lcm), owner: alice)?.settings.scheduler, "lcm")
        }
        let karras = try replay("a1111.json", "txt2img", changes: ["sampler_name": "DPM++ 2M Karras"])
        XCTAssertEqual(karras.status, 400)
        XCTAssertTrue((try object(karras)["detail"] as? String ?? "").contains("Euler a, Euler, LMS, DDIM, PLMS, DPM++ 2M"))
    }

    func testSamplersListsOnlyWhatThisBuildCanRun() throws {
        let list = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try replay("a1111.json", "get_samplers").body))
            as? [[String: Any]])
        var names = ["Euler a", "Euler", "LMS", "DDIM", "PLMS", "DPM++ 2M"]
        if SchedulerKind(rawValue: "lcm") != nil { names.append("LCM") }
        XCTAssertEqual(list.compactMap { $0["name"] as? String }, names)
        XCTAssertNotNil(list.first?["aliases"] as? [String])
        XCTAssertNotNil(list.first?["options"] as? [String: Any])
    }

    func testA1111SeedMinusOneIsRandomAndBatchTimesIterationsIsTheCount() throws {
        let r = try replay("a1111.json", "txt2img", changes: ["seed": -1, "batch_size": 2, "n_iter": 3])
        let job = try XCTUnwrap(queue.job(try jobID(r), owner: alice))
        XCTAssertNotNil(job.settings.seed)
        XCTAssertEqual(job.settings.count, 6)
        XCTAssertEqual(try replay("a1111.json", "txt2img", changes: ["seed": -2]).status, 400)
    }

    func testA1111RefusesWhatSddCannotHonour() throws {
        let cases: [[String: JSONValue]] = [
            ["enable_hr": true], ["scheduler": "Karras"], ["steps": 0], ["width": 65], ["cfg_scale": "x"],
            ["override_settings": .object(["sd_model_checkpoint": "v1-5-pruned.safetensors [abc]"])],
        ]
        for c in cases {
            let r = try replay("a1111.json", "txt2img", changes: c)
            XCTAssertEqual(r.status, 400, "\(c)")
            XCTAssertFalse((try object(r)["detail"] as? String ?? "").isEmpty, "\(c)")
        }
        let sameModel = try replay("a1111.json", "txt2img",
                                   changes: ["override_settings": .object(["sd_model_checkpoint": "tiny-sd [0123abcd]"])])
        XCTAssertNotNil(sameModel.awaitJob)
    }

    func testA1111ModelAndOptionsEndpoints() throws {
        let models = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try replay("a1111.json", "get_sd_models").body))
            as? [[String: Any]])
        XCTAssertEqual(models.first?["title"] as? String, "tiny-sd")
        XCTAssertEqual(models.first?["model_name"] as? String, "tiny-sd")
        XCTAssertEqual(models.first?["filename"] as? String, "/m/tiny-sd")
        XCTAssertEqual(try object(try replay("a1111.json", "get_options"))["sd_model_checkpoint"] as? String, "tiny-sd")
        let set = try replay("a1111.json", "set_options")
        XCTAssertEqual(set.status, 200)
        XCTAssertEqual(String(decoding: set.body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines), "null")
        XCTAssertEqual(try replay("a1111.json", "set_options", changes: ["sd_model_checkpoint": "other"]).status, 400)
        let scripts = try object(try replay("a1111.json", "WebUIApi() + set_auth (check_extensions)"))
        XCTAssertEqual(scripts["txt2img"] as? [String], [])
        XCTAssertEqual(call("GET", "/sdapi/v1/img2img").status, 404)
        XCTAssertEqual(call("GET", "/sdapi/v1/txt2img").status, 405)
    }

    func testProgressAndInterruptActOnTheCallersOwnJob() throws {
        let id = try jobID(try replay("a1111.json", "txt2img"))
        guard case .job = queue.next(until: Date().addingTimeInterval(5)) else { return XCTFail("not started") }
        queue.markStarted(id, step: 0, total: 4)
        queue.reportStep(id, step: 1, total: 4, seconds: 0.5, eta: 1.5)
        let p = try object(try replay("a1111.json", "get_progress"))
        XCTAssertEqual(p["progress"] as? Double, 0.25)
        XCTAssertEqual(p["eta_relative"] as? Double, 1.5)
        let state = try XCTUnwrap(p["state"] as? [String: Any])
        XCTAssertEqual(state["sampling_step"] as? Int, 1)
        XCTAssertEqual(state["sampling_steps"] as? Int, 4)
        XCTAssertEqual(state["job_count"] as? Int, 1)
        XCTAssertTrue(p.keys.contains("current_image"))
        let other = try object(try replay("a1111.json", "get_progress", as: .token("bob")))
        XCTAssertEqual(other["progress"] as? Double, 0, "someone else's job is not shown")

        XCTAssertEqual(try replay("a1111.json", "interrupt", as: .token("bob")).status, 200)
        XCTAssertFalse(queue.isCancelRequested(id), "bob cannot interrupt alice's job")
        XCTAssertEqual(try replay("a1111.json", "interrupt").status, 200)
        XCTAssertTrue(queue.isCancelRequested(id))
        XCTAssertEqual((try object(try replay("a1111.json", "get_progress"))["state"] as? [String: Any])?["interrupted"] as? Bool, true)
    }
}
