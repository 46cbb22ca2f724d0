// Fuzz-style GGUF tests: hundreds of deterministic mutations of a valid file (truncations, flipped bytes,
// huge counts and lengths, bad alignment, offsets past the end, overlapping tensors) either parse with
// every tensor inside the file or throw a WeightsError naming the file — never crash.

import Foundation
import XCTest

@testable import MMapWeights

final class GGUFFuzzTests: XCTestCase {
    var dir: URL!
    var base: [UInt8] = []
    var headerLength = 0

    override func setUpWithError() throws {
        dir = try makeScratchDirectory(self)
        var w = GGUFWriter()
        w.set("general.architecture", .string("stable-diffusion"))
        w.set("general.alignmenX", .uint32(32))  // patched to general.alignment by the alignment cases
        w.set("s.count", .uint64(3))
        w.set("s.names", .array(.string(["alpha", "beta"])))
        w.set("s.nested", .array(.array([.uint8([1, 2, 3]), .float64([0.5])])))
        try w.addTensor("t.f32", shape: [2, 8], values: (0..<16).map(Float.init), as: .f32)
        try w.addTensor("t.q8", shape: [2, 32], values: (0..<64).map { Float($0) / 7 }, as: .q8_0)
        try w.addTensor("t.f16", shape: [3], values: [1, 2, 3], as: .f16)
        base = try w.encoded()
        headerLength = w.header().count
        _ = try parse(base)  // the unmutated file is valid
    }

    /// Parses `bytes` from a file; on success checks every tensor lies inside the file with its exact size.
    @discardableResult
    func parse(_ bytes: [UInt8], _ label: String = "") throws -> GGUFFile {
        let url = dir.appendingPathComponent("fuzz.gguf")
        try Data(bytes).write(to: url)
        let f = try GGUFFile(url: url)
        for t in f.tensors {
            XCTAssertGreaterThanOrEqual(t.byteRange.lowerBound, f.dataOffset, label)
            XCTAssertLessThanOrEqual(t.byteRange.upperBound, bytes.count, label)
            XCTAssertEqual(t.type.byteCount(elements: t.elementCount), t.byteRange.count, label)
            _ = f.dequantized(t)  // touching every byte must be safe
        }
        return f
    }

    /// Runs one mutated file: success (validated above) or a WeightsError naming the file.
    func survive(_ bytes: [UInt8], _ label: String) -> Bool {
        do {
            try parse(bytes, label)
            return true
        } catch let e as WeightsError {
            XCTAssertTrue(e.description.contains("fuzz.gguf"), "\(label): \(e)")
            return false
        } catch {
            XCTFail("\(label): unexpected error \(error)")
            return false
        }
    }

    func offset(of needle: String, in bytes: [UInt8]) -> Int {
        let n = Array(needle.utf8)
        for i in 0...(bytes.count - n.count) where Array(bytes[i..<(i + n.count)]) == n { return i }
        XCTFail("\(needle) not found")
        return 0
    }

    func patch<T: FixedWidthInteger>(_ bytes: [UInt8], at i: Int, _ v: T) -> [UInt8] {
        var b = bytes
        let le = littleEndianBytes(v)
        guard i >= 0, i + le.count <= b.count else { return b }
        b.replaceSubrange(i..<(i + le.count), with: le)
        return b
    }

    /// Offset of tensor `name`'s relative-offset field (name string, n_dims, dims, type, then offset).
    func offsetField(_ name: String, dims: Int) -> Int {
        offset(of: name, in: Array(base[0..<headerLength])) + name.utf8.count + 4 + 8 * dims + 4
    }

    func testTruncationAtEveryHeaderByteAndInTheDataThrows() {
        var rejected = 0
        for length in 0..<base.count where length < headerLength + 8 || length % 7 == 0 {
            if !survive(Array(base[0..<length]), "truncated to \(length)") { rejected += 1 }
        }
        XCTAssertGreaterThan(rejected, headerLength, "every header truncation must be rejected")
    }

    func testHugeOrZeroValuesWrittenAtEveryHeaderOffsetNeverCrash() {
        let patterns: [(String, (inout [UInt8], Int) -> Void)] = [
            ("u64.max", { b, i in b = self.patch(b, at: i, UInt64.max) }),
            ("i64.max", { b, i in b = self.patch(b, at: i, UInt64(Int64.max)) }),
            ("2^32", { b, i in b = self.patch(b, at: i, UInt64(1) << 32) }),
            ("u32.max", { b, i in b = self.patch(b, at: i, UInt32.max) }),
            ("zero u64", { b, i in b = self.patch(b, at: i, UInt64(0)) }),
        ]
        var cases = 0
        for i in 0..<headerLength {
            for (name, mutate) in patterns {
                var b = base
                mutate(&b, i)
                _ = survive(b, "\(name) at \(i)")
                cases += 1
            }
        }
        XCTAssertGreaterThan(cases, 1000)
    }

    func testRandomByteFlipsNeverCrash() {
        var rng = SplitMix64(seed: 2026)
        for n in 0..<600 {
            var b = base
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let i = Int(rng.next() % UInt64(n % 3 == 0 ? b.count : headerLength))
                b[i] ^= UInt8(truncatingIfNeeded: 1 + rng.next() % 255)
            }
            _ = survive(b, "flip case \(n)")
        }
    }

    func testAlignmentMustBeAPowerOfTwoU32() throws {
        let key = offset(of: "general.alignmenX", in: base)
        var named = base
        named[key + 16] = UInt8(ascii: "t")
        let valueAt = key + 17 + 4
        XCTAssertEqual(try parse(named).alignment, 32)
        for bad in [UInt32(0), 3, 48, 1 << 31] {
            XCTAssertThrowsError(try parse(patch(named, at: valueAt, bad))) {
                XCTAssertTrue("\($0)".contains("general.alignment"), "\($0)")
            }
        }
        // A larger power of two moves the data section: the old offsets are no longer aligned.
        XCTAssertThrowsError(try parse(patch(named, at: valueAt, UInt32(4096))))
        // The wrong value type is rejected too.
        XCTAssertThrowsError(try parse(patch(named, at: key + 17, GGUFValueType.uint64.rawValue)))
    }

    func testOffsetsPastTheEndMisalignedOrOverlappingAreRejectedNamingTheTensor() {
        let q8 = offsetField("t.q8", dims: 2)
        let f16 = offsetField("t.f16", dims: 1)
        let cases: [(String, [UInt8], String)] = [
            ("past the end", patch(base, at: f16, UInt64(base.count)), "t.f16"),
            ("far past the end", patch(base, at: q8, UInt64(1) << 62), "t.q8"),
            ("misaligned", patch(base, at: q8, UInt64(65)), "t.q8"),
            ("overlapping", patch(base, at: f16, UInt64(96)), "t.f16"),
            ("wrapping", patch(base, at: q8, UInt64.max - 31), "t.q8"),
        ]
        for (label, bytes, tensor) in cases {
            XCTAssertThrowsError(try parse(bytes), label) { e in
                XCTAssertEqual((e as? WeightsError)?.tensor, tensor, "\(label): \(e)")
            }
        }
    }

    func testBadDimsTypesAndCountsNameTheField() {
        let nameAt = offset(of: "t.q8", in: Array(base[0..<headerLength]))
        let nDims = nameAt + 4
        let ne0 = nDims + 4
        let type = ne0 + 16
        let cases: [(String, [UInt8], String)] = [
            ("n_dims 5", patch(base, at: nDims, UInt32(5)), "n_dims"),
            ("zero dim", patch(base, at: ne0, UInt64(0)), "ne[0]"),
            ("row not whole blocks", patch(base, at: ne0, UInt64(31)), "blocks"),
            ("overflowing dims", patch(patch(base, at: ne0, UInt64(1) << 40), at: ne0 + 8, UInt64(1) << 40), "overflow"),
            ("unknown type", patch(base, at: type, UInt32(99)), "type 99"),  // 12 (Q4_K) is read since k-quants
            ("huge tensor count", patch(base, at: 8, UInt64.max), "tensor_count"),
            ("huge kv count", patch(base, at: 16, UInt64(1) << 40), "metadata_kv_count"),
            ("bad magic", patch(base, at: 0, UInt32(0x4C4C_4747)), "not a GGUF file"),
            ("version 1", patch(base, at: 4, UInt32(1)), "version 1"),
            ("huge key length", patch(base, at: 24, UInt64(1) << 50), "string length"),
        ]
        for (label, bytes, fragment) in cases {
            XCTAssertThrowsError(try parse(bytes), label) { e in
                XCTAssertTrue("\(e)".contains(fragment), "\(label): \(e)")
                XCTAssertTrue("\(e)".contains("fuzz.gguf"), "\(label): \(e)")
            }
        }
    }

    func testDeeplyNestedArraysAreRefusedNotRecursedWithoutBound() throws {
        // An array of arrays of arrays …, 10 000 levels deep: each level is 12 bytes.
        var b = Array(base[0..<24])
        b = patch(b, at: 8, UInt64(0))
        b = patch(b, at: 16, UInt64(1))
        b += littleEndianBytes(UInt64(1)) + Array("k".utf8) + littleEndianBytes(GGUFValueType.array.rawValue)
        for _ in 0..<10_000 { b += littleEndianBytes(GGUFValueType.array.rawValue) + littleEndianBytes(UInt64(1)) }
        XCTAssertThrowsError(try parse(b)) { XCTAssertTrue("\($0)".contains("nested"), "\($0)") }
    }
}
