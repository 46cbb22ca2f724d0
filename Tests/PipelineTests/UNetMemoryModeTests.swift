// The UNet's compact memory mode (item by item, F16 skip connections) that the planner picks under a
// tight budget: it must give the batched result within a small tolerance, and plan honestly.

import Foundation
import Pipeline
import TiledKernels
import XCTest

final class UNetMemoryModeTests: XCTestCase {
    /// Running one batch item instead of two changes only the shapes of the products, and with them the order in
    /// which OpenBLAS (whatever kernels it picked) or the Winograd and attention tiles sum each product's K terms:
    /// a difference of at most K·2⁻²⁴ of Σ|terms| per product, ~√K·2⁻²⁴ with random signs. The tiny UNet runs
    /// about L = 64 products in sequence with K ≤ 288 (3×3 convolutions over 32 channels) and GroupNorm between
    /// them, so the differences add up to at most about L·√K·2⁻²⁴ ≈ 6.5e-5 of the output's scale.
    static let batchShapeTolerance: Float = 1e-4
    /// The tiny UNet on a guided-style batch of two different items, with its output in the default mode.
    private func tinyUNetBatch() throws -> (unet: UNet, sample: Tensor, context: Tensor, t: Float) {
        let directory = ModelFixtures.tinyModel
        let configURL = directory.appendingPathComponent("unet").appendingPathComponent("config.json")
        let config = try JSONDecoder().decode(UNetConfig.self, from: Data(contentsOf: configURL))
        let unet = try UNet(config: config, weights: try ComponentWeights(directory: directory, component: "unet"))
        let ref = try ModelFixtures.tensors("unet.safetensors")
        let sample = try XCTUnwrap(ref["sample"]).slice(batch: 0..<1)
        let context = try XCTUnwrap(ref["encoder_hidden_states"]).slice(batch: 0..<1)
        let t = try XCTUnwrap(ref["timestep"])[0]
        // Two items that differ (as the uncond / cond halves of a guided batch do).
        return (unet, Tensor.stack(batches: [sample, scale(sample, by: -0.5)]),
                Tensor.stack(batches: [scale(context, by: 0.25), context]), t)
    }

    func testItemByItemMatchesTheWholeBatch() throws {
        let (unet, sample, context, t) = try tinyUNetBatch()
        let whole = unet(sample, timestep: t, context: context)
        let items = unet(sample, timestep: t, context: context,
                         memory: UNetMemoryMode(itemByItem: true, halfPrecisionSkips: false, itemByItemMinimumPixels: 0))
        XCTAssertEqual(items.shape, whole.shape)
        let err = relativeMaxError(items, whole)
        XCTAssertLessThanOrEqual(err, Self.batchShapeTolerance, "item by item relative error \(err)")
    }

    func testItemByItemOnlyAtTheTopLevelMatchesTheWholeBatch() throws {
        // The lanes split at the top level, join below it and split again on the way up; skips keep their lanes.
        let (unet, sample, context, t) = try tinyUNetBatch()
        let top = sample.shape[2] * sample.shape[3]
        let whole = unet(sample, timestep: t, context: context)
        for f16 in [false, true] {
            let mixed = unet(sample, timestep: t, context: context,
                             memory: UNetMemoryMode(itemByItem: true, halfPrecisionSkips: f16, itemByItemMinimumPixels: top))
            let err = relativeMaxError(mixed, whole)
            XCTAssertLessThanOrEqual(err, f16 ? 2e-3 : Self.batchShapeTolerance, "top level item by item, F16 skips \(f16): \(err)")
        }
    }

    func testCompactModeStaysWithinF16RoundingOfTheWholeBatch() throws {
        let (unet, sample, context, t) = try tinyUNetBatch()
        let whole = unet(sample, timestep: t, context: context)
        var compactEverywhere = UNetMemoryMode.compact
        compactEverywhere.itemByItemMinimumPixels = 0
        let compact = unet(sample, timestep: t, context: context, memory: compactEverywhere)
        XCTAssertEqual(compact.shape, whole.shape)
        let err = relativeMaxError(compact, whole)
        // F16 keeps 11 significant bits (relative rounding 2^-11 ≈ 5e-4) on the skips only.
        XCTAssertLessThanOrEqual(err, 2e-3, "compact relative error \(err)")
        XCTAssertGreaterThan(err, 0, "F16 skips round, so the result is not bit-exact")
        print("compact UNet: relative error \(err)")
    }

    func testEachItemOfTheCompactBatchMatchesThatItemAlone() throws {
        let (unet, sample, context, t) = try tinyUNetBatch()
        let compact = unet(sample, timestep: t, context: context, memory: .compact)
        let second = unet(sample.slice(batch: 1..<2), timestep: t, context: context.slice(batch: 1..<2),
                          memory: .compact)
        // Both run the compact mode; only the batch shape differs. A skip value that the batch shape moved across
        // an F16 rounding boundary rounds one F16 step (2⁻¹¹ relative) the other way, so the F16 bound applies;
        // an item mixed with the other lane would be off by the scale of the output itself.
        XCTAssertLessThanOrEqual(relativeMaxError(compact.slice(batch: 1..<2), second), 2e-3)
    }
}
