// Normalization: GroupNorm (optionally fused with SiLU) and LayerNorm, torch.nn semantics.
// Statistics are accumulated in Double, two-pass (mean, then mean squared deviation), biased variance. GroupNorm's
// per-group loops are CKernels' ck_group_norm (AVX-512 / AVX2 where the CPU has them); Swift splits the groups.
import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public func groupNorm(_ x: Tensor, groups: Int, gamma: Weight, beta: Weight, eps: Float,
                      silu: Bool = false) -> Tensor {
    KernelProfile.measure("groupNorm") {
        groupNormKernel(x, groups: groups, gamma: gamma, beta: beta, eps: eps, silu: silu)
    }
}

/// torch.nn.GroupNorm: y = (x − mean) / sqrt(var + eps) · gamma[c] + beta[c], statistics per (sample, group).
/// x: [N, C, *spatial] (C divisible by `groups`); gamma, beta: [C]. `silu` applies y·sigmoid(y) afterwards.
func groupNormKernel(_ x: Tensor, groups: Int, gamma: Weight, beta: Weight, eps: Float,
                     silu: Bool) -> Tensor {
    precondition(x.shape.count >= 2, "groupNorm: input must be [N, C, ...], got \(x.shape)")
    let n = x.shape[0], c = x.shape[1]
    precondition(groups >= 1 && c % groups == 0, "groupNorm: \(c) channels in \(groups) groups")
    precondition(gamma.count == c && beta.count == c, "groupNorm: gamma \(gamma.shape), beta \(beta.shape) for \(c) channels")
    let spatial = x.shape.dropFirst(2).reduce(1, *)
    let perGroup = (c / groups) * spatial
    let channelsPerGroup = c / groups
    var y = Tensor(uninitialized: x.shape)
    if y.count == 0 { return y }
    gamma.withFloats { gp in beta.withFloats { bp in
    y.withUnsafeMutableBufferPointer { yb in
        x.withUnsafeBufferPointer { xb in
            guard let yp = yb.baseAddress, let xp = xb.baseAddress else { return }
            Parallel.forEachChunk(count: n * groups, minItemsPerChunk: max(1, (1 << 15) / max(1, perGroup))) { range in
                for unit in range {
                    let first = (unit % groups) * channelsPerGroup
                    ck_group_norm(xp + unit * perGroup, yp + unit * perGroup, Int64(channelsPerGroup),
                                  Int64(spatial), gp + first, bp + first, eps, silu ? 1 : 0)
                }
            }
        }
    }
    } }
    return y
}

public func layerNorm(_ x: Tensor, gamma: Weight, beta: Weight, eps: Float) -> Tensor {
    KernelProfile.measure("layerNorm") {
        layerNormKernel(x, gamma: gamma, beta: beta, eps: eps)
    }
}

/// torch.nn.LayerNorm over the last dimension: y = (x − mean) / sqrt(var + eps) · gamma + beta.
/// x: [..., F]; gamma, beta: [F].
func layerNormKernel(_ x: Tensor, gamma: Weight, beta: Weight, eps: Float) -> Tensor {
    precondition(!x.shape.isEmpty, "layerNorm: scalar input")
    let f = x.shape[x.shape.count - 1]
    precondition(gamma.count == f && beta.count == f, "layerNorm: gamma \(gamma.shape), beta \(beta.shape) for \(f) features")
    var y = Tensor(uninitialized: x.shape)
    if y.count == 0 { return y }
    let rows = y.count / f
    gamma.withFloats { gp in beta.withFloats { bp in
    y.withUnsafeMutableBufferPointer { yb in
        x.withUnsafeBufferPointer { xb in
            guard let yp = yb.baseAddress, let xp = xb.baseAddress else { return }
            Parallel.forEachChunk(count: rows, minItemsPerChunk: max(1, (1 << 15) / f)) { range in
                for r in range {
                    let src = UnsafePointer(xp + r * f)
                    let dst = yp + r * f
                    let (mean, invStd) = meanAndInverseStd(src, count: f, eps: eps)
                    let m = Float(mean), s = Float(invStd)
                    for i in 0..<f {
                        dst[i] = (src[i] - m) * s * gp[i] + bp[i]
                    }
                }
            }
        }
    }
    } }
    return y
}

/// Mean and 1 / sqrt(biased variance + eps) of `count` values, accumulated in Double (eight lanes of
/// partial sums, so the loops vectorize; the reassociation changes the sums by ~1e-16 relative).
@inline(__always)
private func meanAndInverseStd(_ p: UnsafePointer<Float>, count: Int, eps: Float) -> (Double, Double) {
    let raw = UnsafeRawPointer(p)
    var lanes = SIMD8<Double>(repeating: 0)
    var i = 0
    while i + 8 <= count {
        lanes += SIMD8<Double>(raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self))
        i += 8
    }
    var sum = lanes.sum()
    while i < count {
        sum += Double(p[i])
        i += 1
    }
    let mean = sum / Double(count)
    let meanLanes = SIMD8<Double>(repeating: mean)
    lanes = SIMD8<Double>(repeating: 0)
    i = 0
    while i + 8 <= count {
        let d = SIMD8<Double>(raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)) - meanLanes
        lanes += d * d
        i += 8
    }
    var sq = lanes.sum()
    while i < count {
        let d = Double(p[i]) - mean
        sq += d * d
        i += 1
    }
    let variance = sq / Double(count)
    return (mean, 1.0 / (variance + Double(eps)).squareRoot())
}
