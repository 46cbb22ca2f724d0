// KQuantTests: the read-only k-quant decoders (Q4_K, Q5_K, Q6_K) — the Swift scalar reference and the type
// table's in CKernels — against PyPI gguf's dequantize, on a file that package wrote (tools/gguf/make_kquant_fixtures.py).
import XCTest
import MMapWeights
@testable import TiledKernels

final class KQuantTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/gguf")

    func testKQuantsDecodeToPythonGGUFsValuesExactly() throws {
        let gguf = try GGUFFile(url: Self.fixtures.appendingPathComponent("kquants.gguf"))
        let expected = try SafetensorsFile(url: Self.fixtures.appendingPathComponent("kquants.expected.safetensors"))
        for (name, type) in [("q4_k", TensorType.q4_K), ("q5_k", .q5_K), ("q6_k", .q6_K)] {
            let info = try XCTUnwrap(gguf.tensor(name), name)
            XCTAssertEqual(info.type, type)
            XCTAssertEqual(info.shape, [3, 512])
            let want = try XCTUnwrap(expected.info(name))
            var values = [Float](repeating: 0, count: want.elementCount)
            try values.withUnsafeMutableBufferPointer { try want.copyAsFloat32(into: $0) }
            // Same operations in the same order as ggml's reference (and gguf's numpy): exact equality.
            var reference = [Float](repeating: .nan, count: info.elementCount)
            reference.withUnsafeMutableBufferPointer { out in
                if let base = gguf.bytes(of: info).baseAddress {
                    type.referenceDequantize(base, count: info.elementCount, into: out.baseAddress!)
                }
            }
            XCTAssertEqual(reference, values, "\(name): Swift reference")
            let w = Weight(shape: info.shape, type: type, bytes: gguf.bytes(of: info), owner: gguf.file)
            XCTAssertEqual(w.dequantized(), values, "\(name): CKernels")
            XCTAssertEqual(Array(w.dequantized()[512..<1024]), Array(values[512..<1024]), "\(name): row 1")
        }
    }

    func testKQuantsAreReadOnly() throws {
        XCTAssertFalse(TensorType.q4_K.isWritable)
        var writer = GGUFWriter()
        XCTAssertThrowsError(try writer.addTensor("w", shape: [1, 256], values: [Float](repeating: 0, count: 256), as: .q6_K))
    }
}
