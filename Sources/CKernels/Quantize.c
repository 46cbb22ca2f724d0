// Quantize: the from_float rows of the type table (TypeTraits.c) — F32 → F16, BF16 and the 32-element ggml blocks
// (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), bit-exact with ggml's quantize_row_*_ref and PyPI gguf.quants.
// No fused multiply-adds, and float → int8 conversions spelled out so NaN and overflow are defined (see ck_trunc_i8).
#include "TypeKernels.h"
#include <math.h>
#include <string.h>

#pragma clang fp contract(off)

static inline uint32_t ck_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float ck_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline void ck_store16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void ck_store32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/// Float → IEEE binary16 bits, round to nearest even, as ggml's portable ggml_compute_fp32_to_fp16 (Maratyszcza's
/// FP16 library): subnormal results, overflow to ±inf, NaN → the quiet NaN 0x7E00 with its sign.
static inline uint16_t ck_float_to_half(float f) {
    const float scale_to_inf = ck_float(0x77800000u);   // 0x1.0p+112
    const float scale_to_zero = ck_float(0x08800000u);  // 0x1.0p-110
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
    const uint32_t w = ck_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = ck_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = ck_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

/// Float → bfloat16 bits as ggml_compute_fp32_to_bf16: NaN kept and forced quiet, else nearest even.
static inline uint16_t ck_float_to_bf16(float f) {
    const uint32_t u = ck_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7FFFu + ((u >> 16) & 1))) >> 16);
}

/// C's `(int8_t)f` as x86 compiles it (cvttss2si, then the low byte): truncation toward zero, with NaN and
/// out-of-range giving INT32_MIN's low byte (0). ggml's code leaves those cases undefined; finite inputs in its
/// ranges convert exactly as it does.
static inline int8_t ck_trunc_i8(float f) {
    const int32_t i = (isnan(f) || f >= 2147483648.0f || f < -2147483648.0f) ? INT32_MIN : (int32_t)f;
    return (int8_t)(uint8_t)(uint32_t)i;
}

/// The first element of largest magnitude, with its sign (ggml keeps the first on ties).
static inline float ck_signed_abs_max(const float *x) {
    float amax = 0.0f, maxv = 0.0f;
    for (int j = 0; j < 32; j++) {
        if (amax < fabsf(x[j])) { amax = fabsf(x[j]); maxv = x[j]; }
    }
    return maxv;
}

static inline void ck_min_max(const float *x, float *mn, float *mx) {
    *mn = 3.402823466e+38f;
    *mx = -3.402823466e+38f;
    for (int j = 0; j < 32; j++) {
        if (x[j] < *mn) *mn = x[j];
        if (x[j] > *mx) *mx = x[j];
    }
}

static inline uint8_t ck_clamp_q(int8_t q, int top) { return (uint8_t)(q < top ? q : top); }

void ck_from_float_f32(const float *x, int64_t n, void *y) { memcpy(y, x, (size_t)n * 4); }

void ck_from_float_f16(const float *x, int64_t n, void *vy) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t i = 0; i < n; i++) ck_store16(y + 2 * i, ck_float_to_half(x[i]));
}

void ck_from_float_bf16(const float *x, int64_t n, void *vy) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t i = 0; i < n; i++) ck_store16(y + 2 * i, ck_float_to_bf16(x[i]));
}

/// quantize_row_q8_0_ref: d = amax/127, q = roundf(x/d) (half away from zero).
void ck_from_float_q8_0(const float *x, int64_t n, void *vy) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);  // ggml's MAX, NaN included
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        ck_store16(y, ck_float_to_half(d));
        for (int j = 0; j < 32; j++) y[2 + j] = (uint8_t)ck_trunc_i8(roundf(x[j] * id));
    }
}

/// quantize_row_q4_0_ref: d = max/-8, q = min(15, (int8)(x/d + 8.5)).
void ck_from_float_q4_0(const float *x, int64_t n, void *vy) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 18) {
        const float d = ck_signed_abs_max(x) / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        ck_store16(y, ck_float_to_half(d));
        for (int j = 0; j < 16; j++) {
            const uint8_t q0 = ck_clamp_q(ck_trunc_i8(x[j] * id + 8.5f), 15);
            const uint8_t q1 = ck_clamp_q(ck_trunc_i8(x[j + 16] * id + 8.5f), 15);
            y[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/// quantize_row_q4_1_ref: d = (max-min)/15, m = min, q = min(15, (int8)((x-min)/d + 0.5)).
void ck_from_float_q4_1(const float *x, int64_t n, void *vy) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 20) {
        float mn, mx;
        ck_min_max(x, &mn, &mx);
        const float d = (mx - mn) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        ck_store16(y, ck_float_to_half(d));
        ck_store16(y + 2, ck_float_to_half(mn));
        for (int j = 0; j < 16; j++) {
            const uint8_t q0 = ck_clamp_q(ck_trunc_i8((x[j] - mn) * id + 0.5f), 15);
            const uint8_t q1 = ck_clamp_q(ck_trunc_i8((x[j + 16] - mn) * id + 0.5f), 15);
            y[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/// quantize_row_q5_0_ref: d = max/-16, q = min(31, (int8)(x/d + 16.5)); bit 4 of each q in qh.
void ck_from_float_q5_0(const float *x, int64_t n, void *vy) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 22) {
        const float d = ck_signed_abs_max(x) / -16;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        ck_store16(y, ck_float_to_half(d));
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const uint8_t q0 = ck_clamp_q(ck_trunc_i8(x[j] * id + 16.5f), 31);
            const uint8_t q1 = ck_clamp_q(ck_trunc_i8(x[j + 16] * id + 16.5f), 31);
            y[6 + j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)((q0 & 0x10) >> 4) << j;
            qh |= (uint32_t)((q1 & 0x10) >> 4) << (j + 16);
        }
        ck_store32(y + 2, qh);
    }
}

/// quantize_row_q5_1_ref: d = (max-min)/31, m = min, q = min(31, (int8)((x-min)/d + 0.5)).
void ck_from_float_q5_1(const float *x, int64_t n, void *vy) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 24) {
        float mn, mx;
        ck_min_max(x, &mn, &mx);
        const float d = (mx - mn) / 31;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        ck_store16(y, ck_float_to_half(d));
        ck_store16(y + 2, ck_float_to_half(mn));
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const uint8_t q0 = ck_clamp_q(ck_trunc_i8((x[j] - mn) * id + 0.5f), 31);
            const uint8_t q1 = ck_clamp_q(ck_trunc_i8((x[j + 16] - mn) * id + 0.5f), 31);
            y[8 + j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)((q0 & 0x10) >> 4) << j;
            qh |= (uint32_t)((q1 & 0x10) >> 4) << (j + 16);
        }
        ck_store32(y + 4, qh);
    }
}
