// End-to-end tests of `sdd serve` as a real process on a real Unix socket: results equal `sdd generate`, nothing
// is lost across kill -9 or SIGTERM, 50 clients at once, bad input, another uid, sd_notify and socket activation.

import Foundation
import Pipeline
import XCTest

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
            let up = ServeHTTP.waitUntil(timeout: 30) {
                (try? ServeHTTP.request(self.socketPath, "GET", "/v1/health", timeout: 2))?.status == 200
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

    func job(_ id: String) -> [String: Any] { (try? ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)", timeout: 5))?.object ?? [:] }

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
        XCTAssertEqual(served.rgb, reference.rgb)
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
        XCTAssertNotNil(d.waitExit(timeout: 10))
        let saved = try XCTUnwrap(checkpointStep(first))
        XCTAssertLessThan(saved, steps, "killed mid-job")

        try serve()
        waitFinished([first] + others)
        XCTAssertEqual(try image(first).rgb, try expected(prompt: "interrupted", steps: steps, seed: 11, scheduler: .dpmSolverMultistep))
        for (i, id) in others.enumerated() {
            XCTAssertEqual(try image(id).rgb, try expected(prompt: "queued \(i)", steps: 4, seed: UInt64(100 + i), scheduler: .pndm))
        }
        let all = try ServeHTTP.request(socketPath, "GET", "/v1/jobs").object["jobs"] as? [[String: Any]]
        XCTAssertEqual(Set((all ?? []).compactMap { $0["id"] as? String }), Set([first] + others), "none lost, none duplicated")
    }

    func testSIGTERMCheckpointsExitsZeroQuicklyAndTheJobResumes() throws {
        let d = try serve()
        let steps = 120
        let id = try submit(["prompt": "terminated", "steps": steps, "seed": 5, "scheduler": "euler"])
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 60, interval: 0.005) { step(id) >= 2 }, d.stderr)
        let clock = Date()
        d.signal(SIGTERM)
        let status = d.waitExit(timeout: 10)
        XCTAssertEqual(status, 0, d.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(clock), 5)
        let saved = try XCTUnwrap(checkpointStep(id), "SIGTERM wrote a checkpoint")
        XCTAssertGreaterThanOrEqual(saved, 2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socketPath), "the socket file is removed on a clean exit")

        try serve()
        waitFinished([id], timeout: 120)
        XCTAssertEqual(try image(id).rgb, try expected(prompt: "terminated", steps: steps, seed: 5, scheduler: .euler))
    }

    func testFiftyConcurrentClientsAllGetTheirJobsAndMemoryStaysFlat() throws {
        let d = try serve()
        // Warm up: the model is loaded by the first job.
        let warm = try submit(["prompt": "warm", "steps": 1, "seed": 1])
        waitFinished([warm])
        let before = d.residentBytes
        let ids = ServeLockedArray()
        let failures = ServeLockedArray()
        let socketPath = self.socketPath
        DispatchQueue.concurrentPerform(iterations: 50) { i in
            do {
                let r = try ServeHTTP.request(socketPath, "POST", "/v1/jobs",
                                              json: ["prompt": "client \(i)", "steps": 2, "seed": i, "priority": i % 3])
                guard r.status == 202, let id = r.object["id"] as? String else {
                    return failures.append("submit \(i): \(r.status) \(r.text)")
                }
                ids.append(id)
                let done = ServeHTTP.waitUntil(timeout: 120, interval: 0.1) {
                    let j = (try? ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)", timeout: 10))?.object ?? [:]
                    return j["state"] as? String == "finished"
                }
                if !done { failures.append("job \(id) of client \(i) did not finish") }
            } catch {
                failures.append("client \(i): \(error)")
            }
        }
        XCTAssertEqual(failures.items, [])
        XCTAssertEqual(ids.items.count, 50)
        XCTAssertEqual(Set(ids.items).count, 50, "no duplicate ids")
        let listed = (try ServeHTTP.request(socketPath, "GET", "/v1/jobs").object["jobs"] as? [[String: Any]]) ?? []
        XCTAssertEqual(listed.count, 51)
        XCTAssertTrue(listed.allSatisfy { $0["state"] as? String == "finished" })
        let after = d.residentBytes
        XCTAssertGreaterThan(before, 0)
        XCTAssertLessThan(after, before + 64 << 20, "RSS grew from \(before >> 20) MiB to \(after >> 20) MiB")
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
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 10) { listener.received.contains { $0.contains("READY=1") } })
        let id = try submit(["prompt": "status", "steps": 20, "seed": 2])
        waitFinished([id])
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 5) { listener.received.contains { $0.contains("WATCHDOG=1") } })
        d.signal(SIGTERM)
        XCTAssertEqual(d.waitExit(timeout: 10), 0)
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
        // systemd-socket-activate clears the environment: pass on what selects OpenBLAS's kernels, so the daemon
        // computes with the same kernels as this process's reference image.
        let inherited = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"].filter { ProcessInfo.processInfo.environment[$0] != nil }
            .flatMap { ["-E", $0] }
        let d = try ServeProcess(executable: URL(fileURLWithPath: activate),
                                 ["-l", socketPath, "-E", "NOTIFY_SOCKET"] + inherited + [ServeProcess.sddBinary.path, "serve",
                                  "--model", Self.tinyModel, "--state-dir", stateDir, "--socket", dir.appendingPathComponent("ignored.sock").path],
                                 environment: ["NOTIFY_SOCKET": notifyPath], log: dir.appendingPathComponent("activate.log"))
        daemons.append(d)
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 10) { FileManager.default.fileExists(atPath: socketPath) }, d.stderr)
        // The first connection starts the daemon on the inherited socket.
        let id = try submit(["prompt": "activated", "steps": 3, "seed": 9])
        waitFinished([id])
        XCTAssertEqual(try image(id).rgb, try expected(prompt: "activated", steps: 3, seed: 9, scheduler: .pndm))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("ignored.sock").path), "--socket is ignored")
        XCTAssertTrue(ServeHTTP.waitUntil(timeout: 5) { listener.received.contains { $0.contains("READY=1") } })
        d.signal(SIGTERM)
        XCTAssertEqual(d.waitExit(timeout: 10), 0, d.stderr)
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
