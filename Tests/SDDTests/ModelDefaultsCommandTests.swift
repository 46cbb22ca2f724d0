// `sdd generate PROMPT` with nothing else uses the model's own defaults (sdd.json, GGUF sdd.defaults.*, the
// scheduler class its config names); explicit flags win; `sdd inspect` shows them.

import Foundation
import Pipeline
import XCTest
import TestSupport

final class ModelDefaultsCommandTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-mdefaults-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// A copy of tiny-sd with `sddJSON` as sdd.json and, if given, another scheduler class.
    func tinyCopy(sddJSON: String?, schedulerClass: String? = nil) throws -> URL {
        let copy = dir.appendingPathComponent("model")
        try FileManager.default.copyItem(at: URL(fileURLWithPath: GenerateCommandTests.tinyModel), to: copy)
        if let text = sddJSON { try Data(text.utf8).write(to: copy.appendingPathComponent("sdd.json")) }
        if let name = schedulerClass {
            let file = copy.appendingPathComponent("scheduler/scheduler_config.json")
            let text = try String(contentsOf: file, encoding: .utf8)
                .replacingOccurrences(of: "\"PNDMScheduler\"", with: "\"\(name)\"")
            try Data(text.utf8).write(to: file)
        }
        return copy
    }

    func metadata(_ png: URL) throws -> [String: String] {
        Dictionary(try PNGReader.read(from: png).text.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
    }

    func testPlainGenerateUsesTheModelsDefaultsAndFlagsWin() throws {
        let model = try tinyCopy(sddJSON: #"{"steps": 2, "guidance": 1.0, "scheduler": "euler", "width": 48, "height": 80}"#)
        let png = dir.appendingPathComponent("a.png")
        let run = try GenerateCommandTests.runSDD(["generate", "--model", model.path, "--seed", "1", "-o", png.path, "p"])
        XCTAssertEqual(run.status, 0, run.stderr)
        var text = try metadata(png)
        XCTAssertEqual(text["steps"], "2")
        XCTAssertEqual(text["scheduler"], "euler")
        XCTAssertEqual(text["guidance"], "1.0")
        XCTAssertEqual(text["size"], "48x80")

        let run2 = try GenerateCommandTests.runSDD(["generate", "--model", model.path, "--seed", "1", "--steps", "3",
                                                    "--guidance", "4", "--scheduler", "ddim", "--width", "64",
                                                    "--height", "64", "-o", png.path, "p"])
        XCTAssertEqual(run2.status, 0, run2.stderr)
        text = try metadata(png)
        XCTAssertEqual(text["steps"], "3")
        XCTAssertEqual(text["scheduler"], "ddim")
        XCTAssertEqual(text["guidance"], "4.0")
        XCTAssertEqual(text["size"], "64x64")
    }

    func testTheDefaultsTravelThroughConvertIntoTheGGUF() throws {
        let model = try tinyCopy(sddJSON: #"{"steps": 2, "scheduler": "dpm++2m"}"#)
        let gguf = dir.appendingPathComponent("m.gguf")
        let convert = try GenerateCommandTests.runSDD(["convert", "--model", model.path, "--type", "f16",
                                                       "--output", gguf.path])
        XCTAssertEqual(convert.status, 0, convert.stderr)
        let inspect = try GenerateCommandTests.runSDD(["inspect", gguf.path])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("sdd.defaults.steps = 2"), inspect.stdout)
        XCTAssertTrue(inspect.stdout.contains("defaults: 2 steps, guidance 7.5, dpm++2m, 64×64"), inspect.stdout)
        let png = dir.appendingPathComponent("g.png")
        let run = try GenerateCommandTests.runSDD(["generate", "--model", gguf.path, "--seed", "1", "-o", png.path, "p"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertEqual(try metadata(png)["scheduler"], "dpm++2m")
        XCTAssertEqual(try metadata(png)["steps"], "2")
    }

    func testAnUnimplementedSchedulerClassIsAClearErrorUntilOneIsNamed() throws {
        let model = try tinyCopy(sddJSON: nil, schedulerClass: "UniPCMultistepScheduler")
        let png = dir.appendingPathComponent("u.png")
        let run = try GenerateCommandTests.runSDD(["generate", "--model", model.path, "--steps", "2", "-o", png.path, "p"])
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.stderr.contains("UniPCMultistepScheduler"), run.stderr)
        XCTAssertTrue(run.stderr.contains("EulerDiscreteScheduler"), run.stderr)
        XCTAssertTrue(run.stderr.contains("--scheduler"), run.stderr)
        let named = try GenerateCommandTests.runSDD(["generate", "--model", model.path, "--steps", "2",
                                                     "--scheduler", "ddim", "-o", png.path, "p"])
        XCTAssertEqual(named.status, 0, named.stderr)
        let inspect = try GenerateCommandTests.runSDD(["inspect", model.path])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("UniPCMultistepScheduler"), inspect.stdout)
    }

    func testTheDemoModelShipsWithItsCardsStepsAndGuidance() throws {
        let demo = URL(fileURLWithPath: GenerateCommandTests.tinyModel).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("models/demo")
        let model = try StableDiffusionModel(url: demo)
        XCTAssertEqual(model.defaultSteps, 25)
        XCTAssertEqual(model.defaultGuidance, 2.5)
        XCTAssertEqual(try model.defaultScheduler(), .pndm)
        // The README's first command: plain flags and the model's defaults give the same picture.
        let plain = dir.appendingPathComponent("plain.png"), explicit = dir.appendingPathComponent("explicit.png")
        let prompt = "a large yellow square in the center on a blue background"
        let a = try GenerateCommandTests.runSDD(["generate", "--model", demo.path, "--seed", "0", "-o", plain.path, prompt])
        XCTAssertEqual(a.status, 0, a.stderr)
        let b = try GenerateCommandTests.runSDD(["generate", "--model", demo.path, "--steps", "25", "--guidance", "2.5",
                                                 "--seed", "0", "-o", explicit.path, prompt])
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertEqual(try Data(contentsOf: plain), try Data(contentsOf: explicit))
    }
}
