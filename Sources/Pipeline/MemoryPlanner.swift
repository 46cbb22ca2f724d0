// MemoryPlanner: turns a memory budget (--memory-budget) into the run's settings — weight streaming and
// VAE tile size — from estimates of each stage's peak, or refuses with the numbers when it cannot fit.

import Foundation
import TiledKernels

/// A byte count written as users write it: 512M, 1.5G, 300MiB, 2T, 64k, 268435456. Every multiple is binary
/// (K = 1024), with or without "B"/"iB", in any case. The one size parser of every command-line size option.
public enum MemorySize {
    public static func parse(_ text: String) throws -> Int {
        var t = Substring(text.trimmingCharacters(in: .whitespaces).uppercased())
        if t.hasSuffix("IB") { t = t.dropLast(2) } else if t.hasSuffix("B") { t = t.dropLast() }
        var scale = 1.0
        if let last = t.last, let power = "KMGT".firstIndex(of: last).map({ "KMGT".distance(from: "KMGT".startIndex, to: $0) + 1 }) {
            scale = pow(1024, Double(power))
            t = t.dropLast()
        }
        // Below 2^62 bytes, so that sums of sizes stay far from Int overflow.
        guard let value = Double(t.trimmingCharacters(in: .whitespaces)), value.isFinite, value > 0,
              value * scale >= 1, value * scale < 0x1p62 else {
            throw PipelineError.invalidRequest("\"\(text)\" is not a positive size like 256M, 1.5G or 1048576")
        }
        return Int(value * scale)
    }

    public static func describe(_ bytes: Int) -> String {
        bytes >= 1 << 30 ? String(format: "%.2f GiB", Double(bytes) / Double(1 << 30))
            : String(format: "%.0f MiB", Double(bytes) / Double(1 << 20))
    }
}

/// `--memory-budget` as `sdd generate`, `bench` and `serve` take it: a size, `none` (no planning), or nothing — then
/// the limit the process runs under (`MemoryLimit`: its cgroup's, else MemAvailable) less headroom.
public enum MemoryBudgetOption {
    /// What the option says: a budget, or no planning.
    public enum Setting: Sendable, Equatable {
        case bytes(Int)
        case none

        /// A size (`MemorySize`), or none / off / unlimited.
        public init(parsing text: String) throws {
            if ["none", "off", "unlimited"].contains(text.trimmingCharacters(in: .whitespaces).lowercased()) {
                self = .none
            } else {
                self = .bytes(try MemorySize.parse(text))
            }
        }
    }

    public struct Resolved: Sendable, Equatable {
        /// The budget in bytes; nil: runs are not planned.
        public var bytes: Int?
        /// Which it is and where it came from, for the log or stderr.
        public var explanation: String
    }

    /// - root: where /proc and /sys are read (tests pass a folder of fake files).
    public static func resolve(_ text: String?, root: URL = URL(fileURLWithPath: "/")) throws -> Resolved {
        resolve(setting: try text.map { try Setting(parsing: $0) }, root: root)
    }

    /// The budget a setting gives; nil: the detected limit less headroom.
    public static func resolve(setting: Setting?, root: URL = URL(fileURLWithPath: "/")) -> Resolved {
        switch setting {
        case .none?:
            return Resolved(bytes: nil, explanation: "no memory budget (--memory-budget none): runs are not planned")
        case .bytes(let bytes)?:
            return Resolved(bytes: bytes, explanation: "memory budget \(MemorySize.describe(bytes)) (--memory-budget)")
        case nil:
            guard let limit = MemoryLimit.detect(root: root) else {
                return Resolved(bytes: nil, explanation: "no memory budget: neither a cgroup limit nor /proc/meminfo could be read")
            }
            return Resolved(bytes: limit.budget, explanation: "memory budget \(MemorySize.describe(limit.budget)) (\(limit))")
        }
    }
}

/// The planned peak of one generation, stage by stage, in bytes.
public struct MemoryPlan: Sendable, CustomStringConvertible {
    /// Runtime, BLAS buffers, tokenizer, code: measured on the tiny model as the process's floor.
    public var baseline: Int
    /// Weights resident at once: the largest streaming group (streamed; the next group's prefetch goes to
    /// the page cache, not this process's resident set, until it runs), or every weight (resident).
    public var unetWeights: Int
    /// Skip connections plus the largest set of live activations in one UNet module.
    public var unetActivations: Int
    /// The UNet's kernel scratch at its largest (a dequantized weight and one im2col band per core).
    public var scratch: Int = 0
    public var vaeWeights: Int
    /// The VAE decode's activations with the chosen tiling.
    public var vaeActivations: Int
    public var vaeTiling: VAETiling?
    /// How the UNet runs: `.fastest` unless the budget needs `.compact`.
    public var unetMemory: UNetMemoryMode = .fastest

    public var unetPeak: Int { baseline + unetWeights + unetActivations + scratch }
    public var vaePeak: Int { baseline + vaeWeights + vaeActivations }
    public var peak: Int { max(unetPeak, vaePeak) }

    /// What the tensor pool may hold, live and idle together, while the UNet runs: its modelled activations.
    public var unetTensorBytes: Int { unetActivations }
    /// The same for the VAE decode: its modelled tensors alone, without kernel scratch (kept by the scratch
    /// arenas) or the quarter added to `vaeActivations` for what the model leaves out.
    public var vaeTensorBytes: Int

    public var description: String {
        "planned peak \(MemorySize.describe(peak)): UNet \(MemorySize.describe(unetPeak)) (weights "
            + "\(MemorySize.describe(unetWeights)), activations \(MemorySize.describe(unetActivations)), "
            + "scratch \(MemorySize.describe(scratch)), \(unetMemory)), VAE "
            + "\(MemorySize.describe(vaePeak)) (\(vaeTiling.map { "tiles of \($0.tileLatentSize) latent cells" } ?? "untiled"))"
    }
}

/// What the planner needs to know of a model's weights: the bytes resident at once while streamed or resident.
public struct WeightFigures: Sendable, Equatable {
    public var unetLargestGroupBytes: Int
    public var unetTotalBytes: Int
    /// Elements of the UNet's largest single weight (its dequantized scratch).
    public var unetLargestWeightElements: Int
    /// UNet weights a LoRA was merged into (resident whatever the residency).
    public var unetMergedLoRABytes: Int = 0
    public var vaeLargestGroupBytes: Int
    public var vaeTotalBytes: Int
    /// Whether the weights are streamed (about one group resident) rather than kept resident.
    public var streamed: Bool
    /// For a TAESD (AutoencoderTiny) VAE, the latent rows of context each band of its decode needs; nil for an
    /// AutoencoderKL.
    public var tinyVAEHaloLatentRows: Int? = nil
}

public enum MemoryPlanner {
    /// The process floor before any model work (Swift runtime, OpenBLAS thread buffers, tokenizer tables).
    public static let baselineBytes = 48 << 20

    /// Peak activation bytes of one UNet evaluation on [batch, in, h, w] latents, module by module in the
    /// order the UNet runs them: the skip connections alive at that point plus the module's live tensors (a
    /// resnet's input, shortcut, normed input and hidden maps; a transformer's residual and tokens with
    /// normed, q, k, v, attention and projection outputs and one feed-forward tile). With `memory.itemByItem`
    /// the temporaries exist for one batch item while the others hold their maps; F16 skips count 2 bytes.
    /// Kernel scratch is not included (see `ScratchArena.peakDemandBytes`).
    public static func unetActivationBytes(_ config: UNetConfig, latentHeight: Int, latentWidth: Int, batch: Int,
                                           memory: UNetMemoryMode = .fastest) -> Int {
        let c = config.blockOutChannels
        let levels = c.count
        let layers = (try? config.layersPerBlock.expanded(levels: levels, field: "", file: "")) ?? Array(repeating: 2, count: levels)
        let attention = config.downBlockTypes.map { $0 == "CrossAttnDownBlock2D" }
        // Items per lane at a level of `pixels`: one where the mode runs item by item, else the whole batch.
        func lane(_ pixels: Int) -> Int { memory.itemByItem && pixels >= memory.itemByItemMinimumPixels ? 1 : batch }
        let skipBytes = memory.halfPrecisionSkips ? 2 : 4
        var sizes: [Int] = []  // pixels per level
        var h = latentHeight, w = latentWidth
        for i in 0..<levels {
            sizes.append(h * w)
            if i + 1 < levels { h = (h + 1) / 2; w = (w + 1) / 2 }
        }
        var skips: [Int] = []  // bytes of each skip connection alive
        var peak = 0
        func resnet(_ inC: Int, _ outC: Int, _ pixels: Int) {
            // Per item in turn: input, shortcut, normed input, hidden (and its successor); waiting items hold
            // an input or a shortcut and hidden map each.
            let lane = lane(pixels), waiting = batch - lane
            let temps = lane * pixels * (2 * inC + 2 * outC) + waiting * pixels * max(inC, 2 * outC)
            peak = max(peak, skips.reduce(0, +) + temps * 4)
        }
        func transformer(_ ch: Int, _ pixels: Int) {
            let temps = batch * pixels * ch * 2 + lane(pixels) * pixels * ch * 6 + TransformerBlock.feedForwardTile * ch * 12
            peak = max(peak, skips.reduce(0, +) + temps * 4)
        }
        skips.append(batch * c[0] * sizes[0] * skipBytes)
        var ch = c[0]
        for i in 0..<levels {
            for j in 0..<layers[i] {
                resnet(j == 0 ? ch : c[i], c[i], sizes[i])
                ch = c[i]
                if attention[i] { transformer(ch, sizes[i]) }
                skips.append(batch * ch * sizes[i] * skipBytes)
            }
            if i + 1 < levels {
                // Downsample: input and output maps.
                peak = max(peak, skips.reduce(0, +) + batch * ch * (sizes[i] + sizes[i + 1]) * 4)
                skips.append(batch * ch * sizes[i + 1] * skipBytes)
            }
        }
        resnet(ch, ch, sizes[levels - 1])
        transformer(ch, sizes[levels - 1])
        resnet(ch, ch, sizes[levels - 1])
        for i in (0..<levels).reversed() {
            for j in 0...layers[i] {
                let skipC = j == layers[i] ? (i > 0 ? c[i - 1] : c[0]) : c[i]
                skips.removeLast()
                resnet(ch + skipC, c[i], sizes[i])
                ch = c[i]
                if attention[i] { transformer(ch, sizes[i]) }
            }
            if i > 0 {
                // Upsample: input, the 2× resized map and the conv output.
                peak = max(peak, skips.reduce(0, +) + batch * ch * (sizes[i] + 2 * sizes[i - 1]) * 4)
            }
        }
        return peak
    }

    /// The UNet's scratch bound: its largest weight, and its widest 3×3 input (a concatenation on the up
    /// path) unfolded over one image at the largest level.
    static func unetScratchBytes(_ config: UNetConfig, largestWeightElements: Int, latentHeight: Int,
                                 latentWidth: Int) -> Int {
        let c = config.blockOutChannels
        var band = 0
        var h = latentHeight, w = latentWidth
        for (i, ch) in c.enumerated() {
            let upIn = ch + (i + 1 < c.count ? c[i + 1] : ch)
            band = max(band, upIn * 9 * h * w)
            h = (h + 1) / 2
            w = (w + 1) / 2
        }
        return ScratchArena.peakDemandBytes(largestWeightFloats: largestWeightElements, largestBandFloats: band)
    }

    /// Plans a generation of `settings` on `pipeline` under `budget` bytes (nil: no limit, untiled VAE).
    public static func plan(budget: Int?, pipeline: StableDiffusionPipeline, width: Int?, height: Int?,
                            count: Int = 1, guided: Bool = true) throws -> MemoryPlan {
        try plan(budget: budget, model: pipeline.model, weights: try pipeline.weightFigures(), width: width,
                 height: height, count: count, guided: guided)
    }

    /// The same plan from the model's configs and its weights' figures (what a daemon keeps to admit requests
    /// without holding the pipeline).
    public static func plan(budget: Int?, model: StableDiffusionModel, weights: WeightFigures, width: Int?,
                            height: Int?, count: Int = 1, guided: Bool = true) throws -> MemoryPlan {
        let f = model.vaeScaleFactor
        let w = (width ?? model.defaultSize.width) / f
        let h = (height ?? model.defaultSize.height) / f
        if let tiny = model.tinyAutoencoder, let halo = weights.tinyVAEHaloLatentRows {
            return try planWithTinyVAE(tiny, haloLatentRows: halo, budget: budget, model: model, weights: weights,
                                       latentHeight: h, latentWidth: w, count: count, guided: guided)
        }
        let streamed = weights.streamed
        var plan = MemoryPlan(
            baseline: baselineBytes,
            // Weights a LoRA was merged into stay resident whatever the residency.
            unetWeights: streamed ? weights.unetLargestGroupBytes + weights.unetMergedLoRABytes : weights.unetTotalBytes,
            unetActivations: unetActivationBytes(model.unet, latentHeight: h, latentWidth: w,
                                                 batch: count * (guided ? 2 : 1)),
            vaeWeights: streamed ? weights.vaeLargestGroupBytes : weights.vaeTotalBytes,
            vaeActivations: VAEDecoder.peakActivationBytes(config: model.vae, latentHeight: h, latentWidth: w, batch: count),
            vaeTiling: nil,
            vaeTensorBytes: VAEDecoder.tensorBytes(config: model.vae, tiling: nil, latentHeight: h, latentWidth: w,
                                                   batch: count))
        plan.scratch = unetScratchBytes(model.unet, largestWeightElements: weights.unetLargestWeightElements,
                                        latentHeight: h, latentWidth: w)
        guard let budget else { return plan }
        if plan.unetPeak > budget {
            // Item by item with F16 skips: slower and not bit-exact, so only when the budget needs it.
            plan.unetMemory = .compact
            plan.unetActivations = unetActivationBytes(model.unet, latentHeight: h, latentWidth: w,
                                                       batch: count * (guided ? 2 : 1), memory: .compact)
        }
        if plan.unetPeak > budget {
            throw PipelineError.invalidRequest(
                "memory budget \(MemorySize.describe(budget)) is too small for \(w * f)×\(h * f): the UNet needs about "
                + "\(MemorySize.describe(plan.unetPeak)) (weights \(MemorySize.describe(plan.unetWeights)) "
                + "\(streamed ? "streamed" : "resident"), activations \(MemorySize.describe(plan.unetActivations)) "
                + "\(plan.unetMemory))")
        }
        // The VAE estimate ran ~20% under measured peaks (SD 1.5 Q8_0, 512×512, 32-cell tiles: 270 MB
        // measured against 229 MiB planned), so tiles are chosen with that margin.
        let vaeRoom = (budget - plan.baseline - plan.vaeWeights) * 4 / 5
        if let tiling = try VAEDecoder.tiling(forBudgetBytes: max(vaeRoom, 0), config: model.vae, latentHeight: h,
                                              latentWidth: w, batch: count) {
            plan.vaeTiling = tiling
            plan.vaeActivations = VAEDecoder.tiledDecodeBytes(config: model.vae, tiling: tiling, latentHeight: h,
                                                              latentWidth: w, batch: count) * 5 / 4
            plan.vaeTensorBytes = VAEDecoder.tensorBytes(config: model.vae, tiling: tiling, latentHeight: h,
                                                         latentWidth: w, batch: count)
        }
        return plan
    }

    /// The plan for a model whose VAE is an AutoencoderTiny (TAESD): the UNet as always; the decode whole, or in
    /// bands of latent rows (exact, see `TinyAutoencoderDecoder.decode`) whose tensors fit what the budget leaves.
    static func planWithTinyVAE(_ tiny: TinyAutoencoderConfig, haloLatentRows: Int, budget: Int?,
                                model: StableDiffusionModel, weights: WeightFigures, latentHeight h: Int,
                                latentWidth w: Int, count: Int, guided: Bool) throws -> MemoryPlan {
        let f = model.vaeScaleFactor
        let streamed = weights.streamed
        let whole = TinyAutoencoderDecoder.tensorBytes(config: tiny, latentRows: h, latentWidth: w, batch: count)
        var plan = MemoryPlan(
            baseline: baselineBytes,
            unetWeights: streamed ? weights.unetLargestGroupBytes + weights.unetMergedLoRABytes : weights.unetTotalBytes,
            unetActivations: unetActivationBytes(model.unet, latentHeight: h, latentWidth: w,
                                                 batch: count * (guided ? 2 : 1)),
            vaeWeights: weights.vaeTotalBytes, vaeActivations: whole * 5 / 4, vaeTiling: nil, vaeTensorBytes: whole)
        plan.scratch = unetScratchBytes(model.unet, largestWeightElements: weights.unetLargestWeightElements,
                                        latentHeight: h, latentWidth: w)
        guard let budget else { return plan }
        if plan.unetPeak > budget {
            plan.unetMemory = .compact
            plan.unetActivations = unetActivationBytes(model.unet, latentHeight: h, latentWidth: w,
                                                       batch: count * (guided ? 2 : 1), memory: .compact)
        }
        if plan.unetPeak > budget {
            throw PipelineError.invalidRequest(
                "memory budget \(MemorySize.describe(budget)) is too small for \(w * f)×\(h * f): the UNet needs about "
                + "\(MemorySize.describe(plan.unetPeak))")
        }
        // The same margin as the AutoencoderKL's tiles: a fifth of the room is left for what the model leaves out.
        let room = max(budget - plan.baseline - plan.vaeWeights, 0) * 4 / 5
        if let bands = TinyAutoencoderDecoder.bands(config: tiny, forBudgetBytes: room, latentHeight: h, latentWidth: w,
                                                    batch: count) {
            let bytes = TinyAutoencoderDecoder.tensorBytes(config: tiny, bands: bands, latentHeight: h, latentWidth: w,
                                                           batch: count)
            guard bytes <= room else {
                throw PipelineError.invalidRequest(
                    "memory budget \(MemorySize.describe(budget)) is too small for the TAESD decode of \(w * f)×\(h * f): "
                    + "its smallest bands need about \(MemorySize.describe(bytes)) of activations")
            }
            plan.vaeTensorBytes = bytes
            plan.vaeActivations = bytes * 5 / 4
        }
        return plan
    }

    /// Plans and applies the plan's VAE tiling and UNet memory mode to `pipeline`; returns the plan.
    @discardableResult
    public static func apply(budget: Int, to pipeline: StableDiffusionPipeline, width: Int?, height: Int?,
                             count: Int = 1, guided: Bool = true) throws -> MemoryPlan {
        let plan = try plan(budget: budget, pipeline: pipeline, width: width, height: height, count: count, guided: guided)
        pipeline.vaeTiling = plan.vaeTiling
        pipeline.unetMemory = plan.unetMemory
        pipeline.memoryPlan = plan
        ProcessMemory.preferCompactHeap(plan: plan)
        return plan
    }
}
