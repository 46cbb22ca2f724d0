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

    func makeRouter(maxQueued: Int) throws {
        queue = JobQueue(spool: try Spool(root: dir), maxQueued: maxQueued, logger: .init(label: "test"))
        router = APIRouter(queue: queue, worker: nil, model: ModelDescription(url: URL(fileURLWithPath: "/m/tiny"), name: "tiny",
                                                                             defaults: defaults), keepAlive: 300)
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
        router = APIRouter(queue: queue, worker: nil, model: ModelDescription(
            url: URL(fileURLWithPath: "/m/tiny"), name: "tiny",
            defaults: ModelDefaults(width: 64, height: 64, sizeMultiple: 8, scheduler: .stableDiffusion15)), keepAlive: 300)
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
