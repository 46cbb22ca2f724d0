// GGUF reader and writer: round trips of every value and tensor type, ggml's layout and alignment, the
// streaming writer, and files written by PyPI's gguf package (committed fixtures, no Python needed).

import Foundation
import XCTest

@testable import MMapWeights

/// One metadata entry of every value type, arrays of every element type, nested and empty arrays.
let everyValue: [(String, GGUFValue)] = [
    ("t.u8", .uint8(250)), ("t.i8", .int8(-128)), ("t.u16", .uint16(65535)), ("t.i16", .int16(-32768)),
    ("t.u32", .uint32(4_000_000_000)), ("t.i32", .int32(-2_000_000_000)), ("t.f32", .float32(-1.5e-7)),
    ("t.bool", .bool(true)), ("t.string", .string("héllo ✓ \n\"quoted\"")), ("t.empty", .string("")),
    ("t.u64", .uint64(.max)), ("t.i64", .int64(.min)), ("t.f64", .float64(.pi)),
    ("a.u8", .array(.uint8([0, 1, 255]))), ("a.i8", .array(.int8([-1, 127]))),
    ("a.u16", .array(.uint16([1, 65535]))), ("a.i16", .array(.int16([-3, 3]))),
    ("a.u32", .array(.uint32([7]))), ("a.i32", .array(.int32([-7, 0]))), ("a.f32", .array(.float32([0.25, -.infinity]))),
    ("a.bool", .array(.bool([true, false]))), ("a.string", .array(.string(["x", "", "ÿ"]))),
    ("a.u64", .array(.uint64([.max]))), ("a.i64", .array(.int64([.min, 5]))), ("a.f64", .array(.float64([1e300]))),
    ("a.nested", .array(.array([.int32([1, 2]), .string(["in"]), .array([.bool([true])])]))),
    ("a.empty", .array(.float32([]))),
]

func metadataEqual(_ a: GGUFValue?, _ b: GGUFValue) -> Bool { a == b }

final class GGUFTests: XCTestCase {
    func write(_ w: GGUFWriter, _ name: String = "t.gguf") throws -> URL {
        let url = try makeScratchDirectory(self).appendingPathComponent(name)
        try w.write(to: url)
        return url
    }

    func testEveryMetadataValueTypeRoundTrips() throws {
        var w = GGUFWriter()
        for (k, v) in everyValue { w.set(k, v) }
        let f = try GGUFFile(url: try write(w))
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.metadata.map(\.key), everyValue.map(\.0), "file order kept")
        for (k, v) in everyValue { XCTAssertEqual(f.value(k), v, k) }
        XCTAssertTrue(f.tensors.isEmpty)
    }

    func testEveryTensorTypeRoundTripsWithReversedDimsAndAlignedOffsets() throws {
        for alignment in [32, 64, 4096] {
            var w = GGUFWriter(alignment: alignment)
            var rng = SplitMix64(seed: UInt64(alignment))
            var expected: [String: [UInt8]] = [:]
            for type in TensorType.allCases where type.isWritable {
                let shape = [3, 2, 64]
                let values = (0..<(3 * 2 * 64)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 300 }
                let t = try w.addTensor("w.\(type.name)", shape: shape, values: values, as: type)
                expected[t.name] = Quantizer.quantize(values, to: type)
            }
            try w.addTensor("odd", shape: [5], values: [1, 2, 3, 4, 5], as: .f32)  // not a multiple of the alignment
            try w.addTensor("after", shape: [1, 32], values: [Float](repeating: 1.984375, count: 32), as: .q8_0)  // 127 · 2⁻⁶: exact
            let url = try write(w)
            let f = try GGUFFile(url: url)
            XCTAssertEqual(f.alignment, alignment)
            XCTAssertEqual(f.dataOffset % alignment, 0)
            XCTAssertEqual(f.file.size, f.dataOffset + w.dataSize, "data padded after every tensor, as ggml does")
            for type in TensorType.allCases where type.isWritable {
                let info = try XCTUnwrap(f.tensor("w.\(type.name)"))
                XCTAssertEqual(info.type, type)
                XCTAssertEqual(info.shape, [3, 2, 64])
                XCTAssertEqual(info.dimensions, [64, 2, 3])
                XCTAssertEqual(info.byteRange.lowerBound % alignment, 0)
                XCTAssertEqual(Array(f.bytes(of: info)), expected[info.name])
            }
            XCTAssertEqual(f.dequantized(try XCTUnwrap(f.tensor("odd"))), [1, 2, 3, 4, 5])
            XCTAssertEqual(f.dequantized(try XCTUnwrap(f.tensor("after"))), [Float](repeating: 1.984375, count: 32))
        }
    }

    func testStreamedFileIsByteIdenticalToTheEncodedOne() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("x"))
        let a = (0..<64).map { Float($0) }
        try w.addTensor("a", shape: [2, 32], values: a, as: .q4_1)
        try w.addTensor("b", shape: [3], values: [1, 2, 3], as: .f16)
        var declared = GGUFWriter()
        declared.set("general.architecture", .string("x"))
        try declared.addTensor("a", shape: [2, 32], type: .q4_1)
        try declared.addTensor("b", shape: [3], type: .f16)
        let url = try makeScratchDirectory(self).appendingPathComponent("s.gguf")
        try declared.stream(to: url) { t, sink in
            let bytes = Quantizer.quantize(t.name == "a" ? a : [1, 2, 3], to: t.type)
            try bytes.withUnsafeBytes { try sink.write($0) }
        }
        XCTAssertEqual([UInt8](try Data(contentsOf: url)), try w.encoded())
    }

    func testAStreamThatFailsLeavesNoFileBehind() throws {
        var w = GGUFWriter()
        try w.addTensor("a", shape: [4], type: .f32)
        let dir = try makeScratchDirectory(self)
        let url = dir.appendingPathComponent("x.gguf")
        XCTAssertThrowsError(try w.stream(to: url) { _, sink in
            try [UInt8](repeating: 0, count: 3).withUnsafeBytes { try sink.write($0) }  // one byte short
        }) { XCTAssertTrue("\($0)".contains("\"a\""), "\($0)") }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [])
    }

    func testWriterRejectsRowsThatAreNotWholeBlocksAndDuplicateNames() throws {
        var w = GGUFWriter()
        XCTAssertThrowsError(try w.addTensor("c", shape: [4, 3, 3], type: .q8_0))
        XCTAssertThrowsError(try w.addTensor("z", shape: [4, 0], type: .f32))
        XCTAssertThrowsError(try w.addTensor("d", shape: [1, 1, 1, 1, 1], type: .f32))
        try w.addTensor("ok", shape: [4, 32], type: .q8_0)
        XCTAssertThrowsError(try w.addTensor("ok", shape: [4], type: .f32))
    }

    // MARK: files written by PyPI's gguf package (tools/gguf/make_gguf_fixtures.py)

    func testReadsEveryMetadataTypeThePythonWriterWrote() throws {
        let f = try GGUFFile(url: ggufFixtures.appendingPathComponent("python-written.gguf"))
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.alignment, 32)
        let expected: [(String, GGUFValue)] = [
            ("general.architecture", .string("sdd-test")),
            ("test.u8", .uint8(200)), ("test.i8", .int8(-100)), ("test.u16", .uint16(60000)),
            ("test.i16", .int16(-30000)), ("test.u32", .uint32(4_000_000_000)), ("test.i32", .int32(-2_000_000_000)),
            ("test.f32", .float32(1.5)), ("test.bool", .bool(true)), ("test.string", .string("héllo, GGUF ✓")),
            ("test.u64", .uint64(18_000_000_000_000_000_000)), ("test.i64", .int64(-9_000_000_000_000_000_000)),
            ("test.f64", .float64(2.718281828459045)),
            ("test.arr_u8", .array(.uint8([1, 2, 255]))), ("test.arr_i16", .array(.int16([-1, 2, -3]))),
            ("test.arr_i32", .array(.int32([-1, 0, 7]))), ("test.arr_f32", .array(.float32([0.5, -1.25]))),
            ("test.arr_f64", .array(.float64([0.1, 1e300]))), ("test.arr_u64", .array(.uint64([0, .max]))),
            ("test.arr_bool", .array(.bool([true, false, true]))), ("test.arr_str", .array(.string(["a", "", "ünï"]))),
            ("test.arr_nested", .array(.array([.int32([1, 2]), .int32([3])]))),
        ]
        XCTAssertEqual(f.metadata.map(\.key), expected.map(\.0))
        for (k, v) in expected { XCTAssertEqual(f.value(k), v, k) }
    }

    func checkTensorsMatchPythonDequantization(_ name: String, alignment: Int) throws -> Int {
        let f = try GGUFFile(url: ggufFixtures.appendingPathComponent("\(name).gguf"))
        let expected = try SafetensorsFile(url: ggufFixtures.appendingPathComponent("\(name).expected.safetensors"))
        XCTAssertEqual(f.alignment, alignment)
        XCTAssertEqual(Set(f.tensors.map(\.name)), Set(expected.tensorNames))
        for t in f.tensors {
            let e = try expected.require(t.name)
            XCTAssertEqual(t.shape, e.shape, t.name)
            XCTAssertEqual(t.byteRange.lowerBound % alignment, 0)
            let ours = f.dequantized(t)
            let theirs = try floats(expected, t.name)
            XCTAssertEqual(ours.map(\.bitPattern), theirs.map(\.bitPattern), "\(t.name) differs from gguf.quants.dequantize")
        }
        return f.tensors.count
    }

    func testTensorsThePythonWriterWroteDequantizeToPythonsValues() throws {
        let n = try checkTensorsMatchPythonDequantization("python-written", alignment: 32)
        XCTAssertEqual(n, 24, "8 types × 3 shapes")
    }

    func testPythonFileWithCustomAlignmentIsHonoured() throws {
        _ = try checkTensorsMatchPythonDequantization("python-aligned64", alignment: 64)
    }

    func testRewritingThePythonFileGivesIdenticalBytes() throws {
        let url = ggufFixtures.appendingPathComponent("python-written.gguf")
        let f = try GGUFFile(url: url)
        var w = GGUFWriter()
        for (k, v) in f.metadata { w.set(k, v) }
        for t in f.tensors { try w.addTensor(t.name, shape: t.shape, type: t.type, bytes: Array(f.bytes(of: t))) }
        XCTAssertEqual(try w.encoded(), [UInt8](try Data(contentsOf: url)), "same layout as gguf's GGUFWriter")
    }
}
