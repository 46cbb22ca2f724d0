// stable-diffusion.cpp's GGUF files: CompVis names and no sdd metadata (written by PyPI's gguf package,
// tools/gguf/make_sdcpp_fixture.py), and the diffusers-names-under-CompVis-prefixes form that
// `sd-cli -M convert --convert-name` writes; both generate what diffusers does with the same weights.

import Foundation
import MMapWeights
import Pipeline
import TiledKernels
import XCTest

final class StableDiffusionCppGGUFTests: XCTestCase {
    static let fixture = ModelFixtures.root.appendingPathComponent("gguf/sdcpp-tiny-sd1.gguf")
    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-sdcpp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    var tinyConfig: ModelOpenOptions { ModelOpenOptions(configDirectory: ModelFixtures.tinyModel) }

    func testCompVisGGUFWithoutMetadataMatchesDiffusersOnItsWeights() throws {
        let gguf = try GGUFFile(url: Self.fixture)
        XCTAssertNil(gguf.value(SDDGGUFKey.formatVersion), "no sdd metadata")
        XCTAssertTrue(gguf.tensors.contains { $0.type == .q8_0 } && gguf.tensors.contains { $0.type == .q4_0 })
        // F32 products: the reference ran diffusers in F32 on the dequantized weights.
        let ran = try assertPipelineMatchesReference(model: Self.fixture, folder: "sdcpp-gguf-sd1", options: tinyConfig,
                                                     products: .f32)
        XCTAssertEqual(ran, 1)
    }

    /// `sd-cli -M convert --convert-name`: diffusers names under the CompVis prefixes.
    func testDiffusersNamesUnderCompVisPrefixesMatchDiffusers() throws {
        let gguf = try GGUFFile(url: Self.fixture)
        var shapes = [String: [Int]]()
        for t in gguf.tensors { shapes[t.name] = t.shape }
        let checkpoint = try SingleFileCheckpoint(shapes: shapes, file: Self.fixture.path, prediction: nil,
                                                  inferArchitecture: false)
        let prefixes = ["unet": CompVisNames.unetPrefix, "vae": CompVisNames.vaePrefix,
                        "text_encoder": CompVisNames.clipPrefix]
        var writer = GGUFWriter()
        for (component, map) in checkpoint.maps {
            for (name, entry) in map.sorted(by: { $0.key < $1.key }) {
                let info = try XCTUnwrap(gguf.tensor(entry.source))
                try writer.addTensor(try XCTUnwrap(prefixes[component]) + name, shape: info.shape, type: info.type,
                                     bytes: Array(gguf.bytes(of: info)))
            }
        }
        let url = workDir.appendingPathComponent("convert-name.gguf")
        try writer.write(to: url)
        XCTAssertTrue(try GGUFFile(url: url).tensor("model.diffusion_model.conv_in.weight") != nil)
        try assertPipelineMatchesReference(model: url, folder: "sdcpp-gguf-sd1", options: tinyConfig, products: .f32)
    }

    func testCompVisGGUFOpensWithoutConfigOnlyWhenShapesFit() throws {
        XCTAssertThrowsError(try StableDiffusionModel(url: Self.fixture)) { error in
            XCTAssertTrue("\(error)".contains("not a multiple of 32 groups"), "\(error)")
        }
    }
}
