// End-to-end tests of the `sdd generate` command: a real process, real files, exit statuses, stderr.

import Foundation
import Pipeline
import XCTest
import TestSupport

final class GenerateCommandTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let tinyModel = fixtures.appendingPathComponent("tiny-sd").path

    /// The sdd binary SwiftPM built next to this test bundle.
    static var binary: URL {
        var dir = Bundle.main.bundleURL
        if dir.pathExtension == "xctest" { dir.deleteLastPathComponent() }
        for candidate in [dir, Bundle(for: GenerateCommandTests.self).bundleURL.deletingLastPathComponent()] {
            let url = candidate.appendingPathComponent("sdd")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return dir.appendingPathComponent("sdd")
    }

    struct Run {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    func sdd(_ arguments: [String], environment: [String: String] = [:]) throws -> Run {
        try Self.runSDD(arguments, environment: environment)
    }

    /// Runs the built sdd binary without SDD_MODEL (plus `environment`), capturing its output.
    static func runSDD(_ arguments: [String], environment: [String: String] = [:]) throws -> Run {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "SDD_MODEL")
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Run(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                   stderr: String(decoding: errData, as: UTF8.self))
    }

    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    func testGenerateWritesPNGsWithParametersAndTheLatentsAsNPY() throws {
        let png = workDir.appendingPathComponent("out.png").path
        let npy = workDir.appendingPathComponent("latents.npy").path
        let run = try sdd(["generate", "--model", Self.tinyModel, "--steps", "3", "--seed", "42", "--count", "2",
                           "--width", "48", "--height", "80", "--scheduler", "euler-a", "--negative-prompt", "blurry",
                           "-o", png, "--save-latents", npy, "a red circle"])
        XCTAssertEqual(run.status, 0, run.stderr)
        for i in 1...2 {
            let image = try PNGReader.read(from: workDir.appendingPathComponent("out-\(i).png"))
            XCTAssertEqual(image.width, 48)
            XCTAssertEqual(image.height, 80)
            let text = Dictionary(image.text.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
            XCTAssertEqual(text["prompt"], "a red circle")
            XCTAssertEqual(text["negative_prompt"], "blurry")
            XCTAssertEqual(text["seed"], "42")
            XCTAssertEqual(text["steps"], "3")
            XCTAssertEqual(text["scheduler"], "euler-a")
            XCTAssertEqual(text["size"], "48x80")
            XCTAssertEqual(text["model"], "tiny-sd")
        }
        let latents = try NPYReader.readFloat32(from: URL(fileURLWithPath: npy))
        XCTAssertEqual(latents.shape, [2, 4, 10, 6])
    }

    func testGenerateMatchesTheLibraryForTheSameSettings() throws {
        let npy = workDir.appendingPathComponent("l.npy").path
        let run = try sdd(["generate", "--model", Self.tinyModel, "--steps", "2", "--seed", "5",
                           "-o", workDir.appendingPathComponent("a.png").path, "--save-latents", npy, "a cat"])
        XCTAssertEqual(run.status, 0, run.stderr)
        var s = GenerationSettings(prompt: "a cat")
        s.steps = 2
        s.seed = 5
        let result = try StableDiffusionPipeline(model: StableDiffusionModel(url: URL(fileURLWithPath: Self.tinyModel)))
            .generate(s)
        assertSameLatents(try NPYReader.readFloat32(from: URL(fileURLWithPath: npy)).data, result.latents.data)
    }

    func testGridTilesTheBatchIntoOnePicture() throws {
        let png = workDir.appendingPathComponent("grid.png")
        let run = try sdd(["generate", "--model", Self.tinyModel, "--steps", "1", "--seed", "3", "--count", "4",
                           "--grid", "-o", png.path, "x"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let image = try PNGReader.read(from: png)
        XCTAssertEqual([image.width, image.height], [128, 128], "2×2 tiles of 64×64")
        XCTAssertFalse(FileManager.default.fileExists(atPath: workDir.appendingPathComponent("grid-1.png").path))
    }

    func testAPromptsFileRunsEachLineAndGridsOneRowPerPrompt() throws {
        let list = workDir.appendingPathComponent("prompts.txt")
        try "# shapes\na red circle\n\na blue square\na green triangle\n".write(to: list, atomically: true, encoding: .utf8)
        let png = workDir.appendingPathComponent("rows.png")
        let run = try sdd(["generate", "--model", Self.tinyModel, "--steps", "1", "--seed", "3", "--count", "2",
                           "--grid", "--prompts", list.path, "-o", png.path])
        XCTAssertEqual(run.status, 0, run.stderr)
        let grid = try PNGReader.read(from: png)
        XCTAssertEqual([grid.width, grid.height], [128, 192], "3 prompts × 2 images of 64×64")
        let text = Dictionary(grid.text.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(text["prompt"], "a red circle\na blue square\na green triangle")

        // Without --grid: one file per image, prompt by prompt, each with its own prompt and the same seed.
        let single = try sdd(["generate", "--model", Self.tinyModel, "--steps", "1", "--seed", "3",
                              "--prompts", list.path, "-o", workDir.appendingPathComponent("p.png").path])
        XCTAssertEqual(single.status, 0, single.stderr)
        for (i, prompt) in ["a red circle", "a blue square", "a green triangle"].enumerated() {
            let image = try PNGReader.read(from: workDir.appendingPathComponent("p-\(i + 1).png"))
            let t = Dictionary(image.text.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
            XCTAssertEqual(t["prompt"], prompt)
            XCTAssertEqual(t["seed"], "3")
        }

        let empty = workDir.appendingPathComponent("empty.txt")
        try "# nothing\n\n".write(to: empty, atomically: true, encoding: .utf8)
        let bad = try sdd(["generate", "--model", Self.tinyModel, "--prompts", empty.path, "-o", png.path])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("no prompts"), bad.stderr)
        let both = try sdd(["generate", "--model", Self.tinyModel, "--prompts", list.path, "-o", png.path, "x"])
        XCTAssertNotEqual(both.status, 0)
        XCTAssertTrue(both.stderr.contains("not both"), both.stderr)
    }

    func testARandomSeedIsPrintedWhenNoneIsGiven() throws {
        let run = try sdd(["generate", "--model", Self.tinyModel, "--steps", "1",
                           "-o", workDir.appendingPathComponent("r.png").path, "x"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stderr.contains("seed "), run.stderr)
    }

    func testBadRequestsFailWithAMessageThatNamesTheProblem() throws {
        let out = workDir.appendingPathComponent("x.png").path
        let cases: [([String], String)] = [
            (["--width", "100"], "width 100"),
            (["--height", "0"], "height 0"),
            (["--steps", "0"], "steps 0"),
            (["--scheduler", "heun"], "'heun' is invalid for '--scheduler"),
            (["--count", "0"], "count 0"),
        ]
        for (extra, message) in cases {
            let run = try sdd(["generate", "--model", Self.tinyModel, "-o", out] + extra + ["p"])
            XCTAssertNotEqual(run.status, 0, "\(extra)")
            XCTAssertTrue(run.stderr.contains(message), "\(extra): \(run.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        }
    }

    func testAMissingOrBrokenModelIsNamedInTheError() throws {
        let out = workDir.appendingPathComponent("x.png").path
        let missing = try sdd(["generate", "--model", "/nonexistent/model", "-o", out, "p"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("/nonexistent/model"), missing.stderr)

        let broken = workDir.appendingPathComponent("broken")
        try FileManager.default.copyItem(at: URL(fileURLWithPath: Self.tinyModel), to: broken)
        try Data("{ not json".utf8).write(to: broken.appendingPathComponent("unet/config.json"))
        let run = try sdd(["generate", "--model", broken.path, "-o", out, "p"])
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.stderr.contains("unet/config.json"), run.stderr)

        let truncated = workDir.appendingPathComponent("truncated")
        try FileManager.default.copyItem(at: URL(fileURLWithPath: Self.tinyModel), to: truncated)
        let weights = truncated.appendingPathComponent("vae/diffusion_pytorch_model.safetensors")
        let data = try Data(contentsOf: weights)
        try data.prefix(data.count / 2).write(to: weights)
        let run2 = try sdd(["generate", "--model", truncated.path, "--steps", "1", "-o", out, "p"])
        XCTAssertNotEqual(run2.status, 0)
        XCTAssertTrue(run2.stderr.contains("vae/diffusion_pytorch_model.safetensors"), run2.stderr)
    }

    func testWithoutAModelTheBundledDemoModelIsUsedOrTheErrorSaysHowToGiveOne() throws {
        let demo = Self.fixtures.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/demo/model_index.json")
        let run = try sdd(["generate", "--steps", "1", "-o", workDir.appendingPathComponent("x.png").path, "p"])
        if FileManager.default.fileExists(atPath: demo.path) {
            XCTAssertEqual(run.status, 0, run.stderr)
        } else {
            XCTAssertNotEqual(run.status, 0)
            XCTAssertTrue(run.stderr.contains("--model"), run.stderr)
        }
    }

    func testSDDModelEnvironmentVariableSetsTheDefaultModel() throws {
        let run = try sdd(["generate", "--steps", "1", "-o", workDir.appendingPathComponent("e.png").path, "p"],
                          environment: ["SDD_MODEL": Self.tinyModel])
        XCTAssertEqual(run.status, 0, run.stderr)
    }

    func testALongPromptIsTruncatedWithAWarning() throws {
        let prompt = Array(repeating: "a very detailed painting", count: 30).joined(separator: ", ")
        let run = try sdd(["generate", "--model", Self.tinyModel, "--steps", "1",
                           "-o", workDir.appendingPathComponent("l.png").path, prompt])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stderr.contains("truncated") || run.stderr.contains("only the first"), run.stderr)
    }
}
