// GroupNormAndGELUKernelTests: CKernels' ck_group_norm, ck_erf_row, ck_gelu_row and ck_geglu_row on every code path
// this CPU has (AVX-512, AVX2, portable C, forced with ck_force_dequantize_level) against Double references, on
// lengths that cross the 16- and 8-lane vector bodies into their scalar tails, with per-element bounds derived below.
import XCTest
@testable import TiledKernels
import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// F32's unit roundoff: one correctly rounded operation is off by at most u relative (an ulp of [½, 1)).
private let u = 0x1p-24

/// Runs `body` once per code path this CPU has (0 portable, 1 AVX2, 2 AVX-512), the path forced for the call.
private func forEachLevel(_ body: (Int) -> Void) {
    for level in 0...Int(ck_dequantize_level()) {
        ck_force_dequantize_level(Int32(level))
        defer { ck_force_dequantize_level(-1) }
        body(level)
    }
}

/// Lengths around the vector widths: empty-body rows, one lane short and over 16 and 8, and long odd rows.
private let oddLengths = [1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 255, 1001]

private func floats(_ count: Int, seed: UInt64, scale: Float, offset: Float = 0) -> [Float] {
    var rng = LCG(seed: seed)
    return (0..<count).map { _ in rng.next() * scale + offset }
}

final class GroupNormKernelTests: XCTestCase {
    /// One (sample, group) in Double: the exact mean μ and a = γ/sqrt(var + eps) per channel.
    /// Bound per element (v = (x − μ)·a + β): the kernel rounds μ to F32 (≤ u·|μ|, scaled by |a|), a from Double
    /// (u), then x − m, ·a and + β, each ≤ u of its result: |error| ≤ u·(|μ·a| + 3|(x − μ)·a| + |v|), which
    /// 4u·(|μ·a| + |(x − μ)·a| + |β|) covers. SiLU: |silu'(v)| ≤ 1.1 carries v's error; exp (Cephes, ≤ 2 ulp),
    /// 1 + e and the division add ≤ 3u relative of the result; outside exp's clamp [−87, 88] the kernel's value is
    /// v itself (v > 87) or, like the true one, under 1e−35 in magnitude (v < −88).
    private func check(channels: Int, spatial: Int, seed: UInt64, scale: Float, offset: Float, gammaScale: Float,
                       eps: Float, silu: Bool, level: Int, file: StaticString = #filePath, line: UInt = #line) {
        let count = channels * spatial
        let x = floats(count, seed: seed, scale: scale, offset: offset)
        let gamma = floats(channels, seed: seed + 1, scale: gammaScale)
        let beta = floats(channels, seed: seed + 2, scale: 1)
        var y = [Float](repeating: .nan, count: count)
        x.withUnsafeBufferPointer { xp in gamma.withUnsafeBufferPointer { gp in beta.withUnsafeBufferPointer { bp in
            y.withUnsafeMutableBufferPointer { yp in
                ck_group_norm(xp.baseAddress, yp.baseAddress, Int64(channels), Int64(spatial), gp.baseAddress,
                              bp.baseAddress, eps, silu ? 1 : 0)
            }
        } } }
        let mean = x.reduce(0.0) { $0 + Double($1) } / Double(count)
        let variance = x.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(count)
        var worst = 0.0, worstIndex = 0
        for i in 0..<count {
            let a = Double(gamma[i / spatial]) / (variance + Double(eps)).squareRoot()
            let b = Double(beta[i / spatial])
            let v = (Double(x[i]) - mean) * a + b
            var bound = 4 * u * (abs(mean * a) + abs((Double(x[i]) - mean) * a) + abs(b))
            var want = v
            if silu {
                want = Ref.silu(v)
                bound = 1.1 * bound + 3 * u * abs(want) + 1e-35
            }
            let ratio = abs(Double(y[i]) - want) / bound
            if !(ratio <= worst) { worst = ratio; worstIndex = i }  // NaN counts as worst
        }
        XCTAssertLessThanOrEqual(worst, 1, "level \(level), \(channels)×\(spatial), silu \(silu): "
                                 + "element \(worstIndex) got \(y[worstIndex]) (error / bound \(worst))", file: file, line: line)
    }

    func testEveryPathMatchesTheDoubleReferenceOnOddSizes() {
        forEachLevel { level in
            for (k, spatial) in oddLengths.enumerated() {
                for channels in [1, 3] {
                    for silu in [false, true] {
                        check(channels: channels, spatial: spatial, seed: UInt64(300 + 10 * k + channels), scale: 2,
                              offset: 30, gammaScale: 1.5, eps: 1e-5, silu: silu, level: level)
                    }
                }
            }
        }
    }

    func testLargeOffsetsKeepTheVarianceAccurate() {
        // mean 1e4, spread 1: a one-pass F32 variance (E[x²] − μ², both ~1e8) would lose every digit.
        forEachLevel { level in
            check(channels: 4, spatial: 257, seed: 320, scale: 1, offset: 1e4, gammaScale: 1, eps: 1e-6, silu: false,
                  level: level)
        }
    }

    func testTinyAndHugeMagnitudes() {
        forEachLevel { level in
            // Spread 1e−3 with eps 1e−6: eps is part of the scale. Spread 1e6: values far from 1.
            check(channels: 2, spatial: 129, seed: 330, scale: 1e-3, offset: 0, gammaScale: 1, eps: 1e-6,
                  silu: true, level: level)
            check(channels: 2, spatial: 129, seed: 340, scale: 1e6, offset: -3e5, gammaScale: 1, eps: 1e-6,
                  silu: false, level: level)
        }
    }

    func testFusedSiLUBeyondExpsClampRange() {
        // gamma up to ±300 puts v far beyond ±88, where exp(−v) is clamped.
        forEachLevel { level in
            check(channels: 3, spatial: 47, seed: 350, scale: 1, offset: 0, gammaScale: 300, eps: 1e-5, silu: true,
                  level: level)
        }
    }

    func testTheSwiftEntryPointSplitsGroupsAndMatchesTheReferenceOnEveryPath() {
        // Several samples and groups with an odd spatial size: the Swift loop hands each (sample, group) its slice
        // and its channels' gamma/beta. Tolerance 1e−5 of the output scale, as NormalizationTests'.
        let x = randomTensor([2, 12, 5, 9], seed: 360, scale: 3, offset: 10)
        let gamma = randomWeight([12], seed: 361), beta = randomWeight([12], seed: 362)
        let plain = Ref.groupNorm(x.doubles, n: 2, c: 12, spatial: 45, groups: 4, gamma: gamma.doubles,
                                  beta: beta.doubles, eps: 1e-5)
        forEachLevel { _ in
            assertClose(groupNorm(x, groups: 4, gamma: gamma, beta: beta, eps: 1e-5), plain, shape: x.shape,
                        tolerance: 1e-5)
            assertClose(groupNorm(x, groups: 4, gamma: gamma, beta: beta, eps: 1e-5, silu: true), plain.map(Ref.silu),
                        shape: x.shape, tolerance: 1e-5)
        }
    }
}

final class GELUKernelTests: XCTestCase {
    private func erfRow(_ x: [Float]) -> [Float] {
        var y = [Float](repeating: .nan, count: x.count)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { ck_erf_row(xp.baseAddress, $0.baseAddress, Int64(x.count)) }
        }
        return y
    }

    private func geluRow(_ x: [Float]) -> [Float] {
        var y = [Float](repeating: .nan, count: x.count)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { ck_gelu_row(xp.baseAddress, $0.baseAddress, Int64(x.count)) }
        }
        return y
    }

    /// GELU in Double from the upper/lower tail as fits: 0.5·x·erfc(−x/√2) has no cancellation for x < 0
    /// (0.5·x·(1 + erf(x/√2)) loses every digit below x ≈ −8 even in Double).
    private func wantGELU(_ x: Float) -> Double { 0.5 * Double(x) * erfc(-Double(x) / 2.0.squareRoot()) }

    func testErfIsWithin2UlpOfDoubleErfOnASweepOfFloatsOnEveryPath() {
        // Every 4099th F32 with |x| in [2^−126, 4.5] (beyond, erf is ±1 to F32), both signs, in one long odd row.
        // The polynomials' fit error is 0.26 ulp (P) and 0.2·2^−24 (log erfc); with F32 evaluation the worst seen
        // on a 17× denser sweep is 1.13 ulp (FMA) and 1.40 ulp (portable): 2 ulp leaves that margin.
        var x = [Float]()
        var bits = Float.leastNormalMagnitude.bitPattern
        while bits <= Float(4.5).bitPattern {
            x.append(Float(bitPattern: bits))
            x.append(-Float(bitPattern: bits))
            bits += 4099
        }
        x.append(0.5)
        forEachLevel { level in
            let y = erfRow(x)
            var worst = 0.0, worstX: Float = 0
            for (v, got) in zip(x, y) {
                let want = erf(Double(v))
                let ulps = abs(Double(got) - want) / Double(Float(abs(want)).ulp)
                if !(ulps <= worst) { worst = ulps; worstX = v }
            }
            XCTAssertLessThanOrEqual(worst, 2, "level \(level): worst at x = \(worstX)")
        }
    }

    func testErfOfSpecialValues() {
        let x: [Float] = [0, -0.0, .infinity, -.infinity, .nan, 3.92, -3.92, 5, -1e30, .greatestFiniteMagnitude,
                          Float(1e-40 as Double), Float(-1e-40 as Double), Float.leastNonzeroMagnitude]  // subnormals
        forEachLevel { level in
            let y = erfRow(x)
            XCTAssertEqual(y[0].bitPattern, Float(0).bitPattern, "level \(level): erf(+0) is +0")
            XCTAssertEqual(y[1].bitPattern, Float(-0.0).bitPattern, "level \(level): erf(−0) is −0")
            XCTAssertEqual(Array(y[2...3]), [1, -1], "level \(level): erf(±∞)")
            XCTAssertTrue(y[4].isNaN, "level \(level): erf(NaN)")
            // erfc(3.92) ≈ 2.9e−8 < ½ ulp below 1 (2.98e−8): erf is ±1 from there on.
            XCTAssertEqual(Array(y[5...9]), [1, -1, 1, -1, 1], "level \(level): erf of large |x|")
            // Subnormal x: erf(x) = (2/√π)·x, within one subnormal step (2^−149) each way of rounding.
            for i in 10...12 {
                XCTAssertEqual(Double(y[i]), 2 / Double.pi.squareRoot() * Double(x[i]), accuracy: 0x1p-148,
                               "level \(level): erf(\(x[i]))")
            }
        }
    }

    func testGELUIsWithin4UnitRoundoffsOfXOnEveryPath() {
        // Bound 4u·|x| + 2^−148: GELU = x·Φ(x) with Φ ≤ 1. z = x/√2 rounded moves Φ by ≤ φ(z)·|z|·u ≤ 0.24u;
        // erf's ≤ 2 ulp (≤ 2u below 1) is halved in Φ (u); ½ + ½·erf and the product x·Φ round by u each:
        // 3.24u·|x| (measured: 1.92u). The absolute term covers subnormal x, whose products round to a subnormal
        // step. Lengths cross the vector widths; values: a dense [−8, 8] ramp plus tiny, subnormal and huge ones.
        var x = (0..<40_001).map { Float(-8 + 16 * Double($0) / 40_000) }
        x += [1e-30, -1e-30, 1e-38, -1e-38, Float(1e-42 as Double), Float(-1e-42 as Double), 1e3, -1e3, 1e30, -1e30, 3e38, -3e38, 0, -0.0]
        forEachLevel { level in
            for n in oddLengths + [x.count] {
                let row = Array(x.suffix(n))
                let y = geluRow(row)
                for (v, got) in zip(row, y) {
                    let want = wantGELU(v)
                    XCTAssertLessThanOrEqual(abs(Double(got) - want), 4 * u * abs(Double(v)) + 0x1p-148,
                                             "level \(level), n \(n): gelu(\(v)) = \(got), want \(want)")
                }
            }
        }
    }

    func testGELUOfNegativeInputsKeepsItsRelativeAccuracyInTheLowerTail() {
        // The tail is ½·erfc(|z|) itself, not 1 + erf(z): relative error ≤ 6e−6 down to x = −5.5. Its sources:
        // z = x/√2 rounded (u relative) moves log erfc by ≈ 2z²·u ≤ 30u; log erfc held in F32 (|q| ≤ 18, half an
        // ulp 2^−20) 16u; exp ≤ 2u: ≈ 48u = 2.9e−6, measured 3.6e−6 with Horner's roundings; 6e−6 leaves
        // margin. torch's F32 1 + erf(z) form is off by 5e−4 relative at x = −4 and reaches 0 (100%) before −5.6.
        // Below x ≈ −5.657 (Φ < 8e−9) GELU is −0, as in that form.
        let x = (0..<5001).map { Float(-5.5 + 5 * Double($0) / 5000) }
        forEachLevel { level in
            let y = geluRow(x)
            var worst = 0.0, worstX: Float = 0
            for (v, got) in zip(x, y) {
                let relative = abs(Double(got) - wantGELU(v)) / abs(wantGELU(v))
                if !(relative <= worst) { worst = relative; worstX = v }
            }
            XCTAssertLessThanOrEqual(worst, 6e-6, "level \(level): worst at x = \(worstX)")
            let far = geluRow([-5.7, -6, -10, -1e20])
            XCTAssertEqual(far.map(\.bitPattern), [Float](repeating: -0.0, count: 4).map(\.bitPattern),
                           "level \(level): gelu far in the lower tail")
        }
    }

    func testGELUOfInfinityAndNaN() {
        forEachLevel { level in
            let y = geluRow([.infinity, .nan])
            XCTAssertEqual(y[0], .infinity, "level \(level)")
            XCTAssertTrue(y[1].isNaN, "level \(level)")
        }
    }

    func testSwiftGELUAndGEGLUMatchTheReferenceOnEveryPath() {
        // GEGLU: y = h·fl(g·Φ(g)); the GELU bound 4u·|g| scaled by |h| plus the product's u·|h·gelu(g)| ≤ 5u·|h·g|.
        // Row lengths f cross the vector widths; several rows so each starts off a 64-byte boundary.
        forEachLevel { level in
            let x = randomTensor([5, 1001], seed: 400, scale: 6)
            let g = gelu(x)
            for i in 0..<x.count {
                XCTAssertLessThanOrEqual(abs(Double(g[i]) - wantGELU(x[i])), 4 * u * abs(Double(x[i])) + 0x1p-148,
                                         "level \(level): gelu element \(i)")
            }
            for f in oddLengths {
                let rows = 3
                let x = randomTensor([rows, 2 * f], seed: UInt64(410 + f), scale: 5)
                let y = geglu(x)
                XCTAssertEqual(y.shape, [rows, f])
                for r in 0..<rows {
                    for i in 0..<f {
                        let h = Double(x[r * 2 * f + i]), gate = x[r * 2 * f + f + i]
                        let want = h * wantGELU(gate)
                        XCTAssertLessThanOrEqual(abs(Double(y[r * f + i]) - want),
                                                 5 * u * abs(h * Double(gate)) + 0x1p-148,
                                                 "level \(level), f \(f): row \(r) element \(i)")
                    }
                }
            }
        }
    }
}
