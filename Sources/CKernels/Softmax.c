// Softmax.c: the attention softmax's row pass — row[j] = exp(row[j] − shift) in place, returning the row's
// sum — compiled for AVX-512, AVX2+FMA and baseline x86-64 and chosen at run time with the dequantizers'
// level (ck_dequantize_level), so one exp per attention score runs 16 lanes wide where the CPU allows.
// exp is Cephes' expf range reduction and polynomial (about 1 ulp); inputs below −87 give e^−87.
#include "CKernels.h"
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define CK_SOFTMAX_X86 1
#else
#define CK_SOFTMAX_X86 0
#endif

#define CK_EXP_ROW(SUFFIX, ATTR)                                                                       \
ATTR static double ck_exp_row_##SUFFIX(float *row, int64_t n, float shift) {                           \
    for (int64_t j = 0; j < n; j++) {                                                                  \
        float x = row[j] - shift;                                                                      \
        x = x < -87.0f ? -87.0f : x;                                                                   \
        /* k = round(x / ln2) by the 1.5·2^23 trick */                                                 \
        const float shifter = 12582912.0f;                                                             \
        float k = (x * 1.44269504088896341f + shifter) - shifter;                                      \
        x = x - k * 0.693359375f;                                                                      \
        x = x + k * 2.12194440e-4f;                                                                    \
        float p = 1.9875691500e-4f;                                                                    \
        p = p * x + 1.3981999507e-3f;                                                                  \
        p = p * x + 8.3334519073e-3f;                                                                  \
        p = p * x + 4.1665795894e-2f;                                                                  \
        p = p * x + 1.6666665459e-1f;                                                                  \
        p = p * x + 5.0000001201e-1f;                                                                  \
        const float y = p * (x * x) + x + 1.0f;                                                        \
        const int32_t bits = ((int32_t)k + 127) << 23;                                                 \
        float scale;                                                                                   \
        memcpy(&scale, &bits, sizeof scale);                                                           \
        row[j] = y * scale;                                                                            \
    }                                                                                                  \
    /* groups of four summed in F32 (each value ≤ 1), the running total in double */                   \
    double sum = 0;                                                                                    \
    int64_t j = 0;                                                                                     \
    for (; j + 4 <= n; j += 4) sum += (double)((row[j] + row[j + 1]) + (row[j + 2] + row[j + 3]));     \
    for (; j < n; j++) sum += (double)row[j];                                                          \
    return sum;                                                                                        \
}

CK_EXP_ROW(generic, )
#if CK_SOFTMAX_X86
CK_EXP_ROW(avx2, __attribute__((target("avx2,fma"))))
CK_EXP_ROW(avx512, __attribute__((target("avx512f,avx512bw,avx512vl"))))
#endif

double ck_exp_row(float *row, int64_t n, float shift) {
#if CK_SOFTMAX_X86
    switch (ck_dequantize_level()) {
    case 2: return ck_exp_row_avx512(row, n, shift);
    case 1: return ck_exp_row_avx2(row, n, shift);
    default: break;
    }
#endif
    return ck_exp_row_generic(row, n, shift);
}
