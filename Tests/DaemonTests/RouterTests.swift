// The API's routes, validation, access control and queue rules, exercised through APIRouter without sockets.

import Daemon
import Foundation
import SDDAPI
import XCTest

final class RouterTests: XCTestCase {
    var dir: URL!
    var queue: JobQueue!
    var router: APIRouter!
    let alice = PeerCredentials(pid: 1, uid: 1000, gid: 1000)
    let bob = PeerCredentials(pid: 2, uid: 1001, gid: 1001)
    let root = PeerCredentials(pid: 3, uid: 0, gid: 0)
    let defaults = ModelDefaults(width: 64, height: 64, sizeMultiple: 8)

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-router-\(UUID().uuidString)")
        try makeRouter(maxQueued: 100)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func makeRouter(maxQueued: Int, maxDownloads: Int = APIRouter.defaultMaxDownloads) throws {
        queue = JobQueue(spool: try Spool(root: dir), maxQueued: maxQueued, logger: .init(label: "test"))
        router = APIRouter(queue: queue, worker: nil, model: ModelDescription(url: URL(fileURLWithPath: "/m/tiny"), name: "tiny",
                                                                             defaults: defaults), keepAlive: 300,
                           maxDownloads: maxDownloads)
    }

    func call(_ method: String, _ uri: String, _ body: String? = nil, as peer: PeerCredentials? = nil) -> APIResponse {
        router.route(APIRequest(method: method, uri: uri, body: Array((body ?? "").utf8), peer: peer ?? alice))
    }

    func errorCode(_ r: APIResponse) -> String? { (try? r.decode(APIErrorResponse.self))?.error.code.rawValue }

    func submit(_ json: String = #"{"prompt": "a cat"}"#, as peer: PeerCredentials? = nil) throws -> Job {
        let r = call("POST", "/v1/jobs", json, as: peer)
        XCTAssertEqual(r.status, 202, String(decoding: r.body, as: UTF8.self))
        return try r.decode(Job.self)
    }

    func testSubmitReturns202WithAResolvedJobAlreadyOnDisk() throws {
        let r = call("POST", "/v1/jobs", #"{"prompt": "a cat", "steps": 7, "negative_prompt": "dog"}"#)
        XCTAssertEqual(r.status, 202)
        let job = try r.decode(Job.self)
        XCTAssertTrue(JobID.isValid(job.id))
        XCTAssertEqual(job.state, .queued)
        XCTAssertEqual(job.position, 1)
        XCTAssertEqual(job.owner, 1000)
        XCTAssertEqual(job.settings.steps, 7)
        XCTAssertEqual(job.settings.width, 64)
        XCTAssertEqual(job.settings.scheduler, "pndm")
        XCTAssertNotNil(job.settings.seed)
        XCTAssertTrue(r.headers.contains { $0.0 == "Location" && $0.1 == "/v1/jobs/\(job.id)" })
        let onDisk = try JSONDecoder().decode(JobRecord.self, from: Data(contentsOf: dir.appendingPathComponent("jobs/\(job.id).json")))
        XCTAssertEqual(onDisk.job.settings, job.settings)
    }

    func testMalformedJSONIsBadJSON() {
        for body in ["{", "not json", "[1,2]", "", "\"prompt\""] {
            let r = call("POST", "/v1/jobs", body)
            XCTAssertEqual(r.status, 400, body)
            XCTAssertEqual(errorCode(r), "bad_json", body)
        }
    }

    func testWrongTypesAndMissingPromptAreWrongType() {
        for body in [#"{"prompt": 5}"#, #"{"prompt": "x", "steps": "ten"}"#, #"{"prompt": "x", "steps": 2.5}"#,
                     #"{"prompt": "x", "seed": -1}"#, #"{"steps": 5}"#, #"{"prompt": null}"#] {
            let r = call("POST", "/v1/jobs", body)
            XCTAssertEqual(r.status, 400, body)
            XCTAssertEqual(errorCode(r), "wrong_type", body)
        }
    }

    func testIntegerFieldsThatAreNotIntegersNameTheFieldAndTheExpectedType() throws {
        let cases: [(body: String, field: String, expected: String, got: String)] = [
            (#"{"prompt": "x", "steps": 2.5}"#, "steps", "an integer from \(Int.min) to \(Int.max)", "got 2.5"),
            (#"{"prompt": "x", "steps": 9223372036854775808}"#, "steps", "to \(Int.max)", "outside that range"),
            (#"{"prompt": "x", "seed": -1}"#, "seed", "an integer from 0 to 18446744073709551615", "got -1"),
            (#"{"prompt": "x", "seed": 1.5}"#, "seed", "an integer from 0 to 18446744073709551615", "got 1.5"),
            (#"{"prompt": "x", "seed": 18446744073709551617}"#, "seed", "from 0 to 18446744073709551615",
             "outside that range"),
            (#"{"prompt": "x", "width": "64"}"#, "width", "an integer", "got a string"),
            (#"{"prompt": "x", "count": true}"#, "count", "an integer", "got a boolean"),
            (#"{"prompt": "x", "priority": [1]}"#, "priority", "an integer", "got a value of another type"),
        ]
        for c in cases {
            let r = call("POST", "/v1/jobs", c.body)
            XCTAssertEqual(r.status, 400, c.body)
            let e = try r.decode(APIErrorResponse.self).error
            XCTAssertEqual(e.code, .wrongType, c.body)
            XCTAssertTrue(e.message.hasPrefix("field \"\(c.field)\": expected "), "\(c.body): \(e.message)")
            XCTAssertTrue(e.message.contains(c.expected), "\(c.body): \(e.message)")
            XCTAssertTrue(e.message.contains(c.got), "\(c.body): \(e.message)")
            XCTAssertFalse(e.message.contains("not valid JSON"), "\(c.body): \(e.message)")
        }
        XCTAssertEqual(queue.snapshot().queueDepth, 0, "a bad request queues nothing")
    }

    func testTheLargestSeedAndANullOptionalFieldAreAccepted() throws {
        let job = try submit(#"{"prompt": "x", "seed": 18446744073709551615, "steps": null}"#)
        XCTAssertEqual(job.settings.seed, UInt64.max)
        XCTAssertEqual(job.settings.steps, JobRequest.defaultSteps)
    }

    func testANullOrNonObjectBodySaysTheBodyMustBeAnObject() throws {
        for body in ["null", "[]", "5", "\"x\""] {
            let r = call("POST", "/v1/jobs", body)
            XCTAssertEqual(r.status, 400, body)
            let e = try r.decode(APIErrorResponse.self).error
            XCTAssertEqual(e.code, .badJSON, body)
            XCTAssertTrue(e.message.hasPrefix("the body must be a JSON object"), "\(body): \(e.message)")
            XCTAssertFalse(e.message.contains("field"), "\(body): \(e.message)")
        }
    }

    func testOnlyCanonicalImageIndexesNameAnImage() throws {
        let job = try submit()
        guard case .job = queue.next(until: Date()) else { return XCTFail("expected a job") }
        try Data([0x89, 0x50, 0x4E, 0x47]).write(to: queue.spool.imageURL(job.id, 0))
        queue.complete(job.id, state: .finished, images: 1)
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)/images/0").status, 200)
        for index in ["00", "0001", "000", "+0", "-0", "0x0", " 0", "1"] {
            let r = call("GET", "/v1/jobs/\(job.id)/images/\(index)")
            XCTAssertEqual(r.status, 404, index)
            XCTAssertEqual(errorCode(r), "not_found", index)
        }
    }

    func testImagesAreStreamedFromTheirFileAndDownloadsAreCapped() throws {
        try makeRouter(maxQueued: 100, maxDownloads: 2)
        let job = try submit()
        guard case .job = queue.next(until: Date()) else { return XCTFail("expected a job") }
        let png = [UInt8](repeating: 7, count: 5000)
        try Data(png).write(to: queue.spool.imageURL(job.id, 0))
        queue.complete(job.id, state: .finished, images: 1)
        let a = call("GET", "/v1/jobs/\(job.id)/images/0"), b = call("GET", "/v1/jobs/\(job.id)/images/0")
        for r in [a, b] {
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.body, [], "the bytes come from the file, not from memory")
            XCTAssertEqual(r.file?.size, png.count)
        }
        XCTAssertEqual(router.downloads.active, 2)
        let third = call("GET", "/v1/jobs/\(job.id)/images/0")
        XCTAssertEqual(third.status, 429)
        XCTAssertEqual(errorCode(third), "too_many_downloads")
        XCTAssertTrue(third.headers.contains { $0.0 == "Retry-After" })
        a.file?.close()
        a.file?.close()  // idempotent: frees one slot, not two
        XCTAssertEqual(router.downloads.active, 1)
        let fourth = call("GET", "/v1/jobs/\(job.id)/images/0")
        XCTAssertEqual(fourth.status, 200)
        fourth.file?.close()
        b.file?.close()
        XCTAssertEqual(router.downloads.active, 0)
        // A missing file frees its slot at once.
        unlink(queue.spool.imageURL(job.id, 0).path)
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)/images/0").status, 404)
        XCTAssertEqual(router.downloads.active, 0)
    }

    func testAbsoluteFormTargetsAreAccepted() throws {
        XCTAssertEqual(call("GET", "http://localhost/v1/health").status, 200)
        XCTAssertEqual(call("GET", "HTTP://sdd.invalid:80/v1/models").status, 200)
        let job = try submit()
        XCTAssertEqual(try call("GET", "http://localhost/v1/jobs/\(job.id)?x=1").decode(Job.self).id, job.id)
        XCTAssertEqual(call("GET", "http://localhost").status, 404, "the root path, which is no route")
        XCTAssertEqual(call("GET", "http://localhost/v1/jobs/../../etc/passwd").status, 404)
    }

    func testARetriedSubmissionWithTheSameRequestIdReturnsTheSameJob() throws {
        let body = #"{"prompt": "a cat", "steps": 3, "request_id": "sdctl-7f3a"}"#
        let first = call("POST", "/v1/jobs", body)
        XCTAssertEqual(first.status, 202)
        let job = try first.decode(Job.self)
        XCTAssertEqual(job.settings.requestId, "sdctl-7f3a")
        let again = call("POST", "/v1/jobs", body)
        XCTAssertEqual(again.status, 200, "a replay, not a new job")
        XCTAssertEqual(try again.decode(Job.self).id, job.id)
        XCTAssertTrue(again.headers.contains { $0.0 == "Location" && $0.1 == "/v1/jobs/\(job.id)" })
        XCTAssertEqual(queue.snapshot().queueDepth, 1)
        // The same id from another user is that user's own, new job.
        XCTAssertNotEqual(try submit(body, as: bob).id, job.id)
        // The same id with other settings is a mistake, not a retry.
        let other = call("POST", "/v1/jobs", #"{"prompt": "a dog", "steps": 3, "request_id": "sdctl-7f3a"}"#)
        XCTAssertEqual(other.status, 409)
        XCTAssertTrue(try other.decode(APIErrorResponse.self).error.message.contains(job.id))
        XCTAssertEqual(queue.snapshot().queueDepth, 2)
    }

    func testARequestIdSurvivesARestartOfTheQueue() throws {
        let body = #"{"prompt": "a cat", "request_id": "before-restart"}"#
        let job = try submit(body)
        try makeRouter(maxQueued: 100)  // a new queue reading the same spool, as after a restart
        let again = call("POST", "/v1/jobs", body)
        XCTAssertEqual(again.status, 200, String(decoding: again.body, as: UTF8.self))
        XCTAssertEqual(try again.decode(Job.self).id, job.id)
        XCTAssertEqual(try call("GET", "/v1/jobs").decode(JobList.self).jobs.count, 1)
    }

    func testConcurrentRetriesWithOneRequestIdMakeOneJob() throws {
        let router = self.router!, alice = self.alice
        let ids = NSLock(), body = Array(#"{"prompt": "race", "request_id": "same"}"#.utf8)
        nonisolated(unsafe) var seen: [String] = []  // guarded by `ids`
        DispatchQueue.concurrentPerform(iterations: 16) { _ in
            let r = router.route(APIRequest(method: "POST", uri: "/v1/jobs", body: body, peer: alice))
            let id = (try? r.decode(Job.self))?.id ?? "status \(r.status)"
            ids.withLock { seen.append(id) }
        }
        XCTAssertEqual(Set(seen).count, 1, "\(seen)")
        XCTAssertEqual(queue.snapshot().queueDepth, 1)
    }

    func testABadRequestIdIsInvalidValue() {
        for id in ["", String(repeating: "a", count: 65), "has space", "slash/", "ünï"] {
            let r = call("POST", "/v1/jobs", #"{"prompt": "x", "request_id": "\#(id)"}"#)
            XCTAssertEqual(r.status, 400, id)
            XCTAssertEqual(errorCode(r), "invalid_value", id)
        }
    }

    func testUnknownFieldsAreRejectedByName() throws {
        let r = call("POST", "/v1/jobs", #"{"prompt": "x", "step": 30}"#)
        XCTAssertEqual(r.status, 400)
        let e = try r.decode(APIErrorResponse.self).error
        XCTAssertEqual(e.code, .unknownField)
        XCTAssertTrue(e.message.contains("\"step\""), e.message)
    }

    func testOutOfRangeValuesAreInvalidValue() {
        for body in [#"{"prompt": "x", "width": 65}"#, #"{"prompt": "x", "height": 0}"#, #"{"prompt": "x", "width": 8192}"#,
                     #"{"prompt": "x", "steps": 0}"#, #"{"prompt": "x", "steps": 1001}"#, #"{"prompt": "x", "count": 17}"#,
                     #"{"prompt": "x", "scheduler": "heun"}"#, #"{"prompt": "  "}"#, #"{"prompt": "x", "priority": 1000}"#,
                     #"{"prompt": "x", "guidance": -1}"#] {
            let r = call("POST", "/v1/jobs", body)
            XCTAssertEqual(r.status, 400, body)
            XCTAssertEqual(errorCode(r), "invalid_value", body)
        }
        XCTAssertEqual(queue.snapshot().queueDepth, 0, "a bad request queues nothing")
    }

    func testJobsBelongToTheirOwnerAndRootSeesAll() throws {
        let job = try submit()
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)").status, 200)
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)", as: bob).status, 404)
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)/events", as: bob).status, 404)
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)/images/0", as: bob).status, 404)
        XCTAssertEqual(call("DELETE", "/v1/jobs/\(job.id)", as: bob).status, 404)
        XCTAssertEqual(try call("GET", "/v1/jobs", as: bob).decode(JobList.self).jobs.count, 0)
        XCTAssertEqual(try call("GET", "/v1/jobs", as: root).decode(JobList.self).jobs.map(\.id), [job.id])
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)", as: root).status, 200)
        XCTAssertEqual(queue.job(job.id, uid: 1000)?.state, .queued, "bob's attempts changed nothing")
    }

    func testTraversalAndMalformedPathsAre404() {
        for path in ["/v1/jobs/../../etc/passwd", "/v1/jobs/%2e%2e/%2e%2e/etc/passwd", "/v1/jobs/..%2f..%2fetc%2fpasswd",
                     "/v1//jobs", "/v1/jobs/./x", "/v1/jobs/ABCDEF0123456789", "/v1/jobs/123", "/etc/passwd", "/",
                     "/v1/jobs/0123456789abcdef/images/../../x", "relative"] {
            let r = call("GET", path)
            XCTAssertEqual(r.status, 404, path)
            XCTAssertEqual(errorCode(r), "not_found", path)
        }
    }

    func testWrongMethodIs405WithAllow() {
        let r = call("PUT", "/v1/jobs")
        XCTAssertEqual(r.status, 405)
        XCTAssertEqual(errorCode(r), "method_not_allowed")
        XCTAssertTrue(r.headers.contains { $0.0 == "Allow" && $0.1 == "GET, POST" })
        XCTAssertEqual(call("POST", "/v1/health").status, 405)
    }

    func testAFullQueueIs429AndLeavesQueuedJobsAlone() throws {
        try makeRouter(maxQueued: 2)
        let a = try submit(), b = try submit()
        let r = call("POST", "/v1/jobs", #"{"prompt": "third"}"#)
        XCTAssertEqual(r.status, 429)
        XCTAssertEqual(errorCode(r), "queue_full")
        XCTAssertEqual(Set(try call("GET", "/v1/jobs").decode(JobList.self).jobs.map(\.id)), [a.id, b.id])
    }

    func testShuttingDownIs503ForSubmitsAndHealth() throws {
        _ = try submit()
        queue.stopAccepting()
        let r = call("POST", "/v1/jobs", #"{"prompt": "late"}"#)
        XCTAssertEqual(r.status, 503)
        XCTAssertEqual(errorCode(r), "shutting_down")
        let h = call("GET", "/v1/health")
        XCTAssertEqual(h.status, 503)
        XCTAssertEqual(try h.decode(Health.self).status, "shutting_down")
    }

    func testHigherPriorityRunsFirstThenArrivalOrder() throws {
        let low = try submit(#"{"prompt": "low", "priority": -1}"#)
        let first = try submit()
        let high = try submit(#"{"prompt": "high", "priority": 5}"#)
        let second = try submit()
        let positions = Dictionary(uniqueKeysWithValues: try call("GET", "/v1/jobs").decode(JobList.self).jobs.map { ($0.id, $0.position) })
        XCTAssertEqual(positions[high.id], 1)
        XCTAssertEqual(positions[first.id], 2)
        XCTAssertEqual(positions[second.id], 3)
        XCTAssertEqual(positions[low.id], 4)
        guard case .job(let next) = queue.next(until: Date()) else { return XCTFail("expected a job") }
        XCTAssertEqual(next.job.id, high.id)
    }

    func testCancelingAQueuedJobIsFinalAndSecondCancelConflicts() throws {
        let job = try submit()
        let r = call("DELETE", "/v1/jobs/\(job.id)")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(try r.decode(Job.self).state, .canceled)
        XCTAssertEqual(call("DELETE", "/v1/jobs/\(job.id)").status, 409)
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)/images/0").status, 409)
        XCTAssertEqual(queue.snapshot().queueDepth, 0)
    }

    func testMetricsArePrometheusText() throws {
        _ = try submit()
        let r = call("GET", "/metrics")
        XCTAssertEqual(r.status, 200)
        XCTAssertTrue(r.contentType.hasPrefix("text/plain; version=0.0.4"))
        let text = String(decoding: r.body, as: UTF8.self)
        for line in ["# TYPE sdd_queue_depth gauge", "sdd_queue_depth 1", "sdd_jobs{state=\"queued\"} 1",
                     "sdd_jobs{state=\"finished\"} 0", "# TYPE sdd_step_seconds histogram", "sdd_step_seconds_count 0",
                     "sdd_step_seconds_bucket{le=\"+Inf\"} 0", "# TYPE sdd_peak_rss_bytes gauge"] {
            XCTAssertTrue(text.contains(line + "\n"), "missing \(line) in\n\(text)")
        }
        let rss = text.split(separator: "\n").first { $0.hasPrefix("sdd_peak_rss_bytes ") }.flatMap { Int($0.split(separator: " ")[1]) }
        XCTAssertGreaterThan(rss ?? 0, 0)
    }

    func testModelsAndHealthDescribeTheDaemon() throws {
        let models = try call("GET", "/v1/models").decode(ModelList.self)
        XCTAssertEqual(models.models.first?.name, "tiny")
        XCTAssertEqual(models.models.first?.defaultWidth, 64)
        XCTAssertTrue(models.models.first?.schedulers.contains("euler-a") ?? false)
        let health = try call("GET", "/v1/health").decode(Health.self)
        XCTAssertEqual(health.status, "ok")
        XCTAssertEqual(health.queueDepth, 0)
    }

    func testAJobThatLeavesSettingsOutGetsTheModelsDefaults() throws {
        try useModel(ModelDefaults(width: 96, height: 48, sizeMultiple: 8, steps: 25, guidance: 2.5, scheduler: "ddim"))
        let job = try submit()
        XCTAssertEqual(job.settings.steps, 25)
        XCTAssertEqual(job.settings.guidance, 2.5)
        XCTAssertEqual(job.settings.scheduler, "ddim")
        XCTAssertEqual(job.settings.width, 96)
        XCTAssertEqual(job.settings.height, 48)
        let explicit = try submit(#"{"prompt": "a", "steps": 3, "guidance": 7, "scheduler": "euler", "width": 64}"#)
        XCTAssertEqual(explicit.settings.steps, 3)
        XCTAssertEqual(explicit.settings.guidance, 7)
        XCTAssertEqual(explicit.settings.scheduler, "euler")
        XCTAssertEqual(explicit.settings.width, 64)
        let info = try XCTUnwrap(try call("GET", "/v1/models").decode(ModelList.self).models.first)
        XCTAssertEqual(info.defaultSteps, 25)
        XCTAssertEqual(info.defaultGuidance, 2.5)
        XCTAssertEqual(info.defaultScheduler, "ddim")
        XCTAssertEqual(info.defaultWidth, 96)
    }

    func testAModelWhoseSchedulerSDDLacksNeedsTheRequestToNameOne() throws {
        try useModel(ModelDefaults(width: 64, height: 64, sizeMultiple: 8, scheduler: nil,
                                   schedulerProblem: "the model's scheduler UniPCMultistepScheduler is not supported"))
        let r = call("POST", "/v1/jobs", #"{"prompt": "a cat"}"#)
        XCTAssertEqual(r.status, 400)
        XCTAssertEqual(errorCode(r), "invalid_value")
        XCTAssertTrue(String(decoding: r.body, as: UTF8.self).contains("UniPCMultistepScheduler"))
        XCTAssertEqual(try submit(#"{"prompt": "a cat", "scheduler": "dpm++2m"}"#).settings.scheduler, "dpm++2m")
        XCTAssertNil(try call("GET", "/v1/models").decode(ModelList.self).models.first?.defaultScheduler)
    }

    func testModelDefaultsComeFromTheModelsOwnFiles() throws {
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures")
        let sd2 = try ModelDescription.read(fixtures.appendingPathComponent("tiny-sd2-v"))
        XCTAssertEqual(sd2.defaults, ModelDefaults(width: 96, height: 96, sizeMultiple: 8, steps: 50, guidance: 7.5,
                                                   scheduler: "ddim"))
        let demo = try ModelDescription.read(fixtures.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/demo"))
        XCTAssertEqual(demo.defaults?.steps, 25)
        XCTAssertEqual(demo.defaults?.guidance, 2.5)
        XCTAssertEqual(demo.defaults?.scheduler, "pndm")
    }

    func testServeVAEIsReadWithTheModel() throws {
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures")
        let taesd = try ModelDescription.read(fixtures.appendingPathComponent("tiny-sd"),
                                              vae: fixtures.appendingPathComponent("tiny-taesd"))
        XCTAssertEqual(taesd.defaults?.sizeMultiple, 8)
        XCTAssertEqual(taesd.vae?.lastPathComponent, "tiny-taesd")
        XCTAssertThrowsError(try ModelDescription.read(fixtures.appendingPathComponent("tiny-sd"),
                                                       vae: fixtures.appendingPathComponent("tiny-sd/unet"))) {
            XCTAssertTrue("\($0)".contains("UNet2DConditionModel"), "\($0)")
        }
    }

    func useModel(_ defaults: ModelDefaults) throws {
        router = APIRouter(queue: queue, worker: nil, model: ModelDescription(
            url: URL(fileURLWithPath: "/m/tiny"), name: "tiny", defaults: defaults), keepAlive: 300)
    }

    func testEtaAndTimestepSpacingAreKeptForSchedulersThatUseThemAndRefusedOtherwise() throws {
        let tcd = try submit(#"{"prompt": "a cat", "scheduler": "tcd", "eta": 0.5, "steps": 4}"#)
        XCTAssertEqual(tcd.settings.eta, 0.5)
        XCTAssertEqual(RequestValidation.settings(tcd.settings).eta, 0.5)
        let ddim = try submit(#"{"prompt": "a cat", "scheduler": "ddim", "timestep_spacing": "trailing", "steps": 4}"#)
        XCTAssertEqual(ddim.settings.timestepSpacing, "trailing")
        XCTAssertEqual(RequestValidation.settings(ddim.settings).timestepSpacing, .trailing)
        for (body, words) in [
            (#"{"prompt": "a cat", "scheduler": "ddim", "eta": 0.3}"#, ["eta", "tcd"]),
            (#"{"prompt": "a cat", "scheduler": "tcd", "eta": 1.5}"#, ["eta", "0…1"]),
            (#"{"prompt": "a cat", "scheduler": "lcm", "timestep_spacing": "trailing"}"#, ["timestep_spacing", "lcm"]),
            (#"{"prompt": "a cat", "timestep_spacing": "sideways"}"#, ["sideways", "trailing"]),
        ] {
            let r = call("POST", "/v1/jobs", body)
            XCTAssertEqual(r.status, 400, body)
            XCTAssertEqual(errorCode(r), "invalid_value", body)
            let text = String(decoding: r.body, as: UTF8.self)
            for w in words { XCTAssertTrue(text.contains(w), "\(body): \(text)") }
        }
    }

    func testAStepCountTheModelsSchedulerCannotPlaceIsRefusedAtSubmit() throws {
        queue = JobQueue(spool: try Spool(root: dir.appendingPathComponent("with-scheduler")), maxQueued: 10,
                         logger: .init(label: "test"))
        // The tiny model, opened and checked as the daemon does at start (its scheduler config is SD 1.5's).
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures")
        let model = ModelDescription.check(fixtures.appendingPathComponent("tiny-sd"))
        XCTAssertNil(model.problem)
        router = APIRouter(queue: queue, worker: nil, model: model, keepAlive: 300)
        let lcm = call("POST", "/v1/jobs", #"{"prompt": "a cat", "scheduler": "lcm", "steps": 51}"#)
        XCTAssertEqual(lcm.status, 400)
        XCTAssertTrue(String(decoding: lcm.body, as: UTF8.self).contains("original_inference_steps 50"),
                      String(decoding: lcm.body, as: UTF8.self))
        XCTAssertEqual(call("POST", "/v1/jobs", #"{"prompt": "a cat", "steps": 1000}"#).status, 400, "PNDM cannot place 1000")
        XCTAssertEqual(call("POST", "/v1/jobs", #"{"prompt": "a cat", "scheduler": "lcm", "steps": 50}"#).status, 202)
        XCTAssertEqual(queue.list(uid: alice.uid).count, 1, "refused requests queue nothing")
    }

    func testThePreviewRouteServesTheLatestPreviewToItsOwnerAndStreamsItAsAnEvent() throws {
        let job = try submit()
        let none = call("GET", "/v1/jobs/\(job.id)/preview")
        XCTAssertEqual(none.status, 404)
        XCTAssertTrue(String(decoding: none.body, as: UTF8.self).contains("no preview yet"))

        let received = EventBox()
        let subscription = try XCTUnwrap(queue.subscribe(job.id, uid: alice.uid) { received.append($0) })
        let first: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 1, 2, 3], second: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 4, 5]
        queue.reportPreview(job.id, png: first, step: 2, total: 8)
        queue.reportPreview(job.id, png: second, step: 4, total: 8)
        if let token = subscription.token { queue.unsubscribe(job.id, token: token) }
        let previews = received.events.filter { $0.event == .preview }
        XCTAssertEqual(previews.map(\.step), [2, 4])
        XCTAssertEqual(previews.map(\.total), [8, 8])
        XCTAssertEqual(previews.last?.previewPNG.flatMap { Data(base64Encoded: $0) }, Data(second))

        let r = call("GET", "/v1/jobs/\(job.id)/preview")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.contentType, "image/png")
        XCTAssertEqual(r.body, second, "the latest preview")
        XCTAssertTrue(r.headers.contains { $0.0 == "X-SDD-Preview-Step" && $0.1 == "4/8" })
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)/preview", as: bob).status, 404, "only its owner (or root) sees it")
        XCTAssertEqual(call("GET", "/v1/jobs/\(job.id)/preview", as: root).status, 200)
        XCTAssertEqual(call("DELETE", "/v1/jobs/\(job.id)/preview").status, 405)
    }
}

/// Collects events a queue subscriber receives (called with the queue locked).
final class EventBox: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [JobEvent] = []
    func append(_ e: JobEvent) { lock.lock(); list.append(e); lock.unlock() }
    var events: [JobEvent] { lock.lock(); defer { lock.unlock() }; return list }
}
