// Conv2dTests: conv2d() against a direct-loop Double convolution, including forced multi-band runs.
// Tolerance: 1e-5 of the output scale (F32 GEMM over at most a few hundred products).
import XCTest
import MMapWeights
@testable import TiledKernels

final class Conv2dTests: XCTestCase {
    /// Runs conv2d (optionally with a band scratch bound) and compares it with the reference.
    private func check(n: Int, c: Int, o: Int, h: Int, w: Int, kh: Int, kw: Int, stride: Int, padding: Int,
                       bias: Bool = true, maxScratchFloats: Int? = nil, seed: UInt64,
                       file: StaticString = #filePath, line: UInt = #line) {
        let x = randomTensor([n, c, h, w], seed: seed)
        let weight = randomWeight([o, c, kh, kw], seed: seed + 1)
        let b = bias ? randomWeight([o], seed: seed + 2) : nil
        let got = maxScratchFloats.map {
            conv2d(x, weight: weight, bias: b, stride: stride, padding: padding, maxScratchFloats: $0)
        } ?? conv2d(x, weight: weight, bias: b, stride: stride, padding: padding)
        let want = Ref.conv2d(x.doubles, n: n, c: c, h: h, w: w, weight: weight.doubles, o: o, kh: kh, kw: kw,
                              bias: b?.doubles, stride: stride, padding: padding)
        assertClose(got, want.values, shape: want.shape, tolerance: 1e-5, file: file, line: line)
    }

    func testStride2Padding1MatchesReference() {
        check(n: 2, c: 3, o: 5, h: 7, w: 9, kh: 3, kw: 3, stride: 2, padding: 1, seed: 10)
    }

    func testStride1Padding1KeepsSizeAndMatchesReference() {
        check(n: 2, c: 3, o: 5, h: 7, w: 9, kh: 3, kw: 3, stride: 1, padding: 1, seed: 20)
    }

    func testPointwiseConvMatchesReference() {
        check(n: 2, c: 6, o: 5, h: 7, w: 9, kh: 1, kw: 1, stride: 1, padding: 0, seed: 30)
    }

    func testConvWithoutBiasMatchesReference() {
        check(n: 1, c: 4, o: 3, h: 6, w: 5, kh: 3, kw: 3, stride: 1, padding: 1, bias: false, seed: 40)
    }

    func testFewOutputChannelsRunDirectlyAndMatchTheReference() {
        // At most `directConvMaximumOutputChannels` outputs: the direct loop, on many rows (several units per
        // image), one column, and without bias.
        check(n: 2, c: 64, o: 3, h: 21, w: 17, kh: 3, kw: 3, stride: 1, padding: 1, seed: 45)
        check(n: 1, c: 5, o: 4, h: 9, w: 1, kh: 3, kw: 3, stride: 1, padding: 1, seed: 46)
        check(n: 1, c: 7, o: 1, h: 1, w: 6, kh: 3, kw: 3, stride: 1, padding: 1, bias: false, seed: 47)
    }

    func testNonSquareKernelLargePaddingAndStride3MatchReference() {
        check(n: 1, c: 2, o: 3, h: 11, w: 8, kh: 4, kw: 2, stride: 3, padding: 2, seed: 50)
    }

    func testUnpaddedConvMatchesReference() {
        check(n: 1, c: 3, o: 2, h: 6, w: 7, kh: 3, kw: 3, stride: 1, padding: 0, seed: 55)
    }

    func testOneOutputRowPerBandMatchesReference() {
        // kdim · wOut = 27 · 9 floats per row; a bound of 1 float still gives one-row bands.
        check(n: 2, c: 3, o: 5, h: 7, w: 9, kh: 3, kw: 3, stride: 1, padding: 1, maxScratchFloats: 1, seed: 60)
    }

    func testBandsWithARemainderMatchReference() {
        // 3 rows per band over 7 output rows: bands of 3, 3, 1.
        check(n: 2, c: 3, o: 5, h: 7, w: 9, kh: 3, kw: 3, stride: 1, padding: 1,
              maxScratchFloats: 27 * 9 * 3, seed: 70)
    }

    func testStridedConvInSeveralBandsMatchesReference() {
        check(n: 1, c: 3, o: 4, h: 13, w: 10, kh: 3, kw: 3, stride: 2, padding: 1,
              maxScratchFloats: 27 * 5 * 2, seed: 80)
    }

    func testDefaultScratchBoundSplitsALargeInputIntoBands() {
        // kdim 288 · 160 columns = 46 080 floats per row → 45 rows per 8 MiB band → 4 bands.
        check(n: 1, c: 32, o: 2, h: 160, w: 160, kh: 3, kw: 3, stride: 1, padding: 1, seed: 90)
    }
    /// conv2dScratch against what a call takes: the pool's arenas emptied first and kept whole after, so
    /// `ScratchArena.pooledBytes` is the call's high-water. Units that could run at once may run one after the other
    /// on a busy machine and share an arena: at least the caller's arena and one unit's are taken.
    func testConvScratchDeclaresTheArenasACallTakes() {
        ScratchArena.limitRetainedBytes(nil)
        let cases: [(n: Int, c: Int, h: Int, w: Int, o: Int, k: Int, type: TensorType)] = [
            (1, 64, 40, 40, 64, 3, .q8_0),  // Winograd F(2×2), transformed typed weight
            (1, 16, 96, 96, 16, 3, .f32),  // im2col bands
            (1, 32, 64, 64, 16, 5, .q8_0),  // im2col with the whole weight dequantized
            (2, 64, 20, 20, 40, 1, .q8_0),  // pointwise
            (1, 8, 30, 30, 3, 3, .f16),  // direct, dequantized weight on the heap
        ]
        for (i, t) in cases.enumerated() {
            let x = randomTensor([t.n, t.c, t.h, t.w], seed: 40 + UInt64(i))
            let weight = randomWeight([t.o, t.c, t.k, t.k], seed: 50 + UInt64(i)).converted(to: t.type)
            let planned = conv2dScratch(n: t.n, c: t.c, h: t.h, w: t.w, o: t.o, kh: t.k, kw: t.k, padding: t.k / 2,
                                        weightType: t.type)
            ScratchArena.releaseIdle()
            _ = conv2d(x, weight: weight, bias: nil, padding: t.k / 2)
            let held = ScratchArena.pooledBytes
            XCTAssertLessThanOrEqual(held, planned.caller + planned.perUnit * planned.concurrentUnits, "case \(i)")
            XCTAssertGreaterThanOrEqual(held, planned.caller + planned.perUnit, "case \(i)")
            if t.type != .f32 && t.o <= 4 { XCTAssertEqual(planned.heap, t.o * t.c * 9 * 4, "case \(i)") }
        }
        ScratchArena.releaseIdle()
    }
}
