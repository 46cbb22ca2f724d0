// `sdd convert` from single files and with CompVis names (`--names compvis`): the GGUF stable-diffusion.cpp
// recognises keeps sdd's metadata, reads back in sdd, and generates what diffusers' from_single_file does.

import Foundation
import MMapWeights
import Pipeline
import TiledKernels
import XCTest

final class CompVisConversionTests: XCTestCase {
    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-cvconv-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    var tinyConfig: ModelOpenOptions { ModelOpenOptions(configDirectory: ModelFixtures.tinyModel) }

    func testSingleFileConvertsToCompVisNamedGGUFThatKeepsMetadataAndMatchesDiffusers() throws {
        let single = workDir.appendingPathComponent("tiny-sd1.safetensors")
        try TinySingleFile.write(to: single)
        let out = workDir.appendingPathComponent("tiny-compvis-f32.gguf")
        try ModelConverter.convert(model: single, openOptions: tinyConfig, to: out,
                                   options: ConversionOptions(type: .f32, naming: .compvis))
        let gguf = try GGUFFile(url: out)
        XCTAssertEqual(gguf.value(SDDGGUFKey.names)?.stringValue, "compvis")
        XCTAssertNotNil(gguf.value(SDDGGUFKey.unetConfig)?.stringValue)
        XCTAssertNotNil(gguf.value(SDDGGUFKey.tokenizerMerges)?.stringValue)
        let names = Set(gguf.tensors.map(\.name))
        for prefix in [CompVisNames.unetPrefix, CompVisNames.vaePrefix, CompVisNames.clipPrefix + "text_model."] {
            XCTAssertTrue(names.contains { $0.hasPrefix(prefix) }, prefix)
        }
        XCTAssertTrue(names.contains("model.diffusion_model.input_blocks.1.0.in_layers.2.weight"))
        XCTAssertEqual(gguf.tensor("first_stage_model.decoder.mid.attn_1.q.weight")?.shape.count, 4, "a 1×1 conv, as CompVis")
        // stable-diffusion.cpp builds ggml with GGML_MAX_NAME=160 (names up to 159 bytes).
        XCTAssertLessThan(names.map(\.utf8.count).max() ?? 0, 160)
        // No --config needed to read it back: the configs travel in the metadata.
        let ran = try assertPipelineMatchesReference(model: out, folder: "single-file-sd1")
        XCTAssertEqual(ran, 2)
    }

    func testQuantizedCompVisFileKeepsConvKernelsFourDimensionalInF16() throws {
        let out = workDir.appendingPathComponent("tiny-compvis-q8.gguf")
        try ModelConverter.convert(model: ModelFixtures.tinyModel, to: out,
                                   options: ConversionOptions(type: .q8_0, naming: .compvis))
        let gguf = try GGUFFile(url: out)
        XCTAssertNil(gguf.value(SDDGGUFKey.tensorShapes), "every tensor in its own shape")
        let conv = try XCTUnwrap(gguf.tensor("model.diffusion_model.input_blocks.1.0.in_layers.2.weight"))
        XCTAssertEqual(conv.shape, [16, 16, 3, 3])
        XCTAssertEqual(conv.type, .f16)
        XCTAssertTrue(gguf.tensors.contains { $0.type == .q8_0 && $0.name.hasPrefix(CompVisNames.unetPrefix) })
        let model = try StableDiffusionModel(url: out)
        XCTAssertEqual(model.unet.blockOutChannels, [16, 16, 32, 32])
        var s = GenerationSettings(prompt: "a photograph of an astronaut riding a horse")
        s.steps = 2
        s.seed = 0
        let result = try StableDiffusionPipeline(model: model).generate(s) { _ in true }
        XCTAssertEqual(result.images.count, 1)
    }

    func testSDDNamedConversionFromASingleFileMatchesDiffusers() throws {
        let single = workDir.appendingPathComponent("tiny-sd1.safetensors")
        try TinySingleFile.write(to: single)
        let out = workDir.appendingPathComponent("tiny-sdd-f32.gguf")
        try ModelConverter.convert(model: single, openOptions: tinyConfig, to: out, options: ConversionOptions(type: .f32))
        let gguf = try GGUFFile(url: out)
        XCTAssertNotNil(gguf.tensor("unet.conv_in.weight"))
        try assertPipelineMatchesReference(model: out, folder: "single-file-sd1")
    }
}
