// End-to-end tests of sdctl: real `sdd serve` processes on temporary sockets with the committed tiny model,
// and sdctl as a real process — exit statuses, files, stdout and stderr.

import Foundation
import Pipeline
import XCTest
import TestSupport

/// One `sdd serve` process on a temporary socket and state directory.
final class TestDaemon: @unchecked Sendable {
    let directory: URL
    let socket: String
    let process = Process()
    let log: URL

    /// Starts a daemon in a new temporary directory, or in `directory` (the socket and state of an earlier one).
    init(model: String = GenerateCommandTests.tinyModel, directory existing: URL? = nil, arguments extra: [String] = []) throws {
        directory = existing
            ?? URL(fileURLWithPath: "/tmp").appendingPathComponent("sdctl-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        socket = directory.appendingPathComponent("sdd.sock").path
        log = directory.appendingPathComponent("daemon.log")
        if !FileManager.default.fileExists(atPath: log.path) {
            FileManager.default.createFile(atPath: log.path, contents: nil)
        }
        process.executableURL = GenerateCommandTests.binary
        process.arguments = ["serve", "--model", model, "--socket", socket,
                             "--state-dir", directory.appendingPathComponent("state").path,
                             "--lora-dir", GenerateCommandTests.fixtures.appendingPathComponent("lora").path] + extra
        var env = ProcessInfo.processInfo.environment
        for key in ["SDD_MODEL", "SDD_SOCKET", "LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET", "WATCHDOG_USEC"] {
            env.removeValue(forKey: key)
        }
        process.environment = env
        let handle = try FileHandle(forWritingTo: log)
        handle.seekToEndOfFile()
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Serving once `sdctl health` answers.
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if !process.isRunning { break }
            if FileManager.default.fileExists(atPath: socket),
               let health = try? SdctlTests.sdctl(["health"], socket: socket), health.status == 0 { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        stop()
        throw TestDaemonError(message: "sdd serve did not start serving on \(socket); its log:\n\(logText)")
    }

    /// kill -9, leaving the socket file and state behind as a crash would.
    func crash() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    var logText: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: directory)
    }
}

struct TestDaemonError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

final class SdctlTests: XCTestCase {
    static var sdctlBinary: String { ProcessRunner.binDirectory.appendingPathComponent("sdctl").path }

    /// Runs sdctl with `--socket socket` (when given) in front of the arguments.
    static func sdctl(_ arguments: [String], socket: String?, in directory: URL? = nil) throws -> ProcessRunner.Result {
        try ProcessRunner.run(sdctlBinary, (socket.map { ["--socket", $0] } ?? []) + arguments,
                              environment: ["SDD_SOCKET": nil], currentDirectory: directory)
    }

    /// One daemon for the tests of this class that need one (the tiny model loads fast, but not for free).
    nonisolated(unsafe) static var shared: TestDaemon?

    override class func tearDown() {
        shared?.stop()
        shared = nil
        super.tearDown()
    }

    var daemon: TestDaemon {
        get throws {
            if let d = Self.shared { return d }
            let d = try TestDaemon()
            Self.shared = d
            return d
        }
    }

    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdctl-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    func sdctl(_ arguments: [String]) throws -> ProcessRunner.Result {
        try Self.sdctl(arguments, socket: try daemon.socket, in: workDir)
    }

    func path(_ name: String) -> String { workDir.appendingPathComponent(name).path }

    static func isJobID(_ s: String) -> Bool {
        s.count == 16 && s.allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }

    // MARK: without a daemon

    func testHelpWorksWithoutADaemonAndDocumentsTheExitStatuses() throws {
        let help = try Self.sdctl(["--help"], socket: "/nonexistent/sdd.sock")
        XCTAssertEqual(help.status, 0, help.output)
        for text in ["generate", "jobs", "status", "wait", "fetch", "cancel", "models", "health", "EXIT STATUS",
                     "3  the job was canceled", "SDD_SOCKET", "HTTP 400 or 413"] {
            XCTAssertTrue(help.stdout.contains(text), "--help lacks \(text)")
        }
        let generateHelp = try Self.sdctl(["generate", "--help"], socket: nil)
        XCTAssertEqual(generateHelp.status, 0)
        for option in ["--negative-prompt", "--steps", "--guidance", "--width", "--height", "--seed", "--scheduler",
                       "--count", "--priority", "--output", "--no-wait", "--json"] {
            XCTAssertTrue(generateHelp.stdout.contains(option), "generate --help lacks \(option)")
        }
    }

    func testNoDaemonGivesAClearMessageAndExitStatus1() throws {
        // A socket file nobody listens on: connection refused.
        let socket = path("stale.sock")
        let fd = Foundation.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (i, byte) in socket.utf8.enumerated() { buffer[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        XCTAssertEqual(bound, 0)
        close(fd)

        let refused = try Self.sdctl(["jobs"], socket: socket)
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("sdctl: error: cannot connect to \(socket): Connection refused"),
                      refused.stderr)
        XCTAssertTrue(refused.stderr.contains("is sdd serve running?"), refused.stderr)

        let missing = path("missing.sock")
        let absent = try ProcessRunner.run(Self.sdctlBinary, ["generate", "--steps", "1", "a cat"],
                                           environment: ["SDD_SOCKET": missing])
        XCTAssertEqual(absent.status, 1)
        XCTAssertTrue(absent.stderr.contains("cannot connect to \(missing): No such file or directory"), absent.stderr)

        let waiting = try Self.sdctl(["wait", "0123456789abcdef"], socket: socket)
        XCTAssertEqual(waiting.status, 1, "wait must not retry a daemon it never reached")
    }

    func testABadCommandLineExits2() throws {
        for arguments in [["generate"], ["generate", "--steps", "many", "x"], ["frobnicate"], ["fetch"],
                          ["fetch", "--index", "-1", "0123456789abcdef"]] {
            let run = try Self.sdctl(arguments, socket: "/nonexistent/sdd.sock")
            XCTAssertEqual(run.status, 2, "\(arguments): \(run.output)")
        }
    }

    func testCountAboveOneWithStdoutIsRefusedBeforeSubmitting() throws {
        // No daemon at that path: a refusal that submitted anything would fail to connect (status 1) instead.
        let run = try Self.sdctl(["generate", "--count", "2", "-o", "-", "x"], socket: "/nonexistent/sdd.sock")
        XCTAssertEqual(run.status, 2, run.output)
        XCTAssertTrue(run.stderr.contains("--count 2"), run.stderr)
        XCTAssertFalse(run.stderr.contains("cannot connect"), run.stderr)
    }

    /// A socket that accepts connections (the kernel queues them) and never answers, like a hung daemon.
    func silentSocket(at given: String? = nil) throws -> (path: String, fd: Int32) {
        let socket = given ?? path("silent.sock")
        let fd = Foundation.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (i, byte) in socket.utf8.enumerated() { buffer[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(bound, 0)
        XCTAssertEqual(listen(fd, 16), 0)
        return (socket, fd)
    }

    func testRequestsToADaemonThatNeverAnswersTimeOutWithExitStatus1() throws {
        let (socket, fd) = try silentSocket()
        defer { close(fd) }
        for arguments in [["health"], ["jobs"], ["generate", "--no-wait", "x"], ["wait", "0123456789abcdef"]] {
            let started = Date()
            let run = try Self.sdctl(["--timeout", "1"] + arguments, socket: socket)
            let seconds = Date().timeIntervalSince(started)
            XCTAssertEqual(run.status, 1, "\(arguments): \(run.output)")
            XCTAssertTrue(run.stderr.contains("did not answer within 1 s"), "\(arguments): \(run.stderr)")
            // 1 s of timeout, a retry's backoff, and a process start on a loaded machine: far below "forever".
            XCTAssertLessThan(seconds, 15, "\(arguments)")
        }
        let submit = try Self.sdctl(["--timeout", "1", "generate", "--no-wait", "--request-id", "mine-1", "x"], socket: socket)
        XCTAssertEqual(submit.status, 1)
        XCTAssertTrue(submit.stderr.contains("--request-id mine-1"), "says how to retry safely: \(submit.stderr)")
        XCTAssertEqual(try Self.sdctl(["--timeout", "0", "health"], socket: socket).status, 2)
    }

    func testAStoppedDaemonEndsAWaitAndAResubmissionWithTheSameIdMakesOneJob() throws {
        let d = try TestDaemon(arguments: ["--event-heartbeat", "200ms"])
        defer { kill(d.process.processIdentifier, SIGCONT); d.stop() }
        let long = try Self.sdctl(["generate", "--no-wait", "--steps", "500", "--scheduler", "euler", "--width", "256",
                                   "--height", "256", "long"], socket: d.socket)
        XCTAssertEqual(long.status, 0, long.output)
        let id = long.stdout.trimmingCharacters(in: .whitespacesAndNewlines)

        // The event stream carries heartbeats while nothing else happens.
        let stream = try ServeHTTP.connect(d.socket, timeout: 10)
        defer { close(stream) }
        let get = Array("GET /v1/jobs/\(id)/events HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        XCTAssertEqual(get.withUnsafeBytes { send(stream, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, get.count)
        var seen = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !seen.contains("\"event\":\"heartbeat\"") {
            let n = buffer.withUnsafeMutableBytes { recv(stream, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            seen += String(decoding: buffer[0..<n], as: UTF8.self)
        }
        XCTAssertTrue(seen.contains("\"event\":\"heartbeat\""), seen)
        XCTAssertTrue(seen.contains("SDD-Heartbeat-Interval: 0.2"), seen)

        // `sdctl wait` is connected (its first event is out) when the daemon is stopped.
        let wait = Process()
        wait.executableURL = URL(fileURLWithPath: Self.sdctlBinary)
        wait.arguments = ["--socket", d.socket, "--timeout", "2", "wait", "--json", id]
        let out = Pipe(), err = Pipe()
        wait.standardOutput = out
        wait.standardError = err
        try wait.run()
        XCTAssertFalse(out.fileHandleForReading.availableData.isEmpty, "wait printed no event")
        kill(d.process.processIdentifier, SIGSTOP)
        let started = Date()
        let ended = ServeHTTP.waitUntil(timeout: 60) { !wait.isRunning }
        if !ended { wait.terminate() }
        wait.waitUntilExit()
        let waitErr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(ended, "sdctl wait still waits \(Int(Date().timeIntervalSince(started))) s after the daemon stopped")
        XCTAssertEqual(wait.terminationStatus, 1, waitErr)
        XCTAssertTrue(waitErr.contains("not even a heartbeat"), waitErr)
        XCTAssertTrue(waitErr.contains("sdctl wait \(id)"), "says how to go on waiting: \(waitErr)")

        // A submission whose answer never comes fails with the id to retry with ...
        let lost = try Self.sdctl(["--timeout", "1", "generate", "--no-wait", "--request-id", "retry-1", "retry"],
                                  socket: d.socket)
        XCTAssertEqual(lost.status, 1)
        XCTAssertTrue(lost.stderr.contains("--request-id retry-1"), lost.stderr)
        // ... and once the daemon runs again (and has read the first request), the retry gets the same job.
        kill(d.process.processIdentifier, SIGCONT)
        let again = try Self.sdctl(["generate", "--no-wait", "--request-id", "retry-1", "retry"], socket: d.socket)
        XCTAssertEqual(again.status, 0, again.output)
        let retried = again.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(Self.isJobID(retried), again.stdout)
        let listed = try Self.sdctl(["jobs", "--json"], socket: d.socket)
        let jobs = ((try JSONSerialization.jsonObject(with: listed.stdoutData) as? [String: Any])?["jobs"] as? [[String: Any]]) ?? []
        let retries = jobs.filter { ($0["settings"] as? [String: Any])?["prompt"] as? String == "retry" }
        XCTAssertEqual(retries.map { $0["id"] as? String }, [retried], "one job for request id retry-1")
        _ = try Self.sdctl(["cancel", id], socket: d.socket)
    }

    func testGenerateFollowsAJobWhenTheDaemonRestartsBetweenAcceptingAndTheEventStream() throws {
        let first = try TestDaemon()
        var second: TestDaemon?
        defer { first.stop(); second?.stop() }
        let arguments = ["generate", "--request-id", "gap-1", "--steps", "2", "--seed", "3", "gap"]
        // The job is accepted (and on disk), then the daemon dies.
        let accepted = try Self.sdctl(Array(arguments.prefix(1)) + ["--no-wait", "--json"] + arguments.dropFirst(),
                                      socket: first.socket)
        XCTAssertEqual(accepted.status, 0, accepted.output)
        first.crash()
        // Replay that moment for a waiting `sdctl generate`: its POST gets the 202 the daemon gave, then the
        // socket is gone until a new daemon starts on the same state.
        unlink(first.socket)
        let (socket, listener) = try silentSocket(at: first.socket)
        let generate = Process()
        generate.executableURL = URL(fileURLWithPath: Self.sdctlBinary)
        // --timeout: how long it waits for the daemon to come back; a daemon start on a loaded machine takes a while.
        generate.arguments = ["--socket", socket, "--timeout", "90"] + arguments + ["-o", path("gap.png")]
        let err = Pipe()
        generate.standardError = err
        generate.standardOutput = FileHandle.nullDevice
        try generate.run()
        let connection = accept(listener, nil, nil)
        XCTAssertGreaterThanOrEqual(connection, 0)
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !String(decoding: request, as: UTF8.self).contains("\"request_id\"") {
            let n = buffer.withUnsafeMutableBytes { recv(connection, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            request += buffer[0..<n]
        }
        XCTAssertTrue(String(decoding: request, as: UTF8.self).contains("\"request_id\":\"gap-1\""))
        let answer = Array("HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: \(accepted.stdoutData.count)\r\nConnection: close\r\n\r\n".utf8)
            + Array(accepted.stdoutData)
        XCTAssertEqual(answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, answer.count)
        close(connection)
        close(listener)
        unlink(socket)
        // sdctl now finds no socket at all (it used to exit 1 here at once); it keeps trying while a new daemon
        // starts on the same state, which still has the job.
        second = try TestDaemon(directory: first.directory)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        generate.waitUntilExit()
        XCTAssertEqual(generate.terminationStatus, 0, stderr)
        XCTAssertEqual(try PNGReader.read(from: workDir.appendingPathComponent("gap.png")).width, 64)
    }

    // MARK: with a daemon

    func testGenerateWithLoRAsByNameWritesThePNGThatSddGenerateWritesWithTheirFiles() throws {
        let settings = ["--steps", "2", "--seed", "7", "--guidance", "5"]
        let run = try sdctl(["generate"] + settings + ["--lora", "peft_unet_te:0.6", "-o", path("client.png"),
                                                       "a red circle <lora:old_diffusers:0.5>"])
        XCTAssertEqual(run.status, 0, run.output)
        let lora = GenerateCommandTests.fixtures.appendingPathComponent("lora")
        let direct = try ProcessRunner.run(GenerateCommandTests.binary.path, [
            "generate", "--model", GenerateCommandTests.tinyModel, "-o", path("direct.png"),
            "--lora", lora.appendingPathComponent("peft_unet_te.safetensors").path + ":0.6",
            "--lora", lora.appendingPathComponent("old_diffusers.safetensors").path + ":0.5",
        ] + settings + ["a red circle "], environment: ["SDD_MODEL": nil])
        XCTAssertEqual(direct.status, 0, direct.output)
        let plain = try ProcessRunner.run(GenerateCommandTests.binary.path, [
            "generate", "--model", GenerateCommandTests.tinyModel, "-o", path("plain.png")] + settings + ["a red circle "],
            environment: ["SDD_MODEL": nil])
        XCTAssertEqual(plain.status, 0, plain.output)
        let client = try PNGReader.read(from: workDir.appendingPathComponent("client.png"))
        XCTAssertEqual(client.rgb, try PNGReader.read(from: workDir.appendingPathComponent("direct.png")).rgb,
                       "the daemon's pixels differ from sdd generate's with the same LoRA files")
        XCTAssertNotEqual(client.rgb, try PNGReader.read(from: workDir.appendingPathComponent("plain.png")).rgb,
                          "the LoRAs must change the image")
        let refused = try sdctl(["generate", "--steps", "1", "--lora", "../tiny-sd/unet/diffusion_pytorch_model", "x"])
        XCTAssertEqual(refused.status, 2, "the daemon refuses the name (400): \(refused.output)")
        XCTAssertTrue(refused.output.contains("loras[0].name"), refused.output)
    }

    func testGenerateWaitsAndWritesThePNGThatSddGenerateWrites() throws {
        let settings = ["--steps", "3", "--seed", "42", "--width", "48", "--height", "80", "--scheduler", "euler-a",
                        "--negative-prompt", "blurry", "--guidance", "6.5"]
        let run = try sdctl(["generate"] + settings + ["-o", path("client.png"), "a red circle"])
        XCTAssertEqual(run.status, 0, run.output)
        XCTAssertEqual(run.stdout, path("client.png") + "\n")

        let direct = try ProcessRunner.run(GenerateCommandTests.binary.path, [
            "generate", "--model", GenerateCommandTests.tinyModel, "-o", path("direct.png"),
        ] + settings + ["a red circle"], environment: ["SDD_MODEL": nil])
        XCTAssertEqual(direct.status, 0, direct.output)

        let client = try PNGReader.read(from: workDir.appendingPathComponent("client.png"))
        let reference = try PNGReader.read(from: workDir.appendingPathComponent("direct.png"))
        XCTAssertEqual(client.width, 48)
        XCTAssertEqual(client.height, 80)
        assertSameImage(client.rgb, reference.rgb, "the daemon's pixels differ from sdd generate's")
        XCTAssertEqual(client.text.map(\.key), reference.text.map(\.key))
        XCTAssertEqual(client.text.map(\.value), reference.text.map(\.value))
        XCTAssertEqual(try Data(contentsOf: workDir.appendingPathComponent("client.png")),
                       try Data(contentsOf: workDir.appendingPathComponent("direct.png")))
    }

    func testGeneratePreviewKeepsTheLatestLatentPreviewAndTheImageIsUnchanged() throws {
        let run = try sdctl(["generate", "--steps", "6", "--seed", "11", "--scheduler", "lcm", "--guidance", "1",
                             "--preview", path("live.png"), "-o", path("final.png"), "a blue square"])
        XCTAssertEqual(run.status, 0, run.output)
        var s = GenerationSettings(prompt: "a blue square")
        s.steps = 6
        s.seed = 11
        s.scheduler = .lcm
        s.guidance = 1
        var lastPreviewStep: StepProgress?
        let direct = try StableDiffusionPipeline(model: StableDiffusionModel(url: URL(fileURLWithPath: GenerateCommandTests.tinyModel)))
            .generate(s) { p in
                if p.step == 5 { lastPreviewStep = p }  // about ten per run, never the last: steps 1…5 of 6
                return true
            }
        XCTAssertEqual(try PNGReader.read(from: workDir.appendingPathComponent("final.png")).rgb, direct.images[0],
                       "the image is the same as without previews")
        let live = try PNGReader.read(from: workDir.appendingPathComponent("live.png"))
        XCTAssertEqual([live.width, live.height], [8, 8])
        XCTAssertEqual(live.rgb, try XCTUnwrap(LatentPreview.rgb(try XCTUnwrap(lastPreviewStep).latents)).rgb)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: workDir.path).filter { $0.hasPrefix(".") }
        XCTAssertEqual(leftovers, [], "atomic replacement leaves no temporary files")
    }

    func testFewStepSchedulerOptionsReachTheDaemonAndGiveSddGeneratesImage() throws {
        for settings in [["--scheduler", "ddim", "--timestep-spacing", "trailing", "--guidance", "0"],
                         ["--scheduler", "tcd", "--eta", "0.6", "--guidance", "1"]] {
            let common = ["--steps", "4", "--seed", "5", "--width", "32", "--height", "32"] + settings
            let run = try sdctl(["generate"] + common + ["-o", path("c.png"), "a green triangle"])
            XCTAssertEqual(run.status, 0, run.output)
            let direct = try ProcessRunner.run(GenerateCommandTests.binary.path, [
                "generate", "--model", GenerateCommandTests.tinyModel, "-o", path("d.png"),
            ] + common + ["a green triangle"], environment: ["SDD_MODEL": nil])
            XCTAssertEqual(direct.status, 0, direct.output)
            XCTAssertEqual(try PNGReader.read(from: workDir.appendingPathComponent("c.png")).rgb,
                           try PNGReader.read(from: workDir.appendingPathComponent("d.png")).rgb, "\(settings)")
        }
    }

    func testGenerateWithACountWritesNumberedFiles() throws {
        let run = try sdctl(["generate", "--steps", "1", "--seed", "7", "--width", "32", "--height", "32",
                             "--count", "2", "-o", path("many.png"), "two cats"])
        XCTAssertEqual(run.status, 0, run.output)
        XCTAssertEqual(run.stdout, path("many-1.png") + "\n" + path("many-2.png") + "\n")
        for name in ["many-1.png", "many-2.png"] {
            XCTAssertEqual(try PNGReader.read(from: workDir.appendingPathComponent(name)).width, 32)
        }
    }

    func testJSONPrintsEachEventAsOneJSONLine() throws {
        let run = try sdctl(["generate", "--json", "--steps", "3", "--seed", "1", "--width", "32", "--height", "32",
                             "-o", path("j.png"), "json please"])
        XCTAssertEqual(run.status, 0, run.output)
        let lines = run.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        XCTAssertFalse(lines.isEmpty)
        var events: [String] = []
        var job: String?
        for line in lines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            let event = try XCTUnwrap(object?["event"] as? String, "not an event: \(line)")
            events.append(event)
            let id = try XCTUnwrap(object?["job"] as? String)
            XCTAssertEqual(id, job ?? id)
            job = id
        }
        XCTAssertEqual(events.last, "finished", "\(events)")
        XCTAssertTrue(events.contains("step"), "\(events)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("j.png")))
        XCTAssertTrue(run.stderr.contains("wrote \(path("j.png"))"), run.stderr)
    }

    func testNoWaitPrintsTheIdThenWaitAndFetchGetTheImage() throws {
        let submit = try sdctl(["generate", "--no-wait", "--steps", "2", "--seed", "3", "--width", "32",
                                "--height", "48", "--priority", "-5", "queued for later"])
        XCTAssertEqual(submit.status, 0, submit.output)
        let id = submit.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(Self.isJobID(id), "not a job id: \(submit.stdout)")

        let wait = try sdctl(["wait", id])
        XCTAssertEqual(wait.status, 0, wait.output)

        let status = try sdctl(["status", id])
        XCTAssertEqual(status.status, 0, status.output)
        XCTAssertTrue(status.stdout.contains("job \(id): finished, 1 image"), status.stdout)
        XCTAssertTrue(status.stdout.contains("seed 3"), status.stdout)
        XCTAssertTrue(status.stdout.contains("priority -5"), status.stdout)

        let jobs = try sdctl(["jobs"])
        XCTAssertTrue(jobs.stdout.contains(id), jobs.stdout)

        let fetch = try sdctl(["fetch", String(id.prefix(10)), "-o", path("later.png")])
        XCTAssertEqual(fetch.status, 0, fetch.output)
        let image = try PNGReader.read(from: workDir.appendingPathComponent("later.png"))
        XCTAssertEqual([image.width, image.height], [32, 48])

        let toStdout = try sdctl(["fetch", id, "--index", "0", "-o", "-"])
        XCTAssertEqual(toStdout.status, 0, toStdout.stderr)
        XCTAssertEqual(toStdout.stdoutData, try Data(contentsOf: workDir.appendingPathComponent("later.png")))

        let outOfRange = try sdctl(["fetch", id, "--index", "5"])
        XCTAssertEqual(outOfRange.status, 1)
    }

    func testACanceledJobMakesGenerateAndWaitExit3() throws {
        // A long job keeps the worker busy; generate waits on it from another process.
        let socket = try daemon.socket
        let generate = Process()
        generate.executableURL = URL(fileURLWithPath: Self.sdctlBinary)
        generate.arguments = ["--socket", socket, "generate", "--steps", "500", "--width", "256", "--height", "256",
                              "--seed", "9", "-o", path("never.png"), "a very long job"]
        let err = Pipe()
        generate.standardError = err
        generate.standardOutput = FileHandle.nullDevice
        try generate.run()

        let id = try waitForJob(prompt: "a very long job")
        let behind = try sdctl(["generate", "--no-wait", "--steps", "1", "queued behind it"])
        let queuedID = behind.stdout.trimmingCharacters(in: .whitespacesAndNewlines)

        // A queued job canceled: wait says so with status 3.
        XCTAssertEqual(try sdctl(["cancel", queuedID]).status, 0)
        let waitQueued = try sdctl(["wait", queuedID])
        XCTAssertEqual(waitQueued.status, 3, waitQueued.output)
        XCTAssertTrue(waitQueued.stderr.contains("canceled"), waitQueued.stderr)

        // The running job canceled: the waiting generate exits 3 and writes nothing.
        let cancel = try sdctl(["cancel", id])
        XCTAssertEqual(cancel.status, 0, cancel.output)
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        generate.waitUntilExit()
        XCTAssertEqual(generate.terminationStatus, 3, String(decoding: stderr, as: UTF8.self))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("never.png")))
        XCTAssertEqual(try sdctl(["wait", id]).status, 3)

        // Canceling it again is an API error, printed with its code.
        let again = try sdctl(["cancel", id])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.hasPrefix("sdctl: error: "), again.stderr)
        XCTAssertTrue(again.stderr.contains("(conflict)"), again.stderr)
    }

    func testGenerateKeepsWaitingWhileTheDaemonRestarts() throws {
        let first = try TestDaemon()
        defer { first.stop() }
        let generate = Process()
        generate.executableURL = URL(fileURLWithPath: Self.sdctlBinary)
        generate.arguments = ["--socket", first.socket, "generate", "--steps", "20", "--width", "256",
                              "--height", "256", "--seed", "11", "-o", path("survivor.png"), "survives a crash"]
        let err = Pipe()
        generate.standardError = err
        generate.standardOutput = FileHandle.nullDevice
        try generate.run()

        // Crash the daemon once the job is under way, then start a new one on the same socket and state.
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let status = try Self.sdctl(["jobs", "--json"], socket: first.socket)
            if let object = try? JSONSerialization.jsonObject(with: status.stdoutData) as? [String: Any],
               let job = (object["jobs"] as? [[String: Any]])?.first,
               let step = (job["progress"] as? [String: Any])?["step"] as? Int, step >= 2 { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        first.crash()
        Thread.sleep(forTimeInterval: 1)
        let second = try TestDaemon(directory: first.directory)

        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        generate.waitUntilExit()
        second.stop()
        XCTAssertEqual(generate.terminationStatus, 0, String(decoding: stderr, as: UTF8.self))
        XCTAssertEqual(try PNGReader.read(from: workDir.appendingPathComponent("survivor.png")).width, 256)
    }

    /// The id of the caller's job with `prompt`, once the daemon lists it.
    func waitForJob(prompt: String) throws -> String {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let jobs = try sdctl(["jobs", "--json"])
            if jobs.status == 0,
               let object = try? JSONSerialization.jsonObject(with: jobs.stdoutData) as? [String: Any],
               let list = object["jobs"] as? [[String: Any]],
               let job = list.last(where: { ($0["settings"] as? [String: Any])?["prompt"] as? String == prompt }),
               let id = job["id"] as? String {
                return id
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw TestDaemonError(message: "the daemon never listed the job \"\(prompt)\"")
    }

    func testAPIErrorsArePrintedWithTheirCode() throws {
        // A submission the daemon refuses as invalid (400) is a usage error: exit status 2.
        let bad = try sdctl(["generate", "--steps", "0", "x"])
        XCTAssertEqual(bad.status, 2, bad.output)
        XCTAssertTrue(bad.stderr.hasPrefix("sdctl: error: "), bad.stderr)
        XCTAssertTrue(bad.stderr.contains("(invalid_value)"), bad.stderr)

        let unknown = try sdctl(["status", "0123456789abcdef"])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.stderr.contains("(not_found)"), unknown.stderr)
    }

    func testAJobOverTheDaemonsMemoryBudgetIsRefusedWithItsReasonAndExitStatus2() throws {
        let small = try TestDaemon(arguments: ["--memory-budget", "64M"])
        defer { small.stop() }
        let out = path("big.png")
        let refused = try Self.sdctl(["generate", "--width", "2048", "--height", "2048", "--count", "4", "--steps", "1",
                                      "-o", out, "a cat"], socket: small.socket, in: workDir)
        XCTAssertEqual(refused.status, 2, refused.output)
        XCTAssertTrue(refused.stderr.hasPrefix("sdctl: error: the daemon refused the job: "), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("(exceeds_memory_budget)"), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("64 MiB"), "the daemon's numbers: \(refused.stderr)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("big-1.png")))
        let jobs = try Self.sdctl(["jobs"], socket: small.socket)
        XCTAssertEqual(jobs.status, 0, jobs.output)
        XCTAssertFalse(jobs.stdout.contains("a cat"), "nothing was queued: \(jobs.stdout)")
        // The model's own size fits the same budget: the refusal is the planner's, not a blanket one.
        let fits = try Self.sdctl(["generate", "--steps", "1", "-o", path("small.png"), "a cat"], socket: small.socket,
                                  in: workDir)
        XCTAssertEqual(fits.status, 0, fits.output)
    }

    func testModelsAndHealthDescribeTheDaemon() throws {
        let health = try sdctl(["health"])
        XCTAssertEqual(health.status, 0, health.output)
        XCTAssertTrue(health.stdout.hasPrefix("ok: sdd "), health.stdout)
        let models = try sdctl(["models"])
        XCTAssertEqual(models.status, 0, models.output)
        XCTAssertTrue(models.stdout.hasPrefix("tiny-sd  "), models.stdout)
        XCTAssertTrue(models.stdout.contains("euler-a"), models.stdout)
        XCTAssertTrue(models.stdout.contains("defaults: 50 steps, guidance 7.5, pndm"), models.stdout)
        let json = try sdctl(["models", "--json"])
        XCTAssertNotNil(try JSONSerialization.jsonObject(with: json.stdoutData) as? [String: Any])
    }
}
