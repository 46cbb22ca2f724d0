// GGUFFile: a GGUF (v2/v3, little-endian) file mapped read-only and validated against its size before
// use — header, metadata, tensor infos, alignment and every tensor's byte range — so a truncated or
// hostile file gives a WeightsError naming the file, tensor and field, never a crash.

import Foundation

/// One tensor of a GGUF file, validated: `byteRange` lies inside the data section and holds exactly
/// the bytes of `shape` in `type`'s layout.
public struct GGUFTensorInfo: Sendable, Equatable, CustomStringConvertible {
    public let name: String
    /// Extent of each dimension, outermost first (PyTorch order; GGUF's `ne` reversed).
    public let shape: [Int]
    public let type: TensorType
    /// Offset of the data relative to the start of the data section, as stored.
    public let relativeOffset: Int
    /// Absolute byte offsets of the data within the file.
    public let byteRange: Range<Int>

    /// GGUF's `ne`: innermost dimension first.
    public var dimensions: [Int] { shape.reversed() }
    public var elementCount: Int { shape.reduce(1, *) }

    public var description: String {
        "\(name): \(type.name) \(shape) @ \(byteRange.lowerBound)..<\(byteRange.upperBound)"
    }
}

/// A parsed, validated GGUF file over a read-only mapping.
public final class GGUFFile: @unchecked Sendable {
    // @unchecked: every stored property is immutable after init; MappedFile is Sendable.

    public let file: MappedFile
    /// 2 or 3 (same layout; v3 only added the big-endian marker, which is not supported).
    public let version: UInt32
    /// `general.alignment` (32 when absent).
    public let alignment: Int
    /// Metadata in file order.
    public let metadata: [(key: String, value: GGUFValue)]
    /// Tensor infos in file order.
    public let tensors: [GGUFTensorInfo]
    /// Absolute offset where the data section starts (aligned).
    public let dataOffset: Int
    private let metadataIndex: [String: Int]
    private let tensorIndex: [String: Int]

    public var url: URL { file.url }
    public var path: String { file.url.path }

    /// Maps and parses `url`. Throws `WeightsError` (.fileNotFound, .malformed, …) naming the file.
    public convenience init(url: URL) throws(WeightsError) {
        let mapped: MappedFile
        do { mapped = try MappedFile(url: url) } catch let e as WeightsError { throw e } catch {
            throw WeightsError(.unreadable, file: url.path, "\(error)")
        }
        try self.init(mapped: mapped)
    }

    /// Parses an already mapped file.
    public init(mapped: MappedFile) throws(WeightsError) {
        file = mapped
        var r = GGUFByteReader(bytes: mapped.bytes, path: mapped.url.path)
        let magic = try r.u32("magic")
        guard magic == GGUF.magic else {
            throw r.error("not a GGUF file (magic is 0x\(String(magic, radix: 16)), expected \"GGUF\")")
        }
        let version = try r.u32("version")
        if version == GGUF.version.byteSwapped || version == UInt32(2).byteSwapped {
            throw r.error("big-endian GGUF files are not supported")
        }
        guard version == 2 || version == 3 else {
            throw r.error("GGUF version \(version) is not supported (2 and 3 are)")
        }
        self.version = version
        let tensorCount = try r.count("tensor_count", minimumElementSize: 24)
        let kvCount = try r.count("metadata_kv_count", minimumElementSize: 13)

        var metadata: [(key: String, value: GGUFValue)] = []
        var metadataIndex: [String: Int] = [:]
        for i in 0..<kvCount {
            let key = try r.string("key of metadata entry \(i)")
            guard !key.isEmpty else { throw r.error("metadata entry \(i) has an empty key") }
            guard metadataIndex[key] == nil else { throw r.error("metadata key \"\(key)\" appears twice") }
            let rawType = try r.u32("type of \"\(key)\"")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw r.error("metadata \"\(key)\": unknown value type \(rawType)")
            }
            let value = try r.value(type, field: key, depth: 0)
            metadataIndex[key] = metadata.count
            metadata.append((key, value))
        }
        self.metadata = metadata
        self.metadataIndex = metadataIndex

        var alignment = GGUF.defaultAlignment
        if let i = metadataIndex["general.alignment"] {
            guard case .uint32(let a) = metadata[i].value else {
                throw r.error("metadata \"general.alignment\" must be a u32, found \(metadata[i].value.type.name)")
            }
            guard a > 0, a & (a - 1) == 0, a <= 1 << 30 else {
                throw r.error("metadata \"general.alignment\" is \(a), not a power of two")
            }
            alignment = Int(a)
        }
        self.alignment = alignment

        struct RawInfo {
            let name: String
            let shape: [Int]
            let type: TensorType
            let offset: Int
            let bytes: Int
        }
        var raw: [RawInfo] = []
        var tensorIndex: [String: Int] = [:]
        for i in 0..<tensorCount {
            let name = try r.string("name of tensor \(i)")
            guard !name.isEmpty else { throw r.error("tensor \(i) has an empty name") }
            guard tensorIndex[name] == nil else {
                throw WeightsError(.malformed, file: r.path, tensor: name, "tensor name appears twice")
            }
            let nDims = try r.u32("n_dims of \"\(name)\"")
            guard nDims <= UInt32(GGUF.maxDimensions) else {
                throw WeightsError(.malformed, file: r.path, tensor: name,
                                   "n_dims is \(nDims), more than \(GGUF.maxDimensions)")
            }
            var ne: [Int] = []
            var elements = 1
            for d in 0..<Int(nDims) {
                let v = try r.u64("ne[\(d)] of \"\(name)\"")
                guard v > 0, v <= UInt64(Int.max) else {
                    throw WeightsError(.malformed, file: r.path, tensor: name, "dimension ne[\(d)] is \(v)")
                }
                let (p, overflow) = elements.multipliedReportingOverflow(by: Int(v))
                guard !overflow else {
                    throw WeightsError(.malformed, file: r.path, tensor: name, "element count overflows")
                }
                elements = p
                ne.append(Int(v))
            }
            let rawType = try r.u32("type of \"\(name)\"")
            guard let type = TensorType(rawValue: rawType) else {
                throw WeightsError(.unsupportedDType, file: r.path, tensor: name,
                                   "ggml tensor type \(rawType) is not supported "
                                       + "(f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 are)")
            }
            let rowLength = ne.first ?? 1
            guard rowLength % type.blockSize == 0 else {
                throw WeightsError(.malformed, file: r.path, tensor: name,
                                   "rows of \(rowLength) elements are not whole \(type.name) blocks "
                                       + "of \(type.blockSize)")
            }
            guard let bytes = type.byteCount(elements: elements) else {
                throw WeightsError(.malformed, file: r.path, tensor: name, "byte size overflows")
            }
            let offset = try r.u64("offset of \"\(name)\"")
            guard offset <= UInt64(Int.max), Int(offset) % alignment == 0 else {
                throw WeightsError(.malformed, file: r.path, tensor: name,
                                   "offset \(offset) is not a multiple of the alignment \(alignment)")
            }
            tensorIndex[name] = raw.count
            raw.append(RawInfo(name: name, shape: ne.reversed(), type: type, offset: Int(offset), bytes: bytes))
        }
        self.tensorIndex = tensorIndex

        let headerEnd = r.offset
        let (padded, overflow) = headerEnd.addingReportingOverflow(alignment - 1)
        guard !overflow else { throw r.error("header size overflows") }
        let dataOffset = padded / alignment * alignment
        let size = mapped.size
        if !raw.isEmpty && dataOffset > size {
            throw r.error("file ends at \(size) bytes, before its data section (at \(dataOffset))")
        }
        self.dataOffset = dataOffset
        let dataSize = max(0, size - dataOffset)

        var infos: [GGUFTensorInfo] = []
        infos.reserveCapacity(raw.count)
        for t in raw {
            guard t.offset <= dataSize, t.bytes <= dataSize - t.offset else {
                throw WeightsError(.malformed, file: r.path, tensor: t.name,
                                   "data [\(t.offset), +\(t.bytes)) runs past the end of the data section "
                                       + "(\(dataSize) bytes; is the file truncated?)")
            }
            let start = dataOffset + t.offset
            infos.append(GGUFTensorInfo(name: t.name, shape: t.shape, type: t.type, relativeOffset: t.offset,
                                        byteRange: start..<(start + t.bytes)))
        }
        // No two tensors may share bytes.
        let sorted = infos.filter { !$0.byteRange.isEmpty }.sorted { $0.byteRange.lowerBound < $1.byteRange.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.byteRange.lowerBound < a.byteRange.upperBound {
            throw WeightsError(.malformed, file: r.path, tensor: b.name, "data overlaps tensor \"\(a.name)\"")
        }
        self.tensors = infos
    }

    /// The metadata value for `key`, if present.
    public func value(_ key: String) -> GGUFValue? {
        metadataIndex[key].map { metadata[$0].value }
    }

    /// The string value for `key`; throws `.malformed` naming the key if it is missing or not a string.
    public func string(_ key: String) throws(WeightsError) -> String {
        guard let v = value(key) else {
            throw WeightsError(.malformed, file: path, "metadata key \"\(key)\" is missing")
        }
        guard let s = v.stringValue else {
            throw WeightsError(.malformed, file: path, "metadata \"\(key)\" must be a string, found \(v.type.name)")
        }
        return s
    }

    /// The info for tensor `name`, if present.
    public func tensor(_ name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The stored bytes of `info` (a view into the mapping).
    public func bytes(of info: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        guard let base = file.bytes.baseAddress else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + info.byteRange.lowerBound, count: info.byteRange.count)
    }

    /// The tensor's values decoded to F32 (a copy), as ggml's dequantize_row_* gives them.
    public func dequantized(_ info: GGUFTensorInfo) -> [Float] {
        let n = info.elementCount
        var out = [Float](repeating: 0, count: n)
        let src = bytes(of: info)
        if let s = src.baseAddress, n > 0 {
            out.withUnsafeMutableBufferPointer { info.type.dequantize(s, count: n, into: $0.baseAddress!) }
        }
        return out
    }
}

/// A bounds-checked little-endian cursor over the header bytes.
struct GGUFByteReader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var offset = 0

    init(bytes: UnsafeRawBufferPointer, path: String) {
        self.bytes = bytes
        self.path = path
    }

    var remaining: Int { bytes.count - offset }

    func error(_ detail: String) -> WeightsError { WeightsError(.malformed, file: path, detail) }

    private mutating func take(_ n: Int, _ field: String) throws(WeightsError) -> UnsafeRawPointer {
        guard n >= 0, n <= remaining, let base = bytes.baseAddress else {
            throw error("truncated: \(field) needs \(n) bytes at offset \(offset), the file has \(bytes.count)")
        }
        defer { offset += n }
        return base + offset
    }

    mutating func fixed<T: FixedWidthInteger>(_: T.Type, _ field: String) throws(WeightsError) -> T {
        T(littleEndian: try take(MemoryLayout<T>.size, field).loadUnaligned(as: T.self))
    }

    mutating func u32(_ field: String) throws(WeightsError) -> UInt32 { try fixed(UInt32.self, field) }
    mutating func u64(_ field: String) throws(WeightsError) -> UInt64 { try fixed(UInt64.self, field) }

    /// A u64 count whose elements need at least `minimumElementSize` bytes each: larger than the
    /// bytes left could hold is an error, so no loop or allocation is driven by a bogus count.
    mutating func count(_ field: String, minimumElementSize: Int) throws(WeightsError) -> Int {
        let at = offset
        let n = try u64(field)
        guard n <= UInt64(remaining / max(minimumElementSize, 1)) else {
            throw error("\(field) at offset \(at) is \(n), more than the \(remaining) bytes left can hold")
        }
        return Int(n)
    }

    mutating func string(_ field: String) throws(WeightsError) -> String {
        let at = offset
        let n = try u64("length of \(field)")
        guard n <= UInt64(remaining) else {
            throw error(
                "\(field): string length \(n) at offset \(at) runs past the end of the file (\(bytes.count) bytes)")
        }
        let p = try take(Int(n), field)
        guard let s = String(validating: UnsafeRawBufferPointer(start: p, count: Int(n)), as: UTF8.self) else {
            throw error("\(field) at offset \(at) is not valid UTF-8")
        }
        return s
    }

    mutating func value(_ type: GGUFValueType, field: String, depth: Int) throws(WeightsError) -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try fixed(UInt8.self, field))
        case .int8: return .int8(try fixed(Int8.self, field))
        case .uint16: return .uint16(try fixed(UInt16.self, field))
        case .int16: return .int16(try fixed(Int16.self, field))
        case .uint32: return .uint32(try fixed(UInt32.self, field))
        case .int32: return .int32(try fixed(Int32.self, field))
        case .uint64: return .uint64(try fixed(UInt64.self, field))
        case .int64: return .int64(try fixed(Int64.self, field))
        case .float32: return .float32(Float(bitPattern: try fixed(UInt32.self, field)))
        case .float64: return .float64(Double(bitPattern: try fixed(UInt64.self, field)))
        case .bool:
            let b = try fixed(UInt8.self, field)
            guard b <= 1 else { throw error("metadata \"\(field)\": bool value \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case .string: return .string(try string("metadata \"\(field)\""))
        case .array: return .array(try array(field: field, depth: depth + 1))
        }
    }

    mutating func array(field: String, depth: Int) throws(WeightsError) -> GGUFArray {
        guard depth <= GGUF.maxArrayNesting else {
            throw error("metadata \"\(field)\": arrays nested deeper than \(GGUF.maxArrayNesting)")
        }
        let rawType = try u32("element type of \"\(field)\"")
        guard let type = GGUFValueType(rawValue: rawType) else {
            throw error("metadata \"\(field)\": unknown array element type \(rawType)")
        }
        let n = try count("count of \"\(field)\"", minimumElementSize: type.minimumEncodedSize)
        func scalars<T: FixedWidthInteger>(_: T.Type) throws(WeightsError) -> [T] {
            let p = try take(n * MemoryLayout<T>.size, "elements of \"\(field)\"")
            let size = MemoryLayout<T>.size
            return (0..<n).map { T(littleEndian: p.loadUnaligned(fromByteOffset: $0 * size, as: T.self)) }
        }
        switch type {
        case .uint8: return .uint8(try scalars(UInt8.self))
        case .int8: return .int8(try scalars(Int8.self))
        case .uint16: return .uint16(try scalars(UInt16.self))
        case .int16: return .int16(try scalars(Int16.self))
        case .uint32: return .uint32(try scalars(UInt32.self))
        case .int32: return .int32(try scalars(Int32.self))
        case .uint64: return .uint64(try scalars(UInt64.self))
        case .int64: return .int64(try scalars(Int64.self))
        case .float32: return .float32(try scalars(UInt32.self).map { Float(bitPattern: $0) })
        case .float64: return .float64(try scalars(UInt64.self).map { Double(bitPattern: $0) })
        case .bool:
            let raw = try scalars(UInt8.self)
            guard raw.allSatisfy({ $0 <= 1 }) else {
                throw error("metadata \"\(field)\": a bool element is neither 0 nor 1")
            }
            return .bool(raw.map { $0 == 1 })
        case .string:
            var out: [String] = []
            for i in 0..<n { out.append(try string("metadata \"\(field)\"[\(i)]")) }
            return .string(out)
        case .array:
            var out: [GGUFArray] = []
            for i in 0..<n { out.append(try array(field: "\(field)[\(i)]", depth: depth + 1)) }
            return .array(out)
        }
    }
}
