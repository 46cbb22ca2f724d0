// The AutoencoderTiny (TAESD) decoder: decoding in bands of latent rows with its halo gives the whole decode's
// image, and the band height follows the budget.

import Foundation
import Pipeline
import TiledKernels
import XCTest

final class TinyAutoencoderTests: XCTestCase {
    func decoder() throws -> TinyAutoencoderDecoder {
        let folder = ModelFixtures.root.appendingPathComponent("tiny-taesd")
        let config = try JSONDecoder().decode(TinyAutoencoderConfig.self,
                                              from: Data(contentsOf: folder.appendingPathComponent("config.json")))
        return try TinyAutoencoderDecoder(config: config, weights: ComponentWeights(directory: folder, component: ""))
    }

    func testTheHaloCoversEveryConvolutionBetweenLatentAndPixel() throws {
        // conv_in + 3 blocks (9 convs) at 1×, then per level: one conv after ×2, its blocks; ⌈⌉ at each ×2
        // (TAESD's (3, 3, 3, 1)): 19 latent rows.
        XCTAssertEqual(try decoder().haloLatentRows, 19)
    }

    func testBandsGiveTheWholeDecodesImage() throws {
        let d = try decoder()
        var random = TorchRandom(seed: 3)
        let z = random.randn([1, 4, 24, 5])
        let whole = d(z)
        XCTAssertEqual(whole.shape, [1, 3, 192, 40])
        for band in [1, 4, 7] {
            let banded = try d.decode(z, bandLatentRows: band)
            XCTAssertEqual(banded.shape, whole.shape)
            // Same kernels on other band heights: only float summation order may differ (observed ≤ 1e-6).
            var worst: Float = 0
            for i in 0..<whole.count { worst = max(worst, abs(banded[i] - whole[i])) }
            XCTAssertLessThanOrEqual(worst, 1e-5, "band \(band)")
        }
    }

    func testTheBandFitsTheBudgetOrIsNoneWhenTheWholeDecodeFits() throws {
        let d = try decoder()
        XCTAssertNil(d.bandLatentRows(forBudgetBytes: 1 << 30, latentHeight: 64, latentWidth: 64, batch: 1))
        let budget = 24 << 20  // whole decode: 32 MiB at width 8; a band of r rows plus halos: (r + 38) · 512 KiB
        let band = try XCTUnwrap(d.bandLatentRows(forBudgetBytes: budget, latentHeight: 64, latentWidth: 64, batch: 1))
        XCTAssertGreaterThanOrEqual(band, 1)
        XCTAssertLessThanOrEqual(TinyAutoencoderDecoder.tensorBytes(
            config: d.config, latentRows: band + 2 * d.haloLatentRows, latentWidth: 64, batch: 1), budget)
    }

    func testACancelBetweenBandsStopsTheDecode() throws {
        var random = TorchRandom(seed: 1)
        XCTAssertThrowsError(try decoder().decode(random.randn([1, 4, 6, 4]), bandLatentRows: 2) { false }) {
            XCTAssertEqual($0 as? PipelineError, .cancelled)
        }
    }

    func testTheMemoryPlanOfATAESDModelIsTheTAESDs() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
            .replacingVAE(with: ModelFixtures.root.appendingPathComponent("tiny-taesd"))
        let pipeline = try StableDiffusionPipeline(model: model)
        let tiny = try XCTUnwrap(try pipeline.tinyVAEDecoder())
        let plan = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 64, height: 64)
        XCTAssertEqual(plan.vaeTensorBytes, TinyAutoencoderDecoder.tensorBytes(config: tiny.config, latentRows: 8,
                                                                                latentWidth: 8, batch: 1))
        XCTAssertEqual(plan.vaeWeights, tiny.totalWeightBytes)
        XCTAssertNil(plan.vaeTiling)
        // A budgeted generation decodes with the TAESD (the model's own AutoencoderKL is never bound).
        var s = GenerationSettings(prompt: "a cat")
        s.steps = 2
        s.seed = 4
        let whole = try pipeline.generate(s)
        let planned = try MemoryPlanner.runContext(budget: 1 << 30, pipeline: pipeline, width: nil, height: nil)
        XCTAssertNotNil(planned.memoryPlan)
        XCTAssertEqual(try pipeline.generate(s, context: planned).images, whole.images)
    }
}
