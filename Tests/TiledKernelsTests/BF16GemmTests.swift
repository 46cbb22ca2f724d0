// BF16GemmTests: CKernels' BF16 GEMM against a Double reference over BF16-rounded operands — the products it
// promises — and the layers that run it (`sgemm(precision: .bf16)`) against their F32 results.
// The rounding model (ck_bf16_round, ck_gemm_bf16_model: the packing's rounding and the F32 sums) is checked on
// every CPU; only the tests of the AVX512_BF16 and AMX-BF16 instruction paths skip where the CPU (or, for AMX, the
// OS's grant of tile data) lacks them — on such a machine the tests of the kernel choice check the fallback.
import CKernels
import XCTest
@testable import TiledKernels

final class BF16GemmTests: XCTestCase {
    /// x rounded to BF16, nearest even (what vdpbf16ps multiplies).
    private func bf16(_ x: Float) -> Double {
        let u = x.bitPattern
        return Double(Float(bitPattern: (u &+ 0x7FFF &+ ((u >> 16) & 1)) & 0xFFFF_0000))
    }

    private func requireBF16() throws {
        try XCTSkipUnless(ProductPrecision.bf16Available, "this CPU has no AVX512_BF16")
    }

    private typealias Kernel = (Int32, Int64, Int64, Int64, Float, UnsafePointer<Float>, Int64,
                                UnsafePointer<Float>, Int64, Float, UnsafeMutablePointer<Float>, Int64) -> Int32

    /// The AVX512_BF16 path.
    private let instruction: Kernel = {
        ck_gemm_bf16_using(Int32(CK_BF16_AVX512), $0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    }
    /// The AMX-BF16 path.
    private let amx: Kernel = {
        ck_gemm_bf16_using(Int32(CK_BF16_AMX), $0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    }
    /// The portable model of it.
    private let model: Kernel = {
        ck_gemm_bf16_model($0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        return 0
    }

    /// C = alpha · A · op(B) + beta · C with padded strides; every element within 1e-5 of its own Σ|products|
    /// and the padding columns untouched. The bound: BF16 × BF16 products are exact in F32, so the only
    /// error is F32 rounding of the running sums — at most k · 2⁻²⁴ ≈ 5.4e-5 relative to Σ|products| for
    /// k = 901 in the worst case, ~√k · 2⁻²⁴ ≈ 1.8e-6 in practice (random signs); 1e-5 holds for every
    /// summation order while an operand left unrounded (an error of ~2⁻⁹) fails it.
    private func check(_ kernel: Kernel, m: Int, n: Int, k: Int, transB: Bool, alpha: Float = 0.7,
                       beta: Float = 0.5, file: StaticString = #filePath, line: UInt = #line) {
        let lda = k + 3, ldb = (transB ? k : n) + 5, ldc = n + 2
        var random = LCG(seed: UInt64(m * 131 + n * 17 + k))
        let a = (0..<(m * lda)).map { _ in random.next() }
        let b = (0..<((transB ? n : k) * ldb)).map { _ in random.next() }
        let c0 = (0..<(m * ldc)).map { _ in random.next() }
        var c = c0
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    let status = kernel(transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, ap.baseAddress!,
                                        Int64(lda), bp.baseAddress!, Int64(ldb), beta, cp.baseAddress!, Int64(ldc))
                    XCTAssertEqual(status, 0, file: file, line: line)
                }
            }
        }
        var worst = 0.0
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0, magnitude = 0.0
                for p in 0..<k {
                    let x = bf16(alpha * a[i * lda + p]), y = bf16(transB ? b[j * ldb + p] : b[p * ldb + j])
                    sum += x * y
                    magnitude += abs(x * y)
                }
                let want = sum + Double(beta) * Double(c0[i * ldc + j])
                worst = max(worst, abs(Double(c[i * ldc + j]) - want) / (magnitude + 1e-3))
            }
            for j in n..<ldc { XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j], "padding column \(j)", file: file, line: line) }
        }
        XCTAssertLessThan(worst, 1e-5, "\(m)×\(n)×\(k) transB \(transB)", file: file, line: line)
    }

    private func checkShapes(_ kernel: Kernel, file: StaticString = #filePath, line: UInt = #line) {
        check(kernel, m: 14, n: 32, k: 2, transB: false, file: file, line: line)      // one register tile
        check(kernel, m: 15, n: 33, k: 3, transB: true, file: file, line: line)       // a row and a column past it, odd depth
        check(kernel, m: 200, n: 600, k: 901, transB: false, file: file, line: line)  // several row, column and depth blocks
        check(kernel, m: 170, n: 513, k: 385, transB: true, file: file, line: line)
        check(kernel, m: 256, n: 512, k: 40, transB: true, file: file, line: line)    // attention's Q·Kᵀ shape
    }

    func testProductsMatchBF16RoundedReferenceAcrossBlocksAndEdges() throws {
        try requireBF16()
        checkShapes(instruction)
    }

    func testTheRoundingModelMatchesTheBF16RoundedReferenceOnEveryCPU() {
        checkShapes(model)
    }

    func testRoundingToBF16IsNearestEvenWithDenormalsFlushed() {
        func bits(_ x: Float) -> UInt16 { ck_bf16_round(x) }
        XCTAssertEqual(bits(1), 0x3F80)
        XCTAssertEqual(bits(-2), 0xC000)
        // Ties go to the even mantissa: 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷.
        XCTAssertEqual(bits(Float(bitPattern: 0x3F80_8000)), 0x3F80)
        XCTAssertEqual(bits(Float(bitPattern: 0x3F81_8000)), 0x3F82)
        XCTAssertEqual(bits(Float(bitPattern: 0x3F80_8001)), 0x3F81, "above half rounds up")
        XCTAssertEqual(bits(Float(bitPattern: 0x3F80_7FFF)), 0x3F80, "below half rounds down")
        XCTAssertEqual(bits(Float(bitPattern: 0x7F7F_FFFF)), 0x7F80, "the largest float rounds to infinity")
        XCTAssertEqual(bits(.infinity), 0x7F80)
        XCTAssertEqual(bits(Float(bitPattern: 0x0000_0001)), 0x0000, "denormals flush to zero")
        XCTAssertEqual(bits(Float(bitPattern: 0x8040_0000)), 0x8000, "keeping their sign")
        let nan = bits(Float(bitPattern: 0x7F80_0001))
        XCTAssertEqual(nan & 0x7F80, 0x7F80)
        XCTAssertNotEqual(nan & 0x007F, 0, "a NaN stays a NaN")
        var random = LCG(seed: 5)
        for _ in 0..<10_000 {
            let x = random.next() * 1000
            XCTAssertEqual(Double(Float(bitPattern: UInt32(bits(x)) << 16)), bf16(x), "\(x)")
        }
    }

    func testTheInstructionPathComputesWhatTheModelDoes() throws {
        try requireBF16()
        // Same rounded operands, same pairs, same block sums: any difference is the order of two F32 additions
        // inside one vdpbf16ps (one rounding, 2⁻²⁴ of the partial sum).
        let m = 37, n = 70, k = 777
        var random = LCG(seed: 99)
        let a = (0..<(m * k)).map { _ in random.next() }, b = (0..<(k * n)).map { _ in random.next() }
        var got = [Float](repeating: 0, count: m * n), want = got
        _ = instruction(0, Int64(m), Int64(n), Int64(k), 1, a, Int64(k), b, Int64(n), 0, &got, Int64(n))
        _ = model(0, Int64(m), Int64(n), Int64(k), 1, a, Int64(k), b, Int64(n), 0, &want, Int64(n))
        let scale = want.map(abs).max() ?? 1
        for i in 0..<(m * n) { XCTAssertEqual(got[i], want[i], accuracy: 1e-5 * scale, "element \(i)") }
    }

    private func requireAMX() throws {
        try XCTSkipUnless(ck_gemm_bf16_amx_available() != 0,
                          "no AMX-BF16 here (CPUID lacks AMX-TILE/AMX-BF16, or the OS did not grant tile data)")
    }

    func testAMXProductsMatchBF16RoundedReferenceAcrossBlocksAndEdges() throws {
        try requireAMX()
        checkShapes(amx)
        check(amx, m: 65, n: 257, k: 769, transB: false)  // past AMX's 64-row, 256-column and 768-deep blocks
        check(amx, m: 17, n: 40, k: 512, transB: false)   // attention's P·V: 40 columns of a 64-wide block
        check(amx, m: 1, n: 1, k: 1, transB: true)
    }

    func testAMXComputesWhatTheModelDoesUpToTheOrderOfF32Sums() throws {
        try requireAMX()
        // Both paths multiply the same BF16-rounded operands (exact in F32: 8 × 8 significant bits), so they
        // differ only in how the k products and beta · C are summed: AMX's tiles add 768-deep blocks in an
        // order of their own, the model 384-deep blocks pair by pair. Any summation of k + 1 terms in F32
        // (round to nearest) is within γ_k · Σ|terms| of the exact sum, γ_k = k·u / (1 − k·u), u = 2⁻²⁴
        // (Higham, Accuracy and Stability of Numerical Algorithms, §4.2), so the two are within 2 γ_k · Σ|terms|
        // of each other. A product dropped, misplaced or paired with the wrong partner breaks it.
        func bf16(_ x: Float) -> Float { Float(bitPattern: UInt32(ck_bf16_round(x)) << 16) }
        let shapes = [(33, 31, 3, false), (15, 70, 777, true), (64, 256, 768, false), (70, 300, 1000, true),
                      (32, 33, 40, true), (100, 40, 513, false)]
        for (m, n, k, transB) in shapes {
            let alpha: Float = 0.7, beta: Float = 0.5
            let lda = k + 1, ldb = (transB ? k : n) + 3, ldc = n + 2
            var random = LCG(seed: UInt64(m * 7 + n * 11 + k))
            let a = (0..<(m * lda)).map { _ in random.next() }
            let b = (0..<((transB ? n : k) * ldb)).map { _ in random.next() }
            let c0 = (0..<(m * ldc)).map { _ in random.next() }
            var got = c0, want = c0
            XCTAssertEqual(amx(transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb),
                               beta, &got, Int64(ldc)), 0)
            _ = model(transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb), beta,
                      &want, Int64(ldc))
            let u = 0x1p-24, gamma = Double(k) * u / (1 - Double(k) * u)
            for i in 0..<m {
                for j in 0..<n {
                    var magnitude = abs(Double(beta) * Double(c0[i * ldc + j]))
                    for p in 0..<k {
                        let y = transB ? b[j * ldb + p] : b[p * ldb + j]
                        magnitude += abs(Double(bf16(alpha * a[i * lda + p])) * Double(bf16(y)))
                    }
                    let difference = abs(Double(got[i * ldc + j]) - Double(want[i * ldc + j]))
                    if difference > 2 * gamma * magnitude {
                        XCTFail("\(m)×\(n)×\(k) transB \(transB): C[\(i), \(j)] \(got[i * ldc + j]) against the model's "
                                + "\(want[i * ldc + j]), beyond 2γ_k·Σ|terms| = \(2 * gamma * magnitude)")
                        return
                    }
                }
                for j in n..<ldc { XCTAssertEqual(got[i * ldc + j], c0[i * ldc + j], "padding column \(j)") }
            }
        }
    }

    func testAMXProductsWithAPackedOnceEqualThoseThatPackAPerCall() throws {
        try requireAMX()
        // Packing A once (ck_gemm_amx_pack_a_rows, in row groups written out of order, the way Winograd's
        // weight transform does) must give the words ck_gemm_bf16 packs per call, in the same order: C equal to
        // the bit. Shapes cross the 32-row panels, 768-deep blocks (odd remainders) and 256-column blocks.
        let shapes = [(33, 31, 3, false), (64, 300, 769, false), (100, 257, 1537, true), (5, 40, 40, true),
                      (512, 96, 512, false)]
        for (m, n, k, transB) in shapes {
            let lda = k + 1, ldb = (transB ? k : n) + 3, ldc = n + 2, beta: Float = 0.5
            var random = LCG(seed: UInt64(m * 5 + n * 3 + k))
            let a = (0..<(m * lda)).map { _ in random.next() }
            let b = (0..<((transB ? n : k) * ldb)).map { _ in random.next() }
            let c0 = (0..<(m * ldc)).map { _ in random.next() }
            let words = Int(ck_gemm_amx_packed_a_words(Int64(m), Int64(k)))
            XCTAssertGreaterThanOrEqual(words, m * ((k + 1) / 2), "\(m)×\(k): every pair word has a place")
            // Garbage where padding goes: the packer must write every word the product reads.
            var packed = [UInt32](repeating: 0x7FC0_7FC0, count: words)
            let groups = stride(from: 0, to: m, by: 7).map { $0..<min(m, $0 + 7) }
            for rows in groups.reversed() {
                let status = a.withUnsafeBufferPointer { ap in
                    ck_gemm_amx_pack_a_rows(Int64(m), Int64(k), Int64(rows.lowerBound), Int64(rows.count),
                                            ap.baseAddress! + rows.lowerBound * lda, Int64(lda), &packed)
                }
                XCTAssertEqual(status, 0)
            }
            var got = c0, want = c0
            XCTAssertEqual(ck_gemm_amx_packed(transB ? 1 : 0, Int64(m), Int64(n), Int64(k), packed, b, Int64(ldb),
                                              beta, &got, Int64(ldc)), 0)
            XCTAssertEqual(amx(transB ? 1 : 0, Int64(m), Int64(n), Int64(k), 1, a, Int64(lda), b, Int64(ldb), beta,
                               &want, Int64(ldc)), 0)
            let first = got.indices.first { got[$0].bitPattern != want[$0].bitPattern }
            XCTAssertNil(first, "\(m)×\(n)×\(k) transB \(transB): first difference at \(first ?? -1)")
        }
    }

    func testWorkspacesAreHeldPerProductNotPerThread() throws {
        try requireBF16()
        // Products on eight threads, one after another: each takes the workspace the last one gave back, so the
        // process holds no more workspaces than before (at least one). With a workspace per thread, freed only
        // when its thread exits, every new thread would add one.
        let m = 64, n = 64, k = 64
        let a = [Float](repeating: 0.5, count: m * k), b = a
        let before = ck_gemm_bf16_workspaces()
        for _ in 0..<8 {
            // The product has given its workspace back when ck_gemm_bf16 returns, before the signal.
            let done = DispatchSemaphore(value: 0)
            let thread = Thread {
                var c = [Float](repeating: 0, count: m * n)
                _ = ck_gemm_bf16(0, Int64(m), Int64(n), Int64(k), 1, a, Int64(k), b, Int64(n), 0, &c, Int64(n))
                precondition(c[0] == 16, "64 products of 0.5 · 0.5")
                done.signal()
            }
            thread.start()
            done.wait()
        }
        XCTAssertLessThanOrEqual(ck_gemm_bf16_workspaces(), max(before, 1))
        XCTAssertGreaterThanOrEqual(ck_gemm_bf16_workspaces(), 1)
    }

    func testTheAMXPathRefusesWhereItCannotRunAndWritesNothing() throws {
        // Where AMX runs, the product runs (status 0, checked above); elsewhere the call says so and leaves C as
        // it was, so `sgemm` falls back to the AVX512_BF16 kernel or OpenBLAS.
        let a = [Float](repeating: 1, count: 32 * 32), b = a
        var c = [Float](repeating: 3, count: 32 * 32)
        let status = amx(0, 32, 32, 32, 1, a, 32, b, 32, 0, &c, 32)
        if ck_gemm_bf16_amx_available() != 0 {
            XCTAssertEqual(status, 0)
            XCTAssertEqual(c, [Float](repeating: 32, count: 32 * 32), "32 products of ones")
        } else {
            XCTAssertEqual(status, -1)
            XCTAssertEqual(c, [Float](repeating: 3, count: 32 * 32))
        }
    }

    func testTheChosenKernelIsAMXWhereItRunsElseAVX512BF16UnlessForced() {
        let forced = ProcessInfo.processInfo.environment["SDD_BF16_KERNEL"].map { $0 == "avx512" || $0 == "avx512bf16" }
            ?? false
        let expected: BF16Kernel? = ck_gemm_bf16_amx_available() != 0 && !forced ? .amx
            : ck_gemm_bf16_available() != 0 ? .avx512bf16 : nil
        XCTAssertEqual(ProductPrecision.bf16Kernel, expected)
        XCTAssertEqual(ProductPrecision.bf16Available, expected != nil)
    }

    func testAttentionShapedProductsRunInBF16OnAMX() throws {
        try XCTSkipUnless(ProductPrecision.bf16Kernel == .amx, "BF16 products do not run on AMX here")
        // 256 × 40 × 512 (P·V at head dim 40): 40 of 64 columns real, which AVX512_BF16 leaves to F32 but AMX
        // runs (see `bf16Pays`): the result differs from F32's by BF16 operand rounding (~2⁻⁹ relative, far
        // above F32's ~1e-7), and stays within 1e-2 of the output scale.
        let m = 256, n = 40, k = 512
        let a = randomTensor([m, k], seed: 41), b = randomTensor([k, n], seed: 42)
        var f32 = [Float](repeating: 0, count: m * n), bf = f32
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                sgemm(m: m, n: n, k: k, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n, beta: 0,
                      c: &f32, ldc: n)
                sgemm(m: m, n: n, k: k, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n, beta: 0,
                      c: &bf, ldc: n, precision: .bf16)
            }
        }
        let scale = f32.map(abs).max() ?? 1
        let worst = zip(f32, bf).map { abs($0 - $1) }.max() ?? 0
        XCTAssertGreaterThan(worst, 1e-5 * scale)
        XCTAssertLessThan(worst, 1e-2 * scale)
    }

    func testBF16DiffersFromF32OnlyByOperandRounding() throws {
        try requireBF16()
        let x = randomTensor([112, 96], seed: 11)
        let w = randomWeight([96, 96], seed: 12)
        let f32 = linear(x, weight: w, bias: nil)
        let bf = linear(x, weight: w.multiplying(in: .bf16), bias: nil)
        var worst: Float = 0, scale: Float = 0
        for i in 0..<f32.count {
            worst = max(worst, abs(bf[i] - f32[i]))
            scale = max(scale, abs(f32[i]))
        }
        // Two operands rounded to 8 significant bits: ~2⁻⁹ relative each, far below 1e-2 of the output scale,
        // far above F32's rounding (so the BF16 kernel really ran).
        XCTAssertLessThan(worst, 1e-2 * scale)
        XCTAssertGreaterThan(worst, 1e-5 * scale)
    }

    func testAttentionInBF16StaysCloseToF32() throws {
        try requireBF16()
        let q = randomTensor([1, 300, 128], seed: 21), k = randomTensor([1, 300, 128], seed: 22)
        let v = randomTensor([1, 300, 128], seed: 23)
        let f32 = attention(q: q, k: k, v: v, heads: 2)
        let bf = attention(q: q, k: k, v: v, heads: 2, precision: .bf16)
        assertClose(bf, f32.doubles, shape: [1, 300, 128], tolerance: 1e-2)
    }

    func testNarrowProductsFallBackToF32() {
        // 40 columns fill 40/64 of two register tiles: below the 70% where AVX512_BF16 pays, and 16 × 40 × 24
        // is below the 2¹⁷ multiply-adds where AMX pays, so F32 runs — exactly.
        let a = randomTensor([16, 24], seed: 31), b = randomTensor([24, 40], seed: 32)
        var c1 = [Float](repeating: 0, count: 16 * 40), c2 = c1
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                sgemm(m: 16, n: 40, k: 24, a: ap.baseAddress!, lda: 24, b: bp.baseAddress!, ldb: 40, beta: 0,
                      c: &c1, ldc: 40)
                sgemm(m: 16, n: 40, k: 24, a: ap.baseAddress!, lda: 24, b: bp.baseAddress!, ldb: 40, beta: 0,
                      c: &c2, ldc: 40, precision: .bf16)
            }
        }
        XCTAssertEqual(c1, c2)
    }
}
