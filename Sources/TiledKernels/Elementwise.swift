// Elementwise: residual adds, scaling and the ResNet time-embedding broadcast add.
#if canImport(Glibc)
import Glibc
#endif

public func add(_ a: Tensor, _ b: Tensor) -> Tensor {
    KernelProfile.measure("add") {
        addKernel(a, b)
    }
}

/// a + b, elementwise; shapes must be equal. Written into a fresh tensor (no copy of `a` first), split over
/// the cores for large tensors.
func addKernel(_ a: Tensor, _ b: Tensor) -> Tensor {
    precondition(a.shape == b.shape, "add: shapes \(a.shape) and \(b.shape) differ")
    var y = Tensor(uninitialized: a.shape)
    y.withUnsafeMutableBufferPointer { yb in
        a.withUnsafeBufferPointer { ab in
            b.withUnsafeBufferPointer { bb in
                guard let yp = yb.baseAddress, let ap = ab.baseAddress, let bp = bb.baseAddress else { return }
                Parallel.forEachChunk(count: yb.count, minItemsPerChunk: elementwiseChunk) { range in
                    for i in range { yp[i] = ap[i] + bp[i] }
                }
            }
        }
    }
    return y
}

/// Least elements worth a thread for a memory-bound elementwise loop (1 MiB of F32).
let elementwiseChunk = 1 << 18

/// a · s, elementwise.
public func scale(_ a: Tensor, by s: Float) -> Tensor {
    var y = a
    y.withUnsafeMutableBufferPointer { yb in
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
    y.withUnsafeMutableBufferPointer { yb in
        v.withUnsafeBufferPointer { vb in
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
