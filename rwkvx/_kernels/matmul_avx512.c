/* AVX-512 (F, BW, VL, DQ, VNNI + F16C) matrix products for every weight type.
 *
 * Same contract as rwkvx_matmul_ref. F32/F16 (this part): each 32-weight block
 * is converted into two 16-float vectors and multiplied into float32
 * activations. Quantized types: integer products with VNNI, see the second
 * half of this file.
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

/* Decode one F32/F16 block at p into lanes 0-15 (*w0) and 16-31 (*w1). */
FORCE_INLINE void decode_block(int type, const uint8_t *p, __m512 *w0, __m512 *w1) {
    if (type == RWKVX_TYPE_F32) {
        *w0 = _mm512_loadu_ps(p);
        *w1 = _mm512_loadu_ps(p + 64);
    } else {
        *w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        *w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)));
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
    default: rwkvx_matmul_via_q8(rwkvx_matmul_q8_avx512, w, x, ldx, n_tokens, y, ldy); return;
    }
}

/* ---- integer products for quantized weights (VNNI) ---------------------------
 *
 * Two blocks per step: their 64 weight codes, made unsigned (u = q + offset for
 * the _0 types, q itself for the _1 types), fill one zmm, and vpdpbusd (unsigned
 * bytes x signed bytes, 4 products per int32 lane) multiplies them by the
 * activation quants. For _0 types the accumulator starts from the activation's
 * aux lanes, -offset * sum(q_x) in the block's first lane, so the 8 lanes of a
 * block sum to exactly the signed integer dot of the scalar reference. The lanes
 * (exact integers below 2^24) are converted to float, scaled by d_w * d_x and
 * accumulated; _1 types add m_w * s_x through the aux lane. A tile of ROW_TILE
 * rows x TOKEN_TILE tokens decodes each weight pair once per tile and loads each
 * activation pair once per tile; per output element the operations are the same
 * whatever the tile, so T never changes a result.
 */

#define ROW_TILE 2
#define Q_TOKEN_TILE 4

FORCE_INLINE __m256i nibble_codes(const uint8_t *qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0f);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(q, mask)),
                                   _mm_and_si128(_mm_srli_epi16(q, 4), mask), 1);
}

FORCE_INLINE uint64_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* little-endian, as rwkvx_load_qh reads it */
    return v;
}

/* One block's 32 unsigned codes (ymm), its d and m. */
FORCE_INLINE __m256i block_codes(int type, const uint8_t *p, float *d, float *m, uint32_t *qh) {
    *d = load_half_f32(p);
    *m = 0.0f;
    *qh = 0;
    switch (type) {
    case RWKVX_TYPE_Q8_0:
        return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 2)), _mm256_set1_epi8((char)0x80));
    case RWKVX_TYPE_Q4_0: return nibble_codes(p + 2);
    case RWKVX_TYPE_Q4_1: *m = load_half_f32(p + 2); return nibble_codes(p + 4);
    case RWKVX_TYPE_Q5_0: *qh = (uint32_t)load_u32(p + 2); return nibble_codes(p + 6);
    default: /* Q5_1 */ *m = load_half_f32(p + 2); *qh = (uint32_t)load_u32(p + 4); return nibble_codes(p + 8);
    }
}

/* Blocks b and (if `second`) b+1 of a row: codes u, [d_b x8, d_b+1 x8], [m_b x8, m_b+1 x8]. */
FORCE_INLINE void decode_pair(int type, const uint8_t *p, size_t block, int second, __m512i *u, __m512 *dw,
                              __m512 *mw) {
    float d0, m0, d1 = 0.0f, m1 = 0.0f;
    uint32_t qh0, qh1 = 0;
    __m256i c1 = _mm256_setzero_si256();
    const __m256i c0 = block_codes(type, p, &d0, &m0, &qh0);
    if (second) c1 = block_codes(type, p + block, &d1, &m1, &qh1);
    *u = _mm512_inserti64x4(_mm512_castsi256_si512(c0), c1, 1);
    if (type == RWKVX_TYPE_Q5_0 || type == RWKVX_TYPE_Q5_1) /* the fifth bit: +16 where set */
        *u = _mm512_mask_add_epi8(*u, (__mmask64)(qh0 | ((uint64_t)qh1 << 32)), *u, _mm512_set1_epi8(16));
    *dw = _mm512_insertf32x8(_mm512_set1_ps(d0), _mm256_set1_ps(d1), 1);
    *mw = _mm512_insertf32x8(_mm512_set1_ps(m0), _mm256_set1_ps(m1), 1);
}

/* y[t][o + r] for nr <= ROW_TILE rows starting at `row` and nt <= Q_TOKEN_TILE tokens from t0. */
FORCE_INLINE void q8_tile(int type, const uint8_t *row, size_t row_bytes, int nr, const rwkvx_q8_acts *x,
                          int64_t t0, int nt, float *y, int64_t ldy, int64_t o) {
    const int has_m = type == RWKVX_TYPE_Q4_1 || type == RWKVX_TYPE_Q5_1;
    const size_t block = rwkvx_row_bytes(type, RWKVX_QK);
    const int64_t nb = x->n_blocks, stride = x->stride_blocks;
    __m512 acc[ROW_TILE][Q_TOKEN_TILE];
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b += 2) {
        __m512i u[ROW_TILE];
        __m512 dw[ROW_TILE], mw[ROW_TILE];
        for (int r = 0; r < nr; r++)
            decode_pair(type, row + r * row_bytes + b * block, block, b + 1 < nb, &u[r], &dw[r], &mw[r]);
        for (int t = 0; t < nt; t++) {
            const int64_t i = (t0 + t) * stride + b; /* even: every load below is 64-byte aligned */
            const __m512i xq = _mm512_load_si512(x->qs + i * RWKVX_QK);
            const __m512 dx = _mm512_load_ps(x->dv + i * 8);
            const __m512i aux = _mm512_load_si512(x->aux + i * 8);
            for (int r = 0; r < nr; r++) {
                const __m512i lanes = _mm512_dpbusd_epi32(has_m ? _mm512_setzero_si512() : aux, u[r], xq);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), _mm512_mul_ps(dw[r], dx), acc[r][t]);
                if (has_m) acc[r][t] = _mm512_fmadd_ps(mw[r], _mm512_castsi512_ps(aux), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) y[(t0 + t) * ldy + o + r] = _mm512_reduce_add_ps(acc[r][t]);
}

FORCE_INLINE void q8_typed(int type, const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    const size_t rb = rwkvx_row_bytes(type, (size_t)w->n_in);
    const uint8_t *data = w->data;
    const int64_t T = x->n_tokens;
    int64_t o = 0;
    for (; o + ROW_TILE <= w->n_rows; o += ROW_TILE) {
        int64_t t0 = 0;
        for (; t0 + Q_TOKEN_TILE <= T; t0 += Q_TOKEN_TILE)
            q8_tile(type, data + o * rb, rb, ROW_TILE, x, t0, Q_TOKEN_TILE, y, ldy, o);
        switch (T - t0) { /* constant tile sizes keep the accumulators in registers */
        case 3: q8_tile(type, data + o * rb, rb, ROW_TILE, x, t0, 3, y, ldy, o); break;
        case 2: q8_tile(type, data + o * rb, rb, ROW_TILE, x, t0, 2, y, ldy, o); break;
        case 1: q8_tile(type, data + o * rb, rb, ROW_TILE, x, t0, 1, y, ldy, o); break;
        default: break;
        }
    }
    for (; o < w->n_rows; o++)
        for (int64_t t0 = 0; t0 < T; t0++) q8_tile(type, data + o * rb, rb, 1, x, t0, 1, y, ldy, o);
}

void rwkvx_matmul_q8_avx512(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    switch (w->type) {
    case RWKVX_TYPE_Q8_0: q8_typed(RWKVX_TYPE_Q8_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_1: q8_typed(RWKVX_TYPE_Q5_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_0: q8_typed(RWKVX_TYPE_Q5_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_1: q8_typed(RWKVX_TYPE_Q4_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_0: q8_typed(RWKVX_TYPE_Q4_0, w, x, y, ldy); return;
    default: rwkvx_matmul_q8_ref(w, x, y, ldy); return; /* F32/F16 never come here */
    }
}
