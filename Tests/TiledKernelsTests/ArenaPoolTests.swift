// ArenaPoolTests: under a retain cap the scratch pool keeps no more than the cap once buffers are idle,
// and without one it keeps them for the next call.
import XCTest
@testable import TiledKernels

final class ArenaPoolTests: XCTestCase {
    override func tearDown() {
        ScratchArena.limitRetainedBytes(nil)
        super.tearDown()
    }

    func testARetainLimitFreesIdleBuffersAboveIt() {
        ScratchArena.releaseIdle()
        ScratchArena.limitRetainedBytes(1 << 20)
        ScratchArena.withArena { outer in
            ScratchArena.withArena { inner in _ = inner.floats(1 << 20) }  // 4 MiB, over the cap once idle
            _ = outer.floats(1 << 16)  // 256 KiB, under it
        }
        XCTAssertLessThanOrEqual(ScratchArena.pooledBytes, 1 << 20)
        XCTAssertGreaterThan(ScratchArena.pooledBytes, 0, "buffers under the cap stay for the next call")
        ScratchArena.limitRetainedBytes(nil)
        ScratchArena.withArena { a in _ = a.floats(1 << 20) }
        XCTAssertGreaterThanOrEqual(ScratchArena.pooledBytes, 4 << 20, "without a cap the buffer is kept")
    }
}
