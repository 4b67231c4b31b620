/* rwkvx_quantize_blocks_ref (act_quant.c) with AVX-512: the same operations on
 * every element, so the same quants, scales and sums, bit for bit.
 *
 * Sixteen blocks at a time: their amax (a max, exact in any order) land in the
 * lanes of one vector, so d = amax / 127, its inverse and its fp16 rounding are
 * one vector operation each (IEEE division and F16C's round-to-nearest-even give
 * the scalar routine's results); each quant is x * id rounded half away from zero
 * by the same truncate / subtract / compare steps. A block holding a NaN or an
 * infinity goes to the portable routine, which defines what it gives.
 */
#include <immintrin.h>

#include "kernels.h"
#include "reduce16_avx512.h"

#define GROUP 16 /* blocks whose scales are computed together: one per lane */
#define NOT_FINITE 0x99 /* vfpclassps categories: quiet NaN, signalling NaN, +inf, -inf */

/* One finite block's quants and their sum, given the inverse scale. */
static inline void quantize_with(const float *x, float id, int8_t *q, int32_t *sum) {
    const __m512 scale = _mm512_set1_ps(id), half = _mm512_set1_ps(0.5f), minus_half = _mm512_set1_ps(-0.5f);
    const __m512i one = _mm512_set1_epi32(1);
    __m512i quants[2];
    for (int k = 0; k < 2; k++) {
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + 16 * k), scale);
        __m512i qi = _mm512_cvttps_epi32(v);
        const __m512 frac = _mm512_sub_ps(v, _mm512_cvtepi32_ps(qi));
        qi = _mm512_mask_add_epi32(qi, _mm512_cmp_ps_mask(frac, half, _CMP_GE_OQ), qi, one);
        qi = _mm512_mask_sub_epi32(qi, _mm512_cmp_ps_mask(frac, minus_half, _CMP_LE_OQ), qi, one);
        quants[k] = qi;
    }
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(quants[0]));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(quants[1]));
    *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(quants[0], quants[1]));
}

void rwkvx_quantize_blocks_avx512(const float *x, int64_t n_blocks, int8_t *q, float *d_stored, float *d_exact,
                                  int32_t *sum) {
    for (int64_t b0 = 0; b0 < n_blocks; b0 += GROUP) {
        const int count = n_blocks - b0 < GROUP ? (int)(n_blocks - b0) : GROUP;
        const __mmask16 valid = (__mmask16)((1u << count) - 1u);
        __m512 block_max[GROUP];
        unsigned special = 0; /* blocks holding a NaN or an infinity */
        for (int k = 0; k < GROUP; k++) {
            if (k >= count) {
                block_max[k] = _mm512_setzero_ps();
                continue;
            }
            const float *xb = x + (b0 + k) * RWKVX_QK;
            const __m512 lo = _mm512_loadu_ps(xb), hi = _mm512_loadu_ps(xb + 16);
            if (_mm512_fpclass_ps_mask(lo, NOT_FINITE) | _mm512_fpclass_ps_mask(hi, NOT_FINITE)) special |= 1u << k;
            block_max[k] = _mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi));
        }
        const __m512 amax = rwkvx_max16(block_max);
        const __m512 d = _mm512_div_ps(amax, _mm512_set1_ps(127.0f));
        const __m512 id = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_OQ),
                                              _mm512_set1_ps(1.0f), d);
        const __m512 rounded = _mm512_cvtph_ps(_mm512_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm512_mask_storeu_ps(d_exact + b0, valid, d);
        _mm512_mask_storeu_ps(d_stored + b0, valid, rounded);
        float inverse[GROUP];
        _mm512_storeu_ps(inverse, id);
        for (int k = 0; k < count; k++) {
            const int64_t b = b0 + k;
            if (special >> k & 1u)
                rwkvx_quantize_blocks_ref(x + b * RWKVX_QK, 1, q + b * RWKVX_QK, d_stored + b, d_exact + b, sum + b);
            else
                quantize_with(x + b * RWKVX_QK, inverse[k], q + b * RWKVX_QK, sum + b);
        }
    }
}
