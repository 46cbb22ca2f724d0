// Test support for the sampling tests (tokenizer, RNG, schedulers): fixture paths, a tiny
// F32 safetensors reader (independent of MMapWeights), and JSON loading.
import Foundation
import XCTest

enum SamplingFixtures {
    /// Tests/Fixtures.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let reference = root.appendingPathComponent("reference")
    static let tokenizer = root.appendingPathComponent("tiny-sd").appendingPathComponent("tokenizer")

    struct Array32 {
        var shape: [Int]
        var values: [Float]
    }

    /// Every F32 tensor of a .safetensors file (8-byte little-endian header length, JSON header,
    /// then raw little-endian data).
    static func safetensors(_ name: String) throws -> [String: Array32] {
        let url = reference.appendingPathComponent(name)
        let data = try Data(contentsOf: url)
        let bytes = [UInt8](data)
        guard bytes.count >= 8 else { throw SamplingFixtureError("\(name): too short") }
        var headerLength = 0
        for i in 0..<8 { headerLength |= Int(bytes[i]) << (8 * i) }
        guard 8 + headerLength <= bytes.count,
            let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)])) as? [String: Any]
        else { throw SamplingFixtureError("\(name): bad header") }
        let base = 8 + headerLength
        var out = [String: Array32]()
        for (key, value) in header where key != "__metadata__" {
            guard let entry = value as? [String: Any], entry["dtype"] as? String == "F32",
                let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2
            else { throw SamplingFixtureError("\(name): tensor \(key) is not F32") }
            let start = base + offsets[0]
            let end = base + offsets[1]
            guard end <= bytes.count, (end - start) == 4 * shape.reduce(1, *) else {
                throw SamplingFixtureError("\(name): tensor \(key) out of range")
            }
            var values = [Float](repeating: 0, count: (end - start) / 4)
            for i in values.indices {
                let o = start + 4 * i
                let bits = UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16
                    | UInt32(bytes[o + 3]) << 24
                values[i] = Float(bitPattern: bits)
            }
            out[key] = Array32(shape: shape, values: values)
        }
        return out
    }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: reference.appendingPathComponent(name))
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw SamplingFixtureError("\(name): not a JSON object")
        }
        return object
    }
}

struct SamplingFixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
