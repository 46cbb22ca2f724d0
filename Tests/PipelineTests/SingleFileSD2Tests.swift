// A tiny SD 2.x CompVis single file (OpenCLIP text tower with fused in_proj and a 24th layer left out,
// linear projections, v-prediction DDIM) generates what diffusers' from_single_file does
// (tools/reference/make_single_file.py: single-file/tiny-sd2-parts.safetensors + tiny-sd2-config/).

import Foundation
import MMapWeights
import Pipeline
import TiledKernels
import XCTest

final class SingleFileSD2Tests: XCTestCase {
    static let single = ModelFixtures.root.appendingPathComponent("single-file")
    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-sd2-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    /// The committed parts plus what the model shares with tiny-sd: its token embedding and VAE.
    func writeTinySD2() throws -> URL {
        var writer = SafetensorsWriter()
        writer.metadata = ["format": "pt"]
        let parts = try SafetensorsFile(url: Self.single.appendingPathComponent("tiny-sd2-parts.safetensors"))
        for name in parts.tensorNames {
            let info = try XCTUnwrap(try parts.info(name))
            writer.add(name, dtype: info.dtype, shape: info.shape, bytes: Array(info.rawBytes))
        }
        let tinyModel = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let text = try ComponentWeights(directory: ModelFixtures.tinyModel, component: "text_encoder")
        let token = try XCTUnwrap(try text.info("text_model.embeddings.token_embedding.weight"))
        writer.add(CompVisNames.openCLIPPrefix + "token_embedding.weight", dtype: token.dtype, shape: token.shape,
                   bytes: Array(token.rawBytes))
        let vae = try ComponentWeights(directory: ModelFixtures.tinyModel, component: "vae")
        for name in vae.tensorNames {
            let info = try XCTUnwrap(try vae.info(name))
            let (target, shape) = try XCTUnwrap(tinyModel.compVisName(component: "vae", name: name, shape: info.shape))
            writer.add(target, dtype: info.dtype, shape: shape, bytes: Array(info.rawBytes))
        }
        let url = workDir.appendingPathComponent("tiny-sd2.safetensors")
        try writer.write(to: url)
        return url
    }

    func testTinySD2SingleFileWithConfigMatchesDiffusersFromSingleFile() throws {
        let file = try writeTinySD2()
        let options = ModelOpenOptions(configDirectory: Self.single.appendingPathComponent("tiny-sd2-config"))
        let model = try StableDiffusionModel(url: file, options: options)
        XCTAssertEqual(model.textEncoder.numHiddenLayers, 23)
        XCTAssertEqual(model.tokenizer.padID, 0, "SD 2.x pads with \"!\"")
        XCTAssertEqual(model.scheduler.predictionType, "v_prediction")
        let ran = try assertPipelineMatchesReference(model: file, folder: "single-file-sd2", options: options)
        XCTAssertEqual(ran, 1)
    }
}
