// Linear: fully connected layer over the last dimension (torch.nn.Linear), one BLAS GEMM.

/// y[..., out] = x[..., in] · Wᵀ + b.
/// x: [..., in]; weight: [out, in] (PyTorch order); bias: [out] or nil → y: [..., out].
public func linear(_ x: Tensor, weight: Weight, bias: Weight?) -> Tensor {
    precondition(weight.shape.count == 2, "linear: weight must be [out, in], got \(weight.shape)")
    let outF = weight.shape[0], inF = weight.shape[1]
    precondition(x.shape.last == inF, "linear: input \(x.shape) does not end in \(inF)")
    if let bias { precondition(bias.count == outF, "linear: bias \(bias.shape) for \(outF) outputs") }
    let rows = x.shape.dropLast().reduce(1, *)
    var outShape = x.shape
    outShape[outShape.count - 1] = outF
    var y = Tensor(zeros: outShape)
    if rows == 0 || outF == 0 { return y }
    y.data.withUnsafeMutableBufferPointer { yb in
        guard let yp = yb.baseAddress else { return }
        if let bias {
            let bp = bias.base
            for r in 0..<rows {
                (yp + r * outF).update(from: bp, count: outF)
            }
        }
        x.data.withUnsafeBufferPointer { xb in
            guard let xp = xb.baseAddress else { return }
            sgemm(transB: true, m: rows, n: outF, k: inF,
                  a: xp, lda: inF, b: weight.base, ldb: inF,
                  beta: bias == nil ? 0 : 1, c: yp, ldc: outF)
        }
    }
    return y
}
