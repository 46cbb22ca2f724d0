// MemoryPlanner: turns a memory budget (--memory-budget) into the run's settings — weight streaming and
// VAE tile size — from estimates of each stage's peak, or refuses with the numbers when it cannot fit.

import Foundation

/// A byte count written as users write it: 512M, 1.5G, 300MiB, 268435456.
public enum MemorySize {
    public static func parse(_ text: String) throws -> Int {
        let t = text.trimmingCharacters(in: .whitespaces).uppercased()
        let kib = 1024.0, mib = kib * 1024, gib = mib * 1024
        let units: [(String, Double)] = [("GIB", gib), ("MIB", mib), ("KIB", kib), ("GB", gib), ("MB", mib),
                                         ("KB", kib), ("G", gib), ("M", mib), ("K", kib), ("B", 1)]
        var number = t
        var scale = 1.0
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            number = String(t.dropLast(suffix.count))
            scale = factor
            break
        }
        guard let value = Double(number.trimmingCharacters(in: .whitespaces)), value.isFinite, value > 0,
              value * scale < 1e15 else {
            throw PipelineError.invalidRequest("memory size \"\(text)\" is not a positive size like 256M or 1.5G")
        }
        return Int(value * scale)
    }

    public static func describe(_ bytes: Int) -> String {
        bytes >= 1 << 30 ? String(format: "%.2f GiB", Double(bytes) / Double(1 << 30))
            : String(format: "%.0f MiB", Double(bytes) / Double(1 << 20))
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
    public var vaeWeights: Int
    /// The VAE decode's activations with the chosen tiling.
    public var vaeActivations: Int
    public var vaeTiling: VAETiling?

    public var unetPeak: Int { baseline + unetWeights + unetActivations }
    public var vaePeak: Int { baseline + vaeWeights + vaeActivations }
    public var peak: Int { max(unetPeak, vaePeak) }

    public var description: String {
        "planned peak \(MemorySize.describe(peak)): UNet \(MemorySize.describe(unetPeak)) (weights "
            + "\(MemorySize.describe(unetWeights)), activations \(MemorySize.describe(unetActivations))), VAE "
            + "\(MemorySize.describe(vaePeak)) (\(vaeTiling.map { "tiles of \($0.tileLatentSize) latent cells" } ?? "untiled"))"
    }
}

public enum MemoryPlanner {
    /// The process floor before any model work (Swift runtime, OpenBLAS thread buffers, tokenizer tables).
    public static let baselineBytes = 48 << 20

    /// Peak F32 activation bytes of one UNet evaluation on [batch, in, h, w] latents: every skip connection
    /// plus the largest module's live tensors (a resnet on the concatenated input, or a transformer's
    /// tokens with q, k, v, attention tiles and one feed-forward tile).
    public static func unetActivationBytes(_ config: UNetConfig, latentHeight: Int, latentWidth: Int, batch: Int) -> Int {
        let c = config.blockOutChannels
        let layers = (try? config.layersPerBlock.expanded(levels: c.count, field: "", file: "")) ?? Array(repeating: 2, count: c.count)
        var h = latentHeight, w = latentWidth
        var skips = batch * c[0] * h * w
        var live = 0
        for (i, ch) in c.enumerated() {
            let pixels = h * w
            skips += layers[i] * batch * ch * pixels
            // Up path at this level: the concatenated input (ch + next) and its normed copy, then up to three
            // ch-wide maps, plus one im2col band (≤ 2 Mi floats).
            let upIn = ch + (i + 1 < c.count ? c[i + 1] : ch)
            let resnet = batch * pixels * (2 * upIn + 3 * ch) + (2 << 20)
            // Transformer: residual, normed, q, k, v, attention out, plus a 256-token GEGLU tile (12 × ch wide).
            let transformer = batch * pixels * ch * 6 + TransformerBlock.feedForwardTile * ch * 12
            live = max(live, resnet, transformer)
            if i + 1 < c.count {
                skips += batch * ch * ((h + 1) / 2) * ((w + 1) / 2)
                h = (h + 1) / 2
                w = (w + 1) / 2
            }
        }
        return (skips + live) * MemoryLayout<Float>.size
    }

    /// Plans a generation of `settings` on `pipeline` under `budget` bytes (nil: no limit, untiled VAE).
    public static func plan(budget: Int?, pipeline: StableDiffusionPipeline, width: Int?, height: Int?,
                            count: Int = 1, guided: Bool = true) throws -> MemoryPlan {
        let model = pipeline.model
        let f = model.vaeScaleFactor
        let w = (width ?? model.defaultSize.width) / f
        let h = (height ?? model.defaultSize.height) / f
        let unet = try pipeline.unet()
        let vae = try pipeline.vaeDecoder()
        let streamed = pipeline.residency != .resident
        var plan = MemoryPlan(
            baseline: baselineBytes,
            unetWeights: streamed ? unet.largestGroupBytes : unet.totalWeightBytes,
            unetActivations: unetActivationBytes(model.unet, latentHeight: h, latentWidth: w,
                                                 batch: count * (guided ? 2 : 1)),
            vaeWeights: streamed ? vae.largestGroupBytes : vae.totalWeightBytes,
            vaeActivations: VAEDecoder.peakActivationBytes(config: model.vae, latentHeight: h, latentWidth: w, batch: count),
            vaeTiling: nil)
        guard let budget else { return plan }
        if plan.unetPeak > budget {
            throw PipelineError.invalidRequest(
                "memory budget \(MemorySize.describe(budget)) is too small for \(w * f)×\(h * f): the UNet needs about "
                + "\(MemorySize.describe(plan.unetPeak)) (weights \(MemorySize.describe(plan.unetWeights)) "
                + "\(streamed ? "streamed" : "resident"), activations \(MemorySize.describe(plan.unetActivations)))")
        }
        // The VAE estimate ran ~20% under measured peaks (SD 1.5 Q8_0, 512×512, 32-cell tiles: 270 MB
        // measured against 229 MiB planned), so tiles are chosen with that margin.
        let vaeRoom = (budget - plan.baseline - plan.vaeWeights) * 4 / 5
        if let tiling = try VAEDecoder.tiling(forBudgetBytes: max(vaeRoom, 0), config: model.vae, latentHeight: h,
                                              latentWidth: w, batch: count) {
            plan.vaeTiling = tiling
            plan.vaeActivations = VAEDecoder.tiledDecodeBytes(config: model.vae, tiling: tiling, latentHeight: h,
                                                              latentWidth: w, batch: count) * 5 / 4
        }
        return plan
    }

    /// Plans and applies the plan's VAE tiling to `pipeline`; returns the plan.
    @discardableResult
    public static func apply(budget: Int, to pipeline: StableDiffusionPipeline, width: Int?, height: Int?,
                             count: Int = 1, guided: Bool = true) throws -> MemoryPlan {
        let plan = try plan(budget: budget, pipeline: pipeline, width: width, height: height, count: count, guided: guided)
        pipeline.vaeTiling = plan.vaeTiling
        ProcessMemory.preferCompactHeap()
        return plan
    }
}
