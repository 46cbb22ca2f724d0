// Hostile-file behaviour: hundreds of deterministic mutations of a valid file must each either
// parse with every tensor inside the file, or throw WeightsError — never crash or read outside.

import Foundation
import XCTest

@testable import MMapWeights

final class SafetensorsFuzzTests: XCTestCase {
    /// A valid file with several dtypes, an unaligned tensor, a zero-size tensor and metadata.
    static func baseFile() -> [UInt8] {
        var w = SafetensorsWriter()
        w.metadata = ["format": "pt"]
        w.add("a.weight", shape: [2, 3], float32: [1, 2, 3, 4, 5, 6])
        w.add("b.half", dtype: .f16, shape: [3], bits16: [0x3C00, 0x7C00, 0x0001])
        w.add("c.bf", dtype: .bf16, shape: [2, 1], bits16: [0x3F80, 0xC000])
        w.add("d.f32", shape: [2], float32: [-1, 0.5])
        w.add("e.empty", dtype: .f32, shape: [0], bytes: [])
        w.add("f.i64", dtype: .i64, shape: [1], bytes: littleEndianBytes(Int64(-7)))
        return w.encoded()
    }

    var scratch: URL!
    var counter = 0
    var parsed = 0
    var rejected = 0

    override func setUpWithError() throws {
        scratch = try makeScratchDirectory(self)
    }

    /// Parses `bytes` from a file; checks the outcome is a full validation or a WeightsError.
    func check(_ bytes: [UInt8], _ label: @autoclosure () -> String) {
        counter += 1
        let url = scratch.appendingPathComponent("case\(counter).safetensors")
        do {
            try Data(bytes).write(to: url)
        } catch {
            return XCTFail("cannot write case: \(error)")
        }
        defer { try? FileManager.default.removeItem(at: url) }
        do {
            let f = try SafetensorsFile(url: url)
            parsed += 1
            for name in f.tensorNames {
                guard let info = f.info(name) else { return XCTFail("\(label()): listed \(name) has no info") }
                XCTAssertTrue(
                    info.byteRange.lowerBound >= f.dataRange.lowerBound
                        && info.byteRange.upperBound <= bytes.count, "\(label()): \(info)")
                XCTAssertEqual(info.byteRange.count, info.shape.reduce(1, *) * info.dtype.byteSize, label())
                XCTAssertEqual(f.rawBytes(of: info).count, info.byteRange.count)
                if info.dtype.isConvertibleToFloat32 {
                    var out = [Float](repeating: 0, count: info.elementCount)
                    XCTAssertNoThrow(try out.withUnsafeMutableBufferPointer { try f.copyAsFloat32(info, into: $0) })
                }
                _ = f.rawBytes(of: info).reduce(0) { $0 &+ Int($1) }  // touch every byte
            }
        } catch {
            // SafetensorsFile.init has typed throws: `error` is a WeightsError by construction.
            rejected += 1
            XCTAssertTrue(error.description.hasPrefix(url.path), "\(label()): \(error)")
        }
    }

    func testTruncationAtEveryLengthIsRejectedOrSafe() {
        let base = Self.baseFile()
        for n in 0...base.count { check(Array(base.prefix(n)), "truncated to \(n)") }
        XCTAssertEqual(parsed, 1)  // only the full file parses: every tensor ends at the data's end
    }

    func testRandomHeaderByteFlipsAreRejectedOrSafe() {
        let base = Self.baseFile()
        let headerEnd = 8 + Int(base[0]) + Int(base[1]) << 8
        var rng = SplitMix64(seed: 0x5AFE)
        for i in 0..<400 {
            var b = base
            let flips = 1 + Int(rng.next() % 3)
            for _ in 0..<flips {
                let at = Int(rng.next() % UInt64(headerEnd))
                b[at] ^= UInt8(truncatingIfNeeded: 1 << (rng.next() % 8))
            }
            check(b, "flip case \(i)")
        }
        // Also random byte values, and flips anywhere (data flips must always parse).
        for i in 0..<200 {
            var b = base
            let at = Int(rng.next() % UInt64(b.count))
            b[at] = UInt8(truncatingIfNeeded: rng.next())
            check(b, "set case \(i)")
        }
        XCTAssertGreaterThan(rejected, 100)
    }

    func testHeaderLengthFieldValuesAreRejectedOrSafe() {
        let base = Self.baseFile()
        let n = UInt64(base[0]) | UInt64(base[1]) << 8
        let values: [UInt64] = [
            0, 1, 2, n - 1, n + 1, n + 8, UInt64(base.count - 8), UInt64(base.count - 7),
            UInt64(base.count), 100_000_000, 100_000_001, 1 << 32, 1 << 62, 1 << 63,
            UInt64(Int64.max), UInt64.max, UInt64.max - 7,
        ]
        for v in values {
            var b = base
            b.replaceSubrange(0..<8, with: littleEndianBytes(v))
            check(b, "header length \(v)")
        }
    }

    func testHostileHeaderTextIsRejectedOrSafe() {
        let base = Self.baseFile()
        let headerLength = Int(base[0]) | Int(base[1]) << 8
        let header = String(decoding: base[8..<(8 + headerLength)], as: UTF8.self)
        let data = Array(base[(8 + headerLength)...])
        func rebuild(_ h: String) -> [UInt8] {
            let bytes = Array(h.utf8)
            return littleEndianBytes(UInt64(bytes.count)) + bytes + data
        }
        let replacements: [(String, String)] = [
            ("[2,3]", "[-2,3]"), ("[2,3]", "[2,-3]"), ("[2,3]", "[9223372036854775807,2]"),
            ("[2,3]", "[4611686018427387904,4]"), ("[2,3]", "[3,2]"), ("[2,3]", "[6]"), ("[2,3]", "[]"),
            ("[2,3]", "[2,3,0]"), ("[2,3]", "[1e400]"), ("[2,3]", "[2.0,3]"), ("[2,3]", "[null]"), ("[2,3]", "[[2],3]"),
            ("[2,3]", "[true,3]"), ("[2,3]", "[\"2\",3]"), ("[2,3]", "{}"),
            ("[2,3]", "[2,3,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]"),
            ("\"F32\"", "\"F8\""), ("\"F32\"", "\"f32\""), ("\"F32\"", "\"\""), ("\"F32\"", "null"),
            ("\"F32\"", "\"F64\""),
            ("\"F32\"", "\"I8\""), ("\"F16\"", "\"BF16\""), ("\"F16\"", "\"U8\""), ("\"BF16\"", "\"BOOL\""),
            ("\"I64\"", "\"F64\""), ("\"I64\"", "\"U64\""),
            ("[0,24]", "[0,2400]"), ("[0,24]", "[24,0]"), ("[0,24]", "[4,28]"), ("[0,24]", "[-24,0]"),
            ("[0,24]", "[0,24,48]"), ("[0,24]", "[0]"), ("[0,24]", "[]"), ("[0,24]", "\"0,24\""),
            ("[0,24]", "[18446744073709551615,18446744073709551639]"),
            ("[0,24]", "[9223372036854775807,9223372036854775831]"),
            ("[0,24]", "[0.0,24]"), ("[0,24]", "[30,54]"),
            ("\"data_offsets\"", "\"data_offset\""), ("\"dtype\"", "\"type\""), ("\"shape\"", "\"Shape\""),
            ("\"b.half\"", "\"a.weight\""), ("\"__metadata__\"", "\"__meta__\""), ("\"pt\"", "5"), ("\"pt\"", "{}"),
            ("{", "["), ("{", ""), ("}", ""), (":", ","), (",", ""), ("\"", ""), ("\"", "'"),
            ("\"a.weight\"", "\"\\ud800\""), ("\"a.weight\"", "\"\\u0000\""), ("\"a.weight\"", "\"\\q\""),
            ("\"a.weight\"", "\"a\\u00e9\""), ("\"a.weight\"", "\"\u{FFFF}\""),
        ]
        for (from, to) in replacements {
            // replace first occurrence, and every occurrence
            if let r = header.range(of: from) {
                check(rebuild(header.replacingCharacters(in: r, with: to)), "first \(from) → \(to)")
            }
            check(rebuild(header.replacingOccurrences(of: from, with: to)), "all \(from) → \(to)")
        }
        let garbage = [
            "", " ", "null", "true", "1", "\"x\"", "[]", "{}", "{\"a\":{}}", "{\"a\":null}", "{\"a\":1}",
            String(repeating: "[", count: 5000), String(repeating: "{\"a\":", count: 5000),
            String(repeating: "[", count: 20) + String(repeating: "]", count: 20),
            "{\"a\":" + String(repeating: "[", count: 40) + String(repeating: "]", count: 40) + "}",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":[[[{}]]]}}",
            "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
            "\u{FEFF}{}", "{\"a\":\"\u{0}\"}", "{\"\\ud800\\udc00\":1}",
            "{" + String(repeating: " ", count: 1000) + "}",
            String(decoding: [0xFF, 0xFE, 0x7B, 0x7D], as: UTF8.self),
        ]
        for g in garbage { check(rebuild(g), "garbage \(g.prefix(40))") }
        // Invalid UTF-8 inside a string, raw bytes.
        var raw = Array(header.utf8)
        if let q = raw.firstIndex(of: UInt8(ascii: "a")) {
            raw[q] = 0xC3
            check(littleEndianBytes(UInt64(raw.count)) + raw + data, "invalid UTF-8 in a name")
        }
    }
}
