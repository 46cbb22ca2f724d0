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
/// Scratch per thread is one queryTile×keyTile score tile plus a queryTile×D accumulator; tile products go
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
    // Score work (multiply-adds of both products) below which threads cost more than they save.
    let work = 2 * tq * tk * channels * batch
    let workers = work < (1 << 22) ? 1 : min(Parallel.cores, units)
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
                        let tile = OnlineSoftmaxTile(queryTile: qTile, keyTile: kTile, headDim: headDim)
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

/// Shapes and constants of one attention call; `solve` computes one (batch, head, query tile) unit.
private struct AttentionProblem {
    let tq: Int, tk: Int, channels: Int, heads: Int, headDim: Int
    let queryTile: Int, keyTile: Int, queryTiles: Int
    let causal: Bool
    let precision: ProductPrecision
    let alpha: Float

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
            tile.absorbScores(rows: rows, cols: cols, firstQuery: q0, firstKey: k0, causal: causal)
            // acc [rows, D] += P [rows, cols] · V[k0..<k0+cols]
            sgemm(m: rows, n: headDim, k: cols, a: tile.scores, lda: cols,
                  b: vHead + k0 * channels, ldb: channels, beta: 1, c: tile.acc, ldc: headDim,
                  precision: precision)
            k0 += cols
        }
        tile.finish(rows: rows, into: out + (b * tq + q0) * channels + headOffset, rowStride: channels)
    }
}

/// The running state of one query tile: scores scratch, output accumulator, running max and running sum.
private struct OnlineSoftmaxTile {
    let scores: UnsafeMutablePointer<Float>
    let acc: UnsafeMutablePointer<Float>
    let runMax: UnsafeMutablePointer<Float>
    let runSum: UnsafeMutablePointer<Double>
    let headDim: Int

    init(queryTile: Int, keyTile: Int, headDim: Int) {
        scores = .allocate(capacity: queryTile * keyTile)
        acc = .allocate(capacity: queryTile * headDim)
        runMax = .allocate(capacity: queryTile)
        runSum = .allocate(capacity: queryTile)
        self.headDim = headDim
    }

    func deallocate() {
        scores.deallocate()
        acc.deallocate()
        runMax.deallocate()
        runSum.deallocate()
    }

    func reset(rows: Int) {
        acc.initialize(repeating: 0, count: rows * headDim)
        runMax.initialize(repeating: -.infinity, count: rows)
        runSum.initialize(repeating: 0, count: rows)
    }

    /// Turns the score tile [rows, cols] into exp(s − new running max) in place (masked entries → 0),
    /// and rescales each row's accumulator and running sum by exp(old max − new max).
    func absorbScores(rows: Int, cols: Int, firstQuery: Int, firstKey: Int, causal: Bool) {
        for i in 0..<rows {
            let row = scores + i * cols
            // Keys this query may see within the tile.
            let valid = causal ? max(0, min(cols, firstQuery + i - firstKey + 1)) : cols
            if valid < cols { (row + valid).initialize(repeating: 0, count: cols - valid) }
            if valid == 0 { continue }
            let oldMax = runMax[i]
            let newMax = max(oldMax, rowMaximum(row, count: valid))
            if newMax == -.infinity {
                // Every score so far is −inf: nothing to weight yet.
                row.initialize(repeating: 0, count: valid)
                continue
            }
            let sum = exponentiateRow(row, count: valid, minus: newMax)
            if oldMax != newMax {
                let correction = oldMax == -.infinity ? 0 : fastExp(oldMax - newMax)
                runSum[i] *= Double(correction)
                let a = acc + i * headDim
                for d in 0..<headDim { a[d] *= correction }
            }
            runSum[i] += sum
            runMax[i] = newMax
        }
    }

    /// Writes acc / running sum for each row to `dst` (row stride `rowStride`); rows that saw no key get 0.
    func finish(rows: Int, into dst: UnsafeMutablePointer<Float>, rowStride: Int) {
        for i in 0..<rows {
            let a = acc + i * headDim
            let o = dst + i * rowStride
            let s = runSum[i]
            let inv = s > 0 ? Float(1.0 / s) : 0
            for d in 0..<headDim { o[d] = a[d] * inv }
        }
    }
}

/// max of `count` ≥ 1 floats (four running maxima, so the loop is not one long dependency chain).
@inline(__always)
private func rowMaximum(_ row: UnsafeMutablePointer<Float>, count: Int) -> Float {
    var m0 = -Float.infinity, m1 = -Float.infinity, m2 = -Float.infinity, m3 = -Float.infinity
    var j = 0
    while j + 4 <= count {
        m0 = max(m0, row[j]); m1 = max(m1, row[j + 1]); m2 = max(m2, row[j + 2]); m3 = max(m3, row[j + 3])
        j += 4
    }
    while j < count {
        m0 = max(m0, row[j])
        j += 1
    }
    return max(max(m0, m1), max(m2, m3))
}

/// row[j] = exp(row[j] − shift) in place; returns the sum of the new values (in Double). The C kernel runs
/// `fastExp`'s polynomial 16 or 8 lanes wide (AVX-512 / AVX2) where the CPU has them; Swift here compiles
/// for baseline x86-64 (4 lanes).
@inline(__always)
private func exponentiateRow(_ row: UnsafeMutablePointer<Float>, count: Int, minus shift: Float) -> Double {
    ck_exp_row(row, Int64(count), shift)
}
