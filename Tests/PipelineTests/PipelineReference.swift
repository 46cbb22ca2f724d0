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

/// The settings a reference case was made with; scheduler "own" is `model`'s own (diffusers' default).
func generationSettings(for c: [String: Any], model: StableDiffusionModel? = nil) throws -> GenerationSettings {
    var s = GenerationSettings(prompt: try XCTUnwrap(c["prompt"] as? String))
    s.negativePrompt = c["negative_prompt"] as? String
    s.steps = try XCTUnwrap(c["steps"] as? Int)
    s.guidance = Float(try XCTUnwrap(c["guidance"] as? Double))
    if c["width_given"] as? Bool ?? true {
        s.width = c["width"] as? Int
        s.height = c["height"] as? Int
    }
    s.seed = UInt64(try XCTUnwrap(c["seed"] as? Int))
    let scheduler = try XCTUnwrap(c["scheduler"] as? String)
    s.scheduler = try scheduler == "own" ? try XCTUnwrap(model).defaultScheduler()
        : try XCTUnwrap(SchedulerKind(rawValue: scheduler))
    s.count = c["count"] as? Int ?? 1
    // Every case records the eta diffusers' pipeline passed (0 by default); only TCD's step uses it.
    if s.scheduler.takesEta, let eta = c["eta"] as? Double { s.eta = Float(eta) }
    if let spacing = c["timestep_spacing"] as? String { s.timestepSpacing = try XCTUnwrap(TimestepSpacing(rawValue: spacing)) }
    return s
}

/// Runs every case of `reference/<folder>/pipeline.json` on `model`; returns how many ran.
@discardableResult
func assertPipelineMatchesReference(model: URL, folder: String, options: ModelOpenOptions = ModelOpenOptions(),
                                    products: ProductPrecision? = nil, loras: [LoRASpec] = [],
                                    file: StaticString = #filePath, line: UInt = #line) throws -> Int {
    let loaded = try StableDiffusionModel(url: model, options: options)
    let pipeline = try StableDiffusionPipeline(model: loaded, products: products)
    try pipeline.setLoRAs(loras)
    let prefix = folder.isEmpty ? "" : folder + "/"
    let all = try XCTUnwrap(ModelFixtures.json(prefix + "pipeline.json")["cases"] as? [[String: Any]])
    for c in all {
        let name = c["name"] as? String ?? "?"
        let s = try generationSettings(for: c, model: loaded)
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
