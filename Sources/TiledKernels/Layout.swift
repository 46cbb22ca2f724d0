// Layout: moves values between layouts without arithmetic — nearest upsampling, channel concat,
// and the NCHW ⇄ token-sequence transposes around UNet transformer blocks.

public func upsampleNearest2x(_ x: Tensor) -> Tensor {
    KernelProfile.measure("upsample") {
        upsampleNearest2xKernel(x)
    }
}

/// Nearest-neighbour 2× upsampling (F.interpolate(scale_factor=2, mode="nearest")).
/// x: [N, C, H, W] → [N, C, 2H, 2W].
func upsampleNearest2xKernel(_ x: Tensor) -> Tensor {
    precondition(x.shape.count == 4, "upsampleNearest2x: input must be [N, C, H, W], got \(x.shape)")
    let planes = x.shape[0] * x.shape[1], h = x.shape[2], w = x.shape[3]
    var y = Tensor(uninitialized: [x.shape[0], x.shape[1], 2 * h, 2 * w])
    if y.count == 0 { return y }
    y.withUnsafeMutableBufferPointer { yb in
        x.withUnsafeBufferPointer { xb in
            guard let yp = yb.baseAddress, let xp = xb.baseAddress else { return }
            // Rows of all planes are independent: split them over the cores for large tensors.
            Parallel.forEachChunk(count: planes * h, minItemsPerChunk: max(1, elementwiseChunk / max(1, 4 * w))) { range in
                for row in range {
                    let p = row / h, i = row % h
                    let line = xp + p * h * w + i * w
                    let out = yp + p * 4 * h * w + 2 * i * 2 * w
                    for j in 0..<w {
                        out[2 * j] = line[j]
                        out[2 * j + 1] = line[j]
                    }
                    (out + 2 * w).initialize(from: out, count: 2 * w)
                }
            }
        }
    }
    return y
}

public func concatChannels(_ a: Tensor, _ b: Tensor) -> Tensor {
    KernelProfile.measure("concat") {
        concatChannelsKernel(a, b)
    }
}

/// Concatenation along channels (torch.cat(dim=1)). a: [N, Ca, H, W], b: [N, Cb, H, W] → [N, Ca+Cb, H, W].
func concatChannelsKernel(_ a: Tensor, _ b: Tensor) -> Tensor {
    precondition(a.shape.count >= 2 && b.shape.count == a.shape.count && a.shape[0] == b.shape[0]
                 && Array(a.shape.dropFirst(2)) == Array(b.shape.dropFirst(2)),
                 "concatChannels: shapes \(a.shape) and \(b.shape) do not concatenate on dim 1")
    let n = a.shape[0]
    let aItem = a.shape.dropFirst().reduce(1, *), bItem = b.shape.dropFirst().reduce(1, *)
    var shape = a.shape
    shape[1] += b.shape[1]
    var y = Tensor(uninitialized: shape)
    y.withUnsafeMutableBufferPointer { yb in
        a.withUnsafeBufferPointer { ab in
            b.withUnsafeBufferPointer { bb in
                for i in 0..<n {
                    let out = yb.baseAddress! + i * (aItem + bItem)
                    out.update(from: ab.baseAddress! + i * aItem, count: aItem)
                    (out + aItem).update(from: bb.baseAddress! + i * bItem, count: bItem)
                }
            }
        }
    }
    return y
}

public func nchwToTokens(_ x: Tensor) -> Tensor {
    KernelProfile.measure("transpose") {
        nchwToTokensKernel(x)
    }
}

/// [N, C, H, W] → [N, H·W, C] (x.permute(0, 2, 3, 1).reshape(N, H·W, C)).
func nchwToTokensKernel(_ x: Tensor) -> Tensor {
    precondition(x.shape.count == 4, "nchwToTokens: input must be [N, C, H, W], got \(x.shape)")
    let n = x.shape[0], c = x.shape[1], hw = x.shape[2] * x.shape[3]
    var y = Tensor(uninitialized: [n, hw, c])
    transposeBatched(x, into: &y, batches: n, rows: c, cols: hw)
    return y
}

public func tokensToNCHW(_ x: Tensor, height: Int, width: Int) -> Tensor {
    KernelProfile.measure("transpose") {
        tokensToNCHWKernel(x, height: height, width: width)
    }
}

/// [N, H·W, C] → [N, C, H, W], the inverse of `nchwToTokens`.
func tokensToNCHWKernel(_ x: Tensor, height: Int, width: Int) -> Tensor {
    precondition(x.shape.count == 3 && x.shape[1] == height * width,
                 "tokensToNCHW: input \(x.shape) is not [N, \(height)·\(width), C]")
    let n = x.shape[0], c = x.shape[2]
    var y = Tensor(uninitialized: [n, c, height, width])
    transposeBatched(x, into: &y, batches: n, rows: height * width, cols: c)
    return y
}

/// For each batch, dst [cols, rows] = srcᵀ where src is [rows, cols]; done in cache-sized blocks.
private func transposeBatched(_ src: Tensor, into dst: inout Tensor, batches: Int, rows: Int, cols: Int) {
    if src.count == 0 { return }
    let block = 32
    dst.withUnsafeMutableBufferPointer { db in
        src.withUnsafeBufferPointer { sb in
            guard let dp = db.baseAddress, let sp = sb.baseAddress else { return }
            for b in 0..<batches {
                let s = sp + b * rows * cols
                let d = dp + b * rows * cols
                var r0 = 0
                while r0 < rows {
                    let r1 = min(rows, r0 + block)
                    var c0 = 0
                    while c0 < cols {
                        let c1 = min(cols, c0 + block)
                        for r in r0..<r1 {
                            for c in c0..<c1 { d[c * rows + r] = s[r * cols + c] }
                        }
                        c0 = c1
                    }
                    r0 = r1
                }
            }
        }
    }
}
