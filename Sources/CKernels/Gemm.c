// Gemm.c: a row-major GEMM that multiplies in BF16 and sums in F32 (AVX512_BF16's vdpbf16ps, or AMX-BF16's
// tile products where the CPU and OS allow them: see the AMX section below), for models
// run with BF16 products (ProductPrecision.bf16): on CPUs that have the instruction it does twice the
// multiply-adds per cycle of an F32 FMA. Operands are rounded to BF16 (nearest even) while they are packed,
// so callers pass F32 as to cblas_sgemm. Blocking after BLIS: B in NR-column panels of KC depth, A in MR-row
// panels, a 14 × 32 register tile of AVX-512 accumulators; packed blocks live in a workspace held per product.
#include "CKernels.h"
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#define CK_GEMM_X86 1
#include <immintrin.h>
#else
#define CK_GEMM_X86 0
#endif

enum {
    CK_MR = 14,   // rows of the register tile (28 accumulators + 2 B vectors + 1 broadcast of 32 zmm)
    CK_NR = 32,   // columns of the register tile: two vectors of 16 F32
    CK_KC = 384,  // depth of one packed block (even: values pair along k), 192 pair words per row
    CK_MC = 168,  // rows of A packed at once (12 register tiles, ~130 KB: L2)
    CK_NC = 512,  // columns of B packed at once (~390 KB: L2)
};


// The portable model of the instruction path (see CKernels.h), kept beside it so the two stay one design.
uint16_t ck_bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu) != 0) return (uint16_t)((u >> 16) | 0x0040u);
    if ((u & 0x7F800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float ck_bf16_value(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

void ck_gemm_bf16_model(int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            float *out = c + i * ldc + j;
            if (k <= 0) {
                *out = beta == 0 ? 0 : beta * *out;
                continue;
            }
            for (int64_t pc = 0; pc < k; pc += CK_KC) {
                const int64_t kc = k - pc < CK_KC ? k - pc : CK_KC;
                float acc = 0;
                for (int64_t p = 0; p < kc; p += 2) {
                    float x[2] = {0, 0}, y[2] = {0, 0};
                    for (int64_t q = 0; q < 2 && p + q < kc; q++) {
                        const int64_t kk = pc + p + q;
                        const float av = a[i * lda + kk], bv = transB ? b[j * ldb + kk] : b[kk * ldb + j];
                        x[q] = ck_bf16_value(ck_bf16_round(alpha != 1 ? av * alpha : av));
                        y[q] = ck_bf16_value(ck_bf16_round(bv));
                    }
                    acc += x[1] * y[1];  // BF16 × BF16 is exact in F32: one rounding per sum
                    acc += x[0] * y[0];
                }
                if (pc == 0) *out = beta == 0 ? acc : fmaf(beta, *out, acc);
                else *out = fmaf(1, *out, acc);
            }
        }
    }
}

#if CK_GEMM_X86

// Bytes of one packed A block and one packed B block, plus alignment.
static int64_t ck_gemm_bf16_workspace_bytes(void) {
    return (int64_t)sizeof(uint32_t) * (CK_KC / 2) * ((CK_MC + CK_MR) + (CK_NC + CK_NR)) + 64;
}

#define CK_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

int ck_gemm_bf16_available(void) {
    static int available = -1;
    if (available < 0) {
        __builtin_cpu_init();
        available = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
    }
    return available;
}

// Writes rows < mr of the register tile, columns where m0 / m1 (the two 16-column halves) are set:
// C = acc, beta · C + acc, or C + acc (first: the first depth block, where beta applies).
#define CK_STORE_TILE()                                                                                \
    if (first && beta == 0) {                                                                          \
        for (int i = 0; i < mr; i++) {                                                                 \
            _mm512_mask_storeu_ps(c + i * ldc, m0, acc0[i]);                                           \
            _mm512_mask_storeu_ps(c + i * ldc + 16, m1, acc1[i]);                                      \
        }                                                                                              \
    } else {                                                                                           \
        const __m512 bv = _mm512_set1_ps(first ? beta : 1);                                            \
        for (int i = 0; i < mr; i++) {                                                                 \
            float *row = c + i * ldc;                                                                  \
            _mm512_mask_storeu_ps(row, m0, _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(m0, row), acc0[i])); \
            _mm512_mask_storeu_ps(row + 16, m1,                                                        \
                                  _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(m1, row + 16), acc1[i]));  \
        }                                                                                              \
    }

// C[mr × NR] (row stride ldc, columns masked by m0 / m1) gets Σ over kp pair words of A's panel times B's
// panel (kp × NR). A's panel is interleaved (word p of row i at ap[p · MR + i]: one line per step) or, in the
// _rows variant, row after row (ap[i · kp + p]: packed with contiguous stores, 14 streams to read).
#define CK_BF16_TILE(NAME, A_WORD)                                                                     \
CK_BF16_TARGET                                                                                         \
static void NAME(int64_t kp, const uint32_t *ap, const uint32_t *bp, float *c, int64_t ldc,            \
                 int first, float beta, int mr, __mmask16 m0, __mmask16 m1) {                          \
    __m512 acc0[CK_MR], acc1[CK_MR];                                                                   \
    for (int i = 0; i < CK_MR; i++) { acc0[i] = _mm512_setzero_ps(); acc1[i] = _mm512_setzero_ps(); } \
    for (int64_t p = 0; p < kp; p++) {                                                                 \
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp), b1 = (__m512bh)_mm512_loadu_si512(bp + 16); \
        for (int i = 0; i < CK_MR; i++) {                                                              \
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)(A_WORD));                             \
            acc0[i] = _mm512_dpbf16_ps(acc0[i], a, b0);                                                \
            acc1[i] = _mm512_dpbf16_ps(acc1[i], a, b1);                                                \
        }                                                                                              \
        bp += CK_NR;                                                                                   \
    }                                                                                                  \
    CK_STORE_TILE()                                                                                    \
}

CK_BF16_TILE(ck_bf16_tile, ap[p * CK_MR + i])
CK_BF16_TILE(ck_bf16_tile_rows, ap[i * kp + p])

// Up to 32 values of a row contiguous along k (`left` of them remain; zeros past that), times alpha, as 16
// BF16 pair words: value 2q in the low half of word q, value 2q + 1 in the high half.
CK_BF16_TARGET
static inline __m512i ck_row_pairs(const float *row, int64_t left, float alpha) {
    __m512 lo, hi;
    if (left >= 32) {
        lo = _mm512_loadu_ps(row);
        hi = _mm512_loadu_ps(row + 16);
    } else {
        const __mmask16 ml = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
        const __mmask16 mh = left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
        lo = _mm512_maskz_loadu_ps(ml, row);
        hi = _mm512_maskz_loadu_ps(mh, row + 16);
    }
    if (alpha != 1) {
        const __m512 av = _mm512_set1_ps(alpha);
        lo = _mm512_mul_ps(lo, av);
        hi = _mm512_mul_ps(hi, av);
    }
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// `rows` (≤ width) rows contiguous along k, kc deep, into one panel: unit p of row i at panel[p · width + i]
// (BF16: pair words; F32: values times alpha); rows past `rows` are zero.
CK_BF16_TARGET
static void ck_pack_rows_bf16(int64_t rows, int64_t kc, const float *x, int64_t ldx, float alpha,
                              uint32_t *panel, int64_t width) {
    const int64_t kp = (kc + 1) / 2;
    uint32_t words[16];
    for (int64_t i = 0; i < width; i++) {
        if (i >= rows) {
            for (int64_t p = 0; p < kp; p++) panel[p * width + i] = 0;
            continue;
        }
        const float *row = x + i * ldx;
        for (int64_t p0 = 0; p0 < kp; p0 += 16) {
            _mm512_storeu_si512(words, ck_row_pairs(row + 2 * p0, kc - 2 * p0, alpha));
            const int64_t np = kp - p0 < 16 ? kp - p0 : 16;
            for (int64_t q = 0; q < np; q++) panel[(p0 + q) * width + i] = words[q];
        }
    }
}

// `rows` (≤ MR) rows contiguous along k, kc deep, into one row-after-row panel: pair word p of row i at
// panel[i · kp + p]; rows past `rows` are zero.
CK_BF16_TARGET
static void ck_pack_rows_bf16_contiguous(int64_t rows, int64_t kc, const float *x, int64_t ldx, float alpha,
                                         uint32_t *panel) {
    const int64_t kp = (kc + 1) / 2;
    for (int64_t i = 0; i < CK_MR; i++) {
        uint32_t *dst = panel + i * kp;
        if (i >= rows) {
            memset(dst, 0, (size_t)kp * sizeof(uint32_t));
            continue;
        }
        const float *row = x + i * ldx;
        for (int64_t p0 = 0; p0 < kp; p0 += 16) {
            const __m512i words = ck_row_pairs(row + 2 * p0, kc - 2 * p0, alpha);
            const int64_t np = kp - p0 < 16 ? kp - p0 : 16;
            _mm512_mask_storeu_epi32(dst + p0, (__mmask16)((1u << np) - 1), words);
        }
    }
}

// nr (≤ NR) columns of a row-major [kc, ·] block of B into one panel: unit p of column j at
// panel[p · NR + j]; columns past nr (and in BF16 a last odd row's partner) are zero.
CK_BF16_TARGET
static void ck_pack_columns_bf16(int64_t nr, int64_t kc, const float *b, int64_t ldb, uint32_t *panel) {
    const int64_t kp = (kc + 1) / 2;
    const __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    const __mmask16 m1 = nr <= 16 ? 0 : nr >= 32 ? 0xFFFF : (__mmask16)((1u << (nr - 16)) - 1);
    for (int64_t p = 0; p < kp; p++) {
        const float *r0 = b + 2 * p * ldb, *r1 = r0 + ldb;
        const int second = 2 * p + 1 < kc;
        for (int h = 0; h < 2; h++) {
            const __mmask16 mask = h ? m1 : m0;
            const __m512 x0 = _mm512_maskz_loadu_ps(mask, r0 + 16 * h);
            const __m512 x1 = second ? _mm512_maskz_loadu_ps(mask, r1 + 16 * h) : _mm512_setzero_ps();
            const __m512i w0 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x0));
            const __m512i w1 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x1));
            _mm512_storeu_si512(panel + p * CK_NR + 16 * h, _mm512_or_si512(w0, _mm512_slli_epi32(w1, 16)));
        }
    }
}

// The blocked product: B packed per (NC columns, KC depth) block, A per MC rows of it. A product with few
// columns uses each packed A panel for few B panels, so packing A is a large part of it: there A is packed
// row after row (contiguous stores), which measured 139 → 181 GFLOP/s at 227 × 64 × 512 and 160 → 186 at
// 512 × 120 × 512 (one core), against 189 → 172 at 4096 × 320 × 320 where A is reused across 10 panels.
CK_BF16_TARGET
static void ck_gemm_blocked(int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                            const float *b, int64_t ldb, float beta, float *c, int64_t ldc, void *workspace) {
    uint32_t *ap = (uint32_t *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
    uint32_t *bp = ap + (CK_KC / 2) * (CK_MC + CK_MR);
    const int rowPanels = n <= 4 * CK_NR;
    for (int64_t jc = 0; jc < n; jc += CK_NC) {
        const int64_t nc = n - jc < CK_NC ? n - jc : CK_NC;
        for (int64_t pc = 0; pc < k; pc += CK_KC) {
            const int64_t kc = k - pc < CK_KC ? k - pc : CK_KC, kp = (kc + 1) / 2;
            const int first = pc == 0;
            for (int64_t jr = 0; jr < nc; jr += CK_NR) {
                const int64_t nr = nc - jr < CK_NR ? nc - jr : CK_NR;
                uint32_t *panel = bp + jr * kp;
                if (transB) ck_pack_rows_bf16(nr, kc, b + (jc + jr) * ldb + pc, ldb, 1, panel, CK_NR);
                else ck_pack_columns_bf16(nr, kc, b + pc * ldb + jc + jr, ldb, panel);
            }
            for (int64_t ic = 0; ic < m; ic += CK_MC) {
                const int64_t mc = m - ic < CK_MC ? m - ic : CK_MC;
                for (int64_t ir = 0; ir < mc; ir += CK_MR) {
                    const int64_t mr = mc - ir < CK_MR ? mc - ir : CK_MR;
                    if (rowPanels) ck_pack_rows_bf16_contiguous(mr, kc, a + (ic + ir) * lda + pc, lda, alpha, ap + ir * kp);
                    else ck_pack_rows_bf16(mr, kc, a + (ic + ir) * lda + pc, lda, alpha, ap + ir * kp, CK_MR);
                }
                for (int64_t jr = 0; jr < nc; jr += CK_NR) {
                    const int64_t nr = nc - jr < CK_NR ? nc - jr : CK_NR;
                    const __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
                    const __mmask16 m1 = nr <= 16 ? 0 : nr >= 32 ? 0xFFFF : (__mmask16)((1u << (nr - 16)) - 1);
                    for (int64_t ir = 0; ir < mc; ir += CK_MR) {
                        const int mr = (int)(mc - ir < CK_MR ? mc - ir : CK_MR);
                        (rowPanels ? ck_bf16_tile_rows : ck_bf16_tile)(kp, ap + ir * kp, bp + jr * kp,
                                                                       c + (ic + ir) * ldc + jc + jr, ldc, first,
                                                                       beta, mr, m0, m1);
                    }
                }
            }
        }
    }
}

static int ck_gemm_zero_depth(int64_t m, int64_t n, int64_t k, float beta, float *c, int64_t ldc) {
    if (m <= 0 || n <= 0) return 1;
    if (k > 0) return 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
    return 1;
}

// ---- AMX-BF16 (Sapphire Rapids and later): tile products, 16 × 16 F32 accumulators in tile registers ----
// Eight tiles of 16 rows × 64 bytes: C in tiles 0–3 (a 32 × 32 block), A in 4–5 (16 rows × 32 BF16 each),
// B in 6–7 (16 pair rows × 16 columns of BF16 pairs each). TDPBF16PS sums the products of one pair word of
// A and one of B into an F32 accumulator, like vdpbf16ps but 16 × 16 × 32 at a time; packing is the same
// BF16 pair words as above, so B's NR = 32-column panels load as two tiles with a 128-byte stride and A is
// packed row after row. Depth is zero-padded to whole tiles (16 pair words), rows and columns to 32 (A's
// rows past m are zero; C is written through masks). The tile configuration is per thread and the
// kernel's permission to use tile data (arch_prctl) per process: ck_gemm_bf16 asks once (pthread_once),
// loads the configuration on every call and releases the tiles before it returns, so no thread keeps
// tile state between products and nothing else sharing the thread (OpenBLAS's AMX kernels) is disturbed.
enum {
    // Measured one core, 4096 × 320 × 320 and 1024 × 640 × 640 (noisy: a shared VM): KC 768 over 384 and 1536,
    // MC 64 over 32 and 128, NC 256 over 128 and 512 — none by more than the noise on every shape.
    CK_AMX_KC = 768,  // depth of one packed block (a multiple of 32: whole tiles), 384 pair words
    CK_AMX_MC = 64,   // rows of A packed at once: two 32-row panels (2 × 96 KB)
    CK_AMX_NC = 256,  // columns of B packed at once: eight 32-column panels (768 KB: L2)
};

#include <sys/syscall.h>
#include <unistd.h>

#define CK_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,fma")))

// CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE; the OS enables the tile state in XCR0 bits 17–18.
// Linux then grants tile data per process on request (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, 18).
static int ck_amx_permitted = 0;
static pthread_once_t ck_amx_once = PTHREAD_ONCE_INIT;

static void ck_amx_request(void) {
    unsigned eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    if (!((edx >> 22) & 1) || !((edx >> 24) & 1)) return;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(1), "c"(0));
    if (!((ecx >> 27) & 1)) return;  // OSXSAVE: xgetbv is allowed
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    if ((xlo & (3u << 17)) != (3u << 17)) return;
#if defined(SYS_arch_prctl)
    const long ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return;
    unsigned long granted = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &granted) != 0) return;
    ck_amx_permitted = ((granted >> XFEATURE_XTILEDATA) & 1) && ck_gemm_bf16_available();
#endif
}

int ck_gemm_bf16_amx_available(void) {
    pthread_once(&ck_amx_once, ck_amx_request);
    return ck_amx_permitted;
}

// Palette 1: rows and bytes per row of each of the eight tiles used; all 16 × 64.
typedef struct {
    uint8_t palette, startRow, reserved[14];
    uint16_t bytesPerRow[16];
    uint8_t rows[16];
} ck_amx_config;

CK_AMX_TARGET
static void ck_amx_load_config(void) {
    ck_amx_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = 16;
        config.bytesPerRow[t] = 64;
    }
    _tile_loadconfig(&config);
}

// `rows` (≤ 32) rows contiguous along k, kc deep, into one panel of 32 rows × kpad pair words (kpad a multiple
// of 16): word p of row i at panel[i · kpad + p]; pairs past kc and rows past `rows` are zero.
CK_AMX_TARGET
static void ck_amx_pack_rows(int64_t rows, int64_t kc, const float *x, int64_t ldx, float alpha, uint32_t *panel,
                             int64_t kpad) {
    for (int64_t i = 0; i < 32; i++) {
        uint32_t *dst = panel + i * kpad;
        if (i >= rows) {
            memset(dst, 0, (size_t)kpad * sizeof(uint32_t));
            continue;
        }
        const float *row = x + i * ldx;
        for (int64_t p0 = 0; p0 < kpad; p0 += 16) {
            const __m512i words = 2 * p0 < kc ? ck_row_pairs(row + 2 * p0, kc - 2 * p0, alpha) : _mm512_setzero_si512();
            _mm512_storeu_si512(dst + p0, words);
        }
    }
}

// r[0..15] (16 rows of 16 words) transposed into out[0..15]: out[c] word i = r[i] word c. Unpacking 32- then
// 64-bit halves leaves r[4i + c]'s 128-bit lane L holding rows 4i..4i+3 of column 4L + c; two rounds of
// 128-bit lane shuffles gather the four lanes of each column.
CK_AMX_TARGET
static inline void ck_transpose_16x16(const __m512i r[16], __m512i out[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        const __m512i x0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
        const __m512i y0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
        const __m512i y1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
        out[c] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        out[4 + c] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
        out[8 + c] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        out[12 + c] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
    }
}

// `rows` (≤ 32) rows contiguous along k (B stored [n, k]), kc deep, into one NR = 32-column panel of kpad pair
// rows: word p of row j at panel[p · 32 + j]; pairs past kc and rows past `rows` are zero. Converts 16 rows ×
// 16 pair words at a time and transposes them in registers: ck_pack_rows_bf16's word-by-word stores made
// packing a 512 × 40 key tile cost about as much as its product with AMX.
CK_AMX_TARGET
static void ck_amx_pack_rows_transposed(int64_t rows, int64_t kc, const float *x, int64_t ldx, uint32_t *panel,
                                        int64_t kpad) {
    for (int h = 0; h < 2; h++) {
        for (int64_t p0 = 0; p0 < kpad; p0 += 16) {
            __m512i r[16], out[16];
            for (int i = 0; i < 16; i++) {
                const int64_t j = 16 * h + i;
                r[i] = j < rows && 2 * p0 < kc ? ck_row_pairs(x + j * ldx + 2 * p0, kc - 2 * p0, 1)
                                               : _mm512_setzero_si512();
            }
            ck_transpose_16x16(r, out);
            for (int q = 0; q < 16; q++) _mm512_storeu_si512(panel + (p0 + q) * CK_NR + 16 * h, out[q]);
        }
    }
}

// C[mr × nr] (mr, nr ≤ 32) gets the sum over kpad pair words of A's panel (32 × kpad, row after row) times B's
// panel (kpad × 32): C = sum on the first depth block with beta == 0, beta · C + sum on the first, C + sum after.
// Only the tiles that hold real rows run (mr ≤ 16: the upper two).
CK_AMX_TARGET
static void ck_amx_block(int64_t kpad, const uint32_t *ap, const uint32_t *bp, float *c, int64_t ldc, int first,
                         float beta, int mr, int nr) {
    float sums[32 * 32] __attribute__((aligned(64)));
    const size_t aStride = (size_t)kpad * sizeof(uint32_t), bStride = 32 * sizeof(uint32_t);
    _tile_zero(0);
    _tile_zero(1);
    if (mr > 16) {
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t p = 0; p < kpad; p += 16) {
            _tile_loadd(4, ap + p, aStride);
            _tile_loadd(6, bp + p * 32, bStride);
            _tile_loadd(7, bp + p * 32 + 16, bStride);
            _tile_loadd(5, ap + 16 * kpad + p, aStride);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(2, sums + 16 * 32, 128);
        _tile_stored(3, sums + 16 * 32 + 16, 128);
    } else {
        for (int64_t p = 0; p < kpad; p += 16) {
            _tile_loadd(4, ap + p, aStride);
            _tile_loadd(6, bp + p * 32, bStride);
            _tile_loadd(7, bp + p * 32 + 16, bStride);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
        }
    }
    _tile_stored(0, sums, 128);
    _tile_stored(1, sums + 16, 128);
    const __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    const __mmask16 m1 = nr <= 16 ? 0 : nr >= 32 ? 0xFFFF : (__mmask16)((1u << (nr - 16)) - 1);
    const int scaled = !(first && beta == 0);
    const __m512 bv = _mm512_set1_ps(first ? beta : 1);
    for (int i = 0; i < mr; i++) {
        float *row = c + i * ldc;
        __m512 s0 = _mm512_load_ps(sums + 32 * i), s1 = _mm512_load_ps(sums + 32 * i + 16);
        if (scaled) {
            s0 = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(m0, row), s0);
            s1 = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(m1, row + 16), s1);
        }
        _mm512_mask_storeu_ps(row, m0, s0);
        _mm512_mask_storeu_ps(row + 16, m1, s1);
    }
}

// Pair words per row of a kc-deep block packed for AMX: kc's pairs rounded up to whole tiles (16 pair words).
static inline int64_t ck_amx_kpad(int64_t kc) { return ((kc + 1) / 2 + 15) / 16 * 16; }

// Pair words of one 32-row panel of A packed for the whole depth k: its KC-deep blocks one after another, each
// 32 rows × kpad (kp rounded up to whole tiles). Every block but the last is KC / 2 pair words deep.
static int64_t ck_amx_panel_words(int64_t k) {
    const int64_t full = k / CK_AMX_KC, rest = k - full * CK_AMX_KC;
    return 32 * (full * (CK_AMX_KC / 2) + ck_amx_kpad(rest));
}

int64_t ck_gemm_amx_packed_a_words(int64_t m, int64_t k) {
    if (m <= 0 || k <= 0) return 0;
    return (m + 31) / 32 * ck_amx_panel_words(k);
}

CK_AMX_TARGET
static void ck_amx_pack_a_rows(int64_t m, int64_t k, int64_t row0, int64_t rows, const float *a, int64_t lda,
                               uint32_t *packed) {
    const int64_t panelWords = ck_amx_panel_words(k);
    for (int64_t r = row0; r < row0 + rows; r++) {
        const float *row = a + (r - row0) * lda;
        uint32_t *panel = packed + r / 32 * panelWords;
        for (int64_t pc = 0; pc < k; pc += CK_AMX_KC) {
            const int64_t kc = k - pc < CK_AMX_KC ? k - pc : CK_AMX_KC;
            const int64_t kpad = ck_amx_kpad(kc);
            uint32_t *dst = panel + 32 * (pc / 2) + (r % 32) * kpad;
            for (int64_t p0 = 0; p0 < kpad; p0 += 16) {
                const __m512i words = 2 * p0 < kc ? ck_row_pairs(row + pc + 2 * p0, kc - 2 * p0, 1)
                                                  : _mm512_setzero_si512();
                _mm512_storeu_si512(dst + p0, words);
            }
        }
    }
    // The last panel's rows past m are zero once its last real row is written.
    if (row0 + rows == m && m % 32 != 0) {
        uint32_t *panel = packed + m / 32 * panelWords;
        for (int64_t pc = 0; pc < k; pc += CK_AMX_KC) {
            const int64_t kc = k - pc < CK_AMX_KC ? k - pc : CK_AMX_KC;
            const int64_t kpad = ck_amx_kpad(kc);
            memset(panel + 32 * (pc / 2) + (m % 32) * kpad, 0, (size_t)((32 - m % 32) * kpad) * sizeof(uint32_t));
        }
    }
}

// The blocked product as ck_gemm_blocked, with 32 × 32 tile blocks: B packed per (NC columns, KC depth) block
// into NR = 32-column panels zero-padded to kpad pair rows, A per MC rows into 32-row panels, or A already
// packed whole (packedA, as ck_gemm_amx_pack_a_rows lays it out: the same words, so the same sums).
CK_AMX_TARGET
static void ck_gemm_amx(int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                        const uint32_t *packedA, const float *b, int64_t ldb, float beta, float *c, int64_t ldc,
                        void *workspace) {
    const int64_t panelWords = ck_amx_panel_words(k);
    uint32_t *ap = (uint32_t *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
    uint32_t *bp = ap + (CK_AMX_KC / 2) * CK_AMX_MC;
    ck_amx_load_config();
    for (int64_t jc = 0; jc < n; jc += CK_AMX_NC) {
        const int64_t nc = n - jc < CK_AMX_NC ? n - jc : CK_AMX_NC;
        for (int64_t pc = 0; pc < k; pc += CK_AMX_KC) {
            const int64_t kc = k - pc < CK_AMX_KC ? k - pc : CK_AMX_KC;
            const int64_t kp = (kc + 1) / 2, kpad = ck_amx_kpad(kc);
            const int first = pc == 0;
            for (int64_t jr = 0; jr < nc; jr += CK_NR) {
                const int64_t nr = nc - jr < CK_NR ? nc - jr : CK_NR;
                uint32_t *panel = bp + jr * kpad;
                if (transB) {
                    ck_amx_pack_rows_transposed(nr, kc, b + (jc + jr) * ldb + pc, ldb, panel, kpad);
                } else {
                    ck_pack_columns_bf16(nr, kc, b + pc * ldb + jc + jr, ldb, panel);
                    memset(panel + kp * CK_NR, 0, (size_t)((kpad - kp) * CK_NR) * sizeof(uint32_t));
                }
            }
            for (int64_t ic = 0; ic < m; ic += CK_AMX_MC) {
                const int64_t mc = m - ic < CK_AMX_MC ? m - ic : CK_AMX_MC;
                const uint32_t *panels[CK_AMX_MC / 32];
                for (int64_t ir = 0; ir < mc; ir += 32) {
                    const int64_t mr = mc - ir < 32 ? mc - ir : 32;
                    if (packedA) {
                        panels[ir / 32] = packedA + (ic + ir) / 32 * panelWords + 32 * (pc / 2);
                    } else {
                        ck_amx_pack_rows(mr, kc, a + (ic + ir) * lda + pc, lda, alpha, ap + ir * kpad, kpad);
                        panels[ir / 32] = ap + ir * kpad;
                    }
                }
                for (int64_t jr = 0; jr < nc; jr += CK_NR) {
                    const int nr = (int)(nc - jr < CK_NR ? nc - jr : CK_NR);
                    for (int64_t ir = 0; ir < mc; ir += 32) {
                        const int mr = (int)(mc - ir < 32 ? mc - ir : 32);
                        ck_amx_block(kpad, panels[ir / 32], bp + jr * kpad, c + (ic + ir) * ldc + jc + jr, ldc,
                                     first, beta, mr, nr);
                    }
                }
            }
        }
    }
    _tile_release();
}

static int64_t ck_gemm_amx_workspace_bytes(void) {
    return (int64_t)sizeof(uint32_t) * (CK_AMX_KC / 2) * (CK_AMX_MC + CK_AMX_NC) + 64;
}

// Packing workspaces, one for both kernels, held per product rather than per thread: a product takes the lowest
// free slot (allocating it the first time) and gives it back when it returns, so the process holds as many as
// products ever ran at once — at most one per thread multiplying at the same moment — not one per thread that
// ever multiplied. Per-thread workspaces, freed only when a thread exits, made the resident set depend on how
// many of GCD's worker threads (which come and go) had run a product.
enum { CK_WORKSPACE_SLOTS = 64 };
static void *ck_workspaces[CK_WORKSPACE_SLOTS];
static atomic_int ck_workspace_busy[CK_WORKSPACE_SLOTS];
static atomic_int ck_workspaces_made;

static int64_t ck_workspace_bytes(void) {
    const int64_t bf16 = ck_gemm_bf16_workspace_bytes(), amx = ck_gemm_amx_workspace_bytes();
    return bf16 > amx ? bf16 : amx;
}

// A workspace and its slot (-1: every slot busy, a workspace of its own to free). NULL when malloc fails.
static void *ck_workspace_take(int *slot) {
    for (int i = 0; i < CK_WORKSPACE_SLOTS; i++) {
        int expected = 0;
        if (atomic_load_explicit(&ck_workspace_busy[i], memory_order_relaxed) != 0
            || !atomic_compare_exchange_strong_explicit(&ck_workspace_busy[i], &expected, 1, memory_order_acquire,
                                                        memory_order_relaxed)) continue;
        if (!ck_workspaces[i]) {
            ck_workspaces[i] = malloc((size_t)ck_workspace_bytes());
            if (!ck_workspaces[i]) {
                atomic_store_explicit(&ck_workspace_busy[i], 0, memory_order_release);
                return NULL;
            }
            atomic_fetch_add_explicit(&ck_workspaces_made, 1, memory_order_relaxed);
        }
        *slot = i;
        return ck_workspaces[i];
    }
    *slot = -1;
    return malloc((size_t)ck_workspace_bytes());
}

static void ck_workspace_give(int slot, void *workspace) {
    if (slot < 0) free(workspace);
    else atomic_store_explicit(&ck_workspace_busy[slot], 0, memory_order_release);
}

int ck_gemm_bf16_workspaces(void) { return atomic_load_explicit(&ck_workspaces_made, memory_order_relaxed); }

// SDD_BF16_KERNEL=avx512 (or avx512bf16) or amx forces a kernel where the CPU runs it; unset, "auto" or
// anything else: AMX where it runs, else AVX512_BF16. Read once.
static int ck_bf16_kernel_chosen = -1;
static pthread_once_t ck_bf16_kernel_once = PTHREAD_ONCE_INIT;

static void ck_bf16_kernel_choose(void) {
    const char *v = getenv("SDD_BF16_KERNEL");
    const int amx = ck_gemm_bf16_amx_available(), avx = ck_gemm_bf16_available();
    if (v && (strcmp(v, "avx512") == 0 || strcmp(v, "avx512bf16") == 0)) ck_bf16_kernel_chosen = avx ? CK_BF16_AVX512 : CK_BF16_NONE;
    else ck_bf16_kernel_chosen = amx ? CK_BF16_AMX : avx ? CK_BF16_AVX512 : CK_BF16_NONE;
}

int ck_gemm_bf16_kernel(void) {
    pthread_once(&ck_bf16_kernel_once, ck_bf16_kernel_choose);
    return ck_bf16_kernel_chosen;
}

int ck_gemm_bf16_using(int kernel, int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                       int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    if (kernel == CK_BF16_AMX ? !ck_gemm_bf16_amx_available()
        : kernel == CK_BF16_AVX512 ? !ck_gemm_bf16_available() : 1) return -1;
    if (ck_gemm_zero_depth(m, n, k, beta, c, ldc)) return 0;
    int slot;
    void *workspace = ck_workspace_take(&slot);
    if (!workspace) return -1;
    if (kernel == CK_BF16_AMX) ck_gemm_amx(transB, m, n, k, alpha, a, lda, NULL, b, ldb, beta, c, ldc, workspace);
    else ck_gemm_blocked(transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, workspace);
    ck_workspace_give(slot, workspace);
    return 0;
}

int ck_gemm_bf16(int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    return ck_gemm_bf16_using(ck_gemm_bf16_kernel(), transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

int ck_gemm_amx_pack_a_rows(int64_t m, int64_t k, int64_t row0, int64_t rows, const float *a, int64_t lda,
                            uint32_t *packed) {
    if (!ck_gemm_bf16_amx_available()) return -1;
    if (m <= 0 || k <= 0 || row0 < 0 || rows <= 0 || row0 + rows > m) return 0;
    ck_amx_pack_a_rows(m, k, row0, rows, a, lda, packed);
    return 0;
}

int ck_gemm_amx_packed(int transB, int64_t m, int64_t n, int64_t k, const uint32_t *packedA, const float *b,
                       int64_t ldb, float beta, float *c, int64_t ldc) {
    if (!ck_gemm_bf16_amx_available()) return -1;
    if (ck_gemm_zero_depth(m, n, k, beta, c, ldc)) return 0;
    int slot;
    void *workspace = ck_workspace_take(&slot);
    if (!workspace) return -1;
    ck_gemm_amx(transB, m, n, k, 1, NULL, 0, packedA, b, ldb, beta, c, ldc, workspace);
    ck_workspace_give(slot, workspace);
    return 0;
}

#else

int ck_gemm_bf16_workspaces(void) { return 0; }

int64_t ck_gemm_amx_packed_a_words(int64_t m, int64_t k) { (void)m; (void)k; return 0; }

int ck_gemm_amx_pack_a_rows(int64_t m, int64_t k, int64_t row0, int64_t rows, const float *a, int64_t lda,
                            uint32_t *packed) {
    (void)m; (void)k; (void)row0; (void)rows; (void)a; (void)lda; (void)packed;
    return -1;
}

int ck_gemm_amx_packed(int transB, int64_t m, int64_t n, int64_t k, const uint32_t *packedA, const float *b,
                       int64_t ldb, float beta, float *c, int64_t ldc) {
    (void)transB; (void)m; (void)n; (void)k; (void)packedA; (void)b; (void)ldb; (void)beta; (void)c; (void)ldc;
    return -1;
}

int ck_gemm_bf16_available(void) { return 0; }
int ck_gemm_bf16_amx_available(void) { return 0; }
int ck_gemm_bf16_kernel(void) { return CK_BF16_NONE; }

int ck_gemm_bf16_using(int kernel, int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                       int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    (void)kernel;
    return ck_gemm_bf16(transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

int ck_gemm_bf16(int transB, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    (void)transB; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)lda; (void)b; (void)ldb;
    (void)beta; (void)c; (void)ldc;
    return -1;
}

#endif
