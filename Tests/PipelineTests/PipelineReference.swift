// Test support: replays the whole-pipeline cases of a reference folder (pipeline.json plus one
// .safetensors per case, written by tools/reference/make_reference.py with diffusers) through
// `StableDiffusionPipeline.generate` and bounds every step's latents and the final images.

import Foundation
import Pipeline
import TiledKernels
import XCTest

/// Final and per-step latents: relative max error bound; images: PSNR bound (issue #2's bar).
let pipelineLatentTolerance: Float = 1e-3
let pipelineMinimumPSNR = 45.0

/// The settings a reference case was made with.
func generationSettings(for c: [String: Any]) throws -> GenerationSettings {
    var s = GenerationSettings(prompt: try XCTUnwrap(c["prompt"] as? String))
    s.negativePrompt = c["negative_prompt"] as? String
    s.steps = try XCTUnwrap(c["steps"] as? Int)
    s.guidance = Float(try XCTUnwrap(c["guidance"] as? Double))
    if c["width_given"] as? Bool ?? true {
        s.width = c["width"] as? Int
        s.height = c["height"] as? Int
    }
    s.seed = UInt64(try XCTUnwrap(c["seed"] as? Int))
    s.scheduler = try XCTUnwrap(SchedulerKind(rawValue: try XCTUnwrap(c["scheduler"] as? String)))
    s.count = c["count"] as? Int ?? 1
    return s
}

/// Runs every case of `reference/<folder>/pipeline.json` on `model`; returns how many ran.
@discardableResult
func assertPipelineMatchesReference(model: URL, folder: String, loras: [LoRASpec] = [],
                                    file: StaticString = #filePath, line: UInt = #line) throws -> Int {
    let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: model))
    try pipeline.setLoRAs(loras)
    let prefix = folder.isEmpty ? "" : folder + "/"
    let all = try XCTUnwrap(ModelFixtures.json(prefix + "pipeline.json")["cases"] as? [[String: Any]])
    for c in all {
        let name = c["name"] as? String ?? "?"
        let s = try generationSettings(for: c)
        let ref = try ModelFixtures.tensors(prefix + (try XCTUnwrap(c["file"] as? String)))
        let refSteps = try XCTUnwrap(ref["step_latents"])
        var stepErrors: [Float] = []
        let result = try pipeline.generate(s) { p in
            stepErrors.append(relativeMaxError(p.latents, refSteps.slice(batch: (p.step - 1)..<p.step)
                .reshaped(p.latents.shape)))
            return true
        }
        XCTAssertEqual(stepErrors.count, refSteps.shape[0], "\(name): number of UNet evaluations", file: file, line: line)
        XCTAssertLessThanOrEqual(stepErrors.max() ?? .infinity, pipelineLatentTolerance,
                                 "\(name): per-step latents \(stepErrors)", file: file, line: line)
        let latentError = relativeMaxError(result.latents, try XCTUnwrap(ref["latents"]))
        XCTAssertLessThanOrEqual(latentError, pipelineLatentTolerance,
                                 "\(name): final latents relative error \(latentError); per step \(stepErrors)",
                                 file: file, line: line)
        let refImage = try XCTUnwrap(ref["image"])
        let perImage = refImage.count / s.count
        var psnrs: [Double] = []
        for (i, image) in result.images.enumerated() {
            let expected = refImage.data[(i * perImage)..<((i + 1) * perImage)].map { UInt8($0) }
            let db = psnr(image, expected)
            psnrs.append(db)
            XCTAssertGreaterThanOrEqual(db, pipelineMinimumPSNR, "\(name) image \(i): PSNR \(db) dB", file: file, line: line)
        }
        print("parity \(name): final latents relative error \(latentError), worst step \(stepErrors.max() ?? 0), "
            + "PSNR \(psnrs.map { $0.isInfinite ? "inf" : String(format: "%.1f dB", $0) })")
    }
    return all.count
}
