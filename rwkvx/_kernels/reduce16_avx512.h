/* Sixteen 16-lane vectors reduced together (AVX-512): one vector whose lane k
 * is the sum (or max) of acc[k]'s lanes, every lane folded in the halving tree
 * (l + l^8), then (l + l^4), (l + l^2), (l + l^1) -- the order of dot16_lanes
 * (dot_lanes.h) -- whichever accumulators share the vector. Include only from
 * files compiled with AVX-512 flags. */
#ifndef RWKVX_REDUCE16_AVX512_H
#define RWKVX_REDUCE16_AVX512_H

#include <immintrin.h>

/* The tree for any lane-wise operation `op` that folds two vectors (add, max). */
#define RWKVX_FOLD16(name, op)                                                                                   \
    static inline __attribute__((always_inline)) __m512 name(const __m512 acc[16]) {                            \
        __m512 c[8], d[4], e[2];                                                                                 \
        for (int k = 0; k < 8; k++) /* c[k]: acc[2k] and acc[2k+1], 8 partial results each */                   \
            c[k] = op(_mm512_shuffle_f32x4(acc[2 * k], acc[2 * k + 1], 0x44),                                    \
                      _mm512_shuffle_f32x4(acc[2 * k], acc[2 * k + 1], 0xee));                                   \
        for (int k = 0; k < 4; k++) /* d[k]: 128-bit lane q holds output 4k + q, 4 partial results */           \
            d[k] = op(_mm512_shuffle_f32x4(c[2 * k], c[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),                     \
                      _mm512_shuffle_f32x4(c[2 * k], c[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));                    \
        for (int k = 0; k < 2; k++) /* e[k]: lane q holds outputs 8k + q and 8k + 4 + q, 2 partial results */  \
            e[k] = op(_mm512_shuffle_ps(d[2 * k], d[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),                        \
                      _mm512_shuffle_ps(d[2 * k], d[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));                       \
        /* lane 4q + j now holds output 4j + q: permute to output order */                                      \
        const __m512 f = op(_mm512_shuffle_ps(e[0], e[1], _MM_SHUFFLE(2, 0, 2, 0)),                              \
                            _mm512_shuffle_ps(e[0], e[1], _MM_SHUFFLE(3, 1, 3, 1)));                             \
        return _mm512_permutexvar_ps(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), f); \
    }

RWKVX_FOLD16(rwkvx_reduce16, _mm512_add_ps) /* sums */
RWKVX_FOLD16(rwkvx_max16, _mm512_max_ps)    /* maxima (exact in any order) */

#endif /* RWKVX_REDUCE16_AVX512_H */
