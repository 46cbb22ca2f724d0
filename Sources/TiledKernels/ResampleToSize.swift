// Nearest-neighbour resize of an NCHW map to an arbitrary size, as F.interpolate(size=..., mode="nearest").

/// x: [N, C, H, W] → [N, C, height, width]; source index = floor(dst · in / out), torch's "nearest".
public func upsampleNearest(_ x: Tensor, height: Int, width: Int) -> Tensor {
    let n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    var out = Tensor(zeros: [n, c, height, width])
    let scaleH = Float(h) / Float(height)
    let scaleW = Float(w) / Float(width)
    let srcY = (0..<height).map { min(Int((Float($0) * scaleH).rounded(.down)), h - 1) }
    let srcX = (0..<width).map { min(Int((Float($0) * scaleW).rounded(.down)), w - 1) }
    x.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            for plane in 0..<(n * c) {
                let s = plane * h * w
                let d = plane * height * width
                for y in 0..<height {
                    let row = s + srcY[y] * w
                    for xx in 0..<width { dst[d + y * width + xx] = src[row + srcX[xx]] }
                }
            }
        }
    }
    return out
}
