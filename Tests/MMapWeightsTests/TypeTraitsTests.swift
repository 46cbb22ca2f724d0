// TypeTraitsTests: the type table (CKernels' TypeTraits.c) against ggml's own type_traits sizes, TensorType's cases
// against the table's rows, and every encoder's round trip within the bound its row states.
import CKernels
import Foundation
import XCTest

@testable import MMapWeights

final class TypeTraitsTests: XCTestCase {
    /// ggml's type_traits (ggml/src/ggml.c: blck_size, type_size = sizeof(block_*)) and gguf-py's
    /// GGML_QUANT_SIZES: id, name, elements per block, bytes per block.
    static let ggml: [(id: UInt32, name: String, elements: Int, bytes: Int)] = [
        (0, "f32", 1, 4), (1, "f16", 1, 2), (2, "q4_0", 32, 18), (3, "q4_1", 32, 20), (6, "q5_0", 32, 22),
        (7, "q5_1", 32, 24), (8, "q8_0", 32, 34), (12, "q4_k", 256, 144), (13, "q5_k", 256, 176),
        (14, "q6_k", 256, 210), (30, "bf16", 1, 2),
    ]

    func testTableSizesMatchGGMLsTypeTraits() throws {
        for t in Self.ggml {
            let row = try XCTUnwrap(ck_type_traits_of(t.id), "no row for ggml type \(t.id)").pointee
            XCTAssertEqual(row.type, t.id)
            XCTAssertEqual(String(cString: row.name), t.name)
            XCTAssertEqual(Int(row.block_elements), t.elements, t.name)
            XCTAssertEqual(Int(row.block_bytes), t.bytes, t.name)
            let type = try XCTUnwrap(TensorType(rawValue: t.id))
            XCTAssertEqual(type.name, t.name)
            XCTAssertEqual(type.blockSize, t.elements, t.name)
            XCTAssertEqual(type.blockBytes, t.bytes, t.name)
            XCTAssertEqual(type.isQuantized, t.elements > 1, t.name)
        }
    }

    func testEveryRowHasACaseAndEveryCaseARow() {
        var rows: [UInt32] = []
        for id in 0..<UInt32(CK_TYPE_ID_LIMIT) where ck_type_traits_of(id) != nil {
            rows.append(id)
            XCTAssertEqual(ck_type_traits_of(id)?.pointee.type, id, "row \(id) names another id")
            XCTAssertNotNil(ck_type_traits_of(id)?.pointee.to_float, "row \(id) has no decoder")
        }
        XCTAssertEqual(rows, TensorType.allCases.map(\.rawValue).sorted())
        XCTAssertNil(ck_type_traits_of(UInt32(CK_TYPE_ID_LIMIT)))
        XCTAssertNil(ck_type_traits_of(4))  // ggml's removed Q4_2
        XCTAssertEqual(TensorType.allCases.filter(\.isWritable).map(\.name).sorted(),
                       ["bf16", "f16", "f32", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
        XCTAssertEqual(TensorType.q8_0.llamaFileType, 7)  // LLAMA_FTYPE_MOSTLY_Q8_0
    }

    func testEveryEncoderRoundTripsWithinItsStatedBound() throws {
        // Blocks of 32 at scales 10^-2 … 10^2, each element at least 1% of its block's scale (so F16 and BF16
        // values, and the F16 scales the quantizers store, stay normal numbers as the bounds assume), every
        // seventh block with a ×50 outlier, and one all-zero block.
        var rng = SplitMix64(seed: 23)
        func unit() -> Float { Float(Double(rng.next() >> 11) / Double(1 << 53)) }
        var values: [Float] = []
        for b in 0..<256 {
            let scale = Float(Foundation.pow(10.0, Double(4 * unit() - 2)))
            for j in 0..<32 {
                let sign: Float = rng.next() & 1 == 0 ? 1 : -1
                values.append(b == 5 ? 0 : sign * scale * (j == 0 ? 1 : 0.01 + 0.99 * unit()))
            }
            if b % 7 == 3 { values[32 * b + 9] *= 50 }
        }
        var checked = 0
        for type in TensorType.allCases {
            guard let bound = type.roundTripBound else {
                XCTAssertEqual(ck_quantize(type.rawValue, values, 256, nil), -1, "\(type.name) has no encoder")
                continue
            }
            let bytes = Quantizer.quantize(values, to: type)
            XCTAssertEqual(bytes.count, type.byteCount(elements: values.count))
            var back = [Float](repeating: .nan, count: values.count)
            bytes.withUnsafeBytes { src in
                back.withUnsafeMutableBufferPointer { type.dequantize(src.baseAddress!, count: values.count, into: $0.baseAddress!) }
            }
            let block = type.blockSize
            var worst: Float = 0
            for b in 0..<(values.count / block) {
                let range = (block * b)..<(block * b + block)
                let amax = values[range].map(abs).max() ?? 0
                for j in range {
                    let error = abs(back[j] - values[j])
                    XCTAssertLessThanOrEqual(error, bound * amax, "\(type.name) element \(j) of block max \(amax)")
                    if amax > 0 { worst = max(worst, error / amax) }
                }
            }
            // The bound is the format's step, not a loose cap: random data comes within a factor of 4 of it.
            if type != .f32 { XCTAssertGreaterThan(worst, bound / 4, "\(type.name): worst \(worst), bound \(bound)") }
            checked += 1
        }
        XCTAssertEqual(checked, 8)
    }

    func testQuantizeRefusesUnknownTypesAndPartialBlocks() {
        let values = [Float](repeating: 1, count: 33)
        var out = [UInt8](repeating: 0, count: 64)
        out.withUnsafeMutableBytes { y in
            XCTAssertEqual(ck_quantize(99, values, 32, y.baseAddress), -1)
            XCTAssertEqual(ck_quantize(TensorType.q8_0.rawValue, values, 33, y.baseAddress), -1)
            XCTAssertEqual(ck_quantize(TensorType.q8_0.rawValue, values, 32, y.baseAddress), 0)
        }
        XCTAssertEqual(Array(out[34...]), [UInt8](repeating: 0, count: 30), "one block written, no more")
    }
}
