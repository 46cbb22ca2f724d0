// AttentionTests: tiled online-softmax attention against a full-softmax Double reference.
// Tolerance 1e-5 of the output scale (F32 tile GEMMs over a few dozen products, F32 exp).
import XCTest
@testable import TiledKernels

final class AttentionTests: XCTestCase {
    private func check(batch: Int, tq: Int, tk: Int, heads: Int, headDim: Int, causal: Bool = false,
                       queryTile: Int? = nil, keyTile: Int? = nil, inputScale: Float = 1, seed: UInt64,
                       file: StaticString = #filePath, line: UInt = #line) {
        let c = heads * headDim
        let q = randomTensor([batch, tq, c], seed: seed, scale: inputScale)
        let k = randomTensor([batch, tk, c], seed: seed + 1, scale: inputScale)
        let v = randomTensor([batch, tk, c], seed: seed + 2)
        let got: Tensor
        if let queryTile, let keyTile {
            got = attention(q: q, k: k, v: v, heads: heads, causal: causal, queryTile: queryTile, keyTile: keyTile)
        } else {
            got = attention(q: q, k: k, v: v, heads: heads, causal: causal)
        }
        let want = Ref.attention(q: q.doubles, k: k.doubles, v: v.doubles, batch: batch, tq: tq, tk: tk,
                                 channels: c, heads: heads, causal: causal)
        assertClose(got, want, shape: [batch, tq, c], tolerance: 1e-5, file: file, line: line)
    }

    func testTinyTilesMatchFullSoftmax() {
        check(batch: 2, tq: 37, tk: 45, heads: 3, headDim: 5, queryTile: 8, keyTile: 16, seed: 400)
    }

    func testCausalMaskHidesKeysAfterTheQuery() {
        check(batch: 2, tq: 37, tk: 37, heads: 3, headDim: 5, causal: true, queryTile: 8, keyTile: 16, seed: 410)
    }

    func testCausalMaskWithMoreKeysThanQueriesIsTopLeftAligned() {
        check(batch: 1, tq: 13, tk: 29, heads: 2, headDim: 4, causal: true, queryTile: 4, keyTile: 6, seed: 420)
    }

    func testFewerKeysThanOneKeyTileMatchFullSoftmax() {
        check(batch: 2, tq: 37, tk: 10, heads: 3, headDim: 5, queryTile: 8, keyTile: 16, seed: 430)
    }

    func testDefaultTilesWithSeveralQueryTilesMatchFullSoftmax() {
        // 300 queries → tiles of 256 + 44; 600 keys → 512 + 88; rows of 512 scores are split across threads.
        check(batch: 1, tq: 300, tk: 600, heads: 2, headDim: 8, seed: 440)
    }

    func testCausalAttentionSplitAcrossThreadsMatchesFullSoftmax() {
        // Enough work for the (batch, head, query tile) units to be shared between cores.
        check(batch: 1, tq: 260, tk: 260, heads: 2, headDim: 32, causal: true, queryTile: 64, keyTile: 96, seed: 445)
    }

    func testCLIPShapedCausalSelfAttentionWithDefaultTiles() {
        check(batch: 1, tq: 77, tk: 77, heads: 4, headDim: 8, causal: true, seed: 450)
    }

    func testLargeScoresStayFiniteAndExact() {
        // Scores around ±100: a softmax without the running max would overflow exp.
        check(batch: 1, tq: 21, tk: 33, heads: 2, headDim: 16, queryTile: 8, keyTile: 8, inputScale: 6, seed: 460)
    }

    func testNoKeysGivesZeros() {
        let q = randomTensor([1, 3, 4], seed: 470)
        let out = attention(q: q, k: Tensor(zeros: [1, 0, 4]), v: Tensor(zeros: [1, 0, 4]), heads: 2)
        XCTAssertEqual(out.shape, [1, 3, 4])
        XCTAssertEqual(out.data, [Float](repeating: 0, count: 12))
    }
}
