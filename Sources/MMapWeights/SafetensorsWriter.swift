// SafetensorsWriter: builds small .safetensors files (test fixtures, tools); the layout matches
// the reference writer: header padded with spaces to a multiple of 8, data contiguous in order.

import Foundation

/// Accumulates tensors and encodes them as a safetensors file.
public struct SafetensorsWriter: Sendable {
    private struct Entry: Sendable {
        let name: String
        let dtype: DType
        let shape: [Int]
        let bytes: [UInt8]
    }
    private var entries: [Entry] = []
    /// Written as `__metadata__` when non-empty.
    public var metadata: [String: String] = [:]

    public init() {}

    /// Adds a tensor from its raw little-endian bytes; `bytes.count` must equal
    /// product(shape) × dtype.byteSize.
    public mutating func add(_ name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
        precondition(
            bytes.count == shape.reduce(1, *) * dtype.byteSize,
            "SafetensorsWriter: \(bytes.count) bytes for \(dtype) \(shape)")
        entries.append(Entry(name: name, dtype: dtype, shape: shape, bytes: bytes))
    }

    /// Adds an F32 tensor.
    public mutating func add(_ name: String, shape: [Int], float32 values: [Float]) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(values.count * 4)
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
        add(name, dtype: .f32, shape: shape, bytes: bytes)
    }

    /// Adds a tensor of 16-bit elements (F16 or BF16 bit patterns).
    public mutating func add(_ name: String, dtype: DType, shape: [Int], bits16 values: [UInt16]) {
        precondition(dtype.byteSize == 2)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(values.count * 2)
        for v in values { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
        add(name, dtype: dtype, shape: shape, bytes: bytes)
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    out +=
                        "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count)
                        + String(u.value, radix: 16)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    /// The complete file bytes.
    public func encoded() -> [UInt8] {
        var parts: [String] = []
        if !metadata.isEmpty {
            let m = metadata.keys.sorted().map { "\(Self.jsonString($0)):\(Self.jsonString(metadata[$0]!))" }
            parts.append("\"__metadata__\":{\(m.joined(separator: ","))}")
        }
        var offset = 0
        for e in entries {
            let shape = e.shape.map(String.init).joined(separator: ",")
            parts.append(
                "\(Self.jsonString(e.name)):{\"dtype\":\"\(e.dtype.safetensorsName)\",\"shape\":[\(shape)],"
                    + "\"data_offsets\":[\(offset),\(offset + e.bytes.count)]}")
            offset += e.bytes.count
        }
        var header = Array("{\(parts.joined(separator: ","))}".utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var out: [UInt8] = []
        out.reserveCapacity(8 + header.count + offset)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
        out += header
        for e in entries { out += e.bytes }
        return out
    }

    /// Writes `encoded()` to `url` (not atomically; for fixtures and tools).
    public func write(to url: URL) throws {
        try Data(encoded()).write(to: url)
    }
}
