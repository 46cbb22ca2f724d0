// Attention: multi-head scaled-dot-product attention over query tiles × key tiles with an online softmax
// (running max / running sum), so no Tq×Tk matrix is ever allocated — only one tile of scores per thread.
import CKernels

/// `precision`: how the two tile products multiply (`ProductPrecision`; the model's choice for its layers).
public func attention(q: Tensor, k: Tensor, v: Tensor, heads: Int, causal: Bool = false,
                      queryTile: Int = 256, keyTile: Int = 512, precision: ProductPrecision = .f32) -> Tensor {
    KernelProfile.measure("attention d\(q.shape.count == 3 ? q.shape[2] / max(1, heads) : 0)\(precision.profileSuffix)", flops: 4 * Double(q.count) * Double(k.shape.count == 3 ? k.shape[1] : 0)) {
        attentionTiles(q: q, k: k, v: v, heads: heads, causal: causal, queryTile: queryTile, keyTile: keyTile,
                       precision: precision)
    }
}

/// softmax(q·kᵀ / sqrt(D)) · v per head (torch F.scaled_dot_product_attention).
/// q: [B, Tq, H·D]; k, v: [B, Tk, H·D] → [B, Tq, H·D]; head h owns channels h·D..<(h+1)·D.
/// `causal`: key j > query i is masked (CLIP's causal mask, top-left aligned).
/// Scratch per thread is one queryTile×keyTile score tile (each unit accumulates in its rows of the output); tile products go
/// through `sgemm` with `precision`. Large problems split their (batch, head, query tile) units across cores, with OpenBLAS held to
/// one thread meanwhile. A query with no key to attend to (Tk = 0) gets zeros.
func attentionTiles(q: Tensor, k: Tensor, v: Tensor, heads: Int, causal: Bool,
                    queryTile: Int, keyTile: Int, precision: ProductPrecision = .f32) -> Tensor {
    precondition(q.shape.count == 3 && k.shape.count == 3 && v.shape.count == 3,
                 "attention: q \(q.shape), k \(k.shape), v \(v.shape) must be [B, T, H·D]")
    let batch = q.shape[0], tq = q.shape[1], channels = q.shape[2]
    let tk = k.shape[1]
    precondition(k.shape == [batch, tk, channels] && v.shape == k.shape,
                 "attention: k \(k.shape) and v \(v.shape) do not match q \(q.shape)")
    precondition(heads >= 1 && channels % heads == 0, "attention: \(channels) channels in \(heads) heads")
    precondition(queryTile >= 1 && keyTile >= 1, "attention: tiles \(queryTile)×\(keyTile)")
    if q.count == 0 || tk == 0 { return Tensor(zeros: q.shape) }
    // Every (batch, head, query tile) unit writes its rows of every head's channels.
    var out = Tensor(uninitialized: q.shape)

    let headDim = channels / heads
    let qTile = min(queryTile, tq), kTile = min(keyTile, tk)
    let queryTiles = (tq + qTile - 1) / qTile
    let units = batch * heads * queryTiles
    let workers = attentionWorkers(batch: batch, tq: tq, tk: tk, channels: channels, units: units)
    let problem = AttentionProblem(tq: tq, tk: tk, channels: channels, heads: heads, headDim: headDim,
                                   queryTile: qTile, keyTile: kTile, queryTiles: queryTiles, causal: causal,
                                   precision: precision, alpha: Float(1.0 / Double(headDim).squareRoot()))

    out.withUnsafeMutableBufferPointer { ob in
        q.withUnsafeBufferPointer { qb in
            k.withUnsafeBufferPointer { kb in
                v.withUnsafeBufferPointer { vb in
                    guard let op = ob.baseAddress, let qp = qb.baseAddress,
                          let kp = kb.baseAddress, let vp = vb.baseAddress else { return }
                    let run = { (worker: Int) in
                        let tile = OnlineSoftmaxTile(queryTile: qTile, keyTile: kTile)
                        defer { tile.deallocate() }
                        var unit = worker
                        while unit < units {
                            problem.solve(unit: unit, q: qp, k: kp, v: vp, out: op, tile: tile)
                            unit += workers
                        }
                    }
                    if workers == 1 {
                        run(0)
                    } else {
                        Parallel.forEachChunk(count: workers, minItemsPerChunk: 1) { range in
                            for worker in range { run(worker) }
                        }
                    }
                }
            }
        }
    }
    return out
}

/// The threads an attention call runs its (batch, head, query tile) units on: one below 2²² multiply-adds of
/// both products (threads would cost more than they save), else one per core and unit.
private func attentionWorkers(batch: Int, tq: Int, tk: Int, channels: Int, units: Int) -> Int {
    2 * tq * tk * channels * batch < (1 << 22) ? 1 : min(Parallel.cores, units)
}

/// The heap `attention` allocates for q [batch, tq, channels] and k, v [batch, tk, channels] in `heads` heads:
/// one online-softmax tile per worker (scores, running max in F32, running sum in F64); the output rows are
/// the accumulator. (The memory planner's figure for an attention call.)
public func attentionScratchBytes(batch: Int, tq: Int, tk: Int, channels: Int, heads: Int,
                                  queryTile: Int = 256, keyTile: Int = 512) -> Int {
    guard batch > 0, tq > 0, tk > 0, channels > 0, heads > 0 else { return 0 }
    let qTile = min(queryTile, tq), kTile = min(keyTile, tk)
    let units = batch * heads * ((tq + qTile - 1) / qTile)
    let workers = attentionWorkers(batch: batch, tq: tq, tk: tk, channels: channels, units: units)
    return workers * (qTile * kTile * MemoryLayout<Float>.stride + qTile * MemoryLayout<Float>.stride
                      + qTile * MemoryLayout<Double>.stride)
}

/// Shapes and constants of one attention call; `solve` computes one (batch, head, query tile) unit.
private struct AttentionProblem {
    let tq: Int, tk: Int, channels: Int, heads: Int, headDim: Int
    let queryTile: Int, keyTile: Int, queryTiles: Int
    let causal: Bool
    let precision: ProductPrecision
    let alpha: Float

    /// The unit's output rows in `out` (stride `channels`) are its accumulator: the first key tile's product
    /// writes them (beta 0), later ones add to them, and `finish` divides them by the row sums in place — no
    /// zeroing and no copy out of a separate accumulator.
    func solve(unit: Int, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
               out: UnsafeMutablePointer<Float>, tile: OnlineSoftmaxTile) {
        let qt = unit % queryTiles
        let h = (unit / queryTiles) % heads
        let b = unit / (queryTiles * heads)
        let q0 = qt * queryTile
        let rows = min(queryTile, tq - q0)
        let headOffset = h * headDim
        let qRows = q + (b * tq + q0) * channels + headOffset
        let kHead = k + b * tk * channels + headOffset
        let vHead = v + b * tk * channels + headOffset
        let acc = out + (b * tq + q0) * channels + headOffset
        tile.reset(rows: rows)
        // Causal: the last query of this tile sees keys up to its own index.
        let keyEnd = causal ? min(tk, q0 + rows) : tk
        var k0 = 0
        while k0 < keyEnd {
            let cols = min(keyTile, keyEnd - k0)
            // scores [rows, cols] = alpha · Q [rows, D] · K[k0..<k0+cols]ᵀ
            sgemm(transB: true, m: rows, n: cols, k: headDim, alpha: alpha,
                  a: qRows, lda: channels, b: kHead + k0 * channels, ldb: channels,
                  beta: 0, c: tile.scores, ldc: cols, precision: precision)
            // scores → P = exp(S − new running max); running sums and acc rows rescaled where the max grew.
            ck_online_softmax_tile(tile.scores, Int64(rows), Int64(cols), Int64(q0 - k0), causal ? 1 : 0,
                                   tile.runMax, tile.runSum, acc, Int64(channels), Int64(headDim))
            // acc [rows, D] (+)= P [rows, cols] · V[k0..<k0+cols]
            sgemm(m: rows, n: headDim, k: cols, a: tile.scores, lda: cols,
                  b: vHead + k0 * channels, ldb: channels, beta: k0 == 0 ? 0 : 1, c: acc, ldc: channels,
                  precision: precision)
            k0 += cols
        }
        // acc / running sum, in place; rows that saw no key (sum 0) get 0.
        ck_online_softmax_finish(acc, Int64(channels), tile.runSum, Int64(rows), Int64(headDim), acc, Int64(channels))
    }
}

/// The running state of one query tile: scores scratch, running max and running sum (the output accumulator
/// is the unit's rows of the output tensor).
private struct OnlineSoftmaxTile {
    let scores: UnsafeMutablePointer<Float>
    let runMax: UnsafeMutablePointer<Float>
    let runSum: UnsafeMutablePointer<Double>

    init(queryTile: Int, keyTile: Int) {
        scores = .allocate(capacity: queryTile * keyTile)
        runMax = .allocate(capacity: queryTile)
        runSum = .allocate(capacity: queryTile)
    }

    func deallocate() {
        scores.deallocate()
        runMax.deallocate()
        runSum.deallocate()
    }

    func reset(rows: Int) {
        runMax.initialize(repeating: -.infinity, count: rows)
        runSum.initialize(repeating: 0, count: rows)
    }
}
