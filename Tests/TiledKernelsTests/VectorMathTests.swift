// VectorMathTests: the softmax's branch-free exp against Double exp on the range softmax feeds it (x ≤ 0).
import XCTest
@testable import TiledKernels
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
}
