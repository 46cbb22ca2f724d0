// CompVisNames: the original Stable Diffusion (CompVis/LDM) tensor names of single-file checkpoints and
// stable-diffusion.cpp GGUFs → diffusers' names, following diffusers' single-file conversion
// (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint,
// convert_open_clip_checkpoint in diffusers/loaders/single_file_utils.py).

/// Where one diffusers tensor lives in a CompVis file: a whole stored tensor, or a block of its rows
/// (OpenCLIP's fused `in_proj_weight` [3·C, C] holds q, k and v one after the other).
public struct RenamedTensor: Sendable, Equatable, CustomStringConvertible {
    public enum Part: Sendable, Equatable {
        case whole
        /// Rows `index·n/count ..< (index+1)·n/count` of the stored tensor's n rows.
        case rows(index: Int, of: Int)
    }

    /// The full name in the file.
    public let source: String
    public let part: Part

    public init(source: String, part: Part = .whole) {
        self.source = source
        self.part = part
    }

    public var description: String {
        switch part {
        case .whole: return source
        case .rows(let i, let n): return "\(source) (part \(i + 1) of \(n))"
        }
    }
}

/// Name maps from CompVis checkpoints to diffusers' per-component names. Each function takes names
/// *without* the component prefix and returns nil for names diffusers' conversion does not use.
public enum CompVisNames {
    public static let unetPrefix = "model.diffusion_model."
    public static let vaePrefix = "first_stage_model."
    /// SD 1.x: transformers' CLIPTextModel under this prefix (with or without `text_model.`).
    public static let clipPrefix = "cond_stage_model.transformer."
    /// SD 2.x: OpenCLIP's text tower under this prefix.
    public static let openCLIPPrefix = "cond_stage_model.model."

    // MARK: UNet

    /// The UNet's levels and resnets per level, from its CompVis names (without prefix): a level has
    /// `layersPerBlock` resnets (+ attentions) and, except the last, a downsampler (`input_blocks.i.0.op`);
    /// the up path has `layersPerBlock + 1` output blocks per level. Nil when the names are not that shape.
    public static func unetLayout(_ names: [String]) -> (levels: Int, layersPerBlock: Int)? {
        var inputs = Set<Int>(), outputs = Set<Int>(), downsamplers = Set<Int>()
        for n in names {
            let c = n.split(separator: ".", omittingEmptySubsequences: false)
            guard c.count >= 3, let i = Int(c[1]) else { continue }
            if c[0] == "input_blocks" {
                inputs.insert(i)
                if c[2] == "0", c.count >= 4, c[3] == "op" { downsamplers.insert(i) }
            } else if c[0] == "output_blocks" {
                outputs.insert(i)
            }
        }
        let levels = downsamplers.count + 1
        guard !outputs.isEmpty, outputs.count % levels == 0 else { return nil }
        let perBlock = outputs.count / levels - 1
        guard perBlock >= 1, inputs.count == 1 + levels * perBlock + downsamplers.count,
            inputs == Set(0..<inputs.count), outputs == Set(0..<outputs.count)
        else { return nil }
        return (levels, perBlock)
    }

    /// A ResNet sub-name: in_layers.0 → norm1, in_layers.2 → conv1, out_layers.0 → norm2, out_layers.3 →
    /// conv2, emb_layers.1 → time_emb_proj, skip_connection → conv_shortcut.
    static func unetResnet(_ rest: ArraySlice<Substring>) -> String? {
        let names: [String: String] = [
            "in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
            "emb_layers.1": "time_emb_proj",
        ]
        guard let first = rest.first else { return nil }
        if first == "skip_connection" { return (["conv_shortcut"] + rest.dropFirst()).joined(separator: ".") }
        guard rest.count >= 3, let mapped = names["\(first).\(rest[rest.startIndex + 1])"] else { return nil }
        return ([Substring(mapped)] + rest.dropFirst(2)).joined(separator: ".")
    }

    /// The diffusers UNet name of a CompVis UNet name (without `model.diffusion_model.`).
    public static func unetName(_ name: String, layersPerBlock: Int) -> String? {
        let direct: [(String, String)] = [
            ("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
            ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
        ]
        for (old, new) in direct where name.hasPrefix(old) { return new + name.dropFirst(old.count) }
        let c = name.split(separator: ".", omittingEmptySubsequences: false)
        if c.count >= 3, c[0] == "middle_block", let j = Int(c[1]) {
            if j == 0 || j == 2 { return unetResnet(c[2...]).map { "mid_block.resnets.\(j / 2).\($0)" } }
            return j == 1 ? "mid_block.attentions.0." + c[2...].joined(separator: ".") : nil
        }
        guard c.count >= 4, let i = Int(c[1]), let j = Int(c[2]) else { return nil }
        let rest = c[3...]
        let tail = rest.joined(separator: ".")
        let per = layersPerBlock + 1
        switch c[0] {
        case "input_blocks" where i >= 1:
            let (b, l) = ((i - 1) / per, (i - 1) % per)
            if j == 0, rest.first == "op" { return "down_blocks.\(b).downsamplers.0.conv." + rest.dropFirst().joined(separator: ".") }
            if j == 0 { return unetResnet(rest).map { "down_blocks.\(b).resnets.\(l).\($0)" } }
            if j == 1 { return "down_blocks.\(b).attentions.\(l).\(tail)" }
        case "output_blocks":
            let (b, l) = (i / per, i % per)
            if j == 0 { return unetResnet(rest).map { "up_blocks.\(b).resnets.\(l).\($0)" } }
            if (j == 1 || j == 2), rest.first == "conv" {
                return "up_blocks.\(b).upsamplers.0.conv." + rest.dropFirst().joined(separator: ".")
            }
            if j == 1 { return "up_blocks.\(b).attentions.\(l).\(tail)" }
        default:
            break
        }
        return nil
    }

    // MARK: VAE

    /// Levels of a CompVis VAE: the number of `decoder.up.k` groups.
    public static func vaeLevels(_ names: [String]) -> Int {
        var ups = Set<Int>()
        for n in names where n.hasPrefix("decoder.up.") {
            let c = n.split(separator: ".")
            if c.count > 2, let k = Int(c[2]) { ups.insert(k) }
        }
        return ups.count
    }

    /// A VAE's names (without `first_stage_model.`) under diffusers' AutoencoderKL names: `map` is diffusers name →
    /// stored name. CompVis names are converted (`vaeName`); names already in diffusers' layout
    /// (`sd-cli --convert-name`, a diffusers state dict saved as one file) are kept. `unmapped` lists the
    /// `encoder.`/`decoder.` names that have no diffusers counterpart (other names, such as a training loss's or
    /// EMA bookkeeping, are not the VAE's and are left out of both).
    public static func vaeMap(_ names: [String]) -> (map: [String: String], unmapped: [String]) {
        let levels = vaeLevels(names)
        var map = [String: String](), unmapped = [String]()
        for n in names {
            if n.hasPrefix("encoder.down_blocks.") || n.hasPrefix("decoder.up_blocks.") || n.contains(".mid_block.")
                || n.contains("conv_norm_out.")
            {
                map[n] = n
            } else if let d = vaeName(n, levels: levels) {
                map[d] = n
            } else if n.hasPrefix("encoder.") || n.hasPrefix("decoder.") {
                unmapped.append(n)
            }
        }
        return (map, unmapped.sorted())
    }

    /// The diffusers AutoencoderKL name of a CompVis VAE name (without `first_stage_model.`). The decoder's
    /// `up.k` is diffusers' `up_blocks.(levels−1−k)`; the mid attention's q/k/v/proj_out are 1×1 convs in
    /// CompVis files (diffusers squeezes them to linear weights).
    public static func vaeName(_ name: String, levels: Int) -> String? {
        for side in ["encoder.", "decoder."] where name.hasPrefix(side) {
            let rest = String(name.dropFirst(side.count))
            for (old, new) in [("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("norm_out.", "conv_norm_out.")]
            where rest.hasPrefix(old) {
                return side + new + rest.dropFirst(old.count)
            }
            let c = rest.split(separator: ".", omittingEmptySubsequences: false)
            func resnet(_ tail: ArraySlice<Substring>) -> String {
                tail.map { $0 == "nin_shortcut" ? "conv_shortcut" : String($0) }.joined(separator: ".")
            }
            if c.count >= 3, c[0] == "mid" {
                if c[1] == "block_1" { return side + "mid_block.resnets.0." + resnet(c[2...]) }
                if c[1] == "block_2" { return side + "mid_block.resnets.1." + resnet(c[2...]) }
                if c[1] == "attn_1" {
                    let parts = ["norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"]
                    guard let p = parts[String(c[2])] else { return nil }
                    return side + "mid_block.attentions.0.\(p)." + c[3...].joined(separator: ".")
                }
                return nil
            }
            guard c.count >= 5, let k = Int(c[1]) else { return nil }
            if side == "encoder.", c[0] == "down" {
                if c[2] == "block", let j = Int(c[3]) { return "encoder.down_blocks.\(k).resnets.\(j)." + resnet(c[4...]) }
                if c[2] == "downsample", c[3] == "conv" {
                    return "encoder.down_blocks.\(k).downsamplers.0.conv." + c[4...].joined(separator: ".")
                }
            }
            if side == "decoder.", c[0] == "up", k < levels {
                let b = levels - 1 - k
                if c[2] == "block", let j = Int(c[3]) { return "decoder.up_blocks.\(b).resnets.\(j)." + resnet(c[4...]) }
                if c[2] == "upsample", c[3] == "conv" {
                    return "decoder.up_blocks.\(b).upsamplers.0.conv." + c[4...].joined(separator: ".")
                }
            }
            return nil
        }
        for p in ["quant_conv.", "post_quant_conv."] where name.hasPrefix(p) { return name }
        return nil
    }

    // MARK: Text encoders

    /// SD 1.x: the CLIPTextModel name of a name under `cond_stage_model.transformer.`, always with the
    /// `text_model.` prefix real checkpoints (saved by transformers 4) carry.
    public static func clipName(_ name: String) -> String? {
        if name.hasSuffix("position_ids") { return nil }
        return name.hasPrefix("text_model.") ? name : "text_model." + name
    }

    /// The resblock count of an OpenCLIP text tower (names without `cond_stage_model.model.`).
    public static func openCLIPLayerCount(_ names: [String]) -> Int {
        var blocks = Set<Int>()
        for n in names where n.hasPrefix("transformer.resblocks.") {
            let c = n.split(separator: ".")
            if c.count > 2, let i = Int(c[2]) { blocks.insert(i) }
        }
        return blocks.count
    }

    /// SD 2.x: the CLIPTextModel names of a name under `cond_stage_model.model.` (OpenCLIP). Resblocks at
    /// `usedLayers` or above are left out: SD 2.x conditions on the penultimate layer, so diffusers' text
    /// encoder has 23 of OpenCLIP's 24 (SD_2_TEXT_ENCODER_KEYS_TO_IGNORE). The fused `attn.in_proj_weight`
    /// / `in_proj_bias` become q, k and v (thirds of the rows). `text_projection` is not used.
    public static func openCLIPNames(_ name: String, usedLayers: Int) -> [(String, RenamedTensor.Part)] {
        let direct = [
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "ln_final.weight": "text_model.final_layer_norm.weight",
            "ln_final.bias": "text_model.final_layer_norm.bias",
        ]
        if let d = direct[name] { return [(d, .whole)] }
        let c = name.split(separator: ".", omittingEmptySubsequences: false)
        guard c.count >= 4, c[0] == "transformer", c[1] == "resblocks", let i = Int(c[2]), i < usedLayers else {
            return []
        }
        let layer = "text_model.encoder.layers.\(i)."
        let rest = c[3...].joined(separator: ".")
        if rest == "attn.in_proj_weight" || rest == "attn.in_proj_bias" {
            let kind = rest.hasSuffix("weight") ? "weight" : "bias"
            return ["q", "k", "v"].enumerated().map { (index, p) in
                (layer + "self_attn.\(p)_proj.\(kind)", .rows(index: index, of: 3))
            }
        }
        let parts = [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."),
                     ("mlp.c_proj.", "mlp.fc2."), ("attn.out_proj.", "self_attn.out_proj.")]
        for (old, new) in parts where rest.hasPrefix(old) { return [(layer + new + rest.dropFirst(old.count), .whole)] }
        return []
    }

    // MARK: diffusers → CompVis (for writing files stable-diffusion.cpp reads)

    /// The CompVis name (without prefix) of a diffusers UNet name; `upHasAttention(b)` says whether up
    /// block b has attentions (its upsampler is then `output_blocks.i.2`, else `.1`). Nil for a name
    /// outside SD 1.x/2.x's UNet.
    public static func compVisUNetName(_ name: String, layersPerBlock: Int, upHasAttention: (Int) -> Bool) -> String? {
        let direct: [(String, String)] = [
            ("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
            ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
        ]
        for (new, old) in direct where name.hasPrefix(new) { return old + name.dropFirst(new.count) }
        let resnet: [String: String] = [
            "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
            "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
        ]
        let c = name.split(separator: ".", omittingEmptySubsequences: false)
        let per = layersPerBlock + 1
        func res(_ tail: ArraySlice<Substring>) -> String? {
            guard let first = tail.first, let m = resnet[String(first)] else { return nil }
            return ([Substring(m)] + tail.dropFirst()).joined(separator: ".")
        }
        if c.count >= 5, c[0] == "down_blocks" || c[0] == "up_blocks", let b = Int(c[1]) {
            let down = c[0] == "down_blocks"
            if c[2] == "downsamplers" || c[2] == "upsamplers" {
                guard c[3] == "0", c[4] == "conv" else { return nil }
                let tail = c[5...].joined(separator: ".")
                return down ? "input_blocks.\(1 + b * per + layersPerBlock).0.op.\(tail)"
                    : "output_blocks.\(b * per + layersPerBlock).\(upHasAttention(b) ? 2 : 1).conv.\(tail)"
            }
            guard let l = Int(c[3]) else { return nil }
            let block = down ? "input_blocks.\(1 + b * per + l)" : "output_blocks.\(b * per + l)"
            if c[2] == "resnets" { return res(c[4...]).map { "\(block).0.\($0)" } }
            if c[2] == "attentions" { return "\(block).1." + c[4...].joined(separator: ".") }
            return nil
        }
        if c.count >= 4, c[0] == "mid_block", let k = Int(c[2]) {
            if c[1] == "resnets" { return res(c[3...]).map { "middle_block.\(k * 2).\($0)" } }
            if c[1] == "attentions", k == 0 { return "middle_block.1." + c[3...].joined(separator: ".") }
        }
        return nil
    }

    /// The CompVis name (without prefix) of a diffusers AutoencoderKL name; `isAttentionMatrix` is true for
    /// the mid attention's q/k/v/proj_out weights, which CompVis files store as [C, C, 1, 1] convs.
    public static func compVisVAEName(_ name: String, levels: Int) -> (name: String, isAttentionMatrix: Bool)? {
        for p in ["quant_conv.", "post_quant_conv."] where name.hasPrefix(p) { return (name, false) }
        for side in ["encoder.", "decoder."] where name.hasPrefix(side) {
            let rest = String(name.dropFirst(side.count))
            for (new, old) in [("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("conv_norm_out.", "norm_out.")]
            where rest.hasPrefix(new) {
                return (side + old + rest.dropFirst(new.count), false)
            }
            let c = rest.split(separator: ".", omittingEmptySubsequences: false)
            func resnet(_ tail: ArraySlice<Substring>) -> String {
                tail.map { $0 == "conv_shortcut" ? "nin_shortcut" : String($0) }.joined(separator: ".")
            }
            if c.count >= 4, c[0] == "mid_block", let k = Int(c[2]) {
                if c[1] == "resnets" { return (side + "mid.block_\(k + 1)." + resnet(c[3...]), false) }
                guard c[1] == "attentions", k == 0 else { return nil }
                let parts = ["group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"]
                guard let p = parts[String(c[3])] else { return nil }
                let tail = c[3] == "to_out" ? c[5...] : c[4...]
                return (side + "mid.attn_1.\(p)." + tail.joined(separator: "."), p != "norm" && tail.last == "weight")
            }
            guard c.count >= 5, let b = Int(c[1]) else { return nil }
            let k = side == "decoder." ? levels - 1 - b : b
            let group = side == "decoder." ? "up" : "down"
            guard (c[0] == "down_blocks" && side == "encoder.") || (c[0] == "up_blocks" && side == "decoder.") else {
                return nil
            }
            if c[2] == "resnets", let j = Int(c[3]) { return (side + "\(group).\(k).block.\(j)." + resnet(c[4...]), false) }
            if c[2] == "downsamplers" || c[2] == "upsamplers", c[3] == "0", c[4] == "conv" {
                let sampler = side == "decoder." ? "upsample" : "downsample"
                return (side + "\(group).\(k).\(sampler).conv." + c[5...].joined(separator: "."), false)
            }
            return nil
        }
        return nil
    }
}
