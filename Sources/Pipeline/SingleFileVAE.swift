// SingleFileVAE: an AutoencoderKL held as one .safetensors file with CompVis/LDM names, bare or under
// `first_stage_model.` (vae-ft-mse-840000-ema-pruned.safetensors and the like), seen under diffusers' names as
// diffusers' `AutoencoderKL.from_single_file(..., config=)` converts it, every tensor checked against the config.

import Foundation
import MMapWeights
import TiledKernels

/// One single-file VAE: its tensors under diffusers' AutoencoderKL names, mapped (never copied), and checked
/// against `config`.
public struct SingleFileVAE: Sendable {
    /// The VAE's tensors under diffusers' names (the attention's 1×1 conv kernels are handed out as [C, C]).
    public let weights: RenamedWeights
    /// The prefix the file's VAE names carry ("" or `first_stage_model.`).
    public let prefix: String

    /// Opens `url` (a `.safetensors` file) and checks its VAE tensors against `config`: every tensor of an
    /// AutoencoderKL with that config must be there with that shape (the encoder may be left out as a whole), and
    /// no VAE tensor may be extra. `configSource` says in errors where the config came from. Throws
    /// `PipelineError.badWeights` naming the first tensor that does not fit, or a `WeightsError` for an unreadable
    /// file; a pickle file (`.ckpt`, `.pt`, `.bin`) is refused with how to convert it.
    public init(url: URL, config: VAEConfig, configSource: String) throws {
        let path = url.path
        let ext = url.pathExtension.lowercased()
        guard ext == "safetensors" || ["ckpt", "pt", "pth", "bin"].contains(ext) else {
            throw PipelineError.unsupported(file: path, feature: "a VAE file that is not .safetensors (a VAE is a "
                + "diffusers folder or a single .safetensors file)")
        }
        let file = try ComponentWeights(file: url)  // refuses pickle files, saying how to convert them
        var shapes = [String: [Int]]()
        for name in file.source.tensorNames { shapes[name] = try file.info(name)?.shape }
        let (prefix, map) = try Self.diffusersNames(shapes: shapes, config: config, file: path,
                                                    configSource: configSource)
        self.prefix = prefix
        weights = RenamedWeights(map: map.mapValues { RenamedTensor(source: prefix + $0) }, base: file, path: path)
    }

    /// The VAE names of a file's tensors (`shapes`: stored name → PyTorch shape) under diffusers' names (`map`:
    /// diffusers name → stored name without `prefix`), checked against `config`: every tensor of an AutoencoderKL
    /// with that config must be there with that shape (the encoder may be left out as a whole), and no VAE tensor
    /// may be extra. Throws `PipelineError.badWeights` naming the first tensor that does not fit.
    public static func diffusersNames(shapes: [String: [Int]], config: VAEConfig, file path: String,
                                      configSource: String) throws -> (prefix: String, map: [String: String]) {
        let prefix = shapes.keys.contains { $0.hasPrefix(CompVisNames.vaePrefix) } ? CompVisNames.vaePrefix : ""
        let names = shapes.keys.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
        let (map, unmapped) = CompVisNames.vaeMap(names)
        func misfit(_ stored: String, _ why: String) -> PipelineError {
            .badWeights(component: path, reason: "tensor \"\(prefix + stored)\" \(why) (VAE config: \(configSource))")
        }
        if let first = unmapped.first {
            throw misfit(first, "is not a tensor of a Stable Diffusion AutoencoderKL")
        }
        guard map.keys.contains(where: { $0.hasPrefix("decoder.") }) else {
            throw PipelineError.badWeights(
                component: path, reason: "holds no VAE decoder (no \"\(prefix)decoder.*\" tensors; a single-file VAE "
                    + "has CompVis names such as decoder.up.0.block.0.conv1.weight, bare or under first_stage_model.)")
        }
        let hasEncoder = map.keys.contains { $0.hasPrefix("encoder.") || $0.hasPrefix("quant_conv.") }
        let expected = config.tensorShapes(encoder: hasEncoder)
        for (name, stored) in map.sorted(by: { $0.value < $1.value }) {
            let shown = name == stored ? "" : " (\(name))"
            guard let shape = expected[name] else {
                throw misfit(stored, "has no place in an AutoencoderKL with block_out_channels "
                    + "\(config.blockOutChannels) and layers_per_block \(config.layersPerBlock)\(shown)")
            }
            guard let found = shapes[prefix + stored] else { continue }
            let isMatrix = name.contains(".mid_block.attentions.") && shape.count == 2
            guard found == shape || (isMatrix && found == shape + [1, 1]) else {
                throw misfit(stored, "has shape \(found), expected \(shape)\(shown)")
            }
        }
        let stored = Set(map.keys)
        let levels = config.blockOutChannels.count
        for name in expected.keys.sorted() where !stored.contains(name) {
            let compVis = CompVisNames.compVisVAEName(name, levels: levels)?.name ?? name
            throw PipelineError.badWeights(
                component: path, reason: "has no tensor \"\(prefix + compVis)\" (diffusers' \(name)), which an "
                    + "AutoencoderKL with this config has (VAE config: \(configSource))")
        }
        return (prefix, map)
    }
}

extension VAEConfig {
    /// Every tensor of a diffusers AutoencoderKL with this config → its PyTorch shape: the decoder (with
    /// post_quant_conv when used) and, with `encoder`, the encoder and quant_conv. The mid attention's
    /// q/k/v/out weights are [C, C] (CompVis files store them as 1×1 convs).
    public func tensorShapes(encoder: Bool) -> [String: [Int]] {
        var shapes = [String: [Int]]()
        let c = blockOutChannels, levels = c.count, top = c[levels - 1], latent = latentChannels
        func resnet(_ p: String, _ inC: Int, _ outC: Int) {
            shapes["\(p).norm1.weight"] = [inC]
            shapes["\(p).norm1.bias"] = [inC]
            shapes["\(p).conv1.weight"] = [outC, inC, 3, 3]
            shapes["\(p).conv1.bias"] = [outC]
            shapes["\(p).norm2.weight"] = [outC]
            shapes["\(p).norm2.bias"] = [outC]
            shapes["\(p).conv2.weight"] = [outC, outC, 3, 3]
            shapes["\(p).conv2.bias"] = [outC]
            if inC != outC {
                shapes["\(p).conv_shortcut.weight"] = [outC, inC, 1, 1]
                shapes["\(p).conv_shortcut.bias"] = [outC]
            }
        }
        func conv(_ p: String, _ outC: Int, _ inC: Int, _ k: Int) {
            shapes["\(p).weight"] = [outC, inC, k, k]
            shapes["\(p).bias"] = [outC]
        }
        func mid(_ side: String) {
            resnet("\(side).mid_block.resnets.0", top, top)
            resnet("\(side).mid_block.resnets.1", top, top)
            guard midBlockAddAttention else { return }
            let p = "\(side).mid_block.attentions.0"
            shapes["\(p).group_norm.weight"] = [top]
            shapes["\(p).group_norm.bias"] = [top]
            for m in ["to_q", "to_k", "to_v", "to_out.0"] {
                shapes["\(p).\(m).weight"] = [top, top]
                shapes["\(p).\(m).bias"] = [top]
            }
        }
        // Decoder, as VAEDecoder walks it.
        if usePostQuantConv { conv("post_quant_conv", latent, latent, 1) }
        conv("decoder.conv_in", top, latent, 3)
        mid("decoder")
        let reversed = Array(c.reversed())
        var outC = reversed[0]
        for i in 0..<levels {
            let prevC = outC
            outC = reversed[i]
            for j in 0...layersPerBlock { resnet("decoder.up_blocks.\(i).resnets.\(j)", j == 0 ? prevC : outC, outC) }
            if i < levels - 1 { conv("decoder.up_blocks.\(i).upsamplers.0.conv", outC, outC, 3) }
        }
        shapes["decoder.conv_norm_out.weight"] = [c[0]]
        shapes["decoder.conv_norm_out.bias"] = [c[0]]
        conv("decoder.conv_out", outChannels, c[0], 3)
        guard encoder else { return shapes }
        // Encoder (diffusers' Encoder with double_z) and quant_conv.
        conv("encoder.conv_in", c[0], inChannels, 3)
        var inC = c[0]
        for i in 0..<levels {
            for j in 0..<layersPerBlock { resnet("encoder.down_blocks.\(i).resnets.\(j)", j == 0 ? inC : c[i], c[i]) }
            inC = c[i]
            if i < levels - 1 { conv("encoder.down_blocks.\(i).downsamplers.0.conv", c[i], c[i], 3) }
        }
        mid("encoder")
        shapes["encoder.conv_norm_out.weight"] = [top]
        shapes["encoder.conv_norm_out.bias"] = [top]
        conv("encoder.conv_out", 2 * latent, top, 3)
        conv("quant_conv", 2 * latent, 2 * latent, 1)
        return shapes
    }

    /// This config as a diffusers AutoencoderKL config.json (what sdd reads back as the same config).
    public var diffusersJSON: String {
        var object: [String: Any] = [
            "_class_name": "AutoencoderKL", "in_channels": inChannels, "out_channels": outChannels,
            "block_out_channels": blockOutChannels, "layers_per_block": layersPerBlock, "act_fn": actFn,
            "latent_channels": latentChannels, "norm_num_groups": normNumGroups,
            // Through its shortest decimal text, so 0.13025 is written as 0.13025, not 0.13025000691413879.
            "scaling_factor": Double("\(scalingFactor)") ?? Double(scalingFactor),
            "down_block_types": Array(repeating: "DownEncoderBlock2D", count: blockOutChannels.count),
            "up_block_types": upBlockTypes, "use_post_quant_conv": usePostQuantConv, "use_quant_conv": true,
            "mid_block_add_attention": midBlockAddAttention,
        ]
        if let sampleSize { object["sample_size"] = sampleSize }
        if let shiftFactor { object["shift_factor"] = Double("\(shiftFactor)") ?? Double(shiftFactor) }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted]))
            ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
