// `sdd generate`: one prompt to PNG files (and optionally the final latents as .npy), as diffusers would make them.

import ArgumentParser
import Foundation
import Pipeline
import TiledKernels

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images from a text prompt.",
        discussion: """
            Steps, guidance, scheduler and size default to the model's own (its sdd.json or GGUF sdd.defaults.*), \
            else diffusers': 50 steps, guidance 7.5, the scheduler class its scheduler_config.json names, and \
            unet.sample_size × the VAE scale factor. Explicit options win.
            """)

    @OptionGroup var model: ModelOption

    @OptionGroup var source: ModelSourceOptions

    @Option(help: "What the image should not show.")
    var negativePrompt: String?

    @Option(help: "Denoising steps (default: the model's, else 50).")
    var steps: Int?

    @Option(help: "Classifier-free guidance scale, ≤ 1 runs the conditional branch only (default: the model's, else 7.5).")
    var guidance: Float?

    @Option(help: "Width in pixels, a multiple of 8 (default: the model's sample size).")
    var width: Int?

    @Option(help: "Height in pixels, a multiple of 8 (default: the model's sample size).")
    var height: Int?

    @Option(help: "Seed (same as torch.Generator(\"cpu\").manual_seed). Default: random, printed.")
    var seed: UInt64?

    @Option(help: "Scheduler, configured from the model's scheduler config (default: the model's own).")
    var scheduler: SchedulerKind?

    @Option(help: "TCD's stochasticity η in 0…1 (default 0.3, TCDScheduler's own); only --scheduler tcd takes it.")
    var eta: Float?

    @Option(help: "Timestep spacing, overriding the model's scheduler config: leading, trailing or linspace (Hyper-SD and PCM want ddim with trailing). Not for lcm or tcd.")
    var timestepSpacing: TimestepSpacing?

    @Option(help: "Images to generate in one batch (FILE-1.png … FILE-N.png when more than one).")
    var count: Int = 1

    @Option(name: [.short, .long], help: "Output PNG path.")
    var output: String = "sdd.png"

    @Flag(help: "Write the --count images tiled into one PNG (a grid of ⌈√N⌉ columns) instead of one file each.")
    var grid = false

    @Option(help: "Also write the final latents as a float32 .npy [count, 4, H/8, W/8].")
    var saveLatents: String?

    @Flag(help: "Decode the VAE in overlapping tiles (diffusers' enable_tiling), the tile size chosen for a default activation budget.")
    var vaeTiling = false

    @Option(help: "Decode the VAE in tiles of N×N latent cells (N×8 pixels; a multiple of 4), overlap 0.25.")
    var vaeTileSize: Int?

    @OptionGroup var compute: ComputeOptions

    @OptionGroup var weights: ResidencyOption

    @Option(help: "Keep this PNG replaced (atomically) by a latent preview of the first image, about ten times per run.")
    var preview: String?

    @Option(help: "Draw --preview with this AutoencoderTiny (TAESD) folder (e.g. madebyollin/taesd) instead of the linear latent→RGB approximation; the decode stays within 32 MiB (larger latents are averaged down first), kept aside from --memory-budget.")
    var previewVAE: String?

    @OptionGroup var lora: LoRAOptions

    @Flag(help: "Print stage timings and peak memory as one JSON line on stderr.")
    var timings = false

    @Option(help: "A file of prompts, one per line (blank lines and lines starting with # are skipped): each runs with the same settings and seed; with --grid, one row per prompt when --count > 1.")
    var prompts: String?

    @Argument(help: "The prompt (or use --prompts FILE).")
    var prompt: String?

    func validate() throws {
        if prompt == nil && prompts == nil { throw ValidationError("give a prompt, or --prompts FILE") }
        if prompt != nil && prompts != nil { throw ValidationError("give either a prompt or --prompts FILE, not both") }
    }

    /// The prompts to run: the argument, or the lines of --prompts.
    func promptList() throws -> [String] {
        if let prompt { return [prompt] }
        let path = prompts ?? ""
        let text: String
        do {
            text = try String(contentsOf: URL(fileURLWithPath: path), encoding: .utf8)
        } catch {
            throw PipelineError.invalidRequest("--prompts \(path): cannot read it as UTF-8 text (\(error.localizedDescription))")
        }
        let list = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard !list.isEmpty else { throw PipelineError.invalidRequest("--prompts \(path): no prompts in the file") }
        return list
    }

    func run() throws {
        do {
            try generate()
        } catch let error as ExitCode {
            throw error
        } catch {
            printError("sdd: error: \(error)")
            throw ExitCode.failure
        }
    }

    private func generate() throws {
        guard output.lowercased().hasSuffix(".png") else {
            throw PipelineError.invalidRequest("--output \(output): the file name must end in .png")
        }
        let folder = try source.open(try model.path())
        let taesdPreview = try previewVAE.map { path -> TAESDPreview in
            guard preview != nil else {
                throw PipelineError.invalidRequest("--preview-vae \(path): give the preview file with --preview FILE")
            }
            let p = try TAESDPreview(folder: URL(fileURLWithPath: path))
            try p.check(latentChannels: folder.unet.inChannels)
            return p
        }
        let pipeline = try StableDiffusionPipeline(model: folder, residency: weights.residency,
                                                   products: try compute.products())
        // Every weight's shape against the configs, before any prompt is tokenized or tensor allocated.
        _ = try pipeline.weightFigures()
        // Each prompt without its <lora:…> tags, and the LoRAs it runs with (every file checked before any work).
        let adapted = try promptList().map { try lora.resolve(prompt: $0) }
        let prompts = adapted.map(\.prompt)
        let loraApplication = lora.loraApply
        for a in adapted { try pipeline.setLoRAs(a.specs, application: loraApplication) }

        var settings = GenerationSettings(prompt: prompts[0])
        settings.negativePrompt = negativePrompt
        settings.steps = steps ?? folder.defaultSteps
        settings.guidance = guidance ?? folder.defaultGuidance
        settings.width = width
        settings.height = height
        settings.seed = seed
        settings.scheduler = try scheduler ?? folder.defaultScheduler()
        settings.eta = eta
        settings.timestepSpacing = timestepSpacing
        settings.count = count
        var size = try pipeline.validate(settings)
        for p in prompts.dropFirst() {
            var other = settings
            other.prompt = p
            size = try pipeline.validate(other)
        }
        let chosenTiling = try chooseVAETiling(folder, width: size.width, height: size.height)
        var context = RunContext(vaeTiling: chosenTiling)
        let budget = compute.budget()
        if let bytes = budget.bytes {
            ProcessMemory.preferCompactHeap()
            // TAESD previews run beside the steps: their share comes off the budget the generation is planned under.
            let reserved = taesdPreview?.reservedBytes ?? 0
            let plan = try MemoryPlanner.plan(budget: bytes - reserved, pipeline: pipeline, width: size.width,
                                              height: size.height, count: count, guided: settings.guidance > 1)
            context = RunContext(plan: plan)
            // Tiles given by hand win over the plan's; --vae-tiling alone tiles where the plan would not.
            if vaeTileSize != nil || (vaeTiling && plan.vaeTiling == nil) { context.vaeTiling = chosenTiling }
            let kept = reserved > 0 ? ", less \(reserved >> 20) MiB kept for TAESD previews" : ""
            printError("sdd: \(budget.explanation)\(kept): \(plan)")
        } else {
            printError("sdd: \(budget.explanation)")
        }

        for p in prompts {
            let tokens = pipeline.tokenizer.encode(p, maxLength: folder.textEncoder.maxPositionEmbeddings)
            if tokens.truncated {
                printError("sdd: warning: the prompt \(prompts.count > 1 ? "\"\(p)\" " : "")has \(tokens.tokenCountIsExact ? "" : "at least ")\(tokens.tokenCount) tokens; "
                    + "only the first \(folder.textEncoder.maxPositionEmbeddings) (with start and end) are used")
            }
        }
        if let neg = negativePrompt,
           pipeline.tokenizer.encode(neg, maxLength: folder.textEncoder.maxPositionEmbeddings).truncated {
            printError("sdd: warning: the negative prompt is longer than \(folder.textEncoder.maxPositionEmbeddings) tokens and was truncated")
        }

        var results: [GenerationResult] = []
        for (p, a) in zip(prompts, adapted) {
            try pipeline.setLoRAs(a.specs, application: loraApplication)
            var s = settings
            s.prompt = p
            if let first = results.first { s.seed = first.seed }  // a random seed is drawn once, for every prompt
            let progress = ProgressLine(enabled: isatty(STDERR_FILENO) != 0)
            var previewError: Error?
            do {
                results.append(try pipeline.generate(s, context: context) { step in
                    progress.update(step)
                    if let path = preview, LatentPreview.isPreviewStep(step.step, total: step.totalSteps),
                       let png = taesdPreview.map({ $0.png(step.latents) }) ?? LatentPreview.png(step.latents) {
                        do { try OutputFiles.writeAtomically(png, to: URL(fileURLWithPath: path)) } catch {
                            previewError = error  // stops the run: the user asked for a file that cannot be written
                            return false
                        }
                    }
                    return true
                })
            } catch PipelineError.cancelled where previewError != nil {
                throw previewError ?? PipelineError.cancelled
            }
            progress.finish()
        }
        let result = results[0]

        if grid {
            var text = PNGMetadata.entries(for: result, model: folder.name, loras: adapted[0].specs)
            if results.count > 1, let i = text.firstIndex(where: { $0.key == "prompt" }) {
                text[i].value = prompts.joined(separator: "\n")
            }
            let tiled = ImageGrid(images: results.flatMap(\.images), width: result.width, height: result.height,
                                  columns: results.count > 1 && count > 1 ? count : nil)
            try PNGWriter.write(rgb: tiled.rgb, width: tiled.width, height: tiled.height, text: text,
                                to: URL(fileURLWithPath: output))
            print(output)
        } else {
            let paths = OutputNames.pngPaths(output, count: count * results.count)
            var next = paths.makeIterator()
            for (r, a) in zip(results, adapted) {
                let text = PNGMetadata.entries(for: r, model: folder.name, loras: a.specs)
                for image in r.images {
                    guard let path = next.next() else { break }
                    try PNGWriter.write(rgb: image, width: r.width, height: r.height, text: text,
                                        to: URL(fileURLWithPath: path))
                    print(path)
                }
            }
        }
        if let npy = saveLatents {
            let latents = results.map(\.latents.data).reduce([], +)
            var shape = result.latents.shape
            shape[0] *= results.count
            try NPYWriter.write(float32: latents, shape: shape, to: URL(fileURLWithPath: npy))
            print(npy)
        }
        if timings {
            let t = result.timings
            let report: [String: Double] = [
                "text_encode_seconds": t.textEncode, "unet_step_seconds": t.medianStep,
                "vae_decode_seconds": t.vaeDecode, "peak_rss_bytes": Double(ProcessMemory.peakResidentBytes() ?? 0),
                "unet_evaluations": Double(t.steps.count),
                "unet_total_seconds": t.steps.reduce(0, +),
                "generation_seconds": t.textEncode + t.steps.reduce(0, +) + t.vaeDecode,
            ]
            let json = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
            printError(String(decoding: json, as: UTF8.self))
        }
        printError("sdd: seed \(result.seed), \(result.width)×\(result.height), \(settings.scheduler.rawValue), "
            + "\(settings.steps) steps, guidance \(settings.guidance)")
    }
}

extension Generate {
    /// --vae-tile-size N as given, or with --vae-tiling the largest tile whose decode fits the default budget
    /// (nil: untiled, also when the whole decode fits).
    func chooseVAETiling(_ model: StableDiffusionModel, width: Int, height: Int) throws -> VAETiling? {
        let f = model.vaeScaleFactor
        if let n = vaeTileSize {
            let tiling = VAETiling(tileLatentSize: n, scaleFactor: f)
            try tiling.validate()
            guard tiling.preservesSize(scaleFactor: f) else {
                throw PipelineError.invalidRequest("--vae-tile-size \(n): with overlap 0.25 the tile must be a multiple of 4 latent cells")
            }
            return tiling
        }
        guard vaeTiling else { return nil }
        return try VAEDecoder.tiling(forBudgetBytes: VAETiling.defaultActivationBudgetBytes, config: model.vae,
                                     latentHeight: height / f, latentWidth: width / f, batch: count)
    }
}

/// Where the model comes from: --model, else $SDD_MODEL, else the demo model that ships with sdd
/// (installed in PREFIX/share/sdd/models/demo, or models/demo in the source tree the binary was built in).
enum ModelLocation {
    static func resolve(_ option: String?) throws -> String {
        if let path = option, !path.isEmpty { return path }
        if let env = ProcessInfo.processInfo.environment["SDD_MODEL"], !env.isEmpty { return env }
        if let bundled = bundledDemoModel() { return bundled }
        throw PipelineError.invalidRequest(
            "no model given: pass --model PATH (a diffusers folder or .gguf file) or set SDD_MODEL")
    }

    /// The demo model next to the executable: ../share/sdd/models/demo when installed, or a
    /// models/demo folder in one of the executable's ancestors (a source checkout's .build tree).
    static func bundledDemoModel() -> String? {
        let exe = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        var candidates = [dir.deletingLastPathComponent().appendingPathComponent("share/sdd/models/demo")]
        for _ in 0..<5 {
            dir = dir.deletingLastPathComponent()
            candidates.append(dir.appendingPathComponent("models/demo"))
        }
        return candidates.first {
            FileManager.default.fileExists(atPath: $0.appendingPathComponent("model_index.json").path)
        }?.path
    }
}

/// FILE.png for one image; FILE-1.png … FILE-N.png for a batch.
enum OutputNames {
    static func pngPaths(_ path: String, count: Int) -> [String] {
        guard count > 1 else { return [path] }
        let stem = String(path.dropLast(4))
        let ext = String(path.suffix(4))
        return (1...count).map { "\(stem)-\($0)\(ext)" }
    }
}

/// A one-line progress display on a terminal: step i/n, seconds per step, ETA.
final class ProgressLine {
    private let enabled: Bool
    init(enabled: Bool) { self.enabled = enabled }

    func update(_ p: StepProgress) {
        guard enabled else { return }
        let perStep = p.elapsed / Double(p.step)
        let eta = perStep * Double(p.totalSteps - p.step)
        let line = String(format: "\rstep %d/%d  %.2f s/step  ETA %.0f s ", p.step, p.totalSteps, perStep, eta)
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() {
        if enabled { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
