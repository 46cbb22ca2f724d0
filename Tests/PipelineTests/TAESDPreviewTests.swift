// TAESD previews (`--preview-vae`): a preview is the AutoencoderTiny decode of the step's latents — the pipeline's
// own TinyAutoencoderDecoder in-process, and diffusers' AutoencoderTiny on its step latents
// (tools/reference/make_taesd_preview_fixture.py) — and larger latents are averaged down to stay within the budget.

import Foundation
import MMapWeights
import Pipeline
import TestSupport
import TiledKernels
import XCTest

final class TAESDPreviewTests: XCTestCase {
    static let taesd = ModelFixtures.root.appendingPathComponent("tiny-taesd")

    func testAPreviewIsThePipelinesTAESDDecodeOfTheLatents() throws {
        let preview = try TAESDPreview(folder: Self.taesd)
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel).replacingVAE(with: Self.taesd)
        let tiny = try XCTUnwrap(try StableDiffusionPipeline(model: model).tinyVAEDecoder())
        var random = TorchRandom(seed: 3)
        let latents = random.randn([2, 4, 8, 6])
        let first = latents.slice(batch: 0..<1)
        let z = Tensor(shape: first.shape, data: first.data.map { $0 / model.latentScalingFactor })
        let expected = StableDiffusionPipeline.rgb8(tiny(z))[0]
        let image = try XCTUnwrap(preview.rgb(latents))
        XCTAssertEqual([image.width, image.height], [48, 64], "the TAESD's full size for an 8×6 latent")
        XCTAssertEqual(image.rgb, expected, "same code, same process: the same bytes")
        let png = try PNGReader.decode(try XCTUnwrap(preview.png(latents)))
        XCTAssertEqual(png.rgb, expected)
    }

    func testPreviewsOfDiffusersStepLatentsMatchDiffusersAutoencoderTiny() throws {
        let preview = try TAESDPreview(folder: Self.taesd)
        let steps = try XCTUnwrap(try ModelFixtures.tensors("pipeline_pndm_default.safetensors")["step_latents"])
        let file = try SafetensorsFile(url: ModelFixtures.reference.appendingPathComponent(
            "taesd-preview/pndm_default_previews.safetensors"))
        let info = try XCTUnwrap(file.info("previews"))
        let previews = Array(info.rawBytes)
        let n = steps.shape[0], each = steps.count / n, pixels = 64 * 64 * 3
        XCTAssertEqual(info.shape, [n, 64, 64, 3])
        var worst = Double.infinity
        defer { print("TAESD previews of diffusers' step latents: worst PSNR \(worst) dB over \(n) steps") }
        for i in 0..<n {
            let latents = Tensor(shape: Array(steps.shape.dropFirst()), data: Array(steps.data[(i * each)..<((i + 1) * each)]))
            let image = try XCTUnwrap(preview.rgb(latents))
            let db = psnr(image.rgb, Array(previews[(i * pixels)..<((i + 1) * pixels)]))
            worst = min(worst, db)
            // The parity bar for images (issue #2): ≥ 45 dB, a few values off by one level at most.
            XCTAssertGreaterThanOrEqual(db, 45, "step \(i + 1)")
        }
    }

    func testLatentsTooLargeForTheBudgetAreAveragedDownAndDecodedWithinIt() throws {
        // Whole decode of 8×8 latents at the fixture's width 8: 4 maps × 8 channels × 64² px × 4 B = 512 KiB.
        let budget = 200 << 10
        let preview = try TAESDPreview(folder: Self.taesd, budgetBytes: budget)
        XCTAssertEqual(preview.poolFactor(latentHeight: 8, latentWidth: 8), 2)
        XCTAssertEqual(try TAESDPreview(folder: Self.taesd).poolFactor(latentHeight: 8, latentWidth: 8), 1)
        XCTAssertLessThanOrEqual(TinyAutoencoderDecoder.tensorBytes(config: preview.config, latentRows: 4, latentWidth: 4,
                                                                    batch: 1), budget)
        let latents = Tensor(shape: [1, 4, 8, 8], data: (0..<256).map { Float(sin(Double($0) * 0.37)) })
        let z = try XCTUnwrap(preview.decoderInput(latents))
        XCTAssertEqual(z.shape, [1, 4, 4, 4])
        // Cell (0, 0) of channel 1 is the mean of latent cells (0…1, 0…1) of channel 1.
        let mean = (latents[64] + latents[65] + latents[72] + latents[73]) / 4 / preview.config.scalingFactor
        XCTAssertEqual(z[16], mean, accuracy: 1e-6)
        let image = try XCTUnwrap(preview.rgb(latents))
        XCTAssertEqual([image.width, image.height], [32, 32])
        let tiny = try TinyAutoencoderDecoder(config: preview.config,
                                              weights: try ComponentWeights(directory: Self.taesd, component: ""))
        XCTAssertEqual(image.rgb, StableDiffusionPipeline.rgb8(tiny(z))[0])
        // What a memory plan keeps aside: the decode's budget, the weights, 18 B for each of at most 200 KiB / (16 · 8)
        // preview pixels.
        XCTAssertEqual(preview.reservedBytes, budget + tiny.totalWeightBytes + budget / (16 * 8) * 18)
    }

    func testOnlyATAESDWithTheModelsLatentChannelsIsTaken() throws {
        XCTAssertThrowsError(try TAESDPreview(folder: ModelFixtures.root.appendingPathComponent("tiny-vae-kl"))) {
            XCTAssertTrue("\($0)".contains("AutoencoderTiny"), "\($0)")
        }
        XCTAssertThrowsError(try TAESDPreview(folder: ModelFixtures.root.appendingPathComponent("no-such-taesd"))) {
            XCTAssertTrue("\($0)".contains("no-such-taesd"), "\($0)")
        }
        let preview = try TAESDPreview(folder: Self.taesd)
        XCTAssertNoThrow(try preview.check(latentChannels: 4))
        XCTAssertThrowsError(try preview.check(latentChannels: 16)) {
            XCTAssertTrue("\($0)".contains("latent_channels"), "\($0)")
        }
        XCTAssertNil(preview.rgb(Tensor(shape: [1, 3, 4, 4], data: [Float](repeating: 0, count: 48))))
    }
}
