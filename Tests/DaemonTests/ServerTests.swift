// The API server on a real Unix socket with the real worker and the committed tiny model: a job's PNG equals the
// pipeline's own output, events stream, limits hold against slow, half-closed and oversized clients, and a
// worker stopped mid-job resumes from its checkpoint to the same image.

import Daemon
import Foundation
import NIOCore
import Pipeline
import SDDAPI
import XCTest
import TestSupport

final class ServerTests: XCTestCase {
    static let tinyModel = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tiny-sd")

    var dir: URL!
    var socketPath: String { dir.appendingPathComponent("s.sock").path }
    var running: [(APIServer, Channel, Worker)] = []

    override func setUpWithError() throws {
        dir = URL(fileURLWithPath: "/tmp/sdd-srv-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() async throws {
        for (server, channel, worker) in running {
            await server.stop(channel)
            await worker.stop()
        }
        running = []
        try? FileManager.default.removeItem(at: dir)
    }

    struct Daemon {
        let queue: JobQueue
        let worker: Worker
    }

    @discardableResult
    func startDaemon(limits: ConnectionLimits = ConnectionLimits(), checkpointEvery: Int = 5,
                     mode: mode_t = 0o660, previewEvery: Int? = nil, memoryBudget: Int? = nil) async throws -> Daemon {
        let queue = JobQueue(spool: try Spool(root: dir.appendingPathComponent("state")), maxQueued: 100,
                             logger: .init(label: "test"))
        let worker = Worker(queue: queue, modelURL: Self.tinyModel, keepAlive: 60, checkpointEvery: checkpointEvery,
                            logger: .init(label: "test"))
        worker.previewEvery = previewEvery
        worker.memoryBudget = memoryBudget
        let router = APIRouter(queue: queue, worker: worker, model: try ModelDescription.read(Self.tinyModel), keepAlive: 60)
        let server = APIServer(address: .path(socketPath, mode: mode, group: nil), router: router, limits: limits,
                               logger: .init(label: "test"))
        let channel = try await server.start()
        worker.start()
        running.append((server, channel, worker))
        return Daemon(queue: queue, worker: worker)
    }

    func submit(_ request: JobRequest) throws -> Job {
        let r = try UnixHTTPClient.request(socketPath, "POST", "/v1/jobs", body: UnixHTTPClient.json(request))
        XCTAssertEqual(r.status, 202, r.text)
        return try r.json(Job.self)
    }

    func events(_ id: String) throws -> [JobEvent] {
        let r = try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(id)/events", timeout: 60)
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.headers["content-type"], "application/x-ndjson")
        return try r.text.split(separator: "\n").map { try JSONDecoder().decode(JobEvent.self, from: Data($0.utf8)) }
    }

    func directImage(_ request: JobRequest) throws -> [UInt8] {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: Self.tinyModel))
        return try pipeline.generate(RequestValidation.settings(request)).images[0]
    }

    func testAnEventStreamCarriesHeartbeatsAtTheAdvertisedInterval() async throws {
        try await startDaemon(limits: ConnectionLimits(eventHeartbeat: 0.1))
        // Long enough to outlast the test (euler: pndm's 1000 steps are a job that fails, issue #12).
        let job = try submit(JobRequest(prompt: "a long job", steps: 500, seed: 1, scheduler: "euler"))
        let fd = try UnixHTTPClient.connect(socketPath, timeout: 10)
        defer { close(fd) }
        try UnixHTTPClient.send(fd, Array("GET /v1/jobs/\(job.id)/events HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        while text.components(separatedBy: "\"event\":\"heartbeat\"").count < 3 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            text += String(decoding: buffer[0..<n], as: UTF8.self)
        }
        XCTAssertEqual(text.components(separatedBy: "\"event\":\"heartbeat\"").count, 3, "two heartbeats: \(text)")
        XCTAssertTrue(text.contains("SDD-Heartbeat-Interval: 0.1\r\n"), text)
        XCTAssertFalse(text.contains("\"event\":\"failed\""), text)
        _ = try UnixHTTPClient.request(socketPath, "DELETE", "/v1/jobs/\(job.id)")
    }

    func testAnUnparsableRequestGetsAJSON400AndTheConnectionCloses() async throws {
        // The idle timeout (30 s) would close it too, but only long after this wait.
        try await startDaemon()
        let fd = try UnixHTTPClient.connect(socketPath, timeout: 10)
        defer { close(fd) }
        try UnixHTTPClient.send(fd, Array("\u{0}\u{1} not http\r\n\r\n".utf8))
        let (closed, bytes) = UnixHTTPClient.waitForClose(fd, timeout: 10)
        XCTAssertTrue(closed, "still open")
        let r = try UnixHTTPClient.parse(bytes)
        XCTAssertEqual(r.status, 400)
        XCTAssertEqual(r.headers["connection"], "close")
        XCTAssertEqual(try r.json(APIErrorResponse.self).error.code, .badRequest)
    }

    func testAJobStreamsEventsAndItsPNGEqualsThePipelinesOutput() async throws {
        try await startDaemon()
        let job = try submit(JobRequest(prompt: "a red circle", steps: 6, seed: 42, scheduler: "euler-a"))
        let stream = try events(job.id)
        XCTAssertEqual(stream.last?.event, .finished, "\(stream)")
        XCTAssertEqual(stream.last?.images, 1)
        let steps = stream.filter { $0.event == .step }.compactMap(\.step)
        XCTAssertEqual(steps, steps.isEmpty ? [] : Array(steps[0]...6), "steps arrive in order")
        XCTAssertTrue(stream.contains { $0.event == .step && $0.total == 6 && $0.etaSeconds != nil } || steps.isEmpty)

        let png = try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(job.id)/images/0")
        XCTAssertEqual(png.status, 200)
        XCTAssertEqual(png.headers["content-type"], "image/png")
        let image = try PNGReader.decode(png.body)
        XCTAssertEqual(image.rgb, try directImage(job.settings))
        let done = try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(job.id)").json(Job.self)
        XCTAssertEqual(done.state, .finished)
        XCTAssertEqual(done.progress, JobProgress(step: 6, total: 6, etaSeconds: 0))
        XCTAssertEqual(try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(job.id)/images/1").status, 404)
    }

    /// The preview tests' common run: a daemon previewing every 2 steps (`configure` sets its worker up before any
    /// job runs), a finished two-image LCM job of 6 steps, and the pipeline's own run of the same settings without
    /// previews, whose images the job's must equal byte for byte. Returns the served preview — step 4 of 6, the last
    /// of steps 2 and 4 — and that run's step-4 progress, whose latents it shows.
    func runPreviewJob(configure: (Worker) -> Void = { _ in }) async throws -> (preview: PNGImage, stepFour: StepProgress) {
        configure(try await startDaemon(previewEvery: 2).worker)
        let job = try submit(JobRequest(prompt: "a red circle", steps: 6, seed: 42, scheduler: "lcm", count: 2))
        XCTAssertEqual(try events(job.id).last?.event, .finished)
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: Self.tinyModel))
        var stepFour: StepProgress?
        let direct = try pipeline.generate(RequestValidation.settings(job.settings)) { p in
            if p.step == 4 { stepFour = p }
            return true
        }
        for n in 0..<2 {
            let png = try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(job.id)/images/\(n)")
            XCTAssertEqual(try PNGReader.decode(png.body).rgb, direct.images[n], "image \(n) is the same as without previews")
        }
        let preview = try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(job.id)/preview")
        XCTAssertEqual(preview.status, 200)
        XCTAssertEqual(preview.headers["content-type"], "image/png")
        XCTAssertEqual(preview.headers["x-sdd-preview-step"], "4/6")
        return (try PNGReader.decode(preview.body), try XCTUnwrap(stepFour))
    }

    func testAJobsLatestLatentPreviewIsServedAndTheImageIsTheSameAsWithoutPreviews() async throws {
        let (image, stepFour) = try await runPreviewJob()
        XCTAssertEqual([image.width, image.height], [8, 8], "one pixel per latent cell of the 64×64 image")
        XCTAssertEqual(image.rgb, try XCTUnwrap(LatentPreview.rgb(stepFour.latents)).rgb)
    }

    func testTheSocketIs0660AndAStaleSocketFileIsReplaced() async throws {
        // A socket file nobody listens on, as a crashed daemon leaves it.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in socketPath.utf8.enumerated() { raw[i] = b } }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)
        try await startDaemon()
        var st = stat()
        XCTAssertEqual(stat(socketPath, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o660)
        XCTAssertEqual(try UnixHTTPClient.request(socketPath, "GET", "/v1/health").status, 200)
    }

    func testASecondDaemonRefusesALiveSocketAndNonSocketFiles() async throws {
        try await startDaemon()
        let queue = JobQueue(spool: try Spool(root: dir.appendingPathComponent("other")), maxQueued: 1, logger: .init(label: "t"))
        let router = APIRouter(queue: queue, worker: nil, model: ModelDescription(url: nil, name: "", defaults: nil), keepAlive: nil)
        let second = APIServer(address: .path(socketPath, mode: 0o660, group: nil), router: router, logger: .init(label: "t"))
        do {
            _ = try await second.start()
            XCTFail("bound over a live socket")
        } catch { XCTAssertTrue("\(error)".contains("already listening"), "\(error)") }
        let file = dir.appendingPathComponent("plain").path
        _ = FileManager.default.createFile(atPath: file, contents: Data("keep me".utf8))
        let third = APIServer(address: .path(file, mode: 0o660, group: nil), router: router, logger: .init(label: "t"))
        do {
            _ = try await third.start()
            XCTFail("replaced a regular file")
        } catch { XCTAssertTrue("\(error)".contains("not a socket"), "\(error)") }
        XCTAssertEqual(FileManager.default.contents(atPath: file), Data("keep me".utf8))
        XCTAssertEqual(try UnixHTTPClient.request(socketPath, "GET", "/v1/health").status, 200, "the first still serves")
    }

    func testBodiesOverTheLimitAre413() async throws {
        try await startDaemon()
        let big = [UInt8](repeating: 0x20, count: 70_000)
        let r = try UnixHTTPClient.request(socketPath, "POST", "/v1/jobs", body: big)
        XCTAssertEqual(r.status, 413)
        XCTAssertEqual(try r.json(APIErrorResponse.self).error.code, .bodyTooLarge)
        // Chunked, with no length up front.
        let fd = try UnixHTTPClient.connect(socketPath)
        defer { close(fd) }
        try UnixHTTPClient.send(fd, Array("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
        let chunk = Array("8000\r\n".utf8) + [UInt8](repeating: 0x20, count: 0x8000) + Array("\r\n".utf8)
        for _ in 0..<3 { try? UnixHTTPClient.send(fd, chunk) }
        try? UnixHTTPClient.send(fd, Array("0\r\n\r\n".utf8))
        XCTAssertEqual(try UnixHTTPClient.parse(UnixHTTPClient.readAll(fd)).status, 413)
        XCTAssertEqual(try UnixHTTPClient.request(socketPath, "GET", "/v1/health").status, 200)
    }

    func testATricklingClientIsCutOffAtTheRequestDeadlineWithoutBlockingOthers() async throws {
        // The idle timeout (60 s) never fires while a byte arrives every 0.1 s; only the 2 s request deadline can
        // close this client, so its closing is the event the test waits for (with a generous timeout).
        try await startDaemon(limits: ConnectionLimits(idleTimeout: 60, requestTimeout: 2))
        let slow = try UnixHTTPClient.connect(socketPath, timeout: 60)
        defer { close(slow) }
        try UnixHTTPClient.send(slow, Array("GET /v1/hea".utf8))
        XCTAssertEqual(try UnixHTTPClient.request(socketPath, "GET", "/v1/health").status, 200,
                       "others are served while it trickles")
        var outcome: (closed: Bool, bytes: [UInt8]) = (false, [])
        let deadline = Date().addingTimeInterval(120)
        while !outcome.closed, Date() < deadline {
            if (try? UnixHTTPClient.send(slow, Array("l".utf8))) == nil {
                outcome = UnixHTTPClient.waitForClose(slow, timeout: 60)
                break
            }
            outcome = UnixHTTPClient.waitForClose(slow, timeout: 0.1)
        }
        XCTAssertTrue(outcome.closed, "the request deadline closed the trickling client")
        XCTAssertEqual(outcome.bytes, [], "without an answer")
    }

    func testASilentClientIsClosedAtTheIdleTimeout() async throws {
        try await startDaemon(limits: ConnectionLimits(idleTimeout: 1, requestTimeout: 60))
        let silent = try UnixHTTPClient.connect(socketPath, timeout: 60)
        defer { close(silent) }
        XCTAssertEqual(try UnixHTTPClient.request(socketPath, "GET", "/v1/health").status, 200)
        let outcome = UnixHTTPClient.waitForClose(silent, timeout: 60)
        XCTAssertTrue(outcome.closed, "the idle timeout closed the silent client")
        XCTAssertEqual(outcome.bytes, [])
    }

    func testAHalfClosedClientStillGetsItsAnswer() async throws {
        try await startDaemon()
        let fd = try UnixHTTPClient.connect(socketPath)
        defer { close(fd) }
        try UnixHTTPClient.send(fd, Array("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        shutdown(fd, Int32(SHUT_WR))
        let r = try UnixHTTPClient.parse(UnixHTTPClient.readAll(fd))
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(try r.json(Health.self).status, "ok")
    }

    func testCancelingARunningJobStopsItBetweenSteps() async throws {
        let daemon = try await startDaemon()
        let job = try submit(JobRequest(prompt: "long", steps: 500, width: 64, height: 64, seed: 1))
        let deadline = Date().addingTimeInterval(30)
        while let j = daemon.queue.job(job.id, uid: 0), j.state == .queued || (j.state == .running && (j.progress?.step ?? 0) < 1),
              Date() < deadline { usleep(10_000) }
        let r = try UnixHTTPClient.request(socketPath, "DELETE", "/v1/jobs/\(job.id)")
        XCTAssertEqual(r.status, 202, r.text)
        let stream = try events(job.id)
        XCTAssertEqual(stream.last?.event, .canceled)
        let final = try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(job.id)").json(Job.self)
        XCTAssertEqual(final.state, .canceled)
        XCTAssertLessThan(final.progress?.step ?? 500, 500)
    }

    func testAWorkerStoppedMidJobResumesFromItsCheckpointToTheSameImage() async throws {
        let state = dir.appendingPathComponent("state")
        let request = try RequestValidation.resolve(
            JobRequest(prompt: "a blue square", steps: 40, seed: 7, scheduler: "dpm++2m"), defaults: nil)
        var queue = JobQueue(spool: try Spool(root: state), maxQueued: 10, logger: .init(label: "t"))
        let job = try queue.submit(request, owner: 0)
        var worker = Worker(queue: queue, modelURL: Self.tinyModel, keepAlive: nil, checkpointEvery: 3, logger: .init(label: "t"))
        let stopAt = Stopper(worker: worker)
        _ = queue.subscribe(job.id, uid: 0) { event in
            if event.event == .step, (event.step ?? 0) >= 5 { stopAt.fire() }
        }
        worker.start()
        await stopAt.done()
        let paused = try JSONDecoder().decode(JobRecord.self, from: Data(contentsOf: state.appendingPathComponent("jobs/\(job.id).json")))
        XCTAssertEqual(paused.job.state, .running, "on disk it is still running, to resume")
        let checkpoint = queue.spool.loadCheckpoint(job.id)
        XCTAssertNotNil(checkpoint)
        let savedStep = try JSONDecoder().decode(GenerationState.self, from: checkpoint ?? Data()).stepIndex
        XCTAssertGreaterThanOrEqual(savedStep, 5)
        XCTAssertLessThan(savedStep, 40)

        queue = JobQueue(spool: try Spool(root: state), maxQueued: 10, logger: .init(label: "t"))
        worker = Worker(queue: queue, modelURL: Self.tinyModel, keepAlive: nil, logger: .init(label: "t"))
        let resumedAt = Box<Int?>(nil)
        _ = queue.subscribe(job.id, uid: 0) { event in if event.event == .started { resumedAt.value = event.step } }
        worker.start()
        let deadline = Date().addingTimeInterval(60)
        while queue.job(job.id, uid: 0)?.state != .finished, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        await worker.stop()
        XCTAssertEqual(queue.job(job.id, uid: 0)?.state, .finished)
        XCTAssertEqual(resumedAt.value, savedStep, "resumed from the checkpoint, not step 0")
        let image = try PNGReader.read(from: queue.spool.imageURL(job.id, 0))
        XCTAssertEqual(image.rgb, try directImage(request))
        XCTAssertNil(queue.spool.loadCheckpoint(job.id), "the checkpoint is removed once finished")
    }
}

/// Stops a worker from another thread when told (the queue calls subscribers with its lock held).
final class Stopper: @unchecked Sendable {
    let worker: Worker
    private let lock = NSLock()
    private var fired = false
    private let stopped = DispatchSemaphore(value: 0)

    init(worker: Worker) { self.worker = worker }

    func fire() {
        lock.lock()
        defer { lock.unlock() }
        guard !fired else { return }
        fired = true
        worker.requestStopSoon()
        Task {
            await worker.stop()
            stopped.signal()
        }
    }

    func done() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                self.stopped.wait()
                c.resume()
            }
        }
    }
}

final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ v: T) { stored = v }
    var value: T {
        get { lock.lock(); defer { lock.unlock() }; return stored }
        set { lock.lock(); stored = newValue; lock.unlock() }
    }
}
