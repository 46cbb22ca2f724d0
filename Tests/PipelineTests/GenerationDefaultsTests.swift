// A model's own defaults: the scheduler class its config names (diffusers' default), and steps, guidance,
// scheduler and size from sdd.json beside a folder or sdd.defaults.* in a GGUF file that `sdd convert` writes.

import Foundation
import MMapWeights
import Pipeline
import XCTest

final class GenerationDefaultsTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-defaults-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// A copy of tiny-sd with `sddJSON` as its sdd.json (none when nil).
    func tinyCopy(sddJSON: String?) throws -> URL {
        let copy = dir.appendingPathComponent("model-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: ModelFixtures.tinyModel, to: copy)
        if let text = sddJSON { try Data(text.utf8).write(to: copy.appendingPathComponent("sdd.json")) }
        return copy
    }

    func testTheSchedulerClassAModelNamesIsItsDefaultScheduler() throws {
        let cases: [(String, SchedulerKind)] = [("tiny-sd", .pndm), ("tiny-sd2-v", .ddim), ("tiny-sd2-base", .pndm),
                                                ("tiny-sd-turbo", .euler)]
        for (folder, kind) in cases {
            let model = try StableDiffusionModel(url: ModelFixtures.root.appendingPathComponent(folder))
            XCTAssertEqual(try model.defaultScheduler(), kind, folder)
            XCTAssertEqual(try GenerationSettings(prompt: "p", defaultsOf: model).scheduler, kind, folder)
        }
    }

    func testASchedulerClassSDDDoesNotImplementIsAnErrorNamingItAndTheSupportedOnes() throws {
        var config = SchedulerConfig.stableDiffusion15
        config.className = "UniPCMultistepScheduler"
        XCTAssertThrowsError(try config.implementedKind(file: "x/scheduler_config.json")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("UniPCMultistepScheduler"), text)
            XCTAssertTrue(text.contains("x/scheduler_config.json"), text)
            for kind in SchedulerKind.allCases { XCTAssertTrue(text.contains(kind.diffusersClassName), text) }
            XCTAssertTrue(text.contains("--scheduler"), text)
        }
        config.className = nil
        XCTAssertThrowsError(try config.implementedKind()) { XCTAssertTrue("\($0)".contains("_class_name"), "\($0)") }
        for kind in SchedulerKind.allCases {
            config.className = kind.diffusersClassName
            XCTAssertEqual(try config.implementedKind(), kind)
        }
    }

    func testWithoutSDDJsonTheDefaultsAreDiffusers() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        XCTAssertTrue(model.defaults.isEmpty)
        XCTAssertEqual(model.defaultSteps, 50)
        XCTAssertEqual(model.defaultGuidance, 7.5)
        XCTAssertEqual(model.defaultSize.width, 64)
    }

    func testSDDJsonSetsStepsGuidanceSchedulerAndSize() throws {
        let url = try tinyCopy(sddJSON: #"{"steps": 12, "guidance": 2.5, "scheduler": "DPMSolverMultistepScheduler", "width": 96, "height": 48}"#)
        let model = try StableDiffusionModel(url: url)
        XCTAssertEqual(model.defaults, GenerationDefaults(steps: 12, guidance: 2.5, scheduler: .dpmSolverMultistep,
                                                          width: 96, height: 48))
        let s = try GenerationSettings(prompt: "p", defaultsOf: model)
        XCTAssertEqual(s.steps, 12)
        XCTAssertEqual(s.guidance, 2.5)
        XCTAssertEqual(s.scheduler, .dpmSolverMultistep)
        let size = try StableDiffusionPipeline(model: model).validate(s)
        XCTAssertEqual(size.width, 96)
        XCTAssertEqual(size.height, 48)
    }

    func testABadSDDJsonIsAnErrorNamingTheFileAndField() throws {
        let bad: [(String, String)] = [
            (#"{"step": 20}"#, "step"), (#"{"steps": 0}"#, "steps"), (#"{"steps": 2.5}"#, "steps"),
            (#"{"guidance": "high"}"#, "guidance"), (#"{"guidance": -1}"#, "guidance"),
            (#"{"scheduler": "unipc"}"#, "scheduler"), (#"{"width": 100}"#, "width"), ("[1]", "(file)"),
        ]
        for (text, field) in bad {
            XCTAssertThrowsError(try GenerationDefaults.decode(Data(text.utf8), file: "m/sdd.json"), text) { error in
                XCTAssertTrue("\(error)".contains("m/sdd.json"), "\(error)")
                XCTAssertTrue("\(error)".contains("\"\(field)\""), "\(text): \(error)")
            }
        }
        let url = try tinyCopy(sddJSON: #"{"steps": 5000}"#)
        XCTAssertThrowsError(try StableDiffusionModel(url: url)) { XCTAssertTrue("\($0)".contains("sdd.json"), "\($0)") }
    }

    func testConvertCarriesTheDefaultsIntoGGUFMetadata() throws {
        let url = try tinyCopy(sddJSON: #"{"steps": 25, "guidance": 2.5, "scheduler": "euler-a", "width": 48, "height": 80}"#)
        let out = dir.appendingPathComponent("m.gguf")
        try ModelConverter.convert(diffusersFolder: url, to: out, options: ConversionOptions(type: .f32))
        let gguf = try GGUFFile(url: out)
        XCTAssertEqual(gguf.value(GenerationDefaults.Key.steps), .uint32(25))
        XCTAssertEqual(gguf.value(GenerationDefaults.Key.guidance), .float32(2.5))
        XCTAssertEqual(gguf.value(GenerationDefaults.Key.scheduler), .string("euler-a"))
        XCTAssertEqual(gguf.value(GenerationDefaults.Key.width), .uint32(48))
        XCTAssertEqual(gguf.value(GenerationDefaults.Key.height), .uint32(80))
        let model = try StableDiffusionModel(url: out)
        XCTAssertEqual(model.defaults, try StableDiffusionModel(url: url).defaults)

        let plain = dir.appendingPathComponent("plain.gguf")
        try ModelConverter.convert(diffusersFolder: ModelFixtures.tinyModel, to: plain, options: ConversionOptions(type: .f32))
        XCTAssertFalse(try GGUFFile(url: plain).metadata.contains { $0.key.hasPrefix("sdd.defaults.") })
        XCTAssertTrue(try StableDiffusionModel(url: plain).defaults.isEmpty)
    }

    func testAGGUFModelRunsTheSchedulerItsMetadataConfigNames() throws {
        let out = dir.appendingPathComponent("sd2v.gguf")
        try ModelConverter.convert(diffusersFolder: ModelFixtures.root.appendingPathComponent("tiny-sd2-v"), to: out,
                                   options: ConversionOptions(type: .f16))
        let model = try StableDiffusionModel(url: out)
        XCTAssertEqual(try model.defaultScheduler(), .ddim)
        XCTAssertEqual(model.scheduler.predictionType, "v_prediction")
    }

    func testAGGUFDefaultOfTheWrongTypeIsAnErrorNamingTheKey() throws {
        var writer = GGUFWriter()
        writer.set(GenerationDefaults.Key.steps, .string("many"))
        let path = dir.appendingPathComponent("d.gguf")
        try writer.stream(to: path) { _, _ in }
        XCTAssertThrowsError(try GenerationDefaults(gguf: GGUFFile(url: path))) {
            XCTAssertTrue("\($0)".contains(GenerationDefaults.Key.steps), "\($0)")
        }
    }
}
