// CKernels: small C kernels TiledKernels calls where Swift cannot reach the instructions it needs
// (AVX-512 conversions of ggml weight blocks), each with a runtime CPU check and a portable fallback.
#ifndef CKERNELS_H
#define CKERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Decodes `count` elements (a multiple of the type's block size) of ggml type `type` (0 f32, 1 f16,
/// 2 q4_0, 3 q4_1, 6 q5_0, 7 q5_1, 8 q8_0, 30 bf16) stored at `src` into `dst`, with exactly the values of
/// ggml's dequantize_row_* (products and sums rounded separately, never fused). Returns 0, or -1 for an
/// unknown type (nothing written).
int ck_dequantize(uint32_t type, const void *src, int64_t count, float *dst);

/// Which code path ck_dequantize takes on this CPU: 2 AVX-512, 1 AVX2+F16C, 0 portable C.
int ck_dequantize_level(void);

/// Forces a path (for tests): -1 restores automatic choice; a level the CPU lacks is ignored.
void ck_force_dequantize_level(int level);

/// Serves allocations of `threshold` bytes or more with their own mappings (returned to the kernel on
/// free) and trims the heap above it: glibc's mallopt(M_MMAP_THRESHOLD / M_TRIM_THRESHOLD).
/// Returns 0 on success.
int ck_set_malloc_mmap_threshold(int threshold);

#ifdef __cplusplus
}
#endif

#endif
