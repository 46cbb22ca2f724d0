// Gelu.c: erf, exact GELU (x·Φ(x), torch's F.gelu default) and diffusers' GEGLU over rows of F32 for
// Activations.swift, compiled for AVX-512, AVX2+FMA and baseline x86-64 and chosen at run time with the
// dequantizers' level (ck_dequantize_level). The math is ElementwiseMath.h's branch-free erf (≤ 1.4 ulp).
#include "CKernels.h"
#include "ElementwiseMath.h"

#if defined(__x86_64__) || defined(__i386__)
#define CK_GELU_X86 1
#else
#define CK_GELU_X86 0
#endif

#define CK_GELU_ROWS(SUFFIX, ATTR)                                                                     \
ATTR static void ck_erf_row_##SUFFIX(const float *x, float *y, int64_t n) {                            \
    for (int64_t i = 0; i < n; i++) y[i] = ck_erf(x[i]);                                               \
}                                                                                                      \
ATTR static void ck_gelu_row_##SUFFIX(const float *x, float *y, int64_t n) {                           \
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * ck_normal_cdf(x[i]);                                 \
}                                                                                                      \
ATTR static void ck_geglu_row_##SUFFIX(const float *hidden, const float *gate, float *y, int64_t n) {  \
    for (int64_t i = 0; i < n; i++) y[i] = hidden[i] * (gate[i] * ck_normal_cdf(gate[i]));             \
}

CK_GELU_ROWS(generic, )
#if CK_GELU_X86
CK_GELU_ROWS(avx2, __attribute__((target("avx2,fma"))))
CK_GELU_ROWS(avx512, __attribute__((target("avx512f,avx512bw,avx512vl"))))
#endif

void ck_erf_row(const float *x, float *y, int64_t n) {
#if CK_GELU_X86
    switch (ck_dequantize_level()) {
    case 2: ck_erf_row_avx512(x, y, n); return;
    case 1: ck_erf_row_avx2(x, y, n); return;
    default: break;
    }
#endif
    ck_erf_row_generic(x, y, n);
}

void ck_gelu_row(const float *x, float *y, int64_t n) {
#if CK_GELU_X86
    switch (ck_dequantize_level()) {
    case 2: ck_gelu_row_avx512(x, y, n); return;
    case 1: ck_gelu_row_avx2(x, y, n); return;
    default: break;
    }
#endif
    ck_gelu_row_generic(x, y, n);
}

void ck_geglu_row(const float *hidden, const float *gate, float *y, int64_t n) {
#if CK_GELU_X86
    switch (ck_dequantize_level()) {
    case 2: ck_geglu_row_avx512(hidden, gate, y, n); return;
    case 1: ck_geglu_row_avx2(hidden, gate, y, n); return;
    default: break;
    }
#endif
    ck_geglu_row_generic(hidden, gate, y, n);
}
