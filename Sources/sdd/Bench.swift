// `sdd bench`: per-stage seconds, achieved GFLOP/s, the machine's GEMM GFLOP/s and peak memory of one
// generation — the measurement behind every speed and memory figure we quote.

import ArgumentParser
import Foundation
import Pipeline
import TiledKernels

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure one generation: per-stage seconds, GFLOP/s and peak memory.",
        discussion: "Medians over the denoising steps; run on a quiet machine and compare runs from the same session.")

    @Option(help: "Model: a diffusers folder or .gguf file. Default: $SDD_MODEL, else the bundled demo model.")
    var model: String?

    @Option(help: "Width in pixels (default: the model's sample size).")
    var width: Int?

    @Option(help: "Height in pixels (default: the model's sample size).")
    var height: Int?

    @Option(help: "Denoising steps to time (PNDM runs one more UNet evaluation).")
    var steps: Int = 3

    @Option(help: "Guidance scale (> 1 runs the UNet on a batch of 2, as real generations do).")
    var guidance: Float = 7.5

    @Option(help: "Weight residency: resident, streamed, strict.")
    var residency: String = "streamed"

    @Option(help: "Memory budget, e.g. 256M (chooses VAE tiling); default: no limit.")
    var memoryBudget: String?

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func run() throws {
        do {
            try bench()
        } catch let error as ExitCode {
            throw error
        } catch {
            printError("sdd: error: \(error)")
            throw ExitCode.failure
        }
    }

    private func bench() throws {
        guard let residencyMode = WeightResidency(rawValue: residency) else {
            throw PipelineError.invalidRequest("unknown --residency \(residency); choose resident, streamed or strict")
        }
        let sampler = PeakMemorySampler()
        defer { sampler.stop() }
        let gemm = measureGEMMGFLOPS(m: 4096, n: 1280, k: 1280, repeats: 5)

        let modelPath = try ModelLocation.resolve(model)
        let sdModel = try StableDiffusionModel(url: URL(fileURLWithPath: modelPath))
        let pipeline = try StableDiffusionPipeline(model: sdModel, residency: residencyMode)
        if let budget = memoryBudget {
            try MemoryPlanner.apply(budget: try MemorySize.parse(budget), to: pipeline, width: width, height: height)
        }
        var settings = GenerationSettings(prompt: "a photograph of an astronaut riding a horse")
        settings.steps = steps
        settings.guidance = guidance
        settings.width = width
        settings.height = height
        settings.seed = 0

        ComputeCounter.reset()
        let generation = try pipeline.begin(settings)
        let textFlops = ComputeCounter.total
        var stepFlops: [Int] = []
        while try generation.next() != nil {
            stepFlops.append(ComputeCounter.total - textFlops - stepFlops.reduce(0, +))
        }
        let beforeVAE = ComputeCounter.total
        let result = try generation.finish()
        let vaeFlops = ComputeCounter.total - beforeVAE
        let peak = sampler.peakSnapshot
        let t = result.timings

        let unetFlopsPerStep = stepFlops.isEmpty ? 0 : stepFlops.reduce(0, +) / stepFlops.count
        let report: [String: Any] = [
            "model": sdModel.name,
            "width": result.width, "height": result.height,
            "steps": steps, "unet_evaluations": t.steps.count, "guidance": Double(guidance),
            "residency": residencyMode.rawValue,
            "weight_types": WeightSummary.types(of: sdModel),
            "text_encode_seconds": t.textEncode,
            "unet_step_seconds": t.medianStep,
            "unet_step_seconds_all": t.steps,
            "vae_decode_seconds": t.vaeDecode,
            "unet_step_gflop": Double(unetFlopsPerStep) / 1e9,
            "unet_gflops_per_second": t.medianStep > 0 ? Double(unetFlopsPerStep) / 1e9 / t.medianStep : 0,
            "vae_decode_gflop": Double(vaeFlops) / 1e9,
            "vae_gflops_per_second": t.vaeDecode > 0 ? Double(vaeFlops) / 1e9 / t.vaeDecode : 0,
            "text_encode_gflop": Double(textFlops) / 1e9,
            "machine_gemm_gflops_per_second": gemm,
            "blas_core": MachineInfo.blasCoreName(),
            "blas_threads": MachineInfo.blasThreads(),
            "openblas_coretype_env": ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "",
            "peak_rss_bytes": peak.peakRSS,
            "rss_anon_at_peak_bytes": peak.rssAnon,
            "rss_file_at_peak_bytes": peak.rssFile,
        ]
        if json {
            let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        func mib(_ b: Int) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }
        print("model            \(sdModel.name) (\(WeightSummary.types(of: sdModel)))")
        print("size             \(result.width)×\(result.height), guidance \(guidance), \(t.steps.count) UNet evaluations, residency \(residencyMode.rawValue)")
        print(String(format: "text encode      %.3f s", t.textEncode))
        print(String(format: "UNet step        %.3f s median  (%.0f GFLOP, %.1f GFLOP/s)", t.medianStep,
                     Double(unetFlopsPerStep) / 1e9, report["unet_gflops_per_second"] as? Double ?? 0))
        print(String(format: "VAE decode       %.3f s  (%.0f GFLOP, %.1f GFLOP/s)", t.vaeDecode, Double(vaeFlops) / 1e9,
                     report["vae_gflops_per_second"] as? Double ?? 0))
        print(String(format: "machine GEMM     %.1f GFLOP/s (sgemm 4096×1280×1280, %@, %d threads)", gemm,
                     MachineInfo.blasCoreName(), MachineInfo.blasThreads()))
        print("peak memory      \(mib(peak.peakRSS)) VmHWM; at peak RssAnon \(mib(peak.rssAnon)), RssFile \(mib(peak.rssFile))")
    }
}

/// Which storage types a model's weights use, for reports ("f32", "q8_0+f32" …).
enum WeightSummary {
    static func types(of model: StableDiffusionModel) -> String {
        model.url.pathExtension.lowercased() == "gguf" ? "gguf" : "safetensors"
    }
}
