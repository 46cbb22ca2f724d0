// Quantizers: bit-exact with PyPI gguf.quants (ggml's reference) on committed fixtures, F16/BF16 rounding,
// and quantize → dequantize error bounds.

import Foundation
import XCTest

@testable import MMapWeights

let ggufFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/gguf")

func floats(_ file: SafetensorsFile, _ name: String) throws -> [Float] {
    let info = try file.require(name)
    var out = [Float](repeating: 0, count: info.elementCount)
    try out.withUnsafeMutableBufferPointer { try info.copyAsFloat32(into: $0) }
    return out
}

func rawBytes(_ file: SafetensorsFile, _ name: String) throws -> [UInt8] {
    Array(try file.require(name).rawBytes)
}

final class QuantizeTests: XCTestCase {
    var cases: SafetensorsFile!

    override func setUpWithError() throws {
        cases = try SafetensorsFile(url: ggufFixtures.appendingPathComponent("quant-cases.safetensors"))
    }

    func testBlockQuantizersProduceTheSameBytesAsPythonGGUF() throws {
        let input = try floats(cases, "input")
        XCTAssertEqual(input.count % 32, 0)
        for type in [TensorType.q8_0, .q4_0, .q4_1, .q5_0, .q5_1] {
            let expected = try rawBytes(cases, type.name)
            let ours = Quantizer.quantize(input, to: type)
            XCTAssertEqual(ours.count, expected.count, type.name)
            let firstDiff = zip(ours, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
            XCTAssertNil(firstDiff, "\(type.name): first differing byte \(firstDiff ?? -1), block \((firstDiff ?? 0) / type.blockBytes)")
        }
    }

    func testF16ConversionMatchesPythonIncludingSubnormalsTiesAndOverflow() throws {
        XCTAssertEqual(Quantizer.quantize(try floats(cases, "f16_input"), to: .f16), try rawBytes(cases, "f16"))
        XCTAssertEqual(Quantizer.quantize(try floats(cases, "input"), to: .f16), try rawBytes(cases, "f16_from_input"))
    }

    func testBF16ConversionMatchesPythonIncludingNaNAndRounding() throws {
        XCTAssertEqual(Quantizer.quantize(try floats(cases, "bf16_input"), to: .bf16), try rawBytes(cases, "bf16"))
        XCTAssertEqual(Quantizer.quantize(try floats(cases, "input"), to: .bf16), try rawBytes(cases, "bf16_from_input"))
    }

    func testFloatToHalfInvertsHalfToFloatForEveryNonNaNHalf() {
        for h in 0...UInt16.max {
            let f = Float32Conversion.halfToFloat(h)
            if f.isNaN {
                XCTAssertEqual(Float32Conversion.floatToHalf(f) & 0x7E00, 0x7E00)
                continue
            }
            XCTAssertEqual(Float32Conversion.floatToHalf(f), h, "half 0x\(String(h, radix: 16))")
        }
    }

    #if !(os(macOS) && arch(x86_64))
        func testFloatToHalfRoundsLikeSwiftFloat16OnRandomBitPatterns() {
            var rng = SplitMix64(seed: 7)
            for _ in 0..<200_000 {
                let f = Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))
                if f.isNaN { continue }
                XCTAssertEqual(Float32Conversion.floatToHalf(f), Float16(f).bitPattern, "\(f)")
            }
        }
    #endif

    func testBFloat16RoundsToNearestEvenAndQuietsNaN() {
        XCTAssertEqual(Float32Conversion.floatToBFloat16(Float(bitPattern: 0x3F80_8000)), 0x3F80)  // tie → even
        XCTAssertEqual(Float32Conversion.floatToBFloat16(Float(bitPattern: 0x3F81_8000)), 0x3F82)  // tie → even
        XCTAssertEqual(Float32Conversion.floatToBFloat16(Float(bitPattern: 0x3F80_8001)), 0x3F81)
        XCTAssertEqual(Float32Conversion.floatToBFloat16(Float(bitPattern: 0x7F7F_FFFF)), 0x7F80)  // → inf
        XCTAssertEqual(Float32Conversion.floatToBFloat16(Float(bitPattern: 0x7F80_0001)), 0x7FC0)  // sNaN → qNaN
        XCTAssertEqual(Float32Conversion.floatToBFloat16(-.infinity), 0xFF80)
    }

    /// Largest |x − dequantize(quantize(x))| allowed in a block, from the format's step size.
    func errorBound(_ type: TensorType, _ block: ArraySlice<Float>) -> Float {
        let amax = block.map(abs).max() ?? 0
        let range = (block.max() ?? 0) - (block.min() ?? 0)
        let halfRounding = amax * 1.0e-3 + 1e-6  // d and m are stored as F16
        switch type {
        case .f32: return 0
        case .f16: return amax * Float(0x1p-11) + 6e-8
        case .bf16: return amax * Float(0x1p-8)
        case .q8_0: return amax / 127 * 0.5 + halfRounding
        case .q4_0: return amax / 8 + halfRounding  // the clipped side loses a whole step
        case .q4_1: return range / 15 * 0.5 + halfRounding
        case .q5_0: return amax / 16 + halfRounding
        case .q5_1: return range / 31 * 0.5 + halfRounding
        case .q4_K, .q5_K, .q6_K: return .nan  // read only: never quantized here
        }
    }

    func testQuantizeThenDequantizeStaysWithinEachFormatsStep() throws {
        var rng = SplitMix64(seed: 11)
        var values = (0..<(32 * 256)).map { _ in Float(Double(rng.next() % 2_000_001) / 1_000_000 - 1) }
        for b in stride(from: 0, to: values.count, by: 32 * 7) { values[b + 3] *= 50 }  // outliers
        values.replaceSubrange(0..<32, with: repeatElement(0, count: 32))
        for type in TensorType.allCases where type.isWritable {
            let q = Quantizer.quantize(values, to: type)
            var back = [Float](repeating: .nan, count: values.count)
            q.withUnsafeBytes { src in
                back.withUnsafeMutableBufferPointer { type.dequantize(src.baseAddress!, count: values.count, into: $0.baseAddress!) }
            }
            for b in 0..<(values.count / 32) {
                let block = values[(32 * b)..<(32 * b + 32)]
                let bound = errorBound(type, block)
                for j in block.indices {
                    XCTAssertLessThanOrEqual(abs(back[j] - values[j]), bound, "\(type.name) element \(j)")
                }
            }
            XCTAssertEqual(Array(back[0..<32]), [Float](repeating: 0, count: 32), "\(type.name): a zero block stays zero")
        }
    }

    func testNonFiniteInputsQuantizeWithoutTrapping() {
        var values = [Float](repeating: 1, count: 64)
        values[1] = .nan
        values[40] = .infinity
        values[41] = -.infinity
        for type in TensorType.allCases where type.isWritable {
            XCTAssertEqual(Quantizer.quantize(values, to: type).count, type.byteCount(elements: 64))
        }
    }
}
