// Linear: fully connected layer over the last dimension (torch.nn.Linear) with a weight of any stored type,
// as GEMMs split over the cores (see WeightPanels.swift for how typed weights become F32 rows).

/// y[..., out] = x[..., in] · Wᵀ + b.
/// x: [..., in]; weight: [out, in] (PyTorch order, any `TensorType`); bias: [out] or nil → y: [..., out].
/// F32 weights are used in place; other types are dequantized whole (small weights) or in panels of rows
/// (bounds: `GemmLimits.current`).
public func linear(_ x: Tensor, weight: Weight, bias: Weight?) -> Tensor {
    KernelProfile.measure("linear \(weight.type.name)\(weight.products.profileSuffix)",
                          flops: 2 * Double(weight.count) * Double(x.count / max(1, weight.shape.last ?? 1))) {
        linear(x, weight: weight, bias: bias, limits: GemmLimits.current)
    }
}

/// `linear` with explicit scratch bounds (tests force panels with tiny ones).
func linear(_ x: Tensor, weight: Weight, bias: Weight?, limits: GemmLimits) -> Tensor {
    precondition(weight.shape.count == 2, "linear: weight must be [out, in], got \(weight.shape)")
    let outF = weight.shape[0], inF = weight.shape[1]
    precondition(x.shape.last == inF, "linear: input \(x.shape) does not end in \(inF)")
    if let bias { precondition(bias.count == outF, "linear: bias \(bias.shape) for \(outF) outputs") }
    let rows = x.shape.dropLast().reduce(1, *)
    var outShape = x.shape
    outShape[outShape.count - 1] = outF
    var y = Tensor(uninitialized: outShape)
    if rows == 0 || outF == 0 { return y }
    y.withUnsafeMutableBufferPointer { yb in
        guard let yp = yb.baseAddress else { return }
        if let bias {
            bias.withFloats { bp in
                for r in 0..<rows { (yp + r * outF).update(from: bp, count: outF) }
            }
        }
        x.withUnsafeBufferPointer { xb in
            guard let xp = xb.baseAddress else { return }
            multiplyByTransposedWeight(x: xp, rows: rows, weight: weight, y: yp, beta: bias == nil ? 0 : 1,
                                       limits: limits)
        }
    }
    return y
}
