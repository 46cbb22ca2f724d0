// TypeKernels: the row functions the type table (TypeTraits.c) points at — decoders in Dequantize.c, encoders
// in Quantize.c. Private to CKernels: everything else reaches them through the table.
#ifndef CK_TYPE_KERNELS_H
#define CK_TYPE_KERNELS_H

#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#define CK_TYPE_KERNELS_X86 1
#else
#define CK_TYPE_KERNELS_X86 0
#endif

#define CK_DECLARE_TO_FLOAT(NAME) void ck_to_float_##NAME(const void *src, int64_t n, float *dst);
#define CK_DECLARE_FROM_FLOAT(NAME) void ck_from_float_##NAME(const float *src, int64_t n, void *dst);

// Portable C: the reference path, on every CPU.
CK_DECLARE_TO_FLOAT(f32)
CK_DECLARE_TO_FLOAT(f16_portable)
CK_DECLARE_TO_FLOAT(bf16_portable)
CK_DECLARE_TO_FLOAT(q8_0_portable)
CK_DECLARE_TO_FLOAT(q4_0_portable)
CK_DECLARE_TO_FLOAT(q4_1_portable)
CK_DECLARE_TO_FLOAT(q5_0_portable)
CK_DECLARE_TO_FLOAT(q5_1_portable)
CK_DECLARE_TO_FLOAT(q4_k)
CK_DECLARE_TO_FLOAT(q5_k)
CK_DECLARE_TO_FLOAT(q6_k)

#if CK_TYPE_KERNELS_X86
// The same loops compiled for AVX2 + F16C, and hand-written AVX-512.
CK_DECLARE_TO_FLOAT(f16_avx2)
CK_DECLARE_TO_FLOAT(bf16_avx2)
CK_DECLARE_TO_FLOAT(q8_0_avx2)
CK_DECLARE_TO_FLOAT(q4_0_avx2)
CK_DECLARE_TO_FLOAT(q4_1_avx2)
CK_DECLARE_TO_FLOAT(q5_0_avx2)
CK_DECLARE_TO_FLOAT(q5_1_avx2)
CK_DECLARE_TO_FLOAT(f16_avx512)
CK_DECLARE_TO_FLOAT(bf16_avx512)
CK_DECLARE_TO_FLOAT(q8_0_avx512)
CK_DECLARE_TO_FLOAT(q4_0_avx512)
CK_DECLARE_TO_FLOAT(q4_1_avx512)
CK_DECLARE_TO_FLOAT(q5_0_avx512)
CK_DECLARE_TO_FLOAT(q5_1_avx512)
#endif

CK_DECLARE_FROM_FLOAT(f32)
CK_DECLARE_FROM_FLOAT(f16)
CK_DECLARE_FROM_FLOAT(bf16)
CK_DECLARE_FROM_FLOAT(q8_0)
CK_DECLARE_FROM_FLOAT(q4_0)
CK_DECLARE_FROM_FLOAT(q4_1)
CK_DECLARE_FROM_FLOAT(q5_0)
CK_DECLARE_FROM_FLOAT(q5_1)

#endif
