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
    /// The largest tensor bytes any block of the UNet's list declares for this shape and mode (skip
    /// connections included; see `UNetBlockLayout.peakBytes`), plus the pipeline's tensors around the call.
    public var unetActivations: Int
    /// The UNet's kernel scratch at its largest block (a dequantized weight and one im2col band per core)
    /// under `unetGemmLimits`.
    public var scratch: Int = 0
    /// The scratch bounds the UNet's products run with: the standard ones unless the budget needs smaller.
    public var unetGemmLimits: GemmLimits = .standard
    public var vaeWeights: Int
    /// Everything the VAE decode holds besides its weights with the chosen tiling: its tensors, kernel scratch and
    /// image buffers (`VAEDecoder.decodeBytes`, `TinyAutoencoderDecoder.decodeBytes`).
    public var vaeActivations: Int
    public var vaeTiling: VAETiling?
    /// A TAESD decode's bands (nil: whole, or an AutoencoderKL).
    public var vaeBands: TinyAutoencoderBands?
    /// How the UNet runs: `.fastest` unless the budget needs `.compact`.
    public var unetMemory: UNetMemoryMode = .fastest

    public var unetPeak: Int { baseline + unetWeights + unetActivations + scratch }
    public var vaePeak: Int { baseline + vaeWeights + vaeActivations }
    public var peak: Int { max(unetPeak, vaePeak) }

    /// What the tensor pool may hold, live and idle together, while the UNet runs: its modelled activations.
    public var unetTensorBytes: Int { unetActivations }
    /// The same for the VAE decode: its tensors alone, without the kernel scratch (kept by the scratch arenas) and
    /// image buffers that `vaeActivations` adds.
    public var vaeTensorBytes: Int

    /// " in 4 MiB buffers" when the UNet's scratch bounds are not the standard ones, and whether its typed weights'
    /// pages are released as they are read.
    private var scratchBuffers: String {
        (unetGemmLimits.bandFloats == GemmLimits.standard.bandFloats ? ""
            : " in \(MemorySize.describe(unetGemmLimits.bandFloats * 4)) buffers")
            + (unetGemmLimits.releasesMappedWeights ? ", weight pages released as read" : "")
    }

    public var description: String {
        "planned peak \(MemorySize.describe(peak)): UNet \(MemorySize.describe(unetPeak)) (weights "
            + "\(MemorySize.describe(unetWeights)), activations \(MemorySize.describe(unetActivations)), "
            + "scratch \(MemorySize.describe(scratch))\(scratchBuffers), \(unetMemory)), VAE "
            + "\(MemorySize.describe(vaePeak)) (\(vaeTiling.map { "tiles of \($0.tileLatentSize) latent cells" } ?? vaeBands.map { "TAESD in \($0)" } ?? "untiled"))"
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
    /// Bytes of F32 weights in the UNet group that has most: what stays resident of a streamed group when the
    /// kernels release typed weights' pages as they dequantize them (`GemmLimits.releasesMappedWeights`). nil:
    /// unknown, and the planner counts whole groups.
    public var unetLargestGroupF32Bytes: Int? = nil
    /// The most bytes per value of a typed UNet weight (Q8_0: 34/32).
    public var unetTypedBytesPerValue: Double = 4
    public var vaeLargestGroupBytes: Int
    public var vaeTotalBytes: Int
    /// Whether the weights are streamed (about one group resident) rather than kept resident.
    public var streamed: Bool
    /// Whether every AutoencoderKL conv weight is quantized or 16-bit (`VAEDecoder.convWeightsTyped`); false plans
    /// the decode's scratch for any mix of types.
    public var vaeConvWeightsTyped = false
}

public enum MemoryPlanner {
    /// The process floor before any model work (Swift runtime, OpenBLAS thread buffers, tokenizer tables).
    public static let baselineBytes = 48 << 20

    /// Peak tensor bytes of one UNet evaluation on [batch, in, h, w] latents with a context of `contextTokens`
    /// tokens: the largest of the blocks' declared peaks, walking the UNet's own list of blocks (`UNet.layout`,
    /// `UNetBlockLayout.peakBytes`), plus what the pipeline holds around the call (the context, the latents,
    /// their guided stack and its scaled copy). Kernel scratch is apart (`unetScratchBytes`).
    public static func unetActivationBytes(_ config: UNetConfig, latentHeight: Int, latentWidth: Int, batch: Int,
                                           memory: UNetMemoryMode = .fastest, contextTokens: Int = 77) throws -> Int {
        let layout = try UNet.layout(config)
        let walk = UNet.plannedBytes(layout, batch: batch, latentHeight: latentHeight, latentWidth: latentWidth,
                                     contextTokens: contextTokens, memory: memory)
        let contextDim = try config.crossAttentionDim.expanded(levels: config.blockOutChannels.count,
                                                               field: "cross_attention_dim", file: "unet/config.json")
            .max() ?? 0
        let caller = (batch * contextTokens * contextDim + 3 * batch * config.inChannels * latentHeight * latentWidth) * 4
        return walk.peak + caller
    }

    /// The UNet's kernel scratch at its largest under `limits`: the largest of its blocks'
    /// (`UNetBlockLayout.scratchBytes`).
    static func unetScratchBytes(_ config: UNetConfig, latentHeight: Int, latentWidth: Int,
                                 limits: GemmLimits = .standard) throws -> Int {
        UNet.plannedBytes(try UNet.layout(config), batch: 1, latentHeight: latentHeight, latentWidth: latentWidth,
                          contextTokens: 1, memory: .fastest, limits: limits).scratch
    }

    /// The scratch bounds a budget may need, from the fastest down: the standard ones (a whole weight up to
    /// 16 MiB of F32, 8 MiB bands), then uniform 4 MiB buffers (Winograd F(2×2) on every UNet conv still fits:
    /// a 32-channel chunk of a 1280-channel weight is 2.5 MiB), then 1 MiB ones (F(2×2) up to 512 channels, the
    /// wider convs as im2col + panels).
    static let unetScratchLadder: [GemmLimits] = [.standard, .uniform(floats: 1 << 20), .uniform(floats: 1 << 18)]

    /// Bytes of the UNet's streamed weights resident at once when its kernels run under `limits` with
    /// `releasesMappedWeights`: the F32 weights of the largest group, and the typed rows being dequantized — a whole
    /// weight of up to `wholeWeightFloats` values, or a panel (or a Winograd transform step of 64 Ki values) per
    /// core — each with what a fault maps around it from the page cache (a folio of up to
    /// `Weight.refaultReachBytes` on either side, see `Weight.releaseMappedRows`).
    /// What a streamed network keeps mapped while its largest group (`groupBytes` of `totalBytes`) runs: the group,
    /// and the pages a fault at either end maps around itself — up to a whole page-cache folio, 2 MiB
    /// (`Weight.refaultReachBytes`) — within the network's weights. (SD 1.5 Q8_0 at 512×512 under 200M peaked at
    /// 187.9 MiB VmHWM in the VAE stage against 184.7 MiB planned without these 4 MiB.)
    static func streamedGroupBytes(_ groupBytes: Int, of totalBytes: Int) -> Int {
        min(totalBytes, groupBytes + 2 * Weight.refaultReachBytes)
    }

    static func releasedWeightBytes(_ weights: WeightFigures, limits: GemmLimits) -> Int? {
        guard weights.streamed, let f32 = weights.unetLargestGroupF32Bytes else { return nil }
        let (values, pieces) = limits.valuesDequantizedAtOnce(largestWeightValues: weights.unetLargestWeightElements)
        return f32 + Int((Double(values) * weights.unetTypedBytesPerValue).rounded(.up)) + pieces * 2 * Weight.refaultReachBytes
            + weights.unetMergedLoRABytes
    }

    /// The UNet's part of a plan, shared by every VAE kind.
    struct UNetPart {
        var weights: Int
        var activations: Int
        var scratch: Int
        var memory: UNetMemoryMode
        var limits: GemmLimits = .standard
        var peak: Int { baselineBytes + weights + activations + scratch }
    }

    /// The UNet's part for [count (×2 guided), h, w] latents: weights (streamed: the largest group and any LoRA
    /// merged into them; else all), activations and scratch from its block list, whole batch unless `budget`
    /// needs item by item with F16 skips, standard scratch bounds unless it needs smaller ones
    /// (`unetScratchLadder`). Throws when even the smallest of both does not fit.
    static func planUNet(model: StableDiffusionModel, weights: WeightFigures, latentHeight h: Int, latentWidth w: Int,
                         count: Int, guided: Bool, budget: Int?) throws -> UNetPart {
        let batch = count * (guided ? 2 : 1)
        let tokens = model.textEncoder.maxPositionEmbeddings
        func activations(_ memory: UNetMemoryMode) throws -> Int {
            try unetActivationBytes(model.unet, latentHeight: h, latentWidth: w, batch: batch, memory: memory,
                                    contextTokens: tokens)
        }
        var part = UNetPart(
            // Weights a LoRA was merged into stay resident whatever the residency.
            weights: weights.streamed ? streamedGroupBytes(weights.unetLargestGroupBytes, of: weights.unetTotalBytes)
                + weights.unetMergedLoRABytes : weights.unetTotalBytes,
            activations: try activations(.fastest),
            scratch: try unetScratchBytes(model.unet, latentHeight: h, latentWidth: w),
            memory: .fastest)
        guard let budget, part.peak > budget else { return part }
        // Item by item with F16 skips: slower and not bit-exact, so only when the budget needs it.
        part.memory = .compact
        part.activations = try activations(.compact)
        // Then typed weights' pages released as they are dequantized (rows refault from the page cache when read
        // again), then smaller scratch buffers, each step down slower (smaller GEMMs, fewer Winograd convs).
        for var limits in unetScratchLadder where part.peak > budget {
            if let released = releasedWeightBytes(weights, limits: limits), released < part.weights {
                limits.releasesMappedWeights = true
                part.weights = released
            }
            guard limits != part.limits else { continue }
            part.limits = limits
            part.scratch = try unetScratchBytes(model.unet, latentHeight: h, latentWidth: w, limits: limits)
        }
        if part.peak > budget {
            let f = model.vaeScaleFactor
            throw PipelineError.invalidRequest(
                "memory budget \(MemorySize.describe(budget)) is too small for \(w * f)×\(h * f): the UNet needs about "
                + "\(MemorySize.describe(part.peak)) (weights \(MemorySize.describe(part.weights)) "
                + "\(weights.streamed ? "streamed" : "resident"), activations \(MemorySize.describe(part.activations)) "
                + "\(part.memory), scratch \(MemorySize.describe(part.scratch)))")
        }
        return part
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
        if let tiny = model.tinyAutoencoder {
            return try planWithTinyVAE(tiny, budget: budget, model: model, weights: weights, latentHeight: h,
                                       latentWidth: w, count: count, guided: guided)
        }
        let unet = try planUNet(model: model, weights: weights, latentHeight: h, latentWidth: w, count: count,
                                guided: guided, budget: budget)
        let streamed = weights.streamed
        let typed = weights.vaeConvWeightsTyped
        let whole = VAEDecoder.decodeBytes(config: model.vae, tiling: nil, latentHeight: h, latentWidth: w,
                                           batch: count, typedWeights: typed)
        var plan = MemoryPlan(
            baseline: baselineBytes, unetWeights: unet.weights, unetActivations: unet.activations,
            scratch: unet.scratch, unetGemmLimits: unet.limits,
            vaeWeights: streamed ? streamedGroupBytes(weights.vaeLargestGroupBytes, of: weights.vaeTotalBytes)
                : weights.vaeTotalBytes,
            vaeActivations: whole.total, vaeTiling: nil, unetMemory: unet.memory, vaeTensorBytes: whole.tensors)
        guard let budget else { return plan }
        // Tiles are chosen by the decode's whole footprint (tensors, kernel scratch, image buffers) in what the
        // baseline and the weights leave.
        let vaeRoom = budget - plan.baseline - plan.vaeWeights
        if let tiling = try VAEDecoder.tiling(forBudgetBytes: max(vaeRoom, 0), config: model.vae, latentHeight: h,
                                              latentWidth: w, batch: count, typedWeights: typed) {
            let bytes = VAEDecoder.decodeBytes(config: model.vae, tiling: tiling, latentHeight: h, latentWidth: w,
                                               batch: count, typedWeights: typed)
            plan.vaeTiling = tiling
            plan.vaeActivations = bytes.total
            plan.vaeTensorBytes = bytes.tensors
        }
        return plan
    }

    /// The plan for a model whose VAE is an AutoencoderTiny (TAESD): the UNet as always; the decode whole, or in
    /// bands of latent rows (exact, see `TinyAutoencoderDecoder.decode`) whose tensors fit what the budget leaves.
    static func planWithTinyVAE(_ tiny: TinyAutoencoderConfig, budget: Int?, model: StableDiffusionModel,
                                weights: WeightFigures, latentHeight h: Int, latentWidth w: Int, count: Int,
                                guided: Bool) throws -> MemoryPlan {
        let f = model.vaeScaleFactor
        let unet = try planUNet(model: model, weights: weights, latentHeight: h, latentWidth: w, count: count,
                                guided: guided, budget: budget)
        let whole = TinyAutoencoderDecoder.decodeBytes(config: tiny, bands: nil, latentHeight: h, latentWidth: w,
                                                       batch: count)
        var plan = MemoryPlan(
            baseline: baselineBytes, unetWeights: unet.weights, unetActivations: unet.activations,
            scratch: unet.scratch, unetGemmLimits: unet.limits, vaeWeights: weights.vaeTotalBytes,
            vaeActivations: whole.total, vaeTiling: nil, unetMemory: unet.memory, vaeTensorBytes: whole.tensors)
        guard let budget else { return plan }
        // Bands are chosen for their tensors in what the baseline, the weights, the whole decode's scratch (bands
        // only shrink the maps a conv runs on) and the 8-bit images leave; the plan then counts the bands' own.
        let room = max(budget - plan.baseline - plan.vaeWeights, 0)
        if let bands = TinyAutoencoderDecoder.bands(config: tiny, forBudgetBytes: max(room - whole.scratch - whole.buffers, 0),
                                                    latentHeight: h, latentWidth: w, batch: count) {
            let bytes = TinyAutoencoderDecoder.decodeBytes(config: tiny, bands: bands, latentHeight: h, latentWidth: w,
                                                           batch: count)
            guard bytes.total <= room else {
                throw PipelineError.invalidRequest(
                    "memory budget \(MemorySize.describe(budget)) is too small for the TAESD decode of \(w * f)×\(h * f): "
                    + "its smallest bands need about \(MemorySize.describe(bytes.total)) (tensors "
                    + "\(MemorySize.describe(bytes.tensors)), scratch \(MemorySize.describe(bytes.scratch)))")
            }
            plan.vaeTensorBytes = bytes.tensors
            plan.vaeActivations = bytes.total
            plan.vaeBands = bands
        }
        return plan
    }

    /// The run context of a generation under `budget` bytes (its plan's VAE tiling, UNet memory mode and limits);
    /// nil: no plan, `RunContext()`. The pipeline is left as it was: the run takes the context.
    public static func runContext(budget: Int?, pipeline: StableDiffusionPipeline, width: Int?, height: Int?,
                                  count: Int = 1, guided: Bool = true) throws -> RunContext {
        guard let budget else { return RunContext() }
        return RunContext(plan: try plan(budget: budget, pipeline: pipeline, width: width, height: height,
                                         count: count, guided: guided))
    }
}
