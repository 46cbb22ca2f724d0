// Parity of the text encoder, UNet and VAE decoder with transformers / diffusers on the committed
// tiny random-weight model of the real SD 1.x architecture.

import Foundation
import Pipeline
import TiledKernels
import XCTest

final class ModelParityTests: XCTestCase {
    /// Component outputs must match the PyTorch fp32 reference to this relative max error.
    let tolerance: Float = 1e-4

    func testTextEncoderLastHiddenStateMatchesTransformers() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let ref = try ModelFixtures.tensors("text_encoder.safetensors")
        let ids = try XCTUnwrap(ref["input_ids"])
        let rows = ids.shape[0], tokens = ids.shape[1]
        let idRows = (0..<rows).map { r in (0..<tokens).map { Int32(ids[r * tokens + $0]) } }
        let weights = try ComponentWeights(directory: model.url, component: "text_encoder")
        let encoder = try CLIPTextEncoder(config: model.textEncoder, weights: weights)
        let out = try encoder.encode(idRows)
        let err = relativeMaxError(out, try XCTUnwrap(ref["last_hidden_state"]))
        XCTAssertLessThanOrEqual(err, tolerance, "text encoder relative error \(err)")
        print("parity text encoder: relative error \(err)")
    }

    func testTokenizerFeedsTheTextEncoderTheReferenceIds() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let meta = try ModelFixtures.json("text_encoder.json")
        let prompts = try XCTUnwrap(meta["prompts"] as? [String])
        let expected = try XCTUnwrap(meta["input_ids"] as? [[Int]])
        let tokenizer = model.tokenizer
        for (prompt, ids) in zip(prompts, expected) {
            XCTAssertEqual(tokenizer.encode(prompt, maxLength: 77).ids.map(Int.init), ids, prompt)
        }
    }

    private func checkUNet(directory: URL, component: String, fixture: String) throws {
        let configURL = directory.appendingPathComponent(component).appendingPathComponent("config.json")
        let config = try JSONDecoder().decode(UNetConfig.self, from: Data(contentsOf: configURL))
        let weights = try ComponentWeights(directory: directory, component: component)
        let unet = try UNet(config: config, weights: weights)
        let ref = try ModelFixtures.tensors(fixture)
        let t = try XCTUnwrap(ref["timestep"])[0]
        let out = unet(try XCTUnwrap(ref["sample"]), timestep: t, context: try XCTUnwrap(ref["encoder_hidden_states"]))
        let err = relativeMaxError(out, try XCTUnwrap(ref["out"]))
        XCTAssertLessThanOrEqual(err, tolerance, "\(fixture): UNet relative error \(err)")
        print("parity \(fixture): relative error \(err)")
    }

    func testUNetWithConvProjectionsMatchesDiffusers() throws {
        try checkUNet(directory: ModelFixtures.tinyModel, component: "unet", fixture: "unet.safetensors")
    }

    func testUNetWithLinearProjectionsMatchesDiffusers() throws {
        try checkUNet(directory: ModelFixtures.root, component: "tiny-unet-linear", fixture: "unet_linear.safetensors")
    }

    func testVAEDecoderMatchesDiffusers() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let weights = try ComponentWeights(directory: model.url, component: "vae")
        let vae = try VAEDecoder(config: model.vae, weights: weights)
        let ref = try ModelFixtures.tensors("vae.safetensors")
        let out = vae(try XCTUnwrap(ref["latents"]))
        let err = relativeMaxError(out, try XCTUnwrap(ref["image"]))
        XCTAssertLessThanOrEqual(err, tolerance, "VAE relative error \(err)")
        print("parity VAE decoder: relative error \(err)")
    }
}
