// LoRA: low-rank adapters in the files people hold (kohya/A1111 `lora_unet_*`/`lora_te_*`, diffusers/PEFT
// `unet.….lora_A`, older diffusers `…_lora.down`), resolved against a model's UNet and text encoder the way
// diffusers' load_lora_weights + set_adapters does, and attached to layers at bind time as a side path
// (y = x·Wᵀ + Σ s·(x·Aᵀ)·Bᵀ) or merged into a weight in its own stored type.

import Foundation
import MMapWeights
import TiledKernels

/// One LoRA to apply: a safetensors file and its strength (diffusers' `adapter_weights` entry).
public struct LoRASpec: Sendable, Codable, Equatable, Hashable {
    public var path: String
    public var scale: Float

    public init(path: String, scale: Float = 1) {
        self.path = path
        self.scale = scale
    }

    /// "PATH[:SCALE]": the text after the last ':' is the scale when it is a finite number, else part of the path.
    public static func parse(_ text: String) throws -> LoRASpec {
        if let colon = text.lastIndex(of: ":") {
            let tail = text[text.index(after: colon)...]
            if let s = Float(tail) {
                guard s.isFinite else { throw PipelineError.invalidRequest("--lora \(text): the scale must be a finite number") }
                let path = String(text[..<colon])
                guard !path.isEmpty else { throw PipelineError.invalidRequest("--lora \(text): no file before the scale") }
                return LoRASpec(path: path, scale: s)
            }
        }
        guard !text.isEmpty else { throw PipelineError.invalidRequest("--lora: empty value; expected PATH[:SCALE]") }
        return LoRASpec(path: text)
    }
}

/// A LoRA that cannot be used with this model; the message names the file and the first key at fault.
public struct LoRAError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let message: String
    public var description: String { "LoRA \(file): \(message)" }
}

/// How LoRAs reach the products.
public enum LoRAApplication: String, Sendable, Codable, CaseIterable {
    /// Beside each adapted product: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ. Base weights stay mapped (and quantized); the
    /// LoRA's tensors are mapped too and stream with their layer. The default (see README: memory and speed).
    case side
    /// W' = W + s·B·A computed once when the layer binds, stored in W's own type (re-quantized for a
    /// block-quantized W) in anonymous memory: no per-step cost, but every adapted weight is held resident.
    case merge
}

/// One adapted product: the LoRA's A (lora_down) and B (lora_up) and its scale (adapter weight × alpha / rank).
public struct LowRankTerm: @unchecked Sendable {
    // @unchecked: Weights are read-only views kept alive by their owners.
    /// A: [rank, in] for a linear layer; [rank, in, kh, kw] for a convolution (same stride and padding as W).
    public let down: Weight
    /// B: [out, rank] for a linear layer; [out, rank, 1, 1] for a convolution.
    public let up: Weight
    public let scale: Float

    public var rank: Int { down.rows }
    var weights: [Weight] { [down, up] }

    /// x·Aᵀ·Bᵀ·scale for a linear layer, x: [..., in] → [..., out].
    func linearDelta(_ x: Tensor) -> Tensor {
        let h = TiledKernels.scale(linear(x, weight: down, bias: nil), by: scale)
        ComputeCounter.add(2 * (x.count / max(down.rowLength, 1)) * (down.count + up.count))
        return linear(h, weight: up, bias: nil)
    }

    /// The convolution's side path: conv(x, A; stride, padding) then the 1×1 conv B, times scale.
    func convDelta(_ x: Tensor, stride: Int, padding: Int) -> Tensor {
        let h = TiledKernels.scale(conv2d(x, weight: down, bias: nil, stride: stride, padding: padding), by: scale)
        let y = conv2d(h, weight: up, bias: nil, stride: 1, padding: 0)
        ComputeCounter.add(2 * h.count * down.rowLength + 2 * y.count * up.rowLength)
        return y
    }

    /// scale · B·A as [out, in·kh·kw] F32 values (row-major).
    func deltaMatrix() -> [Float] {
        let out = up.rows, r = rank, k = down.rowLength
        let a = down.dequantized(), b = up.dequantized()
        var d = [Float](repeating: 0, count: out * k)
        for o in 0..<out {
            for j in 0..<r {
                let bv = b[o * r + j] * scale
                if bv == 0 { continue }
                let row = j * k
                for c in 0..<k { d[o * k + c] += bv * a[row + c] }
            }
        }
        return d
    }
}

/// A LoRA file read and sorted into modules, not yet tied to a model.
public final class LoRAFile: @unchecked Sendable {
    // @unchecked: immutable after init.
    public let url: URL
    let weights: ComponentWeights
    /// Adapted modules in file order.
    let modules: [Module]

    struct Module {
        /// "unet" or "text_encoder".
        let component: String
        /// The module's path as the file names it: dotted (diffusers/PEFT) or kohya's flattened form.
        let name: String
        /// Kohya names are the module path with '.' → '_' (resolved against the model's module names).
        let flattened: Bool
        let downKey: String
        let upKey: String
        let alphaKey: String?
    }

    private enum Role { case down, up, alpha }

    /// Reads the header and sorts every key; a key this loader does not understand is an error that lists them
    /// (never silently dropped), as is a module with A but no B (or the reverse).
    public init(url: URL) throws {
        self.url = url
        let path = url.path
        guard FileManager.default.fileExists(atPath: path) else {
            throw LoRAError(file: path, message: "no such file")
        }
        weights = try ComponentWeights(file: url)
        var parts: [String: (component: String, name: String, flat: Bool, down: String?, up: String?, alpha: String?)] = [:]
        var order: [String] = []
        var unknown: [String] = []
        for key in weights.tensorNames {
            guard let (component, name, flat, role) = LoRAFile.classify(key) else {
                unknown.append(key)
                continue
            }
            let id = "\(component)|\(flat ? "flat" : "dot")|\(name)"
            if parts[id] == nil {
                parts[id] = (component, name, flat, nil, nil, nil)
                order.append(id)
            }
            switch role {
            case .down:
                if parts[id]?.down != nil { throw LoRAError(file: path, message: "\(key): a second A (down) tensor for one module") }
                parts[id]?.down = key
            case .up:
                if parts[id]?.up != nil { throw LoRAError(file: path, message: "\(key): a second B (up) tensor for one module") }
                parts[id]?.up = key
            case .alpha: parts[id]?.alpha = key
            }
        }
        if !unknown.isEmpty {
            let shown = unknown.prefix(8).joined(separator: ", ")
            throw LoRAError(file: path, message: "\(unknown.count) key(s) are not LoRA tensors this loader understands "
                + "(kohya lora_unet_/lora_te_ …lora_down/lora_up/alpha, or diffusers unet./text_encoder. …lora_A/lora_B): "
                + shown + (unknown.count > 8 ? ", …" : ""))
        }
        var modules: [Module] = []
        for id in order {
            guard let p = parts[id] else { continue }
            guard let down = p.down, let up = p.up else {
                let key = p.down ?? p.up ?? p.alpha ?? p.name
                throw LoRAError(file: path, message: "\(key): module \(p.name) has \(p.down == nil ? "no A (down)" : "no B (up)") tensor")
            }
            modules.append(Module(component: p.component, name: p.name, flattened: p.flat, downKey: down, upKey: up,
                                  alphaKey: p.alpha))
        }
        guard !modules.isEmpty else { throw LoRAError(file: path, message: "holds no LoRA tensors") }
        self.modules = modules
    }

    /// (component, module name, kohya-flattened, role) of a key, or nil when it is not a LoRA key.
    private static func classify(_ key: String) -> (String, String, Bool, Role)? {
        let kohya: [(String, String)] = [("lora_unet_", "unet"), ("lora_te_", "text_encoder"), ("lora_te1_", "text_encoder")]
        for (prefix, component) in kohya where key.hasPrefix(prefix) {
            let rest = String(key.dropFirst(prefix.count))
            for (suffix, role) in [(".lora_down.weight", Role.down), (".lora_up.weight", .up), (".alpha", .alpha)]
            where rest.hasSuffix(suffix) {
                let name = String(rest.dropLast(suffix.count))
                return name.isEmpty || name.contains(".") ? nil : (component, name, true, role)
            }
            return nil
        }
        for (prefix, component) in [("unet.", "unet"), ("text_encoder.", "text_encoder")] where key.hasPrefix(prefix) {
            let rest = String(key.dropFirst(prefix.count))
            // (suffix, role, whether the module name is the old attention-processor form "to_q_lora").
            let suffixes: [(String, Role, Bool)] = [
                (".lora_A.weight", .down, false), (".lora_B.weight", .up, false),
                (".lora.down.weight", .down, false), (".lora.up.weight", .up, false),
                (".lora_linear_layer.down.weight", .down, false), (".lora_linear_layer.up.weight", .up, false),
                ("_lora.down.weight", .down, true), ("_lora.up.weight", .up, true),
                (".alpha", .alpha, false),
            ]
            for (suffix, role, oldAttention) in suffixes where rest.hasSuffix(suffix) {
                var name = String(rest.dropLast(suffix.count)).replacingOccurrences(of: ".processor.", with: ".")
                if name.hasSuffix(".processor") { name = String(name.dropLast(".processor".count)) }
                if oldAttention {
                    // diffusers' UNET_TO_DIFFUSERS / DIFFUSERS_OLD_TO_PEFT: to_out_lora is to_out.0 in the UNet and
                    // out_proj in CLIP; to_q/k/v_lora are q/k/v_proj in CLIP.
                    let last = name.split(separator: ".").last.map(String.init) ?? ""
                    let base = name.dropLast(last.count)
                    let unetNames = ["to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"]
                    let clipNames = ["to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"]
                    guard let mapped = (component == "unet" ? unetNames : clipNames)[last] else { return nil }
                    name = base + mapped
                }
                return name.isEmpty ? nil : (component, name, false, role)
            }
            return nil
        }
        return nil
    }
}

/// LoRAs resolved against one model: for each component, the terms of each adapted module (by the engine's
/// module name, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q").
public struct ResolvedLoRAs: @unchecked Sendable {
    // @unchecked: Weights are read-only views kept alive by their owners.
    public let specs: [LoRASpec]
    var terms: [String: [String: [LowRankTerm]]] = [:]

    /// Adapted modules of `component`.
    public func moduleCount(_ component: String) -> Int { terms[component]?.count ?? 0 }

    /// Opens each file and ties every module to the model's layer of that name, checking shapes. Errors name the
    /// file and the first key whose layer the model lacks or whose shape does not fit.
    public init(_ specs: [LoRASpec], components: [String: WeightProvider]) throws {
        self.specs = specs
        var names: [String: [String: String]] = [:]  // component → flattened module name → module name
        for spec in specs {
            let file = try LoRAFile(url: URL(fileURLWithPath: spec.path))
            let path = file.url.path
            var seen = Set<String>()
            for m in file.modules {
                guard let provider = components[m.component] else {
                    throw LoRAError(file: path, message: "\(m.downKey): this model has no \(m.component)")
                }
                if m.flattened && names[m.component] == nil {
                    names[m.component] = ResolvedLoRAs.flattenedNames(provider.tensorNames)
                }
                guard let module = ResolvedLoRAs.moduleName(m, in: provider, flattened: names[m.component] ?? [:]) else {
                    throw LoRAError(file: path, message: "\(m.downKey): the model's \(m.component) has no layer \(m.name)")
                }
                guard seen.insert("\(m.component).\(module)").inserted else {
                    throw LoRAError(file: path, message: "\(m.downKey): layer \(module) is adapted twice in one file")
                }
                let shape = try ResolvedLoRAs.shape(of: module + ".weight", in: provider)
                let term = try ResolvedLoRAs.term(m, file: file, baseShape: shape, module: module, scale: spec.scale)
                terms[m.component, default: [:]][module, default: []].append(term)
            }
        }
    }

    /// Every module name of a component (tensor names ending in ".weight") by its kohya form ('.' → '_'), also
    /// with CLIP's "text_model." prefix added or removed (transformers 5 saves CLIP without it; kohya keeps it),
    /// and for a UNet by its SGM/CompVis form too (`input_blocks_4_1_proj_in`, `middle_block_0_in_layers_2`), which
    /// kohya's scripts also write for SD 1.x.
    static func flattenedNames(_ tensorNames: [String]) -> [String: String] {
        var out: [String: String] = [:]
        var modules: [String] = []
        for t in tensorNames where t.hasSuffix(".weight") {
            let module = String(t.dropLast(".weight".count))
            modules.append(module)
            let flat = module.replacingOccurrences(of: ".", with: "_")
            out[flat] = module
            if module.hasPrefix("text_model.") {
                out[String(flat.dropFirst("text_model_".count))] = module
            } else {
                out["text_model_" + flat] = module
            }
        }
        // diffusers' ResNet layer names → CompVis' (diffusers' _convert_unet_lora_key maps them back the same way).
        let resnetInner = [".norm1": "_in_layers_0", ".conv1": "_in_layers_2", ".time_emb_proj": "_emb_layers_1",
                           ".norm2": "_out_layers_0", ".conv2": "_out_layers_3", ".conv_shortcut": "_skip_connection"]
        for (diffusers, sgm) in sgmBlockPrefixes(Set(modules)) {
            for m in modules where m == diffusers || m.hasPrefix(diffusers + ".") {
                let rest = String(m.dropFirst(diffusers.count))
                let inner = diffusers.contains(".resnets.") ? resnetInner[rest] ?? rest : rest
                let alias = sgm + inner.replacingOccurrences(of: ".", with: "_")
                if out[alias] == nil { out[alias] = m }
            }
        }
        return out
    }

    /// The UNet's blocks by diffusers prefix and CompVis (SGM) flattened prefix, derived from which blocks the model
    /// has: input_blocks count conv_in, then per level its ResNets (+ attentions) and downsampler; output_blocks per
    /// up level its ResNets (+ attentions), the upsampler sitting after the attention when there is one.
    static func sgmBlockPrefixes(_ modules: Set<String>) -> [(String, String)] {
        let blocks = Set(modules.map { m -> String in
            let parts = m.split(separator: ".")
            return parts.prefix(4).joined(separator: ".")
        })
        func has(_ prefix: String) -> Bool { blocks.contains { $0 == prefix || $0.hasPrefix(prefix + ".") } }
        func count(_ prefix: String) -> Int {
            var n = 0
            while has("\(prefix).\(n)") { n += 1 }
            return n
        }
        var out: [(String, String)] = [("conv_in", "input_blocks_0_0"), ("time_embedding.linear_1", "time_embed_0"),
                                       ("time_embedding.linear_2", "time_embed_2"), ("conv_out", "out_2")]
        var n = 1
        for level in 0..<count("down_blocks") {
            for j in 0..<count("down_blocks.\(level).resnets") {
                out.append(("down_blocks.\(level).resnets.\(j)", "input_blocks_\(n)_0"))
                out.append(("down_blocks.\(level).attentions.\(j)", "input_blocks_\(n)_1"))
                n += 1
            }
            if has("down_blocks.\(level).downsamplers.0") {
                out.append(("down_blocks.\(level).downsamplers.0.conv", "input_blocks_\(n)_0_op"))
                n += 1
            }
        }
        out += [("mid_block.resnets.0", "middle_block_0"), ("mid_block.attentions.0", "middle_block_1"),
                ("mid_block.resnets.1", "middle_block_2")]
        n = 0
        for level in 0..<count("up_blocks") {
            let resnets = count("up_blocks.\(level).resnets")
            let attention = has("up_blocks.\(level).attentions.0")
            for j in 0..<resnets {
                out.append(("up_blocks.\(level).resnets.\(j)", "output_blocks_\(n)_0"))
                out.append(("up_blocks.\(level).attentions.\(j)", "output_blocks_\(n)_1"))
                if j == resnets - 1 && has("up_blocks.\(level).upsamplers.0") {
                    out.append(("up_blocks.\(level).upsamplers.0.conv", "output_blocks_\(n)_\(attention ? 2 : 1)_conv"))
                }
                n += 1
            }
        }
        return out
    }

    static func moduleName(_ m: LoRAFile.Module, in provider: WeightProvider, flattened: [String: String]) -> String? {
        if m.flattened { return flattened[m.name] }
        var candidates = [m.name]
        if m.name.hasPrefix("text_model.") { candidates.append(String(m.name.dropFirst("text_model.".count))) }
        else if m.component == "text_encoder" { candidates.append("text_model." + m.name) }
        return candidates.first { provider.has($0 + ".weight") }
    }

    /// Checks A and B against the layer's weight W ([out, in] or [out, in, kh, kw]) and shapes them for the layer.
    /// A tensor's PyTorch shape from the file's header, without reading (or dequantizing) its data.
    static func shape(of name: String, in provider: WeightProvider) throws -> [Int] {
        if let g = provider as? GGUFComponentWeights, let s = g.shape(of: name) { return s }
        if let c = provider as? ComponentWeights, let info = try c.info(name) { return info.shape }
        return try provider.weight(name, shape: nil).shape
    }

    static func term(_ m: LoRAFile.Module, file: LoRAFile, baseShape w: [Int], module: String,
                     scale: Float) throws -> LowRankTerm {
        let path = file.url.path
        var down = try file.weights.weight(m.downKey, shape: nil)
        var up = try file.weights.weight(m.upKey, shape: nil)
        let rank = down.shape.first ?? 0
        func mismatch(_ key: String, _ shape: [Int]) -> LoRAError {
            LoRAError(file: path, message: "\(key) has shape \(shape), which does not fit the model's \(module).weight \(w)")
        }
        guard rank > 0, w.count == 2 || w.count == 4 else { throw mismatch(m.downKey, down.shape) }
        let out = w[0], inF = w[1]
        if w.count == 2 {
            guard down.shape == [rank, inF] || down.shape == [rank, inF, 1, 1] else { throw mismatch(m.downKey, down.shape) }
            guard up.shape == [out, rank] || up.shape == [out, rank, 1, 1] else { throw mismatch(m.upKey, up.shape) }
            down = down.reshaped([rank, inF])
            up = up.reshaped([out, rank])
        } else {
            let kh = w[2], kw = w[3]
            if down.shape == [rank, inF] && kh == 1 && kw == 1 { down = down.reshaped([rank, inF, 1, 1]) }
            guard down.shape == [rank, inF, kh, kw] else { throw mismatch(m.downKey, down.shape) }
            guard up.shape == [out, rank] || up.shape == [out, rank, 1, 1] else { throw mismatch(m.upKey, up.shape) }
            up = up.reshaped([out, rank, 1, 1])
        }
        var alpha = Float(rank)
        if let key = m.alphaKey {
            let a = try file.weights.weight(key, shape: nil)
            guard a.count == 1, let value = a.dequantized().first, value.isFinite else {
                throw LoRAError(file: path, message: "\(key): alpha must be one finite number, found shape \(a.shape)")
            }
            alpha = value
        }
        // PEFT's scaling = lora_alpha / r (diffusers passes kohya's alpha as lora_alpha), times the adapter weight.
        return LowRankTerm(down: down, up: up, scale: scale * alpha / Float(rank))
    }

    /// `base` with this set's terms for `component` attached (side path) or merged into its weights.
    func provider(_ component: String, base: WeightProvider, application: LoRAApplication) -> WeightProvider {
        guard let t = terms[component], !t.isEmpty else { return base }
        return LoRAWeights(base, terms: t, application: application)
    }
}

/// Hands out another provider's weights with LoRA terms: as side paths the layers pick up at bind time
/// (`lowRankTerms`), or merged into the weight (`.merge`).
final class LoRAWeights: WeightProvider {
    let base: WeightProvider
    let terms: [String: [LowRankTerm]]
    let application: LoRAApplication

    init(_ base: WeightProvider, terms: [String: [LowRankTerm]], application: LoRAApplication) {
        self.base = base
        self.terms = terms
        self.application = application
    }

    func weight(_ name: String, shape: [Int]?) throws -> Weight {
        let w = try base.weight(name, shape: shape)
        guard application == .merge, name.hasSuffix(".weight"),
              let t = terms[String(name.dropLast(".weight".count))] else { return w }
        return LoRAWeights.merged(w, t)
    }

    func has(_ name: String) -> Bool { base.has(name) }
    var tensorNames: [String] { base.tensorNames }

    func lowRankTerms(_ module: String) -> [LowRankTerm] {
        application == .side ? terms[module] ?? [] : []
    }

    /// W + Σ s·B·A in W's stored type (a block-quantized W is dequantized, summed and quantized again).
    static func merged(_ w: Weight, _ terms: [LowRankTerm]) -> Weight {
        var values = w.dequantized()
        for t in terms {
            let d = t.deltaMatrix()
            for i in 0..<min(values.count, d.count) { values[i] += d[i] }
        }
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: w.bytes.count, alignment: 64)
        values.withUnsafeBufferPointer { Quantizer.quantize($0, to: w.type, into: bytes) }
        var m = Weight(shape: w.shape, type: w.type, bytes: UnsafeRawBufferPointer(bytes), owner: MergedBytes(bytes))
        m.products = w.products
        return m
    }
}

/// Owns a merged weight's bytes (anonymous memory that stays resident: the memory planner counts it).
final class MergedBytes {
    let bytes: UnsafeMutableRawBufferPointer
    init(_ bytes: UnsafeMutableRawBufferPointer) { self.bytes = bytes }
    deinit { bytes.deallocate() }
}

/// A1111's extra-network prompt syntax: `<lora:NAME>` / `<lora:NAME:SCALE>` tags.
public enum PromptLoRAs {
    /// The prompt with every `<lora:…>` tag removed (exactly the tag's text, as A1111 does) and the tags'
    /// (name, scale) in order. A tag with more fields than NAME:SCALE, or a scale that is not a number, is an error.
    public static func extract(_ prompt: String) throws -> (prompt: String, loras: [(name: String, scale: Float)]) {
        var out = ""
        var found: [(String, Float)] = []
        var rest = Substring(prompt)
        while let open = rest.range(of: "<lora:") {
            guard let close = rest[open.upperBound...].firstIndex(of: ">") else { break }
            out += rest[..<open.lowerBound]
            let body = rest[open.upperBound..<close]
            let fields = body.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard let name = fields.first, !name.isEmpty, fields.count <= 2 else {
                throw PipelineError.invalidRequest("prompt tag <lora:\(body)>: expected <lora:NAME> or <lora:NAME:SCALE>")
            }
            var scale: Float = 1
            if fields.count == 2 {
                guard let s = Float(fields[1].trimmingCharacters(in: .whitespaces)), s.isFinite else {
                    throw PipelineError.invalidRequest("prompt tag <lora:\(body)>: scale \"\(fields[1])\" is not a number")
                }
                scale = s
            }
            found.append((name, scale))
            rest = rest[rest.index(after: close)...]
        }
        out += rest
        return (out, found)
    }

    /// The file of LoRA `name` in `directory`: NAME.safetensors (or NAME when it ends in .safetensors). A name
    /// with a path component ('/', "..", a leading '.') is refused, so a name never reaches outside the directory.
    public static func resolve(_ name: String, in directory: URL?) throws -> URL {
        guard let directory else {
            throw PipelineError.invalidRequest("LoRA \"\(name)\" is named, but no LoRA directory is configured (--lora-dir)")
        }
        guard !name.isEmpty, !name.contains("/"), !name.contains("\\"), !name.hasPrefix("."),
              !name.contains("\0") else {
            throw PipelineError.invalidRequest("LoRA name \"\(name)\" must be a plain file name in the LoRA directory")
        }
        let file = name.hasSuffix(".safetensors") ? name : name + ".safetensors"
        let url = directory.appendingPathComponent(file)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw PipelineError.invalidRequest("LoRA \"\(name)\" is not in \(directory.path) (looked for \(file))")
        }
        return url
    }
}
