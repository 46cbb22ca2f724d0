// The worker's previews with `previewVAE` (sdd serve --preview-vae): each is the TAESD decode of the step's
// latents, and the job's images are byte for byte those of the pipeline run without previews (same process).

import Daemon
import Foundation
import Pipeline
import SDDAPI
import TestSupport
import TiledKernels
import XCTest

extension ServerTests {
    func testTAESDPreviewsAreTheTAESDDecodeOfTheStepAndLeaveTheImagesAlone() async throws {
        let taesd = Self.tinyModel.deletingLastPathComponent().appendingPathComponent("tiny-taesd")
        let daemon = try await startDaemon(previewEvery: 2)
        daemon.worker.previewVAE = taesd  // read when the first job loads the model
        let job = try submit(JobRequest(prompt: "a red circle", steps: 6, seed: 42, scheduler: "lcm", count: 2))
        XCTAssertEqual(try events(job.id).last?.event, .finished)

        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: Self.tinyModel))
        var stepFour: StepProgress?
        let direct = try pipeline.generate(RequestValidation.settings(job.settings)) { p in
            if p.step == 4 { stepFour = p }
            return true
        }
        for n in 0..<2 {
            let png = try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(job.id)/images/\(n)")
            XCTAssertEqual(try PNGReader.decode(png.body).rgb, direct.images[n], "image \(n) is the same as without previews")
        }
        let preview = try UnixHTTPClient.request(socketPath, "GET", "/v1/jobs/\(job.id)/preview")
        XCTAssertEqual(preview.status, 200)
        XCTAssertEqual(preview.headers["x-sdd-preview-step"], "4/6")
        let image = try PNGReader.decode(preview.body)
        XCTAssertEqual([image.width, image.height], [64, 64], "the TAESD's full size for the 64×64 image")
        // Decoded here through the pipeline's own TAESD decoder (tiny-sd with --vae tiny-taesd).
        let latents = try XCTUnwrap(stepFour).latents.slice(batch: 0..<1)
        let withTAESD = try StableDiffusionModel(url: Self.tinyModel).replacingVAE(with: taesd)
        let tiny = try XCTUnwrap(try StableDiffusionPipeline(model: withTAESD).tinyVAEDecoder())
        let z = Tensor(shape: latents.shape, data: latents.data.map { $0 / withTAESD.latentScalingFactor })
        XCTAssertEqual(image.rgb, StableDiffusionPipeline.rgb8(tiny(z))[0])
    }
}
