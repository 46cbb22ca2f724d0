// WinogradConvTests: the Winograd F(2×2, 3×3) and F(4×4, 3×3) paths of conv2d against the direct-loop Double
// convolution (odd sizes, partial tiles, many bands, batches, typed weights) and the automatic choice among them
// and im2col. Tolerance: 1e-5 of the output scale for F(2×2), as for im2col (the transforms add at most 16 terms
// per value); 5e-5 for F(4×4), whose transforms scale by up to 8 and 1/24.
import XCTest
import MMapWeights
@testable import TiledKernels

final class WinogradConvTests: XCTestCase {
    private func limits(_ algorithm: ConvAlgorithm, bandFloats: Int = GemmLimits.standard.bandFloats) -> GemmLimits {
        var l = GemmLimits.standard
        l.convAlgorithm = algorithm
        l.bandFloats = bandFloats
        return l
    }

    private func check(n: Int, c: Int, o: Int, h: Int, w: Int, bias: Bool = true, type: TensorType = .f32,
                       limits: GemmLimits, seed: UInt64, scale: Float = 1, tolerance: Double? = nil,
                       file: StaticString = #filePath, line: UInt = #line) {
        let x = randomTensor([n, c, h, w], seed: seed, scale: scale)
        let f32 = randomWeight([o, c, 3, 3], seed: seed + 1)
        let weight = type == .f32 ? f32 : f32.converted(to: type)
        let b = bias ? randomWeight([o], seed: seed + 2) : nil
        let got = conv2d(x, weight: weight, bias: b, stride: 1, padding: 1, limits: limits)
        let want = Ref.conv2d(x.doubles, n: n, c: c, h: h, w: w, weight: weight.dequantized().map(Double.init), o: o,
                              kh: 3, kw: 3, bias: b?.doubles, stride: 1, padding: 1)
        let bound = tolerance ?? (limits.convAlgorithm == .winograd4 ? 5e-5 : 1e-5)
        assertClose(got, want.values, shape: want.shape, tolerance: bound, file: file, line: line)
    }

    func testF4x4EvenOddAndTinySizesMatchReference() {
        check(n: 1, c: 4, o: 3, h: 8, w: 8, limits: limits(.winograd4), seed: 300)
        check(n: 2, c: 3, o: 5, h: 7, w: 9, limits: limits(.winograd4), seed: 301)
        check(n: 1, c: 2, o: 3, h: 1, w: 1, limits: limits(.winograd4), seed: 302)
        check(n: 1, c: 2, o: 3, h: 5, w: 2, limits: limits(.winograd4), seed: 303)
        check(n: 1, c: 6, o: 4, h: 13, w: 6, bias: false, limits: limits(.winograd4), seed: 304)
    }

    func testF4x4BandsChunksAndTypedWeightsMatchReference() {
        // One tile row per band; bands with a remainder; chunks of output channels with a typed weight.
        check(n: 2, c: 5, o: 3, h: 17, w: 7, limits: limits(.winograd4, bandFloats: 1), seed: 310)
        check(n: 1, c: 4, o: 3, h: 20, w: 11, limits: limits(.winograd4, bandFloats: 36 * 7 * 3 * 2), seed: 311)
        var chunked = limits(.winograd4, bandFloats: 36 * 40 * 5 * 2)
        chunked.wholeWeightFloats = 36 * 5 * 32 + 7
        for type in [TensorType.f32, .q8_0, .f16] {
            check(n: 2, c: 32, o: 37, h: 18, w: 17, type: type, limits: chunked, seed: 312)
        }
    }

    func testWeightsPackedOnceForAMXGiveTheResultOfPackingThemPerBand() throws {
        try XCTSkipUnless(ProductPrecision.bf16Kernel == .amx, "the BF16 products here do not run on AMX")
        // With BF16 products on AMX, U is transformed and packed once per chunk of output channels; the bands
        // then multiply the same words ck_gemm_bf16 would pack from the F32 U, so the output is equal to the
        // bit. Typed and F32 weights, both tiles, several chunks and bands.
        // Each band's product pays in BF16 (≥ 16 rows, ≥ 2¹⁷ multiply-adds), so both ways run it on AMX; the
        // chunked case's last chunk (8 channels) does not pay and runs unpacked in F32 both ways.
        var chunked = limits(.winograd4, bandFloats: 36 * (128 + 96) * 8 * 2)
        chunked.wholeWeightFloats = 36 * 128 * 96
        let cases: [(c: Int, o: Int, h: Int, w: Int, type: TensorType, limits: GemmLimits)] = [
            (128, 96, 32, 30, .f32, limits(.winograd4)),
            (96, 80, 17, 23, .q8_0, limits(.winograd)),
            (128, 200, 32, 32, .q8_0, chunked),
        ]
        for (i, t) in cases.enumerated() {
            let x = randomTensor([1, t.c, t.h, t.w], seed: 340 + UInt64(i))
            let f32 = randomWeight([t.o, t.c, 3, 3], seed: 350 + UInt64(i))
            let weight = (t.type == .f32 ? f32 : f32.converted(to: t.type)).multiplying(in: .bf16)
            let bias = randomWeight([t.o], seed: 360 + UInt64(i))
            let tile = t.limits.convAlgorithm == .winograd4 ? 4 : 2
            let problem = WinogradProblem(n: 1, c: t.c, h: t.h, w: t.w, o: t.o, tile: tile, limits: t.limits)
            XCTAssertTrue(problem.packsWeight(products: .bf16, outChannels: problem.chunkChannels),
                          "case \(i) packs its weight")
            XCTAssertFalse(problem.packsWeight(products: .f32, outChannels: problem.chunkChannels),
                           "F32 products never pack")
            var packed = [Float](repeating: .nan, count: t.o * t.h * t.w), perBand = packed
            x.withUnsafeBufferPointer { xp in
                problem.run(x: xp.baseAddress!, weight: weight, bias: bias, y: &packed, packing: true)
                problem.run(x: xp.baseAddress!, weight: weight, bias: bias, y: &perBand, packing: false)
            }
            let first = packed.indices.first { packed[$0].bitPattern != perBand[$0].bitPattern }
            XCTAssertNil(first, "case \(i): first difference at \(first ?? -1)")
            XCTAssertFalse(packed.contains { $0.isNaN }, "case \(i): every output written")
        }
    }

    func testF4x4WideInputsStayWithinTheirTolerance() {
        check(n: 1, c: 512, o: 32, h: 12, w: 12, limits: limits(.winograd4), seed: 320)
        check(n: 1, c: 64, o: 32, h: 12, w: 12, limits: limits(.winograd4), seed: 321, scale: 100)
    }

    func testAutomaticChoiceUsesF4x4ForWideChannelsFrom64x64Pixels() {
        let x = randomTensor([1, 256, 64, 64], seed: 330)
        let weight = randomWeight([32, 256, 3, 3], seed: 331), b = randomWeight([32], seed: 332)
        let auto = conv2d(x, weight: weight, bias: b, stride: 1, padding: 1, limits: .standard)
        let f4 = conv2d(x, weight: weight, bias: b, stride: 1, padding: 1, limits: limits(.winograd4))
        XCTAssertEqual(auto.data, f4.data)
        XCTAssertEqual(winogradTile(channels: 256, outChannels: 32, pixels: 63 * 64, limits: .standard), 2)
        XCTAssertEqual(winogradTile(channels: 255, outChannels: 32, pixels: 64 * 64, limits: .standard), 2)
        XCTAssertEqual(winogradTile(channels: 256, outChannels: 32, pixels: 64 * 64, limits: .standard), 4)
    }

    func testEvenSizesMatchReference() {
        check(n: 1, c: 4, o: 3, h: 8, w: 6, limits: limits(.winograd), seed: 100)
    }

    func testOddSizesWritePartialTilesAndMatchReference() {
        check(n: 2, c: 3, o: 5, h: 7, w: 9, limits: limits(.winograd), seed: 110)
    }

    func testOnePixelAndOneRowInputsMatchReference() {
        check(n: 1, c: 2, o: 3, h: 1, w: 1, limits: limits(.winograd), seed: 120)
        check(n: 1, c: 2, o: 3, h: 1, w: 5, limits: limits(.winograd), seed: 121)
        check(n: 1, c: 2, o: 3, h: 4, w: 1, limits: limits(.winograd), seed: 122)
    }

    func testWithoutBiasMatchesReference() {
        check(n: 1, c: 6, o: 4, h: 5, w: 6, bias: false, limits: limits(.winograd), seed: 130)
    }

    func testOneTileRowPerBandMatchesReference() {
        // A bound of 1 float still gives one tile row per band: 5 bands per image, 10 units.
        check(n: 2, c: 5, o: 3, h: 9, w: 7, limits: limits(.winograd, bandFloats: 1), seed: 140)
    }

    func testBandsWithARemainderMatchReference() {
        // 16 · (4 + 3) · 6 tiles = 672 floats per tile row; 2 rows per band over 6 tile rows.
        check(n: 1, c: 4, o: 3, h: 12, w: 11, limits: limits(.winograd, bandFloats: 672 * 2), seed: 150)
        // 3 tile rows per band over 5: bands of 3 and 2.
        check(n: 1, c: 4, o: 3, h: 10, w: 11, limits: limits(.winograd, bandFloats: 672 * 3), seed: 151)
    }

    func testLargeInputSplitOverCoresMatchesReference() {
        check(n: 2, c: 48, o: 40, h: 26, w: 30, limits: .standard, seed: 160)
    }

    func testTypedWeightsAreDequantizedOnTheWayAndMatchReference() {
        for type in [TensorType.f16, .bf16, .q8_0, .q4_1] {
            check(n: 1, c: 32, o: 33, h: 9, w: 10, type: type, limits: .standard, seed: 170)
        }
    }

    func testLargeInputValuesStayWithinTheToleranceOfTheirScale() {
        // Values ~100 with an offset-free spread: the transforms' sums must not lose more than F32 GEMM does.
        check(n: 1, c: 64, o: 32, h: 12, w: 12, limits: .standard, seed: 180, scale: 100)
    }

    func testAutomaticChoiceUsesWinogradForWideConvolutions() {
        let x = randomTensor([1, 32, 16, 16], seed: 190)
        let weight = randomWeight([32, 32, 3, 3], seed: 191), b = randomWeight([32], seed: 192)
        let auto = conv2d(x, weight: weight, bias: b, stride: 1, padding: 1, limits: .standard)
        let winograd = conv2d(x, weight: weight, bias: b, stride: 1, padding: 1, limits: limits(.winograd))
        let im2col = conv2d(x, weight: weight, bias: b, stride: 1, padding: 1, limits: limits(.im2col))
        XCTAssertEqual(auto.data, winograd.data)
        XCTAssertNotEqual(auto.data, im2col.data)
    }

    func testAutomaticChoiceKeepsIm2colForNarrowConvolutions() {
        let x = randomTensor([1, 16, 10, 12], seed: 200)
        let weight = randomWeight([32, 16, 3, 3], seed: 201)
        let auto = conv2d(x, weight: weight, bias: nil, stride: 1, padding: 1, limits: .standard)
        let im2col = conv2d(x, weight: weight, bias: nil, stride: 1, padding: 1, limits: limits(.im2col))
        XCTAssertEqual(auto.data, im2col.data)
    }

    func testAWeightTooLargeToTransformWholeRunsInChunksOfOutputChannelsAndMatchesReference() {
        // U of 16·O·C floats over the bound: chunks of 5 output channels (the last one 2), bias offset per chunk,
        // typed weights dequantized per chunk, several bands per image.
        var chunked = limits(.winograd, bandFloats: 16 * 40 * 6 * 2)
        chunked.wholeWeightFloats = 16 * 5 * 32 + 7
        for type in [TensorType.f32, .q8_0] {
            check(n: 2, c: 32, o: 37, h: 16, w: 17, type: type, limits: chunked, seed: 215)
        }
        let x = randomTensor([1, 32, 16, 16], seed: 216)
        let weight = randomWeight([37, 32, 3, 3], seed: 217), b = randomWeight([37], seed: 218)
        let whole = conv2d(x, weight: weight, bias: b, stride: 1, padding: 1, limits: limits(.winograd))
        let inChunks = conv2d(x, weight: weight, bias: b, stride: 1, padding: 1, limits: chunked)
        let scale = whole.data.map(abs).max() ?? 1
        let worst = zip(inChunks.data, whole.data).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst, 1e-6 * scale, "chunks change only the GEMM's rounding")
    }

    func testAutomaticChoiceKeepsIm2colForSmallImages() {
        let x = randomTensor([2, 32, 8, 8], seed: 205)
        let weight = randomWeight([32, 32, 3, 3], seed: 206)
        let auto = conv2d(x, weight: weight, bias: nil, stride: 1, padding: 1, limits: .standard)
        let im2col = conv2d(x, weight: weight, bias: nil, stride: 1, padding: 1, limits: limits(.im2col))
        XCTAssertEqual(auto.data, im2col.data)
    }

    func testAutomaticChoiceKeepsIm2colWhenNotEvenThirtyTwoOutputChannelsFitTheWholeWeightBound() {
        let x = randomTensor([1, 32, 16, 16], seed: 210)
        let weight = randomWeight([32, 32, 3, 3], seed: 211)
        var small = limits(.automatic)
        small.wholeWeightFloats = 16 * 32 * 32 - 1
        let auto = conv2d(x, weight: weight, bias: nil, stride: 1, padding: 1, limits: small)
        let im2col = conv2d(x, weight: weight, bias: nil, stride: 1, padding: 1, limits: limits(.im2col))
        XCTAssertEqual(auto.data, im2col.data)
    }
}
