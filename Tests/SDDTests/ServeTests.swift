// End-to-end tests of `sdd serve` as a real process on a real Unix socket: results equal `sdd generate`, nothing
// is lost across kill -9 or SIGTERM, 50 clients at once, bad input, another uid, sd_notify and socket activation.

import Foundation
import Pipeline
import XCTest
import TestSupport

final class ServeTests: XCTestCase {
    static let tinyModel = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tiny-sd").path

    var dir: URL!
    var daemons: [ServeProcess] = []
    var socketPath: String { dir.appendingPathComponent("s.sock").path }
    var stateDir: String { dir.appendingPathComponent("state").path }

    override func setUpWithError() throws {
        // Short (sun_path is 108 bytes) and traversable by the unprivileged test uid.
        dir = URL(fileURLWithPath: "/tmp/sdd-serve-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
    }

    override func tearDownWithError() throws {
        for d in daemons { d.stop() }
        daemons = []
        try? FileManager.default.removeItem(at: dir)
    }

    /// Starts `sdd serve` on the test's socket and state dir and waits until /v1/health answers.
    @discardableResult
    func serve(_ extra: [String] = [], environment: [String: String] = [:], waitReady: Bool = true) throws -> ServeProcess {
        let d = try ServeProcess(["serve", "--model", Self.tinyModel, "--socket", socketPath, "--state-dir", stateDir] + extra,
                                 environment: environment, log: dir.appendingPathComponent("daemon-\(daemons.count).log"))
        daemons.append(d)
        if waitReady {
            let up = ServeHTTP.waitUntil(timeout: 60) {
                (try? ServeHTTP.request(self.socketPath, "GET", "/v1/health", timeout: 10))?.status == 200
            }
            XCTAssertTrue(up, "daemon did not come up:\n\(d.stderr)")
        }
        return d
    }

    func submit(_ json: [String: Any]) throws -> String {
        let r = try ServeHTTP.request(socketPath, "POST", "/v1/jobs", json: json)
        XCTAssertEqual(r.status, 202, r.text)
        return try XCTUnwrap(r.object["id"] as? String)
    }

    func job(_ id: String) -> [String: Any] { (try? ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)", timeout: 30))?.object ?? [:] }

    func step(_ id: String) -> Int { ((job(id)["progress"] as? [String: Any])?["step"] as? Int) ?? 0 }

    func waitFinished(_ ids: [String], timeout: Double = 90) {
        let ok = ServeHTTP.waitUntil(timeout: timeout, interval: 0.05) { ids.allSatisfy { job($0)["state"] as? String == "finished" } }
        XCTAssertTrue(ok, "not finished: \(ids.map { job($0)["state"] ?? "?" })\n\(daemons.last?.stderr ?? "")")
    }

    func image(_ id: String, _ n: Int = 0) throws -> PNGImage {
        let r = try ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)/images/\(n)")
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertEqual(r.headers["content-type"], "image/png")
        return try PNGReader.decode(r.body)
    }

    /// What the pipeline gives for the same settings without the daemon.
    func expected(prompt: String, steps: Int, seed: UInt64, scheduler: SchedulerKind) throws -> [UInt8] {
        var s = GenerationSettings(prompt: prompt)
        s.steps = steps
        s.seed = seed
        s.scheduler = scheduler
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: URL(fileURLWithPath: Self.tinyModel)))
        return try pipeline.generate(s).images[0]
    }

    func checkpointStep(_ id: String) -> Int? {
        let url = URL(fileURLWithPath: stateDir).appendingPathComponent("checkpoints/\(id).json")
        guard let data = try? Data(contentsOf: url) else { return nil }
        return (try? JSONDecoder().decode(GenerationState.self, from: data))?.stepIndex
    }

    // MARK: the tests

    func testAServedJobsPNGEqualsSddGenerate() throws {
        try serve()
        let id = try submit(["prompt": "a red circle", "steps": 5, "seed": 42, "scheduler": "euler-a",
                             "negative_prompt": "blurry", "guidance": 6.5, "width": 48, "height": 80])
        waitFinished([id])
        let served = try image(id)
        let ref = dir.appendingPathComponent("ref.png").path
        let gen = Process()
        gen.executableURL = ServeProcess.sddBinary
        gen.arguments = ["generate", "--model", Self.tinyModel, "--steps", "5", "--seed", "42", "--scheduler", "euler-a",
                         "--negative-prompt", "blurry", "--guidance", "6.5", "--width", "48", "--height", "80", "-o", ref,
                         "a red circle"]
        gen.standardOutput = FileHandle.nullDevice
        gen.standardError = FileHandle.nullDevice
        try gen.run()
        gen.waitUntilExit()
        XCTAssertEqual(gen.terminationStatus, 0)
        let reference = try PNGReader.read(from: URL(fileURLWithPath: ref))
        XCTAssertEqual(served.width, 48)
        XCTAssertEqual(served.height, 80)
        assertSameImage(served.rgb, reference.rgb)
        let text = Dictionary(served.text.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(text["seed"], "42")
        XCTAssertEqual(text["model"], "tiny-sd")
    }

    func testKill9MidJobLosesNothingAndTheInterruptedJobGivesTheSameImage() throws {
        let d = try serve(["--checkpoint-every", "3"])
        let steps = 60
        let first = try submit(["prompt": "interrupted", "steps": steps, "seed": 11, "scheduler": "dpm++2m"])
        let others = try (0..<3).map { try submit(["prompt": "queued \($0)", "steps": 4, "seed": 100 + $0]) }
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 60, interval: 0.005) { (checkpointStep(first) ?? 0) >= 3 },
                      "no checkpoint written:\n\(d.stderr)")
        d.signal(SIGKILL)
        XCTAssertNotNil(d.waitExit(timeout: 60))
        let saved = try XCTUnwrap(checkpointStep(first))
        XCTAssertLessThan(saved, steps, "killed mid-job")

        try serve()
        waitFinished([first] + others)
        assertSameImage(try image(first).rgb, try expected(prompt: "interrupted", steps: steps, seed: 11, scheduler: .dpmSolverMultistep))
        for (i, id) in others.enumerated() {
            assertSameImage(try image(id).rgb, try expected(prompt: "queued \(i)", steps: 4, seed: UInt64(100 + i), scheduler: .pndm))
        }
        let all = try ServeHTTP.request(socketPath, "GET", "/v1/jobs").object["jobs"] as? [[String: Any]]
        XCTAssertEqual(Set((all ?? []).compactMap { $0["id"] as? String }), Set([first] + others), "none lost, none duplicated")
    }

    func testSIGTERMCheckpointsExitsZeroQuicklyAndTheJobResumes() throws {
        let d = try serve()
        let steps = 120
        let id = try submit(["prompt": "terminated", "steps": steps, "seed": 5, "scheduler": "euler"])
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 60, interval: 0.005) { step(id) >= 2 }, d.stderr)
        d.signal(SIGTERM)
        // "Quickly" is what systemd holds the daemon to: it must exit within the unit's TimeoutStopSec (2 min)
        // or be killed. What shows it did not just run the job to its end is the checkpoint: mid-job.
        let status = d.waitExit(timeout: 120)
        XCTAssertEqual(status, 0, d.stderr)
        let saved = try XCTUnwrap(checkpointStep(id), "SIGTERM wrote a checkpoint")
        XCTAssertGreaterThanOrEqual(saved, 2)
        XCTAssertLessThan(saved, steps, "stopped between steps, not after the last one")
        XCTAssertFalse(FileManager.default.fileExists(atPath: socketPath), "the socket file is removed on a clean exit")

        try serve()
        waitFinished([id], timeout: 120)
        assertSameImage(try image(id).rgb, try expected(prompt: "terminated", steps: steps, seed: 5, scheduler: .euler))
    }

    func testFiftyConcurrentClientsAllGetTheirJobsAndMemoryStaysFlat() throws {
        let d = try serve()
        // Warm up: the model is loaded by the first job.
        let warm = try submit(["prompt": "warm", "steps": 1, "seed": 1])
        waitFinished([warm])
        let ids = ServeLockedArray()
        let failures = ServeLockedArray()
        let socketPath = self.socketPath
        /// `count` clients at once, each submitting a job and polling it until it is finished.
        func round(_ first: Int, _ count: Int) {
            DispatchQueue.concurrentPerform(iterations: count) { n in
                let i = first + n
                do {
                    let r = try ServeHTTP.request(socketPath, "POST", "/v1/jobs",
                                                  json: ["prompt": "client \(i)", "steps": 2, "seed": i, "priority": i % 3])
                    guard r.status == 202, let id = r.object["id"] as? String else {
                        return failures.append("submit \(i): \(r.status) \(r.text)")
                    }
                    ids.append(id)
                    let done = ServeHTTP.waitUntil(timeout: 600, interval: 0.1) {
                        let j = (try? ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)", timeout: 30))?.object ?? [:]
                        return j["state"] as? String == "finished"
                    }
                    if !done { failures.append("job \(id) of client \(i) did not finish") }
                } catch {
                    failures.append("client \(i): \(error)")
                }
            }
        }
        // The first 25 clients grow the heap to its working size for this load (malloc arenas for the event-loop
        // threads, connection buffers, the pipeline's pools), however the machine schedules them; the same load
        // again must not grow it further: each job leaves only its table entry (~1 KB) behind, so anything past
        // allocator noise (a few MiB of arena slack) is memory held per job or per connection.
        round(0, 25)
        let before = d.residentBytes
        round(25, 25)
        let after = d.residentBytes
        XCTAssertEqual(failures.items, [])
        XCTAssertEqual(ids.items.count, 50)
        XCTAssertEqual(Set(ids.items).count, 50, "no duplicate ids")
        let listed = (try ServeHTTP.request(socketPath, "GET", "/v1/jobs").object["jobs"] as? [[String: Any]]) ?? []
        XCTAssertEqual(listed.count, 51)
        XCTAssertTrue(listed.allSatisfy { $0["state"] as? String == "finished" })
        XCTAssertGreaterThan(before, 0)
        XCTAssertLessThan(after, before + 16 << 20, "RSS grew from \(before >> 20) MiB to \(after >> 20) MiB")
        let metrics = try ServeHTTP.request(socketPath, "GET", "/metrics").text
        XCTAssertTrue(metrics.contains("sdd_jobs{state=\"finished\"} 51\n"), metrics)
        XCTAssertTrue(metrics.contains("sdd_queue_depth 0\n"))
    }

    func testBadInputGetsJSONErrorsAndNeverTouchesAcceptedJobs() throws {
        try serve()
        let id = try submit(["prompt": "keep me", "steps": 2, "seed": 3])
        func code(_ r: ServeHTTPResult) -> String? { (r.object["error"] as? [String: Any])?["code"] as? String }
        var r = try ServeHTTP.request(socketPath, "POST", "/v1/jobs", rawBody: Array("{\"prompt\": ".utf8))
        XCTAssertEqual(r.status, 400)
        XCTAssertEqual(code(r), "bad_json")
        r = try ServeHTTP.request(socketPath, "POST", "/v1/jobs", json: ["prompt": "x", "steps": "many"])
        XCTAssertEqual(code(r), "wrong_type")
        r = try ServeHTTP.request(socketPath, "POST", "/v1/jobs", json: ["prompt": "x", "stepz": 3])
        XCTAssertEqual(code(r), "unknown_field")
        r = try ServeHTTP.request(socketPath, "POST", "/v1/jobs", json: ["prompt": "x", "width": 100])
        XCTAssertEqual(code(r), "invalid_value")
        r = try ServeHTTP.request(socketPath, "POST", "/v1/jobs", rawBody: [UInt8](repeating: 0x7B, count: 1 << 20))
        XCTAssertEqual(r.status, 413)
        XCTAssertEqual(code(r), "body_too_large")
        for path in ["/v1/jobs/../../etc/passwd", "/v1/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/v1/jobs/\(id)/images/..%2f..%2fjobs"] {
            r = try ServeHTTP.request(socketPath, "GET", path)
            XCTAssertEqual(r.status, 404, path)
            XCTAssertFalse(r.text.contains("root:"), path)
        }
        r = try ServeHTTP.request(socketPath, "PATCH", "/v1/jobs/\(id)")
        XCTAssertEqual(r.status, 405)
        waitFinished([id])
        XCTAssertEqual((try ServeHTTP.request(socketPath, "GET", "/v1/jobs").object["jobs"] as? [[String: Any]])?.count, 1)
    }

    func testTypeErrorsNameTheFieldImageIndexesAreCanonicalAndAbsoluteTargetsWork() throws {
        try serve()
        func error(_ r: ServeHTTPResult) -> (code: String?, message: String) {
            let e = r.object["error"] as? [String: Any]
            return (e?["code"] as? String, e?["message"] as? String ?? r.text)
        }
        for (body, field) in [(#"{"prompt": "x", "steps": 2.5}"#, "steps"), (#"{"prompt": "x", "seed": -1}"#, "seed"),
                              (#"{"prompt": "x", "steps": 9223372036854775808}"#, "steps"),
                              (#"{"prompt": "x", "seed": 18446744073709551617}"#, "seed")] {
            let r = try ServeHTTP.request(socketPath, "POST", "/v1/jobs", rawBody: Array(body.utf8))
            XCTAssertEqual(r.status, 400, body)
            XCTAssertEqual(error(r).code, "wrong_type", body)
            XCTAssertTrue(error(r).message.hasPrefix("field \"\(field)\": expected an integer from "), error(r).message)
        }
        let null = try ServeHTTP.request(socketPath, "POST", "/v1/jobs", rawBody: Array("null".utf8))
        XCTAssertEqual(null.status, 400)
        XCTAssertTrue(error(null).message.hasPrefix("the body must be a JSON object"), error(null).message)
        let id = try submit(["prompt": "index", "steps": 1, "seed": 4])
        waitFinished([id])
        XCTAssertEqual(try ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)/images/0").status, 200)
        for index in ["00", "0001"] {
            XCTAssertEqual(try ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)/images/\(index)").status, 404, index)
        }
        let health = try ServeHTTP.request(socketPath, "GET", "http://localhost/v1/health")
        XCTAssertEqual(health.status, 200, health.text)
        XCTAssertEqual(health.object["status"] as? String, "ok")
    }

    func testSlowReadersOfALargeImageKeepMemoryBoundedAndGetTheFilesBytes() throws {
        let slots = 32
        let d = try serve(["--max-downloads", "\(slots)"])
        let id = try submit(["prompt": "large", "steps": 1, "seed": 5])
        waitFinished([id])
        // The tiny model draws 64×64 images; a large "image" is put in its place: 8 MiB of incompressible bytes
        // (the daemon serves the file as it is on disk).
        let size = 8 << 20
        var generator = SystemRandomNumberGenerator()
        let words = (0..<(size / 8)).map { _ in generator.next() as UInt64 }
        let large = words.withUnsafeBytes { Array($0) }
        let imageURL = URL(fileURLWithPath: stateDir).appendingPathComponent("images/\(id)-0.png")
        try Data(large).write(to: imageURL)
        // One complete download first: it is the file, byte for byte, and it warms up the allocator.
        let whole = try ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)/images/0")
        XCTAssertEqual(whole.status, 200)
        XCTAssertTrue(whole.body == large, "got \(whole.body.count) bytes that differ from the file")
        let metrics = { (try? ServeHTTP.request(self.socketPath, "GET", "/metrics", timeout: 5))?.text ?? "" }
        let before = d.residentBytes
        // `slots` clients ask for the image and read nothing.
        var readers: [Int32] = []
        defer { for fd in readers { close(fd) } }
        for _ in 0..<slots {
            let fd = try ServeHTTP.connect(socketPath, timeout: 20)
            readers.append(fd)
            let request = Array("GET /v1/jobs/\(id)/images/0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)
            XCTAssertEqual(request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, request.count)
        }
        let stalled = ServeHTTP.waitUntil(timeout: 20) { metrics().contains("\nsdd_image_downloads \(slots)\n") }
        XCTAssertTrue(stalled, "the daemon did not start \(slots) downloads:\n\(metrics())")
        let during = d.residentBytes
        print("\(slots) stalled downloads of \(size >> 20) MiB: daemon RSS \(before >> 20) MiB -> \(during >> 20) MiB")
        // Buffering each response would hold slots × 8 MiB = 256 MiB. Streamed, a stalled download holds a file
        // descriptor, a FileRegion and the connection's handlers (a few KiB; the socket buffers are the
        // kernel's, not RSS); 32 MiB leaves room for allocator arenas and the thread pool's stacks.
        XCTAssertLessThan(during - before, 32 << 20,
                          "RSS grew from \(before >> 20) MiB to \(during >> 20) MiB with \(slots) stalled downloads")
        // One more is refused, not queued in memory.
        let extra = try ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)/images/0")
        XCTAssertEqual(extra.status, 429, extra.text)
        XCTAssertEqual((extra.object["error"] as? [String: Any])?["code"] as? String, "too_many_downloads")
        // The stalled readers now read: each gets the file's bytes. (Straight into one buffer and compared with
        // memcmp: the daemon closes a connection that sends nothing for its 30 s idle timeout, so the reading
        // must not crawl in a debug build on a loaded machine.)
        var raw = [UInt8](repeating: 0, count: size + 4096)
        for fd in readers {
            var count = 0
            while count < raw.count {
                let n = raw.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + count, $0.count - count, 0) }
                if n <= 0 { break }
                count += n
            }
            let prefix = Array(raw[0..<min(count, 4096)])
            let r = try ServeHTTP.parse(prefix)
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.headers["content-length"], "\(size)")
            let start = (ServeHTTP.find([13, 10, 13, 10], in: prefix, from: 0) ?? 0) + 4
            let same = count - start == size && raw.withUnsafeBytes { all in
                large.withUnsafeBytes { memcmp(all.baseAddress! + start, $0.baseAddress!, size) == 0 }
            }
            XCTAssertTrue(same, "a slow reader got \(count - start) bytes that differ from the file's \(size)")
        }
        let freed = ServeHTTP.waitUntil(timeout: 20) { metrics().contains("\nsdd_image_downloads 0\n") }
        XCTAssertTrue(freed, "download slots were not freed:\n\(metrics())")
    }

    func testBadDownloadAndHeartbeatOptionsAreRefusedByName() throws {
        for (option, value) in [("--max-downloads", "0"), ("--event-heartbeat", "0"), ("--event-heartbeat", "forever"),
                                ("--event-heartbeat", "soon")] {
            let d = try serve([option, value], waitReady: false)
            // A usage error: 64 from the option checks (as --queue-limit 0), 2 from the configuration's.
            let status = d.waitExit(timeout: 30)
            XCTAssertTrue(status == 2 || status == 64, "\(option) \(value): exit \(String(describing: status)): \(d.stderr)")
            XCTAssertTrue(d.stderr.contains(option), "\(option) \(value): \(d.stderr)")
        }
    }

    func testUnparsableRequestsGetAJSON400AndTheConnectionClosesAtOnce() throws {
        let d = try serve()
        let requestLine = "GET /v1/" + String(repeating: "a", count: 100 << 10) + " HTTP/1.1\r\nHost: x\r\n\r\n"
        let header = "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + String(repeating: "b", count: 1 << 20) + "\r\n\r\n"
        let cases: [(String, [UInt8])] = [
            ("garbage", Array("\u{1}\u{2}garbage\r\n\r\n".utf8) + [0xFF, 0xFE, 0x00]),
            ("100 KB request line", Array(requestLine.utf8)),
            ("1 MB header", Array(header.utf8)),
        ]
        for (name, bytes) in cases {
            // The daemon's idle timeout is 30 s: a connection left open would outlast this wait.
            let started = Date()
            let (raw, closed) = try ServeHTTP.sendRaw(socketPath, bytes, timeout: 15)
            XCTAssertTrue(closed, "\(name): the daemon kept the connection open")
            XCTAssertLessThan(Date().timeIntervalSince(started), 15, name)
            let r = try ServeHTTP.parse(raw)
            XCTAssertEqual(r.status, 400, name)
            XCTAssertEqual(r.headers["connection"], "close", name)
            XCTAssertEqual(r.headers["content-type"], "application/json", name)
            let error = r.object["error"] as? [String: Any]
            XCTAssertEqual(error?["code"] as? String, "bad_request", "\(name): \(r.text)")
            XCTAssertFalse((error?["message"] as? String ?? "").isEmpty, name)
        }
        // Many such connections left open by their clients hold no descriptors in the daemon.
        let fds = { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(d.pid)/fd").count) ?? -1 }
        let before = fds()
        var clients: [Int32] = []
        defer { for fd in clients { close(fd) } }
        for _ in 0..<100 {
            let fd = try ServeHTTP.connect(socketPath, timeout: 15)
            clients.append(fd)
            _ = Array("NOT HTTP\r\n\r\n".utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        let released = ServeHTTP.waitUntil(timeout: 20) { fds() <= before }
        XCTAssertTrue(released, "the daemon holds \(fds()) descriptors, \(before) before 100 garbage connections")
        XCTAssertEqual(try ServeHTTP.request(socketPath, "GET", "/v1/health").status, 200)
    }

    func testAnotherUidCannotSeeOrCancelYourJob() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to switch to uid 65534") }
        guard let curl = ["/usr/bin/curl", "/bin/curl"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }),
              FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else { throw XCTSkip("needs curl and setpriv") }
        try serve(["--socket-group", "65534"])
        var st = stat()
        XCTAssertEqual(stat(socketPath, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o660)
        XCTAssertEqual(st.st_gid, 65534)
        let id = try submit(["prompt": "root's", "steps": 2, "seed": 1])
        func asNobody(_ method: String, _ path: String) throws -> (status: String, body: String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            p.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", curl, "-s", "-X", method,
                           "--unix-socket", socketPath, "-w", "\n%{http_code}", "http://sdd\(path)"]
            let out = Pipe()
            p.standardOutput = out
            p.standardError = FileHandle.nullDevice
            try p.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            return (String(lines.last ?? ""), lines.dropLast().joined(separator: "\n"))
        }
        XCTAssertEqual(try asNobody("GET", "/v1/jobs/\(id)").status, "404")
        XCTAssertEqual(try asNobody("GET", "/v1/jobs/\(id)/events").status, "404")
        XCTAssertEqual(try asNobody("DELETE", "/v1/jobs/\(id)").status, "404")
        XCTAssertEqual(try asNobody("GET", "/v1/jobs/\(id)/images/0").status, "404")
        let list = try asNobody("GET", "/v1/jobs")
        XCTAssertEqual(list.status, "200")
        XCTAssertFalse(list.body.contains(id))
        // Nobody's own job is theirs.
        XCTAssertEqual(try asNobody("GET", "/v1/health").status, "200")
        waitFinished([id])
        XCTAssertEqual(job(id)["state"] as? String, "finished", "the other uid's cancel did nothing")
    }

    func testNotifySocketSeesReadyStatusWatchdogAndStopping() throws {
        let notifyPath = dir.appendingPathComponent("notify.sock").path
        let listener = try ServeNotifyListener(path: notifyPath)
        defer { listener.close() }
        let d = try serve(environment: ["NOTIFY_SOCKET": notifyPath, "WATCHDOG_USEC": "400000"])
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 60) { listener.received.contains { $0.contains("READY=1") } })
        let id = try submit(["prompt": "status", "steps": 20, "seed": 2])
        waitFinished([id])
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 60) { listener.received.contains { $0.contains("WATCHDOG=1") } })
        d.signal(SIGTERM)
        XCTAssertEqual(d.waitExit(timeout: 60), 0)
        let all = listener.received
        XCTAssertTrue(all.contains { $0.contains("STOPPING=1") }, "\(all)")
        XCTAssertTrue(all.contains { $0.contains("STATUS=idle") }, "\(all)")
        XCTAssertTrue(all.contains { $0.range(of: #"STATUS=job [0-9a-f]{4}: step \d+/\d+, \d+ queued"#, options: .regularExpression) != nil },
                      "\(all)")
    }

    func testSocketActivationServesAJob() throws {
        let activate = "/usr/bin/systemd-socket-activate"
        guard FileManager.default.isExecutableFile(atPath: activate) else { throw XCTSkip("systemd-socket-activate is not installed") }
        let notifyPath = dir.appendingPathComponent("notify.sock").path
        let listener = try ServeNotifyListener(path: notifyPath)
        defer { listener.close() }
        // systemd-socket-activate starts its child with an empty environment but for what -E names: pass the
        // test's whole environment on (OPENBLAS_* among it), so the daemon runs as this process would.
        let passed = ProcessInfo.processInfo.environment.keys.filter {
            !ServeProcess.clearedVariables.contains($0) && $0.range(of: "^[A-Za-z_][A-Za-z0-9_]*$", options: .regularExpression) != nil
        }
        let d = try ServeProcess(executable: URL(fileURLWithPath: activate),
                                 ["-l", socketPath, "-E", "NOTIFY_SOCKET"] + passed.sorted().flatMap { ["-E", $0] }
                                 + [ServeProcess.sddBinary.path, "serve",
                                  "--model", Self.tinyModel, "--state-dir", stateDir, "--socket", dir.appendingPathComponent("ignored.sock").path],
                                 environment: ["NOTIFY_SOCKET": notifyPath], log: dir.appendingPathComponent("activate.log"))
        daemons.append(d)
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 60) { FileManager.default.fileExists(atPath: socketPath) }, d.stderr)
        // The first connection starts the daemon on the inherited socket.
        let id = try submit(["prompt": "activated", "steps": 3, "seed": 9])
        waitFinished([id])
        assertSameImage(try image(id).rgb, try expected(prompt: "activated", steps: 3, seed: 9, scheduler: .pndm))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("ignored.sock").path), "--socket is ignored")
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 60) { listener.received.contains { $0.contains("READY=1") } })
        d.signal(SIGTERM)
        XCTAssertEqual(d.waitExit(timeout: 60), 0, d.stderr)
    }
}

/// A bound AF_UNIX datagram socket that collects sd_notify messages on a background thread.
final class ServeNotifyListener: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()
    private var messages: [String] = []
    private var closed = false

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw ServeClientError(description: "bind \(path): \(errno)") }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let thread = Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 4096)
            while !isClosed {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n > 0 {
                    lock.lock()
                    messages.append(String(decoding: buf[0..<n], as: UTF8.self))
                    lock.unlock()
                }
            }
            Glibc.close(fd)
        }
        thread.start()
    }

    private var isClosed: Bool {
        lock.lock()
        defer { lock.unlock() }
        return closed
    }

    var received: [String] {
        lock.lock()
        defer { lock.unlock() }
        return messages
    }

    func close() {
        lock.lock()
        closed = true
        lock.unlock()
    }
}

/// A thread-safe list of strings for concurrent clients.
final class ServeLockedArray: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [String] = []
    func append(_ s: String) {
        lock.lock()
        storage.append(s)
        lock.unlock()
    }
    var items: [String] {
        lock.lock()
        defer { lock.unlock() }
        return storage
    }
}
