// Dequantize: the to_float rows of the type table (TypeTraits.c) — ggml block formats (Q8_0, Q4_0, Q4_1, Q5_0,
// Q5_1; k-quants Q4_K, Q5_K, Q6_K) and F16/BF16 → F32, portable and vectorized (the k-quants, read only from
// other tools' files, in portable C) — and the dispatcher that picks a row's path for this CPU.
// Every path gives ggml's dequantize_row_* values bit for bit: no fused multiply-adds.
#include "CKernels.h"
#include "TypeKernels.h"
#include <string.h>

#pragma clang fp contract(off)

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CK_X86 1
#else
#define CK_X86 0
#endif

// ---- portable reference-shaped code ------------------------------------------------------------

static inline float ck_half_to_float(uint16_t h) {
    // Fabian Giesen's half_to_float, as Float32Conversion.halfToFloat.
    union { uint32_t u; float f; } o, magic;
    magic.u = 113u << 23;
    const uint32_t shifted_exp = 0x7C00u << 13;
    o.u = (uint32_t)(h & 0x7FFF) << 13;
    uint32_t exp = shifted_exp & o.u;
    o.u += (127u - 15u) << 23;
    if (exp == shifted_exp) {
        o.u += (128u - 16u) << 23;
    } else if (exp == 0) {
        o.u += 1u << 23;
        o.f -= magic.f;
    }
    o.u |= (uint32_t)(h & 0x8000) << 16;
    return o.f;
}

static inline uint16_t ck_load16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ck_load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

// The element loops, written once and compiled per target below.
#define CK_GENERIC_BODIES(SUFFIX, ATTR)                                                                \
ATTR static void ck_f16_##SUFFIX(const uint8_t *s, int64_t n, float *y) {                              \
    for (int64_t i = 0; i < n; i++) y[i] = ck_half_to_float(ck_load16(s + 2 * i));                     \
}                                                                                                      \
ATTR static void ck_bf16_##SUFFIX(const uint8_t *s, int64_t n, float *y) {                             \
    for (int64_t i = 0; i < n; i++) {                                                                  \
        union { uint32_t u; float f; } v; v.u = (uint32_t)ck_load16(s + 2 * i) << 16; y[i] = v.f;      \
    }                                                                                                  \
}                                                                                                      \
ATTR static void ck_q8_0_##SUFFIX(const uint8_t *s, int64_t n, float *y) {                             \
    for (int64_t b = 0; b < n / 32; b++, s += 34, y += 32) {                                           \
        const float d = ck_half_to_float(ck_load16(s));                                                \
        const int8_t *q = (const int8_t *)(s + 2);                                                     \
        for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;                                           \
    }                                                                                                  \
}                                                                                                      \
ATTR static void ck_q4_##SUFFIX(const uint8_t *s, int64_t n, float *y, int has_min) {                  \
    const int bytes = has_min ? 20 : 18;                                                               \
    for (int64_t b = 0; b < n / 32; b++, s += bytes, y += 32) {                                        \
        const float d = ck_half_to_float(ck_load16(s));                                                \
        const uint8_t *q = s + (has_min ? 4 : 2);                                                      \
        if (has_min) {                                                                                 \
            const float m = ck_half_to_float(ck_load16(s + 2));                                        \
            for (int j = 0; j < 16; j++) {                                                             \
                float lo = (float)(q[j] & 0x0F) * d, hi = (float)(q[j] >> 4) * d;                      \
                y[j] = lo + m; y[j + 16] = hi + m;                                                     \
            }                                                                                          \
        } else {                                                                                       \
            for (int j = 0; j < 16; j++) {                                                             \
                y[j] = (float)((int)(q[j] & 0x0F) - 8) * d;                                            \
                y[j + 16] = (float)((int)(q[j] >> 4) - 8) * d;                                         \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
ATTR static void ck_q5_##SUFFIX(const uint8_t *s, int64_t n, float *y, int has_min) {                  \
    const int bytes = has_min ? 24 : 22, qh_at = has_min ? 4 : 2;                                      \
    for (int64_t b = 0; b < n / 32; b++, s += bytes, y += 32) {                                        \
        const float d = ck_half_to_float(ck_load16(s));                                                \
        const float m = has_min ? ck_half_to_float(ck_load16(s + 2)) : 0.0f;                           \
        const uint32_t qh = ck_load32(s + qh_at);                                                      \
        const uint8_t *q = s + qh_at + 4;                                                              \
        for (int j = 0; j < 16; j++) {                                                                 \
            int x0 = (q[j] & 0x0F) | (int)(((qh >> j) << 4) & 0x10);                                   \
            int x1 = (q[j] >> 4) | (int)((qh >> (j + 12)) & 0x10);                                     \
            if (has_min) {                                                                             \
                float a = (float)x0 * d, c = (float)x1 * d;                                            \
                y[j] = a + m; y[j + 16] = c + m;                                                       \
            } else {                                                                                   \
                y[j] = (float)(x0 - 16) * d; y[j + 16] = (float)(x1 - 16) * d;                         \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
ATTR void ck_to_float_f16_##SUFFIX(const void *s, int64_t n, float *y) { ck_f16_##SUFFIX(s, n, y); }         \
ATTR void ck_to_float_bf16_##SUFFIX(const void *s, int64_t n, float *y) { ck_bf16_##SUFFIX(s, n, y); }       \
ATTR void ck_to_float_q8_0_##SUFFIX(const void *s, int64_t n, float *y) { ck_q8_0_##SUFFIX(s, n, y); }       \
ATTR void ck_to_float_q4_0_##SUFFIX(const void *s, int64_t n, float *y) { ck_q4_##SUFFIX(s, n, y, 0); }      \
ATTR void ck_to_float_q4_1_##SUFFIX(const void *s, int64_t n, float *y) { ck_q4_##SUFFIX(s, n, y, 1); }      \
ATTR void ck_to_float_q5_0_##SUFFIX(const void *s, int64_t n, float *y) { ck_q5_##SUFFIX(s, n, y, 0); }      \
ATTR void ck_to_float_q5_1_##SUFFIX(const void *s, int64_t n, float *y) { ck_q5_##SUFFIX(s, n, y, 1); }

CK_GENERIC_BODIES(portable, )
#if CK_X86
CK_GENERIC_BODIES(avx2, __attribute__((target("avx2,f16c,fma"))))
#endif

// ---- AVX-512 -----------------------------------------------------------------------------------
#if CK_X86
#define CK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

CK_AVX512 static void ck_f16_avx512(const uint8_t *s, int64_t n, float *y) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + 2 * i))));
    for (; i < n; i++) y[i] = ck_half_to_float(ck_load16(s + 2 * i));
}

CK_AVX512 static void ck_bf16_avx512(const uint8_t *s, int64_t n, float *y) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + 2 * i)));
        _mm512_storeu_ps(y + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
    for (; i < n; i++) { union { uint32_t u; float f; } v; v.u = (uint32_t)ck_load16(s + 2 * i) << 16; y[i] = v.f; }
}

CK_AVX512 static inline float ck_half_avx512(const uint8_t *p) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(ck_load16(p))));
}

CK_AVX512 static void ck_q8_0_avx512(const uint8_t *s, int64_t n, float *y) {
    for (int64_t b = 0; b < n / 32; b++, s += 34, y += 32) {
        const __m512 d = _mm512_set1_ps(ck_half_avx512(s));
        __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(s + 2)));
        __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(s + 18)));
        _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(q0), d));
        _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(q1), d));
    }
}

CK_AVX512 static void ck_q4_avx512(const uint8_t *s, int64_t n, float *y, int has_min) {
    const int bytes = has_min ? 20 : 18;
    const __m512i mask = _mm512_set1_epi32(0x0F);
    const __m512i eight = _mm512_set1_epi32(8);
    for (int64_t b = 0; b < n / 32; b++, s += bytes, y += 32) {
        const __m512 d = _mm512_set1_ps(ck_half_avx512(s));
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(s + (has_min ? 4 : 2))));
        __m512i lo = _mm512_and_si512(q, mask), hi = _mm512_srli_epi32(q, 4);
        if (has_min) {
            const __m512 m = _mm512_set1_ps(ck_half_avx512(s + 2));
            _mm512_storeu_ps(y, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(lo), d), m));
            _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(hi), d), m));
        } else {
            _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(lo, eight)), d));
            _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(hi, eight)), d));
        }
    }
}

CK_AVX512 static void ck_q5_avx512(const uint8_t *s, int64_t n, float *y, int has_min) {
    const int bytes = has_min ? 24 : 22, qh_at = has_min ? 4 : 2;
    const __m512i mask = _mm512_set1_epi32(0x0F), one = _mm512_set1_epi32(1);
    const __m512i sixteen = _mm512_set1_epi32(16);
    const __m512i shift_lo = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i shift_hi = _mm512_add_epi32(shift_lo, sixteen);
    for (int64_t b = 0; b < n / 32; b++, s += bytes, y += 32) {
        const __m512 d = _mm512_set1_ps(ck_half_avx512(s));
        const __m512i qh = _mm512_set1_epi32((int)ck_load32(s + qh_at));
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(s + qh_at + 4)));
        __m512i h0 = _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(qh, shift_lo), one), 4);
        __m512i h1 = _mm512_slli_epi32(_mm512_and_si512(_mm512_srlv_epi32(qh, shift_hi), one), 4);
        __m512i x0 = _mm512_or_si512(_mm512_and_si512(q, mask), h0);
        __m512i x1 = _mm512_or_si512(_mm512_srli_epi32(q, 4), h1);
        if (has_min) {
            const __m512 m = _mm512_set1_ps(ck_half_avx512(s + 2));
            _mm512_storeu_ps(y, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(x0), d), m));
            _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(x1), d), m));
        } else {
            _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(x0, sixteen)), d));
            _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(x1, sixteen)), d));
        }
    }
}

CK_AVX512 void ck_to_float_f16_avx512(const void *s, int64_t n, float *y) { ck_f16_avx512(s, n, y); }
CK_AVX512 void ck_to_float_bf16_avx512(const void *s, int64_t n, float *y) { ck_bf16_avx512(s, n, y); }
CK_AVX512 void ck_to_float_q8_0_avx512(const void *s, int64_t n, float *y) { ck_q8_0_avx512(s, n, y); }
CK_AVX512 void ck_to_float_q4_0_avx512(const void *s, int64_t n, float *y) { ck_q4_avx512(s, n, y, 0); }
CK_AVX512 void ck_to_float_q4_1_avx512(const void *s, int64_t n, float *y) { ck_q4_avx512(s, n, y, 1); }
CK_AVX512 void ck_to_float_q5_0_avx512(const void *s, int64_t n, float *y) { ck_q5_avx512(s, n, y, 0); }
CK_AVX512 void ck_to_float_q5_1_avx512(const void *s, int64_t n, float *y) { ck_q5_avx512(s, n, y, 1); }
#endif

// ---- k-quants: ggml's dequantize_row_q4_K / q5_K / q6_K (reference C, super-blocks of 256) ----------

static inline void ck_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63; *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

static void ck_q45_k(const void *src, int64_t n, float *y, int five) {
    const uint8_t *s = (const uint8_t *)src;
    const int bytes = five ? 176 : 144;
    for (int64_t b = 0; b < n / 256; b++, s += bytes) {
        const float d = ck_half_to_float(ck_load16(s)), dmin = ck_half_to_float(ck_load16(s + 2));
        const uint8_t *scales = s + 4, *qh = s + 16;
        const uint8_t *q = s + (five ? 48 : 16);
        uint8_t u1 = 1, u2 = 2;
        for (int is = 0; is < 8; is += 2, q += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            ck_scale_min_k4(is + 0, scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            ck_scale_min_k4(is + 1, scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)((q[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)((q[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - m2;
        }
    }
}

void ck_to_float_q6_k(const void *src, int64_t n, float *y) {
    const uint8_t *s = (const uint8_t *)src;
    for (int64_t b = 0; b < n / 256; b++, s += 210) {
        const float d = ck_half_to_float(ck_load16(s + 208));
        const uint8_t *ql = s, *qh = s + 128;
        const int8_t *sc = (const int8_t *)(s + 192);
        for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

void ck_to_float_q4_k(const void *s, int64_t n, float *y) { ck_q45_k(s, n, y, 0); }
void ck_to_float_q5_k(const void *s, int64_t n, float *y) { ck_q45_k(s, n, y, 1); }

void ck_to_float_f32(const void *s, int64_t n, float *y) { memcpy(y, s, (size_t)n * 4); }

// ---- dispatch ----------------------------------------------------------------------------------

static int ck_forced_level = -1;

static int ck_detected_level(void) {
#if CK_X86
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c"))
            level = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma"))
            level = 1;
        else
            level = 0;
    }
    return level;
#else
    return 0;
#endif
}

int ck_dequantize_level(void) {
    int detected = ck_detected_level();
    return (ck_forced_level >= 0 && ck_forced_level <= detected) ? ck_forced_level : detected;
}

void ck_force_dequantize_level(int level) { ck_forced_level = level; }

int ck_dequantize(uint32_t type, const void *src, int64_t count, float *dst) {
    const ck_type_traits *t = ck_type_traits_of(type);
    if (t == NULL) return -1;
    if (count <= 0) return 0;
    ck_to_float_fn to_float = t->to_float;
    const int level = ck_dequantize_level();
    if (level >= 2 && t->to_float_avx512 != NULL) to_float = t->to_float_avx512;
    else if (level >= 1 && t->to_float_avx2 != NULL) to_float = t->to_float_avx2;
    to_float(src, count, dst);
    return 0;
}
