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
/* Bytes ahead of the weights being read that the float products prefetch: a
 * core's own out-of-order window keeps too few lines in flight for one stream
 * to reach memory bandwidth. Prefetches never change a result. */
#ifndef F_PREFETCH_BYTES
#define F_PREFETCH_BYTES 2048
#endif
#define FORCE_INLINE static inline __attribute__((always_inline))

/* Bytes holding one 32-weight block of a type (F32/F16: 32 plain values). */
FORCE_INLINE size_t block_bytes(int type) {
    return type == RWKVX_TYPE_F32 ? 128 : type == RWKVX_TYPE_F16 ? 64 : rwkvx_row_bytes(type, RWKVX_QK);
}

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
        for (size_t line = 0; line < 2 * bb; line += 64) /* see F_PREFETCH_BYTES */
            _mm_prefetch((const char *)(row + b * bb + F_PREFETCH_BYTES + line), _MM_HINT_T0);
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

/* 4 x 4 accumulators: each decoded weight pair serves 4 tokens and each loaded
 * activation pair 4 rows, so per 64 multiply-adds of a (row, token) there is
 * under one load besides the four arithmetic instructions. */
#ifndef ROW_TILE
#define ROW_TILE 4
#endif
#ifndef Q_TOKEN_TILE
#define Q_TOKEN_TILE 4
#endif
#ifndef Q_PREFETCH_BYTES
#define Q_PREFETCH_BYTES 768 /* ahead of each row's current pair (tuned on the 4096-wide products) */
#endif

/* 32 nibble codes of each of two blocks (qs0, and qs1 or zeros) as one zmm:
 * [qs0 & 15, qs0 >> 4, qs1 & 15, qs1 >> 4]. Each 16-byte half is broadcast
 * straight from memory (a load-port operation) and one variable shift per
 * 128-bit lane picks the low or the high nibbles: three arithmetic
 * instructions for 64 codes, since at one token decoding is most of the work. */
FORCE_INLINE __m512i nibble_codes_pair(const uint8_t *qs0, const uint8_t *qs1, int second) {
    const __m256i b0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs0));
    const __m256i b1 = second ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs1))
                              : _mm256_setzero_si256();
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(b0), b1, 1);
    const __m512i shifts = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
    return _mm512_and_si512(_mm512_srlv_epi64(both, shifts), _mm512_set1_epi8(0x0f));
}

FORCE_INLINE uint64_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* little-endian, as rwkvx_load_qh reads it */
    return v;
}

/* Byte offset of the codes (qs) in a block, and of qh for the Q5 types. */
FORCE_INLINE size_t codes_offset(int type) {
    switch (type) {
    case RWKVX_TYPE_Q8_0: return 2;
    case RWKVX_TYPE_Q4_0: return 2;
    case RWKVX_TYPE_Q4_1: return 4;
    case RWKVX_TYPE_Q5_0: return 6;
    default: return 8; /* Q5_1 */
    }
}

/* Blocks b and (if `second`) b+1 of a row: codes u, [d_b x8, d_b+1 x8], [m_b x8, m_b+1 x8].
 * The scales of both blocks (d, or d and m: the first 2 or 4 bytes of a block) are
 * converted by one vcvtph2ps and spread by permutes: decoding a pair is the whole
 * cost of a one-token product beside the integer dots. A missing second block
 * reads as zero codes and zero scales (nothing past the row is touched). */
FORCE_INLINE void decode_pair(int type, const uint8_t *p, size_t block, int second, __m512i *u, __m512 *dw,
                              __m512 *mw) {
    const int has_m = type == RWKVX_TYPE_Q4_1 || type == RWKVX_TYPE_Q5_1;
    const size_t qs = codes_offset(type);
    if (type == RWKVX_TYPE_Q8_0) { /* signed bytes + 128 (xor of the sign bit): unsigned codes */
        const __m256i c1 = second ? _mm256_loadu_si256((const __m256i *)(p + block + qs)) : _mm256_set1_epi8((char)0x80);
        *u = _mm512_xor_si512(
            _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + qs))), c1, 1),
            _mm512_set1_epi8((char)0x80));
    } else {
        *u = nibble_codes_pair(p + qs, p + block + qs, second);
    }
    if (type == RWKVX_TYPE_Q5_0 || type == RWKVX_TYPE_Q5_1) { /* the fifth bit: +16 where set */
        const size_t qh_at = qs - 4;
        const uint64_t qh0 = load_u32(p + qh_at), qh1 = second ? load_u32(p + block + qh_at) : 0;
        *u = _mm512_mask_add_epi8(*u, (__mmask64)(qh0 | (qh1 << 32)), *u, _mm512_set1_epi8(16));
    }
    if (has_m) { /* halves [d0, m0, d1, m1] */
        const uint32_t s0 = (uint32_t)load_u32(p), s1 = second ? (uint32_t)load_u32(p + block) : 0u;
        const __m512 v = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_set_epi32(0, 0, (int)s1, (int)s0)));
        *dw = _mm512_permutexvar_ps(_mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0), v);
        *mw = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1), v);
    } else { /* halves [d0, d1] */
        uint16_t h0, h1 = 0;
        memcpy(&h0, p, 2);
        if (second) memcpy(&h1, p + block, 2);
        const __m512 v = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)(h0 | ((uint32_t)h1 << 16)))));
        *dw = _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0), v);
        *mw = _mm512_setzero_ps();
    }
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
        for (int r = 0; r < nr; r++) {
            /* rows are separate streams that advance a few dozen bytes per step: without a
             * prefetch the loop waits on memory latency long before it reaches bandwidth */
            _mm_prefetch((const char *)(row + r * row_bytes + b * block + Q_PREFETCH_BYTES), _MM_HINT_T0);
            decode_pair(type, row + r * row_bytes + b * block, block, b + 1 < nb, &u[r], &dw[r], &mw[r]);
        }
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

/* Rows [o, o + nr) against every token, in tiles of Q_TOKEN_TILE (nr a constant). */
FORCE_INLINE void q8_row_group(int type, const uint8_t *rows, size_t rb, int nr, const rwkvx_q8_acts *x, float *y,
                               int64_t ldy, int64_t o) {
    const int64_t T = x->n_tokens;
    int64_t t0 = 0;
    for (; t0 + Q_TOKEN_TILE <= T; t0 += Q_TOKEN_TILE) q8_tile(type, rows, rb, nr, x, t0, Q_TOKEN_TILE, y, ldy, o);
    switch (T - t0) { /* constant tile sizes keep the accumulators in registers */
#if Q_TOKEN_TILE > 4
    case 7: q8_tile(type, rows, rb, nr, x, t0, 7, y, ldy, o); break;
    case 6: q8_tile(type, rows, rb, nr, x, t0, 6, y, ldy, o); break;
    case 5: q8_tile(type, rows, rb, nr, x, t0, 5, y, ldy, o); break;
    case 4: q8_tile(type, rows, rb, nr, x, t0, 4, y, ldy, o); break;
#endif
    case 3: q8_tile(type, rows, rb, nr, x, t0, 3, y, ldy, o); break;
    case 2: q8_tile(type, rows, rb, nr, x, t0, 2, y, ldy, o); break;
    case 1: q8_tile(type, rows, rb, nr, x, t0, 1, y, ldy, o); break;
    default: break;
    }
}

FORCE_INLINE void q8_typed(int type, const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    const size_t rb = rwkvx_row_bytes(type, (size_t)w->n_in);
    const uint8_t *data = w->data;
    int64_t o = 0;
    for (; o + ROW_TILE <= w->n_rows; o += ROW_TILE) q8_row_group(type, data + o * rb, rb, ROW_TILE, x, y, ldy, o);
    switch (w->n_rows - o) {
#if ROW_TILE > 4
#error "ROW_TILE above 4 needs more remainder cases"
#endif
    case 3: q8_row_group(type, data + o * rb, rb, 3, x, y, ldy, o); break;
    case 2: q8_row_group(type, data + o * rb, rb, 2, x, y, ldy, o); break;
    case 1: q8_row_group(type, data + o * rb, rb, 1, x, y, ldy, o); break;
    default: break;
    }
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
