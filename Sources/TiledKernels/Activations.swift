// Activations: elementwise nonlinearities of SD's UNet/VAE (SiLU, GELU, GEGLU) and CLIP (quick GELU).
// Large tensors are split across cores; each element is computed exactly as torch's formula.
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
public func gelu(_ x: Tensor) -> Tensor {
    mapElements(x, geluScalar)
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
                    for i in 0..<f { out[i] = hidden[i] * geluScalar(gate[i]) }
                }
            }
        }
    }
    return y
}

@inline(__always)
func geluScalar(_ v: Float) -> Float {
    0.5 * v * (1 + erff(v * 0.70710678118654752440))
}
