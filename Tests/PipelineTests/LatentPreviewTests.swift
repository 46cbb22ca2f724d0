// The linear latent→RGB preview: ComfyUI's SD 1.x factors applied per latent cell, and when previews are drawn.
import Foundation
import Pipeline
import TiledKernels
import XCTest
import TestSupport

final class LatentPreviewTests: XCTestCase {
    func testEachCellIsTheFactorWeightedSumMappedFromMinusOneToOne() throws {
        // [1, 4, 1, 3]: cell 0 is channel 0 = 1 (→ the first factor row), cell 1 all zero (→ mid grey),
        // cell 2 a large negative channel 3 (→ clamped).
        let latents = Tensor(shape: [1, 4, 1, 3], data: [1, 0, 0, /* ch1 */ 0, 0, 0, /* ch2 */ 0, 0, 0, /* ch3 */ 0, 0, -4])
        let image = try XCTUnwrap(LatentPreview.rgb(latents))
        XCTAssertEqual([image.width, image.height], [3, 1])
        let row = LatentPreview.sd15Factors[0]
        let expectedFirst = row.map { UInt8((($0 + 1) / 2) * 255) }
        XCTAssertEqual(Array(image.rgb[0..<3]), expectedFirst)
        XCTAssertEqual(Array(image.rgb[0..<3]), [172, 156, 168], "ComfyUI's 0.3512, 0.2297, 0.3227 → (x+1)/2·255, truncated")
        XCTAssertEqual(Array(image.rgb[3..<6]), [127, 127, 127])
        // −4 × (−0.2120, −0.2616, −0.7177) = (0.848, 1.046, 2.871): clamped to 1 where above.
        XCTAssertEqual(Array(image.rgb[6..<9]), [UInt8(((0.848 as Float + 1) / 2) * 255), 255, 255])
    }

    func testTheSecondItemOfABatchIsItsOwnPicture() throws {
        var data = [Float](repeating: 0, count: 2 * 4 * 2 * 2)
        for i in 16..<20 { data[i] = 1 }  // item 1, channel 0
        let latents = Tensor(shape: [2, 4, 2, 2], data: data)
        XCTAssertEqual(try XCTUnwrap(LatentPreview.rgb(latents, item: 0)).rgb, [UInt8](repeating: 127, count: 12))
        XCTAssertEqual(Array(try XCTUnwrap(LatentPreview.rgb(latents, item: 1)).rgb[0..<3]), [172, 156, 168])
        XCTAssertNil(LatentPreview.rgb(latents, item: 2))
    }

    func testLatentsWithoutFourChannelsHaveNoLinearPreview() {
        XCTAssertNil(LatentPreview.rgb(Tensor(zeros: [1, 16, 4, 4])))
        XCTAssertNil(LatentPreview.png(Tensor(zeros: [1, 3, 4, 4])))
    }

    func testThePNGDecodesToTheSamePixels() throws {
        var random = TorchRandom(seed: 3)
        let latents = random.randn([1, 4, 5, 7])
        let png = try XCTUnwrap(LatentPreview.png(latents))
        let image = try PNGReader.decode(png)
        XCTAssertEqual([image.width, image.height], [7, 5])
        XCTAssertEqual(image.rgb, try XCTUnwrap(LatentPreview.rgb(latents)).rgb)
    }

    func testAboutTenPreviewsPerRunNeverAfterTheLastStep() {
        func steps(_ total: Int, every: Int? = nil) -> [Int] {
            (1...total).filter { LatentPreview.isPreviewStep($0, total: total, every: every) }
        }
        XCTAssertEqual(steps(4), [1, 2, 3])
        XCTAssertEqual(steps(50), [5, 10, 15, 20, 25, 30, 35, 40, 45])
        XCTAssertEqual(steps(25), [3, 6, 9, 12, 15, 18, 21, 24])
        XCTAssertEqual(steps(6, every: 2), [2, 4])
        XCTAssertEqual(steps(6, every: 0), [])
        XCTAssertEqual(steps(1), [])
    }
}
