// A run's memory settings travel in its RunContext: a run under a tight plan leaves nothing behind — neither on the
// pipeline nor in the process-wide pools' limits — so the next run without a plan gives a fresh pipeline's image.

import Foundation
import Pipeline
import TiledKernels
import XCTest

final class RunContextTests: XCTestCase {
    override func tearDown() {
        // The runs set the process-wide pools' limits stage by stage; later tests start without them.
        TensorMemory.limitFootprint(nil)
        ScratchArena.limitRetainedBytes(nil)
    }

    func testATightRunLeavesNothingForTheNextRunWithoutAPlan() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        var s = GenerationSettings(prompt: "a red circle")
        s.steps = 1
        s.scheduler = .euler
        s.seed = 5
        s.width = 384
        s.height = 384
        // Each run records the process-wide limits (tensor pool, scratch) its steps see.
        var freshLimits: [[Int?]] = []
        let fresh = try StableDiffusionPipeline(model: model).generate(s) { _ in
            freshLimits.append([TensorMemory.footprintLimit, ScratchArena.retainedBytesLimit])
            return true
        }

        let pipeline = try StableDiffusionPipeline(model: model)
        let open = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 384, height: 384)
        let tight = try MemoryPlanner.runContext(budget: open.unetPeak - 1, pipeline: pipeline, width: 384, height: 384)
        let plan = try XCTUnwrap(tight.memoryPlan)
        XCTAssertEqual(tight.unetMemory, .compact, "a budget under the fastest UNet's peak needs the compact UNet")
        XCTAssertNotNil(tight.vaeTiling, "and tiles the decode")
        var tightLimits: [[Int?]] = []
        let tightResult = try pipeline.generate(s, context: tight) { _ in
            tightLimits.append([TensorMemory.footprintLimit, ScratchArena.retainedBytesLimit])
            return true
        }
        XCTAssertEqual(tightLimits, Array(repeating: [plan.unetTensorBytes, max(plan.scratch, ProcessMemory.retainedScratchBytes)],
                                          count: 1), "the tight run's steps run under its plan's limits")
        XCTAssertNotEqual(tightResult.images, fresh.images, "the tight run is another run (compact UNet, tiled decode)")

        var nextLimits: [[Int?]] = []
        let next = try pipeline.generate(s) { _ in
            nextLimits.append([TensorMemory.footprintLimit, ScratchArena.retainedBytesLimit])
            return true
        }
        XCTAssertEqual(next.latents.data, fresh.latents.data)
        XCTAssertEqual(next.images, fresh.images, "byte for byte the image of a pipeline that never ran under a plan")
        XCTAssertEqual(nextLimits, freshLimits, "the next run's steps run under a fresh run's limits")
        XCTAssertEqual(nextLimits.map { $0[1] }, [nil], "without a plan every scratch buffer is kept")
    }

    func testAGenerationKeepsTheContextItBeganWith() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "x")
        s.steps = 1
        s.seed = 1
        let tiling = VAETiling(tileLatentSize: 4)
        let generation = try pipeline.begin(s, context: RunContext(unetMemory: .compact, vaeTiling: tiling))
        XCTAssertEqual(generation.runContext.unetMemory, .compact)
        XCTAssertEqual(generation.runContext.vaeTiling?.tileLatentSize, 4)
        XCTAssertNil(generation.runContext.memoryPlan)
        XCTAssertEqual(try pipeline.resume(generation.state).runContext.unetMemory, .fastest,
                       "a resumed run takes the context it is given, not the other run's")
        let unplanned = try MemoryPlanner.runContext(budget: nil, pipeline: pipeline, width: 64, height: 64)
        XCTAssertNil(unplanned.memoryPlan, "no budget: no plan")
        XCTAssertEqual(unplanned.unetMemory, .fastest)
        XCTAssertNil(unplanned.vaeTiling)
        XCTAssertNil(unplanned.retainedScratchBytes)
    }
}
