// Elementwise: residual adds, scaling and the ResNet time-embedding broadcast add.

public func add(_ a: Tensor, _ b: Tensor) -> Tensor {
    KernelProfile.measure("add") {
        addKernel(a, b)
    }
}

/// a + b, elementwise; shapes must be equal.
func addKernel(_ a: Tensor, _ b: Tensor) -> Tensor {
    precondition(a.shape == b.shape, "add: shapes \(a.shape) and \(b.shape) differ")
    var y = a
    y.data.withUnsafeMutableBufferPointer { yb in
        b.data.withUnsafeBufferPointer { bb in
            guard let yp = yb.baseAddress, let bp = bb.baseAddress else { return }
            for i in 0..<yb.count { yp[i] += bp[i] }
        }
    }
    return y
}

/// a · s, elementwise.
public func scale(_ a: Tensor, by s: Float) -> Tensor {
    var y = a
    y.data.withUnsafeMutableBufferPointer { yb in
        guard let yp = yb.baseAddress else { return }
        for i in 0..<yb.count { yp[i] *= s }
    }
    return y
}

public func addChannelBias(_ x: Tensor, _ v: Tensor) -> Tensor {
    KernelProfile.measure("addChannelBias") {
        addChannelBiasKernel(x, v)
    }
}

/// x [N, C, H, W] + v [N, C] broadcast over H and W (ResNet time-embedding add).
func addChannelBiasKernel(_ x: Tensor, _ v: Tensor) -> Tensor {
    precondition(x.shape.count >= 2 && v.shape == [x.shape[0], x.shape[1]],
                 "addChannelBias: bias \(v.shape) for input \(x.shape)")
    let planes = x.shape[0] * x.shape[1]
    let plane = x.shape.dropFirst(2).reduce(1, *)
    var y = x
    y.data.withUnsafeMutableBufferPointer { yb in
        v.data.withUnsafeBufferPointer { vb in
            guard let yp = yb.baseAddress, let vp = vb.baseAddress else { return }
            for p in 0..<planes {
                let bias = vp[p]
                let row = yp + p * plane
                for i in 0..<plane { row[i] += bias }
            }
        }
    }
    return y
}

/// A tensor whose values are unspecified, for kernels that write every element: skips the zero-filling pass
/// over memory that the kernel is about to overwrite anyway (and lets the pages fault in on the kernel's
/// threads, in parallel). Float is a trivial type, so no value is ever read before it is written.
func uninitializedTensor(_ shape: [Int]) -> Tensor {
    let count = shape.reduce(1, *)
    return Tensor(shape: shape, data: [Float](unsafeUninitializedCapacity: count) { _, initialized in
        initialized = count
    })
}
