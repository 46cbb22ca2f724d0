// ElementwiseMath: branch-free F32 exp and erf written so LLVM vectorizes a loop that calls them (selects, no
// branches or libm calls), inlined into GroupNorm.c's and Gelu.c's per-ISA loops and Softmax.c's scalar exp.
// Private to CKernels.
#ifndef CK_ELEMENTWISE_MATH_H
#define CK_ELEMENTWISE_MATH_H

#include <stdint.h>
#include <string.h>

#define CK_MATH_INLINE static inline __attribute__((always_inline))

/// e^x for x in [−87, 88] (callers clamp): Cephes' expf range reduction and polynomial, about 1 ulp — the
/// same steps as Softmax.c's row pass and VectorMath.swift's fastExp.
CK_MATH_INLINE float ck_exp_cephes(float x) {
    // k = round(x / ln2) by the 1.5·2^23 trick; x − k·ln2 in two steps (0.693359375 is exact in F32).
    const float shifter = 12582912.0f;
    const float k = (x * 1.44269504088896341f + shifter) - shifter;
    x = x - k * 0.693359375f;
    x = x + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * x + 1.3981999507e-3f;
    p = p * x + 8.3334519073e-3f;
    p = p * x + 4.1665795894e-2f;
    p = p * x + 1.6666665459e-1f;
    p = p * x + 5.0000001201e-1f;
    const float y = p * (x * x) + x + 1.0f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

// erf on two intervals of t = |x|, split at CK_ERF_SPLIT (where erf's Taylor-like polynomial needs more terms
// than the tail's):
//   t < split:  erf(x) = x + x·P(x²), P of degree 5 (P(0) = 2/√π − 1);
//   t ≥ split:  erf(x) = ±(1 − erfc(t)), erfc(t) = exp(Q(t − split)), Q of degree 8 fitted to log erfc on
//               [split, 4]; at t ≥ 4 erfc(t) < 1.6e−8, under half an ulp of 1, so erf is ±1 there.
// Both polynomials are our own minimax fits on a dense grid (linear programming, mpmath's erf/erfc at 40 digits
// as the target): P to erf's relative error (0.26 · 2^−24), Q to log erfc's absolute error (0.2 · 2^−24), each
// coefficient then rounded to F32. Measured against glibc's double erf on every 17th F32 of both signs with
// |x| in [2^−126, 4.5]: at most 1.13 ulp with FMA contraction (AVX2/AVX-512), 1.40 ulp without (baseline).
#define CK_ERF_SPLIT 0.921875f
#define CK_ERF_ONE 4.0f

/// x + x·P(x²) for |x| < CK_ERF_SPLIT; NaN gives NaN.
CK_MATH_INLINE float ck_erf_small(float x) {
    const float s = x * x;
    float p = -5.990853533e-4f;
    p = p * s + 4.993180279e-3f;
    p = p * s - 2.676661685e-2f;
    p = p * s + 1.128181592e-1f;
    p = p * s - 3.761249483e-1f;
    p = p * s + 1.283791512e-1f;
    return x + x * p;
}

/// erfc(t) for t ≥ CK_ERF_SPLIT, 0 at t ≥ CK_ERF_ONE (NaN gives 0: callers select another value for it).
CK_MATH_INLINE float ck_erfc_tail(float t) {
    const float u = (t < CK_ERF_ONE ? t : CK_ERF_ONE) - CK_ERF_SPLIT;
    float q = 1.601677127e-6f;
    q = q * u - 3.352618296e-5f;
    q = q * u + 3.361187992e-4f;
    q = q * u - 2.201889409e-3f;
    q = q * u + 1.089937426e-2f;
    q = q * u - 4.484393448e-2f;
    q = q * u - 8.329858780e-1f;
    q = q * u - 2.508012533e+0f;
    q = q * u - 1.648561954e+0f;
    // q ∈ [−18.1, −1.64] here, inside ck_exp_cephes's range.
    const float e = ck_exp_cephes(q);
    return t < CK_ERF_ONE ? e : 0.0f;
}

/// erf(x) for every F32: ±1 for |x| ≥ 3.92 and ±∞, NaN for NaN.
CK_MATH_INLINE float ck_erf(float x) {
    const float t = x < 0 ? -x : x;
    const float small = ck_erf_small(x);
    const float big = 1.0f - ck_erfc_tail(t);
    // !(t ≥ split) sends NaN to the small path, which returns it.
    return !(t >= CK_ERF_SPLIT) ? small : (x < 0 ? -big : big);
}

/// Φ(x) = ½(1 + erf(x/√2)), the standard normal CDF GELU multiplies by. Below the split it is ½ + ½·erf; above,
/// the lower tail is ½·erfc(|x|/√2) itself rather than 1 + erf(…) (which would cancel to a few bits), so
/// GELU of a negative x keeps its relative accuracy down to x ≈ −5.6, where Φ falls under 8e−9 and is taken
/// as 0 (torch's F32 formula gives exactly 0 there too).
CK_MATH_INLINE float ck_normal_cdf(float x) {
    const float z = x * 0.70710678118654752440f;
    const float t = z < 0 ? -z : z;
    const float small = 0.5f + 0.5f * ck_erf_small(z);
    const float half = 0.5f * ck_erfc_tail(t);
    const float big = z < 0 ? half : 1.0f - half;
    return !(t >= CK_ERF_SPLIT) ? small : big;
}

#endif
