// TensorSource: the lookup API shared by a single safetensors file and a sharded index,
// and TensorInfo, a validated tensor record that knows which mapping its bytes live in.

import Foundation

/// One tensor of a weight file, validated against the file: `byteRange` lies inside the mapping
/// and holds exactly `elementCount * dtype.byteSize` bytes.
public struct TensorInfo: Sendable, CustomStringConvertible {
    /// The tensor's name as stored in the file.
    public let name: String
    /// Element type as stored.
    public let dtype: DType
    /// Extent of each dimension, outermost first (PyTorch order).
    public let shape: [Int]
    /// Absolute byte offsets of the data within `file`.
    public let byteRange: Range<Int>
    /// The mapping that holds the data (keeps it alive while this value exists).
    public let file: MappedFile

    /// Product of `shape` (1 for a scalar).
    public var elementCount: Int { byteRange.count / dtype.byteSize }

    /// Builds a record. Callers must have validated `byteRange` against `file.size`
    /// and `byteRange.count == product(shape) * dtype.byteSize` (SafetensorsFile does).
    init(name: String, dtype: DType, shape: [Int], byteRange: Range<Int>, file: MappedFile) {
        precondition(byteRange.lowerBound >= 0 && byteRange.upperBound <= file.size)
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.byteRange = byteRange
        self.file = file
    }

    public var description: String {
        "\(name): \(dtype.safetensorsName) \(shape) @ \(byteRange.lowerBound)..<\(byteRange.upperBound)"
    }

    /// The tensor's bytes as stored (little-endian), inside the mapping.
    public var rawBytes: UnsafeRawBufferPointer {
        guard let base = file.bytes.baseAddress else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + byteRange.lowerBound, count: byteRange.count)
    }

    /// The F32 values in place (zero-copy) when the dtype is F32 and the data is 4-byte aligned
    /// in memory; nil otherwise (use `copyAsFloat32`).
    public var float32Pointer: UnsafeBufferPointer<Float>? {
        guard dtype == .f32 else { return nil }
        let raw = rawBytes
        guard let base = raw.baseAddress else {
            return elementCount == 0 ? UnsafeBufferPointer(start: nil, count: 0) : nil
        }
        guard Int(bitPattern: base) % MemoryLayout<Float>.alignment == 0 else { return nil }
        // The mapping is untyped memory that is only ever read as Float through this path.
        return UnsafeBufferPointer(start: base.bindMemory(to: Float.self, capacity: elementCount), count: elementCount)
    }

    /// Converts the tensor to F32 into `destination`, which must hold exactly `elementCount`
    /// values. F16 and BF16 convert exactly (subnormals, ±inf, NaN); F64 rounds to nearest.
    /// Throws `.unsupportedDType` for integer/bool tensors, `.shapeMismatch` on a wrong count.
    public func copyAsFloat32(into destination: UnsafeMutableBufferPointer<Float>) throws(WeightsError) {
        guard dtype.isConvertibleToFloat32 else {
            throw WeightsError(
                .unsupportedDType, file: file.url.path, tensor: name,
                "dtype \(dtype.safetensorsName) cannot be converted to F32")
        }
        guard destination.count == elementCount else {
            throw WeightsError(
                .shapeMismatch, file: file.url.path, tensor: name,
                "destination holds \(destination.count) floats but the tensor has \(elementCount) elements")
        }
        Float32Conversion.convert(rawBytes, dtype: dtype, into: destination)
    }
}

/// Something tensors can be looked up in by name: a safetensors file or a sharded index.
public protocol TensorSource: Sendable {
    /// The path used in error messages (the file, or the index file).
    var displayPath: String { get }
    /// All tensor names, in a stable order.
    var tensorNames: [String] { get }
    /// Whether a tensor of that name exists (without opening shards).
    func contains(_ name: String) -> Bool
    /// The validated record for `name`, or nil if there is none. Throws only when a shard that
    /// should hold it cannot be opened or is invalid.
    func info(_ name: String) throws(WeightsError) -> TensorInfo?
}

extension TensorSource {
    /// The stored bytes of a tensor obtained from `info(_:)`.
    public func rawBytes(of info: TensorInfo) -> UnsafeRawBufferPointer { info.rawBytes }

    /// Zero-copy F32 view when `info` is F32 and aligned; nil otherwise.
    public func float32Pointer(_ info: TensorInfo) -> UnsafeBufferPointer<Float>? { info.float32Pointer }

    /// Converts F32/F16/BF16/F64 data to F32 into `into` (exactly `info.elementCount` values).
    public func copyAsFloat32(_ info: TensorInfo, into: UnsafeMutableBufferPointer<Float>) throws(WeightsError) {
        try info.copyAsFloat32(into: into)
    }

    /// `info(name)`, or a `.missingTensor` error naming the tensor and the file.
    public func require(_ name: String) throws(WeightsError) -> TensorInfo {
        guard let i = try info(name) else {
            throw WeightsError(.missingTensor, file: displayPath, tensor: name, "no such tensor in this file")
        }
        return i
    }
}
