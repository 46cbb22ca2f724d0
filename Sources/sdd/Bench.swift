// `sdd bench`: per-stage seconds, achieved GFLOP/s, the machine's GEMM GFLOP/s and peak memory of one
// generation — the measurement behind every speed and memory figure we quote.

import ArgumentParser
import Foundation
import Pipeline
import MMapWeights
import TiledKernels

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure one generation: per-stage seconds, GFLOP/s, and its measured peak memory beside the planner's.",
        discussion: "Medians over the denoising steps; run on a quiet machine and compare runs from the same session.")

    @OptionGroup var model: ModelOption

    @Option(help: "Width in pixels (default: the model's sample size).")
    var width: Int?

    @Option(help: "Height in pixels (default: the model's sample size).")
    var height: Int?

    @Option(help: "Denoising steps to time (PNDM runs one more UNet evaluation).")
    var steps: Int = 3

    @Option(help: "Guidance scale (> 1 runs the UNet on a batch of 2, as real generations do).")
    var guidance: Float = 7.5

    @OptionGroup var weights: ResidencyOption

    @OptionGroup var compute: ComputeOptions

    @Option(help: ArgumentHelp(
        "What to time: all (one generation), vae (only the VAE decoder, --repeats times), conv or gemm.",
        discussion: "vae decodes a fixed pseudo-random latent of the requested size with the model's VAE weights "
            + "(untiled unless a generation under the memory budget would tile it: the same tiles), after one untimed warm-up decode; it reports the "
            + "median and every timed decode. Compare with tools/bench/vae_vs_diffusers.py. conv times the 3×3 convolution "
            + "shapes of SD 1.5's VAE (F16) and UNet (Q8_0, batch 2) with im2col and with Winograd, interleaved. gemm "
            + "times SD 1.5's UNet product shapes in F32 (OpenBLAS) and in BF16 on each BF16 kernel the CPU runs "
            + "(avx512bf16, amx)."))
    var stage: BenchStage = .all

    @Option(help: "With --stage vae or gemm: timed runs (the median is reported).")
    var repeats: Int = 3

    @OptionGroup var lora: LoRAOptions

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
        let residencyMode = weights.residency
        switch stage {
        case .vae: return try benchVAE(residency: residencyMode)
        case .conv: return benchConv()
        case .gemm: return benchGEMM()
        case .all: break
        }
        let sampler = PeakMemorySampler()
        defer { sampler.stop() }
        let gemm = measureGEMMGFLOPS(m: 4096, n: 1280, k: 1280, repeats: 5)

        let sdModel = try StableDiffusionModel(url: URL(fileURLWithPath: try model.path()))
        let pipeline = try StableDiffusionPipeline(model: sdModel, residency: residencyMode,
                                                   products: try compute.products())
        let products = pipeline.products
        let budget = compute.budget()
        // The planner's peak for this run, printed beside the measured one.
        var planned: (peak: Int, budget: Int)?
        var context = RunContext()
        if let bytes = budget.bytes {
            ProcessMemory.preferCompactHeap()
            let plan = try MemoryPlanner.plan(budget: bytes, pipeline: pipeline, width: width, height: height,
                                              guided: guidance > 1)
            context = RunContext(plan: plan)
            printError("sdd: \(budget.explanation): \(plan)")
            planned = (plan.peak, bytes)
        } else {
            printError("sdd: \(budget.explanation)")
        }
        let adapted = try lora.resolve(prompt: "a photograph of an astronaut riding a horse")
        // Binding with LoRAs (a merge's whole cost) is timed apart from the generation.
        let bindClock = Date()
        try pipeline.setLoRAs(adapted.specs, application: lora.loraApply)
        if !adapted.specs.isEmpty { try pipeline.bindModels() }
        let loraBindSeconds = Date().timeIntervalSince(bindClock)
        var settings = GenerationSettings(prompt: adapted.prompt)
        settings.steps = steps
        settings.guidance = guidance
        settings.width = width
        settings.height = height
        settings.seed = 0

        ComputeCounter.reset()
        let generation = try pipeline.begin(settings, context: context)
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
            "products": products.rawValue,
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
            "bf16_kernel": MachineInfo.bf16KernelName(),
            "blas_threads": MachineInfo.blasThreads(),
            "openblas_coretype_env": ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "",
            "peak_rss_bytes": peak.peakRSS,
            "planned_peak_bytes": planned.map { $0.peak as Any } ?? NSNull(),
            "memory_budget_bytes": planned.map { $0.budget as Any } ?? NSNull(),
            "loras": adapted.specs.map { "\($0.path):\($0.scale)" },
            "lora_apply": pipeline.loraApplication.rawValue,
            "lora_bind_seconds": loraBindSeconds,
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
        print("products         \(products == .bf16 ? "bf16 (CKernels' \(MachineInfo.bf16KernelName()) GEMM, F32 sums)" : "f32 (OpenBLAS sgemm)") for the UNet and VAE")
        if !adapted.specs.isEmpty {
            print(String(format: "LoRAs            %d (%@), bound in %.3f s", adapted.specs.count,
                         pipeline.loraApplication.rawValue, loraBindSeconds))
        }
        print(String(format: "text encode      %.3f s", t.textEncode))
        print(String(format: "UNet step        %.3f s median  (%.0f GFLOP, %.1f GFLOP/s)", t.medianStep,
                     Double(unetFlopsPerStep) / 1e9, report["unet_gflops_per_second"] as? Double ?? 0))
        print(String(format: "VAE decode       %.3f s  (%.0f GFLOP, %.1f GFLOP/s)", t.vaeDecode, Double(vaeFlops) / 1e9,
                     report["vae_gflops_per_second"] as? Double ?? 0))
        print(String(format: "machine GEMM     %.1f GFLOP/s (sgemm 4096×1280×1280, %@, %d threads); BF16 kernel %@", gemm,
                     MachineInfo.blasCoreName(), MachineInfo.blasThreads(), MachineInfo.bf16KernelName()))
        let plannedText = planned.map { "planned \(mib($0.peak)) under a \(mib($0.budget)) budget" }
            ?? "not planned (no memory budget)"
        print("peak memory      \(mib(peak.peakRSS)) VmHWM measured, \(plannedText); at peak RssAnon \(mib(peak.rssAnon)), "
              + "RssFile \(mib(peak.rssFile))")
    }
}

/// `sdd bench --stage`: what to time.
enum BenchStage: String, CaseIterable, ExpressibleByArgument {
    case all, vae, conv, gemm
}

extension Bench {
    /// `--stage gemm`: SD 1.5's UNet product shapes (m × n × k, B transposed for attention's Q·Kᵀ) in F32 on
    /// OpenBLAS and in BF16 on each BF16 kernel this machine runs, median GFLOP/s of `repeats` over all cores.
    fileprivate func benchGEMM() {
        let shapes: [(m: Int, n: Int, k: Int, transB: Bool, what: String)] = [
            (4096, 320, 320, false, "64×64 linear"), (4096, 1280, 320, false, "64×64 feed-forward"),
            (1024, 640, 640, false, "32×32 linear"), (4096, 4096, 40, true, "64×64 attention scores, d 40"),
            (256, 512, 40, true, "attention Q·Kᵀ tile, d 40"), (256, 40, 512, false, "attention P·V tile, d 40"),
        ]
        print("GEMM m×n×k: GFLOP/s (median of \(repeats), \(MachineInfo.blasThreads()) threads); OpenBLAS core "
              + "\(MachineInfo.blasCoreName()), BF16 products run on \(MachineInfo.bf16KernelName())")
        for s in shapes {
            var line = String(format: "%d×%d×%d%@ (%@): f32 %.0f", s.m, s.n, s.k, s.transB ? "ᵀ" : "", s.what,
                              measureGEMMGFLOPS(m: s.m, n: s.n, k: s.k, transB: s.transB, repeats: repeats,
                                                bf16: nil) ?? 0)
            for kernel in [BF16Kernel.avx512bf16, .amx] {
                if let g = measureGEMMGFLOPS(m: s.m, n: s.n, k: s.k, transB: s.transB, repeats: repeats, bf16: kernel) {
                    line += String(format: ", %@ %.0f", kernel.rawValue, g)
                }
            }
            print(line)
        }
    }

    /// `--stage conv`: each SD 1.5 3×3 stride-1 conv shape with im2col and with Winograd, median of `repeats`.
    fileprivate func benchConv() {
        let vae: [(Int, Int, Int)] = [(512, 512, 64), (512, 512, 128), (512, 512, 256), (512, 256, 256),
                                      (256, 256, 256), (256, 256, 512), (256, 128, 512), (128, 128, 512)]
        let unet: [(Int, Int, Int)] = [(320, 320, 64), (640, 320, 64), (320, 640, 32), (640, 640, 32),
                                       (1280, 1280, 16)]
        let shapes = vae.map { ConvBenchmarkShape(batch: 1, channels: $0.0, outChannels: $0.1, height: $0.2,
                                                  width: $0.2, type: .f16) }
            + unet.map { ConvBenchmarkShape(batch: 2, channels: $0.0, outChannels: $0.1, height: $0.2, width: $0.2,
                                            type: .q8_0) }
        print("conv 3×3 (N×C×H×W → O, type): im2col, Winograd F(2×2) and F(4×4) seconds (GFLOP/s of the direct conv)")
        for s in shapes {
            let a = measureConvSeconds(s, winogradTile: nil, repeats: repeats)
            let b = measureConvSeconds(s, winogradTile: 2, repeats: repeats)
            let c = measureConvSeconds(s, winogradTile: 4, repeats: repeats)
            var line = String(format: "%dx%dx%dx%d → %d %@: im2col %.3f s (%.0f), F(2×2) %.3f s (%.0f), F(4×4) %.3f s (%.0f)",
                              s.batch, s.channels, s.height, s.width, s.outChannels, s.type.name, a, s.flops / a / 1e9,
                              b, s.flops / b / 1e9, c, s.flops / c / 1e9)
            if ProductPrecision.bf16Available {
                let d = measureConvSeconds(s, winogradTile: nil, repeats: repeats, precision: .bf16)
                let e = measureConvSeconds(s, winogradTile: 4, repeats: repeats, precision: .bf16)
                line += String(format: "; BF16 products: im2col %.3f s (%.0f), F(4×4) %.3f s (%.0f)",
                               d, s.flops / d / 1e9, e, s.flops / e / 1e9)
            }
            print(line)
        }
    }

    /// `--stage vae`: the VAE decoder alone on a fixed latent, one warm-up decode then `repeats` timed ones.
    fileprivate func benchVAE(residency: WeightResidency) throws {
        guard repeats >= 1 else { throw PipelineError.invalidRequest("--repeats must be at least 1") }
        let gemm = measureGEMMGFLOPS(m: 4096, n: 1280, k: 1280, repeats: 5)
        let sdModel = try StableDiffusionModel(url: URL(fileURLWithPath: try model.path()))
        let f = sdModel.vaeScaleFactor
        let size = sdModel.defaultSize
        let w = width ?? size.width, h = height ?? size.height
        guard w % f == 0, h % f == 0, w > 0, h > 0 else {
            throw PipelineError.invalidRequest("--width/--height must be positive multiples of \(f)")
        }
        let shape = [1, sdModel.vae.latentChannels, h / f, w / f]
        // A fixed latent with roughly unit variance (values of a scaled SD latent): a simple LCG, no seed option.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let values = (0..<shape.reduce(1, *)).map { _ -> Float in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return (Float(state >> 40) / Float(1 << 24) - 0.5) * 3.4
        }
        let z = Tensor(shape: shape, data: values)
        // The decoder a generation uses (its products), and under a budget the tiles its plan picks.
        let pipeline = try StableDiffusionPipeline(model: sdModel, residency: residency,
                                                   products: try compute.products())
        let products = pipeline.products
        let decoder = try pipeline.vaeDecoder()
        var tiling: VAETiling?
        if let bytes = compute.budget().bytes {
            tiling = try MemoryPlanner.plan(budget: bytes, pipeline: pipeline, width: w, height: h).vaeTiling
        }
        func decode() throws -> Tensor {
            if let tiling { return try decoder.decodeTiled(z, tiling: tiling) }
            return decoder(z)
        }
        var checksum = Double(try decode().data.reduce(0, +))
        var seconds: [Double] = []
        for _ in 0..<repeats {
            let t0 = Date()
            let image = try decode()
            seconds.append(Date().timeIntervalSince(t0))
            checksum = Double(image.data.reduce(0, +))
        }
        let median = seconds.sorted()[seconds.count / 2]
        if json {
            let report: [String: Any] = [
                "model": sdModel.name, "width": w, "height": h, "stage": "vae", "products": products.rawValue,
                "vae_decode_seconds": median, "vae_decode_seconds_all": seconds,
                "tiled": tiling != nil, "tile_latent_size": tiling?.tileLatentSize ?? 0, "output_sum": checksum,
                "machine_gemm_gflops_per_second": gemm,
            ]
            let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("model            \(sdModel.name), VAE decode only, \(w)×\(h)\(tiling.map { ", tiles of \($0.tileLatentSize) latent cells" } ?? ""), \(products.rawValue) products")
        print(String(format: "VAE decode       %.3f s median of %d  (all: %@)", median, repeats,
                     seconds.map { String(format: "%.3f", $0) }.joined(separator: " ")))
        print(String(format: "output sum       %.6g", checksum))
        print(String(format: "machine GEMM     %.1f GFLOP/s (sgemm 4096×1280×1280, %@, %d threads); BF16 kernel %@", gemm,
                     MachineInfo.blasCoreName(), MachineInfo.blasThreads(), MachineInfo.bf16KernelName()))
    }
}

/// Which storage types a model's weights use, for reports: most tensors first ("q8_0+f32", "f16+f32" …), read
/// from the headers as `sdd inspect` reads them; the file format ("gguf", "safetensors") when they cannot be.
enum WeightSummary {
    static func types(of model: StableDiffusionModel) -> String {
        let format = model.url.pathExtension.lowercased() == "gguf" ? "gguf" : "safetensors"
        guard let inspection = try? ModelInspection(url: model.url) else { return format }
        var counts: [String: Int] = [:]
        for component in inspection.components {
            for (type, n) in component.countsByType { counts[type.lowercased(), default: 0] += n }
        }
        guard !counts.isEmpty else { return format }
        return counts.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.map(\.key).joined(separator: "+")
    }
}
