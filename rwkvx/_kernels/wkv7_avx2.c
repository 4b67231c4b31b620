/* v7's recurrence and per-token vector work compiled for AVX2 (see wkv7_body.h and
 * v7_gates_body.h: the same floats as the scalar build).
 *
 * Heads of 64 (every real v7 model) are written out by hand, eight rows of the
 * state at a time: a row's 16-lane sums (dot16_lanes' lanes 0-7 and 8-15, one ymm
 * each) are folded first lane by lane (l + l^8), then the eight rows' sums together
 * by one transpose-and-add tree in dot16_lanes' order (l + l^4), (l + l^2),
 * (l + l^1); the portable body's compiled form folds every row on its own. Other
 * head sizes run the portable body.
 */
#include <immintrin.h>

#include "kernels.h"
#include "v7_gates_body.h"
#include "wkv7_body.h"

#define FORCE_INLINE static inline __attribute__((always_inline))
#define S64 64
#define BLOCK_ROWS 8

/* Eight rows' folded sums (b[q] lane l: row q's lanes l and l + 8 added) to one vector whose lane q is
 * row q's dot: (l + l^4), then (l + l^2), then (l + l^1), as dot_lanes_n folds. */
FORCE_INLINE __m256 fold8(const __m256 b[BLOCK_ROWS]) {
    __m256 c[4], d[2];
    for (int k = 0; k < 4; k++) /* c[k]: rows 2k (low half) and 2k + 1 (high half), lanes l + l^4 */
        c[k] = _mm256_add_ps(_mm256_permute2f128_ps(b[2 * k], b[2 * k + 1], 0x20),
                             _mm256_permute2f128_ps(b[2 * k], b[2 * k + 1], 0x31));
    for (int k = 0; k < 2; k++) /* d[k]: rows 4k, 4k+2 (low half), 4k+1, 4k+3 (high half), lanes l + l^2 */
        d[k] = _mm256_add_ps(_mm256_shuffle_ps(c[2 * k], c[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(c[2 * k], c[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* lanes 0-3: rows 0, 2, 4, 6; lanes 4-7: rows 1, 3, 5, 7 (l + l^1) */
    const __m256 e = _mm256_add_ps(_mm256_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm256_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(e, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* One token of one head of 64: M [64][64] updated in place, y [64] written. */
FORCE_INLINE void wkv7_head64(float *M, const float *r, const float *w, const float *k, const float *v,
                              const float *a, const float *b, float *y) {
    for (int64_t i = 0; i < S64; i += BLOCK_ROWS) {
        float *block = M + i * S64;
        /* the state streams from memory, as in wkv7_body.h: 2 and 4 KB ahead */
        for (int64_t line = 0; line < BLOCK_ROWS * S64; line += 16) {
            __builtin_prefetch(block + 512 + line, 1, 3);
            __builtin_prefetch(block + 1024 + line, 1, 2);
        }
        __m256 sums[BLOCK_ROWS];
        for (int q = 0; q < BLOCK_ROWS; q++) {
            const float *row = block + q * S64;
            __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps(); /* lanes 0-7 and 8-15 */
            for (int64_t j = 0; j < S64; j += 16) {
                lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(row + j)));
                hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(row + j + 8)));
            }
            sums[q] = _mm256_add_ps(lo, hi);
        }
        float sa[BLOCK_ROWS];
        _mm256_storeu_ps(sa, fold8(sums));
        for (int q = 0; q < BLOCK_ROWS; q++) {
            float *row = block + q * S64;
            const __m256 vq = _mm256_set1_ps(v[i + q]), sq = _mm256_set1_ps(sa[q]);
            __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
            for (int64_t j = 0; j < S64; j += 8) {
                const __m256 decayed = _mm256_mul_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(w + j));
                const __m256 written = _mm256_add_ps(decayed, _mm256_mul_ps(vq, _mm256_loadu_ps(k + j)));
                const __m256 updated = _mm256_add_ps(written, _mm256_mul_ps(sq, _mm256_loadu_ps(b + j)));
                _mm256_storeu_ps(row + j, updated);
                const __m256 product = _mm256_mul_ps(updated, _mm256_loadu_ps(r + j));
                if (j % 16 == 0)
                    lo = _mm256_add_ps(lo, product);
                else
                    hi = _mm256_add_ps(hi, product);
            }
            sums[q] = _mm256_add_ps(lo, hi);
        }
        _mm256_storeu_ps(y + i, fold8(sums));
    }
}

void rwkvx_wkv7_heads_avx2(int64_t n_tokens, int64_t n_head, int64_t S, int64_t h_begin, int64_t h_end,
                          const float *r, const float *w, const float *k, const float *v, const float *a,
                          const float *b, float *state, float *y) {
    if (S != S64) {
        wkv7_heads(n_tokens, n_head, S, h_begin, h_end, r, w, k, v, a, b, state, y);
        return;
    }
    const int64_t C = n_head * S64;
    for (int64_t t = 0; t < n_tokens; t++)
        for (int64_t h = h_begin; h < h_end; h++) {
            const int64_t o = t * C + h * S64;
            wkv7_head64(state + h * S64 * S64, r + o, w + o, k + o, v + o, a + o, b + o, y + o);
        }
}

void rwkvx_v7_gates_avx2(int64_t h_begin, int64_t h_end, int64_t S, const rwkvx_v7_gates *g) {
    v7_gates(h_begin, h_end, S, g);
}
