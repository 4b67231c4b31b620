/* v7's recurrence and per-token vector work compiled for AVX-512.
 *
 * The recurrence does wkv7_body.h's operations, the same floats, sixteen rows of
 * a head's state at a time: a row's sums a.M[i] and M[i].r are kept as 16 lanes
 * (lane l: the columns j = l mod 16, as dot16_lanes), and the sixteen rows'
 * lanes are folded together by one transpose-and-add tree (rwkvx_reduce16). The
 * portable body's compiled form reduces every row on its own, horizontally: with
 * the state in cache, one thread, 1.9 us per 64x64 head and token against 1.17
 * here (Sapphire Rapids). A block's rows are walked inside its column chunks, so
 * each chunk of the token's vectors is loaded once per block, not once per row:
 * 1.17-1.41 -> 0.69-1.25 us (AMD EPYC Zen 4, 128 tokens of 6 heads, alternating
 * runs). (At one token in the model, reading and writing the state from memory
 * bounds it; prefill chunks gain.) The gates are v7_gates_body.h with these flags.
 */
#include <immintrin.h>

#include "kernels.h"
#include "reduce16_avx512.h"
#include "v7_gates_body.h"

#define FORCE_INLINE static inline __attribute__((always_inline))
#define BLOCK_ROWS 16

/* Lanes of the 16-column chunk starting at column j that fall inside a row of S. */
FORCE_INLINE __mmask16 chunk_mask(int64_t S, int64_t j) {
    return S - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (S - j)) - 1u);
}

/* One token of one head: M [S][S] updated in place, y [S] written. S a constant where it is 64. */
FORCE_INLINE void wkv7_head(int64_t S, float *M, const float *r, const float *w, const float *k, const float *v,
                            const float *a, const float *b, float *y) {
    for (int64_t i = 0; i < S; i += BLOCK_ROWS) {
        const int rows = S - i < BLOCK_ROWS ? (int)(S - i) : BLOCK_ROWS;
        float *block = M + i * S;
        /* the state streams from memory (a layer's is 512 KB on v7 1.5B): 2 and 4 KB ahead,
         * past this head into the next one's, as the matrix products do */
        for (int64_t line = 0; line < rows * S; line += 16) {
            __builtin_prefetch(block + 512 + line, 1, 3);
            __builtin_prefetch(block + 1024 + line, 1, 2);
        }
        /* column chunks outside, rows inside: a chunk of a, w, k, b and r is loaded once for the
         * block's rows instead of once per row (each row's sums still take the chunks in order) */
        __m512 acc[BLOCK_ROWS];
        for (int q = 0; q < BLOCK_ROWS; q++) acc[q] = _mm512_setzero_ps();
        for (int64_t j = 0; j < S; j += 16) {
            const __mmask16 m = chunk_mask(S, j);
            const __m512 aj = _mm512_maskz_loadu_ps(m, a + j);
            for (int q = 0; q < rows; q++)
                acc[q] = _mm512_add_ps(acc[q], _mm512_mul_ps(aj, _mm512_maskz_loadu_ps(m, block + q * S + j)));
        }
        float sa[BLOCK_ROWS];
        _mm512_storeu_ps(sa, rwkvx_reduce16(acc));
        for (int q = 0; q < BLOCK_ROWS; q++) acc[q] = _mm512_setzero_ps();
        for (int64_t j = 0; j < S; j += 16) {
            const __mmask16 m = chunk_mask(S, j);
            const __m512 wj = _mm512_maskz_loadu_ps(m, w + j), kj = _mm512_maskz_loadu_ps(m, k + j);
            const __m512 bj = _mm512_maskz_loadu_ps(m, b + j), rj = _mm512_maskz_loadu_ps(m, r + j);
            for (int q = 0; q < rows; q++) {
                float *at = block + q * S + j;
                const __m512 decayed = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, at), wj);
                const __m512 written = _mm512_add_ps(decayed, _mm512_mul_ps(_mm512_set1_ps(v[i + q]), kj));
                const __m512 row = _mm512_add_ps(written, _mm512_mul_ps(_mm512_set1_ps(sa[q]), bj));
                _mm512_mask_storeu_ps(at, m, row);
                acc[q] = _mm512_add_ps(acc[q], _mm512_mul_ps(row, rj));
            }
        }
        _mm512_mask_storeu_ps(y + i, (__mmask16)((1u << rows) - 1u), rwkvx_reduce16(acc));
    }
}

void rwkvx_wkv7_heads_avx512(int64_t n_tokens, int64_t n_head, int64_t S, int64_t h_begin, int64_t h_end,
                             const float *r, const float *w, const float *k, const float *v, const float *a,
                             const float *b, float *state, float *y) {
    const int64_t C = n_head * S;
    for (int64_t t = 0; t < n_tokens; t++)
        for (int64_t h = h_begin; h < h_end; h++) {
            const int64_t o = t * C + h * S;
            float *M = state + h * S * S;
            if (S == 64) /* every real v7 model: chunks and masks known at compile time */
                wkv7_head(64, M, r + o, w + o, k + o, v + o, a + o, b + o, y + o);
            else
                wkv7_head(S, M, r + o, w + o, k + o, v + o, a + o, b + o, y + o);
        }
}

void rwkvx_v7_gates_avx512(int64_t h_begin, int64_t h_end, int64_t S, const rwkvx_v7_gates *g) {
    v7_gates(h_begin, h_end, S, g);
}
