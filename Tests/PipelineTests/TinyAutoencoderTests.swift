// The AutoencoderTiny (TAESD) decoder: decoding in bands (of latent rows, or of a later stage's rows after whole
// low-resolution steps) with their halos gives the whole decode's image, and the bands follow the budget.

import Foundation
@testable import Pipeline
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
            XCTAssertLessThanOrEqual(worstDifference(banded, whole), Self.bandedTolerance, "band \(band)")
        }
    }

    /// Largest difference allowed between two decodes of the same latent whose convolutions ran on bands of other
    /// heights. Only the GEMMs' column counts change, which may reorder each conv's 72-term (8 channels × 3×3) sums:
    /// at most 71 · 2⁻²⁴ ≈ 4.2e-6 of the sum of their absolute terms per conv, terms that total well under 1 in this
    /// fixture, over its 20 convs in sequence (ReLU and nearest upsampling add none): below 1e-5. Measured: 1.2e-7
    /// (one ulp at 1); a halo one residual block short differs by 2e-4 or more.
    static let bandedTolerance: Float = 1e-5

    func worstDifference(_ a: Tensor, _ b: Tensor) -> Float {
        var worst: Float = 0
        for i in 0..<a.count { worst = max(worst, abs(a[i] - b[i])) }
        return worst
    }

    func testBandsAfterWholeLowResolutionStepsGiveTheWholeDecodesImage() throws {
        let d = try decoder()
        var random = TorchRandom(seed: 5)
        let z = random.randn([1, 4, 9, 6])
        let whole = d(z)
        let steps = TinyAutoencoderDecoder.layout(d.config).count
        XCTAssertEqual(steps, 18, "conv, 3 blocks, then per level ×2, conv and its blocks, and the RGB conv")
        // Every split point, with bands of 1 row (most halo recomputation), 5 and more rows than there are.
        for k in 0..<steps {
            for rows in [1, 5, 1000] {
                let banded = try d.decode(z, bands: TinyAutoencoderBands(wholeSteps: k, bandRows: rows))
                XCTAssertEqual(banded.shape, whole.shape)
                XCTAssertLessThanOrEqual(worstDifference(banded, whole), Self.bandedTolerance, "split \(k), rows \(rows)")
            }
        }
    }

    func testTheBandsFitTheBudgetOrAreNoneWhenTheWholeDecodeFits() throws {
        let d = try decoder()
        XCTAssertNil(d.bands(forBudgetBytes: 1 << 30, latentHeight: 64, latentWidth: 64, batch: 1))
        // Whole decode: 32 MiB at width 8; banded from the latent (the old way) a band of r rows needs (r + 38) · 512 KiB.
        let budget = 24 << 20
        let bands = try XCTUnwrap(d.bands(forBudgetBytes: budget, latentHeight: 64, latentWidth: 64, batch: 1))
        XCTAssertGreaterThanOrEqual(bands.bandRows, 1)
        XCTAssertLessThanOrEqual(TinyAutoencoderDecoder.tensorBytes(config: d.config, bands: bands, latentHeight: 64,
                                                                    latentWidth: 64, batch: 1), budget)
        // The low-resolution steps run whole: the bands recompute fewer rows than latent-row bands in that budget.
        XCTAssertGreaterThan(bands.wholeSteps, 0)
        let layout = TinyAutoencoderDecoder.layout(d.config)
        // (3 + 38) · 512 KiB of band maps, the 3 MiB image and the latent: 23.6 MiB.
        let latentRowBands = TinyAutoencoderBands(wholeSteps: 0, bandRows: 3)
        XCTAssertLessThanOrEqual(TinyAutoencoderDecoder.tensorBytes(config: d.config, bands: latentRowBands,
                                                                    latentHeight: 64, latentWidth: 64, batch: 1), budget)
        XCTAssertLessThan(TinyAutoencoderDecoder.convolutionRows(layout, bands: bands, latentHeight: 64),
                          TinyAutoencoderDecoder.convolutionRows(layout, bands: latentRowBands, latentHeight: 64))
    }

    func testTAESDAt512UnderA256MBudgetDecodesInAFewTallBands() throws {
        // madebyollin/taesd's decoder: width 64. Whole at 512×512: 4 maps of 64 × 512 × 512 F32 = 256 MiB.
        let config = try JSONDecoder().decode(TinyAutoencoderConfig.self, from: Data("{}".utf8))
        let room = 160 << 20
        let bands = try XCTUnwrap(TinyAutoencoderDecoder.bands(config: config, forBudgetBytes: room, latentHeight: 64,
                                                               latentWidth: 64, batch: 1))
        XCTAssertLessThanOrEqual(TinyAutoencoderDecoder.tensorBytes(config: config, bands: bands, latentHeight: 64,
                                                                    latentWidth: 64, batch: 1), room)
        let layout = TinyAutoencoderDecoder.layout(config)
        let whole = TinyAutoencoderDecoder.convolutionRows(layout, bands: nil, latentHeight: 64)
        // At most 5% more convolution work than the whole decode (latent-row bands recomputed most of it per band).
        XCTAssertLessThanOrEqual(TinyAutoencoderDecoder.convolutionRows(layout, bands: bands, latentHeight: 64),
                                 whole + whole / 20, "\(bands)")
    }

    func testACancelBetweenBandsStopsTheDecode() throws {
        var random = TorchRandom(seed: 1)
        XCTAssertThrowsError(try decoder().decode(random.randn([1, 4, 6, 4]), bandLatentRows: 2) { false }) {
            XCTAssertEqual($0 as? PipelineError, .cancelled)
        }
    }

    func testABandedTAESDPlanFitsItsBudgetAndSaysItsBands() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
            .replacingVAE(with: ModelFixtures.root.appendingPathComponent("tiny-taesd"))
        let pipeline = try StableDiffusionPipeline(model: model)
        let open = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 256, height: 256)
        XCTAssertGreaterThan(open.vaePeak, open.unetPeak, "at 256×256 the whole TAESD decode is the peak")
        XCTAssertTrue(open.description.hasSuffix("(untiled)"), open.description)
        let budget = (open.unetPeak + open.vaePeak) / 2
        let plan = try MemoryPlanner.plan(budget: budget, pipeline: pipeline, width: 256, height: 256)
        let bands = try XCTUnwrap(plan.vaeBands)
        XCTAssertLessThanOrEqual(plan.vaePeak, budget)
        XCTAssertTrue(plan.description.hasSuffix("(TAESD in \(bands))"), plan.description)
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
        // The decode's whole footprint, as planned: its tensors, its convs' scratch and the 8-bit image, no margin.
        let bytes = TinyAutoencoderDecoder.decodeBytes(config: tiny.config, bands: nil, latentHeight: 8, latentWidth: 8,
                                                       batch: 1)
        XCTAssertEqual(plan.vaeActivations, bytes.tensors + bytes.scratch + 64 * 64 * 3)
        XCTAssertGreaterThan(bytes.scratch, 0)
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
