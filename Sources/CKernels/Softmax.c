// Softmax.c: the attention softmax's row pass — row[j] = exp(row[j] − shift) in place, returning the row's
// sum — compiled for AVX-512, AVX2+FMA and baseline x86-64 and chosen at run time with the dequantizers'
// level (ck_dequantize_level), so one exp per attention score runs 16 lanes wide where the CPU allows.
// exp is Cephes' expf range reduction and polynomial (about 1 ulp); inputs below −87 give e^−87.
// Also attention's whole per-tile online-softmax step (row max, exp, row sum, rescale of the running sum and
// output rows) and its final normalization, AVX-512 or portable C, so no per-score work is left in Swift.
#include "CKernels.h"
#include "ElementwiseMath.h"
#include <math.h>
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

// ---- One key tile of the online softmax (flash attention's per-tile bookkeeping) ----------------------------

/// e^x for one float, x clamped at −87 (rescale factors and the portable path): ElementwiseMath.h's Cephes expf.
static inline float ck_exp_scalar(float x) { return ck_exp_cephes(x < -87.0f ? -87.0f : x); }

/// Keys row i may see: all `cols`, or under the causal mask those with key index ≤ query index.
static inline int64_t ck_visible_keys(int64_t i, int64_t cols, int64_t query_minus_key, int causal) {
    if (!causal) return cols;
    int64_t v = query_minus_key + i + 1;
    return v < 0 ? 0 : (v > cols ? cols : v);
}

/// Folds a row's new maximum into the running state: scales the accumulator row and the running sum by
/// exp(old − new) when the maximum grew. A row whose running max was −inf has seen only zero weights, so
/// its accumulator is zero or about to be overwritten (first tile, beta = 0) and is left alone.
static inline void ck_rescale_row(float old_max, float new_max, double *run_sum, float *acc, int64_t width) {
    if (new_max == old_max || old_max == -INFINITY) return;
    const float c = ck_exp_scalar(old_max - new_max);
    *run_sum *= (double)c;
    for (int64_t d = 0; d < width; d++) acc[d] *= c;
}

static void ck_online_softmax_tile_portable(float *scores, int64_t rows, int64_t cols, int64_t query_minus_key,
                                            int causal, float *run_max, double *run_sum, float *acc,
                                            int64_t acc_stride, int64_t width) {
    for (int64_t i = 0; i < rows; i++) {
        float *row = scores + i * cols;
        const int64_t valid = ck_visible_keys(i, cols, query_minus_key, causal);
        if (valid < cols) memset(row + valid, 0, (size_t)(cols - valid) * sizeof(float));
        if (valid == 0) continue;
        float m = run_max[i];
        for (int64_t j = 0; j < valid; j++) m = row[j] > m ? row[j] : m;
        if (m == -INFINITY) {
            memset(row, 0, (size_t)valid * sizeof(float));
            continue;
        }
        // ck_exp_row runs 8 lanes wide on AVX2 machines, scalar below that.
        const double sum = ck_exp_row(row, valid, m);
        ck_rescale_row(run_max[i], m, run_sum + i, acc + i * acc_stride, width);
        run_sum[i] += sum;
        run_max[i] = m;
    }
}

#if CK_SOFTMAX_X86
#include <immintrin.h>

#define CK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

/// exp(x) for 16 lanes, x ≤ 0: Cephes' reduction and polynomial with FMAs, 2^k applied by vscalefps.
CK_AVX512 static inline __m512 ck_exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), x);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(x, x), x), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, k);
}

/// Two passes per row over a tile row that sits in L1/L2: (1) the row max, two accumulators wide;
/// (2) p = exp(s − m) stored in place with the row sum kept in 16 F32 lanes (each lane adds ≤ cols/16
/// values ≤ 1) and reduced in double. The accumulator row is scaled 16 lanes at a time when the max grew.
CK_AVX512 static void ck_online_softmax_tile_avx512(float *scores, int64_t rows, int64_t cols,
                                                   int64_t query_minus_key, int causal, float *run_max,
                                                   double *run_sum, float *acc, int64_t acc_stride,
                                                   int64_t width) {
    const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < rows; i++) {
        float *row = scores + i * cols;
        const int64_t valid = ck_visible_keys(i, cols, query_minus_key, causal);
        if (valid < cols) memset(row + valid, 0, (size_t)(cols - valid) * sizeof(float));
        if (valid == 0) continue;
        const int64_t body = valid & ~(int64_t)15;
        const __mmask16 tail = (__mmask16)((1u << (valid - body)) - 1u);

        __m512 m0 = neg_inf, m1 = neg_inf;
        int64_t j = 0;
        for (; j + 32 <= body; j += 32) {
            m0 = _mm512_max_ps(m0, _mm512_loadu_ps(row + j));
            m1 = _mm512_max_ps(m1, _mm512_loadu_ps(row + j + 16));
        }
        if (j < body) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(row + j));
        if (tail) m1 = _mm512_max_ps(m1, _mm512_mask_loadu_ps(neg_inf, tail, row + body));
        const float old_max = run_max[i];
        float m = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
        m = old_max > m ? old_max : m;
        if (m == -INFINITY) {
            memset(row, 0, (size_t)valid * sizeof(float));
            continue;
        }

        const __m512 shift = _mm512_set1_ps(m);
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        for (j = 0; j + 32 <= body; j += 32) {
            const __m512 p0 = ck_exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j), shift));
            const __m512 p1 = ck_exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j + 16), shift));
            _mm512_storeu_ps(row + j, p0);
            _mm512_storeu_ps(row + j + 16, p1);
            s0 = _mm512_add_ps(s0, p0);
            s1 = _mm512_add_ps(s1, p1);
        }
        if (j < body) {
            const __m512 p0 = ck_exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j), shift));
            _mm512_storeu_ps(row + j, p0);
            s0 = _mm512_add_ps(s0, p0);
        }
        if (tail) {
            const __m512 p1 = ck_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, row + body), shift));
            _mm512_mask_storeu_ps(row + body, tail, p1);
            s1 = _mm512_mask_add_ps(s1, tail, s1, p1);
        }
        const __m512 s = _mm512_add_ps(s0, s1);
        const double sum = _mm512_reduce_add_pd(_mm512_add_pd(
            _mm512_cvtps_pd(_mm512_castps512_ps256(s)),
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)))));

        if (m != old_max && old_max != -INFINITY) {
            const float c = ck_exp_scalar(old_max - m);
            run_sum[i] *= (double)c;
            float *a = acc + i * acc_stride;
            const __m512 cv = _mm512_set1_ps(c);
            int64_t d = 0;
            for (; d + 16 <= width; d += 16) _mm512_storeu_ps(a + d, _mm512_mul_ps(_mm512_loadu_ps(a + d), cv));
            if (d < width) {
                const __mmask16 dm = (__mmask16)((1u << (width - d)) - 1u);
                _mm512_mask_storeu_ps(a + d, dm, _mm512_mul_ps(_mm512_maskz_loadu_ps(dm, a + d), cv));
            }
        }
        run_sum[i] += sum;
        run_max[i] = m;
    }
}

/// dst row i = acc row i / sum_i (0 where the sum is 0), 16 lanes at a time.
CK_AVX512 static void ck_online_softmax_finish_avx512(const float *acc, int64_t acc_stride, const double *run_sum,
                                                     int64_t rows, int64_t width, float *dst, int64_t dst_stride) {
    for (int64_t i = 0; i < rows; i++) {
        const float inv = run_sum[i] > 0 ? (float)(1.0 / run_sum[i]) : 0.0f;
        const __m512 iv = _mm512_set1_ps(inv);
        const float *a = acc + i * acc_stride;
        float *o = dst + i * dst_stride;
        int64_t d = 0;
        for (; d + 16 <= width; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(a + d), iv));
        if (d < width) {
            const __mmask16 dm = (__mmask16)((1u << (width - d)) - 1u);
            _mm512_mask_storeu_ps(o + d, dm, _mm512_mul_ps(_mm512_maskz_loadu_ps(dm, a + d), iv));
        }
    }
}
#endif

void ck_online_softmax_tile(float *scores, int64_t rows, int64_t cols, int64_t query_minus_key, int causal,
                            float *run_max, double *run_sum, float *acc, int64_t acc_stride, int64_t width) {
#if CK_SOFTMAX_X86
    if (ck_dequantize_level() >= 2) {
        ck_online_softmax_tile_avx512(scores, rows, cols, query_minus_key, causal, run_max, run_sum, acc,
                                      acc_stride, width);
        return;
    }
#endif
    ck_online_softmax_tile_portable(scores, rows, cols, query_minus_key, causal, run_max, run_sum, acc, acc_stride,
                                    width);
}

void ck_online_softmax_finish(const float *acc, int64_t acc_stride, const double *run_sum, int64_t rows,
                              int64_t width, float *dst, int64_t dst_stride) {
#if CK_SOFTMAX_X86
    if (ck_dequantize_level() >= 2) {
        ck_online_softmax_finish_avx512(acc, acc_stride, run_sum, rows, width, dst, dst_stride);
        return;
    }
#endif
    for (int64_t i = 0; i < rows; i++) {
        const float inv = run_sum[i] > 0 ? (float)(1.0 / run_sum[i]) : 0.0f;
        for (int64_t d = 0; d < width; d++) dst[i * dst_stride + d] = acc[i * acc_stride + d] * inv;
    }
}
