// NormalizationTests: groupNorm() / layerNorm() against two-pass Double references (torch.nn semantics).
// Inputs carry a large common offset so a single-pass or F32 variance would fail. Tolerance 1e-5.
import XCTest
@testable import TiledKernels

final class NormalizationTests: XCTestCase {
    func testGroupNormMatchesReference() {
        let x = randomTensor([2, 6, 5, 7], seed: 100, scale: 2, offset: 30)
        let gamma = randomWeight([6], seed: 101), beta = randomWeight([6], seed: 102)
        let want = Ref.groupNorm(x.doubles, n: 2, c: 6, spatial: 35, groups: 3,
                                 gamma: gamma.doubles, beta: beta.doubles, eps: 1e-5)
        assertClose(groupNorm(x, groups: 3, gamma: gamma, beta: beta, eps: 1e-5), want, shape: x.shape, tolerance: 1e-5)
    }

    func testGroupNormWithFusedSiLUIsSiLUOfTheNormalizedValues() {
        let x = randomTensor([2, 8, 3, 5], seed: 110, scale: 3)
        let gamma = randomWeight([8], seed: 111), beta = randomWeight([8], seed: 112)
        let want = Ref.groupNorm(x.doubles, n: 2, c: 8, spatial: 15, groups: 4,
                                 gamma: gamma.doubles, beta: beta.doubles, eps: 1e-6).map(Ref.silu)
        assertClose(groupNorm(x, groups: 4, gamma: gamma, beta: beta, eps: 1e-6, silu: true), want,
                    shape: x.shape, tolerance: 1e-5)
    }

    func testGroupNormAcceptsAnySpatialRank() {
        let x = randomTensor([3, 4, 11], seed: 120)
        let gamma = randomWeight([4], seed: 121), beta = randomWeight([4], seed: 122)
        let want = Ref.groupNorm(x.doubles, n: 3, c: 4, spatial: 11, groups: 2,
                                 gamma: gamma.doubles, beta: beta.doubles, eps: 1e-5)
        assertClose(groupNorm(x, groups: 2, gamma: gamma, beta: beta, eps: 1e-5), want, shape: x.shape, tolerance: 1e-5)
    }

    func testGroupNormOnALargeInputSplitAcrossThreadsMatchesReference() {
        let x = randomTensor([2, 32, 24, 24], seed: 130, offset: -4)
        let gamma = randomWeight([32], seed: 131), beta = randomWeight([32], seed: 132)
        let want = Ref.groupNorm(x.doubles, n: 2, c: 32, spatial: 576, groups: 8,
                                 gamma: gamma.doubles, beta: beta.doubles, eps: 1e-5)
        assertClose(groupNorm(x, groups: 8, gamma: gamma, beta: beta, eps: 1e-5), want, shape: x.shape, tolerance: 1e-5)
    }

    func testLayerNormNormalizesOverTheLastDimension() {
        let x = randomTensor([2, 5, 33], seed: 140, scale: 2, offset: 20)
        let gamma = randomWeight([33], seed: 141), beta = randomWeight([33], seed: 142)
        let want = Ref.layerNorm(x.doubles, features: 33, gamma: gamma.doubles, beta: beta.doubles, eps: 1e-5)
        assertClose(layerNorm(x, gamma: gamma, beta: beta, eps: 1e-5), want, shape: x.shape, tolerance: 1e-5)
    }

    func testLayerNormOnManyRowsSplitAcrossThreadsMatchesReference() {
        let x = randomTensor([2, 300, 64], seed: 150)
        let gamma = randomWeight([64], seed: 151), beta = randomWeight([64], seed: 152)
        let want = Ref.layerNorm(x.doubles, features: 64, gamma: gamma.doubles, beta: beta.doubles, eps: 1e-5)
        assertClose(layerNorm(x, gamma: gamma, beta: beta, eps: 1e-5), want, shape: x.shape, tolerance: 1e-5)
    }
}
