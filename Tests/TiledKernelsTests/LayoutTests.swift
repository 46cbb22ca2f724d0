// LayoutTests: upsampling, channel concat and the NCHW ⇄ token transposes move values exactly (no tolerance).
import XCTest
@testable import TiledKernels

final class LayoutTests: XCTestCase {
    func testUpsampleNearest2xRepeatsEachPixelInA2x2Block() {
        let x = randomTensor([2, 3, 5, 7], seed: 500)
        let y = upsampleNearest2x(x)
        XCTAssertEqual(y.shape, [2, 3, 10, 14])
        for p in 0..<6 {
            for i in 0..<10 {
                for j in 0..<14 {
                    XCTAssertEqual(y[(p * 10 + i) * 14 + j], x[(p * 5 + i / 2) * 7 + j / 2])
                }
            }
        }
    }

    func testConcatChannelsPutsAChannelsBeforeBChannelsPerSample() {
        let a = randomTensor([2, 3, 4, 5], seed: 510), b = randomTensor([2, 2, 4, 5], seed: 511)
        let y = concatChannels(a, b)
        XCTAssertEqual(y.shape, [2, 5, 4, 5])
        for n in 0..<2 {
            for c in 0..<5 {
                for s in 0..<20 {
                    let want = c < 3 ? a[(n * 3 + c) * 20 + s] : b[(n * 2 + c - 3) * 20 + s]
                    XCTAssertEqual(y[(n * 5 + c) * 20 + s], want)
                }
            }
        }
    }

    func testNCHWToTokensPutsChannelsLast() {
        // 40 × 45 exercises partial 32-wide transpose blocks.
        let x = randomTensor([2, 40, 5, 9], seed: 520)
        let y = nchwToTokens(x)
        XCTAssertEqual(y.shape, [2, 45, 40])
        for n in 0..<2 {
            for c in 0..<40 {
                for s in 0..<45 { XCTAssertEqual(y[(n * 45 + s) * 40 + c], x[(n * 40 + c) * 45 + s]) }
            }
        }
    }

    func testTokensToNCHWInvertsNCHWToTokens() {
        let x = randomTensor([2, 37, 6, 7], seed: 530)
        let back = tokensToNCHW(nchwToTokens(x), height: 6, width: 7)
        XCTAssertEqual(back.shape, x.shape)
        XCTAssertEqual(back.data, x.data)
    }
}
