// WeightLoading: finds a model component's safetensors weights the way diffusers does and hands
// out `Weight`s — zero-copy views into the mapping for F16, BF16 and aligned F32, F32 copies otherwise.

import Foundation
import MMapWeights
import TiledKernels

/// The weights of one model component (unet, vae, text_encoder), from a safetensors file or a
/// sharded index. Names can be addressed under a `prefix` (e.g. "model.diffusion_model." for a
/// single-file CompVis checkpoint).
public final class ComponentWeights: WeightProvider, @unchecked Sendable {
    // @unchecked: all stored properties are immutable; the source is Sendable.

    /// The tensors.
    public let source: any TensorSource
    /// The weights file (or index file) in use.
    public let url: URL
    /// Prepended to every name passed to `weight`, `has`, `info`.
    public let prefix: String

    /// File names tried in each component folder, in order: non-variant single file, non-variant
    /// sharded index, then the fp16 variant of each (diffusers' `_add_variant` spelling).
    public static let candidateFileNames = [
        "diffusion_pytorch_model.safetensors",
        "model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors.index.json",
        "diffusion_pytorch_model.fp16.safetensors",
        "model.fp16.safetensors",
        "diffusion_pytorch_model.safetensors.index.fp16.json",
        "model.safetensors.index.fp16.json",
    ]

    /// Pickle weight names diffusers/transformers may leave instead of safetensors.
    static let pickleFileNames = [
        "diffusion_pytorch_model.bin", "pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin",
        "diffusion_pytorch_model.bin.index.json", "pytorch_model.bin.index.json",
    ]

    /// Opens `directory/component/`'s weights (component "" means `directory` itself).
    /// Throws `WeightsError`: `.fileNotFound` if the folder is missing, `.unsupportedFormat` if only
    /// PyTorch pickle weights (.bin/.ckpt/.pt) are there, `.noWeights` if nothing is, or any error
    /// from validating the file.
    public convenience init(directory: URL, component: String, prefix: String = "") throws {
        let folder = component.isEmpty ? directory : directory.appendingPathComponent(component, isDirectory: true)
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: folder.path, isDirectory: &isDir), isDir.boolValue else {
            throw WeightsError(.fileNotFound, file: folder.path, "component folder is missing")
        }
        for name in Self.candidateFileNames {
            let candidate = folder.appendingPathComponent(name)
            if fm.fileExists(atPath: candidate.path) {
                try self.init(file: candidate, prefix: prefix)
                return
            }
        }
        let listing = (try? fm.contentsOfDirectory(atPath: folder.path)) ?? []
        let pickles = listing.filter { name in
            Self.pickleFileNames.contains(name) || [".ckpt", ".pt", ".pth", ".bin"].contains { name.hasSuffix($0) }
        }.sorted()
        if let first = pickles.first {
            throw WeightsError(
                .unsupportedFormat, file: folder.appendingPathComponent(first).path,
                "PyTorch pickle weights are not supported; convert to safetensors")
        }
        throw WeightsError(
            .noWeights, file: folder.path,
            "no weights file found (looked for diffusion_pytorch_model.safetensors, model.safetensors, "
                + "their .safetensors.index.json sharded forms and .fp16 variants)")
    }

    /// Opens one weights file: a `.safetensors` file, or a `.json` sharded index.
    public convenience init(file: URL, prefix: String = "") throws {
        let source: any TensorSource
        if file.pathExtension == "json" {
            source = try SafetensorsIndex(url: file)
        } else if ["bin", "ckpt", "pt", "pth"].contains(file.pathExtension) {
            throw WeightsError(
                .unsupportedFormat, file: file.path,
                "PyTorch pickle weights are not supported; convert to safetensors")
        } else {
            source = try SafetensorsFile(url: file)
        }
        self.init(source: source, url: file, prefix: prefix)
    }

    /// Wraps an already open source.
    public init(source: any TensorSource, url: URL, prefix: String = "") {
        self.source = source
        self.url = url
        self.prefix = prefix
    }

    /// The same file addressed under a longer prefix (e.g. a sub-model of a single-file checkpoint).
    public func scoped(_ subPrefix: String) -> ComponentWeights {
        ComponentWeights(source: source, url: url, prefix: prefix + subPrefix)
    }

    /// Names under `prefix`, with the prefix removed.
    public var tensorNames: [String] {
        source.tensorNames.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }

    /// Whether `prefix + name` exists.
    public func has(_ name: String) -> Bool { source.contains(prefix + name) }

    /// The validated record of `prefix + name`, or nil if there is none.
    public func info(_ name: String) throws -> TensorInfo? { try source.info(prefix + name) }

    /// Tensor `prefix + name`. Aligned F32 data and F16/BF16 data (typed `Weight`s the kernels dequantize
    /// as they go) are returned in place, the Weight's owner being the mapping; F64 and unaligned F32 are
    /// converted into an F32 `WeightBox`. When `shape` is given the stored
    /// shape must equal it. Throws `WeightsError` naming the tensor and file: `.missingTensor`,
    /// `.shapeMismatch` (expected and found), `.unsupportedDType` (integer/bool data).
    public func weight(_ name: String, shape: [Int]? = nil) throws -> Weight {
        let full = prefix + name
        guard let info = try source.info(full) else {
            throw WeightsError(.missingTensor, file: source.displayPath, tensor: full, "no such tensor in this file")
        }
        if let shape, shape != info.shape {
            throw WeightsError(
                .shapeMismatch, file: info.file.url.path, tensor: full,
                "expected shape \(shape), found \(info.shape)")
        }
        if let values = info.float32Pointer {
            return Weight(shape: info.shape, values: values, owner: info.file)
        }
        // F16 / BF16 stay in their stored type, zero-copy over the mapping: kernels dequantize as they go,
        // so a half-precision checkpoint is never inflated into anonymous F32 memory.
        if info.dtype == .f16 || info.dtype == .bf16 {
            return Weight(shape: info.shape, type: info.dtype == .f16 ? .f16 : .bf16, bytes: info.rawBytes,
                          owner: info.file)
        }
        guard info.dtype.isConvertibleToFloat32 else {
            throw WeightsError(
                .unsupportedDType, file: info.file.url.path, tensor: full,
                "dtype \(info.dtype.safetensorsName) cannot be used as a float weight")
        }
        let box = WeightBox(count: info.elementCount)
        try info.copyAsFloat32(into: box.pointer)
        return Weight(shape: info.shape, values: UnsafeBufferPointer(box.pointer), owner: box)
    }

    /// Starts reading the listed tensors' pages (madvise WILLNEED); unknown names are skipped.
    public func prefetch(_ names: [String]) {
        for n in names { if let i = try? info(n) { i.file.willNeed(i.byteRange) } }
    }

    /// Drops the listed tensors' pages from this process (madvise DONTNEED; with `dropPageCache`,
    /// also posix_fadvise DONTNEED). Zero-copy Weights stay valid: pages fault back in on use.
    public func release(_ names: [String], dropPageCache: Bool = false) {
        for n in names { if let i = try? info(n) { i.file.release(i.byteRange, dropPageCache: dropPageCache) } }
    }
}
