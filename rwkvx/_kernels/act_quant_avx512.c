/* rwkvx_quantize_block_ref (act_quant.c) on 16 lanes: the same operations on
 * every element, so the same quants, scale and sum, bit for bit.
 *
 * amax is a max, exact in any order; d = amax / 127 and its inverse are the
 * same scalar operations; each quant is x * id rounded half away from zero by
 * the same truncate / subtract / compare steps. A block holding a NaN or an
 * infinity goes to the portable routine, which defines what it gives.
 */
#include <immintrin.h>
#include <math.h>

#include "kernels.h"

void rwkvx_quantize_block_avx512(const float *x, int8_t *q, float *d_stored, float *d_exact, int32_t *sum) {
    const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
    if (!isfinite(amax)) { /* max_ps drops NaNs: recheck them with the exact rules */
        rwkvx_quantize_block_ref(x, q, d_stored, d_exact, sum);
        return;
    }
    __mmask16 nan_lo = _mm512_cmp_ps_mask(lo, lo, _CMP_UNORD_Q), nan_hi = _mm512_cmp_ps_mask(hi, hi, _CMP_UNORD_Q);
    if (nan_lo | nan_hi) {
        rwkvx_quantize_block_ref(x, q, d_stored, d_exact, sum);
        return;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m512 scale = _mm512_set1_ps(id), half = _mm512_set1_ps(0.5f), minus_half = _mm512_set1_ps(-0.5f);
    __m512i quants[2];
    const __m512 halves[2] = {lo, hi};
    for (int k = 0; k < 2; k++) {
        const __m512 v = _mm512_mul_ps(halves[k], scale);
        __m512i qi = _mm512_cvttps_epi32(v);
        const __m512 frac = _mm512_sub_ps(v, _mm512_cvtepi32_ps(qi));
        qi = _mm512_mask_add_epi32(qi, _mm512_cmp_ps_mask(frac, half, _CMP_GE_OQ), qi, _mm512_set1_epi32(1));
        qi = _mm512_mask_sub_epi32(qi, _mm512_cmp_ps_mask(frac, minus_half, _CMP_LE_OQ), qi, _mm512_set1_epi32(1));
        quants[k] = qi;
    }
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(quants[0]));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(quants[1]));
    *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(quants[0], quants[1]));
    *d_exact = d;
    *d_stored = rwkvx_half_to_float(rwkvx_float_to_half(d));
}
