// GroupNorm.c: one (sample, group) of torch.nn.GroupNorm, optionally fused with SiLU, for Normalization.swift —
// statistics in Double, two passes (as before in Swift), then the normalize/affine/SiLU pass, all compiled for
// AVX-512, AVX2+FMA and baseline x86-64 and chosen at run time with the dequantizers' level (ck_dequantize_level).
#include "CKernels.h"
#include "ElementwiseMath.h"

#if defined(__x86_64__) || defined(__i386__)
#define CK_GROUP_NORM_X86 1
#else
#define CK_GROUP_NORM_X86 0
#endif

// Sixteen Double partial sums as two 8-lane vectors (clang's vector extension: two AVX-512 registers, so two
// add chains run at once; four AVX2 or eight SSE2 registers on the other levels) added in a fixed tree: every
// level sums in the same order, and the reassociation against a sequential sum moves the result by ~1e−16
// relative — far below the F32 output's 6e−8.
typedef float ck_f32x8 __attribute__((ext_vector_type(8)));
typedef double ck_f64x8 __attribute__((ext_vector_type(8)));

#define CK_LOAD_F64X8(P)                                                                               \
    __extension__({ ck_f32x8 v_; memcpy(&v_, (P), sizeof v_); __builtin_convertvector(v_, ck_f64x8); })
#define CK_SUM_F64X8(V) ((((V).s0 + (V).s4) + ((V).s2 + (V).s6)) + (((V).s1 + (V).s5) + ((V).s3 + (V).s7)))

#define CK_GROUP_NORM(SUFFIX, ATTR)                                                                    \
ATTR static void ck_group_norm_##SUFFIX(const float *src, float *dst, int64_t channels, int64_t spatial,  \
                                         const float *gamma, const float *beta, float eps, int silu) {    \
    const int64_t count = channels * spatial;                                                          \
    ck_f64x8 lo = 0, hi = 0;                                                                           \
    int64_t i = 0;                                                                                     \
    for (; i + 16 <= count; i += 16) {                                                                 \
        lo += CK_LOAD_F64X8(src + i);                                                                  \
        hi += CK_LOAD_F64X8(src + i + 8);                                                              \
    }                                                                                                  \
    lo += hi;                                                                                          \
    double sum = CK_SUM_F64X8(lo);                                                                     \
    for (; i < count; i++) sum += (double)src[i];                                                      \
    const double mean = sum / (double)count;                                                           \
    lo = 0;                                                                                            \
    hi = 0;                                                                                            \
    for (i = 0; i + 16 <= count; i += 16) {                                                            \
        const ck_f64x8 a = CK_LOAD_F64X8(src + i) - mean, b = CK_LOAD_F64X8(src + i + 8) - mean;       \
        lo += a * a;                                                                                   \
        hi += b * b;                                                                                   \
    }                                                                                                  \
    lo += hi;                                                                                          \
    double squares = CK_SUM_F64X8(lo);                                                                 \
    for (; i < count; i++) {                                                                           \
        const double d = (double)src[i] - mean;                                                        \
        squares += d * d;                                                                              \
    }                                                                                                  \
    const double invStd = 1.0 / __builtin_sqrt(squares / (double)count + (double)eps);                 \
    const float m = (float)mean;                                                                       \
    for (int64_t cl = 0; cl < channels; cl++) {                                                        \
        const float a = (float)(invStd * (double)gamma[cl]);                                           \
        const float b = beta[cl];                                                                      \
        const float *s = src + cl * spatial;                                                           \
        float *d = dst + cl * spatial;                                                                 \
        if (silu) {                                                                                    \
            for (int64_t j = 0; j < spatial; j++) {                                                    \
                const float v = (s[j] - m) * a + b;                                                    \
                /* exp(−v) clamped to [−87, 88] as fastExp(min(−v, 88)) was: beyond, the result is v   \
                   itself (v > 87) or, like v·sigmoid(v), under 1e−35 in magnitude (v < −88) */        \
                float e = -v;                                                                          \
                e = e < 88.0f ? e : 88.0f;                                                             \
                e = e < -87.0f ? -87.0f : e;                                                           \
                d[j] = v / (1.0f + ck_exp_cephes(e));                                                  \
            }                                                                                          \
        } else {                                                                                       \
            for (int64_t j = 0; j < spatial; j++) d[j] = (s[j] - m) * a + b;                           \
        }                                                                                              \
    }                                                                                                  \
}

CK_GROUP_NORM(generic, )
#if CK_GROUP_NORM_X86
CK_GROUP_NORM(avx2, __attribute__((target("avx2,fma"))))
CK_GROUP_NORM(avx512, __attribute__((target("avx512f,avx512bw,avx512vl"))))
#endif

void ck_group_norm(const float *src, float *dst, int64_t channels, int64_t spatial, const float *gamma,
                   const float *beta, float eps, int silu) {
    if (channels <= 0 || spatial <= 0) return;
#if CK_GROUP_NORM_X86
    switch (ck_dequantize_level()) {
    case 2: ck_group_norm_avx512(src, dst, channels, spatial, gamma, beta, eps, silu); return;
    case 1: ck_group_norm_avx2(src, dst, channels, spatial, gamma, beta, eps, silu); return;
    default: break;
    }
#endif
    ck_group_norm_generic(src, dst, channels, spatial, gamma, beta, eps, silu);
}
