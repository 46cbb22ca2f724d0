// CKernels: the table of weight storage types (ggml's block formats, with their encoders and decoders) that
// MMapWeights and the kernels share, and small C kernels TiledKernels calls where Swift cannot reach the
// instructions it needs (AVX-512 conversions of ggml weight blocks), each with a runtime CPU check and a portable
// fallback.
#ifndef CKERNELS_H
#define CKERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Decodes `count` elements of a row of a type's blocks into F32 (`count` a multiple of the block elements).
typedef void (*ck_to_float_fn)(const void *src, int64_t count, float *dst);
/// Encodes `count` F32 values (a multiple of the block elements) into the type's blocks.
typedef void (*ck_from_float_fn)(const float *src, int64_t count, void *dst);

/// One past the largest ggml type id the table has a row for.
#define CK_TYPE_ID_LIMIT 31

/// One weight storage type (TypeTraits.c): the one description Swift's TensorType and the dispatchers read.
typedef struct ck_type_traits {
    /// ggml's type id (GGML_TYPE_*), as GGUF files store it.
    uint32_t type;
    /// The lower-case name users type and ggml prints (q8_0, f16 …).
    const char *name;
    /// Elements per block (1 for the float types) and the bytes that block takes.
    int32_t block_elements;
    int32_t block_bytes;
    /// 1 for the block quantizations (values share scales), 0 for the float types.
    int32_t is_quantized;
    /// llama.cpp's LLAMA_FTYPE for a file whose main type is this one (general.file_type).
    uint32_t file_type;
    /// Largest |x − to_float(from_float(x))| over a block, as a fraction of the block's largest |x| (for values
    /// and scales in F16's normal range); meaningful only when from_float is set.
    float round_trip_bound;
    /// The portable decoder (the reference every path equals bit for bit), and the AVX2 + F16C and AVX-512 paths
    /// (NULL: the next path down).
    ck_to_float_fn to_float;
    ck_to_float_fn to_float_avx2;
    ck_to_float_fn to_float_avx512;
    /// The encoder, ggml's quantize_row_*_ref; NULL for the types sdd only reads (the k-quants).
    ck_from_float_fn from_float;
} ck_type_traits;

/// The table's row for ggml type id `type`, or NULL when sdd does not know the type.
const ck_type_traits *ck_type_traits_of(uint32_t type);

/// Decodes `count` elements (a multiple of the type's block size) of ggml type `type` stored at `src` into `dst`
/// through the table's row, on the fastest path this CPU has, with exactly the values of ggml's
/// dequantize_row_* (products and sums rounded separately, never fused). Returns 0, or -1 for an unknown
/// type (nothing written).
int ck_dequantize(uint32_t type, const void *src, int64_t count, float *dst);

/// Encodes `count` F32 values (a multiple of the type's block size) at `src` into ggml type `type` at `dst` (the
/// type's block bytes per block) with the row's from_float. Returns 0, or -1 (nothing written) for an unknown or
/// read-only type or a count that is not whole blocks.
int ck_quantize(uint32_t type, const float *src, int64_t count, void *dst);

/// Which code path ck_dequantize takes on this CPU: 2 AVX-512, 1 AVX2+F16C, 0 portable C.
int ck_dequantize_level(void);

/// Forces a path (for tests): -1 restores automatic choice; a level the CPU lacks is ignored.
void ck_force_dequantize_level(int level);

/// The attention softmax's row pass: row[j] = exp(row[j] − shift) in place for j < n (inputs below −87
/// give e^−87); returns the sum of the new values. Vectorized per ck_dequantize_level (Softmax.c).
double ck_exp_row(float *row, int64_t n, float shift);

/// One key tile of attention's online softmax for `rows` query rows (Softmax.c). `scores` [rows, cols] (row
/// stride cols) holds the scaled scores S; on return it holds P = exp(S − m_new), with keys hidden by the causal
/// mask set to 0 (row i sees keys j ≤ query_minus_key + i when `causal` ≠ 0; query_minus_key = first query
/// index − first key index of the tile). run_max/run_sum [rows] are the running row max and sum, updated;
/// a row whose max grew has its accumulator row (acc + i·acc_stride, `width` floats) and its sum scaled by
/// exp(m_old − m_new). Rows whose running max was −inf are not rescaled (their accumulator holds only
/// zero-weighted products, or is overwritten by the next product with beta = 0). AVX-512 when
/// ck_dequantize_level() ≥ 2, else portable C (its exp through ck_exp_row).
void ck_online_softmax_tile(float *scores, int64_t rows, int64_t cols, int64_t query_minus_key, int causal,
                            float *run_max, double *run_sum, float *acc, int64_t acc_stride, int64_t width);

/// dst row i [width] = acc row i / run_sum[i], 0 where run_sum[i] is 0; acc and dst may be the same rows.
void ck_online_softmax_finish(const float *acc, int64_t acc_stride, const double *run_sum, int64_t rows,
                              int64_t width, float *dst, int64_t dst_stride);

/// torch.nn.GroupNorm for one (sample, group) (GroupNorm.c): src and dst hold `channels` rows of `spatial`
/// F32 (the group's slice of [N, C, *spatial]); gamma and beta point at the group's first channel. Mean and
/// biased variance in Double, two passes; dst = (src − mean) · (gamma[c] / sqrt(var + eps)) + beta[c], then
/// with `silu` nonzero v · sigmoid(v) (exp's argument clamped to [−87, 88]). Nothing for an empty group.
/// Vectorized per ck_dequantize_level; ck_force_dequantize_level(0) runs the portable C.
void ck_group_norm(const float *src, float *dst, int64_t channels, int64_t spatial, const float *gamma,
                   const float *beta, float eps, int silu);

/// y[i] = erf(x[i]) for i < n (Gelu.c): within 1.4 ulp on every F32, ±1 for |x| ≥ 3.92, NaN for NaN.
void ck_erf_row(const float *x, float *y, int64_t n);
/// y[i] = GELU(x[i]) = x · ½(1 + erf(x/√2)), the lower tail from erfc so a negative x keeps its relative
/// accuracy (Φ < 8e−9, below x ≈ −5.6, is 0); |error| ≤ 2·2^−24·|x|.
void ck_gelu_row(const float *x, float *y, int64_t n);
/// diffusers' GEGLU on one row: y[i] = hidden[i] · GELU(gate[i]) for i < n.
void ck_geglu_row(const float *hidden, const float *gate, float *y, int64_t n);

/// Serves allocations of `threshold` bytes or more with their own mappings (returned to the kernel on
/// free) and trims the heap above it: glibc's mallopt(M_MMAP_THRESHOLD / M_TRIM_THRESHOLD).
/// Returns 0 on success.
int ck_set_malloc_mmap_threshold(int threshold);

/// Winograd F(2×2, 3×3) weight transform U = G g Gᵀ for `rows` output channels of a [O, C, 3, 3] F32 weight
/// starting at `w` (row o at w + o·C·9): writes U[ξ][o][c] (ξ = 4a + b, 16 planes of outChannels × channels
/// floats) at u + ξ·outChannels·channels + o·channels + c; `u` already points at the first row's offset.
void ck_winograd_f23_weight(const float *w, int64_t rows, int64_t channels, int64_t outChannels, float *u);

/// Winograd F(2×2, 3×3) input transform V = Bᵀ d B of tile rows firstTileRow ..< firstTileRow + tileRows
/// (tile (ty, tx) covers input rows 2ty − 1 … 2ty + 2 and columns 2tx − 1 … 2tx + 2, zero outside the
/// [channels, height, width] image) into V[ξ][c][l · tilesWide + tx] (16 planes of channels × tileRows ·
/// tilesWide floats). `scratch`: (2·tilesWide + 2) + (2·tileRows + 2)·4·tilesWide floats.
void ck_winograd_f23_input(const float *image, int64_t channels, int64_t height, int64_t width,
                           int64_t firstTileRow, int64_t tileRows, int64_t tilesWide, float *v, float *scratch);

/// Winograd F(2×2, 3×3) output transform Y = Aᵀ m A (+ bias[o] when bias is not NULL) of the products
/// M[ξ][o][tile] (16 planes of outChannels × tileRows · tilesWide floats) into output rows
/// 2·firstTileRow ..< min(height, 2·(firstTileRow + tileRows)) of y [outChannels, height, width];
/// width ≤ 2·tilesWide. `scratch`: 4·tilesWide floats.
void ck_winograd_f23_output(const float *m, int64_t outChannels, int64_t tileRows, int64_t tilesWide,
                            const float *bias, float *y, int64_t height, int64_t width, int64_t firstTileRow,
                            float *scratch);

/// Winograd F(4×4, 3×3) (Lavin & Gray's points 0, ±1, ±2): the same three steps with 6×6 tiles of input
/// for 4×4 of output and 36 planes (ξ = 6a + b). Weight: U[ξ][o][c] as for F(2×2). Input: tile (ty, tx)
/// covers input rows 4ty − 1 … 4ty + 4 and columns 4tx − 1 … 4tx + 4; `scratch`: (4·tilesWide + 2) +
/// (4·tileRows + 2)·6·tilesWide floats. Output: rows 4·firstTileRow ..< min(height, 4·(firstTileRow +
/// tileRows)), width ≤ 4·tilesWide; `scratch`: 16·tilesWide floats.
void ck_winograd_f43_weight(const float *w, int64_t rows, int64_t channels, int64_t outChannels, float *u);
void ck_winograd_f43_input(const float *image, int64_t channels, int64_t height, int64_t width,
                           int64_t firstTileRow, int64_t tileRows, int64_t tilesWide, float *v, float *scratch);
void ck_winograd_f43_output(const float *m, int64_t outChannels, int64_t tileRows, int64_t tilesWide,
                            const float *bias, float *y, int64_t height, int64_t width, int64_t firstTileRow,
                            float *scratch);

/// Whether ck_gemm_bf16 can run here: AVX-512 with AVX512_BF16 (vdpbf16ps). 1 or 0.
int ck_gemm_bf16_available(void);

/// The BF16 GEMM kernels: none, AVX512_BF16's vdpbf16ps on zmm accumulators, AMX-BF16's tdpbf16ps on tiles.
enum { CK_BF16_NONE = 0, CK_BF16_AVX512 = 1, CK_BF16_AMX = 2 };

/// Whether the AMX kernel can run here: AMX-TILE and AMX-BF16 in CPUID, tile state enabled by the OS, and
/// the process granted tile data (Linux's arch_prctl(ARCH_REQ_XCOMP_PERM), asked once per process, on the
/// first call, thread-safely), besides AVX512_BF16 (the packing uses it). 1 or 0.
int ck_gemm_bf16_amx_available(void);

/// The kernel ck_gemm_bf16 runs (a CK_BF16_ value): AMX where available, else AVX512_BF16, else none.
/// SDD_BF16_KERNEL=avx512 (or avx512bf16) in the environment when first asked forces AVX512_BF16 (for A/B
/// timing); other values are ignored. Decided once per process.
int ck_gemm_bf16_kernel(void);

/// ck_gemm_bf16 with the named kernel (CK_BF16_AVX512 or CK_BF16_AMX); -1 when it cannot run here.
int ck_gemm_bf16_using(int kernel, int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                       int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/// C[m, n] = alpha · A[m, k] · op(B)[k, n] + beta · C, all row-major F32 in memory (A with row stride lda;
/// B stored [k, n] or, with transB, [n, k]), multiplied in BF16: A and B are rounded to BF16 (nearest even)
/// and their products summed in F32, on the kernel ck_gemm_bf16_kernel names. beta == 0 ignores C's old
/// contents. Packs into a workspace (~0.56 MB, one for both kernels) held for the call: the process keeps as
/// many as products ever ran at once (ck_gemm_bf16_workspaces), reused by whichever thread multiplies next. Returns 0, or -1 when the CPU lacks the instructions or
/// the workspace could not be allocated (nothing written).
int ck_gemm_bf16(int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/// Workspaces the BF16 products have allocated in this process: as many as ever ran at once (never freed).
int ck_gemm_bf16_workspaces(void);

/// Pair words of an m × k A packed whole for ck_gemm_amx_packed: 32-row panels (the last zero-padded), each
/// holding its 768-deep blocks one after another, 32 rows × (pairs rounded up to 16) words each. 0 for an
/// empty A. (The same on every CPU; whether AMX runs is ck_gemm_bf16_amx_available.)
int64_t ck_gemm_amx_packed_a_words(int64_t m, int64_t k);

/// Rounds rows row0 ..< row0 + rows of an m × k A to BF16 pair words (nearest even, as ck_gemm_bf16 packs)
/// into `packed` (ck_gemm_amx_packed_a_words(m, k) words, 64-byte aligned): row r's values at
/// a + (r − row0) · lda. Calls for disjoint rows may run on different threads; the call that writes row m − 1
/// also zeroes the last panel's rows past m. Returns 0, or -1 when AMX cannot run here (nothing written).
int ck_gemm_amx_pack_a_rows(int64_t m, int64_t k, int64_t row0, int64_t rows, const float *a, int64_t lda,
                            uint32_t *packed);

/// ck_gemm_bf16 on the AMX kernel with alpha 1 and A packed once beforehand (ck_gemm_amx_pack_a_rows, every
/// row written): the same words in the same order, so the same C to the bit as ck_gemm_bf16_using(CK_BF16_AMX)
/// on A, without repacking A for every call and column block. Returns 0, or -1 when AMX cannot run here or
/// the workspace could not be allocated (nothing written).
int ck_gemm_amx_packed(int transB, int64_t m, int64_t n, int64_t k, const uint32_t *packedA, const float *b,
                       int64_t ldb, float beta, float *c, int64_t ldc);

/// x rounded to BF16 as AVX512_BF16's conversions do (vcvtne2ps2bf16): nearest even, denormals to signed
/// zero, NaN to a quiet NaN. The upper 16 bits of the F32 it stands for.
uint16_t ck_bf16_round(float x);

/// What ck_gemm_bf16's AVX512_BF16 kernel computes (the AMX kernel: the same operands and products, summed
/// in 768-deep blocks in the tiles' own order), in portable scalar C on any CPU: the same operand rounding (alpha · A, then
/// B, to BF16), the same pairs along k (a last odd value paired with zero), the same order of F32 sums
/// (vdpbf16ps: the odd product, then the even one, into an accumulator per KC-deep block; blocks added to C
/// in order, beta applied with one fused multiply-add on the first). The model the tests check the
/// instruction path against, and the specification of that path on CPUs that lack it. Slow (no blocking).
void ck_gemm_bf16_model(int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/// CLIP's BPE merges as merges.txt lists them (without the "#version" line): 48894 lines "a b\n",
/// NUL-terminated (CLIPMerges.c, generated by tools/reference/embed_clip_merges.py).
const char *sdd_clip_merges(void);
/// The byte length of `sdd_clip_merges()` without its NUL.
unsigned long sdd_clip_merges_length(void);

#ifdef __cplusplus
}
#endif

#endif
