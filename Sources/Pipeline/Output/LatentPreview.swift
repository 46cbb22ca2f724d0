// LatentPreview: a cheap picture of latents mid-generation — the linear latent→RGB approximation
// (no weights, no VAE), one pixel per latent cell — as ComfyUI's Latent2RGB previewer draws it.
import Foundation
import TiledKernels

public enum LatentPreview {
    /// SD 1.x's 4×3 latent→RGB factors (rows: latent channels 0…3; columns: R, G, B), from ComfyUI's
    /// `comfy/latent_formats.py` (`SD15.latent_rgb_factors`), a least-squares fit of decoded colours to latents
    /// — the same idea as A1111's "Approx cheap" preview (keturn's factors). They apply to the latents as the
    /// UNet sees them (diffusers' scale, before dividing by scaling_factor).
    public static let sd15Factors: [[Float]] = [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]

    /// Item `item` of latents [n, 4, h, w] as a w×h RGB8 image (row-major, 3 bytes per pixel):
    /// rgb = Σ_c latent[c]·factors[c], mapped from [-1, 1] to 0…255 ((x + 1) / 2, clamped, truncated as
    /// ComfyUI's `.byte()` does). Nil for latents that do not have 4 channels (the factors are SD 1.x's).
    public static func rgb(_ latents: Tensor, item: Int = 0, factors: [[Float]] = sd15Factors)
        -> (width: Int, height: Int, rgb: [UInt8])?
    {
        guard latents.shape.count == 4, latents.shape[1] == factors.count, factors.allSatisfy({ $0.count == 3 }),
              (0..<latents.shape[0]).contains(item) else { return nil }
        let c = latents.shape[1], h = latents.shape[2], w = latents.shape[3]
        let plane = h * w
        let data = latents.data
        var out = [UInt8](repeating: 0, count: plane * 3)
        for p in 0..<plane {
            for k in 0..<3 {
                var v: Float = 0
                for ch in 0..<c { v += data[(item * c + ch) * plane + p] * factors[ch][k] }
                let unit = min(max((v + 1) / 2, 0), 1)
                out[p * 3 + k] = UInt8(unit * 255)
            }
        }
        return (w, h, out)
    }

    /// The preview as PNG bytes (see `rgb`); nil when the latents are not SD 1.x-shaped.
    public static func png(_ latents: Tensor, item: Int = 0) -> [UInt8]? {
        guard let image = rgb(latents, item: item) else { return nil }
        return try? PNGWriter.encode(rgb: image.rgb, width: image.width, height: image.height)
    }

    /// Steps after which a preview is drawn when none is asked for explicitly: about ten per generation
    /// (every step for 10 steps or fewer), never the last one (the image itself follows it).
    public static func isPreviewStep(_ step: Int, total: Int, every: Int? = nil) -> Bool {
        guard step >= 1, step < total else { return false }
        let interval = every ?? max(1, (total + 9) / 10)
        return interval > 0 && step % interval == 0
    }
}
