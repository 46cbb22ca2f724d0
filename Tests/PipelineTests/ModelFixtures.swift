// Test support for the model parity tests: paths to the committed tiny model and reference
// fixtures (written by tools/reference/make_reference.py with diffusers), and comparison metrics.

import Foundation
import MMapWeights
import Pipeline
import TiledKernels
import XCTest

enum ModelFixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let tinyModel = root.appendingPathComponent("tiny-sd")
    static let reference = root.appendingPathComponent("reference")

    /// Every tensor of a reference .safetensors file, as F32.
    static func tensors(_ name: String) throws -> [String: Tensor] {
        let file = try SafetensorsFile(url: reference.appendingPathComponent(name))
        var out: [String: Tensor] = [:]
        for info in file.allInfos {
            var values = [Float](repeating: 0, count: info.elementCount)
            try values.withUnsafeMutableBufferPointer { try info.copyAsFloat32(into: $0) }
            out[info.name] = Tensor(shape: info.shape, data: values)
        }
        return out
    }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: reference.appendingPathComponent(name))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }
}

/// max |a − b| / max |b|: the relative error the parity tests bound.
func relativeMaxError(_ a: Tensor, _ b: Tensor) -> Float {
    precondition(a.shape == b.shape, "shapes \(a.shape) vs \(b.shape)")
    var diff: Float = 0
    var scale: Float = 0
    for i in 0..<a.count {
        diff = max(diff, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return diff / max(scale, 1e-30)
}

/// Peak signal-to-noise ratio of two 8-bit images, in dB (infinity when identical).
func psnr(_ a: [UInt8], _ b: [UInt8]) -> Double {
    precondition(a.count == b.count)
    var sum = 0.0
    for i in 0..<a.count {
        let d = Double(a[i]) - Double(b[i])
        sum += d * d
    }
    if sum == 0 { return .infinity }
    return 10 * log10(255 * 255 / (sum / Double(a.count)))
}
