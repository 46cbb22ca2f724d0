// SafetensorsFile: round trips for every dtype, exact F16/BF16 conversion, zero-copy F32,
// and a clear WeightsError for each kind of malformed header.

import Foundation
import XCTest

@testable import MMapWeights

final class SafetensorsTests: XCTestCase {
    // MARK: round trips

    func testEveryDTypeRoundTripsItsBytesShapeAndName() throws {
        let dir = try makeScratchDirectory(self)
        var w = SafetensorsWriter()
        var expected: [(String, DType, [Int], [UInt8])] = []
        for (i, dtype) in DType.allCases.enumerated() {
            let shape = [2, i % 3 + 1]
            let count = shape.reduce(1, *) * dtype.byteSize
            let bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 * 13 + i) }
            let name = "t.\(dtype.safetensorsName.lowercased())"
            w.add(name, dtype: dtype, shape: shape, bytes: bytes)
            expected.append((name, dtype, shape, bytes))
        }
        w.metadata = ["format": "pt", "note": "héllo \"quoted\"\n"]
        let f = try SafetensorsFile(url: try writeFile(w.encoded(), dir, "all.safetensors"))
        XCTAssertEqual(f.tensorNames, expected.map(\.0))
        XCTAssertEqual(f.metadata, w.metadata)
        for (name, dtype, shape, bytes) in expected {
            let info = try XCTUnwrap(f.info(name))
            XCTAssertEqual(info.dtype, dtype)
            XCTAssertEqual(info.shape, shape)
            XCTAssertEqual(Array(f.rawBytes(of: info)), bytes)
            XCTAssertTrue(f.dataRange.contains(info.byteRange.lowerBound))
        }
        XCTAssertNil(f.info("absent"))
        XCTAssertThrowsError(try f.require("absent")) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .missingTensor)
            XCTAssertTrue("\(e)".contains("\"absent\""))
        }
    }

    /// Bytes written by Python's `safetensors.numpy.save` (0.x) for six dtypes and metadata.
    static let pythonWritten = """
        mAEAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJub3RlIjoiaMOpbGxvIiwiZm9ybWF0IjoicHQifSwiYy5pNjQiOnsiZHR5cGUiOiJJ
        NjQiLCJzaGFwZSI6WzJdLCJkYXRhX29mZnNldHMiOlswLDE2XX0sImYuZjY0Ijp7ImR0eXBlIjoiRjY0Iiwic2hhcGUiOlsxXSwi
        ZGF0YV9vZmZzZXRzIjpbMTYsMjRdfSwiYS5mMzIiOnsiZHR5cGUiOiJGMzIiLCJzaGFwZSI6WzIsMl0sImRhdGFfb2Zmc2V0cyI6
        WzI0LDQwXX0sImIuZjE2Ijp7ImR0eXBlIjoiRjE2Iiwic2hhcGUiOlszXSwiZGF0YV9vZmZzZXRzIjpbNDAsNDZdfSwiZC51OCI6
        eyJkdHlwZSI6IlU4Iiwic2hhcGUiOlsxXSwiZGF0YV9vZmZzZXRzIjpbNDYsNDddfSwiZS5ib29sIjp7ImR0eXBlIjoiQk9PTCIs
        InNoYXBlIjpbMl0sImRhdGFfb2Zmc2V0cyI6WzQ3LDQ5XX19ICAgICD//////////wAAAAAAAQAAmpmZmZmZuT8AAMA/AAAAwAAA
        gD4AAEBAADwAuP97BwEA
        """

    func testReadsAFileWrittenByPythonSafetensors() throws {
        let dir = try makeScratchDirectory(self)
        let bytes = [UInt8](try XCTUnwrap(Data(base64Encoded: Self.pythonWritten, options: .ignoreUnknownCharacters)))
        let f = try SafetensorsFile(url: try writeFile(bytes, dir, "py.safetensors"))
        XCTAssertEqual(f.metadata, ["format": "pt", "note": "héllo"])
        XCTAssertEqual(f.tensorNames, ["c.i64", "f.f64", "a.f32", "b.f16", "d.u8", "e.bool"])
        func floats(_ name: String) throws -> [Float] {
            let info = try XCTUnwrap(f.info(name))
            var out = [Float](repeating: .nan, count: info.elementCount)
            try out.withUnsafeMutableBufferPointer { try f.copyAsFloat32(info, into: $0) }
            return out
        }
        XCTAssertEqual(try floats("a.f32"), [1.5, -2, 0.25, 3])
        XCTAssertEqual(try XCTUnwrap(f.info("a.f32")).shape, [2, 2])
        XCTAssertEqual(try floats("b.f16"), [1, -0.5, 65504])
        XCTAssertEqual(try floats("f.f64"), [Float(0.1)])
        XCTAssertEqual(
            Array(f.rawBytes(of: try XCTUnwrap(f.info("c.i64")))),
            littleEndianBytes(Int64(-1)) + littleEndianBytes(Int64(1) << 40))
        XCTAssertEqual(Array(f.rawBytes(of: try XCTUnwrap(f.info("e.bool")))), [1, 0])
    }

    func testF32IsZeroCopyIntoTheMapping() throws {
        let dir = try makeScratchDirectory(self)
        var w = SafetensorsWriter()
        w.add("w", shape: [3], float32: [1, 2, 3])
        let f = try SafetensorsFile(url: try writeFile(w.encoded(), dir, "f.safetensors"))
        let info = try XCTUnwrap(f.info("w"))
        let p = try XCTUnwrap(f.float32Pointer(info))
        XCTAssertEqual(Array(p), [1, 2, 3])
        XCTAssertEqual(UnsafeRawPointer(p.baseAddress!), f.file.bytes.baseAddress! + info.byteRange.lowerBound)
    }

    func testUnalignedF32HasNoPointerButConverts() throws {
        let dir = try makeScratchDirectory(self)
        var w = SafetensorsWriter()
        w.add("pad", dtype: .f16, shape: [1], bits16: [0x3C00])  // 2 bytes: the next tensor is misaligned
        w.add("w", shape: [2], float32: [-1.25, 7])
        let f = try SafetensorsFile(url: try writeFile(w.encoded(), dir, "u.safetensors"))
        let info = try XCTUnwrap(f.info("w"))
        XCTAssertEqual(info.byteRange.lowerBound % 4, 2)
        XCTAssertNil(f.float32Pointer(info))
        var out = [Float](repeating: 0, count: 2)
        try out.withUnsafeMutableBufferPointer { try f.copyAsFloat32(info, into: $0) }
        XCTAssertEqual(out, [-1.25, 7])
    }

    func testF16SpecialValuesConvertExactly() throws {
        let cases: [(UInt16, Float)] = [
            (0x0000, 0), (0x8000, -0.0), (0x3C00, 1), (0xC000, -2), (0x7BFF, 65504),
            (0x0001, Float(sign: .plus, exponent: -24, significand: 1)),  // smallest subnormal
            (0x03FF, Float(1023) * Float(sign: .plus, exponent: -24, significand: 1)),  // largest subnormal
            (0x0400, Float(sign: .plus, exponent: -14, significand: 1)),  // smallest normal
            (0x7C00, .infinity), (0xFC00, -.infinity), (0x3555, 0.333251953125),
        ]
        let dir = try makeScratchDirectory(self)
        var w = SafetensorsWriter()
        w.add("h", dtype: .f16, shape: [cases.count + 2], bits16: cases.map(\.0) + [0x7E00, 0xFD01])
        let f = try SafetensorsFile(url: try writeFile(w.encoded(), dir, "h.safetensors"))
        let info = try XCTUnwrap(f.info("h"))
        XCTAssertNil(f.float32Pointer(info))
        var out = [Float](repeating: 0, count: cases.count + 2)
        try out.withUnsafeMutableBufferPointer { try f.copyAsFloat32(info, into: $0) }
        for (i, (bits, value)) in cases.enumerated() {
            XCTAssertEqual(out[i].bitPattern, value.bitPattern, "half 0x\(String(bits, radix: 16))")
        }
        XCTAssertTrue(out[cases.count].isNaN)
        XCTAssertTrue(out[cases.count + 1].isNaN)
        XCTAssertEqual(out[cases.count + 1].sign, .minus)
    }

    #if arch(x86_64) || arch(arm64)
        func testHalfConversionMatchesFloat16ForAllBitPatterns() {
            for bits in 0...UInt16.max {
                let mine = Float32Conversion.halfToFloat(bits)
                let reference = Float(Float16(bitPattern: bits))
                if reference.isNaN {
                    XCTAssertTrue(mine.isNaN, "0x\(String(bits, radix: 16))")
                    XCTAssertEqual(mine.sign, reference.sign)
                } else if mine.bitPattern != reference.bitPattern {
                    XCTFail("0x\(String(bits, radix: 16)): \(mine) != \(reference)")
                    return
                }
            }
        }
    #endif

    func testBF16IsTheUpperHalfOfF32() throws {
        let values: [Float] = [1, -2, 0.15625, .infinity, -.infinity, Float(bitPattern: 0x0001_0000), 3.0e38]
        let dir = try makeScratchDirectory(self)
        var w = SafetensorsWriter()
        w.add("b", dtype: .bf16, shape: [values.count], bits16: values.map { UInt16($0.bitPattern >> 16) })
        let f = try SafetensorsFile(url: try writeFile(w.encoded(), dir, "b.safetensors"))
        let info = try XCTUnwrap(f.info("b"))
        var out = [Float](repeating: 0, count: values.count)
        try out.withUnsafeMutableBufferPointer { try f.copyAsFloat32(info, into: $0) }
        XCTAssertEqual(out.map(\.bitPattern), values.map { $0.bitPattern & 0xFFFF_0000 })
    }

    func testF64RoundsToNearestFloat() throws {
        let values: [Double] = [0.1, -1e-3, 1e300, 1.0000000596046448]
        let dir = try makeScratchDirectory(self)
        var w = SafetensorsWriter()
        w.add("d", dtype: .f64, shape: [values.count], bytes: values.flatMap { littleEndianBytes($0.bitPattern) })
        let f = try SafetensorsFile(url: try writeFile(w.encoded(), dir, "d.safetensors"))
        let info = try XCTUnwrap(f.info("d"))
        var out = [Float](repeating: 0, count: values.count)
        try out.withUnsafeMutableBufferPointer { try f.copyAsFloat32(info, into: $0) }
        XCTAssertEqual(out, values.map { Float($0) })
    }

    func testIntegerTensorsRefuseFloatConversion() throws {
        let dir = try makeScratchDirectory(self)
        var w = SafetensorsWriter()
        w.add("i", dtype: .i64, shape: [1], bytes: littleEndianBytes(Int64(5)))
        let f = try SafetensorsFile(url: try writeFile(w.encoded(), dir, "i.safetensors"))
        let info = try XCTUnwrap(f.info("i"))
        var out = [Float](repeating: 0, count: 1)
        XCTAssertThrowsError(try out.withUnsafeMutableBufferPointer { try f.copyAsFloat32(info, into: $0) }) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .unsupportedDType)
            XCTAssertTrue("\(e)".contains("\"i\"") && "\(e)".contains("I64"), "\(e)")
        }
    }

    func testWrongDestinationSizeThrows() throws {
        let dir = try makeScratchDirectory(self)
        var w = SafetensorsWriter()
        w.add("w", shape: [3], float32: [1, 2, 3])
        let f = try SafetensorsFile(url: try writeFile(w.encoded(), dir, "w.safetensors"))
        var out = [Float](repeating: 0, count: 2)
        XCTAssertThrowsError(try out.withUnsafeMutableBufferPointer { try f.copyAsFloat32(f.info("w")!, into: $0) })
    }

    func testZeroSizedTensorsAreAllowed() throws {
        let dir = try makeScratchDirectory(self)
        var w = SafetensorsWriter()
        w.add("empty", dtype: .f32, shape: [0, 4], bytes: [])
        w.add("scalar", shape: [], float32: [42])
        let f = try SafetensorsFile(url: try writeFile(w.encoded(), dir, "z.safetensors"))
        XCTAssertEqual(f.info("empty")?.elementCount, 0)
        XCTAssertEqual(f.info("scalar")?.shape, [])
        XCTAssertEqual(f.float32Pointer(f.info("scalar")!).map(Array.init), [42])
    }

    func testHeaderMayBeFollowedBySpacePadding() throws {
        let dir = try makeScratchDirectory(self)
        let json = Array(#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}    "#.utf8)
        let f = try SafetensorsFile(url: try writeFile(littleEndianBytes(UInt64(json.count)) + json + [9], dir, "p"))
        XCTAssertEqual(Array(f.rawBytes(of: f.info("a")!)), [9])
    }

    // MARK: errors

    /// A file whose header is `json` followed by `data`.
    func file(_ json: String, data: [UInt8] = [], name: String = "x.safetensors") throws -> URL {
        let h = Array(json.utf8)
        return try writeFile(littleEndianBytes(UInt64(h.count)) + h + data, try makeScratchDirectory(self), name)
    }

    func assertMalformed(_ url: URL, contains parts: [String], line: UInt = #line) {
        XCTAssertThrowsError(try SafetensorsFile(url: url), line: line) { error in
            guard let e = error as? WeightsError else { return XCTFail("not a WeightsError: \(error)", line: line) }
            XCTAssertEqual(e.code, .malformed, line: line)
            let text = "\(e)"
            XCTAssertTrue(text.hasPrefix(url.path + ": "), text, line: line)
            for p in parts { XCTAssertTrue(text.contains(p), "\"\(text)\" lacks \"\(p)\"", line: line) }
        }
    }

    func testOffsetsPastTheDataSectionNameFileTensorAndField() throws {
        let url = try file(
            #"{"decoder.conv_in.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[10,2000]}}"#,
            data: [UInt8](repeating: 0, count: 1200))
        XCTAssertThrowsError(try SafetensorsFile(url: url)) { e in
            XCTAssertEqual(
                "\(e)",
                "\(url.path): tensor \"decoder.conv_in.weight\": data_offsets [10, 2000] run past "
                    + "the end of the data section (1200 bytes)")
        }
    }

    func testEmptyFileIsMalformed() throws {
        assertMalformed(try writeFile([], try makeScratchDirectory(self), "e"), contains: ["0 bytes", "too short"])
    }

    func testShortFileIsMalformed() throws {
        assertMalformed(try writeFile([1, 0, 0], try makeScratchDirectory(self), "s"), contains: ["3 bytes"])
    }

    func testHeaderLengthZeroIsMalformed() throws {
        assertMalformed(
            try writeFile([UInt8](repeating: 0, count: 16), try makeScratchDirectory(self), "z"),
            contains: ["header length is 0"])
    }

    func testHeaderLengthPastTheFileIsMalformed() throws {
        let bytes = littleEndianBytes(UInt64(100)) + Array("{}".utf8)
        assertMalformed(
            try writeFile(bytes, try makeScratchDirectory(self), "h"),
            contains: ["header length 100", "10 bytes", "truncated"])
    }

    func testHugeHeaderLengthIsMalformed() throws {
        let bytes = littleEndianBytes(UInt64.max) + Array("{}".utf8)
        assertMalformed(try writeFile(bytes, try makeScratchDirectory(self), "h"), contains: ["exceeds"])
    }

    func testHeaderMustBeJSON() throws {
        assertMalformed(try file("{not json"), contains: ["not valid JSON"])
        assertMalformed(try file("[1,2]"), contains: ["an array", "expected a JSON object"])
        assertMalformed(try file(String(repeating: "[", count: 100_000)), contains: ["nesting"])
        assertMalformed(try file("{} trailing"), contains: ["after the JSON value"])
        assertMalformed(try file("{\"a\":\"\u{1}\"}"), contains: ["control character"])
    }

    func testUnknownDTypeNamesTheTensorAndDType() throws {
        assertMalformed(
            try file(#"{"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}"#, data: [0]),
            contains: ["tensor \"w\"", "unsupported dtype \"F8_E4M3\""])
        assertMalformed(
            try file(#"{"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
            contains: ["\"f32\""])
        assertMalformed(
            try file(#"{"w":{"dtype":3,"shape":[1],"data_offsets":[0,4]}}"#), contains: ["dtype is a number"])
    }

    func testShapeMustBeNonNegativeIntegersWithoutOverflow() throws {
        assertMalformed(
            try file(#"{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}"#),
            contains: ["tensor \"w\"", "shape", "-1"])
        assertMalformed(try file(#"{"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,0]}}"#), contains: ["1.5"])
        assertMalformed(try file(#"{"w":{"dtype":"U8","shape":[1e3],"data_offsets":[0,0]}}"#), contains: ["1e3"])
        assertMalformed(
            try file(#"{"w":{"dtype":"U8","shape":[99999999999999999999],"data_offsets":[0,0]}}"#),
            contains: ["99999999999999999999"])
        assertMalformed(
            try file(#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#),
            contains: ["too many elements"])
        assertMalformed(
            try file(#"{"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}}"#),
            contains: ["too many elements"])
        assertMalformed(
            try file(#"{"w":{"dtype":"U8","shape":"3","data_offsets":[0,0]}}"#), contains: ["shape is a string"])
        assertMalformed(try file(#"{"w":{"dtype":"U8","data_offsets":[0,0]}}"#), contains: ["missing field \"shape\""])
    }

    func testDataOffsetsMustMatchTheShape() throws {
        assertMalformed(
            try file(#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, data: [UInt8](repeating: 0, count: 8)),
            contains: ["tensor \"w\"", "span 4 bytes", "needs 8"])
        assertMalformed(
            try file(#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[2,1]}}"#, data: [0, 0]),
            contains: ["begin after end"])
        assertMalformed(
            try file(#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}}"#, data: [0]),
            contains: ["not a [begin, end] pair"])
        assertMalformed(
            try file(#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}"#, data: [0]),
            contains: ["not non-negative integers"])
        assertMalformed(try file(#"{"w":{"dtype":"U8","shape":[1]}}"#, data: [0]), contains: ["data_offsets"])
    }

    func testOverlappingTensorsAreMalformed() throws {
        let json = #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"#
            + #""b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#
        assertMalformed(
            try file(json, data: [UInt8](repeating: 0, count: 6)), contains: ["tensor \"b\"", "overlap", "\"a\""])
    }

    func testDuplicateNamesAreMalformed() throws {
        let json = #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"#
            + #""a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#
        assertMalformed(try file(json, data: [0, 0]), contains: ["tensor \"a\"", "duplicate"])
    }

    func testMetadataMustMapStringsToStrings() throws {
        assertMalformed(try file(#"{"__metadata__":{"n":1}}"#), contains: ["__metadata__", "\"n\"", "a number"])
        assertMalformed(try file(#"{"__metadata__":[]}"#), contains: ["__metadata__"])
    }

    func testEntryMustBeAnObject() throws {
        assertMalformed(try file(#"{"w":[1,2]}"#), contains: ["tensor \"w\"", "an array"])
    }
}
