// TAESDPreview: previews decoded by a TAESD (diffusers' AutoencoderTiny) instead of the linear latent→RGB
// approximation, as A1111's "TAESD" live preview does, at a size whose decode stays within a small activation budget.

import Foundation
import MMapWeights
import TiledKernels

/// Previews of latents mid-generation through a TAESD decoder: `AutoencoderTiny.decode(latents / scaling_factor)`
/// of the first image, mapped to RGB as the pipeline maps its images. Reads the latents only, so the generation
/// is the same with or without it.
public final class TAESDPreview: @unchecked Sendable {
    // @unchecked: every stored property is immutable; the decoder's weights are read-only mapped views.

    public let config: TinyAutoencoderConfig
    /// The AutoencoderTiny folder (config.json + weights).
    public let folder: URL
    /// Activation bytes a preview's decode may use (see `poolFactor`).
    public let budgetBytes: Int
    private let decoder: TinyAutoencoderDecoder

    /// 32 MiB: with TAESD's width of 64, a 512×512 image's latents (64×64) are previewed at 128×128 (pooled 4×4,
    /// about 10 GFLOP, well under a UNet step; the whole decode would need 256 MiB), a 128×128 one's at full size.
    public static let defaultBudgetBytes = 32 << 20

    /// Opens an AutoencoderTiny folder (or a pipeline folder whose vae/ holds one). Throws naming the folder when it
    /// is missing or holds another class.
    public init(folder url: URL, budgetBytes: Int = defaultBudgetBytes) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw PipelineError.missingFile(path: url.path, what: "AutoencoderTiny (TAESD) folder (--preview-vae)")
        }
        var folder = URL(fileURLWithPath: url.path, isDirectory: true)
        if !FileManager.default.fileExists(atPath: folder.appendingPathComponent("config.json").path),
            FileManager.default.fileExists(atPath: folder.appendingPathComponent("vae/config.json").path)
        {
            folder = folder.appendingPathComponent("vae", isDirectory: true)
        }
        let configURL = folder.appendingPathComponent("config.json")
        let className = try decodeConfig(PreviewVAEClassName.self, at: configURL).className ?? "(none)"
        guard className == "AutoencoderTiny" else {
            throw PipelineError.unsupported(file: configURL.path, feature: "VAE class \(className) for previews "
                + "(--preview-vae takes an AutoencoderTiny (TAESD) folder)")
        }
        config = try decodeConfig(TinyAutoencoderConfig.self, at: configURL)
        let weights = try ComponentWeights(directory: folder, component: "")
        decoder = try TinyAutoencoderDecoder(config: config, weights: weights, file: configURL.path)
        self.folder = folder
        self.budgetBytes = budgetBytes
    }

    /// Bytes previews take beside a generation, which a memory plan keeps aside: the decode's activations
    /// (`budgetBytes`), the decoder's weights, and per preview pixel 18 bytes (the F32 image, its RGB8 copy and at
    /// most as much PNG). A decode within the budget has at most budgetBytes / (16 · width) pixels, or one cell's
    /// (`TinyAutoencoderDecoder.tensorBytes`: 4 maps of `width` F32 channels).
    public var reservedBytes: Int {
        let width = max(1, config.decoderBlockOutChannels.max() ?? 1)
        let pixels = max(budgetBytes / (16 * width), config.scaleFactor * config.scaleFactor)
        return budgetBytes + decoder.totalWeightBytes + pixels * 18
    }

    /// Throws unless the TAESD decodes latents of `latentChannels` channels (the model's UNet's).
    public func check(latentChannels: Int) throws {
        guard config.latentChannels == latentChannels else {
            throw PipelineError.badConfig(
                file: folder.appendingPathComponent("config.json").path, field: "latent_channels",
                reason: "is \(config.latentChannels) but the model's latents have \(latentChannels)")
        }
    }

    /// Latent cells per side averaged into one before decoding: 1 when decoding the whole h×w latent fits
    /// `budgetBytes`, else the smallest power of two that does (or that leaves one cell). Bands of latent rows would
    /// not help: each needs the decoder's halo (19 rows for TAESD) on both sides, most of a 512×512 image's 64.
    public func poolFactor(latentHeight h: Int, latentWidth w: Int) -> Int {
        var k = 1
        while h > k || w > k {
            let ph = (h + k - 1) / k, pw = (w + k - 1) / k
            if TinyAutoencoderDecoder.tensorBytes(config: config, latentRows: ph, latentWidth: pw, batch: 1) <= budgetBytes {
                break
            }
            k *= 2
        }
        return k
    }

    /// The decoder input for item `item` of latents [n, c, h, w]: averaged over k×k cells (k = `poolFactor`; edge
    /// blocks average the cells they have), divided by the TAESD's scaling_factor.
    public func decoderInput(_ latents: Tensor, item: Int = 0) -> Tensor? {
        guard latents.shape.count == 4, latents.shape[1] == config.latentChannels,
            (0..<latents.shape[0]).contains(item) else { return nil }
        let c = latents.shape[1], h = latents.shape[2], w = latents.shape[3]
        let k = poolFactor(latentHeight: h, latentWidth: w)
        let ph = (h + k - 1) / k, pw = (w + k - 1) / k
        let data = latents.data
        var out = [Float](repeating: 0, count: c * ph * pw)
        let scale = config.scalingFactor
        for ch in 0..<c {
            let plane = (item * c + ch) * h * w
            for y in 0..<ph {
                for x in 0..<pw {
                    var sum: Float = 0
                    var n = 0
                    for yy in (y * k)..<min(h, (y + 1) * k) {
                        for xx in (x * k)..<min(w, (x + 1) * k) {
                            sum += data[plane + yy * w + xx]
                            n += 1
                        }
                    }
                    out[(ch * ph + y) * pw + x] = sum / Float(n) / scale
                }
            }
        }
        return Tensor(shape: [1, c, ph, pw], data: out)
    }

    /// The preview of item `item` as an RGB8 image (row-major, 3 bytes per pixel), decoded within `budgetBytes`;
    /// nil for latents the TAESD does not take.
    public func rgb(_ latents: Tensor, item: Int = 0) -> (width: Int, height: Int, rgb: [UInt8])? {
        guard let z = decoderInput(latents, item: item) else { return nil }
        let image = decoder(z)
        return (image.shape[3], image.shape[2], StableDiffusionPipeline.rgb8(image)[0])
    }

    /// The preview as PNG bytes (see `rgb`).
    public func png(_ latents: Tensor, item: Int = 0) -> [UInt8]? {
        guard let image = rgb(latents, item: item) else { return nil }
        return try? PNGWriter.encode(rgb: image.rgb, width: image.width, height: image.height)
    }
}

/// A component config's `_class_name`.
private struct PreviewVAEClassName: Decodable {
    var className: String?
    enum CodingKeys: String, CodingKey { case className = "_class_name" }
}
