/* The v7 recurrence, as C that kernel levels compile with their own flags
 * (wkv_ref.c, wkv7_avx2.c): the compiler turns its 16-lane sums and row
 * updates into that level's vectors. Under -std=c11 nothing is contracted into
 * fused multiply-adds and no sum is reordered, so every level computes exactly
 * the same floats; wider vectors only do them faster. wkv7_avx512.c writes the
 * same operations out by hand, sixteen rows at a time.
 */
#ifndef RWKVX_WKV7_BODY_H
#define RWKVX_WKV7_BODY_H

#include <stdint.h>

#include "dot_lanes.h"

#define WKV_ROWS 4

/* v7: per head a matrix state M[i=value][j=key] with a rank-one update driven by a, b:
 *   sa[i] = sum_j a[j] M[i][j];  M[i][j] = M[i][j] w[j] + v[i] k[j] + sa[i] b[j];  y[i] = sum_j M[i][j] r[j] */
static inline void wkv7_heads(int64_t n_tokens, int64_t n_head, int64_t S, int64_t h_begin, int64_t h_end,
                              const float *r, const float *w, const float *k, const float *v, const float *a,
                              const float *b, float *state, float *y) {
    const int64_t C = n_head * S;
    for (int64_t t = 0; t < n_tokens; t++) {
        const int64_t base = t * C;
        for (int64_t h = h_begin; h < h_end; h++) {
            float *M = state + h * S * S;
            const int64_t o = base + h * S;
            /* rows are independent: WKV_ROWS at a time, so that their sums' chains of additions
             * overlap instead of each waiting on the last (each row's floats are unchanged) */
            for (int64_t i = 0; i < S; i += WKV_ROWS) {
                const int rows = S - i < WKV_ROWS ? (int)(S - i) : WKV_ROWS;
                /* the state streams from memory (a layer's is 512 KB on v7 1.5B): rows 2 and 4 KB
                 * ahead, past this head into the next one's, as the matrix products do */
                for (int64_t line = 0; line < rows * S; line += 16) {
                    __builtin_prefetch(M + i * S + 512 + line, 1, 3);
                    __builtin_prefetch(M + i * S + 1024 + line, 1, 2);
                }
                float sa[WKV_ROWS];
                for (int q = 0; q < rows; q++) sa[q] = dot16_lanes(a + o, M + (i + q) * S, S);
                for (int q = 0; q < rows; q++) {
                    float *Mi = M + (i + q) * S;
                    for (int64_t j = 0; j < S; j++)
                        Mi[j] = Mi[j] * w[o + j] + v[o + i + q] * k[o + j] + sa[q] * b[o + j];
                }
                for (int q = 0; q < rows; q++) y[o + i + q] = dot16_lanes(M + (i + q) * S, r + o, S);
            }
        }
    }
}

#endif /* RWKVX_WKV7_BODY_H */
