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
    /// Single-file formats: a GGUF file written by `sdd convert`. Anything else is refused with a
    /// message naming the file.
    static func openSingleFile(_ url: URL) throws -> StableDiffusionModel {
        let path = url.path
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw PipelineError.missingFile(path: path, what: "model file (cannot be opened)")
        }
        let magic = (try? handle.read(upToCount: 4)) ?? Data()
        try? handle.close()
        guard magic == Data("GGUF".utf8) else {
            throw PipelineError.unsupported(
                file: path,
                feature: "a single-file model that is not GGUF (use a diffusers folder, or `sdd convert` one)")
        }
        return try StableDiffusionModel(gguf: GGUFFile(url: url))
    }

    /// A model from an sdd GGUF file (see `SDDGGUFKey` for the metadata it needs).
    public init(gguf: GGUFFile) throws {
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
        let scheduler = try config(SchedulerConfig.self, SDDGGUFKey.schedulerConfig)
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
                      scheduler: scheduler, tokenizer: tokenizer) { component in
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
