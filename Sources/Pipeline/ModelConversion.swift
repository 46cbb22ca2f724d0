// ModelConversion: `sdd convert` (a diffusers folder → one GGUF file with every component, config and the
// tokenizer, streamed tensor by tensor) with stable-diffusion.cpp's quantization practice, and
// `sdd inspect` (components, tensor types, sizes, metadata and the planned peak memory of a model).

import Foundation
import MMapWeights
import TiledKernels

/// The tensor names `sdd convert` writes.
public enum GGUFNaming: String, Sendable, CaseIterable {
    /// `unet.<diffusers name>`, `vae.…`, `text_encoder.…`; conv kernels may be stored 2-D and quantized.
    case sdd
    /// The original Stable Diffusion names stable-diffusion.cpp recognises (`model.diffusion_model.…`,
    /// `first_stage_model.…`, `cond_stage_model.transformer.text_model.…`), every tensor in its PyTorch shape;
    /// conv kernels therefore stay F16 under a quantized type (ggml quantizes along a 3-wide kernel row), as
    /// stable-diffusion.cpp stores them.
    case compvis
}

/// What `sdd convert` writes.
public struct ConversionOptions: Sendable {
    /// The type of large matmul / conv weights (q8_0, q4_0, q4_1, q5_0, q5_1, f16, bf16, f32).
    public var type: TensorType
    /// The VAE's weight type; nil means F16 for quantized `type`s and `type` otherwise.
    public var vaeType: TensorType?
    /// The tensor names.
    public var naming: GGUFNaming
    /// LoRAs baked into the UNet and text encoder weights (W + Σ scale·alpha/rank·B·A, summed in F32 before the
    /// weight is stored in its type).
    public var loras: [LoRASpec]

    public init(type: TensorType, vaeType: TensorType? = nil, naming: GGUFNaming = .sdd, loras: [LoRASpec] = []) {
        self.type = type
        self.vaeType = vaeType
        self.naming = naming
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
        let chosen = storageReshaping(component: component, name: name, shape: shape, options: options)
        // CompVis-named files keep every tensor's own shape (stable-diffusion.cpp checks them): a conv kernel
        // that would have to be flattened to be quantized stays F16.
        if options.naming == .compvis, chosen.shape != shape { return (.f16, shape) }
        return chosen
    }

    static func storageReshaping(component: String, name: String, shape: [Int], options: ConversionOptions)
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

    /// A text file's contents; nil when `optional` and absent.
    static func readText(_ url: URL, optional: Bool) throws -> String? {
        guard FileManager.default.fileExists(atPath: url.path) else {
            if optional { return nil }
            throw PipelineError.missingFile(path: url.path, what: "needed in the converted model")
        }
        guard let data = FileManager.default.contents(atPath: url.path), let s = String(data: data, encoding: .utf8) else {
            throw PipelineError.badConfig(file: url.path, field: "(file)", reason: "is not readable UTF-8 text")
        }
        return s
    }

    /// llama.cpp's LLAMA_FTYPE for a file whose main type is `type` (the type table's file_type).
    public static func fileType(_ type: TensorType) -> UInt32 { type.llamaFileType }

    /// Converts the diffusers folder at `folder` into one GGUF file at `output` (see `convert(model:…)`).
    @discardableResult
    public static func convert(diffusersFolder folder: URL, to output: URL, options: ConversionOptions,
                               progress: ((String) -> Void)? = nil) throws -> ConversionSummary {
        try convert(model: folder, to: output, options: options, progress: progress)
    }

    /// Converts a model — a diffusers folder, or a CompVis single file (`.safetensors` checkpoint or
    /// stable-diffusion.cpp GGUF, opened with `openOptions`) — into one GGUF file at `output` (written to a temp
    /// file, fsynced, renamed). Streams tensor by tensor: memory use is about one tensor, not the model.
    /// `progress` receives one line per component.
    @discardableResult
    /// `vae` (a diffusers AutoencoderKL folder or a single-file VAE with its `vaeConfig`, as `--vae`/`--vae-config`)
    /// replaces the model's VAE in the written file, with the config it was opened with.
    public static func convert(model source: URL, openOptions: ModelOpenOptions = ModelOpenOptions(), vae: URL? = nil,
                               vaeConfig: URL? = nil,
                               to output: URL, options: ConversionOptions,
                               progress: ((String) -> Void)? = nil) throws -> ConversionSummary {
        // Opening the model checks every config and the tokenizer before anything is written.
        var isDirectory: ObjCBool = false
        let isFolder = FileManager.default.fileExists(atPath: source.path, isDirectory: &isDirectory) && isDirectory.boolValue
        var model: StableDiffusionModel
        var texts: [String: String] = [:]
        var providers: [String: WeightProvider] = [:]
        if isFolder {
            let folder = URL(fileURLWithPath: source.path, isDirectory: true)
            model = try StableDiffusionModel(diffusersFolder: folder)
            let files: [(String, String, Bool)] = [
                (SDDGGUFKey.unetConfig, "unet/config.json", false),
                (SDDGGUFKey.vaeConfig, "vae/config.json", false),
                (SDDGGUFKey.textEncoderConfig, "text_encoder/config.json", false),
                (SDDGGUFKey.schedulerConfig, "scheduler/scheduler_config.json", false),
                (SDDGGUFKey.tokenizerVocab, "tokenizer/vocab.json", false),
                (SDDGGUFKey.tokenizerMerges, "tokenizer/merges.txt", false),
                (SDDGGUFKey.tokenizerConfig, "tokenizer/tokenizer_config.json", true),
                (SDDGGUFKey.tokenizerSpecialTokensMap, "tokenizer/special_tokens_map.json", true),
            ]
            for (key, file, optional) in files {
                if let s = try readText(folder.appendingPathComponent(file), optional: optional) { texts[key] = s }
            }
            for component in SDDGGUFKey.components {
                providers[component] = try ComponentWeights(directory: folder, component: component)
            }
        } else {
            guard let (opened, checkpoint) = try StableDiffusionModel.openCompVis(source, options: openOptions) else {
                throw PipelineError.unsupported(
                    file: source.path, feature: "converting this file (convert reads diffusers folders and CompVis "
                        + "single files; an sdd GGUF is converted from the model it came from)")
            }
            model = opened
            for (component, key) in [("unet", SDDGGUFKey.unetConfig), ("vae", SDDGGUFKey.vaeConfig),
                                     ("text_encoder", SDDGGUFKey.textEncoderConfig),
                                     ("scheduler", SDDGGUFKey.schedulerConfig)] {
                texts[key] = checkpoint.configs[component]
            }
            let tokenizerDir = openOptions.configDirectory?.appendingPathComponent("tokenizer")
            if let dir = tokenizerDir, FileManager.default.fileExists(atPath: dir.appendingPathComponent("vocab.json").path) {
                texts[SDDGGUFKey.tokenizerVocab] = try readText(dir.appendingPathComponent("vocab.json"), optional: false)
                texts[SDDGGUFKey.tokenizerMerges] = try readText(dir.appendingPathComponent("merges.txt"), optional: false)
                texts[SDDGGUFKey.tokenizerConfig] = try readText(dir.appendingPathComponent("tokenizer_config.json"), optional: true)
                texts[SDDGGUFKey.tokenizerSpecialTokensMap] =
                    try readText(dir.appendingPathComponent("special_tokens_map.json"), optional: true)
            } else {
                texts[SDDGGUFKey.tokenizerVocab] = CLIPVocabulary.vocabJSON
                texts[SDDGGUFKey.tokenizerMerges] = CLIPVocabulary.mergesText
                texts[SDDGGUFKey.tokenizerConfig] = CLIPVocabulary.tokenizerConfigJSON(padToken: checkpoint.padToken)
            }
            for component in SDDGGUFKey.components { providers[component] = try model.weights(component) }
        }
        if let vae {
            model = try model.replacingVAE(with: vae, config: vaeConfig)
            guard model.tinyAutoencoder == nil, let text = model.vaeConfigText else {
                throw PipelineError.unsupported(file: vae.path, feature: "an AutoencoderTiny (TAESD) VAE in a converted "
                    + "file (pass it to generate or serve with --vae instead)")
            }
            texts[SDDGGUFKey.vaeConfig] = text  // the config the VAE's tensors were checked against
            providers["vae"] = try model.weights("vae")
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
        model.defaults.write(to: &writer)
        writer.set(SDDGGUFKey.names, .string(options.naming.rawValue))
        for (key, value) in texts.sorted(by: { $0.key < $1.key }) { writer.set(key, .string(value)) }

        // LoRAs are checked against the source's layers before anything is written.
        let baked = options.loras.isEmpty ? nil : try ResolvedLoRAs(options.loras, components: [
            "text_encoder": try providers["text_encoder"] ?? model.weights("text_encoder"),
            "unet": try providers["unet"] ?? model.weights("unet"),
        ])
        if let baked {
            writer.set(SDDGGUFKey.bakedLoRAs, .string(baked.specs.map {
                "\(URL(fileURLWithPath: $0.path).lastPathComponent):\($0.scale)" }.joined(separator: ", ")))
        }

        // Pass 1: declare every tensor (shapes and types only; no data is read).
        struct Planned {
            let component: String
            let sourceName: String
            let source: WeightProvider
            let storedType: TensorType
        }
        var plan: [Planned] = []
        var reshaped: [String: [Int]] = [:]
        var summary = ConversionSummary(output: output)
        for component in SDDGGUFKey.components {
            guard let source = providers[component] else { continue }
            let names = (source as? ComponentWeights)?.tensorNames ?? (source as? RenamedWeights)?.tensorNames ?? []
            for name in names.sorted() {
                if let folderWeights = source as? ComponentWeights, let info = try folderWeights.info(name),
                    !info.dtype.isConvertibleToFloat32
                {
                    summary.skipped.append("\(component).\(name) (\(info.dtype.safetensorsName))")
                    continue
                }
                let view = try source.weight(name, shape: nil)  // a view of the mapping: no data is read
                let shape = view.shape.isEmpty ? [1] : view.shape
                let full: String
                var logical = shape
                switch options.naming {
                case .sdd:
                    full = "\(component).\(name)"
                case .compvis:
                    guard let (n, s) = model.compVisName(component: component, name: name, shape: shape) else {
                        throw PipelineError.unsupported(file: model.url.path,
                                                        feature: "tensor \(component).\(name) under CompVis names")
                    }
                    full = n
                    logical = s
                }
                let (type, stored) = storage(component: component, name: name, shape: logical, options: options)
                try writer.addTensor(full, shape: stored, type: type)
                if stored != logical { reshaped[full] = logical }
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
            defer {
                (item.source as? ComponentWeights)?.release([item.sourceName])
                (item.source as? RenamedWeights)?.release([item.sourceName])
            }
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
    /// What a plain generation uses, resolved as `sdd generate` does ("25 steps, guidance 2.5, pndm, 64×64"),
    /// and where it comes from.
    public var generationDefaults = ""

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
        } else if let (opened, checkpoint) = try StableDiffusionModel.openCompVis(url, options: ModelOpenOptions()) {
            // CompVis names: a single-file checkpoint, stable-diffusion.cpp's GGUF or `sdd convert --names compvis`.
            model = opened
            let gguf = try? GGUFFile(url: url)
            format = gguf.map { "GGUF v\($0.version), alignment \($0.alignment), CompVis names" }
                ?? "CompVis single-file safetensors (\(checkpoint.family.rawValue))"
            for name in SDDGGUFKey.components {
                var c = Component(name: name)
                guard let weights = try model.weights(name) as? RenamedWeights else { continue }
                for (tensor, entry) in weights.map.sorted(by: { $0.key < $1.key }) {
                    let w = try weights.weight(tensor, shape: nil)
                    let type = gguf?.tensor(entry.source)?.type.name ?? w.type.name
                    c.add(tensor, type: type, bytes: w.bytes.count)
                }
                components.append(c)
            }
            metadata = gguf?.metadata.map { ($0.key, $0.value.summary()) } ?? [("source", url.path)]
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
        let scheduler: String
        do { scheduler = try model.defaultScheduler().rawValue } catch { scheduler = "none (\(error))" }
        generationDefaults = "\(model.defaultSteps) steps, guidance \(model.defaultGuidance), \(scheduler), "
            + "\(memorySize.width)×\(memorySize.height) (the model's own: \(model.defaults.summary))"
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
        lines.append("defaults: \(generationDefaults)")
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
