// MemoryEstimate: the planned peak memory of a streamed UNet run — the largest single UNet block's weight
// bytes plus the skip connections held across blocks. One formula, shared by `sdd inspect` and the planner.

/// An estimate (not a measurement) of the resident memory a block-streamed UNet needs.
///
/// Formula: `plannedPeakBytes = largestBlockWeightBytes + skipConnectionBytes`, where
/// - a *block* is one down/up level's resnet + attention pair (`down_blocks.i.resnets.j` together with
///   `down_blocks.i.attentions.j`), a level's down/upsampler, or the whole mid block; the weights of a
///   block are its tensors' stored bytes (so the estimate follows the file's quantization);
/// - `skipConnectionBytes` = Σ over the UNet's skip connections of C × H × W × 4 bytes (F32) × batch,
///   batch 2 with classifier-free guidance. diffusers keeps one skip after conv_in, one per down resnet,
///   and one per downsampler, each at its level's channels and resolution.
/// Activations inside a block, attention scratch, the text encoder and the VAE are not included.
public struct MemoryEstimate: Sendable, Equatable {
    /// Name of the heaviest block (e.g. "mid_block", "up_blocks.1.0").
    public let largestBlock: String
    /// Its weight bytes as stored.
    public let largestBlockWeightBytes: Int
    /// F32 skip connections for the chosen size and batch.
    public let skipConnectionBytes: Int
    /// Image size in pixels the estimate is for.
    public let width: Int
    public let height: Int
    /// Latent size used (pixels / VAE scale factor).
    public let latentWidth: Int
    public let latentHeight: Int
    public let batch: Int

    public var plannedPeakBytes: Int { largestBlockWeightBytes + skipConnectionBytes }

    /// Estimate for `width`×`height` pixels (default 512×512), guided (batch 2) unless `guidance` is false.
    /// `tensorBytes`: the UNet's tensors (names without the "unet." prefix) and their stored byte sizes.
    public init(unet: UNetConfig, tensorBytes: [(name: String, bytes: Int)], width: Int = 512, height: Int = 512,
                guidance: Bool = true, vaeScaleFactor: Int = 8) {
        var blocks: [String: Int] = [:]
        for (name, bytes) in tensorBytes {
            if let block = Self.block(of: name) { blocks[block, default: 0] += bytes }
        }
        let largest = blocks.max { a, b in a.value != b.value ? a.value < b.value : a.key > b.key }
        largestBlock = largest?.key ?? "(none)"
        largestBlockWeightBytes = largest?.value ?? 0
        self.width = width
        self.height = height
        latentWidth = max(1, width / max(vaeScaleFactor, 1))
        latentHeight = max(1, height / max(vaeScaleFactor, 1))
        batch = guidance ? 2 : 1
        skipConnectionBytes = Self.skipConnectionBytes(unet: unet, latentHeight: latentHeight,
                                                       latentWidth: latentWidth, batch: batch)
    }

    /// The block a UNet tensor belongs to: "down_blocks.i.j" / "up_blocks.i.j" for resnet j and
    /// attention j of level i, "down_blocks.i.downsamplers" / "up_blocks.i.upsamplers", "mid_block";
    /// nil for the stem and head (conv_in, time embedding, conv_norm_out, conv_out).
    public static func block(of name: String) -> String? {
        let parts = name.split(separator: ".")
        guard let first = parts.first else { return nil }
        if first == "mid_block" { return "mid_block" }
        guard first == "down_blocks" || first == "up_blocks", parts.count >= 3 else { return nil }
        let level = parts[1]
        switch parts[2] {
        case "resnets", "attentions":
            guard parts.count >= 4 else { return nil }
            return "\(first).\(level).\(parts[3])"
        default:
            return "\(first).\(level).\(parts[2])"
        }
    }

    /// Σ C × H × W × 4 × batch over diffusers' skip connections (the `down_block_res_samples`).
    public static func skipConnectionBytes(unet: UNetConfig, latentHeight: Int, latentWidth: Int, batch: Int) -> Int {
        let levels = unet.blockOutChannels.count
        let layers = (try? unet.layersPerBlock.expanded(levels: levels, field: "layers_per_block", file: "")) ??
            Array(repeating: 2, count: levels)
        var h = latentHeight, w = latentWidth
        var elements = (unet.blockOutChannels.first ?? 0) * h * w  // conv_in output
        for level in 0..<levels {
            let c = unet.blockOutChannels[level]
            elements += layers[level] * c * h * w
            if level < levels - 1 {  // downsampler (stride 2, padding 1, kernel 3)
                h = (h + 1) / 2
                w = (w + 1) / 2
                elements += c * h * w
            }
        }
        return elements * 4 * batch
    }
}
