// MemoryPlanner: budgets parse as users write them, the plan accounts for SD 1.5's skip connections,
// a tight budget tiles the VAE, and an impossible one is refused with the numbers. What each block of a
// network allocates against what the planner counts is UNetPlannedBytesTests' and VAEPlannedBytesTests' job.

import Foundation
import Pipeline
import TiledKernels
import XCTest

final class MemoryPlannerTests: XCTestCase {
    func testSizesParseInTheUnitsUsersWrite() throws {
        XCTAssertEqual(try MemorySize.parse("256M"), 256 << 20)
        XCTAssertEqual(try MemorySize.parse("1.5G"), 3 << 29)
        XCTAssertEqual(try MemorySize.parse("300MiB"), 300 << 20)
        XCTAssertEqual(try MemorySize.parse("4096"), 4096)
        XCTAssertEqual(try MemorySize.parse("512k"), 512 << 10)
        XCTAssertEqual(try MemorySize.parse("1.5GiB"), 3 << 29)
        XCTAssertEqual(try MemorySize.parse("64MB"), 64 << 20)
        XCTAssertEqual(try MemorySize.parse("1T"), 1 << 40)
        XCTAssertEqual(try MemorySize.parse(" 2 tib "), 2 << 40)
        for bad in ["", "-1M", "lots", "12Q", "0", "G", "-1G", "0.5", "inf", "nan", "9000000T"] {
            XCTAssertThrowsError(try MemorySize.parse(bad), bad)
        }
    }

    func testSD15UNetActivationsIncludeTheSkipConnectionsOfBothGuidanceHalves() throws {
        let sd15 = try JSONDecoder().decode(UNetConfig.self, from: Data("{}".utf8))  // defaults = SD 1.5
        let bytes = try MemoryPlanner.unetActivationBytes(sd15, latentHeight: 64, latentWidth: 64, batch: 2)
        let skips = 6_635_520 * 4 * 2  // DESIGN.md: ~53 MB of F32 skip connections
        XCTAssertGreaterThan(bytes, skips)
        XCTAssertLessThan(bytes, 4 * skips, "activations stay within a small multiple of the skips")
    }

    func testATightBudgetTilesTheVAEAndAnImpossibleOneIsRefused() throws {
        let pipeline = try StableDiffusionPipeline(model: StableDiffusionModel(url: ModelFixtures.tinyModel))
        let open = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 256, height: 256)
        XCTAssertNil(open.vaeTiling)
        let budget = open.unetPeak + (open.vaePeak - open.unetPeak) / 2
        XCTAssertGreaterThan(open.vaePeak, open.unetPeak, "the untiled VAE is the peak at 256×256 on the tiny model")
        let tight = try MemoryPlanner.plan(budget: budget, pipeline: pipeline, width: 256, height: 256)
        XCTAssertNotNil(tight.vaeTiling)
        XCTAssertLessThanOrEqual(tight.peak, budget)
        XCTAssertThrowsError(try MemoryPlanner.plan(budget: 1 << 20, pipeline: pipeline, width: 256, height: 256)) {
            XCTAssertTrue("\($0)".contains("too small"), "\($0)")
        }
    }

    func testCompactUNetNeedsAboutHalfTheActivationsOfTheWholeBatch() throws {
        let sd15 = try JSONDecoder().decode(UNetConfig.self, from: Data("{}".utf8))
        let whole = try MemoryPlanner.unetActivationBytes(sd15, latentHeight: 64, latentWidth: 64, batch: 2)
        let compact = try MemoryPlanner.unetActivationBytes(sd15, latentHeight: 64, latentWidth: 64, batch: 2,
                                                        memory: .compact)
        XCTAssertLessThan(compact, whole * 2 / 3)
        XCTAssertGreaterThan(compact, whole / 3)
    }

    func testABudgetTheWholeBatchFitsKeepsTheBitExactUNet() throws {
        let pipeline = try StableDiffusionPipeline(model: StableDiffusionModel(url: ModelFixtures.tinyModel))
        let open = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 256, height: 256)
        XCTAssertEqual(open.unetMemory, .fastest)
        let roomy = try MemoryPlanner.plan(budget: open.peak + (1 << 20), pipeline: pipeline, width: 256, height: 256)
        XCTAssertEqual(roomy.unetMemory, .fastest)
    }

    func testABudgetedGenerationKeepsItsTensorsWithinThePlanAndLeavesNoneIdle() throws {
        let pipeline = try StableDiffusionPipeline(model: StableDiffusionModel(url: ModelFixtures.tinyModel))
        let open = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 256, height: 256)
        let budget = open.unetPeak + (open.vaePeak - open.unetPeak) / 2
        let context = try MemoryPlanner.runContext(budget: budget, pipeline: pipeline, width: 256, height: 256)
        defer {  // the run set the process-wide pools' limits; later tests run without them
            TensorMemory.limitFootprint(nil)
            ScratchArena.limitRetainedBytes(nil)
        }
        let plan = try XCTUnwrap(context.memoryPlan)
        XCTAssertNotNil(plan.vaeTiling)
        XCTAssertLessThan(plan.vaeTensorBytes, plan.vaeActivations, "kernel scratch and the margin are left out")
        var s = GenerationSettings(prompt: "a red circle")
        s.steps = 2
        s.seed = 3
        s.width = 256
        s.height = 256
        let generation = try pipeline.begin(s, context: context)
        while try generation.next() != nil {
            XCTAssertLessThanOrEqual(TensorMemory.liveBytes + TensorMemory.idleBytes,
                                     max(plan.unetTensorBytes, TensorMemory.liveBytes))
        }
        XCTAssertEqual(try generation.finish().images.count, 1)
        XCTAssertEqual(TensorMemory.idleBytes, 0, "the decode hands its idle blocks back")
    }
}
