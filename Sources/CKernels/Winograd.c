// Winograd: the three transforms of F(2×2, 3×3) convolution (Lavin & Gray 2015) for a 3×3, stride-1,
// padding-1 conv; TiledKernels/Conv2d.swift runs the 16 products between them as sgemm calls.
#include "CKernels.h"

// Additions only (and halves, exact in binary), no products that could fuse: keep the rounding of each
// step as written so results do not depend on the compiler's contraction choices.
#pragma clang fp contract(off)

void ck_winograd_f23_weight(const float *restrict w, int64_t rows, int64_t channels, int64_t outChannels,
                            float *restrict u) {
    const int64_t plane = outChannels * channels;
    for (int64_t o = 0; o < rows; o++) {
        for (int64_t c = 0; c < channels; c++) {
            const float *g = w + (o * channels + c) * 9;
            // t = G g (4×3): rows g0, (g0+g1+g2)/2, (g0−g1+g2)/2, g2 of the kernel's rows.
            float t[4][3];
            for (int j = 0; j < 3; j++) {
                float g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
                t[0][j] = g0;
                t[1][j] = 0.5f * (g0 + g1 + g2);
                t[2][j] = 0.5f * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            float *dst = u + o * channels + c;
            for (int a = 0; a < 4; a++) {
                float g0 = t[a][0], g1 = t[a][1], g2 = t[a][2];
                dst[(a * 4 + 0) * plane] = g0;
                dst[(a * 4 + 1) * plane] = 0.5f * (g0 + g1 + g2);
                dst[(a * 4 + 2) * plane] = 0.5f * (g0 - g1 + g2);
                dst[(a * 4 + 3) * plane] = g2;
            }
        }
    }
}

/// line[j] = x[iy][j − 1] for j < padded, zero outside [0, width); returns 0 (line untouched) when row iy is
/// outside [0, height), where the whole row is padding.
static inline int load_padded_row(const float *restrict src, int64_t iy, int64_t height, int64_t width,
                                  int64_t padded, float *restrict line) {
    if (iy < 0 || iy >= height) return 0;
    const float *row = src + iy * width;
    line[0] = 0;
    for (int64_t j = 0; j < width; j++) line[j + 1] = row[j];
    for (int64_t j = width + 1; j < padded; j++) line[j] = 0;
    return 1;
}

void ck_winograd_f23_input(const float *restrict image, int64_t channels, int64_t height, int64_t width,
                           int64_t firstTileRow, int64_t tileRows, int64_t tilesWide, float *restrict v,
                           float *restrict scratch) {
    const int64_t tiles = tileRows * tilesWide;
    const int64_t rowsIn = 2 * tileRows + 2;
    const int64_t padded = 2 * tilesWide + 2;
    float *line = scratch;                   // one zero-padded input row: padded floats
    float *h = scratch + padded;             // rowsIn × 4 × tilesWide horizontal transforms
    const int64_t hRow = 4 * tilesWide;
    for (int64_t c = 0; c < channels; c++) {
        const float *src = image + c * height * width;
        for (int64_t r = 0; r < rowsIn; r++) {
            const int64_t iy = 2 * firstTileRow - 1 + r;
            float *hr = h + r * hRow;
            if (!load_padded_row(src, iy, height, width, padded, line)) {
                for (int64_t i = 0; i < hRow; i++) hr[i] = 0;
                continue;
            }
            float *h0 = hr, *h1 = hr + tilesWide, *h2 = hr + 2 * tilesWide, *h3 = hr + 3 * tilesWide;
            for (int64_t t = 0; t < tilesWide; t++) {
                float d0 = line[2 * t], d1 = line[2 * t + 1], d2 = line[2 * t + 2], d3 = line[2 * t + 3];
                h0[t] = d0 - d2;
                h1[t] = d1 + d2;
                h2[t] = d2 - d1;
                h3[t] = d1 - d3;
            }
        }
        // Vertical transform of each tile row's four input rows, written as V[ξ = 4a + b][c][tile].
        for (int64_t l = 0; l < tileRows; l++) {
            const float *r0 = h + (2 * l) * hRow, *r1 = r0 + hRow, *r2 = r1 + hRow, *r3 = r2 + hRow;
            for (int64_t b = 0; b < 4; b++) {
                const float *e0 = r0 + b * tilesWide, *e1 = r1 + b * tilesWide;
                const float *e2 = r2 + b * tilesWide, *e3 = r3 + b * tilesWide;
                float *v0 = v + ((0 * 4 + b) * channels + c) * tiles + l * tilesWide;
                float *v1 = v + ((1 * 4 + b) * channels + c) * tiles + l * tilesWide;
                float *v2 = v + ((2 * 4 + b) * channels + c) * tiles + l * tilesWide;
                float *v3 = v + ((3 * 4 + b) * channels + c) * tiles + l * tilesWide;
                for (int64_t t = 0; t < tilesWide; t++) {
                    v0[t] = e0[t] - e2[t];
                    v1[t] = e1[t] + e2[t];
                    v2[t] = e2[t] - e1[t];
                    v3[t] = e1[t] - e3[t];
                }
            }
        }
    }
}

void ck_winograd_f23_output(const float *restrict m, int64_t outChannels, int64_t tileRows, int64_t tilesWide,
                            const float *restrict bias, float *restrict y, int64_t height, int64_t width,
                            int64_t firstTileRow, float *restrict scratch) {
    const int64_t tiles = tileRows * tilesWide;
    const int64_t plane = outChannels * tiles;
    float *top = scratch, *bottom = scratch + 2 * tilesWide;  // two output rows of one tile row
    for (int64_t o = 0; o < outChannels; o++) {
        const float beta = bias ? bias[o] : 0.0f;
        for (int64_t l = 0; l < tileRows; l++) {
            const float *p = m + o * tiles + l * tilesWide;
            for (int64_t t = 0; t < tilesWide; t++) {
                float s[2][4];
                for (int b = 0; b < 4; b++) {
                    float m0 = p[(0 * 4 + b) * plane + t], m1 = p[(1 * 4 + b) * plane + t];
                    float m2 = p[(2 * 4 + b) * plane + t], m3 = p[(3 * 4 + b) * plane + t];
                    s[0][b] = m0 + m1 + m2;
                    s[1][b] = m1 - m2 - m3;
                }
                top[2 * t] = s[0][0] + s[0][1] + s[0][2] + beta;
                top[2 * t + 1] = s[0][1] - s[0][2] - s[0][3] + beta;
                bottom[2 * t] = s[1][0] + s[1][1] + s[1][2] + beta;
                bottom[2 * t + 1] = s[1][1] - s[1][2] - s[1][3] + beta;
            }
            const int64_t oy = 2 * (firstTileRow + l);
            float *dst = y + (o * height + oy) * width;
            for (int64_t j = 0; j < width; j++) dst[j] = top[j];
            if (oy + 1 < height) {
                dst += width;
                for (int64_t j = 0; j < width; j++) dst[j] = bottom[j];
            }
        }
    }
}

// F(4×4, 3×3). Bᵀ rows: [4 0 −5 0 1 0], [0 −4 −4 1 1 0], [0 4 −4 −1 1 0], [0 −2 −1 2 1 0], [0 2 −1 −2 1 0],
// [0 4 0 −5 0 1]; G rows: [1/4 0 0], [−1/6 −1/6 −1/6], [−1/6 1/6 −1/6], [1/24 1/12 1/6], [1/24 −1/12 1/6],
// [0 0 1]; Aᵀ rows: [1 1 1 1 1 0], [0 1 −1 2 −2 0], [0 1 1 4 4 0], [0 1 −1 8 −8 1].

static inline void f43_g(const float g0, const float g1, const float g2, float out[6]) {
    out[0] = 0.25f * g0;
    out[1] = -(g0 + g1 + g2) / 6.0f;
    out[2] = -(g0 - g1 + g2) / 6.0f;
    out[3] = g0 / 24.0f + g1 / 12.0f + g2 / 6.0f;
    out[4] = g0 / 24.0f - g1 / 12.0f + g2 / 6.0f;
    out[5] = g2;
}

void ck_winograd_f43_weight(const float *restrict w, int64_t rows, int64_t channels, int64_t outChannels,
                            float *restrict u) {
    const int64_t plane = outChannels * channels;
    for (int64_t o = 0; o < rows; o++) {
        for (int64_t c = 0; c < channels; c++) {
            const float *g = w + (o * channels + c) * 9;
            float t[6][3];  // t = G g: column j of the kernel through G
            for (int j = 0; j < 3; j++) {
                float col[6];
                f43_g(g[j], g[3 + j], g[6 + j], col);
                for (int a = 0; a < 6; a++) t[a][j] = col[a];
            }
            float *dst = u + o * channels + c;
            for (int a = 0; a < 6; a++) {
                float row[6];
                f43_g(t[a][0], t[a][1], t[a][2], row);
                for (int b = 0; b < 6; b++) dst[(a * 6 + b) * plane] = row[b];
            }
        }
    }
}

void ck_winograd_f43_input(const float *restrict image, int64_t channels, int64_t height, int64_t width,
                           int64_t firstTileRow, int64_t tileRows, int64_t tilesWide, float *restrict v,
                           float *restrict scratch) {
    const int64_t tiles = tileRows * tilesWide;
    const int64_t rowsIn = 4 * tileRows + 2;
    const int64_t padded = 4 * tilesWide + 2;
    float *line = scratch;                   // one zero-padded input row: padded floats
    float *h = scratch + padded;             // rowsIn × 6 × tilesWide horizontal transforms
    const int64_t hRow = 6 * tilesWide;
    for (int64_t c = 0; c < channels; c++) {
        const float *src = image + c * height * width;
        for (int64_t r = 0; r < rowsIn; r++) {
            const int64_t iy = 4 * firstTileRow - 1 + r;
            float *hr = h + r * hRow;
            if (!load_padded_row(src, iy, height, width, padded, line)) {
                for (int64_t i = 0; i < hRow; i++) hr[i] = 0;
                continue;
            }
            float *h0 = hr, *h1 = hr + tilesWide, *h2 = hr + 2 * tilesWide;
            float *h3 = hr + 3 * tilesWide, *h4 = hr + 4 * tilesWide, *h5 = hr + 5 * tilesWide;
            for (int64_t t = 0; t < tilesWide; t++) {
                const float *d = line + 4 * t;
                h0[t] = 4.0f * d[0] - 5.0f * d[2] + d[4];
                h1[t] = -4.0f * (d[1] + d[2]) + d[3] + d[4];
                h2[t] = 4.0f * (d[1] - d[2]) - d[3] + d[4];
                h3[t] = 2.0f * (d[3] - d[1]) - d[2] + d[4];
                h4[t] = 2.0f * (d[1] - d[3]) - d[2] + d[4];
                h5[t] = 4.0f * d[1] - 5.0f * d[3] + d[5];
            }
        }
        // Vertical transform of each tile row's six input rows, written as V[ξ = 6a + b][c][tile].
        for (int64_t l = 0; l < tileRows; l++) {
            const float *r0 = h + (4 * l) * hRow;
            for (int64_t b = 0; b < 6; b++) {
                const float *e0 = r0 + b * tilesWide, *e1 = e0 + hRow, *e2 = e1 + hRow;
                const float *e3 = e2 + hRow, *e4 = e3 + hRow, *e5 = e4 + hRow;
                float *vb = v + (b * channels + c) * tiles + l * tilesWide;
                const int64_t step = 6 * channels * tiles;  // from plane 6a + b to 6(a + 1) + b
                float *v0 = vb, *v1 = vb + step, *v2 = v1 + step, *v3 = v2 + step, *v4 = v3 + step, *v5 = v4 + step;
                for (int64_t t = 0; t < tilesWide; t++) {
                    v0[t] = 4.0f * e0[t] - 5.0f * e2[t] + e4[t];
                    v1[t] = -4.0f * (e1[t] + e2[t]) + e3[t] + e4[t];
                    v2[t] = 4.0f * (e1[t] - e2[t]) - e3[t] + e4[t];
                    v3[t] = 2.0f * (e3[t] - e1[t]) - e2[t] + e4[t];
                    v4[t] = 2.0f * (e1[t] - e3[t]) - e2[t] + e4[t];
                    v5[t] = 4.0f * e1[t] - 5.0f * e3[t] + e5[t];
                }
            }
        }
    }
}

void ck_winograd_f43_output(const float *restrict m, int64_t outChannels, int64_t tileRows, int64_t tilesWide,
                            const float *restrict bias, float *restrict y, int64_t height, int64_t width,
                            int64_t firstTileRow, float *restrict scratch) {
    const int64_t tiles = tileRows * tilesWide;
    const int64_t plane = outChannels * tiles;
    const int64_t rowWidth = 4 * tilesWide;
    for (int64_t o = 0; o < outChannels; o++) {
        const float beta = bias ? bias[o] : 0.0f;
        for (int64_t l = 0; l < tileRows; l++) {
            const float *p = m + o * tiles + l * tilesWide;
            for (int64_t t = 0; t < tilesWide; t++) {
                float s[4][6];  // s = Aᵀ M, column by column
                for (int b = 0; b < 6; b++) {
                    float m0 = p[(0 * 6 + b) * plane + t], m1 = p[(1 * 6 + b) * plane + t];
                    float m2 = p[(2 * 6 + b) * plane + t], m3 = p[(3 * 6 + b) * plane + t];
                    float m4 = p[(4 * 6 + b) * plane + t], m5 = p[(5 * 6 + b) * plane + t];
                    float a12 = m1 + m2, s12 = m1 - m2, a34 = m3 + m4, s34 = m3 - m4;
                    s[0][b] = m0 + a12 + a34;
                    s[1][b] = s12 + 2.0f * s34;
                    s[2][b] = a12 + 4.0f * a34;
                    s[3][b] = s12 + 8.0f * s34 + m5;
                }
                for (int i = 0; i < 4; i++) {
                    const float *r = s[i];
                    float a12 = r[1] + r[2], s12 = r[1] - r[2], a34 = r[3] + r[4], s34 = r[3] - r[4];
                    float *dst = scratch + i * rowWidth + 4 * t;
                    dst[0] = r[0] + a12 + a34 + beta;
                    dst[1] = s12 + 2.0f * s34 + beta;
                    dst[2] = a12 + 4.0f * a34 + beta;
                    dst[3] = s12 + 8.0f * s34 + r[5] + beta;
                }
            }
            const int64_t oy = 4 * (firstTileRow + l);
            for (int64_t i = 0; i < 4 && oy + i < height; i++) {
                float *dst = y + (o * height + oy + i) * width;
                const float *src = scratch + i * rowWidth;
                for (int64_t j = 0; j < width; j++) dst[j] = src[j];
            }
        }
    }
}
