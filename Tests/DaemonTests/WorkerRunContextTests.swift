// The worker plans each job on its own under its memory budget: two consecutive jobs of different sizes get
// their own plans, and each job's image is the pipeline's own under that job's plan (same process, byte for byte).

import Daemon
import Foundation
import Pipeline
import SDDAPI
import TestSupport
import TiledKernels
import XCTest

extension ServerTests {
    func testConsecutiveJobsUnderABudgetEachRunTheirOwnPlan() async throws {
        defer {  // the jobs set the process-wide pools' limits; later tests start without them
            TensorMemory.limitFootprint(nil)
            ScratchArena.limitRetainedBytes(nil)
        }
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: Self.tinyModel))
        let large = JobRequest(prompt: "a red circle", steps: 2, width: 256, height: 256, seed: 3, scheduler: "euler")
        let small = JobRequest(prompt: "a blue square", steps: 2, width: 64, height: 64, seed: 4, scheduler: "euler")
        // A budget the large job's UNet fits but not its whole decode (so it tiles), and the small job fits whole.
        let open = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 256, height: 256)
        let budget = open.unetPeak + (open.vaePeak - open.unetPeak) / 2
        let largeContext = try MemoryPlanner.runContext(budget: budget, pipeline: pipeline, width: 256, height: 256)
        let smallContext = try MemoryPlanner.runContext(budget: budget, pipeline: pipeline, width: 64, height: 64)
        XCTAssertNotNil(largeContext.vaeTiling, "the large job's decode tiles under \(budget)")
        XCTAssertNil(smallContext.vaeTiling, "the small job's decode fits whole")
        XCTAssertEqual(smallContext.unetMemory, .fastest)

        try await startDaemon(memoryBudget: budget)
        var images: [[UInt8]] = []
        for request in [large, small] {  // one after the other: the small job runs after the large one's plan
            let job = try submit(request)
            XCTAssertEqual(try events(job.id).last?.event, .finished)
            let png = try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(job.id)/images/0")
            images.append(try PNGReader.decode(png.body).rgb)
        }
        let tiled = try pipeline.generate(RequestValidation.settings(large), context: largeContext).images[0]
        XCTAssertEqual(images[0], tiled, "the large job decoded in its plan's tiles")
        XCTAssertNotEqual(images[0], try pipeline.generate(RequestValidation.settings(large)).images[0])
        XCTAssertEqual(images[1], try directImage(small), "the small job ran untiled, as a fresh pipeline does")
    }
}
