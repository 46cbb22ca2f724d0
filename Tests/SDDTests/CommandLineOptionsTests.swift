// CommandLineOptionsTests: the options generate, bench, serve and convert share parse alike — one size parser,
// named choices refused as usage errors (exit 64) that list the choices, matched in any case.

import Foundation
import Pipeline
import XCTest

final class CommandLineOptionsTests: XCTestCase {
    static let tinyModel = GenerateCommandTests.tinyModel

    var workDir: URL!

    override func setUpWithError() throws {
        workDir = URL(fileURLWithPath: "/tmp/sdd-opts-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    func testGenerateTakesATerabyteBudgetAsServeDoes() throws {
        let out = workDir.appendingPathComponent("t.png").path
        let run = try GenerateCommandTests.runSDD(["generate", "--model", Self.tinyModel, "--steps", "1",
                                                   "--memory-budget", "1T", "-o", out, "p"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stderr.contains("memory budget 1024.00 GiB"), run.stderr)
    }

    func testServeTakesATerabyteBudgetAndLogsIt() throws {
        let socket = workDir.appendingPathComponent("s.sock").path
        let d = try ServeProcess(["serve", "--model", Self.tinyModel, "--socket", socket,
                                  "--state-dir", workDir.appendingPathComponent("state").path, "--memory-budget", "1T"],
                                 log: workDir.appendingPathComponent("daemon.log"))
        defer { d.stop() }
        let up = ServeHTTP.waitUntil(timeout: 60) {
            (try? ServeHTTP.request(socket, "GET", "/v1/health", timeout: 10))?.status == 200
        }
        XCTAssertTrue(up, "daemon did not come up:\n\(d.stderr)")
        XCTAssertTrue(d.stderr.contains("memory budget 1024.00 GiB"), d.stderr)
        d.signal(SIGTERM)
        XCTAssertEqual(d.waitExit(timeout: 30), 0, d.stderr)
    }

    func testABadSizeIsTheSameUsageErrorForEveryCommandAndOption() throws {
        let out = workDir.appendingPathComponent("x.png").path
        let cases: [([String], String)] = [
            (["generate", "--model", Self.tinyModel, "-o", out, "--memory-budget", "12Q", "p"], "--memory-budget"),
            (["bench", "--model", Self.tinyModel, "--memory-budget", "12Q"], "--memory-budget"),
            (["serve", "--model", Self.tinyModel, "--memory-budget", "12Q"], "--memory-budget"),
            (["serve", "--model", Self.tinyModel, "--min-free-space", "12Q"], "--min-free-space"),
            (["serve", "--model", Self.tinyModel, "--retention-size", "12Q"], "--retention-size"),
        ]
        for (arguments, option) in cases {
            let run = try GenerateCommandTests.runSDD(arguments)
            XCTAssertEqual(run.status, 64, "\(arguments): \(run.stderr)")
            XCTAssertTrue(run.stderr.contains("'12Q' is invalid for '\(option)"), "\(arguments): \(run.stderr)")
            XCTAssertTrue(run.stderr.contains("not a positive size like 256M"), "\(arguments): \(run.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }

    func testAnUnknownChoiceIsAUsageErrorThatListsTheChoices() throws {
        let out = workDir.appendingPathComponent("x.png").path
        let gguf = workDir.appendingPathComponent("x.gguf").path
        let generate = ["generate", "--model", Self.tinyModel, "-o", out]
        let convert = ["convert", "--model", Self.tinyModel, "-o", gguf]
        let cases: [(arguments: [String], option: String, value: String, choice: String)] = [
            (generate + ["--scheduler", "heun", "p"], "--scheduler", "heun", "euler-a"),
            (generate + ["--timestep-spacing", "even", "p"], "--timestep-spacing", "even", "trailing"),
            (generate + ["--residency", "floating", "p"], "--residency", "floating", "streamed"),
            (generate + ["--precision", "f64", "p"], "--precision", "f64", "bf16"),
            (generate + ["--lora-apply", "blend", "p"], "--lora-apply", "blend", "merge"),
            (["bench", "--stage", "unet"], "--stage", "unet", "conv"),
            (["bench", "--residency", "floating"], "--residency", "floating", "strict"),
            (["serve", "--precision", "f64"], "--precision", "f64", "auto"),
            (["serve", "--log-level", "loud"], "--log-level", "loud", "critical"),
            (convert + ["--type", "q3_k"], "--type", "q3_k", "q5_1"),
            // A type the table reads but has no encoder for is not a choice.
            (convert + ["--type", "q6_k"], "--type", "q6_k", "q8_0"),
            (convert + ["--type", "f16", "--vae-type", "q8_0"], "--vae-type", "q8_0", "same"),
        ]
        for c in cases {
            let run = try GenerateCommandTests.runSDD(c.arguments)
            XCTAssertEqual(run.status, 64, "\(c.arguments): \(run.stderr)")
            XCTAssertTrue(run.stderr.contains("'\(c.value)' is invalid for '\(c.option)"), "\(c.arguments): \(run.stderr)")
            XCTAssertTrue(run.stderr.contains("'\(c.choice)'") || run.stderr.contains("- \(c.choice)\n"),
                          "lists \(c.choice): \(run.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        XCTAssertFalse(FileManager.default.fileExists(atPath: gguf))
    }

    func testChoicesAreMatchedInAnyCase() throws {
        let out = workDir.appendingPathComponent("c.png").path
        let run = try GenerateCommandTests.runSDD(["generate", "--model", Self.tinyModel, "--steps", "1",
                                                   "--scheduler", "DDIM", "--residency", "Resident",
                                                   "--precision", "F32", "--timestep-spacing", "Trailing",
                                                   "-o", out, "p"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stderr.contains(", ddim, 1 steps"), run.stderr)
    }

    func testWithoutABudgetGenerateAndServePlanWithinTheLimitTheyRunUnderAndSayWhich() throws {
        // The limit this test process runs under is the children's too (same cgroup, same /proc/meminfo).
        let limit = try XCTUnwrap(MemoryLimit.detect(), "no cgroup limit and no /proc/meminfo here")
        let out = workDir.appendingPathComponent("d.png").path
        let run = try GenerateCommandTests.runSDD(["generate", "--model", Self.tinyModel, "--steps", "1", "-o", out, "p"])
        XCTAssertEqual(run.status, 0, run.stderr)
        // "sdd: memory budget 20.1 GiB (MemAvailable 23.0 GiB, less 2.9 GiB headroom): planned peak …"
        XCTAssertTrue(run.stderr.contains("sdd: memory budget "), run.stderr)
        XCTAssertTrue(run.stderr.contains("(\(limit.source) "), "names \(limit.source): \(run.stderr)")
        XCTAssertTrue(run.stderr.contains("headroom): planned peak "), run.stderr)

        let socket = workDir.appendingPathComponent("s.sock").path
        let d = try ServeProcess(["serve", "--model", Self.tinyModel, "--socket", socket,
                                  "--state-dir", workDir.appendingPathComponent("state").path],
                                 log: workDir.appendingPathComponent("daemon.log"))
        defer { d.stop() }
        let up = ServeHTTP.waitUntil(timeout: 60) {
            (try? ServeHTTP.request(socket, "GET", "/v1/health", timeout: 10))?.status == 200
        }
        XCTAssertTrue(up, "daemon did not come up:\n\(d.stderr)")
        XCTAssertTrue(d.stderr.contains("memory budget "), d.stderr)
        XCTAssertTrue(d.stderr.contains("(\(limit.source) "), "names \(limit.source): \(d.stderr)")
        d.signal(SIGTERM)
        XCTAssertEqual(d.waitExit(timeout: 30), 0, d.stderr)
    }

    func testMemoryBudgetNoneTurnsPlanningOffAndSaysSo() throws {
        let out = workDir.appendingPathComponent("n.png").path
        let run = try GenerateCommandTests.runSDD(["generate", "--model", Self.tinyModel, "--steps", "1",
                                                   "--memory-budget", "none", "-o", out, "p"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stderr.contains("sdd: no memory budget (--memory-budget none): runs are not planned"), run.stderr)
        XCTAssertFalse(run.stderr.contains("planned peak"), "nothing is planned: \(run.stderr)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out))
    }
}
