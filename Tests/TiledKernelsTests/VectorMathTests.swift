// VectorMathTests: the softmax's branch-free exp against Double exp on the range softmax feeds it (x ≤ 0).
import XCTest
@testable import TiledKernels
import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class VectorMathTests: XCTestCase {
    func testFastExpIsWithin3e7RelativeOfExpDownToMinus87() {
        var worst = 0.0
        var x: Float = -87
        while x <= 0 {
            let want = exp(Double(x))
            worst = max(worst, abs(Double(fastExp(x)) - want) / want)
            x += 0.0137
        }
        XCTAssertLessThanOrEqual(worst, 3e-7, "relative error (F32 epsilon is 1.2e-7)")
    }

    func testFastExpOfZeroIsExactlyOne() {
        XCTAssertEqual(fastExp(0), 1)
    }

    func testFastExpBelowMinus87IsATinyPositiveNumber() {
        for x: Float in [-88, -1000, -.infinity] {
            XCTAssertGreaterThan(fastExp(x), 0)
            XCTAssertLessThan(fastExp(x), 2e-38)
        }
    }

    func testTheSoftmaxRowKernelMatchesExpAndSumsTheRowAtEveryCPULevel() {
        // Odd length: vector body plus a scalar tail; values from −120 (clamped to e^−87) up to the shift.
        let count = 1003
        let input = (0..<count).map { Float(-120 + 120 * Double($0) / Double(count - 1)) + 0.5 }
        for level in 0...Int(ck_dequantize_level()) {
            ck_force_dequantize_level(Int32(level))
            defer { ck_force_dequantize_level(-1) }
            var row = input
            let sum = row.withUnsafeMutableBufferPointer { ck_exp_row($0.baseAddress, Int64(count), 0.5) }
            var worst = 0.0
            var want = 0.0
            for (x, got) in zip(input, row) {
                let e = exp(Double(max(x - 0.5, -87)))
                want += e
                worst = max(worst, abs(Double(got) - e) / e)
            }
            XCTAssertLessThanOrEqual(worst, 3e-7, "level \(level): relative error")
            XCTAssertEqual(sum, want, accuracy: 1e-6 * want, "level \(level): row sum")
        }
    }
}
