// ModelConversion: `sdd convert` (a diffusers folder → one GGUF file with every component, config and the
// tokenizer, streamed tensor by tensor) with stable-diffusion.cpp's quantization practice, and
// `sdd inspect` (components, tensor types, sizes, metadata and the planned peak memory of a model).

import Foundation
import MMapWeights
import TiledKernels

/// What `sdd convert` writes.
public struct ConversionOptions: Sendable {
    /// The type of large matmul / conv weights (q8_0, q4_0, q4_1, q5_0, q5_1, f16, bf16, f32).
    public var type: TensorType
    /// The VAE's weight type; nil means F16 for quantized `type`s and `type` otherwise.
    public var vaeType: TensorType?
    /// LoRAs baked into the UNet and text encoder weights (W + Σ scale·alpha/rank·B·A, summed in F32 before the
    /// weight is stored in its type).
    public var loras: [LoRASpec]

    public init(type: TensorType, vaeType: TensorType? = nil, loras: [LoRASpec] = []) {
        self.type = type
        self.vaeType = vaeType
        self.loras = loras
    }

    /// The type large weights of `component` are stored in.
    public func componentType(_ component: String) -> TensorType {
        guard component == "vae" else { return type }
        return vaeType ?? (type.isQuantized ? .f16 : type)
    }
}

/// What a conversion wrote.
public struct ConversionSummary: Sendable {
    public var output: URL
    public var tensorCount = 0
    public var countsByType: [TensorType: Int] = [:]
    /// Bytes of tensor data per component (unpadded).
    public var bytesByComponent: [String: Int] = [:]
    /// Source tensors left out (integer buffers such as position_ids).
    public var skipped: [String] = []
    public var fileSize = 0
}

/// Converts diffusers folders to sdd GGUF files.
public enum ModelConverter {
    /// Tensors below this many elements are never quantized ("small tensors kept in float").
    public static let minimumQuantizedElements = 1024

    /// The stored type and stored shape of one tensor, following stable-diffusion.cpp's practice:
    /// 1-D tensors (norms, biases) and position embeddings stay F32; a tensor is block-quantized when its
    /// rows (in·kh·kw for a conv kernel) are whole blocks of 32 and it has at least
    /// `minimumQuantizedElements` elements — conv kernels are then stored 2-D [out, in·kh·kw]; tensors
    /// whose rows are not whole blocks fall back to F16, or F32 when they are small.
    public static func storage(component: String, name: String, shape: [Int], options: ConversionOptions)
        -> (type: TensorType, shape: [Int])
    {
        let target = options.componentType(component)
        let count = shape.reduce(1, *)
        if target == .f32 || shape.count <= 1 || name.contains("position_embedding") || name.contains("pos_embed") {
            return (.f32, shape)
        }
        if count < minimumQuantizedElements { return (.f32, shape) }
        guard target.isQuantized else { return (target, shape) }
        let rows = shape[0]
        let rowLength = count / max(rows, 1)
        guard rowLength % target.blockSize == 0 else { return (.f16, shape) }
        return (target, shape.count == 2 ? shape : [rows, rowLength])
    }

    /// llama.cpp's LLAMA_FTYPE for a file whose main type is `type`.
    public static func fileType(_ type: TensorType) -> UInt32 {
        switch type {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 7
        case .q5_0: return 8
        case .q5_1: return 9
        case .bf16: return 32
        }
    }

    /// Converts the diffusers folder at `folder` into one GGUF file at `output` (written to a temp file,
    /// fsynced, renamed). Streams tensor by tensor: memory use is about one tensor, not the model.
    /// `progress` receives one line per component.
    @discardableResult
    public static func convert(diffusersFolder folder: URL, to output: URL, options: ConversionOptions,
                               progress: ((String) -> Void)? = nil) throws -> ConversionSummary {
        // Opening the model checks every config and the tokenizer before anything is written.
        let model = try StableDiffusionModel(diffusersFolder: folder)
        func text(_ relative: String, optional: Bool = false) throws -> String? {
            let url = folder.appendingPathComponent(relative)
            guard FileManager.default.fileExists(atPath: url.path) else {
                if optional { return nil }
                throw PipelineError.missingFile(path: url.path, what: "needed in the converted model")
            }
            guard let data = FileManager.default.contents(atPath: url.path),
                let s = String(data: data, encoding: .utf8)
            else {
                throw PipelineError.badConfig(file: url.path, field: "(file)", reason: "is not readable UTF-8 text")
            }
            return s
        }
        var writer = GGUFWriter()
        writer.set(SDDGGUFKey.architecture, .string(SDDGGUFKey.architectureValue))
        writer.set(SDDGGUFKey.name, .string(model.name))
        writer.set(SDDGGUFKey.fileType, .uint32(fileType(options.type)))
        if options.type.isQuantized || options.vaeType?.isQuantized == true {
            writer.set(SDDGGUFKey.quantizationVersion, .uint32(2))
        }
        writer.set(SDDGGUFKey.formatVersion, .uint32(SDDGGUFKey.formatVersionValue))
        writer.set(SDDGGUFKey.pipelineClass, .string(model.pipelineClass))
        let texts: [(String, String, Bool)] = [
            (SDDGGUFKey.unetConfig, "unet/config.json", false),
            (SDDGGUFKey.vaeConfig, "vae/config.json", false),
            (SDDGGUFKey.textEncoderConfig, "text_encoder/config.json", false),
            (SDDGGUFKey.schedulerConfig, "scheduler/scheduler_config.json", false),
            (SDDGGUFKey.tokenizerVocab, "tokenizer/vocab.json", false),
            (SDDGGUFKey.tokenizerMerges, "tokenizer/merges.txt", false),
            (SDDGGUFKey.tokenizerConfig, "tokenizer/tokenizer_config.json", true),
            (SDDGGUFKey.tokenizerSpecialTokensMap, "tokenizer/special_tokens_map.json", true),
        ]
        for (key, file, optional) in texts {
            if let s = try text(file, optional: optional) { writer.set(key, .string(s)) }
        }

        // LoRAs are checked against the source's layers before anything is written.
        let baked = options.loras.isEmpty ? nil : try ResolvedLoRAs(options.loras, components: [
            "text_encoder": try ComponentWeights(directory: folder, component: "text_encoder"),
            "unet": try ComponentWeights(directory: folder, component: "unet"),
        ])
        if let baked {
            writer.set(SDDGGUFKey.bakedLoRAs, .string(baked.specs.map {
                "\(URL(fileURLWithPath: $0.path).lastPathComponent):\($0.scale)" }.joined(separator: ", ")))
        }

        // Pass 1: declare every tensor (shapes and types only; no data is read).
        struct Planned {
            let component: String
            let sourceName: String
            let source: ComponentWeights
            let storedType: TensorType
        }
        var plan: [Planned] = []
        var reshaped: [String: [Int]] = [:]
        var summary = ConversionSummary(output: output)
        for component in SDDGGUFKey.components {
            let source = try ComponentWeights(directory: folder, component: component)
            for name in source.tensorNames.sorted() {
                guard let info = try source.info(name) else { continue }
                guard info.dtype.isConvertibleToFloat32 else {
                    summary.skipped.append("\(component).\(name) (\(info.dtype.safetensorsName))")
                    continue
                }
                let shape = info.shape.isEmpty ? [1] : info.shape
                let (type, stored) = storage(component: component, name: name, shape: shape, options: options)
                let full = "\(component).\(name)"
                try writer.addTensor(full, shape: stored, type: type)
                if stored != info.shape { reshaped[full] = info.shape }
                plan.append(Planned(component: component, sourceName: name, source: source, storedType: type))
                summary.countsByType[type, default: 0] += 1
                summary.bytesByComponent[component, default: 0] += type.byteCount(elements: shape.reduce(1, *)) ?? 0
            }
        }
        if !reshaped.isEmpty {
            let object = Dictionary(uniqueKeysWithValues: reshaped.map { ($0.key, $0.value) })
            let json = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            writer.set(SDDGGUFKey.tensorShapes, .string(String(decoding: json, as: UTF8.self)))
        }
        summary.tensorCount = plan.count

        // Pass 2: stream the data, one tensor (and one chunk of rows) at a time.
        var lastComponent = ""
        var scratch = [UInt8]()
        var index = 0
        try writer.stream(to: output) { tensor, sink in
            let item = plan[index]
            index += 1
            if item.component != lastComponent {
                lastComponent = item.component
                progress?("\(item.component): \(plan.filter { $0.component == item.component }.count) tensors")
            }
            let w = try item.source.weight(item.sourceName, shape: nil)
            defer { item.source.release([item.sourceName]) }
            // Sources hand out F16/BF16 (and GGUF types) in place; the quantizer reads F32.
            var f32 = w.type == .f32 ? w : Weight(shape: w.shape, array: w.dequantized())
            if item.sourceName.hasSuffix(".weight"),
               let terms = baked?.terms[item.component]?[String(item.sourceName.dropLast(".weight".count))] {
                f32 = LoRAWeights.merged(f32, terms)
            }
            defer { withExtendedLifetime(f32) {} }
            let values = f32.values
            let rowLength = tensor.shape.count >= 2 ? tensor.shape.dropFirst().reduce(1, *) : tensor.shape.reduce(1, *)
            let rows = values.count / max(rowLength, 1)
            let rowBytes = tensor.type.byteCount(elements: rowLength) ?? 0
            let chunkRows = max(1, (4 << 20) / max(rowBytes, 1))
            var r = 0
            while r < rows {
                let n = min(chunkRows, rows - r)
                let bytes = n * rowBytes
                if scratch.count < bytes { scratch = [UInt8](repeating: 0, count: bytes) }
                try scratch.withUnsafeMutableBytes { out in
                    let dst = UnsafeMutableRawBufferPointer(rebasing: out[0..<bytes])
                    let src = UnsafeBufferPointer(rebasing: values[(r * rowLength)..<((r + n) * rowLength)])
                    Quantizer.quantize(src, to: tensor.type, into: dst)
                    try sink.write(UnsafeRawBufferPointer(dst))
                }
                r += n
            }
        }
        summary.fileSize = (try? FileManager.default.attributesOfItem(atPath: output.path)[.size] as? Int) ?? 0
        // Read back the header: the file must open as a model.
        _ = try StableDiffusionModel(url: output)
        return summary
    }
}

/// A summary of a model (a GGUF file or a diffusers folder) for `sdd inspect`.
public struct ModelInspection: Sendable {
    public struct Component: Sendable {
        public var name: String
        public var tensorCount = 0
        /// Tensor count per stored type name ("q8_0", "F32" …).
        public var countsByType: [String: Int] = [:]
        public var bytes = 0
        public var largestTensor = ""
        public var largestTensorBytes = 0
    }

    public var path: String
    public var format: String
    public var components: [Component] = []
    /// (key, short rendering) for GGUF metadata; config summaries for folders.
    public var metadata: [(String, String)] = []
    /// The planner's estimate for a guided generation at the model's default size, streamed weights.
    public var memory: MemoryPlan?
    public var memorySize = (width: 0, height: 0)

    /// Reads only headers and configs; no tensor data is touched.
    public init(url: URL) throws {
        path = url.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw PipelineError.missingFile(path: url.path, what: "model folder or .gguf file")
        }
        let model: StableDiffusionModel
        if isDirectory.boolValue {
            format = "diffusers folder"
            model = try StableDiffusionModel(diffusersFolder: URL(fileURLWithPath: url.path, isDirectory: true))
            for name in SDDGGUFKey.components {
                let w = try ComponentWeights(directory: model.url, component: name)
                var c = Component(name: name)
                for t in w.tensorNames {
                    guard let info = try w.info(t) else { continue }
                    c.add(t, type: info.dtype.safetensorsName, bytes: info.byteRange.count)
                }
                components.append(c)
            }
            metadata = [("pipeline", model.pipelineClass), ("source", url.path)]
        } else {
            let gguf = try GGUFFile(url: url)
            format = "GGUF v\(gguf.version), alignment \(gguf.alignment)"
            model = try StableDiffusionModel(gguf: gguf)
            for name in SDDGGUFKey.components {
                var c = Component(name: name)
                for t in gguf.tensors where t.name.hasPrefix(name + ".") {
                    c.add(String(t.name.dropFirst(name.count + 1)), type: t.type.name, bytes: t.byteRange.count)
                }
                components.append(c)
            }
            metadata = gguf.metadata.map { ($0.key, $0.value.summary()) }
        }
        metadata.append(("unet", "block_out_channels \(model.unet.blockOutChannels), "
            + "text encoder hidden size \(model.textEncoder.hiddenSize)"))
        memorySize = model.defaultSize
        memory = try MemoryPlanner.plan(budget: nil, pipeline: try StableDiffusionPipeline(model: model, residency: .streamed),
                                        width: memorySize.width, height: memorySize.height)
    }

    /// The human-readable report `sdd inspect` prints.
    public func report() -> String {
        func mb(_ n: Int) -> String {
            n >= 100_000
                ? String(format: "%.1f MB", Double(n) / 1_000_000) : String(format: "%.1f KB", Double(n) / 1_000)
        }
        var lines = ["\(path): \(format)"]
        lines.append("components:")
        for c in components {
            let types = c.countsByType.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
            lines.append("  \(c.name): \(c.tensorCount) tensors (\(types.joined(separator: ", "))), \(mb(c.bytes)); "
                + "largest \(c.largestTensor) \(mb(c.largestTensorBytes))")
        }
        let totalTensors = components.reduce(0) { $0 + $1.tensorCount }
        lines.append("total: \(totalTensors) tensors, \(mb(components.reduce(0) { $0 + $1.bytes }))")
        lines.append("metadata:")
        for (k, v) in metadata { lines.append("  \(k) = \(v)") }
        if let m = memory {
            lines.append("memory (estimate, \(memorySize.width)×\(memorySize.height) guided, streamed weights, untiled VAE): \(m)")
        }
        return lines.joined(separator: "\n")
    }
}

extension ModelInspection.Component {
    mutating func add(_ tensor: String, type: String, bytes: Int) {
        tensorCount += 1
        countsByType[type, default: 0] += 1
        self.bytes += bytes
        if bytes > largestTensorBytes {
            largestTensorBytes = bytes
            largestTensor = tensor
        }
    }
}
