// GGUFModel: a Stable Diffusion model in one GGUF file written by `sdd convert` — configs and tokenizer
// from its metadata, each component's weights served zero-copy from the mapping in their stored type.

import Foundation
import MMapWeights
import TiledKernels

/// The metadata keys of an sdd GGUF model (our own namespace; values are strings unless noted):
///
/// | key | value |
/// | --- | --- |
/// | `general.architecture` | "stable-diffusion" |
/// | `general.name` | the model's name (source folder name) |
/// | `general.file_type` | u32, llama.cpp's LLAMA_FTYPE of the main type |
/// |  | (0 f32, 1 f16, 2 q4_0, 3 q4_1, 7 q8_0, 8 q5_0, 9 q5_1, 32 bf16) |
/// | `general.quantization_version` | u32 2, when any tensor is block-quantized (ggml's convention) |
/// | `sdd.format_version` | u32 1 |
/// | `sdd.pipeline_class` | diffusers' pipeline class, e.g. "StableDiffusionPipeline" |
/// | `sdd.unet.config`, `sdd.vae.config`, `sdd.text_encoder.config` | the component's config.json text |
/// | `sdd.scheduler.config` | scheduler/scheduler_config.json text |
/// | `sdd.tokenizer.vocab`, `sdd.tokenizer.merges` | tokenizer/vocab.json and merges.txt text |
/// | `sdd.tokenizer.config` | tokenizer/tokenizer_config.json text (optional) |
/// | `sdd.tokenizer.special_tokens_map` | tokenizer/special_tokens_map.json text (optional) |
/// | `sdd.tensor_shapes` | JSON object: tensor name → PyTorch shape, for tensors stored reshaped (optional) |
/// | `sdd.defaults.steps`, `.guidance`, `.scheduler`, `.width`, `.height` | the model's generation defaults (optional; u32, f32, string, u32, u32; see `GenerationDefaults`) |
/// | `sdd.names` | "sdd" or "compvis" (optional): see `GGUFNaming`; CompVis-named files are read like single files |
/// | `sdd.loras` | LoRAs `sdd convert --lora` baked into the weights, "FILE:SCALE, …" (optional, informative) |
///
/// Tensors are named `<component>.<diffusers parameter name>` (components "unet", "vae", "text_encoder").
/// Block-quantized conv kernels [out, in, kh, kw] are stored as 2-D [out, in·kh·kw] (ggml quantizes along
/// the innermost dimension, whose length must be a multiple of 32); `sdd.tensor_shapes` gives their shape.
public enum SDDGGUFKey {
    public static let architecture = "general.architecture"
    public static let name = "general.name"
    public static let fileType = "general.file_type"
    public static let quantizationVersion = "general.quantization_version"
    public static let formatVersion = "sdd.format_version"
    public static let pipelineClass = "sdd.pipeline_class"
    public static let unetConfig = "sdd.unet.config"
    public static let vaeConfig = "sdd.vae.config"
    public static let textEncoderConfig = "sdd.text_encoder.config"
    public static let schedulerConfig = "sdd.scheduler.config"
    public static let tokenizerVocab = "sdd.tokenizer.vocab"
    public static let tokenizerMerges = "sdd.tokenizer.merges"
    public static let tokenizerConfig = "sdd.tokenizer.config"
    public static let tokenizerSpecialTokensMap = "sdd.tokenizer.special_tokens_map"
    public static let tensorShapes = "sdd.tensor_shapes"
    /// "sdd" or "compvis": how the tensors are named (see `GGUFNaming`; optional, "sdd" when absent).
    public static let names = "sdd.names"
    public static let bakedLoRAs = "sdd.loras"

    /// The value of `general.architecture` for sdd models.
    public static let architectureValue = "stable-diffusion"
    /// The value of `sdd.format_version` this build writes and reads.
    public static let formatVersionValue: UInt32 = 1
    /// The components and their tensor name prefixes.
    public static let components = ["text_encoder", "unet", "vae"]
}

/// One component's weights in an sdd GGUF file (tensors named "<prefix><name>").
public final class GGUFComponentWeights: WeightProvider, @unchecked Sendable {
    // @unchecked: every stored property is immutable; GGUFFile is Sendable.

    /// Whether tensors are handed out as owned F32 copies instead of typed views of the mapping.
    /// The kernels dequantize panels of any type as they go, so the default keeps weights in place.
    public static let convertsToF32ByDefault = false

    public let gguf: GGUFFile
    /// E.g. "unet."; prepended to every name.
    public let prefix: String
    /// Whether non-F32 tensors are handed out as F32 copies (see `convertsToF32ByDefault`).
    public let convertsToF32: Bool
    /// PyTorch shapes of tensors stored with another shape (full names).
    let logicalShapes: [String: [Int]]

    public init(gguf: GGUFFile, prefix: String, logicalShapes: [String: [Int]] = [:],
                convertsToF32: Bool = GGUFComponentWeights.convertsToF32ByDefault) {
        self.gguf = gguf
        self.prefix = prefix
        self.logicalShapes = logicalShapes
        self.convertsToF32 = convertsToF32
    }

    /// Names under `prefix`, without it, in file order.
    public var tensorNames: [String] {
        gguf.tensors.lazy.filter { $0.name.hasPrefix(self.prefix) }.map { String($0.name.dropFirst(self.prefix.count)) }
    }

    public func has(_ name: String) -> Bool { gguf.tensor(prefix + name) != nil }

    /// Whether any of this component's tensors is block-quantized (q8_0, q4_0 …).
    public var hasQuantizedTensors: Bool {
        gguf.tensors.contains { $0.name.hasPrefix(prefix) && $0.type.isQuantized }
    }

    /// The stored record of `prefix + name`.
    public func info(_ name: String) -> GGUFTensorInfo? { gguf.tensor(prefix + name) }

    /// The PyTorch shape of `prefix + name` (its stored shape unless `sdd.tensor_shapes` says otherwise).
    public func shape(of name: String) -> [Int]? {
        guard let info = info(name) else { return nil }
        return logicalShapes[info.name] ?? info.shape
    }

    /// Tensor `prefix + name` in its stored type, zero-copy over the mapping (owner: the MappedFile);
    /// or, when `convertsToF32` (or its shape cannot carry the stored blocks), dequantized into an owned
    /// F32 copy. When `shape` is given the tensor's PyTorch shape must equal it. Throws `WeightsError`
    /// naming the tensor and file: `.missingTensor`, `.shapeMismatch`.
    public func weight(_ name: String, shape: [Int]? = nil) throws -> Weight {
        let full = prefix + name
        guard let info = gguf.tensor(full) else {
            throw WeightsError(.missingTensor, file: gguf.path, tensor: full, "no such tensor in this file")
        }
        let logical = logicalShapes[full] ?? info.shape
        if let shape, shape != logical {
            throw WeightsError(.shapeMismatch, file: gguf.path, tensor: full,
                               "expected shape \(shape), found \(logical)")
        }
        let bytes = gguf.bytes(of: info)
        // `Weight.init` requires a quantized weight's *last* dimension to be whole blocks, so a block-quantized
        // conv kernel ([out, in, kh, kw], stored 2-D) cannot be handed out typed with its 4-D shape until that
        // check becomes `rowLength % blockSize == 0` (blocks run along the flattened row, as Weight documents);
        // until then such tensors fall back to an F32 copy. Keep this test in step with Weight.init.
        let blocksFit = !info.type.isQuantized || logical.dropFirst().reduce(1, *) % info.type.blockSize == 0
        if info.type == .f32 || (!convertsToF32 && blocksFit) {
            return Weight(shape: logical, type: info.type, bytes: bytes, owner: gguf.file)
        }
        let box = WeightBox(count: info.elementCount)
        if let src = bytes.baseAddress, let dst = box.pointer.baseAddress, info.elementCount > 0 {
            info.type.dequantize(src, count: info.elementCount, into: dst)
        }
        return Weight(shape: logical, values: UnsafeBufferPointer(box.pointer), owner: box)
    }

    /// Starts reading the listed tensors' pages (madvise WILLNEED); unknown names are skipped.
    public func prefetch(_ names: [String]) {
        for n in names { if let i = info(n) { gguf.file.willNeed(i.byteRange) } }
    }

    /// Drops the listed tensors' pages from this process (madvise DONTNEED; with `dropPageCache`, also
    /// posix_fadvise DONTNEED). Zero-copy Weights stay valid: pages fault back in on use.
    public func release(_ names: [String], dropPageCache: Bool = false) {
        for n in names { if let i = info(n) { gguf.file.release(i.byteRange, dropPageCache: dropPageCache) } }
    }
}

extension StableDiffusionModel {
    /// Single-file formats: a GGUF file (sdd's own, or a CompVis-named one from stable-diffusion.cpp) or a
    /// CompVis/LDM `.safetensors` checkpoint. PyTorch pickles are refused with how to convert them.
    static func openSingleFile(_ url: URL, options: ModelOpenOptions = ModelOpenOptions()) throws -> StableDiffusionModel {
        let path = url.path
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw PipelineError.missingFile(path: path, what: "model file (cannot be opened)")
        }
        let head = (try? handle.read(upToCount: 16)) ?? Data()
        try? handle.close()
        if head.prefix(4) == Data("GGUF".utf8) {
            let gguf = try GGUFFile(url: url)
            if SingleFileCheckpoint.isCompVis(gguf.tensors.map(\.name)) {
                return try openCompVisGGUF(gguf, options: options).0
            }
            return try StableDiffusionModel(gguf: gguf, options: options)
        }
        // A pickle (.ckpt / .pt): a zip archive (torch.save since 1.6) or a raw pickle stream (0x80 protocol).
        let pickle = head.prefix(2) == Data("PK".utf8) || head.first == 0x80
            || ["ckpt", "pt", "pth", "bin"].contains(url.pathExtension.lowercased())
        if pickle {
            throw PipelineError.unsupported(
                file: path,
                feature: "a PyTorch pickle checkpoint (loading a pickle can run any code it contains, so sdd never "
                    + "reads one; convert it to safetensors first, e.g. python3 -c \"import torch, safetensors.torch as s; "
                    + "d = torch.load('model.ckpt', map_location='cpu', weights_only=True); d = d.get('state_dict', d); "
                    + "s.save_file({k: v.contiguous() for k, v in d.items() if hasattr(v, 'contiguous')}, "
                    + "'model.safetensors')\", and pass the .safetensors file)")
        }
        // safetensors: an 8-byte little-endian header length, then a JSON object.
        if head.count > 8, head[head.startIndex + 8] == UInt8(ascii: "{") {
            let file = try SafetensorsFile(url: url)
            var shapes = [String: [Int]]()
            for name in file.tensorNames { if let info = try file.info(name) { shapes[name] = info.shape } }
            guard SingleFileCheckpoint.isCompVis(file.tensorNames) else {
                throw PipelineError.unsupported(
                    file: path, feature: "a safetensors file without CompVis UNet names (\"\(CompVisNames.unetPrefix)*\"); "
                        + "for one component's weights use a diffusers folder")
            }
            let stored = ComponentWeights(source: file, url: url)
            return try singleFile(url: url, shapes: shapes, stored: stored, options: options).0
        }
        throw PipelineError.unsupported(
            file: path, feature: "a single-file model that is neither GGUF nor safetensors (use a diffusers folder, "
                + "a CompVis .safetensors checkpoint or a .gguf file)")
    }

    /// A CompVis-named file (a `.safetensors` checkpoint or a GGUF) with its name maps and config texts; nil
    /// when `url` is not one (a folder, or an sdd-named GGUF).
    static func openCompVis(_ url: URL, options: ModelOpenOptions) throws -> (StableDiffusionModel, SingleFileCheckpoint)? {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue,
            let handle = FileHandle(forReadingAtPath: url.path)
        else { return nil }
        let head = (try? handle.read(upToCount: 16)) ?? Data()
        try? handle.close()
        if head.prefix(4) == Data("GGUF".utf8) {
            let gguf = try GGUFFile(url: url)
            return SingleFileCheckpoint.isCompVis(gguf.tensors.map(\.name)) ? try openCompVisGGUF(gguf, options: options) : nil
        }
        guard head.count > 8, head[head.startIndex + 8] == UInt8(ascii: "{") else { return nil }
        let file = try SafetensorsFile(url: url)
        guard SingleFileCheckpoint.isCompVis(file.tensorNames) else { return nil }
        var shapes = [String: [Int]]()
        for name in file.tensorNames { if let info = try file.info(name) { shapes[name] = info.shape } }
        return try singleFile(url: url, shapes: shapes, stored: ComponentWeights(source: file, url: url), options: options)
    }

    /// A CompVis-named GGUF: stable-diffusion.cpp's (CompVis names, or diffusers names under CompVis
    /// prefixes; no sdd metadata: architecture inferred), or one `sdd convert --names compvis` wrote (configs and
    /// tokenizer from its sdd metadata).
    static func openCompVisGGUF(_ gguf: GGUFFile, options: ModelOpenOptions) throws -> (StableDiffusionModel, SingleFileCheckpoint) {
        var shapes = [String: [Int]]()
        for t in gguf.tensors { shapes[t.name] = t.shape }
        let stored = GGUFComponentWeights(gguf: gguf, prefix: "")
        guard gguf.value(SDDGGUFKey.formatVersion) != nil, options.configDirectory == nil else {
            return try singleFile(url: gguf.url, shapes: shapes, stored: stored, options: options)
        }
        let path = gguf.path
        func string(_ key: String) throws -> String? {
            guard let value = gguf.value(key) else { return nil }
            guard let s = value.stringValue else {
                throw PipelineError.badConfig(file: path, field: key, reason: "must be a string, found \(value.type.name)")
            }
            return s
        }
        var configs = [String: String]()
        for (component, key) in [("unet", SDDGGUFKey.unetConfig), ("vae", SDDGGUFKey.vaeConfig),
                                 ("text_encoder", SDDGGUFKey.textEncoderConfig), ("scheduler", SDDGGUFKey.schedulerConfig)] {
            guard let text = try string(key) else {
                throw PipelineError.badConfig(file: path, field: key, reason: "is missing")
            }
            configs[component] = text
        }
        var tokenizer: CLIPTokenizer?
        if let vocab = try string(SDDGGUFKey.tokenizerVocab), let merges = try string(SDDGGUFKey.tokenizerMerges) {
            tokenizer = try CLIPTokenizer(vocabJSON: vocab, merges: merges,
                                          tokenizerConfig: try string(SDDGGUFKey.tokenizerConfig),
                                          specialTokensMap: try string(SDDGGUFKey.tokenizerSpecialTokensMap),
                                          source: "\(path): sdd.tokenizer")
        }
        return try singleFile(url: gguf.url, shapes: shapes, stored: stored, options: options,
                              pipelineClass: try string(SDDGGUFKey.pipelineClass) ?? "StableDiffusionPipeline",
                              givenConfigs: configs, givenTokenizer: tokenizer)
    }

    /// A model from an sdd GGUF file (see `SDDGGUFKey` for the metadata it needs); `options.prediction`
    /// overrides the scheduler's prediction type.
    public init(gguf: GGUFFile, options: ModelOpenOptions = ModelOpenOptions()) throws {
        let path = gguf.path
        func string(_ key: String) throws -> String {
            guard let value = gguf.value(key) else {
                throw PipelineError.badConfig(file: path, field: key,
                                              reason: "is missing (is this a file `sdd convert` wrote?)")
            }
            guard let s = value.stringValue else {
                throw PipelineError.badConfig(file: path, field: key,
                                              reason: "must be a string, found \(value.type.name)")
            }
            return s
        }
        let architecture = try string(SDDGGUFKey.architecture)
        guard architecture == SDDGGUFKey.architectureValue else {
            throw PipelineError.unsupported(file: path, feature: "GGUF architecture \"\(architecture)\"")
        }
        guard let version = gguf.value(SDDGGUFKey.formatVersion) else {
            throw PipelineError.badConfig(file: path, field: SDDGGUFKey.formatVersion, reason: "is missing")
        }
        guard version.intValue == Int(SDDGGUFKey.formatVersionValue) else {
            throw PipelineError.unsupported(file: path, feature: "sdd format version \(version.summary())")
        }
        func config<T: Decodable>(_ type: T.Type, _ key: String) throws -> T {
            try decodeConfigJSON(type, Data(try string(key).utf8), file: path, key: key)
        }
        let unet = try config(UNetConfig.self, SDDGGUFKey.unetConfig)
        try unet.validate(file: "\(path) [\(SDDGGUFKey.unetConfig)]")
        let vae = try config(VAEConfig.self, SDDGGUFKey.vaeConfig)
        try vae.validate(file: "\(path) [\(SDDGGUFKey.vaeConfig)]")
        let textEncoder = try config(CLIPTextConfig.self, SDDGGUFKey.textEncoderConfig)
        try textEncoder.validate(file: "\(path) [\(SDDGGUFKey.textEncoderConfig)]")
        var scheduler = try config(SchedulerConfig.self, SDDGGUFKey.schedulerConfig)
        if let prediction = options.prediction { scheduler.predictionType = prediction.schedulerValue }
        func optionalString(_ key: String) throws -> String? { gguf.value(key) == nil ? nil : try string(key) }
        let tokenizer = try CLIPTokenizer(
            vocabJSON: try string(SDDGGUFKey.tokenizerVocab), merges: try string(SDDGGUFKey.tokenizerMerges),
            tokenizerConfig: try optionalString(SDDGGUFKey.tokenizerConfig),
            specialTokensMap: try optionalString(SDDGGUFKey.tokenizerSpecialTokensMap),
            source: "\(path): sdd.tokenizer")
        var shapes: [String: [Int]] = [:]
        if gguf.value(SDDGGUFKey.tensorShapes) != nil {
            shapes = try decodeConfigJSON([String: [Int]].self, Data(try string(SDDGGUFKey.tensorShapes).utf8),
                                          file: path, key: SDDGGUFKey.tensorShapes)
            for (name, shape) in shapes {
                guard let info = gguf.tensor(name) else { continue }
                var count = 1
                for d in shape where d > 0 && count > 0 {
                    let (p, overflow) = count.multipliedReportingOverflow(by: d)
                    count = overflow ? -1 : p
                }
                guard shape.allSatisfy({ $0 > 0 }), count == info.elementCount, shape.first == info.shape.first else {
                    throw PipelineError.badConfig(file: path, field: "\(SDDGGUFKey.tensorShapes).\(name)",
                                                  reason: "shape \(shape) does not fit the stored \(info.shape)")
                }
            }
        }
        let logical = shapes
        let pipelineClass = try optionalString(SDDGGUFKey.pipelineClass) ?? "StableDiffusionPipeline"
        try self.init(url: gguf.url, pipelineClass: pipelineClass, unet: unet, vae: vae, textEncoder: textEncoder,
                      scheduler: scheduler, tokenizer: tokenizer, defaults: try GenerationDefaults(gguf: gguf),
                      schedulerConfigSource: "\(path) [\(SDDGGUFKey.schedulerConfig)]") { component in
            guard SDDGGUFKey.components.contains(component) else {
                throw WeightsError(.noWeights, file: path, "no component \"\(component)\" in this file")
            }
            let prefix = component + "."
            guard gguf.tensors.contains(where: { $0.name.hasPrefix(prefix) }) else {
                throw WeightsError(.noWeights, file: path, "no \(component) tensors (named \"\(prefix)*\")")
            }
            return GGUFComponentWeights(gguf: gguf, prefix: prefix, logicalShapes: logical)
        }
    }
}

/// Decodes a config held as JSON text in GGUF metadata; errors name the file and the key (and field).
func decodeConfigJSON<T: Decodable>(_ type: T.Type, _ data: Data, file: String, key: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx) {
        let field = ([key] + ctx.codingPath.map(\.stringValue)).joined(separator: ".")
        throw PipelineError.badConfig(file: file, field: field,
                                      reason: "has the wrong type (\(ctx.debugDescription))")
    } catch let DecodingError.keyNotFound(k, _) {
        throw PipelineError.badConfig(file: file, field: "\(key).\(k.stringValue)", reason: "is missing")
    } catch {
        throw PipelineError.badConfig(file: file, field: key, reason: "is not valid JSON")
    }
}
