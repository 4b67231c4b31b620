/* AVX-512 (F, BW, VL, DQ, VNNI + F16C) matrix products for every weight type.
 *
 * Same contract as rwkvx_matmul_ref. F32/F16 (this part): a tile of up to
 * F_ROWS rows x F_TOKENS tokens keeps two accumulators per output (even and odd
 * 16-element steps); each step loads 16 weights of every row of the tile (F16
 * converted) and 16 activations of every token, and does a multiply-add for
 * every (row, token) pair, so loaded vectors are shared and the loop runs near
 * the multiply-add rate. The last step of a row whose length is not a multiple
 * of 16 is masked (the missing lanes read as zero). The accumulators of a tile
 * are then reduced together by one transpose-and-add tree (rwkvx_reduce16), which
 * adds the lanes of each output in the same fixed order whoever shares its tile.
 *
 * So one output y[t][o] is always the same sequence of operations, whatever
 * the tile it falls in: the result does not depend on how many tokens a call
 * carries (sequence mode equals serial decoding bit for bit). At one token the
 * tile's 4 rows are 4 independent multiply-add chains and 4 streams of weights.
 * Quantized types: integer products with VNNI, see the second half of this file.
 *
 * Weights sit at arbitrary byte offsets in the memory-mapped file: every load
 * is unaligned.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "reduce16_avx512.h"

#define F_ROWS 4
#define F_TOKENS 2 /* 4 rows x 2 tokens x 2 accumulators: 16 of the 32 vector registers */
/* Bytes ahead of the weights being read that the float products prefetch, per
 * row: a core's own out-of-order window keeps too few lines in flight for its
 * streams to reach memory bandwidth. Prefetches never change a result. */
#ifndef F_PREFETCH_BYTES
#define F_PREFETCH_BYTES 1024
#endif
/* ...and, into L2 only, further ahead: more lines in flight than the L1's fill buffers
 * allow (as in matmul_packed_avx512.c; measured on the v7 1.5B head and low-rank shapes). */
#ifndef F_PREFETCH_L2_BYTES
#define F_PREFETCH_L2_BYTES 4096
#endif
/* At one token, rows of F_STREAM_MIN_INPUTS to F_STREAM_MAX_INPUTS inputs are read one after the
 * other, one row per tile, as one sequential stream prefetched F_STREAM_PREFETCH_BYTES into L1 and
 * F_STREAM_PREFETCH_L2_BYTES into L2 ahead. Four rows of 1.5 KB side by side (the v7 0.1B head) are
 * four short streams that restart every 6 KB: on an AMD EPYC (Zen 4) they read at 1.32-1.43x the
 * time of a plain read of the same bytes, one row at a time at 1.04-1.07x (harness, 2 threads,
 * F16 768 x 65536, medians of 30-40 passes alternating with the reads). With longer rows the
 * activations no longer stay in L1 beside the stream, and four rows per tile share each load of
 * them (8192 inputs: one row at a time 1.43-1.69x, four 1.10-1.24x); with shorter ones the
 * reduction of each tile's sums dominates, and one per row costs more than the stream gains (64
 * inputs: 2.5-2.8x against 1.7-1.9x). Per output the operations are the same in any tile, so the
 * results are too. */
#ifndef F_STREAM_MIN_INPUTS
#define F_STREAM_MIN_INPUTS 256
#endif
#ifndef F_STREAM_MAX_INPUTS
#define F_STREAM_MAX_INPUTS 2048
#endif
#ifndef F_STREAM_PREFETCH_BYTES
#define F_STREAM_PREFETCH_BYTES 512
#endif
#ifndef F_STREAM_PREFETCH_L2_BYTES
#define F_STREAM_PREFETCH_L2_BYTES 2048
#endif
#define FORCE_INLINE static inline __attribute__((always_inline))

/* 16 weights of an F32/F16 row from element i; lanes outside m read as zero. */
FORCE_INLINE __m512 load_weights(int type, const uint8_t *row, int64_t i, __mmask16 m) {
    if (type == RWKVX_TYPE_F32) return _mm512_maskz_loadu_ps(m, row + 4 * i);
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * i));
}

FORCE_INLINE __m512 load_weights_full(int type, const uint8_t *row, int64_t i) {
    if (type == RWKVX_TYPE_F32) return _mm512_loadu_ps(row + 4 * i);
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 2 * i)));
}

/* Where row r of a tile stands `ahead` bytes further on: past the row's end, the same row of
 * a following tile (tiles of nr rows advance together), so the next tiles' streams start warm.
 * Past the matrix the address is never read, and a prefetch of it is harmless. */
FORCE_INLINE const uint8_t *ahead_in_row(const uint8_t *rows, size_t rb, int nr, int r, size_t ahead) {
    const size_t tiles = ahead / rb;
    return rows + (tiles * (size_t)nr + (size_t)r) * rb + (ahead - tiles * rb);
}

/* y[t][o + r] for nr <= F_ROWS rows from `rows` (rb bytes apart) and nt <= F_TOKENS tokens. Two
 * accumulators per output (even and odd steps): at one token the 4 rows' chains alone would leave the
 * multiply-add units waiting on their latency. */
FORCE_INLINE void float_tile(int type, const uint8_t *rows, size_t rb, int nr, const float *x, int64_t ldx, int nt,
                             int64_t n, float *y, int64_t ldy, size_t near_bytes, size_t far_bytes) {
    __m512 even[16], odd[16]; /* [4t + r]: two per output */
    for (int k = 0; k < 16; k++) even[k] = odd[k] = _mm512_setzero_ps();
    const size_t step_bytes = type == RWKVX_TYPE_F32 ? 64 : 32;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 w0[F_ROWS], w1[F_ROWS];
        const size_t done = (size_t)i / 16 * step_bytes;
        for (int r = 0; r < nr; r++) {
            const uint8_t *row = rows + r * rb;
            if (near_bytes != 0) { /* 0: the rows are in the caches already */
                const uint8_t *near = ahead_in_row(rows, rb, nr, r, done + near_bytes);
                const uint8_t *far = ahead_in_row(rows, rb, nr, r, done + far_bytes);
                _mm_prefetch((const char *)near, _MM_HINT_T0);
                _mm_prefetch((const char *)far, _MM_HINT_T1);
                if (type == RWKVX_TYPE_F32) {
                    _mm_prefetch((const char *)(near + 64), _MM_HINT_T0);
                    _mm_prefetch((const char *)(far + 64), _MM_HINT_T1);
                }
            }
            w0[r] = load_weights_full(type, row, i);
            w1[r] = load_weights_full(type, row, i + 16);
        }
        for (int t = 0; t < nt; t++) {
            const __m512 x0 = _mm512_loadu_ps(x + t * ldx + i), x1 = _mm512_loadu_ps(x + t * ldx + i + 16);
            for (int r = 0; r < nr; r++) {
                even[4 * t + r] = _mm512_fmadd_ps(w0[r], x0, even[4 * t + r]);
                odd[4 * t + r] = _mm512_fmadd_ps(w1[r], x1, odd[4 * t + r]);
            }
        }
    }
    for (; i < n; i += 16) { /* a last step or two, the very last one masked */
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 w[F_ROWS];
        for (int r = 0; r < nr; r++) w[r] = load_weights(type, rows + r * rb, i, m);
        for (int t = 0; t < nt; t++) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * ldx + i);
            for (int r = 0; r < nr; r++) even[4 * t + r] = _mm512_fmadd_ps(w[r], xv, even[4 * t + r]);
        }
    }
    for (int k = 0; k < 16; k++) even[k] = _mm512_add_ps(even[k], odd[k]);
    float out[16];
    _mm512_storeu_ps(out, rwkvx_reduce16(even));
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++) y[t * ldy + r] = out[4 * t + r];
}

/* Rows [o, o + nr) against every token, in tiles of F_TOKENS (nr a constant). */
FORCE_INLINE void float_row_group(int type, const uint8_t *rows, size_t rb, int nr, const float *x, int64_t ldx,
                                  int64_t T, int64_t n, float *y, int64_t ldy) {
    /* the first tile of tokens reads the rows from memory; the others find them in the caches, where
     * prefetching them again would only cost the address arithmetic */
    int64_t t0 = 0;
    if (T >= F_TOKENS) {
        float_tile(type, rows, rb, nr, x, ldx, F_TOKENS, n, y, ldy, F_PREFETCH_BYTES, F_PREFETCH_L2_BYTES);
        t0 = F_TOKENS;
    }
    for (; t0 + F_TOKENS <= T; t0 += F_TOKENS)
        float_tile(type, rows, rb, nr, x + t0 * ldx, ldx, F_TOKENS, n, y + t0 * ldy, ldy, 0, 0);
    if (T - t0 == 1)
        float_tile(type, rows, rb, nr, x + t0 * ldx, ldx, 1, n, y + t0 * ldy, ldy, T == 1 ? F_PREFETCH_BYTES : 0,
                   F_PREFETCH_L2_BYTES);
}

FORCE_INLINE void matmul_typed(int type, const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t n_tokens,
                               float *y, int64_t ldy) {
    const int64_t n = w->n_in;
    const size_t rb = rwkvx_row_bytes(type, (size_t)n);
    const uint8_t *data = w->data;
    if (n_tokens == 1 && n >= F_STREAM_MIN_INPUTS && n <= F_STREAM_MAX_INPUTS) {
        for (int64_t o = 0; o < w->n_rows; o++)
            float_tile(type, data + o * rb, rb, 1, x, ldx, 1, n, y + o, ldy, F_STREAM_PREFETCH_BYTES,
                       F_STREAM_PREFETCH_L2_BYTES);
        return;
    }
    int64_t o = 0;
    for (; o + F_ROWS <= w->n_rows; o += F_ROWS)
        float_row_group(type, data + o * rb, rb, F_ROWS, x, ldx, n_tokens, n, y + o, ldy);
    switch (w->n_rows - o) {
    case 3: float_row_group(type, data + o * rb, rb, 3, x, ldx, n_tokens, n, y + o, ldy); break;
    case 2: float_row_group(type, data + o * rb, rb, 2, x, ldx, n_tokens, n, y + o, ldy); break;
    case 1: float_row_group(type, data + o * rb, rb, 1, x, ldx, n_tokens, n, y + o, ldy); break;
    default: break;
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
 * rows x Q_TOKEN_TILE tokens decodes each weight pair once per tile and loads each
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
#ifndef Q_PREFETCH_L2_BYTES
#define Q_PREFETCH_L2_BYTES 4096 /* and into L2 only, further ahead (as the packed products) */
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
            _mm_prefetch((const char *)(row + r * row_bytes + b * block + Q_PREFETCH_L2_BYTES), _MM_HINT_T1);
            decode_pair(type, row + r * row_bytes + b * block, block, b + 1 < nb, &u[r], &dw[r], &mw[r]);
        }
        for (int t = 0; t < nt; t++) {
            const int64_t i = (t0 + t) * stride + b; /* even: every load below is 64-byte aligned */
            const __m512i xq = _mm512_load_si512(x->qs + i * RWKVX_QK);
            const __m512 dx = _mm512_load_ps(x->dv_lanes + i * 8);
            const __m512i aux = _mm512_load_si512(x->aux_lanes + i * 8);
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
