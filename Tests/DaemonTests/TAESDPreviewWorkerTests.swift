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
        let (image, stepFour) = try await runPreviewJob { $0.previewVAE = taesd }  // read when the first job loads
        XCTAssertEqual([image.width, image.height], [64, 64], "the TAESD's full size for the 64×64 image")
        // Decoded here through the pipeline's own TAESD decoder (tiny-sd with --vae tiny-taesd).
        let latents = stepFour.latents.slice(batch: 0..<1)
        let withTAESD = try StableDiffusionModel(url: Self.tinyModel).replacingVAE(with: taesd)
        let tiny = try XCTUnwrap(try StableDiffusionPipeline(model: withTAESD).tinyVAEDecoder())
        let z = Tensor(shape: latents.shape, data: latents.data.map { $0 / withTAESD.latentScalingFactor })
        XCTAssertEqual(image.rgb, StableDiffusionPipeline.rgb8(tiny(z))[0])
    }
}
