// ElementwiseTests: add, scale and the per-channel broadcast add. Tolerance 1e-6 (one rounding per element).
import XCTest
@testable import TiledKernels

final class ElementwiseTests: XCTestCase {
    func testAddSumsElementwise() {
        let a = randomTensor([2, 3, 5], seed: 300), b = randomTensor([2, 3, 5], seed: 301)
        assertClose(add(a, b), zip(a.doubles, b.doubles).map(+), shape: a.shape, tolerance: 1e-6)
    }

    func testScaleMultipliesEveryElement() {
        let a = randomTensor([4, 7], seed: 310)
        assertClose(scale(a, by: 0.18215), a.doubles.map { $0 * Double(Float(0.18215)) }, shape: a.shape, tolerance: 1e-6)
    }

    func testAddChannelBiasBroadcastsOverHeightAndWidth() {
        let x = randomTensor([2, 3, 4, 5], seed: 320), v = randomTensor([2, 3], seed: 321)
        var want = x.doubles
        for i in 0..<want.count { want[i] += Double(v[i / 20]) }
        assertClose(addChannelBias(x, v), want, shape: x.shape, tolerance: 1e-6)
    }
}
