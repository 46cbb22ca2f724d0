// TypeTraits: the one table of weight storage types, in the style of ggml's type_traits — per ggml type id its
// name, block shape, LLAMA_FTYPE, round-trip error bound and row functions. ck_dequantize / ck_quantize dispatch
// through it and Swift's TensorType reads its sizes from it: adding a type is a row here and a case there.
#include "CKernels.h"
#include "TypeKernels.h"
#include <stddef.h>

// The round-trip bounds: max |x − to_float(from_float(x))| in a block over the block's max |x|, from each
// format's step (derived per row) plus the F16 rounding of stored scales and minimums (relative 2^-11, while they
// are normal numbers) and CK_F32_SLACK for the F32 arithmetic of both directions (a few ulps, 2^-23 each).
#define CK_HALF_ROUNDING (1.0f / 2048)
#define CK_F32_SLACK (1.0f / 65536)

#if CK_TYPE_KERNELS_X86
#define CK_X86_PATHS(NAME) .to_float_avx2 = ck_to_float_##NAME##_avx2, .to_float_avx512 = ck_to_float_##NAME##_avx512,
#else
#define CK_X86_PATHS(NAME)
#endif

static const ck_type_traits ck_types[CK_TYPE_ID_LIMIT] = {
    [0] = {
        .type = 0, .name = "f32", .block_elements = 1, .block_bytes = 4, .is_quantized = 0, .file_type = 0,
        .round_trip_bound = 0,  // a copy
        .to_float = ck_to_float_f32, .from_float = ck_from_float_f32,
    },
    [1] = {
        .type = 1, .name = "f16", .block_elements = 1, .block_bytes = 2, .is_quantized = 0, .file_type = 1,
        .round_trip_bound = 1.0f / 2048,  // nearest of an 11-bit significand (normal range)
        .to_float = ck_to_float_f16_portable, CK_X86_PATHS(f16) .from_float = ck_from_float_f16,
    },
    [2] = {  // f16 d, 16 bytes of nibbles
        .type = 2, .name = "q4_0", .block_elements = 32, .block_bytes = 18, .is_quantized = 1, .file_type = 2,
        // |d| = amax/8; the side opposite the largest value clips at 7·d, a whole step: 1/8; 8·d's rounding.
        .round_trip_bound = 1.0f / 8 + CK_HALF_ROUNDING + CK_F32_SLACK,
        .to_float = ck_to_float_q4_0_portable, CK_X86_PATHS(q4_0) .from_float = ck_from_float_q4_0,
    },
    [3] = {  // f16 d, f16 m, 16 bytes of nibbles
        .type = 3, .name = "q4_1", .block_elements = 32, .block_bytes = 20, .is_quantized = 1, .file_type = 3,
        // d = range/15 ≤ 2·amax/15, half a step; 15·d's rounding ≤ 2·amax·2^-11, m's ≤ amax·2^-11.
        .round_trip_bound = 1.0f / 15 + 3 * CK_HALF_ROUNDING + CK_F32_SLACK,
        .to_float = ck_to_float_q4_1_portable, CK_X86_PATHS(q4_1) .from_float = ck_from_float_q4_1,
    },
    [6] = {  // f16 d, u32 high bits, 16 bytes of nibbles
        .type = 6, .name = "q5_0", .block_elements = 32, .block_bytes = 22, .is_quantized = 1, .file_type = 8,
        // |d| = amax/16, clipping at 15·d on the opposite side: 1/16; 16·d's rounding.
        .round_trip_bound = 1.0f / 16 + CK_HALF_ROUNDING + CK_F32_SLACK,
        .to_float = ck_to_float_q5_0_portable, CK_X86_PATHS(q5_0) .from_float = ck_from_float_q5_0,
    },
    [7] = {  // f16 d, f16 m, u32 high bits, 16 bytes of nibbles
        .type = 7, .name = "q5_1", .block_elements = 32, .block_bytes = 24, .is_quantized = 1, .file_type = 9,
        // d = range/31 ≤ 2·amax/31, half a step; 31·d's and m's rounding as for q4_1.
        .round_trip_bound = 1.0f / 31 + 3 * CK_HALF_ROUNDING + CK_F32_SLACK,
        .to_float = ck_to_float_q5_1_portable, CK_X86_PATHS(q5_1) .from_float = ck_from_float_q5_1,
    },
    [8] = {  // f16 d, 32 int8
        .type = 8, .name = "q8_0", .block_elements = 32, .block_bytes = 34, .is_quantized = 1, .file_type = 7,
        // d = amax/127, half a step; 127·d's rounding.
        .round_trip_bound = 1.0f / 254 + CK_HALF_ROUNDING + CK_F32_SLACK,
        .to_float = ck_to_float_q8_0_portable, CK_X86_PATHS(q8_0) .from_float = ck_from_float_q8_0,
    },
    // k-quants (super-blocks of 256): read from stable-diffusion.cpp / llama.cpp files, never written.
    [12] = {  // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        .type = 12, .name = "q4_k", .block_elements = 256, .block_bytes = 144, .is_quantized = 1,
        .file_type = 15,  // LLAMA_FTYPE_MOSTLY_Q4_K_M
        .to_float = ck_to_float_q4_k,
    },
    [13] = {  // f16 d, f16 dmin, 12 bytes of scales/mins, 32 bytes of high bits, 128 of nibbles
        .type = 13, .name = "q5_k", .block_elements = 256, .block_bytes = 176, .is_quantized = 1,
        .file_type = 17,  // LLAMA_FTYPE_MOSTLY_Q5_K_M
        .to_float = ck_to_float_q5_k,
    },
    [14] = {  // 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, f16 d
        .type = 14, .name = "q6_k", .block_elements = 256, .block_bytes = 210, .is_quantized = 1, .file_type = 18,
        .to_float = ck_to_float_q6_k,
    },
    [30] = {
        .type = 30, .name = "bf16", .block_elements = 1, .block_bytes = 2, .is_quantized = 0, .file_type = 32,
        .round_trip_bound = 1.0f / 256,  // nearest of an 8-bit significand
        .to_float = ck_to_float_bf16_portable, CK_X86_PATHS(bf16) .from_float = ck_from_float_bf16,
    },
};

const ck_type_traits *ck_type_traits_of(uint32_t type) {
    if (type >= CK_TYPE_ID_LIMIT || ck_types[type].block_elements == 0) return NULL;
    return &ck_types[type];
}

int ck_quantize(uint32_t type, const float *src, int64_t count, void *dst) {
    const ck_type_traits *t = ck_type_traits_of(type);
    if (t == NULL || t->from_float == NULL || count < 0 || count % t->block_elements != 0) return -1;
    if (count > 0) t->from_float(src, count, dst);
    return 0;
}
