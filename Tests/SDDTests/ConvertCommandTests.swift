// End-to-end tests of `sdd convert` and `sdd inspect`: the real binary converts the tiny model to GGUF and
// `sdd generate --model x.gguf` makes the same image as the folder.

import Foundation
import Pipeline
import XCTest
import TestSupport

/// Runs the sdd binary SwiftPM built, capturing its output (GenerateCommandTests' runner).
struct SDDProcess {
    func sdd(_ arguments: [String]) throws -> GenerateCommandTests.Run {
        try GenerateCommandTests.runSDD(arguments)
    }
}

final class ConvertCommandTests: XCTestCase {
    let cli = SDDProcess()
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-convert-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    func testConvertThenGenerateFromTheGGUFMatchesTheFolder() throws {
        let gguf = dir.appendingPathComponent("tiny.gguf").path
        let convert = try cli.sdd(["convert", "--model", GenerateCommandTests.tinyModel, "--type", "f32", "--output", gguf])
        XCTAssertEqual(convert.status, 0, convert.stderr)
        XCTAssertTrue(convert.stderr.contains("tensors"), convert.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: gguf))

        var latents: [[Float]] = []
        for model in [GenerateCommandTests.tinyModel, gguf] {
            let npy = dir.appendingPathComponent("l-\(latents.count).npy").path
            let png = dir.appendingPathComponent("o-\(latents.count).png").path
            let run = try cli.sdd(["generate", "--model", model, "--steps", "2", "--seed", "5", "-o", png,
                                   "--save-latents", npy, "a blue square"])
            XCTAssertEqual(run.status, 0, run.stderr)
            latents.append(try NPYReader.readFloat32(from: URL(fileURLWithPath: npy)).data)
        }
        assertSameLatents(latents[1], latents[0], "two processes: the folder and its F32 GGUF")
    }

    func testQuantizedConvertAndInspect() throws {
        let gguf = dir.appendingPathComponent("tiny-q8.gguf").path
        let convert = try cli.sdd(["convert", "--model", GenerateCommandTests.tinyModel, "--type", "q8_0", "-o", gguf])
        XCTAssertEqual(convert.status, 0, convert.stderr)
        let inspect = try cli.sdd(["inspect", gguf])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        for fragment in ["unet:", "vae:", "text_encoder:", "q8_0", "planned peak"] {
            XCTAssertTrue(inspect.stdout.contains(fragment), "\(fragment) missing in\n\(inspect.stdout)")
        }
        let run = try cli.sdd(["generate", "--model", gguf, "--steps", "2", "--seed", "5",
                               "-o", dir.appendingPathComponent("q.png").path, "a blue square"])
        XCTAssertEqual(run.status, 0, run.stderr)
    }

    func testBadTypeAndTruncatedFileGiveClearErrors() throws {
        let bad = try cli.sdd(["convert", "--model", GenerateCommandTests.tinyModel, "--type", "q3_k",
                               "-o", dir.appendingPathComponent("x.gguf").path])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("q3_k"), bad.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("x.gguf").path))

        let cut = dir.appendingPathComponent("cut.gguf")
        try Data("GGUF".utf8 + [3, 0, 0, 0, 9]).write(to: cut)
        let run = try cli.sdd(["generate", "--model", cut.path, "--steps", "1", "-o", dir.appendingPathComponent("c.png").path, "x"])
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.stderr.contains(cut.path), run.stderr)
        XCTAssertFalse(run.stderr.contains("Fatal error"), run.stderr)
    }
}
