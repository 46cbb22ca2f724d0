// Activations: elementwise nonlinearities of SD's UNet/VAE (SiLU, GELU, GEGLU) and CLIP (quick GELU).
// Large tensors are split across cores; each element is computed as torch's formula, GELU and GEGLU through
// CKernels' vectorized erf (Gelu.c, AVX-512 / AVX2 where the CPU has them).
import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Least elements worth a thread for a transcendental-per-element loop.
let activationChunk = 1 << 14

/// Applies `f` to every element (same shape out), in parallel for large tensors.
@inline(__always)
func mapElements(_ x: Tensor, _ f: (Float) -> Float) -> Tensor {
    var y = Tensor(uninitialized: x.shape)
    y.withUnsafeMutableBufferPointer { yb in
        x.withUnsafeBufferPointer { xb in
            guard let yp = yb.baseAddress, let xp = xb.baseAddress else { return }
            Parallel.forEachChunk(count: xb.count, minItemsPerChunk: activationChunk) { range in
                for i in range { yp[i] = f(xp[i]) }
            }
        }
    }
    return y
}

/// SiLU (swish): x · sigmoid(x). Any shape.
public func silu(_ x: Tensor) -> Tensor {
    mapElements(x) { v in v / (1 + expf(-v)) }
}

/// GELU, exact erf form (torch F.gelu default): 0.5 · x · (1 + erf(x / √2)). Any shape.
/// |error| ≤ 2·2^−24·|x| (ck_gelu_row); for x below about −5.6 the result is 0, as torch's F32 formula gives.
public func gelu(_ x: Tensor) -> Tensor {
    var y = Tensor(uninitialized: x.shape)
    y.withUnsafeMutableBufferPointer { yb in
        x.withUnsafeBufferPointer { xb in
            guard let yp = yb.baseAddress, let xp = xb.baseAddress else { return }
            Parallel.forEachChunk(count: xb.count, minItemsPerChunk: activationChunk) { range in
                ck_gelu_row(xp + range.lowerBound, yp + range.lowerBound, Int64(range.count))
            }
        }
    }
    return y
}

/// CLIP's quick GELU: x · sigmoid(1.702 · x). Any shape.
public func quickGelu(_ x: Tensor) -> Tensor {
    mapElements(x) { v in v / (1 + expf(-1.702 * v)) }
}

public func geglu(_ x: Tensor) -> Tensor {
    KernelProfile.measure("geglu") {
        gegluKernel(x)
    }
}

/// diffusers GEGLU after its projection: x [..., 2F] → [..., F],
/// hidden, gate = x.chunk(2, dim: -1); out = hidden · gelu(gate).
func gegluKernel(_ x: Tensor) -> Tensor {
    precondition(!x.shape.isEmpty && x.shape[x.shape.count - 1] % 2 == 0,
                 "geglu: last dimension of \(x.shape) must be even")
    let twoF = x.shape[x.shape.count - 1]
    let f = twoF / 2
    var outShape = x.shape
    outShape[outShape.count - 1] = f
    var y = Tensor(uninitialized: outShape)
    if y.count == 0 { return y }
    let rows = y.count / f
    y.withUnsafeMutableBufferPointer { yb in
        x.withUnsafeBufferPointer { xb in
            guard let yp = yb.baseAddress, let xp = xb.baseAddress else { return }
            Parallel.forEachChunk(count: rows, minItemsPerChunk: max(1, activationChunk / f)) { range in
                for r in range {
                    let hidden = xp + r * twoF
                    let gate = hidden + f
                    let out = yp + r * f
                    ck_geglu_row(hidden, gate, out, Int64(f))
                }
            }
        }
    }
    return y
}
