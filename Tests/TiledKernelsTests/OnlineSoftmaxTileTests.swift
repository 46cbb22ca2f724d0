// OnlineSoftmaxTileTests: the C online-softmax tile step (ck_online_softmax_tile) and its normalization
// (ck_online_softmax_finish) against a plain Double model of the same update, at every CPU level this machine
// has (level 0: portable C; 1: portable C with AVX2 exp; 2: AVX-512).
//
// Tolerances, from the kernel's float arithmetic (u = 2^-24 ≈ 6e-8):
// - P = exp(s − m): the F32 subtraction x = s − m errs by ≤ u·|x|, which moves exp by a relative u·|x|; the
//   polynomial adds ≤ 3e-7 relative (VectorMathTests' bound). So |ΔP| ≤ e^x·(3e-7 + u·|x|) ≤ 3e-7 + u·max(|x|e^x)
//   = 3e-7 + u/e < 3.3e-7 for x ≤ 0: checked with 4e-7 absolute.
// - Running sum: each new P adds ≤ 3.3e-7; the F32 lane sums (≤ cols/16 + 1 additions per lane) add a relative
//   ≤ (cols/16 + 1)·u ≤ 3e-7 for the ≤ 52 keys used here; the rescale factor exp(Δ) errs ≤ 3e-7 + u·|Δ| ≤ 2.1e-6
//   relative for |Δ| ≤ 30 (the largest jump here), compounded over ≤ 3 tiles: 6.6e-6, checked at 1.2e-5 relative
//   plus 4e-7 per key.
// - Accumulator rows: one rescale, ≤ 2.1e-6 relative plus the product's rounding u: checked at 4e-6 relative.
// - Running max: a max of floats is exact.
import XCTest
import CKernels
@testable import TiledKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The online softmax's state in Double, updated the way the kernel documents it.
private struct OnlineSoftmaxModel {
    var runMax: [Float]
    var runSum: [Double]
    var acc: [[Double]]

    init(rows: Int, width: Int, initialAcc: Double) {
        runMax = [Float](repeating: -.infinity, count: rows)
        runSum = [Double](repeating: 0, count: rows)
        acc = [[Double]](repeating: [Double](repeating: initialAcc, count: width), count: rows)
    }

    /// Returns P for the tile ([rows][cols]) and updates the running state.
    mutating func absorb(scores: [[Float]], visible: (Int) -> Int) -> [[Double]] {
        var p = scores.map { [Double](repeating: 0, count: $0.count) }
        for i in scores.indices {
            let valid = visible(i)
            if valid == 0 { continue }
            let newMax = max(runMax[i], scores[i][..<valid].max() ?? -.infinity)
            if newMax == -.infinity { continue }
            for j in 0..<valid {
                // The kernel's documented clamp: exp of anything below −87 is e^−87.
                p[i][j] = exp(max(Double(scores[i][j]) - Double(newMax), -87))
            }
            if runMax[i] != -.infinity && newMax != runMax[i] {
                let c = exp(Double(runMax[i]) - Double(newMax))
                runSum[i] *= c
                acc[i] = acc[i].map { $0 * c }
            }
            runSum[i] += p[i].reduce(0, +)
            runMax[i] = newMax
        }
        return p
    }
}

final class OnlineSoftmaxTileTests: XCTestCase {
    private let rows = 8, width = 40, accStride = 45

    /// Three tiles of scores (11, 37 and 52 keys: none a multiple of 16), one row per situation.
    private func tiles() -> [[[Float]]] {
        var rng = LCG(seed: 900)
        return [11, 37, 52].enumerated().map { t, cols in
            (0..<rows).map { i -> [Float] in
                var row = (0..<cols).map { _ in rng.next() * 4 }
                switch i {
                case 0: row[cols / 2] = 30 * Float(t + 1)  // max grows every tile
                case 1: if t == 0 { row[3] = 20 } // max set in the first tile, never beaten
                case 2: if t == 0 { row = row.map { _ in -.infinity } } // nothing to see in the first tile
                case 3: row = row.enumerated().map { j, v in j % 3 == 0 ? -1000 : v } // very negative scores
                case 4: row[0] = 5  // the same max in every tile (ties do not rescale)
                case 5: row = row.enumerated().map { j, v in j % 2 == 0 ? -.infinity : v } // −inf among finite
                case 6: row = row.map { _ in -.infinity } // every score −inf: the row stays empty
                default: row[cols - 1] = Float(t) * 2 + 4  // max in the tail lanes
                }
                return row
            }
        }
    }

    private func forEachLevel(_ body: (Int) -> Void) {
        for level in 0...Int(ck_dequantize_level()) {
            ck_force_dequantize_level(Int32(level))
            defer { ck_force_dequantize_level(-1) }
            body(level)
        }
    }

    func testTileStepsMatchTheDoubleOnlineSoftmaxAtEveryCPULevel() {
        forEachLevel { level in
            var model = OnlineSoftmaxModel(rows: rows, width: width, initialAcc: 0)
            var runMax = [Float](repeating: -.infinity, count: rows)
            var runSum = [Double](repeating: 0, count: rows)
            // The accumulator's padding (stride 45, width 40) must stay untouched: filled with a marker.
            var acc = [Float](repeating: 7, count: rows * accStride)
            for (t, tile) in tiles().enumerated() {
                let cols = tile[0].count
                var scores = tile.flatMap { $0 }
                let accBefore = acc
                ck_online_softmax_tile(&scores, Int64(rows), Int64(cols), 0, 0, &runMax, &runSum, &acc,
                                       Int64(accStride), Int64(width))
                let maxBefore = model.runMax
                let want = model.absorb(scores: tile, visible: { _ in cols })
                for i in 0..<rows {
                    XCTAssertEqual(runMax[i], model.runMax[i], "level \(level) tile \(t) row \(i): running max")
                    for j in 0..<cols {
                        XCTAssertEqual(Double(scores[i * cols + j]), want[i][j], accuracy: 4e-7,
                                       "level \(level) tile \(t) row \(i) key \(j): P")
                    }
                    XCTAssertEqual(runSum[i], model.runSum[i], accuracy: 1.2e-5 * model.runSum[i] + 4e-7 * Double(cols),
                                   "level \(level) tile \(t) row \(i): running sum")
                    for d in 0..<accStride {
                        let got = acc[i * accStride + d], before = accBefore[i * accStride + d]
                        if d >= width {
                            XCTAssertEqual(got, 7, "level \(level) tile \(t) row \(i): padding \(d) written")
                        } else if t == 0 || maxBefore[i] == -.infinity || maxBefore[i] == model.runMax[i] {
                            // No rescale: first tile (old max −inf) or an unchanged max leaves the row bit-identical.
                            XCTAssertEqual(got, before, "level \(level) tile \(t) row \(i) channel \(d): touched")
                        } else {
                            XCTAssertEqual(Double(got), model.acc[i][d], accuracy: 4e-6 * abs(model.acc[i][d]),
                                           "level \(level) tile \(t) row \(i) channel \(d): rescaled accumulator")
                        }
                    }
                }
                // The product P·V would add here: give both the same new accumulator (the first tile's beta-0
                // product overwrites whatever was there).
                for i in 0..<rows {
                    for d in 0..<width {
                        var added = 0.0
                        for j in 0..<cols { added += want[i][j] * Double((j + d) % 7 - 3) }
                        let next = (t == 0 ? 0 : model.acc[i][d]) + added
                        acc[i * accStride + d] = Float(next)
                        model.acc[i][d] = Double(Float(next))
                    }
                }
            }
            XCTAssertEqual(runMax[6], -.infinity, "level \(level): an all −inf row keeps no max")
            XCTAssertEqual(runSum[6], 0, "level \(level): an all −inf row keeps no sum")
        }
    }

    func testCausalMaskZeroesHiddenKeysAndSkipsRowsThatSeeNone() {
        forEachLevel { level in
            // Query rows 0..<8 start at query 5, keys at 7: row i sees keys j ≤ i − 2 (rows 0, 1 see none).
            let cols = 21, queryMinusKey = 5 - 7
            var rng = LCG(seed: 910)
            let tile = (0..<rows).map { _ in (0..<cols).map { _ in rng.next() * 3 } }
            var scores = tile.flatMap { $0 }
            var runMax = [Float](repeating: -.infinity, count: rows)
            var runSum = [Double](repeating: 0, count: rows)
            var acc = [Float](repeating: 0, count: rows * accStride)
            ck_online_softmax_tile(&scores, Int64(rows), Int64(cols), Int64(queryMinusKey), 1, &runMax, &runSum, &acc,
                                   Int64(accStride), Int64(width))
            var model = OnlineSoftmaxModel(rows: rows, width: width, initialAcc: 0)
            let visible = { (i: Int) in max(0, min(cols, queryMinusKey + i + 1)) }
            let want = model.absorb(scores: tile, visible: visible)
            for i in 0..<rows {
                for j in 0..<cols {
                    if j >= visible(i) {
                        XCTAssertEqual(scores[i * cols + j], 0, "level \(level) row \(i) key \(j): hidden key weighted")
                    } else {
                        XCTAssertEqual(Double(scores[i * cols + j]), want[i][j], accuracy: 4e-7,
                                       "level \(level) row \(i) key \(j): P")
                    }
                }
                XCTAssertEqual(runMax[i], model.runMax[i], "level \(level) row \(i): running max")
                XCTAssertEqual(runSum[i], model.runSum[i], accuracy: 1.2e-5 * model.runSum[i] + 4e-7 * Double(cols),
                               "level \(level) row \(i): running sum")
            }
            XCTAssertEqual(runMax[0], -.infinity, "level \(level): a row that sees no key keeps no max")
            XCTAssertEqual(runSum[1], 0, "level \(level): a row that sees no key keeps no sum")
        }
    }

    func testFinishDividesEachRowByItsSumInPlaceAndZeroesEmptyRows() {
        forEachLevel { level in
            var rng = LCG(seed: 920)
            var acc = (0..<rows * accStride).map { _ in rng.next() * 10 }
            let before = acc
            let sums: [Double] = (0..<rows).map { $0 == 3 ? 0 : 0.5 + Double($0) * 3.25 }
            acc.withUnsafeMutableBufferPointer { a in
                ck_online_softmax_finish(a.baseAddress, Int64(accStride), sums, Int64(rows), Int64(width),
                                         a.baseAddress, Int64(accStride))
            }
            for i in 0..<rows {
                for d in 0..<accStride {
                    let got = acc[i * accStride + d], old = before[i * accStride + d]
                    if d >= width {
                        XCTAssertEqual(got, old, "level \(level) row \(i): padding \(d) written")
                    } else if sums[i] == 0 {
                        XCTAssertEqual(got, 0, "level \(level) row \(i): a row that saw no key")
                    } else {
                        // acc · Float(1/sum): two F32 roundings, ≤ 2u relative.
                        XCTAssertEqual(Double(got), Double(old) / sums[i], accuracy: 1.2e-7 * abs(Double(old) / sums[i]),
                                       "level \(level) row \(i) channel \(d)")
                    }
                }
            }
        }
    }
}
