// LinearTests: linear() against a Double dot-product reference. Tolerance 1e-5 of the output scale.
import XCTest
@testable import TiledKernels

final class LinearTests: XCTestCase {
    func testLinearWithBiasMatchesReferenceOverLeadingDimensions() {
        let x = randomTensor([2, 5, 7], seed: 1)
        let w = randomWeight([3, 7], seed: 2), b = randomWeight([3], seed: 3)
        let want = Ref.linear(x.doubles, rows: 10, w: w.doubles, outF: 3, inF: 7, b: b.doubles)
        assertClose(linear(x, weight: w, bias: b), want, shape: [2, 5, 3], tolerance: 1e-5)
    }

    func testLinearWithoutBiasMatchesReference() {
        let x = randomTensor([4, 33], seed: 4)
        let w = randomWeight([17, 33], seed: 5)
        let want = Ref.linear(x.doubles, rows: 4, w: w.doubles, outF: 17, inF: 33, b: nil)
        assertClose(linear(x, weight: w, bias: nil), want, shape: [4, 17], tolerance: 1e-5)
    }

    func testLinearOfEmptyBatchIsEmpty() {
        let y = linear(Tensor(zeros: [0, 7]), weight: randomWeight([3, 7], seed: 6), bias: randomWeight([3], seed: 7))
        XCTAssertEqual(y.shape, [0, 3])
    }
}
