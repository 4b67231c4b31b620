/* AVX2 (+ FMA, F16C) matrix products for every weight type.
 *
 * F32/F16 (this part): every output y[t][o] is one chain of FMAs over its row's 8-weight vectors in
 * order (the last one zero-padded when the row's length is not a multiple of 8), whose 8 lanes are then
 * summed as reduce8 sums them. A tile only decides which rows share each load of the activations and
 * which tokens share each converted vector of weights, never an output's floats: one token at a time
 * and many at once give the same results bit for bit. The FMA latency of a chain is hidden by the
 * tile's other outputs: 4 rows at one token, 4 rows x 2 tokens at more.
 * Quantized types: integer products, second half of this file.
 * All loads are unaligned (weights sit at arbitrary offsets in the mmap).
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define FORCE_INLINE static inline __attribute__((always_inline))

#define TILE_ROWS 4
#define TILE_TOKENS 2 /* 8 accumulators, the 4 rows' vectors and an activation vector: 13 of 16 ymm */

/* At one token (and below QUARTERS_MAX_TOKENS) the 4 rows of a tile come from 4 quarters of the rows,
 * each read front to back, when the rows are at least this many: 4 neighbouring rows read side by side are 4 streams a few hundred
 * bytes apart, which the hardware prefetchers do not follow. On an AMD EPYC (Zen 3), 2 threads: a
 * C read of 200 MB in 16-byte loads took 1.69x one front-to-back stream's time as 4 rows of 1536
 * bytes side by side (1.31x with each row's next band prefetched), 0.89x as 4 quarters; and
 * bench/kernel_vs_read.py's F16 768 x 65536 product against a one-stream read, 3 alternating
 * rounds: 1.24-1.28 with neighbouring rows, 0.89-0.92 with quarters, 1.06-1.10 one row at a time.
 * Down to 16 rows (quarters of 4): a thread's part of v7's low-rank matrices is 16-48 rows (768 x
 * 32-96 on 2 threads), and bench/kernel_vs_read.py, 2 alternating rounds of 21 passes, took F16 768 x
 * 32 / 64 / 96 1.27-1.36 / 1.51-1.60 / 1.45-1.48 of a read with a minimum of 64 rows, 0.99-1.07 /
 * 0.99-1.02 / 0.99 with 16 (768 x 128, quarters either way: 0.92 against 0.94-1.03). */
#define QUARTERS_MIN_ROWS 16
/* Tokens from which a tile's rows are neighbours again: with that many tokens a tile's 6 KB of weights
 * are reused enough that the product is bound by its FMAs, and a band of neighbouring rows is its
 * cheapest order (outputs stored 4 at once). Below, the weights come from memory (the head of a batch
 * of sequences, short prompts) and the quarters stream them. One thread, F16 768 x 16384 from memory
 * (8 copies cycled), median of 64 alternating calls, quarters over neighbours (a first version of this
 * loop): T = 2 / 4 / 8 / 16 / 24 / 32 / 64 0.45 / 0.54 / 0.70 / 0.81 / 0.90 / 0.97 / 1.03, and 1.03-1.16 in
 * the caches (v7 0.1B's low-rank shapes) at 8-32 tokens; this loop over the one before it: 0.44 / - /
 * 0.66-0.71 / 0.89 / 0.93 from memory, 0.96-1.07 in the caches at 33 and 128 tokens. */
#define QUARTERS_MAX_TOKENS 32

/* Bytes ahead of each row's stream prefetched into L1 and into L2. Measured on an AMD EPYC (Zen 3),
 * bench/kernel_vs_read.py (product time over the fastest read's, 2 threads, one token), 3 alternating
 * rounds, F16 768 x 65536 / F16 2048 x 24576 / FP32 768 x 32768: 128/512 0.96-1.00 / 0.95-1.00 /
 * 0.92-1.01, 64/256 0.97-1.04 / 0.99-1.03 / 0.99-1.00, 256/1024 1.02-1.07 / 1.02-1.06 / 1.02-1.16,
 * 512/2048 1.10-1.18 and 1024/4096 1.11-1.40 (all three), none 0.95-1.03 / 0.97-1.00 / 0.87-0.94.
 * With 4 rows' streams the machine's own prefetchers do most of it; near prefetches are kept for
 * machines of longer latency that run this level. */
#ifndef F2_PREFETCH_L1_BYTES
#define F2_PREFETCH_L1_BYTES 128
#endif
#ifndef F2_PREFETCH_L2_BYTES
#define F2_PREFETCH_L2_BYTES 512
#endif

FORCE_INLINE float load_half_f32(const uint8_t *p) { return _cvtsh_ss(rwkvx_load_half(p)); }

/* Weights 8v .. 8v + 7 of an F32/F16 row, as floats. */
FORCE_INLINE __m256 weight_vector(int type, const uint8_t *row, int64_t v) {
    if (type == RWKVX_TYPE_F32) return _mm256_loadu_ps((const float *)row + 8 * v);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 16 * v)));
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

/* acc[t * nr + r] += row[r]'s vector v times token t's (the one step of every output's chain). */
FORCE_INLINE void vector_step(int type, const uint8_t *const row[], int nr, int64_t v, const float *x, int64_t ldx,
                              int nt, __m256 acc[8]) {
    __m256 w[TILE_ROWS];
    for (int r = 0; r < nr; r++) w[r] = weight_vector(type, row[r], v);
    for (int t = 0; t < nt; t++) {
        const __m256 xv = _mm256_loadu_ps(x + t * ldx + 8 * v);
        for (int r = 0; r < nr; r++) acc[t * nr + r] = _mm256_fmadd_ps(w[r], xv, acc[t * nr + r]);
    }
}

/* acc[t * nr + r]: the 8 lanes whose sum (reduce8) is row[r] . x[t], for nr rows of n inputs and nt
 * tokens ldx floats apart, nr * nt <= 8. With `prefetch`, each row's stream is prefetched ahead once
 * per 64-byte line (past a row's end: the next row, where rows lie back to back). */
FORCE_INLINE void tile_lanes(int type, const uint8_t *const row[], int nr, int64_t n, const float *x, int64_t ldx,
                             int nt, int prefetch, __m256 acc[8]) {
    const int64_t n_vectors = n / 8, per_line = type == RWKVX_TYPE_F32 ? 2 : 4;
    for (int s = 0; s < nr * nt; s++) acc[s] = _mm256_setzero_ps();
    int64_t v = 0;
    for (; v + per_line <= n_vectors; v += per_line) { /* a 64-byte line of each row at a time */
        if (prefetch)
            for (int r = 0; r < nr; r++) {
                const char *line = (const char *)row[r] + v * (64 / per_line);
                _mm_prefetch(line + F2_PREFETCH_L1_BYTES, _MM_HINT_T0);
                _mm_prefetch(line + F2_PREFETCH_L2_BYTES, _MM_HINT_T1);
            }
        for (int64_t u = v; u < v + per_line; u++) vector_step(type, row, nr, u, x, ldx, nt, acc);
    }
    for (; v < n_vectors; v++) vector_step(type, row, nr, v, x, ldx, nt, acc);
    const int64_t rest = n - 8 * n_vectors;
    if (rest > 0) {
        /* the last rest weights of each row and activations of each token, zero-padded to a vector */
        const size_t weight_size = type == RWKVX_TYPE_F32 ? 4 : 2;
        for (int r = 0; r < nr; r++) {
            uint8_t wpad[32] = {0};
            memcpy(wpad, row[r] + (size_t)n_vectors * 8 * weight_size, (size_t)rest * weight_size);
            const __m256 wv = weight_vector(type, wpad, 0);
            for (int t = 0; t < nt; t++) {
                float xpad[8] = {0};
                memcpy(xpad, x + t * ldx + 8 * n_vectors, (size_t)rest * sizeof(float));
                acc[t * nr + r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xpad), acc[t * nr + r]);
            }
        }
    }
}

/* A tile's outputs, sums[TILE_ROWS * t + r] for its nt tokens, into y (at the tile's first output), its
 * rows `stride` apart. Inlined with nt a constant, a short row's tile is not slowed by a loop here. */
FORCE_INLINE void store_tile(const float *sums, int nt, float *y, int64_t ldy, int64_t stride) {
    for (int t = 0; t < nt; t++) {
        if (stride == 1)
            memcpy(y + t * ldy, sums + TILE_ROWS * t, sizeof(float) * TILE_ROWS);
        else
            for (int r = 0; r < TILE_ROWS; r++) y[t * ldy + r * stride] = sums[TILE_ROWS * t + r];
    }
}

/* y[t][o] for every row and token. A tile is TILE_ROWS rows: from 4 quarters of the rows (see
 * QUARTERS_MIN_ROWS) when there are at least that many and fewer than QUARTERS_MAX_TOKENS tokens, else
 * neighbours; every token passes over a tile's rows (6 KB of F16 at 768 inputs, in L1) before the
 * next tile, TILE_TOKENS at a time. The rows left over, one at a time. */
FORCE_INLINE void matmul_typed(int type, const rwkvx_tensor *w, const float *x, int64_t ldx, int64_t n_tokens,
                               float *y, int64_t ldy) {
    const int64_t n = w->n_in, n_rows = w->n_rows;
    const size_t rb = rwkvx_row_bytes(type, (size_t)n);
    const uint8_t *data = w->data;
    const int quarters = n_rows >= QUARTERS_MIN_ROWS && n_tokens < QUARTERS_MAX_TOKENS;
    const int64_t tiles = n_rows / TILE_ROWS, stride = quarters ? tiles : 1; /* rows apart within a tile */
    __m256 acc[8];
    float sums[8];
    for (int64_t i = 0; i < tiles; i++) {
        const int64_t first = quarters ? i : TILE_ROWS * i;
        const uint8_t *row[TILE_ROWS];
        for (int r = 0; r < TILE_ROWS; r++) row[r] = data + (size_t)(first + r * stride) * rb;
        for (int64_t t0 = 0; t0 < n_tokens;) {
            const int nt = n_tokens - t0 >= TILE_TOKENS ? TILE_TOKENS : 1; /* the last odd token alone */
            /* constant tile sizes, so that the accumulators stay in registers */
            if (nt == TILE_TOKENS) {
                tile_lanes(type, row, TILE_ROWS, n, x + t0 * ldx, ldx, TILE_TOKENS, t0 == 0, acc);
                _mm256_storeu_ps(sums, reduce8x8(acc)); /* [token t0's 4 rows | token t0 + 1's] */
                store_tile(sums, TILE_TOKENS, y + t0 * ldy + first, ldy, stride);
            } else {
                tile_lanes(type, row, TILE_ROWS, n, x + t0 * ldx, ldx, 1, t0 == 0, acc);
                for (int r = 0; r < TILE_ROWS; r++) sums[r] = reduce8(acc[r]);
                store_tile(sums, 1, y + t0 * ldy + first, ldy, stride);
            }
            t0 += nt;
        }
    }
    for (int64_t o = TILE_ROWS * tiles; o < n_rows; o++) {
        const uint8_t *row[1] = {data + (size_t)o * rb};
        for (int64_t t = 0; t < n_tokens; t++) {
            tile_lanes(type, row, 1, n, x + t * ldx, ldx, 1, t == 0, acc);
            y[t * ldy + o] = reduce8(acc[0]);
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
