// TensorMemoryTests: large tensors reuse freed pool blocks instead of mapping new ones, the footprint limit
// bounds live plus idle blocks without cutting live tensors, and Tensor keeps value semantics over shared storage.
import XCTest
@testable import TiledKernels

final class TensorMemoryTests: XCTestCase {
    /// 2 MB of floats: well above `TensorMemory.pooledMinimumBytes`.
    private let pooled = [500_000]

    override func setUp() {
        super.setUp()
        TensorMemory.limitFootprint(nil)
        TensorMemory.releaseIdle()
    }

    override func tearDown() {
        TensorMemory.limitFootprint(nil)
        TensorMemory.releaseIdle()
        super.tearDown()
    }

    func testAFreedBlockServesTheNextTensorOfItsSizeWithoutANewMapping() {
        do {
            var first = Tensor(uninitialized: pooled)
            first.withUnsafeMutableBufferPointer { b in for i in b.indices { b[i] = 7 } }
        }
        let mapped = TensorMemory.blocksMapped
        XCTAssertGreaterThanOrEqual(TensorMemory.idleBytes, pooled[0] * 4)
        let second = Tensor(zeros: pooled)
        XCTAssertEqual(TensorMemory.blocksMapped, mapped, "the idle block is reused")
        XCTAssertEqual(second.data.max(), 0, "zeros are written into a reused block")
        XCTAssertEqual(second.data.min(), 0)
    }

    func testTheFootprintLimitUnmapsIdleBlocksAboveIt() {
        let before = TensorMemory.liveBytes  // tensors other tests keep (fixture caches)
        let limit = before + (5 << 20)  // room for two of the three 2 MB tensors
        TensorMemory.limitFootprint(limit)
        do {
            let a = Tensor(zeros: pooled), b = Tensor(zeros: pooled), c = Tensor(zeros: pooled)
            XCTAssertGreaterThan(TensorMemory.liveBytes, limit, "live tensors are never cut")
            XCTAssertEqual(a.count + b.count + c.count, 3 * pooled[0])
        }
        XCTAssertEqual(TensorMemory.liveBytes, before)
        XCTAssertLessThanOrEqual(TensorMemory.liveBytes + TensorMemory.idleBytes, limit)
        XCTAssertGreaterThan(TensorMemory.idleBytes, 0, "blocks within the limit stay for reuse")
        TensorMemory.releaseIdle()
        XCTAssertEqual(TensorMemory.idleBytes, 0)
    }

    func testWithoutALimitASlightlyLargerIdleBlockIsReusedAndUnderALimitOnlyItsOwnSize() {
        let smaller = [pooled[0] * 9 / 10]  // within a quarter of the idle block's size
        do { _ = Tensor(zeros: pooled) }
        var mapped = TensorMemory.blocksMapped
        do { _ = Tensor(zeros: smaller) }
        XCTAssertEqual(TensorMemory.blocksMapped, mapped, "no limit: the larger idle block serves it")
        TensorMemory.releaseIdle()
        TensorMemory.limitFootprint(TensorMemory.liveBytes + (16 << 20))
        do { _ = Tensor(zeros: pooled) }
        mapped = TensorMemory.blocksMapped
        let live = TensorMemory.liveBytes
        let t = Tensor(zeros: smaller)
        XCTAssertEqual(TensorMemory.blocksMapped, mapped + 1, "under a limit a block of its own size is mapped")
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        XCTAssertEqual(TensorMemory.liveBytes - live, (smaller[0] * 4 + page - 1) / page * page)
        _ = t
    }

    func testThePoolsPeakCountsLiveAndIdleBlocksUntilReset() {
        TensorMemory.resetPeakPoolBytes()
        let start = TensorMemory.liveBytes + TensorMemory.idleBytes
        XCTAssertEqual(TensorMemory.peakPoolBytes, start)
        do {
            let a = Tensor(zeros: pooled), b = Tensor(zeros: pooled)
            _ = (a, b)
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let block = (pooled[0] * 4 + page - 1) / page * page
        XCTAssertEqual(TensorMemory.peakPoolBytes, start + 2 * block, "both blocks, now idle, were mapped at once")
        do { _ = Tensor(zeros: pooled) }
        XCTAssertEqual(TensorMemory.peakPoolBytes, start + 2 * block, "a reused block adds nothing")
        TensorMemory.releaseIdle()
        TensorMemory.resetPeakPoolBytes()
        XCTAssertEqual(TensorMemory.peakPoolBytes, start)
    }

    func testSmallTensorsStayOutOfThePool() {
        let live = TensorMemory.liveBytes
        let small = Tensor(zeros: [1000])
        XCTAssertEqual(TensorMemory.liveBytes, live)
        XCTAssertEqual(small.data, [Float](repeating: 0, count: 1000))
    }

    func testACopyKeepsItsValuesWhenTheOriginalIsWritten() {
        for shape in [[4], pooled] {
            var a = Tensor(zeros: shape)
            let b = a
            a[0] = 9
            a.withUnsafeMutableBufferPointer { $0[shape[0] - 1] = 5 }
            XCTAssertEqual(a[0], 9)
            XCTAssertEqual(a[shape[0] - 1], 5)
            XCTAssertEqual(b[0], 0, "\(shape)")
            XCTAssertEqual(b[shape[0] - 1], 0, "\(shape)")
        }
    }

    func testReshapeSliceAndStackKeepRowMajorValues() {
        let t = Tensor(shape: [3, 2], data: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(t.reshaped([2, 3]).shape, [2, 3])
        XCTAssertEqual(t.reshaped([2, 3]).data, t.data)
        XCTAssertEqual(t.slice(batch: 1..<3).data, [3, 4, 5, 6])
        let stacked = Tensor.stack(batches: [t.slice(batch: 2..<3), t.slice(batch: 0..<1)])
        XCTAssertEqual(stacked.shape, [2, 2])
        XCTAssertEqual(stacked.data, [5, 6, 1, 2])
    }

    func testTensorBytesCountEveryLiveTensorAndThePeakHoldsUntilReset() {
        let start = TensorMemory.tensorBytes
        TensorMemory.resetPeakTensorBytes()
        do {
            let small = Tensor(zeros: [10])  // from malloc
            let large = Tensor(zeros: pooled)  // from the pool
            XCTAssertEqual(TensorMemory.tensorBytes - start, (10 + pooled[0]) * 4)
            _ = (small, large)
        }
        XCTAssertEqual(TensorMemory.tensorBytes, start)
        XCTAssertEqual(TensorMemory.peakTensorBytes - start, (10 + pooled[0]) * 4, "the peak outlives the tensors")
        TensorMemory.resetPeakTensorBytes()
        XCTAssertEqual(TensorMemory.peakTensorBytes, start)
    }
}
