// ActivationTests: silu / gelu / quickGelu / geglu against their torch formulas evaluated in Double.
// Tolerance 1e-6 of the output scale (one transcendental per element, no accumulation).
import XCTest
@testable import TiledKernels

final class ActivationTests: XCTestCase {
    /// Odd-sized inputs over [-6, 6), one small and one large enough to be split across threads.
    private let inputs = [randomTensor([3, 7, 5], seed: 200, scale: 6), randomTensor([2, 40_001], seed: 201, scale: 6)]

    func testSiLUIsXTimesSigmoidX() {
        for x in inputs { assertClose(silu(x), x.doubles.map(Ref.silu), shape: x.shape, tolerance: 1e-6) }
    }

    func testGELUIsTheExactErfForm() {
        for x in inputs { assertClose(gelu(x), x.doubles.map(Ref.gelu), shape: x.shape, tolerance: 1e-6) }
    }

    func testQuickGELUIsXTimesSigmoidOf1702X() {
        for x in inputs { assertClose(quickGelu(x), x.doubles.map(Ref.quickGelu), shape: x.shape, tolerance: 1e-6) }
    }

    func testGEGLUMultipliesFirstHalfByGELUOfSecondHalf() {
        for (rows, f) in [(6, 5), (300, 160)] {
            let x = randomTensor([2, rows / 2, 2 * f], seed: 210, scale: 4)
            var want = [Double]()
            for r in 0..<rows {
                for i in 0..<f {
                    want.append(Double(x[r * 2 * f + i]) * Ref.gelu(Double(x[r * 2 * f + f + i])))
                }
            }
            assertClose(geglu(x), want, shape: [2, rows / 2, f], tolerance: 1e-6)
        }
    }
}
