/* rwkvx_quantize_blocks_ref (act_quant.c) with AVX2 + F16C: the same operations
 * on every element, so the same quants, scales and sums, bit for bit (as
 * act_quant_avx512.c, eight blocks at a time instead of sixteen).
 *
 * The amax of eight blocks land in the lanes of one vector, so d = amax / 127,
 * its inverse and its fp16 rounding are one vector operation each (IEEE
 * division and F16C's round-to-nearest-even give the scalar routine's results);
 * each quant is x * id rounded half away from zero by the same truncate /
 * subtract / compare steps. A block holding a NaN or an infinity goes to the
 * portable routine, which defines what it gives.
 */
#include <immintrin.h>

#include "kernels.h"

#define GROUP 8 /* blocks whose scales are computed together: one per lane */

/* r[k] = the largest lane of v[k]: three rounds of pairwise maxima, as a transpose would pair them. */
static inline __m256 lane_maxima(const __m256 v[GROUP]) {
    __m256 pairs[4], quads[2];
    for (int k = 0; k < 4; k++)
        pairs[k] = _mm256_max_ps(_mm256_shuffle_ps(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* pairs[k] per 128-bit half: v[2k] lanes {01, 23}, v[2k+1] lanes {01, 23} */
    for (int k = 0; k < 2; k++)
        quads[k] = _mm256_max_ps(_mm256_shuffle_ps(pairs[2 * k], pairs[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(pairs[2 * k], pairs[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* quads[k] half h: max over lanes 4h..4h+3 of v[4k], v[4k+1], v[4k+2], v[4k+3] */
    return _mm256_max_ps(_mm256_permute2f128_ps(quads[0], quads[1], 0x20),
                         _mm256_permute2f128_ps(quads[0], quads[1], 0x31));
}

/* One finite block's quants and their sum, given the inverse scale. */
static inline void quantize_with(const float *x, float id, int8_t *q, int32_t *sum) {
    const __m256 scale = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f), minus_half = _mm256_set1_ps(-0.5f);
    __m256i quants[4];
    for (int k = 0; k < 4; k++) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), scale);
        __m256i qi = _mm256_cvttps_epi32(v);
        const __m256 frac = _mm256_sub_ps(v, _mm256_cvtepi32_ps(qi));
        /* a true comparison is -1 in every bit: subtracting it adds one */
        qi = _mm256_sub_epi32(qi, _mm256_castps_si256(_mm256_cmp_ps(frac, half, _CMP_GE_OQ)));
        qi = _mm256_add_epi32(qi, _mm256_castps_si256(_mm256_cmp_ps(frac, minus_half, _CMP_LE_OQ)));
        quants[k] = qi;
    }
    /* A quant's int8 is its int32's low byte, as the scalar cast gives it (for a block whose inverse
     * scale overflowed to inf, the conversion's 0x80000000 plus one): masked to it, the packs cannot
     * saturate; they interleave 4-quant groups per 128-bit half, which the permutation puts back. */
    const __m256i low_byte = _mm256_set1_epi32(0xff);
    for (int k = 0; k < 4; k++) quants[k] = _mm256_and_si256(quants[k], low_byte);
    const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(quants[0], quants[1]),
                                              _mm256_packus_epi32(quants[2], quants[3]));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    /* the sum of the int8 quants, as the scalar routine adds them: biased to unsigned, summed per 8 bytes */
    const __m256i sums = _mm256_sad_epu8(_mm256_xor_si256(bytes, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
    *sum = (int32_t)(_mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1)) - 128 * RWKVX_QK;
}

void rwkvx_quantize_blocks_avx2(const float *x, int64_t n_blocks, int8_t *q, float *d_stored, float *d_exact,
                                int32_t *sum) {
    const __m256 sign = _mm256_set1_ps(-0.0f), infinity = _mm256_set1_ps(__builtin_inff());
    for (int64_t b0 = 0; b0 < n_blocks; b0 += GROUP) {
        const int count = n_blocks - b0 < GROUP ? (int)(n_blocks - b0) : GROUP;
        __m256 block_max[GROUP];
        unsigned special = 0; /* blocks holding a NaN or an infinity */
        for (int k = 0; k < GROUP; k++) {
            block_max[k] = _mm256_setzero_ps();
            if (k >= count) continue;
            const float *xb = x + (b0 + k) * RWKVX_QK;
            __m256 not_finite = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * j));
                not_finite = _mm256_or_ps(not_finite, _mm256_cmp_ps(a, infinity, _CMP_NLT_UQ)); /* NaN or inf */
                block_max[k] = _mm256_max_ps(block_max[k], a);
            }
            if (_mm256_movemask_ps(not_finite)) special |= 1u << k;
        }
        const __m256 amax = lane_maxima(block_max);
        const __m256 d = _mm256_div_ps(amax, _mm256_set1_ps(127.0f));
        const __m256 id = _mm256_and_ps(_mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_OQ),
                                        _mm256_div_ps(_mm256_set1_ps(1.0f), d));
        const __m256 rounded = _mm256_cvtph_ps(_mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        float exact[GROUP], stored[GROUP], inverse[GROUP];
        _mm256_storeu_ps(exact, d);
        _mm256_storeu_ps(stored, rounded);
        _mm256_storeu_ps(inverse, id);
        for (int k = 0; k < count; k++) {
            const int64_t b = b0 + k;
            if (special >> k & 1u) {
                rwkvx_quantize_blocks_ref(x + b * RWKVX_QK, 1, q + b * RWKVX_QK, d_stored + b, d_exact + b, sum + b);
                continue;
            }
            d_exact[b] = exact[k];
            d_stored[b] = stored[k];
            quantize_with(x + b * RWKVX_QK, inverse[k], q + b * RWKVX_QK, sum + b);
        }
    }
}
