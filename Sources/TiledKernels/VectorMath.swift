// VectorMath: a branch-free exp for the attention softmax, where one exp per score dominates the time.
// Cephes' expf range reduction and polynomial (about 1 ulp), written so LLVM vectorizes the loop over a row.

/// e^x for x ≤ 88. Inputs below −87 return e^−87 (≈ 1.6e−38) instead of a smaller number or 0: callers use it
/// only for softmax weights next to a weight of 1, where that difference is far below F32 precision.
@inline(__always)
func fastExp(_ v: Float) -> Float {
    var x = v < -87 ? -87 : v
    // n = round(x / ln2) by the 1.5·2^23 trick: plain adds, so the loop vectorizes on baseline SSE2 too.
    let shifter: Float = 12_582_912
    let n = (x * 1.44269504088896341 + shifter) - shifter
    // x − n·ln2 in two steps (ln2 = 0.693359375 − 2.12194440e−4, the first part exact in F32).
    x = x - n * 0.693359375
    x = x + n * 2.12194440e-4
    var p: Float = 1.9875691500e-4
    p = p * x + 1.3981999507e-3
    p = p * x + 8.3334519073e-3
    p = p * x + 4.1665795894e-2
    p = p * x + 1.6666665459e-1
    p = p * x + 5.0000001201e-1
    let y = p * (x * x) + x + 1
    return y * Float(bitPattern: UInt32(bitPattern: (Int32(n) &+ 127) &<< 23))
}
