/* AVX-512 (F, BW, VL, DQ + F16C) matrix products for every weight type.
 *
 * Same contract as rwkvx_matmul_ref. Each 32-weight block is decoded into two
 * 16-float vectors holding exactly the reference's dequantized values (d*q, or
 * d*q + m with a separate multiply and add, as the reference rounds), then
 * multiplied into float32 activations: activations are never quantized.
 *
 * One output element y[t][o] is always computed by the same instruction
 * sequence: four accumulators per token (two blocks per step), a partial block
 * (F32/F16 rows whose length is not a multiple of 32) zero-padded, one fixed
 * reduction. Tokens are processed in tiles of up to TOKEN_TILE so each decoded
 * block is reused, but a token's accumulators never mix with another's, so the
 * result does not depend on how many tokens a call carries.
 *
 * Weights sit at arbitrary byte offsets in the memory-mapped file: every load
 * is unaligned.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define TOKEN_TILE 4
#define FORCE_INLINE static inline __attribute__((always_inline))

/* Bytes holding one 32-weight block of a type (F32/F16: 32 plain values). */
FORCE_INLINE size_t block_bytes(int type) {
    return type == RWKVX_TYPE_F32 ? 128 : type == RWKVX_TYPE_F16 ? 64 : rwkvx_row_bytes(type, RWKVX_QK);
}

FORCE_INLINE float load_half_f32(const uint8_t *p) { return _cvtsh_ss(rwkvx_load_half(p)); }

/* 16 nibbles (low or high halves of 16 bytes) as int32 lanes. */
FORCE_INLINE __m512i nibbles_lo(__m128i qs) { return _mm512_cvtepu8_epi32(_mm_and_si128(qs, _mm_set1_epi8(0x0f))); }
FORCE_INLINE __m512i nibbles_hi(__m128i qs) {
    return _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(qs, 4), _mm_set1_epi8(0x0f)));
}

/* Add 16 to the lanes whose bit is set in qh16: the fifth bit of INT5 weights. */
FORCE_INLINE __m512i add_high_bit(__m512i q, uint32_t qh16) {
    return _mm512_mask_add_epi32(q, (__mmask16)qh16, q, _mm512_set1_epi32(16));
}

/* Decode one block at p into lanes 0-15 (*w0) and 16-31 (*w1). */
FORCE_INLINE void decode_block(int type, const uint8_t *p, __m512 *w0, __m512 *w1) {
    switch (type) {
    case RWKVX_TYPE_F32:
        *w0 = _mm512_loadu_ps(p);
        *w1 = _mm512_loadu_ps(p + 64);
        return;
    case RWKVX_TYPE_F16:
        *w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        *w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)));
        return;
    case RWKVX_TYPE_Q8_0: {
        const __m512 d = _mm512_set1_ps(load_half_f32(p));
        const __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)));
        const __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18)));
        *w0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q0));
        *w1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q1));
        return;
    }
    case RWKVX_TYPE_Q4_0: {
        const __m512 d = _mm512_set1_ps(load_half_f32(p));
        const __m128i qs = _mm_loadu_si128((const __m128i *)(p + 2));
        const __m512i eight = _mm512_set1_epi32(8);
        *w0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(nibbles_lo(qs), eight)));
        *w1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(nibbles_hi(qs), eight)));
        return;
    }
    case RWKVX_TYPE_Q4_1: {
        const __m512 d = _mm512_set1_ps(load_half_f32(p)), m = _mm512_set1_ps(load_half_f32(p + 2));
        const __m128i qs = _mm_loadu_si128((const __m128i *)(p + 4));
        *w0 = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(nibbles_lo(qs))), m);
        *w1 = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(nibbles_hi(qs))), m);
        return;
    }
    case RWKVX_TYPE_Q5_0: {
        const __m512 d = _mm512_set1_ps(load_half_f32(p));
        uint32_t qh;
        memcpy(&qh, p + 2, 4); /* little-endian, as rwkvx_load_qh reads it */
        const __m128i qs = _mm_loadu_si128((const __m128i *)(p + 6));
        const __m512i sixteen = _mm512_set1_epi32(16);
        const __m512i q0 = _mm512_sub_epi32(add_high_bit(nibbles_lo(qs), qh & 0xffffu), sixteen);
        const __m512i q1 = _mm512_sub_epi32(add_high_bit(nibbles_hi(qs), qh >> 16), sixteen);
        *w0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q0));
        *w1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q1));
        return;
    }
    case RWKVX_TYPE_Q5_1: {
        const __m512 d = _mm512_set1_ps(load_half_f32(p)), m = _mm512_set1_ps(load_half_f32(p + 2));
        uint32_t qh;
        memcpy(&qh, p + 4, 4);
        const __m128i qs = _mm_loadu_si128((const __m128i *)(p + 8));
        const __m512i q0 = add_high_bit(nibbles_lo(qs), qh & 0xffffu);
        const __m512i q1 = add_high_bit(nibbles_hi(qs), qh >> 16);
        *w0 = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(q0)), m);
        *w1 = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(q1)), m);
        return;
    }
    }
}

/* out[t] = row . x[t] for nt <= TOKEN_TILE tokens (x rows ldx floats apart). */
FORCE_INLINE void dot_tile(int type, const uint8_t *row, int64_t n, const float *x, int64_t ldx, int nt,
                           float *out) {
    const size_t bb = block_bytes(type);
    const int64_t n_blocks = n / RWKVX_QK;
    __m512 acc[TOKEN_TILE][4];
    for (int t = 0; t < nt; t++)
        for (int k = 0; k < 4; k++) acc[t][k] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= n_blocks; b += 2) {
        __m512 w0, w1, w2, w3;
        decode_block(type, row + b * bb, &w0, &w1);
        decode_block(type, row + (b + 1) * bb, &w2, &w3);
        for (int t = 0; t < nt; t++) {
            const float *xt = x + t * ldx + b * RWKVX_QK;
            acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xt), acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xt + 16), acc[t][1]);
            acc[t][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xt + 32), acc[t][2]);
            acc[t][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xt + 48), acc[t][3]);
        }
    }
    if (b < n_blocks) {
        __m512 w0, w1;
        decode_block(type, row + b * bb, &w0, &w1);
        for (int t = 0; t < nt; t++) {
            const float *xt = x + t * ldx + b * RWKVX_QK;
            acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xt), acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xt + 16), acc[t][1]);
        }
    }
    /* F32/F16 rows may end in a partial block: masked loads zero the missing lanes. */
    const int64_t rest = (type == RWKVX_TYPE_F32 || type == RWKVX_TYPE_F16) ? n - n_blocks * RWKVX_QK : 0;
    if (rest > 0) {
        const __mmask16 m0 = (__mmask16)(rest >= 16 ? 0xffffu : (1u << rest) - 1u);
        const __mmask16 m1 = (__mmask16)(rest <= 16 ? 0u : (1u << (rest - 16)) - 1u);
        const uint8_t *p = row + n_blocks * bb;
        __m512 w0, w1;
        if (type == RWKVX_TYPE_F32) {
            w0 = _mm512_maskz_loadu_ps(m0, p);
            w1 = _mm512_maskz_loadu_ps(m1, p + 64);
        } else {
            w0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, p));
            w1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, p + 32));
        }
        for (int t = 0; t < nt; t++) {
            const float *xt = x + t * ldx + n_blocks * RWKVX_QK;
            acc[t][0] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m0, xt), acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(m1, xt + 16), acc[t][1]);
        }
    }
    for (int t = 0; t < nt; t++)
        out[t] = _mm512_reduce_add_ps(
            _mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][2]), _mm512_add_ps(acc[t][1], acc[t][3])));
}

FORCE_INLINE void matmul_typed(int type, const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t n_tokens,
                               float *y, int64_t ldy) {
    const int64_t n = w->n_in;
    const size_t rb = rwkvx_row_bytes(type, (size_t)n);
    for (int64_t o = 0; o < w->n_rows; o++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)o * rb;
        for (int64_t t0 = 0; t0 < n_tokens; t0 += TOKEN_TILE) {
            const int64_t left = n_tokens - t0;
            const float *xt = x + t0 * ldx;
            float out[TOKEN_TILE];
            /* constant tile sizes, so the accumulators live in registers */
            switch (left >= TOKEN_TILE ? TOKEN_TILE : (int)left) {
            case 4: dot_tile(type, row, n, xt, ldx, 4, out); break;
            case 3: dot_tile(type, row, n, xt, ldx, 3, out); break;
            case 2: dot_tile(type, row, n, xt, ldx, 2, out); break;
            default: dot_tile(type, row, n, xt, ldx, 1, out); break;
            }
            const int nt = left >= TOKEN_TILE ? TOKEN_TILE : (int)left;
            for (int t = 0; t < nt; t++) y[(t0 + t) * ldy + o] = out[t];
        }
    }
}

void rwkvx_matmul_avx512(const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t n_tokens, float *y,
                         int64_t ldy) {
    switch (w->type) {
    case RWKVX_TYPE_F32: matmul_typed(RWKVX_TYPE_F32, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_F16: matmul_typed(RWKVX_TYPE_F16, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q8_0: matmul_typed(RWKVX_TYPE_Q8_0, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q5_1: matmul_typed(RWKVX_TYPE_Q5_1, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q5_0: matmul_typed(RWKVX_TYPE_Q5_0, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q4_1: matmul_typed(RWKVX_TYPE_Q4_1, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_Q4_0: matmul_typed(RWKVX_TYPE_Q4_0, w, x, ldx, n_tokens, y, ldy); return;
    default: rwkvx_matmul_ref(w, x, ldx, n_tokens, y, ldy); return; /* unknown types never reach here */
    }
}
