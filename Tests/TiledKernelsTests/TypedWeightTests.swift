// TypedWeightTests: linear, conv2d and row lookups over weights stored as F16, BF16 and ggml blocks, against
// the naive Double references fed with the Swift scalar reference decoder (ReferenceDequantize.swift); and the
// type table's decoders in CKernels against that reference, bit for bit, on every code path.
import XCTest
import CKernels
import MMapWeights
@testable import TiledKernels

/// The weight's values as the scalar reference decoder gives them.
private func referenceValues(_ w: Weight) -> [Double] {
    var out = [Float](repeating: 0, count: w.count)
    out.withUnsafeMutableBufferPointer { o in
        if let base = w.bytes.baseAddress, w.count > 0 {
            w.type.referenceDequantize(base, count: w.count, into: o.baseAddress!)
        }
    }
    return out.map(Double.init)
}

private let typedTypes: [TensorType] = [.f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1]

/// Limits that force whole-weight, panel and band loop orders.
private let tinyPanels = GemmLimits(wholeWeightFloats: 0, panelFloats: 1, bandFloats: 1 << 20)
private func fivePanelRows(_ rowLength: Int) -> GemmLimits {
    GemmLimits(wholeWeightFloats: 0, panelFloats: 5 * rowLength, bandFloats: 1 << 20)
}
private let tinyEverything = GemmLimits(wholeWeightFloats: 0, panelFloats: 1, bandFloats: 1)

final class DequantizeTests: XCTestCase {
    /// Random blocks whose f16 scale fields are finite (NaN payloads are the one place hardware conversion
    /// may legitimately differ from the bit-level reference).
    private func randomBytes(_ type: TensorType, elements: Int, seed: UInt64) -> [UInt8] {
        var rng = LCG(seed: seed)
        var bytes = (0..<type.byteCount(elements: elements)!).map { _ in UInt8(truncatingIfNeeded: Int((rng.next() + 1) * 128)) }
        let halfFields: [Int]
        switch type {
        case .q8_0, .q4_0, .q5_0: halfFields = [0]
        case .q4_1, .q5_1: halfFields = [0, 2]
        case .f16: halfFields = Array(stride(from: 0, to: type.blockBytes, by: 2))
        default: halfFields = []
        }
        for b in 0..<(elements / type.blockSize) {
            for f in halfFields {
                let i = b * type.blockBytes + f + 1
                bytes[i] &= 0x7B  // exponent below all-ones: finite (incl. subnormals and zero)
            }
        }
        return bytes
    }

    func testVectorizedDequantizersEqualTheScalarReferenceOnEveryCodePath() {
        for level in 0...Int(ck_dequantize_level()) {
            ck_force_dequantize_level(Int32(level))
            defer { ck_force_dequantize_level(-1) }
            for type in typedTypes {
                let elements = type.isQuantized ? 32 * 7 : 53  // odd tails for the 16-wide float loops
                let bytes = randomBytes(type, elements: elements, seed: UInt64(level * 100) + UInt64(type.rawValue))
                var want = [Float](repeating: 0, count: elements), got = want
                bytes.withUnsafeBytes { src in
                    want.withUnsafeMutableBufferPointer { type.referenceDequantize(src.baseAddress!, count: elements, into: $0.baseAddress!) }
                    got.withUnsafeMutableBufferPointer {
                        XCTAssertEqual(ck_dequantize(type.rawValue, src.baseAddress!, Int64(elements), $0.baseAddress!), 0)
                    }
                }
                XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "\(type.name) at level \(level)")
            }
        }
    }

    func testUnknownTypeIsRefused() {
        let input = [UInt8](repeating: 0, count: 64)
        var out = [Float](repeating: 0, count: 32)
        let status = input.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer { ck_dequantize(99, src.baseAddress!, 32, $0.baseAddress!) }
        }
        XCTAssertEqual(status, -1)
    }

    func testRowLookupDecodesOnlyTheAskedRows() {
        for type in typedTypes {
            let w = randomWeight([9, 64], seed: 3).converted(to: type)
            let all = referenceValues(w)
            var rows = [Float](repeating: -7, count: 3 * 64 + 1)
            rows.withUnsafeMutableBufferPointer { w.dequantizeRows(4..<7, into: $0.baseAddress!) }
            XCTAssertEqual(rows[0..<(3 * 64)].map(Double.init), Array(all[(4 * 64)..<(7 * 64)]), type.name)
            XCTAssertEqual(rows[3 * 64], -7, "wrote past the rows asked for (\(type.name))")
        }
    }
}

final class TypedLinearTests: XCTestCase {
    private func check(_ type: TensorType, rows: Int, inF: Int, outF: Int, bias: Bool, limits: GemmLimits,
                       file: StaticString = #filePath, line: UInt = #line) {
        let x = randomTensor([rows, inF], seed: 11)
        let w = randomWeight([outF, inF], seed: 12).converted(to: type)
        let b = bias ? randomWeight([outF], seed: 13).converted(to: .f16) : nil
        let want = Ref.linear(x.doubles, rows: rows, w: referenceValues(w), outF: outF, inF: inF,
                              b: b.map(referenceValues))
        assertClose(linear(x, weight: w, bias: b, limits: limits), want, shape: [rows, outF], tolerance: 1e-5,
                    file: file, line: line)
    }

    func testEveryTypeMatchesReferenceWithTheWeightDequantizedWhole() {
        for type in typedTypes { check(type, rows: 5, inF: 96, outF: 37, bias: true, limits: .standard) }
    }

    func testEveryTypeMatchesReferenceInOneRowPanels() {
        for type in typedTypes { check(type, rows: 3, inF: 64, outF: 19, bias: false, limits: tinyPanels) }
    }

    func testPanelsWithARemainderMatchReference() {
        // 37 rows in panels of 5: 5 × 7 + 2.
        for type in typedTypes { check(type, rows: 4, inF: 64, outF: 37, bias: true, limits: fivePanelRows(64)) }
    }

    func testProductLargeEnoughToSplitOverCoresMatchesReference() {
        // 2 · 300 · 200 · 96 multiply-adds: above the single-unit threshold, so rows and columns are split.
        check(.f32, rows: 300, inF: 96, outF: 200, bias: true, limits: .standard)
        check(.q8_0, rows: 300, inF: 96, outF: 200, bias: true, limits: .standard)
        check(.q4_1, rows: 300, inF: 96, outF: 200, bias: false, limits: fivePanelRows(96))
    }
}

final class TypedConv2dTests: XCTestCase {
    private func check(_ type: TensorType, n: Int, c: Int, o: Int, h: Int, w: Int, k: Int, stride: Int,
                       padding: Int, limits: GemmLimits, file: StaticString = #filePath, line: UInt = #line) {
        let x = randomTensor([n, c, h, w], seed: 21)
        let weight = randomWeight([o, c, k, k], seed: 22).converted(to: type)
        let b = randomWeight([o], seed: 23).converted(to: .bf16)
        let want = Ref.conv2d(x.doubles, n: n, c: c, h: h, w: w, weight: referenceValues(weight), o: o, kh: k, kw: k,
                              bias: referenceValues(b), stride: stride, padding: padding)
        let got = conv2d(x, weight: weight, bias: b, stride: stride, padding: padding, limits: limits)
        assertClose(got, want.values, shape: want.shape, tolerance: 1e-5, file: file, line: line)
    }

    func testEveryType3x3MatchesReferenceWithTheWeightDequantizedWhole() {
        // kdim = 32 · 9 = 288: whole blocks per weight row.
        for type in typedTypes {
            check(type, n: 2, c: 32, o: 5, h: 7, w: 6, k: 3, stride: 1, padding: 1, limits: .standard)
        }
    }

    func testEveryType3x3MatchesReferenceInPanelsOverOneUnfolding() {
        for type in typedTypes {
            check(type, n: 2, c: 32, o: 7, h: 5, w: 6, k: 3, stride: 2, padding: 1, limits: tinyPanels)
        }
    }

    func testPanelsRepeatedOverOneRowBandsMatchReference() {
        for type in [TensorType.q8_0, .q5_1, .f16] {
            check(type, n: 2, c: 32, o: 7, h: 5, w: 6, k: 3, stride: 1, padding: 1, limits: tinyEverything)
        }
    }

    func testEveryTypePointwiseMatchesReferenceInWholeAndPanels() {
        for type in typedTypes {
            check(type, n: 2, c: 64, o: 9, h: 3, w: 5, k: 1, stride: 1, padding: 0, limits: .standard)
            check(type, n: 2, c: 64, o: 9, h: 3, w: 5, k: 1, stride: 1, padding: 0, limits: fivePanelRows(64))
        }
    }

    func testLargeConvSplitIntoBandsOverCoresMatchesReference() {
        check(.f32, n: 2, c: 32, o: 16, h: 24, w: 20, k: 3, stride: 1, padding: 1,
              limits: GemmLimits(wholeWeightFloats: 1 << 22, panelFloats: 1 << 18, bandFloats: 288 * 20 * 3))
        check(.q8_0, n: 1, c: 32, o: 16, h: 24, w: 20, k: 3, stride: 1, padding: 1, limits: .standard)
    }
}

final class ScratchArenaTests: XCTestCase {
    func testRepeatedProductsReuseTheirScratch() {
        let x = randomTensor([2, 32, 12, 12], seed: 31)
        let w = randomWeight([16, 32, 3, 3], seed: 32).converted(to: .q8_0)
        let limits = GemmLimits(wholeWeightFloats: 0, panelFloats: 288 * 4, bandFloats: 288 * 24)
        _ = conv2d(x, weight: w, bias: nil, stride: 1, padding: 1, limits: limits)
        let after1 = ScratchArena.pooledBytes
        // Which pooled arena a unit gets, and how many units run at once, depends on thread timing, so a later
        // call may grow one more arena once per extra core; a per-call leak over 30 calls would pass the bound.
        for _ in 0..<30 { _ = conv2d(x, weight: w, bias: nil, stride: 1, padding: 1, limits: limits) }
        XCTAssertLessThanOrEqual(ScratchArena.pooledBytes - after1, Parallel.cores * 128 * 1024)
    }
}

final class TypedNormTests: XCTestCase {
    func testGroupNormAndLayerNormAcceptF16Scales() {
        let x = randomTensor([2, 8, 3, 3], seed: 41)
        let g = randomWeight([8], seed: 42).converted(to: .f16), b = randomWeight([8], seed: 43).converted(to: .bf16)
        let want = Ref.groupNorm(x.doubles, n: 2, c: 8, spatial: 9, groups: 4, gamma: referenceValues(g),
                                 beta: referenceValues(b), eps: 1e-5)
        assertClose(groupNorm(x, groups: 4, gamma: g, beta: b, eps: 1e-5), want, shape: x.shape, tolerance: 1e-5)
        let t = randomTensor([3, 8], seed: 44)
        let plain = layerNorm(t, gamma: Weight(shape: [8], array: referenceValues(g).map(Float.init)),
                              beta: Weight(shape: [8], array: referenceValues(b).map(Float.init)), eps: 1e-5)
        XCTAssertEqual(layerNorm(t, gamma: g, beta: b, eps: 1e-5).data, plain.data)
    }
}
