/* AVX2 (+ FMA, F16C) matrix products for every weight type.
 *
 * F32/F16 (this part): same structure as matmul_avx512.c: each 32-weight block
 * is converted into four 8-float vectors, then multiplied into float32
 * activations. Quantized types: integer products, second half of this file. Four accumulators per token, a zero-padded partial block for
 * F32/F16 rows whose length is not a multiple of 32, one fixed reduction:
 * every output element is computed the same way whatever the token count.
 * Tiles of TOKEN_TILE tokens share each decoded block (16 ymm registers allow 2), or at one token
 * two rows of more than F2_PAIR_MIN_INPUTS inputs share each load of the activations.
 * All loads are unaligned (weights sit at arbitrary offsets in the mmap).
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define TOKEN_TILE 2
#define FORCE_INLINE static inline __attribute__((always_inline))

/* Bytes ahead of the float products' stream prefetched into L1 and into L2. Measured on an AMD EPYC
 * (Zen 3; 2 processes at once, each one thread over its own 100 MB F16 matrix of 768-weight rows,
 * GB/s summed over 3 rounds): 1024/4096 (the AVX-512 kernels' distances) 24.7-27.5, 2048/4096
 * 23.7-27.4, none 26.8-28.1, 128/512 28.8-32.1, 256/1024 27.4-34.6, 320/1024 29.5-36.5: that
 * machine's own prefetchers follow the stream, and far prefetches only compete with them. */
#ifndef F2_PREFETCH_L1_BYTES
#define F2_PREFETCH_L1_BYTES 256
#endif
#ifndef F2_PREFETCH_L2_BYTES
#define F2_PREFETCH_L2_BYTES 1024
#endif

FORCE_INLINE size_t block_bytes(int type) {
    return type == RWKVX_TYPE_F32 ? 128 : type == RWKVX_TYPE_F16 ? 64 : rwkvx_row_bytes(type, RWKVX_QK);
}

FORCE_INLINE float load_half_f32(const uint8_t *p) { return _cvtsh_ss(rwkvx_load_half(p)); }

/* Decode one F32/F16 block at p into w[0..3] (elements 0-7, 8-15, 16-23, 24-31). */
FORCE_INLINE void decode_block(int type, const uint8_t *p, __m256 w[4]) {
    if (type == RWKVX_TYPE_F32)
        for (int k = 0; k < 4; k++) w[k] = _mm256_loadu_ps((const float *)p + 8 * k);
    else
        for (int k = 0; k < 4; k++) w[k] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * k)));
}

FORCE_INLINE float reduce8(__m256 v) {
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* reduce8 of v[0..7] at once, into lanes 0..7: each lane's sum takes reduce8's additions in its order
 * (halves, then lanes 0+2 and 1+3, then those two), so lane i equals reduce8(v[i]) bit for bit. */
FORCE_INLINE __m256 reduce8x8(const __m256 v[8]) {
    __m256 s4[4]; /* [the 4 sums of v[i]'s halves | those of v[i + 4]'s] */
    for (int i = 0; i < 4; i++)
        s4[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[i], v[i + 4], 0x20), _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
    /* [lanes 0+2, 1+3 of s4[a]; the same of s4[b]], in each 128-bit half */
    const __m256 s2_01 = _mm256_add_ps(_mm256_shuffle_ps(s4[0], s4[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                       _mm256_shuffle_ps(s4[0], s4[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 s2_23 = _mm256_add_ps(_mm256_shuffle_ps(s4[2], s4[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                       _mm256_shuffle_ps(s4[2], s4[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_shuffle_ps(s2_01, s2_23, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm256_shuffle_ps(s2_01, s2_23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* sums[r * nt + t]: the 8 lanes whose sum (reduce8) is row r . x[t], for nr rows (rb bytes apart) and nt
 * tokens (x rows ldx floats apart), nr * nt <= 2: two tokens share each decoded block, or at one token two
 * rows share each load of the activations. Every (row, token) gets the same operations in any tile. */
FORCE_INLINE void dot_tile_lanes(int type, const uint8_t *rows, size_t rb, int nr, int64_t n, const float *x,
                                 int64_t ldx, int nt, __m256 *sums) {
    const size_t bb = block_bytes(type);
    const int64_t n_blocks = n / RWKVX_QK;
    __m256 acc[2][4];
    for (int s = 0; s < nr * nt; s++)
        for (int k = 0; k < 4; k++) acc[s][k] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        for (int r = 0; r < nr; r++) {
            const uint8_t *row = rows + r * rb;
            /* the rows lie back to back: a row's stream is prefetched past its end into the next row */
            for (size_t line = 0; line < bb; line += 64) {
                _mm_prefetch((const char *)(row + b * bb + line + F2_PREFETCH_L1_BYTES), _MM_HINT_T0);
                _mm_prefetch((const char *)(row + b * bb + line + F2_PREFETCH_L2_BYTES), _MM_HINT_T1);
            }
            __m256 w[4];
            decode_block(type, row + b * bb, w);
            for (int t = 0; t < nt; t++) {
                const float *xt = x + t * ldx + b * RWKVX_QK;
                for (int k = 0; k < 4; k++)
                    acc[r * nt + t][k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xt + 8 * k), acc[r * nt + t][k]);
            }
        }
    }
    /* F32/F16 rows may end in a partial block: decode it from a zero-padded copy. */
    const int64_t rest = (type == RWKVX_TYPE_F32 || type == RWKVX_TYPE_F16) ? n - n_blocks * RWKVX_QK : 0;
    if (rest > 0)
        for (int r = 0; r < nr; r++) {
            uint8_t padded[128] = {0};
            memcpy(padded, rows + r * rb + n_blocks * bb, (size_t)rest * (type == RWKVX_TYPE_F32 ? 4 : 2));
            __m256 w[4];
            decode_block(type, padded, w);
            for (int t = 0; t < nt; t++) {
                float xpad[RWKVX_QK] = {0};
                memcpy(xpad, x + t * ldx + n_blocks * RWKVX_QK, (size_t)rest * sizeof(float));
                for (int k = 0; k < 4; k++)
                    acc[r * nt + t][k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xpad + 8 * k), acc[r * nt + t][k]);
            }
        }
    for (int s = 0; s < nr * nt; s++)
        sums[s] = _mm256_add_ps(_mm256_add_ps(acc[s][0], acc[s][2]), _mm256_add_ps(acc[s][1], acc[s][3]));
}

/* out[r * nt + t] = row r . x[t] (dot_tile_lanes, reduced). */
FORCE_INLINE void dot_tile(int type, const uint8_t *rows, size_t rb, int nr, int64_t n, const float *x, int64_t ldx,
                           int nt, float *out) {
    __m256 sums[2];
    dot_tile_lanes(type, rows, rb, nr, n, x, ldx, nt, sums);
    for (int s = 0; s < nr * nt; s++) out[s] = reduce8(sums[s]);
}

/* One row against nt <= TOKEN_TILE tokens (dot_tile_lanes), the tile size made a constant so that the
 * accumulators stay in registers; sums[t] for t >= nt are zero. */
FORCE_INLINE void row_tokens_lanes(int type, const uint8_t *row, size_t rb, int64_t n, const float *x, int64_t ldx,
                                   int nt, __m256 sums[TOKEN_TILE]) {
    for (int t = 0; t < TOKEN_TILE; t++) sums[t] = _mm256_setzero_ps();
    if (nt == 2)
        dot_tile_lanes(type, row, rb, 1, n, x, ldx, 2, sums);
    else
        dot_tile_lanes(type, row, rb, 1, n, x, ldx, 1, sums);
}

/* y[t][o..o+8) for tokens [0, n_tokens): 8 rows against every token, a pair of tokens at a time, the
 * 8 rows' lanes of a token reduced together (reduce8x8) and stored as one vector. The 8 rows (12 KB
 * of F16 at 768 inputs) stay in L1 while the tokens pass; per output the same floats as dot_tile. */
FORCE_INLINE void band8_all_tokens(int type, const uint8_t *rows, size_t rb, int64_t n, const float *x, int64_t ldx,
                                   int64_t n_tokens, float *y, int64_t ldy) {
    for (int64_t t0 = 0; t0 < n_tokens; t0 += TOKEN_TILE) {
        const int nt = n_tokens - t0 >= TOKEN_TILE ? TOKEN_TILE : (int)(n_tokens - t0);
        __m256 lanes[TOKEN_TILE][8];
        for (int r = 0; r < 8; r++) {
            __m256 sums[TOKEN_TILE];
            row_tokens_lanes(type, rows + r * rb, rb, n, x + t0 * ldx, ldx, nt, sums);
            for (int t = 0; t < nt; t++) lanes[t][r] = sums[t];
        }
        for (int t = 0; t < nt; t++) _mm256_storeu_ps(y + (t0 + t) * ldy, reduce8x8(lanes[t]));
    }
}

/* At one token, rows longer than this many inputs are read two at a time, sharing each load of the
 * activations, which at 32 KB (v7 1.5B's FFN value rows: 8192 inputs) no longer stay in L1 beside the
 * stream of weights. On an AMD EPYC (Zen 4), product time over a plain read's of the same bytes, 2
 * threads, medians of 30 passes alternating with the reads: F16 8192 x 6144 1.61-2.34 one row at a
 * time, 1.33-1.43 two; but F16 3072 x 16384 1.17-1.32 one, 1.38-1.53 two. */
#define F2_PAIR_MIN_INPUTS 4096

FORCE_INLINE void matmul_typed(int type, const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t n_tokens,
                               float *y, int64_t ldy) {
    const int64_t n = w->n_in;
    const size_t rb = rwkvx_row_bytes(type, (size_t)n);
    const uint8_t *data = w->data;
    int64_t o = 0;
    if (n_tokens == 1 && n > F2_PAIR_MIN_INPUTS)
        for (; o + 2 <= w->n_rows; o += 2) {
            float out[2];
            dot_tile(type, data + (size_t)o * rb, rb, 2, n, x, ldx, 1, out);
            y[o] = out[0];
            y[o + 1] = out[1];
        }
    if (n_tokens > 1)
        for (; o + 8 <= w->n_rows; o += 8) band8_all_tokens(type, data + (size_t)o * rb, rb, n, x, ldx, n_tokens, y + o, ldy);
    for (; o < w->n_rows; o++) {
        const uint8_t *row = data + (size_t)o * rb;
        for (int64_t t0 = 0; t0 < n_tokens; t0 += TOKEN_TILE) {
            const int nt = n_tokens - t0 >= TOKEN_TILE ? TOKEN_TILE : (int)(n_tokens - t0);
            __m256 sums[TOKEN_TILE];
            row_tokens_lanes(type, row, rb, n, x + t0 * ldx, ldx, nt, sums);
            for (int t = 0; t < nt; t++) y[(t0 + t) * ldy + o] = reduce8(sums[t]);
        }
    }
}

void rwkvx_matmul_avx2(const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t n_tokens, float *y,
                       int64_t ldy) {
    switch (w->type) {
    case RWKVX_TYPE_F32: matmul_typed(RWKVX_TYPE_F32, w, x, ldx, n_tokens, y, ldy); return;
    case RWKVX_TYPE_F16: matmul_typed(RWKVX_TYPE_F16, w, x, ldx, n_tokens, y, ldy); return;
    default: rwkvx_matmul_via_q8(rwkvx_matmul_q8_avx2, w, x, ldx, n_tokens, y, ldy); return;
    }
}

/* ---- integer products for quantized weights ------------------------------------
 *
 * One block per ymm. vpmaddubsw multiplies unsigned by signed bytes into int16
 * pairs, vpmaddwd with ones sums those into 8 int32 lanes. Pairs must not
 * saturate: 4/5-bit codes u <= 31 give |pair| <= 2*31*127; Q8_0 codes use the
 * sign trick instead (|q_w| as unsigned, q_x carrying q_w's sign; |pair| <=
 * 2*128*127 < 32767), which needs no offset correction. For Q4_0/Q5_0 the aux
 * lanes (-offset * sum(q_x) in lane 0) are added, so a block's lanes sum to the
 * signed integer dot exactly as the scalar reference computes it. Lanes are
 * converted to float, scaled by d_w * d_x, accumulated; _1 types add m_w * s_x.
 * Tiles of ROW_TILE rows x Q_TOKEN_TILE tokens, same per-element operations
 * whatever the tile.
 */

#define ROW_TILE 2
#define Q_TOKEN_TILE 2
/* Each row's stream prefetched into L1 Q2_PREFETCH_L1_BYTES ahead and into L2 Q2_PREFETCH_L2_BYTES
 * ahead, every other block (a block is 18-34 bytes): without it the rows' streams wait on memory
 * latency. Measured on v7 1.5B Q4_0 without logits (2 threads, the AVX2 level on an AVX-512 machine):
 * 83 ms a token without, 61 with L1 only, 45-52 with both (distances 512-1024 and 2-5 KB all within
 * the machine's noise). */
#ifndef Q2_PREFETCH_L1_BYTES
#define Q2_PREFETCH_L1_BYTES 768
#endif
#ifndef Q2_PREFETCH_L2_BYTES
#define Q2_PREFETCH_L2_BYTES 4096
#endif

FORCE_INLINE __m256i nibble_codes(const uint8_t *qs) {
    const __m128i q = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0f);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(q, mask)),
                                   _mm_and_si128(_mm_srli_epi16(q, 4), mask), 1);
}

/* Byte j = 16 where bit j of qh is set, else 0. */
FORCE_INLINE __m256i high_bits_16(const uint8_t *qh_p) {
    uint32_t qh;
    memcpy(&qh, qh_p, 4); /* little-endian, as rwkvx_load_qh reads it */
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int32_t)qh),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((int64_t)0x8040201008040201ull);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(16));
}

/* One block of a row: codes (unsigned; Q8_0: signed q_w), d, m. */
FORCE_INLINE __m256i block_codes(int type, const uint8_t *p, __m256 *d, __m256 *m) {
    *d = _mm256_set1_ps(load_half_f32(p));
    *m = _mm256_setzero_ps();
    switch (type) {
    case RWKVX_TYPE_Q8_0: return _mm256_loadu_si256((const __m256i *)(p + 2));
    case RWKVX_TYPE_Q4_0: return nibble_codes(p + 2);
    case RWKVX_TYPE_Q4_1: *m = _mm256_set1_ps(load_half_f32(p + 2)); return nibble_codes(p + 4);
    case RWKVX_TYPE_Q5_0: return _mm256_or_si256(nibble_codes(p + 6), high_bits_16(p + 2));
    default: /* Q5_1 */
        *m = _mm256_set1_ps(load_half_f32(p + 2));
        return _mm256_or_si256(nibble_codes(p + 8), high_bits_16(p + 4));
    }
}

FORCE_INLINE void q8_tile(int type, const uint8_t *row, size_t row_bytes, int nr, const rwkvx_q8_acts *x,
                          int64_t t0, int nt, float *y, int64_t ldy, int64_t o) {
    const int has_m = type == RWKVX_TYPE_Q4_1 || type == RWKVX_TYPE_Q5_1;
    const size_t block = rwkvx_row_bytes(type, RWKVX_QK);
    const int64_t nb = x->n_blocks, stride = x->stride_blocks;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[ROW_TILE][Q_TOKEN_TILE];
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i u[ROW_TILE];
        __m256 dw[ROW_TILE], mw[ROW_TILE];
        for (int r = 0; r < nr; r++) {
            const uint8_t *p = row + r * row_bytes + b * block;
            if (b % 2 == 0) {
                _mm_prefetch((const char *)(p + Q2_PREFETCH_L1_BYTES), _MM_HINT_T0);
                _mm_prefetch((const char *)(p + Q2_PREFETCH_L2_BYTES), _MM_HINT_T1);
            }
            u[r] = block_codes(type, p, &dw[r], &mw[r]);
        }
        for (int t = 0; t < nt; t++) {
            const int64_t i = (t0 + t) * stride + b; /* every load below is 32-byte aligned */
            const __m256i xq = _mm256_load_si256((const __m256i *)(x->qs + i * RWKVX_QK));
            const __m256 dx = _mm256_load_ps(x->dv_lanes + i * 8);
            const __m256i aux = _mm256_load_si256((const __m256i *)(x->aux_lanes + i * 8));
            for (int r = 0; r < nr; r++) {
                __m256i lanes;
                if (type == RWKVX_TYPE_Q8_0)
                    lanes = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_sign_epi8(u[r], u[r]), _mm256_sign_epi8(xq, u[r])), ones);
                else
                    lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(u[r], xq), ones);
                if (type == RWKVX_TYPE_Q4_0 || type == RWKVX_TYPE_Q5_0) lanes = _mm256_add_epi32(lanes, aux);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_mul_ps(dw[r], dx), acc[r][t]);
                if (has_m) acc[r][t] = _mm256_fmadd_ps(mw[r], _mm256_castsi256_ps(aux), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) y[(t0 + t) * ldy + o + r] = reduce8(acc[r][t]);
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
        if (t0 < T) q8_tile(type, data + o * rb, rb, ROW_TILE, x, t0, 1, y, ldy, o);
    }
    for (; o < w->n_rows; o++)
        for (int64_t t0 = 0; t0 < T; t0++) q8_tile(type, data + o * rb, rb, 1, x, t0, 1, y, ldy, o);
}

void rwkvx_matmul_q8_avx2(const rwkvx_tensor *w, const rwkvx_q8_acts *x, float *y, int64_t ldy) {
    switch (w->type) {
    case RWKVX_TYPE_Q8_0: q8_typed(RWKVX_TYPE_Q8_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_1: q8_typed(RWKVX_TYPE_Q5_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q5_0: q8_typed(RWKVX_TYPE_Q5_0, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_1: q8_typed(RWKVX_TYPE_Q4_1, w, x, y, ldy); return;
    case RWKVX_TYPE_Q4_0: q8_typed(RWKVX_TYPE_Q4_0, w, x, y, ldy); return;
    default: rwkvx_matmul_q8_ref(w, x, y, ldy); return; /* F32/F16 never come here */
    }
}
